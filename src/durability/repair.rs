//! Maintenance: find the missing fragments of a bundle and re-create them on their new closest
//! peers, by the owner or — when the owner is offline — by the holders of the bundle's
//! fragments among themselves; and let fragments nobody renews expire.
//!
//! Holders can do it because every fragment holder also keeps the bundle's *lease*: public
//! metadata (bundle id, n, k, the blob id of every fragment, an expiry), stored as a blob beside
//! the fragment. docs/design.md, "Lease":
//!
//! ```text
//! u8 tag = 0xB3 (lease, version 2) · [32] owner (user Ed25519 key) · [32] bundle id · u16 n ·
//! u16 k · u64 seq · u64 expires (unix s) · n × [32] fragment blob id · [64] signature
//! ```
//!
//! Leases are signed by the bundle's owner ("peerpost lease v2"): a holder acts only on valid
//! ones, and for one owner's placement (bundle, n, k, blob ids) only the highest `seq` counts,
//! so only a newer lease of the same owner changes an expiry (a release is such a lease,
//! expiring now). A blob is kept while some owner's newest lease for a placement naming it is
//! unexpired (another key's lease can never shorten it); a blob no valid lease names goes
//! after [`GRACE_SECS`] (a placement gives its leases right after its fragments), or, when it
//! is a sealed object (the overlay's message parts have no lease), after [`PART_LIFE_SECS`].
//!
//! A lease reveals no plaintext and needs no key: a missing fragment is rebuilt from any `k`
//! verified fragments (the bundle is decoded and re-coded — the code is deterministic, so the
//! new fragment has exactly the blob id the lease names, which is checked before it is stored).
//! Of the holders, only the one holding the lowest-numbered surviving fragment repairs (the
//! others see that fragment and defer), so a bundle is not repaired n times over. The owner
//! renews leases (a new lease blob with a later expiry) on every backup pass; a holder drops a
//! fragment once no unexpired lease for its bundle is held, and leases live at most
//! [`MAX_LEASE_SECS`] whatever they say. Repair passes are bounded in bundles and bytes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use thiserror::Error;

use super::codec::ErasureCodec;
use super::fragment::{self, Fragment, make_fragments, placement_key, rebuild};
use super::params::Params;
use super::ring::{self, Receipt};
use crate::crypto::{self, ObjectId};
use crate::overlay::protocol::{Refusal, Request, Response};
use crate::overlay::{self, PeerId};
use crate::store::{self, Store};
use crate::wire::{DecodeError, Reader, Writer};

pub const LEASE_TAG: u8 = 0xB3;
/// Version 1 leases (unsigned) are no longer honoured: held ones are unreferenced blobs.
pub const LEASE_V1_TAG: u8 = 0xB2;
const SIGN_CONTEXT: &str = "peerpost lease v2";
/// Longest a holder keeps a fragment on one lease, whatever the lease says.
pub const MAX_LEASE_SECS: u64 = 400 * 24 * 3600;
/// Largest lease blob.
pub const MAX_LEASE: usize = 1 + 32 + 32 + 2 + 2 + 8 + 8 + 32 * fragment::MAX_N + 64;
/// A held blob no valid lease names is dropped this long after a holder pass first saw it so.
pub const GRACE_SECS: u64 = 3600;
/// ... or, when it is a sealed object (a message part of the overlay's delivery), this long.
pub const PART_LIFE_SECS: u64 = 30 * 24 * 3600;
/// Unreferenced blobs a holder tracks at most (the rest wait for a later pass).
const MAX_TRACKED: usize = 1 << 20;
/// Peers asked for one fragment when locating it.
const LOCATE_CANDIDATES: usize = ring::ASK;
/// Peers a re-created fragment may go to (the closest ones).
const PLACE_CANDIDATES: usize = ring::CANDIDATES;
/// Fragments located at once.
const PARALLEL: usize = 16;

#[derive(Debug, Error)]
pub enum RepairError {
    #[error("malformed lease: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Fragment(#[from] fragment::Error),
    #[error("overlay: {0}")]
    Overlay(#[from] overlay::Error),
    #[error("the store failed: {0}")]
    Store(#[from] store::Error),
    #[error("a re-created fragment does not match its lease (forged lease?)")]
    Mismatch,
    #[error("the lease's signature does not verify")]
    Signature,
}

/// A bundle's public metadata, as holders keep it, signed by the bundle's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The owner's user Ed25519 key.
    pub owner: [u8; 32],
    pub bundle: ObjectId,
    pub params: Params,
    /// Orders the owner's leases of one placement (milliseconds since the epoch at signing).
    pub seq: u64,
    pub expires: u64,
    pub blobs: Vec<[u8; 32]>,
    pub signature: [u8; 64],
}

/// A strictly increasing lease seq for this process (unix milliseconds, or one more).
pub fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    if prev >= now {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    }
}

impl Lease {
    /// The owner's lease of `receipt`'s placement, expiring at `expires`.
    pub fn sign(keys: &crypto::UserKeys, receipt: &Receipt, expires: u64) -> Lease {
        let mut l = Lease {
            owner: keys.public().sign,
            bundle: receipt.bundle,
            params: receipt.params,
            seq: next_seq(),
            expires,
            blobs: receipt.blobs.clone(),
            signature: [0; 64],
        };
        l.signature = keys.sign(SIGN_CONTEXT, l.body().as_slice());
        l
    }

    fn body(&self) -> Writer {
        let mut w = Writer::with_capacity(MAX_LEASE.min(149 + 32 * self.blobs.len()));
        w.u8(LEASE_TAG)
            .fixed(&self.owner)
            .fixed(self.bundle.as_bytes())
            .u16(self.params.n)
            .u16(self.params.k)
            .u64(self.seq)
            .u64(self.expires);
        for b in &self.blobs {
            w.fixed(b);
        }
        w
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = self.body();
        w.fixed(&self.signature);
        w.into_vec()
    }

    /// Decodes a lease and verifies its owner's signature.
    pub fn decode(bytes: &[u8]) -> Result<Lease, RepairError> {
        if bytes.len() > MAX_LEASE {
            return Err(DecodeError::TooLong {
                field: "lease",
                len: bytes.len(),
                max: MAX_LEASE,
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        if r.u8("lease tag")? != LEASE_TAG {
            return Err(DecodeError::Invalid {
                field: "lease tag",
                why: "not a version 2 lease",
            }
            .into());
        }
        let owner = r.array("owner")?;
        let bundle = ObjectId(r.array("bundle id")?);
        let (n, k) = (r.u16("n")?, r.u16("k")?);
        if n == 0 || k == 0 || k > n || usize::from(n) > fragment::MAX_N {
            return Err(DecodeError::Invalid {
                field: "n/k",
                why: "out of range",
            }
            .into());
        }
        let seq = r.u64("seq")?;
        let expires = r.u64("expires")?;
        let blobs = (0..n)
            .map(|_| r.array::<32>("fragment id"))
            .collect::<Result<Vec<_>, _>>()?;
        let signature = r.array::<64>("signature")?;
        r.finish("lease")?;
        let signed = &bytes[..bytes.len() - 64];
        crypto::keys::verify(&owner, SIGN_CONTEXT, signed, &signature)
            .map_err(|_| RepairError::Signature)?;
        Ok(Lease {
            owner,
            bundle,
            params: Params { n, k },
            seq,
            expires,
            blobs,
            signature,
        })
    }

    /// What one owner's leases of one placement share: owner, bundle, n, k and blob ids (a
    /// re-coded bundle is another placement, whatever its bundle id).
    pub fn placement(&self) -> [u8; 32] {
        let mut w = Writer::with_capacity(68 + 32 * self.blobs.len());
        w.fixed(&self.owner)
            .fixed(self.bundle.as_bytes())
            .u16(self.params.n)
            .u16(self.params.k);
        for b in &self.blobs {
            w.fixed(b);
        }
        crypto::hash(w.as_slice())
    }

    fn receipt(&self) -> Receipt {
        Receipt {
            bundle: self.bundle,
            params: self.params,
            blobs: self.blobs.clone(),
            holders: vec![None; self.blobs.len()],
            stored: self.blobs.len(),
        }
    }
}

async fn has(client: &overlay::Client, peer: PeerId, id: [u8; 32]) -> bool {
    matches!(
        client.request(peer, Request::Has { id }).await,
        Ok(Response::HasAnswer(true))
    )
}

/// Stores a blob on one peer, retrying (3 times, 50 ms apart and doubling) while it is busy.
async fn put(client: &overlay::Client, peer: PeerId, bytes: Vec<u8>) -> bool {
    let id = crypto::hash(&bytes);
    let mut wait = Duration::from_millis(50);
    for _ in 0..4 {
        let req = Request::Store {
            id,
            bytes: bytes.clone(),
        };
        match client.request(peer, req).await {
            Ok(Response::Stored) => return true,
            Ok(Response::Refused(Refusal::Busy)) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            _ => return false,
        }
    }
    false
}

/// Who holds fragment `index`: the peer that took it (`hint`), if it still has it, else the
/// peers closest to its placement key are asked; this node counts when it holds it itself.
/// The hint matters once the ring has grown: the first holder may no longer be among the
/// closest peers, and a release or lease renewal must still reach it.
async fn locate_one(
    client: &overlay::Client,
    store: Option<&Store>,
    bundle: &ObjectId,
    index: u16,
    blob: [u8; 32],
    hint: Option<PeerId>,
) -> Option<PeerId> {
    if let Some(s) = store
        && s.held_has(blob).await.unwrap_or(false)
    {
        return Some(client.peer_id());
    }
    if let Some(peer) = hint
        && peer != client.peer_id()
        && has(client, peer, blob).await
    {
        return Some(peer);
    }
    let closest = client
        .closest_peers(placement_key(bundle, index))
        .await
        .ok()?;
    for peer in closest.into_iter().take(LOCATE_CANDIDATES) {
        if has(client, peer, blob).await {
            return Some(peer);
        }
    }
    None
}

/// The holder of every fragment of a bundle, `None` where none was found (the receipt's
/// holders are asked first).
pub fn locate<'a>(
    client: &'a overlay::Client,
    store: Option<&'a Store>,
    receipt: &'a Receipt,
) -> BoxFuture<'a, Vec<Option<PeerId>>> {
    futures::stream::iter(receipt.blobs.iter().enumerate().map(move |(i, b)| {
        let hint = receipt.holders.get(i).copied().flatten();
        locate_one(client, store, &receipt.bundle, i as u16, *b, hint)
    }))
    .buffered(PARALLEL)
    .collect()
    .boxed()
}

/// What repairing one bundle found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BundleRepair {
    /// Fragments found before repair.
    pub present: usize,
    /// Fragments re-created and stored.
    pub recreated: usize,
    /// Bytes sent to re-create them (fragments and leases).
    pub bytes_sent: u64,
    /// Bytes fetched to rebuild the bundle.
    pub bytes_fetched: u64,
    /// Fewer than k fragments left: the bundle cannot be repaired.
    pub lost: bool,
}

/// Finds a bundle's missing fragments and re-creates each on the closest peer to its placement
/// key that holds no other fragment of the bundle; every fragment holder also gets `lease`.
pub async fn repair_bundle(
    client: &overlay::Client,
    store: Option<&Store>,
    codec: &dyn ErasureCodec,
    lease: &Lease,
) -> Result<BundleRepair, RepairError> {
    let receipt = lease.receipt();
    let holders = locate(client, store, &receipt).await;
    repair_located(client, codec, lease, &receipt, holders).await
}

async fn repair_located(
    client: &overlay::Client,
    codec: &dyn ErasureCodec,
    lease: &Lease,
    receipt: &Receipt,
    holders: Vec<Option<PeerId>>,
) -> Result<BundleRepair, RepairError> {
    let (n, k) = (usize::from(lease.params.n), usize::from(lease.params.k));
    let mut out = BundleRepair {
        present: holders.iter().flatten().count(),
        ..Default::default()
    };
    if out.present == n {
        return Ok(out);
    }
    if out.present < k {
        out.lost = true;
        return Ok(out);
    }
    // Any k verified fragments, from the holders just found.
    let mut fetched: Vec<Fragment> = Vec::with_capacity(k);
    for (i, h) in holders.iter().enumerate() {
        if fetched.len() >= k {
            break;
        }
        let Some(peer) = h else { continue };
        let got = if *peer == client.peer_id() {
            None
        } else {
            ring::fetch_from(client, *peer, &receipt.bundle, i as u16, receipt.blobs[i]).await
        };
        let got = match got {
            Some(f) => Some(f),
            None => {
                ring::fetch_one(client, &receipt.bundle, i as u16, receipt.blobs[i], None).await
            }
        };
        if let Some(f) = got {
            out.bytes_fetched += f.bytes.len() as u64;
            fetched.push(f);
        }
    }
    if fetched.len() < k {
        out.lost = true;
        return Ok(out);
    }
    let bundle = rebuild(codec, fetched)?;
    let all = make_fragments(codec, &bundle, lease.params)?;
    let lease_bytes = lease.encode();
    let mut used: HashSet<PeerId> = holders.iter().flatten().copied().collect();
    for (i, h) in holders.iter().enumerate() {
        if h.is_some() {
            continue;
        }
        let Some(f) = all.get(i) else { continue };
        let bytes = f.encode();
        if crypto::hash(&bytes) != lease.blobs[i] {
            return Err(RepairError::Mismatch);
        }
        let closest = client
            .closest_peers(placement_key(&lease.bundle, i as u16))
            .await?;
        // One of the nearest peers, one without a fragment of this bundle first: after a
        // failure, peers' views of the closest peers differ most at the far end, so a
        // re-created fragment stays near its key (doubling up when the ring has fewer live
        // peers than fragments) rather than risk a place readers do not ask.
        let closest: Vec<PeerId> = closest.into_iter().take(PLACE_CANDIDATES).collect();
        let order: Vec<PeerId> = closest
            .iter()
            .filter(|p| !used.contains(*p))
            .chain(closest.iter().filter(|p| used.contains(*p)))
            .copied()
            .collect();
        for peer in order {
            if put(client, peer, bytes.clone()).await {
                let _ = put(client, peer, lease_bytes.clone()).await;
                out.bytes_sent += (bytes.len() + lease_bytes.len()) as u64;
                used.insert(peer);
                out.recreated += 1;
                break;
            }
        }
    }
    Ok(out)
}

/// Stores `lease` on each given fragment holder (the owner does this after placing a bundle,
/// and again to renew it). Returns how many took it.
pub fn give_lease<'a>(
    client: &'a overlay::Client,
    lease: &Lease,
    holders: &'a [Option<PeerId>],
) -> BoxFuture<'a, usize> {
    let bytes = lease.encode();
    let me = client.peer_id();
    futures::stream::iter(
        holders
            .iter()
            .flatten()
            .filter(move |p| **p != me)
            .map(move |p| {
                let b = bytes.clone();
                async move { put(client, *p, b).await }
            }),
    )
    .buffer_unordered(PARALLEL)
    .filter(|ok| futures::future::ready(*ok))
    .count()
    .boxed()
}

/// Limits of one maintenance pass.
#[derive(Debug, Clone, Copy)]
pub struct RepairLimits {
    /// Bundles examined at most.
    pub max_bundles: usize,
    /// Bytes sent and fetched at most.
    pub max_bytes: u64,
    /// Pause between two bundles (rate limit).
    pub pause: Duration,
}

impl Default for RepairLimits {
    fn default() -> Self {
        RepairLimits {
            max_bundles: 64,
            max_bytes: 256 << 20,
            pause: Duration::from_millis(100),
        }
    }
}

/// What a pass found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    pub bundles_checked: usize,
    pub fragments_recreated: usize,
    pub bundles_lost: usize,
    pub bytes_sent: u64,
    pub bytes_fetched: u64,
    /// Expired fragments and leases dropped.
    pub expired: usize,
}

impl PassStats {
    /// Adds one bundle's repair (and the fragments re-created to the store's repair count).
    async fn count(&mut self, store: &Store, r: BundleRepair) -> Result<(), RepairError> {
        self.bundles_checked += 1;
        self.fragments_recreated += r.recreated;
        self.bytes_sent += r.bytes_sent;
        self.bytes_fetched += r.bytes_fetched;
        self.bundles_lost += usize::from(r.lost);
        if r.recreated > 0 {
            super::backup::add_repairs(store, r.recreated as u64).await?;
        }
        Ok(())
    }
}

/// What a holder remembers between its passes: since when each held blob has been
/// referenced by no valid lease (in memory: a restart begins the grace period anew).
#[derive(Debug, Default)]
pub struct HolderState {
    unreferenced: HashMap<[u8; 32], (u64, u64)>,
}

/// A holder's maintenance pass: verify every lease held here and keep, per owner and
/// placement, only the newest; drop the blobs whose every naming lease has expired, and the
/// blobs no valid lease names once their grace period is over; then repair what this node is
/// the coordinator of (it holds the lowest-numbered fragment still present in the ring).
pub async fn holder_pass(
    client: &overlay::Client,
    store: &Store,
    codec: &dyn ErasureCodec,
    limits: RepairLimits,
    now: u64,
    state: &mut HolderState,
) -> Result<PassStats, RepairError> {
    // Newest valid lease per (owner, placement), with the ids of all its leases held here;
    // every other held blob.
    let mut leases: HashMap<[u8; 32], (Lease, Vec<[u8; 32]>)> = HashMap::new();
    let mut blobs: Vec<[u8; 32]> = Vec::new();
    let mut from = None;
    loop {
        let step = store.held_scan(from, 4096, MAX_LEASE).await?;
        for (id, bytes) in step.items {
            let lease = bytes
                .filter(|b| b.first() == Some(&LEASE_TAG))
                .and_then(|b| Lease::decode(&b).ok());
            let Some(l) = lease else {
                blobs.push(id);
                continue;
            };
            let e = leases
                .entry(l.placement())
                .or_insert_with(|| (l.clone(), Vec::new()));
            e.1.push(id);
            if l.seq > e.0.seq {
                e.0 = l;
            }
        }
        match step.next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    let mut stats = PassStats::default();
    // Each blob lives as long as the longest newest lease naming it (capped).
    let mut until: HashMap<[u8; 32], u64> = HashMap::new();
    let mut live = Vec::new();
    for (lease, ids) in leases.into_values() {
        let expires = lease.expires.min(now.saturating_add(MAX_LEASE_SECS));
        for b in &lease.blobs {
            let u = until.entry(*b).or_insert(0);
            *u = (*u).max(expires);
        }
        let newest = crypto::hash(&lease.encode());
        for id in ids {
            if (id != newest || expires <= now) && store.held_delete(id).await? {
                stats.expired += 1;
            }
        }
        if expires > now {
            live.push(lease);
        }
    }
    let held: HashSet<[u8; 32]> = blobs.iter().copied().collect();
    state.unreferenced.retain(|id, _| held.contains(id));
    for id in blobs {
        match until.get(&id) {
            Some(&u) => {
                state.unreferenced.remove(&id);
                if u <= now && store.held_delete(id).await? {
                    stats.expired += 1;
                }
            }
            None => {
                let life = match state.unreferenced.get(&id) {
                    Some(&(_, life)) => life,
                    None if state.unreferenced.len() >= MAX_TRACKED => continue,
                    None => {
                        let life = unreferenced_life(store, id).await?;
                        state.unreferenced.insert(id, (now, life));
                        life
                    }
                };
                let since = state.unreferenced.get(&id).map_or(now, |&(t, _)| t);
                if now.saturating_sub(since) >= life && store.held_delete(id).await? {
                    state.unreferenced.remove(&id);
                    stats.expired += 1;
                }
            }
        }
    }
    for lease in live {
        let mine: Vec<usize> = {
            let mut v = Vec::new();
            for (i, b) in lease.blobs.iter().enumerate() {
                if store.held_has(*b).await? {
                    v.push(i);
                }
            }
            v
        };
        let Some(&first_mine) = mine.first() else {
            continue;
        };
        if stats.bundles_checked >= limits.max_bundles
            || stats.bytes_sent + stats.bytes_fetched >= limits.max_bytes
        {
            break;
        }
        // Defer to the holder of a lower-numbered fragment, if one is present — after making
        // sure it holds the lease (a lease lost to a busy peer would stall repair for good).
        let newest = crypto::hash(&lease.encode());
        let mut deferred = false;
        for i in 0..first_mine {
            if let Some(peer) =
                locate_one(client, None, &lease.bundle, i as u16, lease.blobs[i], None).await
            {
                if !has(client, peer, newest).await {
                    put(client, peer, lease.encode()).await;
                }
                deferred = true;
                break;
            }
        }
        if deferred {
            continue;
        }
        let r = repair_bundle(client, Some(store), codec, &lease).await?;
        stats.count(store, r).await?;
        tokio::time::sleep(limits.pause).await;
    }
    Ok(stats)
}

/// How long a held blob that no valid lease names is kept: a fragment, an old or forged
/// lease or junk [`GRACE_SECS`]; a sealed object (a delivery's message part) [`PART_LIFE_SECS`].
async fn unreferenced_life(store: &Store, id: [u8; 32]) -> Result<u64, RepairError> {
    let Some(bytes) = store.held_get(id).await? else {
        return Ok(0);
    };
    let part = Fragment::decode(&bytes).is_err() && crypto::SealedObject::from_bytes(bytes).is_ok();
    Ok(if part { PART_LIFE_SECS } else { GRACE_SECS })
}

/// The owner's maintenance pass over its own bundles: repair what is missing and renew every
/// holder's lease to `expires`.
pub async fn owner_pass(
    client: &overlay::Client,
    store: &Store,
    codec: &dyn ErasureCodec,
    keys: &crypto::UserKeys,
    receipts: &[Receipt],
    expires: u64,
    limits: RepairLimits,
) -> Result<PassStats, RepairError> {
    let mut stats = PassStats::default();
    for receipt in receipts.iter().take(limits.max_bundles) {
        if stats.bytes_sent + stats.bytes_fetched >= limits.max_bytes {
            break;
        }
        let lease = Lease::sign(keys, receipt, expires);
        let holders = locate(client, None, receipt).await;
        let r = repair_located(client, codec, &lease, receipt, holders.clone()).await?;
        give_lease(client, &lease, &holders).await;
        stats.count(store, r).await?;
        tokio::time::sleep(limits.pause).await;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_roundtrip_and_refuse_garbage() {
        let keys = crypto::UserKeys::generate().unwrap();
        let receipt = Receipt {
            bundle: ObjectId([1; 32]),
            params: Params { n: 3, k: 2 },
            blobs: vec![[1; 32], [2; 32], [3; 32]],
            holders: vec![None; 3],
            stored: 3,
        };
        let l = Lease::sign(&keys, &receipt, 99);
        assert_eq!(l.owner, keys.public().sign);
        let b = l.encode();
        assert_eq!(b.len(), 149 + 3 * 32);
        assert_eq!(Lease::decode(&b).unwrap(), l);
        for cut in 0..b.len() {
            assert!(Lease::decode(&b[..cut]).is_err());
        }
        let mut bad = b.clone();
        bad[0] = LEASE_V1_TAG;
        assert!(Lease::decode(&bad).is_err());
        // Any changed byte (an earlier expiry, another owner's key) breaks the signature.
        for i in [1, 40, 70, 80, b.len() - 1] {
            let mut forged = b.clone();
            forged[i] ^= 1;
            assert!(Lease::decode(&forged).is_err(), "byte {i}");
        }
        // A newer lease of the same placement has a higher seq and the same placement id;
        // another key's lease of the same bundle is another placement.
        let later = Lease::sign(&keys, &receipt, 1);
        assert!(later.seq > l.seq);
        assert_eq!(later.placement(), l.placement());
        let other = Lease::sign(&crypto::UserKeys::generate().unwrap(), &receipt, 1);
        assert_ne!(other.placement(), l.placement());
    }
}
