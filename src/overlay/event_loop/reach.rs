//! Reachability and NAT traversal (issue #19): AutoNAT's verdict and the Kademlia mode;
//! relay reservations, the relayed-address record, notices to devices behind NAT, and the
//! connection and hole-punch books (overlay/nat.rs).

use super::*;

/// Reachability (NAT, issue #19): AutoNAT's verdict decides the Kademlia mode.
impl EventLoop {
    /// With `reachable = "auto"`, a confirmed public address makes this node a DHT server
    /// (others add it to their routing tables and place data on it); a private verdict makes
    /// it a client again, so nobody keeps choosing a holder they cannot dial. "Unknown"
    /// (probes failed for want of servers) leaves the mode as it is.
    pub(super) fn on_autonat_event(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            return;
        };
        tracing::info!(?old, ?new, "reachability changed");
        if self.config.reachable.resolve(&self.config) != crate::overlay::Reachable::Auto {
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
    pub(super) fn reachability_status(&mut self) -> Status {
        let forced = self.config.reachable.resolve(&self.config) != crate::overlay::Reachable::Auto;
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
        let (upnp, upnp_mapped) = self.nat.upnp.status(behaviour.upnp.is_enabled());
        let (natpmp, natpmp_mapped) = match behaviour.natpmp.as_ref() {
            Some(n) => n.state().status(),
            None => ("off".to_string(), Vec::new()),
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
            upnp,
            upnp_mapped,
            natpmp,
            natpmp_mapped,
            ..Status::default()
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
            crate::overlay::Reachable::No => true,
            crate::overlay::Reachable::Yes => false,
            crate::overlay::Reachable::Auto => matches!(
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
    pub(super) fn on_nat_swarm_event(&mut self, event: &SwarmEvent<BehaviourEvent>) {
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
                let kad_proto = crate::overlay::pnet::Protocols::of(&self.config).kad;
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
            // A relay that refuses serves nobody silently: say whom and why (the limits are
            // behaviour::relay_config's; docs/design.md "NAT and relays").
            SwarmEvent::Behaviour(BehaviourEvent::Relay(relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            })) => tracing::info!(peer = %src_peer_id, ?status, "relay: reservation refused"),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            })) => tracing::info!(
                src = %src_peer_id,
                dst = %dst_peer_id,
                ?status,
                "relay: circuit refused"
            ),
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(e)) => {
                tracing::info!(?e, "UPnP port mapping");
                self.nat.upnp.on_event(e);
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
                        // The circuit has done its job: free the relay's slot (a relay runs
                        // 16 circuits, 4 per peer counting both ends, each kept up to 2 min).
                        // Left open, a laptop that is punched to often soon finds every
                        // relay refusing new circuits to it.
                        let relayed: Vec<libp2p::swarm::ConnectionId> = self
                            .nat
                            .connections
                            .iter()
                            .filter(|(_, (p, r))| p == remote_peer_id && *r)
                            .map(|(id, _)| *id)
                            .collect();
                        for id in relayed {
                            self.swarm.close_connection(id);
                        }
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
    pub(super) fn on_nat_command(&mut self, command: Command) -> Option<Command> {
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
        reply: oneshot::Sender<Result<crate::overlay::Response, RequestError>>,
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
    pub(super) fn on_addresses_found(
        &mut self,
        id: QueryId,
        res: kad::GetRecordResult,
        last: bool,
    ) {
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
    pub(super) fn on_inbound_addr_record(&mut self, source: PeerId, mut record: kad::Record) {
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
