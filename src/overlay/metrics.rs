//! libp2p's own metrics (libp2p-metrics): connections (incoming, established, closed, by
//! protocol stack), Kademlia queries and their outcomes, identify and ping, registered once per
//! process beside the node's families (`peerpost_libp2p_…`, see [`crate::metrics`]). Every
//! swarm of the process records into the one set (like the node's own families).

use std::sync::OnceLock;

use libp2p::metrics::{Metrics, Recorder};
use libp2p::swarm::SwarmEvent;

use super::behaviour::BehaviourEvent;

static LIBP2P: OnceLock<Metrics> = OnceLock::new();

fn get() -> &'static Metrics {
    LIBP2P.get_or_init(|| crate::metrics::get().register(Metrics::new))
}

/// Registers the families now (so a scrape lists them before the first event).
pub fn register() {
    get();
}

/// Records one swarm event (and the Kademlia, identify and ping events inside it).
pub(super) fn record(event: &SwarmEvent<BehaviourEvent>) {
    let m = get();
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
        _ => {}
    }
    m.record(event);
}

/// The short name `peerpost_overlay_protocol_bytes_total` labels a protocol with: the part of
/// its global name after `/peerpost/` (a private ring's names map to the same labels).
pub(super) fn traffic_label(global_name: &str) -> &'static str {
    crate::metrics::TRAFFIC_PROTOCOLS
        .into_iter()
        .find(|p| {
            global_name
                .strip_prefix("/peerpost/")
                .and_then(|rest| rest.strip_prefix(p))
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .unwrap_or("other")
}

/// Counts one frame of `len` payload bytes (plus its 4-byte length prefix).
pub(super) fn frame(global_name: &str, direction: &'static str, len: usize) {
    crate::metrics::get().overlay_frame(traffic_label(global_name), direction, len + 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_protocol_has_its_label() {
        assert_eq!(traffic_label(super::super::protocol::BLOB_PROTOCOL), "blob");
        assert_eq!(
            traffic_label(super::super::protocol::NOTIFY_PROTOCOL),
            "notify"
        );
        assert_eq!(
            traffic_label(super::super::replica::REPLICA_PROTOCOL),
            "replica"
        );
        assert_eq!(traffic_label("/peerpost/blobby/1"), "other");
        assert_eq!(traffic_label("/other/blob/1"), "other");
    }
}
