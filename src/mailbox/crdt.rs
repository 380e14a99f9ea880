//! The merge: a state that every op updates commutatively and idempotently, so the mailbox is
//! a function of the *set* of ops, whatever order the devices' logs arrive in.
//!
//! * Folder membership is an observed-remove set: an entry (a message in a folder) is live
//!   once its `Add` is known and no `Remove` (or `DeleteFolder` that observed it) is. A remove
//!   that arrives before its add is kept as a tombstone.
//! * Each flag of each entry is a last-writer-wins register ordered by [`Stamp`] (hybrid
//!   logical clock, then op id: a total order). Flag ops on an unknown entry wait for it.
//! * A folder's name and subscription are last-writer-wins registers; a deleted folder stays
//!   visible while it holds entries the delete did not observe (adds win over deletes, so
//!   concurrent mail is never lost).
//!
//! Consequences users see: expunge vs. concurrent flag change → expunged; move vs. concurrent
//! move of one message → a copy in each target (nothing lost); rename vs. concurrent append →
//! the message is in the renamed folder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::model::{EntryId, Flag, Flags, FolderId, MessageRef, Op, OpId, Role};

/// Orders concurrent writes: hybrid logical clock first, then the op id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    pub hlc: u64,
    pub op: (u64, u64, u32),
}

impl Stamp {
    pub fn new(hlc: u64, op: OpId) -> Stamp {
        Stamp {
            hlc,
            op: (op.device, op.seq, op.idx),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lww<T> {
    value: T,
    stamp: Stamp,
}

impl<T> Lww<T> {
    fn update(&mut self, value: T, stamp: Stamp) -> bool {
        if stamp > self.stamp {
            self.value = value;
            self.stamp = stamp;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
struct FolderRec {
    created: bool,
    role: Option<Role>,
    name: Lww<String>,
    subscribed: Lww<bool>,
    deleted: Option<Stamp>,
}

impl FolderRec {
    fn new() -> FolderRec {
        FolderRec {
            created: false,
            role: None,
            name: Lww {
                value: String::new(),
                stamp: Stamp::default(),
            },
            subscribed: Lww {
                value: false,
                stamp: Stamp::default(),
            },
            deleted: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EntryRec {
    pub folder: FolderId,
    pub message: Arc<MessageRef>,
    /// When the entry was added (the add's stamp).
    pub added: Stamp,
}

/// An entry's flag registers. The six system flags are six last-writer-wins registers (value,
/// stamp), stored compactly: nearly every entry's were all assigned once, by its add, at one
/// stamp, so one stamp stands for all of them until a later op assigns one differently
/// (then each gets its own). 72 bytes instead of 272 per message.
#[derive(Debug, Clone, Default)]
struct FlagRegs {
    /// Register values, bit per [`Flag`].
    on: u8,
    /// Registers assigned at all (the others are empty: any assignment wins).
    assigned: u8,
    /// "Seen by a mail reader" (moved from new/ to cur/): a grow-only flag.
    seen_by_reader: bool,
    stamps: SysStamps,
    keywords: BTreeMap<String, (bool, Stamp)>,
}

/// The stamps of the assigned system registers.
#[derive(Debug, Clone)]
enum SysStamps {
    /// Every assigned register has this stamp.
    One(Stamp),
    /// Per register, by [`Flag`] (entries of unassigned registers mean nothing).
    Each(Box<[Stamp; 6]>),
}

impl Default for SysStamps {
    fn default() -> SysStamps {
        SysStamps::One(Stamp::default())
    }
}

impl FlagRegs {
    /// A system register: (value, stamp), `None` if never assigned.
    fn sys(&self, f: Flag) -> Option<(bool, Stamp)> {
        let bit = f.bit();
        if self.assigned & bit == 0 {
            return None;
        }
        let stamp = match &self.stamps {
            SysStamps::One(s) => *s,
            SysStamps::Each(a) => a[f as usize],
        };
        Some((self.on & bit != 0, stamp))
    }

    fn assign_sys(&mut self, f: Flag, on: bool, stamp: Stamp) -> bool {
        if let Some((_, s)) = self.sys(f)
            && s >= stamp
        {
            return false;
        }
        let bit = f.bit();
        match &mut self.stamps {
            SysStamps::One(s) if *s == stamp || self.assigned & !bit == 0 => *s = stamp,
            SysStamps::One(s) => {
                let mut each = Box::new([*s; 6]);
                each[f as usize] = stamp;
                self.stamps = SysStamps::Each(each);
            }
            SysStamps::Each(a) => a[f as usize] = stamp,
        }
        self.assigned |= bit;
        if on {
            self.on |= bit;
        } else {
            self.on &= !bit;
        }
        true
    }

    fn assign_kw(&mut self, k: &str, on: bool, stamp: Stamp) -> bool {
        match self.keywords.get(k) {
            Some((_, s)) if *s >= stamp => false,
            _ => {
                self.keywords.insert(k.to_string(), (on, stamp));
                true
            }
        }
    }
}

/// What changed when an op was applied (drives the change feed and UID assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    FoldersChanged,
    EntryAdded(EntryId),
    EntryRemoved(EntryId, FolderId),
    FlagsChanged(EntryId),
}

/// The merged mailbox.
#[derive(Debug, Clone, Default)]
pub struct State {
    folders: HashMap<FolderId, FolderRec>,
    entries: HashMap<EntryId, EntryRec>,
    removed: HashSet<EntryId>,
    flags: HashMap<EntryId, FlagRegs>,
    /// Live entries per folder (derived index).
    by_folder: HashMap<FolderId, HashSet<EntryId>>,
}

/// A folder as the views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderView {
    pub id: FolderId,
    pub name: String,
    pub role: Option<Role>,
    pub subscribed: bool,
}

impl State {
    /// Applies one op (identified by `id`, written at `hlc`); returns what changed.
    pub fn apply(&mut self, id: OpId, hlc: u64, op: &Op) -> Vec<Effect> {
        let stamp = Stamp::new(hlc, id);
        let mut fx = Vec::new();
        match op {
            Op::CreateFolder { folder, name, role } => {
                let rec = self.folders.entry(*folder).or_insert_with(FolderRec::new);
                rec.created = true;
                if role.is_some() {
                    rec.role = *role;
                }
                rec.name.update(name.clone(), stamp);
                // Creating subscribes (like IMAP clients expect of new folders).
                rec.subscribed.update(true, stamp);
                fx.push(Effect::FoldersChanged);
            }
            Op::RenameFolder { folder, name } => {
                let rec = self.folders.entry(*folder).or_insert_with(FolderRec::new);
                if rec.name.update(name.clone(), stamp) {
                    fx.push(Effect::FoldersChanged);
                }
            }
            Op::DeleteFolder { folder, observed } => {
                let rec = self.folders.entry(*folder).or_insert_with(FolderRec::new);
                rec.deleted = Some(rec.deleted.map_or(stamp, |d| d.max(stamp)));
                fx.push(Effect::FoldersChanged);
                for e in observed {
                    if let Some(f) = self.remove_entry(*e) {
                        fx.push(Effect::EntryRemoved(*e, f));
                    }
                }
            }
            Op::Subscribe { folder, subscribed } => {
                let rec = self.folders.entry(*folder).or_insert_with(FolderRec::new);
                if rec.subscribed.update(*subscribed, stamp) {
                    fx.push(Effect::FoldersChanged);
                }
            }
            Op::Add {
                folder,
                message,
                flags,
                recent,
            } => {
                if self.entries.contains_key(&id) {
                    return fx;
                }
                self.entries.insert(
                    id,
                    EntryRec {
                        folder: *folder,
                        message: Arc::new(message.clone()),
                        added: stamp,
                    },
                );
                // The add's flags are assignments at the add's stamp.
                let regs = self.flags.entry(id).or_default();
                for f in Flag::ALL {
                    regs.assign_sys(f, flags.has(f), stamp);
                }
                for k in &flags.keywords {
                    regs.assign_kw(k, true, stamp);
                }
                if !recent {
                    regs.seen_by_reader = true;
                }
                if !self.removed.contains(&id) {
                    self.by_folder.entry(*folder).or_default().insert(id);
                    fx.push(Effect::EntryAdded(id));
                }
            }
            Op::Remove { entries } => {
                for e in entries {
                    if let Some(f) = self.remove_entry(*e) {
                        fx.push(Effect::EntryRemoved(*e, f));
                    }
                }
            }
            Op::SetFlags {
                entries,
                set,
                clear,
                set_keywords,
                clear_keywords,
                seen_by_reader,
            } => {
                for e in entries {
                    let regs = self.flags.entry(*e).or_default();
                    let mut changed = false;
                    for f in Flag::ALL {
                        if set & f.bit() != 0 {
                            changed |= regs.assign_sys(f, true, stamp);
                        } else if clear & f.bit() != 0 {
                            changed |= regs.assign_sys(f, false, stamp);
                        }
                    }
                    for k in set_keywords {
                        changed |= regs.assign_kw(k, true, stamp);
                    }
                    for k in clear_keywords {
                        changed |= regs.assign_kw(k, false, stamp);
                    }
                    if *seen_by_reader && !regs.seen_by_reader {
                        regs.seen_by_reader = true;
                        changed = true;
                    }
                    if changed && self.is_live(*e) {
                        fx.push(Effect::FlagsChanged(*e));
                    }
                }
            }
        }
        fx
    }

    /// Tombstones an entry; returns its folder if it was live.
    fn remove_entry(&mut self, e: EntryId) -> Option<FolderId> {
        let was_live = self.is_live(e);
        self.removed.insert(e);
        if was_live {
            let folder = self.entries.get(&e)?.folder;
            if let Some(set) = self.by_folder.get_mut(&folder) {
                set.remove(&e);
            }
            Some(folder)
        } else {
            None
        }
    }

    /// Whether a create of this folder has been seen (visible or not).
    pub fn knows_folder(&self, id: FolderId) -> bool {
        self.folders.get(&id).is_some_and(|f| f.created)
    }

    pub fn is_live(&self, e: EntryId) -> bool {
        self.entries.contains_key(&e) && !self.removed.contains(&e)
    }

    pub fn entry(&self, e: EntryId) -> Option<&EntryRec> {
        self.entries.get(&e).filter(|_| !self.removed.contains(&e))
    }

    /// The current flags of an entry.
    pub fn flags(&self, e: EntryId) -> Flags {
        let mut out = Flags::default();
        if let Some(regs) = self.flags.get(&e) {
            for f in Flag::ALL {
                if let Some((true, _)) = regs.sys(f) {
                    out.set(f, true);
                }
            }
            out.keywords = regs
                .keywords
                .iter()
                .filter(|(_, (on, _))| *on)
                .map(|(k, _)| k.clone())
                .collect();
        }
        out
    }

    /// Still in `new/`: no mail reader has seen it.
    pub fn recent(&self, e: EntryId) -> bool {
        !self.flags.get(&e).is_some_and(|r| r.seen_by_reader)
    }

    /// Live entries of a folder.
    pub fn entries_in(&self, folder: FolderId) -> impl Iterator<Item = EntryId> + '_ {
        self.by_folder.get(&folder).into_iter().flatten().copied()
    }

    pub fn count_in(&self, folder: FolderId) -> usize {
        self.by_folder.get(&folder).map_or(0, HashSet::len)
    }

    /// Visible folders, INBOX first then by name. Duplicate names (two devices created the
    /// same name concurrently) are made unique deterministically: the folder with the lowest
    /// id keeps the name, the others get " (2)", " (3)", … in id order.
    pub fn folders(&self) -> Vec<FolderView> {
        let mut v: Vec<FolderView> = self
            .folders
            .iter()
            .filter(|(id, f)| {
                (f.created || self.count_in(**id) > 0)
                    && (f.deleted.is_none() || self.count_in(**id) > 0)
            })
            .map(|(id, f)| FolderView {
                id: *id,
                name: if f.name.value.is_empty() {
                    format!("Lost+Found {id}")
                } else {
                    f.name.value.clone()
                },
                role: f.role,
                subscribed: f.subscribed.value,
            })
            .collect();
        v.sort_by(|a, b| (a.name.as_str(), a.id).cmp(&(b.name.as_str(), b.id)));
        let mut seen: HashMap<String, u32> = HashMap::new();
        for f in &mut v {
            if f.role == Some(Role::Inbox) {
                f.name = "INBOX".into();
            }
            let n = seen.entry(f.name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                f.name = format!("{} ({})", f.name, n);
            }
        }
        v.sort_by(|a, b| {
            (a.role != Some(Role::Inbox), a.name.as_str())
                .cmp(&(b.role != Some(Role::Inbox), b.name.as_str()))
        });
        v
    }

    /// Deleted folders still subscribed, by id and name (no visible folder has the name):
    /// IMAP lists them `\NonExistent` (RFC 5258) / `\Noselect` in LSUB. Sorted by name (two
    /// deleted folders may share one). The names are the folders' last names, kept in the
    /// records already (no new format).
    pub fn subscribed_deleted(&self) -> Vec<(FolderId, String)> {
        let live: HashSet<String> = self.folders().into_iter().map(|f| f.name).collect();
        let mut v: Vec<(FolderId, String)> = self
            .folders
            .iter()
            .filter(|(id, f)| {
                f.deleted.is_some()
                    && self.count_in(**id) == 0
                    && f.subscribed.value
                    && !f.name.value.is_empty()
                    && !live.contains(&f.name.value)
            })
            .map(|(id, f)| (*id, f.name.value.clone()))
            .collect();
        v.sort_by(|a, b| (a.1.as_str(), a.0).cmp(&(b.1.as_str(), b.0)));
        v
    }

    /// A canonical description of the whole mailbox, for comparing devices in tests:
    /// folder name → sorted (object id, flags) of its live entries.
    pub fn canonical(&self) -> BTreeMap<String, Vec<(String, String, bool)>> {
        let mut out = BTreeMap::new();
        for f in self.folders() {
            let mut msgs: Vec<(String, String, bool)> = self
                .entries_in(f.id)
                .map(|e| {
                    let fl = self.flags(e);
                    let kws: Vec<_> = fl.keywords.iter().cloned().collect();
                    (
                        format!("{}@{}", self.entries[&e].message.object, e),
                        format!("{} {}", fl.letters(), kws.join(",")),
                        self.recent(e),
                    )
                })
                .collect();
            msgs.sort();
            out.insert(
                format!(
                    "{}{}",
                    f.name,
                    if f.subscribed { "" } else { " (unsubscribed)" }
                ),
                msgs,
            );
        }
        out
    }
}

#[cfg(test)]
mod flag_regs_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The compact registers answer every assignment and read as six separate
        /// (value, stamp) registers do (the form they replaced).
        #[test]
        fn compact_registers_agree_with_six_separate_ones(
            ops in proptest::collection::vec((0..6usize, any::<bool>(), 0..4u64, 0..3u64), 0..40)
        ) {
            let mut regs = FlagRegs::default();
            let mut model: [Option<(bool, Stamp)>; 6] = [None; 6];
            for (f, on, hlc, seq) in ops {
                let flag = Flag::ALL[f];
                let stamp = Stamp { hlc, op: (1, seq, 0) };
                let want = match model[f] {
                    Some((_, s)) if s >= stamp => false,
                    _ => {
                        model[f] = Some((on, stamp));
                        true
                    }
                };
                prop_assert_eq!(regs.assign_sys(flag, on, stamp), want);
                for g in Flag::ALL {
                    prop_assert_eq!(regs.sys(g), model[g as usize]);
                }
            }
        }
    }

    #[test]
    fn an_add_keeps_one_stamp_for_all_six() {
        let mut regs = FlagRegs::default();
        let stamp = Stamp {
            hlc: 5,
            op: (1, 1, 0),
        };
        for f in Flag::ALL {
            regs.assign_sys(f, f == Flag::Seen, stamp);
        }
        assert!(matches!(regs.stamps, SysStamps::One(s) if s == stamp));
        assert!(std::mem::size_of::<FlagRegs>() <= 80);
    }
}
