//! Folders: mkdir and rmdir of `.Name` at the root, and the subscriptions file.

use super::*;

impl<S: MaildirSource> Tree<S> {
    /// Parses Dovecot's `subscriptions` (`V<TAB>2`, a blank line, then one name per line with
    /// TAB between levels; or the old format, one name per line with '.').
    pub fn parse_subscriptions(text: &str) -> BTreeSet<String> {
        let mut lines = text.lines();
        let v2 = text.starts_with("V\t");
        if v2 {
            // Header, then the blank line.
            lines.next();
            lines.next();
        }
        lines
            .take(100_000)
            .filter(|l| !l.is_empty() && l.len() <= 1024)
            .map(|l| {
                if v2 {
                    l.replace('\t', "/")
                } else {
                    l.replace('.', "/")
                }
            })
            .collect()
    }

    pub(super) fn subscriptions_path(&self) -> PathBuf {
        self.backing.join("subscriptions")
    }

    pub(super) fn file_subscriptions(&self) -> Option<BTreeSet<String>> {
        let m = fs::symlink_metadata(self.subscriptions_path()).ok()?;
        if !m.is_file() || m.len() > 4 << 20 {
            return None;
        }
        let text = fs::read_to_string(self.subscriptions_path()).ok()?;
        Some(Self::parse_subscriptions(&text))
    }

    /// Writes the engine's subscribed folders into the local `subscriptions`, if they differ
    /// from what it holds (atomically: temp file, then rename).
    ///
    /// Holds the write lock: otherwise this could slip between Dovecot's rename of a new
    /// `subscriptions` into place and [`Self::subscriptions_changed`] reading it, replace
    /// Dovecot's file with the engine's older view, and lose the change (seen under load).
    pub fn write_subscriptions(&self) {
        let _w = self.write_lock();
        let Ok(list) = self.source.subscriptions() else {
            return;
        };
        let want: BTreeSet<String> = list.into_iter().filter(|f| f != INBOX).collect();
        if self.file_subscriptions().unwrap_or_default() == want {
            return;
        }
        let mut text = String::from("V\t2\n\n");
        for f in &want {
            text.push_str(&f.replace('/', "\t"));
            text.push('\n');
        }
        let tmp = self.backing.join(".subscriptions.peerpost");
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, self.subscriptions_path());
        }
    }

    /// Dovecot replaced `subscriptions`: the engine follows it.
    pub(super) fn subscriptions_changed(&self) {
        let Some(file) = self.file_subscriptions() else {
            return;
        };
        let engine: BTreeSet<String> = self
            .source
            .subscriptions()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for f in file.difference(&engine) {
            let _ = self.source.set_subscribed(f, true);
        }
        for f in engine.difference(&file) {
            if f != INBOX {
                let _ = self.source.set_subscribed(f, false);
            }
        }
    }

    /// `mkdir`: `.Name` at the root creates a folder; `cur`/`new`/`tmp` always exist.
    pub fn mkdir(&self, parent: u64, name: &str) -> Result<Attr, Errno> {
        check_name(name)?;
        let _w = self.write_lock();
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        let Place::FolderDir(f) = place else {
            return Err(Errno::EPERM);
        };
        if let Some(s) = Sub::from_name(name) {
            // A folder made by mkdir shows cur/new/tmp once they are made, as on disk:
            // Dovecot creates `.Name`, then its three, and takes EEXIST for "already exists".
            match st.fresh.get_mut(&f) {
                Some(made) if *made & sub_bit(s) == 0 => {
                    *made |= sub_bit(s);
                    if *made == 0b111 {
                        st.fresh.remove(&f);
                    }
                }
                _ => return Err(Errno::EEXIST),
            }
            return self.attr_of(&mut st, &NodeKey::Sub(f, s));
        }
        if f != INBOX {
            return Err(Errno::EPERM);
        }
        let g = dir_folder(name).ok_or(Errno::EPERM)?;
        if self.folders(&mut st)?.contains(&g) {
            return Err(Errno::EEXIST);
        }
        self.source.create_folder(&g).map_err(|e| errno(&e))?;
        st.folders = None;
        if st.fresh.len() < MAX_PENDING {
            st.fresh.insert(g.clone(), 0);
        }
        self.attr_of(&mut st, &NodeKey::Folder(g))
    }

    /// `rmdir`: a folder with no messages and no local files left; `cur`/`new`/`tmp` when
    /// empty (a no-op: they exist as long as their folder).
    pub fn rmdir(&self, parent: u64, name: &str) -> Result<(), Errno> {
        self.settle(true);
        let _w = self.write_lock();
        let mut st = self.lock();
        let place = self.place(&mut st, parent)?;
        match self.child(&mut st, &place, name)? {
            Child::Folder(g) => {
                if !self.listing(&mut st, &g)?.entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                let dir = self.backing.join(folder_dir(&g));
                if has_files(&dir) {
                    return Err(Errno::ENOTEMPTY);
                }
                self.source.delete_folder(&g).map_err(|e| errno(&e))?;
                self.bury_dir(&mut st, &folder_dir(&g));
                // Only empty directories are left under it.
                let _ = fs::remove_dir_all(&dir);
                st.folders = None;
                st.listings.remove(&g);
                st.fresh.remove(&g);
                for sub in [Sub::Cur, Sub::New, Sub::Tmp] {
                    st.inodes.retire(&NodeKey::Sub(g.clone(), sub));
                }
                st.inodes.retire(&NodeKey::Folder(g));
                Ok(())
            }
            Child::Sub(f, s) => {
                let empty = match s {
                    Sub::Tmp => !has_files(
                        &self
                            .backing
                            .join(Self::local_rel(&Place::FolderDir(f), "tmp")),
                    ),
                    s => self.listing(&mut st, &f)?.names(s).is_empty(),
                };
                if empty { Ok(()) } else { Err(Errno::ENOTEMPTY) }
            }
            _ => Err(Errno::ENOTDIR),
        }
    }
}
