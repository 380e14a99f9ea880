//! `peerpost mount` through the real kernel: shell tools on the mount change the engine (seen
//! by `peerpost export` in another process), mail imported by another process appears on the
//! mount and wakes an inotify watcher, everything survives unmount/remount and SIGKILL, and
//! bad input gets the right errno. Skipped, with the reason printed, where `/dev/fuse` is
//! missing or mounting is not permitted.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, Mutt, TestHome, engine_files};

/// A running `peerpost mount`; stopped (SIGTERM, then SIGKILL) and unmounted on drop.
pub(crate) struct MountProcess {
    child: Child,
    mnt: PathBuf,
}

impl MountProcess {
    /// Starts the daemon and waits for the mount; `None` (skip) when FUSE is not usable here.
    fn start(t: &TestHome, mnt: &Path, path_env: Option<&str>) -> Option<MountProcess> {
        Self::start_with(t, mnt, path_env, &[])
    }

    pub(crate) fn start_with(
        t: &TestHome,
        mnt: &Path,
        path_env: Option<&str>,
        extra: &[&str],
    ) -> Option<MountProcess> {
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_err()
        {
            eprintln!("skipped: /dev/fuse is missing or not accessible to this user");
            return None;
        }
        let mut cmd = Command::new(BIN);
        cmd.arg("--home")
            .arg(t.home())
            .arg("mount")
            .arg(mnt)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(p) = path_env {
            cmd.env("PATH", p);
        }
        let child = cmd.spawn().unwrap();
        let mut m = MountProcess {
            child,
            mnt: mnt.to_path_buf(),
        };
        let start = Instant::now();
        loop {
            if is_mounted(mnt) && std::fs::read_dir(mnt.join("cur")).is_ok() {
                return Some(m);
            }
            if let Ok(Some(_)) = m.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = m.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                if err.contains("Permission denied") || err.contains("Operation not permitted") {
                    eprintln!("skipped: mounting is not permitted here: {err}");
                    return None;
                }
                panic!("peerpost mount exited: {err}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns its stderr.
    fn stop(&mut self) -> String {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return err;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("peerpost mount did not stop on SIGTERM");
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill9();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .status();
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(canon) = mnt
        .canonicalize()
        .or_else(|_| Ok::<_, ()>(mnt.to_path_buf()))
    else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap_or("")))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Maildir with two messages (one seen in cur/, one in new/), imported into the engine.
pub(crate) fn home_with_mail(t: &TestHome) {
    t.init("alice@example.org");
    let src = t.dir.path().join("src");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(
        src.join("cur/100.x.host:2,S"),
        "Subject: one\n\nhello from one\n",
    )
    .unwrap();
    std::fs::write(src.join("new/200.y.host"), "Subject: two\n\nsecond\n").unwrap();
    t.run(&["import", src.to_str().unwrap()]).success();
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn shell_tools_on_the_mount_change_the_engine() {
    let t = TestHome::new();
    home_with_mail(&t);
    let mnt = t.dir.path().join("Maildir");
    let Some(mut m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    assert_eq!(sh(&mnt, "ls cur"), "100.x.host:2,S\n");
    assert_eq!(sh(&mnt, "ls new"), "200.y.host\n");
    assert_eq!(
        sh(&mnt, "ls -d .*/ | sort"),
        "../\n./\n.Archive/\n.Drafts/\n.Junk/\n.Sent/\n.Trash/\n"
    );
    assert_eq!(
        sh(&mnt, "cat 'cur/100.x.host:2,S'"),
        "Subject: one\n\nhello from one\n"
    );
    // Sizes are exact and mtime is the internal date.
    let meta = std::fs::metadata(mnt.join("cur/100.x.host:2,S")).unwrap();
    assert_eq!(meta.len(), 29);
    assert_eq!(meta.uid(), std::fs::metadata(t.dir.path()).unwrap().uid());
    // Delivery the Maildir way, a flag change, a move, a copy by hard link, an expunge,
    // and a folder created and removed.
    let letter = t.file("letter", "Subject: three\n\nhello from three\n");
    sh(
        &mnt,
        &format!(
            "cp {} tmp/300.z.host && mv tmp/300.z.host new/300.z.host",
            letter.display()
        ),
    );
    sh(&mnt, "mv new/200.y.host cur/200.y.host:2,FS");
    sh(
        &mnt,
        "mv 'cur/100.x.host:2,S' '.Archive/cur/100.x.host:2,S'",
    );
    sh(
        &mnt,
        "ln '.Archive/cur/100.x.host:2,S' '.Sent/cur/100.x.host:2,RS'",
    );
    sh(&mnt, "rm '.Archive/cur/100.x.host:2,S'");
    sh(&mnt, "mkdir .Work && rmdir .Work");
    // A delivery agent setting the received date (utime in tmp/) keeps it as the internal
    // date, which is the file's mtime on the mount.
    sh(
        &mnt,
        "printf 'Subject: dated\n\nold\n' > tmp/9.d.host && chmod 600 tmp/9.d.host \
         && touch -d @1500000000 tmp/9.d.host && mv tmp/9.d.host 'cur/9.d.host:2,S'",
    );
    let dated = std::fs::metadata(mnt.join("cur/9.d.host:2,S")).unwrap();
    assert_eq!(dated.mtime(), 1_500_000_000);
    sh(&mnt, "rm 'cur/9.d.host:2,S'");
    // statfs answers (from the engine's quota).
    assert!(sh(&mnt, "df -P . | tail -1").contains("peerpost"));
    assert_eq!(
        sh(&mnt, "find . -type f | sort"),
        "./.Sent/cur/100.x.host:2,RS\n./cur/200.y.host:2,FS\n./new/300.z.host\n./subscriptions\n"
    );
    // Dovecot's subscriptions file shows the engine's subscribed folders.
    assert_eq!(
        sh(&mnt, "cat subscriptions"),
        "V\t2\n\nArchive\nDrafts\nJunk\nSent\nTrash\n"
    );
    assert_eq!(
        sh(&mnt, "grep -rl hello . | sort"),
        "./.Sent/cur/100.x.host:2,RS\n./new/300.z.host\n"
    );
    assert_eq!(
        engine_files(&t, "after"),
        vec![
            ".Sent/cur/100.x.host:2,RS",
            "cur/200.y.host:2,FS",
            "new/300.z.host"
        ]
    );
    let err = m.stop();
    assert!(err.contains("unmounted"), "{err}");
    assert!(!is_mounted(&mnt));
}

/// An inotify watcher (Python, stdlib only) on `dir`: prints "event" at the first event, or
/// "timeout" after 20 s.
fn inotify_watcher(dir: &Path) -> Child {
    let script = r#"
import ctypes, os, select, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
IN_MODIFY, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x80, 0x100, 0x200
wd = libc.inotify_add_watch(fd, sys.argv[1].encode(), IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE)
if wd < 0:
    print("watch failed", flush=True); sys.exit(1)
print("ready", flush=True)
r, _, _ = select.select([fd], [], [], 20)
print("event" if r else "timeout", flush=True)
"#;
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn mail_imported_by_another_process_appears_and_wakes_watchers() {
    let t = TestHome::new();
    home_with_mail(&t);
    let mnt = t.dir.path().join("Maildir");
    let Some(_m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    assert_eq!(sh(&mnt, "ls new"), "200.y.host\n");
    let mut watcher = inotify_watcher(&mnt.join("new"));
    let mut out = watcher.stdout.take().unwrap();
    let mut line = String::new();
    {
        use std::io::Read;
        let mut b = [0u8; 6];
        out.read_exact(&mut b).unwrap();
        line.push_str(&String::from_utf8_lossy(&b));
    }
    assert_eq!(line, "ready\n");
    let src = t.dir.path().join("src2");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("new/400.w.host"), "Subject: four\n\nfrom afar\n").unwrap();
    t.run(&["import", src.to_str().unwrap()]).success();
    wait_for("the imported message on the mount", || {
        sh(&mnt, "ls new") == "200.y.host\n400.w.host\n"
    });
    let status = watcher.wait().unwrap();
    let mut rest = String::new();
    {
        use std::io::Read;
        out.read_to_string(&mut rest).unwrap();
    }
    assert!(status.success());
    assert_eq!(rest, "event\n", "the inotify watcher was not woken");
    assert_eq!(
        sh(&mnt, "cat new/400.w.host"),
        "Subject: four\n\nfrom afar\n"
    );
}

#[test]
fn mail_survives_remount_and_sigkill() {
    let t = TestHome::new();
    home_with_mail(&t);
    let mnt = t.dir.path().join("Maildir");
    let Some(mut m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    sh(
        &mnt,
        "printf 'Subject: kept\\n\\nx\\n' > tmp/500.k.host && mv tmp/500.k.host 'cur/500.k.host:2,S'",
    );
    sh(&mnt, "printf '1 V1 N2\\n' > dovecot-uidlist");
    m.stop();
    assert!(!is_mounted(&mnt));
    let Some(mut m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    let listing = "cur/100.x.host:2,S\ncur/500.k.host:2,S\nnew/200.y.host\n";
    let ls = "(cd cur && ls | sed 's|^|cur/|'); (cd new && ls | sed 's|^|new/|')";
    assert_eq!(sh(&mnt, ls), listing);
    assert_eq!(sh(&mnt, "cat dovecot-uidlist"), "1 V1 N2\n");
    // A flag change answered just before a SIGKILL (queued for the engine, journaled) is
    // not lost. SIGKILL with the auto-unmount helper (fusermount3 on PATH): the next start
    // mounts again whether the helper has already unmounted or left a stale mount behind.
    // So is a delivery (journaled, its file in the pending directory: pending.rs).
    sh(
        &mnt,
        "mv new/200.y.host 'cur/200.y.host:2,FS' && printf 'Subject: late\\n\\nz\\n' > tmp/600.d.host && mv tmp/600.d.host new/600.d.host",
    );
    m.kill9();
    let Some(mut m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    let listing = "cur/100.x.host:2,S\ncur/200.y.host:2,FS\ncur/500.k.host:2,S\nnew/600.d.host\n";
    assert_eq!(sh(&mnt, ls), listing);
    assert_eq!(sh(&mnt, "cat new/600.d.host"), "Subject: late\n\nz\n");
    let start = Instant::now();
    for n in 0.. {
        let files = engine_files(&t, &format!("after-kill-{n}"));
        if files.contains(&"cur/200.y.host:2,FS".to_string())
            && files.iter().filter(|f| f.contains("600.d.host")).count() == 1
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the flag change or the delivery never reached the engine: {files:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGKILL without the helper (fusermount3 not on PATH) leaves a stale mount; the next
    // start clears it.
    m.stop();
    let bin = t.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["umount", "sh"] {
        for dir in ["/usr/bin", "/bin"] {
            let p = Path::new(dir).join(tool);
            if p.exists() && !bin.join(tool).exists() {
                std::os::unix::fs::symlink(&p, bin.join(tool)).unwrap();
            }
        }
    }
    let path = bin.to_str().unwrap().to_string();
    let Some(mut m) = MountProcess::start(&t, &mnt, Some(&path)) else {
        return;
    };
    m.kill9();
    let stale = std::fs::read_dir(&mnt).err().and_then(|e| e.raw_os_error());
    assert_eq!(stale, Some(libc::ENOTCONN), "expected a stale mount");
    let Some(m2) = MountProcess::start(&t, &mnt, Some(&path)) else {
        return;
    };
    assert_eq!(sh(&mnt, ls), listing);
    drop(m2);
    assert!(!is_mounted(&mnt));
}

#[test]
fn bad_input_gets_the_right_errno() {
    let t = TestHome::new();
    home_with_mail(&t);
    // A small message limit, so "too large" is cheap to reach.
    let cfg = t.path("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "max_message_size = \"50MiB\"",
            "max_message_size = \"1KiB\"",
        ),
    )
    .unwrap();
    let mnt = t.dir.path().join("Maildir");
    let Some(_m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    let errno = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    assert_eq!(
        errno(std::fs::write(mnt.join("cur/new-file"), "x")),
        Some(libc::EACCES)
    );
    // A message is read-only: writing to it is refused (the mount runs in FUSE's no-open
    // mode, so the refusal comes with the first write rather than with the open), and so is
    // truncating it; its bytes are untouched.
    let writing = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("cur/100.x.host:2,S"))
        .and_then(|mut f| f.write_all(b"x").and_then(|()| f.sync_all()));
    assert_eq!(errno(writing), Some(libc::EACCES));
    assert!(errno(std::fs::write(mnt.join("cur/100.x.host:2,S"), "x")).is_some());
    assert!(
        std::fs::read_to_string(mnt.join("cur/100.x.host:2,S"))
            .unwrap()
            .starts_with("Subject")
    );
    assert_eq!(
        errno(std::fs::rename(
            mnt.join("tmp/missing"),
            mnt.join("new/missing")
        )),
        Some(libc::ENOENT)
    );
    sh(
        &mnt,
        "mv 'cur/100.x.host:2,S' '.Archive/cur/100.x.host:2,S'",
    );
    assert_eq!(
        errno(std::fs::remove_dir(mnt.join(".Archive"))),
        Some(libc::ENOTEMPTY)
    );
    // Over the size limit: EFBIG at the write when the mount serves tmp/ files itself, at
    // the delivery when the kernel writes them (FUSE passthrough: the write never asks).
    match errno(std::fs::write(mnt.join("tmp/big"), vec![b'x'; 2048])) {
        Some(e) => assert_eq!(e, libc::EFBIG),
        None => {
            assert_eq!(
                errno(std::fs::rename(mnt.join("tmp/big"), mnt.join("new/big"))),
                Some(libc::EFBIG)
            );
            std::fs::remove_file(mnt.join("tmp/big")).unwrap();
        }
    }
    // No extended attributes: asked for one, the kernel says so itself (the mount answers
    // ENOSYS once), and the file reads on.
    std::fs::write(mnt.join("tmp/plain"), "Subject: x\r\n\r\n").unwrap();
    let path =
        std::ffi::CString::new(mnt.join("tmp/plain").as_os_str().as_encoded_bytes()).unwrap();
    for _ in 0..2 {
        let mut buf = [0u8; 64];
        // SAFETY: NUL-terminated strings and a buffer of the size given.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"user.x".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
    }
    assert!(
        std::fs::read_to_string(mnt.join("tmp/plain"))
            .unwrap()
            .starts_with("Subject")
    );
    assert_eq!(
        errno(std::fs::create_dir(mnt.join("not-a-folder"))),
        Some(libc::EPERM)
    );
    // Files are made with MKNOD (the mount answers CREATE with ENOSYS): O_EXCL still
    // refuses a name that exists, and leaves its bytes; only regular files are made.
    let excl = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(mnt.join("tmp/plain"));
    assert_eq!(errno(excl.map(drop)), Some(libc::EEXIST));
    assert!(
        std::fs::read_to_string(mnt.join("tmp/plain"))
            .unwrap()
            .starts_with("Subject")
    );
    let fifo = std::ffi::CString::new(mnt.join("tmp/fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    assert!(!mnt.join("tmp/fifo").exists());
    // Nothing of it reached the engine.
    assert_eq!(
        engine_files(&t, "bad"),
        vec![".Archive/cur/100.x.host:2,S", "new/200.y.host"]
    );
}

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// A private Dovecot (`tests/data/dovecot-private.sh`) serving a Maildir; killed on drop.
pub(crate) struct Dovecot {
    pid: i32,
    pub(crate) port: u16,
    rundir: PathBuf,
}

impl Dovecot {
    pub(crate) fn start(maildir: &Path, rundir: &Path) -> Option<Dovecot> {
        if Command::new("dovecot").arg("--version").output().is_err() {
            eprintln!("skipped: dovecot is not installed (scripts/setup --test)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new(format!("{DATA}/dovecot-private.sh"))
            .arg(maildir)
            .arg(port.to_string())
            .env("DC_RUNDIR", rundir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dovecot-private.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        Some(Dovecot {
            pid,
            port,
            rundir: rundir.to_path_buf(),
        })
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.rundir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the Dovecot master this test started (its pid, from the script).
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        let start = Instant::now();
        // SAFETY: kill(pid, 0) only probes whether the process exists.
        while unsafe { libc::kill(self.pid, 0) } == 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits in IMAP IDLE on INBOX (Python imaplib, raw IDLE); prints "ready" once idling, then
/// "exists" when Dovecot reports new mail, or "timeout" after `secs`.
fn idle_watcher(port: u16, secs: u32) -> Child {
    let script = r#"
import imaplib, select, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("testuser", "testpass")
m.select("INBOX")
tag = m._new_tag()
m.send(tag + b" IDLE\r\n")
line = m.readline()
if not line.startswith(b"+"):
    print("no idle", line, flush=True); sys.exit(1)
print("ready", flush=True)
sock = m.socket()
end = int(sys.argv[2])
import time
deadline = time.time() + end
buf = b""
while time.time() < deadline:
    r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.time()))
    if not r:
        break
    data = sock.recv(4096)
    if not data:
        break
    buf += data
    if b"EXISTS" in buf:
        print("exists", flush=True)
        sys.exit(0)
print("timeout", flush=True)
"#;
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn dovecot_serves_the_mount_and_idle_sees_mail_from_another_process() {
    let t = TestHome::new();
    home_with_mail(&t);
    let mnt = t.dir.path().join("Maildir");
    if Command::new("dovecot").arg("--version").output().is_err() {
        eprintln!("skipped: dovecot is not installed (scripts/setup --test)");
        return;
    }
    // Dovecot refuses uid 0: the files belong to the stock `mail` user (uid 8).
    let owner = "mail";
    let Some(_m) = MountProcess::start_with(&t, &mnt, None, &["--owner", owner]) else {
        return;
    };
    sh(
        &mnt,
        "printf 'Subject: three\\n\\nthird\\n' > tmp/300.z.host && mv tmp/300.z.host new/300.z.host",
    );
    let rundir = t.dir.path().join("dovecot");
    let Some(dc) = Dovecot::start(&mnt, &rundir) else {
        return;
    };
    let out = Command::new("python3")
        .arg(format!("{DATA}/imap-smoke.py"))
        .args(["127.0.0.1", &dc.port.to_string(), "testuser", "testpass"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("15 passed, 0 failed"),
        "{text}\n{}",
        dc.log()
    );
    // Dovecot's work reached the engine: one message expunged, one appended (3 → 3), one
    // flagged, and Dovecot's own files stayed local.
    let files = engine_files(&t, "dovecot");
    assert_eq!(
        files.iter().filter(|f| !f.starts_with('.')).count(),
        3,
        "{files:?}"
    );
    // $Label1 (STORE +FLAGS) came through as keyword letter `a` of dovecot-keywords.
    assert!(files.iter().any(|f| f.ends_with(":2,Fa")), "{files:?}");
    assert!(mnt.join("dovecot-uidlist").exists());
    assert!(!files.iter().any(|f| f.contains("dovecot")));

    // Folders: CREATE, RENAME and DELETE through Dovecot reach the engine.
    let script = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("testuser", "testpass")
typ, subs = m.lsub()
if b'"." Sent' not in b" ".join(x for x in subs if x):
    print("LSUB lacks the engine's subscriptions", subs); sys.exit(1)
for cmd, args in [("create", ["Work"]), ("create", ["Work.Sub"]), ("create", ["Old"]),
                  ("rename", ["Work", "Projects"]), ("delete", ["Old"]),
                  ("subscribe", ["Projects.Sub"]), ("unsubscribe", ["Junk"])]:
    typ, data = getattr(m, cmd)(*args)
    print(cmd, args, typ, data)
    if typ != "OK":
        sys.exit(1)
m.logout()
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dc.port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        dc.log()
    );
    // SUBSCRIBE/UNSUBSCRIBE reached the engine (export writes its subscriptions). The mount
    // reconciles Dovecot's file with the engine's view in the background as folders change,
    // so allow it a moment; a change that was lost fails here with both views printed.
    let mut attempt = 0;
    let exported = loop {
        attempt += 1;
        let exported = t.dir.path().join(format!("export-folders-{attempt}"));
        t.run(&["export", exported.to_str().unwrap()]).success();
        let subs = std::fs::read_to_string(exported.join("subscriptions")).unwrap_or_default();
        if subs.lines().any(|l| l == "Projects.Sub") && !subs.lines().any(|l| l == "Junk") {
            break exported;
        }
        assert!(
            attempt < 50,
            "engine subscriptions:\n{subs}\nDovecot's file on the mount:\n{}",
            std::fs::read_to_string(mnt.join("subscriptions")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut dirs: Vec<String> = std::fs::read_dir(&exported)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        vec![
            ".Archive",
            ".Drafts",
            ".Junk",
            ".Projects",
            ".Projects.Sub",
            ".Sent",
            ".Trash"
        ]
    );

    // IDLE: mail imported by another process reaches the engine, then the mount, and Dovecot
    // hears of it through inotify, well before its 30 s poll.
    let mut idle = idle_watcher(dc.port, 20);
    let mut stdout = idle.stdout.take().unwrap();
    {
        use std::io::Read;
        let mut b = [0u8; 6];
        stdout.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ready\n");
    }
    let src = t.dir.path().join("src-idle");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("new/700.i.host"), "Subject: idle\n\nwake up\n").unwrap();
    let started = Instant::now();
    t.run(&["import", src.to_str().unwrap()]).success();
    let status = idle.wait().unwrap();
    let mut rest = String::new();
    {
        use std::io::Read;
        stdout.read_to_string(&mut rest).unwrap();
    }
    assert!(status.success(), "{rest}");
    assert_eq!(rest, "exists\n", "IDLE did not report the new mail");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "IDLE heard of the mail only after {:?}",
        started.elapsed()
    );
}

/// mutt in tmux on the mount: it lists the mail, sees mail that another process imports while
/// it is open, and its flag change and deletion reach the engine.
#[test]
fn mutt_reads_the_mount_sees_new_mail_and_writes_flags_and_deletions() {
    if !Mutt::available() {
        eprintln!("skipped: mutt or tmux is not installed (scripts/setup --test installs them)");
        return;
    }
    let t = TestHome::new();
    home_with_mail(&t);
    let mnt = t.dir.path().join("Maildir");
    let Some(_m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    let mutt = Mutt::start(
        &t,
        "fs",
        &mnt,
        "set mark_old=yes\nset sort=subject\nset mail_check=1\nset timeout=1\n\
         set confirmappend=no\nset delete=yes\n",
    );
    let screen = || mutt.screen();
    let keys = |k: &str| mutt.keys(k);
    wait_for("mutt's index", || {
        let s = screen();
        s.contains("one") && s.contains("two")
    });
    // Mail from another process shows up in the open mutt.
    let src = t.dir.path().join("src-mutt");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("new/800.a.host"), "Subject: arrived\n\nnew mail\n").unwrap();
    t.run(&["import", src.to_str().unwrap()]).success();
    wait_for("mutt to show the new mail", || screen().contains("arrived"));
    // By subject: 1 arrived, 2 one, 3 two. Flag 2, delete 3, write, quit.
    for k in ["2", "Enter", "F", "3", "Enter", "d", "$", "q"] {
        keys(k);
    }
    // With mark_old, mutt moves the unread "arrived" out of new/ (as `cur/800.a.host:2,`).
    wait_for("mutt's rename of the old unread mail", || {
        sh(&mnt, "ls cur").lines().any(|l| l == "800.a.host:2,")
    });
    wait_for("mutt's changes in the engine", || {
        let files = engine_files(&t, &format!("mutt-{}", Instant::now().elapsed().as_nanos()));
        files.contains(&"cur/100.x.host:2,FS".to_string())
            && !files.iter().any(|f| f.contains("200.y.host"))
            && files.iter().any(|f| f.contains("800.a.host"))
    });
}

/// mbsync (isync) keeps its own UIDs in the base names of the files (`,U=<n>`): a Dovecot
/// account synced into the mount twice gives each message once, with its flags, the names
/// mbsync chose survive a remount, and a flag set on the mount reaches Dovecot.
#[test]
fn mbsync_syncs_an_account_into_the_mount_without_duplicates() {
    if Command::new("mbsync").arg("--version").output().is_err() {
        eprintln!("skipped: mbsync is not installed (scripts/setup --test)");
        return;
    }
    let t = TestHome::new();
    t.init("bob@example.org");
    // The far side: a plain Maildir served by a private Dovecot (as `mail`: not root).
    let far = t.dir.path().join("far");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(far.join(d)).unwrap();
    }
    for (name, subject) in [
        ("1700000001.a.host:2,S", "one"),
        ("1700000002.b.host:2,", "two"),
        ("1700000003.c.host:2,FS", "three"),
    ] {
        std::fs::write(
            far.join("cur").join(name),
            format!("From: a@example.org\nSubject: {subject}\n\nbody {subject}\n"),
        )
        .unwrap();
    }
    assert!(
        Command::new("chown")
            .args(["-R", "mail:mail"])
            .arg(&far)
            .status()
            .unwrap()
            .success()
    );
    let rundir = t.dir.path().join("dovecot");
    let Some(dc) = Dovecot::start(&far, &rundir) else {
        return;
    };
    let mnt = t.dir.path().join("Maildir");
    let Some(mut m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    let conf = t.file(
        "mbsyncrc",
        &format!(
            "IMAPAccount acct\nHost 127.0.0.1\nPort {}\nUser testuser\nPass testpass\n\
             SSLType None\nAuthMechs PLAIN LOGIN\n\nIMAPStore far\nAccount acct\n\n\
             MaildirStore near\nInbox {mnt}\nSubFolders Maildir++\n\n\
             Channel ch\nFar :far:\nNear :near:\nPatterns INBOX\nCreate Both\n\
             Remove None\nExpunge Both\nSyncState *\nSync All\n",
            dc.port,
            mnt = mnt.display()
        ),
    );
    let mbsync = || {
        let o = Command::new("mbsync")
            .arg("-c")
            .arg(&conf)
            .arg("-a")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mbsync failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            dc.log()
        );
    };
    mbsync();
    mbsync();
    // Unseen mail lands in new/ (no flags), the rest in cur/.
    let list = |mnt: &Path| -> Vec<String> {
        let mut v = Vec::new();
        for sub in ["cur", "new"] {
            for e in std::fs::read_dir(mnt.join(sub)).unwrap().flatten() {
                v.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
        v.sort();
        v
    };
    let cur = list(&mnt);
    assert_eq!(cur.len(), 3, "{cur:?}");
    assert!(cur.iter().all(|n| n.contains(",U=")), "{cur:?}");
    let flags: Vec<&str> = cur
        .iter()
        .map(|n| n.split_once(":2,").map_or("", |(_, f)| f))
        .collect();
    let mut sorted = flags.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["", "FS", "S"], "{cur:?}");
    // The names mbsync gave survive a remount (its state refers to them).
    m.stop();
    let Some(_m) = MountProcess::start(&t, &mnt, None) else {
        return;
    };
    assert_eq!(list(&mnt), cur);
    // Flag the unflagged one on the mount; mbsync carries it to Dovecot, adds nothing.
    let plain = cur
        .iter()
        .find(|n| !n.contains(":2,") || n.ends_with(":2,"))
        .unwrap();
    let base = plain
        .trim_start_matches("new/")
        .trim_start_matches("cur/")
        .trim_end_matches(":2,");
    std::fs::rename(mnt.join(plain), mnt.join(format!("cur/{base}:2,F"))).unwrap();
    mbsync();
    assert_eq!(engine_files(&t, "mbsync").len(), 3);
    let out = Command::new("python3")
        .args([
            "-c",
            "import imaplib,sys; m=imaplib.IMAP4('127.0.0.1', int(sys.argv[1])); \
             m.login('testuser','testpass'); m.select('INBOX'); \
             print(m.search(None, 'ALL')[1][0].decode()); \
             print(m.search(None, 'FLAGGED')[1][0].decode()); m.logout()",
            &dc.port.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0].split_whitespace().count(), 3, "far side: {text}");
    assert_eq!(
        lines[1].split_whitespace().count(),
        2,
        "flagged on far side: {text}"
    );
}
