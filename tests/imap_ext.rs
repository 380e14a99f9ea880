//! IMAP extensions through `peerpost run` and Python's imaplib: COMPRESS=DEFLATE (RFC 4978) on
//! plain IMAP, after STARTTLS and on IMAPS, with a zip bomb; THREAD=REFERENCES (RFC 5256).

use std::time::{Duration, Instant};

use crate::imap::{Node, python, start};
use crate::util::TestHome;

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// imaplib has no COMPRESS: after `COMPRESS DEFLATE` is answered, the socket imaplib reads and
/// writes is replaced by a raw-deflate wrapper (zlib wbits -15, a sync flush per send).
const ZLIB: &str = r#"
import imaplib, re, smtplib, socket, ssl, sys, time, zlib

HOST = "127.0.0.1"
imap_port, imaps_port, smtp_port, cert, part = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])


imaplib.Commands["COMPRESS"] = ("AUTH", "SELECTED")


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)


def ok(res, what):
    typ, data = res
    check(typ == "OK", "%s: %s %r" % (what, typ, data))
    return data


class Deflated:
    """A socket and file in one, both ways raw deflate (RFC 4978)."""
    def __init__(self, sock):
        self.sock = sock
        self.c = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.d = zlib.decompressobj(-15)
        self.buf = b""
        self.sent_raw = 0
        self.received_raw = 0

    def sendall(self, data):
        z = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        self.sent_raw += len(z)
        self.sock.sendall(z)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.received_raw += len(chunk)
        self.buf += self.d.decompress(chunk)

    def readline(self, limit=-1):
        while b"\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def settimeout(self, t):
        self.sock.settimeout(t)

    def shutdown(self, how):
        self.sock.shutdown(how)

    def close(self):
        self.sock.close()


class Reader:
    """What imaplib reads as its file; closing it leaves the socket to imaplib's shutdown."""
    def __init__(self, z):
        self.readline, self.read = z.readline, z.read

    def close(self):
        pass


def compress(m):
    typ, data = m._simple_command("COMPRESS", "DEFLATE")
    check(typ == "OK", "COMPRESS: %s %r" % (typ, data))
    z = Deflated(m.sock)
    m.sock = z
    m.file = Reader(z)
    return z


def deliver(subject):
    s = smtplib.SMTP(HOST, smtp_port, timeout=10)
    s.sendmail("bob@example.net", ["alice@example.org"],
               ("From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: %s\r\n"
                "Date: Mon, 02 Oct 2023 10:00:00 +0000\r\n\r\nhello\r\n" % subject).encode())
    s.quit()


def tls_ctx():
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    return ctx


def session(m, label):
    """A whole session over a compressed connection."""
    check("COMPRESS=DEFLATE" in m.capabilities, "%s: capability %r" % (label, m.capabilities))
    m.state = "AUTH"  # let imaplib send it: the server must refuse
    try:
        typ, data = m._simple_command("COMPRESS", "DEFLATE")
    except imaplib.IMAP4.error as e:
        typ, data = "BAD", [str(e).encode()]
    check(typ == "BAD" and b"log in first" in data[0], "%s: COMPRESS before login: %s %r" % (label, typ, data))
    m.state = "NONAUTH"
    ok(m.login("alice", "secret-password"), label + " login")
    z = compress(m)
    # A second COMPRESS is refused (RFC 4978 §3).
    typ, data = m._simple_command("COMPRESS", "DEFLATE")
    check(typ == "NO" and data[0].startswith(b"[COMPRESSIONACTIVE]"),
          "%s: second COMPRESS: %s %r" % (label, typ, data))
    ok(m.noop(), label + " NOOP after COMPRESS")
    # APPEND a literal of 2 MB (a body that compresses, with a varying part), FETCH it back.
    lines = b"".join(b"line %07d of a long and repetitive body\r\n" % i for i in range(48000))
    msg = (b"From: Carol <carol@example.net>\r\nSubject: big %s\r\n"
           b"Date: Tue, 03 Oct 2023 10:00:00 +0000\r\n\r\n" % label.encode()) + lines
    sent0 = z.sent_raw
    ok(m.append("INBOX", None, None, msg), label + " APPEND")
    check(z.sent_raw - sent0 < len(msg) // 3, "%s: APPEND went compressed (%d of %d)"
          % (label, z.sent_raw - sent0, len(msg)))
    data = ok(m.select("INBOX"), label + " SELECT")
    n = int(data[0])
    recv0 = z.received_raw
    data = ok(m.fetch(str(n), "(BODY.PEEK[])"), label + " FETCH")
    check(data[0][1] == msg, "%s: FETCH returns the APPENDed bytes (%d vs %d)"
          % (label, len(data[0][1]), len(msg)))
    check(z.received_raw - recv0 < len(msg) // 3, "%s: FETCH came compressed (%d of %d)"
          % (label, z.received_raw - recv0, len(msg)))
    data = ok(m.search(None, 'SUBJECT "big %s"' % label), label + " SEARCH")
    check(data[0] == str(n).encode(), "%s: SEARCH %r" % (label, data))
    # IDLE, woken by mail over the SMTP intake: the server flushes its deflater per burst.
    m.send(b"I1 IDLE\r\n")
    line = m.readline()
    check(line.startswith(b"+"), "%s: IDLE continuation %r" % (label, line))
    t0 = time.time()
    deliver("wake " + label)
    z.settimeout(5)
    line = m.readline()
    check(re.match(rb"\* \d+ EXISTS", line), "%s: IDLE woken: %r" % (label, line))
    check(time.time() - t0 < 3, "%s: IDLE woken at once" % label)
    m.send(b"DONE\r\n")
    line = m.readline()
    while line.startswith(b"*"):
        line = m.readline()
    check(line.startswith(b"I1 OK"), "%s: IDLE done %r" % (label, line))
    ok(m.noop(), label + " NOOP after IDLE")
    m.logout()


if part == "session":
    session(imaplib.IMAP4(HOST, imap_port, timeout=15), "plain")
    m = imaplib.IMAP4(HOST, imap_port, timeout=15)
    ok(m.starttls(ssl_context=tls_ctx()), "STARTTLS")
    session(m, "starttls")
    session(imaplib.IMAP4_SSL(HOST, imaps_port, ssl_context=tls_ctx(), timeout=15), "imaps")
    # A command pipelined behind COMPRESS is refused and the connection closed.
    s = socket.create_connection((HOST, imap_port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN alice secret-password\r\n")
    check(f.readline().startswith(b"a OK"), "raw login")
    s.sendall(b"b COMPRESS DEFLATE\r\nc NOOP\r\n")
    rest = f.read()
    check(b"b BAD" in rest and b"BYE" in rest, "pipelined after COMPRESS: %r" % rest)
    print("ALL OK")
elif part == "bomb":
    # A line of 64 MiB of 'a' deflates to some 64 KiB: the server must not inflate it into
    # memory, and answers BAD and closes.
    m = imaplib.IMAP4(HOST, imap_port, timeout=15)
    ok(m.login("alice", "secret-password"), "login")
    z = compress(m)
    ok(m.noop(), "NOOP")
    c = z.c
    raw = c.compress(b"x1 NOOP " + b"a" * (64 << 20) + b"\r\n") + c.flush(zlib.Z_SYNC_FLUSH)
    print("bomb of", len(raw), "bytes")
    check(len(raw) < 256 * 1024, "the bomb is small: %d" % len(raw))
    z.settimeout(15)
    try:
        z.sock.sendall(raw)
    except OSError:
        pass  # the server may close before it has read it all
    got = b""
    try:
        while True:
            got += z.readline()
    except (EOFError, OSError):
        pass
    check(b"BAD line too long" in got, "bomb answered BAD: %r" % got[:300])
    check(b"* BYE" in got, "and closed: %r" % got[:300])
    # The server still serves.
    m = imaplib.IMAP4(HOST, imap_port, timeout=15)
    ok(m.login("alice", "secret-password"), "login after the bomb")
    compress(m)
    # A literal over the limit is refused as it is without compression.
    typ, data = m._simple_command("APPEND", "INBOX", "{999999999}")
    check(typ == "NO" and b"TOOBIG" in data[-1], "big literal: %s %r" % (typ, data))
    ok(m.noop(), "NOOP after the refused literal")
    m.logout()
    print("ALL OK")
"#;

fn zlib_script(t: &TestHome, node: &Node, part: &str) -> String {
    let script = t.file("compress.py", ZLIB);
    python(
        &script,
        &[
            node.imap.to_string(),
            node.imaps.to_string(),
            node.smtp.to_string(),
            t.home().join("tls/cert.pem").display().to_string(),
            part.to_string(),
        ],
    )
}

/// COMPRESS=DEFLATE through imaplib on plain IMAP, after STARTTLS and on IMAPS: APPEND a 2 MB
/// literal and FETCH it back (both ways compressed, fewer bytes on the wire), SEARCH, IDLE
/// woken by the SMTP intake (every burst flushed), a second COMPRESS refused, a pipelined
/// command behind COMPRESS refused.
#[test]
fn compress_deflate_whole_sessions_plain_starttls_imaps() {
    let t = TestHome::new();
    let node = start(&t);
    let text = zlib_script(&t, &node, "session");
    assert!(text.contains("ALL OK"), "{text}");
}

/// A compressed line that inflates to 64 MiB gets `BAD line too long` and the connection is
/// closed, without the node's memory growing by the inflated size; the node keeps serving.
#[test]
fn compress_zip_bomb_is_refused_with_bounded_memory() {
    let t = TestHome::new();
    let mut node = start(&t);
    let pid = node.run.child.id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let text = zlib_script(&t, &node, "bomb");
    assert!(text.contains("ALL OK"), "{text}");
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB on a 64 MiB zip bomb"
    );
    assert!(node.run.child.try_wait().unwrap().is_none(), "node died");
    assert!(started.elapsed() < Duration::from_secs(60));
}
