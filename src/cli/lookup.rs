//! `peerpost lookup ADDRESS [--json]`: asks the running node to resolve an address in the
//! directory and prints the verified (and pinned) keys.

use anyhow::{Context, Result};

use crate::control::{self, LookupReply};
use crate::home::Home;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mail address to look up.
    pub address: String,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    pub json: bool,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reply = rt.block_on(control::call(
        home.root(),
        &control::Request::Lookup {
            address: args.address.clone(),
        },
    ))?;
    let found: LookupReply = serde_json::from_value(
        reply
            .get("lookup")
            .cloned()
            .context("the node's answer has no lookup")?,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        println!("address:          {}", found.address);
        println!("user fingerprint: {}", found.user_fingerprint);
        println!("devices:          {}", found.devices.len());
        println!("seq:              {}", found.seq);
        println!("certified:        {}", found.certified);
        if let Some(level) = &found.level {
            println!("level:            {level}");
        }
        println!(
            "found in:         {} ms, {} DHT requests",
            found.elapsed_ms, found.requests
        );
    }
    Ok(())
}
