//! Configuration: `config.toml` in the home directory, written by `peerpost init` with every
//! setting present, commented and set to its default.
//!
//! Flow (ripgrep's "low args → high args"): [`FileConfig`] is the TOML as written (serde,
//! unknown keys refused) → [`Config::load`] validates it into [`Config`] (addresses parsed,
//! sizes and fractions checked, paths resolved against the home). Any error names the file
//! and the key: `config.toml: imap.listen: invalid socket address "127.0.0.1:99999"`.
//! Subsystems get their own section (`config.imap`, `config.overlay`, …), never the whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// The file as written. Every field has a default, so a partial file is fine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub identity: IdentitySection,
    pub overlay: OverlaySection,
    pub imap: ImapSection,
    pub pop3: Pop3Section,
    pub smtp: SmtpSection,
    pub tls: TlsSection,
    pub storage: StorageSection,
    pub durability: DurabilitySection,
    pub smarthost: SmarthostSection,
    pub maildir: MaildirSection,
    // --- mail flow (issue #7) ---
    pub delivery: DeliverySection,
    // --- hostile clients (issue #18) ---
    pub limits: LimitsSection,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// The user's mail address (set by init; informational: the keys are the identity).
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlaySection {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub max_connections: u32,
    pub psk_file: String,
    pub metrics: String,
    pub ring_authority: String,
    pub reachable: String,
}

impl Default for OverlaySection {
    fn default() -> Self {
        OverlaySection {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4040".into(),
                "/ip4/0.0.0.0/udp/4040/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            max_connections: 256,
            psk_file: String::new(),
            metrics: "127.0.0.1:9464".into(),
            ring_authority: String::new(),
            reachable: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapSection {
    pub listen: String,
    pub tls_listen: String,
}

impl Default for ImapSection {
    fn default() -> Self {
        ImapSection {
            listen: "127.0.0.1:1143".into(),
            tls_listen: "127.0.0.1:1993".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Section {
    pub listen: String,
    pub tls_listen: String,
}

impl Default for Pop3Section {
    fn default() -> Self {
        Pop3Section {
            listen: "127.0.0.1:1110".into(),
            tls_listen: "127.0.0.1:1995".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    pub intake: String,
    pub submission: String,
    /// Submission over implicit TLS (RFC 8314, port 465's protocol); "" = off.
    pub submission_tls: String,
    pub max_message_size: String,
    // --- DKIM/SPF/DMARC on the intake (issue #7) ---
    pub verify: String,
    pub dns_records: String,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            intake: "127.0.0.1:2525".into(),
            submission: "127.0.0.1:2587".into(),
            submission_tls: String::new(),
            max_message_size: "50MiB".into(),
            verify: "off".into(),
            dns_records: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub cert: String,
    pub key: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: "tls/cert.pem".into(),
            key: "tls/key.pem".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub contribution: String,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            contribution: "10GiB".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilitySection {
    pub failure_fraction: f64,
    pub loss_probability: f64,
    /// Longest new mail waits after the previous pass before it is placed in the ring.
    pub backup_every_secs: u64,
}

impl Default for DurabilitySection {
    fn default() -> Self {
        DurabilitySection {
            failure_fraction: 0.6,
            loss_probability: 1e-6,
            backup_every_secs: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmarthostSection {
    pub host: String,
    pub port: u16,
    pub tls: String,
    pub user: String,
    pub password_file: String,
    pub ca_file: String,
}

impl Default for SmarthostSection {
    fn default() -> Self {
        SmarthostSection {
            host: String::new(),
            port: 587,
            tls: "starttls".into(),
            user: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    pub give_up_after: String,
    pub retry_first: String,
    pub retry_max: String,
    pub collect_every: String,
    /// Overlay mail whose `From:` is not its signing sender: "mark" or "refuse".
    pub from_mismatch: String,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            give_up_after: "5d".into(),
            retry_first: "5s".into(),
            retry_max: "10m".into(),
            collect_every: "60s".into(),
            from_mismatch: "mark".into(),
        }
    }
}

/// `[limits]`: of each IMAP, POP3 and SMTP listener (issue #18).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_sessions: usize,
    pub sessions_per_ip: usize,
    pub login_within: String,
    pub session_max: String,
    pub write_timeout: String,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_sessions: 256,
            sessions_per_ip: 16,
            login_within: "10m".into(),
            session_max: "24h".into(),
            write_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaildirSection {
    pub mount: bool,
    pub path: String,
    pub owner: String,
}

impl Default for MaildirSection {
    fn default() -> Self {
        MaildirSection {
            mount: false,
            path: "~/Maildir".into(),
            owner: String::new(),
        }
    }
}

/// Validated settings, paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub address: String,
    pub overlay: OverlayConfig,
    pub imap: ServerPair,
    pub pop3: ServerPair,
    pub smtp: SmtpConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub durability: DurabilityConfig,
    pub smarthost: Option<SmarthostConfig>,
    pub maildir: MaildirConfig,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
}

/// `[limits]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_sessions: usize,
    pub sessions_per_ip: usize,
    pub login_within: Duration,
    pub session_max: Duration,
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OverlayConfig {
    /// Multiaddrs; syntax checked here, fully parsed by the overlay module.
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub max_connections: u32,
    pub psk_file: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    /// The ring authority's Ed25519 key: records it certifies are `verified-ring`.
    pub ring_authority: Option<[u8; 32]>,
    /// `reachable`: `None` = "auto" (AutoNAT decides), `Some(true)` = "yes", `Some(false)` = "no".
    pub reachable: Option<bool>,
}

/// A plaintext (with STARTTLS) and an implicit-TLS listener; `None` disables one.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerPair {
    pub listen: Option<SocketAddr>,
    pub tls_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    pub intake: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
    /// Submission over implicit TLS (RFC 8314).
    pub submission_tls: Option<SocketAddr>,
    pub max_message_size: u64,
    /// DKIM/SPF/DMARC checks on the intake.
    pub verify: SmtpVerify,
    /// DNS answers for those checks from this file instead of DNS.
    pub dns_records: Option<PathBuf>,
}

/// `[smtp] verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpVerify {
    Off,
    Tag,
    Enforce,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Bytes this node stores for others.
    pub contribution: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DurabilityConfig {
    pub failure_fraction: f64,
    pub loss_probability: f64,
    pub backup_every: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmarthostConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmarthostTls,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM certificates trusted for the relay instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostTls {
    None,
    StartTls,
    Tls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    pub give_up_after: Duration,
    pub retry_first: Duration,
    pub retry_max: Duration,
    pub collect_every: Duration,
    /// `from_mismatch = "refuse"`: drop overlay mail whose `From:` is not its signer.
    pub refuse_from_mismatch: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MaildirConfig {
    pub mount: bool,
    pub path: PathBuf,
    pub owner: Option<String>,
}

impl Config {
    /// Reads and validates `path`; relative paths in it are resolved against `home`.
    pub fn load(path: &Path, home: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, home)
    }

    /// Validates the text of a config file (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path, home: &Path) -> Result<Config> {
        let file = parse_file(text, path)?;
        Validator { path, home }.validate(file)
    }
}

fn parse_file(text: &str, path: &Path) -> Result<FileConfig> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        invalid(
            format!("line {}", line_of(text, e.span())),
            e.message().to_string(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let key = if key == "." || key.is_empty() {
            format!("line {}", line_of(text, inner.span()))
        } else {
            key
        };
        invalid(key, inner.message().to_string())
    })
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(1)
}

struct Validator<'a> {
    path: &'a Path,
    home: &'a Path,
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

    fn path(&self, v: &str) -> PathBuf {
        expand_path(v, self.home)
    }

    fn validate(&self, f: FileConfig) -> Result<Config> {
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
            maildir: MaildirConfig {
                mount: f.maildir.mount,
                path: self.path(&f.maildir.path),
                owner: Some(f.maildir.owner.clone()).filter(|s| !s.is_empty()),
            },
        })
    }
}

/// `~/x` → the user's home; a relative path → relative to the peerpost home.
pub fn expand_path(v: &str, home: &Path) -> PathBuf {
    if let Some(rest) = v.strip_prefix("~/") {
        return dirs::home_dir()
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(rest);
    }
    let p = PathBuf::from(v);
    if p.is_absolute() { p } else { home.join(p) }
}

/// Parses "500ms", "30s", "10m", "2h", "5d" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

/// Parses "10GiB", "500 MB", "1024" (bytes). Binary (KiB, MiB, GiB, TiB) and decimal units.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. \"10GiB\", \"500MB\")"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    let v = num * mult;
    if !v.is_finite() || !(0.0..=1e18).contains(&v) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// 32 bytes from 64 hex digits.
fn parse_key_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The config file `peerpost init` writes: every setting, commented, at its default.
pub fn template(address: &str) -> String {
    format!(
        r#"# peerpost configuration, written by `peerpost init`.
# Every setting is shown at its default. Relative paths are relative to this directory;
# "~/" is your home directory. Check it with `peerpost status`.

[identity]
# Your mail address. The keys in keys/ are the identity; this is what they are published as.
address = "{address}"

[overlay]
# Multiaddrs the node listens on for other peerpost nodes (TCP and QUIC).
listen = ["/ip4/0.0.0.0/tcp/4040", "/ip4/0.0.0.0/udp/4040/quic-v1"]
# Nodes to join the ring through, e.g. ["/ip4/192.0.2.10/tcp/4040/p2p/12D3KooW..."].
bootstrap = []
# Find other nodes on the local network with mDNS.
mdns = true
# Upper bound on simultaneous overlay connections.
max_connections = 256
# Pre-shared key file of a private (organizational) ring; "" = the global ring.
psk_file = ""
# Prometheus metrics endpoint (loopback); "" disables it.
metrics = "127.0.0.1:9464"
# The ring authority's Ed25519 key (64 hex digits): a record it certifies may change the
# key pinned for an address; "" = none.
ring_authority = ""
# Can other nodes dial this one? "auto" = AutoNAT finds out (a node behind NAT then uses the
# ring without holding data for it); "yes" / "no" force it (e.g. "yes" on a server with a
# public address, "no" on a laptop that roams).
reachable = "auto"

[imap]
# IMAP with STARTTLS, and IMAP over implicit TLS. "" disables a listener.
listen = "127.0.0.1:1143"
tls_listen = "127.0.0.1:1993"

[pop3]
listen = "127.0.0.1:1110"
tls_listen = "127.0.0.1:1995"

[smtp]
# Intake: mail for you (e.g. forwarded by your old mail server). No authentication.
intake = "127.0.0.1:2525"
# Submission: mail from you to anyone. Requires the password set with `peerpost passwd`.
submission = "127.0.0.1:2587"
# Submission over implicit TLS (RFC 8314, what port 465 speaks), same rules; "" = off,
# e.g. "127.0.0.1:1465".
submission_tls = ""
# Largest message accepted.
max_message_size = "50MiB"
# DKIM, SPF and DMARC checks of mail taken by the intake (never of submission):
# "off"; "tag" adds an Authentication-Results header (and removes any that claims this
# host's name); "enforce" also refuses mail failing DMARC with p=reject (550), and asks the
# sender to retry after a temporary DNS error (451).
verify = "off"
# Answer those checks' DNS lookups from this file instead of DNS ("" = the system
# resolver). One record a line: `NAME TXT "..."`, `NAME A IP`, `NAME AAAA IP`,
# `NAME MX PREF HOST`, `IP PTR HOST`; names not in it do not exist.
dns_records = ""

[tls]
# Certificate and key of the IMAP/POP3/SMTP servers (PEM). init writes a self-signed pair.
cert = "tls/cert.pem"
key = "tls/key.pem"

[storage]
# Disk space this node gives to the ring for other users' fragments. You may store what
# your nodes contribute divided by the durability overhead.
contribution = "10GiB"

[durability]
# Your mail must survive the simultaneous loss of this fraction of the ring's nodes ...
failure_fraction = 0.6
# ... with at most this probability of losing any one message.
loss_probability = 1e-6
# New mail is placed in the ring (erasure-coded at the target above, in small bundles that
# are merged into 1 MiB ones once mail stops arriving) at most this many seconds after the
# previous backup pass, so mail is in the ring about this long after it was accepted.
backup_every_secs = 10

[smarthost]
# Mail to people outside the overlay (no directory record) leaves through this relay, e.g.
# host = "mail.example.org". "" = such mail bounces.
host = ""
port = 587
# "starttls" (required), "tls" (implicit, port 465) or "none" (a relay on loopback only).
tls = "starttls"
# Relay login; the password is the first line of password_file.
user = ""
password_file = ""
# The relay's certificate is checked against the web's root CAs; a relay with a private CA
# or a self-signed certificate: the PEM file of the certificates to trust instead.
ca_file = ""

[maildir]
# Whether `peerpost run` also mounts your mail as a Maildir over FUSE (needs /dev/fuse;
# `peerpost run --mount` / `--no-mount` override it; `peerpost mount` mounts on its own).
mount = false
# Where: `peerpost run` and `peerpost mount` mount here.
path = "~/Maildir"
# User that owns the files on the mount (Dovecot refuses root); "" = the invoking user.
owner = ""

[delivery]
# Mail not delivered after this long bounces back to you (a DSN in your INBOX).
give_up_after = "5d"
# First retry after a temporary failure; the delay doubles up to retry_max.
retry_first = "5s"
retry_max = "10m"
# How often your node collects mail left for you in the overlay while it was offline.
collect_every = "60s"
# Overlay mail whose From: is not the address that signed it: "mark" delivers it with
# peerpost=fail (from-mismatch) in its Authentication-Results; "refuse" drops it.
from_mismatch = "mark"

[limits]
# Of each IMAP, POP3 and SMTP listener. Sessions at once; when all are taken, a new client
# takes the slot of the oldest session that has not logged in, from the address with the
# most sessions (a session that has logged in keeps its slot).
max_sessions = 256
# Sessions at once from one address (IPv6: one /64); more are told to try again later.
sessions_per_ip = 16
# A session that has not logged in by then is closed (the SMTP intake never logs in: this
# bounds its sessions too). Idle clients are closed sooner: 60 s before login.
login_within = "10m"
# No session lasts longer (mail clients reconnect).
session_max = "24h"
# A client that does not read what it is sent for this long is dropped.
write_timeout = "60s"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/h/config.toml"), Path::new("/h"))
    }

    #[test]
    fn template_is_the_defaults() {
        let text = template("alice@example.org");
        let file = parse_file(&text, Path::new("t")).unwrap();
        let mut expected = FileConfig::default();
        expected.identity.address = "alice@example.org".into();
        assert_eq!(file, expected, "template and Default must agree");
        let c = parse(&text).unwrap();
        assert_eq!(c.address, "alice@example.org");
        assert_eq!(c.tls.cert, PathBuf::from("/h/tls/cert.pem"));
        assert_eq!(c.storage.contribution, 10 * 1024 * 1024 * 1024);
        assert_eq!(c.imap.listen, Some("127.0.0.1:1143".parse().unwrap()));
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.smtp.intake, Some("127.0.0.1:2525".parse().unwrap()));
        assert!(c.smarthost.is_none());
    }

    #[test]
    fn errors_name_the_key_and_file() {
        let e = parse("[imap]\nlisten = \"127.0.0.1:99999\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/h/config.toml") && e.contains("imap.listen"),
            "{e}"
        );
        let e = parse("[imap]\nlistn = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("imap") && e.contains("listn"), "{e}");
        let e = parse("[storage]\ncontribution = \"ten\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.contribution"), "{e}");
        let e = parse("[durability]\nfailure_fraction = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("durability.failure_fraction"), "{e}");
        let e = parse("[overlay]\nmdns = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlay.mdns"), "{e}");
        let e = parse("[overlay]\nbootstrap = [\"10.0.0.1:4040\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlay.bootstrap"), "{e}");
        let e = parse("[imap\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("500 MB"), Ok(500_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn reachable_option() {
        assert_eq!(parse("").unwrap().overlay.reachable, None);
        let c = parse("[overlay]\nreachable = \"yes\"\n").unwrap();
        assert_eq!(c.overlay.reachable, Some(true));
        let c = parse("[overlay]\nreachable = \"no\"\n").unwrap();
        assert_eq!(c.overlay.reachable, Some(false));
        let e = parse("[overlay]\nreachable = \"maybe\"\n").unwrap_err();
        assert!(e.to_string().contains("overlay.reachable"), "{e}");
    }

    #[test]
    fn ring_authority_option() {
        assert_eq!(parse("").unwrap().overlay.ring_authority, None);
        let key = "ab".repeat(32);
        let c = parse(&format!("[overlay]\nring_authority = \"{key}\"\n")).unwrap();
        assert_eq!(c.overlay.ring_authority, Some([0xab; 32]));
        let e = parse("[overlay]\nring_authority = \"abc\"\n").unwrap_err();
        assert!(e.to_string().contains("overlay.ring_authority"), "{e}");
    }

    #[test]
    fn smtp_verify_values() {
        assert_eq!(parse("").unwrap().smtp.verify, SmtpVerify::Off);
        let c = parse("[smtp]\nverify = \"enforce\"\ndns_records = \"dns.txt\"\n").unwrap();
        assert_eq!(c.smtp.verify, SmtpVerify::Enforce);
        assert_eq!(c.smtp.dns_records, Some(PathBuf::from("/h/dns.txt")));
        let e = parse("[smtp]\nverify = \"yes\"\n").unwrap_err().to_string();
        assert!(e.contains("smtp.verify"), "{e}");
    }

    #[test]
    fn limits() {
        let c = parse("").unwrap();
        assert_eq!(c.limits.sessions_per_ip, 16);
        assert_eq!(c.limits.login_within, Duration::from_secs(600));
        let c = parse("[limits]\nsessions_per_ip = 2\nlogin_within = \"2s\"\n").unwrap();
        assert_eq!(c.limits.sessions_per_ip, 2);
        assert_eq!(c.limits.login_within, Duration::from_secs(2));
        let e = parse("[limits]\nmax_sessions = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_sessions"), "{e}");
        let e = parse("[limits]\nsession_max = \"forever\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.session_max"), "{e}");
    }

    #[test]
    fn empty_listener_disables_it() {
        let c = parse("[pop3]\nlisten = \"\"\n").unwrap();
        assert_eq!(c.pop3.listen, None);
    }
}
