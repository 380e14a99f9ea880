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

mod format;
mod rows;
mod share;

pub use format::*;
pub(crate) use rows::*;
pub use rows::{adopted, entries, named, pending, repairs, state, unpublished};
pub use share::{Turn, heartbeat};

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use thiserror::Error;

use super::codec::ReedSolomon8;
use super::params::{self, Params};
use super::repair;
use super::ring::{self, Receipt, RingError};
use crate::crypto::{self, ContentKey, ObjectId, SealedObject, UserKeys};
use crate::overlay::{self, backup_root::BackupRoot};
use crate::store::{self, BackupSource, Store, schema::Table};
use crate::wire::DecodeError;

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

impl BackupConfig {
    /// The calculator's n/k for a ring of `ring` peers (not counting this node).
    pub fn params_for(&self, ring: usize) -> Params {
        // A quarter of the ring is left out of n: the closest peers of each placement key must
        // still offer one that holds no other fragment of the bundle.
        let max_n = self.max_n.min((ring - ring / 4).clamp(1, 256) as u16);
        params::choose(
            Some(ring.max(1)),
            self.failure_fraction,
            self.target_loss,
            max_n,
        )
        .params
    }

    /// Whether a bundle coded with `p` is below target in a ring of `ring` peers: its loss
    /// probability exceeds the target by more than [`RECODE_SLACK`] while the calculator's
    /// choice for that ring meets it (re-coding must help).
    pub fn below_target(&self, p: Params, ring: usize) -> bool {
        if ring == 0 {
            return false;
        }
        let failed = (ring as f64 * self.failure_fraction).ceil() as usize;
        let loss = |p: Params| {
            params::loss_hypergeometric(ring, failed, usize::from(p.n), usize::from(p.k))
        };
        let target = self.target_loss;
        let now = loss(p);
        now > target * RECODE_SLACK && loss(self.params_for(ring)) * RECODE_SLACK < now
    }

    /// The bundles a pass re-codes: those below target for a ring of `ring`, and the small
    /// ones (under `bundle_bytes / SMALL_SHARE`) of a kind once they fill a bundle together,
    /// or whenever there are two or more with `compact`.
    pub fn to_recode(&self, entries: &[Entry], ring: usize, compact: bool) -> Vec<ObjectId> {
        let mut out: Vec<ObjectId> = entries
            .iter()
            .filter(|e| self.below_target(e.receipt.params, ring))
            .map(|e| e.receipt.bundle)
            .collect();
        let small = (self.bundle_bytes / SMALL_SHARE) as u64;
        for kind in [Kind::Bodies, Kind::Log] {
            let smalls: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.kind == kind && e.bytes < small && !out.contains(&e.receipt.bundle))
                .collect();
            let total: u64 = smalls.iter().map(|e| e.bytes).sum();
            if smalls.len() >= 2 && (compact || total >= self.bundle_bytes as u64) {
                out.extend(smalls.iter().map(|e| e.receipt.bundle));
            }
        }
        out
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
    /// Bundles replaced by re-coded ones (below target, or small ones merged) and released.
    pub recoded: usize,
    /// Bodies left unplaced because their fragments would exceed the overlay's blob limit at
    /// this ring's k (a body over ~4 MiB × k): they stay pending, and a later pass places them
    /// once the ring is large enough. Everything else is placed regardless.
    pub too_large: usize,
}

/// How a pass treats bundles already placed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassOptions {
    /// Publish a new index and root even when nothing is new.
    pub force: bool,
    /// Merge small bundles into full ones even below `bundle_bytes` in total (the node asks
    /// for this once new mail has stopped arriving for a while).
    pub compact: bool,
    /// The ring's size as the caller trusts it (`None`: the routing table's now).
    pub ring: Option<usize>,
}

/// Bundles under `bundle_bytes / SMALL_SHARE` are *small*: merged into full ones later.
pub const SMALL_SHARE: usize = 4;
/// A bundle is re-coded when its loss probability in the ring as it is now exceeds the target
/// by this factor (hysteresis: a ring estimate that wobbles by a peer re-codes nothing).
pub const RECODE_SLACK: f64 = 10.0;
/// A long pass republishes the index at least this often.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(20);

/// One pass's progress.
struct Pass {
    report: PassReport,
    params: Params,
    published: tokio::time::Instant,
    /// Receipts dropped from the index, released once a root without them is out.
    replaced: Vec<Receipt>,
}

/// Gathers items (sealed objects, log rows) into bundles of about `limit` bytes.
struct Packer<T> {
    limit: usize,
    size: usize,
    items: Vec<T>,
}

impl<T> Packer<T> {
    fn new(limit: usize) -> Packer<T> {
        Packer {
            limit,
            size: 0,
            items: Vec::new(),
        }
    }

    /// Adds `item` of `len` bytes; returns a full bundle's items when it does not fit beside
    /// them.
    fn push(&mut self, item: T, len: usize) -> Option<Vec<T>> {
        let full = (!self.items.is_empty() && self.size + len > self.limit)
            .then(|| std::mem::take(&mut self.items));
        if full.is_some() {
            self.size = 0;
        }
        self.size += len;
        self.items.push(item);
        full
    }

    fn finish(self) -> Option<Vec<T>> {
        (!self.items.is_empty()).then_some(self.items)
    }
}

/// Bytes a log row takes in a segment beside its entry (device, seq, length).
const LOG_ROW_OVERHEAD: usize = 20;

/// Backs up one user's mailbox from a store into the ring.
pub struct Backup {
    client: overlay::Client,
    store: Store,
    keys: UserKeys,
    key: ContentKey,
    /// The user's address, written into the index (so the phrase alone finds it).
    address: Option<String>,
    /// This device's key, written into the index (the other devices see whose root it is).
    device: Option<[u8; 32]>,
    /// The highest root seq seen from any device: a new root goes above it.
    seen_seq: AtomicU64,
    /// The last other device's index read ([`Backup::turn`]), by its bundle id.
    foreign: Mutex<Option<(ObjectId, Index)>>,
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
            address: None,
            device: None,
            seen_seq: AtomicU64::new(0),
            foreign: Mutex::new(None),
            config,
        }
    }

    /// Names this device in every index this backup publishes.
    pub fn with_device(mut self, device: [u8; 32]) -> Self {
        self.device = Some(device);
        self
    }

    /// Names the user's address in every index this backup publishes.
    pub fn with_address(mut self, address: &str) -> Self {
        self.address = Some(address.to_string());
        self
    }

    /// The ring size the calculator works with: `config.ring_size`, or the routing table's.
    pub async fn ring_size(&self) -> Result<usize, Error> {
        Ok(match self.config.ring_size {
            Some(n) => n,
            None => self.client.status().await?.routing_table,
        })
    }

    /// The calculator's n/k for a ring of `ring` peers (not counting this node).
    pub fn params_for(&self, ring: usize) -> Params {
        self.config.params_for(ring)
    }

    /// The n/k for the ring as it is now.
    pub async fn params(&self) -> Result<Params, Error> {
        let ring = self.ring_size().await?;
        if ring == 0 {
            return Err(Error::NoPeers);
        }
        Ok(self.params_for(ring))
    }

    /// The bundles a pass re-codes (see [`BackupConfig::to_recode`]).
    pub fn to_recode(&self, entries: &[Entry], ring: usize, compact: bool) -> Vec<ObjectId> {
        self.config.to_recode(entries, ring, compact)
    }

    /// Whether a pass for a ring of `ring` would re-code any placed bundle (see
    /// [`Backup::to_recode`]): the node's cheap periodic check, one read of the receipts.
    pub async fn needs_recode(&self, ring: usize, compact: bool) -> Result<bool, Error> {
        let all = entries(&self.store).await?;
        Ok(!self.to_recode(&all, ring, compact).is_empty())
    }

    /// The store's log arrival counter: it moves whenever the mailbox changes.
    pub async fn log_counter(&self) -> Result<u64, Error> {
        Ok(self.store.read(|rx| rx.log_counter()).await?)
    }

    /// Codes, places and records one bundle; `marks` are the rows that say its items are done
    /// (each names the bundle, so a re-code finds its items again).
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
            &repair::Lease::sign(&self.keys, &receipt, expires),
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
            let id = entry.receipt.bundle.as_bytes().to_vec();
            let mut rows: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                marks.into_iter().map(|k| (k, Some(id.clone()))).collect();
            rows.push((key(ROW_RECEIPT, &id), Some(entry.encode_local())));
            self.store.backup_write(rows).await?;
        }
        // The pass read this bundle's items through the store's map: give the pages back, or
        // a pass over 100,000 messages leaves the whole store (~600 MiB) in the resident set.
        self.store.release_resident();
        Ok(entry)
    }

    /// One pass that only places what is new (and re-codes what is below target).
    pub async fn run_once(&self, force: bool) -> Result<PassReport, Error> {
        self.run_pass(PassOptions {
            force,
            ..PassOptions::default()
        })
        .await
    }

    /// One pass: places what is new, re-codes the bundles [`Backup::to_recode`] names, and
    /// republishes the index and the root when anything changed (or `force`); then releases
    /// the fragments of the bundles it replaced and of the previous index.
    ///
    /// Nothing is read before the ring has a peer; what is pending is streamed through
    /// bundles of `bundle_bytes` (one bundle's items in memory at a time), and the index is
    /// republished at least every [`PUBLISH_EVERY`] of a long pass, so mail placed early in
    /// a large import is findable before the pass ends.
    pub async fn run_pass(&self, opts: PassOptions) -> Result<PassReport, Error> {
        let ring = match opts.ring {
            Some(r) => r,
            None => self.ring_size().await?,
        };
        if ring == 0 {
            return Err(Error::NoPeers);
        }
        let params = self.params_for(ring);
        let before = entries(&self.store).await?;
        let recode: HashSet<Vec<u8>> = self
            .to_recode(&before, ring, opts.compact)
            .into_iter()
            .map(|id| id.as_bytes().to_vec())
            .collect();
        // Items of bundles being re-coded, and of marks made before marks named their bundle
        // (empty values: such items are placed once more, and their old bundles then dropped).
        let mut wanted = recode.clone();
        wanted.insert(Vec::new());
        let (obj_keys, _) = self
            .store
            .backup_rows_valued(ROW_OBJECT, wanted.clone())
            .await?;
        let (log_keys, _) = self.store.backup_rows_valued(ROW_LOG, wanted).await?;
        let mut pass = Pass {
            report: PassReport::default(),
            params,
            published: tokio::time::Instant::now(),
            replaced: Vec::new(),
        };
        let limit = self.config.bundle_bytes.max(1);

        // Bodies: the re-coded ones first, then what is new.
        let mut bodies = Packer::new(limit);
        let mut gone = Vec::new();
        for k in &obj_keys {
            let Ok(id) = <[u8; 32]>::try_from(&k[..]) else {
                continue;
            };
            match self.store.get_object(ObjectId(id)).await? {
                Some(o) => {
                    let len = o.as_bytes().len();
                    if let Some(batch) = bodies.push(o, len) {
                        self.place_bodies(&mut pass, batch).await?;
                    }
                }
                // Expunged and deleted here: nothing to keep in the ring.
                None => gone.push((key(ROW_OBJECT, k), None)),
            }
        }
        if !gone.is_empty() {
            self.store.backup_write(gone).await?;
        }
        let mut from = Vec::new();
        loop {
            let batch = self
                .store
                .backup_unmarked(BackupSource::Objects, ROW_OBJECT, from, limit)
                .await?;
            for (k, v) in batch.rows {
                let Ok(id) = <[u8; 32]>::try_from(&k[..]) else {
                    continue;
                };
                let o = SealedObject::from_bytes_verified(v, &ObjectId(id))?;
                let len = o.as_bytes().len();
                if let Some(b) = bodies.push(o, len) {
                    self.place_bodies(&mut pass, b).await?;
                }
            }
            match batch.next {
                Some(n) => from = n,
                None => break,
            }
        }
        if let Some(b) = bodies.finish() {
            self.place_bodies(&mut pass, b).await?;
        }

        // Log entries, in segments of about `bundle_bytes`, one segment per bundle.
        let mut logs = Packer::new(limit);
        let rows_of = |keys: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<LogRow> {
            keys.into_iter()
                .filter(|(k, _)| k.len() == 16)
                .map(|(k, v)| LogRow {
                    device: u64::from_be_bytes(k[0..8].try_into().unwrap_or([0; 8])),
                    seq: u64::from_be_bytes(k[8..16].try_into().unwrap_or([0; 8])),
                    bytes: v,
                })
                .collect()
        };
        for chunk in log_keys.chunks(1024) {
            let keys = chunk.to_vec();
            let rows = self
                .store
                .read(move |rx| -> Result<_, store::Error> {
                    let mut out = Vec::new();
                    for k in keys {
                        if let Some(v) = rx.get(Table::Log, &k)? {
                            out.push((k, v));
                        }
                    }
                    Ok(out)
                })
                .await?;
            for r in rows_of(rows) {
                let len = r.bytes.len() + LOG_ROW_OVERHEAD;
                if let Some(full) = logs.push(r, len) {
                    self.place_logs(&mut pass, full).await?;
                }
            }
        }
        let mut from = Vec::new();
        loop {
            let batch = self
                .store
                .backup_unmarked(BackupSource::Log, ROW_LOG, from, limit)
                .await?;
            for r in rows_of(batch.rows) {
                let len = r.bytes.len() + LOG_ROW_OVERHEAD;
                if let Some(full) = logs.push(r, len) {
                    self.place_logs(&mut pass, full).await?;
                }
            }
            match batch.next {
                Some(n) => from = n,
                None => break,
            }
        }
        if let Some(rest) = logs.finish() {
            self.place_logs(&mut pass, rest).await?;
        }

        // Bundles no item names any more are dropped from the index, then released.
        let (_, named_o) = self
            .store
            .backup_rows_valued(ROW_OBJECT, HashSet::new())
            .await?;
        let (_, named_l) = self
            .store
            .backup_rows_valued(ROW_LOG, HashSet::new())
            .await?;
        let now_placed = entries(&self.store).await?;
        let dropped: Vec<Entry> = now_placed
            .iter()
            .filter(|e| {
                let id = e.receipt.bundle.as_bytes();
                !named_o.contains(&id[..]) && !named_l.contains(&id[..])
            })
            .cloned()
            .collect();
        // A re-coded bundle that packed the same objects has the same id: its new receipt
        // replaced the old one's row, and the old placement (other n/k, other fragments) must
        // be released as well, or its holders keep it for the lease's 90 days.
        for old in before
            .iter()
            .filter(|e| recode.contains(&e.receipt.bundle.as_bytes()[..]))
        {
            let recoded_in_place = now_placed.iter().any(|e| {
                e.receipt.bundle == old.receipt.bundle && e.receipt.blobs != old.receipt.blobs
            });
            if recoded_in_place {
                pass.report.recoded += 1;
                pass.replaced.push(old.receipt.clone());
            }
        }
        if !dropped.is_empty() {
            self.store
                .backup_write(
                    dropped
                        .iter()
                        .map(|e| (key(ROW_RECEIPT, e.receipt.bundle.as_bytes()), None))
                        .collect(),
                )
                .await?;
            pass.report.recoded += dropped.len();
            pass.replaced.extend(dropped.into_iter().map(|e| e.receipt));
        }
        let changed = pass.report.bundles > 0 || !pass.replaced.is_empty();
        if changed
            || opts.force
            || state(&self.store).await?.is_none()
            || unpublished(&self.store).await?
        {
            self.publish_pass(&mut pass).await?;
        }
        Ok(pass.report)
    }

    async fn place_bodies(&self, pass: &mut Pass, batch: Vec<SealedObject>) -> Result<(), Error> {
        // A bundle whose fragments would exceed the blob limit is placed again one body per
        // bundle; a body that is too large even alone stays pending (one large message must
        // not stop the rest of the mailbox's backup).
        let mut queue = vec![batch];
        while let Some(batch) = queue.pop() {
            let marks = batch
                .iter()
                .map(|o| key(ROW_OBJECT, o.id().as_bytes()))
                .collect();
            let e = match self.place(Kind::Bodies, &batch, pass.params, marks).await {
                Err(Error::Ring(RingError::FragmentTooLarge { .. })) if batch.len() > 1 => {
                    queue.extend(batch.into_iter().map(|o| vec![o]));
                    continue;
                }
                Err(Error::Ring(RingError::FragmentTooLarge { len, max })) => {
                    tracing::warn!(
                        bytes = batch[0].as_bytes().len(),
                        fragment = len,
                        max,
                        k = pass.params.k,
                        "a body too large for this ring's fragments stays pending, on this node only"
                    );
                    pass.report.too_large += 1;
                    continue;
                }
                r => r?,
            };
            pass.report.bundles += 1;
            pass.report.objects += batch.len();
            pass.report.bytes += e.bytes;
            self.publish_if_due(pass).await?;
        }
        Ok(())
    }

    async fn place_logs(&self, pass: &mut Pass, rows: Vec<LogRow>) -> Result<(), Error> {
        let segment = SealedObject::seal_with_key(&encode_segment(&rows), &self.key)?;
        let marks = rows.iter().map(|l| log_key(l.device, l.seq)).collect();
        let e = self
            .place(Kind::Log, &[segment], pass.params, marks)
            .await?;
        pass.report.bundles += 1;
        pass.report.log_entries += rows.len();
        pass.report.bytes += e.bytes;
        self.publish_if_due(pass).await
    }

    async fn publish_if_due(&self, pass: &mut Pass) -> Result<(), Error> {
        if pass.published.elapsed() >= PUBLISH_EVERY {
            self.publish_pass(pass).await?;
        }
        Ok(())
    }

    /// Publishes a new index and root, then releases what they no longer name.
    async fn publish_pass(&self, pass: &mut Pass) -> Result<(), Error> {
        let previous = state(&self.store).await?.map(|(_, e)| e.receipt);
        pass.report.root_seq = Some(self.publish_index(pass.params).await?);
        pass.published = tokio::time::Instant::now();
        let mut release = std::mem::take(&mut pass.replaced);
        release.extend(previous);
        for r in &release {
            self.release(r).await;
        }
        Ok(())
    }

    /// Tells the holders of a bundle's fragments that it is no longer needed: a lease that
    /// expires now, so their next pass drops the fragments.
    pub async fn release(&self, receipt: &Receipt) -> usize {
        let holders = repair::locate(&self.client, Some(&self.store), receipt).await;
        let lease = repair::Lease::sign(&self.keys, receipt, overlay::now_secs());
        repair::give_lease(&self.client, &lease, &holders).await
    }

    /// Seals and places the index of every bundle, then signs and publishes a newer root.
    async fn publish_index(&self, params: Params) -> Result<u64, Error> {
        let now = overlay::now_secs();
        // Its own bundles and those of other devices' indexes it adopted (rows.rs, `named`).
        let all = named(&self.store).await?;
        let index = SealedObject::seal_with_key(
            &encode_index(&all, now, self.address.as_deref(), self.device.as_ref()),
            &self.key,
        )?;
        let entry = self
            .place(Kind::Index, &[index], params, Vec::new())
            .await?;
        let seq = self.next_seq(now).await?;
        let payload = SealedObject::seal_with_key(&entry.encode(), &self.key)?.into_bytes();
        let expires = now + self.config.root_lifetime.as_secs();
        let root = BackupRoot::sign(&self.keys, seq, expires, payload);
        self.store
            .backup_write(vec![state_row(seq, &entry), published_row(&all)])
            .await?;
        if let Err(e) = self.client.publish_backup_root(root).await {
            // Kept locally by the overlay and republished by the next pass.
            tracing::warn!("backup root not yet accepted by any peer: {e}");
        }
        Ok(seq)
    }

    /// Republishes the current root (a fresh expiry, the same index) without new data.
    pub async fn republish(&self) -> Result<Option<u64>, Error> {
        let Some((_, entry)) = state(&self.store).await? else {
            return Ok(None);
        };
        let now = overlay::now_secs();
        let seq = self.next_seq(now).await?;
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
    /// The owner's maintenance pass: repairs every bundle of the backup (its own, the adopted
    /// ones, and the current index) and renews the holders' leases.
    pub async fn maintain(&self, limits: repair::RepairLimits) -> Result<repair::PassStats, Error> {
        let mut receipts: Vec<Receipt> = named(&self.store)
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
            &self.keys,
            &receipts,
            expires,
            limits,
        )
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::PeerId;

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

    fn sized(kind: Kind, id: u8, n: u16, k: u16, bytes: u64) -> Entry {
        let mut e = entry(kind, n);
        e.receipt.bundle = ObjectId([id; 32]);
        e.receipt.params = Params { n, k };
        e.bytes = bytes;
        e
    }

    /// The local rows keep who took each fragment; rows of older builds (no hints) still read;
    /// the shared index form never carries them.
    #[test]
    fn local_rows_keep_holder_hints() {
        let mut e = entry(Kind::Bodies, 4);
        let peer = PeerId::random();
        e.receipt.holders[1] = Some(peer);
        e.receipt.holders[3] = Some(peer);
        let back = Entry::decode_local(&e.encode_local()).unwrap();
        assert_eq!(back.receipt.holders, e.receipt.holders);
        let old = Entry::decode_local(&e.encode()).unwrap();
        assert_eq!(old.receipt.holders, vec![None; 4]);
        assert_eq!(
            Entry::decode(&e.encode()).unwrap().receipt.holders,
            vec![None; 4]
        );
        assert!(
            Entry::decode(&e.encode_local()).is_err(),
            "the shared form is exact"
        );
        let mut cut = e.encode_local();
        cut.pop();
        assert!(Entry::decode_local(&cut).is_err());
    }

    /// Bundles coded for a ring of one are re-coded once the ring holds nine; small bundles
    /// are merged once they fill a bundle (or on compaction); full ones at target stay.
    #[test]
    fn recode_picks_bundles_below_target_and_small_ones() {
        let cfg = BackupConfig::default();
        let mib = cfg.bundle_bytes as u64;
        let at9 = cfg.params_for(9);
        assert!(at9.n > 1, "{at9:?}");
        let one = cfg.params_for(1);
        assert_eq!((one.n, one.k), (1, 1));
        assert!(cfg.below_target(one, 9), "n=k=1 in a ring of nine");
        assert!(!cfg.below_target(at9, 9));
        assert!(
            !cfg.below_target(one, 1),
            "nothing better exists for one peer"
        );
        let full = sized(Kind::Bodies, 1, at9.n, at9.k, mib);
        let old = sized(Kind::Bodies, 2, 1, 1, mib);
        let small_a = sized(Kind::Bodies, 3, at9.n, at9.k, 10_000);
        let small_b = sized(Kind::Bodies, 4, at9.n, at9.k, 10_000);
        let small_log = sized(Kind::Log, 5, at9.n, at9.k, 10_000);
        let es = vec![
            full.clone(),
            old.clone(),
            small_a.clone(),
            small_b.clone(),
            small_log,
        ];
        assert_eq!(cfg.to_recode(&es, 9, false), vec![ObjectId([2; 32])]);
        let mut c = cfg.to_recode(&es, 9, true);
        c.sort_by_key(|id| id.0);
        assert_eq!(
            c,
            vec![ObjectId([2; 32]), ObjectId([3; 32]), ObjectId([4; 32])],
            "a lone small log bundle has nothing to merge with"
        );
        // Small ones that add up to a bundle are merged without waiting for quiet.
        let many: Vec<Entry> = (10..10 + (SMALL_SHARE as u8) * 2)
            .map(|i| sized(Kind::Bodies, i, at9.n, at9.k, mib / SMALL_SHARE as u64 - 1))
            .collect();
        assert_eq!(cfg.to_recode(&many, 9, false).len(), many.len());
        assert!(cfg.to_recode(&[full], 9, true).is_empty());
    }

    #[test]
    fn formats_roundtrip_and_refuse_garbage() {
        let es = vec![entry(Kind::Bodies, 4), entry(Kind::Log, 9)];
        let idx = encode_index(&es, 77, Some("alice@example.org"), Some(&[7; 32]));
        let got = decode_index(&idx).unwrap();
        assert_eq!(got.entries, es);
        assert_eq!(got.address.as_deref(), Some("alice@example.org"));
        assert_eq!(got.device, Some([7; 32]));
        assert_eq!(got.created, 77);
        // A version 1 index (no address, no device) and a version 2 one (no device) still read.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&idx[1..9]);
        v1.extend_from_slice(&idx[9 + 1 + 17 + 1 + 32..]);
        let old = decode_index(&v1).unwrap();
        assert_eq!(
            (old.entries, old.address, old.device),
            (es.clone(), None, None)
        );
        let mut v2 = vec![2u8];
        v2.extend_from_slice(&idx[1..9 + 1 + 17]);
        v2.extend_from_slice(&idx[9 + 1 + 17 + 1 + 32..]);
        let old = decode_index(&v2).unwrap();
        assert_eq!(old.address.as_deref(), Some("alice@example.org"));
        assert_eq!(old.device, None);
        let anon = decode_index(&encode_index(&es, 77, None, None)).unwrap();
        assert_eq!(anon.device, None);
        let mut short = idx.clone();
        short[9 + 1 + 17] = 5;
        assert!(decode_index(&short).is_err(), "a device key is 32 bytes");
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

    /// Another device's index becomes the adopted set: its bundles but its index bundle and
    /// what this device placed itself; a later index replaces the set (a bundle that device
    /// released leaves it); `named` lists own then adopted, each bundle once; and a pass's
    /// bundle rows (`entries`) never include adopted ones, so a pass never releases them.
    #[tokio::test]
    async fn adopted_bundles_follow_the_other_devices_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sized(dir.path(), 1 << 26).unwrap();
        let own = sized(Kind::Bodies, 1, 2, 1, 100);
        store
            .backup_write(vec![(
                key(ROW_RECEIPT, own.receipt.bundle.as_bytes()),
                Some(own.encode_local()),
            )])
            .await
            .unwrap();
        let theirs_a = sized(Kind::Bodies, 2, 2, 1, 100);
        let theirs_b = sized(Kind::Log, 3, 2, 1, 100);
        let their_index = sized(Kind::Index, 4, 2, 1, 100);
        let foreign = vec![theirs_a.clone(), theirs_b.clone(), their_index, own.clone()];
        set_adopted(&store, &foreign).await.unwrap();
        let ids = |es: Vec<Entry>| es.iter().map(|e| e.receipt.bundle.0[0]).collect::<Vec<_>>();
        assert_eq!(ids(adopted(&store).await.unwrap()), vec![2, 3]);
        assert_eq!(ids(named(&store).await.unwrap()), vec![1, 2, 3]);
        assert_eq!(ids(entries(&store).await.unwrap()), vec![1]);
        // Their next index dropped bundle 2 (re-coded away): it leaves the adopted set.
        set_adopted(&store, &[theirs_b]).await.unwrap();
        assert_eq!(ids(named(&store).await.unwrap()), vec![1, 3]);
        // The published digest covers the adopted bundles: a change there publishes anew.
        store
            .backup_write(vec![published_row(&named(&store).await.unwrap())])
            .await
            .unwrap();
        assert!(!unpublished(&store).await.unwrap());
        set_adopted(&store, &[theirs_a]).await.unwrap();
        assert!(unpublished(&store).await.unwrap());
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
