//! Many full nodes in one process over the memory transport (tests and benchmarks).

use std::path::Path;

use tracing::Instrument;

use super::{Node, NodeConfig};
use crate::crypto::{DeviceKey, UserKeys};
use crate::overlay::{self, Multiaddr, TransportKind};
use crate::store::Store;

/// LMDB map size of a test node (the default 1 TiB × 100 nodes would exhaust the
/// address space).
const TEST_MAP_SIZE: usize = 1 << 30;

/// A fresh device key and an overlay config listening on a random `/memory/N` address.
fn memory_node() -> Result<(DeviceKey, overlay::Config, Multiaddr), String> {
    let device = DeviceKey::generate().map_err(|e| e.to_string())?;
    let mut oc = overlay::Config::new(*device.seed(), TransportKind::Memory);
    let port =
        u64::from_be_bytes(crate::crypto::random_bytes::<8>().map_err(|e| e.to_string())?) | 1;
    let listen = overlay::memory_addr(port);
    oc.listen = vec![listen.clone()];
    Ok((device, oc, listen))
}

/// A ring of nodes; `nodes[i]` is `None` once killed.
pub struct Ring {
    pub nodes: Vec<Option<Node>>,
    pub addresses: Vec<String>,
    pub listen: Vec<Multiaddr>,
}

pub fn address_of(i: usize) -> String {
    format!("user{i}@ring.test")
}

/// Starts `n` nodes under `base` (one store directory each, one `node` span each),
/// bootstrapped from node 0, then has every node publish its directory record.
pub async fn start_ring(
    n: usize,
    base: &Path,
    tune: impl Fn(&mut overlay::Config),
) -> Result<Ring, String> {
    let mut ring = Ring {
        nodes: Vec::new(),
        addresses: Vec::new(),
        listen: Vec::new(),
    };
    for i in 0..n {
        let user = UserKeys::generate().map_err(|e| e.to_string())?;
        let (device, mut oc, listen) = memory_node()?;
        if let Some(first) = ring.listen.first() {
            oc.bootstrap = vec![first.clone()];
        }
        tune(&mut oc);
        let store = Store::open_sized(&base.join(format!("node{i}")), TEST_MAP_SIZE)
            .map_err(|e| e.to_string())?;
        let mut nc = NodeConfig::new(&address_of(i), user, device.public(), oc);
        nc.auto_publish = false;
        nc.durability = None;
        let span = tracing::info_span!("node", id = i);
        let node = Node::start(nc, store)
            .instrument(span)
            .await
            .map_err(|e| e.to_string())?;
        let peer = node.client().peer_id();
        ring.listen.push(overlay::with_peer(listen, peer));
        ring.addresses.push(address_of(i));
        ring.nodes.push(Some(node));
    }
    // Let identify feed Kademlia (a bootstrap before that fails: no known peers), then
    // fill every routing table, bootstrapping again until it is.
    for (i, node) in ring.live().enumerate() {
        wait_for(|| async { routing_table(node).await >= 1 })
            .await
            .map_err(|e| format!("node {i} knows no peer: {e}"))?;
    }
    // Full tables are not required (lookups route through partial ones), so after 10 s
    // the ring goes on with what it has, saying so.
    for (i, node) in ring.live().enumerate() {
        let settle = async {
            while routing_table(node).await + 1 < n.min(8) {
                let _ = node.client().bootstrap().await;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(10), settle)
            .await
            .is_err()
        {
            tracing::warn!(
                node = i,
                table = routing_table(node).await,
                "routing table still partial"
            );
        }
    }
    // Publish every record; a publication that finds no peer in time is retried.
    let publishes = ring.live().map(|node| async move {
        let mut last = Ok(());
        for _ in 0..3 {
            last = node.publish().await;
            if last.is_ok() {
                break;
            }
        }
        last
    });
    for res in futures::future::join_all(publishes).await {
        res.map_err(|e| e.to_string())?;
    }
    Ok(ring)
}

impl Ring {
    pub fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    pub fn live_indices(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node was killed")
    }

    /// Stops node `i` (its connections close; its store stays on disk).
    pub async fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    /// Starts one more node under `base` (store `node{i}`), bootstrapped from a live node,
    /// and waits until its routing table is filled; returns its index and its device key
    /// (durability tests: a fresh machine for `restore`).
    pub async fn join(&mut self, base: &Path) -> Result<(usize, [u8; 32]), String> {
        let i = self.nodes.len();
        let (device, mut oc, listen) = memory_node()?;
        oc.bootstrap = self
            .live_indices()
            .into_iter()
            .take(3)
            .map(|j| self.listen[j].clone())
            .collect();
        let store = Store::open_sized(&base.join(format!("node{i}")), TEST_MAP_SIZE)
            .map_err(|e| e.to_string())?;
        let user = UserKeys::generate().map_err(|e| e.to_string())?;
        let mut nc = NodeConfig::new(&address_of(i), user, device.public(), oc);
        nc.auto_publish = false;
        nc.durability = None;
        let node = Node::start(nc, store)
            .instrument(tracing::info_span!("node", id = i))
            .await
            .map_err(|e| e.to_string())?;
        self.listen
            .push(overlay::with_peer(listen, node.client().peer_id()));
        self.addresses.push(address_of(i));
        wait_for(|| async { routing_table(&node).await >= 1 }).await?;
        let want = self.live_indices().len().min(8);
        for _ in 0..40 {
            if routing_table(&node).await >= want {
                break;
            }
            let _ = node.client().bootstrap().await;
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        self.nodes.push(Some(node));
        Ok((i, device.public()))
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i).await;
        }
    }
}

async fn routing_table(node: &Node) -> usize {
    node.client()
        .status()
        .await
        .map(|s| s.routing_table)
        .unwrap_or(0)
}

/// Polls `f` every 50 ms for up to 30 s.
pub async fn wait_for<F, Fut>(f: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err("timed out waiting for the ring to settle".into())
}
