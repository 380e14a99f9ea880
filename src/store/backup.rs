//! The durability layer's table (schema.rs, "durability tables"): a plain key-value map whose
//! rows `durability::backup` defines. Writes are batched into one durable transaction.

use std::collections::HashSet;

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

/// Which table [`Store::backup_unmarked`] scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `objects` (32-byte keys).
    Objects,
    /// `log` (16-byte keys: device ‖ seq).
    Log,
}

/// Rows of a source table that no `backup` row `mark ‖ key` names, read in key order.
#[derive(Debug, Default)]
pub struct Unmarked {
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the next batch starts; `None`: the table was read to its end.
    pub next: Option<Vec<u8>>,
}

/// What [`Store::backup_unmarked_size`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmarkedSize {
    pub rows: u64,
    pub bytes: u64,
}

impl Store {
    /// Up to about `limit_bytes` (at least one row) of the rows of `source` with keys ≥ `from`
    /// that no `backup` row `mark ‖ key` names: a merge of two key-ordered cursors in one
    /// read transaction, so nothing is held but the batch (the backup streams a large mailbox
    /// through bundles of `limit_bytes`).
    pub async fn backup_unmarked(
        &self,
        source: Source,
        mark: u8,
        from: Vec<u8>,
        limit_bytes: usize,
    ) -> Result<Unmarked> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let mut out = Unmarked::default();
            let mut bytes = 0usize;
            scan_unmarked(s, &rtxn, source, mark, &from, |k, v| {
                if !out.rows.is_empty() && bytes + v.len() > limit_bytes {
                    out.next = Some(k.to_vec());
                    return false;
                }
                bytes += v.len();
                out.rows.push((k.to_vec(), v.to_vec()));
                true
            })?;
            Ok(out)
        })
        .await
    }

    /// Rows and bytes of `source` that no `backup` row `mark ‖ key` names (values are not
    /// copied: only their lengths are read).
    pub async fn backup_unmarked_size(&self, source: Source, mark: u8) -> Result<UnmarkedSize> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let mut size = UnmarkedSize::default();
            scan_unmarked(s, &rtxn, source, mark, &[], |_, v| {
                size.rows += 1;
                size.bytes += v.len() as u64;
                true
            })?;
            Ok(size)
        })
        .await
    }

    /// Keys (without the prefix byte) of the `backup` rows under `prefix` whose value is one
    /// of `values`, and every distinct value seen under it.
    pub async fn backup_rows_valued(
        &self,
        prefix: u8,
        values: HashSet<Vec<u8>>,
    ) -> Result<(Vec<Vec<u8>>, HashSet<Vec<u8>>)> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let (mut keys, mut seen) = (Vec::new(), HashSet::new());
            for item in s.backup.backup.prefix_iter(&rtxn, &[prefix])? {
                let (k, v) = item?;
                if values.contains(v) && keys.len() < MAX_SCAN {
                    keys.push(k[1..].to_vec());
                }
                if !seen.contains(v) && seen.len() < MAX_SCAN {
                    seen.insert(v.to_vec());
                }
            }
            Ok((keys, seen))
        })
        .await
    }
}

/// Calls `f(key, value)` for each row of `source` from `from` on that no mark names, until
/// `f` returns false.
fn scan_unmarked(
    s: &super::Inner,
    rtxn: &heed::RoTxn<'_, WithoutTls>,
    source: Source,
    mark: u8,
    from: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    use std::ops::Bound;
    let table = match source {
        Source::Objects => &s.objects,
        Source::Log => s.table(schema::Table::Log),
    };
    let start: Vec<u8> = std::iter::once(mark).chain(from.iter().copied()).collect();
    let mut marks = s
        .backup
        .backup
        .range(rtxn, &(Bound::Included(&start[..]), Bound::Unbounded))?;
    let mut next_mark: Option<Vec<u8>> = None;
    let mut marks_done = false;
    // LMDB refuses an empty key as a range start (MDB_BAD_VALSIZE): start unbounded then.
    let start = if from.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Included(from)
    };
    let rows = table.range(rtxn, &(start, Bound::Unbounded))?;
    for item in rows {
        let (k, v) = item?;
        // Advance the marks to the first ≥ k.
        while !marks_done && next_mark.as_deref().is_none_or(|m| m < k) {
            match marks.next().transpose()? {
                Some((mk, _)) if mk.first() == Some(&mark) => next_mark = Some(mk[1..].to_vec()),
                _ => {
                    marks_done = true;
                    next_mark = None;
                }
            }
        }
        if next_mark.as_deref() == Some(k) {
            continue;
        }
        if !f(k, v) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SealedObject;

    /// The scan skips exactly the marked rows, resumes at its cursor, and counts what it
    /// would return.
    #[tokio::test]
    async fn unmarked_objects_are_streamed_in_batches_past_the_marks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let objs: Vec<SealedObject> = (0..40u32)
            .map(|i| SealedObject::seal(&vec![i as u8; 1000]).unwrap().0)
            .collect();
        let mut ids = store.put_objects(objs.clone()).await.unwrap();
        ids.sort_by_key(|id| id.0);
        // Every third one is in a bundle already.
        let marks = ids
            .iter()
            .step_by(3)
            .map(|id| {
                let mut k = vec![b'o'];
                k.extend_from_slice(&id.0);
                (k, Some(b"bundle".to_vec()))
            })
            .collect();
        store.backup_write(marks).await.unwrap();
        let want: Vec<[u8; 32]> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, id)| id.0)
            .collect();
        let len = objs[0].as_bytes().len() as u64;
        assert_eq!(
            store
                .backup_unmarked_size(Source::Objects, b'o')
                .await
                .unwrap(),
            UnmarkedSize {
                rows: want.len() as u64,
                bytes: want.len() as u64 * len
            }
        );
        let (mut got, mut from, mut batches) = (Vec::new(), Vec::new(), 0);
        loop {
            let b = store
                .backup_unmarked(Source::Objects, b'o', from, 5000)
                .await
                .unwrap();
            assert!(!b.rows.is_empty() && b.rows.len() <= 5, "{}", b.rows.len());
            got.extend(
                b.rows
                    .iter()
                    .map(|(k, _)| <[u8; 32]>::try_from(&k[..]).unwrap()),
            );
            batches += 1;
            match b.next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(got, want, "every unmarked row once, in key order");
        assert!(batches >= want.len() / 5, "{batches} batches");
        // A mark with another prefix hides nothing; all marked: nothing left.
        let (keys, seen) = store
            .backup_rows_valued(b'o', [b"bundle".to_vec()].into())
            .await
            .unwrap();
        assert_eq!(keys.len(), ids.len().div_ceil(3));
        assert_eq!(seen, [b"bundle".to_vec()].into());
        let all = ids
            .iter()
            .map(|id| {
                let mut k = vec![b'o'];
                k.extend_from_slice(&id.0);
                (k, Some(b"b2".to_vec()))
            })
            .collect();
        store.backup_write(all).await.unwrap();
        let b = store
            .backup_unmarked(Source::Objects, b'o', Vec::new(), 5000)
            .await
            .unwrap();
        assert!(b.rows.is_empty() && b.next.is_none());
        assert_eq!(
            store
                .backup_unmarked(Source::Objects, b'l', Vec::new(), 1 << 20)
                .await
                .unwrap()
                .rows
                .len(),
            ids.len(),
            "marks of another kind hide nothing"
        );
    }
}
