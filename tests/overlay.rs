//! The overlay with many full nodes in one process (memory transport, one `node` span each):
//! directory lookups, objects on the closest peers, node loss, and hostile peers.

#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use peerpost::crypto::{DirectoryRecord, SealedObject, UserKeys};
use peerpost::node::testing::{Ring, start_ring};
use peerpost::overlay::directory::RecordError;
use peerpost::overlay::protocol::{MAX_BLOB, MAX_NOTIFY, Request, Response};
use peerpost::overlay::{BlobError, LookupError};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

async fn ring(n: usize) -> (Ring, tempfile::TempDir) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ring = start_ring(n, dir.path(), |_| {}).await.unwrap();
    (ring, dir)
}

/// Every live node resolves every live user's address to that user's keys.
async fn all_resolve_all(ring: &Ring, users: &[usize]) {
    let live = ring.live_indices();
    let jobs = live
        .iter()
        .flat_map(|&from| users.iter().map(move |&to| (from, to)));
    let results: Vec<_> = futures::stream::iter(jobs)
        .map(|(from, to)| async move {
            // A lookup is a DHT query with a deadline; on a machine this busy (the suite
            // beside other builds) one may time out, and a client asks again: twice here.
            // A record that is not in the ring fails all three.
            let mut found = ring.node(from).client().lookup(&ring.addresses[to]).await;
            for _ in 0..2 {
                if found.is_ok() {
                    break;
                }
                found = ring.node(from).client().lookup(&ring.addresses[to]).await;
            }
            (from, to, found)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (from, to, found) in results {
        let found = found.unwrap_or_else(|e| panic!("node {from} cannot resolve user {to}: {e}"));
        assert_eq!(found.record.address, ring.addresses[to]);
    }
}

async fn scenario(n: usize, kill: usize) {
    let (mut ring, _dir) = ring(n).await;
    let everyone: Vec<usize> = (0..n).collect();
    all_resolve_all(&ring, &everyone).await;

    // An object put by node 1 is fetched, verified, by every other node.
    let (obj, key) = SealedObject::seal(b"a message for the ring").unwrap();
    let holders = ring.node(1).client().put_object(&obj).await.unwrap();
    assert!(!holders.is_empty());
    for i in ring.live_indices() {
        let got = ring.node(i).client().get_object(obj.id()).await.unwrap();
        assert_eq!(got.open(&key).unwrap(), b"a message for the ring");
    }

    // Kill `kill` nodes (the last ones): lookups keep working for everyone left.
    for i in n - kill..n {
        ring.kill(i).await;
    }
    let left = ring.live_indices();
    all_resolve_all(&ring, &left).await;
    ring.shutdown().await;
}

/// The full size: 50 nodes, 20 of them killed (about 25 s in a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_50_resolves_fetches_and_survives_losing_20() {
    scenario(50, 20).await;
}

fn record(keys: &UserKeys, address: &str, seq: u64) -> DirectoryRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    DirectoryRecord::new(keys, address, vec![[1; 32]], seq, now, 3600).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_rekeyed_records_are_refused() {
    let (ring, _dir) = ring(6).await;
    let victim = ring.addresses[1].clone();
    // Node 0 pins the victim's real keys.
    let real = ring.node(0).client().lookup(&victim).await.unwrap().record;

    // An attacker (node 5) publishes a newer record for the victim's address signed with
    // its own key: holders refuse the key change, and node 0's pin refuses it too.
    let evil = UserKeys::generate().unwrap();
    let _ = ring
        .node(5)
        .client()
        .publish(record(&evil, &victim, real.seq + 1000))
        .await;
    let again = ring.node(0).client().lookup(&victim).await.unwrap().record;
    assert_eq!(again.keys, real.keys, "pinned keys stay");
    // A node that never looked the victim up still gets the real keys from the holders.
    let fresh = ring.node(3).client().lookup(&victim).await.unwrap().record;
    assert_eq!(fresh.keys, real.keys);

    // A forged record (signature broken by editing a signed field) is refused everywhere.
    let mut forged = record(&evil, "nobody@ring.test", 5);
    forged.devices.push([9; 32]);
    let _ = ring.node(5).client().publish(forged).await;
    for i in 0..4 {
        match ring.node(i).client().lookup("nobody@ring.test").await {
            Err(LookupError::NotFound(_)) => {}
            other => panic!("forged record not refused: {other:?}"),
        }
    }

    // A replay of an older record (lower seq) does not replace the newer one.
    let owner = UserKeys::generate().unwrap();
    let addr = "carol@ring.test";
    ring.node(2)
        .client()
        .publish(record(&owner, addr, 20))
        .await
        .unwrap();
    let _ = ring
        .node(4)
        .client()
        .publish(record(&owner, addr, 10))
        .await;
    for i in [0, 1, 3] {
        let got = ring.node(i).client().lookup(addr).await.unwrap().record;
        assert_eq!(got.seq, 20, "node {i} was served the replayed record");
    }

    // A pinned address whose only record now carries another key is refused and reported.
    // Dave's first record lives 2 s; node 0 pins its key. Once it has expired everywhere a
    // record with another key is all the ring has: node 0 refuses it, a fresh reader pins it.
    let rekeyed = "dave@ring.test";
    let first = UserKeys::generate().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = DirectoryRecord::new(&first, rekeyed, vec![[1; 32]], 1, now, 2).unwrap();
    ring.node(2).client().publish(short).await.unwrap();
    assert_eq!(
        ring.node(0)
            .client()
            .lookup(rekeyed)
            .await
            .unwrap()
            .record
            .keys,
        *first.public()
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let second = UserKeys::generate().unwrap();
    ring.node(2)
        .client()
        .publish(record(&second, rekeyed, 2))
        .await
        .unwrap();
    match ring.node(0).client().lookup(rekeyed).await {
        Err(LookupError::Refused(RecordError::KeyChanged { .. })) => {}
        other => panic!("a different key for a pinned address was not refused: {other:?}"),
    }
    assert_eq!(
        ring.node(4)
            .client()
            .lookup(rekeyed)
            .await
            .unwrap()
            .record
            .keys,
        *second.public()
    );
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_objects_and_bad_frames_are_refused_without_harm() {
    let (ring, _dir) = ring(6).await;
    let (obj, key) = SealedObject::seal(&vec![7u8; 4096]).unwrap();
    let holders = ring.node(0).client().put_object(&obj).await.unwrap();
    assert_eq!(holders.len(), 3);

    // Two of three holders turn liars: the reader still gets the true object.
    let liars: Vec<usize> = (0..6)
        .filter(|i| holders[..2].contains(&ring.node(*i).client().peer_id()))
        .collect();
    for &l in &liars {
        ring.node(l).client().corrupt_fetches_for_tests(true).await;
    }
    let reader = (0..6)
        .find(|i| *i != 0 && !holders.contains(&ring.node(*i).client().peer_id()))
        .unwrap();
    let got = ring
        .node(reader)
        .client()
        .get_object(obj.id())
        .await
        .unwrap();
    assert_eq!(got.open(&key).unwrap(), vec![7u8; 4096]);

    // All holders lie: the read fails instead of returning bad bytes, and repeated offences
    // get the liars banned.
    let honest = (0..6)
        .find(|i| holders[2] == ring.node(*i).client().peer_id())
        .unwrap();
    ring.node(honest)
        .client()
        .corrupt_fetches_for_tests(true)
        .await;
    for _ in 0..3 {
        match ring.node(reader).client().get_object(obj.id()).await {
            Err(BlobError::NotFound(_)) => {}
            other => panic!("corrupt object accepted: {other:?}"),
        }
    }
    let status = ring.node(reader).client().status().await.unwrap();
    assert_eq!(status.banned, 3, "{status:?}");

    // Oversized blobs and blobs whose bytes do not match their id are refused by the
    // receiver; it keeps serving afterwards.
    let target = ring.node(0).client().peer_id();
    let big = vec![1u8; MAX_BLOB + 1];
    let id = peerpost::crypto::hash(&big);
    assert!(
        ring.node(1)
            .client()
            .request(target, Request::Store { id, bytes: big })
            .await
            .is_err()
    );
    assert!(
        ring.node(1)
            .client()
            .request(
                target,
                Request::Store {
                    id: [0; 32],
                    bytes: vec![1, 2, 3]
                }
            )
            .await
            .is_err()
    );
    let small = vec![5u8; 100];
    let sid = peerpost::crypto::hash(&small);
    assert_eq!(
        ring.node(1)
            .client()
            .request(
                target,
                Request::Store {
                    id: sid,
                    bytes: small
                }
            )
            .await
            .unwrap(),
        Response::Stored
    );
    assert_eq!(
        ring.node(1)
            .client()
            .request(target, Request::Has { id: sid })
            .await
            .unwrap(),
        Response::HasAnswer(true)
    );
    let held = ring.node(0).client().status().await.unwrap();
    assert!(held.held_bytes >= 100);

    // Notifications: small ones are acknowledged, oversized ones refused.
    ring.node(1)
        .client()
        .notify(target, vec![1; 100])
        .await
        .unwrap();
    assert!(
        ring.node(1)
            .client()
            .notify(target, vec![0; MAX_NOTIFY + 1])
            .await
            .is_err()
    );
    ring.node(1)
        .client()
        .notify(target, vec![2; 10])
        .await
        .unwrap();
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_store_no_more_than_their_contribution() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ring = start_ring(4, dir.path(), |c| c.contribution = 10_000)
        .await
        .unwrap();
    let (small, _) = SealedObject::seal(&[3u8; 4000]).unwrap();
    assert_eq!(
        ring.node(0)
            .client()
            .put_object(&small)
            .await
            .unwrap()
            .len(),
        3
    );
    let (big, _) = SealedObject::seal(&[4u8; 20_000]).unwrap();
    match ring.node(0).client().put_object(&big).await {
        Err(BlobError::TooFewHolders { stored: 0, .. }) => {}
        other => panic!("holders took more than their contribution: {other:?}"),
    }
    for node in ring.live() {
        assert!(node.client().status().await.unwrap().held_bytes <= 10_000);
    }
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_inflight_limit_is_told_busy() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // No inbound blob request may be in flight: every one is refused as busy, and the node
    // keeps answering directory lookups.
    let ring = start_ring(3, dir.path(), |c| c.max_inflight_per_peer = 0)
        .await
        .unwrap();
    let target = ring.node(0).client().peer_id();
    let blob = vec![9u8; 1000];
    let id = peerpost::crypto::hash(&blob);
    assert_eq!(
        ring.node(1)
            .client()
            .request(target, Request::Store { id, bytes: blob })
            .await
            .unwrap(),
        Response::Refused(peerpost::overlay::protocol::Refusal::Busy)
    );
    assert_eq!(ring.node(0).client().status().await.unwrap().held_bytes, 0);
    ring.node(1)
        .client()
        .lookup(&ring.addresses[0])
        .await
        .unwrap();
    ring.shutdown().await;
}
