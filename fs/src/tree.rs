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
mod implicit;
mod prefetch;
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

/// A folder's `dovecot-keywords` (Dovecot's format: `<index> <keyword>` per line, index 0 =
/// letter `a`): how keywords appear in file names. The file is local and Dovecot's; the
/// tree only reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeywordMap {
    by_index: Vec<Option<String>>,
}

impl KeywordMap {
    /// Parses the file; malformed lines are skipped.
    pub fn parse(text: &str) -> KeywordMap {
        let mut by_index = vec![None; 26];
        for line in text.lines().take(1000) {
            let Some((n, kw)) = line.split_once(' ') else {
                continue;
            };
            if let Ok(n) = n.parse::<usize>()
                && n < 26
                && !kw.is_empty()
                && kw.len() <= 255
                && !kw.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                by_index[n] = Some(kw.to_string());
            }
        }
        KeywordMap { by_index }
    }

    pub fn keyword(&self, letter: char) -> Option<&str> {
        let i = (letter as u32).checked_sub('a' as u32)? as usize;
        self.by_index.get(i)?.as_deref()
    }

    pub fn letter(&self, keyword: &str) -> Option<char> {
        let i = self
            .by_index
            .iter()
            .position(|k| k.as_deref() == Some(keyword))?;
        char::from_u32('a' as u32 + i as u32)
    }

    /// The file name of an entry: a bare base while it is in `new/` with no letters to show,
    /// `<base>:2,<system letters><keyword letters>` otherwise (keywords without a letter
    /// here are not shown).
    pub fn file_name(&self, e: &MessageEntry) -> String {
        self.file_name_with(e, &[], false)
    }

    /// [`KeywordMap::file_name`] with more keyword letters shown.
    /// `bare`: the client named it without `:2,` (mutt moves old unread mail into `cur/`
    /// that way): shown so while there are no letters to show.
    pub fn file_name_with(&self, e: &MessageEntry, extra: &[char], bare: bool) -> String {
        let mut letters = e.flags.to_string();
        let mut kw: Vec<char> = e
            .flags
            .keywords
            .iter()
            .filter_map(|k| self.letter(k))
            .chain(extra.iter().copied())
            .collect();
        kw.sort_unstable();
        kw.dedup();
        letters.extend(kw);
        if (e.recent || bare) && letters.is_empty() {
            e.base.clone()
        } else {
            format!("{}:2,{letters}", e.base)
        }
    }

    /// A file name's base and flags: `base:2,FSa` → (`base`, F S + the keyword of `a`).
    /// A name without `:2,` has no flags; letters this map does not know are dropped.
    pub fn parse_name(&self, name: &str) -> (String, Flags) {
        match name.rfind(":2,") {
            Some(i) => {
                let letters = &name[i + 3..];
                let mut f = Flags::from_letters(letters);
                f.keywords = letters
                    .chars()
                    .filter(char::is_ascii_lowercase)
                    .filter_map(|c| self.keyword(c).map(str::to_string))
                    .collect();
                (name[..i].to_string(), f)
            }
            None => (name.to_string(), Flags::default()),
        }
    }

    /// Keyword letters of a name that this map does not define.
    pub fn unknown_letters(&self, name: &str) -> Vec<char> {
        let Some(i) = name.rfind(":2,") else {
            return Vec::new();
        };
        let mut v: Vec<char> = name[i + 3..]
            .chars()
            .filter(|c| c.is_ascii_lowercase() && self.keyword(*c).is_none())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Keywords the map cannot show (kept as they are when a rename sets flags).
    pub fn hidden(&self, flags: &Flags) -> BTreeSet<String> {
        flags
            .keywords
            .iter()
            .filter(|k| self.letter(k).is_none())
            .cloned()
            .collect()
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

    /// Parses Dovecot's `subscriptions` (`V<TAB>2`, a blank line, then one name per line with
    /// TAB between levels; or the old format, one name per line with '.').
    pub fn parse_subscriptions(text: &str) -> BTreeSet<String> {
        let mut lines = text.lines();
        let v2 = text.starts_with("V\t");
        if v2 {
            // Header, then the blank line.
            lines.next();
            lines.next();
        }
        lines
            .take(100_000)
            .filter(|l| !l.is_empty() && l.len() <= 1024)
            .map(|l| {
                if v2 {
                    l.replace('\t', "/")
                } else {
                    l.replace('.', "/")
                }
            })
            .collect()
    }

    fn subscriptions_path(&self) -> PathBuf {
        self.backing.join("subscriptions")
    }

    fn file_subscriptions(&self) -> Option<BTreeSet<String>> {
        let m = fs::symlink_metadata(self.subscriptions_path()).ok()?;
        if !m.is_file() || m.len() > 4 << 20 {
            return None;
        }
        let text = fs::read_to_string(self.subscriptions_path()).ok()?;
        Some(Self::parse_subscriptions(&text))
    }

    /// Writes the engine's subscribed folders into the local `subscriptions`, if they differ
    /// from what it holds (atomically: temp file, then rename).
    ///
    /// Holds the write lock: otherwise this could slip between Dovecot's rename of a new
    /// `subscriptions` into place and [`Self::subscriptions_changed`] reading it, replace
    /// Dovecot's file with the engine's older view, and lose the change (seen under load).
    pub fn write_subscriptions(&self) {
        let _w = self.write_lock();
        let Ok(list) = self.source.subscriptions() else {
            return;
        };
        let want: BTreeSet<String> = list.into_iter().filter(|f| f != INBOX).collect();
        if self.file_subscriptions().unwrap_or_default() == want {
            return;
        }
        let mut text = String::from("V\t2\n\n");
        for f in &want {
            text.push_str(&f.replace('/', "\t"));
            text.push('\n');
        }
        let tmp = self.backing.join(".subscriptions.peerpost");
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, self.subscriptions_path());
        }
    }

    /// Dovecot replaced `subscriptions`: the engine follows it.
    fn subscriptions_changed(&self) {
        let Some(file) = self.file_subscriptions() else {
            return;
        };
        let engine: BTreeSet<String> = self
            .source
            .subscriptions()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for f in file.difference(&engine) {
            let _ = self.source.set_subscribed(f, true);
        }
        for f in engine.difference(&file) {
            if f != INBOX {
                let _ = self.source.set_subscribed(f, false);
            }
        }
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

    /// The folder's keyword letters (its local `dovecot-keywords`; none if absent).
    pub fn keywords(&self, folder: &str) -> KeywordMap {
        let rel = Self::local_rel(&Place::FolderDir(folder.to_string()), "dovecot-keywords");
        let path = self.local_path(&rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= 64 * 1024 => {
                KeywordMap::parse(&fs::read_to_string(&path).unwrap_or_default())
            }
            _ => KeywordMap::default(),
        }
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

    /// Re-reads `keys` of a folder from the engine and updates the cached listing in place,
    /// as [`Tree::refresh_folder`] would show them; returns the names that changed. A change
    /// the mount made itself (a committed batch of deliveries, a flag change) is shown
    /// already: nothing changes then, and the directories keep their mtime. Rebuilding the
    /// whole listing for each of the mount's own commits cost more than the commits (1,861
    /// rebuilds of an 18,000-message folder in one benchmark run).
    pub fn refresh_messages(&self, folder: &str, keys: &[MessageKey]) -> Vec<(u64, String)> {
        let mut st = self.lock();
        if !st.listings.contains_key(folder) {
            return Vec::new();
        }
        let keywords = self.keywords(folder);
        let hide = Self::hidden_by_deliveries(&st, folder, &keywords);
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        for key in keys {
            let fresh = match self.source.message(folder, key) {
                Ok(e) => e,
                Err(_) => {
                    // The folder went away (its removal is shown with the folder list), or
                    // the engine failed: re-read the whole folder.
                    drop(st);
                    return self.refresh_folder(folder);
                }
            };
            let fresh = fresh.map(|mut e| {
                Self::overlay_deferred(&st, folder, &mut e);
                if let Some(b) = st.renamed.get(&e.key) {
                    e.base = b.clone();
                }
                e
            });
            let extra = st
                .pending
                .get(folder)
                .and_then(|p| p.get(key))
                .cloned()
                .unwrap_or_default();
            let bare = st.bare.get(folder).is_some_and(|b| b.contains(key));
            let Some(l) = st.listings.get_mut(folder) else {
                break;
            };
            let before = l.shown.get(key).cloned();
            match fresh {
                // Stands for a pending delivery: shown under its provisional key until then.
                Some(e) if hide.contains(&(e.base.clone(), e.size, e.internal_date)) => {}
                Some(e) => {
                    let mtime = l.mtime;
                    l.insert(e, &keywords, &extra, bare);
                    let after = l.shown.get(key).cloned();
                    if after == before {
                        l.mtime = mtime;
                        continue;
                    }
                    changed.extend(before.map(|(s, n)| (s, n.to_string())));
                    changed.extend(after.map(|(s, n)| (s, n.to_string())));
                }
                None => {
                    if l.remove(key).is_some() {
                        changed.extend(before.map(|(s, n)| (s, n.to_string())));
                        gone.push(key.clone());
                    }
                }
            }
        }
        Self::refreshed(&mut st, folder, gone, changed)
    }

    /// The end of a refresh: messages `gone` from the folder are forgotten, and the names
    /// `changed` (in `new/` or `cur/`) are given with their directory's inode number.
    fn refreshed(
        st: &mut State,
        folder: &str,
        gone: Vec<MessageKey>,
        changed: Vec<(Sub, String)>,
    ) -> Vec<(u64, String)> {
        for k in gone {
            Self::forget_message(st, folder, &k);
        }
        changed
            .into_iter()
            .map(|(sub, name)| {
                let ino = st.inodes.ino(&NodeKey::Sub(folder.to_string(), sub));
                (ino, name)
            })
            .collect()
    }

    /// A message gone from a folder (expunged or moved elsewhere) gives up its number and
    /// the names kept for it, so a long mount does not grow without bound.
    fn forget_message(st: &mut State, folder: &str, k: &MessageKey) {
        st.inodes
            .remove(&NodeKey::Message(folder.to_string(), k.clone()));
        if let Some(p) = st.pending.get_mut(folder) {
            p.remove(k);
        }
        st.set_bare(folder, k, false);
    }

    /// Forgets what is cached of a folder's messages (the engine changed it); returns the
    /// names (directory inode, name) that changed, for the kernel's cache.
    pub fn refresh_folder(&self, folder: &str) -> Vec<(u64, String)> {
        let mut st = self.lock();
        let Some(old) = st.listings.remove(folder) else {
            return Vec::new();
        };
        let Ok(new) = self.listing(&mut st, folder) else {
            return Vec::new();
        };
        let gone: Vec<MessageKey> = old
            .entries
            .keys()
            .filter(|k| !new.entries.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = Vec::new();
        for sub in [Sub::New, Sub::Cur] {
            let i = usize::from(sub != Sub::New);
            let (o, n) = if sub == Sub::New {
                (&old.new, &new.new)
            } else {
                (&old.cur, &new.cur)
            };
            let before = changed.len();
            for name in o.keys().filter(|k| !n.contains_key(*k)) {
                changed.push((sub, name.to_string()));
            }
            for name in n.keys().filter(|k| !o.contains_key(*k)) {
                changed.push((sub, name.to_string()));
            }
            // Unchanged directories keep their mtime (pollers would rescan otherwise).
            new.mtime[i] = if changed.len() > before {
                SystemTime::now()
            } else {
                old.mtime[i]
            };
        }
        Self::refreshed(&mut st, folder, gone, changed)
    }

    /// Forgets the folder list (folders were created, renamed or deleted elsewhere); returns
    /// the root-level names that changed.
    pub fn refresh_folders(&self) -> Vec<(u64, String)> {
        self.write_subscriptions();
        let mut st = self.lock();
        let old = st.folders.take().unwrap_or_default();
        let Ok(new) = self.folders(&mut st).cloned() else {
            return Vec::new();
        };
        let gone: Vec<String> = old.difference(&new).cloned().collect();
        for f in &gone {
            st.listings.remove(f);
        }
        gone.iter()
            .chain(new.difference(&old))
            .filter(|f| *f != INBOX)
            .map(|f| (ROOT, folder_dir(f)))
            .collect()
    }

    /// Folders whose messages are cached (the ones worth refreshing on a change).
    pub fn cached_folders(&self) -> Vec<String> {
        self.lock().listings.keys().cloned().collect()
    }

    // ----- resolving -----

    fn key(&self, st: &State, ino: u64) -> Result<NodeKey, Errno> {
        st.inodes.key(ino).cloned().ok_or(Errno::ENOENT)
    }

    /// The place a directory inode stands for.
    fn place(&self, st: &mut State, ino: u64) -> Result<Place, Errno> {
        match self.key(st, ino)? {
            NodeKey::Root => Ok(Place::FolderDir(INBOX.into())),
            NodeKey::Folder(f) => {
                if !self.folder_exists(st, &f)? {
                    return Err(Errno::ENOENT);
                }
                Ok(Place::FolderDir(f))
            }
            NodeKey::Sub(f, s) => {
                if !self.folder_exists(st, &f)? {
                    return Err(Errno::ENOENT);
                }
                Ok(Place::Sub(f, s))
            }
            NodeKey::Message(..) | NodeKey::Local(_) => Err(Errno::ENOTDIR),
        }
    }

    fn local_rel(place: &Place, name: &str) -> String {
        match place {
            Place::FolderDir(f) => {
                let d = folder_dir(f);
                if d.is_empty() {
                    name.to_string()
                } else {
                    format!("{d}/{name}")
                }
            }
            Place::Sub(f, s) => {
                let d = folder_dir(f);
                if d.is_empty() {
                    format!("{}/{name}", s.name())
                } else {
                    format!("{d}/{}/{name}", s.name())
                }
            }
        }
    }

    fn local_path(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// What `name` in `place` is.
    fn child(&self, st: &mut State, place: &Place, name: &str) -> Result<Child, Errno> {
        check_name(name)?;
        match place {
            Place::FolderDir(f) => {
                if let Some(s) = Sub::from_name(name) {
                    if st.fresh.get(f).is_some_and(|made| made & sub_bit(s) == 0) {
                        return Err(Errno::ENOENT);
                    }
                    return Ok(Child::Sub(f.clone(), s));
                }
                if f == INBOX
                    && let Some(g) = dir_folder(name)
                    && self.folders(st)?.contains(&g)
                {
                    return Ok(Child::Folder(g));
                }
                let rel = Self::local_rel(place, name);
                match fs::symlink_metadata(self.local_path(&rel)) {
                    Ok(m) if m.is_file() => Ok(Child::Local(rel, None)),
                    _ => Err(Errno::ENOENT),
                }
            }
            Place::Sub(f, Sub::Tmp) => {
                let rel = Self::local_rel(place, name);
                match fs::symlink_metadata(self.local_path(&rel)) {
                    Ok(m) if m.is_file() => Ok(Child::Local(rel, Some(f.clone()))),
                    _ => Err(Errno::ENOENT),
                }
            }
            Place::Sub(_, _) if name == WAKE_NAME => {
                let rel = Self::local_rel(place, name);
                match fs::symlink_metadata(self.local_path(&rel)) {
                    Ok(m) if m.is_file() => Ok(Child::Local(rel, None)),
                    _ => Err(Errno::ENOENT),
                }
            }
            Place::Sub(f, s) => {
                let l = self.listing(st, f)?;
                let e = l.by_name(*s, name).ok_or(Errno::ENOENT)?;
                Ok(Child::Message(f.clone(), e.clone()))
            }
        }
    }

    fn child_key(&self, st: &mut State, child: &Child) -> Result<NodeKey, Errno> {
        Ok(match child {
            Child::Folder(f) => NodeKey::Folder(f.clone()),
            Child::Sub(f, s) => NodeKey::Sub(f.clone(), *s),
            Child::Message(f, e) => NodeKey::Message(f.clone(), e.key.clone()),
            Child::Local(rel, _) => self.local_key(st, rel)?,
        })
    }

    /// The key of the local file at `rel` (its backing inode), remembering the path.
    fn local_key(&self, st: &mut State, rel: &str) -> Result<NodeKey, Errno> {
        let m = fs::symlink_metadata(self.local_path(rel)).map_err(|e| io_errno(&e))?;
        st.local_path.insert(m.ino(), rel.to_string());
        Ok(NodeKey::Local(m.ino()))
    }

    /// A path of a local file known by its backing inode.
    fn local_rel_of(st: &State, b: u64) -> Result<String, Errno> {
        st.local_path.get(&b).cloned().ok_or(Errno::ENOENT)
    }

    /// [`Tree::local_rel_of`], checked to still hold that file, for opening or changing it.
    /// The name may hold another file by now (replaced by a rename, or unlinked and made
    /// again): opening or truncating that in this inode's stead would show a process another
    /// file's bytes under the inode it had (Dovecot read a corrupted index then, or died of
    /// SIGBUS when a short read made the kernel shrink the inode). The caller holds the
    /// state lock, which keeps the tree's own renames out meanwhile.
    fn local_rel_checked(&self, st: &State, b: u64) -> Result<String, Errno> {
        self.local_checked(st, b).map(|(rel, _)| rel)
    }

    /// [`Tree::local_rel_checked`] with the file's metadata.
    fn local_checked(&self, st: &State, b: u64) -> Result<(String, fs::Metadata), Errno> {
        let rel = Self::local_rel_of(st, b)?;
        match fs::symlink_metadata(self.local_path(&rel)) {
            Ok(m) if m.ino() == b => Ok((rel, m)),
            _ => Err(Errno::ESTALE),
        }
    }

    fn dir_attr(&self, ino: u64, nlink: u32) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 4096,
            mtime: self.started,
            perm: 0o700,
            nlink,
            uid: self.owner.uid,
            gid: self.owner.gid,
            message: false,
        }
    }

    fn attr_of(&self, st: &mut State, key: &NodeKey) -> Result<Attr, Errno> {
        let ino = st.inodes.ino(key);
        match key {
            NodeKey::Root => {
                let n = self.folders(st)?.iter().filter(|f| *f != INBOX).count();
                Ok(self.dir_attr(ino, 5 + n as u32))
            }
            NodeKey::Folder(f) => {
                if !self.folder_exists(st, f)? {
                    return Err(Errno::ENOENT);
                }
                Ok(self.dir_attr(ino, 5))
            }
            NodeKey::Sub(f, s) => {
                if !self.folder_exists(st, f)? {
                    return Err(Errno::ENOENT);
                }
                let mut a = self.dir_attr(ino, 2);
                a.mtime = match s {
                    Sub::Tmp => fs::metadata(
                        self.backing
                            .join(Self::local_rel(&Place::FolderDir(f.clone()), "tmp")),
                    )
                    .and_then(|m| m.modified())
                    .unwrap_or(self.started),
                    s => self.listing(st, f)?.mtime[usize::from(*s != Sub::New)],
                };
                Ok(a)
            }
            NodeKey::Message(f, k) => {
                let e = self
                    .listing(st, f)?
                    .entries
                    .get(k)
                    .cloned()
                    .ok_or(Errno::ENOENT)?;
                Ok(Attr {
                    ino,
                    kind: Kind::File,
                    size: e.size,
                    mtime: secs(e.internal_date),
                    perm: 0o600,
                    nlink: 1,
                    uid: self.owner.uid,
                    gid: self.owner.gid,
                    message: true,
                })
            }
            NodeKey::Local(b) => {
                let rel = Self::local_rel_of(st, *b)?;
                let m = fs::symlink_metadata(self.local_path(&rel)).map_err(|e| io_errno(&e))?;
                if !m.is_file() || m.ino() != *b {
                    return Err(Errno::ENOENT);
                }
                // A buried file has no name left, as an open file unlinked on a disk.
                Ok(self.local_attr(ino, &m, !rel.starts_with(implicit::GONE_DIR)))
            }
        }
    }

    /// A local file's attributes from its backing file's; `named`: it has a name in the tree.
    fn local_attr(&self, ino: u64, m: &fs::Metadata, named: bool) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size: m.len(),
            mtime: m.modified().unwrap_or(UNIX_EPOCH),
            perm: (m.mode() & 0o777) as u16,
            nlink: if named { m.nlink() as u32 } else { 0 },
            uid: self.owner.uid,
            gid: self.owner.gid,
            message: false,
        }
    }

    // ----- reading -----

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, Errno> {
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        let child = self.child(&mut st, &place, name)?;
        let key = self.child_key(&mut st, &child)?;
        self.attr_of(&mut st, &key)
    }

    /// `fh`: an open handle, when the kernel has one (fstat). A local file unlinked while
    /// open (Dovecot's lock files) is still described through it.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, Errno> {
        let by_fh = fh.and_then(|fh| self.handle(fh).ok());
        let found = match by_fh {
            Some(h) => Ok(h),
            None => {
                let mut st = self.lock();
                match self.key(&st, ino).and_then(|k| self.attr_of(&mut st, &k)) {
                    Ok(a) => return Ok(a),
                    // An unlinked local file still open: described through its handle.
                    Err(e) => st
                        .handles
                        .values()
                        .find(|h| matches!(&***h, Handle::Local { ino: i, .. } if *i == ino))
                        .cloned()
                        .ok_or(e),
                }
            }
        };
        let h = found?;
        if let Handle::Local { file, .. } = &*h {
            let m = file.metadata().map_err(|e| io_errno(&e))?;
            return Ok(self.local_attr(ino, &m, m.nlink() > 0));
        }
        let mut st = self.lock();
        let key = self.key(&st, ino)?;
        self.attr_of(&mut st, &key)
    }

    /// Every entry of a directory, `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, Errno> {
        let mut st = self.lock();
        let place = self.place(&mut st, ino)?;
        let dir = |ino, name: &str| DirEntry {
            ino,
            kind: Kind::Dir,
            name: name.to_string(),
        };
        let mut out = Vec::new();
        match &place {
            Place::FolderDir(f) => {
                out.push(dir(ino, "."));
                out.push(dir(ROOT, ".."));
                for s in Sub::ALL {
                    if st.fresh.get(f).is_some_and(|made| made & sub_bit(s) == 0) {
                        continue;
                    }
                    let i = st.inodes.ino(&NodeKey::Sub(f.clone(), s));
                    out.push(dir(i, s.name()));
                }
                if f == INBOX {
                    let folders: Vec<String> = self
                        .folders(&mut st)?
                        .iter()
                        .filter(|g| *g != INBOX)
                        .cloned()
                        .collect();
                    for g in folders {
                        let i = st.inodes.ino(&NodeKey::Folder(g.clone()));
                        out.push(dir(i, &folder_dir(&g)));
                    }
                }
            }
            Place::Sub(f, s) => {
                let parent = if f == INBOX {
                    ROOT
                } else {
                    st.inodes.ino(&NodeKey::Folder(f.clone()))
                };
                out.push(dir(ino, "."));
                out.push(dir(parent, ".."));
                if *s != Sub::Tmp {
                    let l = self.listing(&mut st, f)?;
                    let names: Vec<(Arc<str>, MessageKey)> = l
                        .names(*s)
                        .iter()
                        .map(|(n, k)| (Arc::clone(n), k.clone()))
                        .collect();
                    self.readahead
                        .listed(ino, names.iter().map(|(_, k)| k.clone()).collect());
                    out.reserve(names.len());
                    for (name, k) in names {
                        let i = st.inodes.ino(&NodeKey::Message(f.clone(), k));
                        out.push(DirEntry {
                            ino: i,
                            kind: Kind::File,
                            name: name.to_string(),
                        });
                    }
                }
            }
        }
        // Local files of this directory.
        let rel_dir = Self::local_rel(&place, "x");
        let rel_dir = rel_dir.strip_suffix("x").unwrap_or("").to_string();
        if let Ok(rd) = fs::read_dir(self.backing.join(&rel_dir)) {
            for d in rd.flatten() {
                let Ok(ft) = d.file_type() else { continue };
                if !ft.is_file() {
                    continue;
                }
                let Some(name) = d.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name == WAKE_NAME {
                    continue;
                }
                let b = std::os::unix::fs::DirEntryExt::ino(&d);
                st.local_path.insert(b, format!("{rel_dir}{name}"));
                let i = st.inodes.ino(&NodeKey::Local(b));
                out.push(DirEntry {
                    ino: i,
                    kind: Kind::File,
                    name,
                });
            }
        }
        Ok(out)
    }

    /// `opendir`: a snapshot of the entries for `readdir`.
    /// (The snapshot itself is taken by the first `readdir`, at offset 0.)
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let mut st = self.lock();
        self.place(&mut st, ino)?;
        self.add_handle(&mut st, Handle::Dir(Arc::new(Vec::new())))
    }

    /// Entries from `offset` on, of the snapshot taken at `opendir` (offset 0 takes a new
    /// one: `rewinddir`). Without a snapshot handle, the live listing.
    pub fn readdir_at(&self, ino: u64, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let snapshot = match self.handle(fh) {
            Ok(h) => match &*h {
                Handle::Dir(d) if offset > 0 => return Ok(Arc::clone(d)),
                Handle::Dir(_) => true,
                _ => false,
            },
            Err(_) => false,
        };
        let fresh = Arc::new(self.readdir(ino)?);
        if snapshot {
            let mut st = self.lock();
            st.handles
                .insert(fh, Arc::new(Handle::Dir(Arc::clone(&fresh))));
        }
        Ok(fresh)
    }

    fn add_handle(&self, st: &mut State, h: Handle) -> Result<u64, Errno> {
        if st.handles.len() >= MAX_HANDLES {
            return Err(Errno::ENFILE);
        }
        let fh = st.next_handle;
        st.next_handle += 1;
        st.handles.insert(fh, Arc::new(h));
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        self.lock().handles.get(&fh).cloned().ok_or(Errno::EBADF)
    }

    fn open_local(&self, rel: &str, mode: OpenMode, create: bool) -> Result<File, Errno> {
        let path = self.local_path(rel);
        let open = || {
            OpenOptions::new()
                .read(mode.read || !mode.write)
                .write(mode.write)
                .append(mode.append)
                .truncate(mode.truncate)
                .create(create)
                .create_new(create && mode.exclusive)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        match open() {
            // The backing directory is made on first use (not on every create: deliveries).
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_errno(&e))?;
                }
                open().map_err(|e| io_errno(&e))
            }
            r => r.map_err(|e| io_errno(&e)),
        }
    }

    /// Opens a file; returns a handle for read/write/release.
    pub fn open(&self, ino: u64, mode: OpenMode) -> Result<u64, Errno> {
        let mut key = {
            let st = self.lock();
            self.key(&st, ino)?
        };
        if let NodeKey::Message(_, k) = &key
            && is_provisional(k)
        {
            if let Some(fh) = self.open_pending(k, mode)? {
                return Ok(fh);
            }
            // Committed meanwhile: the node has the engine's key now.
            let st = self.lock();
            key = self.key(&st, ino)?;
        }
        match key {
            NodeKey::Message(f, k) => {
                if mode.write || mode.truncate {
                    return Err(Errno::EACCES);
                }
                let mut st = self.lock();
                let size = {
                    let l = self.listing(&mut st, &f)?;
                    l.entries.get(&k).ok_or(Errno::ENOENT)?.size
                };
                let h = Handle::Message {
                    key: k,
                    size,
                    bytes: OnceLock::new(),
                };
                self.add_handle(&mut st, h)
            }
            NodeKey::Local(b) => {
                let mut st = self.lock();
                let rel = self.local_rel_checked(&st, b)?;
                let in_tmp = is_tmp_rel(&rel);
                let file = self.open_local(&rel, mode, false)?;
                let file = Arc::new(file);
                self.add_handle(&mut st, Handle::Local { file, in_tmp, ino })
            }
            _ => Err(Errno::EISDIR),
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.read_handle(&*self.handle(fh)?, offset, size)
    }

    fn read_handle(&self, h: &Handle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        match h {
            Handle::Dir(_) => Err(Errno::EISDIR),
            Handle::Message {
                key,
                size: expected,
                bytes,
            } => {
                let bytes = match bytes.get() {
                    Some(b) => b,
                    None => {
                        self.prefetch_after(key);
                        // Fetched outside the lock (the engine may decrypt or fetch); two
                        // first reads at once both fetch, one copy is kept.
                        let b = self.source.read(key).map_err(|e| errno(&e))?;
                        if b.len() as u64 != *expected {
                            return Err(Errno::EIO);
                        }
                        bytes.get_or_init(|| b)
                    }
                };
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Handle::Local { file, .. } => {
                // The kernel asks for at most max_read (128 KiB); bound it anyway.
                let mut buf = vec![0; (size as usize).min(MAX_READ)];
                let mut n = 0;
                while n < buf.len() {
                    match file.read_at(&mut buf[n..], offset.saturating_add(n as u64)) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_errno(&e)),
                    }
                }
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        match &*self.handle(fh)? {
            Handle::Message { .. } => Err(Errno::EACCES),
            Handle::Dir(_) => Err(Errno::EISDIR),
            Handle::Local { file, in_tmp, .. } => self.write_local(file, *in_tmp, offset, data),
        }
    }

    /// Writes to a local file (a `tmp/` one within the message size limit).
    fn write_local(
        &self,
        file: &File,
        in_tmp: bool,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        let end = offset.saturating_add(data.len() as u64);
        if in_tmp && end > self.source.max_message_size() {
            return Err(Errno::EFBIG);
        }
        file.write_all_at(data, offset).map_err(|e| io_errno(&e))?;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    /// A file in `tmp/` has its bytes synced, as on a disk: a delivery agent that fsyncs the
    /// file before the rename (and not the directory after it, as many do) has its bytes on
    /// disk when the rename is queued (pending.rs), and the rename itself is as durable as a
    /// disk's un-synced rename; `fsync` of the directory commits it to the engine. Other
    /// local files (Dovecot's index and uidlist) are synced; a message or directory commits
    /// what is queued.
    pub fn fsync(&self, fh: u64) -> Result<(), Errno> {
        match &*self.handle(fh)? {
            Handle::Message { .. } | Handle::Dir(_) => self.flush(),
            Handle::Local {
                file, in_tmp: true, ..
            } => file.sync_data().map_err(|e| io_errno(&e)),
            Handle::Local { file, .. } => file.sync_all().map_err(|e| io_errno(&e)),
        }
    }

    /// Whether `fh` is an open message (immutable bytes: the kernel may cache them).
    pub fn is_message_handle(&self, fh: u64) -> bool {
        self.handle(fh)
            .is_ok_and(|h| matches!(&*h, Handle::Message { .. }))
    }

    pub fn release(&self, fh: u64) {
        self.lock().handles.remove(&fh);
    }

    pub fn statfs(&self) -> Result<StatFs, Errno> {
        let (used, allowed) = self.source.quota().map_err(|e| errno(&e))?;
        let blocks = allowed.div_ceil(4096);
        let used = used.div_ceil(4096);
        Ok(StatFs {
            blocks,
            bfree: blocks.saturating_sub(used),
            files: self.lock().inodes.len() as u64,
        })
    }

    // ----- writing -----

    /// Creates (and opens) a file: only local files, in `tmp/` or beside `cur/new/tmp`.
    pub fn create(&self, parent: u64, name: &str, mode: OpenMode) -> Result<(Attr, u64), Errno> {
        check_name(name)?;
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        match &place {
            Place::Sub(_, Sub::New | Sub::Cur) if name != WAKE_NAME => return Err(Errno::EACCES),
            Place::Sub(_, Sub::New | Sub::Cur) => {}
            Place::FolderDir(f) => {
                if Sub::from_name(name).is_some() {
                    return Err(Errno::EEXIST);
                }
                // A dot-file at the root is a local file (mbsync's `.uidvalidity` and
                // `.mbsyncstate`) unless a folder has that name.
                if f == INBOX
                    && let Some(g) = dir_folder(name)
                    && self.folders(&mut st)?.contains(&g)
                {
                    return Err(Errno::EEXIST);
                }
            }
            Place::Sub(_, Sub::Tmp) => {}
        }
        let rel = Self::local_rel(&place, name);
        let in_tmp = matches!(place, Place::Sub(_, Sub::Tmp));
        let mode = OpenMode {
            write: true,
            ..mode
        };
        let spare = if in_tmp {
            self.spares.take(&self.local_path(&rel))
        } else {
            Spare::None
        };
        let file = match spare {
            Spare::Exists if mode.exclusive => return Err(Errno::EEXIST),
            Spare::Taken => {
                let f = self.open_local(&rel, mode, false)?;
                f.set_modified(SystemTime::now())
                    .map_err(|e| io_errno(&e))?;
                f
            }
            Spare::Exists | Spare::None => self.open_local(&rel, mode, true)?,
        };
        let m = file.metadata().map_err(|e| io_errno(&e))?;
        st.local_path.insert(m.ino(), rel);
        let attr = self.local_attr(st.inodes.ino(&NodeKey::Local(m.ino())), &m, true);
        let file = Arc::new(file);
        if in_tmp {
            self.remember_made(m.ino(), &file);
        }
        let fh = self.add_handle(
            &mut st,
            Handle::Local {
                file,
                in_tmp,
                ino: attr.ino,
            },
        )?;
        Ok((attr, fh))
    }

    /// `chmod`, `truncate`, `utime`: truncation only of local files (and within the message
    /// limit in `tmp/`); times and modes of local files are kept; the rest is accepted and
    /// ignored (a message's mtime is its internal date).
    pub fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<Attr, Errno> {
        let mut st = self.lock();
        let key = self.key(&st, ino)?;
        match &key {
            NodeKey::Message(..) if size.is_some() => return Err(Errno::EACCES),
            NodeKey::Local(b) => {
                let rel = self.local_rel_checked(&st, *b)?;
                let path = self.local_path(&rel);
                if let Some(size) = size {
                    let in_tmp = is_tmp_rel(&rel);
                    if in_tmp && size > self.source.max_message_size() {
                        return Err(Errno::EFBIG);
                    }
                    let f = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)
                        .map_err(|e| io_errno(&e))?;
                    f.set_len(size).map_err(|e| io_errno(&e))?;
                }
                if let Some(t) = mtime {
                    let f = File::open(&path).map_err(|e| io_errno(&e))?;
                    f.set_modified(t).map_err(|e| io_errno(&e))?;
                }
                if let Some(m) = mode {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&path, fs::Permissions::from_mode(m & 0o777))
                        .map_err(|e| io_errno(&e))?;
                }
            }
            _ => {}
        }
        self.attr_of(&mut st, &key)
    }

    /// `mkdir`: `.Name` at the root creates a folder; `cur`/`new`/`tmp` always exist.
    pub fn mkdir(&self, parent: u64, name: &str) -> Result<Attr, Errno> {
        check_name(name)?;
        let _w = self.write_lock();
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        let Place::FolderDir(f) = place else {
            return Err(Errno::EPERM);
        };
        if let Some(s) = Sub::from_name(name) {
            // A folder made by mkdir shows cur/new/tmp once they are made, as on disk:
            // Dovecot creates `.Name`, then its three, and takes EEXIST for "already exists".
            match st.fresh.get_mut(&f) {
                Some(made) if *made & sub_bit(s) == 0 => {
                    *made |= sub_bit(s);
                    if *made == 0b111 {
                        st.fresh.remove(&f);
                    }
                }
                _ => return Err(Errno::EEXIST),
            }
            return self.attr_of(&mut st, &NodeKey::Sub(f, s));
        }
        if f != INBOX {
            return Err(Errno::EPERM);
        }
        let g = dir_folder(name).ok_or(Errno::EPERM)?;
        if self.folders(&mut st)?.contains(&g) {
            return Err(Errno::EEXIST);
        }
        self.source.create_folder(&g).map_err(|e| errno(&e))?;
        st.folders = None;
        if st.fresh.len() < MAX_PENDING {
            st.fresh.insert(g.clone(), 0);
        }
        self.attr_of(&mut st, &NodeKey::Folder(g))
    }

    /// `rmdir`: a folder with no messages and no local files left; `cur`/`new`/`tmp` when
    /// empty (a no-op: they exist as long as their folder).
    pub fn rmdir(&self, parent: u64, name: &str) -> Result<(), Errno> {
        self.settle(true);
        let _w = self.write_lock();
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        match self.child(&mut st, &place, name)? {
            Child::Folder(g) => {
                if !self.listing(&mut st, &g)?.entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                let dir = self.backing.join(folder_dir(&g));
                if has_files(&dir) {
                    return Err(Errno::ENOTEMPTY);
                }
                self.source.delete_folder(&g).map_err(|e| errno(&e))?;
                // Only empty directories are left under it.
                let _ = fs::remove_dir_all(&dir);
                st.folders = None;
                st.listings.remove(&g);
                st.fresh.remove(&g);
                st.inodes.remove(&NodeKey::Folder(g));
                Ok(())
            }
            Child::Sub(f, s) => {
                let empty = match s {
                    Sub::Tmp => !has_files(
                        &self
                            .backing
                            .join(Self::local_rel(&Place::FolderDir(f), "tmp")),
                    ),
                    s => self.listing(&mut st, &f)?.names(s).is_empty(),
                };
                if empty { Ok(()) } else { Err(Errno::ENOTEMPTY) }
            }
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// `unlink`: a message is expunged, a local file removed.
    pub fn unlink(&self, parent: u64, name: &str) -> Result<(), Errno> {
        // A delivery not committed yet is committed first.
        let pending = self.is_pending_name(&mut self.lock(), parent, name);
        self.settle(pending);
        let _w = self.write_lock();
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        match self.child(&mut st, &place, name)? {
            Child::Message(_, e) if is_provisional(&e.key) => Err(Errno::EIO),
            Child::Message(f, e) => {
                drop(st);
                self.source.expunge(&f, &e.key).map_err(|e| errno(&e))?;
                let mut st = self.lock();
                self.listing(&mut st, &f)?.remove(&e.key);
                if let Some(p) = st.pending.get_mut(&f) {
                    p.remove(&e.key);
                }
                st.set_bare(&f, &e.key, false);
                st.inodes.remove(&NodeKey::Message(f, e.key));
                Ok(())
            }
            Child::Local(rel, _) => {
                let path = self.local_path(&rel);
                let m = fs::symlink_metadata(&path).map_err(|e| io_errno(&e))?;
                if st.local_path.get(&m.ino()) == Some(&rel) {
                    st.local_path.remove(&m.ino());
                }
                // Its last name: kept readable by inode a while (a program may have it open).
                self.bury(&mut st, &rel).map_err(|e| io_errno(&e))?;
                Ok(())
            }
            Child::Folder(_) | Child::Sub(..) => Err(Errno::EISDIR),
        }
    }

    /// Delivers the bytes of a local file as a message named `name` in `to` (`new`/`cur`).
    /// The engine's commit runs without the state lock: `st` is given up and taken again
    /// (and handed back, whatever the outcome). Callers hold the write lock.
    fn deliver_local<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        rel: &str,
        to: &str,
        sub: Sub,
        name: &str,
    ) -> (MutexGuard<'a, State>, Result<MessageEntry, Errno>) {
        let path = self.local_path(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => return (st, Err(io_errno(&e))),
        };
        if meta.len() > self.source.max_message_size() {
            return (st, Err(Errno::EFBIG));
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => return (st, Err(io_errno(&e))),
        };
        let keywords = self.keywords(to);
        let (base, flags) = keywords.parse_name(name);
        drop(st);
        let delivered = self.source.deliver(
            to,
            NewMessage {
                bytes,
                internal_date: meta.mtime(),
                flags,
                recent: sub == Sub::New,
                base,
            },
        );
        let mut st = self.lock();
        let entry = match delivered {
            Ok(e) => e,
            Err(e) => return (st, Err(errno(&e))),
        };
        let bare = sub == Sub::Cur && !name.contains(":2,");
        st.set_bare(to, &entry.key, bare);
        let inserted = self
            .listing(&mut st, to)
            .map(|l| l.insert(entry.clone(), &keywords, &[], bare));
        (st, inserted.map(|()| entry))
    }

    /// `rename`: delivery (tmp → new/cur), flag change, move between folders, folder rename,
    /// or a local file renamed. `noreplace` is RENAME_NOREPLACE.
    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        noreplace: bool,
    ) -> Result<(), Errno> {
        check_name(newname)?;
        // Queued flag changes go first, unless this is one more of them (a rename within one
        // folder's new/ and cur/): a move, copy or folder rename must find them committed.
        // Deliveries not committed yet are committed before anything else touches them.
        let (same_folder, pending) = {
            let mut st = self.lock();
            let same = matches!(
                (self.place(&mut st, parent), self.place(&mut st, newparent)),
                (Ok(Place::Sub(a, _)), Ok(Place::Sub(b, _))) if a == b
            );
            let pending = self.is_pending_name(&mut st, parent, name)
                || self.is_pending_name(&mut st, newparent, newname);
            (same, pending)
        };
        self.settle(!same_folder || pending);
        let _w = self.write_lock();
        let mut st = self.lock();
        let from_place = self.place(&mut st, parent)?;
        let to_place = self.place(&mut st, newparent)?;
        let src = self.child(&mut st, &from_place, name)?;
        let existing = self.child(&mut st, &to_place, newname).ok();
        if noreplace && existing.is_some() {
            return Err(Errno::EEXIST);
        }
        // Still pending after the settle above: the engine refused it for now.
        let provisional = |c: &Child| matches!(c, Child::Message(_, e) if is_provisional(&e.key));
        if provisional(&src) || existing.as_ref().is_some_and(provisional) {
            return Err(Errno::EIO);
        }
        match (src, &to_place) {
            // Delivery: queued (pending.rs), or, when the queue cannot take it, now.
            (Child::Local(rel, Some(_)), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let meta = fs::symlink_metadata(self.local_path(&rel)).map_err(|e| io_errno(&e))?;
                let b = meta.ino();
                let queued =
                    self.queue_delivery(&mut st, (&rel, &meta), to, *sub, newname, How::Move);
                let (mut st, entry) = match queued {
                    Some(r) => (st, r?),
                    None => {
                        let (g, delivered) = self.deliver_local(st, &rel, to, *sub, newname);
                        let entry = delivered?;
                        let _ = fs::remove_file(self.local_path(&rel));
                        (g, entry)
                    }
                };
                st.local_path.remove(&b);
                let new_key = NodeKey::Message(to.clone(), entry.key);
                st.inodes.rekey(&NodeKey::Local(b), &new_key);
                self.replace_existing(&mut st, existing, &new_key)
            }
            (Child::Local(_, None), Place::Sub(_, Sub::New | Sub::Cur)) => Err(Errno::EPERM),
            // Local files stay local files.
            (Child::Local(rel, _), Place::FolderDir(_) | Place::Sub(_, Sub::Tmp)) => {
                if let Some(Child::Folder(_) | Child::Sub(..)) = existing {
                    return Err(Errno::EISDIR);
                }
                if matches!(&to_place, Place::FolderDir(f) if f == INBOX)
                    && dir_folder(newname).is_some()
                    && self
                        .folders(&mut st)?
                        .contains(&dir_folder(newname).unwrap_or_default())
                {
                    return Err(Errno::EISDIR);
                }
                let new_rel = Self::local_rel(&to_place, newname);
                let to_path = self.local_path(&new_rel);
                if let Some(p) = to_path.parent() {
                    fs::create_dir_all(p).map_err(|e| io_errno(&e))?;
                }
                // The file replaced keeps its bytes for whoever has it open (Dovecot's
                // readers of `dovecot-uidlist` while another process renames a new one in).
                if let Some(Child::Local(old_rel, _)) = &existing
                    && *old_rel != rel
                    && fs::symlink_metadata(self.local_path(old_rel))
                        .map(|m| m.ino())
                        .ok()
                        != fs::symlink_metadata(self.local_path(&rel))
                            .map(|m| m.ino())
                            .ok()
                {
                    let _ = self.bury(&mut st, old_rel);
                }
                fs::rename(self.local_path(&rel), &to_path).map_err(|e| io_errno(&e))?;
                self.local_key(&mut st, &new_rel)?;
                if newname == "dovecot-keywords"
                    && let Place::FolderDir(f) = &to_place
                {
                    self.keywords_changed(&mut st, f);
                }
                if newname == "subscriptions" && to_place == Place::FolderDir(INBOX.into()) {
                    self.subscriptions_changed();
                }
                Ok(())
            }
            // Flag change or move.
            (Child::Message(f, e), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let keywords = self.keywords(to);
                let (base, mut flags) = keywords.parse_name(newname);
                // Keywords the name cannot carry (no letter here) stay as they are.
                flags.keywords.extend(keywords.hidden(&e.flags));
                // A new base name (mbsync's `,U=<uid>`) is this mount's, not the engine's.
                let rebased = base != e.base;
                if rebased && (base.is_empty() || base.contains(['/', ':'])) {
                    return Err(Errno::EINVAL);
                }
                if rebased && st.renamed.len() >= MAX_RENAMED && !st.renamed.contains_key(&e.key) {
                    return Err(Errno::ENOSPC);
                }
                if let Some(Child::Message(_, ref other)) = existing
                    && other.key == e.key
                    && !rebased
                {
                    return Ok(()); // rename onto itself
                }
                let seen_by_reader = *sub == Sub::Cur && e.recent;
                let old_key = NodeKey::Message(f.clone(), e.key.clone());
                // Within the folder, a flag change is queued: answered now, committed with
                // others in one batch (deferred.rs). A full queue commits it here.
                let changes = flags != e.flags || seen_by_reader;
                let queued = *to == f
                    && (!changes
                        || st
                            .deferred
                            .push(
                                &f,
                                &e.key,
                                Change {
                                    flags: flags.clone(),
                                    seen_by_reader,
                                },
                            )
                            .is_ok());
                let engine = || -> Result<MessageEntry, SourceError> {
                    let moved = if *to != f {
                        self.source.move_to(&f, &e.key, to)?
                    } else {
                        e.clone()
                    };
                    let mut now = moved.clone();
                    if flags != moved.flags || seen_by_reader {
                        self.source
                            .set_flags(to, &moved.key, flags.clone(), seen_by_reader)?;
                        now.flags = flags.clone();
                        if seen_by_reader {
                            now.recent = false;
                        }
                    }
                    Ok(now)
                };
                let (mut st, done) = if queued {
                    let mut now = e.clone();
                    if changes {
                        now.flags = flags.clone();
                        if seen_by_reader {
                            now.recent = false;
                        }
                        self.signal_flush();
                    }
                    (st, Ok(now))
                } else {
                    // The engine's commits run without the state lock.
                    drop(st);
                    let done = engine();
                    (self.lock(), done)
                };
                let now = match done {
                    Ok(mut now) => {
                        // A new base, or a renamed message moved to another folder (a new
                        // key there) keeps the name the client gave it.
                        if rebased || (now.key != e.key && st.renamed.contains_key(&e.key)) {
                            st.renamed.remove(&e.key);
                            // The engine has changed: a name not kept on disk is still shown
                            // until the next mount (the delivered base comes back then).
                            let _ = self.remember_base(&mut st, &now.key, &base);
                        }
                        if st.renamed.contains_key(&now.key) {
                            now.base = base.clone();
                        }
                        now
                    }
                    Err(err) => {
                        // Part of it may have happened: read both folders afresh.
                        st.listings.remove(&f);
                        st.listings.remove(to);
                        return Err(errno(&err));
                    }
                };
                if *to != f {
                    self.listing(&mut st, &f)?.remove(&e.key);
                }
                let unknown = keywords.unknown_letters(newname);
                if let Some(p) = st.pending.get_mut(&f) {
                    p.remove(&e.key);
                }
                if !unknown.is_empty() {
                    let p = st.pending.entry(to.clone()).or_default();
                    if p.len() < MAX_PENDING {
                        p.insert(now.key.clone(), unknown.clone());
                    }
                }
                let bare = !newname.contains(":2,");
                st.set_bare(&f, &e.key, false);
                st.set_bare(to, &now.key, bare);
                self.listing(&mut st, to)?
                    .insert(now.clone(), &keywords, &unknown, bare);
                let new_key = NodeKey::Message(to.clone(), now.key);
                st.inodes.rekey(&old_key, &new_key);
                self.replace_existing(&mut st, existing, &new_key)
            }
            (Child::Message(..), _) => Err(Errno::EPERM),
            // Dovecot deletes a folder by renaming it to `..DOVECOT-TRASHED` and then removing
            // that tree: the folder (and its messages) go at the rename; the name then does
            // not exist, which Dovecot takes as "already removed".
            (Child::Folder(g), Place::FolderDir(root))
                if root == INBOX && newname.starts_with("..") =>
            {
                self.source.delete_folder(&g).map_err(|e| errno(&e))?;
                let _ = fs::remove_dir_all(self.backing.join(folder_dir(&g)));
                st.folders = None;
                st.listings.remove(&g);
                st.pending.remove(&g);
                st.fresh.remove(&g);
                st.inodes.remove(&NodeKey::Folder(g));
                Ok(())
            }
            // Folder rename.
            (Child::Folder(g), Place::FolderDir(root)) if root == INBOX => {
                let h = dir_folder(newname).ok_or(Errno::EINVAL)?;
                if existing.is_some() {
                    return Err(Errno::EEXIST);
                }
                self.source.rename_folder(&g, &h).map_err(|e| errno(&e))?;
                let from_dir = self.backing.join(folder_dir(&g));
                if from_dir.exists() {
                    let _ = fs::rename(&from_dir, self.backing.join(folder_dir(&h)));
                }
                st.folders = None;
                if let Some(l) = st.listings.remove(&g) {
                    st.listings.insert(h.clone(), l);
                }
                if let Some(m) = st.fresh.remove(&g) {
                    st.fresh.insert(h.clone(), m);
                }
                st.inodes.rekey(&NodeKey::Folder(g), &NodeKey::Folder(h));
                Ok(())
            }
            (Child::Folder(_) | Child::Sub(..), _) => Err(Errno::EPERM),
        }
    }

    /// The folder's `dovecot-keywords` changed: letters named before they were defined
    /// become engine keywords, and names are recomputed on next use.
    fn keywords_changed(&self, st: &mut State, folder: &str) {
        let map = self.keywords(folder);
        let pending = st.pending.remove(folder).unwrap_or_default();
        let mut still = HashMap::new();
        for (key, letters) in pending {
            let resolved: Vec<String> = letters
                .iter()
                .filter_map(|c| map.keyword(*c).map(str::to_string))
                .collect();
            if resolved.len() < letters.len() {
                still.insert(key, letters);
                continue;
            }
            let Some(e) = st
                .listings
                .get(folder)
                .and_then(|l| l.entries.get(&key))
                .cloned()
            else {
                continue;
            };
            let mut flags = e.flags.clone();
            flags.keywords.extend(resolved);
            // Queued behind the flag changes answered before it (deferred.rs), in order.
            let change = Change {
                flags: flags.clone(),
                seen_by_reader: false,
            };
            if st.deferred.push(folder, &key, change).is_ok() {
                self.signal_flush();
            } else if self.source.set_flags(folder, &key, flags, false).is_err() {
                still.insert(key, letters);
            }
        }
        if !still.is_empty() {
            st.pending.insert(folder.to_string(), still);
        }
        st.listings.remove(folder);
    }

    /// After a rename onto an existing name: the file that was there is gone.
    fn replace_existing(
        &self,
        st: &mut State,
        existing: Option<Child>,
        now: &NodeKey,
    ) -> Result<(), Errno> {
        match existing {
            Some(Child::Message(g, old))
                if NodeKey::Message(g.clone(), old.key.clone()) != *now =>
            {
                self.source.expunge(&g, &old.key).map_err(|e| errno(&e))?;
                self.listing(st, &g)?.remove(&old.key);
                Ok(())
            }
            Some(Child::Local(rel, _)) => {
                if self.bury(st, &rel).is_err() {
                    let _ = fs::remove_file(self.local_path(&rel));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `link`: a message or a `tmp/` file linked into `new/`/`cur/` is delivered there (a
    /// copy); a message linked into `tmp/` becomes a local file with its bytes; local files
    /// link as usual.
    pub fn link(&self, ino: u64, newparent: u64, newname: &str) -> Result<Attr, Errno> {
        // A copy of a message must find its queued changes committed; a `tmp/` file linked
        // into `new/` (a delivery) need not wait for the others.
        let message = matches!(self.lock().inodes.key(ino), Some(NodeKey::Message(..)));
        self.settle(message);
        check_name(newname)?;
        let _w = self.write_lock();
        let mut st = self.lock();
        let key = self.key(&st, ino)?;
        let to_place = self.place(&mut st, newparent)?;
        if self.child(&mut st, &to_place, newname).is_ok() {
            return Err(Errno::EEXIST);
        }
        match (&key, &to_place) {
            (NodeKey::Message(_, k), _) if is_provisional(k) => Err(Errno::EIO),
            (NodeKey::Message(f, k), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let e = self
                    .listing(&mut st, f)?
                    .entries
                    .get(k)
                    .cloned()
                    .ok_or(Errno::ENOENT)?;
                let keywords = self.keywords(to);
                let (base, mut flags) = keywords.parse_name(newname);
                flags.keywords.extend(keywords.hidden(&e.flags));
                let entry = if base == e.base && flags == e.flags && to != f {
                    self.source.copy_to(f, k, to).map_err(|e| errno(&e))?
                } else {
                    let bytes = self.source.read(k).map_err(|e| errno(&e))?;
                    self.source
                        .deliver(
                            to,
                            NewMessage {
                                bytes: bytes.to_vec(),
                                internal_date: e.internal_date,
                                flags,
                                recent: *sub == Sub::New,
                                base,
                            },
                        )
                        .map_err(|e| errno(&e))?
                };
                self.listing(&mut st, to)?
                    .insert(entry.clone(), &keywords, &[], false);
                self.attr_of(&mut st, &NodeKey::Message(to.clone(), entry.key))
            }
            (NodeKey::Message(_, k), Place::Sub(_, Sub::Tmp)) => {
                let bytes = self.source.read(k).map_err(|e| errno(&e))?;
                let rel = Self::local_rel(&to_place, newname);
                let path = self.local_path(&rel);
                if let Some(p) = path.parent() {
                    fs::create_dir_all(p).map_err(|e| io_errno(&e))?;
                }
                fs::write(&path, &*bytes).map_err(|e| io_errno(&e))?;
                let key = self.local_key(&mut st, &rel)?;
                self.attr_of(&mut st, &key)
            }
            (NodeKey::Local(b), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let (rel, meta) = self.local_checked(&st, *b)?;
                let (mut st, entry) =
                    match self.queue_delivery(&mut st, (&rel, &meta), to, *sub, newname, How::Link)
                    {
                        Some(r) => (st, r?),
                        None => {
                            let (g, delivered) = self.deliver_local(st, &rel, to, *sub, newname);
                            (g, delivered?)
                        }
                    };
                self.attr_of(&mut st, &NodeKey::Message(to.clone(), entry.key))
            }
            (NodeKey::Local(b), _) => {
                let rel = self.local_rel_checked(&st, *b)?;
                let new_rel = Self::local_rel(&to_place, newname);
                let path = self.local_path(&new_rel);
                if let Some(p) = path.parent() {
                    fs::create_dir_all(p).map_err(|e| io_errno(&e))?;
                }
                fs::hard_link(self.local_path(&rel), &path).map_err(|e| io_errno(&e))?;
                // Same backing inode, so the same number: a hard link, as the caller expects.
                let key = self.local_key(&mut st, &new_rel)?;
                self.attr_of(&mut st, &key)
            }
            (NodeKey::Message(..), _) => Err(Errno::EPERM),
            _ => Err(Errno::EPERM),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemorySource;

    struct T {
        tree: Tree<MemorySource>,
        _dir: TempDir,
    }

    /// A directory removed on drop (std only: this crate has no tempfile dependency).
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn setup(max: u64) -> T {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("peerpost-fs-tree-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let src = Arc::new(MemorySource::new(1 << 20).with_max_message_size(max));
        let tree = Tree::new(src, &dir, Owner { uid: 8, gid: 8 }).unwrap();
        T {
            tree,
            _dir: TempDir(dir),
        }
    }

    /// The source, once the queued flag changes are committed (a mount's flusher does it
    /// within milliseconds; these tests have no flusher).
    fn flushed(t: &T) -> &Arc<MemorySource> {
        t.tree.flush().unwrap();
        t.tree.source()
    }

    fn ino(t: &T, path: &str) -> Result<u64, Errno> {
        ino_in(&t.tree, path)
    }

    fn names(t: &T, path: &str) -> Vec<String> {
        names_in(&t.tree, path)
    }

    /// The inode number of `path` (relative to the mount's root), by lookups.
    pub(super) fn ino_in(tree: &Tree<MemorySource>, path: &str) -> Result<u64, Errno> {
        let mut i = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            i = tree.lookup(i, part)?.ino;
        }
        Ok(i)
    }

    /// The names in directory `path`, sorted, without `.` and `..`.
    pub(super) fn names_in(tree: &Tree<MemorySource>, path: &str) -> Vec<String> {
        let mut v: Vec<String> = tree
            .readdir(ino_in(tree, path).unwrap())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        v.sort();
        v
    }

    fn write_file(t: &T, dir: &str, name: &str, bytes: &[u8]) -> u64 {
        let (attr, fh) = t
            .tree
            .create(
                ino(t, dir).unwrap(),
                name,
                OpenMode::from_flags(libc::O_WRONLY),
            )
            .unwrap();
        assert_eq!(t.tree.write(fh, 0, bytes).unwrap() as usize, bytes.len());
        t.tree.release(fh);
        attr.ino
    }

    fn cat(t: &T, path: &str) -> Vec<u8> {
        let fh = t
            .tree
            .open(ino(t, path).unwrap(), OpenMode::from_flags(libc::O_RDONLY))
            .unwrap();
        let b = t.tree.read(fh, 0, 1 << 20).unwrap();
        t.tree.release(fh);
        b
    }

    #[test]
    fn handle_less_reads_writes_and_fsyncs_work_and_keep_few_handles() {
        let t = setup(1000);
        // A local file, written and read without handles (O_APPEND appends).
        let notes = write_file(&t, "", "notes", b"hello");
        assert_eq!(t.tree.write_ino(notes, 0, b"J", false).unwrap(), 1);
        assert_eq!(t.tree.write_ino(notes, 0, b" world", true).unwrap(), 6);
        assert_eq!(t.tree.read_ino(notes, 0, 100).unwrap(), b"Jello world");
        t.tree.fsync_ino(notes).unwrap();
        // Replaced by a rename, then unlinked: the old inodes stay readable (a program may
        // have them open), out of sight.
        let fresh = write_file(&t, "", "notes.lock", b"new notes");
        t.tree
            .rename(ROOT, "notes.lock", ROOT, "notes", false)
            .unwrap();
        assert_eq!(t.tree.read_ino(notes, 0, 100).unwrap(), b"Jello world");
        assert_eq!(t.tree.getattr(notes, None).unwrap().size, 11);
        assert_eq!(t.tree.read_ino(fresh, 0, 100).unwrap(), b"new notes");
        t.tree.unlink(ROOT, "notes").unwrap();
        assert_eq!(t.tree.read_ino(fresh, 0, 100).unwrap(), b"new notes");
        assert_eq!(names(&t, ""), vec!["cur", "new", "tmp"]);
        assert_eq!(t.tree.lookup(ROOT, "notes"), Err(Errno::ENOENT));
        // Messages, read by inode; writing one is refused; few handles stay open.
        let mut inos = Vec::new();
        for n in 0..(implicit::KEPT + 4) {
            let name = format!("{n}.a.host");
            let body = format!("Subject: {n}\r\n\r\nbody\r\n");
            write_file(&t, "tmp", &name, body.as_bytes());
            let (tmp, new) = (ino(&t, "tmp").unwrap(), ino(&t, "new").unwrap());
            t.tree.rename(tmp, &name, new, &name, false).unwrap();
            let m = ino(&t, &format!("new/{name}")).unwrap();
            assert_eq!(t.tree.read_ino(m, 0, 4096).unwrap(), body.as_bytes());
            assert_eq!(t.tree.read_ino(m, 0, 8).unwrap(), b"Subject:");
            inos.push((m, body));
        }
        t.tree.flush().unwrap();
        // Committed: same inodes, same bytes (the kept handle of a provisional entry is not
        // reused for the committed one).
        for (m, body) in &inos {
            assert_eq!(t.tree.read_ino(*m, 0, 4096).unwrap(), body.as_bytes());
        }
        assert_eq!(
            t.tree.write_ino(inos[0].0, 0, b"x", false),
            Err(Errno::EACCES)
        );
        t.tree.fsync_ino(inos[0].0).unwrap();
        let open = t.tree.lock().handles.len();
        assert!(open <= implicit::KEPT, "{open} handles left open");
        // An expunged message's inode reads nothing, kept handle or not.
        let name = names(&t, "new")[0].clone();
        let m = ino(&t, &format!("new/{name}")).unwrap();
        t.tree.read_ino(m, 0, 10).unwrap();
        t.tree.unlink(ino(&t, "new").unwrap(), &name).unwrap();
        assert!(t.tree.read_ino(m, 0, 10).is_err());
    }

    #[test]
    fn files_made_in_tmp_are_written_through_a_kept_descriptor_only_while_they_are_there() {
        let t = setup(100);
        let (tmp, new) = (ino(&t, "tmp").unwrap(), ino(&t, "new").unwrap());
        let made = |name: &str| {
            let (a, fh) = t
                .tree
                .create(tmp, name, OpenMode::from_flags(libc::O_WRONLY))
                .unwrap();
            t.tree.release(fh);
            a.ino
        };
        let a = made("1.a");
        assert_eq!(
            t.tree.write_ino(a, 0, b"Subject: a\r\n", false).unwrap(),
            12
        );
        t.tree.fsync_ino(a).unwrap();
        // The size limit holds for it as for any tmp/ file.
        assert_eq!(
            t.tree.write_ino(a, 95, b"0123456789", false),
            Err(Errno::EFBIG)
        );
        // Renamed within tmp/: the same file, still written.
        t.tree.rename(tmp, "1.a", tmp, "2.a", false).unwrap();
        assert_eq!(t.tree.write_ino(a, 12, b"\r\nbody", false).unwrap(), 6);
        assert_eq!(t.tree.write_ino(a, 0, b"!", true).unwrap(), 1);
        assert_eq!(cat(&t, "tmp/2.a"), b"Subject: a\r\n\r\nbody!");
        // Delivered: a message, read-only, whatever descriptor is kept.
        t.tree.rename(tmp, "2.a", new, "2.a", false).unwrap();
        assert_eq!(t.tree.write_ino(a, 0, b"x", false), Err(Errno::EACCES));
        t.tree.flush().unwrap();
        assert_eq!(t.tree.write_ino(a, 0, b"x", false), Err(Errno::EACCES));
        assert_eq!(cat(&t, "new/2.a"), b"Subject: a\r\n\r\nbody!");
        // Its emptied file is reused for the next tmp/ file: that one starts empty and the
        // kept descriptor writes it, not the delivered message.
        let b = made("3.b");
        assert_eq!(t.tree.write_ino(b, 0, b"three", false).unwrap(), 5);
        assert_eq!(cat(&t, "tmp/3.b"), b"three");
        assert_eq!(cat(&t, "new/2.a"), b"Subject: a\r\n\r\nbody!");
        // Moved out of tmp/ (a local file at the root now): no message size limit for it.
        t.tree.rename(tmp, "3.b", ROOT, "notes", false).unwrap();
        assert_eq!(t.tree.write_ino(b, 200, b"late", false).unwrap(), 4);
        // Bounded.
        for n in 0..(implicit::MADE + 10) {
            made(&format!("{n}.c"));
        }
        assert_eq!(t.tree.made.lock().unwrap().0.len(), implicit::MADE);
    }

    #[test]
    fn a_replaced_local_file_stays_readable_until_the_kernel_forgets_it() {
        let t = setup(1000);
        let old = write_file(&t, "", "dovecot.index", b"old index");
        write_file(&t, "", "dovecot.index.tmp", b"new index");
        t.tree
            .rename(ROOT, "dovecot.index.tmp", ROOT, "dovecot.index", false)
            .unwrap();
        let gone = t._dir.0.join(implicit::GONE_DIR);
        let buried = || fs::read_dir(&gone).map(|d| d.count()).unwrap_or(0);
        assert_eq!(buried(), 1);
        // A process that mapped the old file faults its pages in long after the rename.
        assert_eq!(t.tree.read_ino(old, 0, 100).unwrap(), b"old index");
        let a = t.tree.getattr(old, None).unwrap();
        assert_eq!((a.size, a.nlink), (9, 0));
        // The kernel forgets other inodes: nothing happens to it.
        t.tree.forget(ino(&t, "dovecot.index").unwrap());
        t.tree.forget(ino(&t, "cur").unwrap());
        assert_eq!(t.tree.read_ino(old, 4, 5).unwrap(), b"index");
        // The kernel forgets it: nobody has it open any more, and it goes.
        t.tree.forget(old);
        assert_eq!(buried(), 0);
        assert!(t.tree.read_ino(old, 0, 100).is_err());
        assert_eq!(cat(&t, "dovecot.index"), b"new index");
    }

    #[test]
    fn an_inode_whose_name_holds_another_file_is_stale_not_that_file() {
        let t = setup(1000);
        let old = write_file(&t, "", "dovecot.index.cache", b"old cache");
        // The name is made to hold another file behind the inode's back.
        let backing = t._dir.0.clone();
        fs::write(backing.join("other"), b"another file").unwrap();
        fs::rename(backing.join("other"), backing.join("dovecot.index.cache")).unwrap();
        let rd = OpenMode::from_flags(libc::O_RDONLY);
        assert_eq!(t.tree.open(old, rd), Err(Errno::ESTALE));
        assert_eq!(t.tree.read_ino(old, 0, 100), Err(Errno::ESTALE));
        assert_eq!(t.tree.write_ino(old, 0, b"x", false), Err(Errno::ESTALE));
        assert_eq!(
            t.tree.setattr(old, Some(0), None, None).map(|_| ()),
            Err(Errno::ESTALE)
        );
        assert_eq!(t.tree.getattr(old, None).map(|_| ()), Err(Errno::ENOENT));
        assert_eq!(
            t.tree.link(old, ROOT, "copy").map(|_| ()),
            Err(Errno::ESTALE)
        );
        let new = ino(&t, "new").unwrap();
        assert_eq!(
            t.tree.link(old, new, "1.x.host").map(|_| ()),
            Err(Errno::ESTALE)
        );
        assert!(names(&t, "new").is_empty());
        // The file now under the name is untouched, and found under its own inode.
        assert_eq!(cat(&t, "dovecot.index.cache"), b"another file");
    }

    #[test]
    fn deliver_through_tmp_then_flag_move_copy_expunge() {
        let t = setup(1000);
        assert_eq!(names(&t, ""), vec!["cur", "new", "tmp"]);
        let tmp_ino = write_file(&t, "tmp", "1.a.host", b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(names(&t, "tmp"), vec!["1.a.host"]);
        let tmp = ino(&t, "tmp").unwrap();
        let new = ino(&t, "new").unwrap();
        let cur = ino(&t, "cur").unwrap();
        t.tree
            .rename(tmp, "1.a.host", new, "1.a.host", false)
            .unwrap();
        assert!(names(&t, "tmp").is_empty());
        assert_eq!(names(&t, "new"), vec!["1.a.host"]);
        // The renamed file keeps its inode number.
        assert_eq!(ino(&t, "new/1.a.host").unwrap(), tmp_ino);
        assert_eq!(cat(&t, "new/1.a.host"), b"Subject: hi\r\n\r\nbody\r\n");
        let a = t.tree.getattr(tmp_ino, None).unwrap();
        assert_eq!(a.size, 21);
        assert_eq!((a.uid, a.gid, a.kind), (8, 8, Kind::File));
        // new → cur with flags: seen by a reader.
        t.tree
            .rename(new, "1.a.host", cur, "1.a.host:2,FS", false)
            .unwrap();
        assert!(names(&t, "new").is_empty());
        assert_eq!(names(&t, "cur"), vec!["1.a.host:2,FS"]);
        let m = flushed(&t).messages("INBOX").unwrap();
        assert_eq!(m[0].flags, Flags::from_letters("FS"));
        assert!(!m[0].recent);
        // A folder, a move into it, a copy back by link, an expunge by unlink.
        t.tree.mkdir(ROOT, ".Archive").unwrap();
        assert_eq!(names(&t, ""), vec![".Archive", "cur", "new", "tmp"]);
        // As on disk, a new folder's cur/new/tmp appear as they are made.
        assert!(names(&t, ".Archive").is_empty());
        let archive = ino(&t, ".Archive").unwrap();
        assert_eq!(ino(&t, ".Archive/cur"), Err(Errno::ENOENT));
        for s in ["cur", "new", "tmp"] {
            t.tree.mkdir(archive, s).unwrap();
        }
        assert_eq!(t.tree.mkdir(archive, "cur"), Err(Errno::EEXIST));
        assert_eq!(names(&t, ".Archive"), vec!["cur", "new", "tmp"]);
        let acur = ino(&t, ".Archive/cur").unwrap();
        t.tree
            .rename(cur, "1.a.host:2,FS", acur, "1.a.host:2,S", false)
            .unwrap();
        assert!(names(&t, "cur").is_empty());
        assert_eq!(names(&t, ".Archive/cur"), vec!["1.a.host:2,S"]);
        let moved = ino(&t, ".Archive/cur/1.a.host:2,S").unwrap();
        t.tree.link(moved, cur, "1.a.host:2,S").unwrap();
        assert_eq!(names(&t, "cur"), vec!["1.a.host:2,S"]);
        assert_eq!(flushed(&t).messages("INBOX").unwrap().len(), 1);
        t.tree.unlink(acur, "1.a.host:2,S").unwrap();
        assert!(flushed(&t).messages("Archive").unwrap().is_empty());
        assert_eq!(ino(&t, ".Archive/cur/1.a.host:2,S"), Err(Errno::ENOENT));
        // Folder rename and delete.
        t.tree
            .rename(ROOT, ".Archive", ROOT, ".Old.2024", false)
            .unwrap();
        assert_eq!(flushed(&t).folders().unwrap(), vec!["INBOX", "Old/2024"]);
        t.tree.rmdir(ROOT, ".Old.2024").unwrap();
        assert_eq!(flushed(&t).folders().unwrap(), vec!["INBOX"]);
    }

    #[test]
    fn dovecot_files_are_local_and_writable() {
        let t = setup(1000);
        write_file(&t, "", "dovecot-uidlist.lock", b"3 V1 N2\n");
        t.tree
            .rename(ROOT, "dovecot-uidlist.lock", ROOT, "dovecot-uidlist", false)
            .unwrap();
        assert_eq!(names(&t, ""), vec!["cur", "dovecot-uidlist", "new", "tmp"]);
        assert_eq!(cat(&t, "dovecot-uidlist"), b"3 V1 N2\n");
        t.tree.mkdir(ROOT, ".Sent").unwrap();
        for s in ["cur", "new", "tmp"] {
            t.tree.mkdir(ino(&t, ".Sent").unwrap(), s).unwrap();
        }
        write_file(&t, ".Sent", "maildirfolder", b"");
        assert_eq!(
            names(&t, ".Sent"),
            vec!["cur", "maildirfolder", "new", "tmp"]
        );
        // A folder with local files is not empty.
        assert_eq!(t.tree.rmdir(ROOT, ".Sent"), Err(Errno::ENOTEMPTY));
        t.tree
            .unlink(ino(&t, ".Sent").unwrap(), "maildirfolder")
            .unwrap();
        t.tree.rmdir(ROOT, ".Sent").unwrap();
    }

    #[test]
    fn bad_input_gets_errnos() {
        let t = setup(100);
        let tmp = ino(&t, "tmp").unwrap();
        let new = ino(&t, "new").unwrap();
        let cur = ino(&t, "cur").unwrap();
        // Writes outside tmp/ (and beside it) are refused.
        assert_eq!(
            t.tree
                .create(new, "x", OpenMode::from_flags(libc::O_WRONLY))
                .err(),
            Some(Errno::EACCES)
        );
        assert_eq!(
            t.tree
                .create(cur, "x", OpenMode::from_flags(libc::O_WRONLY))
                .err(),
            Some(Errno::EACCES)
        );
        // Over the message limit.
        let (_, fh) = t
            .tree
            .create(tmp, "big", OpenMode::from_flags(libc::O_WRONLY))
            .unwrap();
        assert_eq!(t.tree.write(fh, 0, &[b'x'; 101]), Err(Errno::EFBIG));
        assert_eq!(t.tree.write(fh, 90, &[b'x'; 11]), Err(Errno::EFBIG));
        t.tree.write(fh, 0, &[b'x'; 100]).unwrap();
        t.tree.release(fh);
        let big = ino(&t, "tmp/big").unwrap();
        assert_eq!(
            t.tree.setattr(big, Some(101), None, None),
            Err(Errno::EFBIG)
        );
        // Missing files.
        assert_eq!(
            t.tree.rename(tmp, "nope", new, "nope", false),
            Err(Errno::ENOENT)
        );
        assert_eq!(t.tree.unlink(cur, "nope"), Err(Errno::ENOENT));
        // Messages are read-only.
        t.tree.rename(tmp, "big", new, "1.b", false).unwrap();
        let m = ino(&t, "new/1.b").unwrap();
        assert_eq!(
            t.tree.open(m, OpenMode::from_flags(libc::O_RDWR)),
            Err(Errno::EACCES)
        );
        assert_eq!(t.tree.setattr(m, Some(0), None, None), Err(Errno::EACCES));
        // A non-empty folder, a bad folder name, a long name, a base name change.
        t.tree.mkdir(ROOT, ".F").unwrap();
        t.tree.mkdir(ino(&t, ".F").unwrap(), "cur").unwrap();
        let fcur = ino(&t, ".F/cur").unwrap();
        t.tree.rename(new, "1.b", fcur, "1.b:2,S", false).unwrap();
        assert_eq!(t.tree.rmdir(ROOT, ".F"), Err(Errno::ENOTEMPTY));
        assert_eq!(t.tree.mkdir(ROOT, "plain"), Err(Errno::EPERM));
        assert_eq!(t.tree.mkdir(ROOT, ".a..b"), Err(Errno::EPERM));
        assert_eq!(t.tree.mkdir(ROOT, "new"), Err(Errno::EEXIST));
        // Dovecot's DELETE: rename to ..DOVECOT-TRASHED deletes the folder and its mail.
        t.tree.mkdir(ROOT, ".Gone").unwrap();
        t.tree.mkdir(ino(&t, ".Gone").unwrap(), "cur").unwrap();
        write_file(&t, ".Gone", "maildirfolder", b"");
        t.tree
            .rename(ROOT, ".Gone", ROOT, "..DOVECOT-TRASHED", false)
            .unwrap();
        assert_eq!(ino(&t, "..DOVECOT-TRASHED"), Err(Errno::ENOENT));
        assert!(
            !t.tree
                .source()
                .folders()
                .unwrap()
                .contains(&"Gone".to_string())
        );
        assert_eq!(
            t.tree.lookup(ROOT, &"x".repeat(256)),
            Err(Errno::ENAMETOOLONG)
        );
        // The rename that only changes flags goes through.
        t.tree
            .rename(fcur, "1.b:2,S", fcur, "1.b:2,RS", false)
            .unwrap();
        assert_eq!(names(&t, ".F/cur"), vec!["1.b:2,RS"]);
    }

    #[test]
    fn base_name_renames_are_kept_across_mounts_and_moves() {
        let t = setup(1000);
        write_file(&t, "tmp", "1.b.host", b"Subject: b\r\n\r\nb\r\n");
        let (tmp, new, cur) = (
            ino(&t, "tmp").unwrap(),
            ino(&t, "new").unwrap(),
            ino(&t, "cur").unwrap(),
        );
        t.tree
            .rename(tmp, "1.b.host", new, "1.b.host", false)
            .unwrap();
        let before = ino(&t, "new/1.b.host").unwrap();
        // mbsync: the UID goes into the base name, in place, with a flag change.
        t.tree
            .rename(new, "1.b.host", cur, "1.b.host,U=7:2,S", false)
            .unwrap();
        assert_eq!(names(&t, "cur"), vec!["1.b.host,U=7:2,S"]);
        assert!(names(&t, "new").is_empty());
        assert_eq!(ino(&t, "cur/1.b.host,U=7:2,S").unwrap(), before);
        assert_eq!(cat(&t, "cur/1.b.host,U=7:2,S"), b"Subject: b\r\n\r\nb\r\n");
        let m = flushed(&t).messages("INBOX").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].flags, Flags::from_letters("S"));
        // Flag changes keep the name; so does a move to another folder.
        t.tree
            .rename(cur, "1.b.host,U=7:2,S", cur, "1.b.host,U=7:2,FS", false)
            .unwrap();
        assert_eq!(names(&t, "cur"), vec!["1.b.host,U=7:2,FS"]);
        t.tree.mkdir(ROOT, ".A").unwrap();
        t.tree.mkdir(ino(&t, ".A").unwrap(), "cur").unwrap();
        let acur = ino(&t, ".A/cur").unwrap();
        t.tree
            .rename(cur, "1.b.host,U=7:2,FS", acur, "1.b.host,U=7:2,FS", false)
            .unwrap();
        assert_eq!(names(&t, ".A/cur"), vec!["1.b.host,U=7:2,FS"]);
        // Not a way around the grammar.
        assert_eq!(
            t.tree
                .rename(acur, "1.b.host,U=7:2,FS", acur, ":2,S", false),
            Err(Errno::EINVAL)
        );
        // A new tree on the same backing directory (a remount) shows the same name; the
        // state file is not reachable through the mount.
        let again = Tree::new(
            Arc::clone(&t.tree.source),
            &t._dir.0,
            Owner { uid: 8, gid: 8 },
        )
        .unwrap();
        let a = again.lookup(ROOT, ".A").unwrap().ino;
        let c = again.lookup(a, "cur").unwrap().ino;
        assert!(again.lookup(c, "1.b.host,U=7:2,FS").is_ok());
        assert_eq!(again.lookup(ROOT, "..peerpost"), Err(Errno::ENOENT));
        assert!(
            !again
                .readdir(ROOT)
                .unwrap()
                .iter()
                .any(|d| d.name.contains("peerpost"))
        );
    }

    #[test]
    fn engine_changes_show_after_refresh() {
        let t = setup(1000);
        assert!(names(&t, "new").is_empty());
        let e = t
            .tree
            .source()
            .deliver(
                "INBOX",
                NewMessage {
                    bytes: b"x".to_vec(),
                    internal_date: 5,
                    flags: Flags::default(),
                    recent: true,
                    base: "5.x".into(),
                },
            )
            .unwrap();
        // Cached until refreshed.
        assert!(names(&t, "new").is_empty());
        let changed = t.tree.refresh_folder("INBOX");
        assert_eq!(changed, vec![(ino(&t, "new").unwrap(), "5.x".to_string())]);
        assert_eq!(names(&t, "new"), vec!["5.x"]);
        let a = t.tree.lookup(ino(&t, "new").unwrap(), "5.x").unwrap();
        assert_eq!(a.mtime, UNIX_EPOCH + Duration::from_secs(5));
        flushed(&t).create_folder("Work").unwrap();
        assert_eq!(t.tree.refresh_folders(), vec![(ROOT, ".Work".to_string())]);
        assert_eq!(names(&t, ""), vec![".Work", "cur", "new", "tmp"]);
        let _ = e;
    }

    #[test]
    fn refreshing_named_messages_shows_what_a_full_refresh_shows() {
        let t = setup(1000);
        let (tmp, new, cur) = (
            ino(&t, "tmp").unwrap(),
            ino(&t, "new").unwrap(),
            ino(&t, "cur").unwrap(),
        );
        for i in 0..4 {
            let name = format!("{i}.m.host");
            write_file(&t, "tmp", &name, format!("Subject: {i}\r\n\r\n").as_bytes());
            let to = if i < 2 {
                (new, name.clone())
            } else {
                (cur, format!("{name}:2,S"))
            };
            t.tree.rename(tmp, &name, to.0, &to.1, false).unwrap();
        }
        let src = Arc::clone(flushed(&t));
        let keys: Vec<MessageKey> = src
            .messages("INBOX")
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys.len(), 4);
        // The mount's own commits are shown already: nothing changes, mtimes stay.
        let before = (
            t.tree.getattr(new, None).unwrap(),
            t.tree.getattr(cur, None).unwrap(),
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.tree.refresh_messages("INBOX", &keys), vec![]);
        let after = (
            t.tree.getattr(new, None).unwrap(),
            t.tree.getattr(cur, None).unwrap(),
        );
        assert_eq!(
            (before.0.mtime, before.1.mtime),
            (after.0.mtime, after.1.mtime)
        );

        // Changes made elsewhere: a flag change, an expunge, a new message.
        let seen = Flags {
            seen: true,
            flagged: true,
            ..Flags::default()
        };
        let by_base = |b: &str| {
            src.messages("INBOX")
                .unwrap()
                .into_iter()
                .find(|e| e.base == b)
                .unwrap()
        };
        let (flagged, gone) = (by_base("0.m.host"), by_base("2.m.host"));
        src.set_flags("INBOX", &flagged.key, seen, true).unwrap();
        let gone_ino = ino(&t, "cur/2.m.host:2,S").unwrap();
        src.expunge("INBOX", &gone.key).unwrap();
        let added = src
            .deliver(
                "INBOX",
                NewMessage {
                    bytes: b"x".to_vec(),
                    internal_date: 9,
                    flags: Flags::default(),
                    recent: true,
                    base: "9.x".into(),
                },
            )
            .unwrap();
        let mut changed: Vec<(u64, String)> = t.tree.refresh_messages(
            "INBOX",
            &[
                flagged.key.clone(),
                gone.key.clone(),
                added.key.clone(),
                keys[3].clone(),
            ],
        );
        changed.sort();
        let mut want = vec![
            (new, "0.m.host".to_string()),
            (new, "9.x".to_string()),
            (cur, "0.m.host:2,FS".to_string()),
            (cur, "2.m.host:2,S".to_string()),
        ];
        want.sort();
        assert_eq!(changed, want);
        // The same names as a tree that lists the folder afresh.
        let fresh = setup(1000);
        let other = Tree::new(Arc::clone(&src), &fresh._dir.0, Owner { uid: 8, gid: 8 }).unwrap();
        let fresh = T {
            tree: other,
            _dir: fresh._dir,
        };
        for d in ["new", "cur"] {
            assert_eq!(names(&t, d), names(&fresh, d), "{d}/");
        }
        // The expunged message gave up its inode number.
        assert_eq!(
            t.tree.getattr(gone_ino, None).map(|_| ()),
            Err(Errno::ENOENT)
        );
        // A folder the engine no longer has: the whole folder is re-read, no panic.
        assert!(t.tree.refresh_messages("Nowhere", &keys).is_empty());
    }

    #[test]
    fn keyword_letters_follow_dovecot_keywords() {
        let t = setup(1000);
        write_file(&t, "tmp", "1.k", b"x");
        let tmp = ino(&t, "tmp").unwrap();
        let cur = ino(&t, "cur").unwrap();
        t.tree.rename(tmp, "1.k", cur, "1.k:2,S", false).unwrap();
        // Dovecot writes the map (lock file renamed into place), then renames the message.
        write_file(&t, "", "dovecot-keywords.lock", b"0 $Label1\n1 Work\n");
        t.tree
            .rename(
                ROOT,
                "dovecot-keywords.lock",
                ROOT,
                "dovecot-keywords",
                false,
            )
            .unwrap();
        t.tree
            .rename(cur, "1.k:2,S", cur, "1.k:2,Sab", false)
            .unwrap();
        assert_eq!(names(&t, "cur"), vec!["1.k:2,Sab"]);
        let m = &flushed(&t).messages("INBOX").unwrap()[0];
        let kws: Vec<&str> = m.flags.keywords.iter().map(String::as_str).collect();
        assert_eq!(kws, vec!["$Label1", "Work"]);
        t.tree
            .rename(cur, "1.k:2,Sab", cur, "1.k:2,Sb", false)
            .unwrap();
        let m = &flushed(&t).messages("INBOX").unwrap()[0];
        assert_eq!(m.flags.keywords.len(), 1);
        // A keyword without a letter here is not shown and survives flag renames.
        let src = flushed(&t);
        let mut f = m.flags.clone();
        f.keywords.insert("Unlettered".into());
        src.set_flags("INBOX", &m.key, f, false).unwrap();
        t.tree.refresh_folder("INBOX");
        assert_eq!(names(&t, "cur"), vec!["1.k:2,Sb"]);
        t.tree
            .rename(cur, "1.k:2,Sb", cur, "1.k:2,FSb", false)
            .unwrap();
        let m = &flushed(&t).messages("INBOX").unwrap()[0];
        assert!(m.flags.keywords.contains("Unlettered") && m.flags.flagged);
        // Dovecot's real order: the message is renamed with a new letter first, the map
        // written after. The name is kept as given meanwhile; the keyword lands then.
        t.tree
            .rename(cur, "1.k:2,FSb", cur, "1.k:2,FSbc", false)
            .unwrap();
        assert_eq!(names(&t, "cur"), vec!["1.k:2,FSbc"]);
        write_file(
            &t,
            "",
            "dovecot-keywords.lock",
            b"0 $Label1\n1 Work\n2 Later\n",
        );
        t.tree
            .rename(
                ROOT,
                "dovecot-keywords.lock",
                ROOT,
                "dovecot-keywords",
                false,
            )
            .unwrap();
        let m = &flushed(&t).messages("INBOX").unwrap()[0];
        assert!(m.flags.keywords.contains("Later"), "{:?}", m.flags);
        assert_eq!(names(&t, "cur"), vec!["1.k:2,FSbc"]);
        // Unknown letters are dropped (the map has no `z`).
        let map = KeywordMap::parse("0 $Label1\nbad line\n30 x\n");
        let (base, fl) = map.parse_name("b:2,Saz");
        assert_eq!((base.as_str(), fl.seen, fl.keywords.len()), ("b", true, 1));
    }

    #[test]
    fn readdir_offsets_stay_stable_while_the_directory_changes() {
        let t = setup(1000);
        let tmp = ino(&t, "tmp").unwrap();
        let new = ino(&t, "new").unwrap();
        let cur = ino(&t, "cur").unwrap();
        for i in 0..50 {
            write_file(&t, "tmp", &format!("{i}.m"), b"x");
            t.tree
                .rename(tmp, &format!("{i}.m"), new, &format!("{i}.m"), false)
                .unwrap();
        }
        let fh = t.tree.opendir(new).unwrap();
        let first = t.tree.readdir_at(new, fh, 0).unwrap();
        let mut seen: Vec<String> = first[..12].iter().map(|d| d.name.clone()).collect();
        // Half the directory moves away between two readdir calls.
        for d in first.iter().skip(2).take(25) {
            t.tree
                .rename(new, &d.name, cur, &format!("{}:2,S", d.name), false)
                .unwrap();
        }
        let rest = t.tree.readdir_at(new, fh, 12).unwrap();
        seen.extend(rest[12..].iter().map(|d| d.name.clone()));
        t.tree.release(fh);
        let mut uniq = seen.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), seen.len(), "a name was listed twice");
        assert_eq!(seen.len(), 52); // . and .. and the 50 as of opendir
    }

    #[test]
    fn names_without_info_in_cur_are_kept() {
        // mutt moves old unread mail from new/ to cur/ without ":2,".
        let t = setup(1000);
        let tmp = ino(&t, "tmp").unwrap();
        let new = ino(&t, "new").unwrap();
        let cur = ino(&t, "cur").unwrap();
        write_file(&t, "tmp", "5.o", b"x");
        t.tree.rename(tmp, "5.o", new, "5.o", false).unwrap();
        t.tree.rename(new, "5.o", cur, "5.o", false).unwrap();
        assert_eq!(names(&t, "cur"), vec!["5.o"]);
        assert!(!flushed(&t).messages("INBOX").unwrap()[0].recent);
        t.tree.rename(cur, "5.o", cur, "5.o:2,S", false).unwrap();
        assert_eq!(names(&t, "cur"), vec!["5.o:2,S"]);
        write_file(&t, "tmp", "6.o", b"y");
        t.tree.rename(tmp, "6.o", cur, "6.o", false).unwrap();
        assert_eq!(names(&t, "cur"), vec!["5.o:2,S", "6.o"]);
    }

    /// MemorySource whose flag changes take 300 ms, like a slow durable commit.
    struct Slow(MemorySource);

    impl MaildirSource for Slow {
        fn folders(&self) -> crate::Result<Vec<String>> {
            self.0.folders()
        }
        fn messages(&self, f: &str) -> crate::Result<Vec<MessageEntry>> {
            self.0.messages(f)
        }
        fn read(&self, k: &MessageKey) -> crate::Result<Arc<Vec<u8>>> {
            self.0.read(k)
        }
        fn deliver(&self, f: &str, m: NewMessage) -> crate::Result<MessageEntry> {
            self.0.deliver(f, m)
        }
        fn set_flags(&self, f: &str, k: &MessageKey, fl: Flags, r: bool) -> crate::Result<()> {
            std::thread::sleep(Duration::from_millis(300));
            self.0.set_flags(f, k, fl, r)
        }
        fn move_to(&self, f: &str, k: &MessageKey, t: &str) -> crate::Result<MessageEntry> {
            self.0.move_to(f, k, t)
        }
        fn copy_to(&self, f: &str, k: &MessageKey, t: &str) -> crate::Result<MessageEntry> {
            self.0.copy_to(f, k, t)
        }
        fn expunge(&self, f: &str, k: &MessageKey) -> crate::Result<()> {
            self.0.expunge(f, k)
        }
        fn create_folder(&self, n: &str) -> crate::Result<()> {
            self.0.create_folder(n)
        }
        fn rename_folder(&self, a: &str, b: &str) -> crate::Result<()> {
            self.0.rename_folder(a, b)
        }
        fn delete_folder(&self, n: &str) -> crate::Result<()> {
            self.0.delete_folder(n)
        }
        fn quota(&self) -> crate::Result<(u64, u64)> {
            self.0.quota()
        }
        fn max_message_size(&self) -> u64 {
            self.0.max_message_size()
        }
    }

    #[test]
    fn reads_go_on_while_the_engine_commits() {
        let dir = std::env::temp_dir().join(format!("peerpost-fs-slow-{}", std::process::id()));
        let _cleanup = TempDir(dir.clone());
        let tree = Arc::new(
            Tree::new(
                Arc::new(Slow(MemorySource::new(1 << 20))),
                &dir,
                Owner { uid: 0, gid: 0 },
            )
            .unwrap(),
        );
        let tmp = tree.lookup(ROOT, "tmp").unwrap().ino;
        let cur = tree.lookup(ROOT, "cur").unwrap().ino;
        for n in ["1.a", "2.b"] {
            let (_, fh) = tree
                .create(tmp, n, OpenMode::from_flags(libc::O_WRONLY))
                .unwrap();
            tree.write(fh, 0, b"x").unwrap();
            tree.release(fh);
            tree.rename(tmp, n, cur, &format!("{n}:2,"), false).unwrap();
        }
        let t2 = Arc::clone(&tree);
        let writer = std::thread::spawn(move || t2.rename(cur, "1.a:2,", cur, "1.a:2,S", false));
        std::thread::sleep(Duration::from_millis(50));
        let start = std::time::Instant::now();
        assert!(tree.lookup(cur, "2.b:2,").is_ok());
        assert!(tree.readdir(cur).unwrap().len() >= 4);
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "reads waited for the commit: {:?}",
            start.elapsed()
        );
        writer.join().unwrap().unwrap();
        assert!(tree.lookup(cur, "1.a:2,S").is_ok());
    }

    #[test]
    fn subscriptions_follow_the_engine_and_dovecot() {
        let t = setup(1000);
        let src = flushed(&t);
        src.create_folder("Work/Sub").unwrap();
        src.create_folder("Sent").unwrap();
        src.set_subscribed("Work/Sub", true).unwrap();
        t.tree.refresh_folders();
        assert_eq!(cat(&t, "subscriptions"), b"V\t2\n\nWork\tSub\n");
        // Dovecot writes subscriptions.lock and renames it into place.
        write_file(&t, "", "subscriptions.lock", b"V\t2\n\nSent\n");
        t.tree
            .rename(ROOT, "subscriptions.lock", ROOT, "subscriptions", false)
            .unwrap();
        assert_eq!(src.subscriptions().unwrap(), vec!["Sent".to_string()]);
        // The old format is read too.
        assert_eq!(
            Tree::<MemorySource>::parse_subscriptions("A.B\nC\n"),
            ["A/B".to_string(), "C".to_string()].into_iter().collect()
        );
    }

    #[test]
    fn duplicate_base_names_stay_unique() {
        let t = setup(1000);
        let src = flushed(&t);
        for _ in 0..2 {
            src.deliver(
                "INBOX",
                NewMessage {
                    bytes: b"x".to_vec(),
                    internal_date: 5,
                    flags: Flags::from_letters("S"),
                    recent: false,
                    base: "5.x".into(),
                },
            )
            .unwrap();
        }
        let n = names(&t, "cur");
        assert_eq!(n.len(), 2);
        assert!(n.contains(&"5.x:2,S".to_string()));
    }
}
