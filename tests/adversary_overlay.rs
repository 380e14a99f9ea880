//! Hostile peers in the overlay (issue #18, items 2–4), through real in-process swarms: a
//! peer that stalls frames, junk and forged DHT inbox entries, strangers listing an inbox,
//! a flood of self-signed records, and honest peers with skewed clocks.

use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, SwarmBuilder, Transport, noise, yamux};
use peerpost::crypto::{DirectoryRecord, Envelope, UserKeys};
use peerpost::delivery::notice::{self, Body, Notice};
use peerpost::node::testing::{Ring, start_ring, wait_for};
use peerpost::overlay::protocol::{
    BLOB_PROTOCOL, MAX_BLOB, MAX_INBOX_PER_SENDER, Refusal, Request, Response, inbox_key,
};
use peerpost::overlay::{BlobError, list_request, put_request};
use tokio::sync::mpsc;

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

// --- item 3: a peer that declares big frames and sends nothing ---

/// A request-response codec that writes only a frame's length prefix, tells the test so,
/// and then waits until the other side gives the stream up.
#[derive(Clone)]
struct Staller {
    written: mpsc::UnboundedSender<()>,
}

impl request_response::Codec for Staller {
    type Protocol = StreamProtocol;
    type Request = u32;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<u32>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("the staller serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        len: u32,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&len.to_be_bytes()).await?;
        io.flush().await?;
        let _ = self.written.send(());
        // Never send the payload: probe (empty writes, which carry no byte) until the node
        // resets the stream.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if io.write(&[]).await.is_err() {
                return Err(std::io::Error::other("the node reset the stalled stream"));
            }
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// Starts a raw libp2p peer (no Kademlia, no identify) that opens `streams` blob streams to
/// `target`, each declaring a `len`-byte frame and sending nothing. Returns a receiver that
/// yields once per prefix written, and one that yields the time each stalled stream was cut.
fn spawn_staller(
    target: Multiaddr,
    streams: usize,
    len: u32,
) -> (
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<Instant>,
) {
    let (written_tx, written_rx) = mpsc::unbounded_channel();
    let (cut_tx, cut_rx) = mpsc::unbounded_channel();
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                MemoryTransport::default()
                    .upgrade(upgrade::Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .map(|(p, m), _| (p, StreamMuxerBox::new(m))),
            )
        })
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                Staller {
                    written: written_tx,
                },
                [(
                    StreamProtocol::new(BLOB_PROTOCOL),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(120))
                    .with_max_concurrent_streams(64),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let peer = match target.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("target address names no peer"),
    };
    swarm.dial(target).unwrap();
    tokio::spawn(async move {
        let mut sent = false;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } if !sent => {
                    sent = true;
                    for _ in 0..streams {
                        swarm.behaviour_mut().send_request(&peer, len);
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    let _ = cut_tx.send(Instant::now());
                }
                _ => {}
            }
        }
    });
    (written_rx, cut_rx)
}

/// Issue #18 item 3: one peer opens 16 streams, each declaring a 4 MiB frame and sending
/// nothing. Other peers still store on the node and the node still fetches from them (both
/// need 4 MiB of the node's frame budget) while those streams are held; the stalled streams
/// are cut within seconds, not after the 30 s request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frames_of_one_peer_do_not_stop_other_peers() {
    let (ring, _dir) = ring(3).await;
    let (victim, other, third) = (ring.node(0).client(), ring.node(1).client(), ring.node(2));
    let big = vec![0x5au8; MAX_BLOB - 100];
    let id = peerpost::crypto::hash(&big);
    assert_eq!(
        other
            .request(
                third.client().peer_id(),
                Request::Store {
                    id,
                    bytes: big.clone()
                }
            )
            .await
            .unwrap(),
        Response::Stored
    );

    let (mut written, mut cut) = spawn_staller(ring.listen[0].clone(), 16, (MAX_BLOB + 64) as u32);
    for _ in 0..16 {
        tokio::time::timeout(Duration::from_secs(20), written.recv())
            .await
            .expect("the staller's prefixes were not all written")
            .unwrap();
    }
    let stalled_at = Instant::now();

    // The victim reads a 4 MiB answer from another peer…
    let fetched = victim
        .request(third.client().peer_id(), Request::Fetch { id })
        .await
        .expect("a fetch failed while one peer stalls frames");
    assert_eq!(fetched, Response::Found { bytes: big.clone() });
    // …and takes a 4 MiB request from another peer.
    let big2 = vec![0xa5u8; MAX_BLOB - 100];
    let id2 = peerpost::crypto::hash(&big2);
    assert_eq!(
        other
            .request(
                victim.peer_id(),
                Request::Store {
                    id: id2,
                    bytes: big2
                }
            )
            .await
            .expect("a store failed while one peer stalls frames"),
        Response::Stored
    );
    let honest = stalled_at.elapsed();
    assert!(
        honest < Duration::from_secs(10),
        "honest requests took {honest:?}"
    );

    // The stalled streams are given up within seconds (not held for the request timeout).
    let first_cut = tokio::time::timeout(Duration::from_secs(20), cut.recv())
        .await
        .expect("no stalled stream was cut within 20 s")
        .unwrap();
    let held = first_cut.duration_since(stalled_at);
    assert!(
        held < Duration::from_secs(15),
        "stalled frames held for {held:?}"
    );
    ring.shutdown().await;
}

// --- item 2: who may put into and list a DHT inbox ---

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A real delivery notice from `from` to `to`, wrapped as senders leave it in inboxes.
fn real_entry(from: &UserKeys, to: &UserKeys, ack_secret: [u8; 32]) -> Vec<u8> {
    let n = Notice {
        msg_id: [7; 16],
        sent: now(),
        sender: "alice@ring.test".into(),
        recipient: "victim@ring.test".into(),
        ack_secret,
        body: Body::Inline(b"Subject: real\r\n\r\nhello\r\n".to_vec()),
    };
    let inner = Envelope::seal(from, &to.public().enc, &n.encode()).unwrap();
    let p = notice::pseudonym(from, &to.public().sign);
    notice::wrap(&p, &to.public().enc, &inner).unwrap()
}

/// Issue #18 item 2: 32 junk entries (each validly signed, by 32 pseudonyms) put before a
/// real notice do not hide it: the recipient's list pages through every holder. One
/// pseudonym cannot hold more than 16 entries of an inbox, and the holders' copies do not
/// name the real sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_inbox_entries_do_not_hide_a_real_one() {
    let (ring, _dir) = ring(4).await;
    let (victim, alice) = (UserKeys::generate().unwrap(), UserKeys::generate().unwrap());
    let key = inbox_key(&victim.public().sign);
    let attacker = ring.node(3).client();
    for i in 0..32u8 {
        let junk = UserKeys::generate().unwrap();
        attacker
            .inbox_put(key, [i; 32], vec![i; 200], &junk)
            .await
            .unwrap();
    }
    let one = UserKeys::generate().unwrap();
    for i in 0..MAX_INBOX_PER_SENDER as u8 {
        attacker
            .inbox_put(key, [i; 32], vec![i, 1, 2, 3], &one)
            .await
            .unwrap();
    }
    match attacker.inbox_put(key, [0; 32], vec![9; 9], &one).await {
        Err(BlobError::TooFewHolders { stored: 0, .. }) => {}
        other => panic!("a 17th entry of one pseudonym was taken: {other:?}"),
    }

    let secret = [42u8; 32];
    let real = real_entry(&alice, &victim, secret);
    let p = notice::pseudonym(&alice, &victim.public().sign);
    ring.node(1)
        .client()
        .inbox_put(key, peerpost::crypto::hash(&secret), real.clone(), &p)
        .await
        .unwrap();

    let listed = ring.node(0).client().inbox_list(&victim).await.unwrap();
    assert!(listed.len() > 32 + MAX_INBOX_PER_SENDER, "{}", listed.len());
    assert!(listed.contains(&real), "the real entry is hidden");
    let opened = notice::unwrap(&victim, real.clone())
        .unwrap()
        .open(&victim)
        .unwrap();
    assert_eq!(opened.sender, alice.public().sign);

    // What the holders keep names the pseudonym, never alice's key.
    let mut holders = 0;
    for node in ring.live() {
        let (rows, _) = node.store().inbox_page(key, [0; 32], 0, 256).await.unwrap();
        for v in &rows {
            assert!(!v.windows(32).any(|w| w == alice.public().sign));
        }
        holders += usize::from(rows.iter().any(|v| v.ends_with(&real)));
    }
    assert!(holders >= 1);
    ring.shutdown().await;
}

/// Issue #18 item 2: only the recipient lists its inbox. A stranger signing for the
/// victim's inbox, a request replayed to another holder, and a stale one are refused; a
/// clock 10 minutes off is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_list_an_inbox() {
    let (ring, _dir) = ring(4).await;
    let (victim, mallory) = (UserKeys::generate().unwrap(), UserKeys::generate().unwrap());
    let key = inbox_key(&victim.public().sign);
    let secret = [1u8; 32];
    let alice = UserKeys::generate().unwrap();
    let p = notice::pseudonym(&alice, &victim.public().sign);
    ring.node(1)
        .client()
        .inbox_put(
            key,
            peerpost::crypto::hash(&secret),
            real_entry(&alice, &victim, secret),
            &p,
        )
        .await
        .unwrap();
    // A holder of the entry, and another peer.
    let mut holder = None;
    for node in ring.live() {
        let (rows, _) = node.store().inbox_page(key, [0; 32], 0, 10).await.unwrap();
        if !rows.is_empty() {
            holder = Some(node.client().peer_id());
        }
    }
    let holder = holder.expect("nobody holds the entry");
    let asker = ring
        .live()
        .map(|n| n.client())
        .find(|c| c.peer_id() != holder)
        .unwrap();
    let other = ring
        .live()
        .map(|n| n.client().peer_id())
        .find(|p| *p != holder && *p != asker.peer_id())
        .unwrap();
    let ask = |req: Request| async { asker.request(holder, req).await.unwrap() };
    let refused = Response::Refused(Refusal::Invalid);

    // The recipient, with a clock 10 minutes ahead or behind: answered.
    for skew in [-600i64, 0, 600] {
        let t = now().saturating_add_signed(skew);
        match ask(list_request(&victim, &holder, [0; 32], t)).await {
            Response::InboxEntries { entries, .. } => assert_eq!(entries.len(), 1),
            other => panic!("the recipient was refused (skew {skew}): {other:?}"),
        }
    }
    // A stranger signing with its own key for the victim's inbox.
    let Request::InboxList {
        recipient,
        time,
        cursor,
        sig,
        ..
    } = list_request(&mallory, &holder, [0; 32], now())
    else {
        unreachable!()
    };
    let forged = Request::InboxList {
        key,
        recipient,
        time,
        cursor,
        sig,
    };
    assert_eq!(ask(forged).await, refused);
    // The victim's key with a signature that is not the victim's.
    let Request::InboxList { time, cursor, .. } = list_request(&victim, &holder, [0; 32], now())
    else {
        unreachable!()
    };
    let unsigned = Request::InboxList {
        key,
        recipient: victim.public().sign,
        time,
        cursor,
        sig: [0; 64],
    };
    assert_eq!(ask(unsigned).await, refused);
    // A genuine request made for another holder, replayed to this one.
    assert_eq!(
        ask(list_request(&victim, &other, [0; 32], now())).await,
        refused
    );
    // A stale one (20 minutes old) and one from the far future.
    assert_eq!(
        ask(list_request(&victim, &holder, [0; 32], now() - 1200)).await,
        refused
    );
    assert_eq!(
        ask(list_request(&victim, &holder, [0; 32], now() + 1200)).await,
        refused
    );
    ring.shutdown().await;
}

/// Issue #18 item 2: an INBOX_PUT whose signature does not verify (forged, or for other
/// bytes) is refused by the holder and not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_forged_inbox_puts_are_refused() {
    let (ring, _dir) = ring(3).await;
    let victim = UserKeys::generate().unwrap();
    let key = inbox_key(&victim.public().sign);
    let target = ring.node(0).client().peer_id();
    let asker = ring.node(1).client();
    let signer = UserKeys::generate().unwrap();
    let good = put_request(&signer, key, [3; 32], vec![5; 300]);
    let Request::InboxPut {
        ack_hash,
        sender,
        entry,
        sig,
        ..
    } = good.clone()
    else {
        unreachable!()
    };
    let mut other_bytes = entry.clone();
    other_bytes[0] ^= 1;
    for bad in [
        Request::InboxPut {
            key,
            ack_hash,
            sender,
            entry: entry.clone(),
            sig: [0; 64],
        },
        Request::InboxPut {
            key,
            ack_hash,
            sender,
            entry: other_bytes,
            sig,
        },
        Request::InboxPut {
            key,
            ack_hash,
            sender: UserKeys::generate().unwrap().public().sign,
            entry: entry.clone(),
            sig,
        },
        Request::InboxPut {
            key: [9; 32],
            ack_hash,
            sender,
            entry: entry.clone(),
            sig,
        },
    ] {
        assert_eq!(
            asker.request(target, bad).await.unwrap(),
            Response::Refused(Refusal::Invalid)
        );
    }
    let held = ring.node(0).store().inbox_page(key, [0; 32], 0, 10).await;
    assert!(held.unwrap().0.is_empty(), "a refused put was stored");
    assert_eq!(asker.request(target, good).await.unwrap(), Response::Stored);
    ring.shutdown().await;
}

// --- item 4: record floods and clock skew ---

/// Issue #18 item 4: a peer whose clock is 12 minutes ahead publishes records; readers take
/// them and do not ban the peers that serve them. A record 20 minutes ahead is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_twelve_minutes_ahead_is_not_forgery() {
    let (ring, _dir) = ring(4).await;
    let skewed = ring.node(1).client();
    for i in 0..4 {
        let keys = UserKeys::generate().unwrap();
        let addr = format!("skewed{i}@ring.test");
        let rec = DirectoryRecord::new(&keys, &addr, vec![[1; 32]], 1, now() + 720, 3600).unwrap();
        skewed.publish(rec).await.unwrap();
        let found = ring.node(0).client().lookup(&addr).await;
        assert_eq!(found.unwrap().record.keys, *keys.public(), "{addr}");
    }
    let keys = UserKeys::generate().unwrap();
    let far = DirectoryRecord::new(&keys, "far@ring.test", vec![[1; 32]], 1, now() + 1200, 3600);
    let _ = skewed.publish(far.unwrap()).await;
    assert!(ring.node(0).client().lookup("far@ring.test").await.is_err());
    for node in ring.live().take(1) {
        assert_eq!(node.client().status().await.unwrap().banned, 0);
    }
    ring.shutdown().await;
}

/// Issue #18 item 4: one peer publishing 300 self-signed records for invented addresses
/// gets at most 256 of them into another node's record store; records from other peers are
/// still taken afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_fill_the_record_store() {
    let (ring, _dir) = ring(3).await;
    let victim = ring.node(0).client();
    let before = victim.status().await.unwrap().records;
    let flooder = ring.node(2).client();
    let records: Vec<_> = (0..300)
        .map(|i| {
            let keys = UserKeys::generate().unwrap();
            DirectoryRecord::new(
                &keys,
                &format!("invented{i}@ring.test"),
                vec![],
                1,
                now(),
                3600,
            )
            .unwrap()
        })
        .collect();
    futures::stream::iter(records)
        .map(|r| async move {
            let _ = flooder.publish(r).await;
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let flooded = victim.status().await.unwrap().records;
    assert!(
        flooded <= before + 256,
        "one peer put {} records into the store",
        flooded - before
    );
    assert!(
        flooded >= before + 200,
        "the flood did not arrive: {flooded}"
    );
    // Another peer's record is still taken.
    let keys = UserKeys::generate().unwrap();
    let rec = DirectoryRecord::new(&keys, "honest@ring.test", vec![], 1, now(), 3600).unwrap();
    ring.node(1).client().publish(rec).await.unwrap();
    wait_for(|| async { victim.status().await.unwrap().records == flooded + 1 })
        .await
        .expect("another peer's record was not taken");
    ring.shutdown().await;
}
