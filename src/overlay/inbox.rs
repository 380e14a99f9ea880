//! DHT inboxes: small sealed entries (delivery notices) held for a recipient on the peers
//! closest to `inbox_key(user key)`, listed by the recipient and removed when it
//! acknowledges with the secret whose hash the sender put beside the entry (protocol.rs,
//! "DHT inboxes").
//!
//! * A put is signed by the sender's pseudonym (a key of its own for each recipient,
//!   delivery/notice.rs); a holder refuses a bad signature and keeps ≤ 16 entries per
//!   pseudonym, 256 per inbox and 16,384 in all.
//! * A list is signed by the recipient's user key (whose hash is the inbox key), for this
//!   holder, at a time within 15 minutes of the holder's clock; anyone else is refused.
//! * Lists are paged by entry id with a cursor, so no number of junk entries hides one.
//! * A holder cannot read an entry, and only the recipient (who alone can open the envelope
//!   and learn the secret) can remove one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::protocol::{
    self, INBOX_ENTRY_LIFETIME_SECS, INBOX_LIST_CONTEXT, INBOX_LIST_FRESH_SECS, INBOX_PUT_CONTEXT,
    MAX_INBOX_LIST, MAX_INBOX_PER_RECIPIENT, MAX_INBOX_PER_SENDER, MAX_INBOX_TOTAL, Refusal,
    Request, Response,
};
use super::{BlobError, Client, MAX_PUT_CANDIDATES, now_secs};
use crate::crypto::UserKeys;
use crate::store::{InboxLimits, InboxPut, Store};

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

/// Where the sender pseudonym sits in a held value: `u64 stored ‖ [32] ack hash ‖ [32]
/// sender pseudonym ‖ entry`.
const SENDER_AT: usize = 40;
const VALUE_HEADER: usize = 72;
/// Pages a recipient reads from one holder at most (the holder keeps ≤ 256 entries).
const MAX_PAGES: usize = MAX_INBOX_PER_RECIPIENT / MAX_INBOX_LIST + 1;

/// Holder side: answers one inbox request from the store. `holder` is this node's peer id
/// (list requests are signed for one holder); `local` skips the list authorization (this
/// node's own client reading its own store).
pub(super) async fn serve(
    store: &Store,
    request: Request,
    holder: &PeerId,
    local: bool,
) -> Response {
    let now = now_secs();
    let horizon = now.saturating_sub(INBOX_ENTRY_LIFETIME_SECS);
    let res = match request {
        Request::InboxPut {
            key,
            ack_hash,
            sender,
            entry,
            sig,
        } => {
            let signed = protocol::inbox_put_signed(&key, &ack_hash, &entry);
            if crate::crypto::keys::verify(&sender, INBOX_PUT_CONTEXT, &signed, &sig).is_err() {
                return Response::Refused(Refusal::Invalid);
            }
            let id = crate::crypto::hash(&entry);
            let mut value = Vec::with_capacity(VALUE_HEADER + entry.len());
            value.extend_from_slice(&now.to_be_bytes());
            value.extend_from_slice(&ack_hash);
            value.extend_from_slice(&sender);
            value.extend_from_slice(&entry);
            let limits = InboxLimits {
                per_key: MAX_INBOX_PER_RECIPIENT,
                per_sender: MAX_INBOX_PER_SENDER,
                total: MAX_INBOX_TOTAL,
                sender_at: SENDER_AT,
            };
            store
                .inbox_put(key, id, value, limits, horizon)
                .await
                .map(|r| match r {
                    InboxPut::Stored | InboxPut::AlreadyHeld => Response::Stored,
                    InboxPut::Full => Response::Refused(Refusal::Full),
                })
        }
        Request::InboxList {
            key,
            recipient,
            time,
            cursor,
            sig,
        } => {
            if !local && !list_authorized(holder, key, recipient, time, cursor, &sig, now) {
                return Response::Refused(Refusal::Invalid);
            }
            store
                .inbox_page(key, cursor, horizon, MAX_INBOX_LIST)
                .await
                .map(|(rows, more)| {
                    let entries = rows
                        .into_iter()
                        .filter(|v| v.len() > VALUE_HEADER)
                        .map(|mut v| v.split_off(VALUE_HEADER))
                        .collect();
                    Response::InboxEntries { entries, more }
                })
        }
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

/// A list request is the recipient's: its key is the one the inbox belongs to, it was
/// signed for this holder, and its time is within `INBOX_LIST_FRESH_SECS` of ours (either
/// way: a clock ahead or behind is skew, not abuse).
fn list_authorized(
    holder: &PeerId,
    key: [u8; 32],
    recipient: [u8; 32],
    time: u64,
    cursor: [u8; 32],
    sig: &[u8; 64],
    now: u64,
) -> bool {
    if protocol::inbox_key(&recipient) != key || time.abs_diff(now) > INBOX_LIST_FRESH_SECS {
        return false;
    }
    let signed = protocol::inbox_list_signed(&holder.to_bytes(), &key, time, &cursor);
    crate::crypto::keys::verify(&recipient, INBOX_LIST_CONTEXT, &signed, sig).is_ok()
}

/// The `INBOX_PUT` a sender's pseudonym `signer` sends for `entry`.
pub fn put_request(
    signer: &UserKeys,
    key: [u8; 32],
    ack_hash: [u8; 32],
    entry: Vec<u8>,
) -> Request {
    let sig = signer.sign(
        INBOX_PUT_CONTEXT,
        &protocol::inbox_put_signed(&key, &ack_hash, &entry),
    );
    Request::InboxPut {
        key,
        ack_hash,
        sender: signer.public().sign,
        entry,
        sig,
    }
}

/// The `INBOX_LIST` the recipient `me` sends to `holder` for the page after `cursor`.
pub fn list_request(me: &UserKeys, holder: &PeerId, cursor: [u8; 32], time: u64) -> Request {
    let key = protocol::inbox_key(&me.public().sign);
    let signed = protocol::inbox_list_signed(&holder.to_bytes(), &key, time, &cursor);
    Request::InboxList {
        key,
        recipient: me.public().sign,
        time,
        cursor,
        sig: me.sign(INBOX_LIST_CONTEXT, &signed),
    }
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

    /// Leaves `entry` in the inbox `key` on the `blob_replicas` closest peers (trying
    /// further ones when a close one refuses), signed by the sender pseudonym `signer`.
    /// Returns how many hold it (at least one).
    pub async fn inbox_put(
        &self,
        key: [u8; 32],
        ack_hash: [u8; 32],
        entry: Vec<u8>,
        signer: &UserKeys,
    ) -> Result<usize, BlobError> {
        let req = put_request(signer, key, ack_hash, entry);
        match self.inbox_put_once(key, &req, false).await {
            Ok(n) => Ok(n),
            // The cached holders may have gone: ask the DHT again.
            Err(_) => self.inbox_put_once(key, &req, true).await,
        }
    }

    pub(super) async fn inbox_put_once(
        &self,
        key: [u8; 32],
        req: &Request,
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
                let req = req.clone();
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

    /// Every entry of `me`'s inbox: those this node holds itself and those its closest
    /// peers hold, without duplicates; each holder is read page by page (a signed list
    /// request per page), so no number of other entries can hide one.
    pub async fn inbox_list(&self, me: &UserKeys) -> Result<Vec<Vec<u8>>, BlobError> {
        let key = protocol::inbox_key(&me.public().sign);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut keep = |entries: Vec<Vec<u8>>| {
            for e in entries {
                if seen.insert(crate::crypto::hash(&e)) {
                    out.push(e);
                }
            }
        };
        let local = self.peer_id;
        keep(self.inbox_pages(me, None, &local).await);
        let peers = self.inbox_holders(key, true).await?;
        let asks = peers
            .into_iter()
            .take(self.blob_replicas.max(1) * 2)
            .map(|p| async move { self.inbox_pages(me, Some(p), &p).await });
        for entries in futures::future::join_all(asks).await {
            keep(entries);
        }
        Ok(out)
    }

    /// All pages of `me`'s inbox at one holder (`None`: this node's own store).
    async fn inbox_pages(
        &self,
        me: &UserKeys,
        peer: Option<PeerId>,
        holder: &PeerId,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cursor = [0u8; 32];
        for _ in 0..MAX_PAGES {
            let req = list_request(me, holder, cursor, now_secs());
            let res = match peer {
                None => serve(&self.store, req, holder, true).await,
                Some(p) => match self.request(p, req).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(peer = %p, "inbox list failed: {e}");
                        break;
                    }
                },
            };
            let Response::InboxEntries { entries, more } = res else {
                tracing::debug!(?peer, "inbox list answered {res:?}");
                break;
            };
            // The holder's order is by entry id; continue after the greatest one seen.
            let Some(last) = entries.iter().map(|e| crate::crypto::hash(e)).max() else {
                break;
            };
            if last <= cursor && cursor != [0; 32] {
                break; // a holder that does not advance
            }
            cursor = last;
            out.extend(entries);
            if !more {
                break;
            }
        }
        out
    }

    /// Removes entry `entry` from inbox `key` here and on the closest peers.
    pub async fn inbox_ack(
        &self,
        key: [u8; 32],
        entry: [u8; 32],
        secret: [u8; 32],
    ) -> Result<(), BlobError> {
        let req = Request::InboxAck { key, entry, secret };
        let _ = serve(&self.store, req.clone(), &self.peer_id, true).await;
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
