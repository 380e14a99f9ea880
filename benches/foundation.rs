//! Foundation benchmark: sealing, hashing, envelopes and the store, each next to its baseline
//! measured in the same run (the raw primitive without peerpost's framing), as medians of
//! several runs. Run with `scripts/bench` (release build). Prints a table; no thresholds
//! here: the targets (seal ≥ 500 MB/s, BLAKE3 ≥ 2 GB/s on one core) are shown beside the
//! figures.
//!
//! The baselines call chacha20poly1305 and blake3 directly: the one place outside
//! `src/crypto` that does, on purpose, to measure what peerpost's framing costs.

use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use peerpost::crypto::{Envelope, ObjectId, SealedObject, UserKeys};
use peerpost::store::Store;

const RUNS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `f` repeatedly for about `budget`, returns operations per second; median of RUNS.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let samples = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < budget {
                f();
                n += 1;
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    median(samples)
}

fn row(what: &str, ours: f64, base_name: &str, base: f64, unit: &str, target: &str) {
    println!(
        "{what:<34} {ours:>10.1} {unit:<6} | {base_name:<28} {base:>10.1} {unit:<6} | ratio {:>5.2} | {target}",
        ours / base
    );
}

fn main() {
    let budget = Duration::from_millis(300);
    println!(
        "peerpost foundation benchmark: medians of {RUNS} runs of {} ms, one thread",
        budget.as_millis()
    );
    println!("{}", "-".repeat(130));

    for size in [1usize << 20, 64 << 10] {
        let data = vec![0x5au8; size];
        let mb = size as f64 / 1e6;
        let seal = rate(budget, || {
            std::hint::black_box(SealedObject::seal(&data).expect("seal"));
        }) * mb;
        let key = [7u8; 32];
        let cipher = XChaCha20Poly1305::new_from_slice(&key).expect("key");
        let mut buf = data.clone();
        let raw = rate(budget, || {
            std::hint::black_box(
                cipher
                    .encrypt_inout_detached(
                        &XNonce::from([1u8; 24]),
                        b"",
                        buf.as_mut_slice().into(),
                    )
                    .expect("encrypt"),
            );
        }) * mb;
        row(
            &format!("seal + id, {} KiB (MB/s)", size >> 10),
            seal,
            "raw XChaCha20-Poly1305",
            raw,
            "MB/s",
            "target ≥ 500 MB/s",
        );
        let (obj, ck) = SealedObject::seal(&data).expect("seal");
        let open = rate(budget, || {
            std::hint::black_box(obj.open(&ck).expect("open"));
        }) * mb;
        row(
            &format!("open, {} KiB (MB/s)", size >> 10),
            open,
            "raw XChaCha20-Poly1305",
            raw,
            "MB/s",
            "",
        );
        let hash = rate(budget, || {
            std::hint::black_box(ObjectId::of(&data));
        }) * mb;
        let raw_hash = rate(budget, || {
            std::hint::black_box(blake3::hash(&data));
        }) * mb;
        row(
            &format!("object id (BLAKE3), {} KiB", size >> 10),
            hash,
            "raw blake3::hash",
            raw_hash,
            "MB/s",
            "target ≥ 2000 MB/s",
        );
    }

    let alice = UserKeys::from_seed([1; 32]);
    let bob = UserKeys::from_seed([2; 32]);
    let payload = [9u8; 100];
    let env_seal = rate(budget, || {
        std::hint::black_box(Envelope::seal(&alice, &bob.public().enc, &payload).expect("seal"));
    });
    let env = Envelope::seal(&alice, &bob.public().enc, &payload).expect("seal");
    let env_open = rate(budget, || {
        std::hint::black_box(env.open(&bob).expect("open"));
    });
    println!(
        "{:<34} {env_seal:>10.0} /s     | crate evaluation: HPKE base seal ≈ 7,900/s + Ed25519 sign ≈ 43,000/s",
        "envelope seal (100 B payload)"
    );
    println!(
        "{:<34} {env_open:>10.0} /s     | crate evaluation: HPKE open ≈ 7,900/s + Ed25519 verify ≈ 18,000/s",
        "envelope open (100 B payload)"
    );

    // What counting costs a server command (issue #17): the family lookup and increment every
    // IMAP/POP3/SMTP command pays whether the endpoint is on or off, beside a bare atomic add.
    let counted = rate(budget, || {
        peerpost::metrics::get().command("imap", std::hint::black_box("FETCH"));
    });
    let atomic = std::sync::atomic::AtomicU64::new(0);
    let bare = rate(budget, || {
        std::hint::black_box(&atomic).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    row(
        "metrics: count one command",
        counted / 1e6,
        "AtomicU64::fetch_add",
        bare / 1e6,
        "M/s",
        &format!(
            "{:.0} ns a command; an IMAP FETCH takes ≥ 10 µs",
            1e9 / counted
        ),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let objs: Vec<SealedObject> = (0..2000u32)
        .map(|i| {
            SealedObject::seal(&i.to_be_bytes().repeat(1000))
                .expect("seal")
                .0
        })
        .collect();
    let ids: Vec<ObjectId> = objs.iter().map(|o| o.id()).collect();
    rt.block_on(async {
        // A fresh object each time: re-putting an existing one writes nothing.
        let mut n = 0u64;
        let single = rate(budget, || {
            n += 1;
            let o = SealedObject::seal(&n.to_be_bytes().repeat(500)).expect("seal").0;
            futures_block(&store, o);
        });
        let mut batches = Vec::new();
        for chunk in objs.chunks(100) {
            let t = Instant::now();
            store.put_objects(chunk.to_vec()).await.expect("put");
            batches.push(100.0 / t.elapsed().as_secs_f64());
        }
        let batch = median(batches);
        println!(
            "{:<34} {single:>10.0} /s     | crate evaluation: heed, 1 put per durable commit ≈ 6,000/s",
            "store put, 1 per commit (4 KB)"
        );
        println!(
            "{:<34} {batch:>10.0} /s     | crate evaluation: heed, 1000 per durable commit ≈ 83,000/s",
            "store put, 100 per commit (4 KB)"
        );
        let mut i = 0usize;
        let gets = {
            let mut samples = Vec::new();
            for _ in 0..RUNS {
                let t = Instant::now();
                let mut n = 0;
                while t.elapsed() < budget {
                    store.get_object(ids[i % ids.len()]).await.expect("get");
                    i += 1;
                    n += 1;
                }
                samples.push(n as f64 / t.elapsed().as_secs_f64());
            }
            median(samples)
        };
        println!(
            "{:<34} {gets:>10.0} /s     | crate evaluation: heed random get (in-thread) ≈ 1,000,000/s; \
             ours adds spawn_blocking + hash check",
            "store get + verify (4 KB)"
        );
    });
}

/// A synchronous put from inside the bench loop (the store itself hops to the blocking pool).
fn futures_block(store: &Store, o: SealedObject) {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current()
            .block_on(store.put_object(o))
            .expect("put");
    });
}
