//! Deliveries and renames: rename (flag changes, moves, folder renames), link (copy),
//! unlink (expunge), and what they replace.

use super::*;

impl<S: MaildirSource> Tree<S> {
    /// `unlink`: a message is expunged, a local file removed.
    pub fn unlink(&self, parent: u64, name: &str) -> Result<(), Errno> {
        // A delivery not committed yet is committed first.
        let pending = self.is_pending_name(&mut self.lock(), parent, name);
        self.settle(pending);
        let _w = self.write_lock();
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        match self.child(&mut st, &place, name)? {
            Child::Message(_, e) if is_provisional(&e.key) => Err(Errno::EIO),
            Child::Message(f, e) => {
                drop(st);
                self.source.expunge(&f, &e.key).map_err(|e| errno(&e))?;
                let mut st = self.lock();
                self.listing(&mut st, &f)?.remove(&e.key);
                if let Some(p) = st.pending.get_mut(&f) {
                    p.remove(&e.key);
                }
                st.set_bare(&f, &e.key, false);
                st.inodes.remove(&NodeKey::Message(f, e.key));
                Ok(())
            }
            Child::Local(rel, _) => {
                let path = self.local_path(&rel);
                let m = fs::symlink_metadata(&path).map_err(|e| io_errno(&e))?;
                if st.local_path.get(&m.ino()) == Some(&rel) {
                    st.local_path.remove(&m.ino());
                }
                // Its last name: kept readable by inode a while (a program may have it open).
                self.bury(&mut st, &rel).map_err(|e| io_errno(&e))?;
                Ok(())
            }
            Child::Folder(_) | Child::Sub(..) => Err(Errno::EISDIR),
        }
    }

    /// Delivers the bytes of a local file as a message named `name` in `to` (`new`/`cur`).
    /// The engine's commit runs without the state lock: `st` is given up and taken again
    /// (and handed back, whatever the outcome). Callers hold the write lock.
    pub(super) fn deliver_local<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        rel: &str,
        to: &str,
        sub: Sub,
        name: &str,
    ) -> (MutexGuard<'a, State>, Result<MessageEntry, Errno>) {
        let path = self.local_path(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => return (st, Err(io_errno(&e))),
        };
        if meta.len() > self.source.max_message_size() {
            return (st, Err(Errno::EFBIG));
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => return (st, Err(io_errno(&e))),
        };
        let keywords = self.keywords(to);
        let (base, flags) = keywords.parse_name(name);
        drop(st);
        let delivered = self.source.deliver(
            to,
            NewMessage {
                bytes,
                internal_date: meta.mtime(),
                flags,
                recent: sub == Sub::New,
                base,
            },
        );
        let mut st = self.lock();
        let entry = match delivered {
            Ok(e) => e,
            Err(e) => return (st, Err(errno(&e))),
        };
        let bare = sub == Sub::Cur && !name.contains(":2,");
        st.set_bare(to, &entry.key, bare);
        let inserted = self
            .listing(&mut st, to)
            .map(|l| l.insert(entry.clone(), &keywords, &[], bare));
        (st, inserted.map(|()| entry))
    }

    /// `rename`: delivery (tmp → new/cur), flag change, move between folders, folder rename,
    /// or a local file renamed. `noreplace` is RENAME_NOREPLACE.
    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        noreplace: bool,
    ) -> Result<(), Errno> {
        check_name(newname)?;
        // Queued flag changes go first, unless this is one more of them (a rename within one
        // folder's new/ and cur/): a move, copy or folder rename must find them committed.
        // Deliveries not committed yet are committed before anything else touches them.
        let (same_folder, pending) = {
            let mut st = self.lock();
            let same = matches!(
                (self.place(&mut st, parent), self.place(&mut st, newparent)),
                (Ok(Place::Sub(a, _)), Ok(Place::Sub(b, _))) if a == b
            );
            let pending = self.is_pending_name(&mut st, parent, name)
                || self.is_pending_name(&mut st, newparent, newname);
            (same, pending)
        };
        self.settle(!same_folder || pending);
        let _w = self.write_lock();
        let mut st = self.lock();
        let from_place = self.place(&mut st, parent)?;
        let to_place = self.place(&mut st, newparent)?;
        let src = self.child(&mut st, &from_place, name)?;
        let existing = self.child(&mut st, &to_place, newname).ok();
        if noreplace && existing.is_some() {
            return Err(Errno::EEXIST);
        }
        // Still pending after the settle above: the engine refused it for now.
        let provisional = |c: &Child| matches!(c, Child::Message(_, e) if is_provisional(&e.key));
        if provisional(&src) || existing.as_ref().is_some_and(provisional) {
            return Err(Errno::EIO);
        }
        match (src, &to_place) {
            // Delivery: queued (pending.rs), or, when the queue cannot take it, now.
            (Child::Local(rel, Some(_)), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let meta = fs::symlink_metadata(self.local_path(&rel)).map_err(|e| io_errno(&e))?;
                let b = meta.ino();
                let queued =
                    self.queue_delivery(&mut st, (&rel, &meta), to, *sub, newname, How::Move);
                let (mut st, entry) = match queued {
                    Some(r) => (st, r?),
                    None => {
                        let (g, delivered) = self.deliver_local(st, &rel, to, *sub, newname);
                        let entry = delivered?;
                        let _ = fs::remove_file(self.local_path(&rel));
                        (g, entry)
                    }
                };
                st.local_path.remove(&b);
                let new_key = NodeKey::Message(to.clone(), entry.key);
                st.inodes.rekey(&NodeKey::Local(b), &new_key);
                self.replace_existing(&mut st, existing, &new_key)
            }
            (Child::Local(_, None), Place::Sub(_, Sub::New | Sub::Cur)) => Err(Errno::EPERM),
            // Local files stay local files.
            (Child::Local(rel, _), Place::FolderDir(_) | Place::Sub(_, Sub::Tmp)) => {
                if let Some(Child::Folder(_) | Child::Sub(..)) = existing {
                    return Err(Errno::EISDIR);
                }
                if matches!(&to_place, Place::FolderDir(f) if f == INBOX)
                    && dir_folder(newname).is_some()
                    && self
                        .folders(&mut st)?
                        .contains(&dir_folder(newname).unwrap_or_default())
                {
                    return Err(Errno::EISDIR);
                }
                let new_rel = Self::local_rel(&to_place, newname);
                let to_path = self.local_path(&new_rel);
                if let Some(p) = to_path.parent() {
                    fs::create_dir_all(p).map_err(|e| io_errno(&e))?;
                }
                // The file replaced keeps its bytes for whoever has it open (Dovecot's
                // readers of `dovecot-uidlist` while another process renames a new one in).
                if let Some(Child::Local(old_rel, _)) = &existing
                    && *old_rel != rel
                    && fs::symlink_metadata(self.local_path(old_rel))
                        .map(|m| m.ino())
                        .ok()
                        != fs::symlink_metadata(self.local_path(&rel))
                            .map(|m| m.ino())
                            .ok()
                {
                    let _ = self.bury(&mut st, old_rel);
                }
                fs::rename(self.local_path(&rel), &to_path).map_err(|e| io_errno(&e))?;
                self.local_key(&mut st, &new_rel)?;
                if newname == "dovecot-keywords"
                    && let Place::FolderDir(f) = &to_place
                {
                    self.keywords_changed(&mut st, f);
                }
                if newname == "subscriptions" && to_place == Place::FolderDir(INBOX.into()) {
                    self.subscriptions_changed();
                }
                Ok(())
            }
            // Flag change or move.
            (Child::Message(f, e), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let keywords = self.keywords(to);
                let (base, mut flags) = keywords.parse_name(newname);
                // Keywords the name cannot carry (no letter here) stay as they are.
                flags.keywords.extend(keywords.hidden(&e.flags));
                // A new base name (mbsync's `,U=<uid>`) is this mount's, not the engine's.
                let rebased = base != e.base;
                if rebased && (base.is_empty() || base.contains(['/', ':'])) {
                    return Err(Errno::EINVAL);
                }
                if rebased && st.renamed.len() >= MAX_RENAMED && !st.renamed.contains_key(&e.key) {
                    return Err(Errno::ENOSPC);
                }
                if let Some(Child::Message(_, ref other)) = existing
                    && other.key == e.key
                    && !rebased
                {
                    return Ok(()); // rename onto itself
                }
                let seen_by_reader = *sub == Sub::Cur && e.recent;
                let old_key = NodeKey::Message(f.clone(), e.key.clone());
                // Within the folder, a flag change is queued: answered now, committed with
                // others in one batch (deferred.rs). A full queue commits it here.
                let changes = flags != e.flags || seen_by_reader;
                let queued = *to == f
                    && (!changes
                        || st
                            .deferred
                            .push(
                                &f,
                                &e.key,
                                Change {
                                    flags: flags.clone(),
                                    seen_by_reader,
                                },
                            )
                            .is_ok());
                let engine = || -> Result<MessageEntry, SourceError> {
                    let moved = if *to != f {
                        self.source.move_to(&f, &e.key, to)?
                    } else {
                        e.clone()
                    };
                    let mut now = moved.clone();
                    if flags != moved.flags || seen_by_reader {
                        self.source
                            .set_flags(to, &moved.key, flags.clone(), seen_by_reader)?;
                        now.flags = flags.clone();
                        if seen_by_reader {
                            now.recent = false;
                        }
                    }
                    Ok(now)
                };
                let (mut st, done) = if queued {
                    let mut now = e.clone();
                    if changes {
                        now.flags = flags.clone();
                        if seen_by_reader {
                            now.recent = false;
                        }
                        self.signal_flush();
                    }
                    (st, Ok(now))
                } else {
                    // The engine's commits run without the state lock.
                    drop(st);
                    let done = engine();
                    (self.lock(), done)
                };
                let now = match done {
                    Ok(mut now) => {
                        // A new base, or a renamed message moved to another folder (a new
                        // key there) keeps the name the client gave it.
                        if rebased || (now.key != e.key && st.renamed.contains_key(&e.key)) {
                            st.renamed.remove(&e.key);
                            // The engine has changed: a name not kept on disk is still shown
                            // until the next mount (the delivered base comes back then).
                            let _ = self.remember_base(&mut st, &now.key, &base);
                        }
                        if st.renamed.contains_key(&now.key) {
                            now.base = base.clone();
                        }
                        now
                    }
                    Err(err) => {
                        // Part of it may have happened: read both folders afresh.
                        st.listings.remove(&f);
                        st.listings.remove(to);
                        return Err(errno(&err));
                    }
                };
                if *to != f {
                    self.listing(&mut st, &f)?.remove(&e.key);
                }
                let unknown = keywords.unknown_letters(newname);
                if let Some(p) = st.pending.get_mut(&f) {
                    p.remove(&e.key);
                }
                if !unknown.is_empty() {
                    let p = st.pending.entry(to.clone()).or_default();
                    if p.len() < MAX_PENDING {
                        p.insert(now.key.clone(), unknown.clone());
                    }
                }
                let bare = !newname.contains(":2,");
                st.set_bare(&f, &e.key, false);
                st.set_bare(to, &now.key, bare);
                self.listing(&mut st, to)?
                    .insert(now.clone(), &keywords, &unknown, bare);
                let new_key = NodeKey::Message(to.clone(), now.key);
                st.inodes.rekey(&old_key, &new_key);
                self.replace_existing(&mut st, existing, &new_key)
            }
            (Child::Message(..), _) => Err(Errno::EPERM),
            // Dovecot deletes a folder by renaming it to `..DOVECOT-TRASHED` and then removing
            // that tree: the folder (and its messages) go at the rename; the name then does
            // not exist, which Dovecot takes as "already removed".
            (Child::Folder(g), Place::FolderDir(root))
                if root == INBOX && newname.starts_with("..") =>
            {
                self.source.delete_folder(&g).map_err(|e| errno(&e))?;
                self.bury_dir(&mut st, &folder_dir(&g));
                let _ = fs::remove_dir_all(self.backing.join(folder_dir(&g)));
                st.folders = None;
                st.listings.remove(&g);
                st.pending.remove(&g);
                st.fresh.remove(&g);
                for sub in [Sub::Cur, Sub::New, Sub::Tmp] {
                    st.inodes.retire(&NodeKey::Sub(g.clone(), sub));
                }
                st.inodes.retire(&NodeKey::Folder(g));
                Ok(())
            }
            // Folder rename.
            (Child::Folder(g), Place::FolderDir(root)) if root == INBOX => {
                let h = dir_folder(newname).ok_or(Errno::EINVAL)?;
                if existing.is_some() {
                    return Err(Errno::EEXIST);
                }
                self.source.rename_folder(&g, &h).map_err(|e| errno(&e))?;
                let from_dir = self.backing.join(folder_dir(&g));
                if from_dir.exists()
                    && fs::rename(&from_dir, self.backing.join(folder_dir(&h))).is_ok()
                {
                    // Open local files of the folder moved with it: their inodes follow.
                    let (from, to) = (
                        format!("{}/", folder_dir(&g)),
                        format!("{}/", folder_dir(&h)),
                    );
                    for rel in st.local_path.values_mut() {
                        if let Some(rest) = rel.strip_prefix(&from) {
                            *rel = format!("{to}{rest}");
                        }
                    }
                }
                st.folders = None;
                if let Some(l) = st.listings.remove(&g) {
                    st.listings.insert(h.clone(), l);
                }
                if let Some(m) = st.fresh.remove(&g) {
                    st.fresh.insert(h.clone(), m);
                }
                st.inodes.rekey(&NodeKey::Folder(g), &NodeKey::Folder(h));
                Ok(())
            }
            (Child::Folder(_) | Child::Sub(..), _) => Err(Errno::EPERM),
        }
    }

    /// After a rename onto an existing name: the file that was there is gone.
    pub(super) fn replace_existing(
        &self,
        st: &mut State,
        existing: Option<Child>,
        now: &NodeKey,
    ) -> Result<(), Errno> {
        match existing {
            Some(Child::Message(g, old))
                if NodeKey::Message(g.clone(), old.key.clone()) != *now =>
            {
                self.source.expunge(&g, &old.key).map_err(|e| errno(&e))?;
                self.listing(st, &g)?.remove(&old.key);
                Ok(())
            }
            Some(Child::Local(rel, _)) => {
                if self.bury(st, &rel).is_err() {
                    let _ = fs::remove_file(self.local_path(&rel));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `link`: a message or a `tmp/` file linked into `new/`/`cur/` is delivered there (a
    /// copy); a message linked into `tmp/` becomes a local file with its bytes; local files
    /// link as usual.
    pub fn link(&self, ino: u64, newparent: u64, newname: &str) -> Result<Attr, Errno> {
        // A copy of a message must find its queued changes committed; a `tmp/` file linked
        // into `new/` (a delivery) need not wait for the others.
        let message = matches!(self.lock().inodes.key(ino), Some(NodeKey::Message(..)));
        self.settle(message);
        check_name(newname)?;
        let _w = self.write_lock();
        let mut st = self.lock();
        let key = self.key(&st, ino)?;
        let to_place = self.place(&mut st, newparent)?;
        if self.child(&mut st, &to_place, newname).is_ok() {
            return Err(Errno::EEXIST);
        }
        match (&key, &to_place) {
            (NodeKey::Message(_, k), _) if is_provisional(k) => Err(Errno::EIO),
            (NodeKey::Message(f, k), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let e = self
                    .listing(&mut st, f)?
                    .entries
                    .get(k)
                    .cloned()
                    .ok_or(Errno::ENOENT)?;
                let keywords = self.keywords(to);
                let (base, mut flags) = keywords.parse_name(newname);
                flags.keywords.extend(keywords.hidden(&e.flags));
                let entry = if base == e.base && flags == e.flags && to != f {
                    self.source.copy_to(f, k, to).map_err(|e| errno(&e))?
                } else {
                    let bytes = self.source.read(k).map_err(|e| errno(&e))?;
                    self.source
                        .deliver(
                            to,
                            NewMessage {
                                bytes: bytes.to_vec(),
                                internal_date: e.internal_date,
                                flags,
                                recent: *sub == Sub::New,
                                base,
                            },
                        )
                        .map_err(|e| errno(&e))?
                };
                self.listing(&mut st, to)?
                    .insert(entry.clone(), &keywords, &[], false);
                self.attr_of(&mut st, &NodeKey::Message(to.clone(), entry.key))
            }
            (NodeKey::Message(_, k), Place::Sub(_, Sub::Tmp)) => {
                let bytes = self.source.read(k).map_err(|e| errno(&e))?;
                let rel = Self::local_rel(&to_place, newname);
                let path = self.local_path(&rel);
                if let Some(p) = path.parent() {
                    fs::create_dir_all(p).map_err(|e| io_errno(&e))?;
                }
                fs::write(&path, &*bytes).map_err(|e| io_errno(&e))?;
                let key = self.local_key(&mut st, &rel)?;
                self.attr_of(&mut st, &key)
            }
            (NodeKey::Local(b), Place::Sub(to, sub @ (Sub::New | Sub::Cur))) => {
                let (rel, meta) = self.local_checked(&st, *b)?;
                let (mut st, entry) =
                    match self.queue_delivery(&mut st, (&rel, &meta), to, *sub, newname, How::Link)
                    {
                        Some(r) => (st, r?),
                        None => {
                            let (g, delivered) = self.deliver_local(st, &rel, to, *sub, newname);
                            (g, delivered?)
                        }
                    };
                self.attr_of(&mut st, &NodeKey::Message(to.clone(), entry.key))
            }
            (NodeKey::Local(b), _) => {
                let rel = self.local_rel_checked(&st, *b)?;
                let new_rel = Self::local_rel(&to_place, newname);
                let path = self.local_path(&new_rel);
                if let Some(p) = path.parent() {
                    fs::create_dir_all(p).map_err(|e| io_errno(&e))?;
                }
                fs::hard_link(self.local_path(&rel), &path).map_err(|e| io_errno(&e))?;
                // Same backing inode, so the same number: a hard link, as the caller expects.
                let key = self.local_key(&mut st, &new_rel)?;
                self.attr_of(&mut st, &key)
            }
            (NodeKey::Message(..), _) => Err(Errno::EPERM),
            _ => Err(Errno::EPERM),
        }
    }
}
