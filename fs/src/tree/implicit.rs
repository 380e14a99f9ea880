//! Requests without a file handle. The adapter answers OPEN with ENOSYS, and the kernel then
//! opens regular files without asking (FUSE's no-open mode: no OPEN and no RELEASE, the
//! file's pages kept across opens) and sends READ, WRITE and FSYNC with handle 0. Dovecot's
//! SEARCH TEXT opens every message of a folder: two kernel round trips per file less.
//!
//! Each such request opens the node here with [`Tree::open`] (the same checks as an OPEN
//! had), does its work and lets go of it. A few message handles are kept (by inode, checked
//! against the node's current key before reuse): a message read in 128 KiB pieces is fetched
//! and decrypted once, not once per piece. `create` still returns real handles. A local file
//! replaced or unlinked while a program still has it open stays readable by its inode for a
//! while ([`Tree::bury`]), as it would through the handle an OPEN used to give.

use super::*;

/// Message handles kept for handle-less reads.
pub const KEPT: usize = 16;
/// Where replaced and unlinked local files wait (in the backing directory).
pub const GONE_DIR: &str = "..peerpost/gone";
/// How long a buried local file stays readable by its inode at most, and how many are kept.
/// It normally goes sooner: when the kernel forgets its inode ([`Tree::forget`]), which it
/// does once no process has the file open or mapped. Dovecot keeps its replaced index files
/// mapped for as long as a session reads them: with a fixed 60 s, a page faulted in later
/// found the file gone and the process died of SIGBUS (seen in scripts/bench-fs-imap).
pub const BURIED_FOR: Duration = Duration::from_secs(3600);
pub const MAX_BURIED: usize = 1024;

/// Files made in `tmp/` kept open, at most.
pub const MADE: usize = 64;

/// Files made in `tmp/` (by backing inode, most recent last), kept open from their MKNOD:
/// a delivery's WRITE and FSYNC then need no open, check and close of the backing file by
/// path. The descriptor is bound to the inode, so it cannot write another file's bytes; it
/// is used only while the node is still that local file in a `tmp/` (not once delivered,
/// moved out or buried) and not for O_APPEND writes.
#[derive(Debug, Default)]
pub struct Made(pub(super) VecDeque<(u64, Arc<File>)>);

/// Kept message handles: (inode, its key when opened, handle), most recent last. They are
/// not in the handle table: a request holds its own reference, so one evicted meanwhile is
/// still read to the end.
#[derive(Debug, Default)]
pub struct Kept(VecDeque<(u64, NodeKey, Arc<Handle>)>);

impl<S: MaildirSource> Tree<S> {
    /// Runs `f` on a handle for `ino`: a kept message handle whose node still has the key it
    /// was opened for, or a new one (a message's is kept, a local file's let go after).
    fn with_implicit<T>(
        &self,
        ino: u64,
        mode: OpenMode,
        f: impl FnOnce(&Handle, u64) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let key = {
            let st = self.lock();
            self.key(&st, ino)?
        };
        if !mode.write {
            let found = {
                let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                kept.0
                    .iter()
                    .find(|(i, k, _)| *i == ino && *k == key)
                    .map(|(_, _, h)| Arc::clone(h))
            };
            if let Some(h) = found {
                return f(&h, 0);
            }
        }
        let fh = self.open(ino, mode)?;
        let h = self.handle(fh)?;
        if mode.write || !matches!(&*h, Handle::Message { .. }) {
            let r = f(&h, fh);
            self.release(fh);
            return r;
        }
        self.release(fh);
        {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.0.push_back((ino, key, Arc::clone(&h)));
            if kept.0.len() > KEPT {
                kept.0.pop_front();
            }
        }
        f(&h, 0)
    }

    /// Keeps `file`, just made in `tmp/` with backing inode `b`, for [`Tree::made_file`].
    pub(super) fn remember_made(&self, b: u64, file: &Arc<File>) {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        made.0.retain(|(i, _)| *i != b);
        made.0.push_back((b, Arc::clone(file)));
        if made.0.len() > MADE {
            made.0.pop_front();
        }
    }

    /// The kept file of node `ino`, if it is a local file in a `tmp/` made here.
    fn made_file(&self, ino: u64) -> Option<Arc<File>> {
        let b = {
            let st = self.lock();
            let Ok(NodeKey::Local(b)) = self.key(&st, ino) else {
                return None;
            };
            let rel = st.local_path.get(&b)?;
            if !is_tmp_rel(rel) {
                return None;
            }
            b
        };
        let made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        made.0
            .iter()
            .rev()
            .find(|(i, _)| *i == b)
            .map(|(_, f)| Arc::clone(f))
    }

    /// READ without a handle.
    pub fn read_ino(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.with_implicit(ino, OpenMode::from_flags(libc::O_RDONLY), |h, _| {
            self.read_handle(h, offset, size)
        })
    }

    /// WRITE without a handle; `append`: the file was opened with O_APPEND.
    pub fn write_ino(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        append: bool,
    ) -> Result<u32, Errno> {
        if !append && let Some(file) = self.made_file(ino) {
            return self.write_local(&file, true, offset, data);
        }
        let flags = libc::O_WRONLY | if append { libc::O_APPEND } else { 0 };
        self.with_implicit(ino, OpenMode::from_flags(flags), |_, fh| {
            self.write(fh, offset, data)
        })
    }

    /// FSYNC without a handle.
    pub fn fsync_ino(&self, ino: u64) -> Result<(), Errno> {
        if let Some(file) = self.made_file(ino) {
            return file.sync_data().map_err(|e| io_errno(&e));
        }
        self.with_implicit(ino, OpenMode::from_flags(libc::O_RDONLY), |h, fh| {
            match h {
                // A message's fsync commits what is queued; it needs no handle of its own.
                Handle::Message { .. } => self.flush(),
                _ => self.fsync(fh),
            }
        })
    }

    /// Takes the local file at `rel` out of sight (unlinked, or about to be replaced by a
    /// rename) but keeps it, by its inode, for [`BURIED_FOR`]: a program that had it open
    /// reads, writes and fstats on (Dovecot reads `dovecot-uidlist` while another process
    /// replaces it). A file with other links gets one more in the grave, so its inode keeps
    /// a path whichever of its names goes (Dovecot's lock files: made under a temporary
    /// name, linked to the lock's, the temporary name unlinked, then fstat of the first
    /// descriptor).
    pub(super) fn bury(&self, st: &mut State, rel: &str) -> io::Result<()> {
        let path = self.local_path(rel);
        let m = fs::symlink_metadata(&path)?;
        let grave = format!("{GONE_DIR}/{}", m.ino());
        let to = self.local_path(&grave);
        if fs::symlink_metadata(&to).is_ok_and(|g| g.ino() == m.ino()) {
            // Already kept there (an earlier name of it went): this name simply goes.
            fs::remove_file(&path)?;
            st.local_path.insert(m.ino(), grave);
            return Ok(());
        }
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        if m.nlink() > 1 {
            let _ = fs::remove_file(&to);
            fs::hard_link(&path, &to)?;
            fs::remove_file(&path)?;
        } else {
            fs::rename(&path, &to)?;
        }
        st.local_path.insert(m.ino(), grave);
        st.buried.push_back((m.ino(), Instant::now()));
        self.prune_buried(st);
        Ok(())
    }

    /// Buries every local file under directory `rel_dir` (a folder's, about to be removed
    /// with the folder) that the kernel may know by inode; the others are left to go with
    /// the directory. Dovecot sessions keep a deleted folder's index and log open: on a disk
    /// those descriptors go on working whatever is created under the same name next.
    pub(super) fn bury_dir(&self, st: &mut State, rel_dir: &str) {
        let known: Vec<String> = st
            .local_path
            .values()
            .filter(|r| r.starts_with(rel_dir) && r[rel_dir.len()..].starts_with('/'))
            .cloned()
            .collect();
        for rel in known {
            let _ = self.bury(st, &rel);
        }
    }

    /// The kernel forgot inode `ino` (no process has it open, mapped, or named): a buried
    /// file goes now.
    pub fn forget(&self, ino: u64) {
        let mut st = self.lock();
        let Some(NodeKey::Local(b)) = st.inodes.key(ino).cloned() else {
            return;
        };
        if let Some(i) = st.buried.iter().position(|(x, _)| *x == b) {
            st.buried.remove(i);
            Self::unbury(&mut st, &self.backing, b);
        }
    }

    /// Removes buried file `b` (backing inode) and forgets it, unless the kernel knows it
    /// by a live name again (a file with other links, looked up since).
    fn unbury(st: &mut State, backing: &Path, b: u64) {
        let _ = fs::remove_file(backing.join(format!("{GONE_DIR}/{b}")));
        if st
            .local_path
            .get(&b)
            .is_some_and(|r| r.starts_with(GONE_DIR))
        {
            st.local_path.remove(&b);
            st.inodes.remove(&NodeKey::Local(b));
        }
    }

    /// Forgets buried files past their time (or beyond [`MAX_BURIED`]).
    fn prune_buried(&self, st: &mut State) {
        while let Some((b, at)) = st.buried.front().copied() {
            if at.elapsed() < BURIED_FOR && st.buried.len() <= MAX_BURIED {
                break;
            }
            st.buried.pop_front();
            Self::unbury(st, &self.backing, b);
        }
    }
}
