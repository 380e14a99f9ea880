//! What the node measures: the metrics endpoint with its scrape-time gauges, and its
//! part in the ring statistics rounds.

use super::*;

/// The ring statistics rounds, with this node's figures (docs/design.md "Ring statistics").
pub(super) fn ring_stats(
    client: overlay::Client,
    store: Store,
    config: &NodeConfig,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let started = std::time::Instant::now();
    let offered = config.overlay.contribution;
    let last_delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = client.clone();
    async move {
        let figures = move || {
            let (client, store, last) = (c.clone(), store.clone(), last_delivered.clone());
            async move {
                use std::sync::atomic::Ordering;
                let status = client.status().await.unwrap_or_default();
                let used = store.held_stats().await.map(|h| h.bytes).unwrap_or(0);
                let total = crate::metrics::get().delivered_total();
                let before = last.swap(total, Ordering::SeqCst);
                overlay::stats::Figures {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    uptime_secs: started.elapsed().as_secs(),
                    offered_bytes: offered,
                    used_bytes: used,
                    delivered: total.saturating_sub(before),
                    reachable: status.dht_mode == "server",
                }
            }
        };
        client.run_stats(figures, cancel).await
    }
}

/// Binds and serves the metrics endpoint; a bind failure (e.g. a second node on this machine
/// with the default port) is a warning, not an error: the node runs without metrics.
pub(super) async fn serve_metrics(
    addr: SocketAddr,
    store: &Store,
    client: &overlay::Client,
    mailbox: Option<Mailbox>,
    backup: Option<durability::backup::BackupConfig>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Option<SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "metrics endpoint not served: cannot bind (set overlay.metrics to another address, or \"\" to disable it)");
            return None;
        }
    };
    let bound = listener.local_addr().ok();
    overlay::metrics::register();
    if let Some(backup) = backup {
        tasks.spawn(
            probe_durability(client.clone(), store.clone(), backup, cancel.clone())
                .in_current_span(),
        );
    }
    let (store, client) = (store.clone(), client.clone());
    let refresh = move || {
        let (store, client, mailbox) = (store.clone(), client.clone(), mailbox.clone());
        async move { refresh_gauges(&store, &client, mailbox.as_ref()).await }
    };
    tasks.spawn(crate::metrics::http::serve(listener, refresh, cancel.clone()).in_current_span());
    bound
}

/// Sets the gauges read from the store, just before a scrape (local reads only).
async fn refresh_gauges(store: &Store, client: &overlay::Client, mailbox: Option<&Mailbox>) {
    use crate::metrics::Metrics;
    let m = crate::metrics::get();
    if let Ok(s) = client.status().await {
        Metrics::set(&m.overlay_peers, s.connected.len() as u64);
        Metrics::set(&m.overlay_routing_table, s.routing_table as u64);
        Metrics::set(&m.overlay_records, s.records as u64);
        Metrics::set(&m.overlay_banned, s.banned as u64);
        Metrics::set(&m.overlay_held_blobs, s.held_blobs);
        Metrics::set(&m.overlay_held_bytes, s.held_bytes);
    }
    if let Ok(s) = store.stats().await {
        Metrics::set(&m.store_objects, s.objects);
        Metrics::set(&m.store_object_bytes, s.object_bytes);
        // What the quota check counts (mailbox::write): the sealed objects of the store.
        Metrics::set(&m.quota_used_bytes, s.object_bytes);
    }
    if let Some(mb) = mailbox {
        Metrics::set(&m.quota_allowed_bytes, mb.quota().unwrap_or(0));
    }
    if let Ok(n) = store.outbox_len().await {
        Metrics::set(&m.outbox_queued, n);
    }
    if let Ok(d) = crate::durability::status::local(store).await {
        Metrics::set(&m.backup_bundles, (d.body_bundles + d.log_bundles) as u64);
        Metrics::set(&m.backup_placed_bytes, d.bytes);
        Metrics::set(&m.backup_pending_bytes, d.pending_bytes);
        Metrics::set(&m.backup_repairs, d.repairs);
    }
}

/// How often the durability probe locates the fragments of the user's bundles for the
/// P(loss) gauge (the same work as `peerpost status`: a few DHT lookups per
/// bundle, at most `durability::status::MAX_CHECKED` bundles), and how long one may take.
const PROBE_EVERY: Duration = Duration::from_secs(300);
const PROBE_FIRST: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// Sets the durability gauges that need the ring (P(loss) now, bundles below target,
/// fragments located) every [`PROBE_EVERY`]; a scrape never waits for the ring.
async fn probe_durability(
    client: overlay::Client,
    store: Store,
    backup: durability::backup::BackupConfig,
    cancel: CancellationToken,
) {
    let mut wait = PROBE_FIRST;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = PROBE_EVERY;
        let check = durability::status::check(&client, &store, &backup);
        match tokio::time::timeout(PROBE_TIMEOUT, check).await {
            Ok(Ok(st)) => crate::metrics::get().durability_probe(
                st.loss_now,
                st.below_target.unwrap_or(0),
                st.checked.len(),
                st.checked.iter().map(|b| b.found).sum(),
            ),
            Ok(Err(e)) => tracing::debug!(error = %e, "durability probe failed"),
            Err(_) => tracing::debug!("durability probe timed out"),
        }
    }
}
