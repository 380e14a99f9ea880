//! What the replication between a user's devices (src/devices/) needs of the engine: the
//! version vector (device → highest sequence number applied), the entries another device
//! lacks, the bodies they refer to, merging a peer's batch, refusing the entries of removed
//! devices, and the duplicate check of overlay deliveries (docs/design.md, "Devices").

use std::collections::{BTreeMap, HashMap, HashSet};

use super::log::LogEntry;
use super::{
    AlsoWrite, DeviceId, EntryId, Error, Mailbox, MessageInfo, NewMessage, Op, Result, Table,
};
use crate::crypto::{ObjectId, SealedObject, content};

/// Entries one answer reads from the store at most (bytes are bounded separately).
const MAX_BATCH_ENTRIES: usize = 512;

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Merged {
    /// Entries new to this store (stored and applied).
    pub applied: usize,
    /// Entries of removed or revoked devices, dropped.
    pub refused: usize,
    /// Bodies the merged entries add that neither came with them nor are in this store
    /// (object id, sealed length by the signed entry): to fetch in chunks (devices/bodies.rs).
    pub missing: Vec<(ObjectId, u64)>,
}

/// The sealed length of a body whose plaintext is `size` bytes (what the signed Add says).
pub fn sealed_len(size: u64) -> u64 {
    size.saturating_add((content::HEADER_LEN + content::TAG_LEN) as u64)
}

fn log_key(device: DeviceId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&device.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl Mailbox {
    /// Changes whenever log entries were written here or merged from elsewhere.
    pub fn subscribe_log(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.log_written.subscribe()
    }

    /// Device → highest log sequence number applied here.
    pub fn version_vector(&self) -> BTreeMap<DeviceId, u64> {
        self.read_engine().vv.clone()
    }

    /// Removed and revoked devices, with the last sequence number of each still accepted.
    /// Entries above it are refused by merges and skipped when read from the store.
    pub fn set_refused(&self, refused: HashMap<DeviceId, u64>) {
        self.write_engine().refused = refused;
    }

    pub(super) fn is_refused(&self, device: DeviceId, seq: u64) -> bool {
        matches!(self.read_engine().refused.get(&device), Some(upto) if seq > *upto)
    }

    /// The entries this store has beyond `theirs` (per device, in sequence order, so the
    /// receiver's vector stays gap-free), up to `budget` bytes (at least one entry when
    /// there is any). Returns them and whether more remain.
    pub async fn entries_after(
        &self,
        theirs: &BTreeMap<DeviceId, u64>,
        budget: usize,
    ) -> Result<(Vec<Vec<u8>>, bool)> {
        let mine = self.version_vector();
        let want: Vec<(DeviceId, u64, u64)> = mine
            .iter()
            .filter_map(|(d, top)| {
                let have = theirs.get(d).copied().unwrap_or(0);
                (*top > have).then_some((*d, have + 1, *top))
            })
            .collect();
        if want.is_empty() {
            return Ok((Vec::new(), false));
        }
        // Entries of removed devices this store kept from before it learned of the removal
        // are not passed on (every device refuses them).
        let refused = self.read_engine().refused.clone();
        self.inner
            .store
            .read(move |rx| -> Result<_> {
                let mut out = Vec::new();
                let mut bytes = 0usize;
                for (device, from, top) in want {
                    let rows = rx.range_from(
                        Table::Log,
                        &log_key(device, from),
                        MAX_BATCH_ENTRIES.saturating_sub(out.len()),
                    )?;
                    for (k, v) in rows {
                        if k.len() != 16 || k[..8] != device.to_be_bytes() {
                            break;
                        }
                        if !out.is_empty() && bytes + v.len() > budget {
                            return Ok((out, true));
                        }
                        let seq = u64::from_be_bytes(k[8..16].try_into().unwrap_or([0; 8]));
                        if matches!(refused.get(&device), Some(upto) if seq > *upto) {
                            break;
                        }
                        bytes += v.len();
                        out.push(v);
                        if seq >= top {
                            break;
                        }
                    }
                    if out.len() >= MAX_BATCH_ENTRIES {
                        return Ok((out, true));
                    }
                }
                Ok((out, false))
            })
            .await
    }

    /// The sealed bodies `entries` add, as stored here, up to `budget` bytes in all; a body
    /// that does not fit is left out (the receiver reads it as missing content).
    pub async fn objects_of(&self, entries: &[Vec<u8>], budget: usize) -> Result<Vec<Vec<u8>>> {
        let mut ids = Vec::new();
        for bytes in entries {
            let e = LogEntry::open(bytes, &self.inner.public, &self.inner.log_key)?;
            for op in e.ops {
                if let Op::Add { message, .. } = op {
                    ids.push(message.object);
                }
            }
        }
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            if let Some(obj) = self.inner.store.get_object(id).await? {
                let b = obj.as_bytes();
                if total + b.len() > budget {
                    continue;
                }
                total += b.len();
                out.push(b.to_vec());
            }
        }
        Ok(out)
    }

    /// Verifies a batch from another device of this user, stores it with the bodies it adds
    /// (bodies no entry of the batch names are ignored) and applies it like any change, so
    /// subscribers (IMAP IDLE, the mount) hear of it. Entries of refused devices are dropped;
    /// one entry that does not verify refuses the whole batch.
    pub async fn merge_remote(
        &self,
        entries: Vec<Vec<u8>>,
        objects: Vec<Vec<u8>>,
    ) -> Result<Merged> {
        let mut keep = Vec::with_capacity(entries.len());
        let mut named: HashMap<ObjectId, u64> = HashMap::new();
        let mut refused = 0;
        for bytes in entries {
            let e = LogEntry::open(&bytes, &self.inner.public, &self.inner.log_key)?;
            if self.is_refused(e.device, e.seq) {
                refused += 1;
                continue;
            }
            for op in &e.ops {
                if let Op::Add { message, .. } = op {
                    named.insert(message.object, sealed_len(message.size));
                }
            }
            keep.push((e.device, e.seq, bytes));
        }
        let mut bodies = Vec::new();
        for b in objects {
            let obj = SealedObject::from_bytes(b)?;
            if named.remove(&obj.id()).is_some() {
                bodies.push(obj);
            }
        }
        let mut missing = Vec::new();
        for (id, len) in named {
            if !self.inner.store.has_object(id).await? {
                missing.push((id, len));
            }
        }
        let _w = self.inner.write.lock().await;
        let new = self
            .inner
            .store
            .transact(move |tx| -> Result<usize> {
                for o in &bodies {
                    tx.put_object(o)?;
                }
                let mut n = 0;
                for (d, s, b) in &keep {
                    if tx.insert_log(*d, *s, b)? {
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await?;
        self.refresh_locked().await?;
        Ok(Merged {
            applied: new,
            refused,
            missing,
        })
    }

    /// The bodies live entries add that this store lacks (object id, sealed length), at
    /// most `limit`: what a device fetches from the others after a restart.
    pub async fn missing_bodies(&self, limit: usize) -> Result<Vec<(ObjectId, u64)>> {
        let wanted: Vec<(ObjectId, u64)> = {
            let e = self.read_engine();
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for f in e.crdt.folders() {
                for id in e.crdt.entries_in(f.id) {
                    if let Some(rec) = e.crdt.entry(id)
                        && seen.insert(rec.message.object)
                    {
                        out.push((rec.message.object, sealed_len(rec.message.size)));
                    }
                }
            }
            out
        };
        let mut missing = Vec::new();
        for (id, len) in wanted {
            if missing.len() >= limit {
                break;
            }
            if !self.inner.store.has_object(id).await? {
                missing.push((id, len));
            }
        }
        Ok(missing)
    }

    /// Stores a body fetched from another device (verified against its id by the caller:
    /// a [`SealedObject`] from `from_bytes_verified`). Readers find it from then on.
    pub async fn store_body(&self, body: SealedObject) -> Result<()> {
        self.inner.store.put_object(body).await?;
        Ok(())
    }

    /// The sealed object `id` as stored here, if any (what a body request reads).
    pub async fn sealed_body(&self, id: ObjectId) -> Result<Option<SealedObject>> {
        Ok(self.inner.store.get_object(id).await?)
    }

    /// Has any device of this user stored the delivery with this key (maildir::delivery_key)?
    pub fn has_delivery(&self, key: &[u8; 16]) -> bool {
        self.read_engine().deliveries.contains_key(key)
    }

    /// Appends a message that arrived through the overlay unless a device of this user has
    /// already stored it (`None` then). Its Maildir name carries the delivery key.
    pub async fn append_delivered(
        &self,
        folder: &str,
        msg: NewMessage,
        key: [u8; 16],
        also: AlsoWrite,
    ) -> Result<Option<MessageInfo>> {
        let _w = self.inner.write.lock().await;
        if self.has_delivery(&key) {
            return Ok(None);
        }
        let name = msg.maildir_name.as_deref().unwrap_or("");
        if super::maildir::delivery_key(name) != Some(key) {
            return Err(Error::InvalidName(
                name.to_string(),
                "not the delivery's Maildir name",
            ));
        }
        let folder_id = self.folder_id(folder)?;
        let mut out = self
            .append_locked(vec![(folder_id, msg)], Some(also))
            .await?;
        Ok(out.pop())
    }

    /// Two devices that both stored one delivery before hearing of each other: of the live
    /// entries of one key in one folder the smallest id stays, and each device removes its own
    /// others (so exactly one copy is left, whoever runs this first). The write lock is held.
    pub(super) async fn resolve_deliveries_locked(&self) -> Result<()> {
        let me = self.inner.device;
        let losers: Vec<EntryId> = {
            let mut e = self.write_engine();
            let dirty: Vec<[u8; 16]> = e.dirty_deliveries.drain().collect();
            let mut losers = Vec::new();
            for key in dirty {
                let Some(ids) = e.deliveries.get(&key) else {
                    continue;
                };
                let mut by_folder: BTreeMap<[u8; 20], Vec<EntryId>> = BTreeMap::new();
                for id in ids {
                    if let Some(rec) = e.crdt.entry(*id) {
                        by_folder
                            .entry(rec.folder.to_bytes())
                            .or_default()
                            .push(*id);
                    }
                }
                for (_, mut group) in by_folder {
                    group.sort_by_key(|id| (id.device, id.seq, id.idx));
                    losers.extend(group.into_iter().skip(1).filter(|id| id.device == me));
                }
            }
            losers
        };
        if losers.is_empty() {
            return Ok(());
        }
        tracing::info!(
            count = losers.len(),
            "removing copies of overlay deliveries another device stored first"
        );
        for chunk in losers.chunks(256) {
            self.commit(
                vec![Op::Remove {
                    entries: chunk.to_vec(),
                }],
                Vec::new(),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DeviceKey, UserKeys};
    use crate::mailbox::{Flag, FlagMode, Flags};
    use crate::store::Store;

    struct Device {
        _dir: tempfile::TempDir,
        mb: Mailbox,
    }

    async fn device(dev: u8) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = UserKeys::from_seed([7; 32]);
        let mb = Mailbox::open(store, keys, DeviceKey::from_seed([dev; 32]).public())
            .await
            .unwrap();
        Device { _dir: dir, mb }
    }

    fn msg(body: &str, name: Option<String>) -> NewMessage {
        NewMessage {
            bytes: format!("Subject: {body}\r\n\r\n{body}\r\n").into_bytes(),
            internal_date: 1_700_000_000,
            flags: Flags::default(),
            recent: true,
            maildir_name: name,
        }
    }

    /// What one sync does: batches of at most `budget` bytes from `from` until `to` has all.
    async fn pull(from: &Mailbox, to: &Mailbox, budget: usize) -> (usize, usize) {
        let (mut rounds, mut refused) = (0, 0);
        loop {
            let (entries, more) = from
                .entries_after(&to.version_vector(), budget)
                .await
                .unwrap();
            if entries.is_empty() {
                return (rounds, refused);
            }
            let objects = from.objects_of(&entries, 1 << 20).await.unwrap();
            refused += to.merge_remote(entries, objects).await.unwrap().refused;
            rounds += 1;
            if !more && refused > 0 {
                return (rounds, refused);
            }
        }
    }

    fn canonical(mb: &Mailbox) -> BTreeMap<String, Vec<(String, String, bool)>> {
        mb.read_engine().crdt.canonical()
    }

    #[tokio::test]
    async fn small_batches_carry_entries_and_bodies_until_both_agree() {
        let (a, b) = (device(1).await, device(2).await);
        for i in 0..5 {
            a.mb.append("INBOX", msg(&format!("m{i}"), None))
                .await
                .unwrap();
        }
        let first = a.mb.messages("INBOX").unwrap()[0].entry;
        a.mb.set_flags(
            "INBOX",
            &[first],
            FlagMode::Add,
            &Flags::default().with(Flag::Flagged),
            false,
        )
        .await
        .unwrap();
        b.mb.append("INBOX", msg("from b", None)).await.unwrap();
        let (rounds, _) = pull(&a.mb, &b.mb, 1).await; // one entry per batch
        assert!(rounds >= 3, "{rounds} rounds");
        pull(&b.mb, &a.mb, 1 << 20).await;
        assert_eq!(canonical(&a.mb), canonical(&b.mb));
        assert_eq!(a.mb.version_vector(), b.mb.version_vector());
        let on_b = b.mb.messages("INBOX").unwrap();
        assert_eq!(on_b.len(), 6);
        for m in on_b {
            b.mb.read(m.entry).await.expect("the body came along");
        }
        let (again, _) = pull(&a.mb, &b.mb, 1 << 20).await;
        assert_eq!(again, 0, "nothing left to send");
    }

    #[tokio::test]
    async fn one_delivery_stored_by_two_devices_at_once_ends_as_one_copy() {
        let (a, b) = (device(1).await, device(2).await);
        let id = [9u8; 32];
        let mut key = [0u8; 16];
        key.copy_from_slice(&id[..16]);
        let name = super::super::maildir::delivery_base(1_700_000_000, &id);
        for d in [&a, &b] {
            let stored =
                d.mb.append_delivered(
                    "INBOX",
                    msg("pushed", Some(name.clone())),
                    key,
                    Box::new(|_| Ok(())),
                )
                .await
                .unwrap();
            assert!(stored.is_some());
        }
        pull(&a.mb, &b.mb, 1 << 20).await;
        pull(&b.mb, &a.mb, 1 << 20).await;
        pull(&a.mb, &b.mb, 1 << 20).await;
        for d in [&a, &b] {
            assert_eq!(d.mb.messages("INBOX").unwrap().len(), 1, "one copy");
            let again =
                d.mb.append_delivered(
                    "INBOX",
                    msg("pushed", Some(name.clone())),
                    key,
                    Box::new(|_| Ok(())),
                )
                .await
                .unwrap();
            assert!(again.is_none(), "a device that hears of it later skips it");
        }
        assert_eq!(canonical(&a.mb), canonical(&b.mb));
    }

    #[tokio::test]
    async fn entries_of_a_revoked_device_after_its_revocation_are_refused() {
        let (a, b) = (device(1).await, device(2).await);
        b.mb.append("INBOX", msg("before", None)).await.unwrap();
        pull(&b.mb, &a.mb, 1 << 20).await;
        let upto = a.mb.version_vector()[&b.mb.device()];
        a.mb.set_refused([(b.mb.device(), upto)].into_iter().collect());
        b.mb.append("INBOX", msg("after", None)).await.unwrap();
        let (_, refused) = pull(&b.mb, &a.mb, 1 << 20).await;
        assert_eq!(refused, 1);
        let names: Vec<u64> =
            a.mb.messages("INBOX")
                .unwrap()
                .iter()
                .map(|m| m.size)
                .collect();
        assert_eq!(names.len(), 1, "only the entry from before the revocation");
    }
}
