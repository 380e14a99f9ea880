//! Restore from the user key alone: find the user's backup root in the ring, open the index it
//! names, fetch every bundle (any k verified fragments each, several bundles at once), put the
//! sealed bodies into the store and hand the log entries back to the caller (the mailbox
//! engine verifies and merges them: this layer sits below it). The local `backup` table is
//! filled in too, so the restored node goes on with the same backup instead of re-uploading.

use std::time::Duration;

use futures::StreamExt;
use thiserror::Error;

use super::backup::{self, Entry, Kind, LogRow};
use super::codec::ReedSolomon8;
use super::ring::{self, RingError};
use crate::crypto::{self, ObjectId, SealedObject, UserKeys};
use crate::overlay;
use crate::store::{self, Store};

/// Bundles fetched at once.
pub const PARALLEL_BUNDLES: usize = 4;
/// Root lookups tried before "nothing found" (the routing table may still be filling).
const ROOT_ATTEMPTS: usize = 5;

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error(
        "no backup of this key was found in the ring (is this the right phrase, and has the \
         node that made the backup ever run while connected?)"
    )]
    NoBackup,
    #[error("the backup index could not be read from any of {tried} roots found: {last}")]
    Index { tried: usize, last: String },
    #[error("bundle {bundle} could not be rebuilt: {source}")]
    Bundle {
        bundle: ObjectId,
        #[source]
        source: RingError,
    },
    #[error("backup data does not open with this key: {0}")]
    Open(String),
    #[error(transparent)]
    Backup(#[from] backup::Error),
    #[error("the store failed: {0}")]
    Store(#[from] store::Error),
    #[error("overlay: {0}")]
    Overlay(#[from] overlay::Error),
}

/// What restore tells its progress display.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// The index was read: this many bundles and bytes to fetch.
    Found { bundles: usize, bytes: u64 },
    /// One more bundle was fetched and stored (its size in bytes).
    Bundle { bytes: u64 },
}

/// What was restored.
#[derive(Debug, Default)]
pub struct Restored {
    pub root_seq: u64,
    pub bundles: usize,
    pub objects: usize,
    pub bytes: u64,
    /// Every log entry found, for the mailbox engine to verify and merge.
    pub entries: Vec<Vec<u8>>,
}

/// Restores `keys`' backup from the ring through `client` into `store`.
pub async fn restore(
    client: &overlay::Client,
    store: &Store,
    keys: &UserKeys,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Restored, RestoreError> {
    let key = backup::backup_key(keys);
    let (root_seq, index, found) = find_index(client, keys).await?;
    let entries = found.entries;
    let data: Vec<&Entry> = entries.iter().filter(|e| e.kind != Kind::Index).collect();
    progress(Progress::Found {
        bundles: data.len(),
        bytes: data.iter().map(|e| e.bytes).sum(),
    });
    let mut out = Restored {
        root_seq,
        ..Restored::default()
    };
    let mut object_ids: Vec<(ObjectId, ObjectId)> = Vec::new();
    let mut log_keys: Vec<(u64, u64, ObjectId)> = Vec::new();
    let mut fetches = futures::stream::iter(data.iter().map(|e| async move {
        let objects = ring::fetch(client, &ReedSolomon8, &e.receipt)
            .await
            .map_err(|source| RestoreError::Bundle {
                bundle: e.receipt.bundle,
                source,
            })?;
        Ok::<_, RestoreError>((*e, objects))
    }))
    .buffer_unordered(PARALLEL_BUNDLES);
    while let Some(res) = fetches.next().await {
        let (entry, objects) = res?;
        match entry.kind {
            Kind::Bodies => {
                let bundle = entry.receipt.bundle;
                object_ids.extend(objects.iter().map(|o| (o.id(), bundle)));
                out.objects += objects.len();
                store.put_objects(objects).await?;
            }
            Kind::Log => {
                for seg in objects {
                    let rows = open_segment(&seg, &key)?;
                    let bundle = entry.receipt.bundle;
                    log_keys.extend(rows.iter().map(|r| (r.device, r.seq, bundle)));
                    out.entries.extend(rows.into_iter().map(|r| r.bytes));
                }
            }
            Kind::Index => {}
        }
        out.bundles += 1;
        out.bytes += entry.bytes;
        progress(Progress::Bundle { bytes: entry.bytes });
    }
    drop(fetches);
    store
        .backup_write(backup::receipt_rows(
            &entries,
            &object_ids,
            &log_keys,
            Some((root_seq, &index)),
        ))
        .await?;
    Ok(out)
}

/// The newest backup index of `keys` that can be rebuilt from the ring: the root's seq, the
/// index bundle's entry, and what the index lists (with the user's address, when it names it).
pub async fn find_index(
    client: &overlay::Client,
    keys: &UserKeys,
) -> Result<(u64, Entry, backup::Index), RestoreError> {
    let key = backup::backup_key(keys);
    let mut roots = Vec::new();
    for attempt in 0..ROOT_ATTEMPTS {
        roots = client.backup_roots(&keys.public().sign).await?;
        if !roots.is_empty() {
            break;
        }
        let _ = client.bootstrap().await;
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
    if roots.is_empty() {
        return Err(RestoreError::NoBackup);
    }
    // Newest root first; an older one if the newest index cannot be rebuilt.
    let mut last = String::new();
    for root in &roots {
        let index = match backup::open_root(root, &key) {
            Ok(e) => e,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        match fetch_index(client, &index, &key).await {
            Ok(found) => return Ok((root.seq, index, found)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(RestoreError::Index {
        tried: roots.len(),
        last,
    })
}

async fn fetch_index(
    client: &overlay::Client,
    index: &Entry,
    key: &crypto::ContentKey,
) -> Result<backup::Index, RestoreError> {
    let objects = ring::fetch(client, &ReedSolomon8, &index.receipt)
        .await
        .map_err(|source| RestoreError::Bundle {
            bundle: index.receipt.bundle,
            source,
        })?;
    let obj = objects
        .first()
        .ok_or_else(|| RestoreError::Open("empty index bundle".into()))?;
    let plain = obj
        .open(key)
        .map_err(|e| RestoreError::Open(e.to_string()))?;
    Ok(backup::decode_index(&plain)?)
}

fn open_segment(seg: &SealedObject, key: &crypto::ContentKey) -> Result<Vec<LogRow>, RestoreError> {
    let plain = seg
        .open(key)
        .map_err(|e| RestoreError::Open(e.to_string()))?;
    Ok(backup::decode_segment(&plain)?)
}
