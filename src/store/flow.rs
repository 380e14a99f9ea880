//! The mail-flow tables (schema.rs, "mail-flow tables"): the outbound queue, the message ids
//! already delivered into INBOX, and the DHT inbox entries this node holds for other users.
//! Values are opaque here; `delivery` and `overlay` own their formats.

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, WithoutTls};

use super::{Result, Store, schema};

pub(super) struct Tables {
    outbox: Database<'static, Bytes, Bytes>,
    delivered: Database<'static, Bytes, Bytes>,
    inbox: Database<'static, Bytes, Bytes>,
}

impl Tables {
    pub(super) fn create(env: &Env<WithoutTls>) -> heed::Result<Tables> {
        let wtxn = env.write_txn()?;
        env.create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
            let outbox: Database<Bytes, Bytes> =
                dbo.create_database(wtxn, Some(schema::DB_OUTBOX))?;
            let delivered: Database<Bytes, Bytes> =
                dbo.create_database(wtxn, Some(schema::DB_DELIVERED))?;
            let inbox: Database<Bytes, Bytes> =
                dbo.create_database(wtxn, Some(schema::DB_INBOX))?;
            Ok(CommitOrAbort::<_, ()>::Commit((outbox, delivered, inbox)))
        })
        .map(|c| match c {
            CommitOrAbort::Commit((outbox, delivered, inbox)) => Some(Tables {
                outbox,
                delivered,
                inbox,
            }),
            CommitOrAbort::Abort(()) => None,
        })?
        .ok_or(heed::Error::Mdb(heed::MdbError::Panic))
    }
}

/// What happened to an entry offered for a DHT inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxPut {
    Stored,
    AlreadyHeld,
    /// The recipient's inbox, or this node's share of all inboxes, is full.
    Full,
}

/// Bounds of one DHT inbox at its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    pub per_key: usize,
    pub per_sender: usize,
    pub total: u64,
    /// Where in a value the 32-byte sender id sits.
    pub sender_at: usize,
}

impl Store {
    /// Writes rows of the outbound queue in one durable transaction.
    pub async fn outbox_put(&self, rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            for (k, v) in &rows {
                s.flow.outbox.put(&mut wtxn, k, v)?;
            }
            wtxn.commit()?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` rows of the outbound queue whose keys start with `prefix`, in key order.
    pub async fn outbox_scan(
        &self,
        prefix: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            s.flow
                .outbox
                .prefix_iter(&rtxn, &prefix)?
                .take(limit)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
                .collect()
        })
        .await
    }

    /// The number of rows in the outbound queue.
    pub async fn outbox_len(&self) -> Result<u64> {
        self.blocking(|s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.flow.outbox.len(&rtxn)?)
        })
        .await
    }

    /// One outbound-queue row.
    pub async fn outbox_get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.flow.outbox.get(&rtxn, &key)?.map(<[u8]>::to_vec))
        })
        .await
    }

    /// Deletes the row `key` (a recipient's or the pending Sent copy's) of message `msg`
    /// (16 bytes), and the message row too when no such row is left. Durable on return.
    pub async fn outbox_finish(&self, msg: [u8; 16], key: Vec<u8>) -> Result<()> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            s.flow.outbox.delete(&mut wtxn, &key)?;
            let mut more = false;
            for kind in [1u8, 2] {
                let mut prefix = vec![kind];
                prefix.extend_from_slice(&msg);
                more |= s.flow.outbox.prefix_iter(&wtxn, &prefix)?.next().is_some();
            }
            if !more {
                let mut head = vec![0u8];
                head.extend_from_slice(&msg);
                s.flow.outbox.delete(&mut wtxn, &head)?;
            }
            wtxn.commit()?;
            Ok(())
        })
        .await
    }

    /// Whether a delivery id was already put into INBOX.
    pub async fn delivered_has(&self, id: [u8; 32]) -> Result<bool> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.flow.delivered.get(&rtxn, &id)?.is_some())
        })
        .await
    }

    /// Holds an entry of the DHT inbox `key` unless that inbox has `per_key` entries, the
    /// entry's sender (the 32 bytes at `sender_at` in the value) has `per_sender` there, or
    /// all inboxes together have `total`. Entries older than `expire_before` (unix s) in that
    /// inbox are dropped first. Durable when it returns `Stored`.
    pub async fn inbox_put(
        &self,
        key: [u8; 32],
        entry: [u8; 32],
        value: Vec<u8>,
        limits: InboxLimits,
        expire_before: u64,
    ) -> Result<InboxPut> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let mut full_key = key.to_vec();
            full_key.extend_from_slice(&entry);
            if s.flow.inbox.get(&wtxn, &full_key)?.is_some() {
                return Ok(InboxPut::AlreadyHeld);
            }
            let sender_of = |v: &[u8]| {
                v.get(limits.sender_at..limits.sender_at + 32)
                    .map(|s| s.to_vec())
            };
            let sender = sender_of(&value);
            let mut stale = Vec::new();
            let (mut count, mut from_sender) = (0usize, 0usize);
            for row in s.flow.inbox.prefix_iter(&wtxn, &key)? {
                let (k, v) = row?;
                if stored_at(v) < expire_before {
                    stale.push(k.to_vec());
                } else {
                    count += 1;
                    if sender.is_some() && sender_of(v) == sender {
                        from_sender += 1;
                    }
                }
            }
            for k in &stale {
                s.flow.inbox.delete(&mut wtxn, k)?;
            }
            if count >= limits.per_key
                || from_sender >= limits.per_sender
                || s.flow.inbox.len(&wtxn)? >= limits.total
            {
                wtxn.commit()?;
                return Ok(InboxPut::Full);
            }
            s.flow.inbox.put(&mut wtxn, &full_key, &value)?;
            wtxn.commit()?;
            Ok(InboxPut::Stored)
        })
        .await
    }

    /// One page of the DHT inbox `key`: up to `limit` values of entries whose id is greater
    /// than `after` (all of them for zeros), in entry-id order, leaving out those stored
    /// before `expire_before`; and whether more follow.
    pub async fn inbox_page(
        &self,
        key: [u8; 32],
        after: [u8; 32],
        expire_before: u64,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, bool)> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let mut rows = Vec::new();
            for row in s.flow.inbox.prefix_iter(&rtxn, &key)? {
                let (k, v) = row?;
                let id = k.get(32..).unwrap_or_default();
                if (after != [0; 32] && id <= &after[..]) || stored_at(v) < expire_before {
                    continue;
                }
                if rows.len() == limit {
                    return Ok((rows, true));
                }
                rows.push(v.to_vec());
            }
            Ok((rows, false))
        })
        .await
    }

    /// Removes entry `entry` of inbox `key` if `check` accepts its value; returns whether it
    /// was removed.
    pub async fn inbox_remove(
        &self,
        key: [u8; 32],
        entry: [u8; 32],
        check: impl FnOnce(&[u8]) -> bool + Send + 'static,
    ) -> Result<bool> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let mut full_key = key.to_vec();
            full_key.extend_from_slice(&entry);
            let ok = match s.flow.inbox.get(&wtxn, &full_key)? {
                Some(v) => check(v),
                None => false,
            };
            if ok {
                s.flow.inbox.delete(&mut wtxn, &full_key)?;
                wtxn.commit()?;
            }
            Ok(ok)
        })
        .await
    }
}

fn stored_at(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl super::Tx<'_, '_> {
    /// Remembers a delivery id in this transaction (with the message it delivered, so a crash
    /// cannot keep one without the other).
    pub fn delivered_mark(&mut self, id: [u8; 32], when: u64) -> Result<()> {
        self.inner
            .flow
            .delivered
            .put(self.txn, &id, &when.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn inboxes_are_bounded_and_acks_need_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k = [7u8; 32];
        let val = |t: u64, sender: u8| {
            let mut v = t.to_be_bytes().to_vec();
            v.push(sender);
            v.extend_from_slice(b"entry");
            v
        };
        let limits = InboxLimits {
            per_key: 3,
            per_sender: 2,
            total: 100,
            sender_at: 8,
        };
        // Sender ids are 32 bytes long: pad the test values.
        let val = |t: u64, sender: u8| {
            let mut v = val(t, sender);
            v.splice(9..9, [sender; 31]);
            v
        };
        for i in 0..2u8 {
            let r = store.inbox_put(k, [i + 1; 32], val(100, 1), limits, 50);
            assert_eq!(r.await.unwrap(), InboxPut::Stored);
        }
        let r = store.inbox_put(k, [5; 32], val(100, 1), limits, 50).await;
        assert_eq!(r.unwrap(), InboxPut::Full, "per sender bound");
        let r = store.inbox_put(k, [3; 32], val(102, 2), limits, 50).await;
        assert_eq!(r.unwrap(), InboxPut::Stored);
        let r = store.inbox_put(k, [9; 32], val(200, 3), limits, 50).await;
        assert_eq!(r.unwrap(), InboxPut::Full, "per recipient bound");
        let r = store.inbox_put(k, [1; 32], val(101, 1), limits, 50).await;
        assert_eq!(r.unwrap(), InboxPut::AlreadyHeld);
        // Pages follow the entry ids; a cursor continues after the last one seen.
        let (page, more) = store.inbox_page(k, [0; 32], 50, 2).await.unwrap();
        assert_eq!((page.len(), more), (2, true));
        let (page, more) = store.inbox_page(k, [2; 32], 50, 2).await.unwrap();
        assert_eq!((page, more), (vec![val(102, 2)], false));
        assert!(!store.inbox_remove(k, [1; 32], |_| false).await.unwrap());
        assert!(store.inbox_remove(k, [1; 32], |_| true).await.unwrap());
        assert_eq!(
            store.inbox_page(k, [0; 32], 50, 10).await.unwrap().0.len(),
            2
        );
        // Old entries are left out of pages, and expire when a new one arrives.
        assert_eq!(
            store.inbox_page(k, [0; 32], 101, 10).await.unwrap().0.len(),
            1
        );
        let r = store.inbox_put(k, [9; 32], val(200, 3), limits, 150).await;
        assert_eq!(r.unwrap(), InboxPut::Stored);
        assert_eq!(
            store.inbox_page(k, [0; 32], 0, 10).await.unwrap().0.len(),
            1
        );
    }

    #[tokio::test]
    async fn the_message_row_goes_with_its_last_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let msg = [3u8; 16];
        let key = |kind: u8, r: &str| {
            let mut k = vec![kind];
            k.extend_from_slice(&msg);
            k.extend_from_slice(r.as_bytes());
            k
        };
        store
            .outbox_put(vec![
                (key(0, ""), b"m".to_vec()),
                (key(1, "a@x"), b"r".to_vec()),
                (key(1, "b@x"), b"r".to_vec()),
                (key(2, ""), Vec::new()),
            ])
            .await
            .unwrap();
        store.outbox_finish(msg, key(2, "")).await.unwrap();
        store.outbox_finish(msg, key(1, "a@x")).await.unwrap();
        assert_eq!(store.outbox_len().await.unwrap(), 2);
        assert_eq!(store.outbox_scan(vec![1], 10).await.unwrap().len(), 1);
        store.outbox_finish(msg, key(1, "b@x")).await.unwrap();
        assert_eq!(store.outbox_len().await.unwrap(), 0);
    }
}
