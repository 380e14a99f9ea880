//! The IMAP server through `peerpost run`: Python's imaplib drives every command (plain,
//! STARTTLS, implicit TLS), two sessions watch each other, IDLE is woken by mail arriving over
//! the SMTP intake; hostile input over raw sockets leaves the server answering; and real mutt
//! reads, flags, moves and deletes over imap://.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Mutt, RunNode, TestHome};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// A node serving IMAP, IMAPS and the SMTP intake, with their ports.
struct Node {
    run: RunNode,
    imap: u16,
    imaps: u16,
    smtp: u16,
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

fn start(t: &TestHome) -> Node {
    start_with(t, |c| c)
}

/// [`start`], with `edit` applied to the config `init` wrote.
fn start_with(t: &TestHome, edit: impl Fn(String) -> String) -> Node {
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

/// Issue #21, RFC 7162: a client that last saw HIGHESTMODSEQ m resyncs through the binary
/// with `SELECT INBOX (QRESYNC (uidvalidity m))` and gets only what changed (VANISHED
/// (EARLIER) for the expunged UIDs, FETCH with MODSEQ for the changed and new ones); also
/// CHANGEDSINCE, UNCHANGEDSINCE/MODIFIED, SEARCH MODSEQ, STATUS HIGHESTMODSEQ, and VANISHED
/// instead of EXPUNGE in a QRESYNC session.
#[test]
fn qresync_resync_gets_only_what_changed() {
    let t = TestHome::new();
    let node = start(&t);
    let text = python(format!("{DATA}/imap_qresync.py"), &[node.imap.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}

/// Issue #21, RFC 4315/6851: MOVE's COPYUID (and COPY's) pairs each source UID with the UID
/// the same message got in the destination, in order, also for a move of 99 messages.
const COPYUID: &str = r#"
import imaplib, re, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice", "secret-password")
m.create("Dest")
N = 100
for i in range(1, N + 1):
    m.append("INBOX", None, None, ("Subject: s%d\r\n\r\nb\r\n" % i).encode())
m.select("INBOX")
def subjects(box, uids):
    m.select(box)
    out = {}
    typ, data = m.uid("FETCH", ",".join(map(str, uids)), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    for d in data:
        if isinstance(d, tuple):
            u = int(re.search(rb"UID (\d+)", d[0]).group(1))
            out[u] = d[1].decode().strip()
    return out
def expand(s):
    r = []
    for p in s.split(","):
        a, _, b = p.partition(":")
        r += list(range(int(a), int(b or a) + 1))
    return r
src_subj = subjects("INBOX", range(1, N + 1))
m.select("INBOX")
typ, data = m._simple_command("UID", "MOVE", "2:%d" % N, "Dest")
ok = m.untagged_responses.get("OK", [])
print(typ, [o for o in ok if b"COPYUID" in o][:1], data)
cu = [o for o in ok if b"COPYUID" in o][0].decode()
mo = re.search(r"COPYUID (\d+) (\S+) (\S+)\]", cu)
frm, to = expand(mo.group(2)), expand(mo.group(3))
dst = subjects("Dest", to)
bad = [(f, t, src_subj.get(f), dst.get(t)) for f, t in zip(frm, to) if src_subj.get(f) != dst.get(t)]
assert typ == "OK" and len(frm) == len(to) == N - 1, (typ, len(frm), len(to))
assert not bad, bad[:5]
# COPY too, into a folder that already has messages (the new UIDs continue from there).
m.select("Dest")
typ, data = m._simple_command("UID", "COPY", "%d:%d" % (to[10], to[20]), "INBOX")
cu = data[0].decode()
mo = re.search(r"COPYUID (\d+) (\S+) (\S+)\]", cu)
frm, to2 = expand(mo.group(2)), expand(mo.group(3))
src2 = subjects("Dest", frm)
dst2 = subjects("INBOX", to2)
assert len(frm) == len(to2) == 11 and all(src2[f] == dst2[t] for f, t in zip(frm, to2)), (cu, src2, dst2)
print("ALL OK")
"#;

#[test]
fn move_and_copy_copyuid_name_the_new_uids_in_order() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("copyuid.py", COPYUID);
    let text = python(&script, &[node.imap.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}

/// Issue #21, RFC 3501 §2.3.2: `\Recent` belongs to one session. Mail delivered over SMTP is
/// recent in the first session that SELECTs the folder (its `* n RECENT`, FETCH FLAGS and
/// SEARCH RECENT), EXAMINE shows it without taking it, a later SELECT sees none, and new mail
/// while two sessions are selected is recent in exactly one of them.
const RECENT: &str = r#"
import imaplib, re, smtplib, sys, time
imap, smtp = int(sys.argv[1]), int(sys.argv[2])

def deliver(subj):
    s = smtplib.SMTP("127.0.0.1", smtp, timeout=10)
    s.sendmail("bob@example.net", ["alice@example.org"],
               ("From: bob@example.net\r\nTo: alice@example.org\r\nSubject: %s\r\n\r\nhi\r\n" % subj).encode())
    s.quit()

def session():
    m = imaplib.IMAP4("127.0.0.1", imap)
    m.login("alice", "secret-password")
    return m

def recent_count(m):
    r = m.untagged_responses.pop("RECENT", [b"0"])
    return int(r[-1])

def recent_seqs(m):
    typ, data = m.fetch("1:*", "(FLAGS)")
    return [int(d.split()[0]) for d in data if isinstance(d, bytes) and b"\\Recent" in d]

deliver("one"); deliver("two")
for _ in range(50):
    e = session()
    e.select("INBOX", readonly=True)
    if int(e.untagged_responses.get("EXISTS", [b"0"])[-1]) == 2:
        break
    e.logout(); time.sleep(0.1)
assert recent_count(e) == 2, "EXAMINE shows both as recent"
assert recent_seqs(e) == [1, 2]
e.logout()

a = session()
a.select("INBOX")
assert recent_count(a) == 2, "the first SELECT takes both"
assert recent_seqs(a) == [1, 2]
assert a.search(None, "RECENT")[1][0].split() == [b"1", b"2"]
assert a.search(None, "NEW")[1][0].split() == [b"1", b"2"]

b = session()
b.select("INBOX")
assert recent_count(b) == 0, "a later SELECT sees none"
assert recent_seqs(b) == [] and b.search(None, "RECENT")[1][0] == b""
assert b.search(None, "OLD")[1][0].split() == [b"1", b"2"]
assert b.status("INBOX", "(RECENT)")[1][0].endswith(b"(RECENT 0)")

deliver("three")
got = {}
for _ in range(50):
    for m in (a, b):
        m.noop()
    seqs = {name: recent_seqs(m) for name, m in (("a", a), ("b", b))}
    if any(3 in v for v in seqs.values()):
        got = seqs
        break
    time.sleep(0.1)
assert got, "message 3 never arrived"
time.sleep(0.3)
seqs = {name: recent_seqs(m) for name, m in (("a", a), ("b", b))}
owners = [name for name, v in seqs.items() if 3 in v]
assert len(owners) == 1, "recent in exactly one session: %r" % seqs
a.logout(); b.logout()

c = session()
c.select("INBOX")
assert recent_count(c) == 0 and recent_seqs(c) == [], "claims are kept in the engine"
c.logout()
print("ALL OK")
"#;

#[test]
fn recent_belongs_to_one_session() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("recent.py", RECENT);
    let text = python(&script, &[node.imap.to_string(), node.smtp.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}

/// Issue #21, capabilities Dovecot 2.3 offers: RFC 5032 WITHIN (SEARCH YOUNGER/OLDER by
/// INTERNALDATE) and RFC 8438 STATUS=SIZE (the RFC822.SIZEs added up).
const WITHIN_SIZE: &str = r#"
import imaplib, re, sys, time
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice", "secret-password")
assert "WITHIN" in m.capabilities and "STATUS=SIZE" in m.capabilities, m.capabilities
old = imaplib.Time2Internaldate(time.time() - 10 * 86400)
assert m.append("INBOX", None, old, b"Subject: old\r\n\r\nold body\r\n")[0] == "OK"
assert m.append("INBOX", None, None, b"Subject: new\r\n\r\nnew body, longer\r\n")[0] == "OK"
m.select("INBOX")
assert m.search(None, "YOUNGER", "3600")[1][0].split() == [b"2"], m.search(None, "YOUNGER", "3600")
assert m.search(None, "OLDER", "3600")[1][0].split() == [b"1"]
assert m.search(None, "OLDER", "%d" % (20 * 86400))[1][0] == b""
sizes = [int(x) for x in re.findall(rb"RFC822.SIZE (\d+)", b" ".join(
    d if isinstance(d, bytes) else d[0] for d in m.fetch("1:*", "(RFC822.SIZE)")[1]))]
st = m.status("INBOX", "(SIZE MESSAGES)")[1][0].decode()
assert "SIZE %d" % sum(sizes) in st and len(sizes) == 2, (st, sizes)
m.logout()
print("ALL OK")
"#;

#[test]
fn within_and_status_size() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("within.py", WITHIN_SIZE);
    let text = python(&script, &[node.imap.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}

const ESEARCH_LIST: &str = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice", "secret-password")
caps = m.capabilities
for c in ("ESEARCH", "LIST-EXTENDED", "LIST-STATUS"):
    assert c in caps, (c, caps)
for i in range(5):
    m.append("INBOX", "(\\Seen)" if i % 2 else None, None, b"Subject: m%d\r\n\r\nbody\r\n" % i)
m.select("INBOX")
def run(*args):
    typ, dat = m._simple_command(*args)
    assert typ == "OK", (args, typ, dat)
def untagged(name):
    typ, dat = m._untagged_response("OK", [None], name)
    return [d.decode() if isinstance(d, bytes) else d for d in dat if d is not None]
# RFC 4731: SEARCH RETURN (MIN MAX COUNT ALL) and UID SEARCH RETURN ().
run("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN")
es = untagged("ESEARCH")
assert len(es) == 1 and es[0].endswith("MIN 1 MAX 5 COUNT 3 ALL 1,3,5"), es
assert es[0].startswith('(TAG "'), es
m.uid("SEARCH", "RETURN", "()", "1:*")
es = untagged("ESEARCH")
assert len(es) == 1 and " UID ALL 1:5" in es[0], es
run("SEARCH", "RETURN", "(COUNT)", "SUBJECT", "nothing-like-this")
es = untagged("ESEARCH")
assert es[0].endswith(" COUNT 0"), es
typ, dat = m.search(None, "UNSEEN")
assert dat == [b"1 3 5"], dat
# RFC 5258/5819: subscriptions, STATUS in LIST, several patterns.
m.create("Work/Old")
m.create("Lists")
m.unsubscribe("Work")
m.create("Gone")
m.subscribe("Gone")
m.delete("Gone")
run("LIST", "(SUBSCRIBED)", '""', "*")
lines = untagged("LIST")
assert any(l.startswith("(\\NonExistent \\Subscribed)") and '"Gone"' in l for l in lines), lines
assert any("\\Subscribed" in l and '"Work/Old"' in l for l in lines), lines
assert not any(l.endswith('"Work"') for l in lines), lines
run("LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', "%")
lines = untagged("LIST")
assert any('"Work" ("CHILDINFO" ("SUBSCRIBED"))' in l for l in lines), lines
typ, dat = m.lsub('""', "*")
lsub = [d.decode() for d in dat]
assert any(l.startswith("(\\Noselect)") and l.endswith('"Gone"') for l in lsub), lsub
run("LIST", '""', "(INBOX Lists)", "RETURN", "(CHILDREN STATUS (MESSAGES UNSEEN))")
lines = untagged("LIST")
assert len(lines) == 2 and not any("Work" in l for l in lines), lines
st = untagged("STATUS")
assert any(s.startswith('"INBOX" (MESSAGES 5 UNSEEN 3)') for s in st), st
assert any(s.startswith('"Lists" (MESSAGES 0 UNSEEN 0)') for s in st), st
# Plain LIST does not show the deleted folder; UNSUBSCRIBE of it is taken.
typ, dat = m.list('""', "*")
assert not any(b"Gone" in d for d in dat), dat
assert m.unsubscribe("Gone")[0] == "OK"
typ, dat = m.lsub('""', "*")
assert not any(b"Gone" in d for d in dat if d), dat
try:
    m._simple_command("LIST", "(RECURSIVEMATCH)", '""', "*")
    raise SystemExit("RECURSIVEMATCH alone was accepted")
except imaplib.IMAP4.error:
    pass
m.logout()
# Literals in an extended LIST (read outside the codec): synchronizing and not.
import socket
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rb")
f.readline()
def until(tag):
    lines = []
    while True:
        l = f.readline()
        assert l, lines
        lines.append(l)
        if l.startswith(tag + b" "):
            return lines
s.sendall(b"a LOGIN alice secret-password\r\n")
until(b"a")
s.sendall(b"b LIST (SUBSCRIBED) {0}\r\n")
assert f.readline().startswith(b"+"), "no continuation for the literal"
s.sendall(b" ({5+}\r\nLists INBOX) RETURN (STATUS (MESSAGES))\r\n")
lines = until(b"b")
assert lines[-1].startswith(b"b OK"), lines
assert sum(l.startswith(b"* LIST") for l in lines) == 2, lines
assert sum(l.startswith(b"* STATUS") for l in lines) == 2, lines
s.sendall(b"c LIST \"\" (" + b"x " * 40 + b"y)\r\n")
assert until(b"c")[-1].startswith(b"c BAD"), "41 patterns were taken"
s.sendall(b"d LOGOUT\r\n")
print("ALL OK")
"#;

/// RFC 4731 ESEARCH and RFC 5258/5819 LIST-EXTENDED/LIST-STATUS through imaplib: SEARCH
/// RETURN options, subscriptions that outlive their folder (`\NonExistent`, LSUB `\Noselect`),
/// RECURSIVEMATCH's CHILDINFO, several patterns and STATUS in one LIST.
#[test]
fn esearch_and_list_extended() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("esearch.py", ESEARCH_LIST);
    let text = python(&script, &[node.imap.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}

const BINARY_QUOTA: &str = r#"
import imaplib, re, socket, sys
port = int(sys.argv[1])
m = imaplib.IMAP4("127.0.0.1", port)
caps = m.capabilities
for c in ("BINARY", "UTF8=ACCEPT", "QUOTA", "QUOTA=RES-STORAGE", "APPENDLIMIT=1048576"):
    assert c in caps, (c, caps)
m.login("alice", "secret-password")
typ, dat = m.getquotaroot("INBOX")
roots = [d.decode() for part in dat for d in (part if isinstance(part, list) else [part])]
assert any(r.startswith('"INBOX" ""') or r.startswith('INBOX ""') for r in roots), dat
q = [r for r in roots if "STORAGE" in r][0]
used0, limit = map(int, re.search(r"STORAGE (\d+) (\d+)", q).groups())
assert limit > 0, q
msg = (b"From: a@b\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
       b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
       b"caf=C3=A9 au =\r\nlait\r\n"
       b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       b"AAECAwAA/w==\r\n--zz--\r\n")
assert m.append("INBOX", None, None, msg)[0] == "OK"
typ, dat = m.getquota('""')
used1 = int(re.search(rb"STORAGE (\d+) ", dat[0]).group(1))
assert used1 > used0, (used0, dat)
m.select("INBOX")
typ, dat = m.fetch("1", "(BINARY.SIZE[1] BINARY.SIZE[2] BINARY.PEEK[1] BINARY.PEEK[2])")
head = dat[0][0]
assert b"BINARY.SIZE[1] 13" in head and b"BINARY.SIZE[2] 7" in head, dat
assert dat[0][1] == "café au lait".encode(), dat
assert dat[1][0].endswith(b"BINARY[2] ~{7}") and dat[1][1] == b"\x00\x01\x02\x03\x00\x00\xff", dat
typ, dat = m.fetch("1", "(BINARY.PEEK[2]<1.3>)")
assert dat[0][1] == b"\x01\x02\x03", dat
typ, dat = m.fetch("1", "(FLAGS)")
assert b"\\Seen" not in dat[0], dat
# Too large for APPENDLIMIT: refused before a byte of it is sent.
typ, dat = m.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"x" * 1100000)
assert typ == "NO" and b"TOOBIG" in dat[0], (typ, dat)
# UTF8=ACCEPT: folder names in UTF-8 after ENABLE, modified UTF-7 before.
m.create("&AMk-t&AOk-")
typ, dat = m.list('""', "*t*")
assert any(b'"&AMk-t&AOk-"' in d for d in dat), dat
m.unselect()
typ, dat = m.enable("UTF8=ACCEPT")
en = m.untagged_responses.pop("ENABLED", [b""])
assert typ == "OK" and b"UTF8=ACCEPT" in en[0], (dat, en)
typ, dat = m.list('""', "*t*")
assert any("\"Été\"".encode() in d for d in dat), dat
m.logout()

# APPEND of a literal8 (RFC 3516 §4.4), over a raw socket.
s = socket.create_connection(("127.0.0.1", port), timeout=10)
f = s.makefile("rb")
def cmd(line, lit=None):
    s.sendall(line)
    if lit is not None:
        assert f.readline().startswith(b"+"), "no continuation"
        s.sendall(lit + b"\r\n")
    while True:
        l = f.readline()
        if not l.startswith(b"*"):
            return l
f.readline()
assert b"OK" in cmd(b"a LOGIN alice secret-password\r\n")
body = b"Subject: nul\r\n\r\na\x00b\r\n"
r = cmd(b"b APPEND INBOX ~{%d}\r\n" % len(body), body)
assert r.startswith(b"b OK"), r
cmd(b"c SELECT INBOX\r\n")
s.sendall(b"d FETCH 2 (BINARY.PEEK[])\r\n")
data = b""
while not data.endswith(b"d OK FETCH completed\r\n"):
    chunk = s.recv(65536)
    assert chunk, data
    data += chunk
assert b"BINARY[] ~{%d}\r\n" % len(body) + body in data, data
print("ALL OK")
"#;

/// RFC 3516 BINARY (decoded parts, literal8 both ways), RFC 9208 QUOTA (the node's storage
/// quota and usage in KiB), RFC 7889 APPENDLIMIT (the node's message size limit) and RFC
/// 6855 UTF8=ACCEPT (folder names in UTF-8 once enabled), through imaplib and a raw socket.
#[test]
fn binary_quota_appendlimit_utf8() {
    let t = TestHome::new();
    let node = start_with(&t, |c| {
        c.replace("contribution = \"10GiB\"", "contribution = \"64MiB\"")
            .replace(
                "max_message_size = \"50MiB\"",
                "max_message_size = \"1MiB\"",
            )
    });
    let script = t.file("binary.py", BINARY_QUOTA);
    let text = python(&script, &[node.imap.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}

const REV2: &str = r#"
import imaplib, sys
port = int(sys.argv[1])
a = imaplib.IMAP4("127.0.0.1", port)
assert "IMAP4REV2" in a.capabilities and "IMAP4REV1" in a.capabilities, a.capabilities
a.login("alice", "secret-password")
for i in range(3):
    a.append("INBOX", "(\\Seen)" if i == 0 else None, None, b"Subject: r%d\r\n\r\nbody\r\n" % i)
# A rev1 session sees \Recent as before; a rev2 one never does.
b = imaplib.IMAP4("127.0.0.1", port)
b.login("alice", "secret-password")
typ, dat = b.enable("IMAP4rev2")
en = b" ".join(b.untagged_responses.pop("ENABLED", [b""]))
assert typ == "OK" and b"IMAP4rev2" in en, (dat, en)
b.select("INBOX")
assert "RECENT" not in b.untagged_responses, b.untagged_responses
lists = b.untagged_responses.pop("LIST", [])
assert lists and lists[0].endswith(b'"INBOX"'), lists
assert "UNSEEN" not in b.untagged_responses, b.untagged_responses
typ, dat = b.fetch("1:*", "(FLAGS)")
assert not any(b"\\Recent" in d for d in dat), dat
# SEARCH is answered by ESEARCH (RFC 9051 §6.4.4).
typ, dat = b._simple_command("SEARCH", "UNSEEN")
assert typ == "OK", dat
es = b.untagged_responses.pop("ESEARCH", [])
assert len(es) == 1 and es[0].endswith(b" ALL 2:3"), es
assert "SEARCH" not in b.untagged_responses, b.untagged_responses
# Mail arriving while selected: EXISTS without RECENT; STATUS DELETED.
a.append("INBOX", "(\\Deleted)", None, b"Subject: r3\r\n\r\nbody\r\n")
b.noop()
assert b.untagged_responses.pop("EXISTS", [b""])[-1] == b"4", b.untagged_responses
assert "RECENT" not in b.untagged_responses, b.untagged_responses
typ, dat = b.status("INBOX", "(DELETED MESSAGES)")
assert b"DELETED 1" in dat[0] and b"MESSAGES 4" in dat[0], dat
# SELECT of another folder says [CLOSED] first.
b.create("Other")
typ, dat = b.select("Other")
assert typ == "OK" and b"CLOSED" in b" ".join(v for v in b.untagged_responses.get("OK", []) if v), b.untagged_responses
# Delivered mail is \Recent; the rev2 session does not claim it, so a rev1 one gets it.
import smtplib
smtp = smtplib.SMTP("127.0.0.1", int(sys.argv[2]), timeout=10)
smtp.sendmail("bob@example.net", ["alice@example.org"], b"Subject: new\r\n\r\nhi\r\n")
smtp.quit()
b.select("INBOX")
for _ in range(50):
    typ, dat = b.fetch("1:*", "(FLAGS)")
    if len(dat) == 5:
        break
    import time; time.sleep(0.1)
assert len(dat) == 5 and not any(b"\\Recent" in d for d in dat), dat
typ, dat = a.select("INBOX")
rec = a.untagged_responses.pop("RECENT", [b"-"])[-1]
assert rec == b"1", (rec, a.untagged_responses)
a.logout(); b.logout()
print("ALL OK")
"#;

/// RFC 9051: IMAP4rev2 beside IMAP4rev1; after ENABLE IMAP4rev2 no `\Recent`/RECENT,
/// ESEARCH answers SEARCH, SELECT gives a LIST and no UNSEEN code, `[CLOSED]` when leaving a
/// folder, STATUS DELETED; a rev1 session on the same account is unchanged.
#[test]
fn imap4rev2_beside_rev1() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("rev2.py", REV2);
    let text = python(&script, &[node.imap.to_string(), node.smtp.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}

const SORT_THREAD: &str = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
assert "SORT" in m.capabilities and "THREAD=ORDEREDSUBJECT" in m.capabilities, m.capabilities
m.login("alice", "secret-password")
msgs = [
    ("carol@x", "Lunch", "Tue, 03 Oct 2023 10:00:00 +0000", 300),
    ("alice@x", "Re: lunch", "Wed, 04 Oct 2023 10:00:00 +0000", 100),
    ("bob@x", "Budget", "Mon, 02 Oct 2023 23:00:00 -0500", 200),
    ("dave@x", "[team] Fwd: Budget", "Thu, 05 Oct 2023 10:00:00 +0000", 50),
]
for frm, subj, date, pad in msgs:
    body = ("From: %s\r\nSubject: %s\r\nDate: %s\r\n\r\n%s\r\n" % (frm, subj, date, "x" * pad)).encode()
    m.append("INBOX", None, None, body)
m.select("INBOX")
def sort(crit, search="ALL", uid=False):
    typ, dat = (m.uid("SORT", crit, "UTF-8", search) if uid else m.sort(crit, "UTF-8", search))
    assert typ == "OK", dat
    return dat[0].decode()
assert sort("(FROM)") == "2 3 1 4", sort("(FROM)")
assert sort("(SUBJECT)") == "3 4 1 2", sort("(SUBJECT)")
# Date: header in UTC (message 3 is Oct 3 04:00 UTC, after message 1's Oct 3 10:00? no: before).
assert sort("(DATE)") == "3 1 2 4", sort("(DATE)")
assert sort("(REVERSE SIZE)") == "1 3 2 4", sort("(REVERSE SIZE)")
assert sort("(ARRIVAL)") == "1 2 3 4", sort("(ARRIVAL)")
assert sort("(SUBJECT REVERSE DATE)", "SINCE 1-Jan-2000") == "4 3 2 1", sort("(SUBJECT REVERSE DATE)")
assert sort("(SIZE)", "FROM bob", uid=True) == "3", sort("(SIZE)", "FROM bob", True)
typ, dat = m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
assert typ == "OK" and dat[0] == b"(3 (4))(1 (2))", dat
typ, dat = m._simple_command("SORT", "(SIZE)", "KOI8-R", "ALL")
assert typ == "NO" and b"BADCHARSET" in dat[0], dat
try:
    m.thread("REFERENCES", "UTF-8", "ALL")
    raise SystemExit("THREAD=REFERENCES was taken")
except imaplib.IMAP4.error:
    pass
m.logout()
print("ALL OK")
"#;

/// RFC 5256 SORT (ARRIVAL, DATE in UTC, FROM, SUBJECT by base subject, SIZE, REVERSE,
/// with search keys and UID) and THREAD=ORDEREDSUBJECT through imaplib.
#[test]
fn sort_and_thread() {
    let t = TestHome::new();
    let node = start(&t);
    let script = t.file("sort.py", SORT_THREAD);
    let text = python(&script, &[node.imap.to_string()]);
    assert!(text.contains("ALL OK"), "{text}");
}
