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

    /// Holds an entry of the DHT inbox `key` unless that inbox has `per_key` entries or all
    /// inboxes together have `total`. Entries older than `expire_before` (unix s) in that
    /// inbox are dropped first. Durable when it returns `Stored`.
    pub async fn inbox_put(
        &self,
        key: [u8; 32],
        entry: [u8; 32],
        value: Vec<u8>,
        limits: (usize, u64),
        expire_before: u64,
    ) -> Result<InboxPut> {
        let (per_key, total) = limits;
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let mut full_key = key.to_vec();
            full_key.extend_from_slice(&entry);
            if s.flow.inbox.get(&wtxn, &full_key)?.is_some() {
                return Ok(InboxPut::AlreadyHeld);
            }
            let mut stale = Vec::new();
            let mut count = 0usize;
            for row in s.flow.inbox.prefix_iter(&wtxn, &key)? {
                let (k, v) = row?;
                if stored_at(v) < expire_before {
                    stale.push(k.to_vec());
                } else {
                    count += 1;
                }
            }
            for k in &stale {
                s.flow.inbox.delete(&mut wtxn, k)?;
            }
            if count >= per_key || s.flow.inbox.len(&wtxn)? >= total {
                wtxn.commit()?;
                return Ok(InboxPut::Full);
            }
            s.flow.inbox.put(&mut wtxn, &full_key, &value)?;
            wtxn.commit()?;
            Ok(InboxPut::Stored)
        })
        .await
    }

    /// Up to `limit` entries (values) of the DHT inbox `key`, oldest first.
    pub async fn inbox_list(&self, key: [u8; 32], limit: usize) -> Result<Vec<Vec<u8>>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let mut rows = Vec::new();
            for row in s.flow.inbox.prefix_iter(&rtxn, &key)? {
                rows.push(row?.1.to_vec());
            }
            rows.sort_by_key(|v| stored_at(v));
            rows.truncate(limit);
            Ok(rows)
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
        let val = |t: u64| {
            let mut v = t.to_be_bytes().to_vec();
            v.extend_from_slice(b"entry");
            v
        };
        for i in 0..3u8 {
            let r = store
                .inbox_put(k, [i; 32], val(100 + u64::from(i)), (3, 100), 50)
                .await
                .unwrap();
            assert_eq!(r, InboxPut::Stored);
        }
        let r = store.inbox_put(k, [9; 32], val(200), (3, 100), 50).await;
        assert_eq!(r.unwrap(), InboxPut::Full, "per recipient bound");
        let r = store.inbox_put(k, [1; 32], val(101), (3, 100), 50).await;
        assert_eq!(r.unwrap(), InboxPut::AlreadyHeld);
        assert_eq!(store.inbox_list(k, 2).await.unwrap().len(), 2);
        assert!(!store.inbox_remove(k, [0; 32], |_| false).await.unwrap());
        assert!(store.inbox_remove(k, [0; 32], |_| true).await.unwrap());
        assert_eq!(store.inbox_list(k, 10).await.unwrap().len(), 2);
        // Old entries expire when a new one arrives.
        let r = store.inbox_put(k, [9; 32], val(200), (3, 100), 150).await;
        assert_eq!(r.unwrap(), InboxPut::Stored);
        assert_eq!(store.inbox_list(k, 10).await.unwrap().len(), 1);
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
