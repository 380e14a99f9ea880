//! Laptops behind NAT (issue #19, second part): which relays this node reserves on, the
//! signed record that tells others its relayed addresses, and the counts `status` shows
//! (direct vs relayed connections, hole punches tried and won).
//!
//! A node that AutoNAT finds unreachable (or that is set `reachable = "no"`) reserves a slot
//! on [`WANT_RELAYS`] peers that are DHT servers and offer the relay v2 hop protocol, and
//! listens on `/p2p/RELAY/p2p-circuit` through each. It publishes those addresses in the DHT
//! under [`addr_key`] of its device peer id, as a libp2p signed peer record (its device key
//! signs it; docs/design.md, "NAT and relays"). A sender whose notice push finds no
//! connection and no routing-table entry for the recipient's device looks the record up and
//! dials through the relay; DCUtR then punches a direct connection where the NATs allow it.

use std::collections::HashMap;

use libp2p::core::{PeerRecord, SignedEnvelope};
use libp2p::kad::RecordKey;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, identity};

/// Relays a node behind NAT reserves on at once.
pub(crate) const WANT_RELAYS: usize = 2;
/// Relay candidates remembered (peers that offered the hop protocol as DHT servers).
const MAX_CANDIDATES: usize = 32;
/// Addresses one record may carry.
pub(crate) const MAX_ADDRS: usize = 8;
/// A record older than this is refused (its owner republishes with every directory record
/// and whenever its relayed addresses change).
pub(crate) const ADDR_RECORD_TTL_SECS: u64 = 3600;
/// Clock skew allowed for a record's issue time (its seq).
const MAX_SKEW_SECS: u64 = 300;
/// A record's bytes at most (eight circuit addresses fit in about 700).
pub(crate) const MAX_ADDR_RECORD: usize = 1024;
/// Leads every relayed-address record, telling it from directory records and backup roots.
const MAGIC: &[u8; 8] = b"PPADDR1\0";

/// The DHT key of a device's relayed-address record.
pub(crate) fn addr_key(peer: &PeerId) -> RecordKey {
    let mut input = b"peerpost/relayed-addresses/1\0".to_vec();
    input.extend(peer.to_bytes());
    RecordKey::new(&crate::crypto::hash(&input))
}

pub(crate) fn is_addr_record(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

/// A relayed-address record, signed by `key` (seq: now, in Unix seconds).
pub(crate) fn encode(
    key: &identity::Keypair,
    addresses: Vec<Multiaddr>,
) -> Result<Vec<u8>, String> {
    let addresses: Vec<Multiaddr> = addresses.into_iter().take(MAX_ADDRS).collect();
    let record = PeerRecord::new(key, addresses).map_err(|e| e.to_string())?;
    let mut out = MAGIC.to_vec();
    out.extend(record.into_signed_envelope().into_protobuf_encoding());
    if out.len() > MAX_ADDR_RECORD {
        return Err(format!("relayed-address record of {} bytes", out.len()));
    }
    Ok(out)
}

/// A checked record: signed by `peer`'s key, stored under `peer`'s key, fresh, and naming
/// relayed addresses only.
#[derive(Debug)]
pub(crate) struct AddrRecord {
    pub peer: PeerId,
    pub seq: u64,
    pub addresses: Vec<Multiaddr>,
}

/// Checks a record from a peer (hostile bytes): size first, then the signature, the key it is
/// stored under, its age, and that every address goes through a relay (a record cannot make
/// its readers dial arbitrary hosts directly).
pub(crate) fn decode(value: &[u8], key: &[u8], now: u64) -> Result<AddrRecord, &'static str> {
    if value.len() > MAX_ADDR_RECORD {
        return Err("record too large");
    }
    let body = value
        .strip_prefix(MAGIC)
        .ok_or("not a relayed-address record")?;
    let envelope = SignedEnvelope::from_protobuf_encoding(body).map_err(|_| "undecodable")?;
    let record = PeerRecord::from_signed_envelope(envelope).map_err(|_| "bad signature")?;
    if addr_key(&record.peer_id()).as_ref() != key {
        return Err("stored under another peer's key");
    }
    if record.seq() > now.saturating_add(MAX_SKEW_SECS) {
        return Err("issued in the future");
    }
    if now.saturating_sub(record.seq()) > ADDR_RECORD_TTL_SECS {
        return Err("expired");
    }
    if record.addresses().len() > MAX_ADDRS {
        return Err("too many addresses");
    }
    if !record.addresses().iter().all(is_relayed) {
        return Err("an address does not go through a relay");
    }
    Ok(AddrRecord {
        peer: record.peer_id(),
        seq: record.seq(),
        addresses: record.addresses().to_vec(),
    })
}

pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// A relay reservation: its listener, and whether the relay accepted it.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub listener: libp2p::core::transport::ListenerId,
    pub accepted: bool,
}

/// The NAT-traversal books of one node (all bounded: candidates by [`MAX_CANDIDATES`],
/// reservations by [`WANT_RELAYS`], connections by the connection limits).
#[derive(Debug, Default)]
pub(crate) struct NatState {
    /// Peers that offered the hop protocol while DHT servers, with an address to reach them.
    pub candidates: HashMap<PeerId, Multiaddr>,
    /// Relays that refused or dropped a reservation: not asked again until the next change
    /// of reachability.
    pub refused: std::collections::HashSet<PeerId>,
    pub reservations: HashMap<PeerId, Reservation>,
    /// Our own `/p2p-circuit` listen addresses, as published.
    pub circuit_addrs: Vec<Multiaddr>,
    /// Open connections: peer, and whether through a relay.
    pub connections: HashMap<ConnectionId, (PeerId, bool)>,
    pub punches_tried: u64,
    pub punches_won: u64,
    /// An own address went away and the old connections are closing: no reservation until
    /// a direct connection is up again.
    pub reconnecting: bool,
    pub upnp: Upnp,
}

/// What UPnP port mapping found (only with `[overlay] upnp = true`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum UpnpGateway {
    #[default]
    Searching,
    NotFound,
    /// The router's own outside address is private (a NAT behind a NAT): rust-libp2p maps
    /// nothing there, since the mapped address could not be dialed from the internet.
    NotPublic,
    Found,
}

/// UPnP's books: the gateway search and the external addresses mapped (at most
/// [`MAX_ADDRS`]; a router can map one per listen port).
#[derive(Debug, Default)]
pub(crate) struct Upnp {
    pub gateway: UpnpGateway,
    pub mapped: Vec<Multiaddr>,
}

impl Upnp {
    /// libp2p's UPnP event, booked.
    pub(crate) fn on_event(&mut self, event: &libp2p::upnp::Event) {
        use libp2p::upnp::Event;
        match event {
            Event::NewExternalAddr { external_addr, .. } => {
                self.gateway = UpnpGateway::Found;
                if !self.mapped.contains(external_addr) && self.mapped.len() < MAX_ADDRS {
                    self.mapped.push(external_addr.clone());
                }
            }
            Event::ExpiredExternalAddr { external_addr, .. } => {
                self.mapped.retain(|a| a != external_addr)
            }
            Event::GatewayNotFound => self.gateway = UpnpGateway::NotFound,
            Event::NonRoutableGateway => self.gateway = UpnpGateway::NotPublic,
        }
    }

    /// `status`'s `upnp` field (`on`: the behaviour runs) and the mapped addresses.
    pub(crate) fn status(&self, on: bool) -> (String, Vec<String>) {
        if !on {
            return ("off".into(), Vec::new());
        }
        let state = match (&self.gateway, self.mapped.is_empty()) {
            (_, false) => "mapped",
            (UpnpGateway::Searching, true) => "searching",
            (UpnpGateway::NotFound, true) => "no gateway",
            (UpnpGateway::NotPublic, true) => "gateway not public",
            (UpnpGateway::Found, true) => "gateway found, nothing mapped",
        };
        let mapped = self.mapped.iter().map(|a| a.to_string()).collect();
        (state.into(), mapped)
    }
}

impl NatState {
    pub(crate) fn add_candidate(&mut self, peer: PeerId, addr: Multiaddr) {
        if self.candidates.len() >= MAX_CANDIDATES && !self.candidates.contains_key(&peer) {
            return;
        }
        self.candidates.insert(peer, addr);
    }

    /// The next relay to reserve on, and the address to listen on through it.
    pub(crate) fn next_relay(&self) -> Option<(PeerId, Multiaddr)> {
        if self.reservations.len() >= WANT_RELAYS {
            return None;
        }
        let mut c: Vec<_> = self
            .candidates
            .iter()
            .filter(|(p, _)| !self.reservations.contains_key(p) && !self.refused.contains(p))
            .collect();
        // Deterministic order (peer id): spreads laptops over relays by their ids' order.
        c.sort_by_key(|(p, _)| p.to_bytes());
        c.first().map(|(p, a)| {
            let addr = (*a)
                .clone()
                .with(Protocol::P2p(**p))
                .with(Protocol::P2pCircuit);
            (**p, addr)
        })
    }

    pub(crate) fn direct_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .connections
            .values()
            .filter(|(_, relayed)| !relayed)
            .map(|(p, _)| p.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// A dialable address to remember for a relay candidate: not relayed, not loopback, with
/// no peer id of its own (the relay's is appended when listening).
pub(crate) fn relay_address(addr: &Multiaddr) -> Option<Multiaddr> {
    if is_relayed(addr) {
        return None;
    }
    let mut out = Multiaddr::empty();
    for p in addr.iter() {
        match p {
            Protocol::Ip4(ip) if ip.is_loopback() || ip.is_unspecified() => return None,
            Protocol::Ip6(ip) if ip.is_loopback() || ip.is_unspecified() => return None,
            Protocol::P2p(_) => break,
            p => out.push(p),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn now() -> u64 {
        crate::overlay::now_secs()
    }

    #[test]
    fn upnp_status_follows_the_gateway_and_the_mappings() {
        use libp2p::upnp::Event;
        let mut u = Upnp::default();
        assert_eq!(u.status(false), ("off".to_string(), vec![]));
        assert_eq!(u.status(true).0, "searching");
        u.on_event(&Event::GatewayNotFound);
        assert_eq!(u.status(true).0, "no gateway");
        u.on_event(&Event::NonRoutableGateway);
        assert_eq!(u.status(true).0, "gateway not public");
        let local: Multiaddr = "/ip4/192.168.1.2/tcp/4040".parse().unwrap();
        let external: Multiaddr = "/ip4/198.51.100.7/tcp/4040".parse().unwrap();
        let mapped = || Event::NewExternalAddr {
            local_addr: local.clone(),
            external_addr: external.clone(),
        };
        u.on_event(&mapped());
        u.on_event(&mapped());
        assert_eq!(
            u.status(true),
            ("mapped".to_string(), vec![external.to_string()])
        );
        // Off wins: nothing runs, whatever was booked.
        assert_eq!(u.status(false).0, "off");
        // Bounded however often a hostile router answers.
        for port in 0..100u16 {
            u.on_event(&Event::NewExternalAddr {
                local_addr: local.clone(),
                external_addr: format!("/ip4/198.51.100.7/tcp/{port}").parse().unwrap(),
            });
        }
        assert_eq!(u.mapped.len(), MAX_ADDRS);
        u.on_event(&Event::ExpiredExternalAddr {
            local_addr: local.clone(),
            external_addr: external.clone(),
        });
        assert!(!u.status(true).1.contains(&external.to_string()));
    }

    fn circuit(relay: &PeerId) -> Multiaddr {
        format!("/ip4/10.99.0.1/tcp/4001/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap()
    }

    #[test]
    fn a_record_round_trips_and_is_bound_to_its_key() {
        let key = identity::Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let relay = PeerId::random();
        let v = encode(&key, vec![circuit(&relay)]).unwrap();
        assert!(is_addr_record(&v));
        let r = decode(&v, addr_key(&me).as_ref(), now()).unwrap();
        assert_eq!(r.peer, me);
        assert_eq!(r.addresses, vec![circuit(&relay)]);
        // Stored under someone else's key: refused.
        let other = PeerId::random();
        assert!(decode(&v, addr_key(&other).as_ref(), now()).is_err());
        // Too old, or from the future.
        assert_eq!(
            decode(&v, addr_key(&me).as_ref(), r.seq + ADDR_RECORD_TTL_SECS + 1).unwrap_err(),
            "expired"
        );
        assert_eq!(
            decode(&v, addr_key(&me).as_ref(), r.seq - MAX_SKEW_SECS - 1).unwrap_err(),
            "issued in the future"
        );
    }

    #[test]
    fn tampered_oversized_and_direct_address_records_are_refused() {
        let key = identity::Keypair::generate_ed25519();
        let k = addr_key(&key.public().to_peer_id());
        let mut v = encode(&key, vec![circuit(&PeerId::random())]).unwrap();
        let last = v.len() - 40;
        v[last] ^= 1;
        assert!(decode(&v, k.as_ref(), now()).is_err(), "flipped byte");
        let direct: Multiaddr = "/ip4/10.0.0.9/tcp/25".parse().unwrap();
        let v = encode(&key, vec![direct]).unwrap();
        assert_eq!(
            decode(&v, k.as_ref(), now()).unwrap_err(),
            "an address does not go through a relay"
        );
        let big = vec![0u8; MAX_ADDR_RECORD + 1];
        assert_eq!(
            decode(&big, k.as_ref(), now()).unwrap_err(),
            "record too large"
        );
        assert!(decode(b"PPADDR1\0garbage", k.as_ref(), now()).is_err());
        assert!(decode(b"", k.as_ref(), now()).is_err());
        // encode keeps at most MAX_ADDRS.
        let many: Vec<_> = (0..20).map(|_| circuit(&PeerId::random())).collect();
        let v = encode(&key, many).unwrap();
        assert_eq!(
            decode(&v, k.as_ref(), now()).unwrap().addresses.len(),
            MAX_ADDRS
        );
    }

    #[test]
    fn relays_are_chosen_up_to_the_wanted_number_and_never_a_refused_one() {
        let mut s = NatState::default();
        let addr: Multiaddr = "/ip4/10.99.0.1/tcp/1".parse().unwrap();
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for p in &peers {
            s.add_candidate(*p, addr.clone());
        }
        s.refused.insert(peers[0]);
        let mut chosen = Vec::new();
        while let Some((p, a)) = s.next_relay() {
            assert!(is_relayed(&a));
            assert_ne!(p, peers[0]);
            chosen.push(p);
            s.reservations.insert(
                p,
                Reservation {
                    listener: libp2p::core::transport::ListenerId::next(),
                    accepted: false,
                },
            );
        }
        assert_eq!(chosen.len(), WANT_RELAYS);
        assert_eq!(
            relay_address(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()),
            None
        );
        assert_eq!(
            relay_address(
                &format!("/ip4/10.1.1.1/tcp/1/p2p/{}", peers[0])
                    .parse()
                    .unwrap()
            ),
            Some("/ip4/10.1.1.1/tcp/1".parse().unwrap())
        );
    }
}
