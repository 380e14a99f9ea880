//! Laptops behind NAT (issue #19): a node others cannot dial (`reachable = "no"`, or AutoNAT's
//! "private" verdict) is a Kademlia client, so nobody puts it in a routing table and nothing
//! the ring places (directory records and inbox entries, object fragments) lands on it,
//! while it still publishes, looks up and stores through the reachable nodes.

#![allow(clippy::unwrap_used)]

use std::cell::Cell;

use peerpost::crypto::SealedObject;
use peerpost::node::testing::start_ring;
use peerpost::overlay::Reachable;

const SERVERS: usize = 8;
const NATED: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nated_nodes_use_the_ring_but_hold_nothing_for_it() {
    let dir = tempfile::tempdir().unwrap();
    // The last NATED nodes are laptops behind NAT; the rest keep "auto", which a
    // memory-transport ring resolves to reachable.
    let started = Cell::new(0);
    let ring = start_ring(SERVERS + NATED, dir.path(), |oc| {
        if started.get() >= SERVERS {
            oc.reachable = Reachable::No;
        }
        started.set(started.get() + 1);
    })
    .await
    .unwrap();
    let nated: Vec<_> = (SERVERS..SERVERS + NATED)
        .map(|i| ring.node(i).client().peer_id())
        .collect();

    for i in 0..SERVERS + NATED {
        let s = ring.node(i).client().status().await.unwrap();
        assert_eq!(s.reachable, "forced", "node {i}");
        let want = if i < SERVERS { "server" } else { "client" };
        assert_eq!(s.dht_mode, want, "node {i}");
        if i < SERVERS {
            // Every reachable node knows at most the other reachable ones.
            assert!(
                s.routing_table < SERVERS,
                "node {i}: {} peers",
                s.routing_table
            );
        } else {
            assert!(s.routing_table >= 1, "NATed node {i} knows no server");
        }
    }

    // Closest-peer queries (which choose inbox holders, fragment holders and backup-root
    // holders) from every node, for many keys, never name a NATed node.
    for k in 0u8..16 {
        let key = *blake3::hash(&[k]).as_bytes();
        for i in 0..SERVERS + NATED {
            let closest = ring.node(i).client().closest_peers(key).await.unwrap();
            assert!(!closest.is_empty(), "node {i} found no peer for key {k}");
            for p in &closest {
                assert!(!nated.contains(p), "node {i} chose NATed {p} for key {k}");
            }
        }
    }

    // Objects put from a NATed node and from a reachable one land on reachable nodes only,
    // and both can be fetched from everywhere.
    for from in [SERVERS, 0] {
        let (obj, key) = SealedObject::seal(format!("from {from}").as_bytes()).unwrap();
        let holders = ring.node(from).client().put_object(&obj).await.unwrap();
        assert!(!holders.is_empty());
        for h in &holders {
            assert!(!nated.contains(h), "object from {from} placed on NATed {h}");
        }
        for i in 0..SERVERS + NATED {
            let got = ring.node(i).client().get_object(obj.id()).await.unwrap();
            assert_eq!(got.open(&key).unwrap(), format!("from {from}").as_bytes());
        }
    }

    // Every user (the NATed ones too) published a record and resolves from everywhere;
    // the NATed nodes hold none of those records nor any blob.
    for from in 0..SERVERS + NATED {
        for to in [0, SERVERS, SERVERS + NATED - 1] {
            let found = ring.node(from).client().lookup(&ring.addresses[to]).await;
            let found = found.unwrap_or_else(|e| panic!("{from} cannot resolve {to}: {e}"));
            assert_eq!(found.record.address, ring.addresses[to]);
        }
    }
    for i in SERVERS..SERVERS + NATED {
        let s = ring.node(i).client().status().await.unwrap();
        // One record: its own (Kademlia keeps a local copy of what a node publishes);
        // none of the other nine.
        assert_eq!(
            (s.records, s.held_blobs),
            (1, 0),
            "NATed node {i} holds data for others"
        );
    }
    ring.shutdown().await;
}

/// Real processes in a NAT lab (tests/data/nat-lab.sh: network namespaces, an nftables
/// masquerading router): with `reachable = "auto"`, AutoNAT makes the two nodes on the
/// "internet" DHT servers and the laptop behind the home router a client.
mod lab {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::flow::{Node, PASSWORD, vouch};
    use crate::util::{BIN, TestHome};

    const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nat-lab.sh");

    struct Lab {
        prefix: String,
        nodes: Vec<(Child, TestHome)>,
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            for (child, _) in &mut self.nodes {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = Command::new(LAB).args(["down", &self.prefix]).status();
        }
    }

    impl Lab {
        fn ns(&self, ns: &str) -> String {
            format!("{}-{ns}", self.prefix)
        }

        fn up() -> Option<Lab> {
            Lab::up_with("1", "0")
        }

        /// `homes` home networks; home `symmetric` (0: none) behind a symmetric NAT.
        fn up_with(homes: &str, symmetric: &str) -> Option<Lab> {
            let have = |c: &str| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {c}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !have("ip") || !have("nft") {
                eprintln!(
                    "SKIP nat lab: `ip` or `nft` missing (scripts/setup --test installs them)"
                );
                return None;
            }
            let prefix = format!("pn{}", std::process::id() % 10_000);
            let out = Command::new(LAB)
                .args(["up", &prefix, homes, symmetric])
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!(
                    "SKIP nat lab: cannot build network namespaces (root needed): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = Command::new(LAB).args(["down", &prefix]).status();
                return None;
            }
            Some(Lab {
                prefix,
                nodes: Vec::new(),
            })
        }

        /// `peerpost run` in namespace `ns`; returns its first listen address.
        fn start(&mut self, ns: &str, listen: &str, bootstrap: Option<&str>) -> String {
            self.start_tuned(ns, listen, bootstrap, &[])
        }

        /// [`start`](Self::start) with these replacements in the config file.
        fn start_tuned(
            &mut self,
            ns: &str,
            listen: &str,
            bootstrap: Option<&str>,
            tune: &[(&str, &str)],
        ) -> String {
            let home = TestHome::new();
            let n = self.nodes.len();
            home.init(&format!("user{n}@nat.test")).success();
            let path = home.path("config.toml");
            let mut config = std::fs::read_to_string(&path).unwrap();
            for (from, to) in tune {
                assert!(config.contains(from), "config lacks {from}");
                config = config.replace(from, to);
            }
            std::fs::write(&path, config).unwrap();
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &format!("{}-{ns}", self.prefix), BIN])
                .arg("--home")
                .arg(home.home())
                .args(["run", "--no-mdns", "--listen", listen]);
            for off in [
                "--pop3",
                "--pop3s",
                "--smtp",
                "--imap",
                "--imaps",
                "--submission",
            ] {
                cmd.args([off, "off"]);
            }
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
            std::thread::spawn(move || for _ in out.lines() {});
            self.nodes.push((child, home));
            line.trim()
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
                .to_string()
        }

        fn reachability(&self, i: usize) -> (String, String) {
            let s = self.nodes[i].1.run(&["status", "--json"]).success().json();
            let n = &s["node"];
            let field = |k: &str| n[k].as_str().unwrap_or("").to_string();
            (field("reachable"), field("dht_mode"))
        }
    }

    /// Was flaky under the whole suite (an internet node's verdict still "no" after 60 s): the
    /// per-peer connection limit (2) denied the AutoNAT dial-back to a peer that had already
    /// dialed back the other way, which the prober read as "private"; and a 90 s server
    /// throttle left a 3-node lab without servers to correct it. Both fixed in behaviour.rs.
    #[test]
    fn autonat_makes_internet_nodes_servers_and_the_natted_laptop_a_client() {
        let _heavy = crate::util::one_heavy_at_a_time();
        let Some(mut lab) = Lab::up() else { return };
        let a = lab.start("inet", "/ip4/10.99.0.1/tcp/0", None);
        lab.start("inet", "/ip4/10.99.0.1/tcp/0", Some(&a));
        lab.start("h1", "/ip4/0.0.0.0/tcp/0", Some(&a));
        let want = [("yes", "server"), ("yes", "server"), ("no", "client")];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: Vec<_> = (0..3).map(|i| lab.reachability(i)).collect();
            let ok = got
                .iter()
                .zip(want)
                .all(|((r, m), (wr, wm))| r == wr && m == wm);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "AutoNAT verdicts after 60 s: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `[overlay] upnp`: off by default, and then `status` says "off"; set, the node asks
    /// the network for a UPnP gateway (SSDP search, igd-next) — in the lab's home network the
    /// router offers none, so after the search (10 s) it says "no gateway" and maps
    /// nothing, and the laptop still finds it is behind NAT (AutoNAT), as without UPnP.
    #[test]
    fn upnp_is_off_by_default_and_searches_for_a_gateway_when_set() {
        let _heavy = crate::util::one_heavy_at_a_time();
        let Some(mut lab) = Lab::up() else { return };
        let a = lab.start("inet", "/ip4/10.99.0.1/tcp/0", None);
        lab.start("inet", "/ip4/10.99.0.1/tcp/0", Some(&a));
        lab.start_tuned(
            "h1",
            "/ip4/0.0.0.0/tcp/0",
            Some(&a),
            &[("upnp = false", "upnp = true")],
        );
        let upnp = |i: usize| {
            let s = lab.nodes[i].1.run(&["status", "--json"]).success().json();
            let n = &s["node"];
            (
                n["upnp"].as_str().unwrap_or("").to_string(),
                n["upnp_mapped"].as_array().map_or(0, |a| a.len()),
            )
        };
        assert_eq!(upnp(0), ("off".to_string(), 0));
        assert_eq!(upnp(1), ("off".to_string(), 0));
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let got = upnp(2);
            if got.0 == "no gateway" {
                assert_eq!(got.1, 0, "nothing mapped without a gateway");
                break;
            }
            assert!(
                got.0 == "searching" && Instant::now() < deadline,
                "UPnP state after the search: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while lab.reachability(2) != ("no".to_string(), "client".to_string()) {
            assert!(Instant::now() < deadline, "laptop not found behind NAT");
            std::thread::sleep(Duration::from_millis(500));
        }
        let text = lab.nodes[2].1.run(&["status"]).success().stdout();
        assert!(text.contains("UPnP no gateway"), "{text}");
    }

    /// `[overlay] natpmp = true` behind a router that offers NAT-PMP (miniupnpd 2.3.1 in the
    /// router namespace, `nat-lab.sh natpmp`): the laptop's own client asks the gateway for
    /// its external address and a TCP mapping of its listen port; `status` shows "mapped"
    /// with the router's outside address; AutoNAT, asked by the internet nodes dialing that
    /// address back, confirms it: the laptop is reachable, a DHT server, with no relay and
    /// no relayed connection, and a plain TCP dial from the internet to the mapped address
    /// reaches its listener. On SIGTERM it deletes the mapping (the router's DNAT rule goes).
    #[test]
    fn natpmp_maps_the_laptop_port_and_autonat_confirms_it() {
        let _heavy = crate::util::one_heavy_at_a_time();
        let found = Command::new("sh")
            .args(["-c", "command -v miniupnpd"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("SKIP nat lab NAT-PMP: miniupnpd missing (apt install miniupnpd)");
            return;
        }
        let Some(mut lab) = Lab::up() else { return };
        let out = Command::new(LAB)
            .args(["natpmp", &lab.prefix, "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nat-lab.sh natpmp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let a = lab.start("inet", "/ip4/10.99.0.1/tcp/0", None);
        lab.start("inet", "/ip4/10.99.0.1/tcp/0", Some(&a));
        lab.start_tuned(
            "h1",
            "/ip4/0.0.0.0/tcp/0",
            Some(&a),
            &[("natpmp = false", "natpmp = true")],
        );
        let node =
            |i: usize| lab.nodes[i].1.run(&["status", "--json"]).success().json()["node"].clone();
        assert_eq!(node(0)["natpmp"], "off");
        let mut mapped = String::new();
        wait_for("a NAT-PMP mapping", 30, || {
            let n = node(2);
            if n["natpmp"] == "mapped" {
                mapped = strings(&n["natpmp_mapped"]).join(" ");
            }
            !mapped.is_empty()
        });
        assert!(mapped.starts_with("/ip4/10.99.0.2/tcp/"), "{mapped}");
        assert!(
            !mapped.contains(' '),
            "one listen port, one mapping: {mapped}"
        );
        wait_for("AutoNAT confirming the mapped address", 60, || {
            let n = node(2);
            n["reachable"] == "yes"
                && n["dht_mode"] == "server"
                && n["public_address"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&mapped)
        });
        let n = node(2);
        assert!(strings(&n["relays"]).is_empty(), "{n}");
        assert_eq!(n["relayed_connections"], 0, "{n}");
        // The router forwards a fresh connection from the internet to the laptop.
        let port = mapped.rsplit('/').next().unwrap();
        let dial = Command::new("ip")
            .args(["netns", "exec", &lab.ns("inet"), "python3", "-c"])
            .arg(format!(
                "import socket; socket.create_connection(('10.99.0.2', {port}), timeout=5).close()"
            ))
            .output()
            .unwrap();
        assert!(
            dial.status.success(),
            "{}",
            String::from_utf8_lossy(&dial.stderr)
        );
        let text = lab.nodes[2].1.run(&["status"]).success().stdout();
        assert!(text.contains(&format!("NAT-PMP mapped {mapped}")), "{text}");
        // Shutdown deletes the mapping.
        let router = lab.ns("rt1");
        let rules = || {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &router,
                    "nft",
                    "list",
                    "chain",
                    "inet",
                    "filter",
                    "prerouting_miniupnpd",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(rules().contains(&format!("dport {port}")), "{}", rules());
        let pid = lab.nodes[2].0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = lab.nodes[2].0.wait();
        let left = rules();
        assert!(
            !left.contains(&format!("dport {port}")),
            "mapping left: {left}"
        );
    }

    /// Python run inside a namespace: SMTP submission (STARTTLS + AUTH) or a POP3 listing.
    const MAIL_PY: &str = r#"
import poplib, smtplib, ssl, sys
what, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if what == "submit":
    cert, rcpt, msg = sys.argv[5], sys.argv[6], open(sys.argv[7], "rb").read()
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    ctx = ssl.create_default_context(cafile=cert); ctx.check_hostname = False
    s.starttls(context=ctx); s.login(user, pw)
    refused = s.sendmail(user, [rcpt], msg)
    assert refused == {}, refused
    s.quit(); print("OK")
else:
    p = poplib.POP3("127.0.0.1", port, timeout=20); p.user(user); p.pass_(pw)
    for i in range(1, len(p.list()[1]) + 1):
        print(b"\n".join(p.retr(i)[1]).decode("utf-8", "replace"))
    p.quit()
"#;

    /// A mail node (flow::Node's config: fast retries; `collect_every` as given) in a
    /// namespace of the lab.
    fn mail_node(lab: &Lab, ns: &str, node: &mut Node, bootstrap: Option<&str>) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.ns(ns), BIN])
            .arg("--home")
            .arg(node.home.home())
            .args(["run", "--no-mdns", "--listen"])
            .arg(if ns == "inet" {
                "/ip4/10.99.0.1/tcp/0"
            } else {
                "/ip4/0.0.0.0/tcp/0"
            });
        for (flag, v) in [
            ("--pop3", "127.0.0.1:0"),
            ("--pop3s", "off"),
            ("--smtp", "off"),
            ("--submission", "127.0.0.1:0"),
            ("--imap", "off"),
            ("--imaps", "off"),
        ] {
            cmd.args([flag, v]);
        }
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.env_remove("PEERPOST_HOME")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(node.log());
        // NAT_LAB_LOG=filter: the nodes log at that level (their logs are kept if
        // NAT_LAB_KEEP names a directory).
        if let Ok(f) = std::env::var("NAT_LAB_LOG") {
            cmd.env("RUST_LOG", f);
        }
        let mut child = cmd.spawn().expect("spawn peerpost run");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let port = |l: &str| -> u16 { l.trim().rsplit(':').next().unwrap().parse().unwrap() };
        loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "node exited early");
            if let Some(a) = line.strip_prefix("listening on ") {
                if node.listen.is_empty() || !a.contains("/udp/") {
                    node.listen = a.trim().to_string();
                }
            } else if let Some(a) = line.strip_prefix("pop3 listening on ") {
                node.pop3 = port(a);
            } else if let Some(a) = line.strip_prefix("submission listening on ") {
                node.submission = port(a);
            } else if line.starts_with("peerpost: node") {
                break;
            }
        }
        std::thread::spawn(move || for _ in out.lines() {});
        node.child = Some(child);
    }

    fn mail_py(lab: &Lab, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &lab.ns(ns), "python3", "-c", MAIL_PY])
            .args(args)
            .output()
            .unwrap()
    }

    fn submit(lab: &Lab, ns: &str, from: &Node, to: &str, subject: &str) {
        let msg = from.home.file(
            "msg.eml",
            &format!(
                "From: {}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{subject} body\r\n",
                from.address
            ),
        );
        let (port, cert) = (from.submission.to_string(), from.cert());
        let out = mail_py(
            lab,
            ns,
            &[
                "submit",
                &port,
                &from.address,
                PASSWORD,
                cert.to_str().unwrap(),
                to,
                msg.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "submission: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn inbox(lab: &Lab, ns: &str, node: &Node) -> String {
        let port = node.pop3.to_string();
        let out = mail_py(lab, ns, &["list", &port, &node.address, PASSWORD]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(node: &Node) -> serde_json::Value {
        node.home.run(&["status", "--json"]).success().json()["node"].clone()
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How long mail takes from the sender's 250 to the recipient's INBOX, polled over POP3;
    /// the recipients collect their DHT inbox every 10 minutes only, so arriving within 15 s
    /// means the notice was pushed to them (through a relay or a punched connection).
    fn delivered_within(lab: &Lab, ns: &str, to: &Node, subject: &str, secs: u64) -> Duration {
        let start = Instant::now();
        loop {
            if inbox(lab, ns, to).contains(subject) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "{subject:?} not in {}'s INBOX {secs} s after the 250 (node log: {})",
                to.address,
                to.home.path("node.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Copies the nodes' logs to $NAT_LAB_KEEP (if set) when the test ends.
    struct KeepLogs(Vec<(String, std::path::PathBuf)>);

    impl Drop for KeepLogs {
        fn drop(&mut self) {
            if let Ok(dir) = std::env::var("NAT_LAB_KEEP") {
                for (name, log) in &self.0 {
                    let _ = std::fs::copy(log, std::path::Path::new(&dir).join(name));
                }
            }
        }
    }

    fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s: {what}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The Done-when lab of issue #19: three reachable nodes on the "internet", laptops A and
    /// B behind two masquerading routers, laptop C behind a symmetric NAT. A's mail to B is in
    /// B's INBOX within 15 s of the 250, pushed (the inbox poll is 10 min); A and B end up
    /// directly connected (hole punched), per `status`; C sends and receives through a relay.
    #[test]
    fn laptops_behind_nat_get_mail_pushed_through_relays_and_punched_connections() {
        let _heavy = crate::util::one_heavy_at_a_time();
        let Some(lab) = Lab::up_with("3", "3") else {
            return;
        };
        let slow_poll = [("collect_every = \"2s\"", "collect_every = \"10m\"")];
        let mut inet: Vec<Node> = (0..3)
            .map(|i| Node::new(&format!("srv{i}@nat.test"), &slow_poll))
            .collect();
        let mut a = Node::new("a@nat.test", &slow_poll);
        let mut b = Node::new("b@nat.test", &slow_poll);
        let mut c = Node::new("c@nat.test", &slow_poll);
        {
            let all: Vec<&Node> = inet.iter().chain([&a, &b, &c]).collect();
            vouch(&all, &all);
        }
        let _keep = KeepLogs(
            inet.iter()
                .chain([&a, &b, &c])
                .map(|n| (n.address.clone(), n.home.path("node.log")))
                .collect(),
        );
        mail_node(&lab, "inet", &mut inet[0], None);
        let boot = inet[0].listen.clone();
        for n in &mut inet[1..] {
            mail_node(&lab, "inet", n, Some(&boot));
        }
        for (ns, n) in [("h1", &mut a), ("h2", &mut b), ("h3", &mut c)] {
            mail_node(&lab, ns, n, Some(&boot));
        }
        // The laptops find they are behind NAT, reserve relay slots and publish the
        // relayed addresses; everybody's directory record resolves.
        for n in [&a, &b, &c] {
            wait_for(
                &format!("{} holds a relay reservation", n.address),
                40,
                || {
                    let s = status(n);
                    s["reachable"] == "no" && !strings(&s["relays"]).is_empty()
                },
            );
        }
        for n in &inet {
            assert_eq!(status(n)["dht_mode"], "server", "{}", n.address);
        }
        for (from, to) in [(&a, &b), (&a, &c), (&c, &a)] {
            wait_for(
                &format!("{} resolves {}", from.address, to.address),
                30,
                || {
                    from.home
                        .run(&["lookup", &to.address])
                        .output
                        .status
                        .success()
                },
            );
        }
        let peer = |n: &Node| status(n)["peer_id"].as_str().unwrap().to_string();
        let (pa, pb, pc) = (peer(&a), peer(&b), peer(&c));

        // A → B: pushed within 15 s; A and B then hold a direct (punched) connection.
        submit(&lab, "h1", &a, &b.address, "nat-a-to-b");
        let took = delivered_within(&lab, "h2", &b, "nat-a-to-b", 15);
        eprintln!("A -> B: in INBOX {took:?} after the 250");
        wait_for("A and B directly connected (hole punched)", 20, || {
            strings(&status(&a)["direct_peers"]).contains(&pb)
        });
        let (sa, sb) = (status(&a), status(&b));
        assert!(
            sa["hole_punches_won"].as_u64().unwrap() + sb["hole_punches_won"].as_u64().unwrap()
                >= 1,
            "a direct connection between two NATed laptops comes from a hole punch: {sa} {sb}"
        );
        assert!(strings(&sb["direct_peers"]).contains(&pa));

        // C (symmetric NAT) receives and sends through a relay: no punch can work there.
        submit(&lab, "h1", &a, &c.address, "nat-a-to-c");
        let took = delivered_within(&lab, "h3", &c, "nat-a-to-c", 15);
        eprintln!("A -> C: in INBOX {took:?} after the 250");
        submit(&lab, "h3", &c, &a.address, "nat-c-to-a");
        let took = delivered_within(&lab, "h1", &a, "nat-c-to-a", 15);
        eprintln!("C -> A: in INBOX {took:?} after the 250");
        let sc = status(&c);
        assert!(
            !strings(&sc["direct_peers"]).contains(&pa),
            "C behind a symmetric NAT cannot hold a direct connection to A: {sc}"
        );
        assert!(
            !strings(&status(&a)["direct_peers"]).contains(&pc),
            "A holds no direct connection to C"
        );

        // Mobility: B's laptop moves behind A's router (new link, new address), without a
        // restart. It notices, reconnects, reserves relays again and republishes; A drops
        // its dead connection to B's old address (pings fail) and pushes through the new
        // reservation.
        let out = Command::new(LAB)
            .args(["move", &lab.prefix, "2", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let moved = Instant::now();
        wait_for("B listens on its new address with relays", 60, || {
            let s = status(&b);
            strings(&s["listen"])
                .iter()
                .any(|l| l.contains("192.168.102.2"))
                && !strings(&s["relays"]).is_empty()
        });
        wait_for("A's connections to B's old address are gone", 60, || {
            !strings(&status(&a)["direct_peers"]).contains(&pb)
        });
        eprintln!("B moved: settled after {:?}", moved.elapsed());
        submit(&lab, "h1", &a, &b.address, "nat-after-move");
        let took = delivered_within(&lab, "h2", &b, "nat-after-move", 15);
        eprintln!("A -> B after the move: in INBOX {took:?} after the 250");
    }
}
