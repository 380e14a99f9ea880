//! Several devices per user (issue #15), with real processes on 127.0.0.1: alice on two homes
//! made from one recovery phrase, both `peerpost run`, and bob on a third node. Bob's mail
//! reaches both of alice's INBOXes once; a flag set over IMAP on device 1 wakes an IDLE
//! session on device 2 within 2 s; a message moved in mutt on device 1's mount (FUSE, when
//! present) leaves device 2's INBOX; device 2 killed, device 1 gets 100 messages and deletes
//! 10, device 2 restarts and both show the same mailbox; a third device added later catches
//! up fully, is revoked, and its changes are refused; one device backs the user up, device 1
//! is destroyed, device 2 takes the backup over, and `restore` from the phrase brings back
//! the mail that arrived on either. And (a test of its own) a 5 MiB message delivered to
//! device 1's SMTP intake reaches device 2 byte for byte, its body fetched in chunks.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::flow::{Node, PASSWORD, count, eventually, submit};
use crate::util::TestHome;

/// Starts `run` with IMAP (STARTTLS) on as well, logging at debug; returns the IMAP port.
fn start(n: &mut Node, bootstrap: Option<&str>) -> u16 {
    n.log_filter = Some("peerpost=debug".into());
    n.start_imap(bootstrap)
}

/// IMAP over STARTTLS with imaplib: `state` prints every INBOX message as
/// "subject|flags" (sorted); `flag N` sets \Flagged on message N; `delete N…` expunges them;
/// `idle` prints IDLING once idle, then the first untagged FETCH it gets, and exits.
const IMAP: &str = r#"
import imaplib, ssl, sys, re, time
port, user, password, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
M = imaplib.IMAP4("127.0.0.1", port)
M.starttls(ssl_context=ctx)
M.login(user, password)
M.select("INBOX")
if cmd == "state":
    typ, data = M.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    rows = []
    for part in data:
        if isinstance(part, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", part[0]).group(1).decode()
            flags = " ".join(sorted(f for f in flags.split() if f != "\\Recent"))
            subj = part[1].decode().strip().replace("Subject: ", "")
            rows.append(subj + "|" + flags)
    for r in sorted(rows):
        print(r)
elif cmd == "flag":
    print(M.store(sys.argv[5], "+FLAGS", "(\\Flagged)"))
elif cmd == "delete":
    for n in sys.argv[5:]:
        M.store(n, "+FLAGS", "(\\Deleted)")
    print(M.expunge())
elif cmd == "idle":
    tag = M._new_tag()
    M.send(tag + b" IDLE\r\n")
    line = M.readline()
    assert line.startswith(b"+"), line
    print("IDLING", flush=True)
    while True:
        line = M.readline()
        if not line:
            break
        if b"FETCH" in line:
            print(line.decode().strip(), flush=True)
            break
    M.send(b"DONE\r\n")
M.logout()
"#;

/// Delivers a file to a node's SMTP intake with smtplib, as a legacy mail server would.
const INTAKE: &str = r#"
import smtplib, sys
port, rcpt, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = smtplib.SMTP("127.0.0.1", port, timeout=120)
refused = s.sendmail("carol@elsewhere.example", [rcpt], open(path, "rb").read())
assert refused == {}, refused
s.quit()
print("OK")
"#;

fn imap(t: &TestHome, port: u16, user: &str, args: &[&str]) -> String {
    let script = t.file("imap.py", IMAP);
    let out = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(user)
        .arg(PASSWORD)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imap {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test config's timers (as flow.rs tunes them), and a metrics port of its own.
fn tune(home: &TestHome) {
    let path = home.path("config.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [
        ("retry_first = \"5s\"", "retry_first = \"1s\""),
        ("retry_max = \"10m\"", "retry_max = \"1s\""),
        ("collect_every = \"60s\"", "collect_every = \"2s\""),
        ("metrics = \"127.0.0.1:9464\"", "metrics = \"127.0.0.1:0\""),
        ("backup_every_secs = 10", "backup_every_secs = 1"),
        ("backup_takeover = \"3h\"", "backup_takeover = \"8s\""),
    ] {
        // Node::new tuned some already; the backup timers are this test's own.
        assert!(
            !from.contains("backup") || config.contains(from),
            "config lacks {from}"
        );
        config = config.replace(from, to);
    }
    std::fs::write(&path, config).unwrap();
}

fn live_devices(home: &TestHome) -> Vec<String> {
    let out = home.run(&["device", "list", "--json"]).success().json();
    out["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "live")
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect()
}

fn this_device(home: &TestHome) -> String {
    let out = home.run(&["device", "list", "--json"]).success().json();
    out["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["this"] == true)
        .map(|d| d["key"].as_str().unwrap().to_string())
        .unwrap()
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
    }
}

fn maildir(dir: &std::path::Path, tag: &str, n: usize) {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for i in 0..n {
        std::fs::write(
            dir.join("new").join(format!("17000000{i:02}.M{i}{tag}.host")),
            format!(
                "From: carol@elsewhere.example\r\nSubject: {tag} {i:02}\r\nMessage-ID: <{tag}{i}@dev.test>\r\n\r\nbody {i}\r\n"
            ),
        )
        .unwrap();
    }
}

/// A new device of `address`: a home made from the recovery phrase `words` (same user key,
/// a device key of its own), tuned like the others.
fn new_device(words: &str, address: &str) -> Node {
    let home = TestHome::new();
    let pw = home.file("pw", &format!("{PASSWORD}\n"));
    home.run_stdin(
        &[
            "key",
            "import",
            "--phrase",
            "--address",
            address,
            "--password-file",
            pw.to_str().unwrap(),
        ],
        Some(&format!("{words}\n")),
    )
    .success();
    tune(&home);
    Node {
        home,
        address: address.to_string(),
        child: None,
        listen: String::new(),
        pop3: 0,
        smtp: 0,
        submission: 0,
        log_filter: None,
        imap: 0,
    }
}

/// Waits until `imap_port` serves exactly `want` (the "state" listing).
fn converge(t: &TestHome, port: u16, user: &str, want: &str, what: &str) {
    // Under the whole suite on 2 cores this has taken over a minute (a restarted device first
    // has to find the others again); alone it takes seconds.
    let mut last = String::new();
    (0..120)
        .find_map(|_| {
            let s = imap(t, port, user, &["state"]);
            if s == want {
                return Some(());
            }
            last = s;
            std::thread::sleep(Duration::from_secs(1));
            None
        })
        .unwrap_or_else(|| {
            panic!("{what} did not converge in 120 s:\nwant:\n{want}\ngot:\n{last}")
        });
}

/// The device a node's log last said it waits for (its key's first 16 hex digits), or `None`
/// when it last said it backs up itself (or said nothing: no other device's root seen).
fn waits_for(log: &str) -> Option<String> {
    let mut last = None;
    for l in log.lines() {
        if l.contains("backup: this device backs up") {
            last = None;
        } else if let Some(rest) = l.split("backup: device ").nth(1) {
            last = rest.split_whitespace().next().map(str::to_string);
        }
    }
    last
}

fn node_log(n: &Node) -> String {
    std::fs::read_to_string(n.home.path("node.log")).unwrap_or_default()
}

/// The `durability` part of `status --json`.
fn durability(n: &Node) -> serde_json::Value {
    n.home.run(&["status", "--json"]).success().json()["durability"].clone()
}

/// Whether `n` has placed everything it holds and published a root naming it.
fn backed_up(n: &Node) -> bool {
    let d = durability(n);
    d["pending_bytes"].as_u64() == Some(0) && d["unpublished"] == false && d["root_seq"].is_u64()
}

#[test]
fn two_devices_of_one_user_share_one_live_mailbox() {
    let _heavy = crate::util::one_heavy_at_a_time();
    let alice = "alice@dev.test";
    let mut d1 = Node::new(alice, &[]);
    tune(&d1.home);
    let mut bob = Node::new("bob@dev.test", &[]);
    tune(&bob.home);
    // Device 2: a new home from alice's recovery phrase (same user key, a new device key).
    let words = crate::util::phrase_of(&d1.home);
    let mut d2 = new_device(&words, alice);
    crate::util::vouch(
        &[&d1.home, &d2.home, &bob.home],
        &[(&d1.home, alice), (&bob.home, "bob@dev.test")],
    );

    // Device 1 also mounts its mail (`maildir.mount`, what `run --mount` does) when FUSE,
    // mutt and tmux are here.
    let mnt = d1.home.home().join("Maildir");
    let mount = crate::util::Mutt::available()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_ok();
    if mount {
        let path = d1.home.path("config.toml");
        let config = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\nmount = false\n", "\nmount = true\n")
            .replace(
                "\npath = \"~/Maildir\"\n",
                &format!("\npath = \"{}\"\n", mnt.display()),
            );
        assert!(config.contains("mount = true"), "{config}");
        std::fs::write(&path, config).unwrap();
    }
    let imap1 = start(&mut d1, None);
    let boot = d1.listen.clone();
    let mut imap2 = start(&mut d2, Some(&boot));
    start(&mut bob, Some(&boot));

    // 1. Both devices list both as live, and the directory record names both.
    let key2 = this_device(&d2.home);
    let key1 = this_device(&d1.home);
    assert_ne!(key1, key2, "each home has a device key of its own");
    for h in [&d1.home, &d2.home] {
        eventually("each device lists both", 60, || {
            let live = live_devices(h);
            (live.contains(&key1) && live.contains(&key2)).then_some(())
        });
    }
    eventually("the record bob sees names both devices", 60, || {
        let r = bob.home.run(&["lookup", "--json", alice]);
        if !r.output.status.success() {
            return None;
        }
        (r.json()["devices"].as_array().map(|d| d.len()) == Some(2)).then_some(())
    });

    // 2. Bob's message reaches both devices' INBOX, once each.
    let t = TestHome::new();
    submit(
        &t,
        &bob,
        &[alice],
        "From: bob@dev.test\r\nTo: alice@dev.test\r\nSubject: to both\r\nMessage-ID: <both@dev.test>\r\n\r\nhello devices\r\n",
    );
    for d in [&d1, &d2] {
        eventually("both devices have bob's message", 60, || {
            (count(&d.inbox(), "<both@dev.test>") == 1).then_some(())
        });
    }
    // Both got the push: the copies meet through replication and one stays.
    std::thread::sleep(Duration::from_secs(3));
    for d in [&d1, &d2] {
        assert_eq!(count(&d.inbox(), "<both@dev.test>"), 1, "exactly once");
    }

    // 3. A flag set on device 1 wakes IDLE on device 2 within 2 s.
    let script = t.file("imap.py", IMAP);
    let mut idle = Command::new("python3")
        .arg(&script)
        .arg(imap2.to_string())
        .arg(alice)
        .arg(PASSWORD)
        .arg("idle")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(idle.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), l));
        }
    });
    let (_, first) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first, "IDLING");
    let t0 = Instant::now();
    imap(&t, imap1, alice, &["flag", "1"]);
    let (at, fetch) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("IDLE on device 2 heard of the flag");
    let latency = at.duration_since(t0);
    eprintln!("flag on device 1 → IDLE on device 2: {latency:?} ({fetch})");
    assert!(
        fetch.contains("FETCH") && fetch.contains("\\Flagged"),
        "{fetch}"
    );
    assert!(latency <= Duration::from_secs(2), "took {latency:?}");
    let _ = idle.wait();

    // 3b. A message moved in mutt on device 1's mount disappears from device 2's INBOX.
    if mount {
        let src = t.path("moveme");
        maildir(&src, "moveme", 1);
        d1.home.run(&["import", src.to_str().unwrap()]).success();
        eventually("device 2 has the message to move", 60, || {
            imap(&t, imap2, alice, &["state"])
                .contains("moveme 00|")
                .then_some(())
        });
        let mutt = crate::util::Mutt::start(
            &t,
            "devices",
            &mnt,
            "set sort=subject\nset mail_check=1\nset timeout=1\nset confirmappend=no\n\
             set confirmcreate=no\nset delete=yes\n",
        );
        eventually("mutt lists the mount", 30, || {
            let s = mutt.screen();
            (s.contains("moveme 00") && s.contains("to both")).then_some(())
        });
        // By subject: 1 moveme, 2 to both. Save 1 into Archive (a move), write, quit.
        let archive = mnt.join(".Archive");
        for k in [
            "1",
            "Enter",
            "s",
            "C-u",
            archive.to_str().unwrap(),
            "Enter",
            "$",
            "q",
        ] {
            mutt.keys(k);
        }
        eventually("the move reaches device 2's INBOX", 60, || {
            let s = imap(&t, imap2, alice, &["state"]);
            (!s.contains("moveme") && s.contains("to both|")).then_some(())
        });
        eventually("device 1's INBOX lost it too", 30, || {
            (!imap(&t, imap1, alice, &["state"]).contains("moveme")).then_some(())
        });
        drop(mutt);
    } else {
        eprintln!("mutt step skipped: FUSE, mutt or tmux is missing");
    }

    // 4. Device 2 is killed; device 1 gets 100 messages and deletes 10; device 2 comes back.
    kill9(&mut d2.child);
    let src = t.path("offline");
    maildir(&src, "offline", 100);
    d1.home.run(&["import", src.to_str().unwrap()]).success();
    let state1 = eventually("device 1 serves the 100 messages", 30, || {
        let s = imap(&t, imap1, alice, &["state"]);
        (s.lines().count() == 101).then_some(s)
    });
    assert!(state1.contains("offline 00|"), "{state1}");
    let gone: Vec<String> = (0..10).map(|i| (3 + 2 * i).to_string()).collect();
    let mut args = vec!["delete"];
    args.extend(gone.iter().map(String::as_str));
    imap(&t, imap1, alice, &args);
    let state1 = imap(&t, imap1, alice, &["state"]);
    assert_eq!(state1.lines().count(), 91, "{state1}");
    imap2 = start(&mut d2, Some(&boot));
    converge(&t, imap2, alice, &state1, "device 2 back from offline");
    assert!(state1.contains("to both|\\Flagged"), "{state1}");

    // 5. A third device added later (`key import --phrase`, then `run`) catches up fully.
    let mut d3 = new_device(&words, alice);
    let imap3 = start(&mut d3, Some(&boot));
    let key3 = this_device(&d3.home);
    converge(&t, imap3, alice, &state1, "device 3, added later");

    // 6. Device 3 is revoked on device 1: its changes are refused from then on, and the
    //    directory record names devices 1 and 2 alone.
    d1.home
        .run(&["device", "remove", &key3[..16], "--revoke"])
        .success();
    eventually("the record names devices 1 and 2 alone", 60, || {
        let r = bob.home.run(&["lookup", "--json", alice]);
        if !r.output.status.success() {
            return None;
        }
        (r.json()["devices"].as_array().map(|d| d.len()) == Some(2)).then_some(())
    });
    // Device 3 expunges a message: device 1 never applies it.
    imap(&t, imap3, alice, &["delete", "1"]);
    eventually("device 1 refused the revoked device", 30, || {
        node_log(&d1)
            .contains("replica request refused")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(imap(&t, imap1, alice, &["state"]), state1, "unchanged");
    assert_eq!(imap(&t, imap3, alice, &["state"]).lines().count(), 90);
    kill9(&mut d3.child);

    // 7. One backup for the user: both devices run backups, one of them backs up and the
    //    other waits. Mail imported on device 2 reaches device 1 (and the backup).
    let src2 = t.path("second");
    maildir(&src2, "second", 3);
    d2.home.run(&["import", src2.to_str().unwrap()]).success();
    let state1 = eventually("device 1 has device 2's import", 60, || {
        let s = imap(&t, imap1, alice, &["state"]);
        (s.lines().count() == 94).then_some(s)
    });
    converge(&t, imap2, alice, &state1, "device 2 after its import");
    let backer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("one device waits for the other's backup", 120, || {
            match (waits_for(&node_log(&d1)), waits_for(&node_log(&d2))) {
                (None, Some(k)) if key1.starts_with(&k) => Some(1),
                (Some(k), None) if key2.starts_with(&k) => Some(2),
                _ => None,
            }
        })
    }))
    .unwrap_or_else(|e| {
        // What each device said of the backup, to see why neither waits.
        for (i, d) in [(1, &d1), (2, &d2)] {
            eprintln!("device {i} lists {:?}", live_devices(&d.home));
            for l in node_log(d)
                .lines()
                .filter(|l| l.contains("backup") || l.contains("device list"))
            {
                eprintln!("device {i}: {l}");
            }
        }
        std::panic::resume_unwind(e)
    });
    eprintln!("device {backer} backs alice up; the other waits");
    let b = if backer == 1 { &d1 } else { &d2 };
    eventually("the backing-up device placed everything", 120, || {
        backed_up(b).then_some(())
    });

    // Device 1 is destroyed: killed, its home removed. Device 2 gets mail of its own after.
    kill9(&mut d1.child);
    if mount {
        // The killed process left its FUSE mount behind.
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
    std::fs::remove_dir_all(d1.home.home()).unwrap();
    let src3 = t.path("after");
    maildir(&src3, "after", 2);
    d2.home.run(&["import", src3.to_str().unwrap()]).success();
    let state2 = imap(&t, imap2, alice, &["state"]);
    assert_eq!(state2.lines().count(), 96, "{state2}");
    if backer == 1 {
        eventually("device 2 takes the backup over", 120, || {
            node_log(&d2)
                .contains("backup: this device backs up the user's mailbox now")
                .then_some(())
        });
    }
    // Everything device 2 holds is placed, and its root names it.
    std::thread::sleep(Duration::from_secs(2));
    eventually("device 2 placed everything", 120, || {
        backed_up(&d2).then_some(())
    });

    // `restore` from the phrase alone, in a brand-new home, through bob.
    let fresh = TestHome::new();
    let phrase = fresh.file("phrase", &format!("{words}\n"));
    let pw = fresh.file("pw", &format!("{PASSWORD}\n"));
    let out = crate::util::restore_from_phrase(&fresh, &phrase, &pw, &bob.listen).success();
    eprintln!("{}", out.stdout());
    let restored = crate::util::Engine::open(&fresh);
    let subjects: Vec<String> = restored
        .inbox()
        .iter()
        .map(|m| {
            let m = String::from_utf8_lossy(m);
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .collect();
    let mut want: Vec<String> = state2
        .lines()
        .map(|l| l.split('|').next().unwrap().to_string())
        .collect();
    let mut got = subjects.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the restored INBOX is device 2's");
    for s in ["to both", "offline 00", "second 00", "after 01"] {
        assert!(got.iter().any(|g| g == s), "{s} restored: {got:?}");
    }
    // Flags and expunges came back too.
    let flagged = restored
        .mailbox
        .messages("INBOX")
        .unwrap()
        .iter()
        .filter(|m| m.flags.has(peerpost::mailbox::Flag::Flagged))
        .count();
    assert_eq!(flagged, 1, "bob's message keeps its flag");
    assert!(
        !got.iter().any(|g| g == "offline 03"),
        "expunged on device 1"
    );
}

/// A 5 MiB message delivered to device 1's SMTP intake (smtplib, as a legacy server forwards
/// it) reaches device 2 byte for byte: too large for a replica frame, its body follows in
/// chunks. (Its own test: such a body keeps the backup of a three-node ring from finishing,
/// which the test above waits for.)
#[test]
fn a_large_message_reaches_the_other_device_whole() {
    let _heavy = crate::util::one_heavy_at_a_time();
    let alice = "alice@dev.test";
    let mut d1 = Node::new(alice, &[]);
    tune(&d1.home);
    let words = crate::util::phrase_of(&d1.home);
    let mut d2 = new_device(&words, alice);
    crate::util::vouch(&[&d1.home, &d2.home], &[(&d1.home, alice)]);
    let imap1 = start(&mut d1, None);
    let boot = d1.listen.clone();
    start(&mut d2, Some(&boot));
    let (key1, key2) = (this_device(&d1.home), this_device(&d2.home));
    for h in [&d1.home, &d2.home] {
        eventually("each device lists both", 60, || {
            let live = live_devices(h);
            (live.contains(&key1) && live.contains(&key2)).then_some(())
        });
    }
    let t = TestHome::new();
    let big_body: String = (0..(5 << 20) / 78 + 1)
        .map(|i| format!("{:076}\r\n", i * 7919))
        .collect();
    let big = format!(
        "From: carol@elsewhere.example\r\nTo: alice@dev.test\r\nSubject: big\r\nMessage-ID: <big@dev.test>\r\n\r\n{big_body}"
    );
    assert!(big.len() > 5 << 20, "{}", big.len());
    let script = t.file("intake.py", INTAKE);
    let eml = t.file("big.eml", &big);
    let out = Command::new("python3")
        .arg(&script)
        .arg(d1.smtp.to_string())
        .arg(alice)
        .arg(&eml)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "intake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let big_of = |d: &Node| d.inbox().into_iter().find(|m| m.contains("<big@dev.test>"));
    let on1 = eventually("device 1 stored the big message", 60, || big_of(&d1));
    assert!(on1.ends_with(&big_body), "device 1 keeps the body whole");
    let t_big = Instant::now();
    let on2 = eventually("the big message reaches device 2 whole", 120, || {
        big_of(&d2)
    });
    eprintln!(
        "{} byte message on device 1 → readable on device 2: {:?}",
        on1.len(),
        t_big.elapsed()
    );
    assert_eq!(on2, on1, "device 2's copy is device 1's, byte for byte");
    assert!(
        node_log(&d2).contains("fetched a body from a device"),
        "it came in chunks"
    );
    // Expunged on device 1: gone on device 2.
    imap(&t, imap1, alice, &["delete", "1"]);
    eventually("the expunge reaches device 2", 60, || {
        d2.inbox().is_empty().then_some(())
    });
}
