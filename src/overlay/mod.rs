//! The overlay: the only module that touches libp2p.
//!
//! Shape of rust-libp2p's file-sharing example: [`spawn`] starts one [`EventLoop`] task that
//! owns the swarm, and returns a cloneable [`Client`] (commands over a bounded `mpsc`, each
//! carrying a `oneshot` reply) and a bounded stream of [`Event`]s. The loop stops when its
//! cancellation token fires or every `Client` is dropped.
//!
//! What runs on the swarm: TCP + QUIC (or the memory transport in tests), Noise, Yamux,
//! Identify (listen addresses feed Kademlia), Ping, Kademlia under `/peerpost/kad/1.0.0`
//! (disjoint query paths; inbound records validated before storing, see [`directory`]),
//! mDNS, connection limits, and two request-response protocols with raw length-prefixed
//! frames ([`protocol`]): blobs (store / fetch / has) and notifications.
//!
//! Built on those, [`Client`] offers the directory (publish, lookup with trust-on-first-use
//! pins kept in the store) and the object layer (put / get of content-addressed blobs on the
//! peers closest to a key, verified by hash on receipt; a peer serving wrong bytes is scored
//! down and, after a few offences, disconnected and ignored).
//!
//! [`EventLoop`]: event_loop::EventLoop

mod behaviour;
// Backup roots (durability, issue #6).
pub mod backup_root;
pub mod directory;
pub mod diversity;
mod event_loop;
/// Gateways between a private ring and the global ring (issue #16).
pub mod gateway;
mod inbox;
/// libp2p's own metrics, registered beside the node's.
pub mod metrics;
mod nat;
pub mod natpmp;
mod opaque;
/// Private rings: the pre-shared key and each ring's protocol names (issue #16).
pub mod pnet;
pub mod protocol;
pub mod replica;
pub mod stats;

pub use behaviour::MAX_STREAMS;
pub use inbox::{device_peer_id, list_request, put_request};

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::crypto::{DirectoryRecord, ObjectId, SealedObject, record::normalize_address};
use crate::store::Store;
use directory::RecordError;
use protocol::{Refusal, Request, Response};

/// Capacity of the command channel (clients wait when it is full).
const COMMAND_CAPACITY: usize = 256;
/// Capacity of the event channel (events are dropped, with a warning, when it is full).
const EVENT_CAPACITY: usize = 256;
/// How many closest peers a put tries before giving up.
const MAX_PUT_CANDIDATES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP + QUIC + DNS.
    Network,
    /// libp2p's in-process memory transport (`/memory/N` addresses), for tests.
    Memory,
}

/// What the overlay needs to start (node.rs builds it from `config::OverlayConfig`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The device key's Ed25519 seed: the node's libp2p identity.
    pub device_seed: [u8; 32],
    pub transport: TransportKind,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub max_connections: u32,
    /// Bytes this node holds for others at most.
    pub contribution: u64,
    /// Kademlia replication factor (records go to this many closest peers).
    pub replication: usize,
    /// Copies of a blob `put_blob` stores.
    pub blob_replicas: usize,
    /// Ring authority whose certificate allows a key change for a pinned address.
    pub ring_authority: Option<[u8; 32]>,
    pub request_timeout: Duration,
    pub query_timeout: Duration,
    /// Inbound blob requests one peer may have in flight (a sender has up to 16 deliveries
    /// in flight, each with one inbox put to every holder).
    pub max_inflight_per_peer: usize,
    /// Whether others can dial this node: decides the Kademlia mode (NAT, issue #19).
    pub reachable: Reachable,
    /// Ask the home router to forward the listen ports (UPnP IGD; NAT, issue #19): the
    /// mapped address becomes an external address candidate, which AutoNAT then confirms.
    pub upnp: bool,
    /// Ask the default gateway to forward the listen ports (NAT-PMP, RFC 6886; issue #19):
    /// like `upnp`, the mapped address is only a candidate that AutoNAT confirms.
    pub natpmp: bool,
    /// Ring statistics ([`stats`]): whether this node shares (and holds and collects)
    /// them, and the length of one round.
    pub stats_share: bool,
    pub stats_every: Duration,
    /// A private ring's pre-shared key (issue #16): pnet on every connection, TCP only, and
    /// the ring's own protocol names. `None`: the global ring.
    pub psk: Option<pnet::Psk>,
}

/// `[overlay] reachable`: "auto" lets AutoNAT decide; "yes"/"no" force it.
///
/// A reachable node is a Kademlia server (it answers DHT queries and others put it in their
/// routing tables, so it holds fragments, inbox entries and backup roots); an unreachable
/// one is a Kademlia client: it uses the DHT but is never chosen to hold anything, since a
/// holder nobody can dial loses what it holds for everyone else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachable {
    #[default]
    Auto,
    Yes,
    No,
}

impl Reachable {
    /// "auto" for a node that only listens on loopback or the memory transport means "yes":
    /// such a node is part of a ring on one host, where every peer can dial every other and
    /// AutoNAT has nothing to find out (and, for the memory transport, no way to dial back).
    pub(crate) fn resolve(self, config: &Config) -> Reachable {
        use libp2p::multiaddr::Protocol;
        let local_only = config.transport == TransportKind::Memory
            || (!config.listen.is_empty()
                && config.listen.iter().all(|a| {
                    matches!(
                        a.iter().next(),
                        Some(Protocol::Ip4(ip)) if ip.is_loopback()
                    ) || matches!(a.iter().next(), Some(Protocol::Ip6(ip)) if ip.is_loopback())
                        || matches!(a.iter().next(), Some(Protocol::Memory(_)))
                }));
        match self {
            Reachable::Auto if local_only => Reachable::Yes,
            other => other,
        }
    }
}

impl Config {
    pub fn new(device_seed: [u8; 32], transport: TransportKind) -> Config {
        Config {
            device_seed,
            transport,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            max_connections: 256,
            contribution: 10 << 30,
            replication: 20,
            blob_replicas: 3,
            ring_authority: None,
            request_timeout: Duration::from_secs(30),
            query_timeout: Duration::from_secs(30),
            max_inflight_per_peer: 16,
            reachable: Reachable::Auto,
            upnp: false,
            natpmp: false,
            stats_share: true,
            stats_every: Duration::from_secs(3600),
            psk: None,
        }
    }
}

/// Parses multiaddr strings (from the config file or the command line).
pub fn parse_addrs(addrs: &[String]) -> Result<Vec<Multiaddr>, Error> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .map_err(|e| Error::Address(format!("{a:?}: {e}")))
        })
        .collect()
}

/// Whether `addr` runs over QUIC (which a private ring cannot use).
fn is_quic(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic | Protocol::Udp(_)))
}

/// A memory-transport listen address (tests): `/memory/N`.
pub fn memory_addr(n: u64) -> Multiaddr {
    Multiaddr::empty().with(libp2p::multiaddr::Protocol::Memory(n))
}

/// `addr` with `/p2p/PEER` appended (a dialable address that also names the peer).
pub fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    addr.with(libp2p::multiaddr::Protocol::P2p(peer))
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot start the overlay: {0}")]
    Start(String),
    #[error("invalid overlay address {0}")]
    Address(String),
    #[error("the overlay has stopped")]
    Stopped,
    #[error("the store failed: {0}")]
    Store(#[from] crate::store::Error),
}

#[derive(Debug, Error)]
pub enum LookupError {
    #[error("{0:?} is not a valid address: {1}")]
    Address(String, &'static str),
    #[error("no directory record found for {0}")]
    NotFound(String),
    #[error(transparent)]
    Refused(RecordError),
    #[error(transparent)]
    Overlay(#[from] Error),
}

#[derive(Debug, Error)]
pub enum PublishError {
    #[error("no peer accepted the record yet ({0}); it is kept locally and republished")]
    NoPeers(String),
    #[error(transparent)]
    Overlay(#[from] Error),
}

#[derive(Debug, Error)]
pub enum BlobError {
    #[error("blob of {0} bytes exceeds the limit of {max}", max = protocol::MAX_BLOB)]
    TooLarge(usize),
    #[error("no peer is known to hold {0}")]
    NotFound(String),
    #[error("only {stored} of {wanted} copies could be placed")]
    TooFewHolders { stored: usize, wanted: usize },
    #[error(transparent)]
    Overlay(#[from] Error),
}

/// Why one request to one peer failed.
#[derive(Debug, Clone, Error)]
pub enum RequestError {
    #[error("request failed: {0}")]
    Failed(String),
    #[error("the overlay has stopped")]
    Stopped,
}

/// Something the overlay tells its owner.
#[derive(Debug, Clone)]
pub enum Event {
    Listening(Multiaddr),
    /// A peer pushed a notification (a sealed envelope, ≤ protocol::MAX_NOTIFY bytes).
    Notification {
        from: PeerId,
        payload: Vec<u8>,
    },
    // --- devices (issue #15) ---
    /// A connection to a peer opened (its first): a device of ours may have come back.
    Connected(PeerId),
    /// A replica request (≤ replica::MAX_REPLICA_FRAME bytes); the owner authenticates
    /// `from` and sends the answer on `reply` (dropping it closes the stream unanswered).
    ReplicaRequest {
        from: PeerId,
        payload: Vec<u8>,
        reply: ReplicaReply,
    },
    /// A gateway request (≤ gateway::MAX_GATEWAY_FRAME bytes), answered on `reply` by the
    /// node's gateway service; on a node that is no gateway it is dropped (unanswered).
    GatewayRequest {
        from: PeerId,
        payload: Vec<u8>,
        reply: ReplicaReply,
    },
}

/// Where the owner answers a replica (or gateway) request.
#[derive(Debug, Clone)]
pub struct ReplicaReply(std::sync::Arc<std::sync::Mutex<Option<oneshot::Sender<Vec<u8>>>>>);

impl ReplicaReply {
    pub fn send(&self, payload: Vec<u8>) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(payload);
        }
    }
}

/// A running node's overlay, as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub peer_id: String,
    pub listen: Vec<String>,
    pub connected: Vec<String>,
    pub routing_table: usize,
    /// Directory records held for others (Kademlia store).
    pub records: usize,
    pub held_blobs: u64,
    pub held_bytes: u64,
    pub banned: usize,
    /// AutoNAT's view: "yes" (public address confirmed), "no" (behind NAT), "unknown"
    /// (not probed yet), or "forced" when `reachable` is "yes"/"no" or the ring is local.
    #[serde(default)]
    pub reachable: String,
    /// The Kademlia mode: "server" (holds data for others) or "client".
    #[serde(default)]
    pub dht_mode: String,
    /// The address AutoNAT confirmed as public, if any.
    #[serde(default)]
    pub public_address: Option<String>,
    /// Relays this node holds an accepted reservation on (peer ids; NAT, issue #19).
    #[serde(default)]
    pub relays: Vec<String>,
    /// This node's `/p2p-circuit` addresses, as published for others to dial.
    #[serde(default)]
    pub relayed_addresses: Vec<String>,
    /// Open connections that go straight to the peer, and those through a relay.
    #[serde(default)]
    pub direct_connections: usize,
    #[serde(default)]
    pub relayed_connections: usize,
    /// Peers with at least one direct connection.
    #[serde(default)]
    pub direct_peers: Vec<String>,
    /// DCUtR hole punches finished, and those that gave a direct connection.
    #[serde(default)]
    pub hole_punches_tried: u64,
    #[serde(default)]
    pub hole_punches_won: u64,
    /// UPnP port mapping: "off" (`[overlay] upnp = false`), "searching", "no gateway",
    /// "gateway not public" (the router's own outside address is private: a NAT behind a
    /// NAT), or "mapped" (with the mapped addresses in `upnp_mapped`).
    #[serde(default)]
    pub upnp: String,
    #[serde(default)]
    pub upnp_mapped: Vec<String>,
    /// NAT-PMP port mapping: "off" (`[overlay] natpmp = false`), "searching", "no gateway"
    /// (no default gateway, or it did not answer on port 5351), "refused: …" (the
    /// gateway's result code), "gateway found, nothing mapped" or "mapped" (the external
    /// addresses in `natpmp_mapped`).
    #[serde(default)]
    pub natpmp: String,
    #[serde(default)]
    pub natpmp_mapped: Vec<String>,
}

/// A successful lookup.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub record: DirectoryRecord,
    /// The record's key is the one the user pinned with `peerpost trust`.
    pub trusted: bool,
    /// Kademlia requests the query made (0: answered from the local store).
    pub requests: u32,
    pub elapsed: Duration,
}

/// Raw outcome of a DHT record query (event loop → client).
#[derive(Debug)]
pub(crate) struct RecordsFound {
    records: Vec<(DirectoryRecord, usize)>,
    requests: u32,
}

pub(crate) enum Command {
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// Republish the relayed-address record (if this node has relayed addresses).
    PublishAddresses,
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Bootstrap {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Publish {
        record: DirectoryRecord,
        reply: oneshot::Sender<Result<(), String>>,
    },
    GetRecords {
        key: [u8; 32],
        reply: oneshot::Sender<RecordsFound>,
    },
    ClosestPeers {
        key: [u8; 32],
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Penalize {
        peer: PeerId,
        reason: &'static str,
    },
    CorruptFetches(bool),
    // --- backup roots (durability, issue #6) ---
    PutBackupRoot {
        key: [u8; 32],
        bytes: Vec<u8>,
        expires: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    GetBackupRoots {
        key: [u8; 32],
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    }, // --- devices (issue #15) ---
    Replica {
        peer: PeerId,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    },
    // --- gateways (issue #16) ---
    Provide {
        key: [u8; 32],
        reply: oneshot::Sender<Result<(), String>>,
    },
    GetProviders {
        key: [u8; 32],
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Gateway {
        peer: PeerId,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    },
}

/// Cloneable handle on the overlay. Every method is cancel-safe for the caller.
#[derive(Clone)]
pub struct Client {
    command_tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    store: Store,
    ring_authority: Option<[u8; 32]>,
    blob_replicas: usize,
    /// Recently found closest peers of DHT inbox keys (mail flow).
    inbox_peers: inbox::PeerCache,
    /// Ring statistics this node holds and collects.
    stats: Arc<stats::Tally>,
    // --- gateways (issue #16) ---
    /// This overlay is a private ring (lookups it cannot answer go to its gateways).
    private: bool,
    gateways: gateway::GatewayCache,
    outside: gateway::OutsideSet,
}

/// Starts the overlay: binds the listen addresses, dials the bootstrap peers, and runs the
/// event loop until `cancel` fires or every [`Client`] is dropped.
pub fn spawn(
    config: Config,
    store: Store,
    cancel: CancellationToken,
) -> Result<(Client, mpsc::Receiver<Event>, JoinHandle<()>), Error> {
    let mut config = config;
    if let Some(psk) = &config.psk {
        // QUIC cannot carry pnet: a private ring is TCP only.
        let (tcp, quic): (Vec<_>, Vec<_>) = config.listen.drain(..).partition(|a| !is_quic(a));
        for a in quic {
            tracing::warn!(%a, "private ring: not listening on a QUIC address (pnet is TCP only)");
        }
        config.listen = tcp;
        config.bootstrap.retain(|a| !is_quic(a));
        tracing::info!(
            fingerprint = %psk.fingerprint(),
            "private ring: every connection needs this ring's pre-shared key"
        );
    }
    let mut swarm = behaviour::build_swarm(&config)?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::Start(format!("cannot listen on {addr}: {e}")))?;
    }
    for addr in &config.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
        }
    }
    let peer_id = *swarm.local_peer_id();
    let stats = Arc::new(stats::Tally::new(config.stats_share, config.stats_every));
    let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CAPACITY);
    let client = Client {
        command_tx,
        peer_id,
        store: store.clone(),
        ring_authority: config.ring_authority,
        blob_replicas: config.blob_replicas,
        inbox_peers: Default::default(),
        stats: stats.clone(),
        private: config.psk.is_some(),
        gateways: Default::default(),
        outside: Default::default(),
    };
    let event_loop = event_loop::EventLoop::new(swarm, command_rx, event_tx, store, config, stats);
    let handle = tokio::spawn(tracing::Instrument::in_current_span(event_loop.run(cancel)));
    Ok((client, event_rx, handle))
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.command_tx
            .send(make(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Whether this node shares ring statistics, and the length of a round.
    pub fn stats_sharing(&self) -> bool {
        self.stats.sharing()
    }

    pub fn stats_every_secs(&self) -> u64 {
        self.stats.every().as_secs()
    }

    /// The ring's statistics totals for the last finished round ([`stats::ring_totals`]),
    /// within 30 s (collectors that do not answer are skipped, not waited for).
    pub async fn ring_stats(&self) -> Option<stats::Totals> {
        tokio::time::timeout(
            Duration::from_secs(30),
            stats::ring_totals(self, &self.stats),
        )
        .await
        .ok()
        .flatten()
    }

    /// Runs this node's statistics rounds until `cancel` ([`stats::run`]); `figures` gives
    /// this node's figures once a round.
    pub async fn run_stats<F, Fut>(&self, figures: F, cancel: CancellationToken)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = stats::Figures>,
    {
        stats::run(self.clone(), self.stats.clone(), figures, cancel).await
    }

    /// Republishes this device's relayed-address record when it is behind NAT (the event
    /// loop also does on every change of its relayed addresses); a no-op otherwise.
    pub async fn republish_addresses(&self) {
        let _ = self.command_tx.send(Command::PublishAddresses).await;
    }

    pub async fn status(&self) -> Result<Status, Error> {
        let mut status = self.call(|reply| Command::Status { reply }).await?;
        let held = self.store.held_stats().await?;
        status.held_blobs = held.blobs;
        status.held_bytes = held.bytes;
        Ok(status)
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.call(|reply| Command::Dial { addr, reply })
            .await?
            .map_err(Error::Start)
    }

    /// Starts a Kademlia bootstrap (a lookup of our own id); fails if no peer is known.
    pub async fn bootstrap(&self) -> Result<(), Error> {
        self.call(|reply| Command::Bootstrap { reply })
            .await?
            .map_err(Error::Start)
    }

    /// Publishes (or republishes) this node's directory record on the closest peers. It is
    /// stored locally even when no peer accepts it.
    pub async fn publish(&self, record: DirectoryRecord) -> Result<(), PublishError> {
        self.call(|reply| Command::Publish { record, reply })
            .await?
            .map_err(PublishError::NoPeers)
    }

    /// Resolves an address to its verified, pinned directory record.
    pub async fn lookup(&self, address: &str) -> Result<Lookup, LookupError> {
        self.lookup_accepting(address, None).await
    }

    /// [`lookup`](Self::lookup), believing only records whose user key has one of `vouched`'s
    /// fingerprints (the address's domain names them: issue #18, docs/design.md "Address
    /// ownership"); such a record replaces a first-use pin. A key the user pinned with
    /// `peerpost trust` outranks both.
    pub async fn lookup_accepting(
        &self,
        address: &str,
        vouched: Option<(&[crate::crypto::record::Fingerprint], &str)>,
    ) -> Result<Lookup, LookupError> {
        let address =
            normalize_address(address).map_err(|why| LookupError::Address(address.into(), why))?;
        let started = Instant::now();
        let key = protocol::directory_key(&address);
        let mut found = self
            .call(|reply| Command::GetRecords { key, reply })
            .await?;
        if found.records.is_empty() {
            // Not in this ring: a private ring asks its gateways (issue #16).
            found.records = self.records_via_gateways(&address).await;
        }
        let now = now_secs();
        let trusted = self
            .store
            .trust_get(address.clone())
            .await
            .map_err(Error::from)?;
        let pinned = self
            .store
            .pin_get(address.clone())
            .await
            .map_err(Error::from)?;
        let res = match (trusted, vouched) {
            (Some(fp), _) => {
                directory::resolve_accepting(&found.records, &[fp], "your `peerpost trust`")
            }
            (None, Some((fps, by))) => directory::resolve_accepting(&found.records, fps, by),
            (None, None) => {
                directory::resolve(&found.records, pinned, self.ring_authority.as_ref(), now)
            }
        };
        for refused in &res.refused {
            tracing::warn!(
                target: "peerpost::_events::directory",
                "SECURITY WARNING: {refused}. Someone may be impersonating {address}."
            );
        }
        let Some(record) = res.record else {
            return Err(match res.refused.into_iter().next() {
                Some(e) => LookupError::Refused(e),
                None => LookupError::NotFound(address),
            });
        };
        if let Some(pin) = res.pin.filter(|_| trusted.is_none()) {
            let kept = match pinned {
                Some(p) if vouched.is_some() && p != pin => {
                    tracing::warn!(
                        target: "peerpost::_events::directory",
                        "the key of {address} is vouched for by {}; first-use pin replaced",
                        vouched.map_or("", |(_, by)| by)
                    );
                    self.store
                        .pin_replace(address.clone(), pin)
                        .await
                        .map_err(Error::from)?;
                    pin
                }
                Some(p) if vouched.is_some() => p,
                None => self
                    .store
                    .pin_first(address.clone(), pin)
                    .await
                    .map_err(Error::from)?,
                Some(_) => {
                    tracing::warn!(
                        target: "peerpost::_events::directory",
                        "key of {address} changed with a ring certificate; pin replaced"
                    );
                    self.store
                        .pin_replace(address.clone(), pin)
                        .await
                        .map_err(Error::from)?;
                    pin
                }
            };
            if kept != pin {
                // Another lookup pinned different keys first: believe the pin.
                return Err(LookupError::Refused(RecordError::KeyChanged {
                    address,
                    pinned: String::new(),
                    offered: record.keys.fingerprint(),
                }));
            }
        }
        Ok(Lookup {
            record,
            trusted: trusted.is_some(),
            requests: found.requests,
            elapsed: started.elapsed(),
        })
    }

    /// The peers closest to `key` in the DHT key space (not including this node).
    pub async fn closest_peers(&self, key: [u8; 32]) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::ClosestPeers { key, reply })
            .await
    }

    /// Sends one request to one peer.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, RequestError> {
        self.call(|reply| Command::Request {
            peer,
            request,
            reply,
        })
        .await
        .map_err(|_| RequestError::Stopped)?
    }

    /// Sends a replica request to another device of this user and waits for its answer
    /// (both ≤ replica::MAX_REPLICA_FRAME bytes).
    pub async fn replica_request(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RequestError> {
        self.call(|reply| Command::Replica {
            peer,
            payload,
            reply,
        })
        .await
        .map_err(|_| RequestError::Stopped)?
    }

    /// Pushes a notification to a peer (≤ protocol::MAX_NOTIFY bytes).
    pub async fn notify(&self, peer: PeerId, payload: Vec<u8>) -> Result<(), RequestError> {
        match self.request(peer, Request::Notify { payload }).await? {
            Response::Ack => Ok(()),
            other => Err(RequestError::Failed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Test hook: make this node a hostile holder that corrupts every blob it serves.
    #[doc(hidden)]
    pub async fn corrupt_fetches_for_tests(&self, on: bool) {
        let _ = self.command_tx.send(Command::CorruptFetches(on)).await;
    }

    async fn penalize(&self, peer: PeerId, reason: &'static str) {
        let _ = self
            .command_tx
            .send(Command::Penalize { peer, reason })
            .await;
    }

    /// Stores a content-addressed blob on the `blob_replicas` peers closest to `placement`
    /// (trying further ones when a close one refuses). Returns the holders: at least one,
    /// at most `blob_replicas`.
    pub async fn put_blob_at(
        &self,
        placement: [u8; 32],
        bytes: Vec<u8>,
    ) -> Result<Vec<PeerId>, BlobError> {
        if bytes.len() > protocol::MAX_BLOB {
            return Err(BlobError::TooLarge(bytes.len()));
        }
        let id = crate::crypto::hash(&bytes);
        let wanted = self.blob_replicas.max(1);
        let candidates = self.closest_peers(placement).await?;
        let mut holders = Vec::new();
        let mut next = candidates.into_iter().take(MAX_PUT_CANDIDATES);
        loop {
            let need = wanted - holders.len();
            let batch: Vec<PeerId> = next.by_ref().take(need).collect();
            if batch.is_empty() {
                break;
            }
            let attempts = batch.iter().map(|p| {
                let req = Request::Store {
                    id,
                    bytes: bytes.clone(),
                };
                async move { (*p, self.request(*p, req).await) }
            });
            for (peer, res) in futures::future::join_all(attempts).await {
                match res {
                    Ok(Response::Stored) => holders.push(peer),
                    Ok(other) => tracing::debug!(%peer, "store refused: {other:?}"),
                    Err(e) => tracing::debug!(%peer, "store failed: {e}"),
                }
            }
            if holders.len() >= wanted {
                break;
            }
        }
        // Fewer holders than wanted is still progress (the durability layer repairs later);
        // none at all is an error.
        if holders.is_empty() {
            return Err(BlobError::TooFewHolders {
                stored: holders.len(),
                wanted,
            });
        }
        Ok(holders)
    }

    /// Fetches the blob `id` from the peers closest to `placement`, checking each answer
    /// against the id; a peer that serves other bytes is penalized and the next one asked.
    pub async fn get_blob_at(
        &self,
        placement: [u8; 32],
        id: [u8; 32],
    ) -> Result<Vec<u8>, BlobError> {
        let candidates = self.closest_peers(placement).await?;
        for peer in candidates.into_iter().take(MAX_PUT_CANDIDATES) {
            match self.request(peer, Request::Fetch { id }).await {
                Ok(Response::Found { bytes }) => {
                    if crate::crypto::hash(&bytes) == id {
                        return Ok(bytes);
                    }
                    tracing::warn!(
                        target: "peerpost::_events::blob",
                        %peer,
                        "peer served bytes that do not match {}; penalized",
                        crate::crypto::hex(&id[..8])
                    );
                    self.penalize(peer, "served corrupt blob").await;
                }
                Ok(Response::Refused(Refusal::NotFound)) => {}
                Ok(other) => tracing::debug!(%peer, "fetch answered {other:?}"),
                Err(e) => tracing::debug!(%peer, "fetch failed: {e}"),
            }
        }
        Err(BlobError::NotFound(crate::crypto::hex(&id)))
    }

    /// Stores a sealed object on the peers closest to its id.
    pub async fn put_object(&self, obj: &SealedObject) -> Result<Vec<PeerId>, BlobError> {
        let id = obj.id();
        self.put_blob_at(*id.as_bytes(), obj.as_bytes().to_vec())
            .await
    }

    /// Fetches a sealed object by id, verified by hash.
    pub async fn get_object(&self, id: ObjectId) -> Result<SealedObject, BlobError> {
        let bytes = self.get_blob_at(*id.as_bytes(), *id.as_bytes()).await?;
        SealedObject::from_bytes_verified(bytes, &id)
            .map_err(|e| BlobError::NotFound(format!("{id}: {e}")))
    }
}

// --- backup roots (durability, issue #6) ---
impl Client {
    /// Publishes a user's signed backup root (overlay/backup_root.rs) on the peers closest to
    /// its key; it is kept locally even when no peer accepts it.
    pub async fn publish_backup_root(&self, bytes: Vec<u8>) -> Result<(), PublishError> {
        let root = backup_root::validate_own(&bytes, now_secs())
            .map_err(|e| PublishError::NoPeers(e.to_string()))?;
        let key = backup_root::key(&root.user);
        let expires = root.expires;
        self.call(|reply| Command::PutBackupRoot {
            key,
            bytes,
            expires,
            reply,
        })
        .await?
        .map_err(PublishError::NoPeers)
    }

    /// The valid backup roots of a user found in the ring, newest (highest `seq`) first.
    pub async fn backup_roots(
        &self,
        user_sign_public: &[u8; 32],
    ) -> Result<Vec<backup_root::BackupRoot>, Error> {
        let key = backup_root::key(user_sign_public);
        let found = self
            .call(|reply| Command::GetBackupRoots { key, reply })
            .await?;
        let now = now_secs();
        let mut roots: Vec<_> = found
            .iter()
            .filter_map(|b| backup_root::validate(b, &key, now).ok())
            .collect();
        roots.sort_by_key(|r| std::cmp::Reverse(r.seq));
        Ok(roots)
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
