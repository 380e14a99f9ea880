//! Durability in an in-process ring (issue #6): a user's 10,000-message mailbox backed up with
//! the calculator's n/k; the bytes held across the ring against n/k (and how much of it is
//! metadata: fragment headers and manifests, leases, the index); the time to restore the
//! mailbox on a fresh node from the phrase alone (target ≤ 60 s); the repair traffic after one
//! holder is lost; and, in fresh rings, the fraction of bundles recovered after 70 % and 80 %
//! of the ring fail at once beside the calculator's prediction; the storage held at steady
//! state (mail trickling in as small bundles, then compacted) against n/k; and the bytes moved
//! to re-spread a mailbox when the ring grows from 10 to 40 peers. No thresholds: figures only.
//!
//!   PEERPOST_BENCH_NODES=60 PEERPOST_BENCH_MESSAGES=10000 PEERPOST_BENCH_TRIAL_BUNDLES=60
//!   PEERPOST_BENCH_FRACTIONS=0.6,0.7,0.8 (failure trials; empty: none)
//!   PEERPOST_BENCH_ONLY=mailbox,steady,growth (which of the other parts run; default all)

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use peerpost::crypto::{DeviceKey, SealedObject, UserKeys};
use peerpost::durability::backup::{self, Backup, BackupConfig, PassOptions};
use peerpost::durability::params::{choose, loss_hypergeometric};
use peerpost::durability::repair::{self, RepairLimits};
use peerpost::durability::{ReedSolomon8, ring};
use peerpost::mailbox::{Flags, Mailbox, NewMessage};
use peerpost::node::{self, testing::start_ring};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// xorshift64 shuffle (seed printed by the caller).
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut s = seed | 1;
    for i in (1..v.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
}

async fn held_bytes(ring: &node::testing::Ring) -> u64 {
    let mut total = 0;
    for n in ring.live() {
        total += n.client().status().await.unwrap().held_bytes;
    }
    total
}

/// Node 1's user: a fresh identity, its mailbox, and its backup (sized for `ring_size` peers
/// when given, else for the ring as the pass sees it).
async fn owner(
    ring: &node::testing::Ring,
    ring_size: Option<usize>,
) -> ([u8; 32], peerpost::store::Store, Mailbox, Backup) {
    let keys = UserKeys::generate().unwrap();
    let seed = *keys.seed();
    let store = ring.node(1).store().clone();
    let mb = Mailbox::open(store.clone(), keys, DeviceKey::generate().unwrap().public())
        .await
        .unwrap();
    let cfg = BackupConfig {
        ring_size,
        ..BackupConfig::default()
    };
    let b = Backup::new(
        ring.node(1).client().clone(),
        store.clone(),
        UserKeys::from_seed(seed),
        cfg,
    );
    (seed, store, mb, b)
}

async fn mailbox_bench(nodes: usize, messages: usize) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut ring = start_ring(nodes, dir.path(), |_| {}).await.unwrap();
    println!(
        "ring of {nodes} nodes up in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let (seed, store, mb, b) = owner(&ring, Some(nodes - 1)).await;
    let msgs = bench_messages(0, messages);
    let plain: u64 = msgs.iter().map(|m| m.bytes.len() as u64).sum();
    mb.append_batch("INBOX", msgs).await.unwrap();
    let objects = store.stats().await.unwrap().object_bytes;
    let p = b.params().await.unwrap();
    let t = Instant::now();
    let report = b.run_once(false).await.unwrap();
    let took = t.elapsed().as_secs_f64();
    println!(
        "backup of {messages} messages ({:.1} MB plaintext, {:.1} MB sealed, {} log entries): \
         {} bundles with n = {}, k = {} in {took:.1}s ({:.2} MB/s sealed)",
        plain as f64 / 1e6,
        objects as f64 / 1e6,
        report.log_entries,
        report.bundles,
        p.n,
        p.k,
        objects as f64 / 1e6 / took
    );

    // Storage across the ring against n/k.
    let mut entries = backup::entries(&store).await.unwrap();
    entries.push(backup::state(&store).await.unwrap().unwrap().1);
    let data: u64 = entries.iter().map(|e| e.bytes).sum();
    let shards: u64 = entries
        .iter()
        .map(|e| {
            let k = u64::from(e.receipt.params.k);
            let shard = e.bytes.div_ceil(k).div_ceil(64).max(1) * 64;
            shard * u64::from(e.receipt.params.n)
        })
        .sum();
    let held = held_bytes(&ring).await;
    println!(
        "held across the ring: {:.1} MB for {:.1} MB of bundles = {:.2}× (n/k = {:.2}); \
         coded shards {:.1} MB, metadata (fragment headers and manifests, leases) {:.2} % of \
         what is held",
        held as f64 / 1e6,
        data as f64 / 1e6,
        held as f64 / data as f64,
        p.overhead(),
        shards as f64 / 1e6,
        (held - shards.min(held)) as f64 * 100.0 / held as f64
    );

    // Restore on a fresh node from the phrase alone.
    let (fresh, device) = ring.join(dir.path()).await.unwrap();
    let t = Instant::now();
    let node = ring.node(fresh);
    let (restored, summary) = node::restore_mailbox(
        node.client(),
        node.store(),
        &UserKeys::from_seed(seed),
        device,
        &|_| {},
    )
    .await
    .unwrap();
    let took = t.elapsed().as_secs_f64();
    assert_eq!(summary.messages, messages);
    assert_eq!(restored.canonical(), mb.canonical());
    println!(
        "restore of the {messages}-message mailbox on a fresh node: {took:.1}s \
         ({} bundles, {:.1} MB; target ≤ 60 s)",
        summary.bundles,
        summary.bytes as f64 / 1e6
    );

    // One holder is lost: what the holders send and fetch to repair.
    let lost = (2..nodes).find(|&i| i != fresh).unwrap();
    let lost_held = ring.node(lost).client().status().await.unwrap();
    ring.kill(lost).await;
    let limits = RepairLimits {
        pause: Duration::ZERO,
        max_bundles: usize::MAX,
        max_bytes: u64::MAX,
    };
    let t = Instant::now();
    let (mut sent, mut fetched, mut made, mut rounds) = (0u64, 0u64, 0usize, 0);
    loop {
        rounds += 1;
        let mut this_round = 0;
        for n in ring.live() {
            let st = repair::holder_pass(
                n.client(),
                n.store(),
                &ReedSolomon8,
                limits,
                now(),
                &mut repair::HolderState::default(),
            )
            .await
            .unwrap();
            sent += st.bytes_sent;
            fetched += st.bytes_fetched;
            this_round += st.fragments_recreated;
        }
        made += this_round;
        if this_round == 0 || rounds == 4 {
            break;
        }
    }
    println!(
        "one node lost (it held {} blobs, {:.2} MB: fragments and their leases): {made} \
         fragments re-created in {rounds} rounds of holder passes, {:.1}s; repair traffic \
         {:.2} MB sent + {:.2} MB fetched ({:.1}× the bytes re-created)",
        lost_held.held_blobs,
        lost_held.held_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        sent as f64 / 1e6,
        fetched as f64 / 1e6,
        (sent + fetched) as f64 / sent.max(1) as f64
    );
    ring.shutdown().await;
}

/// Every live node's holder pass once (expired leases and their fragments go), `at` seconds
/// from now.
async fn holder_passes(ring: &node::testing::Ring, ahead: u64) {
    let limits = RepairLimits {
        pause: Duration::ZERO,
        max_bundles: usize::MAX,
        max_bytes: u64::MAX,
    };
    for n in ring.live() {
        repair::holder_pass(
            n.client(),
            n.store(),
            &ReedSolomon8,
            limits,
            now() + ahead,
            &mut repair::HolderState::default(),
        )
        .await
        .unwrap();
    }
}

/// Coded bytes the ring holds for `entries` (shards as `ring::store` pads them, n of each).
fn coded_bytes(entries: &[backup::Entry]) -> u64 {
    entries
        .iter()
        .map(|e| {
            let k = u64::from(e.receipt.params.k);
            e.bytes.div_ceil(k).div_ceil(64).max(1) * 64 * u64::from(e.receipt.params.n)
        })
        .sum()
}

fn bench_messages(from: usize, count: usize) -> Vec<NewMessage> {
    (from..from + count)
        .map(|i| NewMessage {
            bytes: format!(
                "From: s{i}@bench.test\r\nSubject: message {i}\r\n\r\n{}\r\n",
                "lorem ipsum dolor sit amet ".repeat(10 + i % 140)
            )
            .into_bytes(),
            internal_date: 1_700_000_000 + i as i64,
            flags: Flags::default(),
            recent: false,
            maildir_name: None,
        })
        .collect()
}

/// Mail that trickles in: `rounds` passes of `per_round` new messages each (every pass places
/// small bundles at once, as the node does within `backup_every_secs` of a 250), then the
/// quiet-time compaction; storage held against n/k before and after.
async fn steady_state_bench(nodes: usize, rounds: usize, per_round: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ring = start_ring(nodes, dir.path(), |_| {}).await.unwrap();
    let (_, store, mb, b) = owner(&ring, Some(nodes - 1)).await;
    let p = b.params().await.unwrap();
    for r in 0..rounds {
        mb.append_batch("INBOX", bench_messages(r * per_round, per_round))
            .await
            .unwrap();
        b.run_once(false).await.unwrap();
    }
    let report = |label: &str, entries: &[backup::Entry], held: u64| {
        let data: u64 = entries.iter().map(|e| e.bytes).sum();
        println!(
            "{label}: {} bundles, {:.2} MB of bundles, held {:.2} MB = {:.2}× the bundles \
             (n/k = {:.2}; {:+.1} % vs n/k), coded shards {:.2} MB",
            entries.len(),
            data as f64 / 1e6,
            held as f64 / 1e6,
            held as f64 / data as f64,
            p.overhead(),
            (held as f64 / data as f64 / p.overhead() - 1.0) * 100.0,
            coded_bytes(entries) as f64 / 1e6,
        );
    };
    let with_index = |mut e: Vec<backup::Entry>, idx: Option<(u64, backup::Entry)>| {
        e.extend(idx.map(|(_, i)| i));
        e
    };
    let before = with_index(
        backup::entries(&store).await.unwrap(),
        backup::state(&store).await.unwrap(),
    );
    holder_passes(&ring, 1).await;
    report(
        &format!("{rounds} passes of {per_round} new messages"),
        &before,
        held_bytes(&ring).await,
    );
    let t = Instant::now();
    let mut recoded = 0;
    loop {
        let r = b
            .run_pass(PassOptions {
                compact: true,
                ..PassOptions::default()
            })
            .await
            .unwrap();
        recoded += r.recoded;
        if r.recoded == 0 {
            break;
        }
    }
    let took = t.elapsed().as_secs_f64();
    holder_passes(&ring, 1).await;
    let after = with_index(
        backup::entries(&store).await.unwrap(),
        backup::state(&store).await.unwrap(),
    );
    report(
        &format!("after compaction ({recoded} small bundles merged in {took:.1}s, released)"),
        &after,
        held_bytes(&ring).await,
    );
    ring.shutdown().await;
}

/// A mailbox placed while the ring has `small` peers; the ring grows to `large`; the owner's
/// pass re-codes what is now below target. Bytes placed anew and bytes held before and after.
async fn growth_bench(small: usize, large: usize, messages: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = start_ring(small + 1, dir.path(), |_| {}).await.unwrap();
    let (_, store, mb, b) = owner(&ring, None).await;
    mb.append_batch("INBOX", bench_messages(0, messages))
        .await
        .unwrap();
    b.run_pass(PassOptions {
        ring: Some(small),
        ..PassOptions::default()
    })
    .await
    .unwrap();
    let placed = backup::entries(&store).await.unwrap();
    let data: u64 = placed.iter().map(|e| e.bytes).sum();
    let held_small = held_bytes(&ring).await;
    let p_small = b.params_for(small);
    let t = Instant::now();
    for _ in 0..(large - small) {
        ring.join(dir.path()).await.unwrap();
    }
    println!(
        "ring grows from {small} to {large} peers ({:.1}s); {} bundles, {:.2} MB, placed with \
         n = {}, k = {} hold {:.2} MB",
        t.elapsed().as_secs_f64(),
        placed.len(),
        data as f64 / 1e6,
        p_small.n,
        p_small.k,
        held_small as f64 / 1e6
    );
    let t = Instant::now();
    let r = b
        .run_pass(PassOptions {
            ring: Some(large),
            ..PassOptions::default()
        })
        .await
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let mut after = backup::entries(&store).await.unwrap();
    after.extend(backup::state(&store).await.unwrap().map(|(_, i)| i));
    let moved = coded_bytes(&after);
    let held_mid = held_bytes(&ring).await;
    holder_passes(&ring, 1).await;
    let held_large = held_bytes(&ring).await;
    let p_large = b.params_for(large);
    let failed = |r: usize| (r as f64 * 0.6).ceil() as usize;
    let loss = |p: peerpost::durability::params::Params, r: usize| {
        loss_hypergeometric(r, failed(r), usize::from(p.n), usize::from(p.k))
    };
    println!(
        "re-spread for {large} peers: {} bundles re-coded to n = {}, k = {} in {took:.1}s; \
         bytes moved (fragments placed anew, with the index) {:.2} MB = {:.2}× the bundles; \
         held {:.2} MB right after, {:.2} MB once the holders released the old fragments; \
         P(loss at 60 %) {:.1e} -> {:.1e}",
        r.recoded,
        p_large.n,
        p_large.k,
        moved as f64 / 1e6,
        moved as f64 / data as f64,
        held_mid as f64 / 1e6,
        held_large as f64 / 1e6,
        loss(p_small, large),
        loss(p_large, large),
    );
    ring.shutdown().await;
}

/// A fresh ring; `bundles` one-object bundles stored by node 0 with the n/k for 60 %; then
/// `fraction` of the other nodes (the holders) fail at once; node 0 reads every bundle.
async fn failure_trial(nodes: usize, bundles: usize, fraction: f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = start_ring(nodes, dir.path(), |_| {}).await.unwrap();
    let holders = nodes - 1;
    let max_n = (holders - holders / 4) as u16;
    let p = choose(Some(holders), 0.6, 1e-6, max_n).params;
    let client = ring.node(0).client().clone();
    let mut receipts = Vec::new();
    for i in 0..bundles {
        let obj = SealedObject::seal(format!("bundle {i}").as_bytes())
            .unwrap()
            .0;
        receipts.push(
            ring::store(&client, &ReedSolomon8, &[obj], p)
                .await
                .unwrap(),
        );
    }
    let failed = (holders as f64 * fraction).ceil() as usize;
    let seed = u64::from_be_bytes(peerpost::crypto::random_bytes::<8>().unwrap());
    let mut order: Vec<usize> = (1..nodes).collect();
    shuffle(&mut order, seed);
    for &i in &order[..failed] {
        ring.kill(i).await;
    }
    let mut ok = 0;
    for r in &receipts {
        if ring::fetch(&client, &ReedSolomon8, r).await.is_ok() {
            ok += 1;
        }
    }
    let predicted = 1.0 - loss_hypergeometric(holders, failed, usize::from(p.n), usize::from(p.k));
    println!(
        "{:.0} % of {holders} holders failed (seed {seed:#x}): {ok}/{bundles} bundles recovered \
         = {:.3}; the calculator predicts {predicted:.3} (n = {}, k = {})",
        fraction * 100.0,
        ok as f64 / bundles as f64,
        p.n,
        p.k
    );
    ring.shutdown().await;
}

fn main() {
    let nodes = env("PEERPOST_BENCH_NODES", 60);
    let messages = env("PEERPOST_BENCH_MESSAGES", 10_000);
    let trial = env("PEERPOST_BENCH_TRIAL_BUNDLES", 60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("peerpost durability in the ring (in-process, memory transport)");
    println!("{}", "-".repeat(100));
    rt.block_on(async {
        if std::env::var("PEERPOST_BENCH_ONLY").map_or(true, |v| v.contains("mailbox")) {
            mailbox_bench(nodes, messages).await;
        }
        if std::env::var("PEERPOST_BENCH_ONLY").map_or(true, |v| v.contains("steady")) {
            steady_state_bench(nodes.min(20), 40, messages / 200).await;
        }
        if std::env::var("PEERPOST_BENCH_ONLY").map_or(true, |v| v.contains("growth")) {
            growth_bench(10, 40, messages / 5).await;
        }
        let fractions = std::env::var("PEERPOST_BENCH_FRACTIONS").unwrap_or("0.6,0.7,0.8".into());
        for f in fractions
            .split(',')
            .filter_map(|f| f.trim().parse::<f64>().ok())
        {
            failure_trial(nodes, trial, f).await;
        }
    });
}
