//! The libp2p behaviours a node runs, the frame codec of the request-response protocols, and
//! the swarm construction (network: TCP + QUIC + DNS; tests: the memory transport).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, Transport, connection_limits, identify, identity, kad,
    mdns, noise, ping, request_response, tcp, yamux,
};
use tokio::sync::Semaphore;

use super::protocol::{
    self, BLOB_PROTOCOL, KAD_PROTOCOL, MAX_KAD_PACKET, NOTIFY_PROTOCOL, Request, Response,
};
use super::{Config, Error, TransportKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Identify's protocol name (ours, like Kademlia's).
const IDENTIFY_PROTOCOL: &str = "/peerpost/id/1.0.0";
/// Concurrent inbound + outbound streams per request-response behaviour and connection
/// (inbound request bodies also wait for the shared read budget below).
pub const MAX_STREAMS: usize = 32;
/// Directory records a node holds for others (each ≤ 1 KiB).
const MAX_RECORDS: usize = 16 * 1024;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub blob: request_response::Behaviour<Codec>,
    pub notify: request_response::Behaviour<Codec>,
}

/// Bytes of frames being read at once, across every peer and stream: what an abusive peer
/// opening many streams can make this node allocate (a frame that does not fit is refused).
const READ_BUDGET_KIB: u32 = 64 * 1024;

/// Length-prefixed raw frames (protocol.rs); bounded on read before allocation, per frame
/// and, through a budget shared by all connections, in total.
#[derive(Debug, Clone)]
pub(crate) struct Codec {
    budget: Arc<Semaphore>,
}

impl Codec {
    fn new(budget: Arc<Semaphore>) -> Codec {
        Codec { budget }
    }

    async fn read<T: AsyncRead + Unpin + Send>(
        &self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let len = protocol::read_len(io, protocol::max_frame(p.as_ref())).await?;
        let kib = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX);
        let _permit = Arc::clone(&self.budget)
            .try_acquire_many_owned(kib)
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    "too many frame bytes in flight; refused",
                )
            })?;
        protocol::read_body(io, len).await
    }
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> std::io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = self.read(p, io).await?;
        Request::decode(&frame, p.as_ref()).map_err(protocol::invalid)
    }

    async fn read_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = self.read(p, io).await?;
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
        protocol::write_frame(io, &req.encode()).await
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
        protocol::write_frame(io, &res.encode()).await
    }
}

fn behaviour(key: &identity::Keypair, config: &Config) -> Result<Behaviour, Error> {
    let peer_id = key.public().to_peer_id();
    let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
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
            max_providers_per_key: 0,
            max_provided_keys: 0,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    // Until AutoNAT arrives every node answers DHT queries (ARCHITECTURE.md, "Overlay").
    kad.set_mode(Some(kad::Mode::Server));

    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_pending_incoming(Some(config.max_connections.div_ceil(4).max(8)))
            .with_max_pending_outgoing(Some(config.max_connections.div_ceil(4).max(8)))
            .with_max_established_per_peer(Some(2)),
    );
    // Push listen-address updates: a node dials its bootstrap peers before its listeners
    // report their addresses, so its first identify message may carry none, and the peer
    // would never learn how to reach it (nor put it in its routing table).
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
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
    let budget = Arc::new(Semaphore::new(READ_BUDGET_KIB as usize));
    let rr = |name: &'static str| {
        request_response::Behaviour::with_codec(
            Codec::new(Arc::clone(&budget)),
            [(
                StreamProtocol::new(name),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(MAX_STREAMS),
        )
    };
    Ok(Behaviour {
        limits,
        kad,
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        mdns: mdns.into(),
        blob: rr(BLOB_PROTOCOL),
        notify: rr(NOTIFY_PROTOCOL),
    })
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
    let swarm = match config.transport {
        TransportKind::Network => SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| Error::Start(format!("TCP: {e}")))?
            .with_quic()
            .with_dns()
            .map_err(|e| Error::Start(format!("DNS: {e}")))?
            .with_behaviour(|key| behaviour(key, config).map_err(BoxError::from))
            .map_err(|e| Error::Start(format!("{e}")))?
            .with_swarm_config(idle)
            .build(),
        TransportKind::Memory => SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                Ok::<_, BoxError>(
                    MemoryTransport::default()
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default())
                        .map(|(p, m), _| (p, StreamMuxerBox::new(m))),
                )
            })
            .map_err(|e| Error::Start(format!("memory transport: {e}")))?
            .with_behaviour(|key| behaviour(key, config).map_err(BoxError::from))
            .map_err(|e| Error::Start(format!("{e}")))?
            .with_swarm_config(idle)
            .build(),
    };
    Ok(swarm)
}
