"""RFC 7162 CONDSTORE/QRESYNC through the binary: a client that last saw HIGHESTMODSEQ m
resyncs with SELECT ... (QRESYNC (uidvalidity m)) and gets only what changed since: VANISHED
(EARLIER) for the expunged UIDs, a FETCH with MODSEQ for each changed or new message.
Usage: imap_qresync.py IMAP_PORT. Prints ALL OK."""
import imaplib, re, sys, time

PORT = int(sys.argv[1])
n = [0]


def conn():
    m = imaplib.IMAP4("127.0.0.1", PORT)
    m.login("alice", "secret-password")
    return m


def raw(m, cmd):
    """Sends one command; returns (tagged line, untagged lines)."""
    n[0] += 1
    tag = "q%d" % n[0]
    m.send(("%s %s\r\n" % (tag, cmd)).encode())
    lines = []
    while True:
        line = m.readline().decode().rstrip("\r\n")
        if line.startswith(tag + " "):
            return line, lines
        lines.append(line)


def fetched(lines):
    """{uid: (flags, modseq)} of the untagged FETCH lines."""
    out = {}
    for l in lines:
        if " FETCH (" not in l:
            continue
        uid = int(re.search(r"UID (\d+)", l).group(1))
        ms = re.search(r"MODSEQ \((\d+)\)", l)
        assert ms, "FETCH without MODSEQ: %s" % l
        flags = re.search(r"FLAGS \(([^)]*)\)", l)
        out[uid] = (flags.group(1) if flags else None, int(ms.group(1)))
    return out


def vanished(lines, earlier):
    prefix = "* VANISHED (EARLIER) " if earlier else "* VANISHED "
    got = [l[len(prefix):] for l in lines
           if l.startswith(prefix) and (earlier or not l.startswith("* VANISHED (EARLIER)"))]
    return ",".join(got)


def code(lines, name):
    for l in lines:
        mo = re.search(r"\[%s (\d+)\]" % name, l)
        if mo:
            return int(mo.group(1))
    raise AssertionError("no %s in %r" % (name, lines))


def msg(i):
    return ("From: bob@example.net\r\nTo: alice@example.org\r\nSubject: note %d\r\n"
            "Message-ID: <q%d@example.net>\r\n\r\nbody %d\r\n" % (i, i, i)).encode()


other = conn()
for i in range(1, 7):
    assert other.append("INBOX", None, None, msg(i))[0] == "OK"

# The client syncs once and remembers UIDVALIDITY and HIGHESTMODSEQ.
a = conn()
caps = raw(a, "CAPABILITY")[1][0]
assert " CONDSTORE" in caps and " QRESYNC" in caps, caps
tagged, lines = raw(a, "SELECT INBOX (QRESYNC (1 1))")
assert " BAD " in tagged, "QRESYNC before ENABLE QRESYNC must be BAD: %s" % tagged
tagged, lines = raw(a, "ENABLE QRESYNC")
assert "OK" in tagged and any(l.startswith("* ENABLED") and "QRESYNC" in l for l in lines), lines
tagged, lines = raw(a, "SELECT INBOX")
assert " OK " in tagged, tagged
validity, m0 = code(lines, "UIDVALIDITY"), code(lines, "HIGHESTMODSEQ")
tagged, lines = raw(a, "UID FETCH 1:* (FLAGS MODSEQ)")
before = fetched(lines)
assert sorted(before) == [1, 2, 3, 4, 5, 6], lines
assert all(ms <= m0 for _, ms in before.values()), (before, m0)
raw(a, "LOGOUT")

# Meanwhile another client flags 2, expunges 4 and 5 and appends one.
other.select("INBOX")
other.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
other.uid("STORE", "4:5", "+FLAGS", "(\\Deleted)")
other.expunge()
other.append("INBOX", None, None, msg(7))

# The resync: only what changed comes back.
a = conn()
raw(a, "ENABLE QRESYNC")
tagged, lines = raw(a, "SELECT INBOX (QRESYNC (%d %d))" % (validity, m0))
assert " OK " in tagged, tagged
assert vanished(lines, True) == "4:5", lines
changed = fetched(lines)
assert sorted(changed) == [2, 7], lines
assert "\\Flagged" in changed[2][0], changed
m1 = code(lines, "HIGHESTMODSEQ")
assert m1 > m0 and all(m0 < ms <= m1 for _, ms in changed.values()), (m0, m1, changed)
assert any(l == "* 5 EXISTS" for l in lines), lines
assert vanished(lines, False) == "", "no plain VANISHED in a SELECT: %r" % lines

# known-uids narrow both answers to the UIDs the client has.
tagged, lines = raw(a, "SELECT INBOX (QRESYNC (%d %d 1:3))" % (validity, m0))
assert vanished(lines, True) == "" and sorted(fetched(lines)) == [2], lines
# A UIDVALIDITY the folder does not have: a plain SELECT, nothing reported as changed.
tagged, lines = raw(a, "SELECT INBOX (QRESYNC (%d %d))" % (validity + 1, m0))
assert vanished(lines, True) == "" and fetched(lines) == {}, lines

# UID FETCH ... (CHANGEDSINCE m0 VANISHED) says the same.
tagged, lines = raw(a, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % m0)
assert " OK " in tagged, tagged
assert vanished(lines, True) == "4:5" and sorted(fetched(lines)) == [2, 7], lines
tagged, lines = raw(a, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % m1)
assert fetched(lines) == {}, lines

# STORE UNCHANGEDSINCE: a message changed since is left alone and named in MODIFIED.
tagged, lines = raw(a, "UID STORE 2,3 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % m0)
assert "[MODIFIED 2]" in tagged, tagged
got = fetched(lines)
assert sorted(got) == [3] and "\\Seen" in got[3][0] and got[3][1] > m1, lines
tagged, lines = raw(a, "UID FETCH 2 (FLAGS)")
assert "\\Seen" not in fetched(lines)[2][0], lines
tagged, lines = raw(a, "UID STORE 1 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Seen)")
assert "[MODIFIED 1]" in tagged, tagged

# SEARCH MODSEQ: what changed since m0, and the highest MODSEQ among the hits.
tagged, lines = raw(a, "UID SEARCH MODSEQ %d" % (m0 + 1))
hits = [l for l in lines if l.startswith("* SEARCH")][0]
mo = re.match(r"\* SEARCH ([\d ]+) \(MODSEQ (\d+)\)$", hits)
assert mo and sorted(map(int, mo.group(1).split())) == [2, 3, 7], hits
assert int(mo.group(2)) == got[3][1], (hits, got)

# STATUS HIGHESTMODSEQ.
tagged, lines = raw(a, "STATUS INBOX (HIGHESTMODSEQ)")
assert "HIGHESTMODSEQ %d" % got[3][1] in lines[0], lines

# Another client's expunge reaches a QRESYNC session as VANISHED, never EXPUNGE; its flag
# change as a FETCH with MODSEQ.
other.uid("STORE", "6", "+FLAGS", "(\\Deleted)")
other.expunge()
other.uid("STORE", "7", "+FLAGS", "(\\Answered)")
time.sleep(0.3)
tagged, lines = raw(a, "NOOP")
assert vanished(lines, False) == "6", lines
assert not any(l.endswith(" EXPUNGE") for l in lines), lines
noop = fetched(lines)
assert sorted(noop) == [7] and noop[7][1] > got[3][1], lines
tagged, lines = raw(a, "UID FETCH 1:* (UID)")
uids = sorted(int(u) for u in re.findall(r"FETCH \(UID (\d+)\)", " ".join(lines)))
assert uids == [1, 2, 3, 7], lines
raw(a, "LOGOUT")
other.logout()
print("ALL OK")
