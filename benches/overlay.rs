//! Overlay benchmark: a ring of in-process nodes (memory transport, one store each), then
//! directory lookups (time and Kademlia requests per lookup), object put/get latency for
//! 4 KiB and 1 MiB, and idle resident memory per node. Run with `scripts/bench-overlay`
//! (release build). Prints a table; the targets are shown beside the figures, never asserted.
//!
//! `PEERPOST_BENCH_NODES` (default 100) sets the ring size.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use peerpost::crypto::SealedObject;
use peerpost::node::testing::start_ring;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A small deterministic generator (no rand dependency): xorshift64.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn main() {
    let n: usize = std::env::var("PEERPOST_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let before = rss_kib();
        let started = Instant::now();
        let ring = start_ring(n, dir.path(), |_| {}).await.unwrap();
        let setup = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = rss_kib().saturating_sub(before);
        let mut table = Vec::new();
        for node in ring.live() {
            table.push(node.client().status().await.unwrap().routing_table as f64);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

        let lookups = 500;
        let (mut ms, mut reqs) = (Vec::new(), Vec::new());
        for _ in 0..lookups {
            let (from, to) = (rng.below(n), rng.below(n));
            let t = Instant::now();
            let found = ring
                .node(from)
                .client()
                .lookup(&ring.addresses[to])
                .await
                .unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            reqs.push(f64::from(found.requests));
        }

        let mut rows = Vec::new();
        for (label, size, count) in [("4 KiB", 4096usize, 50), ("1 MiB", 1 << 20, 20)] {
            let (mut put, mut get) = (Vec::new(), Vec::new());
            for i in 0..count {
                let (obj, _) = SealedObject::seal(&vec![i as u8; size]).unwrap();
                let (a, b) = (rng.below(n), rng.below(n));
                let t = Instant::now();
                ring.node(a).client().put_object(&obj).await.unwrap();
                put.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                ring.node(b).client().get_object(obj.id()).await.unwrap();
                get.push(t.elapsed().as_secs_f64() * 1e3);
            }
            rows.push((
                label,
                pct(&mut put, 0.5),
                pct(&mut put, 0.95),
                pct(&mut get, 0.5),
                pct(&mut get, 0.95),
            ));
        }

        println!(
            "overlay benchmark: {n} in-process nodes (memory transport), ring set up in {:.1} s",
            setup.as_secs_f64()
        );
        println!("{:<37} {:>10} {:>10}   target", "", "median", "p95");
        println!(
            "{:<37} {:>7.2} ms {:>7.2} ms",
            format!("directory lookup ({lookups} lookups)"),
            pct(&mut ms, 0.5),
            pct(&mut ms, 0.95)
        );
        println!(
            "{:<37} {:>10.0} {:>10.0}",
            "  Kademlia requests per lookup",
            pct(&mut reqs, 0.5),
            pct(&mut reqs, 0.95)
        );
        // With disjoint query paths the lookup runs α = 3 independent chains of requests;
        // requests per chain is the number of hops along it.
        let mut hops: Vec<f64> = reqs.iter().map(|r| r / 3.0).collect();
        println!(
            "{:<37} {:>10.1} {:>10.1}   ≤ 3 hops",
            "  hops (estimate: requests / 3 paths)",
            pct(&mut hops, 0.5),
            pct(&mut hops, 0.95)
        );
        println!(
            "{:<37} {:>10.0} {:>10.0}   (of {} other nodes)",
            "  routing-table size",
            pct(&mut table, 0.5),
            pct(&mut table, 0.05),
            n - 1
        );
        for (label, pm, p95, gm, g95) in rows {
            println!(
                "{:<37} {:>7.2} ms {:>7.2} ms",
                format!("object put {label} (3 copies)"),
                pm,
                p95
            );
            println!(
                "{:<37} {:>7.2} ms {:>7.2} ms",
                format!("object get {label}"),
                gm,
                g95
            );
        }
        println!(
            "{:<37} {:>7.2} MiB              (≤ 10 MiB)",
            "idle RSS per node",
            idle as f64 / 1024.0 / n as f64
        );
        println!(
            "\nlibp2p-kad does not report hops; a lookup's requests are its Kademlia RPCs over 3\n\
             disjoint paths (stopped after 3 valid copies), so hops ≈ requests / 3. The routing-\n\
             table row is median and 5th percentile."
        );
        ring.shutdown().await;
    });
}
