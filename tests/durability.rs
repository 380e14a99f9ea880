//! Erasure-coded bundles in a ring of full nodes (one process, memory transport): stored by
//! one node with the calculator's parameters for the ring, every message is still readable
//! after 60 % of the nodes — the owner among them — fail at the same moment.

use peerpost::crypto::{ContentKey, SealedObject};
use peerpost::durability::{self, ReedSolomon8, ring};
use peerpost::node::testing::start_ring;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_survives_losing_60_percent_of_the_ring_and_the_owner() {
    const NODES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut ring_nodes = start_ring(NODES, dir.path(), |_| {}).await.unwrap();

    // The calculator for the 19 peers that hold fragments (the owner keeps its own full
    // copy): 60 % of them, 12, may fail → 7 survive, so any 7 of 19 fragments rebuild.
    let choice = durability::choose(Some(NODES - 1), 0.6, 1e-6, durability::params::MAX_N);
    assert!(choice.meets_target, "{choice:?}");
    let params = choice.params;
    assert!(usize::from(params.n) < NODES);

    // Node 1 stores 40 messages as one bundle.
    let mut messages: Vec<(SealedObject, ContentKey, Vec<u8>)> = Vec::new();
    for i in 0..40u32 {
        let body = format!(
            "Subject: message {i}\r\n\r\n{}\r\n",
            "text ".repeat(i as usize * 10)
        )
        .into_bytes();
        let (obj, key) = SealedObject::seal(&body).unwrap();
        messages.push((obj, key, body));
    }
    let objects: Vec<SealedObject> = messages.iter().map(|m| m.0.clone()).collect();
    let receipt = ring::store(ring_nodes.node(1).client(), &ReedSolomon8, &objects, params)
        .await
        .unwrap();
    assert_eq!(
        receipt.stored,
        usize::from(params.n),
        "every fragment found a holder"
    );

    // 60 % of the nodes fail at once, chosen pseudo-randomly, the owner (node 1) among them.
    let mut order: Vec<usize> = (0..NODES).filter(|&i| i != 1).collect();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let mut doomed = vec![1];
    doomed.extend(order.iter().take(NODES * 6 / 10 - 1));
    for &i in &doomed {
        ring_nodes.kill(i).await;
    }
    assert_eq!(ring_nodes.live_indices().len(), NODES - NODES * 6 / 10);

    // Any survivor reads every message back, byte for byte.
    let reader = ring_nodes.live_indices()[0];
    let back = ring::fetch(ring_nodes.node(reader).client(), &ReedSolomon8, &receipt)
        .await
        .unwrap();
    assert_eq!(back.len(), messages.len());
    for ((obj, key, body), got) in messages.iter().zip(&back) {
        assert_eq!(got.id(), obj.id());
        assert_eq!(&got.open(key).unwrap(), body);
    }
    ring_nodes.shutdown().await;
}
