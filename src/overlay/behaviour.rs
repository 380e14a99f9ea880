//! The libp2p behaviours a node runs, the frame codec of the request-response protocols, and
//! the swarm construction (network: TCP + QUIC + DNS; tests: the memory transport).

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade;
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::behaviour::FromSwarm;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport, autonat, connection_limits,
    dcutr, identify, identity, kad, mdns, noise, ping, relay, request_response, tcp, yamux,
};
use tokio::sync::Semaphore;

use super::pnet::{self, Protocols};
use super::protocol::{self, MAX_KAD_PACKET, NOTIFY_PROTOCOL, Request, Response};
use super::{Config, Error, Reachable, TransportKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Concurrent inbound + outbound streams per request-response behaviour and connection
/// (inbound request bodies also wait for the shared read budget below).
pub const MAX_STREAMS: usize = 32;
/// Directory records a node holds for others (each ≤ 1 KiB).
const MAX_RECORDS: usize = 16 * 1024;
/// Connections to one peer at once. Two peers that dial each other hold two; each AutoNAT
/// dial-back (one per probe direction, kept until idle) is one more, and a laptop behind NAT
/// holds a relayed connection while DCUtR punches the direct one. With a limit of two, the
/// third connection (a dial-back) was denied and reported to the prober as "cannot dial
/// you": a reachable node read "private" (issue #19, the late lab verdict).
const MAX_CONNECTIONS_PER_PEER: u32 = 5;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Off when reachability is forced "no" (a NATed node cannot dial back for others).
    pub autonat: Toggle<autonat::Behaviour>,
    pub blob: Rr,
    pub notify: Rr,
    /// Between the devices of one user (issue #15): opaque frames, see replica.rs.
    pub replica: request_response::Behaviour<super::opaque::OpaqueCodec>,
    /// Between a ring's members and its gateways, and the global ring and a gateway (issue
    /// #16): opaque bounded frames, see gateway/mod.rs.
    pub gateway: request_response::Behaviour<super::opaque::OpaqueCodec>,
    /// Relay v2 server (issue #19): on every node that may be reachable; bounded by
    /// [`relay_config`]. Laptops only reserve on peers that are DHT servers.
    pub relay: Toggle<relay::Behaviour>,
    /// Relay v2 client (network transport only): reservations on relays, `/p2p-circuit`
    /// listeners and dials.
    pub relay_client: Toggle<relay::client::Behaviour>,
    /// DCUtR: upgrades a relayed connection to a direct one by hole punching.
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// UPnP IGD port mapping (`[overlay] upnp = true`, network transport only).
    pub upnp: Toggle<Upnp>,
    /// NAT-PMP port mapping (`[overlay] natpmp = true`, network transport only).
    pub natpmp: Toggle<super::natpmp::NatPmp>,
}

/// libp2p's UPnP behaviour, except that a mapped address is only a *candidate*: rust-libp2p
/// declares it confirmed at once (and identify would advertise it, and Kademlia would take
/// it as dialable), but a router may say "mapped" and still drop what comes in (a second
/// NAT, a firewall in front). As a candidate, AutoNAT probes it and only a dial-back that
/// arrives confirms it.
pub(crate) struct Upnp(libp2p::upnp::tokio::Behaviour);

impl Upnp {
    /// Starts the gateway search (SSDP) at once; needs a tokio runtime.
    fn new() -> Upnp {
        Upnp(libp2p::upnp::tokio::Behaviour::default())
    }
}

impl NetworkBehaviour for Upnp {
    type ConnectionHandler =
        <libp2p::upnp::tokio::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = libp2p::upnp::Event;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.0.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.0.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.0.poll(cx) {
            Poll::Ready(ToSwarm::ExternalAddrConfirmed(addr)) => {
                Poll::Ready(ToSwarm::NewExternalAddrCandidate(addr))
            }
            other => other,
        }
    }
}

/// Bytes of frames being read at once, across every peer and stream: what abusive peers
/// opening many streams can make this node hold (a frame waits for room, then is refused).
const READ_BUDGET_KIB: u32 = 64 * 1024;
/// Bytes of frames one peer may have being read at once (all its connections, both
/// protocols, requests and responses): two of the largest frames. A peer that stalls its
/// frames waits on its own budget and leaves the shared one to everyone else.
const PEER_BUDGET_KIB: u32 = 2 * frame_kib(protocol::MAX_FRAME);
/// How long a frame waits for budget before it is refused.
const BUDGET_WAIT: Duration = Duration::from_secs(10);
/// How long a request's length prefix may take after its stream opened (a requester sends
/// it at once; a response may take as long as the request timeout).
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Pace of a frame's payload: no byte for `FRAME_STALL` fails it, and all of it must arrive
/// within `FRAME_FLOOR` + len / `FRAME_MIN_RATE` (a 4 MiB frame: 21 s).
const FRAME_STALL: Duration = Duration::from_secs(5);
const FRAME_FLOOR: Duration = Duration::from_secs(5);
const FRAME_MIN_RATE: u64 = 256 * 1024;
/// Peers whose budgets are remembered before dead entries are swept.
const SWEEP_PEERS_AT: usize = 64;

const fn frame_kib(len: usize) -> u32 {
    len.div_ceil(1024) as u32
}

/// The frame budgets: one shared by everyone, and one per connected peer, found by peer id
/// (a budget lives as long as a codec of one of the peer's connections holds it).
#[derive(Debug)]
struct Budgets {
    global: Arc<Semaphore>,
    peers: Mutex<HashMap<PeerId, Weak<Semaphore>>>,
    /// The peer whose connection handler the behaviour is building right now
    /// ([`Rr`] sets it around the call that clones the codec).
    building: Mutex<Option<PeerId>>,
}

impl Budgets {
    fn new() -> Arc<Budgets> {
        Arc::new(Budgets {
            global: Arc::new(Semaphore::new(READ_BUDGET_KIB as usize)),
            peers: Mutex::new(HashMap::new()),
            building: Mutex::new(None),
        })
    }

    /// The budget of the peer being connected (a fresh one for an unnamed connection).
    fn bind(&self) -> Arc<Semaphore> {
        let peer = *self.building.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || Arc::new(Semaphore::new(PEER_BUDGET_KIB as usize));
        let Some(peer) = peer else {
            tracing::debug!("frame codec cloned outside a connection set-up: budget of its own");
            return fresh();
        };
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = peers.get(&peer).and_then(Weak::upgrade) {
            return b;
        }
        if peers.len() >= SWEEP_PEERS_AT {
            peers.retain(|_, b| b.strong_count() > 0);
        }
        let b = fresh();
        peers.insert(peer, Arc::downgrade(&b));
        b
    }
}

/// Length-prefixed raw frames (protocol.rs); bounded on read before allocation, per frame,
/// per peer and, through a budget shared by all connections, in total; and paced, so a
/// stalled frame gives its budget back within seconds.
///
/// The behaviour keeps one codec (`peer: None`) and clones it for each connection's handler,
/// which clones it again for each stream: the first clone binds the connection's peer budget
/// ([`Budgets::bind`]), later ones share it.
#[derive(Debug)]
pub(crate) struct Codec {
    budgets: Arc<Budgets>,
    peer: Option<Arc<Semaphore>>,
    /// The global ring's name of the protocol (a private ring runs it under its own name).
    kind: &'static str,
}

impl Clone for Codec {
    fn clone(&self) -> Codec {
        Codec {
            budgets: Arc::clone(&self.budgets),
            peer: Some(match &self.peer {
                Some(p) => Arc::clone(p),
                None => self.budgets.bind(),
            }),
            kind: self.kind,
        }
    }
}

impl Codec {
    fn new(budgets: Arc<Budgets>, kind: &'static str) -> Codec {
        Codec {
            budgets,
            peer: None,
            kind,
        }
    }

    async fn read<T: AsyncRead + Unpin + Send>(
        &self,
        io: &mut T,
        request: bool,
    ) -> std::io::Result<Vec<u8>> {
        let max = protocol::max_frame(self.kind);
        let len = if request {
            tokio::time::timeout(REQUEST_HEAD_TIMEOUT, protocol::read_len(io, max))
                .await
                .map_err(|_| timed_out("no request frame arrived in time"))??
        } else {
            protocol::read_len(io, max).await?
        };
        let kib = frame_kib(len);
        let refused = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("too many frame bytes in flight {what}; refused"),
            )
        };
        // The peer's own budget first: a peer waiting on it holds none of the shared one.
        let peer = Arc::clone(
            self.peer
                .as_ref()
                .ok_or_else(|| std::io::Error::other("frame codec bound to no connection"))?,
        );
        let _peer = tokio::time::timeout(BUDGET_WAIT, peer.acquire_many_owned(kib))
            .await
            .map_err(|_| refused("from this peer"))?
            .map_err(|_| refused("from this peer"))?;
        let _global = tokio::time::timeout(
            BUDGET_WAIT,
            Arc::clone(&self.budgets.global).acquire_many_owned(kib),
        )
        .await
        .map_err(|_| refused("in all"))?
        .map_err(|_| refused("in all"))?;
        let deadline =
            FRAME_FLOOR + Duration::from_millis((len as u64).saturating_mul(1000) / FRAME_MIN_RATE);
        protocol::read_body_paced(io, len, FRAME_STALL, deadline).await
    }
}

fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// A request-response behaviour whose connections get their peer's frame budget: it names
/// the peer to the [`Budgets`] while the inner behaviour builds the connection's handler
/// (and clones the codec for it). Everything else is the inner behaviour's.
pub(crate) struct Rr {
    inner: request_response::Behaviour<Codec>,
    budgets: Arc<Budgets>,
}

impl Rr {
    fn building<R>(&mut self, peer: PeerId, f: impl FnOnce(&mut Self) -> R) -> R {
        *self
            .budgets
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(peer);
        let r = f(self);
        *self
            .budgets
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        r
    }
}

impl std::ops::Deref for Rr {
    type Target = request_response::Behaviour<Codec>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Rr {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type Inner = request_response::Behaviour<Codec>;

impl NetworkBehaviour for Rr {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = <Inner as NetworkBehaviour>::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.building(peer, |s| {
            s.inner
                .handle_established_inbound_connection(id, peer, local, remote)
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.building(peer, |s| {
            s.inner
                .handle_established_outbound_connection(id, peer, addr, role, port_use)
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = self.read(io, true).await?;
        super::metrics::frame(self.kind, "in", frame.len());
        Request::decode(&frame, self.kind).map_err(protocol::invalid)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = self.read(io, false).await?;
        super::metrics::frame(self.kind, "in", frame.len());
        Response::decode(&frame).map_err(protocol::invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let frame = req.encode();
        super::metrics::frame(self.kind, "out", frame.len());
        protocol::write_frame(io, &frame).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let frame = res.encode();
        super::metrics::frame(self.kind, "out", frame.len());
        protocol::write_frame(io, &frame).await
    }
}

fn behaviour(
    key: &identity::Keypair,
    config: &Config,
    relay_client: Option<relay::client::Behaviour>,
) -> Result<Behaviour, Error> {
    let peer_id = key.public().to_peer_id();
    let names = Protocols::of(config);
    let mut kad_config = kad::Config::new(names.kad.clone());
    kad_config
        .disjoint_query_paths(true)
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_max_packet_size(MAX_KAD_PACKET)
        .set_query_timeout(config.query_timeout)
        // Records carry their own expiry; our node republishes its own record.
        .set_record_ttl(Some(Duration::from_secs(
            crate::crypto::record::MAX_LIFETIME_SECS,
        )))
        .set_publication_interval(None);
    if let Some(k) = NonZeroUsize::new(config.replication) {
        kad_config.set_replication_factor(k);
    }
    let store = kad::store::MemoryStore::with_config(
        peer_id,
        kad::store::MemoryStoreConfig {
            max_records: MAX_RECORDS,
            // Directory records and backup roots (durability, issue #6).
            max_value_bytes: crate::crypto::record::MAX_RECORD.max(super::backup_root::MAX_ROOT),
            // Provider records announce gateways only (issue #16): few per key, few keys.
            max_providers_per_key: 8,
            max_provided_keys: 1024,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    let reachable = config.reachable.resolve(config);
    // Only a node others can dial answers DHT queries and so gets chosen to hold data; "auto"
    // starts as a client and the event loop makes it a server once AutoNAT confirms a public
    // address (docs/design.md, "NAT and relays").
    kad.set_mode(Some(match reachable {
        Reachable::Yes => kad::Mode::Server,
        Reachable::No | Reachable::Auto => kad::Mode::Client,
    }));
    // AutoNAT runs where it can tell something: on "auto" nodes (as client and server) and
    // on nodes set "yes" (as a dial-back server for others). A "no" node cannot dial back for
    // anyone, and a loopback or memory ring has nothing to find out.
    let autonat_on = match config.reachable {
        Reachable::No => false,
        Reachable::Yes => true,
        Reachable::Auto => reachable == Reachable::Auto,
    };
    let autonat = autonat_on.then(|| autonat::Behaviour::new(peer_id, autonat_config()));

    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_pending_incoming(Some(config.max_connections.div_ceil(4).max(8)))
            .with_max_pending_outgoing(Some(config.max_connections.div_ceil(4).max(8)))
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
    );
    // Push listen-address updates: a node dials its bootstrap peers before its listeners
    // report their addresses, so its first identify message may carry none, and the peer
    // would never learn how to reach it (nor put it in its routing table).
    let identify = identify::Behaviour::new(
        identify::Config::new(names.identify.clone(), key.public())
            .with_push_listen_addr_updates(true),
    );
    let mdns = if config.mdns && config.transport == TransportKind::Network {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| Error::Start(format!("mDNS: {e}")))?,
        )
    } else {
        None
    };
    let budgets = Budgets::new();
    let rr = |name: StreamProtocol, kind: &'static str| Rr {
        budgets: Arc::clone(&budgets),
        inner: request_response::Behaviour::with_codec(
            Codec::new(Arc::clone(&budgets), kind),
            [(name, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(MAX_STREAMS),
        ),
    };
    Ok(Behaviour {
        limits,
        kad,
        identify,
        ping: ping::Behaviour::new(ping_config(config)),
        mdns: mdns.into(),
        autonat: autonat.into(),
        blob: rr(names.blob, protocol::BLOB_PROTOCOL),
        notify: rr(names.notify, NOTIFY_PROTOCOL),
        replica: super::replica::behaviour(config.request_timeout),
        gateway: super::gateway::behaviour(names.gateway, config.request_timeout),
        relay: (config.reachable != Reachable::No)
            .then(|| relay::Behaviour::new(peer_id, relay_config()))
            .into(),
        dcutr: relay_client
            .is_some()
            .then(|| dcutr::Behaviour::new(peer_id))
            .into(),
        // Only with a real network (and so a relay client): the memory transport has no
        // router to ask.
        upnp: (config.upnp && relay_client.is_some())
            .then(Upnp::new)
            .into(),
        natpmp: (config.natpmp && relay_client.is_some())
            .then(super::natpmp::NatPmp::new)
            .into(),
        relay_client: relay_client.into(),
    })
}

/// Pings find dead connections: the event loop closes one after two failed pings in a row
/// (the first failure is silent in rust-libp2p). Over the network every 10 s with a 10 s
/// timeout, so a laptop that moved or slept is noticed within about 30 s (the defaults,
/// 15 s and 20 s, took about a minute); a memory ring cannot lose a link and keeps them.
fn ping_config(config: &Config) -> ping::Config {
    match config.transport {
        TransportKind::Network => ping::Config::new()
            .with_interval(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(10)),
        TransportKind::Memory => ping::Config::new(),
    }
}

/// What a relay serves: rust-libp2p's bounds on what is held at once (128 reservations in
/// all and 4 per peer, each for an hour; 16 circuits in all and 4 per peer, each for at most
/// 2 minutes and 128 KiB relayed: enough for notices and a hole punch, mail itself goes
/// through the DHT's reachable nodes), but rate limits chosen for a ring. rust-libp2p's
/// token buckets hold 30 per peer id refilled at one per 2 minutes: a laptop that wakes up,
/// moves or restarts 30 times in an hour (each time one reservation and a circuit or two per
/// relay) was refused by every relay until the bucket refilled — the cause of the lost hole
/// punches in `scripts/bench-nat` (docs/performance.md). Here a peer id gets a burst of 30
/// and then one reservation and one circuit every [`RELAY_REFILL_PER_PEER`]; an IP address
/// (a household or an office behind one NAT) a burst of 60 and one every
/// [`RELAY_REFILL_PER_IP`]. Still bounded: a peer cannot hold more than 4 circuits at once
/// nor open more than 6 a minute for long.
fn relay_config() -> relay::Config {
    let burst_peer = NonZeroU32::new(30).expect("30 > 0");
    let burst_ip = NonZeroU32::new(60).expect("60 > 0");
    relay::Config {
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    }
    .reservation_rate_per_peer(burst_peer, RELAY_REFILL_PER_PEER)
    .reservation_rate_per_ip(burst_ip, RELAY_REFILL_PER_IP)
    .circuit_src_per_peer(burst_peer, RELAY_REFILL_PER_PEER)
    .circuit_src_per_ip(burst_ip, RELAY_REFILL_PER_IP)
}

/// One more reservation and circuit per source peer id this often, after a burst of 30.
pub(crate) const RELAY_REFILL_PER_PEER: Duration = Duration::from_secs(10);
/// One more per source IP address this often, after a burst of 60.
pub(crate) const RELAY_REFILL_PER_IP: Duration = Duration::from_secs(5);

/// The relay client's transport, with the same security and multiplexing as TCP: dials and
/// listens on `/p2p/RELAY/p2p-circuit` addresses (kept apart from the TCP composition).
fn relay_transport(
    key: &identity::Keypair,
    transport: relay::client::Transport,
) -> Result<libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>, BoxError> {
    Ok(transport
        .upgrade(upgrade::Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
        .boxed())
}

/// AutoNAT v1 (both roles): probes start soon after boot and use connected peers as
/// servers; dial-backs are throttled (rust-libp2p's defaults: 30 per second overall, 3 per
/// peer). Private addresses count: a ring on a private network (an office LAN, the NAT lab)
/// has no global addresses at all, and "reachable" means reachable by the ring's peers.
///
/// A probe asks one connected peer, and that peer is not asked again for
/// `throttle_server_period` (default 90 s): a node that knows two or three peers (a young
/// ring, the lab) would otherwise run out of servers after one probe each and keep an early
/// wrong or "unknown" verdict for minutes. 15 s still spreads probes over every peer it has.
fn autonat_config() -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(3),
        retry_interval: Duration::from_secs(10),
        refresh_interval: Duration::from_secs(5 * 60),
        throttle_server_period: Duration::from_secs(15),
        only_global_ips: false,
        ..autonat::Config::default()
    }
}

/// Builds the swarm for `config`: its identity is the device key.
pub(crate) fn build_swarm(config: &Config) -> Result<Swarm<Behaviour>, Error> {
    let mut seed = config.device_seed;
    let keypair = identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| Error::Start(format!("device key: {e}")))?;
    // Substreams are negotiated lazily (multistream-select V1Lazy): each of our behaviours
    // proposes exactly one protocol, so the request goes out with the proposal instead of a
    // round trip later. Over a 50 ms link that is 100 ms off every request: a delivery
    // notice reaches the recipient half a round trip after it leaves.
    let idle = |c: libp2p::swarm::Config| {
        c.with_idle_connection_timeout(Duration::from_secs(120))
            .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
    };
    let (relayed, relay_client) = relay::client::new(keypair.public().to_peer_id());
    let swarm = match (config.transport, config.psk) {
        (TransportKind::Network, Some(psk)) => private_swarm(keypair, config, psk, idle)?,
        (TransportKind::Network, None) => SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| Error::Start(format!("TCP: {e}")))?
            .with_quic()
            .with_other_transport(|key| relay_transport(key, relayed))
            .map_err(|e| Error::Start(format!("relay: {e}")))?
            .with_dns()
            .map_err(|e| Error::Start(format!("DNS: {e}")))?
            .with_behaviour(|key| {
                behaviour(key, config, Some(relay_client)).map_err(BoxError::from)
            })
            .map_err(|e| Error::Start(format!("{e}")))?
            .with_swarm_config(idle)
            .build(),
        (TransportKind::Memory, psk) => SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                Ok::<_, BoxError>(
                    MemoryTransport::default()
                        .and_then(move |socket, _| pnet::handshake(psk, socket))
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default())
                        .map(|(p, m), _| (p, StreamMuxerBox::new(m))),
                )
            })
            .map_err(|e| Error::Start(format!("memory transport: {e}")))?
            .with_behaviour(|key| behaviour(key, config, None).map_err(BoxError::from))
            .map_err(|e| Error::Start(format!("{e}")))?
            .with_swarm_config(idle)
            .build(),
    };
    Ok(swarm)
}

/// A private ring's swarm (issue #16): TCP with the pnet handshake under Noise, and DNS; no
/// QUIC, which cannot carry pnet.
fn private_swarm(
    keypair: identity::Keypair,
    config: &Config,
    psk: pnet::Psk,
    idle: impl FnOnce(libp2p::swarm::Config) -> libp2p::swarm::Config,
) -> Result<Swarm<Behaviour>, Error> {
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            Ok::<_, BoxError>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| pnet::handshake(Some(psk), socket))
                    .upgrade(upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .map(|(p, m), _| (p, StreamMuxerBox::new(m))),
            )
        })
        .map_err(|e| Error::Start(format!("TCP: {e}")))?
        .with_dns()
        .map_err(|e| Error::Start(format!("DNS: {e}")))?
        .with_behaviour(|key| behaviour(key, config, None).map_err(BoxError::from))
        .map_err(|e| Error::Start(format!("{e}")))?
        .with_swarm_config(idle)
        .build())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rr(budgets: &Arc<Budgets>) -> Rr {
        Rr {
            budgets: Arc::clone(budgets),
            inner: request_response::Behaviour::with_codec(
                Codec::new(Arc::clone(budgets), protocol::BLOB_PROTOCOL),
                [(
                    StreamProtocol::new(protocol::BLOB_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            ),
        }
    }

    /// The contract with request-response that the per-peer budget rests on: the behaviour
    /// clones its codec while building a connection's handler, so both protocols and every
    /// connection of one peer share one budget, and another peer has its own.
    #[test]
    fn connections_of_one_peer_share_its_frame_budget() {
        let budgets = Budgets::new();
        let (mut blob, mut notify) = (rr(&budgets), rr(&budgets));
        let (a, b) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/memory/1".parse().unwrap();
        let mut handlers = Vec::new();
        for (i, peer) in [a, a, b].into_iter().enumerate() {
            let id = ConnectionId::new_unchecked(i);
            handlers.push(
                blob.handle_established_inbound_connection(id, peer, &addr, &addr)
                    .unwrap(),
            );
            handlers.push(
                notify
                    .handle_established_outbound_connection(
                        id,
                        peer,
                        &addr,
                        Endpoint::Dialer,
                        PortUse::New,
                    )
                    .unwrap(),
            );
        }
        let peers = budgets.peers.lock().unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[&a].strong_count(),
            4,
            "two connections × two protocols"
        );
        assert_eq!(peers[&b].strong_count(), 2);
        drop(peers);
        drop(handlers);
        assert_eq!(budgets.peers.lock().unwrap()[&a].strong_count(), 0);
        assert!(budgets.building.lock().unwrap().is_none());
    }
}
