//! `peerpost status [--json]`: identity, configuration and local store of this home, and the
//! running node (asked over its control socket), if any.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::Config;
use crate::control::{self, NodeStatus};
use crate::crypto;
use crate::durability::status::DurabilityStatus;
use crate::home::Home;
use crate::store::{Store, StoreStats};

fn print_durability(d: &DurabilityStatus) {
    match d.root_seq {
        None => println!("backup:             none yet"),
        Some(seq) => println!(
            "backup:             {} bundles of mail, {} of log ({} bytes), root seq {seq}",
            d.body_bundles, d.log_bundles, d.bytes
        ),
    }
    if d.pending_bytes > 0 {
        println!(
            "  not yet placed:  {} bytes (the next pass places them)",
            d.pending_bytes
        );
    }
    if d.unpublished {
        println!(
            "  not yet in root: placed bundles the next root lists (published by the next pass)"
        );
    }
    println!("  repairs done:    {} fragments re-created", d.repairs);
    if let (Some(ring), Some(loss)) = (d.ring, d.loss_now) {
        println!(
            "  in the ring:     {} peers known; P(loss) if {:.0} % failed now: {loss:.1e}",
            ring,
            d.failure_fraction * 100.0
        );
        for b in &d.checked {
            println!(
                "    {} {:<7} {:>3}/{:<3} fragments found (any {} rebuild it)",
                b.bundle, b.kind, b.found, b.n, b.k
            );
        }
    }
    if let Some(s) = &d.survives {
        println!(
            "  ring survives:   {} nodes: new mail coded {}/{} survives any {} of its holders \
             failing; P(loss) if {:.0} % of the ring failed at once: {:.1e}{}",
            s.ring,
            s.n,
            s.k,
            s.any_nodes,
            d.failure_fraction * 100.0,
            s.loss,
            if s.meets_target {
                ""
            } else {
                " (above the loss_probability target: the ring is too small for it)"
            }
        );
    }
    match d.below_target {
        Some(0) | None => {}
        Some(n) => println!(
            "  below target:    {n} bundles coded for a smaller ring (re-coded within a minute)"
        ),
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    home: String,
    address: String,
    user_fingerprint: String,
    device_fingerprint: String,
    key_protected: bool,
    config: String,
    config_ok: bool,
    config_error: Option<String>,
    store: StoreStats,
    /// The running node, or null when none runs in this home.
    node: Option<NodeStatus>,
    /// The user's backup in the ring: from the store, and checked in the ring by the running
    /// node when there is one (durability, issue #6).
    durability: Option<DurabilityStatus>,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let (id, user, device) = home.load_identity_keys()?;
    let config_error = Config::load(&home.config(), home.root())
        .err()
        .map(|e| e.to_string());
    let store = Store::open(&home.store())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let stats = rt.block_on(store.stats())?;
    let node = control::status_blocking(home.root());
    let durability = match node {
        Some(_) => control::durability_blocking(home.root()),
        None => None,
    }
    .or_else(|| rt.block_on(crate::durability::status::local(&store)).ok());
    let status = Status {
        home: home.root().display().to_string(),
        address: id.address,
        user_fingerprint: user.fingerprint(),
        device_fingerprint: crypto::fingerprint(&[&device]),
        key_protected: home.user_key_is_protected()?,
        config: home.config().display().to_string(),
        config_ok: config_error.is_none(),
        config_error,
        store: stats,
        node,
        durability,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("home:               {}", status.home);
        println!("address:            {}", status.address);
        println!("user fingerprint:   {}", status.user_fingerprint);
        println!("device fingerprint: {}", status.device_fingerprint);
        println!(
            "user key:           {}",
            if status.key_protected {
                "passphrase-protected"
            } else {
                "not passphrase-protected (mode 0600)"
            }
        );
        match &status.config_error {
            None => println!("config:             {} (valid)", status.config),
            Some(e) => println!("config:             INVALID: {e}"),
        }
        println!(
            "store:              {} objects, {} bytes (schema {})",
            status.store.objects, status.store.object_bytes, status.store.schema_version
        );
        match &status.node {
            None => println!("node:               not running"),
            Some(n) => {
                println!("node:               running, peer id {}", n.overlay.peer_id);
                for a in &n.overlay.listen {
                    println!("  listening on      {a}");
                }
                match &n.metrics {
                    Some(url) => println!("  metrics:         {url}"),
                    None => println!("  metrics:         off"),
                }
                println!(
                    "  peers:           {} connected, {} in the routing table{}",
                    n.overlay.connected.len(),
                    n.overlay.routing_table,
                    if n.overlay.banned > 0 {
                        format!(", {} banned", n.overlay.banned)
                    } else {
                        String::new()
                    }
                );
                print_reachability(&n.overlay);
                println!(
                    "  held for others: {} directory records, {} blobs ({} bytes)",
                    n.overlay.records, n.overlay.held_blobs, n.overlay.held_bytes
                );
            }
        }
    }
    if !args.json
        && let Some(d) = &status.durability
    {
        print_durability(d);
    }
    if let Some(e) = status.config_error {
        anyhow::bail!("{e}");
    }
    Ok(())
}

/// Whether others can dial this node, and so whether it holds data for the ring.
fn print_reachability(o: &crate::overlay::Status) {
    let verdict = match o.reachable.as_str() {
        "yes" => "reachable (AutoNAT)".to_string(),
        "no" => "behind NAT (AutoNAT)".to_string(),
        "forced" => "set by [overlay] reachable / local ring".to_string(),
        _ => "not known yet".to_string(),
    };
    let public = o
        .public_address
        .as_deref()
        .map(|a| format!(", public address {a}"))
        .unwrap_or_default();
    println!(
        "  reachability:    {verdict}{public}; DHT {} mode",
        if o.dht_mode.is_empty() {
            "?"
        } else {
            &o.dht_mode
        }
    );
    if !o.relays.is_empty() || o.relayed_connections > 0 || o.hole_punches_tried > 0 {
        println!(
            "  relays:          {}",
            if o.relays.is_empty() {
                "none".to_string()
            } else {
                o.relays.join(", ")
            }
        );
    }
    println!(
        "  connections:     {} direct, {} relayed; hole punches {} won of {} tried",
        o.direct_connections, o.relayed_connections, o.hole_punches_won, o.hole_punches_tried
    );
    // An older node answers without the field.
    if !o.upnp.is_empty() {
        let mapped = if o.upnp_mapped.is_empty() {
            String::new()
        } else {
            format!(" {}", o.upnp_mapped.join(", "))
        };
        println!("  port mapping:    UPnP {}{mapped}", o.upnp);
    }
    if !o.natpmp.is_empty() {
        let mapped = if o.natpmp_mapped.is_empty() {
            String::new()
        } else {
            format!(" {}", o.natpmp_mapped.join(", "))
        };
        println!("  port mapping:    NAT-PMP {}{mapped}", o.natpmp);
    }
}
