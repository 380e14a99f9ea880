//! Gateways (issue #16; overlay/gateway/): the gateway protocol's requests and answers, and
//! the Kademlia provider records that announce gateways.

use super::*;

/// The owner's answer to an inbound gateway request, to be sent on the swarm.
pub(super) type GatewayAnswer = (ResponseChannel<Vec<u8>>, Vec<u8>);

/// What the gateway side of the loop keeps.
#[derive(Default)]
pub(super) struct GatewayState {
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, RequestError>>>,
    pub(super) answers: JoinSet<Option<GatewayAnswer>>,
    provides: HashMap<QueryId, oneshot::Sender<Result<(), String>>>,
    providers: HashMap<QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
}

/// Provider records one answer may hand back at most (8 per key are kept).
const MAX_PROVIDERS: usize = 16;

impl EventLoop {
    /// Handles the gateway commands; gives any other back.
    pub(super) fn on_gateway_command(&mut self, command: Command) -> Option<Command> {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match command {
            Command::Provide { key, reply } => match kad.start_providing(RecordKey::new(&key)) {
                Ok(id) => {
                    self.gateway.provides.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            },
            Command::GetProviders { key, reply } => {
                let id = kad.get_providers(RecordKey::new(&key));
                self.gateway.providers.insert(id, (HashSet::new(), reply));
            }
            Command::Gateway {
                peer,
                payload,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .gateway
                    .send_request(&peer, payload);
                self.gateway.requests.insert(id, reply);
            }
            other => return Some(other),
        }
        None
    }

    /// A provider query's progress; `true` when it was one of ours.
    pub(super) fn on_provider_result(
        &mut self,
        id: QueryId,
        result: &QueryResult,
        last: bool,
    ) -> bool {
        match result {
            QueryResult::StartProviding(res) => {
                if let Some(reply) = self.gateway.provides.remove(&id) {
                    let _ = reply.send(res.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                }
                true
            }
            QueryResult::GetProviders(res) => {
                let Some((found, _)) = self.gateway.providers.get_mut(&id) else {
                    return true;
                };
                let mut done = last;
                match res {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        for p in providers {
                            if found.len() < MAX_PROVIDERS && !self.banned.contains(p) {
                                found.insert(*p);
                            }
                        }
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => {
                        done = true
                    }
                }
                if done && let Some((found, reply)) = self.gateway.providers.remove(&id) {
                    let _ = reply.send(found.into_iter().collect());
                }
                true
            }
            _ => false,
        }
    }

    /// An inbound ADD_PROVIDER (records are filtered, so the loop stores it): only the
    /// announcing peer itself, bounded by the store (8 per key, 1,024 keys).
    pub(super) fn on_inbound_provider(&mut self, source: PeerId, record: kad::ProviderRecord) {
        use libp2p::kad::store::RecordStore;
        if record.provider != source || self.banned.contains(&source) {
            return;
        }
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .add_provider(record)
        {
            tracing::debug!(%source, "provider record not kept: {e}");
        }
    }

    pub(super) fn on_gateway_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
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
                    return;
                }
                let (tx, rx) = oneshot::channel();
                self.emit(Event::GatewayRequest {
                    from: peer,
                    payload: request,
                    reply: crate::overlay::ReplicaReply(std::sync::Arc::new(
                        std::sync::Mutex::new(Some(tx)),
                    )),
                });
                let wait = self.config.request_timeout;
                self.gateway.answers.spawn(async move {
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
                if let Some(reply) = self.gateway.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.gateway.requests.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::Failed(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound gateway request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn finish_gateway(&mut self, done: Option<GatewayAnswer>) {
        if let Some((channel, answer)) = done
            && self
                .swarm
                .behaviour_mut()
                .gateway
                .send_response(channel, answer)
                .is_err()
        {
            tracing::debug!("gateway answer not sent: the requester went away");
        }
    }
}
