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
use peerpost::node::testing::{Ring, start_ring};
use peerpost::overlay::protocol::{BLOB_PROTOCOL, MAX_BLOB, Request, Response};
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
