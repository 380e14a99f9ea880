//! `\Recent` (RFC 3501 §2.3.2): a message is recent in exactly one session, the first one
//! told of it (a SELECT, or new mail while selected); EXAMINE shows recent messages without
//! claiming them. The engine keeps "not yet seen by a reader" per message (Maildir's new/);
//! a session claims such messages here first (so two sessions of this process never both
//! take one), then has the engine mark them seen by a reader (so no later session, nor this
//! node after a restart, takes them again) and lets go of the claim. Bounded: a claim lives
//! until its write is done.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::Context;
use crate::mailbox::{EntryId, FlagMode, Flags};

#[derive(Debug, Default)]
pub struct Claims {
    /// Claimed by a session, not yet marked seen by a reader in the engine.
    pending: Mutex<HashSet<EntryId>>,
}

impl Claims {
    /// Of `candidates` (recent in the engine), those no other session has claimed: now this
    /// caller's.
    pub fn claim(&self, candidates: &[EntryId]) -> Vec<EntryId> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        candidates
            .iter()
            .copied()
            .filter(|e| p.insert(*e))
            .collect()
    }

    /// Of `candidates`, those nobody has claimed (what EXAMINE shows as recent).
    pub fn unclaimed(&self, candidates: &[EntryId]) -> Vec<EntryId> {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        candidates
            .iter()
            .copied()
            .filter(|e| !p.contains(e))
            .collect()
    }

    fn release(&self, entries: &[EntryId]) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            p.remove(e);
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
    if let Err(e) = ctx
        .mailbox
        .set_flags_present(name, &entries, FlagMode::Add, &Flags::default(), true)
        .await
    {
        tracing::debug!(error = %e, "marking recent messages seen by a reader");
    }
    ctx.recent.release(&entries);
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
        c.release(&[id(1), id(2), id(3)]);
        assert!(
            c.pending.lock().unwrap().is_empty(),
            "bounded: released after the write"
        );
    }
}
