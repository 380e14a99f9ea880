//! Durability in an in-process ring (issue #6): a user's 10,000-message mailbox backed up with
//! the calculator's n/k; the bytes held across the ring against n/k (and how much of it is
//! metadata: fragment headers and manifests, leases, the index); the time to restore the
//! mailbox on a fresh node from the phrase alone (target ≤ 60 s); the repair traffic after one
//! holder is lost; and, in fresh rings, the fraction of bundles recovered after 70 % and 80 %
//! of the ring fail at once beside the calculator's prediction. No thresholds: figures only.
//!
//!   PEERPOST_BENCH_NODES=60 PEERPOST_BENCH_MESSAGES=10000 PEERPOST_BENCH_TRIAL_BUNDLES=60
//!   PEERPOST_BENCH_FRACTIONS=0.6,0.7,0.8 (failure trials; empty: none)

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use peerpost::crypto::{DeviceKey, SealedObject, UserKeys};
use peerpost::durability::backup::{self, Backup, BackupConfig};
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

async fn mailbox_bench(nodes: usize, messages: usize) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut ring = start_ring(nodes, dir.path(), |_| {}).await.unwrap();
    println!(
        "ring of {nodes} nodes up in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let keys = UserKeys::generate().unwrap();
    let seed = *keys.seed();
    let store = ring.node(1).store().clone();
    let mb = Mailbox::open(store.clone(), keys, DeviceKey::generate().unwrap().public())
        .await
        .unwrap();
    let msgs: Vec<NewMessage> = (0..messages)
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
        .collect();
    let plain: u64 = msgs.iter().map(|m| m.bytes.len() as u64).sum();
    mb.append_batch("INBOX", msgs).await.unwrap();
    let objects = store.stats().await.unwrap().object_bytes;

    let cfg = BackupConfig {
        ring_size: Some(nodes - 1),
        ..BackupConfig::default()
    };
    let b = Backup::new(
        ring.node(1).client().clone(),
        store.clone(),
        UserKeys::from_seed(seed),
        cfg,
    );
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
        mailbox_bench(nodes, messages).await;
        let fractions = std::env::var("PEERPOST_BENCH_FRACTIONS").unwrap_or("0.6,0.7,0.8".into());
        for f in fractions
            .split(',')
            .filter_map(|f| f.trim().parse::<f64>().ok())
        {
            failure_trial(nodes, trial, f).await;
        }
    });
}
