//! `peerpost device list | add KEY | remove KEY [--revoke]`: the user's device list
//! (docs/design.md, "Devices"). A running node picks up a change within its sync interval,
//! republishes the directory record and tells the other devices.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::crypto::device_list::{DeviceList, DeviceState};
use crate::devices;
use crate::home::Home;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the user's devices: key, state, since when (this device marked).
    List(ListArgs),
    /// Add a device by its key (hex, as `device list` or `key show --json` on it prints).
    /// A device set up with `key import --phrase` adds itself when it first runs.
    Add(ChangeArgs),
    /// Remove a device (given by its key or a unique prefix of it): it leaves the directory
    /// record and its log entries after the ones seen here are refused.
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// The device key (64 hex digits) or, for remove, a unique prefix of it.
    pub key: String,
    /// File holding the passphrase of a protected key.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
    /// The device is lost or stolen (not just retired): recorded as revoked. See
    /// docs/design.md "Devices" for what revocation can and cannot stop.
    #[arg(long)]
    pub revoke: bool,
}

pub fn execute(cmd: Command, home: &Home) -> Result<()> {
    let rt = super::open::runtime()?;
    rt.block_on(async {
        match cmd {
            Command::List(a) => list(a, home).await,
            Command::Add(a) => add(a, home).await,
            Command::Remove(a) => remove(a, home).await,
        }
    })
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

async fn stored(home: &Home) -> Result<(Store, DeviceList, [u8; 32])> {
    let (_, user, device) = home.load_identity_keys()?;
    let store = Store::open(&home.store())?;
    let list = devices::load(&store, &user)
        .await
        .context("cannot read the device list")?
        .unwrap_or_default();
    Ok((store, list, device))
}

async fn list(args: ListArgs, home: &Home) -> Result<()> {
    let (_, list, me) = stored(home).await?;
    if args.json {
        let rows: Vec<_> = list
            .devices
            .iter()
            .map(|(k, e)| {
                serde_json::json!({
                    "key": hex(k),
                    "state": e.state.as_str(),
                    "changed": e.changed,
                    "upto": e.upto,
                    "this": *k == me,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "seq": list.seq, "devices": rows })
        );
        return Ok(());
    }
    if list.devices.is_empty() {
        println!("no device list yet (`peerpost run` starts one with this device)");
        return Ok(());
    }
    for (k, e) in &list.devices {
        let when = crate::date::rfc5322(e.changed as i64);
        let this = if *k == me { "  (this device)" } else { "" };
        match e.state {
            DeviceState::Live => println!("{}  live     since {when}{this}", hex(k)),
            s => println!(
                "{}  {:<8} {when}, entries after #{} refused{this}",
                hex(k),
                s.as_str(),
                e.upto
            ),
        }
    }
    Ok(())
}

fn find(list: &DeviceList, key: &str) -> Result<[u8; 32]> {
    let key = key.to_ascii_lowercase();
    let hits: Vec<[u8; 32]> = list
        .devices
        .keys()
        .filter(|k| hex(&k[..]).starts_with(&key))
        .copied()
        .collect();
    match hits.as_slice() {
        [k] if key.len() >= 4 => Ok(*k),
        [] => bail!("no device of the list has a key starting with {key}"),
        _ => bail!("{key} matches several devices (or is shorter than 4 digits); give more"),
    }
}

fn parse_key(key: &str) -> Result<[u8; 32]> {
    let key = key.trim();
    if key.len() != 64 || !key.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("a device key is 64 hex digits");
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&key[2 * i..2 * i + 2], 16)?;
    }
    if crate::overlay::device_peer_id(&out).is_none() {
        bail!("not a valid Ed25519 device key");
    }
    Ok(out)
}

async fn add(args: ChangeArgs, home: &Home) -> Result<()> {
    let key = parse_key(&args.key)?;
    let keys = super::key::load_user_keys(home, args.passphrase_file.as_deref())?;
    let (store, mut list, _) = stored(home).await?;
    if !list
        .add(key, devices::now_secs())
        .map_err(anyhow::Error::msg)?
    {
        println!("{} is live already", hex(&key));
        return Ok(());
    }
    devices::save(&store, &keys, &list).await?;
    println!("added {}", hex(&key));
    Ok(())
}

async fn remove(args: RemoveArgs, home: &Home) -> Result<()> {
    let keys = super::key::load_user_keys(home, args.change.passphrase_file.as_deref())?;
    let (store, mut list, me) = stored(home).await?;
    let key = find(&list, &args.change.key)?;
    if key == me {
        bail!("this is this device; remove it from another one");
    }
    let upto = devices::last_seq(&store, devices::log_id(&key)).await?;
    let state = if args.revoke {
        DeviceState::Revoked
    } else {
        DeviceState::Removed
    };
    list.remove(key, state, upto, devices::now_secs())
        .map_err(anyhow::Error::msg)?;
    devices::save(&store, &keys, &list).await?;
    println!(
        "{} {}: its log entries after #{upto} are refused",
        if args.revoke { "revoked" } else { "removed" },
        hex(&key)
    );
    if args.revoke {
        println!(
            "a device that knew the recovery phrase still holds the user key: to lock it out \
             for good, move the mailbox to a new key (docs/design.md, \"Devices\")"
        );
    }
    Ok(())
}
