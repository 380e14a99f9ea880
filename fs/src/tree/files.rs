//! Open files: handles, reads and writes of messages and local files, create, setattr, statfs.

use super::*;

impl<S: MaildirSource> Tree<S> {
    pub(super) fn add_handle(&self, st: &mut State, h: Handle) -> Result<u64, Errno> {
        if st.handles.len() >= MAX_HANDLES {
            return Err(Errno::ENFILE);
        }
        let fh = st.next_handle;
        st.next_handle += 1;
        st.handles.insert(fh, Arc::new(h));
        Ok(fh)
    }

    pub(super) fn handle(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        self.lock().handles.get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub(super) fn open_local(
        &self,
        rel: &str,
        mode: OpenMode,
        create: bool,
    ) -> Result<File, Errno> {
        let path = self.local_path(rel);
        let open = || {
            OpenOptions::new()
                .read(mode.read || !mode.write)
                .write(mode.write)
                .append(mode.append)
                .truncate(mode.truncate)
                .create(create)
                .create_new(create && mode.exclusive)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        match open() {
            // The backing directory is made on first use (not on every create: deliveries).
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_errno(&e))?;
                }
                open().map_err(|e| io_errno(&e))
            }
            r => r.map_err(|e| io_errno(&e)),
        }
    }

    /// Opens a file; returns a handle for read/write/release.
    pub fn open(&self, ino: u64, mode: OpenMode) -> Result<u64, Errno> {
        let mut key = {
            let st = self.lock();
            self.key(&st, ino)?
        };
        if let NodeKey::Message(_, k) = &key
            && is_provisional(k)
        {
            if let Some(fh) = self.open_pending(k, mode)? {
                return Ok(fh);
            }
            // Committed meanwhile: the node has the engine's key now.
            let st = self.lock();
            key = self.key(&st, ino)?;
        }
        match key {
            NodeKey::Message(f, k) => {
                if mode.write || mode.truncate {
                    return Err(Errno::EACCES);
                }
                let mut st = self.lock();
                let size = {
                    let l = self.listing(&mut st, &f)?;
                    l.entries.get(&k).ok_or(Errno::ENOENT)?.size
                };
                let h = Handle::Message {
                    key: k,
                    size,
                    bytes: OnceLock::new(),
                };
                self.add_handle(&mut st, h)
            }
            NodeKey::Local(b) => {
                let mut st = self.lock();
                let rel = self.local_rel_checked(&st, b)?;
                let in_tmp = is_tmp_rel(&rel);
                let file = self.open_local(&rel, mode, false)?;
                let file = Arc::new(file);
                self.add_handle(&mut st, Handle::Local { file, in_tmp, ino })
            }
            _ => Err(Errno::EISDIR),
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.read_handle(&*self.handle(fh)?, offset, size)
    }

    pub(super) fn read_handle(&self, h: &Handle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        match h {
            Handle::Dir(_) => Err(Errno::EISDIR),
            Handle::Message {
                key,
                size: expected,
                bytes,
            } => {
                let bytes = match bytes.get() {
                    Some(b) => b,
                    None => {
                        self.prefetch_after(key);
                        // Fetched outside the lock (the engine may decrypt or fetch); two
                        // first reads at once both fetch, one copy is kept.
                        let b = self.source.read(key).map_err(|e| errno(&e))?;
                        if b.len() as u64 != *expected {
                            return Err(Errno::EIO);
                        }
                        bytes.get_or_init(|| b)
                    }
                };
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Handle::Local { file, .. } => {
                // The kernel asks for at most max_read (128 KiB); bound it anyway.
                let mut buf = vec![0; (size as usize).min(MAX_READ)];
                let mut n = 0;
                while n < buf.len() {
                    match file.read_at(&mut buf[n..], offset.saturating_add(n as u64)) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_errno(&e)),
                    }
                }
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        match &*self.handle(fh)? {
            Handle::Message { .. } => Err(Errno::EACCES),
            Handle::Dir(_) => Err(Errno::EISDIR),
            Handle::Local { file, in_tmp, .. } => self.write_local(file, *in_tmp, offset, data),
        }
    }

    /// Writes to a local file (a `tmp/` one within the message size limit).
    pub(super) fn write_local(
        &self,
        file: &File,
        in_tmp: bool,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        let end = offset.saturating_add(data.len() as u64);
        if in_tmp && end > self.source.max_message_size() {
            return Err(Errno::EFBIG);
        }
        file.write_all_at(data, offset).map_err(|e| io_errno(&e))?;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    /// A file in `tmp/` has its bytes synced, as on a disk: a delivery agent that fsyncs the
    /// file before the rename (and not the directory after it, as many do) has its bytes on
    /// disk when the rename is queued (pending.rs), and the rename itself is as durable as a
    /// disk's un-synced rename; `fsync` of the directory commits it to the engine. Other
    /// local files (Dovecot's index and uidlist) are synced; a message or directory commits
    /// what is queued.
    pub fn fsync(&self, fh: u64) -> Result<(), Errno> {
        match &*self.handle(fh)? {
            Handle::Message { .. } | Handle::Dir(_) => self.flush(),
            Handle::Local {
                file, in_tmp: true, ..
            } => file.sync_data().map_err(|e| io_errno(&e)),
            Handle::Local { file, .. } => file.sync_all().map_err(|e| io_errno(&e)),
        }
    }

    /// The backing file of handle `fh` if it is a local file's (what FUSE passthrough hands
    /// to the kernel).
    pub fn local_file(&self, fh: u64) -> Option<Arc<File>> {
        match &*self.handle(fh).ok()? {
            Handle::Local { file, .. } => Some(Arc::clone(file)),
            _ => None,
        }
    }

    /// Whether node `ino` is a message (`false`: a local file; EISDIR: a directory).
    pub fn is_message(&self, ino: u64) -> Result<bool, Errno> {
        let st = self.lock();
        match self.key(&st, ino)? {
            NodeKey::Message(..) => Ok(true),
            NodeKey::Local(_) => Ok(false),
            _ => Err(Errno::EISDIR),
        }
    }

    /// Whether `fh` is an open message (immutable bytes: the kernel may cache them).
    pub fn is_message_handle(&self, fh: u64) -> bool {
        self.handle(fh)
            .is_ok_and(|h| matches!(&*h, Handle::Message { .. }))
    }

    pub fn release(&self, fh: u64) {
        self.lock().handles.remove(&fh);
    }

    pub fn statfs(&self) -> Result<StatFs, Errno> {
        let (used, allowed) = self.source.quota().map_err(|e| errno(&e))?;
        let blocks = allowed.div_ceil(4096);
        let used = used.div_ceil(4096);
        Ok(StatFs {
            blocks,
            bfree: blocks.saturating_sub(used),
            files: self.lock().inodes.len() as u64,
        })
    }

    // ----- writing -----

    /// Creates (and opens) a file: only local files, in `tmp/` or beside `cur/new/tmp`.
    pub fn create(&self, parent: u64, name: &str, mode: OpenMode) -> Result<(Attr, u64), Errno> {
        check_name(name)?;
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        match &place {
            Place::Sub(_, Sub::New | Sub::Cur) if name != WAKE_NAME => return Err(Errno::EACCES),
            Place::Sub(_, Sub::New | Sub::Cur) => {}
            Place::FolderDir(f) => {
                if Sub::from_name(name).is_some() {
                    return Err(Errno::EEXIST);
                }
                // A dot-file at the root is a local file (mbsync's `.uidvalidity` and
                // `.mbsyncstate`) unless a folder has that name.
                if f == INBOX
                    && let Some(g) = dir_folder(name)
                    && self.folders(&mut st)?.contains(&g)
                {
                    return Err(Errno::EEXIST);
                }
            }
            Place::Sub(_, Sub::Tmp) => {}
        }
        let rel = Self::local_rel(&place, name);
        let in_tmp = matches!(place, Place::Sub(_, Sub::Tmp));
        let mode = OpenMode {
            write: true,
            ..mode
        };
        let spare = if in_tmp {
            self.spares.take(&self.local_path(&rel))
        } else {
            Spare::None
        };
        let file = match spare {
            Spare::Exists if mode.exclusive => return Err(Errno::EEXIST),
            Spare::Taken => {
                let f = self.open_local(&rel, mode, false)?;
                f.set_modified(SystemTime::now())
                    .map_err(|e| io_errno(&e))?;
                f
            }
            Spare::Exists | Spare::None => self.open_local(&rel, mode, true)?,
        };
        let m = file.metadata().map_err(|e| io_errno(&e))?;
        st.local_path.insert(m.ino(), rel);
        let attr = self.local_attr(st.inodes.ino(&NodeKey::Local(m.ino())), &m, true);
        let file = Arc::new(file);
        if in_tmp {
            self.remember_made(m.ino(), &file);
        }
        let fh = self.add_handle(
            &mut st,
            Handle::Local {
                file,
                in_tmp,
                ino: attr.ino,
            },
        )?;
        Ok((attr, fh))
    }

    /// `chmod`, `truncate`, `utime`: truncation only of local files (and within the message
    /// limit in `tmp/`); times and modes of local files are kept; the rest is accepted and
    /// ignored (a message's mtime is its internal date).
    pub fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<Attr, Errno> {
        let mut st = self.lock();
        let key = self.key(&st, ino)?;
        match &key {
            NodeKey::Message(..) if size.is_some() => return Err(Errno::EACCES),
            NodeKey::Local(b) => {
                let rel = self.local_rel_checked(&st, *b)?;
                let path = self.local_path(&rel);
                if let Some(size) = size {
                    let in_tmp = is_tmp_rel(&rel);
                    if in_tmp && size > self.source.max_message_size() {
                        return Err(Errno::EFBIG);
                    }
                    let f = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)
                        .map_err(|e| io_errno(&e))?;
                    f.set_len(size).map_err(|e| io_errno(&e))?;
                }
                if let Some(t) = mtime {
                    let f = File::open(&path).map_err(|e| io_errno(&e))?;
                    f.set_modified(t).map_err(|e| io_errno(&e))?;
                }
                if let Some(m) = mode {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&path, fs::Permissions::from_mode(m & 0o777))
                        .map_err(|e| io_errno(&e))?;
                }
            }
            _ => {}
        }
        self.attr_of(&mut st, &key)
    }
}
