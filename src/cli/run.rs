//! `peerpost run`: join the overlay, publish this user's directory record, serve peers, the
//! control socket and the mail servers (IMAP, IMAPS, POP3, POP3S, SMTP intake, submission
//! and submission over implicit TLS) with delivery, and optionally the FUSE Maildir, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::control;
use crate::home::Home;
use crate::node::{MailConfig, Node, NodeConfig};
use crate::overlay::{self, TransportKind};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen on this multiaddr instead of overlay.listen (repeatable), e.g.
    /// /ip4/127.0.0.1/tcp/0 or /ip4/0.0.0.0/udp/4040/quic-v1.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Also dial this peer at start (repeatable; added to overlay.bootstrap), e.g.
    /// /ip4/192.0.2.7/tcp/4040/p2p/12D3KooW….
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Turn off mDNS discovery on the local network (overrides overlay.mdns).
    #[arg(long)]
    pub no_mdns: bool,
    /// File holding the passphrase of a protected user key (asked for on a terminal otherwise).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Serve POP3 (with STLS) here instead of pop3.listen; "off" disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub pop3: Option<Listen>,
    /// Serve POP3 over implicit TLS here instead of pop3.tls_listen; "off" disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub pop3s: Option<Listen>,
    /// Serve the SMTP intake here instead of smtp.intake; "off" disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub smtp: Option<Listen>,
    /// Serve SMTP submission (AUTH, any recipient) here instead of smtp.submission; "off"
    /// disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub submission: Option<Listen>,
    /// Serve SMTP submission over implicit TLS (RFC 8314, port 465's protocol) here instead
    /// of smtp.submission_tls; "off" disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub submissions: Option<Listen>,
    /// Serve IMAP (with STARTTLS) here instead of imap.listen; "off" disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub imap: Option<Listen>,
    /// Serve IMAP over implicit TLS here instead of imap.tls_listen; "off" disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub imaps: Option<Listen>,
    /// Serve the metrics endpoint here instead of overlay.metrics; "off" disables it.
    #[arg(long, value_name = "ADDR|off", value_parser = listen_addr)]
    pub metrics: Option<Listen>,
    /// Also mount the mailbox as a Maildir over FUSE, at PATH or at maildir.path
    /// (`~/Maildir`); `maildir.mount = true` in the config does the same. Unmounted at exit.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    pub mount: Option<Option<PathBuf>>,
    /// Do not mount, whatever maildir.mount says.
    #[arg(long, conflicts_with = "mount")]
    pub no_mount: bool,
    /// Also be a gateway between this node's private ring and the global ring (as
    /// `gateway.enabled = true`): carries directory lookups and sealed notices, nothing else.
    #[arg(long)]
    pub gateway: bool,
    /// The gateway's global side listens here instead of gateway.listen (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub gateway_listen: Vec<String>,
    /// The gateway's global side also dials this global peer (repeatable; added to
    /// gateway.bootstrap).
    #[arg(long, value_name = "MULTIADDR")]
    pub gateway_bootstrap: Vec<String>,
}

/// A listen address given on the command line: an address or "off".
#[derive(Debug, Clone, Copy)]
pub struct Listen(Option<std::net::SocketAddr>);

fn listen_addr(s: &str) -> std::result::Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is not IP:PORT (or \"off\")"))
}

/// The overlay's config from the file, with the command line's listen addresses (instead of
/// the configured ones), bootstrap peers (added) and `--no-mdns` (`run` and `restore`).
pub(crate) fn overlay_config(
    config: &Config,
    device_seed: [u8; 32],
    listen: &[String],
    bootstrap: &[String],
    no_mdns: bool,
) -> Result<overlay::Config> {
    let mut oc = overlay::Config::new(device_seed, TransportKind::Network);
    let listen = if listen.is_empty() {
        &config.overlay.listen
    } else {
        listen
    };
    oc.listen = overlay::parse_addrs(listen)?;
    let mut peers = config.overlay.bootstrap.clone();
    peers.extend(bootstrap.iter().cloned());
    oc.bootstrap = overlay::parse_addrs(&peers)?;
    oc.mdns = config.overlay.mdns && !no_mdns;
    // A private ring (issue #16): every command that joins the overlay goes through here,
    // so none can join the global ring when a ring's key is configured.
    if let Some(path) = &config.overlay.psk_file {
        oc.psk = Some(overlay::pnet::Psk::load(path)?);
    }
    oc.ring_authority = config.overlay.ring_authority;
    Ok(oc)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".into())
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let (nc, store, address) = prepare(&args, home)?;
    let config = Config::load(&home.config(), home.root())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mountpoint = match (&args.mount, args.no_mount) {
        (_, true) => None,
        (Some(Some(path)), _) => Some(path.clone()),
        (Some(None), _) => Some(config.maildir.path.clone()),
        (None, _) => config.maildir.mount.then(|| config.maildir.path.clone()),
    };
    let node = rt.block_on(async move {
        let node = Node::start(nc, store).await?;
        let peer = node.client().peer_id();
        // Report the bound addresses (ports chosen by the system for `…/tcp/0`).
        for _ in 0..40 {
            if let Ok(s) = node.client().status().await
                && !s.listen.is_empty()
            {
                for a in &s.listen {
                    println!("listening on {a}/p2p/{peer}");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(gw) = node.gateway() {
            for _ in 0..40 {
                if let Ok(s) = gw.status().await
                    && !s.listen.is_empty()
                {
                    for a in &s.listen {
                        println!("gateway listening on {a}/p2p/{}", gw.peer_id());
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for (what, addr) in node.servers() {
            println!("{what} listening on {addr}");
        }
        if let Some(addr) = node.metrics() {
            println!("metrics listening on {addr}");
        }
        anyhow::Ok(node)
    })?;
    // The mount's FUSE threads call into the engine through the runtime; it is started and
    // stopped outside `block_on` (both block on the kernel), and unmounted before the node
    // stops, so no file request finds the engine gone.
    let served = match (&mountpoint, node.mailbox()) {
        (Some(path), Some(mb)) => {
            let served = super::mount::Served::start(
                mb.clone(),
                rt.handle().clone(),
                home,
                &config,
                path,
                None,
            );
            match served {
                Ok(s) => {
                    println!("maildir mounted at {}", path.display());
                    Some(s)
                }
                Err(e) => {
                    rt.block_on(node.shutdown());
                    return Err(
                        e.context("the node stopped: maildir.mount is set (or --mount given)")
                    );
                }
            }
        }
        _ => None,
    };
    println!(
        "peerpost: node {} running for {address}; stop with Ctrl-C (SIGINT) or SIGTERM",
        node.client().peer_id()
    );
    let waited = rt.block_on(wait_for_signal());
    eprintln!("peerpost: stopping");
    let unmounted = served.map(super::mount::Served::stop).transpose();
    rt.block_on(node.shutdown());
    waited?;
    unmounted?;
    Ok(())
}

/// The node `run` would start in `home` (also used by `demo`, which runs several in one
/// process): its config, its open store, and the user's address.
pub(super) fn prepare(args: &Args, home: &Home) -> Result<(NodeConfig, Store, String)> {
    let config = Config::load(&home.config(), home.root())?;
    let identity = home.load_identity()?;
    let user_keys = super::key::load_user_keys(home, args.passphrase_file.as_deref())?;
    let device = home.load_device_key()?;
    let store = Store::open(&home.store())?;

    let mut oc = overlay_config(
        &config,
        *device.seed(),
        &args.listen,
        &args.bootstrap,
        args.no_mdns,
    )?;
    oc.max_connections = config.overlay.max_connections;
    oc.contribution = config.storage.contribution;
    oc.reachable = match config.overlay.reachable {
        None => overlay::Reachable::Auto,
        Some(true) => overlay::Reachable::Yes,
        Some(false) => overlay::Reachable::No,
    };
    oc.upnp = config.overlay.upnp;
    oc.natpmp = config.overlay.natpmp;
    oc.stats_share = config.stats.share;
    oc.stats_every = config.stats.every;

    let mut nc = NodeConfig::new(&identity.address, user_keys, device.public(), oc);
    if let Some(d) = &mut nc.durability {
        d.backup.failure_fraction = config.durability.failure_fraction;
        d.backup.target_loss = config.durability.loss_probability;
        d.schedule.backup_every = config.durability.backup_every;
        d.tick = d.tick.min(d.schedule.backup_every);
        d.takeover_after = config.devices_backup_takeover;
    }
    nc.control_socket = Some(control::socket_path(home.root()));
    nc.certified_record = super::ring::installed_cert(home)?;
    if args.gateway || config.gateway.enabled {
        nc.gateway = Some(gateway_config(
            args,
            home,
            &config,
            device.seed(),
            nc.overlay.reachable,
        )?);
    }
    let pick = |flag: Option<Listen>, configured| flag.map_or(configured, |l: Listen| l.0);
    nc.metrics = pick(args.metrics, config.overlay.metrics);
    nc.ring_stats = true;
    nc.devices_sync_every = config.devices_sync_every;
    let password_home = home.clone();
    nc.mail = Some(MailConfig {
        pop3: pick(args.pop3, config.pop3.listen),
        pop3s: pick(args.pop3s, config.pop3.tls_listen),
        smtp: pick(args.smtp, config.smtp.intake),
        tls_cert: config.tls.cert.clone(),
        tls_key: config.tls.key.clone(),
        password: std::sync::Arc::new(move || password_home.load_password_hash().ok()),
        max_message_size: config.smtp.max_message_size,
        hostname: hostname(),
        submission: pick(args.submission, config.smtp.submission),
        submissions: pick(args.submissions, config.smtp.submission_tls),
        imap: pick(args.imap, config.imap.listen),
        imaps: pick(args.imaps, config.imap.tls_listen),
        delivery: delivery_config(&config),
        verify: verify_settings(&config),
        dns_records: config.smtp.dns_records.clone(),
        spool: Some(home.root().join("spool")),
        limits: crate::server::Limits {
            max_sessions: config.limits.max_sessions,
            sessions_per_ip: config.limits.sessions_per_ip,
            login_within: config.limits.login_within,
            session_max: config.limits.session_max,
            write_timeout: config.limits.write_timeout,
            ..crate::server::Limits::default()
        },
    });
    Ok((nc, store, identity.address))
}

/// A gateway's global side (issue #16): no PSK, a peer key derived from the device's (so
/// it is stable and never the ring node's), its own store in `HOME/gateway/store`, its own
/// listen addresses and bootstrap peers from `[gateway]` and the command line.
fn gateway_config(
    args: &Args,
    home: &Home,
    config: &Config,
    device_seed: &[u8; 32],
    reachable: overlay::Reachable,
) -> Result<crate::node::GatewayConfig> {
    if config.overlay.psk_file.is_none() {
        anyhow::bail!(
            "--gateway (gateway.enabled) needs a private ring: run `peerpost ring join FILE` first"
        );
    }
    let mut m = b"peerpost gateway node key v1\0".to_vec();
    m.extend_from_slice(device_seed);
    let mut oc = overlay::Config::new(crate::crypto::hash(&m), TransportKind::Network);
    let listen = if args.gateway_listen.is_empty() {
        &config.gateway.listen
    } else {
        &args.gateway_listen
    };
    oc.listen = overlay::parse_addrs(listen)?;
    let mut peers = config.gateway.bootstrap.clone();
    peers.extend(args.gateway_bootstrap.iter().cloned());
    oc.bootstrap = overlay::parse_addrs(&peers)?;
    oc.mdns = false;
    oc.max_connections = config.overlay.max_connections;
    oc.contribution = config.storage.contribution;
    oc.reachable = reachable;
    oc.stats_share = false;
    let dir = home.root().join("gateway").join("store");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(crate::node::GatewayConfig {
        overlay: oc,
        store: Store::open(&dir)?,
        per_sender_per_minute: config.gateway.per_sender_per_minute,
        per_minute: config.gateway.per_minute,
    })
}

/// The intake's DKIM/SPF/DMARC checks from `[smtp] verify` and `dns_records`.
fn verify_settings(config: &Config) -> Option<crate::smtp::auth_check::Settings> {
    use crate::config::SmtpVerify;
    use crate::smtp::auth_check::{Policy, Settings};
    let policy = match config.smtp.verify {
        SmtpVerify::Off => return None,
        SmtpVerify::Tag => Policy::Tag,
        SmtpVerify::Enforce => Policy::Enforce,
    };
    Some(Settings {
        policy,
        dns_records: config.smtp.dns_records.clone(),
    })
}

/// Delivery's settings from `[delivery]` and `[smarthost]`.
fn delivery_config(config: &Config) -> crate::delivery::Config {
    use crate::config::SmarthostTls;
    use crate::delivery::{Smarthost, TlsMode};
    let mut dc = crate::delivery::Config::new(&config.address, &hostname());
    dc.give_up_after = config.delivery.give_up_after;
    dc.retry_first = config.delivery.retry_first;
    dc.retry_max = config.delivery.retry_max;
    dc.collect_every = config.delivery.collect_every;
    if config.delivery.refuse_from_mismatch {
        dc.from_mismatch = crate::delivery::FromMismatch::Refuse;
    }
    dc.smarthost = config.smarthost.as_ref().map(|sh| Smarthost {
        host: sh.host.clone(),
        port: sh.port,
        tls: match sh.tls {
            SmarthostTls::None => TlsMode::None,
            SmarthostTls::StartTls => TlsMode::StartTls,
            SmarthostTls::Tls => TlsMode::Tls,
        },
        user: sh.user.clone(),
        password_file: sh.password_file.clone(),
        ca_file: sh.ca_file.clone(),
    });
    dc
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
