//! A gateway between the node's private ring and the global ring (issue #16; docs/design.md
//! "Rings and gateways"): its global-side overlay, and the export of this member's record.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Error, NodeConfig};
use crate::crypto::DirectoryRecord;
use crate::overlay::gateway::service::{Gateway, Inbound, Settings as GatewaySettings};
use crate::overlay::{self, Event};
use crate::store::Store;

/// A gateway's global side (docs/design.md "Rings and gateways").
pub struct GatewayConfig {
    /// The global ring's overlay: no PSK, its own peer key and listen addresses.
    pub overlay: overlay::Config,
    /// Its own store (what the global ring's peers put on this node stays apart from the
    /// ring's).
    pub store: Store,
    pub per_sender_per_minute: u32,
    pub per_minute: u32,
}

/// Starts the gateway (issue #16): the global ring's overlay beside the ring's, its events
/// (gateway requests only) and the gateway service with both clients.
pub(super) fn start_gateway(
    g: GatewayConfig,
    config: &NodeConfig,
    ring: &overlay::Client,
    from_ring: tokio::sync::mpsc::Receiver<Inbound>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<overlay::Client, Error> {
    let refuse = |m: &str| Error::Overlay(overlay::Error::Start(m.to_string()));
    if config.overlay.psk.is_none() {
        return Err(refuse(
            "a gateway joins a private ring to the global ring: set overlay.psk_file (`peerpost ring join`)",
        ));
    }
    let Some(authority) = config.overlay.ring_authority else {
        return Err(refuse(
            "a gateway needs the ring authority (overlay.ring_authority, `peerpost ring join`)",
        ));
    };
    if g.overlay.psk.is_some() {
        return Err(refuse("a gateway's global side has no pre-shared key"));
    }
    let (global, events, task) = {
        let span = tracing::info_span!("gateway");
        let _in = span.enter();
        overlay::spawn(g.overlay, g.store, cancel.clone())?
    };
    tasks.spawn(
        async move {
            let _ = task.await;
        }
        .in_current_span(),
    );
    let (tx, from_global) = tokio::sync::mpsc::channel::<Inbound>(64);
    super::forward_events(events, cancel.clone(), tasks, move |ev| {
        if let Event::GatewayRequest {
            from,
            payload,
            reply,
        } = ev
            && tx.try_send((from, payload, reply)).is_err()
        {
            tracing::debug!(%from, "gateway request dropped (busy)");
        }
    });
    let domain = overlay::gateway::domain_of(&config.address);
    tracing::info!(
        target: "peerpost::_events::gateway",
        %domain,
        global_peer = %global.peer_id(),
        "gateway between the ring and the global ring"
    );
    let gw = Gateway::new(
        ring.clone(),
        global.clone(),
        GatewaySettings {
            domain,
            authority,
            per_sender_per_minute: g.per_sender_per_minute,
            per_minute: g.per_minute,
        },
    );
    tasks.spawn(
        gw.run(from_ring, from_global, cancel.clone())
            .in_current_span(),
    );
    Ok(global)
}

/// Hands this member's certified record to the ring's gateways, which publish it in the
/// global ring (issue #16): every 10 s until one took it, then every 6 h.
pub(super) async fn export_record(
    client: overlay::Client,
    cert: DirectoryRecord,
    cancel: CancellationToken,
) {
    loop {
        let wait = if cert.expires <= crate::overlay::gateway::now() {
            return;
        } else if client.export_record(&cert).await > 0 {
            Duration::from_secs(6 * 3600)
        } else {
            Duration::from_secs(10)
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
