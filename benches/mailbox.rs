//! Mailbox benchmark: import rate, listing a 100k-message folder, and the engine's memory,
//! each next to a baseline measured in the same run. Run with `scripts/bench` (release
//! build). Prints a table; no thresholds here: the targets (import ≥ 5,000 msg/s of 4 KiB,
//! listing 100k ≤ 200 ms, RSS ≤ 150 MiB with 100k messages) are shown beside the figures.
//!
//! * Import goes through `transfer::import_maildir` (what `peerpost import DIR` runs) from a
//!   Maildir generated in a temporary directory (files in the page cache), into a fresh store
//!   each run. Baselines: reading the same files (`std::fs::read`, nothing else), and the
//!   store's `put_objects` of the same bytes, sealed beforehand and sealed in the loop, 256 per
//!   durable commit as the importer batches them.
//! * The 100k-message folder is made with `append_batch` and tiny bodies (creating 100k real
//!   messages would take minutes), with a mix of flags and keywords. Memory is VmRSS of this
//!   process, read from /proc/self/status before the engine is opened and after the 100k
//!   messages are in; this part runs first, so nothing else has grown the heap yet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use peerpost::crypto::{SealedObject, UserKeys};
use peerpost::mailbox::{Flag, Flags, Mailbox, MessageInfo, NewMessage, transfer};
use peerpost::store::Store;

const IMPORT_RUNS: usize = 5;
const LIST_RUNS: usize = 9;
const LISTED: usize = 100_000;
/// Messages per durable commit, as `import_maildir` and `append_batch` batch them.
const BATCH: usize = 256;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// "min–max" of samples, to show how noisy a median is (the machine may be shared).
fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("(runs {min:.0}–{max:.0})")
}

fn row(what: &str, ours: f64, unit: &str, target: &str) {
    println!("{what:<48} {ours:>12.1} {unit:<6} {target}");
}

fn base(what: &str, value: f64, unit: &str, ours: f64) {
    println!(
        "  baseline: {what:<36} {value:>12.1} {unit:<6} (ours / baseline = {:.2})",
        ours / value
    );
}

/// A field of /proc/self/status in KiB (VmRSS, RssAnon, RssFile).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// (VmRSS, RssAnon, RssFile) in KiB. RssFile counts the LMDB pages mapped in.
fn rss_kib() -> [u64; 3] {
    ["VmRSS", "RssAnon", "RssFile"].map(status_kib)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn open(dir: &Path) -> Mailbox {
    let store = Store::open(dir).expect("store");
    Mailbox::open(store, UserKeys::from_seed([1; 32]), [2; 32])
        .await
        .expect("open mailbox")
}

/// A plain-text message of exactly `size` bytes (text lines, LF).
fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: User {} <user{}@example.org>\nTo: <bob@example.net>\nSubject: bench message {i}\n\
         Date: Tue, 14 Nov 2023 22:13:20 +0000\nMessage-ID: <bench-{i}@example.org>\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n",
        i % 7,
        i % 7
    )
    .into_bytes();
    let line = b"alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike\n";
    while m.len() < size {
        let take = line.len().min(size - m.len());
        m.extend_from_slice(&line[..take]);
    }
    m.truncate(size);
    m
}

/// A Maildir with `n` messages of `size` bytes: two thirds read in cur/ (some flagged), the
/// rest in new/. Returns the file paths.
fn write_maildir(root: &Path, n: usize, size: usize) -> Vec<PathBuf> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    (0..n)
        .map(|i| {
            let base = format!("{}.M{i}P1.bench", 1_700_000_000 + i);
            let p = match i % 3 {
                0 => root.join("new").join(base),
                1 => root.join("cur").join(format!("{base}:2,S")),
                _ => root.join("cur").join(format!("{base}:2,FS")),
            };
            std::fs::write(&p, message(i, size)).expect("write");
            p
        })
        .collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

async fn import_bench(n: usize, size: usize) {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("Maildir");
    let files = write_maildir(&root, n, size);
    let label = format!("{} KiB", size >> 10);

    let mut rates = Vec::new();
    for _ in 0..IMPORT_RUNS {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = open(dir.path()).await;
        let t = Instant::now();
        let report = transfer::import_maildir(&mb, &root, 64 << 20, &|_, _| {})
            .await
            .expect("import");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.imported, n, "{:?}", report.skipped.first());
        rates.push(n as f64 / secs);
    }
    let ours = median(rates.clone());
    let target = if size == 4 << 10 {
        "target ≥ 5,000 msg/s"
    } else {
        ""
    };
    row(
        &format!("import_maildir, {n} × {label} (msg/s)"),
        ours,
        "msg/s",
        &format!("{target} {}", spread(&rates)),
    );
    println!(
        "{:<48} {:>12.1} MB/s",
        "  (same, in MB/s)",
        ours * size as f64 / 1e6
    );

    let reads = median(
        (0..IMPORT_RUNS)
            .map(|_| {
                let (total, d) = timed(|| {
                    files
                        .iter()
                        .map(|p| std::hint::black_box(std::fs::read(p).expect("read")).len())
                        .sum::<usize>()
                });
                assert_eq!(total, n * size);
                n as f64 / d.as_secs_f64()
            })
            .collect(),
    );
    base("fs::read of every file", reads, "msg/s", ours);

    let bodies: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let mut seal_put = Vec::new();
    for _ in 0..IMPORT_RUNS {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let t = Instant::now();
        for chunk in bodies.chunks(BATCH) {
            let objs = chunk
                .iter()
                .map(|b| SealedObject::seal(b).expect("seal").0)
                .collect();
            store.put_objects(objs).await.expect("put");
        }
        seal_put.push(n as f64 / t.elapsed().as_secs_f64());
    }
    base(
        "seal + put_objects (256/commit)",
        median(seal_put),
        "msg/s",
        ours,
    );

    let sealed: Vec<SealedObject> = bodies
        .iter()
        .map(|b| SealedObject::seal(b).expect("seal").0)
        .collect();
    drop(bodies);
    let mut put = Vec::new();
    for _ in 0..IMPORT_RUNS {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let batches: Vec<Vec<SealedObject>> = sealed.chunks(BATCH).map(<[_]>::to_vec).collect();
        let t = Instant::now();
        for b in batches {
            store.put_objects(b).await.expect("put");
        }
        put.push(n as f64 / t.elapsed().as_secs_f64());
    }
    base(
        "put_objects, pre-sealed (256/commit)",
        median(put),
        "msg/s",
        ours,
    );
}

/// A small fixed-size record, the least a listing of 100k messages could copy.
#[derive(Clone, Copy)]
struct Small {
    _uid: u32,
    _modseq: u64,
    _size: u64,
    _date: i64,
    _flags: u8,
}

async fn listing_and_memory_bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rss_before = rss_kib();
    let mb = open(dir.path()).await;
    let t = Instant::now();
    for start in (0..LISTED).step_by(10_000) {
        let msgs = (start..start + 10_000)
            .map(|i| {
                let mut flags = Flags::default();
                flags.set(Flag::Seen, i % 3 != 0);
                flags.set(Flag::Flagged, i % 7 == 0);
                flags.set(Flag::Replied, i % 11 == 0);
                if i % 50 == 0 {
                    flags.keywords.insert("$Label1".into());
                }
                NewMessage {
                    bytes: format!("Subject: m{i}\n\nx\n").into_bytes(),
                    internal_date: 1_700_000_000 + i as i64,
                    flags,
                    recent: i % 3 == 0,
                    maildir_name: None,
                }
            })
            .collect();
        mb.append_batch("INBOX", msgs).await.expect("append");
    }
    let append_secs = t.elapsed().as_secs_f64();
    let rss_after = rss_kib();
    row(
        "append_batch, 100k tiny messages (setup, msg/s)",
        LISTED as f64 / append_secs,
        "msg/s",
        "(not a target: builds the folder below)",
    );

    let mut samples = Vec::new();
    let mut listed = Vec::new();
    for _ in 0..LIST_RUNS {
        let (v, d) = timed(|| mb.messages("INBOX").expect("list"));
        assert_eq!(v.len(), LISTED);
        samples.push(d.as_secs_f64() * 1e3);
        listed = v;
    }
    let ours = median(samples.clone());
    row(
        "messages(\"INBOX\"), 100k with flags (ms)",
        ours,
        "ms",
        &format!("target ≤ 200 ms {}", spread(&samples)),
    );
    let clone_result = median(
        (0..LIST_RUNS)
            .map(|_| {
                let (v, d) = timed(|| std::hint::black_box(listed.clone()));
                drop(v);
                d.as_secs_f64() * 1e3
            })
            .collect(),
    );
    base("clone of the Vec<MessageInfo>", clone_result, "ms", ours);
    let small: Vec<Small> = listed.iter().map(small_of).collect();
    let clone_small = median(
        (0..LIST_RUNS)
            .map(|_| {
                let (v, d) = timed(|| std::hint::black_box(small.clone()));
                drop(v);
                d.as_secs_f64() * 1e3
            })
            .collect(),
    );
    base("clone of 100k 40-byte structs", clone_small, "ms", ours);
    drop((listed, small));

    let delta = |i: usize| mib(rss_after[i].saturating_sub(rss_before[i]));
    println!(
        "{:<48} {:>12.1} MiB    target ≤ 150 MiB",
        "engine RSS with 100k messages (VmRSS delta)",
        delta(0),
    );
    println!(
        "  of which heap (RssAnon) {:.1} MiB, LMDB map and files (RssFile) {:.1} MiB; \
         process VmRSS {:.1} MiB before the engine, {:.1} MiB after",
        delta(1),
        delta(2),
        mib(rss_before[0]),
        mib(rss_after[0]),
    );

    drop(mb);
    let (mb, d) = {
        let t = Instant::now();
        let mb = open(dir.path()).await;
        (mb, t.elapsed())
    };
    assert_eq!(mb.messages("INBOX").expect("list").len(), LISTED);
    row(
        "re-open with 100k messages (replay logs, ms)",
        d.as_secs_f64() * 1e3,
        "ms",
        "",
    );
}

fn small_of(m: &MessageInfo) -> Small {
    Small {
        _uid: m.uid,
        _modseq: m.modseq,
        _size: m.size,
        _date: m.internal_date,
        _flags: m.flags.bits,
    }
}

fn main() {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "peerpost mailbox benchmark: import medians of {IMPORT_RUNS} runs, listing medians of {LIST_RUNS}"
    );
    println!(
        "load average before the run: {} (2 cores shared: figures vary with it)",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("{}", "-".repeat(120));
    rt.block_on(async {
        listing_and_memory_bench().await;
        println!("{}", "-".repeat(120));
        import_bench(10_000, 4 << 10).await;
        import_bench(2_000, 64 << 10).await;
    });
    println!("{}", "-".repeat(120));
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
