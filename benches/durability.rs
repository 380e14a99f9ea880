//! Durability benchmark: encode and rebuild rates of bundles at the calculator's parameters,
//! and their storage overhead, beside the raw BLAKE3 hashing of the same bytes (what every
//! fragment costs to verify). Medians of several runs; no thresholds.

use std::time::Instant;

use peerpost::crypto::ObjectId;
use peerpost::durability::{self, ReedSolomon8, make_fragments, rebuild};

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    println!("peerpost durability benchmark: medians of {RUNS} runs, one thread");
    println!("{}", "-".repeat(110));
    for (label, choice) in [
        (
            "large ring, ≤128 fragments (default)",
            durability::choose(None, 0.6, 1e-6, 128),
        ),
        (
            "Glacier's 48 fragments",
            durability::choose(None, 0.6, 1e-6, 48),
        ),
        (
            "ring of 60 nodes",
            durability::choose(Some(60), 0.6, 1e-6, 128),
        ),
    ] {
        let p = choice.params;
        println!(
            "{label}: n = {}, k = {}, overhead {:.2}×, P(loss) = {:.2e} at 60 % failure",
            p.n,
            p.k,
            p.overhead(),
            choice.loss
        );
        for size in [64usize << 10, 4 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let mb = size as f64 / 1e6;
            let enc = median(
                (0..RUNS)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(
                            make_fragments(&ReedSolomon8, &data, p).expect("encode"),
                        );
                        mb / t.elapsed().as_secs_f64()
                    })
                    .collect(),
            );
            let frags = make_fragments(&ReedSolomon8, &data, p).expect("encode");
            // Worst case: only parity fragments survive (every data shard rebuilt).
            let survivors: Vec<_> = frags.iter().rev().take(usize::from(p.k)).cloned().collect();
            let dec = median(
                (0..RUNS)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(
                            rebuild(&ReedSolomon8, survivors.clone()).expect("rebuild"),
                        );
                        mb / t.elapsed().as_secs_f64()
                    })
                    .collect(),
            );
            let hash = median(
                (0..RUNS)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(ObjectId::of(&data));
                        mb / t.elapsed().as_secs_f64()
                    })
                    .collect(),
            );
            println!(
                "  {:>5} KiB bundle: encode {enc:>8.1} MB/s · rebuild from parity {dec:>8.1} MB/s · (BLAKE3 of the bundle {hash:>8.1} MB/s)",
                size >> 10
            );
        }
    }
}
