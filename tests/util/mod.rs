//! Test helpers: a temporary home and a builder for running the real binary in it.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_peerpost");

/// A temporary directory with a peerpost home inside.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> TestHome {
        TestHome {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.home().join(rel)
    }

    /// Writes a file beside the home (for --password-file and friends).
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        p
    }

    /// `peerpost --home HOME args…` with stdin closed.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run_bin(&self.home(), args, stdin)
    }

    /// init with a password file; panics if it fails.
    pub fn init(&self, address: &str) -> Run {
        let pw = self.file("pw", "secret-password\n");
        let run = self
            .run(&[
                "init",
                "--address",
                address,
                "--password-file",
                pw.to_str().unwrap(),
            ])
            .success();
        // Several test nodes run at once: each serves metrics on a port of its own, not 9464.
        let config = self.path("config.toml");
        if let Ok(text) = std::fs::read_to_string(&config) {
            let text = text.replace("metrics = \"127.0.0.1:9464\"", "metrics = \"127.0.0.1:0\"");
            std::fs::write(&config, text).expect("config");
        }
        run
    }
}

pub fn run_bin(home: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("--home").arg(home).args(args);
    cmd.env_remove("PEERPOST_HOME").env_remove("RUST_LOG");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn peerpost");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let output = child.wait_with_output().expect("wait");
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        output,
    }
}

/// The result of one run of the binary, with assertions that print everything on failure.
pub struct Run {
    pub args: Vec<String>,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn success(self) -> Run {
        assert!(
            self.output.status.success(),
            "peerpost {:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Asserts failure with a message on stderr containing every one of `needles`.
    pub fn failure(self, needles: &[&str]) -> Run {
        assert!(
            !self.output.status.success(),
            "peerpost {:?} should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout(),
            self.stderr()
        );
        let err = self.stderr();
        for n in needles {
            assert!(
                err.contains(n),
                "stderr of {:?} lacks {n:?}:\n{err}",
                self.args
            );
        }
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout()))
    }
}

pub fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The engine of a TestHome opened in this process, with a runtime to drive it.
pub struct Engine {
    pub rt: std::sync::Arc<tokio::runtime::Runtime>,
    pub mailbox: peerpost::mailbox::Mailbox,
    pub home: peerpost::home::Home,
}

impl Engine {
    pub fn open(t: &TestHome) -> Engine {
        let home = peerpost::home::Home::new(t.home());
        let rt = std::sync::Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        );
        let (_, _, device) = home.load_identity_keys().unwrap();
        let keys = home.load_user_keys(None).unwrap();
        let store = peerpost::store::Store::open(&home.store()).unwrap();
        let mailbox = rt
            .block_on(peerpost::mailbox::Mailbox::open(store, keys, device))
            .unwrap();
        Engine { rt, mailbox, home }
    }

    pub fn acceptor(&self) -> peerpost::tls::Acceptor {
        peerpost::tls::Acceptor::load(&self.home.tls_cert(), &self.home.tls_key()).unwrap()
    }

    /// Binds a listener on 127.0.0.1:0.
    pub fn listener(&self) -> (tokio::net::TcpListener, std::net::SocketAddr) {
        let l = self
            .rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// The bytes of every INBOX message, by UID.
    pub fn inbox(&self) -> Vec<Vec<u8>> {
        self.mailbox
            .messages("INBOX")
            .unwrap()
            .into_iter()
            .map(|m| {
                self.rt
                    .block_on(self.mailbox.read(m.entry))
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }
}

/// Runs server futures on a thread until dropped (cancels, then joins).
pub struct Running {
    pub shutdown: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start<F>(
        rt: &std::sync::Arc<tokio::runtime::Runtime>,
        make: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
    ) -> Running
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let fut = make(shutdown.clone());
        let rt = std::sync::Arc::clone(rt);
        let thread = std::thread::spawn(move || rt.block_on(fut));
        Running {
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Real mutt in a private tmux server, reading a Maildir; the server is killed on drop.
pub struct Mutt {
    sock: String,
}

impl Mutt {
    /// Whether mutt and tmux are installed (`scripts/setup --test` installs them).
    pub fn available() -> bool {
        Command::new("mutt").arg("-v").output().is_ok()
            && Command::new("tmux").arg("-V").output().is_ok()
    }

    /// Starts mutt on `maildir` with a private muttrc: the settings every test needs, then
    /// `extra` (muttrc lines).
    pub fn start(t: &TestHome, tag: &str, maildir: &Path, extra: &str) -> Mutt {
        let muttrc = t.file(
            &format!("muttrc-{tag}"),
            &format!(
                "set mbox_type=Maildir\nset folder={}\nset spoolfile=\"\"\nset quit=yes\n\
                 set move=no\nset wait_key=no\nset beep=no\nset header_cache=\"\"\n\
                 set message_cachedir=\"\"\nset help=no\n{extra}",
                t.dir.path().display()
            ),
        );
        let mutt = Mutt {
            sock: format!("peerpost-{tag}-{}", std::process::id()),
        };
        let status = Command::new("tmux")
            .args([
                "-L",
                &mutt.sock,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "m",
            ])
            .args(["-x", "200", "-y", "40"])
            .arg(format!(
                "TERM=xterm mutt -n -F {} -f {}",
                muttrc.display(),
                maildir.display()
            ))
            .env("HOME", t.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "tmux did not start");
        mutt
    }

    /// What mutt shows now.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.sock, "capture-pane", "-p", "-t", "m"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types a key (tmux key name) and gives mutt a moment to act on it.
    pub fn keys(&self, k: &str) {
        Command::new("tmux")
            .args(["-L", &self.sock, "send-keys", "-t", "m", k])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
    }
}

impl Drop for Mutt {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.sock, "kill-server"])
            .status();
    }
}

/// The engine's view of a home, through `peerpost export` (another process) into a fresh
/// directory: the message file names, `folder-dir/new|cur/name`, sorted.
pub fn engine_files(t: &TestHome, tag: &str) -> Vec<String> {
    let out = t.dir.path().join(format!("export-{tag}"));
    t.run(&["export", out.to_str().unwrap()]).success();
    let mut names: Vec<String> = walk(&out)
        .into_iter()
        .map(|p| p.strip_prefix(&out).unwrap().to_string_lossy().into_owned())
        .filter(|rel| {
            rel.contains("/cur/")
                || rel.contains("/new/")
                || rel.starts_with("cur/")
                || rel.starts_with("new/")
        })
        .collect();
    names.sort();
    names
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A `peerpost run` child on 127.0.0.1 with every mail listener off except those `on` names
/// (`("imap", "127.0.0.1:0")`, …), plus `extra` arguments. Started once it has printed its
/// last start-up line; `ports` holds each server's bound port by name. SIGTERM and a wait on
/// drop.
pub struct RunNode {
    pub child: std::process::Child,
    pub ports: std::collections::HashMap<String, u16>,
    /// Every line the node printed up to its start-up line.
    pub started: Vec<String>,
}

const LISTENERS: [&str; 7] = [
    "pop3",
    "pop3s",
    "smtp",
    "submission",
    "submissions",
    "imap",
    "imaps",
];

impl RunNode {
    pub fn start(t: &TestHome, on: &[(&str, &str)], extra: &[&str]) -> RunNode {
        Self::try_start(t, on, extra).unwrap_or_else(|err| panic!("node exited early: {err}"))
    }

    /// [`RunNode::start`], or the node's stderr if it exited before it was up.
    pub fn try_start(t: &TestHome, on: &[(&str, &str)], extra: &[&str]) -> Result<RunNode, String> {
        use std::io::{BufRead, BufReader, Read};
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(t.home()).args([
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ]);
        for what in LISTENERS {
            let value = on
                .iter()
                .find(|(w, _)| *w == what)
                .map_or("off", |(_, v)| v);
            cmd.arg(format!("--{what}")).arg(value);
        }
        let mut child = cmd
            .args(extra)
            .env_remove("PEERPOST_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut node = RunNode {
            child,
            ports: Default::default(),
            started: Vec::new(),
        };
        let started = std::time::Instant::now();
        loop {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "node did not finish starting: {:?}",
                node.started
            );
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let mut err = String::new();
                let _ = node.child.stderr.take().unwrap().read_to_string(&mut err);
                return Err(err);
            }
            if let Some((what, addr)) = line.trim().split_once(" listening on ")
                && let Some(port) = addr.rsplit(':').next().and_then(|p| p.parse().ok())
            {
                node.ports.insert(what.to_string(), port);
            }
            let last = line.starts_with("peerpost: node");
            node.started.push(line);
            if last {
                break;
            }
        }
        // Keep draining both pipes so the node never blocks on a full one.
        std::thread::spawn(move || for _ in out.lines() {});
        let mut err = node.child.stderr.take().unwrap();
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Ok(node)
    }

    pub fn port(&self, what: &str) -> u16 {
        self.ports[what]
    }
}

impl Drop for RunNode {
    fn drop(&mut self) {
        // SIGTERM: the node stops its servers (BYE to sessions) and the overlay cleanly.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Makes the `_peerpost` TXT records of `vouched` (home, address) the DNS of every home in
/// `all` (a `dns_records` file in its config): those addresses are overlay addresses there
/// (docs/design.md, "Address ownership"); every other one is outside.
pub fn vouch(all: &[&TestHome], vouched: &[(&TestHome, &str)]) {
    let mut records = String::new();
    for (home, address) in vouched {
        let shown = home.run(&["key", "show", "--json"]).success().stdout();
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        let fp = v["user_fingerprint"].as_str().unwrap();
        let (local, domain) = address.split_once('@').unwrap();
        records.push_str(&format!(
            "_peerpost.{domain} TXT \"v=peerpost1; a={local}; k={fp}\"\n"
        ));
    }
    for home in all {
        let file = home.path("dns_records.txt");
        std::fs::write(&file, &records).unwrap();
        let path = home.path("config.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        assert!(
            config.contains("dns_records = \"\""),
            "config lacks dns_records"
        );
        let config = config.replacen(
            "dns_records = \"\"",
            &format!("dns_records = {:?}", file.to_str().unwrap()),
            1,
        );
        std::fs::write(&path, config).unwrap();
    }
}

/// Held by the tests that load the two cores hardest (the ten-client IMAP judge) and by those
/// that wait on timers while real processes converge (the durability process tests): they
/// run one at a time, so the judge's 20 s of CPU never starves a ring that must settle.
pub fn one_heavy_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The recovery phrase of `home`'s user (`key export --phrase`, the words only).
pub fn phrase_of(home: &TestHome) -> String {
    home.run(&["key", "export", "--phrase"])
        .success()
        .stdout()
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `restore --phrase` into `home` from the phrase in `phrase_file`, with the password in
/// `password_file`, on a loopback listener without mDNS, bootstrapping from `bootstrap`.
pub fn restore_from_phrase(
    home: &TestHome,
    phrase_file: &Path,
    password_file: &Path,
    bootstrap: &str,
) -> Run {
    home.run(&[
        "restore",
        "--phrase",
        "--phrase-file",
        phrase_file.to_str().unwrap(),
        "--password-file",
        password_file.to_str().unwrap(),
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        bootstrap,
    ])
}
