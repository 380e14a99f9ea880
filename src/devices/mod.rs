//! Several devices per user (issue #15; docs/design.md, "Devices"): the user-signed device
//! list, kept in the store, and the live replication of the mailbox log between the user's
//! devices over `/peerpost/replica/1` (overlay/replica.rs).
//!
//! * The list names every device key of the user, live or removed/revoked; the directory
//!   record names the live ones (node.rs publishes it), so delivery pushes to all of them.
//! * A device joins with the recovery phrase (`key import --phrase`): the phrase *is* the user
//!   key, which signs the list, so the new device adds itself when it first runs (and learns
//!   the others from the directory record and from their answers). No approval from another
//!   device is asked for: whoever holds the phrase could sign that approval too.
//! * Replication: each exchange carries the sender's signed list, its version vector (device
//!   → highest log sequence number applied) and the entries (with their bodies) the other
//!   lacks by what it last said; the answer carries the same back. A commit pushes at once;
//!   every connection to a device and a periodic tick run the same exchange (anti-entropy),
//!   so a device back from days offline converges. Merges go through the engine like any
//!   change, so IMAP IDLE and the mount see them.
//! * Only a live device of the same user is answered: the peer id must be one of the live
//!   keys of the list (ours joined with the one the request carries, which only the user key
//!   can sign). Entries of removed and revoked devices above the sequence number recorded at
//!   removal are refused by the engine.
//! * Bodies too large for a frame's body budget follow in chunks (bodies.rs): the merge
//!   names them *pending*, and after every exchange with a device the pending ones are asked
//!   of it, verified against the id the signed entry names, and only then stored.

pub mod bodies;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::crypto::device_list::{DeviceList, DeviceState};
use crate::crypto::{ObjectId, SealedObject, UserKeys, UserPublicKeys};
use crate::mailbox::{self, DeviceId, Mailbox};
use crate::overlay::{self, PeerId, ReplicaReply};
use crate::store::{self, Store, Table};
use wire::Frame;

/// Key of the signed device list in the store's `sync` table (whose other keys start with a
/// 32-byte directory hash, never with this).
pub const LIST_KEY: &[u8] = crate::crypto::device_list::STORE_KEY;
/// Log entry bytes one exchange carries at most (at least one entry when there is any).
pub const ENTRY_BUDGET: usize = 1 << 20;
/// Body bytes one exchange carries at most: a body that does not fit is fetched in chunks
/// afterwards (bodies.rs).
pub const OBJECT_BUDGET: usize = overlay::replica::MAX_REPLICA_FRAME - ENTRY_BUDGET - 64 * 1024;
/// Exchanges in one sync with one device before it waits for the next trigger.
const MAX_ROUNDS: usize = 256;
/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one chunk of a body fetch may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Mailbox(#[from] mailbox::Error),
    #[error("device list: {0}")]
    Crypto(#[from] crate::crypto::Error),
    #[error("{0}")]
    Refused(&'static str),
    #[error("replica frame: {0}")]
    Frame(#[from] crate::wire::DecodeError),
    #[error("device unreachable: {0}")]
    Request(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn now_secs() -> u64 {
    overlay::now_secs()
}

/// The short id the mailbox log uses for a device key.
pub fn log_id(device: &[u8; 32]) -> DeviceId {
    mailbox::device_id(device)
}

/// Reads the device list from the store (`None`: this device never ran with one).
pub async fn load(store: &Store, public: &UserPublicKeys) -> Result<Option<DeviceList>> {
    let bytes = store
        .read(|rx| -> store::Result<_> { rx.get(Table::Sync, LIST_KEY) })
        .await?;
    match bytes {
        Some(b) => Ok(Some(DeviceList::open(&b, public)?)),
        None => Ok(None),
    }
}

/// Signs and stores the device list, merged with what is stored (another process — the
/// `device` command beside `run` — may have changed it). Returns the stored list.
pub async fn save(store: &Store, keys: &UserKeys, list: &DeviceList) -> Result<DeviceList> {
    let merged = match load(store, keys.public()).await? {
        Some(old) => old.merge(list),
        None => list.clone(),
    };
    let bytes = merged.sign(keys)?;
    store
        .transact(move |tx| -> store::Result<()> { tx.put(Table::Sync, LIST_KEY, &bytes) })
        .await?;
    Ok(merged)
}

/// The highest log sequence number of a device in this store (what a removal keeps).
pub async fn last_seq(store: &Store, device: DeviceId) -> Result<u64> {
    let row = store
        .read(move |rx| -> store::Result<_> {
            rx.last_with_prefix(Table::Log, &device.to_be_bytes())
        })
        .await?;
    Ok(row
        .filter(|(k, _)| k.len() == 16)
        .map(|(k, _)| u64::from_be_bytes(k[8..16].try_into().unwrap_or([0; 8])))
        .unwrap_or(0))
}

/// The refusals the engine applies for a list: device → last accepted sequence number.
pub fn refusals(list: &DeviceList) -> HashMap<DeviceId, u64> {
    list.devices
        .iter()
        .filter(|(_, e)| e.state != DeviceState::Live)
        .map(|(k, e)| (log_id(k), e.upto))
        .collect()
}

struct Inner {
    mailbox: Mailbox,
    client: overlay::Client,
    store: Store,
    keys: Arc<UserKeys>,
    address: String,
    me: [u8; 32],
    list: Mutex<DeviceList>,
    /// What each device said it has, at its last exchange.
    peer_vv: Mutex<HashMap<PeerId, BTreeMap<DeviceId, u64>>>,
    /// One sync at a time per device.
    syncing: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    /// The live device keys changed: the directory record is republished.
    live_tx: tokio::sync::watch::Sender<Vec<[u8; 32]>>,
    sync_every: Duration,
    /// Sealed bodies longer than this are not fetched (the node's message size limit).
    max_body: u64,
    /// Bodies merged entries add that this store lacks: object id → sealed length.
    pending: Mutex<HashMap<ObjectId, u64>>,
    /// One body fetch at a time (it holds up to `max_body` in memory).
    fetching: tokio::sync::Mutex<()>,
    /// The body last served in chunks (a fetch asks for the same one again and again).
    served: Mutex<Option<Arc<SealedObject>>>,
}

/// The devices of this user, and the replication between them. Cheap to clone.
#[derive(Clone)]
pub struct Devices {
    inner: Arc<Inner>,
}

impl Devices {
    /// Loads (or starts) the device list, adds this device when it is new, and tells the
    /// engine which devices' entries to refuse. A device the list names as removed or
    /// revoked stays out: it is told so and replicates nothing. Bodies over
    /// `max_message_size` (plaintext bytes) are not fetched from the other devices.
    pub async fn open(
        mailbox: Mailbox,
        client: overlay::Client,
        keys: Arc<UserKeys>,
        address: String,
        me: [u8; 32],
        sync_every: Duration,
        max_message_size: u64,
    ) -> Result<Devices> {
        let store = mailbox.store().clone();
        let mut list = load(&store, keys.public()).await?.unwrap_or_default();
        if !list.devices.contains_key(&me) {
            list.add(me, now_secs()).map_err(Error::Refused)?;
            list = save(&store, &keys, &list).await?;
            tracing::info!(
                target: "peerpost::_events::devices",
                device = %crate::crypto::hex(&me[..8]),
                "this device joined the user's device list"
            );
        }
        if !list.is_live(&me) {
            tracing::error!(
                target: "peerpost::_events::devices",
                "this device was removed or revoked from the user's device list: it no longer replicates"
            );
        }
        mailbox.set_refused(refusals(&list));
        let (live_tx, _) = tokio::sync::watch::channel(list.live());
        Ok(Devices {
            inner: Arc::new(Inner {
                mailbox,
                client,
                store,
                keys,
                address,
                me,
                list: Mutex::new(list),
                peer_vv: Mutex::new(HashMap::new()),
                syncing: Mutex::new(HashMap::new()),
                live_tx,
                sync_every,
                max_body: mailbox::sealed_len(max_message_size)
                    .min(crate::crypto::content::MAX_SEALED as u64),
                pending: Mutex::new(HashMap::new()),
                fetching: tokio::sync::Mutex::new(()),
                served: Mutex::new(None),
            }),
        })
    }

    pub fn list(&self) -> DeviceList {
        lock(&self.inner.list).clone()
    }

    /// The live device keys (what the directory record names); changes when the list does.
    pub fn live(&self) -> tokio::sync::watch::Receiver<Vec<[u8; 32]>> {
        self.inner.live_tx.subscribe()
    }

    fn is_me_live(&self) -> bool {
        lock(&self.inner.list).is_live(&self.inner.me)
    }

    /// The other live devices, as overlay peers.
    fn peers(&self) -> Vec<PeerId> {
        let me = self.inner.me;
        lock(&self.inner.list)
            .live()
            .iter()
            .filter(|k| **k != me)
            .filter_map(overlay::device_peer_id)
            .collect()
    }

    /// Joins `other` into the list; stores it, tells the engine and the publisher when it
    /// changed anything.
    async fn learn(&self, other: &DeviceList) -> Result<()> {
        let merged = {
            let cur = lock(&self.inner.list);
            let m = cur.merge(other);
            if m.devices == cur.devices {
                return Ok(());
            }
            m
        };
        let stored = save(&self.inner.store, &self.inner.keys, &merged).await?;
        self.inner.mailbox.set_refused(refusals(&stored));
        let live = stored.live();
        *lock(&self.inner.list) = stored;
        tracing::info!(
            target: "peerpost::_events::devices",
            live = live.len(),
            "the device list changed"
        );
        self.inner.live_tx.send_replace(live);
        Ok(())
    }

    /// Re-reads the stored list (the `device` command may have changed it).
    async fn reload(&self) -> Result<()> {
        if let Some(stored) = load(&self.inner.store, self.inner.keys.public()).await? {
            self.learn(&stored).await?;
        }
        Ok(())
    }

    /// Learns devices from this user's directory record (another device published it).
    async fn learn_from_record(&self) {
        let Ok(found) = self.inner.client.lookup(&self.inner.address).await else {
            return;
        };
        if found.record.keys.sign != self.inner.keys.public().sign {
            return;
        }
        let mut from_record = DeviceList::default();
        for d in &found.record.devices {
            let _ = from_record.add(*d, now_secs());
        }
        if let Err(e) = self.learn(&from_record).await {
            tracing::debug!("cannot learn devices from the record: {e}");
        }
    }

    fn frame(&self, entries: Vec<Vec<u8>>, objects: Vec<Vec<u8>>, more: bool) -> Result<Vec<u8>> {
        let list = lock(&self.inner.list).sign(&self.inner.keys)?;
        Ok(Frame {
            list,
            vv: self.inner.mailbox.version_vector(),
            entries,
            objects,
            more,
        }
        .encode())
    }

    /// Answers a replica request, or refuses it (`None`: the stream closes unanswered).
    pub async fn answer(&self, from: PeerId, payload: &[u8]) -> Option<Vec<u8>> {
        match self.serve(from, payload).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::info!(
                    target: "peerpost::_events::devices",
                    %from,
                    "replica request refused: {e}"
                );
                None
            }
        }
    }

    /// Whether `peer` is another live device by this device's list.
    fn is_live_peer(&self, peer: PeerId) -> bool {
        let me = self.inner.me;
        lock(&self.inner.list)
            .live()
            .iter()
            .any(|k| *k != me && overlay::device_peer_id(k) == Some(peer))
    }

    async fn serve(&self, from: PeerId, payload: &[u8]) -> Result<Vec<u8>> {
        if !self.is_me_live() {
            return Err(Error::Refused("this device is no longer live"));
        }
        if wire::kind_of(payload) == Some(wire::KIND_BODY_REQUEST) {
            return self.serve_body(from, payload).await;
        }
        let f = Frame::decode(payload)?;
        let theirs = DeviceList::open(&f.list, self.inner.keys.public())?;
        let joined = lock(&self.inner.list).merge(&theirs);
        let live_peer = joined
            .live()
            .iter()
            .any(|k| *k != self.inner.me && overlay::device_peer_id(k) == Some(from));
        if !live_peer {
            let removed = joined
                .devices
                .keys()
                .any(|k| overlay::device_peer_id(k) == Some(from));
            if removed {
                // A removed or revoked device is told so (the list alone, signed by the user
                // key it holds anyway), so it stops replicating and backing up; nothing of
                // its request is merged.
                tracing::info!(
                    target: "peerpost::_events::devices",
                    %from,
                    "replica request refused: the device was removed or revoked (told so)"
                );
                let list = joined.sign(&self.inner.keys)?;
                return Ok(Frame {
                    list,
                    ..Frame::default()
                }
                .encode());
            }
            return Err(Error::Refused("the peer is not a live device of this user"));
        }
        self.learn(&theirs).await?;
        let merged = self
            .inner
            .mailbox
            .merge_remote(f.entries, f.objects)
            .await?;
        if merged.refused > 0 {
            tracing::warn!(
                target: "peerpost::_events::devices",
                %from,
                refused = merged.refused,
                "refused log entries of removed or revoked devices"
            );
        }
        self.note_missing(from, merged.missing);
        let (entries, more) = self
            .inner
            .mailbox
            .entries_after(&f.vv, ENTRY_BUDGET)
            .await?;
        let objects = self
            .inner
            .mailbox
            .objects_of(&entries, OBJECT_BUDGET)
            .await?;
        // What the requester will have once it merged the answer (its next request says
        // what it really has).
        let mut vv = f.vv;
        for e in &entries {
            if let Some((d, s)) = mailbox::log::LogEntry::peek(e) {
                let top = vv.entry(d).or_insert(0);
                *top = (*top).max(s);
            }
        }
        lock(&self.inner.peer_vv).insert(from, vv);
        self.frame(entries, objects, more)
    }

    /// Answers one chunk of a body to a live device of this user (by this device's list:
    /// a body request carries none, and comes after a sync exchange that taught it).
    async fn serve_body(&self, from: PeerId, payload: &[u8]) -> Result<Vec<u8>> {
        if !self.is_live_peer(from) {
            return Err(Error::Refused("the peer is not a live device of this user"));
        }
        let req = wire::BodyRequest::decode(payload)?;
        let cached = lock(&self.inner.served)
            .as_ref()
            .filter(|o| o.id() == req.object)
            .cloned();
        let held = match cached {
            Some(o) => Some(o),
            None => {
                let o = self
                    .inner
                    .mailbox
                    .sealed_body(req.object)
                    .await?
                    .map(Arc::new);
                if let Some(o) = &o {
                    *lock(&self.inner.served) = Some(Arc::clone(o));
                }
                o
            }
        };
        let answer = bodies::answer(&req, held.as_ref());
        if held.is_some_and(|o| req.offset + u64::from(req.len) >= o.as_bytes().len() as u64) {
            // The last chunk: the fetch is done, the memory goes.
            *lock(&self.inner.served) = None;
        }
        answer
    }

    /// Remembers bodies a merge lacked, and fetches them from `peer` (which sent the entries
    /// and likely holds them).
    fn note_missing(&self, peer: PeerId, missing: Vec<(ObjectId, u64)>) {
        if missing.is_empty() {
            return;
        }
        {
            let mut p = lock(&self.inner.pending);
            for (id, len) in missing {
                if p.len() >= bodies::MAX_PENDING {
                    break;
                }
                p.insert(id, len);
            }
        }
        let this = self.clone();
        tokio::spawn(async move { this.fetch_pending(peer).await }.in_current_span());
    }

    /// Fetches the pending bodies from `peer`, one at a time; what fails stays pending for the
    /// next exchange (with this device or another). Returns the bodies stored.
    pub async fn fetch_pending(&self, peer: PeerId) -> usize {
        // A fetch already running takes the new ones too (it re-reads the set).
        let Ok(_one) = self.inner.fetching.try_lock() else {
            return 0;
        };
        let mut stored = 0;
        let mut tried = std::collections::HashSet::new();
        loop {
            let next = lock(&self.inner.pending)
                .iter()
                .find(|(id, _)| !tried.contains(*id))
                .map(|(id, len)| (*id, *len));
            let Some((id, len)) = next else { break };
            tried.insert(id);
            match self.fetch_body(peer, id, len).await {
                Ok(()) => {
                    lock(&self.inner.pending).remove(&id);
                    stored += 1;
                    tracing::info!(
                        target: "peerpost::_events::devices",
                        %peer,
                        object = %id.to_hex(),
                        bytes = len,
                        "fetched a body from a device"
                    );
                }
                Err(Error::Request(e)) => {
                    tracing::debug!(%peer, "body fetch: the device is unreachable: {e}");
                    break;
                }
                Err(e) => tracing::info!(
                    target: "peerpost::_events::devices",
                    %peer,
                    object = %id.to_hex(),
                    "body fetch failed (it stays pending): {e}"
                ),
            }
        }
        stored
    }

    async fn fetch_body(&self, peer: PeerId, id: ObjectId, len: u64) -> Result<()> {
        if self.inner.mailbox.sealed_body(id).await?.is_some() {
            return Ok(()); // it came in the meantime (a later frame, a restore)
        }
        let client = &self.inner.client;
        let body = bodies::fetch(id, len, self.inner.max_body, |req| async move {
            tokio::time::timeout(CHUNK_TIMEOUT, client.replica_request(peer, req))
                .await
                .map_err(|_| Error::Request("timed out".into()))?
                .map_err(|e| Error::Request(e.to_string()))
        })
        .await?;
        self.inner.mailbox.store_body(body).await?;
        Ok(())
    }

    /// Exchanges with one device until neither has anything the other lacks. A push
    /// (`force` false) sends nothing to a device that, by what it said last, lacks nothing.
    pub async fn sync_with(&self, peer: PeerId, force: bool) -> Result<usize> {
        let gate = Arc::clone(lock(&self.inner.syncing).entry(peer).or_default());
        let _one = gate.lock().await;
        let mut applied = 0;
        for round in 0..MAX_ROUNDS {
            if !self.is_me_live() {
                return Err(Error::Refused("this device is no longer live"));
            }
            let known = lock(&self.inner.peer_vv).get(&peer).cloned();
            let (entries, more) = match &known {
                Some(vv) => self.inner.mailbox.entries_after(vv, ENTRY_BUDGET).await?,
                None => (Vec::new(), false),
            };
            if round == 0 && !force && known.is_some() && entries.is_empty() {
                return Ok(0);
            }
            if round == 0 && force && !lock(&self.inner.pending).is_empty() {
                // Retry what earlier fetches left (this device may hold it).
                let this = self.clone();
                tokio::spawn(async move { this.fetch_pending(peer).await }.in_current_span());
            }
            let objects = self
                .inner
                .mailbox
                .objects_of(&entries, OBJECT_BUDGET)
                .await?;
            let req = self.frame(entries, objects, more)?;
            let sent = req.len();
            let answer = tokio::time::timeout(
                EXCHANGE_TIMEOUT,
                self.inner.client.replica_request(peer, req),
            )
            .await
            .map_err(|_| Error::Request("timed out".into()))?
            .map_err(|e| Error::Request(e.to_string()))?;
            tracing::debug!(%peer, sent, received = answer.len(), "replica exchange");
            let f = Frame::decode(&answer)?;
            let theirs = DeviceList::open(&f.list, self.inner.keys.public())?;
            if overlay::device_peer_id(&self.inner.me) == Some(peer) {
                return Err(Error::Refused("that is this device"));
            }
            self.learn(&theirs).await?;
            if !self.is_me_live() {
                tracing::error!(
                    target: "peerpost::_events::devices",
                    "this device was removed or revoked from the user's device list: it no longer replicates"
                );
                return Err(Error::Refused("this device is no longer live"));
            }
            let got = f.entries.len();
            let merged = self
                .inner
                .mailbox
                .merge_remote(f.entries, f.objects)
                .await?;
            applied += merged.applied;
            self.note_missing(peer, merged.missing);
            let lacking = {
                let mine = self.inner.mailbox.version_vector();
                mine.iter()
                    .any(|(d, s)| f.vv.get(d).copied().unwrap_or(0) < *s)
            };
            // Nothing moved (they refused what we sent): wait for the next trigger.
            let stuck = got == 0 && known.as_ref() == Some(&f.vv);
            lock(&self.inner.peer_vv).insert(peer, f.vv);
            // Done when they sent all they had and lack nothing of ours (the first round
            // with an unknown vector sends nothing and always goes on when they lack some).
            if !f.more && (!lacking || stuck) {
                break;
            }
        }
        Ok(applied)
    }

    fn sync_all(&self, force: bool) {
        for peer in self.peers() {
            let this = self.clone();
            tokio::spawn(
                async move {
                    match this.sync_with(peer, force).await {
                        Ok(n) if n > 0 => {
                            tracing::debug!(%peer, applied = n, "synced with a device")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(%peer, "sync with a device failed: {e}"),
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Pushes every change at once, syncs with a device when a connection to it opens and
    /// every `sync_every`, and answers the other devices' requests.
    pub async fn run(
        self,
        mut requests: mpsc::Receiver<(PeerId, Vec<u8>, ReplicaReply)>,
        mut connected: mpsc::Receiver<PeerId>,
        cancel: CancellationToken,
    ) {
        let mut log = self.inner.mailbox.subscribe_log();
        let mut tick = tokio::time::interval(self.inner.sync_every);
        // The directory record is read every 5 s while this device knows no other, then
        // every minute.
        let mut record_tick = tokio::time::interval(Duration::from_secs(5));
        let mut record_skip = 0u32;
        let mut live = self.live();
        // Bodies a previous run merged without fetching: pending again (asked of the next
        // device this one exchanges with).
        let this = self.clone();
        tokio::spawn(
            async move {
                match this.inner.mailbox.missing_bodies(bodies::MAX_PENDING).await {
                    Ok(m) if !m.is_empty() => {
                        tracing::info!(bodies = m.len(), "bodies to fetch from the other devices");
                        lock(&this.inner.pending).extend(m);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cannot list missing bodies: {e}"),
                }
            }
            .in_current_span(),
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = log.changed() => {
                    if changed.is_err() { break; }
                    self.sync_all(false);
                }
                Some((from, payload, reply)) = requests.recv() => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Some(answer) = this.answer(from, &payload).await {
                            reply.send(answer);
                        }
                    }.in_current_span());
                }
                Some(peer) = connected.recv() => {
                    if self.peers().contains(&peer) {
                        let this = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.sync_with(peer, true).await {
                                tracing::debug!(%peer, "sync on connect failed: {e}");
                            }
                        }.in_current_span());
                    }
                }
                changed = live.changed() => {
                    if changed.is_err() { break; }
                    self.sync_all(true);
                }
                _ = tick.tick() => {
                    if let Err(e) = self.reload().await {
                        tracing::warn!("cannot read the device list: {e}");
                    }
                    self.sync_all(true);
                }
                _ = record_tick.tick() => {
                    let alone = lock(&self.inner.list).live().len() <= 1;
                    record_skip = if alone { 0 } else { record_skip + 1 };
                    if !record_skip.is_multiple_of(12) {
                        continue;
                    }
                    let this = self.clone();
                    tokio::spawn(async move { this.learn_from_record().await }.in_current_span());
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DeviceKey;
    use crate::mailbox::{NewMessage, sealed_len};

    struct Side {
        _dir: tempfile::TempDir,
        mb: Mailbox,
        key: [u8; 32],
    }

    async fn side(user: u8, dev: u8) -> Side {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = DeviceKey::from_seed([dev; 32]).public();
        let mb = Mailbox::open(store, UserKeys::from_seed([user; 32]), key)
            .await
            .unwrap();
        Side { _dir: dir, mb, key }
    }

    /// Device A's `Devices` on an overlay of its own (memory transport, no peers: only
    /// `answer` is exercised, with the peer id the overlay would report).
    async fn devices_of(a: &Side, cancel: &CancellationToken) -> Devices {
        let oc = overlay::Config::new([a.key[0] | 1; 32], overlay::TransportKind::Memory);
        let (client, _events, _task) =
            overlay::spawn(oc, a.mb.store().clone(), cancel.clone()).unwrap();
        Devices::open(
            a.mb.clone(),
            client,
            Arc::new(UserKeys::from_seed([7; 32])),
            "alice@test".into(),
            a.key,
            Duration::from_secs(3600),
            50 << 20,
        )
        .await
        .unwrap()
    }

    async fn request(from: &Side, signer: &UserKeys, live: &[[u8; 32]]) -> Vec<u8> {
        let mut list = DeviceList::default();
        for k in live {
            list.add(*k, 1).unwrap();
        }
        let (entries, more) = from
            .mb
            .entries_after(&BTreeMap::new(), ENTRY_BUDGET)
            .await
            .unwrap();
        let objects = from.mb.objects_of(&entries, OBJECT_BUDGET).await.unwrap();
        Frame {
            list: list.sign(signer).unwrap(),
            vv: from.mb.version_vector(),
            entries,
            objects,
            more,
        }
        .encode()
    }

    fn msg() -> NewMessage {
        NewMessage {
            bytes: b"Subject: from b\r\n\r\nhi\r\n".to_vec(),
            internal_date: 1_700_000_000,
            flags: Default::default(),
            recent: true,
            maildir_name: None,
        }
    }

    #[tokio::test]
    async fn only_live_devices_of_the_same_user_are_answered() {
        let cancel = CancellationToken::new();
        let (a, b) = (side(7, 1).await, side(7, 2).await);
        b.mb.append("INBOX", msg()).await.unwrap();
        let devices = devices_of(&a, &cancel).await;
        let alice = UserKeys::from_seed([7; 32]);
        let b_peer = overlay::device_peer_id(&b.key).unwrap();

        // Another user's key signed the list: refused.
        let mallory = UserKeys::from_seed([8; 32]);
        let forged = request(&b, &mallory, &[a.key, b.key]).await;
        assert!(devices.answer(b_peer, &forged).await.is_none());
        // Alice's list, but the peer is not one of its devices: refused.
        let stranger = overlay::device_peer_id(&DeviceKey::from_seed([3; 32]).public()).unwrap();
        let req = request(&b, &alice, &[a.key, b.key]).await;
        assert!(devices.answer(stranger, &req).await.is_none());
        assert_eq!(a.mb.messages("INBOX").unwrap().len(), 0, "nothing merged");
        // Hostile bytes: refused, no panic.
        assert!(devices.answer(b_peer, &[1, 2, 3]).await.is_none());

        // Device B, named live by a list alice's key signed: answered and merged, and A's
        // list now names B.
        let answer = devices.answer(b_peer, &req).await.expect("answered");
        let f = Frame::decode(&answer).unwrap();
        assert!(
            DeviceList::open(&f.list, alice.public())
                .unwrap()
                .is_live(&b.key)
        );
        assert_eq!(
            a.mb.messages("INBOX").unwrap().len(),
            1,
            "B's message merged"
        );
        assert!(devices.list().is_live(&b.key));

        // B revoked (by a list that says so): refused from then on, and its later entries
        // are refused by the engine too.
        let mut revoked = devices.list();
        let upto = a.mb.version_vector()[&b.mb.device()];
        revoked
            .remove(b.key, DeviceState::Revoked, upto, 2)
            .unwrap();
        devices.learn(&revoked).await.unwrap();
        b.mb.append("INBOX", msg()).await.unwrap();
        let req = request(&b, &alice, &[a.key, b.key]).await;
        let told = devices
            .answer(b_peer, &req)
            .await
            .expect("told it was removed");
        let told = Frame::decode(&told).unwrap();
        assert!(told.entries.is_empty() && told.objects.is_empty() && told.vv.is_empty());
        let told = DeviceList::open(&told.list, alice.public()).unwrap();
        assert_eq!(told.devices[&b.key].state, DeviceState::Revoked);
        assert_eq!(a.mb.messages("INBOX").unwrap().len(), 1, "nothing merged");
        let (entries, _) =
            b.mb.entries_after(&BTreeMap::new(), ENTRY_BUDGET)
                .await
                .unwrap();
        let merged = a.mb.merge_remote(entries, Vec::new()).await.unwrap();
        assert_eq!(merged.refused, 1);
        assert_eq!(a.mb.messages("INBOX").unwrap().len(), 1);
        assert!(
            !devices.list().live().contains(&b.key),
            "the record no longer names it"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_body_over_the_frame_budget_is_fetched_in_chunks_from_a_live_device() {
        let cancel = CancellationToken::new();
        let (a, b) = (side(7, 1).await, side(7, 2).await);
        let alice = UserKeys::from_seed([7; 32]);
        // 5 MiB: over the body budget of a frame, so the entry travels alone.
        let big: Vec<u8> = b"Subject: big\r\n\r\n"
            .iter()
            .copied()
            .chain((0..5 << 20).map(|i: u32| b'a' + (i % 26) as u8))
            .collect();
        let mut m = msg();
        m.bytes = big.clone();
        b.mb.append("INBOX", m).await.unwrap();
        let holder = devices_of(&b, &cancel).await;
        let a_peer = overlay::device_peer_id(&a.key).unwrap();
        // A's first exchange teaches B that A is a live device.
        let hello = request(&a, &alice, &[a.key, b.key]).await;
        let answer = holder.answer(a_peer, &hello).await.expect("answered");
        let f = Frame::decode(&answer).unwrap();

        assert!(f.objects.is_empty(), "the body does not fit the frame");
        let merged = a.mb.merge_remote(f.entries, f.objects).await.unwrap();
        let info = a.mb.messages("INBOX").unwrap().pop().unwrap();
        assert_eq!(
            merged.missing,
            vec![(info.object, sealed_len(big.len() as u64))]
        );
        assert!(a.mb.read(info.entry).await.is_err(), "no body yet");

        let (id, len) = merged.missing[0];
        let ask = |from: PeerId| {
            let holder = holder.clone();
            move |req: Vec<u8>| {
                let holder = holder.clone();
                async move {
                    holder
                        .answer(from, &req)
                        .await
                        .ok_or(Error::Request("closed unanswered".into()))
                }
            }
        };
        // A peer that is no device of alice's is not answered.
        let stranger = overlay::device_peer_id(&DeviceKey::from_seed([3; 32]).public()).unwrap();
        assert!(
            bodies::fetch(id, len, u64::MAX, ask(stranger))
                .await
                .is_err()
        );
        // A is: six chunks, verified, stored; the message reads whole.
        let chunks = std::sync::atomic::AtomicUsize::new(0);
        let inner = ask(a_peer);
        let body = bodies::fetch(id, len, u64::MAX, |req| {
            chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            inner(req)
        })
        .await
        .unwrap();
        assert_eq!(chunks.into_inner(), 6);
        a.mb.store_body(body).await.unwrap();
        assert_eq!(*a.mb.read(info.entry).await.unwrap(), big);
        assert!(a.mb.missing_bodies(10).await.unwrap().is_empty());
        cancel.cancel();
    }
}
