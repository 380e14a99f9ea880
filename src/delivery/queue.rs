//! The outbound side: submission into the persistent queue, and the worker that routes each
//! recipient (overlay or smarthost), retries, and bounces.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::notice::{self, Body, MAX_INLINE, MAX_MESSAGE, MAX_PART, Notice, Part};
use super::smarthost::{self, Failure};
use super::{
    Delivery, Error, MAX_ATTEMPTS_IN_FLIGHT, MAX_QUEUED, PARTS_IN_FLIGHT, dsn, lock, now_secs,
};
use crate::crypto::record::normalize_address;
use crate::crypto::{ContentKey, DirectoryRecord, Envelope, SealedObject};
use crate::mailbox::{Flag, Flags, NewMessage};
use crate::overlay::{self, LookupError, protocol};
use crate::wire::{Reader, Writer};

const MSG: u8 = 0;
const RCPT: u8 = 1;
/// The copy into Sent is still to be made.
const SENT: u8 = 2;
const ROW_VERSION: u8 = 1;
/// Recipient rows looked at per pass of the worker.
const SCAN: usize = 10_000;
/// The worker looks at the queue at least this often.
const IDLE_PASS: Duration = Duration::from_secs(30);
/// Time allowed for a notification push to one device.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

struct RcptRow {
    due: u64,
    attempts: u32,
    last_error: String,
}

/// When this process started (unix seconds): queued rows older than that may have been
/// worked on by a process that was killed.
static PROCESS_STARTED: std::sync::LazyLock<u64> = std::sync::LazyLock::new(now_secs);

impl RcptRow {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let err: String = self.last_error.chars().take(500).collect();
        w.u8(ROW_VERSION)
            .u64(self.due)
            .u32(self.attempts)
            .u16(err.len() as u16)
            .fixed(err.as_bytes());
        w.into_vec()
    }

    fn decode(v: &[u8]) -> Option<RcptRow> {
        let mut r = Reader::new(v);
        if r.u8("version").ok()? != ROW_VERSION {
            return None;
        }
        let due = r.u64("due").ok()?;
        let attempts = r.u32("attempts").ok()?;
        let n = usize::from(r.u16("error length").ok()?);
        let last_error = String::from_utf8_lossy(r.take(n, "error").ok()?).into_owned();
        Some(RcptRow {
            due,
            attempts,
            last_error,
        })
    }
}

/// A queued message, opened.
struct Queued {
    queued: u64,
    sender: String,
    bytes: Vec<u8>,
}

/// How one attempt for one recipient ended.
enum Outcome {
    Done,
    Temporary(String),
    Permanent { status: String, diagnostic: String },
}

fn rcpt_key(msg: &[u8; 16], rcpt: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + rcpt.len());
    k.push(RCPT);
    k.extend_from_slice(msg);
    k.extend_from_slice(rcpt.as_bytes());
    k
}

fn msg_key(msg: &[u8; 16]) -> Vec<u8> {
    let mut k = vec![MSG];
    k.extend_from_slice(msg);
    k
}

impl Delivery {
    /// The key the queued copies are sealed under at rest (derived from the user's seed).
    fn outbox_key(&self) -> ContentKey {
        let mut m = b"peerpost outbox key v1".to_vec();
        m.extend_from_slice(self.inner.keys.seed());
        ContentKey::from_bytes(crate::crypto::hash(&m))
    }

    /// Accepts a message from this user for `rcpts`: the message, a row per recipient and a
    /// row for the copy into Sent, in one durable commit (the worker makes the Sent copy
    /// right after). Returns the queue id (hex).
    pub async fn submit(&self, rcpts: &[String], message: Vec<u8>) -> Result<String, Error> {
        let mut list: Vec<String> = Vec::new();
        for r in rcpts {
            let n = normalize_address(r).map_err(|why| Error::Invalid(format!("{r:?} {why}")))?;
            if !list.contains(&n) {
                list.push(n);
            }
        }
        if list.is_empty() {
            return Err(Error::Invalid("no recipients".into()));
        }
        let queued = self.inner.store.outbox_len().await?;
        if queued + list.len() as u64 > MAX_QUEUED {
            return Err(Error::QueueFull(queued));
        }
        let now = now_secs();
        let msg: [u8; 16] = crate::crypto::random_bytes()?;
        let sealed = SealedObject::seal_with_key(&message, &self.outbox_key())?;
        let mut head = Writer::new();
        head.u8(ROW_VERSION)
            .u64(now)
            .bytes8(self.inner.config.address.as_bytes())
            .fixed(sealed.as_bytes());
        let mut sent = vec![SENT];
        sent.extend_from_slice(&msg);
        let mut rows = vec![(msg_key(&msg), head.into_vec()), (sent, Vec::new())];
        for r in &list {
            let row = RcptRow {
                due: now,
                attempts: 0,
                last_error: String::new(),
            };
            rows.push((rcpt_key(&msg, r), row.encode()));
        }
        self.inner.store.outbox_put(rows).await?;
        self.inner.wake.notify_one();
        crate::metrics::get().delivery_queued(list.len());
        let id = crate::crypto::hex(&msg);
        tracing::info!(target: "peerpost::_events::delivery", queue_id = %id, recipients = list.len(), "queued");
        Ok(id)
    }

    pub(super) async fn run_queue(self, cancel: CancellationToken) {
        std::sync::LazyLock::force(&PROCESS_STARTED);
        let mut attempts: JoinSet<()> = JoinSet::new();
        loop {
            let wait = match self.dispatch(&mut attempts).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!("outbound queue: {e}");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
            }
        }
        attempts.shutdown().await;
    }

    /// Starts the pending Sent copies and attempts for due recipient rows; returns how long
    /// until the next one is due.
    async fn dispatch(&self, attempts: &mut JoinSet<()>) -> Result<Duration, Error> {
        for (key, _) in self.inner.store.outbox_scan(vec![SENT], SCAN).await? {
            if attempts.len() >= MAX_ATTEMPTS_IN_FLIGHT {
                break;
            }
            if !lock(&self.inner.sending).insert(key.clone()) {
                continue;
            }
            let this = self.clone();
            attempts.spawn(
                async move {
                    this.copy_to_sent(&key).await;
                    lock(&this.inner.sending).remove(&key);
                }
                .in_current_span(),
            );
        }
        let rows = self.inner.store.outbox_scan(vec![RCPT], SCAN).await?;
        let now = now_secs();
        let mut next = IDLE_PASS;
        for (key, value) in rows {
            let Some(row) = RcptRow::decode(&value) else {
                continue;
            };
            if row.due > now {
                next = next.min(Duration::from_secs(row.due - now));
                continue;
            }
            if attempts.len() >= MAX_ATTEMPTS_IN_FLIGHT {
                break;
            }
            if !lock(&self.inner.sending).insert(key.clone()) {
                continue;
            }
            let this = self.clone();
            attempts.spawn(
                async move {
                    this.attempt(&key, row).await;
                    lock(&this.inner.sending).remove(&key);
                    // Something finished: look at the queue again.
                    this.inner.wake.notify_one();
                }
                .in_current_span(),
            );
        }
        Ok(next)
    }

    async fn load(&self, msg: &[u8; 16]) -> Result<Option<Queued>, Error> {
        let Some(v) = self.inner.store.outbox_get(msg_key(msg)).await? else {
            return Ok(None);
        };
        let bad = |what: &str| Error::Invalid(format!("queued message is damaged: {what}"));
        let mut r = Reader::new(&v);
        if r.u8("version").map_err(|_| bad("version"))? != ROW_VERSION {
            return Err(bad("version"));
        }
        let queued = r.u64("queued").map_err(|_| bad("time"))?;
        let sender = r.bytes8("sender", 255).map_err(|_| bad("sender"))?;
        let sender = String::from_utf8_lossy(sender).into_owned();
        let sealed = SealedObject::from_bytes(r.rest().to_vec())?;
        let bytes = sealed.open(&self.outbox_key())?;
        Ok(Some(Queued {
            queued,
            sender,
            bytes,
        }))
    }

    /// Appends the queued message to Sent and drops its Sent row (a crash in between is seen
    /// at the next start: the copy is not made twice).
    async fn copy_to_sent(&self, key: &[u8]) {
        let Some(msg) = key.get(1..17).and_then(|m| <[u8; 16]>::try_from(m).ok()) else {
            return;
        };
        let queued = match self.load(&msg).await {
            Ok(Some(q)) => q,
            Ok(None) => {
                let _ = self.inner.store.outbox_finish(msg, key.to_vec()).await;
                return;
            }
            Err(e) => {
                tracing::warn!("cannot read a queued message: {e}");
                return;
            }
        };
        // The copy is named after the queued message, so a process killed between the append
        // and the row's removal does not copy it twice: a message queued before this process
        // started is looked for in Sent first.
        let name = format!(
            "{}.{}.sent",
            queued.queued,
            msg.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        if queued.queued <= *PROCESS_STARTED
            && let Ok(sent) = self.inner.mailbox.messages("Sent")
            && sent.iter().any(|m| m.maildir_name == name)
        {
            if let Err(e) = self.inner.store.outbox_finish(msg, key.to_vec()).await {
                tracing::warn!("cannot finish the Sent row: {e}");
            }
            return;
        }
        let copy = NewMessage {
            bytes: queued.bytes,
            internal_date: queued.queued as i64,
            flags: Flags::default().with(Flag::Seen),
            recent: false,
            maildir_name: Some(name),
        };
        match self.inner.mailbox.append("Sent", copy).await {
            Ok(_) => {
                if let Err(e) = self.inner.store.outbox_finish(msg, key.to_vec()).await {
                    tracing::warn!("cannot finish the Sent row: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot copy into Sent: {e}"),
        }
    }

    async fn attempt(&self, key: &[u8], row: RcptRow) {
        let (Some(msg), Ok(rcpt)) = (
            key.get(1..17).and_then(|m| <[u8; 16]>::try_from(m).ok()),
            String::from_utf8(key.get(17..).unwrap_or_default().to_vec()),
        ) else {
            return;
        };
        let store = &self.inner.store;
        let queued = match self.load(&msg).await {
            Ok(Some(q)) => q,
            Ok(None) => {
                // The message row is gone (finished elsewhere): drop the orphan.
                let _ = store.outbox_finish(msg, key.to_vec()).await;
                return;
            }
            Err(e) => {
                tracing::warn!(%rcpt, "cannot read a queued message: {e}");
                return;
            }
        };
        let outcome = self.route(&queued, &msg, &rcpt, row.attempts).await;
        let now = now_secs();
        let cfg = &self.inner.config;
        let bounce = match outcome {
            Outcome::Done => {
                tracing::info!(target: "peerpost::_events::delivery", %rcpt, queue_id = %crate::crypto::hex(&msg), "delivered");
                None
            }
            Outcome::Permanent { status, diagnostic } => Some((status, diagnostic)),
            Outcome::Temporary(e) => {
                if now.saturating_sub(queued.queued) >= cfg.give_up_after.as_secs() {
                    Some(("4.4.7".to_string(), format!("gave up after retrying: {e}")))
                } else {
                    let attempts = row.attempts.saturating_add(1);
                    let delay = cfg
                        .retry_first
                        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
                        .min(cfg.retry_max);
                    tracing::info!(%rcpt, attempts, retry_in = ?delay, "delivery deferred: {e}");
                    let next = RcptRow {
                        due: now + delay.as_secs().max(1),
                        attempts,
                        last_error: e,
                    };
                    if let Err(e) = store.outbox_put(vec![(key.to_vec(), next.encode())]).await {
                        tracing::warn!("cannot reschedule: {e}");
                    }
                    crate::metrics::get().delivery_retried();
                    return;
                }
            }
        };
        if let Some((status, diagnostic)) = bounce {
            tracing::info!(target: "peerpost::_events::delivery", %rcpt, %status, "bounced: {diagnostic}");
            crate::metrics::get().delivery_bounced();
            let failed = dsn::Failed {
                recipient: &rcpt,
                status: &status,
                diagnostic: &diagnostic,
                arrival: queued.queued,
            };
            let report = dsn::build(&cfg.hostname, &queued.sender, &failed, now, &queued.bytes);
            let msg = NewMessage {
                bytes: report,
                internal_date: now as i64,
                flags: Flags::default(),
                recent: true,
                maildir_name: None,
            };
            if let Err(e) = self.inner.mailbox.append("INBOX", msg).await {
                // Keep the row: the bounce is retried with the next pass.
                tracing::warn!("cannot store a bounce: {e}");
                return;
            }
        }
        if let Err(e) = store.outbox_finish(msg, key.to_vec()).await {
            tracing::warn!("cannot finish a queue row: {e}");
        }
    }

    /// Routes one recipient by ownership (docs/design.md "Address ownership"): an overlay
    /// address (pinned, vouched by its domain, or certified by the ring authority) goes to
    /// the overlay only, believing only its pinned or vouched key, and waits (then bounces)
    /// when no such record is found; any other address goes to the smarthost, whatever
    /// record the DHT holds for it.
    async fn route(&self, q: &Queued, msg: &[u8; 16], rcpt: &str, attempts: u32) -> Outcome {
        let claim = match self.claim(rcpt).await {
            Ok(c) => c,
            // DNS or the store failed: the address may be an overlay one, so it waits.
            Err(e) => return Outcome::Temporary(e),
        };
        // A retry looks the recipient up afresh (its devices or keys may have changed).
        let fresh = attempts > 0;
        if claim.is_overlay() {
            return match self.owned_record(rcpt, &claim, fresh).await {
                Ok((record, _)) => counted(self.send_overlay(&record, msg, q).await, "overlay", q),
                Err(LookupError::Address(a, why)) => Outcome::Permanent {
                    status: "5.1.3".into(),
                    diagnostic: format!("{a:?} {why}"),
                },
                // Never the smarthost in clear: the owner's record may appear later.
                Err(e) => Outcome::Temporary(format!(
                    "{rcpt} is an overlay address and no record with its vouched key is found: {e}"
                )),
            };
        }
        if self.inner.config.ring_authority.is_some() {
            match self.owned_record(rcpt, &claim, fresh).await {
                Ok((record, super::ownership::Level::VerifiedRing)) => {
                    return counted(self.send_overlay(&record, msg, q).await, "overlay", q);
                }
                Ok(_) | Err(LookupError::NotFound(_)) | Err(LookupError::Refused(_)) => {}
                Err(LookupError::Address(a, why)) => {
                    return Outcome::Permanent {
                        status: "5.1.3".into(),
                        diagnostic: format!("{a:?} {why}"),
                    };
                }
                Err(e) => return Outcome::Temporary(e.to_string()),
            }
        }
        match &self.inner.config.smarthost {
            Some(sh) => match smarthost::send(sh, &q.sender, rcpt, &q.bytes).await {
                Ok(()) => counted(Outcome::Done, "smarthost", q),
                Err(Failure::Temporary(e)) => {
                    // A relay that is down or refuses us (TLS, login) needs the user's eyes:
                    // the mail waits until it is fixed or gives up.
                    tracing::warn!(%rcpt, "smarthost: {e}; the message stays queued");
                    Outcome::Temporary(e)
                }
                Err(Failure::Permanent { status, diagnostic }) => {
                    Outcome::Permanent { status, diagnostic }
                }
            },
            None => Outcome::Permanent {
                status: "5.1.2".into(),
                diagnostic: format!(
                    "{rcpt} is not an overlay address (its domain does not vouch for a \
                     peerpost key, and it is not pinned) and no smarthost is configured"
                ),
            },
        }
    }

    /// Seals a message too long for a notice into overlay objects of at most `MAX_PART`
    /// bytes, each under its own key, and stores them (a few at a time).
    async fn put_parts(&self, bytes: &[u8]) -> Result<Vec<Part>, Outcome> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Outcome::Permanent {
                status: "5.3.4".into(),
                diagnostic: format!(
                    "{} bytes is more than the overlay carries ({MAX_MESSAGE} bytes)",
                    bytes.len()
                ),
            });
        }
        let mut parts = Vec::with_capacity(bytes.len().div_ceil(MAX_PART));
        for group in bytes.chunks(MAX_PART * PARTS_IN_FLIGHT) {
            let puts = group.chunks(MAX_PART).map(|c| self.put_part(c));
            parts.extend(
                futures::future::try_join_all(puts)
                    .await
                    .map_err(Outcome::Temporary)?,
            );
        }
        Ok(parts)
    }

    async fn put_part(&self, chunk: &[u8]) -> Result<Part, String> {
        let (obj, key) = SealedObject::seal(chunk).map_err(|e| e.to_string())?;
        self.inner
            .client
            .put_object(&obj)
            .await
            .map_err(|e| format!("cannot store the message in the overlay: {e}"))?;
        Ok(Part {
            id: *obj.id().as_bytes(),
            key: *key.as_bytes(),
            len: chunk.len() as u32,
        })
    }

    /// Seals the message for the record's keys, leaves the notice in the recipient's DHT
    /// inbox and pushes it to the recipient's devices.
    async fn send_overlay(&self, record: &DirectoryRecord, msg: &[u8; 16], q: &Queued) -> Outcome {
        let client = &self.inner.client;
        let temp = |e: String| Outcome::Temporary(e);
        let Ok(ack_secret) = crate::crypto::random_bytes::<32>() else {
            return temp("no randomness".into());
        };
        // A recipient in another ring is reached through a gateway, which carries notices
        // only (issue #16): the message must fit inline, since no object crosses.
        let crosses = client.crosses_rings(record);
        let body = if q.bytes.len() <= MAX_INLINE {
            Body::Inline(q.bytes.clone())
        } else if crosses {
            return Outcome::Permanent {
                status: "5.3.4".into(),
                diagnostic: format!(
                    "{} bytes is more than a gateway between rings carries ({MAX_INLINE} bytes)",
                    q.bytes.len()
                ),
            };
        } else {
            match self.put_parts(&q.bytes).await {
                Ok(parts) => Body::Objects(parts),
                Err(outcome) => return outcome,
            }
        };
        let notice = Notice {
            msg_id: *msg,
            sent: q.queued,
            sender: self.inner.config.address.clone(),
            recipient: record.address.clone(),
            ack_secret,
            body,
        };
        // The notice's envelope names us; what leaves is wrapped under our pseudonym for
        // this recipient (notice.rs), so the inbox holders do not learn who writes.
        let pseudonym = notice::pseudonym(&self.inner.keys, &record.keys.sign);
        let env = match Envelope::seal(&self.inner.keys, &record.keys.enc, &notice.encode())
            .and_then(|inner| notice::wrap(&pseudonym, &record.keys.enc, &inner))
        {
            Ok(e) => e,
            Err(e) => return temp(e.to_string()),
        };
        let key = protocol::inbox_key(&record.keys.sign);
        let ack_hash = crate::crypto::hash(&ack_secret);
        if crosses {
            let put = overlay::put_request(&pseudonym, key, ack_hash, env.clone());
            match client.carry(&record.address, put).await {
                Ok(true) => return Outcome::Done,
                Ok(false) => {} // no gateway announced: the recipient may be reachable here
                Err(e) => return temp(format!("no gateway carried the notice: {e}")),
            }
        }
        // The push and the inbox entry go out together: a recipient that stores the pushed
        // copy before the entry lands acknowledges it when it next collects (it stores a
        // message id once).
        let put = client.inbox_put(key, ack_hash, env.clone(), &pseudonym);
        let pushes = record
            .devices
            .iter()
            .filter_map(overlay::device_peer_id)
            .map(|peer| {
                let env = env.clone();
                async move {
                    let r = tokio::time::timeout(NOTIFY_TIMEOUT, client.notify(peer, env)).await;
                    if !matches!(r, Ok(Ok(()))) {
                        tracing::debug!(%peer, "device did not take the notification; it collects later");
                    }
                }
            });
        let (put, _) = futures::future::join(put, futures::future::join_all(pushes)).await;
        if let Err(e) = put {
            return temp(format!(
                "cannot leave the message in the recipient's inbox: {e}"
            ));
        }
        Outcome::Done
    }
}

/// Counts a delivery that is done in the metrics, by route, with its latency since queued.
fn counted(outcome: Outcome, route: &'static str, q: &Queued) -> Outcome {
    if let Outcome::Done = outcome {
        crate::metrics::get().delivered(route, q.queued);
    }
    outcome
}
