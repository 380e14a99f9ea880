//! Five real `peerpost run` processes on 127.0.0.1 (ports chosen by the system), bootstrapped
//! from the first: each one's `status --json` shows the others, a `lookup` resolves across
//! processes, and SIGTERM stops each cleanly.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, TestHome};

pub(crate) struct Running {
    pub(crate) home: TestHome,
    pub(crate) child: Child,
    pub(crate) listen: String,
}

/// `run` on a free loopback port, overlay only (the mail servers are tested elsewhere).
const RUN: [&str; 16] = [
    "run",
    "--no-mdns",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--pop3",
    "off",
    "--pop3s",
    "off",
    "--smtp",
    "off",
    "--imap",
    "off",
    "--imaps",
    "off",
    "--submission",
    "off",
];

pub(crate) fn start(home: TestHome, bootstrap: Option<&str>) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.arg("--home").arg(home.home()).args(RUN);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    cmd.env_remove("PEERPOST_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn peerpost run");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let listen = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    Running {
        home,
        child,
        listen,
    }
}

pub(crate) fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_for(what, Duration::from_secs(60), f)
}

/// [`eventually`] with a deadline of its own.
pub(crate) fn eventually_for<T>(what: &str, wait: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn five_processes_see_each_other_and_resolve_addresses() {
    let homes: Vec<TestHome> = (0..5)
        .map(|i| {
            let h = TestHome::new();
            h.init(&format!("user{i}@procs.test"));
            h
        })
        .collect();
    let mut homes = homes.into_iter();
    let first = start(homes.next().unwrap(), None);
    let mut nodes = vec![first];
    let boot = nodes[0].listen.clone();
    for h in homes {
        nodes.push(start(h, Some(&boot)));
    }
    let peer_ids: Vec<String> = nodes
        .iter()
        .map(|n| n.listen.rsplit('/').next().unwrap().to_string())
        .collect();

    for (i, n) in nodes.iter().enumerate() {
        let others: HashSet<&String> = peer_ids.iter().filter(|p| **p != peer_ids[i]).collect();
        let status = eventually("status shows the other four nodes", || {
            let s = n.home.run(&["status", "--json"]).success().json();
            let node = s.get("node")?.clone();
            let connected: HashSet<String> = node
                .get("connected")?
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            others.iter().all(|o| connected.contains(*o)).then_some(s)
        });
        // The fields the foundation's status had are still there.
        assert_eq!(status["address"], format!("user{i}@procs.test"));
        assert_eq!(status["config_ok"], true);
        assert_eq!(status["node"]["peer_id"], peer_ids[i]);
    }

    // The last node resolves the first node's address to the first node's keys.
    let want = nodes[0]
        .home
        .run(&["key", "show", "--json"])
        .success()
        .json()["user_fingerprint"]
        .clone();
    let found = eventually("lookup across processes", || {
        let r = nodes[4].home.run(&["lookup", "user0@procs.test", "--json"]);
        r.output.status.success().then(|| r.json())
    });
    assert_eq!(found["user_fingerprint"], want);
    assert_eq!(found["address"], "user0@procs.test");

    // An unknown address is an error, not a hang.
    nodes[4]
        .home
        .run(&["lookup", "nobody@procs.test"])
        .failure(&["no directory record"]);

    // The control socket refuses an overlong request line and keeps serving.
    {
        use std::io::{Read, Write};
        let mut sock =
            std::os::unix::net::UnixStream::connect(nodes[2].home.path("control.sock")).unwrap();
        sock.write_all(&vec![b'x'; 10_000]).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reply = String::new();
        let _ = sock.read_to_string(&mut reply);
        assert!(reply.contains("too long"), "{reply:?}");
        nodes[2].home.run(&["status", "--json"]).success();
    }

    for n in &mut nodes {
        unsafe { libc::kill(n.child.id() as i32, libc::SIGTERM) };
    }
    for n in &mut nodes {
        let status = n.child.wait().unwrap();
        assert!(status.success(), "peerpost run exited with {status}");
        assert!(!n.home.path("control.sock").exists(), "control socket left");
        let s = n.home.run(&["status", "--json"]).success().json();
        assert!(s["node"].is_null(), "a stopped node shows as not running");
    }
}

#[test]
fn run_needs_the_passphrase_and_refuses_a_second_node_in_one_home() {
    let t = TestHome::new();
    let pass = t.file("pass", "correct horse battery staple\n");
    let pw = t.file("pw", "pw\n");
    t.run(&[
        "init",
        "--address",
        "erin@procs.test",
        "--password-file",
        pw.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ])
    .success();
    t.run(&RUN)
        .failure(&["passphrase-protected", "--passphrase-file"]);

    let mut cmd = Command::new(BIN);
    cmd.arg("--home")
        .arg(t.home())
        .args(RUN)
        .args(["--passphrase-file", pass.to_str().unwrap()]);
    cmd.env_remove("PEERPOST_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    std::thread::spawn(move || for _ in out.lines() {});
    let s = eventually("status shows the running node", || {
        let s = t.run(&["status", "--json"]).success().json();
        (!s["node"].is_null()).then_some(s)
    });
    assert_eq!(s["node"]["address"], "erin@procs.test");

    t.run(&[&RUN[..], &["--passphrase-file", pass.to_str().unwrap()]].concat())
        .failure(&["already running"]);

    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
}
