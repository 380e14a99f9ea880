//! Mail flow through real `peerpost run` processes on 127.0.0.1: submission (smtplib with
//! STARTTLS + AUTH, swaks, `peerpost send`, mutt with `sendmail="peerpost send"`) to overlay users and to an outside address via a
//! smarthost sink; a recipient offline at send time; `kill -9` right after the 250; retries
//! while the smarthost is down; a bounce (DSN) on 5xx; and the submission port's refusals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, TestHome};

pub(crate) const PASSWORD: &str = "secret-password";

pub(crate) struct Node {
    pub(crate) home: TestHome,
    pub(crate) address: String,
    pub(crate) child: Option<Child>,
    pub(crate) listen: String,
    pub(crate) pop3: u16,
    pub(crate) smtp: u16,
    pub(crate) submission: u16,
    /// `RUST_LOG` for the process (none: the binary's default, warnings only).
    pub(crate) log_filter: Option<String>,
    /// The IMAP (STARTTLS) port, when started with [`Node::start_imap`]; 0 otherwise.
    pub(crate) imap: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes `vouched` overlay addresses (docs/design.md "Address ownership"): writes a
/// `dns_records` file whose `_peerpost` TXT records name their keys, and points every node of
/// `all` at it (before they start).
pub(crate) fn vouch(all: &[&Node], vouched: &[&Node]) {
    let homes: Vec<&TestHome> = all.iter().map(|n| &n.home).collect();
    let vouched: Vec<(&TestHome, &str)> = vouched
        .iter()
        .map(|n| (&n.home, n.address.as_str()))
        .collect();
    crate::util::vouch(&homes, &vouched);
}

fn port_of(line: &str) -> u16 {
    line.trim().rsplit(':').next().unwrap().parse().unwrap()
}

impl Node {
    pub(crate) fn new(address: &str, tune: &[(&str, &str)]) -> Node {
        let home = TestHome::new();
        home.init(address);
        let path = home.path("config.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        for (from, to) in [
            ("retry_first = \"5s\"", "retry_first = \"1s\""),
            ("retry_max = \"10m\"", "retry_max = \"1s\""),
            ("collect_every = \"60s\"", "collect_every = \"2s\""),
        ]
        .iter()
        .chain(tune)
        {
            assert!(config.contains(from), "config lacks {from}");
            config = config.replace(from, to);
        }
        std::fs::write(&path, config).unwrap();
        Node {
            home,
            address: address.to_string(),
            child: None,
            listen: String::new(),
            pop3: 0,
            smtp: 0,
            submission: 0,
            log_filter: None,
            imap: 0,
        }
    }

    pub(crate) fn start(&mut self, bootstrap: Option<&str>) {
        self.spawn(bootstrap, false)
    }

    /// [`start`](Self::start) with the IMAP server on as well; returns its port.
    pub(crate) fn start_imap(&mut self, bootstrap: Option<&str>) -> u16 {
        self.spawn(bootstrap, true);
        assert!(self.imap > 0, "no imap port");
        self.imap
    }

    fn spawn(&mut self, bootstrap: Option<&str>, imap: bool) {
        let imap_listen = if imap { "127.0.0.1:0" } else { "off" };
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(self.home.home()).args([
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--pop3",
            "127.0.0.1:0",
            "--pop3s",
            "off",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--imap",
            imap_listen,
            "--imaps",
            "off",
        ]);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.env_remove("PEERPOST_HOME").env_remove("RUST_LOG");
        if let Some(f) = &self.log_filter {
            cmd.env("RUST_LOG", f);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log());
        let mut child = cmd.spawn().expect("spawn peerpost run");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "node exited early");
            if let Some(a) = line.strip_prefix("listening on ") {
                if self.listen.is_empty() || !a.contains("/udp/") {
                    self.listen = a.trim().to_string();
                }
            } else if let Some(a) = line.strip_prefix("pop3 listening on ") {
                self.pop3 = port_of(a);
            } else if let Some(a) = line.strip_prefix("smtp listening on ") {
                self.smtp = port_of(a);
            } else if let Some(a) = line.strip_prefix("submission listening on ") {
                self.submission = port_of(a);
            } else if let Some(a) = line.strip_prefix("imap listening on ") {
                self.imap = port_of(a);
            } else if line.starts_with("peerpost: node") {
                break;
            }
        }
        std::thread::spawn(move || for _ in out.lines() {});
        self.child = Some(child);
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// The node's stderr (its log), appended to by every start.
    pub(crate) fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.path("node.log"))
            .unwrap()
    }

    /// Every message in INBOX, over POP3.
    pub(crate) fn inbox(&self) -> Vec<String> {
        pop3_all(self.pop3, &self.address, PASSWORD)
    }

    pub(crate) fn cert(&self) -> PathBuf {
        self.home.path("tls/cert.pem")
    }
}

pub(crate) fn pop3_all(port: u16, user: &str, password: &str) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut cmd = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, c: &str| -> String {
        if !c.is_empty() {
            w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        }
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "{c}: {line}");
        line.clone()
    };
    cmd(&mut w, &mut r, "");
    cmd(&mut w, &mut r, &format!("USER {user}"));
    cmd(&mut w, &mut r, &format!("PASS {password}"));
    let stat = cmd(&mut w, &mut r, "STAT");
    let n: usize = stat.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut out = Vec::new();
    for i in 1..=n {
        cmd(&mut w, &mut r, &format!("RETR {i}"));
        let mut msg = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            if l == ".\r\n" || l.is_empty() {
                break;
            }
            msg.push_str(l.strip_prefix('.').unwrap_or(&l));
        }
        out.push(msg);
    }
    cmd(&mut w, &mut r, "QUIT");
    out
}

pub(crate) fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages in `inbox` containing `needle`.
pub(crate) fn count(inbox: &[String], needle: &str) -> usize {
    inbox.iter().filter(|m| m.contains(needle)).count()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Sink {
    child: Child,
    dir: PathBuf,
}

impl Sink {
    pub(crate) fn start(port: u16, dir: &Path) -> Sink {
        Sink::start_with(port, dir, &[])
    }

    /// With sink.py's options (`--starttls CERT KEY`, `--tls CERT KEY`, `--auth U:P`).
    pub(crate) fn start_with(port: u16, dir: &Path, options: &[&str]) -> Sink {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/util/sink.py");
        let mut child = Command::new("python3")
            .args([script, &port.to_string(), dir.to_str().unwrap()])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Sink {
            child,
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn messages(&self) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        v.sort();
        v.iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SUBMIT: &str = r#"
import smtplib, ssl, sys
port, cert, sender, rcpts, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(","), sys.argv[5]
msg = open(path, "rb").read()
def check(cond, what):
    if not cond:
        print("FAILED:", what); sys.exit(1)
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.ehlo("client.test")
code, _ = s.mail(sender)
check(code == 530, "MAIL before AUTH must be refused, got %d" % code)
s.rset()
ctx = ssl.create_default_context(cafile=cert); ctx.check_hostname = False
s.starttls(context=ctx)
s.ehlo("client.test")
check(s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"], "AUTH PLAIN offered")
try:
    s.login(sender, "wrong"); check(False, "a wrong password was accepted")
except smtplib.SMTPAuthenticationError as e:
    check(e.smtp_code == 535, "535 for a wrong password")
s.login(sender, "secret-password")
code, _ = s.mail("mallory@evil.test")
check(code == 553, "sending as someone else must be refused, got %d" % code)
s.rset()
refused = s.sendmail(sender, rcpts, msg)
check(refused == {}, "refused: %r" % refused)
s.quit()
print("OK")
"#;

pub(crate) fn submit(t: &TestHome, node: &Node, rcpts: &[&str], message: &str) {
    let script = t.file("submit.py", SUBMIT);
    let msg = t.file("msg.eml", message);
    let out = Command::new("python3")
        .arg(&script)
        .arg(node.submission.to_string())
        .arg(node.cert())
        .arg(&node.address)
        .arg(rcpts.join(","))
        .arg(&msg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn overlay_users_and_an_outside_address_get_the_message_once() {
    let _heavy = crate::util::one_heavy_at_a_time();
    let sink_port = free_port();
    let sink_dir = TestHome::new();
    let sink = Sink::start(sink_port, sink_dir.dir.path());
    let port_line = format!("port = {sink_port}");
    let mut alice = Node::new(
        "alice@flow.test",
        &[
            ("host = \"\"", "host = \"127.0.0.1\""),
            ("port = 587", &port_line),
            ("tls = \"starttls\"", "tls = \"none\""),
        ],
    );
    let mut bob = Node::new("bob@flow.test", &[]);
    let mut carol = Node::new("carol@flow.test", &[]);
    let mut dave = Node::new("dave@flow.test", &[]);
    vouch(
        &[&alice, &bob, &carol, &dave],
        &[&alice, &bob, &carol, &dave],
    );
    alice.start(None);
    let boot = alice.listen.clone();
    for n in [&mut bob, &mut carol, &mut dave] {
        n.start(Some(&boot));
    }
    // Every record is published before mail goes out (else: retried, slower).
    for n in [&bob, &carol, &dave] {
        eventually("the directory resolves every user", 30, || {
            let r = alice.home.run(&["lookup", &n.address]);
            r.output.status.success().then_some(())
        });
    }

    // 1. smtplib: STARTTLS + AUTH, three overlay users and one outside address.
    let t = TestHome::new();
    let body = "From: Alice <alice@flow.test>\r\nTo: bob@flow.test, carol@flow.test, dave@flow.test\r\nSubject: hello ring\r\nMessage-ID: <one@flow.test>\r\n\r\n.dot-led line\r\ncaf\u{e9} body\r\n";
    submit(
        &t,
        &alice,
        &[
            "bob@flow.test",
            "carol@flow.test",
            "dave@flow.test",
            "outside@elsewhere.example",
        ],
        body,
    );
    for n in [&bob, &carol, &dave] {
        let inbox = eventually("the overlay users have it", 30, || {
            let i = n.inbox();
            (count(&i, "<one@flow.test>") == 1).then_some(i)
        });
        let m = inbox
            .iter()
            .find(|m| m.contains("<one@flow.test>"))
            .unwrap();
        assert!(
            m.starts_with("Authentication-Results: ")
                && m.contains("peerpost=pass")
                && m.contains("smtp.mailfrom=alice@flow.test"),
            "{m}"
        );
        assert!(
            m.ends_with("Subject: hello ring\r\nMessage-ID: <one@flow.test>\r\n\r\n.dot-led line\r\ncaf\u{e9} body\r\n"),
            "headers and body intact: {m}"
        );
    }
    let out = eventually("the smarthost got the outside copy", 30, || {
        let m = sink.messages();
        (!m.is_empty()).then_some(m)
    });
    assert!(
        out[0].starts_with("X-Sink-Rcpt: outside@elsewhere.example\r\n")
            && out[0].contains("Subject: hello ring"),
        "{}",
        out[0]
    );

    // 1b. A message longer than one overlay object (9 MiB: three sealed parts) arrives whole.
    let mut big = String::from("Subject: the big one\r\nMessage-ID: <big@flow.test>\r\n\r\n");
    let mut line = 0;
    while big.len() < 9 << 20 {
        big.push_str(&format!("{line:08} {}\r\n", "x".repeat(68)));
        line += 1;
    }
    big.push_str("the end\r\n");
    submit(&t, &alice, &["dave@flow.test"], &big);
    let inbox = eventually("dave has the 9 MiB message", 60, || {
        let i = dave.inbox();
        (count(&i, "<big@flow.test>") == 1).then_some(i)
    });
    let m = inbox
        .iter()
        .find(|m| m.contains("<big@flow.test>"))
        .unwrap();
    assert!(m.contains("peerpost=pass"), "sender verified");
    assert!(m.ends_with(&big), "all {} bytes, in order", big.len());

    // 2. swaks (AUTH PLAIN over STARTTLS) to bob.
    let swaks = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", alice.submission)])
        .args([
            "--from",
            "alice@flow.test",
            "--to",
            "bob@flow.test",
            "--tls",
        ])
        .args(["--auth", "PLAIN", "--auth-user", "alice@flow.test"])
        .args(["--auth-password", PASSWORD])
        .args(["--header", "Subject: via swaks", "--body", "swaks body"])
        .output();
    let swaks_ran = swaks.is_ok();
    match swaks {
        Ok(o) => {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
            eventually("bob has the swaks message", 30, || {
                (count(&bob.inbox(), "Subject: via swaks") == 1).then_some(())
            });
        }
        Err(_) => eprintln!("swaks not installed: its part is skipped"),
    }

    // mutt in batch mode with `set sendmail="peerpost send"`, when installed.
    if Command::new("mutt").arg("-v").output().is_ok() {
        let sendmail = format!("{BIN} --home {} send", alice.home.home().display());
        let set = format!("set from=alice@flow.test record=\"\" sendmail=\"{sendmail}\"");
        let mut mutt = Command::new("mutt")
            .args(["-n", "-F", "/dev/null", "-e", &set, "-s", "via mutt"])
            .arg("bob@flow.test")
            .env("HOME", t.dir.path())
            .env_remove("PEERPOST_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        mutt.stdin
            .take()
            .unwrap()
            .write_all(b"mutt body\n")
            .unwrap();
        assert!(mutt.wait().unwrap().success(), "mutt could not send");
        eventually("bob has the mutt message", 30, || {
            (count(&bob.inbox(), "Subject: via mutt") == 1).then_some(())
        });
    }

    // 3. Bob offline at send time: `peerpost send -t` through alice's node; bob collects
    //    it from his DHT inbox when he starts.
    bob.stop();
    let sent = alice.home.run_stdin(
        &["send", "-t", "-f", "alice@flow.test"],
        Some("To: Bob <bob@flow.test>\nBcc: carol@flow.test\nSubject: while you were out\n\nhi bob\n"),
    );
    sent.success();
    eventually("carol (Bcc) has it", 30, || {
        (count(&carol.inbox(), "Subject: while you were out") == 1).then_some(())
    });
    bob.start(Some(&boot));
    let inbox = eventually("bob collects it when he starts", 30, || {
        let i = bob.inbox();
        (count(&i, "Subject: while you were out") == 1).then_some(i)
    });
    let m = inbox
        .iter()
        .find(|m| m.contains("while you were out"))
        .unwrap();
    assert!(m.contains("peerpost=pass") && !m.contains("Bcc:"), "{m}");
    assert!(m.ends_with("\r\n\r\nhi bob\r\n"), "{m}");

    // 4. kill -9 right after the 250: nothing lost, nothing twice.
    submit(
        &t,
        &alice,
        &["carol@flow.test"],
        "Subject: survives kill\r\nMessage-ID: <kill@flow.test>\r\n\r\nstill here\r\n",
    );
    alice.kill9();
    let via_bob = bob.listen.clone();
    alice.start(Some(&via_bob));
    eventually("carol has it after alice restarts", 30, || {
        (count(&carol.inbox(), "<kill@flow.test>") >= 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&carol.inbox(), "<kill@flow.test>"),
        1,
        "delivered once"
    );
    assert_eq!(count(&bob.inbox(), "<one@flow.test>"), 1, "no redelivery");
    assert_eq!(sink.messages().len(), 1, "the smarthost copy went once");

    // 5. Intake stays local: an overlay address is refused there (no open relay).
    let mut s = TcpStream::connect(("127.0.0.1", bob.smtp)).unwrap();
    let replies = chat(
        &mut s,
        &[
            "EHLO x",
            "MAIL FROM:<a@b.example>",
            "RCPT TO:<carol@flow.test>",
            "QUIT",
        ],
    );
    assert!(replies.contains("\r\n550 5.1.1"), "{replies}");

    // 6. `peerpost send` with the node down fails clearly.
    alice.stop();
    alice
        .home
        .run_stdin(&["send", "bob@flow.test"], Some("Subject: x\n\ny\n"))
        .failure(&["no node is running"]);

    // Every submitted message has its copy in alice's Sent.
    let export = t.dir.path().join("export");
    alice
        .home
        .run(&["export", export.to_str().unwrap()])
        .success();
    let sent: Vec<String> = crate::util::walk(&export.join(".Sent"))
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    for needle in [
        "<one@flow.test>",
        "Subject: via swaks",
        "while you were out",
        "<kill@flow.test>",
    ] {
        if needle.contains("swaks") && !swaks_ran {
            continue;
        }
        assert_eq!(count(&sent, needle), 1, "Sent has {needle}: {sent:?}");
    }
}

/// Sends each line (pipelined), then reads replies until the server closes.
fn chat(s: &mut TcpStream, lines: &[&str]) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for l in lines {
        s.write_all(format!("{l}\r\n").as_bytes()).unwrap();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// One command, one reply (multi-line replies read to their last line).
fn say(r: &mut BufReader<TcpStream>, w: &mut TcpStream, line: &[u8]) -> String {
    w.write_all(line).unwrap();
    w.write_all(b"\r\n").unwrap();
    let mut out = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            break;
        }
        out.push_str(&l);
        if l.len() < 4 || l.as_bytes()[3] != b'-' {
            break;
        }
    }
    out
}

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The smarthost over STARTTLS and over implicit TLS, logging in, with a relay whose
/// certificate is self-signed: refused (the message waits in the queue) until `ca_file`
/// trusts it, then delivered from the queue.
#[test]
fn smarthost_over_starttls_and_tls_logs_in_and_checks_the_certificate() {
    let relay = TestHome::new();
    relay.init("relay@relay.test");
    let (cert, key) = (relay.path("tls/cert.pem"), relay.path("tls/key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let pw = relay.file("relay-password", "s3cret pass\n");
    for (tls, flag) in [("starttls", "--starttls"), ("tls", "--tls")] {
        let sink_port = free_port();
        let sink_dir = TestHome::new();
        let sink = Sink::start_with(
            sink_port,
            sink_dir.dir.path(),
            &[flag, cert, key, "--auth", "relay-user:s3cret pass"],
        );
        let port_line = format!("port = {sink_port}");
        let tls_line = format!("tls = \"{tls}\"");
        let pw_line = format!("password_file = \"{}\"", pw.display());
        let mut alice = Node::new(
            "alice@tls.test",
            &[
                ("host = \"\"", "host = \"127.0.0.1\""),
                ("port = 587", &port_line),
                ("tls = \"starttls\"", &tls_line),
                ("user = \"\"", "user = \"relay-user\""),
                ("password_file = \"\"", &pw_line),
            ],
        );
        // Outside mail is only routed once a peer answers that the address has no record.
        let mut bob = Node::new("bob@tls.test", &[]);
        vouch(&[&alice, &bob], &[]);
        alice.start(None);
        bob.start(Some(&alice.listen.clone()));
        alice
            .home
            .run_stdin(
                &["send", "out@elsewhere.example"],
                Some(&format!("Subject: via {tls}\n\nbody\n")),
            )
            .success();
        if tls == "starttls" {
            // The relay's certificate is not from a web CA: nothing goes out, and the queue
            // says why.
            eventually("the relay's certificate is refused", 30, || {
                let log = std::fs::read_to_string(alice.home.path("node.log")).unwrap();
                log.contains("UnknownIssuer").then_some(())
            });
            assert!(sink.messages().is_empty(), "sent to an untrusted relay");
            alice.stop();
        } else {
            alice.stop();
        }
        let config = alice.home.path("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("ca_file = \"\"", &format!("ca_file = \"{cert}\"")),
        )
        .unwrap();
        alice.start(Some(&bob.listen.clone()));
        let got = eventually("the relay gets it", 30, || {
            let m = sink.messages();
            (!m.is_empty()).then_some(m)
        });
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains(&format!("X-Sink-TLS: {tls}\r\n"))
                && got[0].contains("X-Sink-Auth: relay-user\r\n")
                && got[0].contains(&format!("Subject: via {tls}")),
            "{}",
            got[0]
        );
        alice.stop();
    }
}

#[test]
fn smarthost_outage_is_retried_a_5xx_bounces_and_hostile_input_is_refused() {
    let sink_port = free_port();
    let sink_dir = TestHome::new();
    let port_line = format!("port = {sink_port}");
    let mut alice = Node::new(
        "alice@edge.test",
        &[
            ("host = \"\"", "host = \"127.0.0.1\""),
            ("port = 587", &port_line),
            ("tls = \"starttls\"", "tls = \"none\""),
            (
                "max_message_size = \"50MiB\"",
                "max_message_size = \"64KiB\"",
            ),
        ],
    );
    let mut bob = Node::new("bob@edge.test", &[]);
    // No `_peerpost` records at all: every address here is outside (and DNS is not asked).
    vouch(&[&alice, &bob], &[]);
    alice.start(None);
    bob.start(Some(&alice.listen.clone()));

    // The sink is down: the message waits in the queue, and goes once it is up.
    alice
        .home
        .run_stdin(
            &[
                "send",
                "out@elsewhere.example",
                "reject-me@elsewhere.example",
            ],
            Some("Subject: queued\n\nwaiting\n"),
        )
        .success();
    std::thread::sleep(Duration::from_secs(3));
    let sink = Sink::start(sink_port, sink_dir.dir.path());
    let got = eventually("the sink gets it after it starts", 30, || {
        let m = sink.messages();
        (!m.is_empty()).then_some(m)
    });
    assert!(got[0].contains("Subject: queued") && got[0].contains("out@elsewhere.example"));

    // The 550 for the other recipient bounces into alice's INBOX as an RFC 3464 report.
    let inbox = eventually("a DSN reaches alice", 30, || {
        let i = alice.inbox();
        (count(&i, "report-type=delivery-status") == 1).then_some(i)
    });
    let dsn = &inbox[0];
    assert!(
        dsn.contains("Final-Recipient: rfc822; reject-me@elsewhere.example")
            && dsn.contains("Action: failed")
            && dsn.contains("550")
            && dsn.contains("Subject: queued"),
        "{dsn}"
    );
    assert_eq!(
        sink.messages().len(),
        1,
        "the accepted recipient got it once"
    );

    // Hostile input on the submission port, over a raw socket.
    let s = TcpStream::connect(("127.0.0.1", alice.submission)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut greet = String::new();
    r.read_line(&mut greet).unwrap();
    assert!(greet.starts_with("220 "), "{greet}");
    assert!(say(&mut r, &mut w, b"EHLO raw.test").contains("AUTH PLAIN LOGIN"));
    let relay = say(&mut r, &mut w, b"MAIL FROM:<alice@edge.test>");
    assert!(relay.starts_with("530 "), "no open relay: {relay}");
    let long = vec![b'A'; 10_000];
    assert!(say(&mut r, &mut w, &long).starts_with("500 "));
    assert!(say(&mut r, &mut w, b"\x00\x01\xff\xfe garbage").starts_with("50"));
    assert!(
        say(&mut r, &mut w, b"NOOP").starts_with("250 "),
        "session alive"
    );
    // Guessing is throttled: each failure answers later than the one before.
    let started = Instant::now();
    for _ in 0..3 {
        let bad = b64(b"\0alice@edge.test\0guess");
        let reply = say(&mut r, &mut w, format!("AUTH PLAIN {bad}").as_bytes());
        assert!(reply.starts_with("535 "), "{reply}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "three failures took only {:?}",
        started.elapsed()
    );
    let good = b64(format!("\0alice@edge.test\0{PASSWORD}").as_bytes());
    assert!(say(&mut r, &mut w, format!("AUTH PLAIN {good}").as_bytes()).starts_with("235 "));
    let big = say(&mut r, &mut w, b"MAIL FROM:<alice@edge.test> SIZE=100000");
    assert!(big.starts_with("552 "), "over SIZE: {big}");
    assert!(say(&mut r, &mut w, b"MAIL FROM:<alice@edge.test>").starts_with("250 "));
    assert!(say(&mut r, &mut w, b"RCPT TO:<bob@edge.test>").starts_with("250 "));
    assert!(say(&mut r, &mut w, b"DATA").starts_with("354 "));
    let mut data = b"Subject: too big\r\n\r\n".to_vec();
    for _ in 0..1000 {
        data.extend_from_slice(&[b'x'; 100]);
        data.extend_from_slice(b"\r\n");
    }
    w.write_all(&data).unwrap();
    assert!(
        say(&mut r, &mut w, b".").starts_with("552 "),
        "over SIZE in DATA"
    );
    assert!(say(&mut r, &mut w, b"QUIT").starts_with("221 "));
    assert_eq!(count(&bob.inbox(), "too big"), 0);
}

#[test]
fn demo_delivers_the_welcome_and_stops_on_ctrl_c() {
    let t = TestHome::new();
    let dir = t.dir.path().join("ring");
    let mut child = Command::new(BIN)
        .args(["demo", "--nodes", "3", "--dir", dir.to_str().unwrap()])
        .env_remove("PEERPOST_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut pop3 = None;
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "demo ended early: {seen}"
        );
        seen.push_str(&line);
        if let Some(p) = line.trim().strip_prefix("POP3:  127.0.0.1:") {
            pop3 = p.parse::<u16>().ok();
        }
        if line.contains("runs until Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("in bob's INBOX"), "{seen}");
    // What it prints works: bob's POP3 serves the welcome, verified as alice's.
    let inbox = pop3_all(pop3.unwrap(), "bob@demo.test", "bob-password");
    assert_eq!(inbox.len(), 1);
    assert!(
        inbox[0].contains("Subject: Welcome to peerpost")
            && inbox[0].contains("peerpost=pass")
            && inbox[0].contains("smtp.mailfrom=alice@demo.test"),
        "{}",
        inbox[0]
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success() && rest.contains("stopped"), "{rest}");
}
