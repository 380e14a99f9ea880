//! The IMAP server through `peerpost run`: Python's imaplib drives every command (plain,
//! STARTTLS, implicit TLS), two sessions watch each other, IDLE is woken by mail arriving over
//! the SMTP intake; hostile input over raw sockets leaves the server answering; and real mutt
//! reads, flags, moves and deletes over imap://.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Mutt, RunNode, TestHome};

pub(crate) const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// A node serving IMAP, IMAPS and the SMTP intake, with their ports.
pub(crate) struct Node {
    pub(crate) run: RunNode,
    pub(crate) imap: u16,
    pub(crate) imaps: u16,
    pub(crate) smtp: u16,
}

/// Runs a Python script with `args`; fails the test with its output unless it exits 0.
/// Returns what it printed.
pub(crate) fn python(script: impl AsRef<std::ffi::OsStr>, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

pub(crate) fn start(t: &TestHome) -> Node {
    start_with(t, |c| c)
}

/// [`start`], with `edit` applied to the config `init` wrote.
pub(crate) fn start_with(t: &TestHome, edit: impl Fn(String) -> String) -> Node {
    t.init("alice@example.org");
    let config = t.home().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(text)).unwrap();
    let on = [
        ("imap", "127.0.0.1:0"),
        ("imaps", "127.0.0.1:0"),
        ("smtp", "127.0.0.1:0"),
    ];
    let run = RunNode::start(t, &on, &[]);
    Node {
        imap: run.port("imap"),
        imaps: run.port("imaps"),
        smtp: run.port("smtp"),
        run,
    }
}

fn script(t: &TestHome, node: &Node, part: &str) {
    let o = Command::new("python3")
        .arg(format!("{DATA}/imap-test.py"))
        .args([
            node.imap.to_string(),
            node.imaps.to_string(),
            node.smtp.to_string(),
        ])
        .arg(t.home().join("tls/cert.pem"))
        .arg(part)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && stdout.contains("ALL OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn imaplib_drives_every_command_two_sessions_and_idle() {
    let t = TestHome::new();
    let node = start(&t);
    script(&t, &node, "commands");
}

#[test]
fn hostile_input_is_refused_and_the_server_keeps_serving() {
    let t = TestHome::new();
    let mut node = start(&t);
    script(&t, &node, "hostile");
    assert!(
        node.run.child.try_wait().unwrap().is_none(),
        "the node died under hostile input"
    );
}

const DELIVER: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
for i, subj in enumerate(["first note", "second note", "third note"]):
    s.sendmail("bob@example.net", ["alice@example.org"],
        ("From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: %s\r\n"
         "Date: Mon, 02 Oct 2023 10:0%d:00 +0000\r\n\r\nbody of the %s\r\n" % (subj, i, subj)).encode())
s.quit()
"#;

/// What the server holds afterwards, through imaplib: "subject|flags" per INBOX message, then
/// the Archive subjects.
const INSPECT: &str = r#"
import imaplib, re, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice", "secret-password")
for box in ["INBOX", "Archive"]:
    m.select(box, readonly=True)
    typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    for d in data:
        if isinstance(d, tuple):
            subj = d[1].decode().strip().split(": ", 1)[1]
            flags = re.search(r"FLAGS \(([^)]*)\)", d[0].decode()).group(1)
            print("%s %s|%s" % (box, subj, flags))
m.logout()
"#;

#[test]
fn mutt_over_imap_reads_flags_moves_and_deletes() {
    if !Mutt::available() {
        eprintln!("mutt or tmux missing: skipped (scripts/setup --test installs them)");
        return;
    }
    let t = TestHome::new();
    let node = start(&t);
    let py = |code: &str, name: &str| {
        let f = t.file(name, code);
        let o = Command::new("python3")
            .arg(f)
            .arg(if name == "deliver.py" {
                node.smtp.to_string()
            } else {
                node.imap.to_string()
            })
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    py(DELIVER, "deliver.py");
    let url = format!("imap://alice:secret-password@127.0.0.1:{}/INBOX", node.imap);
    let mutt = Mutt::start(
        &t,
        "imap",
        Path::new(&url),
        &format!(
            "set ssl_starttls=no\nset ssl_force_tls=no\nset imap_passive=yes\n\
             set imap_check_subscribed=no\nset sort=mailbox-order\nset confirmappend=no\n\
             set delete=yes\nset folder=imap://alice:secret-password@127.0.0.1:{}/\n\
             set index_format=\"@@ %4C %Z %s\"\n",
            node.imap
        ),
    );
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = mutt.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "mutt never showed {what:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // List.
    let screen = wait_for("third note");
    assert!(
        screen.contains("first note") && screen.contains("second note"),
        "{screen}"
    );
    // Read the first message.
    mutt.keys("Enter");
    wait_for("body of the first note");
    mutt.keys("q");
    wait_for("@@");
    // Flag the second.
    mutt.keys("2");
    mutt.keys("Enter");
    mutt.keys("F");
    // Move the third to Archive (save, then delete).
    mutt.keys("3");
    mutt.keys("Enter");
    mutt.keys("s");
    wait_for("Save to mailbox");
    mutt.keys("C-u");
    for c in "=Archive".chars() {
        mutt.keys(&c.to_string());
    }
    mutt.keys("Enter");
    // Delete the first.
    mutt.keys("1");
    mutt.keys("Enter");
    mutt.keys("d");
    // Write the changes back.
    mutt.keys("$");
    std::thread::sleep(Duration::from_millis(800));
    mutt.keys("q");
    std::thread::sleep(Duration::from_millis(500));
    drop(mutt);

    let state = py(INSPECT, "inspect.py");
    let lines: Vec<&str> = state.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("INBOX second note|") && l.contains("\\Flagged")),
        "flagged:\n{state}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("INBOX first note")),
        "deleted:\n{state}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("INBOX third note")),
        "moved away:\n{state}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Archive third note")),
        "moved into Archive:\n{state}"
    );
}

const OFF_LOOPBACK: &str = r#"
import imaplib, ssl, sys
port, cert = int(sys.argv[1]), sys.argv[2]
m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
assert "LOGINDISABLED" in m.capabilities and "AUTH=PLAIN" not in m.capabilities, m.capabilities
try:
    m.login("alice", "secret-password")
    raise SystemExit("FAILED: plaintext LOGIN accepted on a non-loopback listener")
except imaplib.IMAP4.error as e:
    assert "PRIVACYREQUIRED" in str(e), e
ctx = ssl.create_default_context(cafile=cert)
ctx.check_hostname = False
m.starttls(ssl_context=ctx)
assert "AUTH=PLAIN" in m.capabilities, m.capabilities
assert m.login("alice", "secret-password")[0] == "OK"
m.logout()
print("ALL OK")
"#;

#[test]
fn plaintext_login_is_refused_off_loopback_until_starttls() {
    let t = TestHome::new();
    t.init("alice@example.org");
    // A listener on all addresses is not loopback, whoever connects.
    let node = RunNode::start(&t, &[("imap", "0.0.0.0:0")], &[]);
    let port = node.port("imap").to_string();
    let f = t.file("off-loopback.py", OFF_LOOPBACK);
    let o = Command::new("python3")
        .arg(f)
        .arg(&port)
        .arg(t.home().join("tls/cert.pem"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("ALL OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(node);
}

/// Server side of the mbsync test: "box subject|flags" lines, or with "change": flags the
/// first note \Answered and APPENDs a message, server side.
const SERVER: &str = r#"
import imaplib, re, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice", "secret-password")
if sys.argv[2] == "change":
    m.select("INBOX")
    typ, data = m.search(None, "SUBJECT", '"first note"')
    m.store(data[0].split()[0], "+FLAGS", "(\\Answered)")
    m.append("INBOX", None, None, b"Subject: from the server\r\n\r\nnew\r\n")
else:
    for box in ["INBOX", "Local"]:
        if m.select(box, readonly=True)[0] != "OK":
            continue
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for d in data:
            if isinstance(d, tuple):
                subj = d[1].decode().strip().split(": ", 1)[1]
                flags = re.search(r"FLAGS \(([^)]*)\)", d[0].decode()).group(1)
                print("%s %s|%s" % (box, subj, flags))
m.logout()
"#;

/// Message files of a local Maildir folder: (file name, contents).
fn maildir_files(dir: &Path) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let content = std::fs::read_to_string(e.path()).unwrap_or_default();
                v.push((e.file_name().to_string_lossy().into_owned(), content));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn mbsync_syncs_both_ways_twice() {
    if Command::new("mbsync").arg("--version").output().is_err() {
        eprintln!("mbsync missing: skipped (apt-get install isync)");
        return;
    }
    let t = TestHome::new();
    let node = start(&t);
    let py = |code: &str, name: &str, args: &[String]| {
        let o = Command::new("python3")
            .arg(t.file(name, code))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    py(DELIVER, "deliver.py", &[node.smtp.to_string()]);
    let local = t.dir.path().join("mbsync");
    std::fs::create_dir_all(&local).unwrap();
    let rc = t.file(
        "mbsyncrc",
        &format!(
            "IMAPAccount pp\nHost 127.0.0.1\nPort {}\nUser alice\nPass secret-password\n\
             SSLType None\nAuthMechs LOGIN\n\nIMAPStore remote\nAccount pp\n\n\
             MaildirStore local\nPath {l}/\nInbox {l}/INBOX\nSubFolders Verbatim\n\n\
             Channel pp\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n\
             Expunge Both\nSyncState *\n",
            node.imap,
            l = local.display()
        ),
    );
    let mbsync = || {
        let o = Command::new("mbsync")
            .arg("-c")
            .arg(&rc)
            .arg("-a")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mbsync failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // Down: the three messages arrive, byte for byte.
    mbsync();
    let inbox = local.join("INBOX");
    let files = maildir_files(&inbox);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(
        files
            .iter()
            .any(|(_, c)| c.contains("body of the second note"))
    );

    // Up: flag one, delete one, add one, and a new folder with a message.
    let find = |subject: &str| {
        maildir_files(&inbox)
            .into_iter()
            .find(|(_, c)| c.contains(subject))
            .map(|(n, _)| n)
            .unwrap()
    };
    let path_of = |name: &str| {
        ["cur", "new"]
            .iter()
            .map(|s| inbox.join(s).join(name))
            .find(|p| p.exists())
            .unwrap()
    };
    let first = find("first note");
    let flagged = match first.split_once(":2,") {
        Some((base, flags)) => format!("{base}:2,F{flags}"),
        None => format!("{first}:2,F"),
    };
    std::fs::rename(path_of(&first), inbox.join("cur").join(&flagged)).unwrap();
    std::fs::remove_file(path_of(&find("second note"))).unwrap();
    std::fs::write(
        inbox.join("cur/1700000000.local.host:2,S"),
        "Subject: written locally\r\n\r\nlocal\r\n",
    )
    .unwrap();
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(local.join("Local").join(d)).unwrap();
    }
    std::fs::write(
        local.join("Local/new/1700000001.local.host"),
        "Subject: in a local folder\r\n\r\nx\r\n",
    )
    .unwrap();
    mbsync();
    let state = py(SERVER, "server.py", &[node.imap.to_string(), "list".into()]);
    let has = |prefix: &str| state.lines().any(|l| l.starts_with(prefix));
    assert!(has("INBOX first note|\\Flagged"), "{state}");
    assert!(!has("INBOX second note"), "{state}");
    assert!(has("INBOX written locally|\\Seen"), "{state}");
    assert!(has("INBOX third note"), "{state}");
    assert!(has("Local in a local folder"), "{state}");

    // Down again: a flag and a message from the server side.
    py(
        SERVER,
        "server.py",
        &[node.imap.to_string(), "change".into()],
    );
    mbsync();
    let files = maildir_files(&inbox);
    assert!(
        files
            .iter()
            .any(|(n, c)| c.contains("body of the first note")
                && n.rsplit(":2,")
                    .next()
                    .is_some_and(|f| f.contains('F') && f.contains('R'))),
        "{files:?}"
    );
    assert!(
        files.iter().any(|(_, c)| c.contains("from the server")),
        "{files:?}"
    );
    assert_eq!(files.len(), 4, "{files:?}");

    // And once more: nothing left to do on either side.
    mbsync();
    assert_eq!(
        maildir_files(&inbox),
        files,
        "a second sync changed the Maildir"
    );
    let again = py(SERVER, "server.py", &[node.imap.to_string(), "list".into()]);
    assert_eq!(
        again.lines().filter(|l| l.starts_with("INBOX")).count(),
        4,
        "{again}"
    );
}

const OVER_QUOTA: &str = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice", "secret-password")
small = b"Subject: fits\r\n\r\n" + b"x" * 1000 + b"\r\n"
big = b"Subject: too big\r\n\r\n" + b"y" * 100000 + b"\r\n"
print(m.append("INBOX", None, None, small)[0])
try:
    typ, data = m.append("INBOX", None, None, big)
    print(typ, data)
except imaplib.IMAP4.error as e:
    print("NO", e)
m.select("INBOX")
print("exists", m.search(None, "ALL")[1][0].decode())
m.logout()
"#;

/// Over the user's share of the ring (storage.contribution ÷ overhead), APPEND gets
/// `NO [OVERQUOTA]` and nothing is stored; what fits is taken.
#[test]
fn append_over_quota_is_refused_with_overquota() {
    let t = TestHome::new();
    let node = start_with(&t, |c| {
        c.replace("contribution = \"10GiB\"", "contribution = \"64KiB\"")
    });
    let script = t.file("quota.py", OVER_QUOTA);
    let text = python(&script, &[node.imap.to_string()]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "OK", "{text}");
    assert!(
        lines[1].starts_with("NO") && lines[1].contains("OVERQUOTA"),
        "{text}"
    );
    assert_eq!(lines[2], "exists 1", "{text}");
}

const KEYWORDS: &str = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice", "secret-password")
kw = lambda n, p: "(" + " ".join("%s%d" % (p, i) for i in range(n)) + ")"
msg = b"Subject: keywords\r\n\r\nbody\r\n"
def show(f):
    try:
        typ, data = f()
        print(typ, data)
    except imaplib.IMAP4.error as e:
        print("NO", e)
show(lambda: m.append("INBOX", kw(65, "k"), None, msg))
print(m.append("INBOX", kw(64, "k"), None, msg)[0])
m.select("INBOX")
show(lambda: m.store("1", "+FLAGS", "(extra)"))
print("exists", m.search(None, "ALL")[1][0].decode())
m.logout()
"#;

/// Issue #20: a message with more than 64 keywords cannot be logged, so APPEND and STORE are
/// answered `NO [LIMIT]` and nothing is applied (they were answered OK, and the log entry was
/// skipped as damaged at the next start).
#[test]
fn a_65th_keyword_is_refused_with_limit() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("keywords.py", KEYWORDS);
    let text = python(&script, &[node.imap.to_string()]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NO") && lines[0].contains("LIMIT"),
        "{text}"
    );
    assert_eq!(lines[1], "OK", "{text}");
    assert!(
        lines[2].starts_with("NO") && lines[2].contains("LIMIT"),
        "{text}"
    );
    assert_eq!(lines[3], "exists 1", "{text}");
}

const VIEW: &str = r#"
import imaplib, sys
class Client(imaplib.IMAP4):
    lines = []
    def _get_line(self):
        line = super()._get_line()
        self.lines.append(line.decode())
        return line
def client():
    c = Client("127.0.0.1", int(sys.argv[1]))
    c.login("alice", "secret-password")
    return c
a, b = client(), client()
for i in range(2):
    b.append("INBOX", None, None, b"Subject: %d\r\n\r\nbody\r\n" % i)
a.select("INBOX")
b.select("INBOX")
# Another session sets a keyword: a's NOOP must announce it before the FETCH using it.
a.lines = []
b.store("1", "+FLAGS", "($Label1)")
a.noop()
print("noop:", " | ".join(a.lines))
# a's own STORE of a new keyword: announced before its FETCH answer.
a.lines = []
a.store("2", "+FLAGS", "(Todo)")
print("store:", " | ".join(a.lines))
# A message arrives and leaves (with message 1) between a's commands: a never heard of it,
# so a gets one EXPUNGE numbered in its own view of 2 messages and no EXISTS.
b.append("INBOX", None, None, b"Subject: 3\r\n\r\nbody\r\n")
b.noop()
b.store("1,3", "+FLAGS.SILENT", "(\\Deleted)")
b.expunge()
a.lines = []
a.noop()
print("expunge:", " | ".join(a.lines))
print("search:", a.search(None, "ALL")[1][0].decode())
a.logout(); b.logout()
"#;

/// Issue #21: keywords are announced by `* FLAGS` and PERMANENTFLAGS before a FETCH response
/// uses them (RFC 3501 §7.2.6), and `* n EXPUNGE` follows the session's own view: a message
/// it was never told of leaves without an EXPUNGE, and no number is above its count.
#[test]
fn keywords_are_announced_and_expunges_follow_the_sessions_view() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("view.py", VIEW);
    let text = python(&script, &[node.imap.to_string()]);
    let line = |p: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p} in {text}"))
            .to_string()
    };
    let noop = line("noop: ");
    let flags = noop.find("* FLAGS (").expect(&noop);
    let fetch = noop.find("* 1 FETCH").expect(&noop);
    assert!(flags < fetch, "{noop}");
    assert!(noop.contains("$Forwarded $Label1)"), "{noop}");
    assert!(
        noop.contains("[PERMANENTFLAGS (") && noop.contains("$Label1 \\*)]"),
        "{noop}"
    );
    let store = line("store: ");
    let flags = store.find("* FLAGS (").expect(&store);
    let fetch = store.find("* 2 FETCH").expect(&store);
    assert!(flags < fetch && store.contains("$Label1 Todo)"), "{store}");
    let expunge = line("expunge: ");
    assert!(expunge.starts_with("* 1 EXPUNGE | "), "{expunge}");
    assert_eq!(expunge.matches("EXPUNGE").count(), 1, "{expunge}");
    assert!(!expunge.contains("EXISTS"), "{expunge}");
    assert_eq!(line("search: "), "1", "{text}");
}
