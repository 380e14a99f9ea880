//! Backup roots (durability, issue #6): a second kind of DHT value, validated like
//! directory records (overlay/backup_root.rs).

use super::*;

/// Valid remote copies of a backup root after which a lookup stops.
const ROOT_LOOKUP_ENOUGH: usize = 4;

pub(super) struct PendingRootLookup {
    reply: oneshot::Sender<Vec<Vec<u8>>>,
    key: [u8; 32],
    roots: Vec<Vec<u8>>,
    remote: usize,
}

impl EventLoop {
    pub(super) fn on_backup_root_command(&mut self, command: Command) {
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

    pub(super) fn on_root_found(&mut self, id: QueryId, res: kad::GetRecordResult, last: bool) {
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
    pub(super) fn on_inbound_backup_root(&mut self, source: PeerId, mut record: kad::Record) {
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
