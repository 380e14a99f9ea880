//! The durability layer's table (schema.rs, "durability tables"): a plain key-value map whose
//! rows `durability::backup` defines. Writes are batched into one durable transaction.

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, WithoutTls};

use super::{Result, Store, schema};

/// Rows one prefix scan returns at most (a scan of a larger table is refused, not truncated).
pub const MAX_SCAN: usize = 4_000_000;

pub(super) struct Tables {
    backup: Database<'static, Bytes, Bytes>,
}

impl Tables {
    pub(super) fn create(env: &Env<WithoutTls>) -> heed::Result<Tables> {
        let wtxn = env.write_txn()?;
        env.create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
            let backup: Database<Bytes, Bytes> =
                dbo.create_database(wtxn, Some(schema::DB_BACKUP))?;
            Ok(CommitOrAbort::<_, ()>::Commit(backup))
        })
        .map(|c| match c {
            CommitOrAbort::Commit(backup) => Some(Tables { backup }),
            CommitOrAbort::Abort(()) => None,
        })?
        .ok_or(heed::Error::Mdb(heed::MdbError::Panic))
    }
}

impl Store {
    /// One row of the `backup` table.
    pub async fn backup_get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.backup.backup.get(&rtxn, &key)?.map(<[u8]>::to_vec))
        })
        .await
    }

    /// Writes (value `Some`) and deletes (`None`) rows in one durable transaction.
    pub async fn backup_write(&self, rows: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            for (k, v) in &rows {
                match v {
                    Some(v) => s.backup.backup.put(&mut wtxn, k, v)?,
                    None => {
                        s.backup.backup.delete(&mut wtxn, k)?;
                    }
                }
            }
            wtxn.commit()?;
            Ok(())
        })
        .await
    }

    /// Every row whose key starts with `prefix`, in key order.
    pub async fn backup_prefix(&self, prefix: Vec<u8>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let mut out = Vec::new();
            for item in s.backup.backup.prefix_iter(&rtxn, &prefix)? {
                let (k, v) = item?;
                if out.len() >= MAX_SCAN {
                    return Err(super::Error::Corrupt {
                        id: crate::crypto::ObjectId([0; 32]),
                        why: format!("more than {MAX_SCAN} backup rows"),
                    });
                }
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        })
        .await
    }
}

/// One step of a scan over the blobs held for others (durability's repair loop).
#[derive(Debug, Default)]
pub struct HeldScan {
    /// Every id in this step, with the value when it is at most `max_len` bytes.
    pub items: Vec<([u8; 32], Option<Vec<u8>>)>,
    /// Where the next step starts (`None`: the scan is complete).
    pub next: Option<[u8; 32]>,
}

impl Store {
    /// Up to `limit` held blobs from `from` on (in id order), with the small ones' bytes.
    pub async fn held_scan(
        &self,
        from: Option<[u8; 32]>,
        limit: usize,
        max_len: usize,
    ) -> Result<HeldScan> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let start = from.unwrap_or([0; 32]);
            let mut out = HeldScan::default();
            let range = (
                std::ops::Bound::Included(&start[..]),
                std::ops::Bound::Unbounded,
            );
            for item in s.overlay.held.range(&rtxn, &range)? {
                let (k, v) = item?;
                let Ok(id) = <[u8; 32]>::try_from(k) else {
                    continue;
                };
                if out.items.len() >= limit {
                    out.next = Some(id);
                    break;
                }
                out.items
                    .push((id, (v.len() <= max_len).then(|| v.to_vec())));
            }
            Ok(out)
        })
        .await
    }

    /// Drops a held blob (its lease expired); returns whether it was there.
    pub async fn held_delete(&self, id: [u8; 32]) -> Result<bool> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let Some(len) = s.overlay.held.get(&wtxn, &id)?.map(|v| v.len() as u64) else {
                return Ok(false);
            };
            s.overlay.held.delete(&mut wtxn, &id)?;
            let total = super::read_u64(&s.meta, &wtxn, schema::META_HELD_BYTES)?;
            s.meta.put(
                &mut wtxn,
                schema::META_HELD_BYTES,
                &total.saturating_sub(len).to_be_bytes(),
            )?;
            wtxn.commit()?;
            Ok(true)
        })
        .await
    }
}
