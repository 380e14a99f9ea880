//! The POP3 server against real clients: Python's poplib over plain TCP, STLS and implicit
//! TLS, every command with assertions on the answers; then hostile input over a raw socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use peerpost::mailbox::{Flags, NewMessage};
use peerpost::pop3;
use peerpost::server::Limits;
use peerpost::server::auth::Authenticator;

use crate::util::{Engine, Running, TestHome};

struct Server {
    plain: SocketAddr,
    tls: SocketAddr,
    cert: std::path::PathBuf,
    engine: Engine,
    _running: Running,
}

fn start(t: &TestHome, messages: &[&str]) -> Server {
    let engine = Engine::open(t);
    for (i, m) in messages.iter().enumerate() {
        engine
            .rt
            .block_on(engine.mailbox.append(
                "INBOX",
                NewMessage {
                    bytes: m.as_bytes().to_vec(),
                    internal_date: 1_700_000_000 + i as i64,
                    flags: Flags::default(),
                    recent: true,
                    maildir_name: None,
                },
            ))
            .unwrap();
    }
    let hash_home = engine.home.clone();
    let auth = Arc::new(Authenticator::new(
        "alice@example.org",
        Arc::new(move || hash_home.load_password_hash().ok()),
    ));
    let ctx = pop3::Context {
        mailbox: engine.mailbox.clone(),
        auth,
        tls: Some(engine.acceptor()),
    };
    let (l1, plain) = engine.listener();
    let (l2, tls) = engine.listener();
    let limits = Limits {
        max_sessions: 8,
        ..Limits::default()
    };
    let running = Running::start(&engine.rt, move |shutdown| async move {
        tokio::join!(
            pop3::serve(l1, ctx.clone(), false, limits.clone(), shutdown.clone()),
            pop3::serve(l2, ctx, true, limits, shutdown)
        );
    });
    Server {
        plain,
        tls,
        cert: engine.home.tls_cert(),
        engine,
        _running: running,
    }
}

const SCRIPT: &str = r#"
import poplib, ssl, sys
plain, tls, cert = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cert)
ctx.check_hostname = False

def check(cond, what):
    if not cond:
        print("FAILED:", what); sys.exit(1)

# Plain TCP on loopback: capabilities, a wrong password, then the real one.
p = poplib.POP3("127.0.0.1", plain, timeout=10)
check(p.getwelcome().startswith(b"+OK"), "greeting")
caps = p.capa()
for c in ["TOP", "UIDL", "USER", "STLS", "RESP-CODES"]:
    check(c in caps, "CAPA " + c)
p.user("alice")
try:
    p.pass_("wrong"); check(False, "wrong password accepted")
except poplib.error_proto as e:
    check(b"[AUTH]" in e.args[0], "AUTH code on bad password")
p.user("alice@example.org")
check(p.pass_("secret-password").startswith(b"+OK 3"), "login")
count, size = p.stat()
check(count == 3, "STAT count %d" % count)
resp, listing, _ = p.list()
check(len(listing) == 3 and listing[0].startswith(b"1 "), "LIST")
check(p.list(2).startswith(b"+OK 2 "), "LIST 2")
resp, uidls, _ = p.uidl()
ids = [u.split()[1] for u in uidls]
check(len(set(ids)) == 3, "UIDL unique")
resp, lines, octets = p.retr(1)
check(b"Subject: first" in lines and b".starts with a dot" in lines, "RETR 1 (dot-unstuffed)")
resp, lines, _ = p.top(2, 1)
check(lines[-1] == b"body line 1" and b"body line 2" not in lines, "TOP 2 1: %r" % lines)
p.dele(1)
try:
    p.retr(1); check(False, "RETR of a deleted message")
except poplib.error_proto:
    pass
check(p.stat()[0] == 2, "STAT after DELE")
p.rset()
check(p.stat()[0] == 3, "RSET restores")
p.dele(3)
p.noop()
p.quit()

# STLS upgrades the plain connection; UIDs are stable across sessions; DELE took effect.
p = poplib.POP3("127.0.0.1", plain, timeout=10)
p.stls(context=ctx)
p.user("alice"); p.pass_("secret-password")
check(p.stat()[0] == 2, "QUIT expunged the deleted message")
resp, uidls2, _ = p.uidl()
check([u.split()[1] for u in uidls2] == ids[:2], "UIDL stable across sessions")
p.quit()

# Implicit TLS (POP3S).
p = poplib.POP3_SSL("127.0.0.1", tls, context=ctx, timeout=10)
check("STLS" not in p.capa(), "no STLS inside TLS")
p.user("alice"); p.pass_("secret-password")
check(p.stat()[0] == 2, "POP3S sees the mailbox")
p.quit()
print("OK")
"#;

#[test]
fn poplib_covers_every_command_over_plain_stls_and_tls() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let server = start(
        &t,
        &[
            "Subject: first\n\n.starts with a dot\nend\n",
            "Subject: second\n\nbody line 1\nbody line 2\n",
            "Subject: third\n\nbye\n",
        ],
    );
    let script = t.file("pop.py", SCRIPT);
    let out = Command::new("python3")
        .arg(&script)
        .arg(server.plain.port().to_string())
        .arg(server.tls.port().to_string())
        .arg(&server.cert)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The engine agrees: message 3 was expunged by QUIT.
    let left: Vec<String> = server
        .engine
        .inbox()
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|m| !m.contains("third")));
}

fn raw(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (r, s)
}

fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

#[test]
fn hostile_input_gets_errors_and_harms_nothing() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let server = start(&t, &["Subject: x\n\ny\n"]);
    let (mut r, mut w) = raw(server.plain);
    assert!(reply(&mut r).starts_with("+OK"));
    // Garbage, a 100 kB line, commands in the wrong state, non-ASCII.
    w.write_all(b"HELLO\r\n").unwrap();
    assert!(reply(&mut r).starts_with("-ERR unknown"));
    w.write_all(&vec![b'A'; 100_000]).unwrap();
    w.write_all(b"\r\n").unwrap();
    assert!(reply(&mut r).starts_with("-ERR line too long"));
    w.write_all(b"RETR 1\r\n").unwrap();
    assert!(reply(&mut r).starts_with("-ERR log in first"));
    w.write_all(b"PASS before-user\r\n").unwrap();
    assert!(reply(&mut r).starts_with("-ERR USER first"));
    w.write_all("USER \u{e9}l\u{e8}ve\r\n".as_bytes()).unwrap();
    assert!(
        reply(&mut r).starts_with("+OK"),
        "a user name is only text to compare"
    );
    w.write_all(b"RETR 99999999999\r\n").unwrap();
    assert!(reply(&mut r).starts_with("-ERR"));
    // 1,000 pipelined commands are answered in order.
    let mut burst = Vec::new();
    for _ in 0..1000 {
        burst.extend_from_slice(b"NOOP\r\n");
    }
    w.write_all(&burst).unwrap();
    for _ in 0..1000 {
        assert_eq!(reply(&mut r), "+OK\r\n");
    }
    w.write_all(b"USER alice\r\nPASS secret-password\r\nRETR 2\r\nRETR 1\r\n")
        .unwrap();
    assert!(reply(&mut r).starts_with("+OK"));
    assert!(reply(&mut r).starts_with("+OK 1 messages"));
    assert!(reply(&mut r).starts_with("-ERR no such message"));
    assert!(reply(&mut r).starts_with("+OK"));
    let mut msg = String::new();
    loop {
        let l = reply(&mut r);
        if l == ".\r\n" {
            break;
        }
        msg.push_str(&l);
    }
    assert_eq!(msg, "Subject: x\r\n\r\ny\r\n");
    // A client that vanishes mid-command harms nothing; the server still serves.
    w.write_all(b"RETR").unwrap();
    drop(w);
    drop(r);
    let (mut r2, mut w2) = raw(server.plain);
    assert!(reply(&mut r2).starts_with("+OK"));
    w2.write_all(b"QUIT\r\n").unwrap();
    assert!(reply(&mut r2).starts_with("+OK"));
    let mut rest = Vec::new();
    let _ = r2.read_to_end(&mut rest);
}

#[test]
fn a_brute_force_is_throttled() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let server = start(&t, &[]);
    let (mut r, mut w) = raw(server.plain);
    assert!(reply(&mut r).starts_with("+OK"));
    let started = std::time::Instant::now();
    for i in 0..4 {
        w.write_all(format!("USER alice\r\nPASS guess{i}\r\n").as_bytes())
            .unwrap();
        assert!(reply(&mut r).starts_with("+OK"));
        assert!(reply(&mut r).contains("[AUTH]"));
    }
    // Each failure delays the next answer more (0.5 + 1 + 2 + 4 s): guessing is slow.
    assert!(
        started.elapsed() >= Duration::from_millis(3000),
        "{:?}",
        started.elapsed()
    );
}
