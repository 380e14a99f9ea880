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
use crate::crypto::device_list::{DeviceList, STORE_KEY};
use crate::durability::codec::ReedSolomon8;
use crate::durability::ring;
use crate::overlay;
use crate::store::{self, Table};

/// Who backs the user's mailbox up now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// This device: no root yet, its own is the newest, the newest is stale, or the newest
    /// does not name every bundle this device placed.
    Mine,
    /// Another device (`device`, when its index names it) published the fresh root `seq`,
    /// whose index names every bundle this device placed.
    Theirs { device: Option<[u8; 32]>, seq: u64 },
    /// The user's device list names this device removed or revoked: it backs up no more.
    Removed,
}

/// Roots of the user looked at, newest first, at most: past roots of devices the list no
/// longer names live (each costs an index fetch).
const MAX_ROOTS: usize = 4;

/// What the election knows of this device.
pub(super) struct Voter<'a> {
    pub me: Option<[u8; 32]>,
    /// The user's signed device list as this store holds it (`None`: never had one).
    pub list: Option<&'a DeviceList>,
    /// Seq of the root this device last published.
    pub ours: Option<u64>,
    /// Bundles this device placed itself.
    pub own: &'a [ObjectId],
    pub now: u64,
    pub takeover_after: Duration,
}

impl Voter<'_> {
    /// Whether a root whose index names `device` counts: published by a device the list
    /// names live. An index that names no device (before index v3: one device per user) or
    /// a store without a list counts.
    pub fn counts(&self, device: Option<&[u8; 32]>) -> bool {
        match (self.list, device) {
            (Some(list), Some(d)) => list.is_live(d),
            _ => true,
        }
    }

    /// Whether the list says this device was removed or revoked.
    pub fn removed(&self) -> bool {
        match (self.list, self.me) {
            (Some(list), Some(me)) => list.devices.contains_key(&me) && !list.is_live(&me),
            _ => false,
        }
    }

    /// Whether the root of `seq` is no later than this device's own last root.
    pub fn ours_is_newer(&self, seq: u64) -> bool {
        self.ours.is_some_and(|s| s >= seq)
    }

    /// Decides over the user's roots, newest first, each with its index, as far as they were
    /// read (`roots` may stop at the first that counts). Returns the turn and, when an
    /// index's bundles are to be adopted, its position in `roots`. Roots of devices the list
    /// no longer names live are passed over as if absent: a removed device (it still holds
    /// the user key) cannot keep a listed one waiting, nor hide its bundles.
    pub fn elect(&self, roots: &[(u64, &Index)]) -> (Turn, Option<usize>) {
        if self.removed() {
            return (Turn::Removed, None);
        }
        for (i, (seq, index)) in roots.iter().enumerate() {
            if self.ours_is_newer(*seq) {
                return (Turn::Mine, None);
            }
            if self.me.is_some() && index.device == self.me {
                // This device's own root, from before its store was reset: take it up again.
                return (Turn::Mine, Some(i));
            }
            if !self.counts(index.device.as_ref()) {
                continue;
            }
            let fresh = self.now.saturating_sub(*seq) < self.takeover_after.as_secs();
            let named: HashSet<ObjectId> = index.entries.iter().map(|e| e.receipt.bundle).collect();
            let covered = self.own.iter().all(|b| named.contains(b));
            let turn = if fresh && covered {
                Turn::Theirs {
                    device: index.device,
                    seq: *seq,
                }
            } else {
                Turn::Mine
            };
            return (turn, Some(i));
        }
        // No root, or only roots of devices no longer live: this device backs up, with the
        // adopted set it already had (what the last counted index named).
        (Turn::Mine, None)
    }
}

/// How often the backing-up device republishes its root when nothing else does: a quarter of
/// the time after which the others take over, at least a second.
pub fn heartbeat(takeover_after: Duration) -> Duration {
    (takeover_after / 4).max(Duration::from_secs(1))
}

impl Backup {
    /// The user's device list as this store holds it (the devices module keeps it there);
    /// one that does not verify is ignored (logged).
    async fn device_list(&self) -> Result<Option<DeviceList>, Error> {
        let bytes = self
            .store
            .read(|rx| -> store::Result<_> { rx.get(Table::Sync, STORE_KEY) })
            .await?;
        Ok(
            bytes.and_then(|b| match DeviceList::open(&b, self.keys.public()) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!("backup: the stored device list does not verify: {e}");
                    None
                }
            }),
        )
    }

    /// Looks at the user's newest roots and says whose turn it is. A root of another device is
    /// opened and its index read (once per index: the index is cached by bundle id); what the
    /// newest root of a live device names becomes this device's adopted set, so an index this
    /// device publishes later names it too. Roots of removed or revoked devices are passed
    /// over ([`Voter::elect`]); a device the list names removed backs up no more.
    pub async fn turn(&self, takeover_after: Duration) -> Result<Turn, Error> {
        let list = self.device_list().await?;
        let ours = state(&self.store).await?.map(|(s, _)| s);
        let own: Vec<ObjectId> = entries(&self.store)
            .await?
            .iter()
            .map(|e| e.receipt.bundle)
            .collect();
        let voter = Voter {
            me: self.device,
            list: list.as_ref(),
            ours,
            own: &own,
            now: overlay::now_secs(),
            takeover_after,
        };
        if voter.removed() {
            return Ok(Turn::Removed);
        }
        let roots = self.client.backup_roots(&self.keys.public().sign).await?;
        let mut read: Vec<(u64, Index)> = Vec::new();
        // Several holders answer with the same root: each counts once.
        let mut distinct = roots.iter().collect::<Vec<_>>();
        distinct.dedup_by_key(|r| r.seq);
        for root in distinct.into_iter().take(MAX_ROOTS) {
            // Every root seen, counted or not, is one a new root of this device goes above.
            self.seen_seq.fetch_max(root.seq, Ordering::Relaxed);
            if voter.ours_is_newer(root.seq) {
                break;
            }
            let entry = open_root(root, &self.key)?;
            let index = self.foreign_index(&entry).await?;
            let counts = voter.counts(index.device.as_ref());
            if !counts {
                tracing::info!(
                    "backup: passing over root {} of device {}: the list does not name it live",
                    root.seq,
                    index
                        .device
                        .map_or("(unnamed)".to_string(), |d| crate::crypto::hex(&d[..8]))
                );
            }
            read.push((root.seq, index));
            if counts {
                break;
            }
        }
        let view: Vec<(u64, &Index)> = read.iter().map(|(s, i)| (*s, i)).collect();
        let (turn, adopt) = voter.elect(&view);
        if let Some(i) = adopt {
            set_adopted(&self.store, &read[i].1.entries).await?;
        }
        Ok(turn)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::device_list::DeviceState;
    use crate::durability::backup::Kind;
    use crate::durability::params::Params;
    use crate::durability::ring::Receipt;

    const NOW: u64 = 1_800_000_000;
    const TAKEOVER: Duration = Duration::from_secs(3 * 3600);
    const ME: [u8; 32] = [1; 32];
    const OTHER: [u8; 32] = [2; 32];
    const GONE: [u8; 32] = [3; 32];

    fn bundle(id: u8) -> Entry {
        Entry {
            kind: Kind::Bodies,
            objects: 1,
            bytes: 100,
            receipt: Receipt {
                bundle: ObjectId([id; 32]),
                params: Params { n: 1, k: 1 },
                blobs: vec![[id; 32]],
                holders: vec![None],
                stored: 1,
            },
        }
    }

    fn index(device: Option<[u8; 32]>, bundles: &[u8]) -> Index {
        Index {
            created: NOW,
            address: None,
            device,
            entries: bundles.iter().map(|b| bundle(*b)).collect(),
        }
    }

    /// ME and OTHER live; GONE removed (or revoked) after its last entry.
    fn list(gone: DeviceState) -> DeviceList {
        let mut l = DeviceList::default();
        for d in [ME, OTHER, GONE] {
            l.add(d, NOW - 100).unwrap();
        }
        l.remove(GONE, gone, 7, NOW - 50).unwrap();
        l
    }

    fn voter<'a>(list: Option<&'a DeviceList>, own: &'a [ObjectId]) -> Voter<'a> {
        Voter {
            me: Some(ME),
            list,
            ours: None,
            own,
            now: NOW,
            takeover_after: TAKEOVER,
        }
    }

    /// A fresh root of a removed or revoked device, naming every bundle this device placed,
    /// does not keep it waiting: it is passed over as absent, and the newest root of a live
    /// device decides (whose bundles are adopted); with none, this device backs up, keeping
    /// the adopted set it had. Without a device list (one device) every root counts.
    #[test]
    fn a_root_of_an_unlisted_device_does_not_block_a_listed_one() {
        let own = [ObjectId([10; 32])];
        for gone in [DeviceState::Removed, DeviceState::Revoked] {
            let l = list(gone);
            let v = voter(Some(&l), &own);
            let forged = index(Some(GONE), &[10, 20]);
            // Alone: this device backs up, and adopts nothing of the forged index.
            assert_eq!(v.elect(&[(NOW - 1, &forged)]), (Turn::Mine, None));
            // Behind it, a fresh root of the other live device that names our bundle: that
            // one decides (it backs up, we wait and adopt its bundles).
            let live = index(Some(OTHER), &[10, 30]);
            assert_eq!(
                v.elect(&[(NOW - 1, &forged), (NOW - 60, &live)]),
                (
                    Turn::Theirs {
                        device: Some(OTHER),
                        seq: NOW - 60
                    },
                    Some(1)
                )
            );
            // A stale live root behind it: this device takes over and adopts its bundles.
            let stale = NOW - TAKEOVER.as_secs() - 1;
            assert_eq!(
                v.elect(&[(NOW - 1, &forged), (stale, &live)]),
                (Turn::Mine, Some(1))
            );
            // Our own last root is newer than anything behind the forged one.
            let mine = Voter {
                ours: Some(NOW - 30),
                ..voter(Some(&l), &own)
            };
            assert_eq!(
                mine.elect(&[(NOW - 1, &forged), (NOW - 60, &live)]),
                (Turn::Mine, None)
            );
        }
        // A device that never had a list (or an index from before v3, naming no device)
        // counts as before: the fresh covering root keeps this device waiting.
        let v = voter(None, &own);
        let theirs = index(Some(GONE), &[10]);
        assert!(matches!(
            v.elect(&[(NOW - 1, &theirs)]).0,
            Turn::Theirs { .. }
        ));
        let l = list(DeviceState::Removed);
        let v = voter(Some(&l), &own);
        let unnamed = index(None, &[10]);
        assert!(matches!(
            v.elect(&[(NOW - 1, &unnamed)]).0,
            Turn::Theirs { device: None, .. }
        ));
    }

    /// A device the list names removed or revoked backs up no more, whatever the roots say.
    #[test]
    fn a_removed_device_stops_backing_up() {
        let own = [ObjectId([10; 32])];
        for gone in [DeviceState::Removed, DeviceState::Revoked] {
            let l = list(gone);
            let v = Voter {
                me: Some(GONE),
                ..voter(Some(&l), &own)
            };
            assert!(v.removed());
            assert_eq!(v.elect(&[]), (Turn::Removed, None));
            let own_root = index(Some(GONE), &[10]);
            assert_eq!(v.elect(&[(NOW - 1, &own_root)]), (Turn::Removed, None));
        }
        // A live device, or one the list does not name yet (its first run adds it), does.
        let l = list(DeviceState::Removed);
        assert!(!voter(Some(&l), &own).removed());
        let newcomer = Voter {
            me: Some([9; 32]),
            ..voter(Some(&l), &own)
        };
        assert!(!newcomer.removed());
        assert_eq!(newcomer.elect(&[]), (Turn::Mine, None));
    }
}
