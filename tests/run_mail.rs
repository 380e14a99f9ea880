//! `peerpost run` serves the user's mail: a message handed to its SMTP intake is fetched over
//! its POP3 server byte for byte (after the trace lines), and mail another process imports
//! into the same home shows up without a restart.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{RunNode, TestHome};

const SCRIPT: &str = r#"
import poplib, smtplib, sys, time
smtp_port, pop_port, want = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if want == 1:
    s = smtplib.SMTP("127.0.0.1", smtp_port, timeout=10)
    s.sendmail("bob@example.net", ["alice@example.org"], b"Subject: through run\r\n\r\nhello alice\r\n")
    s.quit()
deadline = time.time() + 20
while True:
    p = poplib.POP3("127.0.0.1", pop_port, timeout=10)
    p.user("alice"); p.pass_("secret-password")
    n = p.stat()[0]
    if n >= want or time.time() > deadline:
        break
    p.quit(); time.sleep(0.2)
if n != want:
    print("FAILED: %d messages, wanted %d" % (n, want)); sys.exit(1)
lines = p.retr(want)[1]
print("\n".join(l.decode("utf-8", "replace") for l in lines))
p.quit()
"#;

#[test]
fn run_serves_smtp_intake_and_pop3_on_one_mailbox() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let node = RunNode::start(&t, &[("pop3", "127.0.0.1:0"), ("smtp", "127.0.0.1:0")], &[]);
    let (pop3, smtp) = (node.port("pop3").to_string(), node.port("smtp").to_string());
    let script = t.file("mail.py", SCRIPT);
    let run = |want: &str| {
        let o = Command::new("python3")
            .arg(&script)
            .args([smtp.as_str(), pop3.as_str(), want])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    let first = run("1");
    assert!(
        first.contains("Subject: through run") && first.contains("hello alice"),
        "{first}"
    );
    assert!(first.contains("Received: from"), "{first}");

    // Another process imports into the same home; the running node's POP3 sees it.
    let src = t.dir.path().join("src");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(
        src.join("new/1700000000.M1.host"),
        "Subject: imported\n\nfrom elsewhere\n",
    )
    .unwrap();
    t.run(&["import", src.to_str().unwrap()]).success();
    let second = run("2");
    assert!(second.contains("Subject: imported"), "{second}");
    drop(node);
}

/// `run --mount`: the node serves its mailbox on a FUSE Maildir too; mail taken by its SMTP
/// intake shows up in `new/` within 2 s, and SIGTERM unmounts before the node stops.
#[test]
fn run_mounts_the_maildir_and_unmounts_at_exit() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        eprintln!("skipped: /dev/fuse is missing or not accessible to this user");
        return;
    }
    let t = TestHome::new();
    t.init("alice@example.org");
    let mnt = t.dir.path().join("Maildir");
    let mount = ["--mount", mnt.to_str().unwrap()];
    let node = match RunNode::try_start(&t, &[("smtp", "127.0.0.1:0")], &mount) {
        Ok(n) => n,
        Err(err)
            if err.contains("Permission denied") || err.contains("Operation not permitted") =>
        {
            eprintln!("skipped: mounting is not permitted here: {err}");
            return;
        }
        Err(err) => panic!("node exited early: {err}"),
    };
    assert!(
        node.started
            .iter()
            .any(|l| l.starts_with("maildir mounted at ")),
        "no mount reported: {:?}",
        node.started
    );
    let smtp = node.port("smtp").to_string();
    assert!(std::fs::read_dir(mnt.join("cur")).is_ok(), "cur/ missing");
    let send = Command::new("python3")
        .args([
            "-c",
            "import smtplib,sys; s=smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10); \
             s.sendmail('bob@example.net', ['alice@example.org'], \
             b'Subject: to the mount\\r\\n\\r\\nhello\\r\\n'); s.quit()",
            smtp.as_str(),
        ])
        .status()
        .unwrap();
    assert!(send.success());
    let sent = Instant::now();
    let found = loop {
        let names: Vec<_> = std::fs::read_dir(mnt.join("new"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        if let Some(p) = names.first() {
            break std::fs::read_to_string(p).unwrap();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "the message did not reach new/ within 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(found.contains("Subject: to the mount"), "{found}");
    // The mount's operations are on the node's metrics endpoint, with their latencies.
    let m = crate::metrics::scrape(node.port("metrics"));
    let served = |op: &str| {
        m.get(&format!("peerpost_mount_operations_total{{op=\"{op}\"}}"))
            .copied()
            .unwrap_or_else(|| panic!("no {op} count: {m:?}"))
    };
    assert!(served("lookup") >= 1.0 && served("read") >= 1.0, "{m:?}");
    crate::metrics::assert_dashboard_matches(&m, "peerpost_mount_", "-");
    assert_eq!(
        m.get("peerpost_mount_operation_seconds_count{op=\"read\"}"),
        Some(&served("read"))
    );
    drop(node); // SIGTERM and wait
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "still mounted after the node stopped"
    );
}
