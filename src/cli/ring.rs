//! `peerpost ring …`: organizational rings (issue #16; docs/design.md "Rings and gateways").
//!
//! - `ring init --name ORG --domain example.org [--out DIR]` (the administrator, once): makes
//!   the ring authority's key (`ring.key`), the ring's pre-shared key (`swarm.key`, the
//!   standard `/key/swarm/psk/1.0.0/` file) and the member file (`member.toml`) in DIR.
//! - `ring join FILE` (each member): writes the PSK into the home and sets `[overlay]
//!   psk_file`, `ring_authority` and `bootstrap` in its config; `--cert` installs the
//!   member's certified record.
//! - `ring request` (each member): writes the member's self-signed directory record (30-day
//!   lifetime) for the administrator.
//! - `ring issue ADDRESS --request FILE` (the administrator): checks the request (address in
//!   the ring's domain, self-signature, and with `--fingerprint` the key the member read out
//!   to the administrator) and certifies it with the ring key.
//!
//! The certificate covers one record (its keys, devices, sequence number and lifetime), so a
//! key change, a new device or the 30-day expiry needs a new request and certificate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::crypto::record::{
    MAX_LIFETIME_SECS, fingerprint_of, normalize_address, parse_fingerprint,
};
use crate::crypto::{self, DirectoryRecord, KeyKind, UserKeys};
use crate::home::{Home, write_atomic};
use crate::overlay::pnet::Psk;

const REQUEST_TAG: &str = "peerpost ring request v1";
const CERT_TAG: &str = "peerpost ring certificate v1";
/// Largest member, request or certificate file read.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a ring: its authority key, pre-shared key and member file (administrator).
    Init(InitArgs),
    /// Certify a member's directory record with the ring key (administrator).
    Issue(IssueArgs),
    /// Configure this home as a member of a ring (its PSK, authority, bootstrap peers), and
    /// install this user's certificate (--cert).
    Join(JoinArgs),
    /// Write this user's directory record for the ring's administrator to certify.
    Request(RequestArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The organization's name (shown to members).
    #[arg(long)]
    pub name: String,
    /// The mail domain whose addresses the ring certifies.
    #[arg(long)]
    pub domain: String,
    /// Where to write ring.key, swarm.key and member.toml (default ./ring-NAME).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A node members join the ring through (repeatable; written into the member file,
    /// which may also be edited later), e.g. /ip4/10.0.0.5/tcp/4040/p2p/12D3KooW….
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The address to certify (must be in the ring's domain).
    pub address: String,
    /// The ring directory `ring init` wrote (holds ring.key and member.toml).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub ring: PathBuf,
    /// The member's request (`peerpost ring request`).
    #[arg(long, value_name = "FILE")]
    pub request: PathBuf,
    /// The user-key fingerprint the member read to you (`peerpost key show`): the request
    /// must carry that key. Without it the request's key is printed for you to compare.
    #[arg(long, value_name = "FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Where to write the certificate (default ./ADDRESS.cert).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The ring's member file (`ring init` wrote it; the administrator hands it out).
    pub file: Option<PathBuf>,
    /// Install this user's certificate from the administrator (`ring issue`).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// Where to write the request (default ./ADDRESS.request).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// File holding the passphrase of a protected user key.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// The member file: everything a member's config needs. It holds the ring's pre-shared key,
/// so it is a secret of the ring (mode 0600; hand it over as you would a password).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberFile {
    name: String,
    domain: String,
    /// The ring authority's Ed25519 key (hex).
    authority: String,
    /// The PSK file's text.
    psk: String,
    bootstrap: Vec<String>,
}

pub fn execute(cmd: Command, home: &Home) -> Result<()> {
    match cmd {
        Command::Init(a) => init(a),
        Command::Issue(a) => issue(a),
        Command::Join(a) => join(a, home),
        Command::Request(a) => request(a, home),
    }
}

/// Where a member's certified record lives in its home.
pub(crate) fn cert_path(home: &Home) -> PathBuf {
    home.root().join("ring").join("record.cert")
}

/// The certified record installed in `home`, if any (`run` publishes it).
pub(crate) fn installed_cert(home: &Home) -> Result<Option<DirectoryRecord>> {
    let path = cert_path(home);
    if !path.exists() {
        return Ok(None);
    }
    read_record(&path, CERT_TAG).map(Some)
}

fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut s = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut s)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(s)
}

fn read_record(path: &Path, tag: &str) -> Result<DirectoryRecord> {
    let text = read_small(path)?;
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(tag) {
        bail!("{} is not a {tag} file", path.display());
    }
    let hex = lines.next().unwrap_or_default().trim();
    let bytes = crypto::unhex(hex).with_context(|| format!("{}: not hex", path.display()))?;
    DirectoryRecord::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a directory record: {e}", path.display()))
}

fn write_record(path: &Path, tag: &str, rec: &DirectoryRecord) -> Result<()> {
    let text = format!("{tag}\n{}\n", crypto::hex(&rec.to_bytes()));
    write_atomic(&in_dir(path), text.as_bytes(), 0o644)?;
    Ok(())
}

/// `path` with a directory (`./` for a bare file name, which `write_atomic` needs).
fn in_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => path.to_path_buf(),
        _ => Path::new(".").join(path),
    }
}

fn init(a: InitArgs) -> Result<()> {
    let domain = a.domain.trim().to_lowercase();
    normalize_address(&format!("x@{domain}"))
        .map_err(|why| anyhow::anyhow!("--domain {domain:?}: {why}"))?;
    let name = a.name.trim().to_string();
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        bail!("--name must be 1 to 64 printable characters");
    }
    crate::overlay::parse_addrs(&a.bootstrap)?;
    let dir = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("ring-{}", name.replace(['/', ' '], "-"))));
    let key_path = dir.join("ring.key");
    if key_path.exists() {
        bail!(
            "{} exists: this directory already holds a ring (remove it to start over)",
            key_path.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let authority = UserKeys::generate()?;
    let psk = Psk::generate()?;
    write_atomic(
        &key_path,
        &crypto::keys::encode_key_file(KeyKind::User, authority.seed(), None)?,
        0o600,
    )?;
    write_atomic(&dir.join("swarm.key"), psk.to_file().as_bytes(), 0o600)?;
    let member = MemberFile {
        name: name.clone(),
        domain: domain.clone(),
        authority: crypto::hex(&authority.public().sign),
        psk: psk.to_file(),
        bootstrap: a.bootstrap,
    };
    let text = format!(
        "# peerpost ring member file of {name} ({domain}): `peerpost ring join member.toml`.\n\
         # It holds the ring's pre-shared key: give it only to the ring's members.\n\
         # bootstrap: nodes members join through; add your first node's address here.\n{}",
        toml::to_string(&member).context("cannot write the member file")?
    );
    write_atomic(&dir.join("member.toml"), text.as_bytes(), 0o600)?;
    println!("ring {name} ({domain}) created in {}", dir.display());
    println!("  ring.key     the ring authority's key: keep it offline, it certifies members");
    println!(
        "  swarm.key    the ring's pre-shared key (PSK fingerprint {})",
        psk.fingerprint()
    );
    println!(
        "  member.toml  for members: `peerpost ring join member.toml` (secret: holds the PSK)"
    );
    println!("ring authority: {}", member.authority);
    Ok(())
}

fn load_member(path: &Path) -> Result<MemberFile> {
    let text = read_small(path)?;
    let m: MemberFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a ring member file", path.display()))?;
    Psk::parse(&m.psk).map_err(|e| anyhow::anyhow!("{}: psk: {e}", path.display()))?;
    authority_key(&m.authority).with_context(|| format!("{}: authority", path.display()))?;
    Ok(m)
}

fn authority_key(hex: &str) -> Result<[u8; 32]> {
    crypto::unhex(hex.trim())
        .and_then(|v| v.try_into().ok())
        .context("not a 64-hex-digit Ed25519 key")
}

fn issue(a: IssueArgs) -> Result<()> {
    let member = load_member(&a.ring.join("member.toml"))?;
    let key_file = crate::home::read_secret(&a.ring.join("ring.key"))?;
    let seed = crypto::keys::decode_key_file(&key_file, KeyKind::User, None)?;
    let authority = UserKeys::from_seed(*seed);
    if crypto::hex(&authority.public().sign) != member.authority {
        bail!(
            "ring.key and member.toml in {} belong to different rings",
            a.ring.display()
        );
    }
    let address =
        normalize_address(&a.address).map_err(|why| anyhow::anyhow!("{:?} {why}", a.address))?;
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    if domain != member.domain {
        bail!(
            "{address} is not in the ring's domain {}: a ring certifies its own addresses only",
            member.domain
        );
    }
    let mut rec = read_record(&a.request, REQUEST_TAG)?;
    if rec.address != address {
        bail!("the request is for {}, not {address}", rec.address);
    }
    rec.verify(super::now_secs())
        .map_err(|e| anyhow::anyhow!("the request does not verify: {e}"))?;
    let fp = rec.keys.fingerprint();
    match &a.fingerprint {
        Some(given) => {
            let given = parse_fingerprint(given).context("--fingerprint is not a fingerprint")?;
            if given != fingerprint_of(&rec.keys) {
                bail!(
                    "the request carries the key {fp}, not the one you were given: \
                     do not certify it (someone else may have written this request)"
                );
            }
        }
        None => println!(
            "the request's user key is {fp}: certify only if the member confirms it (--fingerprint)"
        ),
    }
    rec.cert = None;
    rec.certify(&authority);
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{address}.cert")));
    write_record(&out, CERT_TAG, &rec)?;
    println!(
        "certified {address} (key {fp}, {} device(s), valid until {}): give {} to the member \
         (`peerpost ring join --cert {}`)",
        rec.devices.len(),
        crate::date::rfc5322(i64::try_from(rec.expires).unwrap_or(i64::MAX)),
        out.display(),
        out.display()
    );
    Ok(())
}

fn request(a: RequestArgs, home: &Home) -> Result<()> {
    let identity = home.load_identity()?;
    let keys = super::key::load_user_keys(home, a.passphrase_file.as_deref())?;
    let device = home.load_device_key()?;
    let now = super::now_secs();
    let rec = DirectoryRecord::new(
        &keys,
        &identity.address,
        vec![device.public()],
        now,
        now,
        MAX_LIFETIME_SECS,
    )?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.request", identity.address)));
    write_record(&out, REQUEST_TAG, &rec)?;
    println!(
        "wrote {}: give it to the ring's administrator with your key's fingerprint {}",
        out.display(),
        keys.public().fingerprint()
    );
    Ok(())
}

fn join(a: JoinArgs, home: &Home) -> Result<()> {
    if a.file.is_none() && a.cert.is_none() {
        bail!("give the ring's member file, --cert FILE, or both");
    }
    let config_path = home.config();
    if !config_path.exists() {
        bail!(
            "{} has no config: run `peerpost init` first",
            home.root().display()
        );
    }
    if let Some(file) = &a.file {
        join_member(home, file)?;
    }
    if let Some(cert) = &a.cert {
        install_cert(home, cert)?;
    }
    Ok(())
}

/// A node about to join with `oc` joins the ring of member file `file` instead (restore on a
/// machine that has no config yet).
pub(crate) fn apply_member(file: &Path, oc: &mut crate::overlay::Config) -> Result<()> {
    let m = load_member(file)?;
    oc.psk = Some(Psk::parse(&m.psk).map_err(anyhow::Error::msg)?);
    oc.ring_authority = Some(authority_key(&m.authority)?);
    oc.bootstrap
        .extend(crate::overlay::parse_addrs(&m.bootstrap)?);
    Ok(())
}

/// Configures `home` as a member of the ring of member file `file`.
pub(crate) fn join_member(home: &Home, file: &Path) -> Result<()> {
    let config_path = home.config();
    {
        let m = load_member(file)?;
        let psk_rel = Path::new("ring").join("swarm.key");
        write_atomic(&home.root().join(&psk_rel), m.psk.as_bytes(), 0o600)?;
        let mut text = read_small(&config_path)?;
        use crate::config::{set_key, toml_string, toml_strings};
        text = set_key(
            &text,
            "overlay",
            "psk_file",
            &toml_string(&psk_rel.to_string_lossy()),
        );
        text = set_key(
            &text,
            "overlay",
            "ring_authority",
            &toml_string(&m.authority),
        );
        if !m.bootstrap.is_empty() {
            text = set_key(&text, "overlay", "bootstrap", &toml_strings(&m.bootstrap));
        }
        // Check before writing: a config that no longer loads would stop the node.
        Config::parse(&text, &config_path, home.root())?;
        write_atomic(&config_path, text.as_bytes(), 0o600)?;
        println!(
            "joined ring {} ({}): overlay.psk_file, ring_authority and bootstrap set in {}; \
             the node now joins only this ring (TCP only: QUIC cannot carry a ring's key)",
            m.name,
            m.domain,
            config_path.display()
        );
    }
    Ok(())
}

fn install_cert(home: &Home, cert: &Path) -> Result<()> {
    let config_path = home.config();
    {
        let config = Config::load(&config_path, home.root())?;
        let Some(authority) = config.overlay.ring_authority else {
            bail!("this home is in no ring yet: `peerpost ring join MEMBER-FILE` first");
        };
        let identity = home.load_identity()?;
        let rec = read_record(cert, CERT_TAG)?;
        rec.verify_certified(super::now_secs(), &authority)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
        if Some(rec.keys) != identity.user_keys() || rec.address != identity.address {
            bail!(
                "{} certifies {} with key {}, not this home's {}",
                cert.display(),
                rec.address,
                rec.keys.fingerprint(),
                identity.address
            );
        }
        if !identity
            .device_public()
            .is_some_and(|d| rec.devices.contains(&d))
        {
            bail!(
                "{} does not name this device: request a new one here",
                cert.display()
            );
        }
        write_record(&cert_path(home), CERT_TAG, &rec)?;
        println!(
            "certificate installed: {} is verified-ring for the ring's members once the node \
             publishes it (at the next `peerpost run`)",
            rec.address
        );
    }
    Ok(())
}
