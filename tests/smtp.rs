//! The SMTP intake against Python's smtplib (plain and STARTTLS) and swaks when installed, then
//! hostile input over a raw socket: every accepted message is in INBOX byte for byte (after the
//! Return-Path and Received lines the intake adds), nothing else is.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use peerpost::server::Limits;
use peerpost::smtp;

use crate::util::{Engine, Running, TestHome};

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    cert: std::path::PathBuf,
    pub(crate) engine: Engine,
    _running: Running,
}

pub(crate) fn start(t: &TestHome, max: u64) -> Server {
    let engine = Engine::open(t);
    let ctx = smtp::Context {
        mailbox: engine.mailbox.clone(),
        local: vec!["alice@example.org".into()],
        hostname: "node.test".into(),
        max_message_size: max,
        tls: Some(engine.acceptor()),
        mode: smtp::Mode::Intake { verify: None },
        spool: None,
    };
    let (listener, addr) = engine.listener();
    let running = Running::start(&engine.rt, move |shutdown| {
        smtp::serve(listener, ctx, Limits::default(), shutdown)
    });
    Server {
        addr,
        cert: engine.home.tls_cert(),
        engine,
        _running: running,
    }
}

const SCRIPT: &str = r#"
import smtplib, ssl, sys
port, cert = int(sys.argv[1]), sys.argv[2]
def check(cond, what):
    if not cond:
        print("FAILED:", what); sys.exit(1)
msg1 = b"From: bob@example.net\r\nTo: alice@example.org\r\nSubject: plain\r\n\r\n.leading dot\r\nline\r\n"
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
code, caps = s.ehlo("client.test")
check(code == 250, "EHLO")
for ext in ["pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "starttls"]:
    check(s.has_extn(ext), "EHLO lists " + ext)
refused = s.sendmail("bob@example.net", ["alice@example.org", "carol@elsewhere.example"], msg1)
check(list(refused.keys()) == ["carol@elsewhere.example"] and refused["carol@elsewhere.example"][0] == 550, "non-local refused: %r" % refused)
try:
    s.sendmail("bob@example.net", ["nobody@elsewhere.example"], msg1); check(False, "all refused must raise")
except smtplib.SMTPRecipientsRefused:
    pass
big = b"Subject: big\r\n\r\n" + b"x" * 70000 + b"\r\n"
try:
    s.sendmail("bob@example.net", ["alice@example.org"], big); check(False, "over SIZE accepted")
except smtplib.SMTPSenderRefused as e:
    check(e.smtp_code == 552, "552 for SIZE")
s.quit()

# STARTTLS, 8-bit and UTF-8 content.
ctx = ssl.create_default_context(cafile=cert); ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.starttls(context=ctx)
s.ehlo("client.test")
check(not s.has_extn("starttls"), "no STARTTLS inside TLS")
msg2 = "From: bob@example.net\r\nSubject: caf\u00e9\r\n\r\nna\u00efve \u00e9t\u00e9\r\n".encode("utf-8")
s.sendmail("bob@example.net", ["Alice@Example.org"], msg2, mail_options=["BODY=8BITMIME"])
s.quit()
print("OK")
"#;

#[test]
fn smtplib_delivers_into_inbox_and_is_refused_where_it_should_be() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let server = start(&t, 64 * 1024);
    let script = t.file("smtp.py", SCRIPT);
    let out = Command::new("python3")
        .arg(&script)
        .arg(server.addr.port().to_string())
        .arg(&server.cert)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inbox = server.engine.inbox();
    assert_eq!(inbox.len(), 2, "only the two accepted messages");
    let text = |m: &[u8]| String::from_utf8_lossy(m).into_owned();
    let first = text(&inbox[0]);
    assert!(
        first.starts_with(
            "Return-Path: <bob@example.net>\r\nReceived: from client.test ([127.0.0.1])"
        ),
        "{first}"
    );
    assert!(
        inbox[0].ends_with(b"From: bob@example.net\r\nTo: alice@example.org\r\nSubject: plain\r\n\r\n.leading dot\r\nline\r\n"),
        "byte for byte after the trace lines (dot unstuffed): {first}"
    );
    assert!(text(&inbox[1]).contains("with ESMTPS"));
    assert!(inbox[1].ends_with("na\u{ef}ve \u{e9}t\u{e9}\r\n".as_bytes()));
}

#[test]
fn swaks_delivers_when_installed() {
    if Command::new("swaks").arg("--version").output().is_err() {
        eprintln!("skipped: swaks is not installed (scripts/setup --test installs it)");
        return;
    }
    let t = TestHome::new();
    t.init("alice@example.org");
    let server = start(&t, 1024 * 1024);
    let out = Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", server.addr.port()),
            "--to",
            "alice@example.org",
        ])
        .args([
            "--from",
            "swaks@example.net",
            "--header",
            "Subject: via swaks",
            "--tls",
            "--tls-verify",
        ])
        .arg("--tls-ca-path")
        .arg(&server.cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let inbox = server.engine.inbox();
    assert_eq!(inbox.len(), 1);
    assert!(String::from_utf8_lossy(&inbox[0]).contains("Subject: via swaks"));
}

pub(crate) fn raw(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

pub(crate) fn reply(r: &mut BufReader<TcpStream>) -> String {
    // The last line of a (possibly multi-line) reply.
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l.len() < 4 || l.as_bytes()[3] != b'-' {
            return l;
        }
    }
}

#[test]
fn hostile_input_gets_errors_and_nothing_half_received_is_stored() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let server = start(&t, 4096);
    let (mut r, mut w) = raw(server.addr);
    assert!(reply(&mut r).starts_with("220"));
    w.write_all(b"GARBAGE\r\n").unwrap();
    assert!(reply(&mut r).starts_with("500"));
    w.write_all(b"MAIL FROM:<a@b>\r\n").unwrap();
    assert!(reply(&mut r).starts_with("503"), "EHLO first");
    w.write_all(&vec![b'X'; 100_000]).unwrap();
    w.write_all(b"\r\n").unwrap();
    assert!(reply(&mut r).starts_with("500"), "a 100 kB line");
    w.write_all(b"EHLO x\r\n").unwrap();
    assert!(reply(&mut r).starts_with("250"));
    w.write_all(b"DATA\r\n").unwrap();
    assert!(reply(&mut r).starts_with("503"), "DATA before RCPT");
    // Pipelined envelope, then a message over the limit: refused after its end, not stored.
    w.write_all(b"MAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        .unwrap();
    assert!(reply(&mut r).starts_with("250"));
    assert!(reply(&mut r).starts_with("250"));
    assert!(reply(&mut r).starts_with("354"));
    for _ in 0..100 {
        w.write_all(&[b'y'; 100]).unwrap();
        w.write_all(b"\r\n").unwrap();
    }
    w.write_all(b".\r\n").unwrap();
    let l = reply(&mut r);
    assert!(l.starts_with("552"), "{l}");
    // A client that vanishes mid-DATA: nothing was acknowledged, nothing is stored.
    w.write_all(b"MAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nSubject: half\r\n\r\nhalf a mess").unwrap();
    let l = reply(&mut r);
    assert!(l.starts_with("250"), "{l}");
    assert!(reply(&mut r).starts_with("250"));
    assert!(reply(&mut r).starts_with("354"));
    drop(w);
    drop(r);
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.engine.inbox().is_empty());
    // The server is unharmed: a proper message still goes through.
    let (mut r, mut w) = raw(server.addr);
    assert!(reply(&mut r).starts_with("220"));
    w.write_all(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        .unwrap();
    assert!(reply(&mut r).starts_with("250"));
    assert!(reply(&mut r).starts_with("250"));
    assert!(reply(&mut r).starts_with("250"));
    assert!(reply(&mut r).starts_with("354"));
    w.write_all(b"Subject: ok\r\n\r\nfine\r\n.\r\nQUIT\r\n")
        .unwrap();
    assert!(reply(&mut r).starts_with("250 2.0.0"));
    assert!(reply(&mut r).starts_with("221"));
    assert_eq!(server.engine.inbox().len(), 1);
}
