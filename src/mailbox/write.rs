//! Writing the mailbox: appends, flags, copies and moves, expunges, folders. Each call is
//! one commit (see [`Mailbox::commit_with`](super::Mailbox)).

use super::*;

impl Mailbox {
    /// Appends one message to a folder.
    pub async fn append(&self, folder: &str, msg: NewMessage) -> Result<MessageInfo> {
        let w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        self.check_quota(std::iter::once(&msg)).await?;
        let mut v = self
            .append_releasing(vec![(folder_id, msg)], None, Some(w))
            .await?;
        v.pop().ok_or(Error::NoSuchMessage)
    }

    /// Appends messages to a folder, a few hundred per log entry (one durable commit each).
    pub async fn append_batch(
        &self,
        folder: &str,
        msgs: Vec<NewMessage>,
    ) -> Result<Vec<MessageInfo>> {
        let _w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        self.check_quota(msgs.iter()).await?;
        let mut out = Vec::with_capacity(msgs.len());
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let chunk = msgs.by_ref().take(BATCH).map(|m| (folder_id, m)).collect();
            out.extend(self.append_locked(chunk, None).await?);
        }
        Ok(out)
    }

    /// Appends messages, each to its own folder, in ONE log entry (one durable commit), all
    /// or none: what the FUSE mount's queued deliveries become. Returns them in order.
    pub async fn append_many(&self, items: Vec<(String, NewMessage)>) -> Result<Vec<MessageInfo>> {
        let w = self.inner.write.lock().await;
        let mut ids: HashMap<String, FolderId> = HashMap::new();
        let mut msgs = Vec::with_capacity(items.len());
        for (folder, m) in items {
            let id = match ids.get(&folder) {
                Some(id) => *id,
                None => {
                    let id = self.folder_id(&folder)?;
                    ids.insert(folder, id);
                    id
                }
            };
            msgs.push((id, m));
        }
        self.check_quota(msgs.iter().map(|(_, m)| m)).await?;
        self.append_releasing(msgs, None, Some(w)).await
    }

    /// Appends one message, and makes the caller's `also` write in the same durable commit
    /// (e.g. delivery remembering that this message arrived: both or neither survive a
    /// crash).
    pub async fn append_with(
        &self,
        folder: &str,
        msg: NewMessage,
        also: AlsoWrite,
    ) -> Result<MessageInfo> {
        let w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        self.check_quota(std::iter::once(&msg)).await?;
        let mut v = self
            .append_releasing(vec![(folder_id, msg)], Some(also), Some(w))
            .await?;
        v.pop().ok_or(Error::NoSuchMessage)
    }

    /// Refuses messages that would take the store over its quota (if one is set).
    async fn check_quota(&self, msgs: impl Iterator<Item = &NewMessage>) -> Result<()> {
        if let Some(quota) = self.quota() {
            // A sealed body is its plaintext plus a 42-byte header and tag.
            let needed: u64 = msgs.map(|m| m.bytes.len() as u64 + 42).sum();
            let used = self.inner.store.stats().await?.object_bytes;
            if used.saturating_add(needed) > quota {
                return Err(Error::OverQuota {
                    used,
                    quota,
                    needed,
                });
            }
        }
        Ok(())
    }

    /// One log entry adding `msgs` (each to its folder), with `also` in its commit; the write
    /// lock is held by the caller. Returns the messages as numbered, in order.
    pub(super) async fn append_locked(
        &self,
        msgs: Vec<(FolderId, NewMessage)>,
        also: Option<AlsoWrite>,
    ) -> Result<Vec<MessageInfo>> {
        self.append_releasing(msgs, also, None).await
    }

    /// [`Mailbox::append_locked`] that lets go of the write lock `w` (when given) once the
    /// messages are applied to memory, before they are durable (see group.rs).
    async fn append_releasing(
        &self,
        msgs: Vec<(FolderId, NewMessage)>,
        also: Option<AlsoWrite>,
        w: Option<tokio::sync::MutexGuard<'_, ()>>,
    ) -> Result<Vec<MessageInfo>> {
        let mut ops = Vec::with_capacity(msgs.len());
        let mut objects = Vec::with_capacity(msgs.len());
        let mut folders = Vec::with_capacity(msgs.len());
        for (folder_id, m) in msgs {
            if m.bytes.is_empty() {
                return Err(Error::Empty);
            }
            let (sealed, key) = SealedObject::seal(&m.bytes)?;
            let object = sealed.id();
            let maildir_name = match m.maildir_name {
                Some(n) => {
                    if !maildir::valid_base(&n) {
                        return Err(Error::InvalidName(n, "not a Maildir base name"));
                    }
                    n
                }
                None => maildir::derived_base(m.internal_date, &object),
            };
            for k in &m.flags.keywords {
                if !model::valid_keyword(k) {
                    return Err(Error::InvalidName(k.clone(), "not a valid keyword"));
                }
            }
            ops.push(Op::Add {
                folder: folder_id,
                message: MessageRef {
                    object,
                    key: *key.as_bytes(),
                    size: m.bytes.len() as u64,
                    internal_date: m.internal_date,
                    maildir_name,
                },
                flags: m.flags,
                recent: m.recent,
            });
            objects.push(sealed);
            folders.push(folder_id);
        }
        let ids = self.commit_grouped(ops, objects, also, w).await?;
        let e = self.read_engine();
        let mut out = Vec::with_capacity(ids.len());
        for (id, folder_id) in ids.into_iter().zip(folders) {
            let u = e.uids.get(&folder_id);
            if let Some((uid, modseq)) = u.and_then(|u| u.by_entry.get(&id)) {
                out.extend(message_info(&e, id, *uid, *modseq));
            }
        }
        Ok(out)
    }

    /// Changes flags of entries of a folder. `seen_by_reader` also moves them out of `new/`.
    pub async fn set_flags(
        &self,
        folder: &str,
        entries: &[EntryId],
        mode: FlagMode,
        flags: &Flags,
        seen_by_reader: bool,
    ) -> Result<()> {
        self.set_flags_in(folder, entries, mode, flags, seen_by_reader, false)
            .await
    }

    /// [`Mailbox::set_flags`], skipping entries no longer in the folder (expunged or moved
    /// by someone else since the caller looked; checked under the write lock). IMAP STORE
    /// on a set that includes such messages succeeds for the rest (RFC 3501 §6.4.6).
    pub async fn set_flags_present(
        &self,
        folder: &str,
        entries: &[EntryId],
        mode: FlagMode,
        flags: &Flags,
        seen_by_reader: bool,
    ) -> Result<()> {
        self.set_flags_in(folder, entries, mode, flags, seen_by_reader, true)
            .await
    }

    async fn set_flags_in(
        &self,
        folder: &str,
        entries: &[EntryId],
        mode: FlagMode,
        flags: &Flags,
        seen_by_reader: bool,
        skip_gone: bool,
    ) -> Result<()> {
        let w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        for k in &flags.keywords {
            if !model::valid_keyword(k) {
                return Err(Error::InvalidName(k.clone(), "not a valid keyword"));
            }
        }
        let mut ops = Vec::new();
        {
            let e = self.read_engine();
            for entry in entries {
                match e.crdt.entry(*entry) {
                    Some(rec) if rec.folder == folder_id => {}
                    _ if skip_gone => continue,
                    _ => return Err(Error::NoSuchMessage),
                }
                ops.extend(flag_op(&e, *entry, mode, flags, seen_by_reader)?);
            }
        }
        if ops.is_empty() && skip_gone {
            return Ok(());
        }
        self.commit_releasing(w, ops, Vec::new()).await?;
        Ok(())
    }

    /// Sets each entry's flags to its own value (system flags and keywords replaced) in one
    /// durable commit: a batch of flag changes made elsewhere (the FUSE mount's renames).
    /// Entries no longer in the folder named with them are skipped (moved or expunged since).
    /// Returns how many entries changed.
    pub async fn set_flags_each(
        &self,
        items: Vec<(String, EntryId, Flags, bool)>,
    ) -> Result<usize> {
        let w = self.inner.write.lock().await;
        for (_, _, flags, _) in &items {
            for k in &flags.keywords {
                if !model::valid_keyword(k) {
                    return Err(Error::InvalidName(k.clone(), "not a valid keyword"));
                }
            }
        }
        let mut ops = Vec::new();
        {
            let e = self.read_engine();
            for (folder, entry, flags, seen) in &items {
                let Some(folder_id) = find(&e, folder).map(|f| f.id) else {
                    continue;
                };
                match e.crdt.entry(*entry) {
                    Some(rec) if rec.folder == folder_id => {}
                    _ => continue,
                }
                ops.extend(flag_op(&e, *entry, FlagMode::Replace, flags, *seen)?);
            }
        }
        let n = ops.len();
        self.commit_releasing(w, ops, Vec::new()).await?;
        Ok(n)
    }

    /// Copies entries into another folder; returns (source entry, new message) pairs.
    pub async fn copy(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        self.transfer(from, entries, to, false, false).await
    }

    /// [`Mailbox::copy`] (`moving`: [`Mailbox::move_to`]) of the entries still in `from`
    /// under the write lock; the ones expunged or moved meanwhile are skipped (IMAP COPY and
    /// MOVE of a set that includes them succeed for the rest).
    pub async fn transfer_present(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
        moving: bool,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        self.transfer(from, entries, to, moving, true).await
    }

    /// Moves entries into another folder (add there and remove here, in one log entry).
    pub async fn move_to(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        self.transfer(from, entries, to, true, false).await
    }

    async fn transfer(
        &self,
        from: &str,
        entries: &[EntryId],
        to: &str,
        remove: bool,
        skip_gone: bool,
    ) -> Result<Vec<(EntryId, MessageInfo)>> {
        let w = self.inner.write.lock().await;
        let from_id = self.folder_id(from)?;
        let to_id = self.folder_id(to)?;
        let kept: Vec<EntryId>;
        let entries = if skip_gone {
            let e = self.read_engine();
            kept = entries
                .iter()
                .copied()
                .filter(|x| e.crdt.entry(*x).is_some_and(|r| r.folder == from_id))
                .collect();
            if kept.is_empty() {
                return Ok(Vec::new());
            }
            &kept[..]
        } else {
            entries
        };
        if remove && from_id == to_id {
            // A move into the folder it is in changes nothing (and must not copy).
            let now: HashMap<EntryId, MessageInfo> = self
                .messages_of(from_id)
                .into_iter()
                .map(|m| (m.entry, m))
                .collect();
            return entries
                .iter()
                .map(|e| {
                    now.get(e)
                        .map(|m| (*e, m.clone()))
                        .ok_or(Error::NoSuchMessage)
                })
                .collect();
        }
        let mut ops = Vec::new();
        {
            let e = self.read_engine();
            for entry in entries {
                let rec = e
                    .crdt
                    .entry(*entry)
                    .filter(|r| r.folder == from_id)
                    .ok_or(Error::NoSuchMessage)?;
                ops.push(Op::Add {
                    folder: to_id,
                    message: (*rec.message).clone(),
                    flags: e.crdt.flags(*entry),
                    recent: e.crdt.recent(*entry),
                });
            }
        }
        if remove && from_id != to_id {
            ops.push(Op::Remove {
                entries: entries.to_vec(),
            });
        }
        let ids = self.commit_releasing(w, ops, Vec::new()).await?;
        // The new messages only, not the whole destination folder.
        let infos = self.messages_by_entry(to_id, &ids);
        Ok(entries
            .iter()
            .zip(infos)
            .filter_map(|(src, m)| m.map(|m| (*src, m)))
            .collect())
    }

    /// Expunges entries of a folder.
    pub async fn expunge(&self, folder: &str, entries: &[EntryId]) -> Result<()> {
        self.expunge_in(folder, entries, false).await
    }

    /// [`Mailbox::expunge`] of the entries still in the folder under the write lock (the
    /// ones another session expunged or moved meanwhile are already gone: not an error).
    pub async fn expunge_present(&self, folder: &str, entries: &[EntryId]) -> Result<()> {
        self.expunge_in(folder, entries, true).await
    }

    async fn expunge_in(&self, folder: &str, entries: &[EntryId], skip_gone: bool) -> Result<()> {
        let w = self.inner.write.lock().await;
        let folder_id = self.folder_id(folder)?;
        let mut present = Vec::with_capacity(entries.len());
        {
            let e = self.read_engine();
            for entry in entries {
                match e.crdt.entry(*entry).filter(|r| r.folder == folder_id) {
                    Some(_) => present.push(*entry),
                    None if skip_gone => {}
                    None => return Err(Error::NoSuchMessage),
                }
            }
        }
        if present.is_empty() && skip_gone {
            return Ok(());
        }
        self.commit_releasing(w, vec![Op::Remove { entries: present }], Vec::new())
            .await?;
        Ok(())
    }

    pub async fn create_folder(&self, name: &str) -> Result<FolderId> {
        check_folder_name(name)?;
        let w = self.inner.write.lock().await;
        if name.eq_ignore_ascii_case("INBOX") || find(&self.read_engine(), name).is_some() {
            return Err(Error::FolderExists(name.to_string()));
        }
        // A user folder's id: this device, 64 random bits (no seq is known before the commit,
        // and two processes of one device must not collide), idx u32::MAX.
        let folder = OpId {
            device: self.inner.device,
            seq: u64::from_be_bytes(crypto::random_bytes()?),
            idx: u32::MAX,
        };
        self.commit_releasing(
            w,
            vec![Op::CreateFolder {
                folder,
                name: name.to_string(),
                role: None,
            }],
            Vec::new(),
        )
        .await?;
        Ok(folder)
    }

    /// Renames a folder (INBOX cannot be renamed). Its messages and UIDs stay with it.
    pub async fn rename_folder(&self, from: &str, to: &str) -> Result<()> {
        check_folder_name(to)?;
        let w = self.inner.write.lock().await;
        let f = self
            .folder(from)
            .ok_or_else(|| Error::NoSuchFolder(from.to_string()))?;
        if f.role == Some(Role::Inbox) {
            return Err(Error::NotAllowed("INBOX cannot be renamed"));
        }
        if to.eq_ignore_ascii_case("INBOX") || find(&self.read_engine(), to).is_some() {
            return Err(Error::FolderExists(to.to_string()));
        }
        self.commit_releasing(
            w,
            vec![Op::RenameFolder {
                folder: f.id,
                name: to.to_string(),
            }],
            Vec::new(),
        )
        .await?;
        Ok(())
    }

    /// Deletes a folder and the messages in it (INBOX cannot be deleted).
    pub async fn delete_folder(&self, name: &str) -> Result<()> {
        let w = self.inner.write.lock().await;
        let f = self
            .folder(name)
            .ok_or_else(|| Error::NoSuchFolder(name.to_string()))?;
        if f.role == Some(Role::Inbox) {
            return Err(Error::NotAllowed("INBOX cannot be deleted"));
        }
        let observed: Vec<EntryId> = self.read_engine().crdt.entries_in(f.id).collect();
        self.commit_releasing(
            w,
            vec![Op::DeleteFolder {
                folder: f.id,
                observed,
            }],
            Vec::new(),
        )
        .await?;
        Ok(())
    }

    /// (Un)subscribes a folder.
    /// Unsubscribing a name no visible folder has unsubscribes the deleted folders of that
    /// name that are still subscribed (RFC 3501 §6.3.7: a subscription outlives its folder).
    pub async fn subscribe_folder(&self, name: &str, subscribed: bool) -> Result<()> {
        let w = self.inner.write.lock().await;
        let ids = match self.folder_id(name) {
            Ok(id) => vec![id],
            Err(e) if subscribed => return Err(e),
            Err(e) => {
                let gone: Vec<FolderId> = self
                    .read_engine()
                    .crdt
                    .subscribed_deleted()
                    .into_iter()
                    .filter(|(_, n)| n == name)
                    .map(|(id, _)| id)
                    .collect();
                if gone.is_empty() {
                    return Err(e);
                }
                gone
            }
        };
        let ops = ids
            .into_iter()
            .map(|folder| Op::Subscribe { folder, subscribed })
            .collect();
        self.commit_releasing(w, ops, Vec::new()).await?;
        Ok(())
    }
}

/// The op that changes `entry`'s flags as asked (only what changes is written, so a no-op
/// STORE does not bump MODSEQ); `None` when nothing changes. Refused when the message would
/// end with more than 64 keywords.
fn flag_op(
    e: &Engine,
    entry: EntryId,
    mode: FlagMode,
    flags: &Flags,
    seen_by_reader: bool,
) -> Result<Option<Op>> {
    let current = e.crdt.flags(entry);
    let (set, clear, set_kw, clear_kw) = match mode {
        FlagMode::Add => (
            flags.bits,
            0,
            flags.keywords.iter().cloned().collect(),
            Vec::new(),
        ),
        FlagMode::Remove => (
            0,
            flags.bits,
            Vec::new(),
            flags.keywords.iter().cloned().collect(),
        ),
        FlagMode::Replace => (
            flags.bits,
            !flags.bits & 0x3f,
            flags.keywords.iter().cloned().collect(),
            current
                .keywords
                .difference(&flags.keywords)
                .cloned()
                .collect(),
        ),
    };
    let set = set & !current.bits;
    let clear = clear & current.bits;
    let set_kw: Vec<String> = set_kw
        .into_iter()
        .filter(|k: &String| !current.keywords.contains(k))
        .collect();
    let clear_kw: Vec<String> = clear_kw
        .into_iter()
        .filter(|k: &String| current.keywords.contains(k))
        .collect();
    let reader = seen_by_reader && e.crdt.recent(entry);
    if set == 0 && clear == 0 && set_kw.is_empty() && clear_kw.is_empty() && !reader {
        return Ok(None);
    }
    // A message keeps at most 64 keywords: more could not be copied (an `Add` carries them
    // all in one list the log's decoder bounds).
    let after = current.keywords.len() + set_kw.len() - clear_kw.len();
    if !set_kw.is_empty() && after > model::MAX_KEYWORDS {
        return Err(limits::Unloggable::TooMany {
            what: "keywords on one message",
            len: after,
            max: model::MAX_KEYWORDS,
        }
        .into());
    }
    Ok(Some(Op::SetFlags {
        entries: vec![entry],
        set,
        clear,
        set_keywords: set_kw,
        clear_keywords: clear_kw,
        seen_by_reader: reader,
    }))
}
