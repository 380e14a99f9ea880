//! Bundles in the ring: fragment `i` of a bundle goes to the peer closest to
//! BLAKE3(bundle id ‖ i) that holds no other fragment of the bundle (so one peer's loss costs at
//! most one fragment), and a reader asks the peers closest to each placement key, verifies
//! every answer, and rebuilds from the first `k` valid fragments.
//!
//! A [`Receipt`] names what was stored (bundle id, n, k, and the blob id of every fragment);
//! whoever has it can read the bundle back from the ring. (Keeping receipts in the ring, the
//! repair loop and restore from the phrase build on this.)

use std::collections::HashSet;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use thiserror::Error;

use super::codec::ErasureCodec;
use super::fragment::{self, Fragment, make_fragments, pack, placement_key, rebuild, unpack};
use super::params::Params;
use crate::crypto::{self, ObjectId, SealedObject};
use crate::overlay::protocol::{Request, Response};
use crate::overlay::{self, PeerId};

/// When every peer close to a placement key already holds a fragment of the bundle, a
/// fragment doubles up on one of this many closest peers.
pub(crate) const CANDIDATES: usize = 8;
/// A fragment goes to one of this many peers closest to its placement key (the closest that
/// holds no other fragment of the bundle), and readers ask that many: two nodes' views of "the
/// closest peers" differ a little, more so right after many peers failed.
pub(crate) const ASK: usize = 20;
/// Fragments stored or fetched at once.
const PARALLEL: usize = 16;
/// Rounds a read asks for fragments no peer served before it gives up.
const FETCH_ROUNDS: u32 = 3;
/// The pause before the second round (twice that before the third).
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum RingError {
    #[error(transparent)]
    Fragment(#[from] fragment::Error),
    #[error("overlay: {0}")]
    Overlay(#[from] overlay::Error),
    #[error(
        "a fragment of this bundle would be {len} bytes, over the {max}-byte blob limit \
         (the bundle is too large for the ring's k)"
    )]
    FragmentTooLarge { len: usize, max: usize },
    #[error("only {stored} of {n} fragments could be stored, {k} are needed to rebuild")]
    TooFewStored { stored: usize, n: usize, k: usize },
    #[error("only {found} valid fragments of bundle {bundle} were found, {k} are needed")]
    TooFewFound {
        bundle: ObjectId,
        found: usize,
        k: usize,
    },
}

/// What was stored: enough to read the bundle back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub bundle: ObjectId,
    pub params: Params,
    /// BLAKE3 of each encoded fragment (what holders file it under).
    pub blobs: Vec<[u8; 32]>,
    /// Who took each fragment (a hint for readers: repair may move fragments later).
    pub holders: Vec<Option<PeerId>>,
    /// How many fragments found a holder.
    pub stored: usize,
}

/// Packs `objects` into a bundle, codes it with `params`, and places every fragment on its
/// own peer. Fails if fewer than `k` fragments found a holder.
pub async fn store(
    client: &overlay::Client,
    codec: &dyn ErasureCodec,
    objects: &[SealedObject],
    params: Params,
) -> Result<Receipt, RingError> {
    let (bundle_bytes, bundle) = pack(objects)?;
    let fragments = make_fragments(codec, &bundle_bytes, params)?;
    // Encoded once, here: every fragment has the same size, so one that no holder may take is
    // refused before any lookup or store, and the caller can leave that bundle for a larger
    // ring.
    let encoded: Vec<Vec<u8>> = fragments.iter().map(Fragment::encode).collect();
    if let Some(len) = encoded.first().map(Vec::len)
        && len > overlay::protocol::MAX_BLOB
    {
        return Err(RingError::FragmentTooLarge {
            len,
            max: overlay::protocol::MAX_BLOB,
        });
    }
    // The closest peers of every placement key (looked up concurrently), then a distinct peer
    // per fragment: the closest one not yet used among the ASK closest (readers ask those), or
    // the closest one when all of them hold a fragment already. Stores run concurrently,
    // falling back to the next closest when a peer refuses.
    let keys: Vec<[u8; 32]> = fragments
        .iter()
        .map(|f| placement_key(&bundle, f.index))
        .collect();
    let closest_sets = closest_of_all(client, &keys).await;
    let mut used: HashSet<PeerId> = HashSet::new();
    let mut plans: Vec<(Vec<u8>, Vec<PeerId>)> = Vec::with_capacity(fragments.len());
    for (bytes, closest) in encoded.into_iter().zip(closest_sets) {
        let closest: Vec<PeerId> = closest?.into_iter().take(ASK).collect();
        let target = closest
            .iter()
            .find(|p| !used.contains(*p))
            .or(closest.first())
            .copied();
        let mut tries: Vec<PeerId> = target.into_iter().collect();
        tries.extend(closest.iter().filter(|p| Some(**p) != target));
        if let Some(t) = target {
            used.insert(t);
        }
        plans.push((bytes, tries));
    }
    let blobs: Vec<[u8; 32]> = plans.iter().map(|(bytes, _)| crypto::hash(bytes)).collect();
    let holders: Vec<Option<PeerId>> =
        futures::stream::iter(plans.into_iter().map(|(bytes, tries)| async move {
            let id = crypto::hash(&bytes);
            for peer in tries {
                let req = Request::Store {
                    id,
                    bytes: bytes.clone(),
                };
                match client.request(peer, req).await {
                    Ok(Response::Stored) => return Some(peer),
                    Ok(other) => tracing::debug!(%peer, "fragment refused: {other:?}"),
                    Err(e) => tracing::debug!(%peer, "fragment store failed: {e}"),
                }
            }
            None
        }))
        .buffered(PARALLEL)
        .collect()
        .await;
    let stored = holders.iter().flatten().count();
    let (n, k) = (usize::from(params.n), usize::from(params.k));
    if stored < k {
        return Err(RingError::TooFewStored { stored, n, k });
    }
    Ok(Receipt {
        bundle,
        params,
        blobs,
        holders,
        stored,
    })
}

/// The closest peers of each key, looked up `PARALLEL` at a time.
fn closest_of_all<'a>(
    client: &'a overlay::Client,
    keys: &'a [[u8; 32]],
) -> BoxFuture<'a, Vec<Result<Vec<PeerId>, overlay::Error>>> {
    futures::stream::iter(keys.iter().map(move |k| client.closest_peers(*k)))
        .buffered(PARALLEL)
        .collect()
        .boxed()
}

/// Asks one peer for fragment `index` of `bundle`; returns it verified.
pub(crate) async fn fetch_from(
    client: &overlay::Client,
    peer: PeerId,
    bundle: &ObjectId,
    index: u16,
    blob: [u8; 32],
) -> Option<Fragment> {
    match client.request(peer, Request::Fetch { id: blob }).await {
        Ok(Response::Found { bytes }) if crypto::hash(&bytes) == blob => {
            match Fragment::decode(&bytes) {
                Ok(f) if f.index == index && f.manifest.bundle == *bundle => Some(f),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Asks the fragment's last known holder, then the peers closest to its placement key; returns
/// it verified.
pub(crate) async fn fetch_one(
    client: &overlay::Client,
    bundle: &ObjectId,
    index: u16,
    blob: [u8; 32],
    hint: Option<PeerId>,
) -> Option<Fragment> {
    let mut candidates: Vec<PeerId> = hint.into_iter().collect();
    if let Ok(closest) = client.closest_peers(placement_key(bundle, index)).await {
        candidates.extend(closest.into_iter().filter(|p| Some(*p) != hint).take(ASK));
    }
    for peer in candidates {
        match client.request(peer, Request::Fetch { id: blob }).await {
            Ok(Response::Found { bytes }) if crypto::hash(&bytes) == blob => {
                match Fragment::decode(&bytes) {
                    Ok(f) if f.index == index && f.manifest.bundle == *bundle => return Some(f),
                    _ => tracing::warn!(%peer, "a fragment that matches its id does not decode"),
                }
            }
            Ok(Response::Found { .. }) => tracing::warn!(%peer, "peer served a corrupt fragment"),
            _ => {}
        }
    }
    None
}

/// Reads a bundle back from the ring: the first `k` valid fragments win.
///
/// A fragment that no peer served (a request timed out on a loaded ring, a connection was
/// still settling after many peers failed) is asked for again, up to [`FETCH_ROUNDS`] rounds
/// with a growing pause, before the read gives up: when just `k` holders survive, one
/// transient miss must not lose the bundle.
pub async fn fetch(
    client: &overlay::Client,
    codec: &dyn ErasureCodec,
    receipt: &Receipt,
) -> Result<Vec<SealedObject>, RingError> {
    let k = usize::from(receipt.params.k);
    let mut found: Vec<Fragment> = Vec::with_capacity(k);
    let mut wanted: Vec<usize> = (0..receipt.blobs.len()).collect();
    for round in 0..FETCH_ROUNDS {
        if round > 0 {
            tokio::time::sleep(RETRY_PAUSE * round).await;
        }
        wanted = fetch_round(client, receipt, &wanted, k, &mut found).await;
        if found.len() >= k || wanted.is_empty() {
            break;
        }
        tracing::debug!(
            bundle = %receipt.bundle,
            found = found.len(),
            k,
            round,
            "too few fragments found; asking again for the others"
        );
    }
    if found.len() < k {
        return Err(RingError::TooFewFound {
            bundle: receipt.bundle,
            found: found.len(),
            k,
        });
    }
    let bytes = rebuild(codec, found)?;
    Ok(unpack(&bytes)?)
}

/// One pass over the fragments `wanted` (indexes into the receipt), `PARALLEL` at a time,
/// until `found` holds `k`. Returns the indexes that were asked for and not served; those not
/// yet asked for when `k` was reached are not returned (nothing more is needed).
async fn fetch_round(
    client: &overlay::Client,
    receipt: &Receipt,
    wanted: &[usize],
    k: usize,
    found: &mut Vec<Fragment>,
) -> Vec<usize> {
    let mut pending: FuturesUnordered<_> = FuturesUnordered::new();
    let mut next = wanted.iter().copied();
    let mut missed = Vec::new();
    while found.len() < k {
        while pending.len() < PARALLEL {
            let Some(i) = next.next() else { break };
            let hint = receipt.holders.get(i).copied().flatten();
            let blob = receipt.blobs[i];
            pending.push(
                fetch_one(client, &receipt.bundle, i as u16, blob, hint).map(move |f| (i, f)),
            );
        }
        let Some((i, result)) = pending.next().await else {
            break;
        };
        match result {
            Some(f) => found.push(f),
            None => missed.push(i),
        }
    }
    missed
}
