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
