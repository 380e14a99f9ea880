//! `\Recent` (RFC 3501 §2.3.2): a message is recent in exactly one session, the first one
//! told of it (a SELECT, or new mail while selected); EXAMINE shows recent messages without
//! claiming them. The engine keeps "not yet seen by a reader" per message (Maildir's new/);
//! a session claims such messages here first (so two sessions of this process never both
//! take one), then has the engine mark them seen by a reader (so no later session, nor this
//! node after a restart, takes them again) and lets go of the claim. A session may have read
//! a message as recent just before another session's write landed: the claims it let go of
//! are remembered (the last [`TAKEN`]) so that such a late claim still fails. Bounded: a
//! pending claim lives until its write is done; taken ones are a FIFO of [`TAKEN`].

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use super::Context;
use crate::mailbox::{EntryId, FlagMode, Flags};

/// How many released claims are remembered against late claims from a stale read.
pub const TAKEN: usize = 4096;

#[derive(Debug, Default)]
pub struct Claims {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Claimed by a session, not yet marked seen by a reader in the engine.
    pending: HashSet<EntryId>,
    /// Claimed, written, released: the newest [`TAKEN`], oldest first (and as a set).
    taken: VecDeque<EntryId>,
    taken_set: HashSet<EntryId>,
}

impl Claims {
    /// Of `candidates` (recent in the engine), those no other session has claimed: now this
    /// caller's.
    pub fn claim(&self, candidates: &[EntryId]) -> Vec<EntryId> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner {
            pending, taken_set, ..
        } = &mut *g;
        candidates
            .iter()
            .copied()
            .filter(|e| !taken_set.contains(e) && pending.insert(*e))
            .collect()
    }

    /// Of `candidates`, those nobody has claimed (what EXAMINE shows as recent).
    pub fn unclaimed(&self, candidates: &[EntryId]) -> Vec<EntryId> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        candidates
            .iter()
            .copied()
            .filter(|e| !g.pending.contains(e) && !g.taken_set.contains(e))
            .collect()
    }

    /// Lets go of `entries` once their write is done. `written`: the engine marked them seen
    /// by a reader, so they are remembered as taken; a failed write lets them be claimed again.
    fn release(&self, entries: &[EntryId], written: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            if g.pending.remove(e) && written && g.taken_set.insert(*e) {
                g.taken.push_back(*e);
                if g.taken.len() > TAKEN
                    && let Some(old) = g.taken.pop_front()
                {
                    g.taken_set.remove(&old);
                }
            }
        }
    }
}

/// Marks claimed `entries` of folder `name` seen by a reader in the engine, then releases
/// the claims. A failed write releases them too (they may be claimed again: at worst two
/// sessions show one message as recent, which RFC 3501 prefers to none).
pub async fn persist(ctx: &Context, name: &str, entries: Vec<EntryId>) {
    if entries.is_empty() {
        return;
    }
    let written = ctx
        .mailbox
        .set_flags_present(name, &entries, FlagMode::Add, &Flags::default(), true)
        .await;
    if let Err(e) = &written {
        tracing::debug!(error = %e, "marking recent messages seen by a reader");
    }
    ctx.recent.release(&entries, written.is_ok());
}

/// [`persist`] in the background (from the synchronous update path).
pub fn persist_later(ctx: &Arc<Context>, name: String, entries: Vec<EntryId>) {
    if entries.is_empty() {
        return;
    }
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move { persist(&ctx, &name, entries).await });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::OpId;

    fn id(n: u64) -> EntryId {
        OpId {
            device: 1,
            seq: n,
            idx: 0,
        }
    }

    #[test]
    fn a_message_is_claimed_by_one_session_only() {
        let c = Claims::default();
        assert_eq!(c.claim(&[id(1), id(2)]), vec![id(1), id(2)]);
        assert_eq!(
            c.claim(&[id(2), id(3)]),
            vec![id(3)],
            "2 is the first session's"
        );
        assert_eq!(c.unclaimed(&[id(1), id(4)]), vec![id(4)]);
        c.release(&[id(1), id(2), id(3)], true);
        assert!(
            c.inner.lock().unwrap().pending.is_empty(),
            "released after the write"
        );
    }

    #[test]
    fn a_claim_from_a_read_before_the_write_landed_still_fails() {
        let c = Claims::default();
        assert_eq!(c.claim(&[id(3)]), vec![id(3)]);
        c.release(&[id(3)], true);
        // Another session read message 3 as recent before that write: too late.
        assert!(c.claim(&[id(3)]).is_empty(), "recent in one session only");
        assert!(c.unclaimed(&[id(3)]).is_empty());
        // A failed write gives it back.
        assert_eq!(c.claim(&[id(4)]), vec![id(4)]);
        c.release(&[id(4)], false);
        assert_eq!(c.claim(&[id(4)]), vec![id(4)]);
    }

    #[test]
    fn taken_claims_are_bounded() {
        let c = Claims::default();
        for n in 0..(TAKEN as u64 + 10) {
            assert_eq!(c.claim(&[id(n)]), vec![id(n)]);
            c.release(&[id(n)], true);
        }
        let g = c.inner.lock().unwrap();
        assert_eq!((g.taken.len(), g.taken_set.len()), (TAKEN, TAKEN));
        assert!(!g.taken_set.contains(&id(0)), "the oldest are forgotten");
    }
}
