//! The local store: LMDB (through heed) behind one facade. The only module that imports heed.
//!
//! * Every database name and key encoding lives in [`schema`]; the store records its schema
//!   version and refuses to open a store written by a newer one.
//! * The facade owns the blocking boundary: every public operation is `async` and runs its LMDB
//!   transaction on tokio's blocking pool, so no async worker thread ever waits on the disk.
//! * A write returns only after its transaction committed, and LMDB's default mode syncs on
//!   commit: what a caller was told is stored survives a crash or a SIGKILL.
//! * Values are checked on the way out: an object whose bytes no longer hash to its id is
//!   reported as corrupt, never returned.

mod overlay;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use thiserror::Error;

use crate::crypto::{ObjectId, SealedObject};
pub use overlay::{HeldPut, HeldStats, Pin};

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

struct Inner {
    path: PathBuf,
    env: Env<WithoutTls>,
    meta: Database<'static, Bytes, Bytes>,
    objects: Database<'static, Bytes, Bytes>,
    overlay: overlay::Tables,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.path.display())
    }
}

const META_OBJECT_BYTES: &[u8] = b"object_bytes";

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
                Ok(CommitOrAbort::Commit((meta, objects)))
            })
            .map_err(open_err)?;
        let (meta, objects) = match committed {
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
        Ok(Store {
            inner: Arc::new(Inner {
                path: dir.to_path_buf(),
                env,
                meta,
                objects,
                overlay,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
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
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let mut added = 0u64;
            let mut ids = Vec::with_capacity(objs.len());
            for obj in &objs {
                let id = obj.id();
                let key = schema::object_key(&id);
                if s.objects.get(&wtxn, &key)?.is_none() {
                    s.objects.put(&mut wtxn, &key, obj.as_bytes())?;
                    added += obj.as_bytes().len() as u64;
                }
                ids.push(id);
            }
            if added > 0 {
                let total = read_u64(&s.meta, &wtxn, META_OBJECT_BYTES)?.saturating_add(added);
                s.meta
                    .put(&mut wtxn, META_OBJECT_BYTES, &total.to_be_bytes())?;
            }
            wtxn.commit()?;
            Ok(ids)
        })
        .await
    }

    /// Fetches an object, verifying that its bytes still hash to its id.
    pub async fn get_object(&self, id: ObjectId) -> Result<Option<SealedObject>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let Some(bytes) = s.objects.get(&rtxn, &schema::object_key(&id))? else {
                return Ok(None);
            };
            SealedObject::from_bytes_verified(bytes.to_vec(), &id)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    id,
                    why: e.to_string(),
                })
        })
        .await
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
