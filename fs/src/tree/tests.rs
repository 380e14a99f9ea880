//! The tree's unit tests, on a memory source.

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

/// Dovecot's file_create_locked: a temporary file is made, linked to the lock's name, its
/// temporary name unlinked, and then the first descriptor is fstat'ed (2026-12-07, the
/// mount under ten IMAP sessions: "fstat(mailboxes.lock) failed: No such file or directory").
#[test]
fn a_local_file_keeps_its_inode_when_the_name_it_was_made_under_goes() {
    let t = setup(1000);
    let made = write_file(&t, "", "mailboxes.lock.tmp1", b"pid 42");
    let lock = t.tree.link(made, ROOT, "mailboxes.lock").unwrap();
    assert_eq!((lock.ino, lock.nlink), (made, 2));
    // It stats the temporary name after the link (the inode's last known path is that).
    assert_eq!(ino(&t, "mailboxes.lock.tmp1").unwrap(), made);
    t.tree.unlink(ROOT, "mailboxes.lock.tmp1").unwrap();
    let a = t.tree.getattr(made, None).unwrap();
    assert_eq!((a.size, a.nlink), (6, 1));
    assert_eq!(t.tree.read_ino(made, 0, 100).unwrap(), b"pid 42");
    assert_eq!(t.tree.write_ino(made, 6, b"!", false).unwrap(), 1);
    assert_eq!(cat(&t, "mailboxes.lock"), b"pid 42!");
    // Its last name goes too: still there by inode, until the kernel forgets it.
    t.tree.unlink(ROOT, "mailboxes.lock").unwrap();
    assert_eq!(t.tree.getattr(made, None).unwrap().nlink, 0);
    assert_eq!(t.tree.read_ino(made, 0, 100).unwrap(), b"pid 42!");
    t.tree.forget(made);
    assert!(t.tree.getattr(made, None).is_err());
    let gone = t._dir.0.join(implicit::GONE_DIR);
    assert_eq!(fs::read_dir(&gone).map(|d| d.count()).unwrap_or(0), 0);
}

/// A folder deleted (Dovecot's rename to `..DOVECOT-TRASHED`) and created again at once while
/// another session still has the old folder's transaction log open: that descriptor goes on
/// reading and growing the old file, never the new one ("indexid changed", "file size
/// shrank", "Stale file handle" before). A renamed folder's open files follow it.
#[test]
fn open_files_of_a_deleted_or_renamed_folder_stay_theirs() {
    let t = setup(1000);
    t.tree.mkdir(ROOT, ".Churn").unwrap();
    let old = write_file(&t, ".Churn", "dovecot.index.log", b"old log");
    t.tree
        .rename(ROOT, ".Churn", ROOT, "..DOVECOT-TRASHED", false)
        .unwrap();
    t.tree.mkdir(ROOT, ".Churn").unwrap();
    let new = write_file(&t, ".Churn", "dovecot.index.log", b"the new log");
    assert_ne!(old, new);
    assert_eq!(t.tree.getattr(old, None).unwrap().size, 7);
    assert_eq!(t.tree.write_ino(old, 7, b"+", false).unwrap(), 1);
    assert_eq!(t.tree.read_ino(old, 0, 100).unwrap(), b"old log+");
    assert_eq!(cat(&t, ".Churn/dovecot.index.log"), b"the new log");

    let kept = write_file(&t, ".Churn", "dovecot-uidlist", b"3 V1 N2");
    t.tree
        .rename(ROOT, ".Churn", ROOT, ".Renamed", false)
        .unwrap();
    assert_eq!(t.tree.getattr(kept, None).unwrap().size, 7);
    assert_eq!(t.tree.read_ino(kept, 0, 100).unwrap(), b"3 V1 N2");
    assert_eq!(ino(&t, ".Renamed/dovecot-uidlist").unwrap(), kept);
}

/// The kernel caches names under a directory inode: a folder deleted and made again must be
/// a new directory inode (with new `cur/new/tmp`), or the old folder's cached entries would
/// be found in the new one.
#[test]
fn a_folder_made_again_is_a_new_directory() {
    let t = setup(1000);
    let dir = t.tree.mkdir(ROOT, ".Churn").unwrap().ino;
    let tmp = t.tree.mkdir(dir, "tmp").unwrap().ino;
    t.tree
        .rename(ROOT, ".Churn", ROOT, "..DOVECOT-TRASHED", false)
        .unwrap();
    assert_eq!(t.tree.getattr(dir, None).map(|_| ()), Err(Errno::ENOENT));
    let again = t.tree.mkdir(ROOT, ".Churn").unwrap().ino;
    assert_ne!(again, dir);
    assert_ne!(t.tree.mkdir(again, "tmp").unwrap().ino, tmp);
    t.tree.rmdir(ROOT, ".Churn").unwrap();
    assert_ne!(t.tree.mkdir(ROOT, ".Churn").unwrap().ino, again);
}
