//! From the file as written to validated settings: every key checked, paths resolved.

use super::*;

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) home: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// "" disables a listener.
    fn socket(&self, key: &str, v: &str) -> Result<Option<SocketAddr>> {
        if v.is_empty() {
            return Ok(None);
        }
        v.parse().map(Some).map_err(|_| {
            self.err(
                key,
                format!("invalid socket address {v:?} (expected IP:PORT, or \"\" to disable)"),
            )
        })
    }

    fn multiaddr(&self, key: &str, v: &str) -> Result<String> {
        // The overlay parses these fully; here: the shape "/proto/value/..." with known roots.
        let ok = v.starts_with('/')
            && !v.ends_with('/')
            && ["/ip4/", "/ip6/", "/dns/", "/dns4/", "/dns6/", "/memory/"]
                .iter()
                .any(|p| v.starts_with(p));
        if ok {
            Ok(v.to_string())
        } else {
            Err(self.err(
                key,
                format!("invalid multiaddr {v:?} (e.g. \"/ip4/192.0.2.1/tcp/4040\")"),
            ))
        }
    }

    /// `[gateway]` (issue #16): its own listen addresses and bootstrap peers in the global
    /// ring, and its rate limits (at least 1 a minute).
    fn gateway(&self, f: &super::file::FileConfig) -> Result<super::GatewayConfig> {
        let g = &f.gateway;
        let listen = g
            .listen
            .iter()
            .map(|a| self.multiaddr("gateway.listen", a))
            .collect::<Result<Vec<_>>>()?;
        let bootstrap = g
            .bootstrap
            .iter()
            .map(|a| self.multiaddr("gateway.bootstrap", a))
            .collect::<Result<Vec<_>>>()?;
        for (key, v) in [
            ("gateway.per_sender_per_minute", g.per_sender_per_minute),
            ("gateway.per_minute", g.per_minute),
        ] {
            if v == 0 || v > 1_000_000 {
                return Err(self.err(key, "must be between 1 and 1000000"));
            }
        }
        Ok(super::GatewayConfig {
            enabled: g.enabled,
            listen,
            bootstrap,
            per_sender_per_minute: g.per_sender_per_minute,
            per_minute: g.per_minute,
        })
    }

    fn path(&self, v: &str) -> PathBuf {
        expand_path(v, self.home)
    }

    pub(super) fn validate(&self, f: FileConfig) -> Result<Config> {
        let address = if f.identity.address.is_empty() {
            String::new()
        } else {
            crate::crypto::record::normalize_address(&f.identity.address).map_err(|why| {
                self.err(
                    "identity.address",
                    format!("{:?} {why}", f.identity.address),
                )
            })?
        };
        let listen = f
            .overlay
            .listen
            .iter()
            .map(|a| self.multiaddr("overlay.listen", a))
            .collect::<Result<Vec<_>>>()?;
        let bootstrap = f
            .overlay
            .bootstrap
            .iter()
            .map(|a| self.multiaddr("overlay.bootstrap", a))
            .collect::<Result<Vec<_>>>()?;
        if f.overlay.max_connections == 0 || f.overlay.max_connections > 100_000 {
            return Err(self.err("overlay.max_connections", "must be between 1 and 100000"));
        }
        let contribution =
            parse_size(&f.storage.contribution).map_err(|m| self.err("storage.contribution", m))?;
        let max_message_size = parse_size(&f.smtp.max_message_size)
            .map_err(|m| self.err("smtp.max_message_size", m))?;
        if max_message_size == 0 || max_message_size > crate::crypto::content::MAX_PLAINTEXT as u64
        {
            return Err(self.err("smtp.max_message_size", "must be between 1 byte and 64MiB"));
        }
        let ff = f.durability.failure_fraction;
        if !(ff > 0.0 && ff < 1.0) {
            return Err(self.err(
                "durability.failure_fraction",
                format!("{ff} is not between 0 and 1 (exclusive)"),
            ));
        }
        let lp = f.durability.loss_probability;
        if !(lp > 0.0 && lp < 1.0) {
            return Err(self.err(
                "durability.loss_probability",
                format!("{lp} is not between 0 and 1 (exclusive)"),
            ));
        }
        let be = f.durability.backup_every_secs;
        if !(1..=86_400).contains(&be) {
            return Err(self.err(
                "durability.backup_every_secs",
                format!("{be} is not between 1 and 86400"),
            ));
        }
        let smarthost = if f.smarthost.host.is_empty() {
            None
        } else {
            let sh = &f.smarthost;
            if sh
                .host
                .contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
            {
                return Err(self.err(
                    "smarthost.host",
                    format!("{:?} must be a host name or IP address", sh.host),
                ));
            }
            let tls = match sh.tls.as_str() {
                "none" => SmarthostTls::None,
                "starttls" => SmarthostTls::StartTls,
                "tls" => SmarthostTls::Tls,
                other => {
                    return Err(self.err(
                        "smarthost.tls",
                        format!("{other:?} must be \"none\", \"starttls\" or \"tls\""),
                    ));
                }
            };
            if sh.port == 0 {
                return Err(self.err("smarthost.port", "must not be 0"));
            }
            Some(SmarthostConfig {
                host: sh.host.clone(),
                port: sh.port,
                tls,
                user: Some(sh.user.clone()).filter(|s| !s.is_empty()),
                password_file: Some(&sh.password_file)
                    .filter(|s| !s.is_empty())
                    .map(|p| self.path(p)),
                ca_file: Some(&sh.ca_file)
                    .filter(|s| !s.is_empty())
                    .map(|p| self.path(p)),
            })
        };
        let duration = |key: &str, v: &str| {
            parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                self.err(
                    key,
                    format!("{v:?} is not a duration (e.g. \"30s\", \"10m\", \"5d\")"),
                )
            })
        };
        let delivery = DeliveryConfig {
            give_up_after: duration("delivery.give_up_after", &f.delivery.give_up_after)?,
            retry_first: duration("delivery.retry_first", &f.delivery.retry_first)?,
            retry_max: duration("delivery.retry_max", &f.delivery.retry_max)?,
            collect_every: duration("delivery.collect_every", &f.delivery.collect_every)?,
            refuse_from_mismatch: match f.delivery.from_mismatch.trim() {
                "mark" => false,
                "refuse" => true,
                _ => {
                    return Err(
                        self.err("delivery.from_mismatch", "must be \"mark\" or \"refuse\"")
                    );
                }
            },
        };
        let ring_authority = match f.overlay.ring_authority.trim() {
            "" => None,
            hex => Some(parse_key_hex(hex).ok_or_else(|| {
                self.err(
                    "overlay.ring_authority",
                    "must be the ring authority's Ed25519 key, 64 hex digits",
                )
            })?),
        };
        let reachable = match f.overlay.reachable.trim() {
            "auto" => None,
            "yes" => Some(true),
            "no" => Some(false),
            _ => {
                return Err(self.err("overlay.reachable", "must be \"auto\", \"yes\" or \"no\""));
            }
        };
        if f.limits.max_sessions == 0 || f.limits.max_sessions > 65_536 {
            return Err(self.err("limits.max_sessions", "must be between 1 and 65536"));
        }
        if f.limits.sessions_per_ip == 0 {
            return Err(self.err("limits.sessions_per_ip", "must be at least 1"));
        }
        let limits = LimitsConfig {
            max_sessions: f.limits.max_sessions,
            sessions_per_ip: f.limits.sessions_per_ip,
            login_within: duration("limits.login_within", &f.limits.login_within)?,
            session_max: duration("limits.session_max", &f.limits.session_max)?,
            write_timeout: duration("limits.write_timeout", &f.limits.write_timeout)?,
        };
        if f.tls.cert.is_empty() || f.tls.key.is_empty() {
            return Err(self.err("tls.cert", "the certificate and key paths must be set"));
        }
        if f.maildir.path.is_empty() {
            return Err(self.err("maildir.path", "must be set"));
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            address,
            overlay: OverlayConfig {
                listen,
                bootstrap,
                mdns: f.overlay.mdns,
                max_connections: f.overlay.max_connections,
                psk_file: Some(&f.overlay.psk_file)
                    .filter(|s| !s.is_empty())
                    .map(|p| self.path(p)),
                metrics: self.socket("overlay.metrics", &f.overlay.metrics)?,
                ring_authority,
                reachable,
                upnp: f.overlay.upnp,
                natpmp: f.overlay.natpmp,
            },
            imap: ServerPair {
                listen: self.socket("imap.listen", &f.imap.listen)?,
                tls_listen: self.socket("imap.tls_listen", &f.imap.tls_listen)?,
            },
            pop3: ServerPair {
                listen: self.socket("pop3.listen", &f.pop3.listen)?,
                tls_listen: self.socket("pop3.tls_listen", &f.pop3.tls_listen)?,
            },
            smtp: SmtpConfig {
                intake: self.socket("smtp.intake", &f.smtp.intake)?,
                submission: self.socket("smtp.submission", &f.smtp.submission)?,
                submission_tls: self.socket("smtp.submission_tls", &f.smtp.submission_tls)?,
                max_message_size,
                verify: match f.smtp.verify.as_str() {
                    "off" => SmtpVerify::Off,
                    "tag" => SmtpVerify::Tag,
                    "enforce" => SmtpVerify::Enforce,
                    other => {
                        return Err(self.err(
                            "smtp.verify",
                            format!("{other:?} must be \"off\", \"tag\" or \"enforce\""),
                        ));
                    }
                },
                dns_records: Some(&f.smtp.dns_records)
                    .filter(|s| !s.is_empty())
                    .map(|p| self.path(p)),
            },
            tls: TlsConfig {
                cert: self.path(&f.tls.cert),
                key: self.path(&f.tls.key),
            },
            storage: StorageConfig { contribution },
            durability: DurabilityConfig {
                failure_fraction: ff,
                loss_probability: lp,
                backup_every: std::time::Duration::from_secs(be),
            },
            smarthost,
            delivery,
            limits,
            stats: StatsConfig {
                share: f.stats.share,
                every: duration("stats.every", &f.stats.every)?,
            },
            devices_sync_every: duration("devices.sync_every", &f.devices.sync_every)?,
            devices_backup_takeover: duration(
                "devices.backup_takeover",
                &f.devices.backup_takeover,
            )?,
            gateway: self.gateway(&f)?,
            maildir: MaildirConfig {
                mount: f.maildir.mount,
                path: self.path(&f.maildir.path),
                owner: Some(f.maildir.owner.clone()).filter(|s| !s.is_empty()),
            },
        })
    }
}
