//! The thin `fuser::Filesystem` layer: each kernel request is handed to [`Tree`] and its
//! answer (or errno) translated into the reply. Nothing here decides anything.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::MaildirSource;
use crate::ops::{Op, OpStats};
use crate::tree::{Attr, Kind, OpenMode, Tree};

/// How long the kernel may cache names and attributes of directories (their mtime is what
/// mutt polls). Changes made by the engine are also pushed with `inval_entry` and
/// `inval_inode` (see `notify.rs`); the TTL bounds what a missed one costs.
pub const TTL: Duration = Duration::from_secs(1);
/// The same for messages: their bytes never change under an inode and their names change
/// through the kernel or with an invalidation, so a Dovecot `SEARCH TEXT` over 10,000 files
/// does not LOOKUP each of them again every second. (Local files keep `TTL`: the tree writes
/// some itself, e.g. `subscriptions`.)
pub const MESSAGE_TTL: Duration = Duration::from_secs(30);

/// The TTL for an attribute reply.
fn ttl(a: &Attr) -> &'static Duration {
    if a.message { &MESSAGE_TTL } else { &TTL }
}

/// The filesystem the kernel talks to.
pub struct Adapter<S: MaildirSource> {
    tree: Arc<Tree<S>>,
    ops: Arc<OpStats>,
    pt: Passthrough,
}

impl<S: MaildirSource> Adapter<S> {
    /// `passthrough`: hand local files to the kernel (FUSE passthrough) when it and this
    /// process can; otherwise, or with `false`, FUSE's no-open mode.
    pub fn new(tree: Arc<Tree<S>>, ops: Arc<OpStats>, passthrough: bool) -> Adapter<S> {
        let mode = if passthrough { PT_UNTRIED } else { PT_OFF };
        Adapter {
            tree,
            ops,
            pt: Passthrough {
                mode: AtomicU8::new(mode),
                backing: Mutex::new(Backing::default()),
            },
        }
    }
}

/// Passthrough not tried yet: the first local file's OPEN or CREATE decides.
const PT_UNTRIED: u8 = 0;
/// Passthrough works: local files are opened with a backing file, messages with handle 0.
const PT_ON: u8 = 1;
/// No passthrough (refused by the kernel or by the backing ioctl, or not asked for): OPEN
/// and CREATE answer ENOSYS, and the kernel runs in no-open mode (tree/implicit.rs).
const PT_OFF: u8 = 2;

/// FUSE passthrough of local files (Linux ≥ 6.9, CAP_SYS_ADMIN for the backing ioctl): the
/// kernel reads, writes and maps a local file's backing file itself, with no round trip to
/// this process; OPEN, CREATE, FSYNC, GETATTR, SETATTR and RELEASE still come here.
struct Passthrough {
    mode: AtomicU8,
    backing: Mutex<Backing>,
}

/// The kernel wants one backing id per inode for as long as any of its passthrough handles is
/// open (a second open of the inode must name the same backing file): one id per node,
/// counted by its handles, closed at the last RELEASE.
#[derive(Default)]
struct Backing {
    by_ino: HashMap<u64, (Arc<BackingId>, usize)>,
    by_fh: HashMap<u64, u64>,
}

impl Backing {
    /// The id of `ino`'s open backing file, or one made from `file`; counts handle `fh`.
    fn take(
        &mut self,
        ino: u64,
        fh: u64,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Arc<BackingId>> {
        let id = match self.by_ino.get_mut(&ino) {
            Some((id, n)) => {
                *n += 1;
                Arc::clone(id)
            }
            None => {
                let id = Arc::new(make()?);
                self.by_ino.insert(ino, (Arc::clone(&id), 1));
                id
            }
        };
        self.by_fh.insert(fh, ino);
        Ok(id)
    }

    /// The live id of `ino`, counted for handle `fh`, if a passthrough handle of it is open.
    fn reuse(&mut self, ino: u64, fh: u64) -> Option<Arc<BackingId>> {
        let (id, n) = self.by_ino.get_mut(&ino)?;
        *n += 1;
        let id = Arc::clone(id);
        self.by_fh.insert(fh, ino);
        Some(id)
    }

    /// Handle `fh` closed: its node's id goes with its last handle.
    fn release(&mut self, fh: u64) {
        let Some(ino) = self.by_fh.remove(&fh) else {
            return;
        };
        if let Some((_, n)) = self.by_ino.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                self.by_ino.remove(&ino);
            }
        }
    }
}

impl<S: MaildirSource> Adapter<S> {
    fn backing(&self) -> std::sync::MutexGuard<'_, Backing> {
        self.pt.backing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backing ioctl failed for the first time: no passthrough for this mount.
    fn passthrough_refused(&self, e: &std::io::Error) {
        if self.pt.mode.swap(PT_OFF, Ordering::SeqCst) != PT_OFF {
            eprintln!(
                "peerpost-fs: FUSE passthrough refused ({e}); serving local files through the daemon"
            );
        }
    }
}

/// The attributes of a negative entry: node id 0.
const NEGATIVE: Attr = Attr {
    ino: 0,
    kind: Kind::File,
    size: 0,
    mtime: std::time::UNIX_EPOCH,
    perm: 0,
    nlink: 0,
    uid: 0,
    gid: 0,
    message: false,
};

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

/// A name the kernel sent, as UTF-8 (Maildir names are ASCII; anything else is refused).
fn name(n: &OsStr) -> Result<&str, Errno> {
    n.to_str().ok_or(Errno::EINVAL)
}

impl<S: MaildirSource> Filesystem for Adapter<S> {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // READDIRPLUS: names come with their attributes, so `ls -l`, Dovecot's and mutt's
        // scans of cur/ cost no LOOKUP per file. AUTO lets the kernel fall back to plain
        // READDIR when nobody stats the entries. Old kernels without it: plain READDIR.
        let plus = fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO;
        let _ = config.add_capabilities(plus);
        if self.pt.mode.load(Ordering::SeqCst) != PT_OFF {
            // Passthrough needs the kernel's flag and a stacking depth of 1 (the backing files
            // are on a plain file system).
            let on = config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !on {
                self.pt.mode.store(PT_OFF, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let _op = self.ops.start(Op::Lookup);
        match name(n).and_then(|n| self.tree.lookup(parent.0, n)) {
            Ok(a) => reply.entry(ttl(&a), &file_attr(&a), Generation(0)),
            // A missing name is remembered for `TTL` (node id 0: a negative entry). Dovecot
            // looks for its absent `dovecot.index.cache` before every message it reads, a
            // LOOKUP each time otherwise. Names the engine adds are invalidated like others
            // (`inval_entry` drops negative entries too).
            Err(Errno::ENOENT) => reply.entry(&TTL, &file_attr(&NEGATIVE), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // The kernel evicts an inode (and forgets it with all its lookups at once) only when
        // nothing holds it: a buried local file can go (tree/implicit.rs).
        self.tree.forget(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = self.ops.start(Op::Getattr);
        match self
            .tree
            .getattr(ino.0, fh.map(|f| f.0).filter(|f| *f != 0))
        {
            Ok(a) => reply.attr(ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = self.ops.start(Op::Setattr);
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        });
        match self.tree.setattr(ino.0, size, mtime, mode) {
            Ok(a) => reply.attr(ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _op = self.ops.start(Op::Mkdir);
        match name(n).and_then(|n| self.tree.mkdir(parent.0, n)) {
            Ok(a) => reply.entry(ttl(&a), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _op = self.ops.start(Op::Unlink);
        match name(n).and_then(|n| self.tree.unlink(parent.0, n)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _op = self.ops.start(Op::Rmdir);
        match name(n).and_then(|n| self.tree.rmdir(parent.0, n)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = self.ops.start(Op::Rename);
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = name(n).and_then(|n| {
            let newname = name(newname)?;
            self.tree
                .rename(parent.0, n, newparent.0, newname, noreplace)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _op = self.ops.start(Op::Link);
        match name(newname).and_then(|n| self.tree.link(ino.0, newparent.0, n)) {
            Ok(a) => reply.entry(ttl(&a), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.ops.start(Op::Open);
        if self.pt.mode.load(Ordering::SeqCst) == PT_OFF {
            // FUSE's no-open mode: ENOSYS, and the kernel opens regular files without asking
            // from then on (no OPEN, no RELEASE; pages kept across opens, right for messages,
            // whose bytes never change, and for local files, which change only through the
            // kernel or by a rename to a new inode). READ, WRITE and FSYNC then come with
            // handle 0 and are served by inode (tree/implicit.rs). Dovecot's SEARCH TEXT opens
            // every message: two round trips per file less. The checks an open made (a
            // message is read-only) are made at the first READ or WRITE instead.
            reply.error(Errno::ENOSYS);
            return;
        }
        let ino = ino.0;
        let mode = OpenMode::from_flags(flags.0);
        match self.tree.is_message(ino) {
            Err(e) => return reply.error(e),
            Ok(true) => {
                if mode.write || mode.truncate {
                    return reply.error(Errno::EACCES);
                }
                // A delivery whose writer still has it open: the kernel wants the same
                // backing file for every open of the inode (the pending file: its bytes).
                let mut b = self.backing();
                if b.by_ino.contains_key(&ino) {
                    match self.tree.open(ino, mode) {
                        Ok(fh) => {
                            if let Some(id) = b.reuse(ino, fh) {
                                return reply.opened_passthrough(
                                    FileHandle(fh),
                                    FopenFlags::empty(),
                                    &id,
                                );
                            }
                        }
                        Err(e) => return reply.error(e),
                    }
                }
                drop(b);
                // Served by inode as in no-open mode (handle 0), its pages kept across opens.
                return reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Ok(false) => {}
        }
        let fh = match self.tree.open(ino, mode) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        let Some(file) = self.tree.local_file(fh) else {
            // A local file that became a message meanwhile: as a handle of the daemon.
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        };
        let mut b = self.backing();
        match b.take(ino, fh, || reply.open_backing(&*file)) {
            Ok(id) => {
                self.pt.mode.store(PT_ON, Ordering::SeqCst);
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            }
            Err(e) => {
                drop(b);
                let first = self.pt.mode.load(Ordering::SeqCst) == PT_UNTRIED;
                self.passthrough_refused(&e);
                if first {
                    // Nothing was opened with passthrough: no-open mode from now on.
                    self.tree.release(fh);
                    reply.error(Errno::ENOSYS);
                } else {
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _op = self.ops.start(Op::Read);
        let read = match fh.0 {
            0 => self.tree.read_ino(ino.0, offset, size),
            fh => self.tree.read(fh, offset, size),
        };
        match read {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = self.ops.start(Op::Write);
        let written = match fh.0 {
            0 => {
                let append = OpenMode::from_flags(flags.0).append;
                self.tree.write_ino(ino.0, offset, data, append)
            }
            fh => self.tree.write(fh, offset, data),
        };
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _op = self.ops.start(Op::Flush);
        // Nothing is buffered here (writes reach the local file at once): ENOSYS tells the
        // kernel never to send FLUSH again, one round trip less at every close().
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.ops.start(Op::Release);
        self.backing().release(fh.0);
        self.tree.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.ops.start(Op::Fsync);
        let synced = match fh.0 {
            0 => self.tree.fsync_ino(ino.0),
            fh => self.tree.fsync(fh),
        };
        match synced {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.ops.start(Op::Opendir);
        match self.tree.opendir(ino.0) {
            // The kernel may keep the listing between opens (Dovecot lists cur/ at every
            // SELECT): a name changed through the kernel drops it, and so do the engine's
            // changes (`inval_inode` on the directory, `Mount::publish`).
            // Not FOPEN_CACHE_DIR: with the kernel keeping listings, Dovecot under the
            // bench-fs-imap load read names that were gone (FETCH answered BODY[] NIL).
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _op = self.ops.start(Op::Releasedir);
        self.tree.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = self.ops.start(Op::Readdir);
        let entries = match self.tree.readdir_at(ino.0, fh.0, offset) {
            Ok(v) => v,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, kind(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let _op = self.ops.start(Op::Readdirplus);
        let entries = match self.tree.readdir_at(ino.0, fh.0, offset) {
            Ok(v) => v,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(skip) {
            // An entry gone or renamed since the snapshot is left out (the next listing has
            // it as it is now). The kernel makes a dentry of every name given here: a name
            // that had meanwhile changed (another session's flag rename) would stay cached
            // as a positive entry for MESSAGE_TTL, pointing at the message's inode under a
            // name that no longer exists, and Dovecot's retries of it would all fail
            // ("Filename keeps changing"). So the name is looked up again, not only the inode.
            let now = if e.name == "." || e.name == ".." {
                self.tree.getattr(e.ino, None)
            } else {
                self.tree.lookup(ino.0, &e.name)
            };
            let Ok(a) = now else {
                continue;
            };
            if a.ino != e.ino {
                continue;
            }
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 1,
                &e.name,
                ttl(&a),
                &file_attr(&a),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.ops.start(Op::Fsyncdir);
        // Renames in the directory are durable once it returns: flag changes included.
        match self.tree.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = self.ops.start(Op::Statfs);
        match self.tree.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.bfree,
                s.bfree,
                s.files,
                u64::from(u32::MAX),
                4096,
                crate::tree::MAX_NAME as u32,
                4096,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _size: u32, reply: ReplyXattr) {
        let _op = self.ops.start(Op::Other);
        // No extended attributes: ENOSYS, and the kernel answers EOPNOTSUPP itself from then
        // on. (ENODATA had it ask for `security.capability` before every write: one round
        // trip per delivery.)
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = self.ops.start(Op::Other);
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _op = self.ops.start(Op::Other);
        // `default_permissions`: the kernel checks modes itself.
        reply.ok();
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = self.ops.start(Op::Other);
        // Regular files only (no FIFOs, sockets or devices in a Maildir).
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::EPERM);
            return;
        }
        let excl = OpenMode::from_flags(libc::O_WRONLY | libc::O_EXCL);
        match name(n).and_then(|n| self.tree.create(parent.0, n, excl)) {
            Ok((a, fh)) => {
                self.tree.release(fh);
                reply.entry(ttl(&a), &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = self.ops.start(Op::Create);
        if self.pt.mode.load(Ordering::SeqCst) == PT_OFF {
            // ENOSYS: the kernel makes files with MKNOD from then on and opens them itself
            // (no-open mode), so a created file, like an opened one, gets no RELEASE: one
            // round trip less per delivery. (A CREATE'd file always got a RELEASE at its close.)
            reply.error(Errno::ENOSYS);
            return;
        }
        let (a, fh) = match name(n)
            .and_then(|n| self.tree.create(parent.0, n, OpenMode::from_flags(flags)))
        {
            Ok(made) => made,
            Err(e) => return reply.error(e),
        };
        let attr = file_attr(&a);
        let Some(file) = self.tree.local_file(fh) else {
            return reply.created(
                ttl(&a),
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            );
        };
        let mut b = self.backing();
        match b.take(a.ino, fh, || reply.open_backing(&*file)) {
            Ok(id) => {
                self.pt.mode.store(PT_ON, Ordering::SeqCst);
                reply.created_passthrough(
                    ttl(&a),
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                    &id,
                );
            }
            Err(e) => {
                drop(b);
                // The file exists now: it is served through the daemon (a real handle),
                // and later OPENs and CREATEs get ENOSYS (no-open mode).
                self.passthrough_refused(&e);
                reply.created(
                    ttl(&a),
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
            }
        }
    }
}
