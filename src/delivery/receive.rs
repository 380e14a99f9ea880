//! The inbound side: delivery notices from notifications and from the DHT inbox, verified
//! against the sender's directory record, stored into INBOX once, and acknowledged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::notice::{self, Body, Notice, Part};
use super::{Delivery, Error, MAX_RECEIVING, PARTS_IN_FLIGHT, lock, now_secs};
use crate::crypto::{ContentKey, ObjectId};
use crate::mailbox::{AlsoWrite, Flags, NewMessage};
use crate::overlay::{LookupError, protocol};

/// What became of one offered notice.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// Stored in INBOX now, or earlier (a duplicate); acknowledged.
    Stored,
    /// Not for us, unreadable or forged: acknowledged when possible so it is not offered
    /// again, never stored.
    Dropped,
    /// Could not be handled now (no sender record yet, object not reachable, another task is
    /// on it): left in the DHT inbox for the next collection.
    Later,
}

impl Delivery {
    pub(super) async fn run_notifications(
        self,
        mut rx: mpsc::Receiver<Vec<u8>>,
        cancel: CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(MAX_RECEIVING));
        let mut tasks = JoinSet::new();
        loop {
            let payload = tokio::select! {
                _ = cancel.cancelled() => break,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            // Never wait here: a full handler would fill the channel and the node would drop
            // pushes unseen. A push that finds every slot taken waits in the DHT inbox, and
            // the collector is told to fetch it.
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                self.inner.collect.notify_one();
                continue;
            };
            let this = self.clone();
            tasks.spawn(
                async move {
                    let _permit = permit;
                    if this.receive(payload).await == Received::Later {
                        this.inner.collect.notify_one();
                    }
                }
                .in_current_span(),
            );
        }
        tasks.shutdown().await;
    }

    /// Collects the DHT inbox at start, every `collect_every`, and when a notification could
    /// not be handled on its own.
    pub(super) async fn run_collector(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.collect().await {
                Ok(n) => {
                    backoff = Duration::from_secs(1);
                    if n > 0 {
                        tracing::info!(target: "peerpost::_events::delivery", stored = n, "collected the DHT inbox");
                        // A list answer holds at most 32 entries: there may be more.
                        Duration::from_millis(200)
                    } else {
                        self.inner.config.collect_every
                    }
                }
                Err(e) => {
                    // At start the overlay may not know a peer yet: retry soon.
                    tracing::debug!("inbox collection: {e}");
                    backoff = (backoff * 2).min(self.inner.config.collect_every);
                    backoff
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.collect.notified() => {
                    // Give a burst of notifications a moment to settle.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Lists this user's DHT inbox and receives every entry; returns how many were stored.
    pub async fn collect(&self) -> Result<usize, Error> {
        let entries = self
            .inner
            .client
            .inbox_list(&self.inner.keys)
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut stored = 0;
        for e in entries {
            if self.receive(e).await == Received::Stored {
                stored += 1;
            }
        }
        Ok(stored)
    }

    async fn receive(&self, envelope: Vec<u8>) -> Received {
        let entry = crate::crypto::hash(&envelope);
        let me = &self.inner.keys;
        let opened = match notice::unwrap(me, envelope).and_then(|e| e.open(me)) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!("dropped an unreadable delivery notice: {e}");
                return Received::Dropped;
            }
        };
        let notice = match Notice::decode(&opened.payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("dropped a malformed delivery notice: {e}");
                return Received::Dropped;
            }
        };
        let me = &self.inner.config.address;
        if notice.recipient != *me {
            tracing::warn!(recipient = %notice.recipient, "dropped a notice addressed to someone else");
            self.ack(entry, &notice).await;
            return Received::Dropped;
        }
        let mut id_input = opened.sender.to_vec();
        id_input.extend_from_slice(&notice.msg_id);
        let id = crate::crypto::hash(&id_input);
        if !lock(&self.inner.receiving).insert(id) {
            return Received::Later;
        }
        let outcome = self.store_once(id, &opened.sender, &notice).await;
        lock(&self.inner.receiving).remove(&id);
        if outcome != Received::Later {
            self.ack(entry, &notice).await;
        }
        outcome
    }

    async fn store_once(&self, id: [u8; 32], signer: &[u8; 32], n: &Notice) -> Received {
        let store = &self.inner.store;
        match store.delivered_has(id).await {
            Ok(true) => return Received::Stored,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("cannot check earlier deliveries: {e}");
                return Received::Later;
            }
        }
        // The envelope's signer must be the key the sender's address publishes, believing
        // only the pinned or domain-vouched key when there is one (a cached record that
        // disagrees is looked up again before the message is refused).
        let claim = match self.claim(&n.sender).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(sender = %n.sender, "cannot judge the sender yet: {e}");
                return Received::Later;
            }
        };
        let mut record = self.owned_record(&n.sender, &claim, false).await;
        if matches!(&record, Ok((r, _)) if r.keys.sign != *signer) {
            record = self.owned_record(&n.sender, &claim, true).await;
        }
        let (fingerprint, level) = match record {
            Ok((r, level)) if r.keys.sign == *signer => (r.keys.fingerprint(), level),
            Ok(_) => {
                tracing::warn!(
                    target: "peerpost::_events::delivery",
                    sender = %n.sender,
                    "SECURITY WARNING: a message claiming to be from {} is signed by another key; dropped",
                    n.sender
                );
                return Received::Dropped;
            }
            Err(LookupError::Address(..)) => return Received::Dropped,
            Err(e) => {
                tracing::debug!(sender = %n.sender, "cannot verify the sender yet: {e}");
                return Received::Later;
            }
        };
        let body = match &n.body {
            Body::Inline(b) => b.clone(),
            Body::Objects(parts) => match self.fetch_parts(parts).await {
                Ok(b) => b,
                Err(outcome) => {
                    if outcome == Received::Dropped {
                        tracing::warn!(sender = %n.sender, "a message object does not open with its key; dropped");
                    }
                    return outcome;
                }
            },
        };
        let now = now_secs();
        let host = &self.inner.config.hostname;
        // Results claiming to be ours inside the message are a forgery (RFC 8601 §5).
        let body = super::headers::strip_own_results(&body, host);
        let from = super::headers::from_addresses(&body);
        // No From: at all impersonates nobody (a client shows the sender instead).
        let mismatch = from.iter().any(|a| *a != n.sender);
        if mismatch && self.inner.config.from_mismatch == super::FromMismatch::Refuse {
            tracing::warn!(
                target: "peerpost::_events::delivery",
                sender = %n.sender,
                "a message signed by {} has From: {:?}; refused (from_mismatch = \"refuse\")",
                n.sender, from
            );
            return Received::Dropped;
        }
        let result = match (mismatch, level) {
            (true, _) => format!(
                "peerpost=fail (from-mismatch: signed by {sender}, {level}, but From: is {from})",
                sender = n.sender,
                level = level.as_str(),
                from = if from.is_empty() {
                    "missing".to_string()
                } else {
                    comment_safe(&from.join(", "))
                },
            ),
            (false, super::ownership::Level::Unverified) => {
                "peerpost=neutral (unverified, first seen)".to_string()
            }
            (false, level) => format!("peerpost=pass ({})", level.as_str()),
        };
        let mut bytes = format!(
            "Authentication-Results: {host}; {result} key={fingerprint} \
             smtp.mailfrom={sender}\r\n\
             Received: from {sender} by {host} (peerpost) via the overlay\r\n\
             \tid {id}; {date}\r\n",
            sender = n.sender,
            id = crate::crypto::hex(&n.msg_id),
            date = crate::date::rfc5322(now as i64),
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        // The Maildir name carries the delivery id, the same on every device of the user:
        // a device that hears of the message after another stored it skips it, and two that
        // stored it at once keep one copy (mailbox/replica.rs, docs/design.md "Devices").
        let mut key = [0u8; 16];
        key.copy_from_slice(&id[..16]);
        let msg = NewMessage {
            bytes,
            internal_date: now as i64,
            flags: Flags::default(),
            recent: true,
            maildir_name: Some(crate::mailbox::maildir::delivery_base(now as i64, &id)),
        };
        // The message and the record that it arrived share one commit: a crash cannot leave
        // it in INBOX unremembered (and stored again when the notice is offered again).
        let remember: AlsoWrite = Box::new(move |tx| tx.delivered_mark(id, now));
        match self
            .inner
            .mailbox
            .append_delivered("INBOX", msg, key, remember)
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::debug!("an arriving message another device of ours stored already");
                return Received::Stored;
            }
            Err(e) => {
                tracing::warn!("cannot store an arriving message: {e}");
                return Received::Later;
            }
        }
        tracing::info!(
            target: "peerpost::_events::delivery",
            sender = %n.sender,
            queue_id = %crate::crypto::hex(&n.msg_id),
            "message received"
        );
        Received::Stored
    }

    /// Fetches and opens a message's overlay objects, in order (a few at a time; at most two
    /// long messages are put together at once, so memory stays bounded).
    async fn fetch_parts(&self, parts: &[Part]) -> Result<Vec<u8>, Received> {
        let _slot = self
            .inner
            .assembling
            .acquire()
            .await
            .map_err(|_| Received::Later)?;
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len as usize).sum());
        for group in parts.chunks(PARTS_IN_FLIGHT) {
            let fetched = futures::future::join_all(group.iter().map(|p| self.fetch_part(p))).await;
            for part in fetched {
                out.extend_from_slice(&part?);
            }
        }
        Ok(out)
    }

    async fn fetch_part(&self, p: &Part) -> Result<Vec<u8>, Received> {
        let obj = self
            .inner
            .client
            .get_object(ObjectId(p.id))
            .await
            .map_err(|e| {
                tracing::debug!("message object not reachable yet: {e}");
                Received::Later
            })?;
        match obj.open(&ContentKey::from_bytes(p.key)) {
            Ok(b) if b.len() == p.len as usize => Ok(b),
            _ => Err(Received::Dropped),
        }
    }

    async fn ack(&self, entry: [u8; 32], n: &Notice) {
        if self.inner.acks.try_send((entry, n.ack_secret)).is_err() {
            tracing::debug!("ack queue full; the entry is acknowledged at a later collection");
        }
    }

    /// Sends the queued acknowledgements to the inbox holders, a few at a time.
    pub(super) async fn run_acks(
        self,
        mut rx: mpsc::Receiver<super::Ack>,
        cancel: CancellationToken,
    ) {
        let key = protocol::inbox_key(&self.inner.keys.public().sign);
        let mut tasks = JoinSet::new();
        loop {
            if tasks.len() >= super::MAX_ACKS_IN_FLIGHT {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tasks.join_next() => continue,
                }
            }
            let (entry, secret) = tokio::select! {
                _ = cancel.cancelled() => break,
                a = rx.recv() => match a {
                    Some(a) => a,
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let client = self.inner.client.clone();
            tasks.spawn(
                async move {
                    if let Err(e) = client.inbox_ack(key, entry, secret).await {
                        tracing::debug!("inbox ack: {e}");
                    }
                }
                .in_current_span(),
            );
        }
        tasks.shutdown().await;
    }
}

/// `text` as it may stand inside an `Authentication-Results` comment: the addresses of a
/// hostile `From:` could otherwise close the comment and append a result of their own
/// (`x);peerpost=pass(`). Only address characters are kept, others become `?`, at most 512.
fn comment_safe(text: &str) -> String {
    text.chars()
        .take(512)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._+-, ".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::{DeviceKey, DirectoryRecord, UserKeys};
    use crate::mailbox::Mailbox;
    use crate::overlay::{self, TransportKind};
    use crate::store::Store;

    /// One node whose overlay holds alice's record (published locally): bob's delivery must
    /// drop a notice claiming to be alice's but signed by another key, and store alice's own
    /// notice once however often it is offered.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_forged_sender_is_dropped_and_a_message_lands_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sized(dir.path(), 1 << 30).unwrap();
        let device = DeviceKey::generate().unwrap();
        let mut oc = overlay::Config::new(*device.seed(), TransportKind::Memory);
        let port = u64::from_be_bytes(crate::crypto::random_bytes::<8>().unwrap()) | 1;
        oc.listen = vec![overlay::memory_addr(port)];
        let cancel = CancellationToken::new();
        let (client, _events, task) = overlay::spawn(oc, store.clone(), cancel.clone()).unwrap();
        let (alice, bob, mallory) = (
            UserKeys::generate().unwrap(),
            UserKeys::generate().unwrap(),
            UserKeys::generate().unwrap(),
        );
        let now = now_secs();
        let rec = DirectoryRecord::new(&alice, "alice@t.test", vec![[1; 32]], now, now, 3600);
        let _ = client.publish(rec.unwrap()).await; // no peers: kept locally
        let mailbox = Mailbox::open(
            store.clone(),
            UserKeys::from_seed(*bob.seed()),
            device.public(),
        )
        .await
        .unwrap();
        let d = Delivery::new(
            super::super::Config::new("bob@t.test", "node.test"),
            UserKeys::from_seed(*bob.seed()),
            client,
            store,
            mailbox.clone(),
        );
        let envelope = |signer: &UserKeys, id: u8| {
            let n = Notice {
                msg_id: [id; 16],
                sent: now,
                sender: "alice@t.test".into(),
                recipient: "bob@t.test".into(),
                ack_secret: [id; 32],
                body: Body::Inline(b"Subject: hi\r\n\r\nbody\r\n".to_vec()),
            };
            let inner = crate::crypto::Envelope::seal(signer, &bob.public().enc, &n.encode());
            let p = notice::pseudonym(signer, &bob.public().sign);
            notice::wrap(&p, &bob.public().enc, &inner.unwrap()).unwrap()
        };
        assert_eq!(d.receive(envelope(&mallory, 1)).await, Received::Dropped);
        assert!(mailbox.messages("INBOX").unwrap().is_empty());
        assert_eq!(d.receive(envelope(&alice, 2)).await, Received::Stored);
        assert_eq!(d.receive(envelope(&alice, 2)).await, Received::Stored);
        let inbox = mailbox.messages("INBOX").unwrap();
        assert_eq!(inbox.len(), 1, "stored once");
        let text = mailbox.read(inbox[0].entry).await.unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            // Nothing vouches for alice here: first-use trust.
            text.starts_with(
                "Authentication-Results: node.test; peerpost=neutral (unverified, first seen)"
            ) && text.contains("smtp.mailfrom=alice@t.test")
                && text.ends_with("Subject: hi\r\n\r\nbody\r\n"),
            "{text}"
        );
        // Garbage and notices sealed to someone else are dropped, not stored.
        assert_eq!(d.receive(vec![1, 2, 3]).await, Received::Dropped);
        let other = UserKeys::generate().unwrap();
        let n = crate::crypto::Envelope::seal(&alice, &other.public().enc, b"x").unwrap();
        assert_eq!(d.receive(n.into_bytes()).await, Received::Dropped);
        // An unwrapped envelope (what nodes before the pseudonyms sent) is dropped too.
        let n = crate::crypto::Envelope::seal(&alice, &bob.public().enc, b"x").unwrap();
        assert_eq!(d.receive(n.into_bytes()).await, Received::Dropped);
        cancel.cancel();
        let _ = task.await;
    }

    /// A `From:` written to break out of the A-R comment stays inside it.
    #[test]
    fn a_hostile_from_cannot_write_its_own_result() {
        let from = super::super::headers::from_addresses(
            b"From: x);peerpost=pass(pinned@evil.test\r\n\r\nbody",
        );
        let safe = comment_safe(&from.join(", "));
        assert!(
            !safe.contains(')') && !safe.contains('(') && !safe.contains(';'),
            "{safe}"
        );
        assert_eq!(
            comment_safe("bob@y.test, carol@z.test"),
            "bob@y.test, carol@z.test"
        );
        assert_eq!(comment_safe(&"a".repeat(2000)).len(), 512);
    }
}
