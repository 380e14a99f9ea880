//! The pure core of the Maildir file system: every operation the kernel asks for, as a plain
//! function returning `Result<_, Errno>`, testable without a mount.
//!
//! Layout (Maildir++, what Dovecot and mutt expect):
//!
//! ```text
//! /                 INBOX: cur/ new/ tmp/, local files (dovecot-uidlist, subscriptions, …)
//! /.A.B/            folder "A/B": cur/ new/ tmp/, local files (dovecot-uidlist, maildirfolder, …)
//! /cur/<base>:2,FL  a message in the engine (read-only bytes; rename changes flags/folder)
//! /new/<base>       a message no reader has seen yet
//! /tmp/<name>       a local file: where clients write mail before delivering it
//! ```
//!
//! Messages live in the [`MaildirSource`]; everything else (files in `tmp/`, and Dovecot's own
//! files beside `cur/new/tmp`) is an ordinary file in the backing directory on local disk,
//! under the same relative path. Delivery is `rename` (or `link`) from `tmp/` into `new/` or
//! `cur/`; the name's `:2,` letters are the flags, a rename that changes them is a flag change,
//! a rename into another folder's `new/`/`cur/` is a move, `link` is a copy, `unlink` an
//! expunge, and `mkdir`/`rmdir`/`rename` of `.Name` at the root manage folders.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use fuser::Errno;

mod deliveries;
mod files;
mod folders;
mod implicit;
mod keywords;
mod lookup;
mod prefetch;
mod refresh;
mod rename;
#[cfg(test)]
mod tests;
pub use keywords::KeywordMap;
pub use prefetch::WINDOW as PREFETCH_WINDOW;

use crate::deferred::{Change, Deferred};
use crate::inode::{Inodes, NodeKey, ROOT, Sub};
use crate::notify::WAKE_NAME;
use crate::pending::{How, Pending, Spare, Spares, is_provisional};
use crate::{Flags, MaildirSource, MessageEntry, MessageKey, NewMessage, SourceError};

/// The longest name in a directory (Linux NAME_MAX).
pub const MAX_NAME: usize = 255;
/// The most one `read` returns.
pub const MAX_READ: usize = 1 << 20;
/// Open file handles at once (each holds a message's bytes or a local file).
pub const MAX_HANDLES: usize = 4096;
/// The folder shown at the root.
pub const INBOX: &str = "INBOX";

/// Who owns the tree, as `stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A node's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What `stat` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// A message: its bytes never change and its name only through the kernel or with an
    /// invalidation, so the kernel may cache it long. Local files are also written by the
    /// tree itself (`subscriptions`), unseen by the kernel.
    pub message: bool,
}

/// One line of `readdir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// statfs numbers, in 4 KiB blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
}

/// Open-for-writing flags that [`Tree::open`] understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub write: bool,
    pub read: bool,
    pub truncate: bool,
    pub append: bool,
    /// With create: fail with EEXIST if the name exists (`O_EXCL`, and MKNOD).
    pub exclusive: bool,
}

impl OpenMode {
    /// From `open(2)` flags.
    pub fn from_flags(flags: i32) -> OpenMode {
        let acc = flags & libc::O_ACCMODE;
        OpenMode {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
            exclusive: flags & libc::O_EXCL != 0,
        }
    }
}

/// A folder's messages as files: by key, and by name in `new/` and in `cur/`. A message's key
/// and its file name are each allocated once and shared by the maps (`Arc<str>`): with 100k
/// messages, a copy per map cost ~40 MiB.
#[derive(Debug)]
struct Listing {
    entries: HashMap<MessageKey, MessageEntry>,
    /// Where each entry is shown (kept, so a removal finds the name it had).
    shown: HashMap<MessageKey, (Sub, Arc<str>)>,
    new: HashMap<Arc<str>, MessageKey>,
    cur: HashMap<Arc<str>, MessageKey>,
    /// mtime of `new/` and `cur/`: when a name in them last changed (mutt polls these).
    mtime: [SystemTime; 2],
}

impl Default for Listing {
    fn default() -> Listing {
        let now = SystemTime::now();
        Listing {
            entries: HashMap::new(),
            shown: HashMap::new(),
            new: HashMap::new(),
            cur: HashMap::new(),
            mtime: [now; 2],
        }
    }
}

impl Listing {
    fn touch(&mut self, sub: Sub) {
        self.mtime[usize::from(sub != Sub::New)] = SystemTime::now();
    }

    fn build(
        entries: Vec<MessageEntry>,
        keywords: &KeywordMap,
        pending: Option<&HashMap<MessageKey, Vec<char>>>,
        bare: Option<&HashSet<MessageKey>>,
        renamed: &HashMap<MessageKey, String>,
    ) -> Listing {
        let mut l = Listing::default();
        for mut e in entries {
            if let Some(b) = renamed.get(&e.key) {
                e.base = b.clone();
            }
            let extra = pending
                .and_then(|p| p.get(&e.key))
                .cloned()
                .unwrap_or_default();
            let is_bare = bare.is_some_and(|b| b.contains(&e.key));
            l.insert(e, keywords, &extra, is_bare);
        }
        l
    }

    fn names(&mut self, sub: Sub) -> &mut HashMap<Arc<str>, MessageKey> {
        if sub == Sub::New {
            &mut self.new
        } else {
            &mut self.cur
        }
    }

    /// Adds an entry; a name already taken in this folder (two copies of one message) gets
    /// the key's first 8 characters appended to its base, so every file name is unique.
    /// `extra`: keyword letters the client named that `dovecot-keywords` does not define yet
    /// (Dovecot renames a message before it writes the new letter into the file).
    fn insert(&mut self, mut e: MessageEntry, keywords: &KeywordMap, extra: &[char], bare: bool) {
        self.remove(&e.key);
        let mut name = keywords.file_name_with(&e, extra, bare);
        if self.new.contains_key(name.as_str()) || self.cur.contains_key(name.as_str()) {
            let suffix: String = e.key.0.chars().take(8).collect();
            e.base = format!("{}.{suffix}", e.base);
            name = keywords.file_name_with(&e, extra, bare);
        }
        let sub = sub_of(&e);
        self.touch(sub);
        let name: Arc<str> = name.into();
        self.names(sub).insert(Arc::clone(&name), e.key.clone());
        self.shown.insert(e.key.clone(), (sub, name));
        e.base.shrink_to_fit();
        self.entries.insert(e.key.clone(), e);
    }

    fn remove(&mut self, key: &MessageKey) -> Option<MessageEntry> {
        let e = self.entries.remove(key)?;
        if let Some((sub, name)) = self.shown.remove(key) {
            self.names(sub).remove(&name);
            self.touch(sub);
        }
        Some(e)
    }

    fn by_name(&self, sub: Sub, name: &str) -> Option<&MessageEntry> {
        let names = if sub == Sub::New {
            &self.new
        } else {
            &self.cur
        };
        names.get(name).and_then(|k| self.entries.get(k))
    }
}

/// Whether a local file's path (relative to the backing directory) is in a `tmp/`.
fn is_tmp_rel(rel: &str) -> bool {
    rel.starts_with("tmp/") || rel.contains("/tmp/")
}

fn sub_of(e: &MessageEntry) -> Sub {
    if e.recent { Sub::New } else { Sub::Cur }
}

/// An open file.
#[derive(Debug)]
enum Handle {
    /// A message, its bytes fetched at the first read: with the kernel keeping a message's
    /// pages across opens (FOPEN_KEEP_CACHE), most opens never read (Dovecot's SEARCH TEXT
    /// opens every file again), and then cost no decryption.
    Message {
        key: MessageKey,
        size: u64,
        bytes: OnceLock<Arc<Vec<u8>>>,
    },
    /// A directory's entries as of `opendir` (or the last rewind): `readdir` offsets index
    /// this snapshot, so a directory changing while it is read (mutt and `ls | while mv`
    /// do that) neither repeats nor skips names.
    Dir(Arc<Vec<DirEntry>>),
    Local {
        file: Arc<File>,
        in_tmp: bool,
        ino: u64,
    },
}

#[derive(Debug)]
struct State {
    inodes: Inodes,
    folders: Option<BTreeSet<String>>,
    listings: HashMap<String, Listing>,
    handles: HashMap<u64, Arc<Handle>>,
    next_handle: u64,
    /// Per folder: messages renamed with keyword letters `dovecot-keywords` did not define
    /// yet; resolved into engine keywords when the file next changes.
    pending: HashMap<String, HashMap<MessageKey, Vec<char>>>,
    /// A path (relative to the backing directory) of each local file known, by its backing
    /// inode number.
    local_path: HashMap<u64, String>,
    /// Local files taken out of sight but kept readable by inode (implicit.rs), oldest first.
    buried: VecDeque<(u64, Instant)>,
    /// Folders made by `mkdir` in this mount whose cur/new/tmp are not all made yet
    /// (bit per [`Sub`]); other folders have all three.
    fresh: HashMap<String, u8>,
    /// Per folder: messages the client named without `:2,` in `cur/` (shown so).
    bare: HashMap<String, HashSet<MessageKey>>,
    /// Flag changes answered, not yet committed by the engine.
    deferred: Deferred,
    /// Deliveries answered, not yet committed by the engine (pending.rs).
    deliveries: Pending,
    /// Base names the client gave messages on this mount (mbsync appends `,U=<uid>`), by
    /// message key; the engine keeps the base it was delivered with. Kept in
    /// [`RENAMED_FILE`], so they survive a remount.
    renamed: HashMap<MessageKey, String>,
}

impl State {
    fn set_bare(&mut self, folder: &str, key: &MessageKey, bare: bool) {
        if bare {
            let set = self.bare.entry(folder.to_string()).or_default();
            if set.len() < MAX_PENDING {
                set.insert(key.clone());
            }
        } else if let Some(set) = self.bare.get_mut(folder) {
            set.remove(key);
        }
    }
}

fn sub_bit(s: Sub) -> u8 {
    match s {
        Sub::Cur => 1,
        Sub::New => 2,
        Sub::Tmp => 4,
    }
}

/// Messages with unresolved keyword letters remembered per folder (beyond: letters dropped).
pub const MAX_PENDING: usize = 10_000;

/// Base-name renames remembered (beyond: refused with ENOSPC).
pub const MAX_RENAMED: usize = 500_000;

/// Where the base-name renames are kept, in the backing directory: one `<key> <base>` line
/// each, appended; the last line of a key wins. Not reachable through the mount: the tree
/// shows only files of the backing directory, and `..peerpost` is no folder's directory.
pub const RENAMED_FILE: &str = "..peerpost/basenames";

/// The backing directory's private state (base names, the flag and delivery journals, the
/// pending deliveries' files).
pub const STATE_DIR: &str = "..peerpost";

/// Reads [`RENAMED_FILE`]; malformed lines are skipped. Rewrites it compacted when it holds
/// more than twice the live entries.
fn load_renamed(backing: &Path) -> HashMap<MessageKey, String> {
    let path = backing.join(RENAMED_FILE);
    let Ok(text) = fs::read_to_string(&path) else {
        return HashMap::new();
    };
    let mut map = HashMap::new();
    let mut lines = 0usize;
    for line in text.lines() {
        lines += 1;
        let Some((k, base)) = line.split_once(' ') else {
            continue;
        };
        if k.is_empty() || base.is_empty() || base.contains(['/', ':']) || base.len() > MAX_NAME {
            continue;
        }
        if map.len() < MAX_RENAMED || map.contains_key(&MessageKey(k.into())) {
            map.insert(MessageKey(k.into()), base.to_string());
        }
    }
    if lines > 2 * map.len() + 100 {
        let mut out = String::new();
        for (k, b) in &map {
            out.push_str(&format!("{} {b}\n", k.0));
        }
        let tmp = path.with_extension("tmp");
        if fs::write(&tmp, out).is_ok() {
            let _ = fs::rename(&tmp, &path);
        }
    }
    map
}

/// What a name in a directory refers to.
#[derive(Debug, Clone)]
enum Child {
    Folder(String),
    Sub(String, Sub),
    Message(String, MessageEntry),
    /// A local file (relative path), and the folder whose `tmp/` holds it, if any.
    Local(String, Option<String>),
}

/// Where a new name would go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// Beside `cur/new/tmp` of a folder (INBOX: the root).
    FolderDir(String),
    Sub(String, Sub),
}

/// The Maildir tree over a source and a backing directory.
pub struct Tree<S: MaildirSource> {
    source: Arc<S>,
    backing: PathBuf,
    owner: Owner,
    /// The mtime of directories that have no better one.
    started: SystemTime,
    state: Mutex<State>,
    /// Serializes operations that change the engine. The slow part of them (the engine's
    /// durable commit) runs without `state`, so lookups, reads and listings go on meanwhile.
    write: Mutex<()>,
    /// The flusher's wake-up (see [`Tree::run_flusher`]).
    flush: Mutex<FlushState>,
    flush_cv: Condvar,
    /// One flush at a time.
    flushing: Mutex<()>,
    /// Handles kept for requests the kernel sends without one (implicit.rs).
    kept: Mutex<implicit::Kept>,
    /// Committed deliveries' files, emptied for new `tmp/` files (pending.rs).
    spares: Spares,
    /// Files made in `tmp/`, kept open for their writes and fsyncs (implicit.rs).
    made: Mutex<implicit::Made>,
    /// Listing orders, for hints of the messages a reader reads next (prefetch.rs).
    readahead: prefetch::Readahead,
}

#[derive(Debug, Default)]
struct FlushState {
    wanted: bool,
    stopped: bool,
}

/// How long the flusher lets flag changes gather before it commits them.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// How long the flusher lets deliveries gather (fewer, larger commits), unless a full batch
/// ([`crate::pending::MAX_BATCH`]) is queued sooner.
pub const DELIVERY_DELAY: Duration = Duration::from_millis(50);

impl<S: MaildirSource> std::fmt::Debug for Tree<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tree({})", self.backing.display())
    }
}

/// The errno for a source error.
pub fn errno(e: &SourceError) -> Errno {
    match e {
        SourceError::NotFound => Errno::ENOENT,
        SourceError::Exists => Errno::EEXIST,
        SourceError::NoSpace => Errno::ENOSPC,
        SourceError::TooLarge => Errno::EFBIG,
        SourceError::Unavailable => Errno::EIO,
        SourceError::Invalid(_) => Errno::EINVAL,
        SourceError::Io(_) => Errno::EIO,
    }
}

fn io_errno(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
}

/// The directory name of a folder: `A/B` → `.A.B` (INBOX is the root: empty).
pub fn folder_dir(folder: &str) -> String {
    if folder == INBOX {
        String::new()
    } else {
        format!(".{}", folder.replace('/', "."))
    }
}

/// The folder a root-level directory name stands for: `.A.B` → `A/B`.
pub fn dir_folder(name: &str) -> Option<String> {
    let rest = name.strip_prefix('.')?;
    if rest.is_empty() || rest.split('.').any(str::is_empty) {
        return None;
    }
    let f = rest.replace('.', "/");
    if f.eq_ignore_ascii_case(INBOX) {
        return None;
    }
    Some(f)
}

fn check_name(name: &str) -> Result<(), Errno> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    if name.len() > MAX_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn secs(t: i64) -> SystemTime {
    if t >= 0 {
        UNIX_EPOCH + Duration::from_secs(t as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
    }
}

impl<S: MaildirSource> Tree<S> {
    /// A tree over `source`, keeping local files under `backing` (created if missing).
    pub fn new(source: Arc<S>, backing: &Path, owner: Owner) -> io::Result<Tree<S>> {
        fs::create_dir_all(backing.join("tmp"))?;
        // Files buried by a previous run: nobody has them open any more.
        let _ = fs::remove_dir_all(backing.join(implicit::GONE_DIR));
        let tree = Tree {
            source,
            backing: backing.to_path_buf(),
            owner,
            started: SystemTime::now(),
            write: Mutex::new(()),
            state: Mutex::new(State {
                inodes: Inodes::new(),
                folders: None,
                listings: HashMap::new(),
                handles: HashMap::new(),
                next_handle: 1,
                pending: HashMap::new(),
                local_path: HashMap::new(),
                buried: VecDeque::new(),
                fresh: HashMap::new(),
                bare: HashMap::new(),
                renamed: load_renamed(backing),
                deferred: Deferred::load(&backing.join(STATE_DIR)),
                deliveries: Pending::load(&backing.join(STATE_DIR)),
            }),
            flush: Mutex::new(FlushState::default()),
            flush_cv: Condvar::new(),
            flushing: Mutex::new(()),
            kept: Mutex::new(implicit::Kept::default()),
            made: Mutex::new(implicit::Made::default()),
            spares: Spares::load(&backing.join(STATE_DIR)),
            readahead: prefetch::Readahead::default(),
        };
        // Dovecot reads the subscribed folders from here: the engine's, at start.
        tree.write_subscriptions();
        // Flag changes and deliveries a killed daemon had answered: committed by the first
        // flush.
        if tree.flags_pending() || tree.deliveries_pending() {
            tree.signal_flush();
        }
        Ok(tree)
    }

    pub fn source(&self) -> &Arc<S> {
        &self.source
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- caches -----

    fn folders<'a>(&self, st: &'a mut State) -> Result<&'a BTreeSet<String>, Errno> {
        if st.folders.is_none() {
            let list = self.source.folders().map_err(|e| errno(&e))?;
            st.folders = Some(list.into_iter().collect());
        }
        st.folders.as_ref().ok_or(Errno::EIO)
    }

    fn folder_exists(&self, st: &mut State, folder: &str) -> Result<bool, Errno> {
        Ok(folder == INBOX || self.folders(st)?.contains(folder))
    }

    /// Commits the queued deliveries and flag changes before an operation that must see
    /// them (`needed`), if there are any. A failure is left to the flusher's retries.
    fn settle(&self, needed: bool) {
        if needed && (self.flags_pending() || self.deliveries_pending()) {
            let _ = self.flush();
        }
    }

    /// Asks the flusher to commit the queued flag changes soon.
    pub fn signal_flush(&self) {
        let mut f = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        f.wanted = true;
        self.flush_cv.notify_one();
    }

    /// The flusher: commits queued deliveries and flag changes [`FLUSH_DELAY`] after the
    /// first of them, until
    /// [`Tree::stop_flusher`]. A failed commit is retried a second later. Run it on a thread
    /// of its own (it calls the engine).
    pub fn run_flusher(&self) {
        loop {
            {
                let mut f = self.flush.lock().unwrap_or_else(|p| p.into_inner());
                while !f.wanted && !f.stopped {
                    f = self
                        .flush_cv
                        .wait_timeout(f, Duration::from_secs(1))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                if f.stopped {
                    return;
                }
                f.wanted = false;
            }
            std::thread::sleep(FLUSH_DELAY);
            self.gather_deliveries();
            if self.flush().is_err() {
                std::thread::sleep(Duration::from_secs(1));
                self.signal_flush();
            }
        }
    }

    /// Ends [`Tree::run_flusher`] (what is queued stays: call [`Tree::flush`]).
    pub fn stop_flusher(&self) {
        let mut f = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        f.stopped = true;
        self.flush_cv.notify_all();
    }

    /// Commits the queued flag changes to the engine now (one batch).
    pub fn flush_flags(&self) -> Result<(), Errno> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let batch = self.lock().deferred.take();
        if batch.is_empty() {
            return Ok(());
        }
        let r = self.source.set_flags_many(batch);
        self.lock().deferred.done(r.is_ok());
        r.map_err(|e| errno(&e))
    }

    /// Whether flag changes wait for the engine.
    pub fn flags_pending(&self) -> bool {
        !self.lock().deferred.is_empty()
    }

    /// Records that the message `key` is shown with base name `base` on this mount (in memory
    /// at once; the error is about keeping it on disk).
    fn remember_base(&self, st: &mut State, key: &MessageKey, base: &str) -> Result<(), Errno> {
        use std::io::Write;
        let path = self.backing.join(RENAMED_FILE);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| io_errno(&e))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_errno(&e))?;
        st.renamed.insert(key.clone(), base.to_string());
        f.write_all(format!("{} {base}\n", key.0).as_bytes())
            .map_err(|e| io_errno(&e))
    }

    fn listing<'a>(&self, st: &'a mut State, folder: &str) -> Result<&'a mut Listing, Errno> {
        if !st.listings.contains_key(folder) {
            let mut entries = self.source.messages(folder).map_err(|e| errno(&e))?;
            for e in &mut entries {
                Self::overlay_deferred(st, folder, e);
            }
            let keywords = self.keywords(folder);
            // So are deliveries.
            Self::overlay_deliveries(st, folder, &keywords, &mut entries);
            let l = Listing::build(
                entries,
                &keywords,
                st.pending.get(folder),
                st.bare.get(folder),
                &st.renamed,
            );
            st.listings.insert(folder.to_string(), l);
        }
        st.listings.get_mut(folder).ok_or(Errno::EIO)
    }

    /// A flag change answered but not committed yet is shown as made.
    fn overlay_deferred(st: &State, folder: &str, e: &mut MessageEntry) {
        if let Some(c) = st.deferred.get(folder, &e.key) {
            e.flags = c.flags.clone();
            if c.seen_by_reader {
                e.recent = false;
            }
        }
    }
}

fn has_files(dir: &Path) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|d| match d.file_type() {
        Ok(t) if t.is_dir() => has_files(&d.path()),
        _ => true,
    })
}
