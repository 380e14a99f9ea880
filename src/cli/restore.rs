//! `peerpost restore --phrase`: on a fresh machine, rebuild the whole mailbox (folders, flags,
//! message bodies) from the ring with nothing but the recovery phrase.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use super::secret;
use crate::config::Config;
use crate::crypto::{DeviceKey, UserKeys, phrase};
use crate::durability::restore::Progress;
use crate::home::Home;
use crate::node::{self, Node, NodeConfig};
use crate::store::Store;

/// How long restore waits for a first peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Restore from a recovery phrase, read from --phrase-file, the terminal or standard input.
    #[arg(long, required = true)]
    pub phrase: bool,
    /// File holding the recovery phrase.
    #[arg(long, value_name = "FILE")]
    pub phrase_file: Option<PathBuf>,
    /// The mail address of the key, when this home has no identity yet (it is then created
    /// as `key import --phrase` would). Without it, the address is read from the newest backup
    /// index in the ring.
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
    /// Protect the imported key with the passphrase in this file (new home only).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The IMAP/POP3/SMTP password for this node, from this file (new home only).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub join: JoinArgs,
}

/// How a node that is not running yet reaches the ring (`restore`, `key import`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JoinArgs {
    /// Also dial this peer (repeatable; added to overlay.bootstrap).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Listen on this multiaddr instead of overlay.listen (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Turn off mDNS discovery on the local network.
    #[arg(long)]
    pub no_mdns: bool,
    /// Join the private ring of this member file (`peerpost ring init` wrote it): its
    /// pre-shared key, authority and bootstrap peers; `restore` also configures the home
    /// for it, as `peerpost ring join FILE` does.
    #[arg(long, value_name = "FILE")]
    pub ring: Option<PathBuf>,
}

/// Waits until the node has a peer and has bootstrapped (at most [`JOIN_TIMEOUT`]).
async fn join(node: &Node) -> Result<()> {
    let joined = async {
        loop {
            if node
                .client()
                .status()
                .await
                .is_ok_and(|s| s.routing_table > 0)
            {
                let _ = node.client().bootstrap().await;
                // Let the bootstrap fill the table a little before the first lookup.
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(JOIN_TIMEOUT, joined).await.is_err() {
        bail!(
            "no peer answered within {}s: check --bootstrap / overlay.bootstrap",
            JOIN_TIMEOUT.as_secs()
        );
    }
    Ok(())
}

/// The address of the key `seed`, read from its newest backup index in the ring, for a home
/// that has no identity yet: a node with a throwaway device key and store joins the ring
/// (`overlay.bootstrap` of the home's config if it has one, the defaults otherwise, and
/// `join`), finds the root and the index, and stops.
pub(crate) fn address_from_ring(
    home: &Home,
    seed: &[u8; 32],
    join_args: &JoinArgs,
) -> Result<String> {
    const PROBE: &str = "restore@peerpost.invalid";
    let config = if home.config().exists() {
        Config::load(&home.config(), home.root())?
    } else {
        Config::parse(&crate::config::template(PROBE), &home.config(), home.root())?
    };
    let device = DeviceKey::generate()?;
    let mut listen = join_args.listen.clone();
    if listen.is_empty() {
        // Not overlay.listen: a node of this machine may hold its port.
        listen.push("/ip4/0.0.0.0/tcp/0".into());
    }
    let mut oc = super::run::overlay_config(
        &config,
        *device.seed(),
        &listen,
        &join_args.bootstrap,
        join_args.no_mdns,
    )?;
    if let Some(file) = &join_args.ring {
        super::ring::apply_member(file, &mut oc)?;
    }
    if oc.bootstrap.is_empty() && !oc.mdns {
        bail!("no peer to join: give --bootstrap MULTIADDR or set overlay.bootstrap");
    }
    let dir = std::env::temp_dir().join(format!("peerpost-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).context("cannot open a temporary store")?;
    let mut nc = NodeConfig::new(PROBE, UserKeys::from_seed(*seed), device.public(), oc);
    nc.auto_publish = false;
    nc.durability = None;
    eprintln!("No --address: looking for the key's backup in the ring ...");
    let rt = super::open::runtime()?;
    let found = rt.block_on(async move {
        let node = Node::start(nc, store).await?;
        if let Err(e) = join(&node).await {
            node.shutdown().await;
            return Err(e);
        }
        let keys = UserKeys::from_seed(*seed);
        let res = crate::durability::restore::find_index(node.client(), &keys).await;
        node.shutdown().await;
        anyhow::Ok(res)
    });
    let _ = std::fs::remove_dir_all(&dir);
    match found? {
        Ok((_, _, index)) => match index.address {
            Some(a) => {
                eprintln!("The backup names the address {a}");
                Ok(a)
            }
            None => bail!(
                "the key's backup in the ring is older than addresses in backups: give --address ADDR"
            ),
        },
        Err(crate::durability::restore::RestoreError::NoBackup) => bail!(
            "no backup of this key was found in the ring, so its address is unknown (is this the \
             right phrase?): give --address ADDR"
        ),
        Err(e) => Err(anyhow::Error::new(e).context("cannot read the key's backup index")),
    }
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let text = secret::phrase(args.phrase_file.as_deref())?;
    let seed =
        Zeroizing::new(phrase::decode(&text).context("the recovery phrase was not accepted")?);
    let keys = UserKeys::from_seed(*seed);
    eprintln!(
        "Phrase accepted: user fingerprint {}",
        keys.public().fingerprint()
    );
    match home.load_identity() {
        Ok(id) => {
            if id.user_keys().map(|k| k.fingerprint()) != Some(keys.public().fingerprint()) {
                bail!(
                    "this home belongs to {} with another key; restore into a new home \
                     (--home DIR) or replace it with `peerpost key import --phrase --force`",
                    id.address
                );
            }
        }
        Err(_) => {
            let address = match &args.address {
                Some(a) => a.clone(),
                None => address_from_ring(home, &seed, &args.join)?,
            };
            super::init::provision(
                home,
                &address,
                UserKeys::from_seed(*seed),
                args.password_file.as_deref(),
                args.passphrase_file.as_deref(),
                false,
            )?;
        }
    }
    if let Some(file) = &args.join.ring {
        super::ring::join_member(home, file)?;
    }
    let identity = home.load_identity()?;
    let config = Config::load(&home.config(), home.root())?;
    let device = home.load_device_key()?;
    let store = Store::open(&home.store())?;
    let mut oc = super::run::overlay_config(
        &config,
        *device.seed(),
        &args.join.listen,
        &args.join.bootstrap,
        args.join.no_mdns,
    )?;
    if oc.bootstrap.is_empty() && !oc.mdns {
        bail!("no peer to join: give --bootstrap MULTIADDR or set overlay.bootstrap");
    }
    oc.contribution = config.storage.contribution;
    let mut nc = NodeConfig::new(&identity.address, keys, device.public(), oc);
    nc.auto_publish = false;
    nc.durability = None;

    let rt = super::open::runtime()?;
    rt.block_on(async move {
        let started = Instant::now();
        let node = Node::start(nc, store).await?;
        if let Err(e) = join(&node).await {
            node.shutdown().await;
            return Err(e);
        }
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "restoring {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let progress = |p: Progress| match p {
            Progress::Found { bytes, .. } => bar.set_length(bytes),
            Progress::Bundle { bytes } => bar.inc(bytes),
        };
        let keys = UserKeys::from_seed(*seed);
        let res = node::restore_mailbox(
            node.client(),
            node.store(),
            &keys,
            device.public(),
            &progress,
        )
        .await;
        bar.finish_and_clear();
        node.shutdown().await;
        let (_, s) = res.context("restore failed")?;
        println!(
            "Restored the mailbox of {}: {} messages in {} folders ({} log entries, {} bundles, \
             {:.1} MiB) in {:.1}s",
            identity.address,
            s.messages,
            s.folders,
            s.log_entries,
            s.bundles,
            s.bytes as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        anyhow::Ok(())
    })
}
