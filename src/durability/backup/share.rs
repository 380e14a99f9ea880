//! One backup per user whatever the number of devices (issue #15): the device that published
//! the newest root backs up; the others wait while that root stays fresh, and take over when
//! it goes stale (the device is gone) or when it does not name every bundle they placed (two
//! devices started at once). A device that publishes lists in its index, beside its own
//! bundles, every bundle the previous root's index named (*adopted*, never released by its
//! passes), so no root hides bundles of another device. docs/design.md, "Backup", "One backup
//! per user".

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Backup, Entry, Error, Index, decode_index, entries, open_root, set_adopted, state};
use crate::crypto::ObjectId;
use crate::durability::codec::ReedSolomon8;
use crate::durability::ring;
use crate::overlay;

/// Who backs the user's mailbox up now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// This device: no root yet, its own is the newest, the newest is stale, or the newest
    /// does not name every bundle this device placed.
    Mine,
    /// Another device (`device`, when its index names it) published the fresh root `seq`,
    /// whose index names every bundle this device placed.
    Theirs { device: Option<[u8; 32]>, seq: u64 },
}

/// How often the backing-up device republishes its root when nothing else does: a quarter of
/// the time after which the others take over, at least a second.
pub fn heartbeat(takeover_after: Duration) -> Duration {
    (takeover_after / 4).max(Duration::from_secs(1))
}

impl Backup {
    /// Looks at the user's newest root and says whose turn it is. A root of another device is
    /// opened and its index read (once per index: the index is cached by bundle id); what it
    /// names becomes this device's adopted set, so an index this device publishes later
    /// names it too.
    pub async fn turn(&self, takeover_after: Duration) -> Result<Turn, Error> {
        let roots = self.client.backup_roots(&self.keys.public().sign).await?;
        let Some(root) = roots.first() else {
            return Ok(Turn::Mine);
        };
        self.seen_seq.fetch_max(root.seq, Ordering::Relaxed);
        let ours = state(&self.store).await?.map(|(s, _)| s);
        if ours.is_some_and(|s| s >= root.seq) {
            return Ok(Turn::Mine);
        }
        let entry = open_root(root, &self.key)?;
        let index = self.foreign_index(&entry).await?;
        if self.device.is_some() && index.device == self.device {
            // This device's own root, from before its store was reset: take it up again.
            set_adopted(&self.store, &index.entries).await?;
            return Ok(Turn::Mine);
        }
        set_adopted(&self.store, &index.entries).await?;
        let fresh = overlay::now_secs().saturating_sub(root.seq) < takeover_after.as_secs();
        let named: HashSet<ObjectId> = index.entries.iter().map(|e| e.receipt.bundle).collect();
        let covered = entries(&self.store)
            .await?
            .iter()
            .all(|e| named.contains(&e.receipt.bundle));
        Ok(if fresh && covered {
            Turn::Theirs {
                device: index.device,
                seq: root.seq,
            }
        } else {
            Turn::Mine
        })
    }

    async fn foreign_index(&self, entry: &Entry) -> Result<Index, Error> {
        if let Ok(cache) = self.foreign.lock()
            && let Some((id, index)) = cache.as_ref()
            && *id == entry.receipt.bundle
        {
            return Ok(index.clone());
        }
        let objects = ring::fetch(&self.client, &ReedSolomon8, &entry.receipt).await?;
        let plain = objects
            .first()
            .ok_or(Error::Decode(crate::wire::DecodeError::Invalid {
                field: "index bundle",
                why: "empty",
            }))?
            .open(&self.key)?;
        let index = decode_index(&plain)?;
        if let Ok(mut cache) = self.foreign.lock() {
            *cache = Some((entry.receipt.bundle, index.clone()));
        }
        Ok(index)
    }

    /// The seq a new root gets: after this device's last and every root it has seen.
    pub(super) async fn next_seq(&self, now: u64) -> Result<u64, Error> {
        let prev = state(&self.store)
            .await?
            .map_or(0, |(s, _)| s)
            .max(self.seen_seq.load(Ordering::Relaxed));
        Ok(now.max(prev + 1))
    }
}
