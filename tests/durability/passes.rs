//! Backup passes against a lying or changing ring: forged leases, a ring that grows, a pass
//! stopped before its root.

use super::*;

/// Issue #20: a peer that holds a fragment knows every blob id of the bundle. It stores on
/// every holder a forged lease (the real one with `expires = 1`, signature left as it was), an
/// unsigned version 1 lease expiring at once, a lease of its own key for the bundle, and a
/// replayed older lease of the owner; and junk blobs nobody leases. After the holders' passes
/// the bundle still restores; after the grace period the junk and the forgeries are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_leases_do_not_expire_a_backup_and_junk_goes_after_the_grace_period() {
    use peerpost::overlay::protocol::{Request, Response};
    const NODES: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut ring = start_ring(NODES, dir.path(), |_| {}).await.unwrap();
    let user = fill_mailbox(&ring, 1, 12, "lease").await;
    let owner = user_keys(&user);
    let backup = backup_of(&ring, &user, NODES - 1, 8 * 1024);
    // An older lease of the owner's, expiring soon: what the attacker replays later.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    backup.run_once(false).await.unwrap();
    let mut receipts: Vec<_> = backup::entries(ring.node(1).store())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.receipt)
        .collect();
    receipts.extend(
        backup::state(ring.node(1).store())
            .await
            .unwrap()
            .map(|(_, e)| e.receipt),
    );
    assert!(receipts.len() >= 3);
    let old: Vec<repair::Lease> = receipts
        .iter()
        .map(|r| repair::Lease::sign(&owner, r, now() + 5))
        .collect();
    // The owner renews (a newer seq) before the attacker replays the old ones.
    let limits = RepairLimits {
        pause: Duration::ZERO,
        ..RepairLimits::default()
    };
    backup.maintain(limits).await.unwrap();

    let attacker = ring.node(2).client().clone();
    let mallory = UserKeys::generate().unwrap();
    let mut forged_ids = Vec::new();
    let mut junk_ids = Vec::new();
    let store_on = |peer, bytes: Vec<u8>| {
        let a = attacker.clone();
        async move {
            let id = peerpost::crypto::hash(&bytes);
            let r = a.request(peer, Request::Store { id, bytes }).await;
            assert!(matches!(r, Ok(Response::Stored)), "{r:?}");
            id
        }
    };
    for (r, old) in receipts.iter().zip(&old) {
        let holders = repair::locate(&attacker, None, r).await;
        eprintln!(
            "{:?}: {} of {} fragments found",
            r.bundle,
            holders.iter().flatten().count(),
            r.blobs.len()
        );
        let real = repair::Lease::sign(&owner, r, now() + 3600);
        let mut expired = real.encode();
        let at = expired.len() - 64 - 32 * r.blobs.len() - 8;
        expired[at..at + 8].copy_from_slice(&1u64.to_be_bytes());
        let mut v1 = vec![repair::LEASE_V1_TAG];
        v1.extend_from_slice(r.bundle.as_bytes());
        v1.extend_from_slice(&r.params.n.to_be_bytes());
        v1.extend_from_slice(&r.params.k.to_be_bytes());
        v1.extend_from_slice(&1u64.to_be_bytes());
        for b in &r.blobs {
            v1.extend_from_slice(b);
        }
        let theirs = repair::Lease::sign(&mallory, r, 1).encode();
        for peer in holders.iter().flatten().copied() {
            if peer == attacker.peer_id() {
                continue;
            }
            for bytes in [expired.clone(), v1.clone(), theirs.clone(), old.encode()] {
                forged_ids.push(store_on(peer, bytes).await);
            }
            // Neither a lease, a fragment nor a sealed object: plain junk.
            let mut junk = vec![0xEE; 4096];
            junk[1..33].copy_from_slice(
                &peer.to_bytes()[..32.min(peer.to_bytes().len())]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(32)
                    .collect::<Vec<u8>>(),
            );
            junk_ids.push((peer, store_on(peer, junk).await));
        }
    }
    assert!(!junk_ids.is_empty());

    // The holders' passes: once now, once after the replayed lease ended, once after grace.
    let mut states: Vec<repair::HolderState> = ring
        .live()
        .map(|_| repair::HolderState::default())
        .collect();
    for t in [now(), now() + 60, now() + 60 + repair::GRACE_SECS] {
        let passes = ring.live().zip(states.iter_mut()).map(|(n, st)| {
            repair::holder_pass(n.client(), n.store(), &ReedSolomon8, limits, t, st)
        });
        for st in futures::future::join_all(passes).await {
            eprintln!("holder pass at {t}: {:?}", st.unwrap());
        }
    }
    // Every bundle is whole: all n fragments still held, and the mailbox restores.
    for r in &receipts {
        let found = repair::locate(&attacker, Some(ring.node(2).store()), r).await;
        assert_eq!(
            found.iter().flatten().count(),
            r.blobs.len(),
            "{:?}",
            r.bundle
        );
    }
    let want = contents(&user.mailbox).await;
    let (fresh, device) = ring.join(dir.path()).await.unwrap();
    let node = ring.node(fresh);
    let (mb, _) = node::restore_mailbox(node.client(), node.store(), &owner, device, &|_| {})
        .await
        .unwrap();
    assert_eq!(contents(&mb).await, want);
    // Junk and forged leases are gone from every holder.
    for n in ring.live() {
        for id in forged_ids.iter().chain(junk_ids.iter().map(|(_, id)| id)) {
            assert!(
                !n.store().held_has(*id).await.unwrap(),
                "a forged or junk blob is still held"
            );
        }
    }
    ring.shutdown().await;
}

/// A mailbox placed while the ring had four peers is re-coded when it has twelve, and the old
/// placements are released: once the holders' passes ran, no node keeps a fragment of them
/// (a re-coded body bundle keeps its id, so only its fragments and n/k tell the placements
/// apart), and the new placement reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_that_grows_gets_bundles_recoded_and_the_old_fragments_released() {
    use peerpost::durability::backup::PassOptions;
    let dir = tempfile::tempdir().unwrap();
    let mut ring = start_ring(5, dir.path(), |_| {}).await.unwrap();
    let user = fill_mailbox(&ring, 1, 12, "grow").await;
    let backup = backup_of(&ring, &user, 4, 1 << 20);
    let small = PassOptions {
        ring: Some(4),
        ..PassOptions::default()
    };
    backup.run_pass(small).await.unwrap();
    let store = ring.node(1).store().clone();
    let old = backup::entries(&store).await.unwrap();
    assert!(!old.is_empty());
    assert!(old.iter().all(|e| e.receipt.params == backup.params_for(4)));
    for _ in 0..8 {
        ring.join(dir.path()).await.unwrap();
    }
    let large = PassOptions {
        ring: Some(12),
        ..PassOptions::default()
    };
    let report = backup.run_pass(large).await.unwrap();
    assert_eq!(report.recoded, old.len(), "{report:?}");
    let new = backup::entries(&store).await.unwrap();
    assert!(
        new.iter()
            .all(|e| e.receipt.params == backup.params_for(12))
    );
    let bodies = |es: &[backup::Entry]| {
        es.iter()
            .filter(|e| e.kind == Kind::Bodies)
            .map(|e| e.receipt.bundle)
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(&old), bodies(&new), "same objects, same bundle ids");

    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let limits = RepairLimits {
        pause: Duration::ZERO,
        ..RepairLimits::default()
    };
    for n in ring.live() {
        let mut state = repair::HolderState::default();
        repair::holder_pass(
            n.client(),
            n.store(),
            &ReedSolomon8,
            limits,
            later,
            &mut state,
        )
        .await
        .unwrap();
    }
    for e in &old {
        for blob in &e.receipt.blobs {
            for n in ring.live() {
                assert!(
                    !n.store().held_has(*blob).await.unwrap(),
                    "a fragment of the released {:?} placement is still held",
                    e.kind
                );
            }
        }
    }
    for e in &new {
        ring::fetch(ring.node(1).client(), &ReedSolomon8, &e.receipt)
            .await
            .unwrap();
    }
    ring.shutdown().await;
}

/// A pass killed after it placed new bundles and before it published the root that lists them
/// (shown here by putting the earlier root's rows back): `status` says `unpublished`, and the
/// next pass, with nothing new to place, publishes a root that lists them. Before, nothing was
/// pending, so no pass published, and a restore missed the mail of those bundles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_placed_by_a_pass_stopped_before_its_root_are_published_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let ring = start_ring(8, dir.path(), |_| {}).await.unwrap();
    let u = fill_mailbox(&ring, 1, 12, "early").await;
    let b = backup_of(&ring, &u, 7, 32 * 1024);
    let first = b.run_once(false).await.unwrap().root_seq.unwrap();
    let store = ring.node(1).store();
    assert!(!backup::unpublished(store).await.unwrap());
    let mut rows = Vec::new();
    for k in [&b"s"[..], &b"p"[..]] {
        rows.push((k.to_vec(), store.backup_get(k.to_vec()).await.unwrap()));
    }
    assert!(rows.iter().all(|(_, v)| v.is_some()), "state rows moved");

    let late = NewMessage {
        bytes: b"From: late@ring.test\r\nSubject: late\r\n\r\nbody\r\n".to_vec(),
        internal_date: 1_700_100_000,
        flags: Flags::default(),
        recent: true,
        maildir_name: None,
    };
    u.mailbox.append_batch("INBOX", vec![late]).await.unwrap();
    let placed = b.run_once(false).await.unwrap();
    assert!(placed.bundles >= 1, "{placed:?}");
    store.backup_write(rows).await.unwrap();
    assert_eq!(backup::state(store).await.unwrap().unwrap().0, first);
    assert!(backup::unpublished(store).await.unwrap());
    let st = durability::status::local(store).await.unwrap();
    assert!(st.unpublished && st.pending_bytes == 0, "{st:?}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let next = b.run_once(false).await.unwrap();
    assert_eq!(next.bundles, 0, "{next:?}");
    assert!(next.root_seq > Some(first), "{next:?}");
    assert!(!backup::unpublished(store).await.unwrap());
    // The root now published lists every placed bundle.
    let (_, _, index) = durability::restore::find_index(ring.node(2).client(), &user_keys(&u))
        .await
        .unwrap();
    let mut listed: Vec<_> = index.entries.iter().map(|e| e.receipt.bundle).collect();
    let mut local: Vec<_> = backup::entries(store)
        .await
        .unwrap()
        .iter()
        .map(|e| e.receipt.bundle)
        .collect();
    listed.sort();
    local.sort();
    assert_eq!(listed, local);
}

/// A body whose fragments would exceed the overlay's 4 MiB blob limit at the ring's k (here a
/// 4-node ring, k = 1, and a 6 MiB message) is left pending and reported; it does not stop the
/// pass, so every other message of the mailbox is still placed, and a later pass neither
/// fails nor places the large body twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_for_the_rings_fragments_stays_pending_and_the_rest_is_placed() {
    const NODES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let ring = start_ring(NODES, dir.path(), |_| {}).await.unwrap();
    let user = fill_mailbox(&ring, 1, 9, "large").await;
    let big = format!(
        "From: big@ring.test\r\nSubject: large\r\n\r\n{}",
        "0123456789abcdef".repeat(6 << 16)
    );
    user.mailbox
        .append_batch(
            "INBOX",
            vec![NewMessage {
                bytes: big.into_bytes(),
                internal_date: 1_700_000_000,
                flags: Flags::default(),
                recent: false,
                maildir_name: None,
            }],
        )
        .await
        .unwrap();
    let backup = backup_of(&ring, &user, NODES - 1, 64 * 1024);
    let p = backup.params().await.unwrap();
    let r = backup.run_once(false).await.unwrap();
    assert_eq!((r.objects, r.too_large), (9, 1), "k={}: {r:?}", p.k);
    assert!(r.root_seq.is_some(), "{r:?}");
    let (bodies, _) = backup::pending(ring.node(1).store()).await.unwrap();
    assert!(
        bodies >= 6 << 20,
        "the large body is still pending: {bodies}"
    );
    let again = backup.run_once(false).await.unwrap();
    assert_eq!((again.objects, again.too_large), (0, 1), "{again:?}");
}
