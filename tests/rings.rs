//! Organizational rings (issue #16) through real `peerpost` processes on 127.0.0.1: an org
//! ring of five nodes made with `ring init` / `ring join`, its users certified with `ring
//! request` / `ring issue`, and a global ring of three beside it. Inside the org ring the
//! users are verified-ring and mail flows between them; nothing of it reaches a global node
//! (no connection, no record, nothing in their stores); a node without the PSK cannot
//! connect, and both logs say why; `status` says what the small ring survives; and the phrase
//! restores a user's mailbox from inside the ring (`restore --ring`).

use crate::flow::{Node, count, eventually, submit};
use crate::util::{TestHome, run_bin};
use std::path::{Path, PathBuf};

/// `peerpost ring …` run by the administrator (who needs no home of their own).
fn admin(admin: &TestHome, args: &[&str]) -> String {
    let mut argv = vec!["ring"];
    argv.extend_from_slice(args);
    run_bin(&admin.home(), &argv, None).success().stdout()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Joins `n` to the ring in `ring` and certifies its user, the way an administrator and a
/// member do it: the member's request and fingerprint go to the administrator, the
/// certificate comes back.
fn enroll(n: &Node, boss: &TestHome, ring: &Path) {
    n.home
        .run(&["ring", "join", s(&ring.join("member.toml"))])
        .success();
    let req = n.home.dir.path().join("me.request");
    n.home.run(&["ring", "request", "--out", s(&req)]).success();
    let shown = n.home.run(&["key", "show", "--json"]).success().json();
    let fp = shown["user_fingerprint"].as_str().unwrap().to_string();
    let cert = n.home.dir.path().join("me.cert");
    let out = admin(
        boss,
        &[
            "issue",
            &n.address,
            "--ring",
            s(ring),
            "--request",
            s(&req),
            "--fingerprint",
            &fp,
            "--out",
            s(&cert),
        ],
    );
    assert!(out.contains("certified"), "{out}");
    n.home.run(&["ring", "join", "--cert", s(&cert)]).success();
}

/// `restore --phrase --ring member.toml` into a fresh home, bootstrapping from `boot`.
fn restore_in_ring(ring: &Path, boot: &str, words: &str) -> (TestHome, crate::util::Run) {
    let fresh = TestHome::new();
    let pw = fresh.file("pw", "new-password\n");
    let member = ring.join("member.toml");
    let out = fresh
        .run_stdin(
            &[
                "restore",
                "--phrase",
                "--password-file",
                s(&pw),
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--ring",
                s(&member),
                "--bootstrap",
                boot,
            ],
            Some(&format!("{words}\n")),
        )
        .success();
    (fresh, out)
}

fn log_of(n: &Node) -> String {
    std::fs::read_to_string(n.home.path("node.log")).unwrap_or_default()
}

fn peer_of(n: &Node) -> String {
    n.listen.rsplit('/').next().unwrap().to_string()
}

/// Every file under `dir` (the store's LMDB files included).
fn files(dir: &Path) -> Vec<PathBuf> {
    crate::util::walk(dir)
}

fn holds(n: &Node, needle: &[u8]) -> bool {
    files(&n.home.path("store")).iter().any(|f| {
        std::fs::read(f)
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

/// The level at which `from`'s node believes `address`.
fn level(from: &Node, address: &str) -> Option<String> {
    let r = from.home.run(&["lookup", address]);
    if !r.output.status.success() {
        return None;
    }
    r.stdout()
        .lines()
        .find_map(|l| l.strip_prefix("level:"))
        .map(|l| l.trim().to_string())
}

#[test]
fn an_org_ring_keeps_its_mail_and_shuts_out_nodes_without_its_key() {
    let _heavy = crate::util::one_heavy_at_a_time();
    let boss = TestHome::new();
    let ring = boss.dir.path().join("acme-ring");
    let out = admin(
        &boss,
        &[
            "init",
            "--name",
            "Acme",
            "--domain",
            "acme.test",
            "--out",
            s(&ring),
        ],
    );
    assert!(out.contains("created"), "{out}");
    let psk = std::fs::read_to_string(ring.join("swarm.key")).unwrap();
    assert!(
        psk.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
        "{psk}"
    );
    assert_eq!(crate::util::mode_of(&ring.join("ring.key")) & 0o077, 0);
    // A ring certifies its own domain only.
    let stranger = Node::new("mallory@elsewhere.test", &[]);
    let req = stranger.home.dir.path().join("req");
    stranger
        .home
        .run(&["ring", "request", "--out", s(&req)])
        .success();
    run_bin(
        &boss.home(),
        &[
            "ring",
            "issue",
            "mallory@elsewhere.test",
            "--ring",
            s(&ring),
            "--request",
            s(&req),
        ],
        None,
    )
    .failure(&["not in the ring's domain acme.test"]);

    let mut org: Vec<Node> = ["alice", "bob", "carol", "dave", "erin"]
        .iter()
        .map(|n| Node::new(&format!("{n}@acme.test"), &[]))
        .collect();
    for n in &org {
        enroll(n, &boss, &ring);
        let config = std::fs::read_to_string(n.home.path("config.toml")).unwrap();
        assert!(config.contains("psk_file = \"ring/swarm.key\""), "{config}");
    }
    org[0].start(None);
    let boot = org[0].listen.clone();
    assert!(
        !boot.contains("/udp/"),
        "a private ring is TCP only: {boot}"
    );
    for n in org.iter_mut().skip(1) {
        n.start(Some(&boot));
    }
    let mut global: Vec<Node> = ["xavier", "yves", "zoe"]
        .iter()
        .map(|n| Node::new(&format!("{n}@glob.test"), &[]))
        .collect();
    global[0].start(None);
    let gboot = global[0].listen.clone();
    for n in global.iter_mut().skip(1) {
        n.start(Some(&gboot));
    }
    // A node without the ring's key, pointed at the ring: it cannot connect.
    let mut eve = Node::new("eve@glob.test", &[]);
    eve.start(Some(&boot));

    // Inside the ring every user is verified by the ring's certificate.
    for (from, to) in [(0, 1), (1, 0), (2, 4), (4, 3)] {
        let want = eventually(
            &format!(
                "{} sees {} verified-ring",
                org[from].address, org[to].address
            ),
            60,
            || level(&org[from], &org[to].address).filter(|l| l == "verified-ring"),
        );
        assert_eq!(want, "verified-ring");
    }
    // The rings do not see each other's directory.
    assert!(level(&org[0], "xavier@glob.test").is_none());
    assert!(level(&global[1], "alice@acme.test").is_none());
    assert_eq!(
        level(&global[1], "zoe@glob.test").as_deref(),
        Some("unverified")
    );

    // Org user to org user: delivered, marked as the ring vouches.
    let t = TestHome::new();
    submit(
        &t,
        &org[0],
        &["bob@acme.test"],
        "From: alice@acme.test\r\nSubject: inside\r\nMessage-ID: <in@acme.test>\r\n\r\nring mail\r\n",
    );
    let inbox = eventually("bob has alice's mail", 60, || {
        let i = org[1].inbox();
        (count(&i, "<in@acme.test>") == 1).then_some(i)
    });
    let m = inbox.iter().find(|m| m.contains("<in@acme.test>")).unwrap();
    assert!(
        m.lines()
            .next()
            .unwrap()
            .contains("peerpost=pass (verified-ring)"),
        "{m}"
    );

    // A node without the PSK could not connect, and both sides' logs say why.
    let said = eventually("eve's log explains the failed handshake", 30, || {
        let l = log_of(&eve);
        l.contains("private (organizational) ring").then_some(l)
    });
    assert!(said.contains("peerpost ring join"), "{said}");
    // The ring's side logs its half when its handshake times out, which may come later.
    eventually("the ring's log explains the refused handshake", 30, || {
        let l = log_of(&org[0]);
        l.contains("does not hold the same pre-shared key")
            .then_some(())
    });
    let eve_status = eve.home.run(&["status", "--json"]).success().json();
    assert_eq!(
        eve_status["node"]["connected"].as_array().map(Vec::len),
        Some(0),
        "{eve_status}"
    );

    // Nothing of the org reached a global node: no connection to an org node, nothing held,
    // no org address anywhere in their stores (while the org's own stores have them).
    let org_peers: Vec<String> = org.iter().map(peer_of).collect();
    let mut org_total_records = 0;
    for n in &org {
        let st = n.home.run(&["status", "--json"]).success().json();
        org_total_records += st["node"]["records"].as_u64().unwrap_or(0);
    }
    assert!(org_total_records > 0, "the org's nodes hold its records");
    assert!(holds(&org[1], b"acme.test"), "the positive control");
    for n in global.iter().chain([&eve]) {
        let st = n.home.run(&["status", "--json"]).success().json();
        let ov = &st["node"];
        let connected: Vec<String> = ov["connected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        for p in &org_peers {
            assert!(!connected.contains(p), "{} is connected to {p}", n.address);
        }
        assert_eq!(ov["held_blobs"].as_u64(), Some(0), "{}: {st}", n.address);
        assert!(
            !holds(n, b"acme.test"),
            "{}'s store holds an org address",
            n.address
        );
        assert!(
            !holds(n, b"in@acme.test"),
            "{}'s store holds the message",
            n.address
        );
    }

    // The small ring says what it survives, with the n/k its size supports.
    let st = eventually("bob's mail is in the ring", 120, || {
        let st = org[1].home.run(&["status", "--json"]).success().json();
        let d = &st["durability"];
        (d["root_seq"].as_u64().is_some()
            && d["pending_bytes"].as_u64() == Some(0)
            && d["unpublished"] == false
            && d["survives"]["ring"].as_u64() >= Some(3))
        .then(|| st.clone())
    });
    let sv = &st["durability"]["survives"];
    assert!(sv["n"].as_u64().unwrap() <= 5, "{sv}");
    assert_eq!(
        sv["any_nodes"].as_u64().unwrap(),
        sv["n"].as_u64().unwrap() - sv["k"].as_u64().unwrap()
    );
    let text = org[1].home.run(&["status"]).success().stdout();
    assert!(text.contains("ring survives:"), "{text}");

    // bob's machine is lost: the phrase restores his mailbox from inside the ring.
    let words = crate::util::phrase_of(&org[1].home);
    org[1].kill9();
    let (fresh, out) = restore_in_ring(&ring, &boot, &words);
    assert!(out.stdout().contains("bob@acme.test"), "{}", out.stdout());
    let config = std::fs::read_to_string(fresh.path("config.toml")).unwrap();
    assert!(config.contains("psk_file = \"ring/swarm.key\""), "{config}");
    let got = fresh.path("got");
    fresh.run(&["export", s(&got)]).success();
    let restored = files(&got)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|m| m.contains("<in@acme.test>"));
    assert!(
        restored,
        "bob's mail restored from the ring: {}",
        out.stdout()
    );
}

/// `demo --private` runs its ring as an organization would: every home joined with `ring
/// join` (its config names the PSK), and the welcome still arrives over the private ring.
#[test]
fn the_demo_runs_a_private_ring() {
    let t = TestHome::new();
    let dir = t.dir.path().join("demo");
    let out = std::process::Command::new(crate::util::BIN)
        .args([
            "demo",
            "--private",
            "--once",
            "--nodes",
            "3",
            "--dir",
            s(&dir),
        ])
        .env_remove("PEERPOST_HOME")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("private ring"), "{stdout}");
    assert!(stdout.contains("in bob's INBOX"), "{stdout}");
    for u in ["alice", "bob", "carol"] {
        let config = std::fs::read_to_string(dir.join(u).join("config.toml")).unwrap();
        assert!(
            config.contains("psk_file = \"ring/swarm.key\""),
            "{u}: {config}"
        );
    }
    let psk = std::fs::read_to_string(dir.join("alice/ring/swarm.key")).unwrap();
    assert_eq!(
        psk,
        std::fs::read_to_string(dir.join("ring/swarm.key")).unwrap()
    );
}

/// In one process over the memory transport (the same pnet upgrade): a node with the ring's
/// key joins and resolves its users; a node with another ring's key, or with none, never
/// gets a peer (its handshakes fail), so it cannot even start a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_the_rings_key_join_it() {
    use peerpost::node::testing::start_ring;
    use peerpost::overlay::pnet::Psk;
    let dir = tempfile::tempdir().unwrap();
    let key = Psk([7; 32]);
    let ring = start_ring(3, &dir.path().join("ring"), |c| c.psk = Some(key))
        .await
        .unwrap();
    let found = ring.node(0).client().lookup(&ring.addresses[2]).await;
    assert_eq!(found.unwrap().record.address, ring.addresses[2]);
    let boot = ring.listen[0].clone();
    let join = |name: &str, psk: Option<Psk>| {
        let base = dir.path().join(name);
        let boot = boot.clone();
        async move {
            start_ring(1, &base, move |c| {
                c.psk = psk;
                c.bootstrap = vec![boot.clone()];
            })
            .await
        }
    };
    let (same, other, none) = futures::join!(
        join("same", Some(key)),
        join("other", Some(Psk([8; 32]))),
        join("none", None)
    );
    let same = same.unwrap();
    let found = same.node(0).client().lookup(&ring.addresses[1]).await;
    assert_eq!(found.unwrap().record.address, ring.addresses[1]);
    for (what, r) in [("another ring's key", other), ("no key", none)] {
        let err = r
            .err()
            .unwrap_or_else(|| panic!("a node with {what} joined the ring"));
        assert!(err.contains("knows no peer"), "{what}: {err}");
    }
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The gateway lines of a fresh config, turned on: the global side on a system-chosen
/// loopback port, dialing `global_boot`.
fn gateway_tune(global_boot: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "home).\nenabled = false",
            "home).\nenabled = true".to_string(),
        ),
        (
            "listen = [\"/ip4/0.0.0.0/tcp/4041\"]\nbootstrap = []",
            format!("listen = [\"/ip4/127.0.0.1/tcp/0\"]\nbootstrap = [{global_boot:?}]"),
        ),
    ]
}

/// Issue #16's gateways, through real processes on 127.0.0.1: an org ring of six nodes
/// (`ring init`, certificates; two of them gateways) and a global ring of six. Org → org
/// mail stays inside (no global node holds anything: nothing held for others, no trace of
/// it in their stores); org → global and global → org mail is delivered through a
/// gateway; after the first gateway is SIGKILLed the second carries both ways; and a
/// member's mailbox survives SIGKILL of 60 % of the org's nodes and restores from the
/// phrase inside the ring (`restore --ring`).
#[test]
fn gateways_carry_mail_between_the_rings_a_second_takes_over_and_the_ring_survives_60_percent() {
    let _heavy = crate::util::one_heavy_at_a_time();
    let boss = TestHome::new();
    let ring = boss.dir.path().join("acme-ring");
    admin(
        &boss,
        &[
            "init",
            "--name",
            "Acme",
            "--domain",
            "acme.test",
            "--out",
            s(&ring),
        ],
    );
    let mut org: Vec<Node> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|n| Node::new(&format!("{n}@acme.test"), &[]))
        .collect();
    let mut global: Vec<Node> = ["g0", "g1", "g2", "g3", "g4", "g5"]
        .iter()
        .map(|n| Node::new(&format!("{n}@glob.test"), &[]))
        .collect();
    // Both domains vouch for their users' keys (`_peerpost` TXT), so each side treats the
    // other's addresses as overlay addresses (never the smarthost).
    {
        let all: Vec<&Node> = org.iter().chain(global.iter()).collect();
        crate::flow::vouch(&all, &all);
    }
    for n in org.iter_mut().chain(global.iter_mut()) {
        n.log_filter = Some("warn,peerpost::_events=info".into());
    }
    for n in &org {
        enroll(n, &boss, &ring);
    }
    global[0].start(None);
    let gboot = global[0].listen.clone();
    for n in global.iter_mut().skip(1) {
        n.start(Some(&gboot));
    }
    org[0].start(None);
    let boot = org[0].listen.clone();
    for n in org.iter_mut().skip(1) {
        n.start(Some(&boot));
    }
    let tune = gateway_tune(&gboot);
    let tune: Vec<(&str, &str)> = tune.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let mut gws: Vec<Node> = ["gw1", "gw2"]
        .iter()
        .map(|n| Node::new(&format!("{n}@acme.test"), &tune))
        .collect();
    for g in gws.iter_mut() {
        g.log_filter = Some("warn,peerpost::_events::gateway=info".into());
        enroll(g, &boss, &ring);
        g.start(Some(&boot));
    }

    // Org user to org user: delivered inside the ring, and backed up there.
    let t = TestHome::new();
    submit(
        &t,
        &org[0],
        &["bob@acme.test"],
        "From: alice@acme.test\r\nSubject: inside\r\nMessage-ID: <in@acme.test>\r\n\r\nring mail\r\n",
    );
    eventually("bob has alice's mail", 90, || {
        (count(&org[1].inbox(), "<in@acme.test>") == 1).then_some(())
    });
    eventually("bob's mail is backed up in the ring", 120, || {
        let st = org[1].home.run(&["status", "--json"]).success().json();
        let d = &st["durability"];
        (d["root_seq"].as_u64().is_some() && d["pending_bytes"].as_u64() == Some(0)).then_some(())
    });
    // No global node holds anything of it: no org address, no org user's or device's key
    // (leases, roots and inbox rows carry them) and no row under bob's inbox key, in any
    // store file; while the org's own stores have its addresses (the positive control).
    let mut needles: Vec<(String, Vec<u8>)> = vec![("acme.test".into(), b"acme.test".to_vec())];
    for n in &org {
        let shown = n.home.run(&["key", "show", "--json"]).success().json();
        for k in ["sign_key", "device_key"] {
            let key = unhex(shown[k].as_str().unwrap());
            if k == "sign_key" {
                let sign: [u8; 32] = key.clone().try_into().unwrap();
                let inbox = peerpost::overlay::protocol::inbox_key(&sign).to_vec();
                needles.push((format!("{}'s inbox key", n.address), inbox));
            }
            needles.push((format!("{}'s {k}", n.address), key));
        }
    }
    assert!(holds(&org[1], b"acme.test"), "the positive control");
    for n in &global {
        for (what, needle) in &needles {
            assert!(!holds(n, needle), "{}'s store holds {what}", n.address);
        }
    }

    // Org user to global user, and global user to org user: through a gateway.
    submit(
        &t,
        &org[0],
        &["g1@glob.test"],
        "From: alice@acme.test\r\nSubject: out\r\nMessage-ID: <out@acme.test>\r\n\r\nleaving the ring\r\n",
    );
    submit(
        &t,
        &global[2],
        &["carol@acme.test"],
        "From: g2@glob.test\r\nSubject: in\r\nMessage-ID: <into@glob.test>\r\n\r\ninto the ring\r\n",
    );
    eventually("g1 has alice's mail", 120, || {
        (count(&global[1].inbox(), "<out@acme.test>") == 1).then_some(())
    });
    eventually("carol has g2's mail", 120, || {
        (count(&org[2].inbox(), "<into@glob.test>") == 1).then_some(())
    });
    let carried: usize = gws
        .iter()
        .map(|g| log_of(g).matches("notice carried").count())
        .sum();
    assert!(
        carried >= 2,
        "the gateways logged {carried} carried notices"
    );

    // carol's mailbox (with the mail that came in from outside) survives the loss of 60 %
    // of the org's nodes, at the n/k the six-node ring supports, and restores from the
    // phrase inside the ring.
    let st = eventually("carol's mailbox is in the ring at target", 180, || {
        let st = org[2].home.run(&["status", "--json"]).success().json();
        let d = &st["durability"];
        let checked = d["checked"].as_array()?;
        (d["root_seq"].as_u64().is_some()
            && d["pending_bytes"].as_u64() == Some(0)
            && d["unpublished"] == false
            && d["below_target"].as_u64() == Some(0)
            && d["ring"].as_u64() >= Some(4)
            && !checked.is_empty()
            && checked.iter().all(|b| b["found"] == b["n"]))
        .then(|| st.clone())
        .or_else(|| {
            eprintln!("carol: {d}");
            None
        })
    });
    let sv = &st["durability"]["survives"];
    eprintln!("carol's bundles in the org ring: {sv}");
    assert!(sv["any_nodes"].as_u64().unwrap() >= 3, "{sv}");
    // The first gateway dies: the second carries both ways.
    gws[0].kill9();
    submit(
        &t,
        &org[3],
        &["g3@glob.test"],
        "From: dave@acme.test\r\nSubject: out again\r\nMessage-ID: <out2@acme.test>\r\n\r\nvia the other gateway\r\n",
    );
    submit(
        &t,
        &global[4],
        &["alice@acme.test"],
        "From: g4@glob.test\r\nSubject: in again\r\nMessage-ID: <into2@glob.test>\r\n\r\nvia the other gateway\r\n",
    );
    eventually(
        "g3 has dave's mail after the first gateway died",
        120,
        || (count(&global[3].inbox(), "<out2@acme.test>") == 1).then_some(()),
    );
    eventually(
        "alice has g4's mail after the first gateway died",
        120,
        || (count(&org[0].inbox(), "<into2@glob.test>") == 1).then_some(()),
    );
    let after = log_of(&gws[1]).matches("notice carried").count();
    assert!(
        after >= 2,
        "the second gateway carried {after}: {}",
        log_of(&gws[1])
    );

    let words = crate::util::phrase_of(&org[2].home);
    // gw1 is gone already; carol, bob and dave go too: 4 of the 6 org nodes (67 %).
    for i in [2, 1, 3] {
        org[i].kill9();
    }
    let (fresh, out) = restore_in_ring(&ring, &boot, &words);
    assert!(out.stdout().contains("carol@acme.test"), "{}", out.stdout());
    let got = fresh.path("got");
    fresh.run(&["export", s(&got)]).success();
    let restored = files(&got)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|m| m.contains("<into@glob.test>"));
    assert!(
        restored,
        "carol's mail restored from the ring: {}",
        out.stdout()
    );
}
