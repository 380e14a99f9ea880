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
        fn up() -> Option<Lab> {
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
            let out = Command::new(LAB).args(["up", &prefix, "1"]).output().ok()?;
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
            let home = TestHome::new();
            let n = self.nodes.len();
            home.init(&format!("user{n}@nat.test")).success();
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
}
