//! The local store: LMDB (through heed) behind one facade. The only module that imports heed.
//!
//! * Every database name and key encoding lives in [`schema`]; the store records its schema
//!   version and refuses to open a store written by a newer one.
//! * The facade owns the blocking boundary: every public operation is `async` and runs its LMDB
//!   transaction on tokio's blocking pool, so no async worker thread ever waits on the disk
//!   (except [`Store::get_object_blocking`], for plain OS threads that may wait: FUSE's).
//! * A write returns only after its transaction committed, and LMDB's default mode syncs on
//!   commit: what a caller was told is stored survives a crash or a SIGKILL.
//! * Values are checked on the way out: an object whose bytes no longer hash to its id is
//!   reported as corrupt, never returned.

mod backup;
mod batch;
mod flow;
mod overlay;
mod prefetch;
mod resident;
pub mod schema;
pub use batch::BatchJob;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use thiserror::Error;

use crate::crypto::{ObjectId, SealedObject};
pub use backup::{Source as BackupSource, Unmarked, UnmarkedSize};
pub use flow::{InboxLimits, InboxPut};
pub use overlay::{HeldPut, HeldStats, Pin};
pub use prefetch::{MAX_BYTES as PREFETCH_MAX_BYTES, MAX_OBJECTS as PREFETCH_MAX_OBJECTS};
pub use schema::Table;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: heed::Error,
    },
    #[error(
        "the store at {path} was written by a newer peerpost (schema {found}, this build \
         reads up to {supported}); upgrade peerpost"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("the store's disk is full")]
    DiskFull,
    #[error("the store reached its size limit (LMDB map full)")]
    MapFull,
    #[error("object {id} in the local store is corrupt: {why}")]
    Corrupt { id: ObjectId, why: String },
    #[error("store I/O error: {0}")]
    Io(#[source] std::io::Error),
    #[error("LMDB error: {0}")]
    Lmdb(#[source] heed::Error),
    #[error("the store worker stopped unexpectedly")]
    Worker,
}

impl From<heed::Error> for Error {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => Error::MapFull,
            heed::Error::Io(io) if io.raw_os_error() == Some(28) => Error::DiskFull,
            heed::Error::Io(io) => Error::Io(io),
            other => Error::Lmdb(other),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Counts shown by `peerpost status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub objects: u64,
    pub object_bytes: u64,
    pub schema_version: u32,
}

/// A cloneable handle on the open store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

type Db = Database<'static, Bytes, Bytes>;

/// The tables of [`Table`], in the order of `tables` below.
const TABLES: [Table; 5] = [
    Table::Log,
    Table::LogIndex,
    Table::FolderUids,
    Table::Uids,
    Table::Sync,
];

struct Inner {
    path: PathBuf,
    env: Env<WithoutTls>,
    meta: Db,
    objects: Db,
    tables: [Db; 5],
    overlay: overlay::Tables,
    flow: flow::Tables,
    backup: backup::Tables,
    /// The map's range, to give back pages read (see `resident.rs`).
    map: resident::Map,
}

impl Inner {
    fn table(&self, t: Table) -> &Db {
        let i = TABLES.iter().position(|x| *x == t).unwrap_or(0);
        &self.tables[i]
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.path.display())
    }
}

const META_OBJECT_BYTES: &[u8] = b"object_bytes";

/// An object's bytes, verified against its id.
fn read_object(s: &Inner, id: ObjectId) -> Result<Option<SealedObject>> {
    let rtxn = s.env.read_txn()?;
    let Some(bytes) = s.objects.get(&rtxn, &schema::object_key(&id))? else {
        return Ok(None);
    };
    let copy = bytes.to_vec();
    drop(rtxn);
    s.map.object_read();
    SealedObject::from_bytes_verified(copy, &id)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            id,
            why: e.to_string(),
        })
}

impl Store {
    /// Opens (creating if needed) the store in directory `dir`. Blocking: call it at start-up
    /// or from `spawn_blocking`. Must not be called twice for one directory in one process.
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_sized(dir, schema::MAP_SIZE)
    }

    /// [`open`](Self::open) with a smaller memory map (many stores in one process: tests).
    pub fn open_sized(dir: &Path, map_size: usize) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(Error::Io)?;
        let open_err = |source| Error::Open {
            path: dir.to_path_buf(),
            source,
        };
        // SAFETY: heed requires that an environment is opened at most once per process and
        // that the files are not modified by anything but LMDB. The node opens its store once,
        // at start-up, and the store directory belongs to peerpost.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size)
                .max_dbs(schema::MAX_DBS)
                .open(dir)
        }
        .map_err(open_err)?;
        let wtxn = env.write_txn().map_err(open_err)?;
        let committed = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
                let meta: Database<Bytes, Bytes> =
                    dbo.create_database(wtxn, Some(schema::DB_META))?;
                let objects: Database<Bytes, Bytes> =
                    dbo.create_database(wtxn, Some(schema::DB_OBJECTS))?;
                let mut create = |t: Table| -> heed::Result<Database<Bytes, Bytes>> {
                    dbo.create_database(wtxn, Some(t.name()))
                };
                let tables = [
                    create(TABLES[0])?,
                    create(TABLES[1])?,
                    create(TABLES[2])?,
                    create(TABLES[3])?,
                    create(TABLES[4])?,
                ];
                let found = match meta.get(wtxn, schema::META_SCHEMA_VERSION)? {
                    Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                    Some(_) => u32::MAX,
                    None => {
                        meta.put(
                            wtxn,
                            schema::META_SCHEMA_VERSION,
                            &schema::SCHEMA_VERSION.to_be_bytes(),
                        )?;
                        schema::SCHEMA_VERSION
                    }
                };
                if found > schema::SCHEMA_VERSION {
                    return Ok(CommitOrAbort::Abort(found));
                }
                Ok(CommitOrAbort::Commit((meta, objects, tables)))
            })
            .map_err(open_err)?;
        let (meta, objects, tables) = match committed {
            CommitOrAbort::Commit(dbs) => dbs,
            CommitOrAbort::Abort(found) => {
                return Err(Error::NewerSchema {
                    path: dir.to_path_buf(),
                    found,
                    supported: schema::SCHEMA_VERSION,
                });
            }
        };
        let overlay = overlay::Tables::create(&env).map_err(open_err)?;
        let flow = flow::Tables::create(&env).map_err(open_err)?;
        let backup = backup::Tables::create(&env).map_err(open_err)?;
        let map = resident::Map::find(&dir.join("data.mdb"));
        Ok(Store {
            inner: Arc::new(Inner {
                path: dir.to_path_buf(),
                env,
                meta,
                objects,
                tables,
                overlay,
                flow,
                backup,
                map,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Gives back the process's mapping of every page of the store read so far (they stay in
    /// the kernel's page cache): for after a bulk read, such as replaying the logs at start.
    pub fn release_resident(&self) {
        self.inner.map.release_all();
    }

    /// Runs `f` on the blocking pool: the one place the store crosses from async to LMDB.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|_| Error::Worker)?
    }

    /// Stores a sealed object under its id; returns the id. Storing an object twice is a no-op.
    /// Returns after the commit is durable.
    pub async fn put_object(&self, obj: SealedObject) -> Result<ObjectId> {
        let mut ids = self.put_objects(vec![obj]).await?;
        ids.pop().ok_or(Error::Worker)
    }

    /// Stores several objects in one durable transaction (one fsync for the batch).
    pub async fn put_objects(&self, objs: Vec<SealedObject>) -> Result<Vec<ObjectId>> {
        self.transact(move |tx| objs.iter().map(|o| tx.put_object(o)).collect())
            .await
    }

    /// Runs `f` in one write transaction on the blocking pool and commits durably if it
    /// returns `Ok`; nothing of it is kept if it returns `Err`. Only one write transaction runs
    /// at a time (per store, across processes): keep `f` short.
    pub async fn transact<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnOnce(&mut Tx<'_, '_>) -> std::result::Result<T, E> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut wtxn = inner.env.write_txn().map_err(Error::from)?;
            let mut tx = Tx {
                inner: &inner,
                txn: &mut wtxn,
                object_bytes: 0,
                records: 0,
            };
            let out = f(&mut tx)?;
            let (delta, records) = (tx.object_bytes, tx.records);
            if delta != 0 {
                let total = read_u64(&inner.meta, &wtxn, META_OBJECT_BYTES)?;
                let total = total.saturating_add_signed(delta);
                inner
                    .meta
                    .put(&mut wtxn, META_OBJECT_BYTES, &total.to_be_bytes())
                    .map_err(Error::from)?;
            }
            wtxn.commit().map_err(Error::from)?;
            crate::metrics::get().store_commit();
            inner.map.wrote(records);
            Ok(out)
        })
        .await
        .map_err(|_| E::from(Error::Worker))?
    }

    /// Runs `f` in a read transaction on the blocking pool.
    pub async fn read<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnOnce(&Rx<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let rtxn = inner.env.read_txn().map_err(Error::from)?;
            f(&Rx {
                inner: &inner,
                txn: &rtxn,
            })
        })
        .await
        .map_err(|_| E::from(Error::Worker))?
    }

    /// Fetches an object, verifying that its bytes still hash to its id.
    pub async fn get_object(&self, id: ObjectId) -> Result<Option<SealedObject>> {
        self.blocking(move |s| read_object(s, id)).await
    }

    /// [`Store::get_object`] on the calling thread, which waits for the disk: only for
    /// plain OS threads that may block (the FUSE mount's), never from async code. Saves the
    /// two thread hand-offs of the blocking pool on each read of a message through the mount.
    pub fn get_object_blocking(&self, id: ObjectId) -> Result<Option<SealedObject>> {
        read_object(&self.inner, id)
    }

    pub async fn has_object(&self, id: ObjectId) -> Result<bool> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.objects.get(&rtxn, &schema::object_key(&id))?.is_some())
        })
        .await
    }

    /// Removes an object; returns whether it was there.
    pub async fn delete_object(&self, id: ObjectId) -> Result<bool> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let key = schema::object_key(&id);
            let len = match s.objects.get(&wtxn, &key)? {
                Some(v) => v.len() as u64,
                None => return Ok(false),
            };
            s.objects.delete(&mut wtxn, &key)?;
            let total = read_u64(&s.meta, &wtxn, META_OBJECT_BYTES)?.saturating_sub(len);
            s.meta
                .put(&mut wtxn, META_OBJECT_BYTES, &total.to_be_bytes())?;
            wtxn.commit()?;
            crate::metrics::get().store_commit();
            Ok(true)
        })
        .await
    }

    /// Ids of every object held, in id order.
    pub async fn object_ids(&self) -> Result<Vec<ObjectId>> {
        self.blocking(|s| {
            let rtxn = s.env.read_txn()?;
            let mut out = Vec::new();
            for item in s.objects.iter(&rtxn)? {
                let (k, _) = item?;
                let id: [u8; 32] = k.try_into().map_err(|_| Error::Corrupt {
                    id: ObjectId([0; 32]),
                    why: format!("object key of {} bytes", k.len()),
                })?;
                out.push(ObjectId(id));
            }
            Ok(out)
        })
        .await
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        self.blocking(|s| {
            let rtxn = s.env.read_txn()?;
            Ok(StoreStats {
                objects: s.objects.len(&rtxn)?,
                object_bytes: read_u64(&s.meta, &rtxn, META_OBJECT_BYTES)?,
                schema_version: schema::SCHEMA_VERSION,
            })
        })
        .await
    }
}

/// Read access to the tables inside a transaction.
pub struct Rx<'t> {
    inner: &'t Inner,
    txn: &'t heed::RoTxn<'t, WithoutTls>,
}

/// Read and write access inside one write transaction (see [`Store::transact`]).
pub struct Tx<'t, 'e> {
    inner: &'t Inner,
    txn: &'t mut heed::RwTxn<'e>,
    object_bytes: i64,
    /// Records put or deleted (for `resident::Map::wrote`).
    records: u32,
}

fn owned(item: heed::Result<(&[u8], &[u8])>) -> Result<(Vec<u8>, Vec<u8>)> {
    let (k, v) = item?;
    Ok((k.to_vec(), v.to_vec()))
}

macro_rules! read_methods {
    () => {
        pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(self.inner.table(t).get(self.ro(), key)?.map(<[u8]>::to_vec))
        }

        /// Every row whose key starts with `prefix`, in key order.
        pub fn prefix(&self, t: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            if prefix.is_empty() {
                // LMDB refuses an empty key for a cursor seek.
                return self.inner.table(t).iter(self.ro())?.map(owned).collect();
            }
            self.inner
                .table(t)
                .prefix_iter(self.ro(), prefix)?
                .map(owned)
                .collect()
        }

        /// The last row whose key starts with `prefix`.
        pub fn last_with_prefix(
            &self,
            t: Table,
            prefix: &[u8],
        ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            if prefix.is_empty() {
                return self
                    .inner
                    .table(t)
                    .last(self.ro())?
                    .map(|(k, v)| Ok((k.to_vec(), v.to_vec())))
                    .transpose();
            }
            self.inner
                .table(t)
                .rev_prefix_iter(self.ro(), prefix)?
                .next()
                .map(owned)
                .transpose()
        }

        /// Up to `limit` rows with keys ≥ `start`, in key order.
        pub fn range_from(
            &self,
            t: Table,
            start: &[u8],
            limit: usize,
        ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let range = (std::ops::Bound::Included(start), std::ops::Bound::Unbounded);
            self.inner
                .table(t)
                .range(self.ro(), &range)?
                .take(limit)
                .map(owned)
                .collect()
        }

        /// A sealed object, verified against its id.
        pub fn get_object(&self, id: &ObjectId) -> Result<Option<SealedObject>> {
            let Some(bytes) = self.inner.objects.get(self.ro(), &schema::object_key(id))? else {
                return Ok(None);
            };
            let copy = bytes.to_vec();
            self.inner.map.object_read();
            SealedObject::from_bytes_verified(copy, id)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    id: *id,
                    why: e.to_string(),
                })
        }

        /// The next free log arrival counter.
        pub fn log_counter(&self) -> Result<u64> {
            read_u64(&self.inner.meta, self.ro(), schema::META_LOG_COUNTER)
        }
    };
}

impl Rx<'_> {
    fn ro(&self) -> &heed::RoTxn<'_> {
        self.txn
    }
    read_methods!();
}

impl Tx<'_, '_> {
    fn ro(&self) -> &heed::RoTxn<'_> {
        self.txn
    }
    read_methods!();

    pub fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.records = self.records.saturating_add(1);
        Ok(self.inner.table(t).put(self.txn, key, value)?)
    }

    pub fn delete(&mut self, t: Table, key: &[u8]) -> Result<bool> {
        self.records = self.records.saturating_add(1);
        Ok(self.inner.table(t).delete(self.txn, key)?)
    }

    /// Stores a sealed object (a no-op if present); returns its id.
    pub fn put_object(&mut self, obj: &SealedObject) -> Result<ObjectId> {
        let id = obj.id();
        let key = schema::object_key(&id);
        if self.inner.objects.get(self.txn, &key)?.is_none() {
            self.inner.objects.put(self.txn, &key, obj.as_bytes())?;
            self.object_bytes += obj.as_bytes().len() as i64;
            self.records = self.records.saturating_add(1);
        }
        Ok(id)
    }

    /// Appends a log entry of `device` with the next sequence number (1 for the first),
    /// computed inside this transaction so that concurrent writers (several processes of one
    /// device) never reuse one. `make` builds the entry bytes for that seq.
    pub fn append_log<E: From<Error>>(
        &mut self,
        device: u64,
        make: impl FnOnce(u64) -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<u64, E> {
        let seq = match self.last_with_prefix(Table::Log, &device.to_be_bytes())? {
            Some((k, _)) if k.len() == 16 => {
                u64::from_be_bytes(k[8..16].try_into().unwrap_or([0; 8])) + 1
            }
            _ => 1,
        };
        let bytes = make(seq)?;
        self.insert_log(device, seq, &bytes)?;
        Ok(seq)
    }

    /// Inserts a log entry (e.g. another device's) unless present; returns whether it was new.
    pub fn insert_log(&mut self, device: u64, seq: u64, bytes: &[u8]) -> Result<bool> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&device.to_be_bytes());
        key[8..].copy_from_slice(&seq.to_be_bytes());
        if self.inner.table(Table::Log).get(self.txn, &key)?.is_some() {
            return Ok(false);
        }
        self.inner.table(Table::Log).put(self.txn, &key, bytes)?;
        self.records = self.records.saturating_add(3);
        let counter = self.log_counter()?;
        self.inner
            .table(Table::LogIndex)
            .put(self.txn, &counter.to_be_bytes(), &key)?;
        self.inner.meta.put(
            self.txn,
            schema::META_LOG_COUNTER,
            &(counter + 1).to_be_bytes(),
        )?;
        Ok(true)
    }
}

fn read_u64(
    db: &Database<'static, Bytes, Bytes>,
    txn: &heed::RoTxn<'_>,
    key: &[u8],
) -> Result<u64> {
    Ok(match db.get(txn, key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.try_into().unwrap_or([0; 8])),
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (obj, key) = SealedObject::seal(b"hello store").unwrap();
        let len = obj.as_bytes().len() as u64;
        let id = store.put_object(obj.clone()).await.unwrap();
        assert_eq!(store.put_object(obj).await.unwrap(), id, "idempotent");
        let got = store.get_object(id).await.unwrap().unwrap();
        assert_eq!(got.open(&key).unwrap(), b"hello store");
        assert!(store.has_object(id).await.unwrap());
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.objects, stats.object_bytes), (1, len));
        assert_eq!(store.object_ids().await.unwrap(), vec![id]);
        assert!(store.delete_object(id).await.unwrap());
        assert!(!store.delete_object(id).await.unwrap());
        assert_eq!(store.get_object(id).await.unwrap(), None);
        assert_eq!(store.stats().await.unwrap().object_bytes, 0);
    }

    /// KiB of `file` mapped in this process (Rss of its mappings in /proc/self/smaps).
    pub(super) fn mapped_kib(file: &Path) -> u64 {
        let file = std::fs::canonicalize(file).unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let mut parts = line.split_whitespace();
            let first = parts.next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                ours = parts.nth(4).is_some_and(|p| Path::new(p) == file);
            } else if ours && first == "Rss:" {
                kib += parts
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        kib
    }

    /// A store holding 128 objects of 64 KiB (8 MiB), none of its pages mapped: the objects,
    /// their ids, and `data.mdb`.
    pub(super) async fn store_of_8_mib(
        dir: &Path,
    ) -> (Store, Vec<SealedObject>, Vec<ObjectId>, std::path::PathBuf) {
        let store = Store::open(dir).unwrap();
        let objs: Vec<SealedObject> = (0..128u32)
            .map(|i| SealedObject::seal(&vec![i as u8; 64 * 1024]).unwrap().0)
            .collect();
        let ids = store.put_objects(objs.clone()).await.unwrap();
        store.release_resident();
        (store, objs, ids, dir.join("data.mdb"))
    }

    /// Object reads give back the map's pages (issue #4, item e): the bytes read are right,
    /// and reading 8 MiB of objects leaves far less than that of the file mapped.
    #[tokio::test]
    async fn object_reads_give_back_mapped_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (store, objs, ids, file) = store_of_8_mib(dir.path()).await;
        assert!(store.inner.map.len() > 0, "data.mdb's map is found");
        let before = mapped_kib(&file);
        for (id, obj) in ids.iter().zip(&objs) {
            let got = store.get_object(*id).await.unwrap().unwrap();
            assert_eq!(got.as_bytes(), obj.as_bytes());
        }
        let grew = mapped_kib(&file).saturating_sub(before);
        // Without the release every page read stays mapped: 8 MiB and more.
        assert!(grew < 2048, "data.mdb's resident pages grew by {grew} KiB");
    }

    /// A large write transaction gives back the pages it read through the map (issue #4,
    /// item e): a batch of deliveries is one transaction, and counting transactions let 32
    /// batches' B-tree pages (~80 MiB) stay mapped.
    #[tokio::test]
    async fn a_large_write_gives_back_mapped_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let seal = |i: u32| SealedObject::seal(&i.to_be_bytes().repeat(1024)).unwrap().0;
        store
            .put_objects((0..4000).map(seal).collect())
            .await
            .unwrap();
        store.release_resident();
        let file = dir.path().join("data.mdb");
        let before = mapped_kib(&file);
        // Random ids: each lands on another leaf, read through the map.
        let more: Vec<SealedObject> = (4000..4400).map(seal).collect();
        let ids = store.put_objects(more.clone()).await.unwrap();
        let grew = mapped_kib(&file).saturating_sub(before);
        assert!(grew < 2048, "data.mdb's resident pages grew by {grew} KiB");
        let got = store.get_object(ids[7]).await.unwrap().unwrap();
        assert_eq!(got.as_bytes(), more[7].as_bytes());
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let s = Arc::clone(&store.inner);
            tokio::task::spawn_blocking(move || {
                let mut wtxn = s.env.write_txn().unwrap();
                s.meta
                    .put(&mut wtxn, schema::META_SCHEMA_VERSION, &99u32.to_be_bytes())
                    .unwrap();
                wtxn.commit().unwrap();
            })
            .await
            .unwrap();
            // Close the environment before reopening (heed forbids two opens at once).
            let inner = Arc::try_unwrap(store.inner).ok().unwrap();
            inner.env.prepare_for_closing().wait();
        }
        match Store::open(dir.path()) {
            Err(Error::NewerSchema { found: 99, .. }) => {}
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }
}
