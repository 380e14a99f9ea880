//! `peerpost trust`: pin an address to the key its owner told you (by phone, on a card), so
//! only a directory record with that key is believed for it, whatever the first-use pin, the
//! majority of peers, the domain's vouch or a ring certificate say.
//!
//! The pin is written to the store (durable when the command returns); a running node reads
//! it on its next lookup of the address, so there is nothing to restart.

use anyhow::{Context, Result, bail};

use super::open;
use crate::crypto::{self, record};
use crate::home::Home;
use crate::store::Store;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    peerpost trust bob@example.org '3f2a 91c0 …'   (the fingerprint bob's `peerpost key show` prints)\n  \
    peerpost trust --list\n  \
    peerpost trust --remove bob@example.org")]
pub struct Args {
    /// The address to pin (or, with --remove, to unpin).
    #[arg(value_name = "ADDRESS", required_unless_present = "list")]
    pub address: Option<String>,
    /// The owner's user fingerprint: 40 hex digits, spaces or colons between groups allowed.
    #[arg(
        value_name = "FINGERPRINT",
        required_unless_present_any = ["list", "remove"],
        conflicts_with_all = ["list", "remove"]
    )]
    pub fingerprint: Option<String>,
    /// List the addresses you pinned.
    #[arg(long, conflicts_with = "remove")]
    pub list: bool,
    /// Drop the pin of ADDRESS (its next lookup trusts on first use again).
    #[arg(long)]
    pub remove: bool,
    /// Machine-readable output (with --list: one JSON array).
    #[arg(long)]
    pub json: bool,
}

/// The fingerprint as `key show` prints it: groups of four hex digits.
fn grouped(fp: &crypto::record::Fingerprint) -> String {
    crypto::hex(fp)
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    open::config(home)?;
    let rt = open::runtime()?;
    let store = Store::open(&home.store())?;
    let address = args
        .address
        .as_deref()
        .map(|a| record::normalize_address(a).map_err(|why| anyhow::anyhow!("{a:?}: {why}")))
        .transpose()?;
    rt.block_on(async {
        if args.list {
            let pins = store.trust_list().await?;
            if args.json {
                let list: Vec<_> = pins
                    .iter()
                    .map(|(a, fp)| serde_json::json!({"address": a, "fingerprint": grouped(fp)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if pins.is_empty() {
                println!("No address is pinned (`peerpost trust ADDRESS FINGERPRINT` pins one).");
            } else {
                for (a, fp) in &pins {
                    println!("{a}  {}", grouped(fp));
                }
            }
            return Ok(());
        }
        let Some(address) = address else {
            bail!("an ADDRESS is needed");
        };
        if args.remove {
            if store.trust_remove(address.clone()).await? {
                println!("Unpinned {address}: its next lookup trusts the key it first sees again.");
            } else {
                bail!("{address} is not pinned (see `peerpost trust --list`)");
            }
            return Ok(());
        }
        let given = args.fingerprint.unwrap_or_default();
        let fp = record::parse_fingerprint(&given).with_context(|| {
            format!(
                "{given:?} is not a fingerprint: 40 hex digits, as `peerpost key show` prints \
                 them (spaces or colons between groups are fine)"
            )
        })?;
        store.trust_set(address.clone(), fp).await?;
        println!(
            "Pinned {address} to {}: only a record with this key is believed for it \
             (mail to it waits and bounces otherwise).",
            grouped(&fp)
        );
        anyhow::Ok(())
    })
}
