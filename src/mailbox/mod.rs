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
mod group;
pub mod limits;
pub mod log;
pub mod maildir;
pub mod model;
mod read;
use read::{Body, message_info, open_stored};
pub mod readahead;
mod replica;
pub use replica::{Merged, sealed_len};
#[cfg(test)]
mod tests;
pub mod transfer;
pub mod tree;
mod write;

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
    // --- devices (issue #15): see replica.rs ---
    /// Highest log sequence number applied per device (the version vector).
    vv: BTreeMap<DeviceId, u64>,
    /// Entries whose Add carries a delivery key (maildir::delivery_key), by key.
    deliveries: HashMap<[u8; 16], Vec<EntryId>>,
    /// Delivery keys named by more than one entry since the last duplicate check.
    dirty_deliveries: HashSet<[u8; 16]>,
    /// Devices removed or revoked: their entries above this sequence number are refused.
    refused: HashMap<DeviceId, u64>,
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
    /// Bumped whenever log entries were written or merged (the replicator pushes them).
    log_written: tokio::sync::watch::Sender<u64>,
    /// The group commit's queue and generations (group.rs).
    group: group::Group,
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
            log_written: tokio::sync::watch::Sender::new(0),
            group: group::Group::default(),
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
    /// change had to be split: see [`limits`]). The caller holds the write lock throughout.
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
        self.commit_grouped(ops, objects, also, None).await
    }

    /// [`Mailbox::commit`] that lets go of the caller's write lock `w` once the change is
    /// applied to memory, before it is durable (the next write builds on it; see group.rs),
    /// and returns once it is durable and published.
    async fn commit_releasing(
        &self,
        w: tokio::sync::MutexGuard<'_, ()>,
        ops: Vec<Op>,
        objects: Vec<SealedObject>,
    ) -> Result<Vec<OpId>> {
        self.commit_grouped(ops, objects, None, Some(w)).await
    }

    /// The commit: log entries numbered with this device's next sequence numbers and sealed,
    /// applied to memory, their store writes (bodies, `also`, the entries, the UID/MODSEQ
    /// numbering) queued for the next group commit; answered once that is durable.
    async fn commit_grouped(
        &self,
        ops: Vec<Op>,
        objects: Vec<SealedObject>,
        also: Option<AlsoWrite>,
        w: Option<tokio::sync::MutexGuard<'_, ()>>,
    ) -> Result<Vec<OpId>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let limits::Split { entries, first } = limits::split(ops)?;
        // One clock reading per entry: the entries apply as if committed one after another.
        let hlcs: Vec<u64> = entries.iter().map(|_| self.next_hlc()).collect();
        let device = self.inner.device;
        // What the ops will change, worked out now (the write lock is held, so the state
        // cannot move under us), so that the entries and their numbering share one durable
        // commit.
        let (predicted, folders_changed) = self.predict(&entries);
        // This device's next log sequence numbers: every entry of this device in the store
        // has been applied (at open, by `refresh`, or here), so they follow the highest one.
        // Another process of this device writing meanwhile is caught in the transaction.
        let base = self.read_engine().vv.get(&device).copied().unwrap_or(0);
        let seqs: Vec<u64> = (1..=entries.len() as u64).map(|n| base + n).collect();
        let mut sealed = Vec::with_capacity(entries.len());
        let mut logged = Vec::with_capacity(entries.len());
        for ((ops, hlc), seq) in entries.into_iter().zip(hlcs).zip(seqs.iter().copied()) {
            let entry = LogEntry {
                device,
                seq,
                hlc,
                ops,
            };
            sealed.push((seq, entry.seal(&self.inner.keys, &self.inner.log_key)?));
            logged.push(entry);
        }
        let work: Vec<(FolderId, EntryId, u8)> = predicted
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
        let ids = first
            .iter()
            .map(|(n, idx)| OpId {
                device,
                seq: seqs[*n],
                idx: *idx,
            })
            .collect();
        let now = (now_ms() / 1000) as u32;
        let job = move |tx: &mut Tx<'_, '_>| -> Result<Vec<Numbered>> {
            for o in &objects {
                tx.put_object(o)?;
            }
            if let Some(also) = also {
                also(tx)?;
            }
            for (seq, bytes) in &sealed {
                if !tx.insert_log(device, *seq, bytes)? {
                    return Err(Error::Corrupt(format!(
                        "log entry {seq} of this device was written by another process meanwhile"
                    )));
                }
            }
            number_rows(tx, work, now)
        };
        for entry in &logged {
            self.apply_entry(entry);
        }
        let generation = self.inner.group.next_gen();
        let (done, answer) = tokio::sync::oneshot::channel();
        self.enqueue(group::Job {
            work: Box::new(job),
            folders_changed,
            generation,
            holds_lock: w.is_none(),
            done,
        });
        drop(w);
        answer
            .await
            .unwrap_or(Err(Error::NotAllowed("the mailbox is closing")))?;
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
        let top = e.vv.entry(entry.device).or_insert(0);
        *top = (*top).max(entry.seq);
        let mut fx = Vec::new();
        for (idx, op) in entry.ops.iter().enumerate() {
            let id = OpId {
                device: entry.device,
                seq: entry.seq,
                idx: idx as u32,
            };
            fx.extend(e.crdt.apply(id, entry.hlc, op));
            if let Op::Add { message, .. } = op
                && let Some(key) = maildir::delivery_key(&message.maildir_name)
            {
                let ids = e.deliveries.entry(key).or_default();
                ids.push(id);
                if ids.len() > 1 {
                    e.dirty_deliveries.insert(key);
                }
            }
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
        // After the queued commits (their numbering goes first, and is published first).
        self.settle().await;
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
                if self.is_refused(key.0, key.1) {
                    tracing::warn!(
                        device = key.0,
                        seq = key.1,
                        "skipping a log entry of a removed device"
                    );
                    self.write_engine().applied.insert(key);
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
        if total > 0 {
            self.resolve_deliveries_locked().await?;
            self.inner.log_written.send_modify(|n| *n += 1);
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
        self.settle().await;
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
}
