//! Reading the mailbox: folders, messages, numbering, bodies (through the cache).

use super::*;

impl Mailbox {
    /// Every visible folder, INBOX first.
    pub fn folders(&self) -> Vec<FolderInfo> {
        let e = self.read_engine();
        e.crdt.folders().into_iter().map(|f| info(&e, f)).collect()
    }

    /// Bytes of sealed bodies stored now: what [`Mailbox::quota`] limits.
    pub async fn storage_used(&self) -> Result<u64> {
        Ok(self.inner.store.stats().await?.object_bytes)
    }

    /// Names of deleted folders that are still subscribed (at most `max`, by name); see
    /// [`crdt::State::subscribed_deleted`].
    pub fn subscribed_deleted(&self, max: usize) -> Vec<String> {
        let e = self.read_engine();
        let mut v: Vec<String> = e
            .crdt
            .subscribed_deleted()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        v.dedup();
        v.truncate(max);
        v
    }

    /// Every visible folder's id, name and subscription, INBOX first: [`Mailbox::folders`]
    /// without the message counts, which cost a pass over the whole mailbox.
    pub fn folder_names(&self) -> Vec<(FolderId, String, bool)> {
        let e = self.read_engine();
        e.crdt
            .folders()
            .into_iter()
            .map(|f| (f.id, f.name, f.subscribed))
            .collect()
    }

    /// A folder by name (`inbox` in any case is INBOX). Costs one pass over that folder's
    /// messages (for the unseen and recent counts), not over the mailbox.
    pub fn folder(&self, name: &str) -> Option<FolderInfo> {
        let e = self.read_engine();
        let v = find(&e, name)?;
        Some(info(&e, v))
    }

    pub(super) fn folder_id(&self, name: &str) -> Result<FolderId> {
        find(&self.read_engine(), name)
            .map(|f| f.id)
            .ok_or_else(|| Error::NoSuchFolder(name.to_string()))
    }

    /// The messages of a folder, by UID.
    pub fn messages(&self, folder: &str) -> Result<Vec<MessageInfo>> {
        let id = self.folder_id(folder)?;
        Ok(self.messages_of(id))
    }

    /// The messages of a folder by id, by UID.
    pub fn messages_of(&self, folder: FolderId) -> Vec<MessageInfo> {
        self.messages_mapped(folder, |m| m)
    }

    /// [`Mailbox::messages`], each message turned into a `T` as it is read: a caller keeping
    /// its own form (the FUSE tree) builds no list of [`MessageInfo`] first (with 100k
    /// messages that was 16 MiB allocated and freed at each listing).
    pub fn messages_map<T>(&self, folder: &str, f: impl FnMut(MessageInfo) -> T) -> Result<Vec<T>> {
        let id = self.folder_id(folder)?;
        Ok(self.messages_mapped(id, f))
    }

    /// One message of a folder by entry, turned into a `T` (`None`: not in that folder). The
    /// FUSE mount checks the messages a change names against what it shows, instead of
    /// listing the whole folder again.
    pub fn message_map<T>(
        &self,
        folder: &str,
        entry: EntryId,
        f: impl FnOnce(MessageInfo) -> T,
    ) -> Result<Option<T>> {
        let id = self.folder_id(folder)?;
        let e = self.read_engine();
        let Some(&(uid, modseq)) = e.uids.get(&id).and_then(|u| u.by_entry.get(&entry)) else {
            return Ok(None);
        };
        Ok(message_info(&e, entry, uid, modseq).map(f))
    }

    pub(super) fn messages_mapped<T>(
        &self,
        folder: FolderId,
        mut f: impl FnMut(MessageInfo) -> T,
    ) -> Vec<T> {
        let e = self.read_engine();
        let Some(u) = e.uids.get(&folder) else {
            return Vec::new();
        };
        u.by_uid
            .iter()
            .filter_map(|(uid, entry)| {
                let modseq = u.by_entry.get(entry).map_or(0, |(_, m)| *m);
                message_info(&e, *entry, *uid, modseq).map(&mut f)
            })
            .collect()
    }

    /// A folder's UIDVALIDITY, allocated now if none of its messages has been numbered yet:
    /// an IMAP client must see the same value before and after the first message arrives.
    pub async fn uidvalidity(&self, folder: FolderId) -> Result<u32> {
        if let Some(u) = self.read_engine().uids.get(&folder)
            && u.uidvalidity != 0
        {
            return Ok(u.uidvalidity);
        }
        let _w = self.inner.write.lock().await;
        self.settle().await;
        let now = (now_ms() / 1000) as u32;
        let head = self
            .inner
            .store
            .transact(move |tx| -> Result<[u8; 16]> {
                let fkey = folder.to_bytes();
                if let Some(v) = tx.get(Table::FolderUids, &fkey)?
                    && let Ok(h) = <[u8; 16]>::try_from(v.as_slice())
                {
                    return Ok(h);
                }
                let h = fresh_head(tx, now)?;
                tx.put(Table::FolderUids, &fkey, &h)?;
                Ok(h)
            })
            .await?;
        let mut e = self.write_engine();
        let f = e.uids.entry(folder).or_default();
        if f.uidvalidity == 0 {
            f.uidvalidity = u32::from_be_bytes(head[0..4].try_into().unwrap_or([0; 4]));
            f.uidnext = f
                .uidnext
                .max(u32::from_be_bytes(head[4..8].try_into().unwrap_or([0; 4])));
        }
        Ok(f.uidvalidity)
    }

    /// The cheap listing of a folder an IMAP session keeps: (uid, entry, modseq, seen) by UID.
    pub fn uid_map(&self, folder: FolderId) -> Vec<(u32, EntryId, u64, bool)> {
        let e = self.read_engine();
        let Some(u) = e.uids.get(&folder) else {
            return Vec::new();
        };
        u.by_uid
            .iter()
            .filter(|(_, entry)| e.crdt.entry(**entry).is_some())
            .map(|(uid, entry)| {
                let modseq = u.by_entry.get(entry).map_or(0, |(_, m)| *m);
                (*uid, *entry, modseq, e.crdt.flags(*entry).has(Flag::Seen))
            })
            .collect()
    }

    /// Some messages of a folder by entry, under one read lock: `None` for an entry no longer
    /// there. For sessions that keep their own sequence-number map (IMAP) and must not re-list
    /// a large folder per command.
    pub fn messages_by_entry(
        &self,
        folder: FolderId,
        entries: &[EntryId],
    ) -> Vec<Option<MessageInfo>> {
        self.by_entry(folder, entries, true)
    }

    /// [`Mailbox::messages_by_entry`] with `maildir_name` left empty (no allocation per
    /// message): for IMAP, which never shows it, on commands over a whole large folder.
    pub fn messages_by_entry_light(
        &self,
        folder: FolderId,
        entries: &[EntryId],
    ) -> Vec<Option<MessageInfo>> {
        self.by_entry(folder, entries, false)
    }

    fn by_entry(
        &self,
        folder: FolderId,
        entries: &[EntryId],
        with_name: bool,
    ) -> Vec<Option<MessageInfo>> {
        let e = self.read_engine();
        let u = e.uids.get(&folder);
        entries
            .iter()
            .map(|entry| {
                e.crdt.entry(*entry).filter(|r| r.folder == folder)?;
                let (uid, modseq) = *u?.by_entry.get(entry)?;
                describe(&e, *entry, uid, modseq, with_name)
            })
            .collect()
    }

    /// A canonical description of the merged state (folders → messages and flags), equal on
    /// every device that has seen the same ops.
    pub fn canonical(&self) -> BTreeMap<String, Vec<(String, String, bool)>> {
        self.read_engine().crdt.canonical()
    }

    /// The bytes of a message.
    pub async fn read(&self, entry: EntryId) -> Result<Arc<Vec<u8>>> {
        self.read_with(entry, true).await
    }

    /// [`Mailbox::read`] that leaves the cache as it is (a hit is still used): for readers
    /// with a cache of their own, such as the FUSE mount (the kernel's page cache keeps a
    /// message's pages), where a second copy here would only cost memory.
    pub async fn read_uncached(&self, entry: EntryId) -> Result<Arc<Vec<u8>>> {
        self.read_with(entry, false).await
    }

    pub(super) async fn read_with(&self, entry: EntryId, keep: bool) -> Result<Arc<Vec<u8>>> {
        let message = match self.body(entry)? {
            Body::Cached(hit) => return Ok(hit),
            Body::Stored(message) => message,
        };
        let sealed = self.inner.store.get_object(message.object).await?;
        let plain = open_stored(&message, sealed)?;
        if keep {
            self.cache().insert(message.object, Arc::clone(&plain));
        }
        Ok(plain)
    }

    /// Where an entry's body is.
    pub(super) fn body(&self, entry: EntryId) -> Result<Body> {
        let message = {
            let e = self.read_engine();
            Arc::clone(&e.crdt.entry(entry).ok_or(Error::NoSuchMessage)?.message)
        };
        Ok(match self.cache().get(&message.object) {
            Some(hit) => Body::Cached(hit),
            None => Body::Stored(message),
        })
    }

    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a message's body is: in the cache, or to be read from the store.
pub(super) enum Body {
    Cached(Arc<Vec<u8>>),
    Stored(Arc<MessageRef>),
}

/// A body read from the store (`None`: not held here), opened.
pub(super) fn open_stored(
    message: &MessageRef,
    sealed: Option<SealedObject>,
) -> Result<Arc<Vec<u8>>> {
    let sealed = sealed.ok_or(Error::ContentMissing(message.object))?;
    Ok(Arc::new(sealed.open(&message.content_key())?))
}

/// What the engine knows of `entry` with its numbering here (`None` if it is not a live entry).
pub(super) fn message_info(
    e: &Engine,
    entry: EntryId,
    uid: u32,
    modseq: u64,
) -> Option<MessageInfo> {
    describe(e, entry, uid, modseq, true)
}

/// A message's description; `with_name: false` leaves `maildir_name` empty (no allocation).
fn describe(
    e: &Engine,
    entry: EntryId,
    uid: u32,
    modseq: u64,
    with_name: bool,
) -> Option<MessageInfo> {
    let rec = e.crdt.entry(entry)?;
    Some(MessageInfo {
        entry,
        uid,
        modseq,
        object: rec.message.object,
        size: rec.message.size,
        internal_date: rec.message.internal_date,
        flags: e.crdt.flags(entry),
        recent: e.crdt.recent(entry),
        maildir_name: if with_name {
            rec.message.maildir_name.clone()
        } else {
            String::new()
        },
    })
}

impl Mailbox {
    /// UIDs of `folder` expunged (or moved away) with a MODSEQ above `modseq`, ascending: what
    /// an IMAP QRESYNC client that last saw `modseq` must be told has VANISHED (RFC 7162).
    /// Read from the `uids` rows, which keep a removed message's UID with the MODSEQ of its
    /// removal and a "gone" mark (see [`number_rows`]); costs a scan of that folder's rows.
    pub async fn vanished_since(&self, folder: FolderId, modseq: u64) -> Result<Vec<u32>> {
        let fkey = folder.to_bytes();
        let rows = self
            .inner
            .store
            .read(move |rx| -> Result<_> { Ok(rx.prefix(Table::Uids, &fkey)?) })
            .await?;
        let mut uids: Vec<u32> = rows
            .into_iter()
            .filter(|(k, v)| k.len() == 40 && v.len() == 13 && v[12] != 0)
            .filter_map(|(_, v)| {
                let uid = u32::from_be_bytes(v[0..4].try_into().ok()?);
                let ms = u64::from_be_bytes(v[4..12].try_into().ok()?);
                (ms > modseq).then_some(uid)
            })
            .collect();
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }
}

impl Mailbox {
    /// A folder's HIGHESTMODSEQ (RFC 7162): the MODSEQ of its last change here, 0 if none.
    /// Cheap (no pass over the folder), for answers that carry it after each command.
    pub fn highest_modseq(&self, folder: FolderId) -> u64 {
        self.read_engine()
            .uids
            .get(&folder)
            .map_or(0, |u| u.highestmodseq)
    }
}

impl Mailbox {
    /// The messages of a folder not yet seen by a mail reader (IMAP's `\Recent` candidates),
    /// as (uid, entry) by UID. One pass over the folder's numbering, no message built.
    pub fn recent_in(&self, folder: FolderId) -> Vec<(u32, EntryId)> {
        let e = self.read_engine();
        let Some(u) = e.uids.get(&folder) else {
            return Vec::new();
        };
        u.by_uid
            .iter()
            .filter(|(_, entry)| e.crdt.entry(**entry).is_some() && e.crdt.recent(**entry))
            .map(|(uid, entry)| (*uid, *entry))
            .collect()
    }
}
