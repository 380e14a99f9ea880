//! Backup of a user's mailbox into the ring, findable from the user key alone.
//!
//! What is backed up is what the store holds of the user's own mail: the sealed message bodies
//! (`objects`) and every device's signed, sealed log entries (`log`, which also carry each
//! body's content key). New bodies are packed into bundles; new log entries into *log
//! segments* (one sealed object each) packed into bundles of their own. Every bundle is coded
//! with the calculator's n/k for the ring and placed ([`ring::store`]); its receipt is kept in
//! the `backup` table. Then an *index* (every receipt) is sealed, coded and placed the same
//! way, and the user's *backup root* — a signed Kademlia record under
//! `BLAKE3("peerpost backup v1" ‖ user key)` (overlay/backup_root.rs) — is republished with a
//! higher `seq`, its payload the index's receipt sealed under the backup key.
//!
//! Unreadable by others: segments, index and root payload are sealed under the backup key
//! (derived from the user's log key, so from the seed only); bodies are sealed under their own
//! keys, which travel only inside the sealed log entries. Unforgeable: only the user key signs
//! a root; the root names the index by id and fragment hashes, the index every bundle the same
//! way, and bundles check every object against its id. docs/design.md, "Backup".

use std::collections::HashSet;
use std::time::Duration;

use thiserror::Error;

use super::codec::ReedSolomon8;
use super::params::{self, Params};
use super::repair;
use super::ring::{self, Receipt, RingError};
use crate::crypto::{self, ContentKey, ObjectId, SealedObject, UserKeys};
use crate::overlay::{self, backup_root::BackupRoot};
use crate::store::{self, Store, schema::Table};
use crate::wire::{DecodeError, Reader, Writer};

/// What a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sealed message bodies, as the store keeps them.
    Bodies = 1,
    /// Log segments sealed under the backup key.
    Log = 2,
    /// One index object sealed under the backup key.
    Index = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Bodies),
            2 => Some(Kind::Log),
            3 => Some(Kind::Index),
            _ => None,
        }
    }
}

pub const ENTRY_VERSION: u8 = 1;
pub const INDEX_VERSION: u8 = 1;
pub const SEGMENT_VERSION: u8 = 1;
/// Bundles an index lists at most (a 10 M-message mailbox in 1 MiB bundles is ~20 k).
pub const MAX_INDEX_ENTRIES: usize = 1 << 20;
/// Log entries one segment holds at most.
pub const MAX_SEGMENT_ENTRIES: usize = 1 << 20;
/// Largest log entry a segment carries.
pub const MAX_LOG_ENTRY: usize = 16 << 20;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("the store failed: {0}")]
    Store(#[from] store::Error),
    #[error("sealing failed: {0}")]
    Crypto(#[from] crypto::Error),
    #[error("malformed backup data: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported {what} version {found}")]
    Version { what: &'static str, found: u8 },
    #[error("the ring has no peer to hold fragments yet")]
    NoPeers,
    #[error("overlay: {0}")]
    Overlay(#[from] overlay::Error),
    #[error(transparent)]
    Repair(#[from] repair::RepairError),
}

/// One bundle of the backup: what it carries and its receipt (holders are not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Objects in the bundle.
    pub objects: u32,
    /// Bundle length in bytes.
    pub bytes: u64,
    pub receipt: Receipt,
}

impl Entry {
    /// `u8 version · u8 kind · [32] bundle · u16 n · u16 k · u32 objects · u64 bytes ·
    /// n × [32] fragment blob ids`
    pub fn encode(&self) -> Vec<u8> {
        let r = &self.receipt;
        let mut w = Writer::with_capacity(52 + 32 * r.blobs.len());
        w.u8(ENTRY_VERSION)
            .u8(self.kind as u8)
            .fixed(r.bundle.as_bytes())
            .u16(r.params.n)
            .u16(r.params.k)
            .u32(self.objects)
            .u64(self.bytes);
        for b in &r.blobs {
            w.fixed(b);
        }
        w.into_vec()
    }

    fn read(r: &mut Reader<'_>) -> Result<Entry, Error> {
        let v = r.u8("entry version")?;
        if v != ENTRY_VERSION {
            return Err(Error::Version {
                what: "backup entry",
                found: v,
            });
        }
        let kind = Kind::from_u8(r.u8("kind")?).ok_or(DecodeError::Invalid {
            field: "kind",
            why: "unknown bundle kind",
        })?;
        let bundle = ObjectId(r.array("bundle id")?);
        let (n, k) = (r.u16("n")?, r.u16("k")?);
        if n == 0 || k == 0 || k > n || usize::from(n) > super::fragment::MAX_N {
            return Err(DecodeError::Invalid {
                field: "n/k",
                why: "out of range",
            }
            .into());
        }
        let objects = r.u32("objects")?;
        let bytes = r.u64("bytes")?;
        let blobs = (0..n)
            .map(|_| r.array::<32>("fragment id"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Entry {
            kind,
            objects,
            bytes,
            receipt: Receipt {
                bundle,
                params: Params { n, k },
                holders: vec![None; blobs.len()],
                stored: blobs.len(),
                blobs,
            },
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, Error> {
        let mut r = Reader::new(bytes);
        let e = Entry::read(&mut r)?;
        r.finish("backup entry")?;
        Ok(e)
    }
}

/// The key segments, the index and root payloads are sealed under: from the seed alone.
pub fn backup_key(keys: &UserKeys) -> ContentKey {
    let mut m = b"peerpost backup key v1".to_vec();
    m.extend_from_slice(keys.log_key().as_bytes());
    ContentKey::from_bytes(crypto::hash(&m))
}

/// `u8 version · u64 created · u32 count · count × (u32 len ‖ entry)`, sealed.
pub fn encode_index(entries: &[Entry], created: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(INDEX_VERSION).u64(created).u32(entries.len() as u32);
    for e in entries {
        w.bytes32(&e.encode());
    }
    w.into_vec()
}

pub fn decode_index(bytes: &[u8]) -> Result<Vec<Entry>, Error> {
    let mut r = Reader::new(bytes);
    let v = r.u8("index version")?;
    if v != INDEX_VERSION {
        return Err(Error::Version {
            what: "backup index",
            found: v,
        });
    }
    let _created = r.u64("created")?;
    let count = r.u32("count")? as usize;
    if count > MAX_INDEX_ENTRIES {
        return Err(DecodeError::TooLong {
            field: "index entries",
            len: count,
            max: MAX_INDEX_ENTRIES,
        }
        .into());
    }
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        out.push(Entry::decode(r.bytes32("entry", 64 + 32 * 256)?)?);
    }
    r.finish("backup index")?;
    Ok(out)
}

/// A log entry as the store keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub device: u64,
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// `u8 version · u32 count · count × (u64 device · u64 seq · u32 len ‖ entry)`, sealed.
pub fn encode_segment(rows: &[LogRow]) -> Vec<u8> {
    let size = rows.iter().map(|r| r.bytes.len() + 20).sum::<usize>() + 5;
    let mut w = Writer::with_capacity(size);
    w.u8(SEGMENT_VERSION).u32(rows.len() as u32);
    for r in rows {
        w.u64(r.device).u64(r.seq).bytes32(&r.bytes);
    }
    w.into_vec()
}

pub fn decode_segment(bytes: &[u8]) -> Result<Vec<LogRow>, Error> {
    let mut r = Reader::new(bytes);
    let v = r.u8("segment version")?;
    if v != SEGMENT_VERSION {
        return Err(Error::Version {
            what: "log segment",
            found: v,
        });
    }
    let count = r.u32("count")? as usize;
    if count > MAX_SEGMENT_ENTRIES {
        return Err(DecodeError::TooLong {
            field: "segment entries",
            len: count,
            max: MAX_SEGMENT_ENTRIES,
        }
        .into());
    }
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let device = r.u64("device")?;
        let seq = r.u64("seq")?;
        let bytes = r.bytes32("log entry", MAX_LOG_ENTRY)?.to_vec();
        out.push(LogRow { device, seq, bytes });
    }
    r.finish("log segment")?;
    Ok(out)
}

// --- the `backup` table's rows (store/schema.rs, DB_BACKUP) ---

pub(crate) const ROW_RECEIPT: u8 = b'r';
pub(crate) const ROW_OBJECT: u8 = b'o';
pub(crate) const ROW_LOG: u8 = b'l';
pub(crate) const ROW_STATE: &[u8] = b"s";
pub(crate) const ROW_REPAIRS: &[u8] = b"q";

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn log_key(device: u64, seq: u64) -> Vec<u8> {
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
    let e = Entry::read(&mut r)?;
    r.finish("backup state")?;
    Ok(Some((seq, e)))
}

fn state_row(seq: u64, index: &Entry) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(&index.encode());
    (ROW_STATE.to_vec(), Some(v))
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
        .map(|(_, v)| Entry::decode(v))
        .collect()
}

/// What a user may store with `contribution` bytes given to the ring: the contribution divided
/// by the storage overhead n/k of the calculator's choice (for a ring of `ring` peers, or a
/// large one), since every byte backed up costs n/k bytes on others' disks.
pub fn quota(contribution: u64, ring: Option<usize>, failure_fraction: f64, target: f64) -> u64 {
    let max_n = ring.map_or(params::MAX_N, |r| {
        params::MAX_N.min((r - r / 4).clamp(1, 256) as u16)
    });
    let p = params::choose(ring, failure_fraction, target, max_n).params;
    (contribution as f64 / p.overhead()) as u64
}

/// How backups are made.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Fraction of the ring that may fail at the same moment.
    pub failure_fraction: f64,
    /// Loss probability per bundle allowed at that failure.
    pub target_loss: f64,
    pub max_n: u16,
    /// A bundle is closed at this many bytes.
    pub bundle_bytes: usize,
    /// Life of each published root (republished by every backup pass).
    pub root_lifetime: Duration,
    /// Peers that may hold fragments; `None`: the routing table's size.
    pub ring_size: Option<usize>,
    /// Lease given to fragment holders (renewed by every maintenance pass).
    pub lease: Duration,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            failure_fraction: 0.6,
            target_loss: 1e-6,
            max_n: params::MAX_N,
            bundle_bytes: 1 << 20,
            root_lifetime: Duration::from_secs(14 * 24 * 3600),
            ring_size: None,
            lease: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub bundles: usize,
    pub objects: usize,
    pub log_entries: usize,
    pub bytes: u64,
    /// The root seq published, if one was.
    pub root_seq: Option<u64>,
}

/// Backs up one user's mailbox from a store into the ring.
pub struct Backup {
    client: overlay::Client,
    store: Store,
    keys: UserKeys,
    key: ContentKey,
    pub config: BackupConfig,
}

impl Backup {
    pub fn new(
        client: overlay::Client,
        store: Store,
        keys: UserKeys,
        config: BackupConfig,
    ) -> Self {
        let key = backup_key(&keys);
        Backup {
            client,
            store,
            keys,
            key,
            config,
        }
    }

    /// The n/k for the ring as it is now.
    pub async fn params(&self) -> Result<Params, Error> {
        let ring = match self.config.ring_size {
            Some(n) => n,
            None => self.client.status().await?.routing_table,
        };
        if ring == 0 {
            return Err(Error::NoPeers);
        }
        // A quarter of the ring is left out of n: the closest peers of each placement key must
        // still offer one that holds no other fragment of the bundle.
        let max_n = self
            .config
            .max_n
            .min((ring - ring / 4).clamp(1, 256) as u16);
        let c = params::choose(
            Some(ring),
            self.config.failure_fraction,
            self.config.target_loss,
            max_n,
        );
        Ok(c.params)
    }

    /// Bytes of bodies and log entries not yet in a placed bundle.
    pub async fn pending(&self) -> Result<(usize, usize), Error> {
        let (objs, logs) = self.new_items().await?;
        Ok((
            objs.iter().map(|o| o.as_bytes().len()).sum(),
            logs.iter().map(|l| l.bytes.len()).sum(),
        ))
    }

    async fn new_items(&self) -> Result<(Vec<SealedObject>, Vec<LogRow>), Error> {
        let done: HashSet<Vec<u8>> = self
            .store
            .backup_prefix(vec![ROW_OBJECT])
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .chain(
                self.store
                    .backup_prefix(vec![ROW_LOG])
                    .await?
                    .into_iter()
                    .map(|(k, _)| k),
            )
            .collect();
        let mut objects = Vec::new();
        for id in self.store.object_ids().await? {
            if done.contains(&key(ROW_OBJECT, id.as_bytes())) {
                continue;
            }
            if let Some(o) = self.store.get_object(id).await? {
                objects.push(o);
            }
        }
        let logs: Vec<LogRow> = self
            .store
            .read(|rx| -> Result<_, store::Error> {
                Ok(rx
                    .prefix(Table::Log, &[])?
                    .into_iter()
                    .filter(|(k, _)| k.len() == 16)
                    .map(|(k, v)| LogRow {
                        device: u64::from_be_bytes(k[0..8].try_into().unwrap_or([0; 8])),
                        seq: u64::from_be_bytes(k[8..16].try_into().unwrap_or([0; 8])),
                        bytes: v,
                    })
                    .collect())
            })
            .await?;
        let logs = logs
            .into_iter()
            .filter(|l| !done.contains(&log_key(l.device, l.seq)))
            .collect();
        Ok((objects, logs))
    }

    /// Codes, places and records one bundle; `marks` are the rows that say its items are done.
    async fn place(
        &self,
        kind: Kind,
        objects: &[SealedObject],
        params: Params,
        marks: Vec<Vec<u8>>,
    ) -> Result<Entry, Error> {
        let receipt = ring::store(&self.client, &ReedSolomon8, objects, params).await?;
        let expires = overlay::now_secs() + self.config.lease.as_secs();
        repair::give_lease(
            &self.client,
            &repair::Lease::of(&receipt, expires),
            &receipt.holders,
        )
        .await;
        let bytes = objects
            .iter()
            .map(|o| o.as_bytes().len() as u64 + 36)
            .sum::<u64>()
            + 5;
        let entry = Entry {
            kind,
            objects: objects.len() as u32,
            bytes,
            receipt,
        };
        if kind != Kind::Index {
            let mut rows: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                marks.into_iter().map(|k| (k, Some(Vec::new()))).collect();
            rows.push((
                key(ROW_RECEIPT, entry.receipt.bundle.as_bytes()),
                Some(entry.encode()),
            ));
            self.store.backup_write(rows).await?;
        }
        Ok(entry)
    }

    /// One pass: bundles what is new, places it, and republishes the index and the root when
    /// anything changed (or `force`).
    pub async fn run_once(&self, force: bool) -> Result<PassReport, Error> {
        let (objects, logs) = self.new_items().await?;
        let mut report = PassReport::default();
        if objects.is_empty() && logs.is_empty() && !force && state(&self.store).await?.is_some() {
            return Ok(report);
        }
        let params = self.params().await?;
        let limit = self.config.bundle_bytes.max(1);
        // Bodies, in bundles of about `bundle_bytes`.
        let mut start = 0;
        while start < objects.len() {
            let mut end = start;
            let mut size = 0;
            while end < objects.len()
                && (end == start || size + objects[end].as_bytes().len() <= limit)
            {
                size += objects[end].as_bytes().len();
                end += 1;
            }
            let chunk = &objects[start..end];
            let marks = chunk
                .iter()
                .map(|o| key(ROW_OBJECT, o.id().as_bytes()))
                .collect();
            let e = self.place(Kind::Bodies, chunk, params, marks).await?;
            report.bundles += 1;
            report.objects += chunk.len();
            report.bytes += e.bytes;
            start = end;
        }
        // Log entries, in segments of about `bundle_bytes`, one segment per bundle.
        let mut start = 0;
        while start < logs.len() {
            let mut end = start;
            let mut size = 0;
            while end < logs.len() && (end == start || size + logs[end].bytes.len() + 20 <= limit) {
                size += logs[end].bytes.len() + 20;
                end += 1;
            }
            let chunk = &logs[start..end];
            let segment = SealedObject::seal_with_key(&encode_segment(chunk), &self.key)?;
            let marks = chunk.iter().map(|l| log_key(l.device, l.seq)).collect();
            let e = self.place(Kind::Log, &[segment], params, marks).await?;
            report.bundles += 1;
            report.log_entries += chunk.len();
            report.bytes += e.bytes;
            start = end;
        }
        report.root_seq = Some(self.publish_index(params).await?);
        Ok(report)
    }

    /// Seals and places the index of every bundle, then signs and publishes a newer root.
    async fn publish_index(&self, params: Params) -> Result<u64, Error> {
        let now = overlay::now_secs();
        let all = entries(&self.store).await?;
        let index = SealedObject::seal_with_key(&encode_index(&all, now), &self.key)?;
        let entry = self
            .place(Kind::Index, &[index], params, Vec::new())
            .await?;
        let prev = state(&self.store).await?.map_or(0, |(s, _)| s);
        let seq = now.max(prev + 1);
        let payload = SealedObject::seal_with_key(&entry.encode(), &self.key)?.into_bytes();
        let expires = now + self.config.root_lifetime.as_secs();
        let root = BackupRoot::sign(&self.keys, seq, expires, payload);
        self.store
            .backup_write(vec![state_row(seq, &entry)])
            .await?;
        if let Err(e) = self.client.publish_backup_root(root).await {
            // Kept locally by the overlay and republished by the next pass.
            tracing::warn!("backup root not yet accepted by any peer: {e}");
        }
        Ok(seq)
    }

    /// Republishes the current root (a fresh expiry, the same index) without new data.
    pub async fn republish(&self) -> Result<Option<u64>, Error> {
        let Some((prev, entry)) = state(&self.store).await? else {
            return Ok(None);
        };
        let now = overlay::now_secs();
        let seq = now.max(prev + 1);
        let payload = SealedObject::seal_with_key(&entry.encode(), &self.key)?.into_bytes();
        let root = BackupRoot::sign(
            &self.keys,
            seq,
            now + self.config.root_lifetime.as_secs(),
            payload,
        );
        self.store
            .backup_write(vec![state_row(seq, &entry)])
            .await?;
        self.client
            .publish_backup_root(root)
            .await
            .map_err(|e| Error::Overlay(overlay::Error::Start(e.to_string())))?;
        Ok(Some(seq))
    }
}

impl Backup {
    /// The owner's maintenance pass: repairs every bundle of the backup (and the current
    /// index) and renews the holders' leases.
    pub async fn maintain(&self, limits: repair::RepairLimits) -> Result<repair::PassStats, Error> {
        let mut receipts: Vec<Receipt> = entries(&self.store)
            .await?
            .into_iter()
            .map(|e| e.receipt)
            .collect();
        if let Some((_, index)) = state(&self.store).await? {
            receipts.push(index.receipt);
        }
        let expires = overlay::now_secs() + self.config.lease.as_secs();
        Ok(repair::owner_pass(
            &self.client,
            &self.store,
            &ReedSolomon8,
            &receipts,
            expires,
            limits,
        )
        .await?)
    }
}

/// Opens a root's payload: the receipt of the index bundle.
pub fn open_root(root: &BackupRoot, key: &ContentKey) -> Result<Entry, Error> {
    let sealed = SealedObject::from_bytes(root.payload.clone())?;
    Entry::decode(&sealed.open(key)?)
}

pub(crate) fn receipt_rows(
    entries: &[Entry],
    objects: &[ObjectId],
    logs: &[(u64, u64)],
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
    rows.extend(
        objects
            .iter()
            .map(|id| (key(ROW_OBJECT, id.as_bytes()), Some(Vec::new()))),
    );
    rows.extend(
        logs.iter()
            .map(|(d, s)| (log_key(*d, *s), Some(Vec::new()))),
    );
    if let Some((seq, e)) = root {
        rows.push(state_row(seq, e));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, n: u16) -> Entry {
        Entry {
            kind,
            objects: 3,
            bytes: 999,
            receipt: Receipt {
                bundle: ObjectId([5; 32]),
                params: Params { n, k: 2 },
                blobs: (0..n).map(|i| [i as u8; 32]).collect(),
                holders: vec![None; usize::from(n)],
                stored: usize::from(n),
            },
        }
    }

    #[test]
    fn formats_roundtrip_and_refuse_garbage() {
        let es = vec![entry(Kind::Bodies, 4), entry(Kind::Log, 9)];
        let idx = encode_index(&es, 77);
        assert_eq!(decode_index(&idx).unwrap(), es);
        for cut in 0..idx.len() {
            assert!(decode_index(&idx[..cut]).is_err());
        }
        let rows = vec![
            LogRow {
                device: 1,
                seq: 2,
                bytes: vec![1, 2, 3],
            },
            LogRow {
                device: 9,
                seq: 1,
                bytes: Vec::new(),
            },
        ];
        let seg = encode_segment(&rows);
        assert_eq!(decode_segment(&seg).unwrap(), rows);
        assert!(decode_segment(&seg[..seg.len() - 1]).is_err());
        let mut bad = es[0].encode();
        bad[1] = 9;
        assert!(Entry::decode(&bad).is_err());
    }

    #[test]
    fn the_backup_key_depends_on_the_seed_only() {
        let a = backup_key(&UserKeys::from_seed([1; 32]));
        let b = backup_key(&UserKeys::from_seed([1; 32]));
        let c = backup_key(&UserKeys::from_seed([2; 32]));
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
    }
}
