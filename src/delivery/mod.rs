//! Delivery: mail leaving this user for others, and mail from other overlay users arriving.
//!
//! Outbound ([`queue`]): a submitted message is written, with one row per recipient and one
//! for its copy into Sent, into the persistent outbound queue (store table `outbox`) in one
//! durable commit before the submitter hears 250. A worker task makes the Sent copy and takes
//! due recipient rows:
//! - an *overlay address* ([`ownership`]: pinned by the user, named in its domain's
//!   `_peerpost` TXT records, or certified by the ring authority) gets a delivery notice
//!   ([`notice`]) sealed to the keys of the record believed for it (HPKE) and signed by ours
//!   (crypto::envelope); bodies over 48 KiB go as a sealed object into the overlay. The
//!   envelope is left in the recipient's DHT inbox (on the peers closest to
//!   `inbox_key(address)`) and, at the same time, pushed as a notification to each of the
//!   recipient's devices (peer ids from the record's device keys). The notice is always left
//!   in the DHT inbox: a notification's answer only says the bytes arrived, not that the
//!   message was stored. Without a record it can believe it waits (never the smarthost);
//! - every other address goes to the smarthost ([`smarthost`]), whatever the DHT holds;
//! - failures are retried with exponential backoff; a permanent failure, or
//!   `give_up_after`, puts a DSN (RFC 3464, [`dsn`]) into the sender's INBOX.
//!
//! Inbound ([`receive`]): notifications, and the DHT inbox collected at start and every
//! `collect_every`, are opened, checked against the sender's directory record (the
//! envelope's signing key must be the one the sender's address publishes), put into INBOX
//! with an `Authentication-Results` header naming the verified sender and its ownership
//! level (and marking a `From:` that is not the sender), remembered (store
//! table `delivered`, so a message lands once however often it is offered), and
//! acknowledged (removed from the DHT inbox).
//!
//! Must not know: SMTP, the listeners, libp2p (it goes through `overlay::Client`).

pub mod dsn;
pub mod headers;
pub mod notice;
pub mod ownership;
mod queue;
mod receive;
pub mod smarthost;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use thiserror::Error;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::crypto::{DirectoryRecord, UserKeys};
use crate::mailbox::Mailbox;
use crate::overlay;
use crate::store::Store;

pub use smarthost::{Smarthost, TlsMode};

/// Most messages the outbound queue takes (recipient rows); submission is refused with 452
/// beyond it.
pub const MAX_QUEUED: u64 = 100_000;
/// Recipients being attempted at once. Each attempt opens up to four overlay streams (three
/// inbox puts and a push), at most one of a protocol to each peer, and a peer takes
/// `overlay::MAX_STREAMS` concurrent streams per protocol and connection before it drops new
/// ones: half of that leaves room for the other traffic (acks, collections). Over slow links
/// an attempt takes a round trip, so this also bounds the rate: 16 per round trip.
const MAX_ATTEMPTS_IN_FLIGHT: usize = overlay::MAX_STREAMS / 2;
/// Notifications and inbox entries being received at once.
const MAX_RECEIVING: usize = 32;
/// Parts of a long message being sealed and stored, or fetched and opened, at once (each up
/// to 4 MiB).
const PARTS_IN_FLIGHT: usize = 2;
/// An inbox entry to acknowledge: (entry id, ack secret).
type Ack = ([u8; 32], [u8; 32]);

/// Acknowledgements waiting to be sent, and sent at once.
const MAX_PENDING_ACKS: usize = 4096;
const MAX_ACKS_IN_FLIGHT: usize = 8;
/// How long a verified directory record is reused before it is looked up again, and how many
/// are kept.
const RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_CACHED_RECORDS: usize = 4096;

#[derive(Debug, Error)]
pub enum Error {
    #[error("the store failed: {0}")]
    Store(#[from] crate::store::Error),
    #[error("the mailbox failed: {0}")]
    Mailbox(#[from] crate::mailbox::Error),
    #[error("cannot seal: {0}")]
    Crypto(#[from] crate::crypto::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("the outbound queue is full ({0} recipients waiting)")]
    QueueFull(u64),
}

/// How delivery behaves (node.rs builds it from the config).
#[derive(Debug, Clone)]
pub struct Config {
    /// This user's address (the sender of what is submitted, the recipient of what arrives).
    pub address: String,
    /// The name in Received / Authentication-Results headers and DSNs.
    pub hostname: String,
    /// A message not delivered after this long bounces.
    pub give_up_after: Duration,
    /// First retry delay; it doubles up to `retry_max`.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// How often the DHT inbox is collected (besides at start and on notifications).
    pub collect_every: Duration,
    pub smarthost: Option<Smarthost>,
    /// Where `_peerpost` TXT answers come from (none: no domain vouches for anybody).
    pub vouches: Option<ownership::Vouches>,
    /// `[overlay] ring_authority`: a record it certified is an overlay address's.
    pub ring_authority: Option<[u8; 32]>,
    /// What happens to overlay mail whose `From:` is not its signing sender's address.
    pub from_mismatch: FromMismatch,
}

/// `[delivery] from_mismatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FromMismatch {
    /// Delivered with `peerpost=fail (from-mismatch ...)` in its `Authentication-Results`.
    #[default]
    Mark,
    /// Dropped (and acknowledged, so it is not offered again), with a log line.
    Refuse,
}

impl Config {
    pub fn new(address: &str, hostname: &str) -> Config {
        Config {
            address: address.to_lowercase(),
            hostname: hostname.to_string(),
            give_up_after: Duration::from_secs(5 * 24 * 3600),
            retry_first: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            collect_every: Duration::from_secs(60),
            smarthost: None,
            vouches: None,
            ring_authority: None,
            from_mismatch: FromMismatch::Mark,
        }
    }
}

/// Cloneable handle on delivery.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Delivery({})", self.inner.config.address)
    }
}

struct Inner {
    config: Config,
    keys: UserKeys,
    client: overlay::Client,
    store: Store,
    mailbox: Mailbox,
    /// Wakes the queue worker when something was queued.
    wake: Notify,
    /// Wakes the collector (a notification could not be handled on its own).
    collect: Notify,
    /// Inbox entries to acknowledge (entry id, ack secret), sent by a task of their own so
    /// that receiving does not wait on the holders. Full: the entry is acknowledged at a
    /// later collection instead.
    acks: mpsc::Sender<Ack>,
    acks_rx: Mutex<Option<mpsc::Receiver<Ack>>>,
    /// Recipient rows being attempted (by key).
    sending: Mutex<HashSet<Vec<u8>>>,
    /// Delivery ids being received (so a notification and a collected entry of one message
    /// do not both land).
    receiving: Mutex<HashSet<[u8; 32]>>,
    /// Recently looked-up directory records (verified and pinned by the overlay).
    records: Mutex<HashMap<String, (DirectoryRecord, Instant)>>,
    /// Recent `_peerpost` TXT answers by domain.
    vouch_cache: Mutex<HashMap<String, (Vec<String>, Instant)>>,
    /// Arriving messages of several overlay objects being put together (each up to 64 MiB).
    assembling: tokio::sync::Semaphore,
}

impl Delivery {
    pub fn new(
        config: Config,
        keys: UserKeys,
        client: overlay::Client,
        store: Store,
        mailbox: Mailbox,
    ) -> Delivery {
        let (acks, acks_rx) = mpsc::channel(MAX_PENDING_ACKS);
        Delivery {
            inner: Arc::new(Inner {
                config,
                keys,
                client,
                store,
                mailbox,
                wake: Notify::new(),
                collect: Notify::new(),
                acks,
                acks_rx: Mutex::new(Some(acks_rx)),
                sending: Mutex::new(HashSet::new()),
                receiving: Mutex::new(HashSet::new()),
                records: Mutex::new(HashMap::new()),
                vouch_cache: Mutex::new(HashMap::new()),
                assembling: tokio::sync::Semaphore::new(2),
            }),
        }
    }

    pub fn address(&self) -> &str {
        &self.inner.config.address
    }

    /// Starts the queue worker, the inbox collector and the notification handler (which reads
    /// the overlay's notification payloads from `notifications`).
    pub fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        cancel: CancellationToken,
        notifications: mpsc::Receiver<Vec<u8>>,
    ) {
        tasks.spawn(self.clone().run_queue(cancel.clone()).in_current_span());
        tasks.spawn(self.clone().run_collector(cancel.clone()).in_current_span());
        tasks.spawn(
            self.clone()
                .run_notifications(notifications, cancel.clone())
                .in_current_span(),
        );
        if let Some(rx) = lock(&self.inner.acks_rx).take() {
            tasks.spawn(self.clone().run_acks(rx, cancel).in_current_span());
        }
    }

    /// The directory record of `address`: from the cache when it was looked up in the last
    /// [`RECORD_TTL`] (and has one of the `vouched` keys, if given), else from the overlay
    /// (`fresh` forces the lookup), believing only `vouched` keys when given.
    async fn record(
        &self,
        address: &str,
        fresh: bool,
        vouched: Option<(&[crate::crypto::record::Fingerprint], &str)>,
    ) -> Result<DirectoryRecord, overlay::LookupError> {
        if !fresh
            && let Some((r, at)) = lock(&self.inner.records).get(address)
            && at.elapsed() < RECORD_TTL
            && vouched.is_none_or(|(fps, _)| {
                fps.contains(&crate::crypto::record::fingerprint_of(&r.keys))
            })
        {
            return Ok(r.clone());
        }
        let found = self.inner.client.lookup_accepting(address, vouched).await?;
        let mut cache = lock(&self.inner.records);
        if cache.len() >= MAX_CACHED_RECORDS {
            cache.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
            if cache.len() >= MAX_CACHED_RECORDS {
                cache.clear();
            }
        }
        cache.insert(address.to_string(), (found.record.clone(), Instant::now()));
        Ok(found.record)
    }

    /// Recipient rows still in the outbound queue.
    pub async fn queued(&self) -> Result<u64, Error> {
        Ok(self
            .inner
            .store
            .outbox_scan(vec![1], MAX_QUEUED as usize)
            .await?
            .len() as u64)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
