//! Deliveries answered before the engine commits them.
//!
//! A delivery (a `tmp/` file renamed or linked into `new/` or `cur/`) is answered at once:
//! the journal gets a line naming it (written, not flushed), the file is renamed (or, for
//! `link`, hard-linked) into the local pending directory, and the tree shows a provisional
//! entry under the name the client gave. A flusher commits the queue to the engine in
//! batches of [`MAX_BATCH`] (one durable commit each); `fsync`/`fsyncdir` on the mount, an
//! operation on a pending message and an unmount commit it before they return.
//!
//! Durability follows Maildir's contract: a delivery is durable once the client has fsync'd
//! the directory it renamed into (that commits the queue). Before that, a killed daemon
//! loses nothing (the journal line and the file are in the kernel's page cache; the next
//! start reads them back and delivers them); a crash of the machine may lose deliveries not
//! followed by an fsync of the directory, as it may on a disk file system.
//!
//! Exactly once: the journal line is written before the file moves (a line whose file is
//! missing is a rename that never returned: skipped), and a committed delivery's file is
//! removed before its line. A delivery read back from a journal, or retried after a failed
//! commit, is "uncertain" (the engine may have it already): the flusher first looks for a
//! message in its folder with the same base name, size and date, and takes that one.
//!
//! Journal lines (format 1): `1 <folder, hex> <n|c> <name, hex> <internal date> <pending
//! id>`. Malformed lines are skipped.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::deferred::{hex, replace_journal, unhex};
use crate::inode::Sub;
use crate::{FolderName, MessageKey};

/// Deliveries queued at most (beyond: renames deliver synchronously).
pub const MAX_QUEUED: usize = 10_000;
/// Bytes of queued deliveries at most (beyond: renames deliver synchronously).
pub const MAX_QUEUED_BYTES: u64 = 256 << 20;
/// Deliveries per engine commit.
pub const MAX_BATCH: usize = 256;
/// Emptied files of committed deliveries kept for new `tmp/` files, at most.
pub const MAX_SPARE: usize = 1024;

const JOURNAL: &str = "deliveries.journal";
const FLUSHING: &str = "deliveries.flushing";
/// Under the state directory: the pending files, named by their id.
const FILES: &str = "pending";
/// Under the state directory: emptied files of committed deliveries, named by a number,
/// waiting to become new `tmp/` files ([`Spares::take`]).
const SPARE: &str = "spare";
/// The key prefix of provisional entries (never a real key: those are hex).
const PROVISIONAL: &str = "~pending.";

/// One delivery waiting for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: u64,
    pub folder: FolderName,
    /// `new` or `cur`.
    pub sub: Sub,
    /// The file name the client gave (base and flags).
    pub name: String,
    pub internal_date: i64,
    pub size: u64,
    /// The engine may have it already (read back from a journal, or a commit failed).
    pub uncertain: bool,
}

impl Delivery {
    /// The key of its provisional entry.
    pub fn key(&self) -> MessageKey {
        provisional_key(self.id)
    }
}

pub fn provisional_key(id: u64) -> MessageKey {
    MessageKey(format!("{PROVISIONAL}{id}").into())
}

/// Whether a key names a delivery not committed yet.
pub fn is_provisional(key: &MessageKey) -> bool {
    key.0.starts_with(PROVISIONAL)
}

/// How the file gets into the pending directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// `rename`: the `tmp/` file moves.
    Move,
    /// `link`: the `tmp/` file stays (a hard link is made).
    Link,
}

fn line(d: &Delivery) -> String {
    format!(
        "1 {} {} {} {} {}\n",
        hex(&d.folder),
        if d.sub == Sub::New { "n" } else { "c" },
        hex(&d.name),
        d.internal_date,
        d.id
    )
}

fn parse(line: &str) -> Option<Delivery> {
    let f: Vec<&str> = line.split(' ').collect();
    let ["1", folder, sub, name, date, id] = f.as_slice() else {
        return None;
    };
    let sub = match *sub {
        "n" => Sub::New,
        "c" => Sub::Cur,
        _ => return None,
    };
    let name = unhex(name)?;
    if name.is_empty() || name.len() > crate::tree::MAX_NAME || name.contains('/') {
        return None;
    }
    Some(Delivery {
        id: id.parse().ok()?,
        folder: unhex(folder)?,
        sub,
        name,
        internal_date: date.parse().ok()?,
        size: 0,
        uncertain: true,
    })
}

/// The queue, the batch being committed, and the journal.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    queue: VecDeque<Delivery>,
    inflight: Vec<Delivery>,
    bytes: u64,
    next_id: u64,
    journal: Option<File>,
}

/// What [`Spares::take`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Spare {
    /// The spare file is at the path now (empty, mode 0600).
    Taken,
    /// The name exists: nothing moved.
    Exists,
    /// No spare file (or it could not be moved there): create one.
    None,
}

impl Pending {
    /// Opens the queue kept in `dir` (the tree's state directory): deliveries a killed
    /// daemon journaled, whose files are there, are queued again (uncertain), and the
    /// journal is rewritten with just them.
    pub fn load(dir: &Path) -> Pending {
        let mut p = Pending {
            dir: dir.to_path_buf(),
            queue: VecDeque::new(),
            inflight: Vec::new(),
            bytes: 0,
            next_id: 1,
            journal: None,
        };
        // Ids are never reused while a file of that id exists.
        if let Ok(rd) = fs::read_dir(dir.join(FILES)) {
            for e in rd.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                    p.next_id = p.next_id.max(id.saturating_add(1));
                }
            }
        }
        let mut found = false;
        let mut seen = std::collections::HashSet::new();
        for name in [FLUSHING, JOURNAL] {
            let Ok(text) = fs::read_to_string(dir.join(name)) else {
                continue;
            };
            found = true;
            for mut d in text.lines().filter_map(parse) {
                if !seen.insert(d.id) {
                    continue;
                }
                let Ok(m) = fs::symlink_metadata(p.file(d.id)) else {
                    continue; // the rename never happened, or it was committed
                };
                d.size = m.len();
                p.bytes += d.size;
                p.queue.push_back(d);
            }
        }
        if found {
            let text: String = p.queue.iter().map(line).collect();
            replace_journal(dir, JOURNAL, FLUSHING, &text);
        }
        p
    }

    /// The pending file of a delivery.
    pub fn file(&self, id: u64) -> PathBuf {
        self.dir.join(FILES).join(id.to_string())
    }

    /// Whether one more delivery of `size` bytes fits the queue.
    pub fn has_room(&self, size: u64) -> bool {
        self.queue.len() + self.inflight.len() < MAX_QUEUED
            && self.bytes.saturating_add(size) <= MAX_QUEUED_BYTES
    }

    /// Bytes queued or being committed (for the quota check).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Queues the delivery of the local file `from`, of metadata `meta` (its mtime is the
    /// internal date):
    /// journaled first, then the file is moved (or linked) into the pending directory. On
    /// error nothing is queued (and the file is where it was); the caller delivers
    /// synchronously then.
    pub fn push(
        &mut self,
        folder: &str,
        sub: Sub,
        name: &str,
        (from, meta): (&Path, &fs::Metadata),
        how: How,
    ) -> io::Result<Delivery> {
        let (size, internal_date) = (meta.len(), meta.mtime());
        if !self.has_room(size) {
            return Err(io::Error::other("delivery queue full"));
        }
        if self.journal.is_none() {
            fs::create_dir_all(self.dir.join(FILES))?;
            self.journal = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(self.dir.join(JOURNAL))?,
            );
        }
        let d = Delivery {
            id: self.next_id,
            folder: folder.to_string(),
            sub,
            name: name.to_string(),
            internal_date,
            size,
            uncertain: false,
        };
        self.next_id += 1;
        if let Some(j) = self.journal.as_mut() {
            j.write_all(line(&d).as_bytes())?;
        }
        // A line whose file never arrived is skipped when read back.
        match how {
            How::Move => fs::rename(from, self.file(d.id))?,
            How::Link => fs::hard_link(from, self.file(d.id))?,
        }
        self.bytes += size;
        self.queue.push_back(d.clone());
        Ok(d)
    }

    /// Deliveries of a folder, queued or being committed.
    pub fn of_folder<'a>(&'a self, folder: &'a str) -> impl Iterator<Item = &'a Delivery> {
        self.queue
            .iter()
            .chain(self.inflight.iter())
            .filter(move |d| d.folder == folder)
    }

    /// Deliveries of a folder being committed.
    pub fn inflight_of<'a>(&'a self, folder: &'a str) -> impl Iterator<Item = &'a Delivery> {
        self.inflight.iter().filter(move |d| d.folder == folder)
    }

    /// The delivery behind a provisional key.
    pub fn get(&self, key: &MessageKey) -> Option<&Delivery> {
        let id: u64 = key.0.strip_prefix(PROVISIONAL)?.parse().ok()?;
        self.queue
            .iter()
            .chain(self.inflight.iter())
            .find(|d| d.id == id)
    }

    /// Deliveries queued (not counting a batch being committed).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty()
    }

    /// Hands the queue over for commits: it becomes the in-flight batch (still shown), and
    /// the journal is set aside until [`Pending::finish`]. Empty while a batch is in flight.
    pub fn take(&mut self) -> Vec<Delivery> {
        if self.queue.is_empty() || !self.inflight.is_empty() {
            return Vec::new();
        }
        self.journal = None;
        let _ = fs::rename(self.dir.join(JOURNAL), self.dir.join(FLUSHING));
        self.inflight = self.queue.drain(..).collect();
        self.inflight.clone()
    }

    /// These deliveries of the in-flight batch are in the engine: their files are
    /// returned, for [`Spares::recycle`] (outside the tree's lock: a batch is 256 files).
    #[must_use]
    pub fn committed(&mut self, ids: &[u64]) -> Vec<PathBuf> {
        let mut files = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(i) = self.inflight.iter().position(|d| d.id == *id) {
                let d = self.inflight.swap_remove(i);
                self.bytes = self.bytes.saturating_sub(d.size);
                files.push(self.file(d.id));
            }
        }
        files
    }

    /// The in-flight batch is over: what was not committed is queued (and journaled) again,
    /// ahead of what came meanwhile, marked uncertain.
    pub fn finish(&mut self) {
        let mut back = std::mem::take(&mut self.inflight);
        back.sort_by_key(|d| d.id);
        for mut d in back.into_iter().rev() {
            d.uncertain = true;
            self.queue.push_front(d);
        }
        // Rewritten whole: the set-aside journal goes only once every line is elsewhere.
        let text: String = self.queue.iter().map(line).collect();
        self.journal = None;
        replace_journal(&self.dir, JOURNAL, FLUSHING, &text);
    }
}

/// Emptied files of committed deliveries, reused as new `tmp/` files: on a disk that is
/// busy deleting files (ext4 without a journal, as here, skips recently freed inodes one by
/// one when it makes a file), a delivery then neither frees nor allocates an inode. Its
/// own lock, held only to hand out numbers: recycling a batch's files does not hold up
/// the tree.
#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    numbers: std::sync::Mutex<SpareNumbers>,
}

#[derive(Debug, Default)]
struct SpareNumbers {
    /// Numbers of the files in the spare directory.
    free: Vec<u64>,
    next: u64,
}

impl Spares {
    /// The spare files under the state directory `dir`: none (the ones a previous run left
    /// are not worth checking: they go).
    pub fn load(dir: &Path) -> Spares {
        let dir = dir.join(SPARE);
        let _ = fs::remove_dir_all(&dir);
        Spares {
            dir,
            numbers: std::sync::Mutex::default(),
        }
    }

    fn numbers(&self) -> std::sync::MutexGuard<'_, SpareNumbers> {
        self.numbers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A committed delivery's file: moved out of the pending directory, emptied and kept
    /// (at most [`MAX_SPARE`]), or removed. A file another name still links (a `link`
    /// delivery's `tmp/` file) is only unlinked. Moved before it is emptied, so a reader
    /// that finds the pending file gone knows it was committed.
    pub fn recycle(&self, path: &Path) {
        let n = {
            let mut s = self.numbers();
            if s.free.len() >= MAX_SPARE {
                None
            } else {
                s.next += 1;
                Some(s.next - 1)
            }
        };
        let kept = n.is_some_and(|n| {
            let to = self.dir.join(n.to_string());
            let emptied = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .and_then(|f| {
                    if f.metadata()?.nlink() != 1 {
                        return Err(io::Error::other("linked"));
                    }
                    match fs::rename(path, &to) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            fs::create_dir_all(&self.dir)?;
                            fs::rename(path, &to)?;
                        }
                        r => r?,
                    }
                    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
                    f.set_len(0)
                        .and_then(|()| f.set_permissions(mode))
                        .inspect_err(|_| {
                            let _ = fs::remove_file(&to);
                        })
                });
            match emptied {
                Ok(()) => {
                    self.numbers().free.push(n);
                    true
                }
                Err(_) => false,
            }
        });
        if !kept {
            let _ = fs::remove_file(path);
        }
    }

    /// Moves a spare file to `to` (a new `tmp/` file), unless `to` exists
    /// (`renameat2(RENAME_NOREPLACE)`, so `O_EXCL` holds). The caller sets its mtime.
    pub fn take(&self, to: &Path) -> Spare {
        let Some(n) = self.numbers().free.pop() else {
            return Spare::None;
        };
        let from = self.dir.join(n.to_string());
        match rename_noreplace(&from, to) {
            Ok(()) => Spare::Taken,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.numbers().free.push(n);
                Spare::Exists
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() => {
                self.numbers().free.push(n); // `to`'s directory is not made yet
                Spare::None
            }
            Err(_) => {
                let _ = fs::remove_file(&from);
                Spare::None
            }
        }
    }
}

/// `renameat2(from, to, RENAME_NOREPLACE)`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap()
    }

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("peerpost-pending-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lines_round_trip_and_garbage_is_skipped() {
        let d = Delivery {
            id: 42,
            folder: "Archive/2024 x".into(),
            sub: Sub::Cur,
            name: "1.a.host:2,FS".into(),
            internal_date: -5,
            size: 0,
            uncertain: true,
        };
        assert_eq!(parse(line(&d).trim_end()), Some(d));
        for bad in [
            "",
            "1 41 n 41 5",
            "2 41 n 41 5 1",
            "1 41 x 41 5 1",
            "1 41 n 2f 5 1",
            "1 41 n 41 x 1",
            "1 41 n 41 5 1 extra",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_killed_daemons_queue_comes_back_and_failures_requeue() {
        let d = dir();
        let src = d.join("src");
        fs::create_dir_all(&src).unwrap();
        let mut p = Pending::load(&d.join("state"));
        for n in 0..3 {
            fs::write(src.join(format!("m{n}")), b"abc").unwrap();
            let m = src.join(format!("m{n}"));
            p.push(
                "INBOX",
                Sub::New,
                &format!("{n}.x"),
                (&m, &meta(&m)),
                How::Move,
            )
            .unwrap();
        }
        assert!(!src.join("m0").exists());
        drop(p);
        // Killed: the three come back, uncertain.
        let mut p = Pending::load(&d.join("state"));
        let batch = p.take();
        assert_eq!(batch.len(), 3);
        assert!(batch.iter().all(|b| b.uncertain && b.size == 3));
        assert!(p.get(&batch[0].key()).is_some(), "in flight is still found");
        // Killed mid-commit after the first was committed: two come back.
        for f in p.committed(&[batch[0].id]) {
            fs::remove_file(f).unwrap();
        }
        drop(p);
        let mut p = Pending::load(&d.join("state"));
        let batch = p.take();
        assert_eq!(batch.len(), 2);
        // A failed commit keeps them, ahead of newer ones; ids are not reused.
        fs::write(src.join("m9"), b"z").unwrap();
        let newer = p
            .push(
                "INBOX",
                Sub::New,
                "9.x",
                (&src.join("m9"), &meta(&src.join("m9"))),
                How::Link,
            )
            .unwrap();
        assert!(src.join("m9").exists(), "a link leaves the tmp file");
        assert!(batch.iter().all(|b| b.id < newer.id));
        p.finish();
        let again = p.take();
        assert_eq!(again.len(), 3);
        assert_eq!(again[2].id, newer.id);
        for f in p.committed(&again.iter().map(|d| d.id).collect::<Vec<_>>()) {
            fs::remove_file(f).unwrap();
        }
        p.finish();
        assert!(p.is_empty() && p.bytes() == 0);
        drop(p);
        assert!(Pending::load(&d.join("state")).is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn spare_files_are_bounded_moved_without_replacing_and_dropped_at_restart() {
        let d = dir();
        let src = d.join("src");
        fs::create_dir_all(&src).unwrap();
        let state = d.join("state");
        let mut p = Pending::load(&state);
        let n = MAX_SPARE + 3;
        for i in 0..n {
            let m = src.join(format!("m{i}"));
            fs::write(&m, b"abc").unwrap();
            p.push(
                "INBOX",
                Sub::New,
                &format!("{i}.x"),
                (&m, &meta(&m)),
                How::Move,
            )
            .unwrap();
        }
        let spares = Spares::load(&state);
        let ids: Vec<u64> = p.take().iter().map(|d| d.id).collect();
        for f in p.committed(&ids) {
            spares.recycle(&f);
        }
        p.finish();
        assert_eq!(fs::read_dir(state.join(FILES)).unwrap().count(), 0);
        let spare = || fs::read_dir(state.join(SPARE)).unwrap().count();
        assert_eq!(spare(), MAX_SPARE, "bounded: the rest were removed");

        let to = src.join("new-tmp-file");
        assert_eq!(spares.take(&to), Spare::Taken);
        let m = fs::metadata(&to).unwrap();
        assert_eq!((m.len(), m.mode() & 0o777, m.nlink()), (0, 0o600, 1));
        assert_eq!(spare(), MAX_SPARE - 1);
        fs::write(&to, b"mine").unwrap();
        assert_eq!(spares.take(&to), Spare::Exists);
        assert_eq!(fs::read(&to).unwrap(), b"mine");
        assert_eq!(spare(), MAX_SPARE - 1);
        // A directory not made yet: no spare is lost.
        assert_eq!(spares.take(&src.join("no/such/dir")), Spare::None);
        assert_eq!(spare(), MAX_SPARE - 1);

        drop(spares);
        let spares = Spares::load(&state);
        assert!(!state.join(SPARE).exists());
        assert_eq!(spares.take(&src.join("after-restart")), Spare::None);
    }
}
