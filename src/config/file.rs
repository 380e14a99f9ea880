//! The file as written: one serde struct per section, each with its defaults.

use serde::{Deserialize, Serialize};

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
    // --- metrics and ring statistics (issue #17) ---
    pub stats: StatsSection,
    // --- several devices per user (issue #15) ---
    pub devices: DevicesSection,
    // --- gateways between a private ring and the global ring (issue #16) ---
    pub gateway: GatewaySection,
}

/// `[gateway]`: this ring node also runs in the global ring and carries lookups and sealed
/// notices between them (issue #16).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub enabled: bool,
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub per_sender_per_minute: u32,
    pub per_minute: u32,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            enabled: false,
            listen: vec!["/ip4/0.0.0.0/tcp/4041".into()],
            bootstrap: Vec::new(),
            per_sender_per_minute: 60,
            per_minute: 600,
        }
    }
}

/// `[devices]`: replication between this user's devices (issue #15).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesSection {
    pub sync_every: String,
    /// One device backs the user up; another takes over when its root is this old.
    pub backup_takeover: String,
}

impl Default for DevicesSection {
    fn default() -> Self {
        DevicesSection {
            sync_every: "10s".into(),
            backup_takeover: "3h".into(),
        }
    }
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
    pub upnp: bool,
    pub natpmp: bool,
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
            upnp: false,
            natpmp: false,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsSection {
    pub share: bool,
    pub every: String,
}

impl Default for StatsSection {
    fn default() -> Self {
        StatsSection {
            share: true,
            every: "1h".into(),
        }
    }
}
