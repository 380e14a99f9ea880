//! The mailbox engine: folders, messages, flags, IMAP UIDs, and the per-device op logs whose
//! merge *is* the mailbox.
//!
//! * Every change is an [`Op`](model::Op) in a log entry of this device, sealed with the user's
//!   log key and signed with the user key ([`log`]), committed durably before the call
//!   returns. The state is the commutative merge of all entries of all the user's devices
//!   ([`crdt`]), so devices converge whatever order entries arrive in.
//! * Message bodies are sealed objects in the store (the same ciphertext the overlay will
//!   hold), opened on read through a bounded cache.
//! * UIDs, UIDVALIDITY and MODSEQ are this device's own numbering (RFC 3501 allows nothing
//!   else for a merged mailbox): persisted, strictly increasing, never reused.
//! * Several processes of one device may open the same store (e.g. `peerpost sync` beside
//!   another command): sequence numbers and UIDs are allocated inside LMDB transactions, and
//!   [`Mailbox::refresh`] picks up what the others wrote.
//! * Subscribers get a bounded feed of [`Change`]s; one that lags is told so and re-lists.

pub mod cache;
pub mod crdt;
pub mod fs_source;
pub mod limits;
pub mod log;
pub mod maildir;
pub mod model;
pub mod readahead;
#[cfg(test)]
mod tests;
pub mod transfer;
pub mod tree;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;
use tokio::sync::broadcast;

use crate::crypto::{self, ContentKey, ObjectId, SealedObject, UserKeys, UserPublicKeys};
use crate::store::{self, Store, Table, Tx};
use crate::wire::DecodeError;
use cache::Cache;
use crdt::{Effect, State};
use log::LogEntry;
pub use model::{DeviceId, EntryId, Flag, Flags, FolderId, MessageRef, Op, OpId, Role};

/// A caller's write that joins a mailbox commit ([`Mailbox::append_with`]).
pub type AlsoWrite = Box<dyn FnOnce(&mut Tx<'_, '_>) -> store::Result<()> + Send + 'static>;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("crypto: {0}")]
    Crypto(#[from] crypto::Error),
    #[error("malformed log data: {0}")]
    Decode(#[from] DecodeError),
    #[error("corrupt mailbox data: {0}")]
    Corrupt(String),
    #[error("no folder named {0:?}")]
    NoSuchFolder(String),
    #[error("a folder named {0:?} already exists")]
    FolderExists(String),
    #[error("invalid folder name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("no such message")]
    NoSuchMessage,
    #[error("the message is empty")]
    Empty,
    #[error("the message is {size} bytes, over the limit of {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("the content of message {0} is missing from the local store")]
    ContentMissing(ObjectId),
    /// The user's storage in the ring is used up (durability: contribution ÷ overhead).
    /// SMTP answers 452 4.2.2 (552 5.2.2 when the message alone exceeds the quota), IMAP
    /// `NO [OVERQUOTA]`, FUSE ENOSPC.
    #[error("over quota: {used} of {quota} bytes used, {needed} more needed")]
    OverQuota { used: u64, quota: u64, needed: u64 },
    /// A change the mailbox log cannot record (over a limit of its format that splitting
    /// cannot fix, e.g. a message with more than 64 keywords); nothing was applied. IMAP
    /// answers `NO [LIMIT]` (or `[CANNOT]` for an invalid name).
    #[error("{0}")]
    Limit(#[from] limits::Unloggable),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Budget of the decrypted-message cache.
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Capacity of the change feed; a subscriber further behind than this is told it lagged.
const FEED_CAPACITY: usize = 4096;
/// Adds per log entry when appending many messages.
const BATCH: usize = 256;
/// Key of the row in `folder_uids` that remembers the last UIDVALIDITY handed out.
const LAST_UIDVALIDITY_KEY: [u8; 20] = [0xff; 20];

/// A change, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Folders were created, renamed, deleted or (un)subscribed: re-list them.
    Folders,
    Added {
        folder: FolderId,
        uid: u32,
        entry: EntryId,
    },
    Removed {
        folder: FolderId,
        uid: u32,
        entry: EntryId,
    },
    Flags {
        folder: FolderId,
        uid: u32,
        entry: EntryId,
        modseq: u64,
    },
}

/// A folder with this device's numbering and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub id: FolderId,
    pub name: String,
    pub role: Option<Role>,
    pub subscribed: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    pub exists: usize,
    pub unseen: usize,
    pub recent: usize,
}

/// A message in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub entry: EntryId,
    pub uid: u32,
    pub modseq: u64,
    pub object: ObjectId,
    pub size: u64,
    pub internal_date: i64,
    pub flags: Flags,
    /// Still in `new/` (no mail reader has seen it).
    pub recent: bool,
    pub maildir_name: String,
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub bytes: Vec<u8>,
    pub internal_date: i64,
    pub flags: Flags,
    /// Deliver to `new/` (unseen by a reader) rather than `cur/`.
    pub recent: bool,
    /// The Maildir base name to keep (an imported file's); derived when `None`.
    pub maildir_name: Option<String>,
}

/// How [`Mailbox::set_flags`] combines the given flags with the current ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagMode {
    Add,
    Remove,
    Replace,
}

/// A log entry read from the store: ((device, seq), bytes).
type LogRow = ((DeviceId, u64), Vec<u8>);

/// An entry to number: one an op of this commit creates (by its log entry in the commit and
/// its index there), or an existing one.
#[derive(Debug, Clone, Copy)]
enum Who {
    New(usize, u32),
    Entry(EntryId),
}

/// A numbering result: folder, entry, kind (0 add, 1 remove, 2 flags), uid, modseq, and the
/// folder's new head row.
type Numbered = (FolderId, EntryId, u8, u32, u64, [u8; 16]);

#[derive(Debug, Default, Clone)]
struct FolderUids {
    uidvalidity: u32,
    uidnext: u32,
    highestmodseq: u64,
    by_uid: BTreeMap<u32, EntryId>,
    by_entry: HashMap<EntryId, (u32, u64)>,
}

#[derive(Debug, Default)]
struct Engine {
    crdt: State,
    uids: HashMap<FolderId, FolderUids>,
    /// Next `log_index` position to read in `refresh`.
    cursor: u64,
    /// Log entries already applied (device, seq).
    applied: HashSet<(DeviceId, u64)>,
    hlc: u64,
}

struct Inner {
    store: Store,
    keys: UserKeys,
    log_key: ContentKey,
    public: UserPublicKeys,
    device: DeviceId,
    engine: RwLock<Engine>,
    write: tokio::sync::Mutex<()>,
    changes: broadcast::Sender<Change>,
    cache: Mutex<Cache>,
    /// Bytes of sealed bodies this user may keep (0: no limit); see [`Mailbox::set_quota`].
    quota: std::sync::atomic::AtomicU64,
}

/// A handle on the engine; cheap to clone.
#[derive(Clone)]
pub struct Mailbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mailbox(device {:016x})", self.inner.device)
    }
}

fn find(e: &Engine, name: &str) -> Option<crdt::FolderView> {
    let name = if name.eq_ignore_ascii_case("INBOX") {
        "INBOX"
    } else {
        name
    };
    e.crdt.folders().into_iter().find(|f| f.name == name)
}

fn info(e: &Engine, f: crdt::FolderView) -> FolderInfo {
    let u = e.uids.get(&f.id);
    let mut unseen = 0;
    let mut recent = 0;
    for id in e.crdt.entries_in(f.id) {
        if !e.crdt.flags(id).has(Flag::Seen) {
            unseen += 1;
        }
        if e.crdt.recent(id) {
            recent += 1;
        }
    }
    FolderInfo {
        id: f.id,
        name: f.name,
        role: f.role,
        subscribed: f.subscribed,
        uidvalidity: u.map_or(0, |u| u.uidvalidity),
        uidnext: u.map_or(1, |u| u.uidnext.max(1)),
        highestmodseq: u.map_or(0, |u| u.highestmodseq),
        exists: e.crdt.count_in(f.id),
        unseen,
        recent,
    }
}

/// A folder's first head row: a new UIDVALIDITY (above every one handed out), UIDNEXT 1.
fn fresh_head(tx: &mut Tx<'_, '_>, now: u32) -> Result<[u8; 16]> {
    let last = tx
        .get(Table::FolderUids, &LAST_UIDVALIDITY_KEY)?
        .and_then(|v| v.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0);
    let validity = now.max(last.saturating_add(1)).max(1);
    tx.put(
        Table::FolderUids,
        &LAST_UIDVALIDITY_KEY,
        &validity.to_be_bytes(),
    )?;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&validity.to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes());
    Ok(h)
}

/// Numbers entries inside a transaction: a UID for each new one (UIDVALIDITY for a folder seen
/// for the first time), a MODSEQ for each change, a "gone" mark for each removal. Rows already
/// present are reused, so numbering the same change twice (two processes) gives one answer.
fn number_rows(
    tx: &mut Tx<'_, '_>,
    work: Vec<(FolderId, EntryId, u8)>,
    now: u32,
) -> Result<Vec<Numbered>> {
    let mut out = Vec::with_capacity(work.len());
    let mut heads: HashMap<FolderId, [u8; 16]> = HashMap::new();
    for (folder, entry, kind) in work {
        let fkey = folder.to_bytes();
        let mut head = match heads.get(&folder) {
            Some(h) => *h,
            None => match tx.get(Table::FolderUids, &fkey)? {
                Some(v) if v.len() == 16 => v.try_into().unwrap_or([0; 16]),
                _ => fresh_head(tx, now)?,
            },
        };
        let mut ukey = [0u8; 40];
        ukey[..20].copy_from_slice(&fkey);
        ukey[20..].copy_from_slice(&entry.to_bytes());
        let existing = tx.get(Table::Uids, &ukey)?.filter(|v| v.len() == 13);
        // An add already numbered (by another process, or before a restart) keeps its row as
        // it is: rewriting it would dirty every page of `uids` at each start (9 MiB of page
        // copies LMDB keeps allocated, with 100k messages).
        let renumber = !(kind == 0 && existing.is_some());
        let mut uidnext = u32::from_be_bytes(head[4..8].try_into().unwrap_or([0; 4]));
        let mut modseq = u64::from_be_bytes(head[8..16].try_into().unwrap_or([0; 8]));
        let (uid, ms, gone) = match (kind, existing) {
            (0, Some(v)) => (
                u32::from_be_bytes(v[0..4].try_into().unwrap_or([0; 4])),
                u64::from_be_bytes(v[4..12].try_into().unwrap_or([0; 8])),
                v[12],
            ),
            (0, None) => {
                let uid = uidnext;
                uidnext += 1;
                modseq += 1;
                (uid, modseq, 0)
            }
            (1, Some(v)) => {
                modseq += 1;
                (
                    u32::from_be_bytes(v[0..4].try_into().unwrap_or([0; 4])),
                    modseq,
                    1,
                )
            }
            (2, Some(v)) if v[12] == 0 => {
                modseq += 1;
                (
                    u32::from_be_bytes(v[0..4].try_into().unwrap_or([0; 4])),
                    modseq,
                    0,
                )
            }
            _ => continue,
        };
        let mut row = [0u8; 13];
        row[0..4].copy_from_slice(&uid.to_be_bytes());
        row[4..12].copy_from_slice(&ms.to_be_bytes());
        row[12] = gone;
        if renumber {
            tx.put(Table::Uids, &ukey, &row)?;
        }
        head[4..8].copy_from_slice(&uidnext.to_be_bytes());
        head[8..16].copy_from_slice(&modseq.to_be_bytes());
        heads.insert(folder, head);
        out.push((folder, entry, kind, uid, ms, head));
    }
    for (folder, head) in &heads {
        tx.put(Table::FolderUids, &folder.to_bytes(), head)?;
    }
    Ok(out)
}

/// The short id of a device (first 8 bytes of BLAKE3 of its public key).
pub fn device_id(device_public: &[u8; 32]) -> DeviceId {
    let h = crypto::hash(device_public);
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a folder name: '/'-separated, no empty level, no control or IMAP wildcard character.
pub fn check_folder_name(name: &str) -> Result<()> {
    let bad = |why| Err(Error::InvalidName(name.to_string(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > model::MAX_FOLDER_NAME {
        return bad("longer than 255 bytes");
    }
    if name.chars().any(|c| c.is_control() || c == '*' || c == '%') {
        return bad("control or wildcard character");
    }
    if name.split('/').any(str::is_empty) {
        return bad("empty hierarchy level");
    }
    if name.contains('.') {
        // Maildir++ (Dovecot's layout, and `export`/`sync`) separates levels with '.':
        // "a.b" and "a/b" would be the same directory.
        return bad("'.' is the Maildir++ hierarchy separator; use '/' for subfolders");
    }
    if name
        .split('/')
        .any(|p| p.starts_with('.') && p.chars().all(|c| c == '.'))
    {
        return bad("'.' or '..' level");
    }
    Ok(())
}

impl Mailbox {
    /// Opens the engine on a store: replays every log entry, loads this device's numbering,
    /// and creates INBOX and the special-use folders if this mailbox has never had them.
    pub async fn open(store: Store, keys: UserKeys, device_public: [u8; 32]) -> Result<Mailbox> {
        let (changes, _) = broadcast::channel(FEED_CAPACITY);
        let inner = Arc::new(Inner {
            store,
            log_key: keys.log_key(),
            public: *keys.public(),
            keys,
            device: device_id(&device_public),
            engine: RwLock::new(Engine::default()),
            write: tokio::sync::Mutex::new(()),
            changes,
            cache: Mutex::new(Cache::new(CACHE_BYTES)),
            quota: std::sync::atomic::AtomicU64::new(0),
        });
        let mb = Mailbox { inner };
        mb.load_uids().await?;
        {
            let _w = mb.inner.write.lock().await;
            mb.refresh_locked().await?;
        }
        // Replaying every log read most of the store's tables: those pages are not needed
        // mapped any more (tens of MiB of resident set with 100k messages).
        mb.inner.store.release_resident();
        let missing: Vec<Role> = {
            let e = mb.read_engine();
            // Created once per mailbox: a special folder the user deleted stays deleted.
            Role::ALL
                .into_iter()
                .filter(|r| !e.crdt.knows_folder(r.folder_id()))
                .collect()
        };
        if !missing.is_empty() {
            let ops = missing
                .into_iter()
                .map(|r| Op::CreateFolder {
                    folder: r.folder_id(),
                    name: r.default_name().to_string(),
                    role: Some(r),
                })
                .collect();
            mb.commit(ops, Vec::new()).await?;
        }
        Ok(mb)
    }

    pub fn device(&self) -> DeviceId {
        self.inner.device
    }

    /// Limits the sealed bodies this mailbox keeps (`None`: no limit); appends beyond it fail
    /// with [`Error::OverQuota`]. The node sets it from the durability layer's quota.
    pub fn set_quota(&self, bytes: Option<u64>) {
        self.inner
            .quota
            .store(bytes.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn quota(&self) -> Option<u64> {
        match self.inner.quota.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            q => Some(q),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn read_engine(&self) -> std::sync::RwLockReadGuard<'_, Engine> {
        self.inner.engine.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_engine(&self) -> std::sync::RwLockWriteGuard<'_, Engine> {
        self.inner.engine.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to the change feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    async fn load_uids(&self) -> Result<()> {
        let (folders, rows) = self
            .inner
            .store
            .read(|rx| -> Result<_> {
                Ok((
                    rx.prefix(Table::FolderUids, &[])?,
                    rx.prefix(Table::Uids, &[])?,
                ))
            })
            .await?;
        let mut e = self.write_engine();
        for (k, v) in folders {
            if k.len() != 20 || v.len() != 16 || k[..] == LAST_UIDVALIDITY_KEY {
                continue;
            }
            let id = OpId::from_bytes(&k[..20].try_into().unwrap_or([0; 20]));
            let f = e.uids.entry(id).or_default();
            f.uidvalidity = u32::from_be_bytes(v[0..4].try_into().unwrap_or([0; 4]));
            f.uidnext = u32::from_be_bytes(v[4..8].try_into().unwrap_or([0; 4]));
            f.highestmodseq = u64::from_be_bytes(v[8..16].try_into().unwrap_or([0; 8]));
        }
        for (k, v) in rows {
            if k.len() != 40 || v.len() != 13 || v[12] != 0 {
                continue; // malformed or expunged
            }
            let folder = OpId::from_bytes(&k[..20].try_into().unwrap_or([0; 20]));
            let entry = OpId::from_bytes(&k[20..40].try_into().unwrap_or([0; 20]));
            let uid = u32::from_be_bytes(v[0..4].try_into().unwrap_or([0; 4]));
            let modseq = u64::from_be_bytes(v[4..12].try_into().unwrap_or([0; 8]));
            let f = e.uids.entry(folder).or_default();
            f.by_uid.insert(uid, entry);
            f.by_entry.insert(entry, (uid, modseq));
        }
        Ok(())
    }

    fn next_hlc(&self) -> u64 {
        let mut e = self.write_engine();
        let next = (now_ms() << 16).max(e.hlc + 1);
        e.hlc = next;
        next
    }

    /// Appends `ops` (and the sealed bodies they refer to) to this device's log, applies them,
    /// and numbers what they changed. Returns the id of each op (of its first piece, when the
    /// change had to be split: see [`limits`]).
    async fn commit(&self, ops: Vec<Op>, objects: Vec<SealedObject>) -> Result<Vec<OpId>> {
        self.commit_with(ops, objects, None).await
    }

    /// [`Mailbox::commit`], with `also` written in the same transaction. A change too big for
    /// one log entry becomes several, all written in this one durable commit; one the log
    /// cannot record is refused ([`Error::Limit`]) before anything is written or applied.
    async fn commit_with(
        &self,
        ops: Vec<Op>,
        objects: Vec<SealedObject>,
        also: Option<AlsoWrite>,
    ) -> Result<Vec<OpId>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let limits::Split { entries, first } = limits::split(ops)?;
        // One clock reading per entry: the entries apply as if committed one after another.
        let hlcs: Vec<u64> = entries.iter().map(|_| self.next_hlc()).collect();
        let device = self.inner.device;
        let inner = Arc::clone(&self.inner);
        let for_log: Vec<(u64, Vec<Op>)> = hlcs.iter().copied().zip(entries.clone()).collect();
        // What the ops will change, worked out now (the write lock is held, so the state
        // cannot move under us), so that the entries and their numbering share one durable
        // commit.
        let (predicted, folders_changed) = self.predict(&entries);
        let now = (now_ms() / 1000) as u32;
        let (seqs, results) = self
            .inner
            .store
            .transact(move |tx| -> Result<(Vec<u64>, Vec<Numbered>)> {
                for o in &objects {
                    tx.put_object(o)?;
                }
                if let Some(also) = also {
                    also(tx)?;
                }
                let mut seqs = Vec::with_capacity(for_log.len());
                for (hlc, ops) in for_log {
                    seqs.push(tx.append_log(device, |seq| {
                        LogEntry {
                            device,
                            seq,
                            hlc,
                            ops,
                        }
                        .seal(&inner.keys, &inner.log_key)
                    })?);
                }
                let work = predicted
                    .into_iter()
                    .map(|(folder, who, kind)| match who {
                        Who::New(n, idx) => (
                            folder,
                            OpId {
                                device,
                                seq: seqs[n],
                                idx,
                            },
                            kind,
                        ),
                        Who::Entry(e) => (folder, e, kind),
                    })
                    .collect();
                let numbered = number_rows(tx, work, now)?;
                Ok((seqs, numbered))
            })
            .await?;
        let ids = first
            .iter()
            .map(|(n, idx)| OpId {
                device,
                seq: seqs[*n],
                idx: *idx,
            })
            .collect();
        for ((ops, hlc), seq) in entries.into_iter().zip(hlcs).zip(seqs) {
            self.apply_entry(&LogEntry {
                device,
                seq,
                hlc,
                ops,
            });
        }
        self.publish(results, folders_changed);
        Ok(ids)
    }

    /// The numbering work of this process's own entries against the current state: (folder,
    /// which entry, kind: 0 add, 1 remove, 2 flags), and whether folders change.
    fn predict(&self, entries: &[Vec<Op>]) -> (Vec<(FolderId, Who, u8)>, bool) {
        let e = self.read_engine();
        let mut work = Vec::new();
        let mut gone: HashSet<EntryId> = HashSet::new();
        let mut folders_changed = false;
        let remove =
            |work: &mut Vec<(FolderId, Who, u8)>, gone: &mut HashSet<EntryId>, id: &EntryId| {
                if let Some(rec) = e.crdt.entry(*id)
                    && gone.insert(*id)
                {
                    work.push((rec.folder, Who::Entry(*id), 1));
                }
            };
        let ops = entries
            .iter()
            .enumerate()
            .flat_map(|(n, ops)| ops.iter().enumerate().map(move |(i, op)| (n, i, op)));
        for (n, idx, op) in ops {
            match op {
                Op::Add { folder, .. } => work.push((*folder, Who::New(n, idx as u32), 0)),
                Op::Remove { entries } => entries
                    .iter()
                    .for_each(|id| remove(&mut work, &mut gone, id)),
                Op::DeleteFolder { observed, .. } => {
                    folders_changed = true;
                    observed
                        .iter()
                        .for_each(|id| remove(&mut work, &mut gone, id));
                }
                Op::SetFlags { entries, .. } => {
                    for id in entries {
                        if let Some(rec) = e.crdt.entry(*id)
                            && !gone.contains(id)
                        {
                            work.push((rec.folder, Who::Entry(*id), 2));
                        }
                    }
                }
                Op::CreateFolder { .. } | Op::RenameFolder { .. } | Op::Subscribe { .. } => {
                    folders_changed = true
                }
            }
        }
        (work, folders_changed)
    }

    /// Applies an entry to the in-memory state; returns its effects.
    fn apply_entry(&self, entry: &LogEntry) -> Vec<Effect> {
        let mut e = self.write_engine();
        if !e.applied.insert((entry.device, entry.seq)) {
            return Vec::new();
        }
        e.hlc = e.hlc.max(entry.hlc);
        let mut fx = Vec::new();
        for (idx, op) in entry.ops.iter().enumerate() {
            let id = OpId {
                device: entry.device,
                seq: entry.seq,
                idx: idx as u32,
            };
            fx.extend(e.crdt.apply(id, entry.hlc, op));
        }
        fx
    }

    /// Gives UIDs to new entries and MODSEQs to changed ones, durably, then tells subscribers.
    /// Idempotent: rows already present are reused (another process may have numbered them).
    async fn number(&self, effects: Vec<Effect>) -> Result<()> {
        if effects.is_empty() {
            return Ok(());
        }
        // What to number, resolved against the state now.
        let mut work: Vec<(FolderId, EntryId, u8)> = Vec::new(); // 0 add, 1 remove, 2 flags
        let mut folders_changed = false;
        {
            let e = self.read_engine();
            for fx in &effects {
                match fx {
                    Effect::FoldersChanged => folders_changed = true,
                    Effect::EntryAdded(id) => {
                        if let Some(rec) = e.crdt.entry(*id) {
                            work.push((rec.folder, *id, 0));
                        }
                    }
                    Effect::EntryRemoved(id, f) => work.push((*f, *id, 1)),
                    Effect::FlagsChanged(id) => {
                        if let Some(rec) = e.crdt.entry(*id) {
                            work.push((rec.folder, *id, 2));
                        }
                    }
                }
            }
        }
        let now = (now_ms() / 1000) as u32;
        let results = self
            .inner
            .store
            .transact(move |tx| number_rows(tx, work, now))
            .await?;
        self.publish(results, folders_changed);
        Ok(())
    }

    /// Records numbering results in memory and tells subscribers.
    fn publish(&self, results: Vec<Numbered>, folders_changed: bool) {
        let mut changes = Vec::new();
        if folders_changed {
            changes.push(Change::Folders);
        }
        {
            let mut e = self.write_engine();
            for (folder, entry, kind, uid, modseq, head) in results {
                let f = e.uids.entry(folder).or_default();
                f.uidvalidity = u32::from_be_bytes(head[0..4].try_into().unwrap_or([0; 4]));
                f.uidnext = u32::from_be_bytes(head[4..8].try_into().unwrap_or([0; 4]));
                f.highestmodseq = u64::from_be_bytes(head[8..16].try_into().unwrap_or([0; 8]));
                match kind {
                    0 => {
                        f.by_uid.insert(uid, entry);
                        f.by_entry.insert(entry, (uid, modseq));
                        changes.push(Change::Added { folder, uid, entry });
                    }
                    1 => {
                        f.by_uid.remove(&uid);
                        f.by_entry.remove(&entry);
                        changes.push(Change::Removed { folder, uid, entry });
                    }
                    _ => {
                        f.by_entry.insert(entry, (uid, modseq));
                        changes.push(Change::Flags {
                            folder,
                            uid,
                            entry,
                            modseq,
                        });
                    }
                }
            }
        }
        for c in changes {
            // No subscriber is fine; a lagging one learns it from its receiver.
            let _ = self.inner.changes.send(c);
        }
    }

    /// Picks up log entries this process has not applied yet: written by another process on
    /// this device, or merged from other devices. Returns how many were applied.
    pub async fn refresh(&self) -> Result<usize> {
        let _w = self.inner.write.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let cursor = self.read_engine().cursor;
            let (batch, next) = self
                .inner
                .store
                .read(move |rx| -> Result<(Vec<LogRow>, u64)> {
                    let rows = rx.range_from(Table::LogIndex, &cursor.to_be_bytes(), 512)?;
                    let next = rows
                        .last()
                        .and_then(|(k, _)| k.as_slice().try_into().ok())
                        .map(|k: [u8; 8]| u64::from_be_bytes(k) + 1)
                        .unwrap_or(cursor);
                    let mut out = Vec::new();
                    for (_, loc) in rows {
                        if loc.len() != 16 {
                            continue;
                        }
                        let d = u64::from_be_bytes(loc[0..8].try_into().unwrap_or([0; 8]));
                        let s = u64::from_be_bytes(loc[8..16].try_into().unwrap_or([0; 8]));
                        if let Some(bytes) = rx.get(Table::Log, &loc)? {
                            out.push(((d, s), bytes));
                        }
                    }
                    Ok((out, next))
                })
                .await?;
            if next == cursor {
                break;
            }
            let mut effects = Vec::new();
            for (key, bytes) in batch {
                // Entries this process wrote (or already merged) are skipped undecoded.
                if self.read_engine().applied.contains(&key) {
                    continue;
                }
                let entry = match LogEntry::open(&bytes, &self.inner.public, &self.inner.log_key) {
                    Ok(e) => e,
                    Err(err) => {
                        // Entries are verified before they are stored, so this is damage on
                        // disk: skip it (the copy in the ring can restore it) rather than
                        // lock the user out of the whole mailbox.
                        tracing::warn!(device = key.0, seq = key.1, %err, "skipping a damaged log entry");
                        self.write_engine().applied.insert(key);
                        continue;
                    }
                };
                effects.extend(self.apply_entry(&entry));
                total += 1;
            }
            self.write_engine().cursor = next;
            self.number(effects).await?;
        }
        Ok(total)
    }

    /// Verifies log entries from another device (via the overlay), stores and applies them.
    /// Entries that do not verify are refused with an error; nothing of a bad batch is kept.
    pub async fn merge_entries(&self, entries: Vec<Vec<u8>>) -> Result<usize> {
        let mut decoded = Vec::with_capacity(entries.len());
        for bytes in entries {
            let e = LogEntry::open(&bytes, &self.inner.public, &self.inner.log_key)?;
            decoded.push((e.device, e.seq, bytes));
        }
        let _w = self.inner.write.lock().await;
        self.inner
            .store
            .transact(move |tx| -> Result<()> {
                for (d, s, b) in &decoded {
                    tx.insert_log(*d, *s, b)?;
                }
                Ok(())
            })
            .await?;
        self.refresh_locked().await
    }

    /// All log entries in this store, as (device, seq, bytes), for replication to peers.
    pub async fn log_entries(&self) -> Result<Vec<(DeviceId, u64, Vec<u8>)>> {
        self.inner
            .store
            .read(|rx| -> Result<_> {
                Ok(rx
                    .prefix(Table::Log, &[])?
                    .into_iter()
                    .filter(|(k, _)| k.len() == 16)
                    .map(|(k, v)| {
                        (
                            u64::from_be_bytes(k[0..8].try_into().unwrap_or([0; 8])),
                            u64::from_be_bytes(k[8..16].try_into().unwrap_or([0; 8])),
                            v,
                        )
                    })
                    .collect())
            })
            .await
    }

    // ----- reading -----

    /// Every visible folder, INBOX first.
    pub fn folders(&self) -> Vec<FolderInfo> {
        let e = self.read_engine();
        e.crdt.folders().into_iter().map(|f| info(&e, f)).collect()
    }

    /// Every visible folder's id, name and subscription, INBOX first: [`Mailbox::folders`]
    /// without the message counts, which cost a pass over the whole mailbox.
    pub fn folder_names(&self) -> Vec<(FolderId, String, bool)> {
        let e = self.read_engine();
        e.crdt
            .folders()
            .into_iter()
            .map(|f| (f.id, f.name, f.subscribed))
            .collect()
    }

    /// A folder by name (`inbox` in any case is INBOX). Costs one pass over that folder's
    /// messages (for the unseen and recent counts), not over the mailbox.
    pub fn folder(&self, name: &str) -> Option<FolderInfo> {
        let e = self.read_engine();
        let v = find(&e, name)?;
        Some(info(&e, v))
    }

    fn folder_id(&self, name: &str) -> Result<FolderId> {
        find(&self.read_engine(), name)
            .map(|f| f.id)
            .ok_or_else(|| Error::NoSuchFolder(name.to_string()))
    }

    /// The messages of a folder, by UID.
    pub fn messages(&self, folder: &str) -> Result<Vec<MessageInfo>> {
        let id = self.folder_id(folder)?;
        Ok(self.messages_of(id))
    }

    /// The messages of a folder by id, by UID.
    pub fn messages_of(&self, folder: FolderId) -> Vec<MessageInfo> {
        self.messages_mapped(folder, |m| m)
    }

    /// [`Mailbox::messages`], each message turned into a `T` as it is read: a caller keeping
    /// its own form (the FUSE tree) builds no list of [`MessageInfo`] first (with 100k
    /// messages that was 16 MiB allocated and freed at each listing).
    pub fn messages_map<T>(&self, folder: &str, f: impl FnMut(MessageInfo) -> T) -> Result<Vec<T>> {
        let id = self.folder_id(folder)?;
        Ok(self.messages_mapped(id, f))
    }

    /// One message of a folder by entry, turned into a `T` (`None`: not in that folder). The
    /// FUSE mount checks the messages a change names against what it shows, instead of
    /// listing the whole folder again.
    pub fn message_map<T>(
        &self,
        folder: &str,
        entry: EntryId,
        f: impl FnOnce(MessageInfo) -> T,
    ) -> Result<Option<T>> {
        let id = self.folder_id(folder)?;
        let e = self.read_engine();
        let Some(&(uid, modseq)) = e.uids.get(&id).and_then(|u| u.by_entry.get(&entry)) else {
            return Ok(None);
        };
        Ok(message_info(&e, entry, uid, modseq).map(f))
    }

    fn messages_mapped<T>(&self, folder: FolderId, mut f: impl FnMut(MessageInfo) -> T) -> Vec<T> {
        let e = self.read_engine();
        let Some(u) = e.uids.get(&folder) else {
            return Vec::new();
        };
        u.by_uid
            .iter()
            .filter_map(|(uid, entry)| {
                let modseq = u.by_entry.get(entry).map_or(0, |(_, m)| *m);
                message_info(&e, *entry, *uid, modseq).map(&mut f)
            })
            .collect()
    }

    /// A folder's UIDVALIDITY, allocated now if none of its messages has been numbered yet:
    /// an IMAP client must see the same value before and after the first message arrives.
    pub async fn uidvalidity(&self, folder: FolderId) -> Result<u32> {
        if let Some(u) = self.read_engine().uids.get(&folder)
            && u.uidvalidity != 0
        {
            return Ok(u.uidvalidity);
        }
        let _w = self.inner.write.lock().await;
        let now = (now_ms() / 1000) as u32;
        let head = self
            .inner
            .store
            .transact(move |tx| -> Result<[u8; 16]> {
                let fkey = folder.to_bytes();
                if let Some(v) = tx.get(Table::FolderUids, &fkey)?
                    && let Ok(h) = <[u8; 16]>::try_from(v.as_slice())
                {
                    return Ok(h);
                }
                let h = fresh_head(tx, now)?;
                tx.put(Table::FolderUids, &fkey, &h)?;
                Ok(h)
            })
            .await?;
        let mut e = self.write_engine();
        let f = e.uids.entry(folder).or_default();
        if f.uidvalidity == 0 {
            f.uidvalidity = u32::from_be_bytes(head[0..4].try_into().unwrap_or([0; 4]));
            f.uidnext = f
                .uidnext
                .max(u32::from_be_bytes(head[4..8].try_into().unwrap_or([0; 4])));
        }
        Ok(f.uidvalidity)
    }

    /// The cheap listing of a folder an IMAP session keeps: (uid, entry, modseq, seen) by UID.
    pub fn uid_map(&self, folder: FolderId) -> Vec<(u32, EntryId, u64, bool)> {
        let e = self.read_engine();
        let Some(u) = e.uids.get(&folder) else {
            return Vec::new();
        };
        u.by_uid
            .iter()
            .filter(|(_, entry)| e.crdt.entry(**entry).is_some())
            .map(|(uid, entry)| {
                let modseq = u.by_entry.get(entry).map_or(0, |(_, m)| *m);
                (*uid, *entry, modseq, e.crdt.flags(*entry).has(Flag::Seen))
            })
            .collect()
    }

    /// Some messages of a folder by entry, under one read lock: `None` for an entry no longer
    /// there. For sessions that keep their own sequence-number map (IMAP) and must not re-list
    /// a large folder per command.
    pub fn messages_by_entry(
        &self,
        folder: FolderId,
        entries: &[EntryId],
    ) -> Vec<Option<MessageInfo>> {
        let e = self.read_engine();
        let u = e.uids.get(&folder);
        entries
            .iter()
            .map(|entry| {
                e.crdt.entry(*entry).filter(|r| r.folder == folder)?;
                let (uid, modseq) = *u?.by_entry.get(entry)?;
                message_info(&e, *entry, uid, modseq)
            })
            .collect()
    }

    /// A canonical description of the merged state (folders → messages and flags), equal on
    /// every device that has seen the same ops.
    pub fn canonical(&self) -> BTreeMap<String, Vec<(String, String, bool)>> {
        self.read_engine().crdt.canonical()
    }

    /// The bytes of a message.
    pub async fn read(&self, entry: EntryId) -> Result<Arc<Vec<u8>>> {
        self.read_with(entry, true).await
    }

    /// [`Mailbox::read`] that leaves the cache as it is (a hit is still used): for readers
    /// with a cache of their own, such as the FUSE mount (the kernel's page cache keeps a
    /// message's pages), where a second copy here would only cost memory.
    pub async fn read_uncached(&self, entry: EntryId) -> Result<Arc<Vec<u8>>> {
        self.read_with(entry, false).await
    }

    async fn read_with(&self, entry: EntryId, keep: bool) -> Result<Arc<Vec<u8>>> {
        let message = match self.body(entry)? {
            Body::Cached(hit) => return Ok(hit),
            Body::Stored(message) => message,
        };
        let sealed = self.inner.store.get_object(message.object).await?;
        let plain = open_stored(&message, sealed)?;
        if keep {
            self.cache().insert(message.object, Arc::clone(&plain));
        }
        Ok(plain)
    }

    /// Where an entry's body is.
    fn body(&self, entry: EntryId) -> Result<Body> {
        let message = {
            let e = self.read_engine();
            Arc::clone(&e.crdt.entry(entry).ok_or(Error::NoSuchMessage)?.message)
        };
        Ok(match self.cache().get(&message.object) {
            Some(hit) => Body::Cached(hit),
            None => Body::Stored(message),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- writing -----

    /// Appends one message to a folder.
    pub async fn append(&self, folder: &str, msg: NewMessage) -> Result<MessageInfo> {
        let mut v = self.append_batch(folder, vec![msg]).await?;
        v.pop().ok_or(Error::NoSuchMessage)
    }

    /// Appends messages to a folder, a few hundred per log entry (one durable commit each).
    pub async fn append_batch(
        &self,
        folder: &str,
        msgs: Vec<NewMessage>,
    ) -> Result<Vec<MessageInfo>> {
        let _w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        self.check_quota(msgs.iter()).await?;
        let mut out = Vec::with_capacity(msgs.len());
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let chunk = msgs.by_ref().take(BATCH).map(|m| (folder_id, m)).collect();
            out.extend(self.append_locked(chunk, None).await?);
        }
        Ok(out)
    }

    /// Appends messages, each to its own folder, in ONE log entry (one durable commit), all
    /// or none: what the FUSE mount's queued deliveries become. Returns them in order.
    pub async fn append_many(&self, items: Vec<(String, NewMessage)>) -> Result<Vec<MessageInfo>> {
        let _w = self.inner.write.lock().await;
        let mut ids: HashMap<String, FolderId> = HashMap::new();
        let mut msgs = Vec::with_capacity(items.len());
        for (folder, m) in items {
            let id = match ids.get(&folder) {
                Some(id) => *id,
                None => {
                    let id = self.folder_id(&folder)?;
                    ids.insert(folder, id);
                    id
                }
            };
            msgs.push((id, m));
        }
        self.check_quota(msgs.iter().map(|(_, m)| m)).await?;
        self.append_locked(msgs, None).await
    }

    /// Appends one message, and makes the caller's `also` write in the same durable commit
    /// (e.g. delivery remembering that this message arrived: both or neither survive a
    /// crash).
    pub async fn append_with(
        &self,
        folder: &str,
        msg: NewMessage,
        also: AlsoWrite,
    ) -> Result<MessageInfo> {
        let _w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        self.check_quota(std::iter::once(&msg)).await?;
        let mut v = self
            .append_locked(vec![(folder_id, msg)], Some(also))
            .await?;
        v.pop().ok_or(Error::NoSuchMessage)
    }

    /// Refuses messages that would take the store over its quota (if one is set).
    async fn check_quota(&self, msgs: impl Iterator<Item = &NewMessage>) -> Result<()> {
        if let Some(quota) = self.quota() {
            // A sealed body is its plaintext plus a 42-byte header and tag.
            let needed: u64 = msgs.map(|m| m.bytes.len() as u64 + 42).sum();
            let used = self.inner.store.stats().await?.object_bytes;
            if used.saturating_add(needed) > quota {
                return Err(Error::OverQuota {
                    used,
                    quota,
                    needed,
                });
            }
        }
        Ok(())
    }

    /// One log entry adding `msgs` (each to its folder), with `also` in its commit; the write
    /// lock is held by the caller. Returns the messages as numbered, in order.
    async fn append_locked(
        &self,
        msgs: Vec<(FolderId, NewMessage)>,
        also: Option<AlsoWrite>,
    ) -> Result<Vec<MessageInfo>> {
        let mut ops = Vec::with_capacity(msgs.len());
        let mut objects = Vec::with_capacity(msgs.len());
        let mut folders = Vec::with_capacity(msgs.len());
        for (folder_id, m) in msgs {
            if m.bytes.is_empty() {
                return Err(Error::Empty);
            }
            let (sealed, key) = SealedObject::seal(&m.bytes)?;
            let object = sealed.id();
            let maildir_name = match m.maildir_name {
                Some(n) => {
                    if !maildir::valid_base(&n) {
                        return Err(Error::InvalidName(n, "not a Maildir base name"));
                    }
                    n
                }
                None => maildir::derived_base(m.internal_date, &object),
            };
            for k in &m.flags.keywords {
                if !model::valid_keyword(k) {
                    return Err(Error::InvalidName(k.clone(), "not a valid keyword"));
                }
            }
            ops.push(Op::Add {
                folder: folder_id,
                message: MessageRef {
                    object,
                    key: *key.as_bytes(),
                    size: m.bytes.len() as u64,
                    internal_date: m.internal_date,
                    maildir_name,
                },
                flags: m.flags,
                recent: m.recent,
            });
            objects.push(sealed);
            folders.push(folder_id);
        }
        let ids = self.commit_with(ops, objects, also).await?;
        let e = self.read_engine();
        let mut out = Vec::with_capacity(ids.len());
        for (id, folder_id) in ids.into_iter().zip(folders) {
            let u = e.uids.get(&folder_id);
            if let Some((uid, modseq)) = u.and_then(|u| u.by_entry.get(&id)) {
                out.extend(message_info(&e, id, *uid, *modseq));
            }
        }
        Ok(out)
    }

    /// Changes flags of entries of a folder. `seen_by_reader` also moves them out of `new/`.
    pub async fn set_flags(
        &self,
        folder: &str,
        entries: &[EntryId],
        mode: FlagMode,
        flags: &Flags,
        seen_by_reader: bool,
    ) -> Result<()> {
        self.set_flags_in(folder, entries, mode, flags, seen_by_reader, false)
            .await
    }

    /// [`Mailbox::set_flags`], skipping entries no longer in the folder (expunged or moved
    /// by someone else since the caller looked; checked under the write lock). IMAP STORE
    /// on a set that includes such messages succeeds for the rest (RFC 3501 §6.4.6).
    pub async fn set_flags_present(
        &self,
        folder: &str,
        entries: &[EntryId],
        mode: FlagMode,
        flags: &Flags,
        seen_by_reader: bool,
    ) -> Result<()> {
        self.set_flags_in(folder, entries, mode, flags, seen_by_reader, true)
            .await
    }

    async fn set_flags_in(
        &self,
        folder: &str,
        entries: &[EntryId],
        mode: FlagMode,
        flags: &Flags,
        seen_by_reader: bool,
        skip_gone: bool,
    ) -> Result<()> {
        let _w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        for k in &flags.keywords {
            if !model::valid_keyword(k) {
                return Err(Error::InvalidName(k.clone(), "not a valid keyword"));
            }
        }
        let mut ops = Vec::new();
        {
            let e = self.read_engine();
            for entry in entries {
                match e.crdt.entry(*entry) {
                    Some(rec) if rec.folder == folder_id => {}
                    _ if skip_gone => continue,
                    _ => return Err(Error::NoSuchMessage),
                }
                ops.extend(flag_op(&e, *entry, mode, flags, seen_by_reader)?);
            }
        }
        if ops.is_empty() && skip_gone {
            return Ok(());
        }
        self.commit(ops, Vec::new()).await?;
        Ok(())
    }

    /// Sets each entry's flags to its own value (system flags and keywords replaced) in one
    /// durable commit: a batch of flag changes made elsewhere (the FUSE mount's renames).
    /// Entries no longer in the folder named with them are skipped (moved or expunged since).
    /// Returns how many entries changed.
    pub async fn set_flags_each(
        &self,
        items: Vec<(String, EntryId, Flags, bool)>,
    ) -> Result<usize> {
        let _w = self.inner.write.lock().await;
        for (_, _, flags, _) in &items {
            for k in &flags.keywords {
                if !model::valid_keyword(k) {
                    return Err(Error::InvalidName(k.clone(), "not a valid keyword"));
                }
            }
        }
        let mut ops = Vec::new();
        {
            let e = self.read_engine();
            for (folder, entry, flags, seen) in &items {
                let Some(folder_id) = find(&e, folder).map(|f| f.id) else {
                    continue;
                };
                match e.crdt.entry(*entry) {
                    Some(rec) if rec.folder == folder_id => {}
                    _ => continue,
                }
                ops.extend(flag_op(&e, *entry, FlagMode::Replace, flags, *seen)?);
            }
        }
        let n = ops.len();
        self.commit(ops, Vec::new()).await?;
        Ok(n)
    }

    /// Copies entries into another folder; returns (source entry, new message) pairs.
    pub async fn copy(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        self.transfer(from, entries, to, false, false).await
    }

    /// [`Mailbox::copy`] (`moving`: [`Mailbox::move_to`]) of the entries still in `from`
    /// under the write lock; the ones expunged or moved meanwhile are skipped (IMAP COPY and
    /// MOVE of a set that includes them succeed for the rest).
    pub async fn transfer_present(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
        moving: bool,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        self.transfer(from, entries, to, moving, true).await
    }

    /// Moves entries into another folder (add there and remove here, in one log entry).
    pub async fn move_to(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        self.transfer(from, entries, to, true, false).await
    }

    async fn transfer(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
        remove: bool,
        skip_gone: bool,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        let _w = self.inner.write.lock().await;
        let from_id = self.folder_id(from)?;
        let to_id = self.folder_id(to)?;
        let kept: Vec<EntryId>;
        let entries = if skip_gone {
            let e = self.read_engine();
            kept = entries
                .iter()
                .copied()
                .filter(|x| e.crdt.entry(*x).is_some_and(|r| r.folder == from_id))
                .collect();
            if kept.is_empty() {
                return Ok(Vec::new());
            }
            &kept[..]
        } else {
            entries
        };
        if remove && from_id == to_id {
            // A move into the folder it is in changes nothing (and must not copy).
            let now: HashMap<EntryId, MessageInfo> = self
                .messages_of(from_id)
                .into_iter()
                .map(|m| (m.entry, m))
                .collect();
            return entries
                .iter()
                .map(|e| {
                    now.get(e)
                        .map(|m| (*e, m.clone()))
                        .ok_or(Error::NoSuchMessage)
                })
                .collect();
        }
        let mut ops = Vec::new();
        {
            let e = self.read_engine();
            for entry in entries {
                let rec = e
                    .crdt
                    .entry(*entry)
                    .filter(|r| r.folder == from_id)
                    .ok_or(Error::NoSuchMessage)?;
                ops.push(Op::Add {
                    folder: to_id,
                    message: (*rec.message).clone(),
                    flags: e.crdt.flags(*entry),
                    recent: e.crdt.recent(*entry),
                });
            }
        }
        if remove && from_id != to_id {
            ops.push(Op::Remove {
                entries: entries.to_vec(),
            });
        }
        let ids = self.commit(ops, Vec::new()).await?;
        let infos = self.messages_of(to_id);
        let by_entry: HashMap<EntryId, MessageInfo> =
            infos.into_iter().map(|m| (m.entry, m)).collect();
        Ok(entries
            .iter()
            .zip(ids)
            .filter_map(|(src, new)| by_entry.get(&new).map(|m| (*src, m.clone())))
            .collect())
    }

    /// Expunges entries of a folder.
    pub async fn expunge(&self, folder: &str, entries: &[EntryId]) -> Result<()> {
        self.expunge_in(folder, entries, false).await
    }

    /// [`Mailbox::expunge`] of the entries still in the folder under the write lock (the
    /// ones another session expunged or moved meanwhile are already gone: not an error).
    pub async fn expunge_present(&self, folder: &str, entries: &[EntryId]) -> Result<()> {
        self.expunge_in(folder, entries, true).await
    }

    async fn expunge_in(&self, folder: &str, entries: &[EntryId], skip_gone: bool) -> Result<()> {
        let _w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        let mut present = Vec::with_capacity(entries.len());
        {
            let e = self.read_engine();
            for entry in entries {
                match e.crdt.entry(*entry).filter(|r| r.folder == folder_id) {
                    Some(_) => present.push(*entry),
                    None if skip_gone => {}
                    None => return Err(Error::NoSuchMessage),
                }
            }
        }
        if present.is_empty() && skip_gone {
            return Ok(());
        }
        self.commit(vec![Op::Remove { entries: present }], Vec::new())
            .await?;
        Ok(())
    }

    pub async fn create_folder(&self, name: &str) -> Result<FolderId> {
        check_folder_name(name)?;
        let _w = self.inner.write.lock().await;
        if name.eq_ignore_ascii_case("INBOX") || find(&self.read_engine(), name).is_some() {
            return Err(Error::FolderExists(name.to_string()));
        }
        // A user folder's id: this device, 64 random bits (no seq is known before the commit,
        // and two processes of one device must not collide), idx u32::MAX.
        let folder = OpId {
            device: self.inner.device,
            seq: u64::from_be_bytes(crypto::random_bytes()?),
            idx: u32::MAX,
        };
        self.commit(
            vec![Op::CreateFolder {
                folder,
                name: name.to_string(),
                role: None,
            }],
            Vec::new(),
        )
        .await?;
        Ok(folder)
    }

    /// Renames a folder (INBOX cannot be renamed). Its messages and UIDs stay with it.
    pub async fn rename_folder(&self, from: &str, to: &str) -> Result<()> {
        check_folder_name(to)?;
        let _w = self.inner.write.lock().await;
        let f = self
            .folder(from)
            .ok_or_else(|| Error::NoSuchFolder(from.to_string()))?;
        if f.role == Some(Role::Inbox) {
            return Err(Error::NotAllowed("INBOX cannot be renamed"));
        }
        if to.eq_ignore_ascii_case("INBOX") || find(&self.read_engine(), to).is_some() {
            return Err(Error::FolderExists(to.to_string()));
        }
        self.commit(
            vec![Op::RenameFolder {
                folder: f.id,
                name: to.to_string(),
            }],
            Vec::new(),
        )
        .await?;
        Ok(())
    }

    /// Deletes a folder and the messages in it (INBOX cannot be deleted).
    pub async fn delete_folder(&self, name: &str) -> Result<()> {
        let _w = self.inner.write.lock().await;
        let f = self
            .folder(name)
            .ok_or_else(|| Error::NoSuchFolder(name.to_string()))?;
        if f.role == Some(Role::Inbox) {
            return Err(Error::NotAllowed("INBOX cannot be deleted"));
        }
        let observed: Vec<EntryId> = self.read_engine().crdt.entries_in(f.id).collect();
        self.commit(
            vec![Op::DeleteFolder {
                folder: f.id,
                observed,
            }],
            Vec::new(),
        )
        .await?;
        Ok(())
    }

    /// (Un)subscribes a folder.
    pub async fn subscribe_folder(&self, name: &str, subscribed: bool) -> Result<()> {
        let _w = self.inner.write.lock().await;
        let id = self.folder_id(name)?;
        self.commit(
            vec![Op::Subscribe {
                folder: id,
                subscribed,
            }],
            Vec::new(),
        )
        .await?;
        Ok(())
    }
}

/// What the engine knows of `entry` with its numbering here (`None` if it is not a live entry).
/// Where a message's body is: in the cache, or to be read from the store.
enum Body {
    Cached(Arc<Vec<u8>>),
    Stored(Arc<MessageRef>),
}

/// A body read from the store (`None`: not held here), opened.
fn open_stored(message: &MessageRef, sealed: Option<SealedObject>) -> Result<Arc<Vec<u8>>> {
    let sealed = sealed.ok_or(Error::ContentMissing(message.object))?;
    Ok(Arc::new(sealed.open(&message.content_key())?))
}

fn message_info(e: &Engine, entry: EntryId, uid: u32, modseq: u64) -> Option<MessageInfo> {
    let rec = e.crdt.entry(entry)?;
    Some(MessageInfo {
        entry,
        uid,
        modseq,
        object: rec.message.object,
        size: rec.message.size,
        internal_date: rec.message.internal_date,
        flags: e.crdt.flags(entry),
        recent: e.crdt.recent(entry),
        maildir_name: rec.message.maildir_name.clone(),
    })
}

/// The op that changes `entry`'s flags as asked (only what changes is written, so a no-op
/// STORE does not bump MODSEQ); `None` when nothing changes. Refused when the message would
/// end with more than 64 keywords.
fn flag_op(
    e: &Engine,
    entry: EntryId,
    mode: FlagMode,
    flags: &Flags,
    seen_by_reader: bool,
) -> Result<Option<Op>> {
    let current = e.crdt.flags(entry);
    let (set, clear, set_kw, clear_kw) = match mode {
        FlagMode::Add => (
            flags.bits,
            0,
            flags.keywords.iter().cloned().collect(),
            Vec::new(),
        ),
        FlagMode::Remove => (
            0,
            flags.bits,
            Vec::new(),
            flags.keywords.iter().cloned().collect(),
        ),
        FlagMode::Replace => (
            flags.bits,
            !flags.bits & 0x3f,
            flags.keywords.iter().cloned().collect(),
            current
                .keywords
                .difference(&flags.keywords)
                .cloned()
                .collect(),
        ),
    };
    let set = set & !current.bits;
    let clear = clear & current.bits;
    let set_kw: Vec<String> = set_kw
        .into_iter()
        .filter(|k: &String| !current.keywords.contains(k))
        .collect();
    let clear_kw: Vec<String> = clear_kw
        .into_iter()
        .filter(|k: &String| current.keywords.contains(k))
        .collect();
    let reader = seen_by_reader && e.crdt.recent(entry);
    if set == 0 && clear == 0 && set_kw.is_empty() && clear_kw.is_empty() && !reader {
        return Ok(None);
    }
    // A message keeps at most 64 keywords: more could not be copied (an `Add` carries them
    // all in one list the log's decoder bounds).
    let after = current.keywords.len() + set_kw.len() - clear_kw.len();
    if !set_kw.is_empty() && after > model::MAX_KEYWORDS {
        return Err(limits::Unloggable::TooMany {
            what: "keywords on one message",
            len: after,
            max: model::MAX_KEYWORDS,
        }
        .into());
    }
    Ok(Some(Op::SetFlags {
        entries: vec![entry],
        set,
        clear,
        set_keywords: set_kw,
        clear_keywords: clear_kw,
        seen_by_reader: reader,
    }))
}
