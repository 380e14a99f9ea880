//! `peerpost sync DIR` as a running process: mail delivered into DIR by another program reaches
//! the engine, flag changes (by hand and by real mutt) and deletions do too, and what the
//! engine gets from elsewhere appears in DIR. A sync SIGKILLed mid-way resumes without losing
//! or duplicating mail.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, Mutt, TestHome, engine_files};

struct SyncProcess {
    child: Child,
}

impl SyncProcess {
    fn start(t: &TestHome, dir: &Path) -> SyncProcess {
        let child = Command::new(BIN)
            .arg("--home")
            .arg(t.home())
            .arg("sync")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        SyncProcess { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SyncProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `cond`, up to a generous bound (machines here are slow and shared); returns how
/// long it took.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Delivers a message into a Maildir folder the way an MDA does (tmp/, then rename to new/).
fn deliver(folder: &Path, name: &str, body: &str) {
    let tmp = folder.join("tmp").join(name);
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, folder.join("new").join(name)).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["new", "cur"]
        .iter()
        .flat_map(|s| {
            std::fs::read_dir(dir.join(s))
                .map(|rd| {
                    rd.map(|e| format!("{s}/{}", e.unwrap().file_name().to_string_lossy()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sync_carries_deliveries_flags_and_deletions_both_ways() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let dir = t.dir.path().join("Maildir");
    let mut sync = SyncProcess::start(&t, &dir);
    wait_for("the Maildir to be created", || {
        dir.join("cur").is_dir() && dir.join(".Sent/cur").is_dir()
    });

    // Another program delivers into DIR/new → the engine has it.
    deliver(
        &dir,
        "1700000000.M1.mta",
        "Subject: hello\n\nfrom outside\n",
    );
    wait_for("the delivery to reach the engine", || {
        engine_files(&t, &format!("a{}", rand_tag()))
            .iter()
            .any(|n| n == "new/1700000000.M1.mta")
    });

    // A reader moves it to cur/ and flags it → the engine's flags follow.
    std::fs::rename(
        dir.join("new/1700000000.M1.mta"),
        dir.join("cur/1700000000.M1.mta:2,FS"),
    )
    .unwrap();
    wait_for("the flags to reach the engine", || {
        engine_files(&t, &format!("b{}", rand_tag()))
            .iter()
            .any(|n| n == "cur/1700000000.M1.mta:2,FS")
    });

    // Mail that reaches the engine from elsewhere (here: an import by another process)
    // appears in DIR; the latency is printed (the target is ≤ 1 s).
    let src = t.dir.path().join("src");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    deliver(
        &src,
        "1700000100.M2.other",
        "Subject: imported\n\nvia the engine\n",
    );
    t.run(&["import", src.to_str().unwrap()]).success();
    let took = wait_for("the engine's new mail to appear in DIR", || {
        dir.join("new/1700000100.M2.other").exists()
    });
    eprintln!("engine → DIR latency: {} ms", took.as_millis());

    // Deleted in DIR → expunged in the engine.
    std::fs::remove_file(dir.join("cur/1700000000.M1.mta:2,FS")).unwrap();
    wait_for("the deletion to reach the engine", || {
        !engine_files(&t, &format!("c{}", rand_tag()))
            .iter()
            .any(|n| n.contains("1700000000.M1.mta"))
    });

    // A folder made in DIR, with a message moved into it → a folder and a move in the engine.
    let work = dir.join(".Work");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    std::fs::rename(
        dir.join("new/1700000100.M2.other"),
        work.join("cur/1700000100.M2.other:2,S"),
    )
    .unwrap();
    wait_for("the move to reach the engine", || {
        engine_files(&t, &format!("d{}", rand_tag()))
            .iter()
            .any(|n| n == ".Work/cur/1700000100.M2.other:2,S")
    });
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
    sync.kill();
}

#[test]
fn mutt_flag_changes_reach_the_engine() {
    if !Mutt::available() {
        eprintln!("skipped: mutt or tmux is not installed (scripts/setup --test installs them)");
        return;
    }
    let t = TestHome::new();
    t.init("alice@example.org");
    let src = t.dir.path().join("src");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    deliver(
        &src,
        "1700000000.M1.mta",
        "From: a@b\nSubject: flag me\n\nbody\n",
    );
    t.run(&["import", src.to_str().unwrap()]).success();
    let dir = t.dir.path().join("Maildir");
    let _sync = SyncProcess::start(&t, &dir);
    wait_for("the message in DIR", || {
        dir.join("new/1700000000.M1.mta").exists()
    });

    // Real mutt: flag the first message ('F'), write the change ('$'), quit.
    let mutt = Mutt::start(&t, "sync", &dir, "set mark_old=no\n");
    wait_for("mutt's index", || mutt.screen().contains("flag me"));
    for k in ["F", "$", "q"] {
        mutt.keys(k);
    }
    drop(mutt);
    // mutt renamed the file with an F; the engine follows.
    wait_for("mutt's flag to reach the engine", || {
        engine_files(&t, &format!("m{}", rand_tag()))
            .iter()
            .any(|n| n.contains("1700000000.M1.mta:2,F"))
    });
}

#[test]
fn a_killed_sync_resumes_without_losing_or_duplicating_mail() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let dir = t.dir.path().join("Maildir");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    const N: usize = 1500;
    for i in 0..N {
        std::fs::write(
            dir.join(format!("new/17000{i:05}.M{i}.host")),
            format!("Subject: m{i}\n\n{}\n", "x".repeat(i % 500)),
        )
        .unwrap();
    }
    // Kill it at three different moments of the first pass.
    for delay_ms in [150u64, 400, 900] {
        let mut sync = SyncProcess::start(&t, &dir);
        std::thread::sleep(Duration::from_millis(delay_ms));
        sync.kill(); // SIGKILL
    }
    t.run(&["sync", dir.to_str().unwrap(), "--once"]).success();
    let second = t.run(&["sync", dir.to_str().unwrap(), "--once"]).success();
    assert!(
        second
            .stderr()
            .contains("0 new from the directory, 0 written to it"),
        "{}",
        second.stderr()
    );
    let engine = engine_files(&t, "final");
    assert_eq!(engine.len(), N, "the engine has each message exactly once");
    let mut bases: Vec<&str> = engine
        .iter()
        .map(|n| n.rsplit('/').next().unwrap())
        .collect();
    bases.dedup();
    assert_eq!(bases.len(), N);
    assert_eq!(
        files_in(&dir).len(),
        N,
        "the directory has each message exactly once"
    );
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
