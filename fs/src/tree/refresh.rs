//! Refreshing the tree's view from the engine: one folder, named messages, the folder list.

use super::*;

impl<S: MaildirSource> Tree<S> {
    /// Re-reads `keys` of a folder from the engine and updates the cached listing in place,
    /// as [`Tree::refresh_folder`] would show them; returns the names that changed. A change
    /// the mount made itself (a committed batch of deliveries, a flag change) is shown
    /// already: nothing changes then, and the directories keep their mtime. Rebuilding the
    /// whole listing for each of the mount's own commits cost more than the commits (1,861
    /// rebuilds of an 18,000-message folder in one benchmark run).
    pub fn refresh_messages(&self, folder: &str, keys: &[MessageKey]) -> Vec<(u64, String)> {
        let mut st = self.lock();
        if !st.listings.contains_key(folder) {
            return Vec::new();
        }
        let keywords = self.keywords(folder);
        let hide = Self::hidden_by_deliveries(&st, folder, &keywords);
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        for key in keys {
            let fresh = match self.source.message(folder, key) {
                Ok(e) => e,
                Err(_) => {
                    // The folder went away (its removal is shown with the folder list), or
                    // the engine failed: re-read the whole folder.
                    drop(st);
                    return self.refresh_folder(folder);
                }
            };
            let fresh = fresh.map(|mut e| {
                Self::overlay_deferred(&st, folder, &mut e);
                if let Some(b) = st.renamed.get(&e.key) {
                    e.base = b.clone();
                }
                e
            });
            let extra = st
                .pending
                .get(folder)
                .and_then(|p| p.get(key))
                .cloned()
                .unwrap_or_default();
            let bare = st.bare.get(folder).is_some_and(|b| b.contains(key));
            let Some(l) = st.listings.get_mut(folder) else {
                break;
            };
            let before = l.shown.get(key).cloned();
            match fresh {
                // Stands for a pending delivery: shown under its provisional key until then.
                Some(e) if hide.contains(&(e.base.clone(), e.size, e.internal_date)) => {}
                Some(e) => {
                    let mtime = l.mtime;
                    l.insert(e, &keywords, &extra, bare);
                    let after = l.shown.get(key).cloned();
                    if after == before {
                        l.mtime = mtime;
                        continue;
                    }
                    changed.extend(before.map(|(s, n)| (s, n.to_string())));
                    changed.extend(after.map(|(s, n)| (s, n.to_string())));
                }
                None => {
                    if l.remove(key).is_some() {
                        changed.extend(before.map(|(s, n)| (s, n.to_string())));
                        gone.push(key.clone());
                    }
                }
            }
        }
        Self::refreshed(&mut st, folder, gone, changed)
    }

    /// The end of a refresh: messages `gone` from the folder are forgotten, and the names
    /// `changed` (in `new/` or `cur/`) are given with their directory's inode number.
    pub(super) fn refreshed(
        st: &mut State,
        folder: &str,
        gone: Vec<MessageKey>,
        changed: Vec<(Sub, String)>,
    ) -> Vec<(u64, String)> {
        for k in gone {
            Self::forget_message(st, folder, &k);
        }
        changed
            .into_iter()
            .map(|(sub, name)| {
                let ino = st.inodes.ino(&NodeKey::Sub(folder.to_string(), sub));
                (ino, name)
            })
            .collect()
    }

    /// A message gone from a folder (expunged or moved elsewhere) gives up its number and
    /// the names kept for it, so a long mount does not grow without bound.
    pub(super) fn forget_message(st: &mut State, folder: &str, k: &MessageKey) {
        st.inodes
            .remove(&NodeKey::Message(folder.to_string(), k.clone()));
        if let Some(p) = st.pending.get_mut(folder) {
            p.remove(k);
        }
        st.set_bare(folder, k, false);
    }

    /// Forgets what is cached of a folder's messages (the engine changed it); returns the
    /// names (directory inode, name) that changed, for the kernel's cache.
    pub fn refresh_folder(&self, folder: &str) -> Vec<(u64, String)> {
        let mut st = self.lock();
        let Some(old) = st.listings.remove(folder) else {
            return Vec::new();
        };
        let Ok(new) = self.listing(&mut st, folder) else {
            return Vec::new();
        };
        let gone: Vec<MessageKey> = old
            .entries
            .keys()
            .filter(|k| !new.entries.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = Vec::new();
        for sub in [Sub::New, Sub::Cur] {
            let i = usize::from(sub != Sub::New);
            let (o, n) = if sub == Sub::New {
                (&old.new, &new.new)
            } else {
                (&old.cur, &new.cur)
            };
            let before = changed.len();
            for name in o.keys().filter(|k| !n.contains_key(*k)) {
                changed.push((sub, name.to_string()));
            }
            for name in n.keys().filter(|k| !o.contains_key(*k)) {
                changed.push((sub, name.to_string()));
            }
            // Unchanged directories keep their mtime (pollers would rescan otherwise).
            new.mtime[i] = if changed.len() > before {
                SystemTime::now()
            } else {
                old.mtime[i]
            };
        }
        Self::refreshed(&mut st, folder, gone, changed)
    }

    /// Forgets the folder list (folders were created, renamed or deleted elsewhere); returns
    /// the root-level names that changed.
    pub fn refresh_folders(&self) -> Vec<(u64, String)> {
        self.write_subscriptions();
        let mut st = self.lock();
        let old = st.folders.take().unwrap_or_default();
        let Ok(new) = self.folders(&mut st).cloned() else {
            return Vec::new();
        };
        let gone: Vec<String> = old.difference(&new).cloned().collect();
        for f in &gone {
            st.listings.remove(f);
        }
        gone.iter()
            .chain(new.difference(&old))
            .filter(|f| *f != INBOX)
            .map(|f| (ROOT, folder_dir(f)))
            .collect()
    }

    /// Folders whose messages are cached (the ones worth refreshing on a change).
    pub fn cached_folders(&self) -> Vec<String> {
        self.lock().listings.keys().cloned().collect()
    }

    // ----- resolving -----
}
