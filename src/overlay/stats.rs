//! Ring statistics (issue #17; docs/design.md "Ring statistics"): a few aggregate figures of
//! the nodes that share them, summed so that no node learns another's figures.
//!
//! Each epoch (`stats.every`, default 1 h) a sharing node splits its figure vector `F` into
//! [`SHARES`] random vectors that add up to `F` modulo 2⁶⁴ (additive secret sharing) and sends
//! each to another connected peer (`STATS_SHARE`). Each share alone is uniformly random: a
//! holder learns that the sender shares statistics, nothing of its figures. Half an epoch in,
//! every holder sends the sum of the shares it received (`STATS_SUM`) to the epoch's
//! collectors: the [`COLLECTORS`] nodes closest to `BLAKE3("peerpost stats v1" ‖ epoch)`. A
//! collector adds the sums up and answers `STATS_GET` with the ring's totals. Only all
//! [`SHARES`] holders of one node together could rebuild its figures.
//!
//! The first figure is 1 per node, so the totals count the nodes; the clear count of shares
//! behind the totals must be [`SHARES`] × that count, else a share or a sum was lost (or a
//! peer lied) and the epoch is reported incomplete. A node with `stats.share = false` sends no
//! share and refuses to hold or collect them.
//!
//! Frames (on `/peerpost/blob/1`, frame version 1; docs/design.md "Overlay frames"):
//!
//! ```text
//!   STATS_SHARE 0x20: u64 epoch ‖ u8 n = FIELDS ‖ n × u64
//!   STATS_SUM   0x21: u64 epoch ‖ u32 shares ‖ u8 n ‖ n × u64
//!   STATS_GET   0x22: u64 epoch
//!   STATS       0x87: u64 epoch ‖ u32 holders ‖ u32 shares ‖ u8 n ‖ n × u64
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::KBucketKey;
use tokio_util::sync::CancellationToken;

use super::Client;
use super::protocol::{Refusal, Request, Response};
use crate::wire::{DecodeError, Reader, Writer};

/// Figures per node (see [`Figures`] for their meaning, in this order).
pub const FIELDS: usize = 18;
/// Shares each node's figures are split into (and so peers that must collude to learn them).
pub const SHARES: usize = 3;
/// Nodes that collect one epoch's sums (two, so one can be lost).
pub const COLLECTORS: usize = 2;
/// Collector candidates tried, closest first.
const CANDIDATES: usize = 6;
/// Version slots: a version string counts in slot `BLAKE3(version)[0] % VERSION_SLOTS`.
pub const VERSION_SLOTS: usize = 8;
/// Shares one node holds per epoch, and sums one collector takes per epoch.
const MAX_PER_EPOCH: usize = 4096;
/// Epochs kept in memory (the current one and the last few).
const KEEP_EPOCHS: u64 = 4;
/// Domain separation of collector keys.
const COLLECTOR_CONTEXT: &[u8] = b"peerpost stats v1";

pub(super) const STATS_SHARE: u8 = 0x20;
pub(super) const STATS_SUM: u8 = 0x21;
pub(super) const STATS_GET: u8 = 0x22;
pub(super) const STATS: u8 = 0x87;

/// A statistics request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// One share of a node's figures for `epoch`.
    Share { epoch: u64, values: [u64; FIELDS] },
    /// A holder's sum of the `shares` shares it got for `epoch`.
    Sum {
        epoch: u64,
        shares: u32,
        values: [u64; FIELDS],
    },
    /// The totals a collector has for `epoch`.
    Get { epoch: u64 },
}

/// What a collector has for one epoch: the sums of `holders` holders, over `shares` shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub epoch: u64,
    pub holders: u32,
    pub shares: u32,
    pub values: [u64; FIELDS],
}

impl Totals {
    /// Every share arrived: the share count is [`SHARES`] per node counted.
    pub fn complete(&self) -> bool {
        self.values[0] > 0 && u64::from(self.shares) == self.values[0] * SHARES as u64
    }
}

fn put_values(w: &mut Writer, values: &[u64; FIELDS]) {
    w.u8(FIELDS as u8);
    for v in values {
        w.u64(*v);
    }
}

fn get_values(r: &mut Reader<'_>) -> Result<[u64; FIELDS], DecodeError> {
    let n = r.u8("stats field count")?;
    if usize::from(n) != FIELDS {
        return Err(DecodeError::TooLong {
            field: "stats fields",
            len: usize::from(n),
            max: FIELDS,
        });
    }
    let mut out = [0u64; FIELDS];
    for v in out.iter_mut() {
        *v = r.u64("stats field")?;
    }
    Ok(out)
}

impl Message {
    pub(super) fn encode(&self, w: &mut Writer) {
        match self {
            Message::Share { epoch, values } => {
                w.u8(STATS_SHARE).u64(*epoch);
                put_values(w, values);
            }
            Message::Sum {
                epoch,
                shares,
                values,
            } => {
                w.u8(STATS_SUM).u64(*epoch).u32(*shares);
                put_values(w, values);
            }
            Message::Get { epoch } => {
                w.u8(STATS_GET).u64(*epoch);
            }
        }
    }

    pub(super) fn decode(kind: u8, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
        Ok(match kind {
            STATS_SHARE => Message::Share {
                epoch: r.u64("epoch")?,
                values: get_values(r)?,
            },
            STATS_SUM => Message::Sum {
                epoch: r.u64("epoch")?,
                shares: r.u32("shares")?,
                values: get_values(r)?,
            },
            _ => Message::Get {
                epoch: r.u64("epoch")?,
            },
        })
    }
}

impl Totals {
    pub(super) fn encode(&self, w: &mut Writer) {
        w.u8(STATS)
            .u64(self.epoch)
            .u32(self.holders)
            .u32(self.shares);
        put_values(w, &self.values);
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Totals, DecodeError> {
        Ok(Totals {
            epoch: r.u64("epoch")?,
            holders: r.u32("holders")?,
            shares: r.u32("shares")?,
            values: get_values(r)?,
        })
    }
}

/// One node's figures, before they are split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub version: String,
    pub uptime_secs: u64,
    /// Bytes this node offers the ring (its contribution).
    pub offered_bytes: u64,
    /// Bytes it holds for others.
    pub used_bytes: u64,
    /// Messages it delivered in the last epoch (overlay and smarthost).
    pub delivered: u64,
    pub reachable: bool,
}

/// Where each figure goes in the vector.
pub mod field {
    pub const NODES: usize = 0;
    /// `VERSION_SLOTS` slots from here.
    pub const VERSION: usize = 1;
    /// Uptime under 1 h, under 1 day, under 7 days, longer.
    pub const UPTIME: usize = 9;
    pub const OFFERED: usize = 13;
    pub const USED: usize = 14;
    pub const DELIVERED: usize = 15;
    pub const REACHABLE: usize = 16;
    pub const NATED: usize = 17;
}

/// The version slot of `version`.
pub fn version_slot(version: &str) -> usize {
    usize::from(crate::crypto::hash(version.as_bytes())[0]) % VERSION_SLOTS
}

impl Figures {
    pub fn vector(&self) -> [u64; FIELDS] {
        let mut v = [0u64; FIELDS];
        v[field::NODES] = 1;
        v[field::VERSION + version_slot(&self.version)] = 1;
        let bucket = match self.uptime_secs {
            s if s < 3600 => 0,
            s if s < 86_400 => 1,
            s if s < 7 * 86_400 => 2,
            _ => 3,
        };
        v[field::UPTIME + bucket] = 1;
        v[field::OFFERED] = self.offered_bytes;
        v[field::USED] = self.used_bytes;
        v[field::DELIVERED] = self.delivered;
        v[if self.reachable {
            field::REACHABLE
        } else {
            field::NATED
        }] = 1;
        v
    }
}

/// `values` split into [`SHARES`] uniformly random vectors adding up to it (mod 2⁶⁴).
pub fn split(values: &[u64; FIELDS]) -> Result<[[u64; FIELDS]; SHARES], crate::crypto::Error> {
    let mut out = [[0u64; FIELDS]; SHARES];
    let mut last = *values;
    for share in out.iter_mut().take(SHARES - 1) {
        for (i, v) in share.iter_mut().enumerate() {
            *v = u64::from_le_bytes(crate::crypto::random_bytes::<8>()?);
            last[i] = last[i].wrapping_sub(*v);
        }
    }
    out[SHARES - 1] = last;
    Ok(out)
}

fn add(into: &mut [u64; FIELDS], v: &[u64; FIELDS]) {
    for (a, b) in into.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
}

#[derive(Default)]
struct Held {
    from: HashSet<PeerId>,
    shares: u32,
    values: [u64; FIELDS],
}

/// The shares this node holds and the sums it collects, per epoch (bounded).
pub struct Tally {
    share: bool,
    every: Duration,
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    held: BTreeMap<u64, Held>,
    collected: BTreeMap<u64, Held>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally").field("share", &self.share).finish()
    }
}

impl Tally {
    pub fn new(share: bool, every: Duration) -> Tally {
        Tally {
            share,
            every: every.max(Duration::from_secs(1)),
            inner: Mutex::new(TallyInner::default()),
        }
    }

    pub fn sharing(&self) -> bool {
        self.share
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    pub fn epoch_of(&self, unix_secs: u64) -> u64 {
        unix_secs / self.every.as_secs().max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TallyInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a statistics request from `from` (the event loop calls this; no I/O).
    pub(super) fn serve(&self, from: PeerId, msg: Message, now: u64) -> Response {
        let current = self.epoch_of(now);
        let refused = Response::Refused(Refusal::Invalid);
        // Shares and sums only for this epoch or the one before (clocks differ a little).
        let fresh = |epoch: u64| epoch <= current && current - epoch <= 1;
        let mut st = self.lock();
        match msg {
            Message::Get { epoch } => {
                let Some(h) = st.collected.get(&epoch) else {
                    return Response::Refused(Refusal::NotFound);
                };
                Response::Stats(Totals {
                    epoch,
                    holders: u32::try_from(h.from.len()).unwrap_or(u32::MAX),
                    shares: h.shares,
                    values: h.values,
                })
            }
            _ if !self.share => refused,
            Message::Share { epoch, values } if fresh(epoch) => {
                let h = st.held.entry(epoch).or_default();
                if h.from.len() >= MAX_PER_EPOCH || !h.from.insert(from) {
                    return refused;
                }
                h.shares += 1;
                add(&mut h.values, &values);
                prune(&mut st.held, current);
                Response::Ack
            }
            Message::Sum {
                epoch,
                shares,
                values,
            } if fresh(epoch) => {
                let h = st.collected.entry(epoch).or_default();
                if h.from.len() >= MAX_PER_EPOCH || !h.from.insert(from) {
                    return refused;
                }
                h.shares = h.shares.saturating_add(shares);
                add(&mut h.values, &values);
                prune(&mut st.collected, current);
                Response::Ack
            }
            _ => refused,
        }
    }

    /// Takes the sum of the shares held for `epoch` (once).
    fn take_held(&self, epoch: u64) -> Option<(u32, [u64; FIELDS])> {
        let mut st = self.lock();
        let h = st.held.remove(&epoch)?;
        Some((h.shares, h.values))
    }
}

fn prune(map: &mut BTreeMap<u64, Held>, current: u64) {
    map.retain(|e, _| current.saturating_sub(*e) < KEEP_EPOCHS);
}

/// The DHT key whose closest nodes collect `epoch`.
fn collector_key(epoch: u64) -> [u8; 32] {
    let mut m = COLLECTOR_CONTEXT.to_vec();
    m.extend_from_slice(&epoch.to_be_bytes());
    crate::crypto::hash(&m)
}

/// Candidates for the epoch's collectors, closest first, among the closest peers Kademlia
/// found and this node: the first [`COLLECTORS`] that accept a sum collect (a node that
/// does not share statistics refuses, and the next one takes its place).
async fn collectors(client: &Client, epoch: u64) -> Vec<PeerId> {
    let key = collector_key(epoch);
    let mut candidates = client.closest_peers(key).await.unwrap_or_default();
    candidates.push(client.peer_id());
    let target = KBucketKey::new(key.to_vec());
    candidates.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
    candidates.dedup();
    candidates.truncate(CANDIDATES);
    candidates
}

fn now_secs() -> u64 {
    super::now_secs()
}

/// Sends this node's shares for `epoch` to [`SHARES`] distinct connected peers (another peer
/// when one refuses). Returns how many were placed.
async fn send_shares(client: &Client, epoch: u64, figures: &Figures) -> usize {
    let Ok(shares) = split(&figures.vector()) else {
        return 0;
    };
    let mut peers: Vec<PeerId> = match client.status().await {
        Ok(s) => s.connected.iter().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => return 0,
    };
    if peers.len() < SHARES {
        tracing::info!(
            "stats: {} peer(s) connected, {SHARES} needed to share privately; nothing sent for epoch {epoch}",
            peers.len()
        );
        return 0;
    }
    // A random order: which peers hold one's shares should not be predictable.
    let mut order: Vec<(u64, PeerId)> = peers
        .drain(..)
        .map(|p| {
            let r = crate::crypto::random_bytes::<8>().map(u64::from_le_bytes);
            (r.unwrap_or(0), p)
        })
        .collect();
    order.sort_by_key(|(r, _)| *r);
    let mut next = order.into_iter().map(|(_, p)| p);
    let mut placed = 0;
    for values in shares {
        loop {
            let Some(peer) = next.next() else {
                tracing::warn!(
                    "stats: only {placed} of {SHARES} shares placed for epoch {epoch}; the epoch will be incomplete"
                );
                return placed;
            };
            let req = Request::Stats(Message::Share { epoch, values });
            match client.request(peer, req).await {
                Ok(Response::Ack) => {
                    placed += 1;
                    break;
                }
                Ok(_) | Err(_) => continue,
            }
        }
    }
    placed
}

/// Sends the sum of the shares held for `epoch` to its collectors (this node's own tally
/// when it is one).
async fn send_sum(client: &Client, tally: &Tally, epoch: u64) {
    let Some((shares, values)) = tally.take_held(epoch) else {
        return;
    };
    for c in collectors(client, epoch).await {
        let msg = Message::Sum {
            epoch,
            shares,
            values,
        };
        if c == client.peer_id() {
            tally.serve(c, msg, now_secs());
            continue;
        }
        if let Err(e) = client.request(c, Request::Stats(msg)).await {
            tracing::debug!(collector = %c, "stats: sum not taken: {e}");
        }
    }
    tracing::debug!(
        epoch,
        shares,
        "stats: held shares summed and sent to the collectors"
    );
}

/// The ring's totals for the last finished epoch (or the one before, if that is the last
/// complete one): asks the collectors and keeps the most complete answer.
pub async fn ring_totals(client: &Client, tally: &Tally) -> Option<Totals> {
    let current = tally.epoch_of(now_secs());
    let mut best: Option<Totals> = None;
    for epoch in [current.saturating_sub(1), current.saturating_sub(2)] {
        for c in collectors(client, epoch).await {
            let got = if c == client.peer_id() {
                tally.serve(c, Message::Get { epoch }, now_secs())
            } else {
                match client
                    .request(c, Request::Stats(Message::Get { epoch }))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            };
            if let Response::Stats(t) = got
                && t.epoch == epoch
                && best.is_none_or(|b| (t.complete(), t.shares) > (b.complete(), b.shares))
            {
                best = Some(t);
            }
        }
        if best.is_some_and(|b| b.complete()) {
            break;
        }
    }
    best
}

/// Runs the statistics rounds until `cancel`: each epoch, shares early (with jitter) and sums
/// half-way. `figures` is asked once per epoch.
pub async fn run<F, Fut>(
    client: Client,
    tally: std::sync::Arc<Tally>,
    figures: F,
    cancel: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Figures>,
{
    if !tally.sharing() {
        tracing::info!("stats: not sharing ring statistics (stats.share = false): nothing is sent");
        return;
    }
    let every = tally.every.as_secs().max(1);
    let mut last_shared = None;
    let mut last_summed = None;
    loop {
        let now = now_secs();
        let epoch = tally.epoch_of(now);
        let into = now % every;
        // Shares in the first quarter (at a random point), sums from half-way.
        let jitter = crate::crypto::random_bytes::<8>()
            .map(u64::from_le_bytes)
            .unwrap_or(0)
            % (every / 4).max(1);
        let wait = if tally.sharing() && last_shared != Some(epoch) && into < every / 2 {
            if into >= jitter {
                let f = figures().await;
                let placed = send_shares(&client, epoch, &f).await;
                if placed > 0 {
                    tracing::info!(epoch, placed, "stats: shares sent");
                }
                last_shared = Some(epoch);
                continue;
            }
            jitter - into
        } else if tally.sharing() && last_summed != Some(epoch) && into >= every / 2 {
            send_sum(&client, &tally, epoch).await;
            last_summed = Some(epoch);
            continue;
        } else if into < every / 2 {
            every / 2 - into
        } else {
            every - into
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(wait.max(1))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(n: u8) -> PeerId {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        key.public().to_peer_id()
    }

    proptest! {
        #[test]
        fn shares_add_up_and_frames_roundtrip(values in proptest::array::uniform18(any::<u64>()), epoch in any::<u64>()) {
            let shares = split(&values).unwrap();
            let mut sum = [0u64; FIELDS];
            for s in &shares {
                add(&mut sum, s);
            }
            prop_assert_eq!(sum, values);
            for msg in [
                Message::Share { epoch, values },
                Message::Sum { epoch, shares: 7, values },
                Message::Get { epoch },
            ] {
                let bytes = Request::Stats(msg.clone()).encode();
                let back = Request::decode(&bytes, super::super::protocol::BLOB_PROTOCOL).unwrap();
                prop_assert_eq!(back, Request::Stats(msg));
            }
            let t = Response::Stats(Totals { epoch, holders: 3, shares: 9, values });
            prop_assert_eq!(Response::decode(&t.encode()).unwrap(), t);
        }
    }

    #[test]
    fn a_share_alone_says_nothing_and_the_totals_count_nodes() {
        // Ten nodes, each splitting its figures to three holders; holders forward their sums.
        let tally = Tally::new(true, Duration::from_secs(3600));
        let holders: Vec<Tally> = (0..4)
            .map(|_| Tally::new(true, Duration::from_secs(3600)))
            .collect();
        let now = 7200;
        let epoch = tally.epoch_of(now);
        let mut expected_used = 0u64;
        for n in 0..10u8 {
            let f = Figures {
                version: "0.1.0".into(),
                uptime_secs: 100,
                offered_bytes: 1 << 30,
                used_bytes: u64::from(n) * 1000,
                delivered: 2,
                reachable: n % 2 == 0,
            };
            expected_used += u64::from(n) * 1000;
            for (i, s) in split(&f.vector()).unwrap().into_iter().enumerate() {
                let h = &holders[(usize::from(n) + i) % 4];
                let r = h.serve(peer(n), Message::Share { epoch, values: s }, now);
                assert_eq!(r, Response::Ack);
            }
            // One share per sender per epoch: a second is refused (no inflating by repeats).
            let again = holders[usize::from(n) % 4].serve(
                peer(n),
                Message::Share {
                    epoch,
                    values: [0; FIELDS],
                },
                now,
            );
            assert_eq!(again, Response::Refused(Refusal::Invalid));
        }
        for (i, h) in holders.iter().enumerate() {
            let (shares, values) = h.take_held(epoch).unwrap();
            let r = tally.serve(
                peer(100 + i as u8),
                Message::Sum {
                    epoch,
                    shares,
                    values,
                },
                now,
            );
            assert_eq!(r, Response::Ack);
        }
        let Response::Stats(t) = tally.serve(peer(1), Message::Get { epoch }, now) else {
            panic!("no totals");
        };
        assert!(t.complete(), "{t:?}");
        assert_eq!(t.values[field::NODES], 10);
        assert_eq!(t.values[field::USED], expected_used);
        assert_eq!(t.values[field::REACHABLE], 5);
        assert_eq!(t.values[field::VERSION + version_slot("0.1.0")], 10);
        assert_eq!(t.values[field::OFFERED], 10 << 30);
    }

    #[test]
    fn a_lost_sum_makes_the_epoch_incomplete_and_stale_or_opted_out_input_is_refused() {
        let t = Totals {
            epoch: 1,
            holders: 2,
            shares: 8,
            values: {
                let mut v = [0; FIELDS];
                v[field::NODES] = 3;
                v
            },
        };
        assert!(!t.complete());
        let tally = Tally::new(true, Duration::from_secs(10));
        let old = Message::Share {
            epoch: 5,
            values: [0; FIELDS],
        };
        assert_eq!(
            tally.serve(peer(1), old, 100),
            Response::Refused(Refusal::Invalid)
        );
        let future = Message::Sum {
            epoch: 11,
            shares: 1,
            values: [0; FIELDS],
        };
        assert_eq!(
            tally.serve(peer(1), future, 100),
            Response::Refused(Refusal::Invalid)
        );
        let out = Tally::new(false, Duration::from_secs(10));
        let share = Message::Share {
            epoch: 10,
            values: [0; FIELDS],
        };
        assert_eq!(
            out.serve(peer(1), share, 100),
            Response::Refused(Refusal::Invalid)
        );
    }
}
