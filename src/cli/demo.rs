//! `peerpost demo`: a small local ring in one process. Creates N users (alice, bob, carol, …
//! @demo.test) with homes in a directory, runs their nodes on 127.0.0.1 (each exactly what
//! `peerpost run` would start: overlay, control socket, POP3, SMTP intake and submission,
//! delivery), sends bob a welcome message from alice through the overlay, waits until it is
//! in bob's INBOX, and prints how to read it. Ctrl-C (or SIGTERM) stops every node cleanly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tracing::Instrument;

use super::{Cli, Command};
use crate::home::Home;
use crate::node::Node;

const USERS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const DOMAIN: &str = "demo.test";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes in the ring (2 to 8).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(2..=8))]
    pub nodes: u8,
    /// Where to put the homes (default: a new directory under the system's temp dir, removed
    /// at the end).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Stop as soon as the welcome message has arrived (for scripts) instead of waiting for
    /// Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Make the demo ring a private one, as an organization would (`peerpost ring init`,
    /// `ring join` for every user): its nodes connect only with the ring's pre-shared key,
    /// over TCP.
    #[arg(long)]
    pub private: bool,
}

struct Dir {
    path: PathBuf,
    remove: bool,
}

impl Drop for Dir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn execute(args: Args) -> Result<()> {
    let dir = match &args.dir {
        Some(d) => Dir {
            path: d.clone(),
            remove: false,
        },
        None => Dir {
            path: std::env::temp_dir().join(format!("peerpost-demo.{}", std::process::id())),
            remove: true,
        },
    };
    std::fs::create_dir_all(&dir.path)
        .with_context(|| format!("cannot create {}", dir.path.display()))?;
    let exe = std::env::current_exe().context("cannot find the peerpost binary")?;
    let users: Vec<&str> = USERS[..usize::from(args.nodes)].to_vec();
    println!(
        "peerpost demo: {} users in {}",
        users.len(),
        dir.path.display()
    );
    for u in &users {
        let home = dir.path.join(u);
        let pw = dir.path.join(format!("{u}.password"));
        std::fs::write(&pw, format!("{u}-password\n"))?;
        let out = std::process::Command::new(&exe)
            .arg("--home")
            .arg(&home)
            .args(["init", "--force", "--address", &format!("{u}@{DOMAIN}")])
            .arg("--password-file")
            .arg(&pw)
            .output()
            .context("cannot run peerpost init")?;
        if !out.status.success() {
            bail!(
                "init of {u} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    vouch_for_users(&dir.path, &users, &exe)?;
    if args.private {
        private_ring(&dir.path, &users, &exe)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(ring(&dir.path, &users, &exe, args.once))
}

/// Makes the demo users overlay addresses (docs/design.md "Address ownership"): a
/// `dns_records` file whose `_peerpost.DOMAIN` TXT records name every user's key, which each
/// node's config points at (else their mail would be for the smarthost, which the demo lacks).
/// `peerpost ring init` in `dir/ring` and `ring join` for every user, through the binary as
/// an administrator would.
fn private_ring(dir: &std::path::Path, users: &[&str], exe: &std::path::Path) -> Result<()> {
    let ring = dir.join("ring");
    let run = |home: Option<&std::path::Path>, args: &[&std::ffi::OsStr]| -> Result<()> {
        let mut cmd = std::process::Command::new(exe);
        if let Some(h) = home {
            cmd.arg("--home").arg(h);
        }
        let out = cmd
            .arg("ring")
            .args(args)
            .output()
            .context("cannot run peerpost ring")?;
        if !out.status.success() {
            bail!(
                "peerpost ring failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    if !ring.join("ring.key").exists() {
        run(
            None,
            &[
                "init".as_ref(),
                "--name".as_ref(),
                "demo".as_ref(),
                "--domain".as_ref(),
                DOMAIN.as_ref(),
                "--out".as_ref(),
                ring.as_os_str(),
            ],
        )?;
    }
    let member = ring.join("member.toml");
    for u in users {
        run(Some(&dir.join(u)), &["join".as_ref(), member.as_os_str()])?;
    }
    println!(
        "private ring: every node needs the key in {}",
        ring.join("swarm.key").display()
    );
    Ok(())
}

fn vouch_for_users(dir: &std::path::Path, users: &[&str], exe: &std::path::Path) -> Result<()> {
    let mut records = String::from("# the demo domain vouches for its users' keys\n");
    for u in users {
        let out = std::process::Command::new(exe)
            .arg("--home")
            .arg(dir.join(u))
            .args(["key", "show", "--json"])
            .output()
            .context("cannot run peerpost key show")?;
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("cannot read the key of {u}"))?;
        let fp = shown["user_fingerprint"]
            .as_str()
            .with_context(|| format!("no fingerprint for {u}"))?;
        records.push_str(&format!(
            "_peerpost.{DOMAIN} TXT \"v=peerpost1; a={u}; k={fp}\"\n"
        ));
    }
    let path = dir.join("dns_records.txt");
    std::fs::write(&path, records)?;
    for u in users {
        let config = dir.join(u).join("config.toml");
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("cannot read {}", config.display()))?;
        let text = text.replacen(
            "dns_records = \"\"",
            &format!("dns_records = {:?}", path.display().to_string()),
            1,
        );
        std::fs::write(&config, text)?;
    }
    Ok(())
}

/// `run`'s arguments for one demo node.
fn run_args(home: &std::path::Path, bootstrap: Option<&str>) -> Result<super::run::Args> {
    let mut argv: Vec<String> = ["peerpost", "--home"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.push(home.display().to_string());
    for a in [
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
        "127.0.0.1:0",
        "--imaps",
        "off",
        "--no-mount",
    ] {
        argv.push(a.into());
    }
    // The metrics families are process-wide: the first node serves them on a free port (the
    // default 9464 would collide with a node already running here), the others not at all.
    argv.push("--metrics".into());
    argv.push(
        if bootstrap.is_none() {
            "127.0.0.1:0"
        } else {
            "off"
        }
        .into(),
    );
    if let Some(b) = bootstrap {
        argv.push("--bootstrap".into());
        argv.push(b.into());
    }
    match Cli::try_parse_from(argv)?.command {
        Command::Run(a) => Ok(a),
        _ => bail!("internal: not a run command"),
    }
}

async fn ring(
    base: &std::path::Path,
    users: &[&str],
    exe: &std::path::Path,
    once: bool,
) -> Result<()> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut bootstrap: Option<String> = None;
    let result = async {
        for (i, u) in users.iter().enumerate() {
            let home = Home::new(base.join(u));
            let args = run_args(home.root(), bootstrap.as_deref())?;
            let (nc, store, _) = super::run::prepare(&args, &home)?;
            let node = Node::start(nc, store)
                .instrument(tracing::info_span!("node", id = i))
                .await?;
            if bootstrap.is_none() {
                let peer = node.client().peer_id();
                let deadline = Instant::now() + Duration::from_secs(10);
                while bootstrap.is_none() && Instant::now() < deadline {
                    if let Ok(s) = node.client().status().await
                        && let Some(a) = s.listen.first()
                    {
                        bootstrap = Some(format!("{a}/p2p/{peer}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            nodes.push(node);
        }
        let (alice, bob) = (&nodes[0], &nodes[1]);
        let bob_addr = format!("{}@{DOMAIN}", users[1]);
        // Wait until alice's node finds bob's record (the nodes publish as they start).
        let deadline = Instant::now() + Duration::from_secs(60);
        while alice.client().lookup(&bob_addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the ring did not settle: {bob_addr} cannot be looked up");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let welcome = format!(
            "From: Alice <{a}>\r\nTo: Bob <{bob_addr}>\r\nSubject: Welcome to peerpost\r\n\
             Date: {date}\r\nMessage-ID: <welcome.{n}@{DOMAIN}>\r\n\r\n\
             Hi Bob,\r\n\r\nthis message went from my node to yours through the overlay,\r\n\
             sealed to your key and signed by mine. No mail server was involved.\r\n\r\n\
             Alice\r\n",
            a = alice.address(),
            date = crate::date::rfc5322(super::now_secs() as i64),
            n = std::process::id(),
        );
        let started = Instant::now();
        let delivery = alice.delivery().context("alice's node runs no delivery")?;
        delivery
            .submit(std::slice::from_ref(&bob_addr), welcome.into_bytes())
            .await?;
        let mailbox = bob.mailbox().context("bob's node runs no mailbox")?;
        loop {
            if !mailbox.messages("INBOX")?.is_empty() {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the welcome message did not arrive within a minute");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "\nalice sent bob a welcome message; it was in bob's INBOX {} ms later.\n",
            started.elapsed().as_millis()
        );
        for (i, node) in nodes.iter().enumerate() {
            let u = users[i];
            let ports: Vec<String> = node
                .servers()
                .iter()
                .map(|(what, addr)| format!("{what} {addr}"))
                .chain(node.metrics().map(|a| format!("metrics http://{a}/metrics")))
                .collect();
            println!(
                "  {:<16} password {:<15} {}",
                node.address(),
                format!("{u}-password"),
                ports.join(", ")
            );
        }
        let port = |what: &str| {
            bob.servers()
                .iter()
                .find(|(w, _)| *w == what)
                .map(|(_, a)| a.port())
                .unwrap_or(0)
        };
        let bob_home = base.join(users[1]);
        println!(
            "\nRead it as bob (user {bob_addr}, password {u}-password):\n\
             \x20 POP3:  127.0.0.1:{pop3}\n\
             \x20 mutt:  mutt -e 'set from={bob_addr} sendmail=\"{exe} --home {home} send\"' -f pop://{u}@127.0.0.1:{pop3}/\n\
             \x20 send:  echo 'Subject: hi' | {exe} --home {home} send alice@{DOMAIN}\n\
             \x20 SMTP submission for clients: 127.0.0.1:{sub} (AUTH PLAIN/LOGIN)",
            u = users[1],
            pop3 = port("pop3"),
            sub = port("submission"),
            exe = exe.display(),
            home = bob_home.display(),
        );
        if let Some((_, imap)) = bob.servers().iter().find(|(w, _)| *w == "imap") {
            println!("  IMAP:  {imap}");
        }
        if once {
            return Ok(());
        }
        println!("\nThe ring runs until Ctrl-C.");
        wait_for_signal().await
    }
    .await;
    for node in nodes {
        node.shutdown().await;
    }
    println!("peerpost demo: stopped");
    result
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
