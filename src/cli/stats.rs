//! `peerpost stats [--json]`: the ring's statistics (docs/design.md "Ring statistics"), as the
//! last finished round's collectors added them up: nodes, versions, storage offered and used,
//! delivery volume. Asks the running node.

use anyhow::{Context, Result};

use crate::control::{self, RingStats};
use crate::home::Home;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    pub json: bool,
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reply = rt.block_on(control::call(home.root(), &control::Request::Stats))?;
    let s: RingStats = serde_json::from_value(
        reply
            .get("stats")
            .cloned()
            .context("the node's answer has no stats")?,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let round = s.every_secs.max(1);
    println!(
        "round:       {} (every {} s){}",
        s.epoch,
        round,
        if s.complete {
            ""
        } else {
            "  INCOMPLETE: some shares or sums were lost; the figures below are noise"
        }
    );
    println!("nodes:       {} sharing statistics", s.nodes);
    let versions: Vec<String> = s
        .versions
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    println!("versions:    {}", versions.join(", "));
    println!(
        "uptime:      <1h {}, <1d {}, <7d {}, longer {}",
        s.uptime[0], s.uptime[1], s.uptime[2], s.uptime[3]
    );
    println!(
        "storage:     {} offered, {} used for others",
        gib(s.offered_bytes),
        gib(s.used_bytes)
    );
    println!("delivered:   {} messages in the round", s.delivered);
    println!("reachable:   {} ({} behind NAT)", s.reachable, s.nated);
    if !s.sharing {
        println!("(this node does not share its own figures: stats.share = false)");
    }
    Ok(())
}
