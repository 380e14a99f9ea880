//! peerpost-fs: the user's mail as a Maildir over FUSE.
//!
//! This crate knows nothing of the overlay, the store or the cryptography. It defines
//! [`MaildirSource`], the trait it needs from a mail engine; peerpost's mailbox engine
//! implements it, and this crate's own tests run over [`memory::MemorySource`]. (The FUSE
//! adapter, the inode tree and the kernel-notification path arrive with the FUSE issue; the
//! boundary is fixed now so the engine can be designed against it.)
//!
//! Names follow the Maildir convention that peerpost uses everywhere:
//! `<internal-date-secs>.<id-prefix>.peerpost:2,<flags>` with flags in ASCII order.

pub mod adapter;
pub mod deferred;
pub mod inode;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod notify;
pub mod ops;
pub mod pending;
pub mod tree;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use tree::Owner;
use tree::Tree;

/// Blocks of this size and more are mapped alone, so freeing one gives it back to the kernel.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Asks glibc's allocator to give freed memory back (process-wide; the mount runs in a daemon
/// of its own or in `peerpost run`). Its default raises the threshold for mapping a block
/// alone as large blocks are freed, up to 32 MiB: after that a folder listing's tables
/// (megabytes each, rebuilt when the engine changes) are carved from the heap, and what they
/// free stays resident. With 100k messages mounted and 18,000 delivered through the mount,
/// the daemon's resident set was 215 MiB with the default and 187 MiB with a fixed threshold
/// (`DELIVER=18000 scripts/bench-fs-rss`).
fn give_back_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; any value is accepted or refused.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// What changed in the engine, for [`Mount::show`].
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The folder list (or the subscriptions) changed.
    pub folders: bool,
    /// Per folder, the messages that changed (added, removed, flags), or `None`: re-read
    /// the whole folder.
    pub messages: Vec<(String, Option<Vec<MessageKey>>)>,
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Who the files belong to (the mail user: Dovecot refuses uid 0).
    pub owner: Owner,
    /// Where local files (`tmp/`, Dovecot's indexes and lists) are kept.
    pub backing: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
    /// Unmount when this process dies, even by SIGKILL (through the `fusermount3` helper;
    /// implies `allow_other`).
    pub auto_unmount: bool,
    /// Hand local files (`tmp/`, Dovecot's indexes) to the kernel with FUSE passthrough
    /// when the kernel and this process allow it (Linux ≥ 6.9, CAP_SYS_ADMIN); else, or
    /// with `false`, the daemon serves their reads and writes (FUSE's no-open mode).
    pub passthrough: bool,
}

/// A mounted Maildir; unmounted on drop.
pub struct Mount<S: MaildirSource> {
    session: Option<fuser::BackgroundSession>,
    flusher: Option<std::thread::JoinHandle<()>>,
    notifier: fuser::Notifier,
    waker: Option<notify::Waker>,
    tree: Arc<Tree<S>>,
    mountpoint: PathBuf,
    ops: Arc<ops::OpStats>,
}

impl<S: MaildirSource> fmt::Debug for Mount<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mount({})", self.mountpoint.display())
    }
}

impl<S: MaildirSource> Mount<S> {
    /// Mounts `source` at `mountpoint` (an existing, empty directory). Returns once the
    /// kernel has the mount.
    pub fn spawn(source: Arc<S>, mountpoint: &Path, opts: &MountOptions) -> io::Result<Mount<S>> {
        give_back_large_blocks();
        let tree = Arc::new(Tree::new(source, &opts.backing, opts.owner)?);
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("peerpost".into()),
            fuser::MountOption::Subtype("peerpost".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
        ];
        if opts.auto_unmount {
            cfg.mount_options.push(fuser::MountOption::AutoUnmount);
        }
        // allow_other: the mail user (Dovecot's) is not the mounting user.
        cfg.acl = fuser::SessionACL::All;
        cfg.n_threads = Some(opts.threads.clamp(1, 64));
        let ops = Arc::new(ops::OpStats::default());
        let adapter = adapter::Adapter::new(Arc::clone(&tree), Arc::clone(&ops), opts.passthrough);
        let session = fuser::spawn_mount(adapter, mountpoint, &cfg)?;
        let notifier = session.notifier();
        let flusher = {
            let tree = Arc::clone(&tree);
            std::thread::Builder::new()
                .name("fuse-flags".into())
                .spawn(move || tree.run_flusher())?
        };
        Ok(Mount {
            session: Some(session),
            flusher: Some(flusher),
            notifier,
            waker: Some(notify::Waker::spawn()?),
            tree,
            mountpoint: mountpoint.to_path_buf(),
            ops,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Counts and latencies of the FUSE operations served (for the node's metrics).
    pub fn ops(&self) -> Arc<ops::OpStats> {
        Arc::clone(&self.ops)
    }

    /// The engine changed (another process, or peers): re-reads the folders and the cached
    /// listings, tells the kernel which names changed, and wakes the watchers of the
    /// directories that did. Call from any thread but a FUSE worker.
    pub fn engine_changed(&self) {
        self.engine_changed_in(None);
    }

    /// [`Mount::engine_changed`] for the given folders only (`None`: every folder). The
    /// folder list is re-read either way.
    pub fn engine_changed_in(&self, folders: Option<&[String]>) {
        let which = match folders {
            None => self
                .tree
                .cached_folders()
                .into_iter()
                .map(|f| (f, None))
                .collect(),
            Some(f) => f.iter().map(|f| (f.clone(), None)).collect(),
        };
        self.show(&Changes {
            folders: true,
            messages: which,
        });
    }

    /// Shows what changed in the engine: re-reads the folder list if asked, then the named
    /// messages of each folder (or the whole folder), tells the kernel which names changed
    /// and wakes the watchers of the directories that did. Call from any thread but a FUSE
    /// worker.
    pub fn show(&self, changes: &Changes) {
        let mut changed = if changes.folders {
            self.tree.refresh_folders()
        } else {
            Vec::new()
        };
        let mut pokes = Vec::new();
        let cached = self.tree.cached_folders();
        for (f, keys) in &changes.messages {
            if !cached.contains(f) {
                continue;
            }
            let names = match keys {
                Some(keys) => self.tree.refresh_messages(f, keys),
                None => self.tree.refresh_folder(f),
            };
            if names.is_empty() {
                continue;
            }
            // Wake the watchers of new/ and cur/ (whichever changed: both is cheap).
            let dir = self.mountpoint.join(tree::folder_dir(f));
            pokes.push(dir.join("new"));
            pokes.push(dir.join("cur"));
            changed.extend(names);
        }
        // The kernel forgets first, so the woken watchers read the new state: the names, and
        // the directories' attributes (their mtime is what mutt polls).
        let mut dirs: Vec<u64> = changed.iter().map(|(d, _)| *d).collect();
        dirs.sort_unstable();
        dirs.dedup();
        for d in dirs {
            let _ = self.notifier.inval_inode(fuser::INodeNo(d), -1, 0);
        }
        for (parent, name) in changed {
            // The kernel may not know the name (ENOENT): nothing to forget then.
            let _ = self
                .notifier
                .inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(&name));
        }
        if let Some(w) = &self.waker {
            for p in pokes {
                w.poke(p);
            }
        }
    }

    /// Unmounts and waits (a bounded time) for the FUSE threads to finish.
    pub fn unmount(mut self) -> io::Result<Unmounted> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> io::Result<Unmounted> {
        self.waker = None;
        let Some(session) = self.session.take() else {
            return Ok(Unmounted::Clean);
        };
        let unmounted = self.end_session(session);
        // Deliveries and flag changes answered during the mount's life reach the engine
        // before we return.
        self.tree.stop_flusher();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        let flushed = self.tree.flush();
        let unmounted = unmounted?;
        flushed.map_err(|e| {
            io::Error::other(format!(
                "deliveries or flag changes not committed (kept, committed at the next \
                 start): {e:?}"
            ))
        })?;
        Ok(unmounted)
    }

    fn end_session(&mut self, session: fuser::BackgroundSession) -> io::Result<Unmounted> {
        // fuser's own unmount (through the auto_unmount helper) was seen to leave the mount
        // in place and the join hanging: unmount here (lazily), then abort the connection
        // through fusectl where it is mounted, so every FUSE thread returns even if a
        // process still has a file open or its working directory there.
        let dev = std::fs::metadata(&self.mountpoint)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .unwrap_or(0);
        detach(&self.mountpoint)?;
        let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            // fuser's own unmount then finds nothing to unmount (EINVAL): that is fine.
            let r = match session.umount_and_join() {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                r => r,
            };
            let _ = tx.send(r);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(2)) {
            Ok(r) => r.map(|()| Unmounted::Clean),
            // The detached mount lives on while something uses it; it ends with this process
            // (closing /dev/fuse aborts the connection).
            Err(_) => Ok(Unmounted::StillInUse),
        }
    }
}

/// How an unmount ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    Clean,
    /// Detached, but processes still had files (or their working directory) there: they get
    /// errors once this process exits.
    StillInUse,
}

/// Lazily unmounts a mount point: umount2(MNT_DETACH) as root, `fusermount3 -u -z` otherwise.
pub fn detach(mountpoint: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let ok = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot unmount {}: run `fusermount3 -u {}`",
            mountpoint.display(),
            mountpoint.display()
        )))
    }
}

impl<S: MaildirSource> Drop for Mount<S> {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// A folder, by its IMAP-style name: `INBOX`, `Sent`, `Archive/2024`.
pub type FolderName = String;

/// One flag change of [`MaildirSource::set_flags_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagChange {
    pub folder: FolderName,
    pub key: MessageKey,
    pub flags: Flags,
    pub seen_by_reader: bool,
}

/// A message's stable identity (the engine's content id, hex), the same on every device.
/// Shared, not copied: the tree holds one key per message in several indexes (listing, names,
/// inode numbers), and a clone is a reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey(pub Arc<str>);

/// Maildir flags (the `:2,` suffix): the system letters, and IMAP keywords, which a name
/// carries as letters `a`–`z` through the folder's `dovecot-keywords` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub draft: bool,
    pub flagged: bool,
    pub passed: bool,
    pub replied: bool,
    pub seen: bool,
    pub trashed: bool,
    pub keywords: BTreeSet<String>,
}

impl Flags {
    /// Parses the system letters after `:2,` (others are ignored here; keyword letters need
    /// the folder's `dovecot-keywords`, see `tree::KeywordMap`).
    pub fn from_letters(s: &str) -> Flags {
        let mut f = Flags::default();
        for c in s.chars() {
            match c {
                'D' => f.draft = true,
                'F' => f.flagged = true,
                'P' => f.passed = true,
                'R' => f.replied = true,
                'S' => f.seen = true,
                'T' => f.trashed = true,
                _ => {}
            }
        }
        f
    }
}

impl fmt::Display for Flags {
    /// The system letters in ASCII order, as Maildir requires.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, c) in [
            (self.draft, 'D'),
            (self.flagged, 'F'),
            (self.passed, 'P'),
            (self.replied, 'R'),
            (self.seen, 'S'),
            (self.trashed, 'T'),
        ] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// What the file system shows of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEntry {
    pub key: MessageKey,
    /// The Maildir base name (what precedes `:2,`): the name the message was delivered or
    /// imported with, or one the engine derived.
    pub base: String,
    /// Exact size of the bytes [`MaildirSource::read`] returns.
    pub size: u64,
    /// Internal date (unix seconds): the file's mtime.
    pub internal_date: i64,
    pub flags: Flags,
    /// In `new/` (not yet seen by a mail reader) rather than `cur/`.
    pub recent: bool,
}

impl MessageEntry {
    /// The file name under `new/` or `cur/`: a bare base while the message is in `new/`
    /// without flags (as delivery agents write it), `<base>:2,<flags>` otherwise.
    /// Keywords are left out here (they need the folder's `dovecot-keywords`).
    pub fn file_name(&self) -> String {
        if self.recent && self.flags.to_string().is_empty() {
            self.base.clone()
        } else {
            format!("{}:2,{}", self.base, self.flags)
        }
    }
}

/// A message handed to [`MaildirSource::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub bytes: Vec<u8>,
    pub internal_date: i64,
    pub flags: Flags,
    /// Delivered into `new/` (rather than `cur/`).
    pub recent: bool,
    /// The base name the client chose (kept, so the file is where the client put it).
    pub base: String,
}

/// Why an operation failed, in the terms the kernel will be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    NotFound,
    Exists,
    NoSpace,
    /// Larger than the engine accepts.
    TooLarge,
    /// The data is not available now (e.g. held only by peers that did not answer in time).
    Unavailable,
    Invalid(String),
    Io(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::NotFound => f.write_str("not found"),
            SourceError::Exists => f.write_str("already exists"),
            SourceError::NoSpace => f.write_str("over quota"),
            SourceError::TooLarge => f.write_str("message too large"),
            SourceError::Unavailable => f.write_str("temporarily unavailable"),
            SourceError::Invalid(why) => write!(f, "invalid: {why}"),
            SourceError::Io(why) => write!(f, "I/O error: {why}"),
        }
    }
}

impl std::error::Error for SourceError {}

pub type Result<T> = std::result::Result<T, SourceError>;

/// What the Maildir file system needs from a mail engine. Implementations are called from
/// FUSE worker threads: they must be thread-safe and must not block on the network without a
/// bound.
pub trait MaildirSource: Send + Sync + 'static {
    /// Every folder, `INBOX` first. Subfolders are `/`-separated (`Archive/2024`).
    fn folders(&self) -> Result<Vec<FolderName>>;
    /// The messages of a folder.
    fn messages(&self, folder: &str) -> Result<Vec<MessageEntry>>;
    /// One message of a folder (`None`: not in it). The default scans
    /// [`MaildirSource::messages`]; engines with an index answer directly.
    fn message(&self, folder: &str, key: &MessageKey) -> Result<Option<MessageEntry>> {
        Ok(self.messages(folder)?.into_iter().find(|e| &e.key == key))
    }
    /// The message's bytes (exactly `size` of them).
    fn read(&self, key: &MessageKey) -> Result<Arc<Vec<u8>>>;
    /// A new message written into `tmp/` and renamed (or linked) into `new/` or `cur/`.
    fn deliver(&self, folder: &str, msg: NewMessage) -> Result<MessageEntry>;
    /// Several deliveries, each as [`MaildirSource::deliver`] would make it, in one durable
    /// commit where the engine can (the mount's queued deliveries, at most
    /// [`pending::MAX_BATCH`] at once). One result per message, in order: an `Ok` is in
    /// the engine, an `Err` is not.
    fn deliver_many(&self, msgs: Vec<(FolderName, NewMessage)>) -> Vec<Result<MessageEntry>> {
        msgs.into_iter()
            .map(|(folder, m)| self.deliver(&folder, m))
            .collect()
    }
    /// Whether a delivery of `size` bytes named `base` with `flags` into `folder` would be
    /// accepted now, with `queued` bytes of deliveries accepted but not committed yet: a
    /// delivery answered before its commit is checked here, so the commit does not fail
    /// later. Default: the message size limit and the quota.
    fn check_delivery(
        &self,
        _folder: &str,
        _base: &str,
        _flags: &Flags,
        size: u64,
        queued: u64,
    ) -> Result<()> {
        if size > self.max_message_size() {
            return Err(SourceError::TooLarge);
        }
        let (used, allowed) = self.quota()?;
        if used.saturating_add(queued).saturating_add(size) > allowed {
            return Err(SourceError::NoSpace);
        }
        Ok(())
    }
    /// Flags changed (rename within a folder); `seen_by_reader` when it left `new/`.
    /// Other flags the engine keeps (IMAP keywords) are left alone.
    fn set_flags(
        &self,
        folder: &str,
        key: &MessageKey,
        flags: Flags,
        seen_by_reader: bool,
    ) -> Result<()>;
    /// Several flag changes at once, each as [`MaildirSource::set_flags`] would make it (one
    /// durable commit where the engine can); changes to messages gone from their folder since
    /// are skipped.
    fn set_flags_many(&self, changes: Vec<FlagChange>) -> Result<()> {
        for c in changes {
            match self.set_flags(&c.folder, &c.key, c.flags, c.seen_by_reader) {
                Ok(()) | Err(SourceError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    /// Renamed into another folder; returns the message as it is there.
    fn move_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<MessageEntry>;
    /// Hard-linked into another folder (Dovecot's copy); returns the copy.
    fn copy_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<MessageEntry>;
    /// Unlinked.
    fn expunge(&self, folder: &str, key: &MessageKey) -> Result<()>;
    fn create_folder(&self, name: &str) -> Result<()>;
    fn rename_folder(&self, from: &str, to: &str) -> Result<()>;
    fn delete_folder(&self, name: &str) -> Result<()>;
    /// (bytes used, bytes allowed) for statfs.
    fn quota(&self) -> Result<(u64, u64)>;
    /// The largest message the engine accepts: files in `tmp/` cannot grow beyond it.
    fn max_message_size(&self) -> u64;
    /// Subscribed folders (Dovecot's `subscriptions` file shows them).
    fn subscriptions(&self) -> Result<Vec<FolderName>> {
        Ok(Vec::new())
    }
    /// (Un)subscribes a folder.
    fn set_subscribed(&self, _folder: &str, _subscribed: bool) -> Result<()> {
        Ok(())
    }
    /// A hint (readahead): these messages, in this order, will likely be read soon. Must
    /// return at once (called on a FUSE thread, before the read that prompted it): a source
    /// that has work to do for it queues that work and drops what does not fit. The tree
    /// hints each message of a listing at most once, at most [`tree::PREFETCH_WINDOW`] keys
    /// per call. Default: nothing.
    fn prefetch(&self, _keys: &[MessageKey]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_ascii_order_and_parse_back() {
        let f = Flags::from_letters("TSRFPD");
        assert_eq!(f.to_string(), "DFPRST");
        assert_eq!(Flags::from_letters(&f.to_string()), f);
        assert_eq!(Flags::default().to_string(), "");
    }

    #[test]
    fn file_name_shape() {
        let mut e = MessageEntry {
            key: MessageKey("0123456789abcdef0123".into()),
            base: "1700000000.0123456789abcdef.peerpost".into(),
            size: 10,
            internal_date: 1_700_000_000,
            flags: Flags::from_letters("SR"),
            recent: false,
        };
        assert_eq!(e.file_name(), "1700000000.0123456789abcdef.peerpost:2,RS");
        e.flags = Flags::default();
        assert_eq!(e.file_name(), "1700000000.0123456789abcdef.peerpost:2,");
        e.recent = true;
        assert_eq!(e.file_name(), "1700000000.0123456789abcdef.peerpost");
    }
}

/// The kernel mount over [`memory::MemorySource`]: skipped (with the reason printed) where
/// `/dev/fuse` cannot be opened or the mount is refused.
#[cfg(test)]
mod mount_tests {
    use super::*;
    use crate::memory::MemorySource;
    use std::fs;

    fn mount(max: u64) -> Option<(Mount<MemorySource>, PathBuf)> {
        if fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_err()
        {
            eprintln!("skipped: /dev/fuse cannot be opened");
            return None;
        }
        let base = std::env::temp_dir().join(format!("peerpost-fs-mount-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let mnt = base.join("mnt");
        fs::create_dir_all(&mnt).ok()?;
        let src = Arc::new(MemorySource::new(1 << 30).with_max_message_size(max));
        let opts = MountOptions {
            owner: Owner { uid: 0, gid: 0 },
            backing: base.join("local"),
            threads: 2,
            auto_unmount: false,
            passthrough: std::env::var_os("PEERPOST_TEST_NO_PASSTHROUGH").is_none(),
        };
        match Mount::spawn(src, &mnt, &opts) {
            Ok(m) => Some((m, base)),
            Err(e) => {
                eprintln!("skipped: mount failed: {e}");
                None
            }
        }
    }

    #[test]
    fn shell_style_delivery_flags_and_errnos_through_the_kernel() {
        let Some((m, base)) = mount(1000) else { return };
        let root = m.mountpoint().to_path_buf();
        let names = |d: &str| {
            let mut v: Vec<String> = fs::read_dir(root.join(d))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        assert_eq!(names(""), vec!["cur", "new", "tmp"]);
        fs::write(root.join("tmp/1.a.h"), b"Subject: x\n\nhello\n").unwrap();
        fs::rename(root.join("tmp/1.a.h"), root.join("new/1.a.h")).unwrap();
        assert_eq!(names("new"), vec!["1.a.h"]);
        assert_eq!(
            fs::read(root.join("new/1.a.h")).unwrap(),
            b"Subject: x\n\nhello\n"
        );
        fs::rename(root.join("new/1.a.h"), root.join("cur/1.a.h:2,S")).unwrap();
        assert_eq!(names("cur"), vec!["1.a.h:2,S"]);
        fs::create_dir(root.join(".Work")).unwrap();
        fs::create_dir(root.join(".Work/cur")).unwrap();
        fs::rename(
            root.join("cur/1.a.h:2,S"),
            root.join(".Work/cur/1.a.h:2,FS"),
        )
        .unwrap();
        assert_eq!(names(".Work/cur"), vec!["1.a.h:2,FS"]);
        fs::hard_link(
            root.join(".Work/cur/1.a.h:2,FS"),
            root.join("cur/1.a.h:2,FS"),
        )
        .unwrap();
        assert_eq!(names("cur"), vec!["1.a.h:2,FS"]);
        let errno = |r: io::Result<()>| r.err().and_then(|e| e.raw_os_error());
        assert_eq!(
            errno(fs::write(root.join("cur/x"), b"x")),
            Some(libc::EACCES)
        );
        assert_eq!(
            errno(fs::rename(root.join("tmp/nope"), root.join("new/nope"))),
            Some(libc::ENOENT)
        );
        assert_eq!(
            errno(fs::remove_dir(root.join(".Work"))),
            Some(libc::ENOTEMPTY)
        );
        // Over the message limit: EFBIG at the write when the daemon serves tmp/ files, at
        // the delivery when the kernel writes them itself (FUSE passthrough).
        match errno(fs::write(root.join("tmp/big"), vec![b'x'; 2000])) {
            Some(e) => assert_eq!(e, libc::EFBIG),
            None => {
                assert_eq!(
                    errno(fs::rename(root.join("tmp/big"), root.join("new/big"))),
                    Some(libc::EFBIG)
                );
                fs::remove_file(root.join("tmp/big")).unwrap();
            }
        }
        fs::remove_file(root.join(".Work/cur/1.a.h:2,FS")).unwrap();
        fs::remove_dir(root.join(".Work")).unwrap();
        // A message delivered by the engine shows after engine_changed, without a remount.
        m.tree
            .source()
            .deliver(
                "INBOX",
                NewMessage {
                    bytes: b"y".to_vec(),
                    internal_date: 7,
                    flags: Flags::default(),
                    recent: true,
                    base: "7.y".into(),
                },
            )
            .unwrap();
        m.engine_changed();
        assert_eq!(names("new"), vec!["7.y"]);
        assert_eq!(m.unmount().unwrap(), Unmounted::Clean);
        let _ = fs::remove_dir_all(&base);
    }
}
