//! The node's OpenMetrics endpoint (issue #17): one process-wide set of metric families
//! ([`get`]), which any module may update with a one-line call, and a small HTTP responder
//! ([`http::serve`]) that encodes them on `GET /metrics`.
//!
//! This is the only module that uses `prometheus_client` (scripts/layers). It depends on no
//! other module of the crate: gauges that describe the store or the backup are set at scrape
//! time by a refresh hook the node passes to [`http::serve`].
//!
//! The families are process-wide: a process running several nodes (the in-process test ring,
//! `peerpost demo`) counts them together.

pub mod http;
pub mod mount;

use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabel {
    protocol: &'static str,
    /// The command's name as the code spells it (a fixed set; "invalid" for a line that
    /// did not parse), never anything the client sent.
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabel {
    /// The overlay protocol's short name (blob, notify, replica, gateway), a fixed set.
    protocol: &'static str,
    /// "in" or "out".
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabel {
    protocol: &'static str,
    result: &'static str,
}

/// The overlay protocols whose frames are counted (Kademlia, identify and ping are libp2p's
/// own: see `peerpost_libp2p_…`).
pub const TRAFFIC_PROTOCOLS: [&str; 4] = ["blob", "notify", "replica", "gateway"];

/// Submission→delivered latency buckets (seconds): a direct overlay delivery takes well under
/// a second, a retried one minutes to days.
const LATENCY_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
];

/// The node's metric families. Counters only grow; gauges marked "at scrape" are set by the
/// node's refresh hook just before each encoding.
pub struct Metrics {
    /// Locked to encode, and to let libp2p's own families register (the overlay, once).
    registry: Mutex<Registry>,
    queued: Counter,
    delivered: Family<RouteLabel, Counter>,
    retried: Counter,
    bounced: Counter,
    latency: Histogram,
    sessions: Family<ProtocolLabel, Counter>,
    sessions_active: Family<ProtocolLabel, Gauge>,
    sessions_refused: Family<ProtocolLabel, Counter>,
    commands: Family<CommandLabel, Counter>,
    handshakes: Family<HandshakeLabel, Counter>,
    logins_failed: Counter,
    scrapes: Counter,
    overlay_bytes: Family<TrafficLabel, Counter>,
    store_commits: Counter,
    /// At scrape: the FUSE mount's operations, once one is watched.
    mount: std::sync::Arc<Mutex<Option<mount::Source>>>,
    /// At scrape: the store and the backup.
    pub store_objects: Gauge,
    pub store_object_bytes: Gauge,
    pub outbox_queued: Gauge,
    pub backup_bundles: Gauge,
    pub backup_placed_bytes: Gauge,
    pub backup_pending_bytes: Gauge,
    pub backup_repairs: Gauge,
    /// At scrape: the overlay as the node sees it.
    pub overlay_peers: Gauge,
    pub overlay_routing_table: Gauge,
    pub overlay_records: Gauge,
    pub overlay_banned: Gauge,
    /// At scrape: what this node holds for others (fragments, leases, inbox entries).
    pub overlay_held_blobs: Gauge,
    pub overlay_held_bytes: Gauge,
    /// At scrape: the user's storage in the ring (contribution ÷ overhead) and its use.
    pub quota_allowed_bytes: Gauge,
    pub quota_used_bytes: Gauge,
    /// Set by the node's periodic durability probe (fragments located in the ring).
    pub durability_loss: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub durability_below_target: Gauge,
    pub durability_checked: Gauge,
    pub durability_located: Gauge,
    pub durability_probed: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide families.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A gauge holds an i64: clamp what does not fit.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("peerpost");
        let queued = Counter::default();
        let delivered = Family::<RouteLabel, Counter>::default();
        let retried = Counter::default();
        let bounced = Counter::default();
        let latency = Histogram::new(LATENCY_BUCKETS);
        let sessions = Family::<ProtocolLabel, Counter>::default();
        let sessions_active = Family::<ProtocolLabel, Gauge>::default();
        let sessions_refused = Family::<ProtocolLabel, Counter>::default();
        let commands = Family::<CommandLabel, Counter>::default();
        let handshakes = Family::<HandshakeLabel, Counter>::default();
        let logins_failed = Counter::default();
        let scrapes = Counter::default();
        let overlay_bytes = Family::<TrafficLabel, Counter>::default();
        let store_commits = Counter::default();
        let m = Metrics {
            overlay_bytes,
            store_commits,
            queued,
            delivered,
            retried,
            bounced,
            latency,
            sessions,
            sessions_active,
            sessions_refused,
            commands,
            handshakes,
            logins_failed,
            scrapes,
            store_objects: Gauge::default(),
            store_object_bytes: Gauge::default(),
            outbox_queued: Gauge::default(),
            backup_bundles: Gauge::default(),
            backup_placed_bytes: Gauge::default(),
            backup_pending_bytes: Gauge::default(),
            backup_repairs: Gauge::default(),
            overlay_peers: Gauge::default(),
            overlay_routing_table: Gauge::default(),
            overlay_records: Gauge::default(),
            overlay_banned: Gauge::default(),
            overlay_held_blobs: Gauge::default(),
            overlay_held_bytes: Gauge::default(),
            quota_allowed_bytes: Gauge::default(),
            quota_used_bytes: Gauge::default(),
            durability_loss: Gauge::default(),
            durability_below_target: Gauge::default(),
            durability_checked: Gauge::default(),
            durability_located: Gauge::default(),
            durability_probed: Gauge::default(),
            registry: Mutex::new(Registry::default()),
            mount: Default::default(),
        };
        let r = &mut registry;
        r.register_collector(Box::new(mount::MountCollector {
            source: m.mount.clone(),
        }));
        r.register(
            "delivery_queued",
            "Recipients accepted into the outbound queue",
            m.queued.clone(),
        );
        r.register(
            "delivery_delivered",
            "Recipients delivered, by route (overlay or smarthost)",
            m.delivered.clone(),
        );
        r.register(
            "delivery_retried",
            "Delivery attempts deferred for a retry",
            m.retried.clone(),
        );
        r.register(
            "delivery_bounced",
            "Recipients given up on (a DSN went to the sender)",
            m.bounced.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "Time from submission to delivery of one recipient",
            Unit::Seconds,
            m.latency.clone(),
        );
        r.register(
            "server_sessions",
            "Sessions admitted, by protocol (imap, pop3, smtp)",
            m.sessions.clone(),
        );
        r.register(
            "server_sessions_active",
            "Sessions open now, by protocol",
            m.sessions_active.clone(),
        );
        r.register(
            "server_sessions_refused",
            "Connections refused because the listener was full, by protocol",
            m.sessions_refused.clone(),
        );
        r.register(
            "server_commands",
            "Commands received, by protocol and command (\"invalid\": a line that did not parse)",
            m.commands.clone(),
        );
        r.register(
            "server_tls_handshakes",
            "Implicit-TLS handshakes, by protocol and result (ok, failed, timeout)",
            m.handshakes.clone(),
        );
        r.register(
            "server_logins_failed",
            "Password checks that failed (all protocols)",
            m.logins_failed.clone(),
        );
        r.register(
            "metrics_scrapes",
            "Requests served by this endpoint",
            m.scrapes.clone(),
        );
        r.register(
            "store_objects",
            "Objects in the local store",
            m.store_objects.clone(),
        );
        r.register_with_unit(
            "store_object",
            "Bytes of the objects in the local store",
            Unit::Bytes,
            m.store_object_bytes.clone(),
        );
        r.register(
            "delivery_outbox",
            "Recipient rows waiting in the outbound queue",
            m.outbox_queued.clone(),
        );
        r.register(
            "backup_bundles",
            "Backup bundles placed in the ring (bodies and log segments)",
            m.backup_bundles.clone(),
        );
        r.register_with_unit(
            "backup_placed",
            "Bytes in placed backup bundles",
            Unit::Bytes,
            m.backup_placed_bytes.clone(),
        );
        r.register_with_unit(
            "backup_pending",
            "Bytes of bodies and log entries not yet placed",
            Unit::Bytes,
            m.backup_pending_bytes.clone(),
        );
        r.register(
            "backup_repairs",
            "Fragments this node re-created (since the store was made)",
            m.backup_repairs.clone(),
        );
        r.register(
            "overlay_peers",
            "Overlay peers connected now",
            m.overlay_peers.clone(),
        );
        r.register(
            "overlay_routing_table",
            "Peers in the Kademlia routing table",
            m.overlay_routing_table.clone(),
        );
        r.register(
            "overlay_records",
            "Directory records held for others (Kademlia store)",
            m.overlay_records.clone(),
        );
        r.register(
            "overlay_banned",
            "Peers banned for repeated offences",
            m.overlay_banned.clone(),
        );
        r.register_with_unit(
            "overlay_protocol",
            "Bytes of overlay frames (length prefix included), by protocol and direction",
            Unit::Bytes,
            m.overlay_bytes.clone(),
        );
        r.register(
            "overlay_held_blobs",
            "Blobs held for others: fragments, leases, inbox entries",
            m.overlay_held_blobs.clone(),
        );
        r.register_with_unit(
            "overlay_held",
            "Bytes of the blobs held for others",
            Unit::Bytes,
            m.overlay_held_bytes.clone(),
        );
        r.register(
            "store_commits",
            "Write transactions committed (each a durable sync)",
            m.store_commits.clone(),
        );
        r.register_with_unit(
            "quota_allowed",
            "The user's storage in the ring: contribution divided by the coding overhead (0: no limit yet)",
            Unit::Bytes,
            m.quota_allowed_bytes.clone(),
        );
        r.register_with_unit(
            "quota_used",
            "Bytes of the user's sealed objects counted against the quota",
            Unit::Bytes,
            m.quota_used_bytes.clone(),
        );
        r.register(
            "durability_loss_probability",
            "P(loss) of the user's backup now: of the checked bundles, any lost if the configured fraction of the ring failed at once, from the fragments located (last probe)",
            m.durability_loss.clone(),
        );
        r.register(
            "durability_bundles_below_target",
            "Placed bundles whose n/k no longer meets the target for the ring's size (re-coded by the next pass)",
            m.durability_below_target.clone(),
        );
        r.register(
            "durability_bundles_checked",
            "Bundles whose fragments the last probe located",
            m.durability_checked.clone(),
        );
        r.register(
            "durability_fragments_located",
            "Fragments of the checked bundles found in the ring by the last probe",
            m.durability_located.clone(),
        );
        r.register_with_unit(
            "durability_probe_timestamp",
            "When the last durability probe finished (unix time)",
            Unit::Seconds,
            m.durability_probed.clone(),
        );
        // Every label a dashboard expects, at zero from the start.
        for route in ["overlay", "smarthost"] {
            let _ = m.delivered.get_or_create(&RouteLabel { route });
        }
        for protocol in TRAFFIC_PROTOCOLS {
            for direction in ["in", "out"] {
                let _ = m.overlay_bytes.get_or_create(&TrafficLabel {
                    protocol,
                    direction,
                });
            }
        }
        for protocol in ["imap", "pop3", "smtp"] {
            let l = ProtocolLabel { protocol };
            let _ = m.sessions.get_or_create(&l);
            let _ = m.sessions_active.get_or_create(&l);
            let _ = m.sessions_refused.get_or_create(&l);
            let _ = m.commands.get_or_create(&CommandLabel {
                protocol,
                command: "invalid",
            });
            for result in ["ok", "failed", "timeout"] {
                let _ = m
                    .handshakes
                    .get_or_create(&HandshakeLabel { protocol, result });
            }
        }
        Metrics {
            registry: Mutex::new(registry),
            ..m
        }
    }

    /// Recipients accepted into the outbound queue.
    pub fn delivery_queued(&self, recipients: usize) {
        self.queued.inc_by(recipients as u64);
    }

    /// One recipient delivered by `route` ("overlay" or "smarthost") of a message submitted at
    /// `submitted` (unix seconds).
    pub fn delivered(&self, route: &'static str, submitted: u64) {
        self.delivered.get_or_create(&RouteLabel { route }).inc();
        self.latency
            .observe((now_secs_f64() - submitted as f64).max(0.0));
    }

    /// Messages delivered so far by this process, over every route (ring statistics).
    pub fn delivered_total(&self) -> u64 {
        ["overlay", "smarthost"]
            .into_iter()
            .map(|route| self.delivered.get_or_create(&RouteLabel { route }).get())
            .sum()
    }

    pub fn delivery_retried(&self) {
        self.retried.inc();
    }

    pub fn delivery_bounced(&self) {
        self.bounced.inc();
    }

    /// A session was admitted; the returned guard counts it as active until dropped.
    pub fn session(&self, protocol: &'static str) -> ActiveSession {
        self.sessions
            .get_or_create(&ProtocolLabel { protocol })
            .inc();
        let gauge = self
            .sessions_active
            .get_or_create(&ProtocolLabel { protocol })
            .clone();
        gauge.inc();
        ActiveSession(gauge)
    }

    pub fn session_refused(&self, protocol: &'static str) {
        self.sessions_refused
            .get_or_create(&ProtocolLabel { protocol })
            .inc();
    }

    /// A client sent a command (`command` from the parser's fixed set of names).
    pub fn command(&self, protocol: &'static str, command: &'static str) {
        self.commands
            .get_or_create(&CommandLabel { protocol, command })
            .inc();
    }

    /// An implicit-TLS handshake ended: `result` is "ok", "failed" or "timeout".
    pub fn tls_handshake(&self, protocol: &'static str, result: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabel { protocol, result })
            .inc();
    }

    pub fn login_failed(&self) {
        self.logins_failed.inc();
    }

    /// `bytes` of one overlay frame went `direction` ("in", "out") on `protocol` (one of
    /// [`TRAFFIC_PROTOCOLS`]).
    pub fn overlay_frame(&self, protocol: &'static str, direction: &'static str, bytes: usize) {
        self.overlay_bytes
            .get_or_create(&TrafficLabel {
                protocol,
                direction,
            })
            .inc_by(bytes as u64);
    }

    /// The store committed a write transaction.
    pub fn store_commit(&self) {
        self.store_commits.inc();
    }

    /// What the last durability probe found (see [`Metrics::durability_loss`]).
    pub fn durability_probe(
        &self,
        loss: Option<f64>,
        below_target: usize,
        checked: usize,
        located: usize,
    ) {
        self.durability_loss.set(loss.unwrap_or(0.0));
        Metrics::set(&self.durability_below_target, below_target as u64);
        Metrics::set(&self.durability_checked, checked as u64);
        Metrics::set(&self.durability_located, located as u64);
        self.durability_probed.set(now_secs_f64() as i64);
    }

    /// Sets a gauge from an unsigned figure.
    pub fn set(gauge: &Gauge, v: u64) {
        gauge.set(to_i64(v));
    }

    /// Lets another library register its families beside the node's (libp2p's own metrics,
    /// from the overlay; call once per process).
    pub fn register<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Exports the FUSE mount's operations from now on (`run --mount`, `peerpost mount`).
    pub fn watch_mount(&self, source: mount::Source) {
        *self.mount.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// The families in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        self.scrapes.inc();
        let mut out = String::with_capacity(16 * 1024);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Counts a session as active while it lives.
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}
