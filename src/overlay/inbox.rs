//! DHT inboxes: small sealed entries (delivery notices) held for a recipient on the peers
//! closest to `inbox_key(address)`, listed by the recipient and removed when it acknowledges
//! with the secret whose hash the sender put beside the entry (protocol.rs, "DHT inboxes").
//! A holder cannot read an entry, and only the recipient (who alone can open the envelope and
//! learn the secret) can remove one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::protocol::{
    INBOX_ENTRY_LIFETIME_SECS, MAX_INBOX_LIST, MAX_INBOX_PER_RECIPIENT, MAX_INBOX_TOTAL, Refusal,
    Request, Response,
};
use super::{BlobError, Client, MAX_PUT_CANDIDATES, now_secs};
use crate::store::{InboxPut, Store};

/// How long the closest peers of an inbox key are reused, and how many keys are remembered:
/// a Kademlia query per message would dominate the time to deliver it.
const PEERS_TTL: Duration = Duration::from_secs(30);
const MAX_CACHED_KEYS: usize = 1024;

pub(super) type PeerCache = Arc<Mutex<HashMap<[u8; 32], (Vec<PeerId>, Instant)>>>;

/// The libp2p peer id of a device, from its Ed25519 public key (as directory records list
/// them); `None` for bytes that are not a valid key.
pub fn device_peer_id(device_public: &[u8; 32]) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(device_public).ok()?;
    Some(PeerId::from_public_key(&libp2p::identity::PublicKey::from(
        pk,
    )))
}

/// Holder side: answers one inbox request from the store.
pub(super) async fn serve(store: &Store, request: Request) -> Response {
    let now = now_secs();
    let horizon = now.saturating_sub(INBOX_ENTRY_LIFETIME_SECS);
    let res = match request {
        Request::InboxPut {
            key,
            ack_hash,
            envelope,
        } => {
            let entry = crate::crypto::hash(&envelope);
            let mut value = Vec::with_capacity(40 + envelope.len());
            value.extend_from_slice(&now.to_be_bytes());
            value.extend_from_slice(&ack_hash);
            value.extend_from_slice(&envelope);
            let limits = (MAX_INBOX_PER_RECIPIENT, MAX_INBOX_TOTAL);
            store
                .inbox_put(key, entry, value, limits, horizon)
                .await
                .map(|r| match r {
                    InboxPut::Stored | InboxPut::AlreadyHeld => Response::Stored,
                    InboxPut::Full => Response::Refused(Refusal::Full),
                })
        }
        Request::InboxList { key } => store.inbox_list(key, MAX_INBOX_LIST).await.map(|rows| {
            let entries = rows
                .into_iter()
                .filter(|v| v.len() > 40 && stored(v) >= horizon)
                .map(|mut v| v.split_off(40))
                .collect();
            Response::InboxEntries { entries }
        }),
        Request::InboxAck { key, entry, secret } => {
            let want = crate::crypto::hash(&secret);
            store
                .inbox_remove(key, entry, move |v| v.get(8..40) == Some(&want[..]))
                .await
                .map(|removed| {
                    if removed {
                        Response::Ack
                    } else {
                        Response::Refused(Refusal::NotFound)
                    }
                })
        }
        _ => Ok(Response::Refused(Refusal::Invalid)),
    };
    res.unwrap_or_else(|e| {
        tracing::warn!("inbox request failed in the store: {e}");
        Response::Refused(Refusal::Internal)
    })
}

fn stored(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Client {
    /// The closest peers of an inbox key, from the cache unless `fresh`.
    async fn inbox_holders(&self, key: [u8; 32], fresh: bool) -> Result<Vec<PeerId>, BlobError> {
        let cached = {
            let c = self.inbox_peers.lock().unwrap_or_else(|p| p.into_inner());
            c.get(&key)
                .filter(|(_, at)| at.elapsed() < PEERS_TTL)
                .map(|(p, _)| p.clone())
        };
        if let Some(p) = cached
            && !fresh
        {
            return Ok(p);
        }
        let peers = self.closest_peers(key).await?;
        let mut c = self.inbox_peers.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= MAX_CACHED_KEYS {
            c.retain(|_, (_, at)| at.elapsed() < PEERS_TTL);
            if c.len() >= MAX_CACHED_KEYS {
                c.clear();
            }
        }
        if !peers.is_empty() {
            c.insert(key, (peers.clone(), Instant::now()));
        }
        Ok(peers)
    }

    /// Leaves `envelope` in the inbox `key` on the `blob_replicas` closest peers (trying
    /// further ones when a close one refuses). Returns how many hold it (at least one).
    pub async fn inbox_put(
        &self,
        key: [u8; 32],
        ack_hash: [u8; 32],
        envelope: Vec<u8>,
    ) -> Result<usize, BlobError> {
        match self.inbox_put_once(key, ack_hash, &envelope, false).await {
            Ok(n) => Ok(n),
            // The cached holders may have gone: ask the DHT again.
            Err(_) => self.inbox_put_once(key, ack_hash, &envelope, true).await,
        }
    }

    async fn inbox_put_once(
        &self,
        key: [u8; 32],
        ack_hash: [u8; 32],
        envelope: &[u8],
        fresh: bool,
    ) -> Result<usize, BlobError> {
        let wanted = self.blob_replicas.max(1);
        let candidates = self.inbox_holders(key, fresh).await?;
        let mut held = 0;
        let mut next = candidates.into_iter().take(MAX_PUT_CANDIDATES);
        while held < wanted {
            let batch: Vec<PeerId> = next.by_ref().take(wanted - held).collect();
            if batch.is_empty() {
                break;
            }
            let attempts = batch.iter().map(|p| {
                let req = Request::InboxPut {
                    key,
                    ack_hash,
                    envelope: envelope.to_vec(),
                };
                async move { (*p, self.request(*p, req).await) }
            });
            for (peer, res) in futures::future::join_all(attempts).await {
                match res {
                    Ok(Response::Stored) => held += 1,
                    Ok(other) => tracing::debug!(%peer, "inbox put refused: {other:?}"),
                    Err(e) => tracing::debug!(%peer, "inbox put failed: {e}"),
                }
            }
        }
        if held == 0 {
            return Err(BlobError::TooFewHolders { stored: 0, wanted });
        }
        Ok(held)
    }

    /// The entries of inbox `key`: those this node holds itself and those its closest peers
    /// hold, without duplicates (at most `MAX_INBOX_LIST` from each holder).
    pub async fn inbox_list(&self, key: [u8; 32]) -> Result<Vec<Vec<u8>>, BlobError> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if let Response::InboxEntries { entries } =
            serve(&self.store, Request::InboxList { key }).await
        {
            for e in entries {
                if seen.insert(crate::crypto::hash(&e)) {
                    out.push(e);
                }
            }
        }
        let peers = self.inbox_holders(key, true).await?;
        let asks = peers
            .into_iter()
            .take(self.blob_replicas.max(1) * 2)
            .map(|p| async move { self.request(p, Request::InboxList { key }).await });
        for res in futures::future::join_all(asks).await {
            if let Ok(Response::InboxEntries { entries }) = res {
                for e in entries {
                    if seen.insert(crate::crypto::hash(&e)) {
                        out.push(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes entry `entry` from inbox `key` here and on the closest peers.
    pub async fn inbox_ack(
        &self,
        key: [u8; 32],
        entry: [u8; 32],
        secret: [u8; 32],
    ) -> Result<(), BlobError> {
        let req = Request::InboxAck { key, entry, secret };
        let _ = serve(&self.store, req.clone()).await;
        let peers = self.inbox_holders(key, false).await?;
        let acks = peers
            .into_iter()
            .take(self.blob_replicas.max(1) * 2)
            .map(|p| {
                let req = req.clone();
                async move { self.request(p, req).await }
            });
        futures::future::join_all(acks).await;
        Ok(())
    }
}
