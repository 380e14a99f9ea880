//! Names to inodes and back: lookup, attributes, directory listings.

use super::*;

impl<S: MaildirSource> Tree<S> {
    pub(super) fn key(&self, st: &State, ino: u64) -> Result<NodeKey, Errno> {
        st.inodes.key(ino).cloned().ok_or(Errno::ENOENT)
    }

    /// The place a directory inode stands for.
    pub(super) fn place(&self, st: &mut State, ino: u64) -> Result<Place, Errno> {
        match self.key(st, ino)? {
            NodeKey::Root => Ok(Place::FolderDir(INBOX.into())),
            NodeKey::Folder(f) => {
                if !self.folder_exists(st, &f)? {
                    return Err(Errno::ENOENT);
                }
                Ok(Place::FolderDir(f))
            }
            NodeKey::Sub(f, s) => {
                if !self.folder_exists(st, &f)? {
                    return Err(Errno::ENOENT);
                }
                Ok(Place::Sub(f, s))
            }
            NodeKey::Message(..) | NodeKey::Local(_) => Err(Errno::ENOTDIR),
        }
    }

    pub(super) fn local_rel(place: &Place, name: &str) -> String {
        match place {
            Place::FolderDir(f) => {
                let d = folder_dir(f);
                if d.is_empty() {
                    name.to_string()
                } else {
                    format!("{d}/{name}")
                }
            }
            Place::Sub(f, s) => {
                let d = folder_dir(f);
                if d.is_empty() {
                    format!("{}/{name}", s.name())
                } else {
                    format!("{d}/{}/{name}", s.name())
                }
            }
        }
    }

    pub(super) fn local_path(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// What `name` in `place` is.
    pub(super) fn child(&self, st: &mut State, place: &Place, name: &str) -> Result<Child, Errno> {
        check_name(name)?;
        match place {
            Place::FolderDir(f) => {
                if let Some(s) = Sub::from_name(name) {
                    if st.fresh.get(f).is_some_and(|made| made & sub_bit(s) == 0) {
                        return Err(Errno::ENOENT);
                    }
                    return Ok(Child::Sub(f.clone(), s));
                }
                if f == INBOX
                    && let Some(g) = dir_folder(name)
                    && self.folders(st)?.contains(&g)
                {
                    return Ok(Child::Folder(g));
                }
                let rel = Self::local_rel(place, name);
                match fs::symlink_metadata(self.local_path(&rel)) {
                    Ok(m) if m.is_file() => Ok(Child::Local(rel, None)),
                    _ => Err(Errno::ENOENT),
                }
            }
            Place::Sub(f, Sub::Tmp) => {
                let rel = Self::local_rel(place, name);
                match fs::symlink_metadata(self.local_path(&rel)) {
                    Ok(m) if m.is_file() => Ok(Child::Local(rel, Some(f.clone()))),
                    _ => Err(Errno::ENOENT),
                }
            }
            Place::Sub(_, _) if name == WAKE_NAME => {
                let rel = Self::local_rel(place, name);
                match fs::symlink_metadata(self.local_path(&rel)) {
                    Ok(m) if m.is_file() => Ok(Child::Local(rel, None)),
                    _ => Err(Errno::ENOENT),
                }
            }
            Place::Sub(f, s) => {
                let l = self.listing(st, f)?;
                let e = l.by_name(*s, name).ok_or(Errno::ENOENT)?;
                Ok(Child::Message(f.clone(), e.clone()))
            }
        }
    }

    pub(super) fn child_key(&self, st: &mut State, child: &Child) -> Result<NodeKey, Errno> {
        Ok(match child {
            Child::Folder(f) => NodeKey::Folder(f.clone()),
            Child::Sub(f, s) => NodeKey::Sub(f.clone(), *s),
            Child::Message(f, e) => NodeKey::Message(f.clone(), e.key.clone()),
            Child::Local(rel, _) => self.local_key(st, rel)?,
        })
    }

    /// The key of the local file at `rel` (its backing inode), remembering the path.
    pub(super) fn local_key(&self, st: &mut State, rel: &str) -> Result<NodeKey, Errno> {
        let m = fs::symlink_metadata(self.local_path(rel)).map_err(|e| io_errno(&e))?;
        st.local_path.insert(m.ino(), rel.to_string());
        Ok(NodeKey::Local(m.ino()))
    }

    /// A path of a local file known by its backing inode.
    pub(super) fn local_rel_of(st: &State, b: u64) -> Result<String, Errno> {
        st.local_path.get(&b).cloned().ok_or(Errno::ENOENT)
    }

    /// [`Tree::local_rel_of`], checked to still hold that file, for opening or changing it.
    /// The name may hold another file by now (replaced by a rename, or unlinked and made
    /// again): opening or truncating that in this inode's stead would show a process another
    /// file's bytes under the inode it had (Dovecot read a corrupted index then, or died of
    /// SIGBUS when a short read made the kernel shrink the inode). The caller holds the
    /// state lock, which keeps the tree's own renames out meanwhile.
    pub(super) fn local_rel_checked(&self, st: &State, b: u64) -> Result<String, Errno> {
        self.local_checked(st, b).map(|(rel, _)| rel)
    }

    /// [`Tree::local_rel_checked`] with the file's metadata.
    pub(super) fn local_checked(
        &self,
        st: &State,
        b: u64,
    ) -> Result<(String, fs::Metadata), Errno> {
        let rel = Self::local_rel_of(st, b)?;
        match fs::symlink_metadata(self.local_path(&rel)) {
            Ok(m) if m.ino() == b => Ok((rel, m)),
            _ => Err(Errno::ESTALE),
        }
    }

    pub(super) fn dir_attr(&self, ino: u64, nlink: u32) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 4096,
            mtime: self.started,
            perm: 0o700,
            nlink,
            uid: self.owner.uid,
            gid: self.owner.gid,
            message: false,
        }
    }

    pub(super) fn attr_of(&self, st: &mut State, key: &NodeKey) -> Result<Attr, Errno> {
        let ino = st.inodes.ino(key);
        match key {
            NodeKey::Root => {
                let n = self.folders(st)?.iter().filter(|f| *f != INBOX).count();
                Ok(self.dir_attr(ino, 5 + n as u32))
            }
            NodeKey::Folder(f) => {
                if !self.folder_exists(st, f)? {
                    return Err(Errno::ENOENT);
                }
                Ok(self.dir_attr(ino, 5))
            }
            NodeKey::Sub(f, s) => {
                if !self.folder_exists(st, f)? {
                    return Err(Errno::ENOENT);
                }
                let mut a = self.dir_attr(ino, 2);
                a.mtime = match s {
                    Sub::Tmp => fs::metadata(
                        self.backing
                            .join(Self::local_rel(&Place::FolderDir(f.clone()), "tmp")),
                    )
                    .and_then(|m| m.modified())
                    .unwrap_or(self.started),
                    s => self.listing(st, f)?.mtime[usize::from(*s != Sub::New)],
                };
                Ok(a)
            }
            NodeKey::Message(f, k) => {
                let e = self
                    .listing(st, f)?
                    .entries
                    .get(k)
                    .cloned()
                    .ok_or(Errno::ENOENT)?;
                Ok(Attr {
                    ino,
                    kind: Kind::File,
                    size: e.size,
                    mtime: secs(e.internal_date),
                    perm: 0o600,
                    nlink: 1,
                    uid: self.owner.uid,
                    gid: self.owner.gid,
                    message: true,
                })
            }
            NodeKey::Local(b) => {
                let rel = Self::local_rel_of(st, *b)?;
                let m = fs::symlink_metadata(self.local_path(&rel)).map_err(|e| io_errno(&e))?;
                if !m.is_file() || m.ino() != *b {
                    return Err(Errno::ENOENT);
                }
                // A buried file has no name left, as an open file unlinked on a disk.
                Ok(self.local_attr(ino, &m, !rel.starts_with(implicit::GONE_DIR)))
            }
        }
    }

    /// A local file's attributes from its backing file's; `named`: it has a name in the tree.
    pub(super) fn local_attr(&self, ino: u64, m: &fs::Metadata, named: bool) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size: m.len(),
            mtime: m.modified().unwrap_or(UNIX_EPOCH),
            perm: (m.mode() & 0o777) as u16,
            // A buried file that still has names elsewhere has one link in the grave.
            nlink: if named {
                m.nlink() as u32
            } else {
                (m.nlink() as u32).saturating_sub(1)
            },
            uid: self.owner.uid,
            gid: self.owner.gid,
            message: false,
        }
    }

    // ----- reading -----

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, Errno> {
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        let child = self.child(&mut st, &place, name)?;
        let key = self.child_key(&mut st, &child)?;
        self.attr_of(&mut st, &key)
    }

    /// `fh`: an open handle, when the kernel has one (fstat). A local file unlinked while
    /// open (Dovecot's lock files) is still described through it.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, Errno> {
        let by_fh = fh.and_then(|fh| self.handle(fh).ok());
        let found = match by_fh {
            Some(h) => Ok(h),
            None => {
                let mut st = self.lock();
                match self.key(&st, ino).and_then(|k| self.attr_of(&mut st, &k)) {
                    Ok(a) => return Ok(a),
                    // An unlinked local file still open: described through its handle.
                    Err(e) => st
                        .handles
                        .values()
                        .find(|h| matches!(&***h, Handle::Local { ino: i, .. } if *i == ino))
                        .cloned()
                        .ok_or(e),
                }
            }
        };
        let h = found?;
        if let Handle::Local { file, .. } = &*h {
            let m = file.metadata().map_err(|e| io_errno(&e))?;
            return Ok(self.local_attr(ino, &m, m.nlink() > 0));
        }
        let mut st = self.lock();
        let key = self.key(&st, ino)?;
        self.attr_of(&mut st, &key)
    }

    /// Every entry of a directory, `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, Errno> {
        let mut st = self.lock();
        let place = self.place(&mut st, ino)?;
        let dir = |ino, name: &str| DirEntry {
            ino,
            kind: Kind::Dir,
            name: name.to_string(),
        };
        let mut out = Vec::new();
        match &place {
            Place::FolderDir(f) => {
                out.push(dir(ino, "."));
                out.push(dir(ROOT, ".."));
                for s in Sub::ALL {
                    if st.fresh.get(f).is_some_and(|made| made & sub_bit(s) == 0) {
                        continue;
                    }
                    let i = st.inodes.ino(&NodeKey::Sub(f.clone(), s));
                    out.push(dir(i, s.name()));
                }
                if f == INBOX {
                    let folders: Vec<String> = self
                        .folders(&mut st)?
                        .iter()
                        .filter(|g| *g != INBOX)
                        .cloned()
                        .collect();
                    for g in folders {
                        let i = st.inodes.ino(&NodeKey::Folder(g.clone()));
                        out.push(dir(i, &folder_dir(&g)));
                    }
                }
            }
            Place::Sub(f, s) => {
                let parent = if f == INBOX {
                    ROOT
                } else {
                    st.inodes.ino(&NodeKey::Folder(f.clone()))
                };
                out.push(dir(ino, "."));
                out.push(dir(parent, ".."));
                if *s != Sub::Tmp {
                    let l = self.listing(&mut st, f)?;
                    let names: Vec<(Arc<str>, MessageKey)> = l
                        .names(*s)
                        .iter()
                        .map(|(n, k)| (Arc::clone(n), k.clone()))
                        .collect();
                    self.readahead
                        .listed(ino, names.iter().map(|(_, k)| k.clone()).collect());
                    out.reserve(names.len());
                    for (name, k) in names {
                        let i = st.inodes.ino(&NodeKey::Message(f.clone(), k));
                        out.push(DirEntry {
                            ino: i,
                            kind: Kind::File,
                            name: name.to_string(),
                        });
                    }
                }
            }
        }
        // Local files of this directory.
        let rel_dir = Self::local_rel(&place, "x");
        let rel_dir = rel_dir.strip_suffix("x").unwrap_or("").to_string();
        if let Ok(rd) = fs::read_dir(self.backing.join(&rel_dir)) {
            for d in rd.flatten() {
                let Ok(ft) = d.file_type() else { continue };
                if !ft.is_file() {
                    continue;
                }
                let Some(name) = d.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name == WAKE_NAME {
                    continue;
                }
                let b = std::os::unix::fs::DirEntryExt::ino(&d);
                st.local_path.insert(b, format!("{rel_dir}{name}"));
                let i = st.inodes.ino(&NodeKey::Local(b));
                out.push(DirEntry {
                    ino: i,
                    kind: Kind::File,
                    name,
                });
            }
        }
        Ok(out)
    }

    /// `opendir`: a snapshot of the entries for `readdir`.
    /// (The snapshot itself is taken by the first `readdir`, at offset 0.)
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let mut st = self.lock();
        self.place(&mut st, ino)?;
        self.add_handle(&mut st, Handle::Dir(Arc::new(Vec::new())))
    }

    /// Entries from `offset` on, of the snapshot taken at `opendir` (offset 0 takes a new
    /// one: `rewinddir`). Without a snapshot handle, the live listing.
    pub fn readdir_at(&self, ino: u64, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let snapshot = match self.handle(fh) {
            Ok(h) => match &*h {
                Handle::Dir(d) if offset > 0 => return Ok(Arc::clone(d)),
                Handle::Dir(_) => true,
                _ => false,
            },
            Err(_) => false,
        };
        let fresh = Arc::new(self.readdir(ino)?);
        if snapshot {
            let mut st = self.lock();
            st.handles
                .insert(fh, Arc::new(Handle::Dir(Arc::clone(&fresh))));
        }
        Ok(fresh)
    }
}
