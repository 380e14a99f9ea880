//! Hostile clients against the real listeners of `peerpost run` (issue #18, items 5–9): memory
//! before login, deeply nested MIME, sequence sets, SMTP DATA, slots and timeouts, shutdown,
//! login throttling. Each test drives raw TCP and measures the child (its VmHWM, its exit).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::{RunNode, TestHome};

/// A node with the given listeners on 127.0.0.1 (`"imap"`, `"smtp"`, …).
fn node(t: &TestHome, on: &[&str]) -> RunNode {
    t.init("alice@example.org");
    let on: Vec<(&str, &str)> = on.iter().map(|w| (*w, "127.0.0.1:0")).collect();
    RunNode::start(t, &on, &[])
}

/// A field of the child's /proc status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(run: &RunNode, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", run.child.id())).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {s}"))
}

/// A raw line-based client.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.r.get_mut().write_all(b)
    }

    /// One line, or "" at EOF / on a reset.
    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.r.read_line(&mut l);
        l
    }

    /// Lines until one starts with `prefix` (returned); panics at EOF.
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "connection closed before {prefix:?}");
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    /// Everything up to EOF (or the read timeout).
    fn rest(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.r.read_to_end(&mut v);
        v
    }
}

// ----- item 5: memory before login -----

/// 64 pre-login `LOGIN {50 MiB+}` literals used to zero-fill 50 MiB each at once.
#[test]
fn prelogin_literals_do_not_allocate_their_declared_length() {
    let t = TestHome::new();
    let run = node(&t, &["imap"]);
    let port = run.port("imap");
    let mut clients: Vec<Client> = (0..64)
        .map(|_| {
            let mut c = Client::connect(port);
            assert!(c.line().starts_with("* OK"));
            c.send(b"a LOGIN {52428800+}\r\n").unwrap();
            // A few bytes of it, then silence: the literal is "on its way".
            c.send(&[b'x'; 1000]).unwrap();
            c
        })
        .collect();
    // The old code zero-filled each declared length as soon as the line arrived.
    std::thread::sleep(Duration::from_secs(1));
    let hwm = status_kib(&run, "VmHWM");
    assert!(hwm < 512 * 1024, "peak RSS {} MiB", hwm / 1024);
    for c in &mut clients {
        let l = c.line();
        assert!(
            l.is_empty()
                || (l.starts_with("a BAD") || l.starts_with("a NO")) && l.contains("TOOBIG"),
            "{l}"
        );
    }
    let hwm = status_kib(&run, "VmHWM");
    assert!(hwm < 512 * 1024, "peak RSS {} MiB", hwm / 1024);
    // A synchronizing one is refused before the `+`, and the session goes on.
    let mut c = Client::connect(port);
    c.line();
    c.send(b"b LOGIN {100000}\r\n").unwrap();
    let l = c.line();
    assert!(l.starts_with("b NO [TOOBIG]"), "{l}");
    c.send(b"c LOGIN alice {15}\r\n").unwrap();
    assert!(c.line().starts_with('+'));
    c.send(b"secret-password\r\n").unwrap();
    assert!(c.until("c ").starts_with("c OK"));
    // After login, literals up to the message limit are taken again (a 1 MiB APPEND).
    c.send(b"d APPEND INBOX {1048600+}\r\n").unwrap();
    let mut msg = b"Subject: big\r\n\r\n".to_vec();
    msg.resize(1048600, b'y');
    c.send(&msg).unwrap();
    c.send(b"\r\n").unwrap();
    let l = c.until("d ");
    assert!(l.starts_with("d OK"), "{l}");
}
