//! The `backup` table's rows (store/schema.rs, DB_BACKUP): bundle receipts, the marks naming
//! the bundle that holds each object and log entry, the published root's state, the repair
//! counter.

use super::{Entry, Error, Kind};
use crate::crypto::{self, ObjectId};
use crate::store::{self, BackupSource, Store};
use crate::wire::Reader;

pub(crate) const ROW_RECEIPT: u8 = b'r';
pub(crate) const ROW_OBJECT: u8 = b'o';
pub(crate) const ROW_LOG: u8 = b'l';
pub(crate) const ROW_STATE: &[u8] = b"s";
pub(crate) const ROW_REPAIRS: &[u8] = b"q";
/// Digest of the receipts the published index lists ([`named_digest`]).
pub(crate) const ROW_PUBLISHED: &[u8] = b"p";
/// Receipts of bundles another device of the user placed and its index named: listed in this
/// device's index and maintained by it, never released by its passes ([`adopted`]).
pub(crate) const ROW_ADOPTED: u8 = b'a';

pub(super) fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

pub(super) fn log_key(device: u64, seq: u64) -> Vec<u8> {
    let mut k = vec![ROW_LOG];
    k.extend_from_slice(&device.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The root seq and index entry this node last published.
pub async fn state(store: &Store) -> Result<Option<(u64, Entry)>, Error> {
    let Some(v) = store.backup_get(ROW_STATE.to_vec()).await? else {
        return Ok(None);
    };
    let mut r = Reader::new(&v);
    let seq = r.u64("root seq")?;
    let e = Entry::read_local(&mut r)?;
    r.finish("backup state")?;
    Ok(Some((seq, e)))
}

pub(super) fn state_row(seq: u64, index: &Entry) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(&index.encode_local());
    (ROW_STATE.to_vec(), Some(v))
}

/// A digest of the receipts an index lists, order aside: equal digests, equal indexes.
pub(super) fn named_digest(entries: &[Entry]) -> [u8; 32] {
    let mut shared: Vec<Vec<u8>> = entries
        .iter()
        .filter(|e| e.kind != Kind::Index)
        .map(Entry::encode)
        .collect();
    shared.sort_unstable();
    let mut all = Vec::with_capacity(shared.iter().map(|e| e.len() + 4).sum());
    for e in &shared {
        all.extend_from_slice(&(e.len() as u32).to_be_bytes());
        all.extend_from_slice(e);
    }
    crypto::hash(&all)
}

/// The row recording which receipts the published index lists.
pub(super) fn published_row(named: &[Entry]) -> (Vec<u8>, Option<Vec<u8>>) {
    (ROW_PUBLISHED.to_vec(), Some(named_digest(named).to_vec()))
}

/// Whether some placed bundle is not yet listed by the published index (or a listed one was
/// dropped): a pass that placed bundles and was killed before it published leaves this set,
/// and the next pass publishes even with nothing new to place.
pub async fn unpublished(store: &Store) -> Result<bool, Error> {
    let now = named(store).await?;
    let published = store.backup_get(ROW_PUBLISHED.to_vec()).await?;
    Ok(match published {
        Some(d) => d[..] != named_digest(&now)[..],
        None => !now.is_empty(),
    })
}

/// Fragments this node has re-created (owner and holder repairs).
pub async fn repairs(store: &Store) -> Result<u64, Error> {
    Ok(store
        .backup_get(ROW_REPAIRS.to_vec())
        .await?
        .and_then(|v| v.try_into().ok())
        .map_or(0, u64::from_be_bytes))
}

pub(crate) async fn add_repairs(store: &Store, n: u64) -> Result<(), store::Error> {
    let now = store
        .backup_get(ROW_REPAIRS.to_vec())
        .await?
        .and_then(|v| v.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    store
        .backup_write(vec![(
            ROW_REPAIRS.to_vec(),
            Some(now.saturating_add(n).to_be_bytes().to_vec()),
        )])
        .await
}

/// Every bundle receipt kept locally (bodies and log segments).
pub async fn entries(store: &Store) -> Result<Vec<Entry>, Error> {
    store
        .backup_prefix(vec![ROW_RECEIPT])
        .await?
        .iter()
        .map(|(_, v)| Entry::decode_local(v))
        .collect()
}

/// Receipts of bundles other devices of the user placed ([`ROW_ADOPTED`]).
pub async fn adopted(store: &Store) -> Result<Vec<Entry>, Error> {
    store
        .backup_prefix(vec![ROW_ADOPTED])
        .await?
        .iter()
        .map(|(_, v)| Entry::decode_local(v))
        .collect()
}

/// What this device's index lists: its own receipts, then the adopted ones it did not place
/// itself.
pub async fn named(store: &Store) -> Result<Vec<Entry>, Error> {
    let mut all = entries(store).await?;
    let own: std::collections::HashSet<ObjectId> = all.iter().map(|e| e.receipt.bundle).collect();
    all.extend(
        adopted(store)
            .await?
            .into_iter()
            .filter(|e| !own.contains(&e.receipt.bundle)),
    );
    Ok(all)
}

/// Replaces the adopted receipts with `foreign` (another device's index, less the index
/// bundles and what this device placed itself).
pub(crate) async fn set_adopted(store: &Store, foreign: &[Entry]) -> Result<(), Error> {
    let own: std::collections::HashSet<ObjectId> = entries(store)
        .await?
        .iter()
        .map(|e| e.receipt.bundle)
        .collect();
    let mut rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = store
        .backup_prefix(vec![ROW_ADOPTED])
        .await?
        .into_iter()
        .map(|(k, _)| (k, None))
        .collect();
    for e in foreign
        .iter()
        .filter(|e| e.kind != Kind::Index && !own.contains(&e.receipt.bundle))
    {
        rows.push((
            key(ROW_ADOPTED, e.receipt.bundle.as_bytes()),
            Some(e.encode_local()),
        ));
    }
    // A later row for the same key wins: the deletions of the old set come first.
    store.backup_write(rows).await?;
    Ok(())
}

/// Bytes of bodies and of log entries that no placed bundle holds yet (their lengths are
/// read, nothing is copied).
pub async fn pending(store: &Store) -> Result<(u64, u64), Error> {
    let o = store
        .backup_unmarked_size(BackupSource::Objects, ROW_OBJECT)
        .await?;
    let l = store
        .backup_unmarked_size(BackupSource::Log, ROW_LOG)
        .await?;
    Ok((o.bytes, l.bytes))
}
/// The `backup` rows of a restored backup: its receipts, a mark naming its bundle for every
/// object and log entry it held, and the root state.
pub(crate) fn receipt_rows(
    entries: &[Entry],
    objects: &[(ObjectId, ObjectId)],
    logs: &[(u64, u64, ObjectId)],
    root: Option<(u64, &Entry)>,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = entries
        .iter()
        .filter(|e| e.kind != Kind::Index)
        .map(|e| {
            (
                key(ROW_RECEIPT, e.receipt.bundle.as_bytes()),
                Some(e.encode()),
            )
        })
        .collect();
    rows.extend(objects.iter().map(|(id, bundle)| {
        (
            key(ROW_OBJECT, id.as_bytes()),
            Some(bundle.as_bytes().to_vec()),
        )
    }));
    rows.extend(
        logs.iter()
            .map(|(d, s, bundle)| (log_key(*d, *s), Some(bundle.as_bytes().to_vec()))),
    );
    if let Some((seq, e)) = root {
        rows.push(state_row(seq, e));
        rows.push(published_row(entries));
    }
    rows
}
