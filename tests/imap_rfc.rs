//! The IMAP extensions clients resync and search with, each through `peerpost run` with
//! Python's imaplib: CONDSTORE/QRESYNC, UIDPLUS's COPYUID, \Recent, WITHIN and STATUS=SIZE,
//! ESEARCH and LIST-EXTENDED, BINARY, QUOTA, APPENDLIMIT, UTF8=ACCEPT, IMAP4rev2, SORT and
//! THREAD (issue #21).

use crate::imap::{DATA, python, start, start_with};
use crate::util::TestHome;

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
