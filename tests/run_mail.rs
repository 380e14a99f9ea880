//! `peerpost run` serves the user's mail: a message handed to its SMTP intake is fetched over
//! its POP3 server byte for byte (after the trace lines), and mail another process imports
//! into the same home shows up without a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, TestHome};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM: the node stops its servers and the overlay cleanly.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

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
    let mut child = Command::new(BIN)
        .arg("--home")
        .arg(t.home())
        .args(["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--imap", "off", "--imaps", "off"])
        .args([
            "--pop3",
            "127.0.0.1:0",
            "--pop3s",
            "off",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "off",
        ])
        .env_remove("PEERPOST_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let node = Node(child);
    let (mut pop3, mut smtp) = (None, None);
    let started = Instant::now();
    while pop3.is_none() || smtp.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node did not report its servers"
        );
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("node exited early");
        }
        if let Some(a) = line.strip_prefix("pop3 listening on ") {
            pop3 = Some(a.trim().rsplit(':').next().unwrap().to_string());
        }
        if let Some(a) = line.strip_prefix("smtp listening on ") {
            smtp = Some(a.trim().rsplit(':').next().unwrap().to_string());
        }
    }
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    let script = t.file("mail.py", SCRIPT);
    let run = |want: &str| {
        let o = Command::new("python3")
            .arg(&script)
            .args([smtp.as_deref().unwrap(), pop3.as_deref().unwrap(), want])
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
    let mut child = Command::new(BIN)
        .arg("--home")
        .arg(t.home())
        .args(["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--pop3", "off", "--pop3s", "off", "--smtp", "127.0.0.1:0"])
        .args(["--imap", "off", "--imaps", "off", "--submission", "off"])
        .arg("--mount")
        .arg(&mnt)
        .env_remove("PEERPOST_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut node = Node(child);
    let (mut smtp, mut mounted) = (None, false);
    let started = Instant::now();
    while smtp.is_none() || !mounted {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            use std::io::Read;
            let _ = node.0.stderr.take().unwrap().read_to_string(&mut err);
            if err.contains("Permission denied") || err.contains("Operation not permitted") {
                eprintln!("skipped: mounting is not permitted here: {err}");
                return;
            }
            panic!("node exited early: {err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no mount reported"
        );
        if let Some(a) = line.strip_prefix("smtp listening on ") {
            smtp = Some(a.trim().rsplit(':').next().unwrap().to_string());
        }
        mounted |= line.starts_with("maildir mounted at ");
    }
    std::thread::spawn(move || for _ in out.lines() {});
    assert!(std::fs::read_dir(mnt.join("cur")).is_ok(), "cur/ missing");
    let send = Command::new("python3")
        .args([
            "-c",
            "import smtplib,sys; s=smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10); \
             s.sendmail('bob@example.net', ['alice@example.org'], \
             b'Subject: to the mount\\r\\n\\r\\nhello\\r\\n'); s.quit()",
            smtp.as_deref().unwrap(),
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
    drop(node); // SIGTERM and wait
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "still mounted after the node stopped"
    );
}
