//! Group commit of the engine's writes (issue #21: one fsync per STORE/APPEND/EXPUNGE was
//! the mixed IMAP load's bottleneck).
//!
//! A write builds its ops under the write lock as before, numbers its log entries (this
//! device's next sequence numbers, known from the applied state), applies them to memory
//! and queues its store writes here; then it may let go of the write lock (the next write
//! sees its effects in memory, as if it had committed) and waits for its batch. One leader
//! task at a time takes everything queued, runs each job in a nested transaction of ONE
//! write transaction ([`Store::transact_batch`]), commits once, and only then publishes each
//! job's changes (in queue order) and answers it. So:
//! * a caller is answered only after its change is durable (as before);
//! * subscribers hear of a change only once it is durable;
//! * readers that answer clients call [`Mailbox::settled`] before they reply: it waits until
//!   what was applied to memory when it was called is durable, so nothing not yet durable is
//!   reported to anyone (a change is visible in memory one batch early, never told early);
//! * a job that fails in its transaction (another process took its log sequence number, a
//!   store error) or a failed commit leaves memory ahead of the store: its callers get the
//!   error and the engine reloads its state from the store under the write lock.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::*;
use crate::store::BatchJob;

/// Jobs taken into one transaction at most.
const MAX_BATCH: usize = 256;

pub(super) struct Job {
    pub work: BatchJob<Vec<Numbered>, Error>,
    pub folders_changed: bool,
    /// This job's place in the applied order ([`Group::applied`]).
    pub generation: u64,
    /// The caller waits with the write lock held (it is answered first after a failure).
    pub holds_lock: bool,
    pub done: oneshot::Sender<Result<()>>,
}

fn reloading() -> Error {
    Error::NotAllowed("a commit failed; the mailbox is being reloaded: try again")
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    leading: bool,
    /// A commit failed and memory is being rebuilt: new jobs fail at once.
    poisoned: bool,
}

/// The queue, the leader flag and the applied / durable generations.
pub(super) struct Group {
    queue: Mutex<Queue>,
    /// Jobs applied to memory so far (a counter; under the write lock).
    applied: std::sync::atomic::AtomicU64,
    /// The highest generation known durable (or failed: then reloaded).
    durable: tokio::sync::watch::Sender<u64>,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            queue: Mutex::new(Queue::default()),
            applied: std::sync::atomic::AtomicU64::new(0),
            durable: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Group {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next generation, for a job about to be applied (called under the write lock).
    pub fn next_gen(&self) -> u64 {
        self.applied.fetch_add(1, Ordering::AcqRel) + 1
    }
}

impl Mailbox {
    /// Queues a job applied to memory; starts a leader if none runs. While the engine is
    /// being reloaded after a failure the job fails at once (its effects are in memory only
    /// until the reload, which rebuilds memory from the store).
    pub(super) fn enqueue(&self, job: Job) {
        let lead = {
            let mut q = self.inner.group.queue();
            if q.poisoned {
                drop(q);
                let g = job.generation;
                self.inner.group.durable.send_modify(|d| *d = (*d).max(g));
                let _ = job.done.send(Err(reloading()));
                return;
            }
            q.jobs.push(job);
            !std::mem::replace(&mut q.leading, true)
        };
        if lead {
            let mb = self.clone();
            tokio::spawn(async move { mb.lead().await });
        }
    }

    /// Commits batches until the queue is empty.
    async fn lead(self) {
        loop {
            let jobs: Vec<Job> = {
                let mut q = self.inner.group.queue();
                if q.jobs.is_empty() {
                    q.leading = false;
                    return;
                }
                let n = q.jobs.len().min(MAX_BATCH);
                q.jobs.drain(..n).collect()
            };
            let top = jobs.iter().map(|j| j.generation).max().unwrap_or(0);
            let mut works = Vec::with_capacity(jobs.len());
            let mut rest = Vec::with_capacity(jobs.len());
            for j in jobs {
                works.push(j.work);
                rest.push((j.folders_changed, j.holds_lock, j.done));
            }
            let mut later = Vec::new();
            match self.inner.store.transact_batch(works).await {
                Ok(results) => {
                    for (r, (folders_changed, holds_lock, done)) in results.into_iter().zip(rest) {
                        match r {
                            Ok(numbered) => {
                                self.publish(numbered, folders_changed);
                                let _ = done.send(Ok(()));
                            }
                            Err(e) => later.push((holds_lock, done, e)),
                        }
                    }
                    self.inner.log_written.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "group commit failed");
                    for (_, holds_lock, done) in rest {
                        let e = Error::Corrupt(format!("the commit failed: {msg}"));
                        later.push((holds_lock, done, e));
                    }
                }
            }
            self.inner.group.durable.send_modify(|d| *d = (*d).max(top));
            if !later.is_empty() {
                self.recover(later).await;
            }
        }
    }

    /// After a failed job or commit: memory holds effects the store does not. New jobs fail
    /// at once until memory is rebuilt from the store (so no later log entry is written
    /// after a sequence number that never was: no gap in this device's log), then the
    /// failed callers are answered. A caller that still holds the write lock is answered
    /// first (it lets go of the lock, which the reload needs).
    async fn recover(&self, failed: Vec<(bool, oneshot::Sender<Result<()>>, Error)>) {
        let queued: Vec<Job> = {
            let mut q = self.inner.group.queue();
            q.poisoned = true;
            q.jobs.drain(..).collect()
        };
        let top = queued.iter().map(|j| j.generation).max().unwrap_or(0);
        let mut waiting = Vec::new();
        for j in queued {
            if j.holds_lock {
                let _ = j.done.send(Err(reloading()));
            } else {
                waiting.push((j.done, reloading()));
            }
        }
        for (holds_lock, done, e) in failed {
            if holds_lock {
                let _ = done.send(Err(e));
            } else {
                waiting.push((done, e));
            }
        }
        self.inner.group.durable.send_modify(|d| *d = (*d).max(top));
        {
            let _w = self.inner.write.lock().await;
            let applied = self.inner.group.applied.load(Ordering::Acquire);
            self.inner
                .group
                .durable
                .send_modify(|d| *d = (*d).max(applied));
            if let Err(e) = self.reload_locked().await {
                tracing::error!(error = %e, "reloading the mailbox after a failed commit");
            }
            self.inner.group.queue().poisoned = false;
        }
        for (done, e) in waiting {
            let _ = done.send(Err(e));
        }
    }

    /// Waits until every change applied to memory before this call is durable (or failed
    /// and being reloaded). IMAP calls it before it answers, so it never reports a change
    /// that is not durable.
    pub async fn settled(&self) {
        let want = self.inner.group.applied.load(Ordering::Acquire);
        if *self.inner.group.durable.borrow() >= want {
            return;
        }
        let mut rx = self.inner.group.durable.subscribe();
        let _ = rx.wait_for(|d| *d >= want).await;
    }

    /// [`Mailbox::settled`] for callers holding the write lock, before a transaction of their
    /// own (nothing can be queued meanwhile, so afterwards the queue is empty).
    pub(super) async fn settle(&self) {
        self.settled().await
    }

    /// Rebuilds the in-memory state from the store (after a failed group commit). The write
    /// lock is held by the caller.
    async fn reload_locked(&self) -> Result<()> {
        {
            let mut e = self.write_engine();
            let hlc = e.hlc;
            let refused = std::mem::take(&mut e.refused);
            *e = Engine::default();
            e.hlc = hlc;
            e.refused = refused;
        }
        self.load_uids().await?;
        self.refresh_locked().await?;
        let _ = self.inner.changes.send(Change::Folders);
        Ok(())
    }
}
