//! Group commit: many callers' writes in ONE durable LMDB transaction (one fsync for all).
//! Each job runs in a nested transaction of it, so a job that fails leaves nothing of itself
//! and the others are kept.

use std::sync::Arc;

use super::{Error, META_OBJECT_BYTES, Result, Store, Tx, read_u64};

/// A job of [`Store::transact_batch`].
pub type BatchJob<T, E> = Box<dyn FnOnce(&mut Tx<'_, '_>) -> std::result::Result<T, E> + Send>;

impl Store {
    /// Runs `jobs` in order, each in a nested transaction of one write transaction, and
    /// commits that once, durably. A job's `Err` aborts only its own nested transaction (its
    /// result says so); `Err` from this call means the commit itself failed and nothing of
    /// any job was kept. Returns only after the commit is durable.
    pub async fn transact_batch<T, E>(
        &self,
        jobs: Vec<BatchJob<T, E>>,
    ) -> Result<Vec<std::result::Result<T, E>>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || -> Result<Vec<std::result::Result<T, E>>> {
            let mut wtxn = inner.env.write_txn()?;
            let mut out = Vec::with_capacity(jobs.len());
            let (mut delta, mut records) = (0i64, 0u32);
            for job in jobs {
                let mut child = inner.env.nested_write_txn(&mut wtxn)?;
                let mut tx = Tx {
                    inner: &inner,
                    txn: &mut child,
                    object_bytes: 0,
                    records: 0,
                };
                let r = job(&mut tx);
                let (d, n) = (tx.object_bytes, tx.records);
                match r {
                    Ok(v) => {
                        child.commit()?;
                        delta = delta.saturating_add(d);
                        records = records.saturating_add(n);
                        out.push(Ok(v));
                    }
                    Err(e) => {
                        child.abort();
                        out.push(Err(e));
                    }
                }
            }
            if delta != 0 {
                let total = read_u64(&inner.meta, &wtxn, META_OBJECT_BYTES)?;
                let total = total.saturating_add_signed(delta);
                inner
                    .meta
                    .put(&mut wtxn, META_OBJECT_BYTES, &total.to_be_bytes())?;
            }
            wtxn.commit()?;
            crate::metrics::get().store_commit();
            inner.map.wrote(records);
            Ok(out)
        })
        .await
        .map_err(|_| Error::Worker)?
    }
}
