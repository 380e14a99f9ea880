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

mod edit;
mod file;
mod template;
#[cfg(test)]
mod tests;
mod validate;

pub use edit::{set_key, toml_string, toml_strings};
pub use file::*;
pub use template::template;
use validate::Validator;

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
    /// `[devices]` (issue #15): anti-entropy with the user's other devices this often.
    pub devices_sync_every: Duration,
    /// `[devices] backup_takeover`: another device's backup root this old is taken over.
    pub devices_backup_takeover: Duration,
    pub stats: StatsConfig,
    /// `[gateway]` (issue #16).
    pub gateway: GatewayConfig,
}

/// `[gateway]`, validated (docs/design.md "Rings and gateways").
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub enabled: bool,
    /// The global ring's side: its own listen addresses and bootstrap peers.
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub per_sender_per_minute: u32,
    pub per_minute: u32,
}

/// `[stats]`, validated: ring statistics (docs/design.md "Ring statistics").
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    /// Share this node's figures (and hold and add up others' shares).
    pub share: bool,
    /// Length of one round.
    pub every: Duration,
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
    /// `upnp`: ask the home router (UPnP IGD) to forward the listen ports; off by default.
    pub upnp: bool,
    /// `natpmp`: ask the default gateway (NAT-PMP, RFC 6886) to forward the listen ports;
    /// off by default.
    pub natpmp: bool,
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
