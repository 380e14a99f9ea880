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
    // --- gateways (issue #16) ---
    gateway: gateway::GatewayState,
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
            gateway: Default::default(),
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
                Some(done) = self.gateway.answers.join_next(), if !self.gateway.answers.is_empty() => {
                    self.finish_gateway(done.ok().flatten());
                }
            }
        }
        self.tasks.shutdown().await;
        self.replica_answers.shutdown().await;
        self.gateway.answers.shutdown().await;
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
        let command = match self.on_gateway_command(command) {
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
            // Taken by `on_gateway_command` before this match.
            Command::Provide { .. } | Command::GetProviders { .. } | Command::Gateway { .. } => {}
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
            SwarmEvent::Behaviour(BehaviourEvent::Gateway(event)) => self.on_gateway_event(event),
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
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                let source = record.provider;
                self.on_inbound_provider(source, record)
            }
            kad::Event::OutboundQueryProgressed {
                id,
                ref result,
                step: ref s,
                ..
            } if matches!(
                result,
                QueryResult::StartProviding(_) | QueryResult::GetProviders(_)
            ) =>
            {
                let last = s.last;
                self.on_provider_result(id, result, last);
            }
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

mod gateway;
mod reach;
mod replica;
mod roots;
use roots::PendingRootLookup;
