//! The replica protocol between a user's devices (issue #15; overlay/replica.rs).

use super::*;

impl EventLoop {
    pub(super) fn on_replica_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
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
                    reply: crate::overlay::ReplicaReply(std::sync::Arc::new(
                        std::sync::Mutex::new(Some(tx)),
                    )),
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

    pub(super) fn finish_replica(&mut self, done: Option<ReplicaAnswer>) {
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
