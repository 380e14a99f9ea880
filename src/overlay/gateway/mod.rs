//! Gateways between a private ring and the global ring (issue #16; docs/design.md "Rings and
//! gateways").
//!
//! A gateway is a node of the private ring that runs a second overlay in the global ring.
//! Both sides speak `/peerpost/gateway/1` (in the ring: `/peerpost/ring/FP/gateway/1`), a
//! request-response protocol of small frames (`u32 len ‖ payload`, `len ≤ MAX_GATEWAY_FRAME`,
//! checked before anything is allocated). What it carries, and nothing else:
//!
//! * `LOOKUP address` (ring → gateway): the directory records the global ring holds for an
//!   address, verified again and resolved by the asker with its own pins and vouches;
//! * `EXPORT record` (ring → gateway): a member's record, certified by the ring authority,
//!   which the gateway publishes in the global ring so outsiders find the address;
//! * `CARRY address put` (either side → gateway): one signed DHT inbox put (a sealed
//!   delivery notice ≤ `protocol::MAX_NOTIFY`), which the gateway leaves in the recipient's
//!   inbox in the other ring and pushes to the recipient's devices there.
//!
//! Gateways are found through Kademlia provider records: in the ring under
//! [`gateway_key`]`("")`, in the global ring under `gateway_key(domain)` for the ring's
//! domain. [`service`] is the gateway's side (policy, rate limits).

pub mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{PeerId, StreamProtocol, request_response};

use super::opaque::OpaqueCodec;
use super::protocol::{self, Request};
use super::{Client, Command, RequestError, directory, now_secs};
use crate::crypto::DirectoryRecord;
use crate::wire::{Reader, Writer};

pub const GATEWAY_PROTOCOL: &str = "/peerpost/gateway/1";
/// Largest gateway frame: a notice of `MAX_NOTIFY` bytes with its put's fields and address.
pub const MAX_GATEWAY_FRAME: usize = protocol::MAX_NOTIFY + 1024;
const VERSION: u8 = 1;
const LOOKUP: u8 = 1;
const CARRY: u8 = 2;
const EXPORT: u8 = 3;
const DONE: u8 = 0;
const RECORDS: u8 = 1;
const REFUSED: u8 = 2;
/// Records a LOOKUP answer carries at most.
pub const MAX_ANSWER_RECORDS: usize = 4;
/// Gateways a node asks in turn at most.
const MAX_GATEWAYS_TRIED: usize = 4;
/// How long a found gateway list is reused.
const GATEWAYS_TTL: Duration = Duration::from_secs(30);
const MAX_CACHED: usize = 256;
const STREAMS: usize = 8;
const FRAME_TOTAL: Duration = Duration::from_secs(15);

/// The provider key under which gateways announce themselves: `BLAKE3("peerpost gateway v1"
/// ‖ 0x00 ‖ domain)`; in a private ring with the empty domain (the ring's way out).
pub fn gateway_key(domain: &str) -> [u8; 32] {
    let mut m = b"peerpost gateway v1\0".to_vec();
    m.extend_from_slice(domain.to_ascii_lowercase().as_bytes());
    crate::crypto::hash(&m)
}

/// Unix seconds now.
pub fn now() -> u64 {
    now_secs()
}

/// The domain of an address (after the last `@`), lower-cased.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// One signed DHT inbox put, as a sender made it (its pseudonym's signature covers inbox key,
/// ack hash and entry, so a gateway can forward it but not change it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPut {
    pub key: [u8; 32],
    pub ack_hash: [u8; 32],
    pub sender: [u8; 32],
    pub entry: Vec<u8>,
    pub sig: [u8; 64],
}

impl SignedPut {
    pub fn from_request(r: Request) -> Option<SignedPut> {
        match r {
            Request::InboxPut {
                key,
                ack_hash,
                sender,
                entry,
                sig,
            } => Some(SignedPut {
                key,
                ack_hash,
                sender,
                entry,
                sig,
            }),
            _ => None,
        }
    }

    pub fn to_request(&self) -> Request {
        Request::InboxPut {
            key: self.key,
            ack_hash: self.ack_hash,
            sender: self.sender,
            entry: self.entry.clone(),
            sig: self.sig,
        }
    }

    /// Whether the pseudonym's signature holds (what every inbox holder checks too).
    pub fn verifies(&self) -> bool {
        let signed = protocol::inbox_put_signed(&self.key, &self.ack_hash, &self.entry);
        crate::crypto::keys::verify(
            &self.sender,
            protocol::INBOX_PUT_CONTEXT,
            &signed,
            &self.sig,
        )
        .is_ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayRequest {
    Lookup { address: String },
    Carry { address: String, put: SignedPut },
    Export { record: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayResponse {
    Done,
    Records(Vec<Vec<u8>>),
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
#[error("bad gateway frame: {0}")]
pub struct FrameError(String);

fn bad(e: impl std::fmt::Display) -> FrameError {
    FrameError(e.to_string())
}

impl GatewayRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        match self {
            GatewayRequest::Lookup { address } => {
                w.u8(LOOKUP).bytes8(address.as_bytes());
            }
            GatewayRequest::Carry { address, put } => {
                w.u8(CARRY)
                    .bytes8(address.as_bytes())
                    .fixed(&put.key)
                    .fixed(&put.ack_hash)
                    .fixed(&put.sender)
                    .fixed(&put.sig)
                    .bytes32(&put.entry);
            }
            GatewayRequest::Export { record } => {
                w.u8(EXPORT).bytes32(record);
            }
        }
        w.into_vec()
    }

    pub fn decode(b: &[u8]) -> Result<GatewayRequest, FrameError> {
        if b.len() > MAX_GATEWAY_FRAME {
            return Err(bad("too large"));
        }
        let mut r = Reader::new(b);
        if r.u8("version").map_err(bad)? != VERSION {
            return Err(bad("unknown version"));
        }
        let address = |r: &mut Reader| -> Result<String, FrameError> {
            let a = r.bytes8("address", 254).map_err(bad)?;
            String::from_utf8(a.to_vec()).map_err(bad)
        };
        let req = match r.u8("kind").map_err(bad)? {
            LOOKUP => GatewayRequest::Lookup {
                address: address(&mut r)?,
            },
            CARRY => {
                let address = address(&mut r)?;
                let key = r.array("inbox key").map_err(bad)?;
                let ack_hash = r.array("ack hash").map_err(bad)?;
                let sender = r.array("pseudonym").map_err(bad)?;
                let sig = r.array("signature").map_err(bad)?;
                let entry = r
                    .bytes32("entry", protocol::MAX_INBOX_ENTRY)
                    .map_err(bad)?
                    .to_vec();
                GatewayRequest::Carry {
                    address,
                    put: SignedPut {
                        key,
                        ack_hash,
                        sender,
                        entry,
                        sig,
                    },
                }
            }
            EXPORT => GatewayRequest::Export {
                record: r
                    .bytes32("record", crate::crypto::record::MAX_RECORD)
                    .map_err(bad)?
                    .to_vec(),
            },
            k => return Err(bad(format!("unknown kind {k}"))),
        };
        r.finish("gateway request").map_err(bad)?;
        Ok(req)
    }
}

impl GatewayResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        match self {
            GatewayResponse::Done => {
                w.u8(DONE);
            }
            GatewayResponse::Records(rs) => {
                w.u8(RECORDS).u8(rs.len().min(MAX_ANSWER_RECORDS) as u8);
                for r in rs.iter().take(MAX_ANSWER_RECORDS) {
                    w.bytes32(r);
                }
            }
            GatewayResponse::Refused(why) => {
                let why: String = why.chars().take(200).collect();
                w.u8(REFUSED).bytes8(why.as_bytes());
            }
        }
        w.into_vec()
    }

    pub fn decode(b: &[u8]) -> Result<GatewayResponse, FrameError> {
        if b.len() > MAX_GATEWAY_FRAME {
            return Err(bad("too large"));
        }
        let mut r = Reader::new(b);
        if r.u8("version").map_err(bad)? != VERSION {
            return Err(bad("unknown version"));
        }
        let res = match r.u8("kind").map_err(bad)? {
            DONE => GatewayResponse::Done,
            RECORDS => {
                let n = usize::from(r.u8("count").map_err(bad)?);
                if n > MAX_ANSWER_RECORDS {
                    return Err(bad("too many records"));
                }
                let mut rs = Vec::with_capacity(n);
                for _ in 0..n {
                    rs.push(
                        r.bytes32("record", crate::crypto::record::MAX_RECORD)
                            .map_err(bad)?
                            .to_vec(),
                    );
                }
                GatewayResponse::Records(rs)
            }
            REFUSED => {
                let why = r.bytes8("reason", 255).map_err(bad)?;
                GatewayResponse::Refused(String::from_utf8_lossy(why).into_owned())
            }
            k => return Err(bad(format!("unknown kind {k}"))),
        };
        r.finish("gateway response").map_err(bad)?;
        Ok(res)
    }
}

// --- the libp2p side: raw bounded frames, answered by the owner ---

pub(crate) fn behaviour(
    name: StreamProtocol,
    request_timeout: Duration,
) -> request_response::Behaviour<OpaqueCodec> {
    request_response::Behaviour::with_codec(
        OpaqueCodec::new(MAX_GATEWAY_FRAME, FRAME_TOTAL, "gateway"),
        [(name, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(STREAMS),
    )
}

/// Gateways found per provider key, with when.
pub(super) type GatewayCache = Arc<Mutex<HashMap<[u8; 32], (Vec<PeerId>, Instant)>>>;

/// Addresses this node resolved through a gateway (they live in the other ring).
pub(super) type OutsideSet = Arc<Mutex<HashMap<String, Instant>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Announces this node as a provider of `key` (a gateway), in this overlay's DHT.
    pub async fn provide(&self, key: [u8; 32]) -> Result<(), super::Error> {
        self.call(|reply| Command::Provide { key, reply })
            .await?
            .map_err(super::Error::Start)
    }

    /// The peers announcing `key` (gateways), from a 30 s cache unless `fresh`; never this
    /// node itself.
    pub async fn providers(&self, key: [u8; 32], fresh: bool) -> Vec<PeerId> {
        if !fresh
            && let Some((p, at)) = lock(&self.gateways).get(&key)
            && at.elapsed() < GATEWAYS_TTL
        {
            return p.clone();
        }
        let found = self
            .call(|reply| Command::GetProviders { key, reply })
            .await
            .unwrap_or_default();
        let found: Vec<PeerId> = found.into_iter().filter(|p| *p != self.peer_id).collect();
        let mut c = lock(&self.gateways);
        if c.len() >= MAX_CACHED {
            c.clear();
        }
        if !found.is_empty() {
            c.insert(key, (found.clone(), Instant::now()));
        }
        found
    }

    /// Sends one gateway request to one peer and decodes its answer.
    pub async fn gateway_request(
        &self,
        peer: PeerId,
        request: &GatewayRequest,
    ) -> Result<GatewayResponse, RequestError> {
        let payload = request.encode();
        let answer = self
            .call(|reply| Command::Gateway {
                peer,
                payload,
                reply,
            })
            .await
            .map_err(|_| RequestError::Stopped)??;
        GatewayResponse::decode(&answer).map_err(|e| RequestError::Failed(e.to_string()))
    }

    /// The key under which this node looks for the gateways that carry mail for `address`:
    /// in a private ring, the ring's own gateways; in the global ring, those announced for
    /// the address's domain.
    fn gateway_key_for(&self, address: &str) -> [u8; 32] {
        if self.private {
            gateway_key("")
        } else {
            gateway_key(&domain_of(address))
        }
    }

    /// Directory records for `address` held in the other ring, through this ring's gateways
    /// (a private ring only): each answer validated as a DHT answer is (signature, expiry,
    /// key), the first gateway that answers with any wins. Counts are 1 per record.
    pub(super) async fn records_via_gateways(
        &self,
        address: &str,
    ) -> Vec<(DirectoryRecord, usize)> {
        if !self.private {
            return Vec::new();
        }
        let key = protocol::directory_key(address);
        let req = GatewayRequest::Lookup {
            address: address.to_string(),
        };
        for gw in self
            .providers(gateway_key(""), false)
            .await
            .into_iter()
            .take(MAX_GATEWAYS_TRIED)
        {
            match self.gateway_request(gw, &req).await {
                Ok(GatewayResponse::Records(rs)) if !rs.is_empty() => {
                    let now = now_secs();
                    let mut out: Vec<(DirectoryRecord, usize)> = Vec::new();
                    for b in rs {
                        match directory::validate(&b, &key, now) {
                            Ok(r) if !out.iter().any(|(o, _)| *o == r) => out.push((r, 1)),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(%gw, "gateway answered a bad record: {e}"),
                        }
                    }
                    if !out.is_empty() {
                        let mut o = lock(&self.outside);
                        if o.len() >= 4096 {
                            o.clear();
                        }
                        o.insert(address.to_string(), Instant::now());
                        return out;
                    }
                }
                Ok(other) => tracing::debug!(%gw, "gateway lookup answered {other:?}"),
                Err(e) => tracing::debug!(%gw, "gateway lookup failed: {e}"),
            }
        }
        Vec::new()
    }

    /// Whether mail to `record` must cross to another ring through a gateway: from a private
    /// ring, an address this node found only through a gateway; from the global ring, a
    /// record certified by a ring authority other than ours (its owner lives in a private
    /// ring).
    pub fn crosses_rings(&self, record: &DirectoryRecord) -> bool {
        if self.private {
            return lock(&self.outside).contains_key(&record.address);
        }
        record.cert.is_some()
            && self
                .ring_authority
                .is_none_or(|k| record.verify_certified(now_secs(), &k).is_err())
    }

    /// Hands a signed inbox put for `address` to a gateway, trying the gateways found in
    /// turn; `Ok(false)` when no gateway is announced (the caller delivers directly).
    pub async fn carry(&self, address: &str, put: Request) -> Result<bool, String> {
        let Some(put) = SignedPut::from_request(put) else {
            return Err("not an inbox put".into());
        };
        let key = self.gateway_key_for(address);
        let req = GatewayRequest::Carry {
            address: address.to_string(),
            put,
        };
        let mut last = String::from("no gateway answered");
        for fresh in [false, true] {
            let gws = self.providers(key, fresh).await;
            if gws.is_empty() {
                if fresh {
                    return Ok(false);
                }
                continue;
            }
            for gw in gws.into_iter().take(MAX_GATEWAYS_TRIED) {
                match self.gateway_request(gw, &req).await {
                    Ok(GatewayResponse::Done) => {
                        tracing::debug!(%gw, %address, "notice carried by a gateway");
                        return Ok(true);
                    }
                    Ok(GatewayResponse::Refused(why)) => last = format!("gateway {gw}: {why}"),
                    Ok(other) => last = format!("gateway {gw} answered {other:?}"),
                    Err(e) => last = format!("gateway {gw}: {e}"),
                }
            }
        }
        Err(last)
    }

    /// Hands this user's certified record to the ring's gateways, to be published in the
    /// global ring; how many took it.
    pub async fn export_record(&self, record: &DirectoryRecord) -> usize {
        if !self.private || record.cert.is_none() {
            return 0;
        }
        let req = GatewayRequest::Export {
            record: record.to_bytes(),
        };
        let mut took = 0;
        for gw in self
            .providers(gateway_key(""), true)
            .await
            .into_iter()
            .take(MAX_GATEWAYS_TRIED)
        {
            if matches!(
                self.gateway_request(gw, &req).await,
                Ok(GatewayResponse::Done)
            ) {
                took += 1;
            }
        }
        took
    }

    /// The validated directory records the DHT holds for `address` (not resolved, nothing
    /// pinned): what a gateway answers a LOOKUP with.
    pub async fn records_of(&self, address: &str) -> Result<Vec<DirectoryRecord>, super::Error> {
        let key = protocol::directory_key(address);
        let found = self
            .call(|reply| Command::GetRecords { key, reply })
            .await?;
        Ok(found.records.into_iter().map(|(r, _)| r).collect())
    }

    /// Leaves an already signed inbox put on the inbox's closest peers (a gateway forwarding
    /// a sender's put); how many hold it.
    pub async fn inbox_forward(&self, put: &SignedPut) -> Result<usize, super::BlobError> {
        let req = put.to_request();
        match self.inbox_put_once(put.key, &req, false).await {
            Ok(n) => Ok(n),
            Err(_) => self.inbox_put_once(put.key, &req, true).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> SignedPut {
        SignedPut {
            key: [1; 32],
            ack_hash: [2; 32],
            sender: [3; 32],
            entry: vec![9; 100],
            sig: [4; 64],
        }
    }

    #[test]
    fn frames_round_trip_and_every_truncation_is_refused() {
        let reqs = [
            GatewayRequest::Lookup {
                address: "bob@glob.test".into(),
            },
            GatewayRequest::Carry {
                address: "bob@glob.test".into(),
                put: put(),
            },
            GatewayRequest::Export {
                record: vec![7; 300],
            },
        ];
        for r in &reqs {
            let b = r.encode();
            assert_eq!(&GatewayRequest::decode(&b).unwrap(), r);
            for n in 0..b.len() {
                assert!(GatewayRequest::decode(&b[..n]).is_err(), "{r:?} cut at {n}");
            }
        }
        let ress = [
            GatewayResponse::Done,
            GatewayResponse::Records(vec![vec![1; 10], vec![2; 20]]),
            GatewayResponse::Refused("busy".into()),
        ];
        for r in &ress {
            let b = r.encode();
            assert_eq!(&GatewayResponse::decode(&b).unwrap(), r);
            for n in 0..b.len() {
                assert!(GatewayResponse::decode(&b[..n]).is_err());
            }
        }
    }

    #[test]
    fn an_entry_larger_than_a_notice_is_refused() {
        let mut p = put();
        p.entry = vec![0; protocol::MAX_INBOX_ENTRY + 1];
        let b = GatewayRequest::Carry {
            address: "a@b.c".into(),
            put: p,
        }
        .encode();
        assert!(GatewayRequest::decode(&b).is_err());
    }

    #[test]
    fn rings_and_domains_have_their_own_provider_keys() {
        assert_ne!(gateway_key(""), gateway_key("acme.test"));
        assert_eq!(gateway_key("ACME.test"), gateway_key("acme.test"));
        assert_eq!(domain_of("Bob@Acme.Test"), "acme.test");
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..400 {
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = GatewayRequest::decode(&b);
            let _ = GatewayResponse::decode(&b);
        }
    }
}
