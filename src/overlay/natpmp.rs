//! NAT-PMP port mapping (RFC 6886; issue #19), a small client of our own, behind
//! `[overlay] natpmp` (off by default, like UPnP: it has a program open a port in the
//! router's firewall on request, docs/design.md "NAT and relays").
//!
//! The codec ([`Request`], [`decode`]) is sans-I/O; [`NatPmp`] is a network behaviour that
//! asks the default gateway (`/proc/net/route`) on UDP port [`PORT`] for its external
//! address, then maps every private IPv4 TCP listen port (lifetime [`LIFETIME_SECS`],
//! renewed at half the granted lifetime, deleted when the behaviour is dropped at shutdown).
//! A mapped address is only an external address *candidate*: AutoNAT dials it back before
//! it becomes the node's confirmed public address (a router may map behind a second NAT).
//! Every reply is from the network: it must come from the gateway's port 5351 (a connected
//! socket), be exactly the size of its opcode's reply, carry version 0, the expected opcode
//! and internal port, and a granted lifetime is clamped; at most [`MAX_PORTS`] mappings.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

/// The gateway's NAT-PMP port.
pub const PORT: u16 = 5351;
/// Lifetime asked for a mapping (the RFC's recommendation: two hours; an hour, like UPnP).
pub(crate) const LIFETIME_SECS: u32 = 3600;
/// Granted lifetimes are clamped to this range before the renewal is scheduled at half.
const MIN_LIFETIME_SECS: u32 = 120;
const MAX_LIFETIME_SECS: u32 = 86_400;
/// Mappings held at most (one per listen port).
pub(crate) const MAX_PORTS: usize = 8;
/// First retransmission timeout; doubled on every try (RFC 6886 §3.1 says 250 ms, 9 tries;
/// four tries, 3.75 s in all, are enough for a router on the local network).
const FIRST_TIMEOUT: Duration = Duration::from_millis(250);
const TRIES: u32 = 4;

const OP_EXTERNAL: u8 = 0;
const OP_MAP_TCP: u8 = 2;

/// A request to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The gateway's external IPv4 address.
    ExternalAddress,
    /// Map TCP `internal` (on this host) to `external` (a suggestion; 0 = any) for
    /// `lifetime` seconds; lifetime 0 (with external 0) deletes the mapping.
    MapTcp {
        internal: u16,
        external: u16,
        lifetime: u32,
    },
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Request::ExternalAddress => vec![0, OP_EXTERNAL],
            Request::MapTcp {
                internal,
                external,
                lifetime,
            } => {
                let mut b = vec![0, OP_MAP_TCP, 0, 0];
                b.extend(internal.to_be_bytes());
                b.extend(external.to_be_bytes());
                b.extend(lifetime.to_be_bytes());
                b
            }
        }
    }
}

/// A successful reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    ExternalAddress {
        epoch: u32,
        address: Ipv4Addr,
    },
    MapTcp {
        epoch: u32,
        internal: u16,
        external: u16,
        lifetime: u32,
    },
}

/// Why a datagram is not a usable reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("{0} bytes: not a NAT-PMP reply")]
    Length(usize),
    #[error("version {0} (only 0, RFC 6886)")]
    Version(u8),
    #[error("opcode {0} is not a reply we asked for")]
    Opcode(u8),
    /// The gateway's result code (1 unsupported version, 2 not authorized / refused,
    /// 3 network failure, 4 out of resources, 5 unsupported opcode).
    #[error("gateway refused (result {0})")]
    Refused(u16),
    #[error("reply for internal port {0}, not ours")]
    OtherPort(u16),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a datagram from the gateway. The length is checked first, so every index below
/// is in bounds; the result code is checked before anything else is believed.
pub fn decode(b: &[u8]) -> Result<Reply, ReplyError> {
    if b.len() < 4 {
        return Err(ReplyError::Length(b.len()));
    }
    if b[0] != 0 {
        return Err(ReplyError::Version(b[0]));
    }
    let want = match b[1] {
        0x80 => 12,
        0x82 => 16,
        op => return Err(ReplyError::Opcode(op)),
    };
    if b.len() != want {
        return Err(ReplyError::Length(b.len()));
    }
    let result = be16(b, 2);
    if result != 0 {
        return Err(ReplyError::Refused(result));
    }
    let epoch = be32(b, 4);
    Ok(if want == 12 {
        Reply::ExternalAddress {
            epoch,
            address: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
        }
    } else {
        Reply::MapTcp {
            epoch,
            internal: be16(b, 8),
            external: be16(b, 10),
            lifetime: be32(b, 12),
        }
    })
}

/// Decodes `b` as the reply to `request`: the opcode and, for a mapping, the internal port
/// must be the request's.
pub fn decode_for(request: &Request, b: &[u8]) -> Result<Reply, ReplyError> {
    let reply = decode(b)?;
    match (request, &reply) {
        (Request::ExternalAddress, Reply::ExternalAddress { .. }) => Ok(reply),
        (Request::MapTcp { internal, .. }, Reply::MapTcp { internal: got, .. }) => {
            if internal == got {
                Ok(reply)
            } else {
                Err(ReplyError::OtherPort(*got))
            }
        }
        _ => Err(ReplyError::Opcode(b[1])),
    }
}

/// When to renew a mapping granted for `lifetime` seconds: half of it, clamped.
pub fn renew_after(lifetime: u32) -> Duration {
    Duration::from_secs(u64::from(
        lifetime.clamp(MIN_LIFETIME_SECS, MAX_LIFETIME_SECS) / 2,
    ))
}

/// The IPv4 default gateway from `/proc/net/route`'s text (the first default route with
/// the gateway flag); the kernel prints addresses as the raw 32-bit value in host order.
pub fn default_gateway(route_table: &str) -> Option<Ipv4Addr> {
    route_table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
        let flags = u16::from_str_radix(flags, 16).ok()?;
        if *dest != "00000000" || flags & 0x2 == 0 {
            return None;
        }
        let raw = u32::from_str_radix(gw, 16).ok()?;
        Some(Ipv4Addr::from(raw.to_ne_bytes()))
    })
}

/// What `status` shows (`natpmp`, `natpmp_mapped`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub phase: Phase,
    pub gateway: Option<Ipv4Addr>,
    pub external: Option<Ipv4Addr>,
    /// internal port -> (external port, granted lifetime).
    pub mapped: BTreeMap<u16, (u16, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Phase {
    #[default]
    Searching,
    NoGateway,
    Refused(String),
    Ready,
}

impl State {
    /// `status`'s `natpmp` string and the mapped external addresses.
    pub(crate) fn status(&self) -> (String, Vec<String>) {
        let mapped: Vec<String> = match self.external {
            Some(ip) => self
                .mapped
                .values()
                .map(|(ext, _)| format!("/ip4/{ip}/tcp/{ext}"))
                .collect(),
            None => Vec::new(),
        };
        let phase = match &self.phase {
            Phase::Searching => "searching".to_string(),
            Phase::NoGateway => "no gateway".to_string(),
            Phase::Refused(e) => format!("refused: {e}"),
            Phase::Ready if mapped.is_empty() => "gateway found, nothing mapped".to_string(),
            Phase::Ready => "mapped".to_string(),
        };
        (phase, mapped)
    }
}

/// One request, retransmitted with doubling timeouts; datagrams that are not its reply are
/// skipped (they count against the same deadline).
async fn exchange(socket: &tokio::net::UdpSocket, request: &Request) -> Result<Reply, ReplyError> {
    let bytes = request.encode();
    let mut timeout = FIRST_TIMEOUT;
    let mut last = ReplyError::Length(0);
    for _ in 0..TRIES {
        if socket.send(&bytes).await.is_err() {
            return Err(last);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(_)) => break,
                Ok(Ok(n)) => match decode_for(request, &buf[..n]) {
                    Ok(r) => return Ok(r),
                    // A refusal is an answer: retrying will not change it.
                    Err(e @ ReplyError::Refused(_)) => return Err(e),
                    Err(e) => {
                        tracing::debug!("NAT-PMP: ignored a datagram: {e}");
                        last = e;
                    }
                },
            }
        }
        timeout *= 2;
    }
    Err(last)
}

/// The client task: external address, then a mapping per port received, each renewed at
/// half its lifetime. Ends when `ports` closes (the behaviour was dropped).
async fn client(
    gateway: Option<Ipv4Addr>,
    state: Arc<Mutex<State>>,
    mut ports: mpsc::UnboundedReceiver<u16>,
    candidates: mpsc::UnboundedSender<Multiaddr>,
) {
    let set = |f: &dyn Fn(&mut State)| {
        if let Ok(mut s) = state.lock() {
            f(&mut s)
        }
    };
    let Some(gw) = gateway else {
        set(&|s| s.phase = Phase::NoGateway);
        return;
    };
    set(&|s| s.gateway = Some(gw));
    let socket = match tokio::net::UdpSocket::bind("0.0.0.0:0").await {
        Ok(s) => s,
        Err(_) => return set(&|s| s.phase = Phase::NoGateway),
    };
    if socket.connect(SocketAddrV4::new(gw, PORT)).await.is_err() {
        return set(&|s| s.phase = Phase::NoGateway);
    }
    let external = match exchange(&socket, &Request::ExternalAddress).await {
        Ok(Reply::ExternalAddress { address, .. }) if !address.is_unspecified() => address,
        Ok(_) => return set(&|s| s.phase = Phase::Refused("no external address".into())),
        Err(ReplyError::Refused(code)) => {
            return set(&|s| s.phase = Phase::Refused(format!("result {code}")));
        }
        Err(_) => return set(&|s| s.phase = Phase::NoGateway),
    };
    tracing::info!(%gw, %external, "NAT-PMP gateway");
    set(&|s| {
        s.phase = Phase::Ready;
        s.external = Some(external);
    });
    // internal port -> when to renew
    let mut renew: BTreeMap<u16, tokio::time::Instant> = BTreeMap::new();
    loop {
        let next = renew.values().min().copied();
        let due = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let port = tokio::select! {
            p = ports.recv() => match p {
                Some(p) if renew.contains_key(&p) => continue,
                Some(p) if renew.len() >= MAX_PORTS => {
                    tracing::debug!(port = p, "NAT-PMP: {MAX_PORTS} mappings already");
                    continue;
                }
                Some(p) => p,
                None => return,
            },
            () = due => match renew.iter().min_by_key(|(_, t)| **t) {
                Some((p, _)) => *p,
                None => continue,
            },
        };
        let ext = state
            .lock()
            .ok()
            .and_then(|s| s.mapped.get(&port).map(|m| m.0))
            .unwrap_or(port);
        let request = Request::MapTcp {
            internal: port,
            external: ext,
            lifetime: LIFETIME_SECS,
        };
        match exchange(&socket, &request).await {
            Ok(Reply::MapTcp {
                external, lifetime, ..
            }) if lifetime > 0 && external != 0 => {
                let fresh = state
                    .lock()
                    .map(|mut s| {
                        s.mapped.insert(port, (external, lifetime)) != Some((external, lifetime))
                    })
                    .unwrap_or(false);
                renew.insert(port, tokio::time::Instant::now() + renew_after(lifetime));
                if fresh {
                    tracing::info!(port, external, lifetime, "NAT-PMP mapping");
                    let a = Multiaddr::empty()
                        .with(Protocol::Ip4(
                            external_ip(&state).unwrap_or(Ipv4Addr::UNSPECIFIED),
                        ))
                        .with(Protocol::Tcp(external));
                    let _ = candidates.send(a);
                }
            }
            other => {
                tracing::info!(port, ?other, "NAT-PMP: no mapping");
                set(&|s| {
                    s.mapped.remove(&port);
                });
                // Try again after the shortest lifetime (a router restarting, say).
                renew.insert(
                    port,
                    tokio::time::Instant::now() + renew_after(MIN_LIFETIME_SECS),
                );
            }
        }
    }
}

fn external_ip(state: &Arc<Mutex<State>>) -> Option<Ipv4Addr> {
    state.lock().ok().and_then(|s| s.external)
}

/// The NAT-PMP behaviour: feeds private IPv4 TCP listen ports to the client task and
/// reports mapped addresses to the swarm as external address candidates.
pub(crate) struct NatPmp {
    state: Arc<Mutex<State>>,
    ports: mpsc::UnboundedSender<u16>,
    candidates: mpsc::UnboundedReceiver<Multiaddr>,
}

impl NatPmp {
    /// Starts the client task on the current tokio runtime.
    pub(crate) fn new() -> NatPmp {
        let gateway = std::fs::read_to_string("/proc/net/route")
            .ok()
            .and_then(|t| default_gateway(&t));
        let state = Arc::new(Mutex::new(State::default()));
        let (ports, rx) = mpsc::unbounded_channel();
        let (tx, candidates) = mpsc::unbounded_channel();
        tokio::spawn(client(gateway, state.clone(), rx, tx));
        NatPmp {
            state,
            ports,
            candidates,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Deletes the mappings on shutdown (RFC 6886 §3.4: lifetime 0), best effort: one datagram
/// each and up to 250 ms for the answers, from a plain blocking socket (the runtime may be
/// going away).
impl Drop for NatPmp {
    fn drop(&mut self) {
        let s = self.state();
        let Some(gw) = s.gateway else { return };
        if s.mapped.is_empty() {
            return;
        }
        let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
            return;
        };
        if sock.connect(SocketAddrV4::new(gw, PORT)).is_err()
            || sock
                .set_read_timeout(Some(Duration::from_millis(250)))
                .is_err()
        {
            return;
        }
        for port in s.mapped.keys() {
            let r = Request::MapTcp {
                internal: *port,
                external: 0,
                lifetime: 0,
            };
            let _ = sock.send(&r.encode());
        }
        let mut buf = [0u8; 64];
        for _ in 0..s.mapped.len() {
            if sock.recv(&mut buf).is_err() {
                break;
            }
        }
        tracing::info!(mappings = s.mapped.len(), "NAT-PMP mappings deleted");
    }
}

/// The port of a listen address worth mapping: IPv4, not loopback, TCP.
fn mappable_port(addr: &Multiaddr) -> Option<u16> {
    let mut it = addr.iter();
    let Some(Protocol::Ip4(ip)) = it.next() else {
        return None;
    };
    let Some(Protocol::Tcp(port)) = it.next() else {
        return None;
    };
    (!ip.is_loopback() && !ip.is_unspecified() && it.next().is_none()).then_some(port)
}

impl NetworkBehaviour for NatPmp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = ();

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::NewListenAddr(l) = event
            && let Some(port) = mappable_port(l.addr)
        {
            let _ = self.ports.send(port);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
        match self.candidates.poll_recv(cx) {
            Poll::Ready(Some(a)) => Poll::Ready(ToSwarm::NewExternalAddrCandidate(a)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map_reply(result: u16, epoch: u32, internal: u16, external: u16, lifetime: u32) -> Vec<u8> {
        let mut b = vec![0, 0x82];
        b.extend(result.to_be_bytes());
        b.extend(epoch.to_be_bytes());
        b.extend(internal.to_be_bytes());
        b.extend(external.to_be_bytes());
        b.extend(lifetime.to_be_bytes());
        b
    }

    #[test]
    fn requests_are_the_rfc_bytes() {
        assert_eq!(Request::ExternalAddress.encode(), [0, 0]);
        let r = Request::MapTcp {
            internal: 0x1234,
            external: 0x5678,
            lifetime: 3600,
        };
        assert_eq!(
            r.encode(),
            [0, 2, 0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0x0e, 0x10]
        );
    }

    #[test]
    fn replies_decode() {
        let ext = [0, 0x80, 0, 0, 0, 0, 0, 7, 10, 99, 0, 2];
        assert_eq!(
            decode_for(&Request::ExternalAddress, &ext),
            Ok(Reply::ExternalAddress {
                epoch: 7,
                address: Ipv4Addr::new(10, 99, 0, 2)
            })
        );
        let req = Request::MapTcp {
            internal: 4001,
            external: 4001,
            lifetime: 3600,
        };
        assert_eq!(
            decode_for(&req, &map_reply(0, 9, 4001, 5002, 1800)),
            Ok(Reply::MapTcp {
                epoch: 9,
                internal: 4001,
                external: 5002,
                lifetime: 1800
            })
        );
    }

    #[test]
    fn malformed_replies_are_refused() {
        let req = Request::MapTcp {
            internal: 4001,
            external: 4001,
            lifetime: 3600,
        };
        let good = map_reply(0, 9, 4001, 5002, 1800);
        assert_eq!(decode(&[]), Err(ReplyError::Length(0)));
        assert_eq!(decode(&good[..15]), Err(ReplyError::Length(15)));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(ReplyError::Length(17)));
        let mut v = good.clone();
        v[0] = 1;
        assert_eq!(decode(&v), Err(ReplyError::Version(1)));
        // A request (opcode 2) echoed back is no reply.
        assert_eq!(decode(&req.encode()), Err(ReplyError::Opcode(2)));
        assert_eq!(
            decode(&map_reply(2, 9, 4001, 0, 0)),
            Err(ReplyError::Refused(2))
        );
        assert_eq!(
            decode_for(&req, &map_reply(0, 9, 4002, 5002, 1800)),
            Err(ReplyError::OtherPort(4002))
        );
        let ext = [0, 0x80, 0, 0, 0, 0, 0, 7, 10, 99, 0, 2];
        assert_eq!(decode_for(&req, &ext), Err(ReplyError::Opcode(0x80)));
        assert!(decode_for(&Request::ExternalAddress, &good).is_err());
    }

    #[test]
    fn renewal_is_at_half_the_clamped_lifetime() {
        assert_eq!(renew_after(3600), Duration::from_secs(1800));
        assert_eq!(renew_after(0), Duration::from_secs(60));
        assert_eq!(renew_after(u32::MAX), Duration::from_secs(43_200));
    }

    #[test]
    fn the_default_gateway_comes_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     x1\tC0A80100\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     x1\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let want = Ipv4Addr::from(u32::from_str_radix("0101A8C0", 16).unwrap().to_ne_bytes());
        assert_eq!(default_gateway(table), Some(want));
        if cfg!(target_endian = "little") {
            assert_eq!(want, Ipv4Addr::new(192, 168, 1, 1));
        }
        assert_eq!(default_gateway("Iface\tDestination\n"), None);
        assert_eq!(default_gateway("h\nx\t00000000\tzz\t0003\n"), None);
    }

    #[test]
    fn status_follows_the_mappings() {
        let mut s = State::default();
        assert_eq!(s.status(), ("searching".into(), vec![]));
        s.phase = Phase::Ready;
        s.external = Some(Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(s.status().0, "gateway found, nothing mapped");
        s.mapped.insert(4001, (5002, 3600));
        assert_eq!(
            s.status(),
            ("mapped".into(), vec!["/ip4/10.99.0.2/tcp/5002".into()])
        );
    }

    #[test]
    fn only_private_ipv4_tcp_listen_ports_are_mapped() {
        let p = |s: &str| mappable_port(&s.parse().unwrap());
        assert_eq!(p("/ip4/192.168.1.2/tcp/4001"), Some(4001));
        assert_eq!(p("/ip4/127.0.0.1/tcp/4001"), None);
        assert_eq!(p("/ip4/192.168.1.2/udp/4001/quic-v1"), None);
        assert_eq!(p("/ip6/::1/tcp/4001"), None);
    }

    proptest! {
        /// Any datagram decodes or is refused, never panics; what decodes re-encodes to the
        /// same bytes.
        #[test]
        fn any_datagram_decodes_or_is_refused(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(r) = decode(&b) {
                let again = match r {
                    Reply::ExternalAddress { epoch, address } => {
                        let mut v = vec![0, 0x80, 0, 0];
                        v.extend(epoch.to_be_bytes());
                        v.extend(address.octets());
                        v
                    }
                    Reply::MapTcp { epoch, internal, external, lifetime } =>
                        map_reply(0, epoch, internal, external, lifetime),
                };
                prop_assert_eq!(again, b);
            }
        }

        #[test]
        fn map_replies_round_trip(epoch: u32, internal: u16, external: u16, lifetime: u32) {
            let req = Request::MapTcp { internal, external: internal, lifetime: 3600 };
            prop_assert_eq!(
                decode_for(&req, &map_reply(0, epoch, internal, external, lifetime)),
                Ok(Reply::MapTcp { epoch, internal, external, lifetime })
            );
        }
    }
}
