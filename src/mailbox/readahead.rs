//! Readahead for the FUSE mount (issue #4 c): the mount tells which messages a reader will
//! ask for next ([`peerpost_fs::MaildirSource::prefetch`]), and the store starts reading their
//! objects from disk ([`crate::store::Store::prefetch_objects`]) while the reader is still on
//! the ones before.
//!
//! A hint never makes a FUSE thread wait: [`Readahead::hint`] only queues it (at most
//! [`QUEUE`] batches; a hint that finds the queue full is dropped, the disk being busy with
//! the ones before), and one task on the engine's runtime runs the batches in order, each
//! bounded by [`HINT_TIMEOUT`]. A hint reads nothing from the network and decrypts nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{Body, EntryId, Mailbox, Result, open_stored};
use crate::crypto::ObjectId;
use crate::store::PREFETCH_MAX_OBJECTS;

/// Batches of hints waiting for the readahead task.
pub const QUEUE: usize = 4;
/// The longest one batch may take (lookups in the store) before it is given up.
pub const HINT_TIMEOUT: Duration = Duration::from_secs(10);

impl Mailbox {
    /// Starts reading the stored bodies of these messages into the page cache (a hint:
    /// entries unknown, or whose body is not stored here, are skipped; at most
    /// [`PREFETCH_MAX_OBJECTS`] are looked at). Returns how many bodies were advised.
    pub async fn prefetch(&self, entries: &[EntryId]) -> Result<usize> {
        let ids: Vec<ObjectId> = {
            let e = self.read_engine();
            entries
                .iter()
                .take(PREFETCH_MAX_OBJECTS)
                .filter_map(|x| e.crdt.entry(*x).map(|r| r.message.object))
                .collect()
        };
        Ok(self.inner.store.prefetch_objects(ids).await?)
    }
}

impl Mailbox {
    /// [`Mailbox::read_uncached`] on the calling thread (which waits for the disk): for the
    /// FUSE mount's threads, plain OS threads that may block, never for async code. The
    /// message's body must be stored here (else [`super::Error::ContentMissing`]: nothing is
    /// fetched from the network on this path).
    pub fn read_uncached_blocking(&self, entry: EntryId) -> Result<Arc<Vec<u8>>> {
        match self.body(entry)? {
            Body::Cached(hit) => Ok(hit),
            Body::Stored(m) => open_stored(&m, self.inner.store.get_object_blocking(m.object)?),
        }
    }
}

/// The queue of a mount's hints and the one task that runs them.
#[derive(Debug, Clone)]
pub struct Readahead {
    tx: mpsc::Sender<Vec<EntryId>>,
}

impl Readahead {
    /// Spawns the task on `rt`; it ends when the last clone of the returned queue is dropped.
    pub fn start(mb: Mailbox, rt: &Handle) -> Readahead {
        let (tx, mut rx) = mpsc::channel::<Vec<EntryId>>(QUEUE);
        rt.spawn(async move {
            while let Some(batch) = rx.recv().await {
                // A hint: an error (or a store too slow to answer) costs only the readahead.
                let _ = tokio::time::timeout(HINT_TIMEOUT, mb.prefetch(&batch)).await;
            }
        });
        Readahead { tx }
    }

    /// Queues a hint without waiting; `false` if it was dropped (queue full, or no task).
    pub fn hint(&self, entries: Vec<EntryId>) -> bool {
        if entries.is_empty() {
            return true;
        }
        self.tx.try_send(entries).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DeviceKey, UserKeys};
    use crate::mailbox::{Error, Flags, NewMessage};
    use crate::store::Store;

    /// The mount's read path on a plain thread gives the same bytes as the async one, an
    /// unknown entry is "no such message", and a hint for known and unknown entries advises
    /// the known ones only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_read_and_prefetch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = UserKeys::from_seed([3; 32]);
        let dk = DeviceKey::from_seed([4; 32]);
        let mb = Mailbox::open(store, keys, dk.public()).await.unwrap();
        let m = mb
            .append(
                "INBOX",
                NewMessage {
                    bytes: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
                    internal_date: 1_700_000_000,
                    flags: Flags::default(),
                    recent: true,
                    maildir_name: None,
                },
            )
            .await
            .unwrap();
        let want = mb.read_uncached(m.entry).await.unwrap();
        let (mb2, entry) = (mb.clone(), m.entry);
        let got = tokio::task::spawn_blocking(move || {
            let got = mb2.read_uncached_blocking(entry).unwrap();
            let missing = mb2.read_uncached_blocking(crate::mailbox::OpId::from_bytes(&[9; 20]));
            (got, missing)
        })
        .await
        .unwrap();
        assert_eq!(got.0, want);
        assert!(matches!(got.1, Err(Error::NoSuchMessage)));
        let unknown = crate::mailbox::OpId::from_bytes(&[7; 20]);
        assert_eq!(mb.prefetch(&[unknown, m.entry, unknown]).await.unwrap(), 1);
        // The queue runs a hint without being waited for.
        let ra = Readahead::start(mb.clone(), &Handle::current());
        assert!(ra.hint(vec![m.entry]));
        assert!(ra.hint(Vec::new()));
    }
}
