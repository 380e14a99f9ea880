#!/usr/bin/env python3
"""IMAP concurrency torture: N imaplib clients on one account for S seconds, every reply
checked against the RFCs.

    imap_torture.py --host H --port P --user U --password W [--seconds 20] [--clients 10]
                    [--seed 1] [--ssl]

Works against any IMAP4rev1 server (the built-in one of `peerpost run`, Dovecot, ...).

Each client runs a random mix: SELECT/EXAMINE, FETCH and UID FETCH, STORE and UID STORE
(+/-FLAGS, system flags and keywords, .SILENT), COPY, MOVE, APPEND, EXPUNGE, UID EXPUNGE,
CREATE/DELETE of "churn" folders, SEARCH, STATUS, NOOP, IDLE. Every line the server sends
is seen in order and checked:

* Tagged NO: a violation unless listed in ALLOWED_NO below, with the reason.
  Tagged BAD: always a violation (every command sent is well-formed).
* EXISTS never lowers the count (RFC 3501 §7.3.1: only EXPUNGE does); `* n EXPUNGE` has
  1 <= n <= count (§7.4.1), after which count drops by one; `* n FETCH` has n <= count;
  `* n RECENT` has n <= count.
* No untagged EXPUNGE while a FETCH, STORE or SEARCH by sequence number runs (§7.4.1).
* Keywords: a keyword in `* n FETCH (FLAGS (...))` must have been announced by the last
  `* FLAGS (...)` (RFC 3501 §7.2.6: the FLAGS response lists the flags applicable in the
  folder; a client must record it, and a server announces a new keyword before using it).
  `NIL` is never a flag.
* A FLAGS list in FETCH is a parenthesised list of flag atoms.
* MOVE and COPY: COPYUID names as many destination UIDs as source UIDs (RFC 4315).
* MODSEQ (RFC 7162; some FETCHes ask for it, which turns CONDSTORE on): a message's MODSEQ
  never goes down, and a later SELECT's HIGHESTMODSEQ is at least every MODSEQ seen there.

It prints a summary (commands, commands/s, replies by kind, violations by kind, a few
examples) and exits 1 on any violation (2 if it could not run at all).
"""

import argparse
import collections
import imaplib
import random
import re
import socket
import ssl
import sys
import threading
import time

# imaplib 3.11 knows neither; the server decides what is allowed in which state.
imaplib.Commands.setdefault("IDLE", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("MOVE", ("SELECTED",))

STABLE = ["INBOX", "Work"]
CHURN = ["churn1", "churn2", "churn3"]
KEYWORDS = ["$Label1", "$Label2", "$Label3", "Junk", "NonJunk", "$MDNSent", "Todo"]
SYSTEM = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft", "\\Deleted"]
SYSTEM_UPPER = {f.upper() for f in SYSTEM + ["\\Recent"]}

# Tagged NO answers the RFCs allow here, by command, with why. Everything else is a violation.
#  - SELECT/EXAMINE/STATUS of a churn folder: another client may have deleted it a moment
#    ago (RFC 3501 §6.3.1: NO if the mailbox does not exist).
#  - APPEND/COPY/MOVE into a churn folder: same (RFC 3501 §6.3.11, §6.4.7: NO, with
#    [TRYCREATE] when the target does not exist).
#  - CREATE of a churn folder: another client may have just created it (§6.3.3: NO if it
#    exists).  DELETE of a churn folder: another may have just deleted it (§6.3.4).
#  - FETCH: RFC 5530 EXPUNGEISSUED is for a FETCH naming a message another session
#    expunged; servers should prefer returning what exists, but it is allowed.
#  - COPY/MOVE with [EXPUNGEISSUED]: a set naming a message another session expunged may be
#    refused as a whole (RFC 2180 §4.4.1: COPY is atomic, so nothing was copied; Dovecot
#    does this), or done for the rest (the built-in server).
#  STORE, EXPUNGE, UID EXPUNGE, SEARCH, NOOP, IDLE, and anything on a stable folder: NO is
#  a violation (RFC 3501 §6.4.6 / RFC 9051 §6.4.6: STORE on a set including expunged
#  messages succeeds for the rest; EXPUNGE of what is already gone is not an error).
CHURN_NO_OK = {"SELECT", "EXAMINE", "STATUS", "APPEND", "COPY", "MOVE", "CREATE", "DELETE"}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.commands = collections.Counter()
        self.replies = collections.Counter()
        self.violations = collections.Counter()
        self.known = collections.Counter()
        self.examples = collections.defaultdict(list)

    def add(self, counter, key, n=1):
        with self.lock:
            getattr(self, counter)[key] += n

    def violation(self, kind, detail):
        with self.lock:
            self.violations[kind] += 1
            if len(self.examples[kind]) < 3:
                self.examples[kind].append(detail[:300])


# Response codes of NO answers that --known tolerates (open bugs, counted separately).
KNOWN = set()

FETCH_RE = re.compile(rb"^\* (\d+) FETCH ")
FLAGS_IN_FETCH_RE = re.compile(rb"FLAGS \(([^)]*)\)")
UID_IN_FETCH_RE = re.compile(rb"[( ]UID (\d+)")
MODSEQ_IN_FETCH_RE = re.compile(rb"MODSEQ \((\d+)\)")
HIGHESTMODSEQ_RE = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")
NUM_RE = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE|RECENT)\b", re.I)
FLAGS_RE = re.compile(rb"^\* FLAGS \(([^)]*)\)", re.I)
PERM_RE = re.compile(rb"^\* OK \[PERMANENTFLAGS \(([^)]*)\)\]", re.I)
COPYUID_RE = re.compile(rb"\[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\]", re.I)


def set_size(s):
    n = 0
    for part in s.split(b","):
        if b":" in part:
            a, b = part.split(b":")
            n += abs(int(b) - int(a)) + 1
        else:
            n += 1
    return n


class Client(imaplib.IMAP4):
    """imaplib with every received line passed, in order, through the checker."""

    def __init__(self, args, stats, name):
        self.stats = stats
        self.cname = name
        self.count = None  # the selected folder's message count as told, None if none
        self.selected = None
        self.flags = set()  # keywords announced by the last FLAGS
        self.current = None  # (command name, by uid)
        self.continued = False  # the previous line ended in a literal
        self.last_lines = collections.deque(maxlen=6)
        self.use_ssl = args.ssl
        self.readonly = False
        self.modseqs = {}  # (folder, uid) -> the last MODSEQ seen
        self.highest = {}  # folder -> the highest MODSEQ seen there
        self.select_highest = None  # HIGHESTMODSEQ of the SELECT running
        super().__init__(args.host, args.port, timeout=60)

    def _create_socket(self, timeout):
        sock = super()._create_socket(timeout)
        if self.use_ssl:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        return sock

    def bad(self, kind, line):
        self.stats.violation(
            kind,
            "%s in %s on %s: %r (before: %r)"
            % (self.cname, self.current, self.selected, line, list(self.last_lines)[:-1]),
        )

    def _get_line(self):
        line = super()._get_line()
        self.last_lines.append(line)
        try:
            self.check(line)
        except Exception as e:  # a malformed line
            self.bad("unparsable response", line + b" (" + str(e).encode() + b")")
        return line

    def check(self, line):
        cont = self.continued
        self.continued = line.endswith(b"}") and re.search(rb"\{\d+\}$", line) is not None
        if cont:
            self.check_fetch_flags(line)
            return
        if not line.startswith(b"* "):
            return
        m = NUM_RE.match(line)
        if m:
            n, what = int(m.group(1)), m.group(2).upper()
            if self.count is None:
                if what == b"EXISTS":
                    self.count = n
                return
            if what == b"EXISTS":
                if n < self.count:
                    self.bad("EXISTS lowered the count", line)
                self.count = n
            elif what == b"EXPUNGE":
                if self.current and self.current[0] in ("FETCH", "STORE", "SEARCH") and not self.current[1]:
                    self.bad("EXPUNGE during FETCH/STORE/SEARCH by sequence number", line)
                if n < 1 or n > self.count:
                    self.bad("EXPUNGE seq out of range", line + b" count=%d" % self.count)
                else:
                    self.count -= 1
            elif what == b"RECENT" and n > self.count:
                self.bad("RECENT above EXISTS", line)
            return
        m = FLAGS_RE.match(line)
        if m:
            self.flags = {f.upper() for f in m.group(1).split()}
            if b"NIL" in self.flags:
                self.bad("NIL as a flag", line)
            return
        m = HIGHESTMODSEQ_RE.search(line)
        if m:
            self.select_highest = int(m.group(1))
        m = FETCH_RE.match(line)
        if m:
            n = int(m.group(1))
            if self.count is not None and (n < 1 or n > self.count):
                self.bad("FETCH seq out of range", line + b" count=%d" % self.count)
            self.check_fetch_flags(line)
            self.check_modseq(line)

    def check_modseq(self, line):
        u, ms = UID_IN_FETCH_RE.search(line), MODSEQ_IN_FETCH_RE.search(line)
        if not (u and ms and self.selected):
            return
        key, ms = (self.selected, int(u.group(1))), int(ms.group(1))
        if ms < self.modseqs.get(key, 0):
            self.bad("MODSEQ went down", line + b" before=%d" % self.modseqs[key])
        self.modseqs[key] = ms
        self.highest[self.selected] = max(self.highest.get(self.selected, 0), ms)

    def check_fetch_flags(self, line):
        for m in FLAGS_IN_FETCH_RE.finditer(line):
            for f in m.group(1).split():
                u = f.upper()
                if u == b"NIL":
                    self.bad("NIL as a flag", line)
                elif u.startswith(b"\\"):
                    if u.decode() not in SYSTEM_UPPER:
                        self.bad("unknown system flag", line)
                elif u not in self.flags:
                    self.bad("keyword in FETCH before FLAGS announced it", line)

    # ----- commands -----

    def run(self, name, *args, uid=False, churn=False):
        """Runs one command; checks the tagged answer. Returns (typ, data)."""
        self.current = (name, uid)
        key = ("UID " if uid else "") + name
        self.stats.add("commands", key)
        try:
            if uid:
                typ, data = self._simple_command("UID", name, *args)
            else:
                typ, data = self._simple_command(name, *args)
        except imaplib.IMAP4.error as e:  # BAD (imaplib raises on it)
            self.stats.add("replies", key + " BAD")
            self.bad("BAD", ("%s %r: %s" % (key, args, e)).encode())
            return "BAD", []
        finally:
            self.current = None
        self.stats.add("replies", "%s %s" % (key, typ))
        if typ == "NO":
            text = b" ".join(d for d in data if isinstance(d, bytes))
            ok = (churn and name in CHURN_NO_OK) or (
                name in ("FETCH", "COPY", "MOVE") and b"EXPUNGEISSUED" in text.upper()
            )
            code = re.match(rb"\[([A-Z-]+)\]", text.upper())
            if not ok and code and code.group(1).decode() in KNOWN:
                self.stats.add("known", "NO [%s] for %s" % (code.group(1).decode(), key))
            elif not ok:
                self.bad("NO not allowed for " + key, ("%r -> %r" % (args, text)).encode())
        return typ, data

    def do_select(self, folder, readonly=False):
        churn = folder in CHURN
        self.count = None
        self.flags = set()
        self.selected = None
        self.readonly = readonly
        self.select_highest = None
        typ, _ = self.run("EXAMINE" if readonly else "SELECT", folder, churn=churn)
        if typ == "OK":
            self.state = "SELECTED"
            self.selected = folder
            seen = self.highest.get(folder, 0)
            if folder not in CHURN and self.select_highest is not None and self.select_highest < seen:
                self.bad("HIGHESTMODSEQ below a MODSEQ seen", b"%s: %d < %d" % (
                    folder.encode(), self.select_highest, seen))
            if self.count is None:
                self.bad("SELECT without EXISTS", folder.encode())
                self.count = 0
        else:
            self.state = "AUTH"
            self.count = None
        self.untagged_responses.clear()
        return typ == "OK"

    def idle(self, seconds):
        self.current = ("IDLE", False)
        self.stats.add("commands", "IDLE")
        tag = self._command("IDLE")
        self.continuation_response = None
        while self.continuation_response is None:
            self._get_response()
            if tag in self.tagged_commands and self.tagged_commands[tag]:
                typ = self.tagged_commands[tag][0]
                self.stats.add("replies", "IDLE " + typ)
                self.bad("IDLE refused", repr(self.tagged_commands[tag]).encode())
                self.current = None
                return
        time.sleep(seconds)
        self.send(b"DONE\r\n")
        try:
            typ, _ = self._command_complete("IDLE", tag)
        except imaplib.IMAP4.error as e:
            typ = "BAD"
            self.bad("BAD", str(e).encode())
        self.stats.add("replies", "IDLE " + typ)
        if typ != "OK":
            self.bad("NO not allowed for IDLE", b"")
        self.current = None
        self.untagged_responses.clear()


def message(rng, i):
    body = "".join(rng.choice("abcdefgh \r\n") for _ in range(rng.randint(20, 400)))
    return (
        "From: Torture <t%d@example.net>\r\nTo: alice@example.org\r\nSubject: torture %d\r\n"
        "Date: Mon, 02 Oct 2023 10:00:00 +0000\r\nMessage-ID: <t%d.%d@example.net>\r\n\r\n%s\r\n"
        % (i, i, i, rng.randint(0, 1 << 30), body)
    ).encode()


def seqset(rng, count, uids=False):
    if count == 0:
        return "1:*" if uids else "1"
    a = rng.randint(1, count)
    b = min(count, a + rng.randint(0, 5))
    if rng.random() < 0.1:
        return "%d:*" % a
    if rng.random() < 0.2:
        return "%d,%d" % (a, rng.randint(1, count))
    return "%d:%d" % (a, b) if a != b else str(a)


def flag_list(rng):
    pick = rng.sample(SYSTEM[:-1] + KEYWORDS, rng.randint(1, 3))
    return "(" + " ".join(pick) + ")"


def worker(args, stats, idx, stop_at):
    rng = random.Random(args.seed * 1000 + idx)
    try:
        c = Client(args, stats, "c%d" % idx)
        c.login(args.user, args.password)
    except Exception as e:
        stats.violation("could not connect/login", "c%d: %s" % (idx, e))
        return
    c.untagged_responses.clear()
    n = 0
    try:
        c.do_select(rng.choice(STABLE))
        while time.monotonic() < stop_at:
            n += 1
            if c.selected is None or c.selected in CHURN or c.readonly:
                c.do_select(rng.choice(STABLE))
                continue
            count = c.count or 0
            r = rng.random()
            if count == 0 and 0.05 <= r < 0.62:
                # A sequence set needs a message to name (RFC 3501 §9, seq-number; Dovecot
                # answers BAD "Invalid messageset"): append one instead.
                r = 0.70
            other = rng.choice([f for f in STABLE if f != c.selected] + CHURN)
            if r < 0.05:
                c.do_select(rng.choice(STABLE + CHURN), readonly=rng.random() < 0.2)
            elif r < 0.22:
                uid = rng.random() < 0.5
                what = rng.choice(
                    ["(FLAGS)", "(UID FLAGS)", "(FLAGS BODY.PEEK[HEADER])", "(UID RFC822.SIZE FLAGS)",
                     "(ENVELOPE)", "(BODY[TEXT])", "(BODYSTRUCTURE FLAGS)", "(UID FLAGS MODSEQ)"]
                )
                c.run("FETCH", seqset(rng, count) if not uid else "1:*" if rng.random() < 0.3
                      else seqset(rng, count), what, uid=uid)
            elif r < 0.40:
                uid = rng.random() < 0.5
                op = rng.choice(["+FLAGS", "-FLAGS", "+FLAGS.SILENT", "-FLAGS.SILENT", "FLAGS"])
                c.run("STORE", seqset(rng, count), op, flag_list(rng), uid=uid)
            elif r < 0.48:
                c.run("STORE", seqset(rng, count), "+FLAGS.SILENT", "(\\Deleted)")
                if rng.random() < 0.5:
                    c.run("EXPUNGE")
                else:
                    c.run("EXPUNGE", "1:*", uid=True)
            elif r < 0.55:
                typ, data = c.run("COPY", seqset(rng, count), other, churn=other in CHURN,
                                  uid=rng.random() < 0.5)
                check_copyuid(c, stats, typ, data, "COPY")
            elif r < 0.62:
                typ, data = c.run("MOVE", seqset(rng, count), other, churn=other in CHURN,
                                  uid=rng.random() < 0.5)
                check_copyuid(c, stats, typ, c.untagged_responses.get("OK", []), "MOVE")
            elif r < 0.74 or count < 20:
                target = rng.choice(STABLE + [c.selected] + CHURN)
                flags = rng.choice(["", "(\\Seen)", "(" + rng.choice(KEYWORDS) + ")"])
                c.stats.add("commands", "APPEND")
                c.current = ("APPEND", False)
                churn = target in CHURN
                try:
                    typ, data = c.append(target, flags or None, None, message(rng, n))
                except imaplib.IMAP4.error as e:
                    typ, data = "BAD", [str(e).encode()]
                    c.bad("BAD", str(e).encode())
                c.current = None
                stats.add("replies", "APPEND " + typ)
                if typ == "NO" and not churn:
                    c.bad("NO not allowed for APPEND", repr(data).encode())
            elif r < 0.79:
                f = rng.choice(CHURN)
                c.run(rng.choice(["CREATE", "DELETE"]), f, churn=True)
            elif r < 0.84:
                c.run("SEARCH", rng.choice(["UNSEEN", "FLAGGED", "KEYWORD $Label1", "ALL",
                                            "FROM t1", "SINCE 1-Jan-2020"]), uid=rng.random() < 0.5)
            elif r < 0.88:
                f = rng.choice(STABLE + CHURN)
                c.run("STATUS", f, "(MESSAGES UIDNEXT UNSEEN)", churn=f in CHURN)
            elif r < 0.95:
                c.run("NOOP")
            else:
                c.idle(rng.uniform(0.05, 0.4))
            c.untagged_responses.clear()
        c.logout()
    except (imaplib.IMAP4.abort, OSError, socket.timeout) as e:
        stats.violation("connection lost", "c%d: %s (last: %r)" % (idx, e, list(c.last_lines)))


def check_copyuid(c, stats, typ, data, what):
    if typ != "OK":
        return
    for d in data:
        if not isinstance(d, bytes):
            continue
        m = COPYUID_RE.search(d if d.startswith(b"[") else b"[" + d)
        if m and set_size(m.group(2)) != set_size(m.group(3)):
            c.bad(what + " COPYUID source and destination sizes differ", d)


def prepare(args):
    c = imaplib.IMAP4(args.host, args.port, timeout=60) if not args.ssl else imaplib.IMAP4_SSL(
        args.host, args.port, ssl_context=ssl._create_unverified_context(), timeout=60)
    c.login(args.user, args.password)
    c.create("Work")  # may exist already
    rng = random.Random(args.seed)
    for f in STABLE:
        typ, data = c.status(f, "(MESSAGES)")
        have = int(re.search(rb"MESSAGES (\d+)", data[0]).group(1)) if typ == "OK" else 0
        for i in range(have, 40):
            c.append(f, None, None, message(rng, i))
    c.logout()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ssl", action="store_true")
    p.add_argument("--known", action="append", default=[], metavar="CODE",
                   help="a tagged NO with this response code (e.g. EXPUNGEISSUED) is a known "
                        "open bug: counted and printed, not a violation")
    args = p.parse_args()
    KNOWN.update(c.upper() for c in args.known)
    try:
        prepare(args)
    except Exception as e:
        print("could not prepare the account: %s" % e)
        return 2
    stats = Stats()
    start = time.monotonic()
    stop_at = start + args.seconds
    threads = [threading.Thread(target=worker, args=(args, stats, i, stop_at)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    total = sum(stats.commands.values())
    print("clients %d, %.1f s, %d commands, %.0f commands/s"
          % (args.clients, took, total, total / took if took else 0))
    print("replies:")
    for k, v in sorted(stats.replies.items()):
        print("  %-24s %d" % (k, v))
    print("known (tolerated with --known): %d" % sum(stats.known.values()))
    for k, v in stats.known.most_common():
        print("  %-60s %d" % (k, v))
    nviol = sum(stats.violations.values())
    print("violations: %d" % nviol)
    for k, v in stats.violations.most_common():
        print("  %-60s %d" % (k, v))
        for ex in stats.examples[k]:
            print("      e.g. %s" % ex)
    if total == 0:
        print("no command ran")
        return 2
    if nviol:
        return 1
    print("ALL OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
