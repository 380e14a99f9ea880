//! The one task that owns the swarm: `select!` over swarm events, client commands, finished
//! store operations and the shutdown token.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::StreamExt;
use libp2p::kad::{self, QueryId, QueryResult, Quorum, RecordKey};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, autonat, dcutr, identify, mdns, relay};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::protocol::{Refusal, Request, Response};
use super::{
    Command, Config, Event, RecordsFound, RequestError, Status, backup_root, directory, diversity,
    nat, now_secs,
};
use crate::crypto::DirectoryRecord;
use crate::store::{HeldPut, Store};

/// Inbound blob requests being served (store reads/writes) across all peers: with frames of
/// ≤ 4 MiB, at most 128 MiB of queued blobs.
const MAX_INBOUND_TASKS: usize = 32;
/// Enough valid remote copies of a record to stop a lookup early.
const LOOKUP_ENOUGH: usize = 3;
/// Offences after which a peer is disconnected and ignored.
const BAN_SCORE: i32 = -3;
/// Peers whose score or ban this node remembers.
const MAX_TRACKED_PEERS: usize = 4096;
/// Records (directory records, backup roots) one peer may have put into this node's store.
const MAX_RECORDS_PER_PEER: usize = 256;
/// Listen addresses identify may report per peer that we feed into Kademlia.
const MAX_ADDRS_PER_PEER: usize = 8;

struct PendingLookup {
    reply: oneshot::Sender<RecordsFound>,
    key: [u8; 32],
    records: Vec<(DirectoryRecord, usize)>,
    remote: usize,
}

/// The owner's answer to an inbound replica request, to be sent on the swarm.
type ReplicaAnswer = (ResponseChannel<Vec<u8>>, Vec<u8>);

/// A finished inbound request, to be answered on the swarm.
struct Served {
    peer: PeerId,
    channel: ResponseChannel<Response>,
    response: Response,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    command_rx: mpsc::Receiver<Command>,
    event_tx: mpsc::Sender<Event>,
    store: Store,
    config: Config,
    lookups: HashMap<QueryId, PendingLookup>,
    closest: HashMap<QueryId, oneshot::Sender<Vec<PeerId>>>,
    publishes: HashMap<QueryId, oneshot::Sender<Result<(), String>>>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<super::Response, RequestError>>>,
    inflight: HashMap<PeerId, usize>,
    tasks: JoinSet<Served>,
    scores: HashMap<PeerId, i32>,
    banned: HashSet<PeerId>,
    /// Test hook: serve corrupted blobs (a hostile holder).
    corrupt_fetches: bool,
    // --- backup roots (durability, issue #6) ---
    root_lookups: HashMap<QueryId, PendingRootLookup>,
    /// Ring statistics held and collected (answered here, in memory).
    stats: std::sync::Arc<super::stats::Tally>,
    // --- devices (issue #15) ---
    replica_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, RequestError>>>,
    /// Inbound replica requests waiting for the owner's answer.
    replica_answers: JoinSet<Option<ReplicaAnswer>>,
    // --- NAT traversal (issue #19) ---
    nat: nat::NatState,
    /// Notices waiting for the recipient device's relayed-address record.
    addr_lookups: HashMap<QueryId, PendingNotify>,
}

/// A notice push to a device this node has no way to dial yet.
struct PendingNotify {
    peer: PeerId,
    request: Request,
    reply: oneshot::Sender<Result<super::Response, RequestError>>,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        command_rx: mpsc::Receiver<Command>,
        event_tx: mpsc::Sender<Event>,
        store: Store,
        config: Config,
        stats: std::sync::Arc<super::stats::Tally>,
    ) -> EventLoop {
        EventLoop {
            swarm,
            command_rx,
            event_tx,
            store,
            config,
            lookups: HashMap::new(),
            closest: HashMap::new(),
            publishes: HashMap::new(),
            requests: HashMap::new(),
            inflight: HashMap::new(),
            tasks: JoinSet::new(),
            scores: HashMap::new(),
            banned: HashSet::new(),
            corrupt_fetches: false,
            root_lookups: HashMap::new(),
            stats,
            replica_requests: HashMap::new(),
            replica_answers: JoinSet::new(),
            nat: nat::NatState::default(),
            addr_lookups: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.command_rx.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(served) = done {
                        self.finish_inbound(served);
                    }
                }
                Some(done) = self.replica_answers.join_next(), if !self.replica_answers.is_empty() => {
                    self.finish_replica(done.ok().flatten());
                }
            }
        }
        self.tasks.shutdown().await;
        self.replica_answers.shutdown().await;
        tracing::debug!("overlay event loop stopped");
    }

    fn emit(&self, event: Event) {
        if self.event_tx.try_send(event).is_err() {
            tracing::warn!("overlay event dropped: the owner is not keeping up");
        }
    }

    fn on_command(&mut self, command: Command) {
        let command = match self.on_nat_command(command) {
            Some(c) => c,
            None => return,
        };
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.swarm.dial(addr).map_err(|e| e.to_string()));
            }
            Command::Bootstrap { reply } => {
                let _ = reply.send(
                    behaviour
                        .kad
                        .bootstrap()
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                );
            }
            Command::Publish { record, reply } => {
                let key = super::protocol::directory_key(&record.address);
                let mut rec = kad::Record::new(RecordKey::new(&key), record.to_bytes());
                rec.expires = expires_instant(&record);
                match behaviour.kad.put_record(rec, Quorum::One) {
                    Ok(id) => {
                        self.publishes.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::GetRecords { key, reply } => {
                let id = behaviour.kad.get_record(RecordKey::new(&key));
                self.lookups.insert(
                    id,
                    PendingLookup {
                        reply,
                        key,
                        records: Vec::new(),
                        remote: 0,
                    },
                );
            }
            Command::ClosestPeers { key, reply } => {
                let id = behaviour.kad.get_closest_peers(key.to_vec());
                self.closest.insert(id, reply);
            }
            Command::PublishAddresses => {}
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = if matches!(request, Request::Notify { .. }) {
                    behaviour.notify.send_request(&peer, request)
                } else {
                    behaviour.blob.send_request(&peer, request)
                };
                self.requests.insert(id, reply);
            }
            Command::CorruptFetches(on) => self.corrupt_fetches = on,
            Command::Replica {
                peer,
                payload,
                reply,
            } => {
                let id = behaviour.replica.send_request(&peer, payload);
                self.replica_requests.insert(id, reply);
            }
            Command::PutBackupRoot { .. } | Command::GetBackupRoots { .. } => {
                self.on_backup_root_command(command)
            }
            Command::Penalize { peer, reason } => {
                // Peer ids cost nothing to make: the books on them are bounded too.
                if self.scores.len() >= MAX_TRACKED_PEERS && !self.scores.contains_key(&peer) {
                    let forget = self.scores.keys().next().copied();
                    if let Some(f) = forget {
                        self.scores.remove(&f);
                    }
                }
                if self.banned.len() >= MAX_TRACKED_PEERS {
                    let forget = self.banned.iter().next().copied();
                    if let Some(f) = forget {
                        self.banned.remove(&f);
                    }
                }
                let score = self.scores.entry(peer).or_insert(0);
                *score -= 1;
                tracing::warn!(%peer, score = *score, "peer penalized: {reason}");
                if *score <= BAN_SCORE && self.banned.insert(peer) {
                    tracing::warn!(%peer, "peer banned after repeated offences");
                    behaviour.kad.remove_peer(&peer);
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    fn status(&mut self) -> Status {
        use libp2p::kad::store::RecordStore;
        let routing_table = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        let records = self.swarm.behaviour_mut().kad.store_mut().records().count();
        Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            listen: self.swarm.listeners().map(|a| a.to_string()).collect(),
            connected: self
                .swarm
                .connected_peers()
                .map(|p| p.to_string())
                .collect(),
            routing_table,
            records,
            held_blobs: 0,
            held_bytes: 0,
            banned: self.banned.len(),
            ..self.reachability_status()
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        super::metrics::record(&event);
        self.on_nat_swarm_event(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } if self.banned.contains(&peer_id) => {
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let kad_proto = super::pnet::Protocols::of(&self.config).kad;
                if info.protocols.contains(&kad_proto) && !self.banned.contains(&peer_id) {
                    for addr in info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => self.on_autonat_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Blob(event)) => self.on_rr_event(event, false),
            SwarmEvent::Behaviour(BehaviourEvent::Notify(event)) => self.on_rr_event(event, true),
            SwarmEvent::Behaviour(BehaviourEvent::Replica(event)) => self.on_replica_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => self.emit(Event::Connected(peer_id)),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let peer = peer_id.map(|p| p.to_string()).unwrap_or_default();
                self.explain_connection_error(&format!("to peer {peer}"), &error.to_string());
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                self.explain_connection_error(
                    &format!("from {send_back_addr}"),
                    &error.to_string(),
                );
            }
            _ => {}
        }
    }

    /// Logs, in an administrator's words, a connection that failed in its handshake (a
    /// private ring's pre-shared key missing on one side: issue #16).
    fn explain_connection_error(&mut self, which: &str, error: &str) {
        match super::pnet::explain_failure(self.config.psk.as_ref(), error) {
            Some(why) if super::pnet::warn_now() => tracing::warn!("connection {which}: {why}"),
            Some(why) => tracing::debug!("connection {which}: {why}"),
            None => tracing::debug!("connection {which} failed: {error}"),
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                addresses,
                ..
            } => self.check_diversity(peer, addresses.iter().cloned().collect()),
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.on_inbound_record(source, record),
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
                ..
            } => match result {
                QueryResult::GetRecord(res) if self.addr_lookups.contains_key(&id) => {
                    self.on_addresses_found(id, res, step.last)
                }
                QueryResult::GetRecord(res) if self.root_lookups.contains_key(&id) => {
                    self.on_root_found(id, res, step.last)
                }
                QueryResult::GetRecord(res) => {
                    let requests = stats.num_requests();
                    let Some(pending) = self.lookups.get_mut(&id) else {
                        return;
                    };
                    let mut done = step.last;
                    match res {
                        Ok(kad::GetRecordOk::FoundRecord(peer_record)) => {
                            match directory::validate(
                                &peer_record.record.value,
                                &pending.key,
                                now_secs(),
                            ) {
                                Ok(rec) => {
                                    if peer_record.peer.is_some() {
                                        pending.remote += 1;
                                    }
                                    match pending.records.iter_mut().find(|(r, _)| *r == rec) {
                                        Some((_, n)) => *n += 1,
                                        None => pending.records.push((rec, 1)),
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(peer = ?peer_record.peer, "refused record: {e}");
                                    if let Some(p) = peer_record.peer
                                        && is_forgery(&e)
                                    {
                                        self.on_command(Command::Penalize {
                                            peer: p,
                                            reason: "served an invalid directory record",
                                        });
                                    }
                                }
                            }
                            if self
                                .lookups
                                .get(&id)
                                .is_some_and(|p| p.remote >= LOOKUP_ENOUGH)
                            {
                                if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                                    q.finish();
                                }
                                done = true;
                            }
                        }
                        Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => done = true,
                        Err(_) => done = true,
                    }
                    if done && let Some(p) = self.lookups.remove(&id) {
                        let _ = p.reply.send(RecordsFound {
                            records: p.records,
                            requests,
                        });
                    }
                }
                QueryResult::GetClosestPeers(res) => {
                    let peers = match res {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    if let Some(reply) = self.closest.remove(&id) {
                        let _ = reply.send(
                            peers
                                .into_iter()
                                .map(|p| p.peer_id)
                                .filter(|p| !self.banned.contains(p))
                                .collect(),
                        );
                    }
                }
                QueryResult::PutRecord(res) => {
                    if let Some(reply) = self.publishes.remove(&id) {
                        let _ = reply.send(res.map(|_| ()).map_err(|e| e.to_string()));
                    }
                }
                QueryResult::Bootstrap(Ok(_)) => {}
                other => tracing::trace!("kad query result {other:?}"),
            },
            _ => {}
        }
    }

    /// Evicts a peer just added to the routing table when its bucket already holds
    /// `diversity::MAX_PER_PREFIX` others on one of its public address prefixes.
    fn check_diversity(&mut self, peer: PeerId, addresses: Vec<libp2p::Multiaddr>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let others: Vec<Vec<libp2p::Multiaddr>> = match kad.kbucket(peer) {
            Some(bucket) => bucket
                .iter()
                .filter(|e| *e.node.key.preimage() != peer)
                .map(|e| e.node.value.iter().cloned().collect())
                .collect(),
            None => return,
        };
        if !diversity::may_join(&addresses, &others) {
            tracing::debug!(%peer, "not kept in the routing table: its bucket has enough peers from its network");
            kad.remove_peer(&peer);
        }
    }

    /// An inbound PUT_VALUE: stored only if valid, newest, and not a key change.
    fn on_inbound_record(&mut self, source: PeerId, mut record: kad::Record) {
        use libp2p::kad::store::RecordStore;
        if backup_root::is_root(&record.value) {
            return self.on_inbound_backup_root(source, record);
        }
        if nat::is_addr_record(&record.value) {
            return self.on_inbound_addr_record(source, record);
        }
        let now = now_secs();
        let new = match directory::validate(&record.value, record.key.as_ref(), now) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%source, "refused inbound record: {e}");
                if is_forgery(&e) {
                    self.on_command(Command::Penalize {
                        peer: source,
                        reason: "sent an invalid directory record",
                    });
                }
                return;
            }
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Some(held) = kad.store_mut().get(&record.key)
            && let Ok(held) = directory::validate(&held.value, record.key.as_ref(), now)
            && let Err(e) =
                directory::may_replace(&held, &new, self.config.ring_authority.as_ref(), now)
        {
            match e {
                directory::RecordError::KeyChanged { .. } => {
                    tracing::warn!(
                        target: "peerpost::_events::directory",
                        %source,
                        "SECURITY WARNING: refused inbound record: {e}"
                    );
                }
                _ => tracing::debug!(%source, "refused inbound record: {e}"),
            }
            return;
        }
        record.expires = expires_instant(&new);
        if let Some(record) = admit(kad, source, record)
            && let Err(e) = kad.store_mut().put(record)
        {
            tracing::debug!(%source, "record not stored: {e}");
        }
    }

    fn on_rr_event(&mut self, event: request_response::Event<Request, Response>, notify: bool) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_inbound_request(peer, request, channel, notify),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::Failed(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
        notify: bool,
    ) {
        let refuse = |this: &mut Self, channel, why| {
            this.respond(channel, Response::Refused(why), notify);
        };
        if self.banned.contains(&peer) {
            return refuse(self, channel, Refusal::Invalid);
        }
        // A notification costs no store task (it is handed to the owner, whose event channel
        // bounds it), so the blob in-flight limits do not refuse it.
        if let Request::Notify { payload } = request {
            self.emit(Event::Notification {
                from: peer,
                payload,
            });
            return self.respond(channel, Response::Ack, true);
        }
        // Statistics are a few hundred bytes added up in memory: no store task.
        if let Request::Stats(msg) = request {
            let response = self.stats.serve(peer, msg, super::now_secs());
            return self.respond(channel, response, false);
        }
        let inflight = self.inflight.get(&peer).copied().unwrap_or(0);
        if inflight >= self.config.max_inflight_per_peer || self.tasks.len() >= MAX_INBOUND_TASKS {
            return refuse(self, channel, Refusal::Busy);
        }
        *self.inflight.entry(peer).or_insert(0) += 1;
        let store = self.store.clone();
        let limit = self.config.contribution;
        let me = *self.swarm.local_peer_id();
        self.tasks.spawn(async move {
            let response = serve(&store, request, limit, &me).await;
            Served {
                peer,
                channel,
                response,
            }
        });
    }

    fn finish_inbound(&mut self, mut served: Served) {
        if self.corrupt_fetches
            && let Response::Found { bytes } = &mut served.response
            && let Some(b) = bytes.first_mut()
        {
            *b ^= 0xff;
        }
        if let Some(n) = self.inflight.get_mut(&served.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.inflight.remove(&served.peer);
            }
        }
        self.respond(served.channel, served.response, false);
    }

    /// Answers on the behaviour that received the request (a channel belongs to one).
    fn respond(&mut self, channel: ResponseChannel<Response>, response: Response, notify: bool) {
        let b = self.swarm.behaviour_mut();
        let sent = if notify {
            b.notify.send_response(channel, response)
        } else {
            b.blob.send_response(channel, response)
        };
        if sent.is_err() {
            tracing::debug!("response not sent: the requester went away");
        }
    }
}

/// Answers one blob request from the store.
async fn serve(store: &Store, request: Request, limit: u64, me: &PeerId) -> Response {
    match request {
        Request::Store { id, bytes } => match store.held_put(id, bytes, limit).await {
            Ok(HeldPut::Stored | HeldPut::AlreadyHeld) => Response::Stored,
            Ok(HeldPut::Full) => Response::Refused(Refusal::Full),
            Err(e) => {
                tracing::warn!("cannot hold a blob: {e}");
                Response::Refused(Refusal::Internal)
            }
        },
        Request::Fetch { id } => match store.held_get(id).await {
            Ok(Some(bytes)) => Response::Found { bytes },
            Ok(None) => Response::Refused(Refusal::NotFound),
            Err(e) => {
                tracing::warn!("cannot read a held blob: {e}");
                Response::Refused(Refusal::Internal)
            }
        },
        Request::Has { id } => match store.held_has(id).await {
            Ok(b) => Response::HasAnswer(b),
            Err(_) => Response::Refused(Refusal::Internal),
        },
        Request::Notify { .. } => Response::Refused(Refusal::Invalid),
        Request::InboxPut { .. } | Request::InboxList { .. } | Request::InboxAck { .. } => {
            super::inbox::serve(store, request, me, false).await
        }
        Request::Stats(_) => Response::Refused(Refusal::Invalid),
    }
}

/// Applies the per-peer quota of the record store: a record under a key not held yet counts
/// against the peer that sent it (kept as its `publisher`; the sender's own claim is not
/// believed), and is refused once that peer has `MAX_RECORDS_PER_PEER` there. A newer
/// record under a held key keeps the first sender's account. Peer ids cost nothing, so this
/// makes one peer unable to fill the store, not many.
fn admit(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    source: PeerId,
    mut record: kad::Record,
) -> Option<kad::Record> {
    use libp2p::kad::store::RecordStore;
    let store = kad.store_mut();
    if let Some(held) = store.get(&record.key) {
        record.publisher = held.publisher;
        return Some(record);
    }
    let from_source = store
        .records()
        .filter(|r| r.publisher == Some(source))
        .count();
    if from_source >= MAX_RECORDS_PER_PEER {
        tracing::debug!(%source, "record refused: the peer's share of the record store is full");
        return None;
    }
    record.publisher = Some(source);
    Some(record)
}

/// A record no honest peer sends (bad encoding, signature or key), as opposed to one that
/// merely expired in transit or while replicated: only forgeries cost a peer score.
fn is_forgery(e: &directory::RecordError) -> bool {
    !matches!(
        e,
        directory::RecordError::Invalid(crate::crypto::Error::Expired { .. })
            | directory::RecordError::Stale { .. }
    )
}

/// The monotonic instant at which a record expires.
fn expires_instant(record: &DirectoryRecord) -> Option<Instant> {
    let left = record.expires.saturating_sub(now_secs());
    Instant::now().checked_add(std::time::Duration::from_secs(left))
}

// --- backup roots (durability, issue #6): a second kind of DHT value, validated like
// directory records (overlay/backup_root.rs) ---

/// Valid remote copies of a backup root after which a lookup stops.
const ROOT_LOOKUP_ENOUGH: usize = 4;

struct PendingRootLookup {
    reply: oneshot::Sender<Vec<Vec<u8>>>,
    key: [u8; 32],
    roots: Vec<Vec<u8>>,
    remote: usize,
}

impl EventLoop {
    fn on_backup_root_command(&mut self, command: Command) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match command {
            Command::PutBackupRoot {
                key,
                bytes,
                expires,
                reply,
            } => {
                let mut rec = kad::Record::new(RecordKey::new(&key), bytes);
                let left = expires.saturating_sub(now_secs());
                rec.expires = Instant::now().checked_add(std::time::Duration::from_secs(left));
                match kad.put_record(rec, Quorum::One) {
                    Ok(id) => {
                        self.publishes.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::GetBackupRoots { key, reply } => {
                let id = kad.get_record(RecordKey::new(&key));
                self.root_lookups.insert(
                    id,
                    PendingRootLookup {
                        reply,
                        key,
                        roots: Vec::new(),
                        remote: 0,
                    },
                );
            }
            _ => {}
        }
    }

    fn on_root_found(&mut self, id: QueryId, res: kad::GetRecordResult, last: bool) {
        let Some(pending) = self.root_lookups.get_mut(&id) else {
            return;
        };
        let mut done = last;
        match res {
            Ok(kad::GetRecordOk::FoundRecord(found)) => {
                match backup_root::validate(&found.record.value, &pending.key, now_secs()) {
                    Ok(_) => {
                        if found.peer.is_some() {
                            pending.remote += 1;
                        }
                        if !pending.roots.contains(&found.record.value) {
                            pending.roots.push(found.record.value);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(peer = ?found.peer, "refused backup root: {e}");
                        if let Some(p) = found.peer
                            && !matches!(e, backup_root::RootError::Expired)
                        {
                            self.on_command(Command::Penalize {
                                peer: p,
                                reason: "served an invalid backup root",
                            });
                        }
                    }
                }
                if self
                    .root_lookups
                    .get(&id)
                    .is_some_and(|p| p.remote >= ROOT_LOOKUP_ENOUGH)
                {
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                    done = true;
                }
            }
            Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => done = true,
        }
        if done && let Some(p) = self.root_lookups.remove(&id) {
            let _ = p.reply.send(p.roots);
        }
    }

    /// An inbound PUT_VALUE of a backup root: kept if valid and not older than the held one.
    fn on_inbound_backup_root(&mut self, source: PeerId, mut record: kad::Record) {
        use libp2p::kad::store::RecordStore;
        let now = now_secs();
        let new = match backup_root::validate(&record.value, record.key.as_ref(), now) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%source, "refused inbound backup root: {e}");
                if !matches!(e, backup_root::RootError::Expired) {
                    self.on_command(Command::Penalize {
                        peer: source,
                        reason: "sent an invalid backup root",
                    });
                }
                return;
            }
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Some(held) = kad.store_mut().get(&record.key)
            && let Ok(held) = backup_root::validate(&held.value, record.key.as_ref(), now)
            && let Err(e) = backup_root::may_replace(&held, &new)
        {
            tracing::debug!(%source, "refused inbound backup root: {e}");
            return;
        }
        let left = new.expires.saturating_sub(now);
        record.expires = Instant::now().checked_add(std::time::Duration::from_secs(left));
        if let Some(record) = admit(kad, source, record)
            && let Err(e) = kad.store_mut().put(record)
        {
            tracing::debug!(%source, "backup root not stored: {e}");
        }
    }
}

/// Reachability (NAT, issue #19): AutoNAT's verdict decides the Kademlia mode.
impl EventLoop {
    /// With `reachable = "auto"`, a confirmed public address makes this node a DHT server
    /// (others add it to their routing tables and place data on it); a private verdict makes
    /// it a client again, so nobody keeps choosing a holder they cannot dial. "Unknown"
    /// (probes failed for want of servers) leaves the mode as it is.
    fn on_autonat_event(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            return;
        };
        tracing::info!(?old, ?new, "reachability changed");
        if self.config.reachable.resolve(&self.config) != super::Reachable::Auto {
            return;
        }
        let mode = match new {
            autonat::NatStatus::Public(_) => kad::Mode::Server,
            autonat::NatStatus::Private => kad::Mode::Client,
            autonat::NatStatus::Unknown => return,
        };
        self.swarm.behaviour_mut().kad.set_mode(Some(mode));
        // A new verdict: relays are wanted (private) or no longer (public); a relay that
        // refused before may be asked again.
        self.nat.refused.clear();
        self.maintain_relays();
    }

    /// The reachability part of `status`.
    fn reachability_status(&mut self) -> Status {
        let forced = self.config.reachable.resolve(&self.config) != super::Reachable::Auto;
        let behaviour = self.swarm.behaviour_mut();
        let dht_mode = match behaviour.kad.mode() {
            kad::Mode::Server => "server",
            kad::Mode::Client => "client",
        };
        let nat = behaviour.autonat.as_ref().map(|a| a.nat_status());
        let reachable = match (forced, &nat) {
            (true, _) => "forced",
            (false, Some(autonat::NatStatus::Public(_))) => "yes",
            (false, Some(autonat::NatStatus::Private)) => "no",
            (false, _) => "unknown",
        };
        let public_address = match nat {
            Some(autonat::NatStatus::Public(a)) => Some(a.to_string()),
            _ => None,
        };
        let n = &self.nat;
        let relayed_connections = n.connections.values().filter(|(_, r)| *r).count();
        let mut relays: Vec<String> = n
            .reservations
            .iter()
            .filter(|(_, r)| r.accepted)
            .map(|(p, _)| p.to_string())
            .collect();
        relays.sort();
        Status {
            reachable: reachable.into(),
            dht_mode: dht_mode.into(),
            public_address,
            relays,
            relayed_addresses: n.circuit_addrs.iter().map(|a| a.to_string()).collect(),
            direct_connections: n.connections.len() - relayed_connections,
            relayed_connections,
            direct_peers: n.direct_peers(),
            hole_punches_tried: n.punches_tried,
            hole_punches_won: n.punches_won,
            ..Status::default()
        }
    }
}

// --- devices (issue #15): the replica protocol (overlay/replica.rs) ---
impl EventLoop {
    fn on_replica_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if self.banned.contains(&peer) {
                    return; // the channel drops: the stream closes unanswered
                }
                let (tx, rx) = oneshot::channel();
                self.emit(Event::ReplicaRequest {
                    from: peer,
                    payload: request,
                    reply: super::ReplicaReply(std::sync::Arc::new(std::sync::Mutex::new(Some(
                        tx,
                    )))),
                });
                // The owner answers within the request timeout or not at all.
                let wait = self.config.request_timeout;
                self.replica_answers.spawn(async move {
                    match tokio::time::timeout(wait, rx).await {
                        Ok(Ok(answer)) => Some((channel, answer)),
                        _ => None,
                    }
                });
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.replica_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.replica_requests.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::Failed(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound replica request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn finish_replica(&mut self, done: Option<ReplicaAnswer>) {
        if let Some((channel, answer)) = done
            && self
                .swarm
                .behaviour_mut()
                .replica
                .send_response(channel, answer)
                .is_err()
        {
            tracing::debug!("replica answer not sent: the requester went away");
        }
    }
}

/// NAT traversal (issue #19, second part): relay reservations, the relayed-address record,
/// notices to devices behind NAT, and the connection and hole-punch books (nat.rs).
impl EventLoop {
    /// Whether this node should hold relay reservations: it cannot be dialed (set "no", or
    /// AutoNAT's verdict is "private") and it has a relay client (network transport).
    fn wants_relays(&mut self) -> bool {
        let b = self.swarm.behaviour_mut();
        if b.relay_client.as_ref().is_none() {
            return false;
        }
        match self.config.reachable.resolve(&self.config) {
            super::Reachable::No => true,
            super::Reachable::Yes => false,
            super::Reachable::Auto => matches!(
                b.autonat.as_ref().map(|a| a.nat_status()),
                Some(autonat::NatStatus::Private)
            ),
        }
    }

    /// Reserves on relays up to nat::WANT_RELAYS, or drops every reservation once the node
    /// is reachable.
    fn maintain_relays(&mut self) {
        if self.nat.reconnecting {
            // The old connections are still closing: a reservation now would ride one.
            return;
        }
        if !self.wants_relays() {
            for (_, r) in self.nat.reservations.drain() {
                self.swarm.remove_listener(r.listener);
            }
            return;
        }
        while let Some((relay, addr)) = self.nat.next_relay() {
            match self.swarm.listen_on(addr.clone()) {
                Ok(listener) => {
                    tracing::info!(%relay, %addr, "reserving a relay slot");
                    self.nat.reservations.insert(
                        relay,
                        nat::Reservation {
                            listener,
                            accepted: false,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(%relay, "cannot listen through relay: {e}");
                    self.nat.refused.insert(relay);
                }
            }
        }
    }

    /// Watches every swarm event for what NAT traversal needs (before the main dispatch).
    fn on_nat_swarm_event(&mut self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::core::ConnectedPoint;
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                // An inbound circuit's remote address is only `/p2p/SRC`: the local one
                // (`…/p2p-circuit`) tells.
                let relayed = endpoint.is_relayed();
                if !relayed {
                    self.nat.reconnecting = false;
                }
                self.nat
                    .connections
                    .insert(*connection_id, (*peer_id, relayed));
                if let ConnectedPoint::Dialer { address, .. } = endpoint
                    && self.nat.candidates.contains_key(peer_id)
                    && let Some(a) = nat::relay_address(address)
                {
                    // An address we could dial it on beats what it says it listens on.
                    self.nat.add_candidate(*peer_id, a);
                }
            }
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                self.nat.connections.remove(connection_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let kad_proto = super::pnet::Protocols::of(&self.config).kad;
                let offers = info.protocols.contains(&relay::HOP_PROTOCOL_NAME)
                    && info.protocols.contains(&kad_proto)
                    && !self.banned.contains(peer_id);
                if !offers {
                    self.nat.candidates.remove(peer_id);
                    return;
                }
                let dialed = self
                    .nat
                    .connections
                    .iter()
                    .find(|(_, (p, r))| p == peer_id && !r)
                    .map(|(id, _)| *id);
                let known = self.nat.candidates.contains_key(peer_id);
                if !known && let Some(a) = info.listen_addrs.iter().find_map(nat::relay_address) {
                    self.nat.add_candidate(*peer_id, a);
                }
                if dialed.is_some() {
                    self.maintain_relays();
                }
            }
            SwarmEvent::NewListenAddr { address, .. }
                if nat::is_relayed(address)
                    && !self.nat.circuit_addrs.contains(address)
                    && self.nat.circuit_addrs.len() < nat::MAX_ADDRS =>
            {
                self.nat.circuit_addrs.push(address.clone());
                self.publish_addresses();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } if nat::is_relayed(address) => {
                self.nat.circuit_addrs.retain(|a| a != address);
                self.publish_addresses();
            }
            SwarmEvent::ExpiredListenAddr { address, .. }
                if nat::relay_address(address).is_some() =>
            {
                self.on_address_lost(address)
            }
            SwarmEvent::NewListenAddr { address, .. }
                if self.nat.reconnecting && nat::relay_address(address).is_some() =>
            {
                // The new network is up: reach the ring from it.
                self.dial_bootstrap();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event {
                peer,
                connection,
                result: Err(e),
            })) => {
                // A peer that stops answering is gone (it moved, slept, or its NAT forgot
                // us): close the connection rather than send notices into it for minutes.
                tracing::debug!(%peer, "ping failed ({e}): closing the connection");
                self.swarm.close_connection(*connection);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
                ..
            } => {
                let gone: Vec<PeerId> = self
                    .nat
                    .reservations
                    .iter()
                    .filter(|(_, r)| r.listener == *listener_id)
                    .map(|(p, _)| *p)
                    .collect();
                for relay in gone {
                    tracing::info!(%relay, ?reason, "relay reservation ended");
                    self.nat.reservations.remove(&relay);
                    self.nat.refused.insert(relay);
                }
                let before = self.nat.circuit_addrs.len();
                self.nat.circuit_addrs.retain(|a| !addresses.contains(a));
                if self.nat.circuit_addrs.len() != before {
                    self.publish_addresses();
                }
                self.maintain_relays();
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                if let Some(r) = self.nat.reservations.get_mut(relay_peer_id) {
                    r.accepted = true;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => {
                self.nat.punches_tried += 1;
                match result {
                    Ok(_) => {
                        self.nat.punches_won += 1;
                        tracing::info!(peer = %remote_peer_id, "hole punched: direct connection");
                    }
                    Err(e) => tracing::info!(peer = %remote_peer_id, "hole punch failed: {e}"),
                }
            }
            _ => {}
        }
    }

    /// Mobility: one of this node's own addresses went away (a laptop left a network or
    /// woke up on another). Behind NAT, every connection and reservation ran over it: drop
    /// them, dial the bootstrap peers again from the new address, and reserve anew once they
    /// answer (identify); the new circuit addresses are republished as they come up, and
    /// AutoNAT re-probes by itself on the new listen address. A reachable node keeps its
    /// connections (an address of one of its interfaces changing is no move).
    fn on_address_lost(&mut self, address: &libp2p::Multiaddr) {
        if !self.wants_relays() {
            return;
        }
        tracing::info!(%address, "own address gone: reconnecting and reserving relays anew");
        for (_, r) in self.nat.reservations.drain() {
            self.swarm.remove_listener(r.listener);
        }
        self.nat.refused.clear();
        self.nat.circuit_addrs.clear();
        self.nat.reconnecting = true;
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        self.dial_bootstrap();
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.config.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr) {
                tracing::debug!("cannot dial a bootstrap peer: {e}");
            }
        }
    }

    /// Puts this device's relayed-address record into the DHT (nothing when it has none: a
    /// reachable node is found through the routing table).
    fn publish_addresses(&mut self) {
        if self.nat.circuit_addrs.is_empty() {
            return;
        }
        let mut seed = self.config.device_seed;
        let key = match libp2p::identity::Keypair::ed25519_from_bytes(&mut seed) {
            Ok(k) => k,
            Err(e) => return tracing::warn!("device key: {e}"),
        };
        let me = *self.swarm.local_peer_id();
        let value = match nat::encode(&key, self.nat.circuit_addrs.clone()) {
            Ok(v) => v,
            Err(e) => return tracing::warn!("relayed-address record: {e}"),
        };
        let record = kad::Record::new(nat::addr_key(&me), value);
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Err(e) = kad.put_record(record, Quorum::One) {
            tracing::debug!("relayed-address record not published: {e}");
        }
    }

    /// The commands NAT traversal takes over (None: handled).
    fn on_nat_command(&mut self, command: Command) -> Option<Command> {
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } if matches!(request, Request::Notify { .. }) && self.needs_addresses(&peer) => {
                self.find_addresses_then_notify(peer, request, reply);
                None
            }
            Command::PublishAddresses => {
                self.publish_addresses();
                None
            }
            c => Some(c),
        }
    }

    /// A notice can go out at once to a connected device or one in the routing table;
    /// otherwise the device may be behind NAT, reachable only through its relays.
    fn needs_addresses(&mut self, peer: &PeerId) -> bool {
        if self.swarm.behaviour().relay_client.as_ref().is_none() || self.swarm.is_connected(peer) {
            return false;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        !kad.kbucket(*peer)
            .is_some_and(|b| b.iter().any(|e| e.node.key.preimage() == peer))
    }

    fn find_addresses_then_notify(
        &mut self,
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<super::Response, RequestError>>,
    ) {
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(nat::addr_key(&peer));
        self.addr_lookups.insert(
            id,
            PendingNotify {
                peer,
                request,
                reply,
            },
        );
    }

    /// The first valid relayed-address record of the device: dial it through its relays and
    /// send the notice (with none, the notice goes out anyway and fails or finds a
    /// connection made meanwhile; the recipient collects from its inbox later).
    fn on_addresses_found(&mut self, id: QueryId, res: kad::GetRecordResult, last: bool) {
        let found = match res {
            Ok(kad::GetRecordOk::FoundRecord(found)) => Some(found.record),
            _ => None,
        };
        let peer = match self.addr_lookups.get(&id) {
            Some(p) => p.peer,
            None => return,
        };
        let addresses = found
            .and_then(|r| nat::decode(&r.value, r.key.as_ref(), now_secs()).ok())
            .filter(|r| r.peer == peer)
            .map(|r| r.addresses);
        if addresses.is_none() && !last {
            return;
        }
        let Some(pending) = self.addr_lookups.remove(&id) else {
            return;
        };
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
        if let Some(addresses) = addresses {
            tracing::debug!(%peer, ?addresses, "dialing a device through its relays");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addresses)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "cannot dial through relays: {e}");
            }
        }
        let id = self
            .swarm
            .behaviour_mut()
            .notify
            .send_request(&pending.peer, pending.request);
        self.requests.insert(id, pending.reply);
    }

    /// A relayed-address record a peer puts on this node: kept if valid and newer than the
    /// one held, until it expires.
    fn on_inbound_addr_record(&mut self, source: PeerId, mut record: kad::Record) {
        use libp2p::kad::store::RecordStore;
        let now = now_secs();
        let new = match nat::decode(&record.value, record.key.as_ref(), now) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%source, "refused relayed-address record: {e}");
                return;
            }
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Some(held) = kad.store_mut().get(&record.key)
            && let Ok(held) = nat::decode(&held.value, record.key.as_ref(), now)
            && held.seq > new.seq
        {
            return;
        }
        let left = nat::ADDR_RECORD_TTL_SECS.saturating_sub(now.saturating_sub(new.seq));
        record.expires = Some(Instant::now() + std::time::Duration::from_secs(left));
        if let Some(record) = admit(kad, source, record)
            && let Err(e) = kad.store_mut().put(record)
        {
            tracing::debug!(%source, "relayed-address record not stored: {e}");
        }
    }
}
