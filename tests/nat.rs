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
