#!/usr/bin/env python3
"""Drives peerpost's IMAP server with Python's imaplib (and raw sockets for hostile input).

usage: imap-test.py IMAP_PORT IMAPS_PORT SMTP_PORT CERT_PEM PART

PART is "commands" (every command, two sessions, IDLE woken by SMTP intake) or "hostile"
(bad input, then the server still answers). Prints "ALL OK" on success; on the first
failed check prints "FAILED: what" and exits 1.
"""
import imaplib
import re
import smtplib
import socket
import ssl
import sys
import time

imap_port, imaps_port, smtp_port, cert, part = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
HOST = "127.0.0.1"
USER, PASS = "alice", "secret-password"


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


def ok(res, what):
    typ, data = res
    check(typ == "OK", "%s: %s %r" % (what, typ, data))
    return data


def tls_ctx():
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    return ctx


def login():
    m = imaplib.IMAP4(HOST, imap_port, timeout=15)
    ok(m.login(USER, PASS), "login")
    return m


def deliver(subject, body="hello\r\n"):
    s = smtplib.SMTP(HOST, smtp_port, timeout=10)
    s.sendmail("bob@example.net", ["alice@example.org"],
               ("From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: %s\r\n"
                "Date: Mon, 02 Oct 2023 10:00:00 +0000\r\n\r\n%s" % (subject, body)).encode())
    s.quit()


MULTI = (b"From: =?utf-8?q?Ren=C3=A9?= <rene@example.com>\r\n"
         b"To: Alice <alice@example.org>, carol@example.net\r\n"
         b"Cc: dave@example.net\r\n"
         b"Subject: Quarterly report\r\n"
         b"Date: Tue, 03 Oct 2023 12:34:56 +0200\r\n"
         b"Message-ID: <report-1@example.com>\r\n"
         b"MIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n"
         b"\r\n"
         b"preamble\r\n"
         b"--XYZ\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: 8bit\r\n"
         b"\r\n"
         b"Numbers are up. Caf\xc3\xa9 budget: zebra-unique-word\r\n"
         b"--XYZ\r\n"
         b"Content-Type: application/octet-stream; name=\"data.bin\"\r\n"
         b"Content-Disposition: attachment; filename=\"data.bin\"\r\n"
         b"Content-Transfer-Encoding: base64\r\n"
         b"\r\n"
         b"AAECAwQFBgc=\r\n"
         b"--XYZ--\r\n")


def commands():
    # --- not authenticated: capabilities, refusals, STARTTLS, AUTHENTICATE, IMAPS ---
    m = imaplib.IMAP4(HOST, imap_port, timeout=15)
    caps = m.capabilities
    for c in ["IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "IDLE", "UIDPLUS", "MOVE", "LITERAL+",
              "NAMESPACE", "ID", "ENABLE", "UNSELECT", "SPECIAL-USE", "CHILDREN"]:
        check(c in caps, "capability " + c)
    try:
        m.login(USER, "wrong")
        check(False, "wrong password accepted")
    except imaplib.IMAP4.error as e:
        check("AUTHENTICATIONFAILED" in str(e), "wrong password: %s" % e)
    ok(m.starttls(ssl_context=tls_ctx()), "STARTTLS")
    ok(m.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (USER, PASS)).encode()),
       "AUTHENTICATE PLAIN over STARTTLS")
    m.logout()

    s = imaplib.IMAP4_SSL(HOST, imaps_port, ssl_context=tls_ctx(), timeout=15)
    ok(s.login(USER, PASS), "login over IMAPS")
    ok(s.noop(), "NOOP over IMAPS")
    s.logout()

    m = login()
    data = ok(m.namespace(), "NAMESPACE")
    check(data[0] == b'(("" "/")) NIL NIL', "NAMESPACE %r" % data)
    typ, data = m.xatom("ID", '("name" "imaplib")')
    check(typ == "OK" and b"peerpost" in m.untagged_responses.pop("ID", [b""])[0], "ID")
    typ, data = m.xatom("ENABLE", "CONDSTORE")
    check(typ == "OK", "ENABLE")

    # --- folders ---
    data = ok(m.list(), "LIST")
    text = b"\n".join(data)
    check(b'"INBOX"' in text and b'\\Sent' in text and b'\\Trash' in text
          and b'\\HasNoChildren' in text, "LIST special-use: %r" % text)
    ok(m.create("Work/Projects"), "CREATE nested")
    data = ok(m.list('""', "Work"), "LIST Work")
    check(len(data) == 1 and b"\\HasChildren" in data[0], "Work has children: %r" % data)
    data = ok(m.list('""', "%"), "LIST %")
    check(not any(b"Work/Projects" in d for d in data), "% stops at the delimiter")
    data = ok(m.list("Work/", "*"), "LIST with a reference")
    check(len(data) == 1 and b'"Work/Projects"' in data[0], "reference: %r" % data)
    data = ok(m.list('""', '""'), "LIST empty pattern")
    check(data[0] == b'(\\Noselect) "/" ""', "delimiter query: %r" % data)
    ok(m.subscribe("Work/Projects"), "SUBSCRIBE")
    data = ok(m.lsub('""', "*"), "LSUB")
    check(any(b"Work/Projects" in d for d in data), "LSUB lists it: %r" % data)
    ok(m.unsubscribe("Work/Projects"), "UNSUBSCRIBE")
    data = ok(m.lsub('""', "Work*"), "LSUB after")
    check(data == [None] or not any(d and b"Projects" in d for d in data), "unsubscribed: %r" % data)
    ok(m.rename("Work", "Jobs"), "RENAME")
    data = ok(m.list('""', "Jobs*"), "LIST after RENAME")
    check(len(data) == 2 and any(b"Jobs/Projects" in d for d in data), "children moved: %r" % data)
    typ, _ = m.create("Jobs")
    check(typ == "NO", "CREATE existing")
    ok(m.create("Caf&AOk-/&ZeVnLIqe-"), "CREATE in modified UTF-7")
    data = ok(m.list('""', "Caf&AOk-*"), "LIST modified UTF-7")
    check(len(data) == 2 and b'"Caf&AOk-/&ZeVnLIqe-"' in data[1], "UTF-7 names: %r" % data)
    ok(m.status("Caf&AOk-/&ZeVnLIqe-", "(MESSAGES)"), "STATUS UTF-7")
    ok(m.delete("Caf&AOk-/&ZeVnLIqe-"), "DELETE UTF-7")
    ok(m.delete("Caf&AOk-"), "DELETE UTF-7 parent")
    ok(m.delete("Jobs/Projects"), "DELETE")
    ok(m.delete("Jobs"), "DELETE parent")
    typ, data = m.select("Nowhere")
    check(typ == "NO", "SELECT missing folder")
    typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)")
    check(typ == "OK" and re.search(rb"MESSAGES \d+ UIDNEXT \d+ UIDVALIDITY \d+ UNSEEN \d+", data[0]),
          "STATUS %r" % data)

    # --- APPEND: literal, flags, date; byte-identical; APPENDUID ---
    typ, data = m.append("INBOX", "(\\Flagged $Work)", '"03-Oct-2023 10:34:56 +0000"', MULTI)
    check(typ == "OK", "APPEND %r" % data)
    mt = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    check(mt, "APPENDUID: %r" % data)
    validity, uid = mt.group(1), mt.group(2)
    typ, data = m.append("Nowhere", None, None, b"Subject: x\r\n\r\ny\r\n")
    check(typ == "NO" and b"TRYCREATE" in data[0], "APPEND to a missing folder: %r" % data)
    data = ok(m.select("INBOX"), "SELECT")
    exists = int(data[0])
    check(m.untagged_responses.get("UIDVALIDITY", [b""])[0] == validity, "UIDVALIDITY matches APPENDUID")
    code = m.untagged_responses
    check("PERMANENTFLAGS" in code and "UIDNEXT" in code, "SELECT codes: %r" % list(code))
    data = ok(m.uid("FETCH", uid, "(BODY.PEEK[] RFC822.SIZE INTERNALDATE FLAGS)"), "UID FETCH appended")
    check(data[0][1] == MULTI, "APPENDed message is byte-identical")
    meta = data[0][0] + b"".join(d for d in data[1:] if isinstance(d, bytes))
    check(b"RFC822.SIZE %d" % len(MULTI) in meta, "RFC822.SIZE: %r" % meta)
    check(b'INTERNALDATE "03-Oct-2023 10:34:56 +0000"' in meta, "INTERNALDATE: %r" % meta)
    check(b"\\Flagged" in meta and b"$Work" in meta and b"\\Seen" not in meta, "flags kept, PEEK: %r" % meta)

    # --- FETCH items ---
    data = ok(m.uid("FETCH", uid, "(ENVELOPE)"), "ENVELOPE")
    env = data[0] if isinstance(data[0], bytes) else b"".join(
        x if isinstance(x, bytes) else b"".join(x) for x in data)
    check(b'"Quarterly report"' in env and b'"rene" "example.com"' in env
          and b'"<report-1@example.com>"' in env and b'"carol" "example.net"' in env,
          "ENVELOPE: %r" % env)
    data = ok(m.uid("FETCH", uid, "(BODYSTRUCTURE)"), "BODYSTRUCTURE")
    bs = data[0]
    check(b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT"' in bs
          and b'"APPLICATION" "OCTET-STREAM"' in bs and b'"MIXED" ("BOUNDARY" "XYZ")' in bs
          and b'("ATTACHMENT" ("FILENAME" "data.bin"))' in bs, "BODYSTRUCTURE: %r" % bs)
    data = ok(m.uid("FETCH", uid, "(BODY)"), "BODY")
    check(b'"MIXED")' in data[0], "BODY (no extensions): %r" % data[0])
    data = ok(m.uid("FETCH", uid, "(BODY.PEEK[1])"), "BODY[1]")
    check(data[0][1] == "Numbers are up. Café budget: zebra-unique-word\r\n".encode()
          or data[0][1] == "Numbers are up. Café budget: zebra-unique-word".encode(),
          "BODY[1]: %r" % data[0][1])
    data = ok(m.uid("FETCH", uid, "(BODY.PEEK[2.MIME])"), "BODY[2.MIME]")
    check(data[0][1].startswith(b"Content-Type: application/octet-stream"), "2.MIME: %r" % data[0][1])
    data = ok(m.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT CC)])"), "HEADER.FIELDS")
    check(data[0][1] == b"Cc: dave@example.net\r\nSubject: Quarterly report\r\n\r\n", "fields: %r" % data[0][1])
    data = ok(m.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)])"), "HEADER.FIELDS.NOT")
    check(b"Subject:" not in data[0][1] and b"Cc: dave" in data[0][1], "fields.not")
    data = ok(m.uid("FETCH", uid, "(BODY.PEEK[HEADER] BODY.PEEK[TEXT])"), "HEADER+TEXT")
    check(data[0][1] + data[1][1] == MULTI, "HEADER + TEXT = message")
    data = ok(m.uid("FETCH", uid, "(BODY.PEEK[]<6.4>)"), "partial")
    check(data[0][1] == MULTI[6:10] and b"BODY[]<6>" in data[0][0], "partial: %r" % (data[0],))
    data = ok(m.uid("FETCH", uid, "(RFC822.HEADER)"), "RFC822.HEADER")
    check(data[0][1] == MULTI[:MULTI.index(b"\r\n\r\n") + 4], "RFC822.HEADER")
    data = ok(m.uid("FETCH", uid, "(FLAGS)"), "FLAGS")
    check(b"\\Seen" not in data[0], "header fetches do not set \\Seen")
    data = ok(m.uid("FETCH", uid, "(RFC822.TEXT)"), "RFC822.TEXT")
    data = ok(m.uid("FETCH", uid, "(FLAGS)"), "FLAGS")
    check(b"\\Seen" in data[0], "RFC822.TEXT sets \\Seen: %r" % data)
    data = ok(m.fetch("1:*", "(UID)"), "FETCH 1:* UID")
    check(len(data) == exists, "one answer per message")
    data = ok(m.fetch("1", "FAST"), "FETCH FAST")
    check(b"RFC822.SIZE" in data[0] and b"INTERNALDATE" in data[0], "FAST: %r" % data)

    # --- STORE ---
    data = ok(m.uid("STORE", uid, "+FLAGS", "(\\Answered)"), "STORE +FLAGS")
    check(b"\\Answered" in data[0] and b"UID " + uid in data[0], "STORE answer: %r" % data)
    data = ok(m.uid("STORE", uid, "-FLAGS", "($Work)"), "STORE -FLAGS")
    check(b"$Work" not in data[0], "keyword removed: %r" % data)
    typ, data = m.uid("STORE", uid, "+FLAGS.SILENT", "(\\Draft)")
    check(typ == "OK" and data == [None], "SILENT gives no FETCH: %r" % data)
    data = ok(m.uid("STORE", uid, "FLAGS", "(\\Seen \\Flagged)"), "STORE FLAGS")
    check(b"\\Draft" not in data[0] and b"\\Answered" not in data[0], "replaced: %r" % data)

    # --- SEARCH ---
    def search(*crit, uid_=True):
        if uid_:
            data = ok(m.uid("SEARCH", *crit), "SEARCH %s" % (crit,))
        else:
            data = ok(m.search(None, *crit), "SEARCH %s" % (crit,))
        return data[0].split()
    check(uid in search("ALL"), "SEARCH ALL")
    check(search("SUBJECT", '"quarterly"') == [uid], "SEARCH SUBJECT")
    check(search("FROM", "rene@example.com") == [uid], "SEARCH FROM")
    m.literal = "René".encode()
    data = ok(m.uid("SEARCH", "CHARSET", "UTF-8", "FROM"), "SEARCH FROM with a literal")
    check(data[0].split() == [uid], "SEARCH FROM decoded: %r" % data)
    check(search("TO", "carol") == [uid], "SEARCH TO")
    check(search("CC", "dave") == [uid], "SEARCH CC")
    check(search("BODY", "zebra-unique-word") == [uid], "SEARCH BODY")
    check(search("TEXT", "ZEBRA-UNIQUE") == [uid], "SEARCH TEXT")
    check(search("TEXT", "report-1@example.com") == [uid], "SEARCH TEXT in header")
    check(search("HEADER", "Message-ID", "report-1") == [uid], "SEARCH HEADER")
    check(search("FLAGGED", "SEEN") == [uid], "SEARCH FLAGGED SEEN")
    check(uid not in search("UNSEEN"), "SEARCH UNSEEN")
    check(uid in search("OR", "DELETED", "FLAGGED"), "SEARCH OR")
    check(uid not in search("NOT", "FLAGGED"), "SEARCH NOT")
    check(uid in search("LARGER", "100") and uid not in search("SMALLER", "100"), "SEARCH size")
    check(uid in search("ON", "3-Oct-2023") and uid not in search("BEFORE", "3-Oct-2023")
          and uid in search("SINCE", "1-Oct-2023"), "SEARCH internal date")
    check(uid in search("SENTON", "3-Oct-2023") and uid in search("SENTBEFORE", "4-Oct-2023")
          and uid not in search("SENTSINCE", "4-Oct-2023"), "SEARCH sent date")
    check(search("UID", uid) == [uid], "SEARCH UID")
    seqs = search("UID", uid, uid_=False)
    check(len(seqs) == 1, "SEARCH by seq: %r" % seqs)
    data = ok(m.uid("SEARCH", "CHARSET", "UTF-8", "BODY", "zebra"), "CHARSET UTF-8")
    check(data[0].split() == [uid], "CHARSET search")
    typ, data = m.uid("SEARCH", "CHARSET", "KOI8-R", "ALL")
    check(typ == "NO" and b"BADCHARSET" in data[0], "bad charset: %r" % data)
    check(search("KEYWORD", "$Work") == [], "SEARCH KEYWORD")

    # --- COPY / MOVE / EXPUNGE ---
    ok(m.create("Archive2"), "CREATE Archive2")
    typ, data = m._simple_command("UID", "COPY", uid, "Archive2")
    check(typ == "OK" and b"COPYUID" in data[0], "COPYUID: %r" % data)
    typ, data = m._simple_command("UID", "COPY", uid, "Nowhere")
    check(typ == "NO" and b"TRYCREATE" in data[0], "COPY to missing: %r" % data)
    before = int(ok(m.select("INBOX"), "reselect")[0])
    typ, data = m.uid("MOVE", uid, "Archive2")
    check(typ == "OK", "MOVE: %r" % data)
    check(m.untagged_responses.get("EXPUNGE"), "MOVE expunged: %r" % m.untagged_responses)
    data = ok(m.status("Archive2", "(MESSAGES)"), "STATUS Archive2")
    check(b"MESSAGES 2" in data[0], "moved and copied: %r" % data)
    deliver("to be deleted")
    deliver("to be kept")
    ok(m.noop(), "NOOP")
    data = ok(m.uid("SEARCH", "SUBJECT", '"to be deleted"'), "find")
    doomed = data[0].split()[0]
    ok(m.uid("STORE", doomed, "+FLAGS.SILENT", "(\\Deleted)"), "mark deleted")
    typ, data = m.expunge()
    check(typ == "OK" and data and data[0] is not None, "EXPUNGE: %r" % data)
    data = ok(m.uid("SEARCH", "SUBJECT", '"to be kept"'), "find kept")
    kept = data[0].split()[0]
    ok(m.uid("STORE", kept, "+FLAGS.SILENT", "(\\Deleted)"), "mark kept")
    typ, data = m.xatom("UID EXPUNGE", b"1")
    ok(m.uid("SEARCH", "UID", kept), "still there after UID EXPUNGE of another uid")
    check(m.uid("SEARCH", "UID", kept)[1][0].split() == [kept], "UID EXPUNGE only the named UIDs")
    ok(m.uid("STORE", kept, "-FLAGS.SILENT", "(\\Deleted)"), "unmark")
    ok(m.check(), "CHECK")

    # --- EXAMINE is read-only; CLOSE / UNSELECT ---
    data = ok(m.select("INBOX", readonly=True), "EXAMINE")
    typ, data = m.store("1", "+FLAGS", "(\\Flagged)")
    check(typ == "NO", "STORE in EXAMINE: %r" % typ)
    ok(m.unselect(), "UNSELECT")
    ok(m.select("Archive2"), "SELECT Archive2")
    ok(m.store("1", "+FLAGS.SILENT", "(\\Deleted)"), "mark")
    ok(m.close(), "CLOSE")
    data = ok(m.status("Archive2", "(MESSAGES)"), "STATUS after CLOSE")
    check(b"MESSAGES 1" in data[0], "CLOSE expunged: %r" % data)

    # --- two sessions see each other's changes ---
    a, b = login(), login()
    ok(a.select("INBOX"), "A SELECT")
    n = int(ok(b.select("INBOX"), "B SELECT")[0])
    b.untagged_responses.clear()
    ok(a.append("INBOX", None, None, b"Subject: from A\r\n\r\nhi\r\n"), "A APPEND")
    ok(b.noop(), "B NOOP")
    check(b.untagged_responses.get("EXISTS") == [str(n + 1).encode()], "B sees EXISTS: %r" % b.untagged_responses)
    ok(a.store(str(n + 1), "+FLAGS", "(\\Flagged)"), "A STORE")
    ok(b.noop(), "B NOOP 2")
    fetches = b.untagged_responses.pop("FETCH", [])
    check(any(b"\\Flagged" in f for f in fetches), "B sees the flag: %r" % fetches)
    ok(a.store(str(n + 1), "+FLAGS.SILENT", "(\\Deleted)"), "A mark")
    ok(a.expunge(), "A EXPUNGE")
    typ, data = b.fetch("1", "(UID)")
    check("EXPUNGE" not in b.untagged_responses, "no EXPUNGE during FETCH: %r" % b.untagged_responses)
    ok(b.noop(), "B NOOP 3")
    check(b.untagged_responses.get("EXPUNGE") == [str(n + 1).encode()], "B sees EXPUNGE: %r" % b.untagged_responses)
    a.logout()

    # --- IDLE, woken by mail through the SMTP intake ---
    b.send(b"I1 IDLE\r\n")
    line = b.readline()
    check(line.startswith(b"+"), "IDLE continuation: %r" % line)
    t0 = time.time()
    deliver("idle wake-up")
    b.sock.settimeout(5)
    line = b.readline()
    waited = time.time() - t0
    check(re.match(rb"\* \d+ EXISTS", line), "IDLE woken: %r" % line)
    check(waited < 1.5, "IDLE woken within a second (%.2fs)" % waited)
    b.send(b"DONE\r\n")
    line = b.readline()
    while line.startswith(b"*"):
        line = b.readline()
    check(line.startswith(b"I1 OK"), "IDLE done: %r" % line)
    b.logout()
    m.logout()


def raw():
    s = socket.create_connection((HOST, imap_port), timeout=10)
    f = s.makefile("rb")

    def send(b):
        s.sendall(b)

    def until(tag):
        lines = []
        while True:
            line = f.readline()
            check(line, "connection closed waiting for %r (got %r)" % (tag, lines[-3:]))
            lines.append(line)
            if line.startswith(tag + b" ") or (tag == b"+" and line.startswith(b"+")):
                return lines
    check(f.readline().startswith(b"* OK"), "greeting")
    return s, f, send, until


def hostile():
    s, f, send, until = raw()
    send(b"\x00\x01garbage \xff\xfe\r\n")
    check(f.readline().startswith(b"* BAD"), "garbage answered")
    send(b"no-crlf NOOP\n")
    check(f.readline().startswith(b"no-crlf BAD"), "LF without CR")
    send(b"a1 FETCH 1 (FLAGS)\r\n")
    check(until(b"a1")[-1].startswith(b"a1 BAD"), "FETCH before login")
    send(b"a2 LOGIN " + b"x" * 100_000 + b" y\r\n")
    check(until(b"a2")[-1].startswith(b"a2 BAD"), "100 kB line")
    send(b"a3 APPEND INBOX {10000000000}\r\n")
    last = until(b"a3")[-1]
    check(last.startswith(b"a3 NO") or last.startswith(b"a3 BAD"), "10 GB literal refused: %r" % last)
    send(b"a31 APPEND INBOX {4000000000}\r\n")
    last = until(b"a31")[-1]
    check(last.startswith(b"a31 NO [TOOBIG]"), "4 GB literal refused before a byte of it: %r" % last)
    send(b"a4 NOOP\r\n")
    check(until(b"a4")[-1].startswith(b"a4 OK"), "alive after the literal")
    send(b"a5 LOGIN alice secret-password\r\n")
    check(until(b"a5")[-1].startswith(b"a5 OK"), "login")
    send(b"a6 SELECT \xc3\xa9t\xc3\xa9\r\n")
    check(until(b"a6")[-1].startswith(b"a6 BAD"), "8-bit atom")
    send(b"a7 FETCH 1 (FLAGS)\r\n")
    check(until(b"a7")[-1].startswith(b"a7 BAD"), "FETCH with nothing selected")
    send(b"a71 LOGIN alice secret-password\r\n")
    check(until(b"a71")[-1].startswith(b"a71 BAD"), "LOGIN twice")
    send(b"a72 SELECT INBOX\r\na73 UNSELECT\r\na74 FETCH 1 (FLAGS)\r\n")
    check(until(b"a74")[-1].startswith(b"a74 BAD"), "FETCH after UNSELECT")
    send(b"a8 SELECT INBOX\r\n")
    check(until(b"a8")[-1].startswith(b"a8 OK"), "SELECT")
    send(b"a9 FETCH 1:* (FLAGS) extra\r\n")
    check(until(b"a9")[-1].startswith(b"a9 BAD"), "trailing junk")
    send(b"".join(b"p%d NOOP\r\n" % i for i in range(1000)))
    lines = until(b"p999")
    oks = [l for l in lines if re.match(rb"p\d+ OK", l)]
    check(len(oks) == 1000, "1000 pipelined commands: %d OK" % len(oks))
    send(b"b1 APPEND INBOX {100+}\r\nSubject: x\r\n\r\nshort\r\n")
    # ... the client vanishes in the middle of its literal.
    s.close()

    s, f, send, until = raw()
    send(b"c1 APPEND INBOX {10000000000+}\r\n")
    lines = until(b"c1")
    check(lines[-1].startswith(b"c1 BAD"), "non-sync 10 GB literal: %r" % lines)
    check(f.readline().startswith(b"* BYE"), "closed after a refused non-sync literal")
    check(f.readline() == b"", "connection closed")
    s.close()

    s, f, send, until = raw()
    send(b"d1 LOGIN alice secret-password\r\nd2 SELECT INBOX\r\nd3 APPEND INBOX {5}\r\n")
    lines = until(b"+")
    send(b"hello\r\n")
    check(until(b"d3")[-1].startswith(b"d3 OK"), "sync literal after pipelining")
    body = b"Subject: literal+\r\n\r\nno continuation needed\r\n"
    send(b"d31 APPEND INBOX (\\Seen) {%d+}\r\n" % len(body) + body + b"\r\n")
    lines = until(b"d31")
    check(lines[-1].startswith(b"d31 OK [APPENDUID") and not any(l.startswith(b"+") for l in lines),
          "LITERAL+ APPEND without a continuation: %r" % lines)
    send(b"d4 STORE 1 +FLAGS (\\Seen)\r\nd5 LOGOUT\r\n")
    lines = until(b"d5")
    check(any(l.startswith(b"d4 OK") for l in lines) and any(l.startswith(b"* BYE") for l in lines), "logout")
    s.close()

    # Brute force: each failure from the address answers more slowly.
    m = imaplib.IMAP4(HOST, imap_port, timeout=30)
    times = []
    for i in range(3):
        t0 = time.time()
        try:
            m.login(USER, "guess%d" % i)
            check(False, "guess accepted")
        except imaplib.IMAP4.error:
            pass
        times.append(time.time() - t0)
    check(times[2] >= 1.5 and times[2] > times[0], "failures are throttled: %r" % times)
    m.logout()
    m = login()
    ok(m.noop(), "the server is unharmed")
    m.logout()


if part == "commands":
    commands()
else:
    hostile()
print("ALL OK")
