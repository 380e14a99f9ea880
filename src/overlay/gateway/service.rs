//! The gateway's side: answers LOOKUP, EXPORT and CARRY from the ring and CARRY from the
//! global ring, by the policy of docs/design.md "Rings and gateways":
//!
//! * only sealed notices (signed inbox puts of ≤ `MAX_NOTIFY` bytes) and directory records
//!   cross; nothing is stored on the way, and no blob, fragment or backup is ever asked for;
//! * into the ring only for the ring's domain and only to a record the ring authority
//!   certified; out of the ring only for other domains;
//! * exported records must be certified by the ring authority and be of the ring's domain;
//! * rate limits per requesting peer, per sender pseudonym and in total (token buckets,
//!   bounded tables), and at most `MAX_IN_FLIGHT` requests handled at once (then "busy").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    GatewayRequest, GatewayResponse, MAX_ANSWER_RECORDS, SignedPut, domain_of, gateway_key,
};
use crate::crypto::DirectoryRecord;
use crate::crypto::record::normalize_address;
use crate::overlay::{Client, ReplicaReply, device_peer_id, now_secs, protocol};

/// Requests handled at once; more are refused as busy.
const MAX_IN_FLIGHT: usize = 16;
/// Token buckets remembered (per peer and per pseudonym).
const MAX_BUCKETS: usize = 4096;
/// Records exported into the global ring at most.
const MAX_EXPORTED: usize = 4096;
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// Exported records are republished this often (they live 30 days, the global DHT's holders
/// drop what they have not seen again in that time).
const REPUBLISH_EVERY: Duration = Duration::from_secs(6 * 3600);

/// An inbound gateway request as the overlay hands it over.
pub type Inbound = (PeerId, Vec<u8>, ReplicaReply);

#[derive(Debug, Clone)]
pub struct Settings {
    /// The ring's domain (the gateway user's own): what may be carried in.
    pub domain: String,
    /// The ring authority: exported records and carried-in recipients must be certified by it.
    pub authority: [u8; 32],
    /// Requests per minute one peer or one sender pseudonym may make.
    pub per_sender_per_minute: u32,
    /// Requests per minute in all.
    pub per_minute: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets: `rate` per minute, bursts up to `rate`.
struct Limiter {
    per_key: HashMap<Vec<u8>, Bucket>,
    total: Bucket,
    per_sender: f64,
    all: f64,
}

impl Limiter {
    fn new(per_sender: u32, all: u32) -> Limiter {
        Limiter {
            per_key: HashMap::new(),
            total: Bucket {
                tokens: f64::from(all),
                at: Instant::now(),
            },
            per_sender: f64::from(per_sender.max(1)),
            all: f64::from(all.max(1)),
        }
    }

    fn refill(b: &mut Bucket, rate: f64, now: Instant) {
        let dt = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate / 60.0).min(rate);
        b.at = now;
    }

    /// Takes one token from the total and from each of `keys`' buckets, or none at all.
    fn allow(&mut self, keys: &[&[u8]]) -> bool {
        let now = Instant::now();
        Self::refill(&mut self.total, self.all, now);
        if self.total.tokens < 1.0 {
            return false;
        }
        if self.per_key.len() + keys.len() > MAX_BUCKETS {
            let rate = self.per_sender;
            self.per_key.retain(|_, b| {
                Self::refill(b, rate, now);
                b.tokens < rate
            });
            if self.per_key.len() + keys.len() > MAX_BUCKETS {
                return false;
            }
        }
        for k in keys {
            let rate = self.per_sender;
            let b = self.per_key.entry(k.to_vec()).or_insert(Bucket {
                tokens: rate,
                at: now,
            });
            Self::refill(b, rate, now);
            if b.tokens < 1.0 {
                return false;
            }
        }
        for k in keys {
            if let Some(b) = self.per_key.get_mut(*k) {
                b.tokens -= 1.0;
            }
        }
        self.total.tokens -= 1.0;
        true
    }
}

/// A running gateway: the ring's client (this node's overlay) and the global one.
pub struct Gateway {
    ring: Client,
    global: Client,
    settings: Settings,
    limiter: Mutex<Limiter>,
    exported: Mutex<HashMap<String, DirectoryRecord>>,
    slots: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gateway {
    pub fn new(ring: Client, global: Client, settings: Settings) -> Arc<Gateway> {
        let limiter = Limiter::new(settings.per_sender_per_minute, settings.per_minute);
        Arc::new(Gateway {
            ring,
            global,
            settings,
            limiter: Mutex::new(limiter),
            exported: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// Serves both sides' requests, announces the gateway in both DHTs and republishes the
    /// exported records, until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        mut from_ring: mpsc::Receiver<Inbound>,
        mut from_global: mpsc::Receiver<Inbound>,
        cancel: CancellationToken,
    ) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        tasks.spawn(self.clone().announce(cancel.clone()).in_current_span());
        tasks.spawn(self.clone().republish(cancel.clone()).in_current_span());
        loop {
            let (inside, (from, payload, reply)) = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(r) = from_ring.recv() => (true, r),
                Some(r) = from_global.recv() => (false, r),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                else => break,
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                reply.send(GatewayResponse::Refused("busy".into()).encode());
                continue;
            };
            let this = self.clone();
            tasks.spawn(
                async move {
                    let answer = match GatewayRequest::decode(&payload) {
                        Ok(req) => this.handle(inside, from, req).await,
                        Err(e) => GatewayResponse::Refused(e.to_string()),
                    };
                    if let GatewayResponse::Refused(why) = &answer {
                        tracing::info!(target: "peerpost::_events::gateway", %from, inside, "refused: {why}");
                    }
                    reply.send(answer.encode());
                    drop(permit);
                }
                .in_current_span(),
            );
        }
        tasks.shutdown().await;
    }

    /// Provider records in both DHTs: quickly until each is placed, every minute for the
    /// first five minutes after (peers joining late find them), then every 10 minutes
    /// (Kademlia keeps them 48 h).
    async fn announce(self: Arc<Self>, cancel: CancellationToken) {
        let mut wait = Duration::from_secs(1);
        let mut placed = 0u32;
        loop {
            let a = self.ring.provide(gateway_key("")).await;
            let b = self
                .global
                .provide(gateway_key(&self.settings.domain))
                .await;
            match (&a, &b) {
                (Ok(()), Ok(())) => {
                    if placed == 0 {
                        tracing::info!(target: "peerpost::_events::gateway", domain = %self.settings.domain, "gateway announced in the ring and the global ring");
                    }
                    placed += 1;
                    wait = Duration::from_secs(if placed <= 5 { 60 } else { 600 });
                }
                _ => {
                    tracing::debug!(?a, ?b, "gateway not announced yet");
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn republish(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(REPUBLISH_EVERY) => {}
            }
            let now = now_secs();
            let records: Vec<DirectoryRecord> = {
                let mut e = lock(&self.exported);
                e.retain(|_, r| r.expires > now);
                e.values().cloned().collect()
            };
            for r in records {
                let _ = self.global.publish(r).await;
            }
        }
    }

    async fn handle(&self, inside: bool, from: PeerId, req: GatewayRequest) -> GatewayResponse {
        let refuse = |s: String| GatewayResponse::Refused(s);
        let peer = from.to_bytes();
        match req {
            GatewayRequest::Lookup { address } => {
                if !inside {
                    return refuse("lookups are answered for the ring's members only".into());
                }
                let Ok(address) = normalize_address(&address) else {
                    return refuse("not an address".into());
                };
                if domain_of(&address) == self.settings.domain {
                    return refuse(format!("{address} is in the ring"));
                }
                if !lock(&self.limiter).allow(&[&peer]) {
                    return refuse("rate limited".into());
                }
                match self.global.records_of(&address).await {
                    Ok(rs) => GatewayResponse::Records(
                        rs.iter()
                            .take(MAX_ANSWER_RECORDS)
                            .map(DirectoryRecord::to_bytes)
                            .collect(),
                    ),
                    Err(e) => refuse(e.to_string()),
                }
            }
            GatewayRequest::Export { record } => {
                if !inside {
                    return refuse("records are exported by the ring's members only".into());
                }
                if !lock(&self.limiter).allow(&[&peer]) {
                    return refuse("rate limited".into());
                }
                self.export(&record).await
            }
            GatewayRequest::Carry { address, put } => {
                if !lock(&self.limiter).allow(&[&peer, &put.sender]) {
                    return refuse("rate limited".into());
                }
                self.carry(inside, &address, put).await
            }
        }
    }

    async fn export(&self, bytes: &[u8]) -> GatewayResponse {
        let refuse = |s: String| GatewayResponse::Refused(s);
        let now = now_secs();
        let record = match DirectoryRecord::from_bytes(bytes) {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        if let Err(e) = record.verify_certified(now, &self.settings.authority) {
            return refuse(format!("not certified by the ring authority: {e}"));
        }
        if domain_of(&record.address) != self.settings.domain {
            return refuse(format!(
                "{} is not of {}",
                record.address, self.settings.domain
            ));
        }
        {
            let mut e = lock(&self.exported);
            if e.get(&record.address).is_some_and(|r| r.seq > record.seq) {
                return GatewayResponse::Done;
            }
            if e.len() >= MAX_EXPORTED && !e.contains_key(&record.address) {
                e.retain(|_, r| r.expires > now);
                if e.len() >= MAX_EXPORTED {
                    return refuse("the gateway exports no more records".into());
                }
            }
            e.insert(record.address.clone(), record.clone());
        }
        let address = record.address.clone();
        match self.global.publish(record).await {
            Ok(()) => {
                tracing::info!(target: "peerpost::_events::gateway", %address, "record exported to the global ring");
                GatewayResponse::Done
            }
            // Kept and republished; the member is told so and asks again later.
            Err(e) => refuse(format!("not published in the global ring yet: {e}")),
        }
    }

    /// Leaves a sender's signed put in the recipient's inbox in the other ring and pushes it
    /// to the recipient's devices there.
    async fn carry(&self, inside: bool, address: &str, put: SignedPut) -> GatewayResponse {
        let refuse = |s: String| GatewayResponse::Refused(s);
        let Ok(address) = normalize_address(address) else {
            return refuse("not an address".into());
        };
        let ours = domain_of(&address) == self.settings.domain;
        if inside && ours {
            return refuse(format!("{address} is in the ring"));
        }
        if !inside && !ours {
            return refuse(format!(
                "this gateway carries mail for {} only",
                self.settings.domain
            ));
        }
        if put.entry.len() > protocol::MAX_NOTIFY {
            return refuse("only notices of at most 65 KiB cross".into());
        }
        if !put.verifies() {
            return refuse("the put's signature does not verify".into());
        }
        let dest = if inside { &self.global } else { &self.ring };
        let now = now_secs();
        let records = match dest.records_of(&address).await {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        let Some(record) = records.into_iter().find(|r| {
            protocol::inbox_key(&r.keys.sign) == put.key
                && (inside || r.verify_certified(now, &self.settings.authority).is_ok())
        }) else {
            return refuse(format!(
                "no record of {address} with that inbox key on the other side"
            ));
        };
        if let Err(e) = dest.inbox_forward(&put).await {
            return refuse(format!("cannot leave the notice in the inbox: {e}"));
        }
        let pushes = record.devices.iter().filter_map(device_peer_id).map(|p| {
            let entry = put.entry.clone();
            async move {
                let _ = tokio::time::timeout(NOTIFY_TIMEOUT, dest.notify(p, entry)).await;
            }
        });
        futures::future::join_all(pushes).await;
        tracing::info!(target: "peerpost::_events::gateway", %address, bytes = put.entry.len(), into_ring = !inside, "notice carried");
        GatewayResponse::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_limit_each_sender_and_the_total() {
        let mut l = Limiter::new(3, 5);
        assert!(l.allow(&[b"a"]));
        assert!(l.allow(&[b"a"]));
        assert!(l.allow(&[b"a"]));
        assert!(!l.allow(&[b"a"]), "a's bucket is empty");
        assert!(l.allow(&[b"b"]));
        assert!(l.allow(&[b"c", b"d"]));
        assert!(!l.allow(&[b"e"]), "the total is spent");
        // A refused request takes nothing: b still has two.
        let mut l = Limiter::new(2, 100);
        assert!(l.allow(&[b"x", b"y"]));
        assert!(l.allow(&[b"x", b"y"]));
        assert!(!l.allow(&[b"y", b"z"]));
        assert!(l.allow(&[b"z"]));
        assert!(l.allow(&[b"z"]));
    }
}
