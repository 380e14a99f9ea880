//! Crash safety of the store, through the real binary: a `peerpost run` node takes mail on its
//! SMTP intake, which answers 250 only once a message is durably stored; the test SIGKILLs the
//! node while messages are still streaming in, reopens the store, and checks that every
//! acknowledged message is there, byte for byte, and that nothing in the store is corrupt.
//! Three rounds, so the store also survives repeated crashes. (redb's crash tests separate
//! "written" from "made durable" the same way.)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, Engine, TestHome};

/// A running node, killed (SIGKILL) and reaped when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a node with only the SMTP intake; returns it and the intake's address.
fn start_node(t: &TestHome) -> (Node, String) {
    let child = Command::new(BIN)
        .arg("--home")
        .arg(t.home())
        .args(["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--pop3", "off", "--pop3s", "off", "--smtp", "127.0.0.1:0"])
        .args(["--imap", "off", "--imaps", "off"])
        .args(["--submission", "off"])
        .env_remove("PEERPOST_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut node = Node(child);
    let mut out = BufReader::new(node.0.stdout.take().unwrap());
    let started = Instant::now();
    loop {
        let mut line = String::new();
        let read = out.read_line(&mut line).unwrap_or(0);
        assert!(
            read > 0 && started.elapsed() < Duration::from_secs(30),
            "the node did not start"
        );
        if let Some(addr) = line.strip_prefix("smtp listening on ") {
            // Keep draining stdout so the node never blocks on a full pipe.
            std::thread::spawn(move || for _ in out.lines() {});
            return (node, addr.trim().to_string());
        }
    }
}

fn message(n: usize) -> String {
    format!(
        "Subject: crash test {n}\r\n\r\n{}\r\n",
        "x".repeat(n * 37 % 20_000)
    )
}

/// Sends messages one after another until `kill_after` are acknowledged, then SIGKILLs the
/// node while the next one is in flight. Returns the numbers of the acknowledged messages and
/// of the one in flight.
fn stream_and_kill(node: Node, addr: &str, first: usize, kill_after: usize) -> (Vec<usize>, usize) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let reply = |r: &mut BufReader<TcpStream>| loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            return String::new();
        }
        if l.len() < 4 || l.as_bytes()[3] != b'-' {
            return l;
        }
    };
    assert!(reply(&mut r).starts_with("220"));
    w.write_all(b"EHLO crash.test\r\n").unwrap();
    assert!(reply(&mut r).starts_with("250"));
    let mut acked = Vec::new();
    for n in first.. {
        if acked.len() == kill_after {
            // The next message is on its way when the node dies: it must not half-exist.
            let _ = w.write_all(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
            let _ = w.write_all(message(n).as_bytes());
            drop(node); // SIGKILL, then reaped
            return (acked, n);
        }
        w.write_all(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
            .unwrap();
        assert!(reply(&mut r).starts_with("250"));
        assert!(reply(&mut r).starts_with("250"));
        assert!(reply(&mut r).starts_with("354"));
        w.write_all(message(n).as_bytes()).unwrap();
        w.write_all(b".\r\n").unwrap();
        if reply(&mut r).starts_with("250") {
            acked.push(n);
        }
    }
    unreachable!()
}

#[test]
fn sigkill_mid_write_loses_no_acknowledged_message() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let mut acked = Vec::new();
    let mut next = 0;
    for round in 0..3 {
        let (node, addr) = start_node(&t);
        // Kill after a varying number of messages, so the kill lands at different points.
        let (got, in_flight) = stream_and_kill(node, &addr, next, 30 + round * 17);
        next = in_flight + 1;
        acked.extend(got);
    }

    // Reopen the store, as the next start of the node would.
    let engine = Engine::open(&t);
    let inbox: Vec<String> = engine
        .inbox()
        .into_iter()
        .map(|m| String::from_utf8(m).unwrap())
        .collect();
    for n in &acked {
        let body = message(*n);
        assert!(
            inbox.iter().any(|m| m.ends_with(&body)),
            "acknowledged message {n} lost"
        );
    }
    // At most the in-flight message of each round may be there too, whole.
    assert!(inbox.len() >= acked.len() && inbox.len() <= acked.len() + 3);
    assert!(
        inbox
            .iter()
            .all(|m| m.contains("Subject: crash test ") && m.ends_with("\r\n"))
    );
    // Nothing in the store is corrupt (reads re-check every object's hash), and the byte
    // counter agrees with the contents.
    let store = engine.mailbox.store().clone();
    let (bytes, count) = engine.rt.block_on(async {
        let mut bytes = 0u64;
        let ids = store.object_ids().await.unwrap();
        for id in &ids {
            bytes += store
                .get_object(*id)
                .await
                .unwrap()
                .unwrap()
                .as_bytes()
                .len() as u64;
        }
        (bytes, ids.len() as u64)
    });
    let stats = engine.rt.block_on(store.stats()).unwrap();
    assert_eq!(stats.objects, count);
    assert_eq!(
        stats.object_bytes, bytes,
        "byte counter out of step with contents"
    );
}
