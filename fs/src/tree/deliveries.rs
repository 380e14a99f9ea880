//! The tree's side of queued deliveries ([`crate::pending`]): a delivery answered at once and
//! shown as a provisional entry, the queue committed in batches, and provisional entries
//! turned into real ones (same name, same inode number).

use super::*;
use crate::pending::{self, Delivery, How, is_provisional};

/// How a pending delivery is shown: what the engine will get, under its provisional key.
fn provisional_entry(d: &Delivery, keywords: &KeywordMap) -> (MessageEntry, bool) {
    let (base, flags) = keywords.parse_name(&d.name);
    let e = MessageEntry {
        key: d.key(),
        base,
        size: d.size,
        internal_date: d.internal_date,
        flags,
        recent: d.sub == Sub::New,
    };
    (e, d.sub == Sub::Cur && !d.name.contains(":2,"))
}

impl<S: MaildirSource> Tree<S> {
    /// Commits everything queued: deliveries first (the flag changes may follow them), then
    /// flag changes.
    pub fn flush(&self) -> Result<(), Errno> {
        let d = self.flush_deliveries();
        let f = self.flush_flags();
        d.and(f)
    }

    /// Waits (at most [`DELIVERY_DELAY`]) while deliveries keep arriving and no full batch
    /// is queued: a commit costs about the same for 10 messages as for 256.
    pub(super) fn gather_deliveries(&self) {
        let start = std::time::Instant::now();
        while start.elapsed() < DELIVERY_DELAY {
            let queued = self.lock().deliveries.queued();
            if queued == 0 || queued >= pending::MAX_BATCH {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether deliveries wait for the engine.
    pub fn deliveries_pending(&self) -> bool {
        !self.lock().deliveries.is_empty()
    }

    /// Whether `name` in the directory `dir` is a delivery not committed yet.
    pub(super) fn is_pending_name(&self, st: &mut State, dir: u64, name: &str) -> bool {
        let Ok(Place::Sub(f, s @ (Sub::New | Sub::Cur))) = self.place(st, dir) else {
            return false;
        };
        if st.deliveries.of_folder(&f).next().is_none() {
            return false;
        }
        self.listing(st, &f)
            .ok()
            .and_then(|l| l.by_name(s, name))
            .is_some_and(|e| is_provisional(&e.key))
    }

    /// A folder's listing from the engine, with the pending deliveries: the ones the
    /// engine may have already (being committed, or read back from a journal) hide the
    /// engine's copy until they are turned into it; each is shown under its provisional key.
    pub(super) fn overlay_deliveries(
        st: &mut State,
        folder: &str,
        keywords: &KeywordMap,
        entries: &mut Vec<MessageEntry>,
    ) {
        let hide = Self::hidden_by_deliveries(st, folder, keywords);
        let shown: Vec<(MessageEntry, bool)> = st
            .deliveries
            .of_folder(folder)
            .map(|d| provisional_entry(d, keywords))
            .collect();
        if !hide.is_empty() {
            entries.retain(|r| !hide.contains(&(r.base.clone(), r.size, r.internal_date)));
        }
        for (e, bare) in shown {
            st.set_bare(folder, &e.key, bare);
            entries.push(e);
        }
    }

    /// The engine entries (base, size, date) a pending delivery stands for: the ones being
    /// committed, or read back from a journal after a kill (the engine may have them).
    pub(super) fn hidden_by_deliveries(
        st: &State,
        folder: &str,
        keywords: &KeywordMap,
    ) -> HashSet<(String, u64, i64)> {
        let inflight: HashSet<u64> = st.deliveries.inflight_of(folder).map(|d| d.id).collect();
        st.deliveries
            .of_folder(folder)
            .filter(|d| d.uncertain || inflight.contains(&d.id))
            .map(|d| {
                let (e, _) = provisional_entry(d, keywords);
                (e.base, e.size, e.internal_date)
            })
            .collect()
    }

    /// Answers a delivery of the local file `rel` (of metadata `meta`) as `name` in `to`'s `sub` before the engine
    /// commits it (journaled, moved or linked into the pending directory, shown). `None`:
    /// the queue cannot take it (full, or the journal cannot be written): deliver it now.
    /// Errors the engine would give (too large, over quota, invalid) are given here.
    pub(super) fn queue_delivery(
        &self,
        st: &mut State,
        (rel, meta): (&str, &fs::Metadata),
        to: &str,
        sub: Sub,
        name: &str,
        how: How,
    ) -> Option<Result<MessageEntry, Errno>> {
        let path = self.local_path(rel);
        let keywords = self.keywords(to);
        let (base, flags) = keywords.parse_name(name);
        if let Err(e) =
            self.source
                .check_delivery(to, &base, &flags, meta.len(), st.deliveries.bytes())
        {
            return Some(Err(errno(&e)));
        }
        if !st.deliveries.has_room(meta.len()) {
            return None;
        }
        let d = match st.deliveries.push(to, sub, name, (&path, meta), how) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("peerpost-fs: delivery queue: {e}; delivering synchronously");
                return None;
            }
        };
        let (entry, bare) = provisional_entry(&d, &keywords);
        st.set_bare(to, &entry.key, bare);
        let shown = self
            .listing(st, to)
            .map(|l| l.insert(entry.clone(), &keywords, &[], bare));
        self.signal_flush();
        Some(shown.map(|()| entry))
    }

    /// Opens a pending delivery for reading (its bytes are in the pending file). `None`:
    /// it was committed meanwhile (the node has its real key now).
    pub(super) fn open_pending(
        &self,
        key: &MessageKey,
        mode: OpenMode,
    ) -> Result<Option<u64>, Errno> {
        if mode.write || mode.truncate {
            return Err(Errno::EACCES);
        }
        let file = {
            let st = self.lock();
            st.deliveries
                .get(key)
                .map(|d| (st.deliveries.file(d.id), d.size))
        };
        let Some((path, size)) = file else {
            return Ok(None);
        };
        let Ok(bytes) = fs::read(&path) else {
            return Ok(None);
        };
        if bytes.len() as u64 != size {
            // Committed and emptied for reuse while it was read (`Spares::recycle`)?
            return match self.lock().deliveries.get(key) {
                None => Ok(None),
                Some(_) => Err(Errno::EIO),
            };
        }
        let mut st = self.lock();
        let h = Handle::Message {
            key: key.clone(),
            size,
            bytes: std::sync::OnceLock::from(Arc::new(bytes)),
        };
        self.add_handle(&mut st, h).map(Some)
    }

    /// Commits the queued deliveries to the engine now, in batches of
    /// [`pending::MAX_BATCH`]. Deliveries the engine refused stay queued (their files stay
    /// in the pending directory) and are retried by the flusher.
    pub fn flush_deliveries(&self) -> Result<(), Errno> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let batch = self.lock().deliveries.take();
        if batch.is_empty() {
            return Ok(());
        }
        let mut ok = true;
        for chunk in batch.chunks(pending::MAX_BATCH) {
            ok &= self.commit_deliveries(chunk);
        }
        self.lock().deliveries.finish();
        if ok { Ok(()) } else { Err(Errno::EIO) }
    }

    /// One engine commit for `chunk`; the committed ones become real entries. Whether all
    /// were committed.
    fn commit_deliveries(&self, chunk: &[Delivery]) -> bool {
        let mut maps: HashMap<String, KeywordMap> = HashMap::new();
        let mut engine: HashMap<String, Vec<MessageEntry>> = HashMap::new();
        let mut done: Vec<(&Delivery, MessageEntry)> = Vec::new();
        let mut sent: Vec<&Delivery> = Vec::new();
        let mut msgs = Vec::new();
        let mut ok = true;
        for d in chunk {
            let keywords = maps
                .entry(d.folder.clone())
                .or_insert_with(|| self.keywords(&d.folder));
            let (base, flags) = keywords.parse_name(&d.name);
            if d.uncertain {
                // Committed before a kill, or by a commit that reported failure?
                let have = engine
                    .entry(d.folder.clone())
                    .or_insert_with(|| self.source.messages(&d.folder).unwrap_or_default());
                if let Some(e) = have.iter().find(|e| {
                    (&e.base, e.size, e.internal_date) == (&base, d.size, d.internal_date)
                }) {
                    done.push((d, e.clone()));
                    continue;
                }
            }
            let path = self.lock().deliveries.file(d.id);
            match fs::read(&path) {
                Ok(bytes) => {
                    msgs.push((
                        d.folder.clone(),
                        NewMessage {
                            bytes,
                            internal_date: d.internal_date,
                            flags,
                            recent: d.sub == Sub::New,
                            base,
                        },
                    ));
                    sent.push(d);
                }
                Err(e) => {
                    ok = false;
                    eprintln!(
                        "peerpost-fs: cannot read pending delivery {} ({e}): kept queued",
                        path.display()
                    );
                }
            }
        }
        if !msgs.is_empty() {
            let results = self.source.deliver_many(msgs);
            if results.len() != sent.len() {
                ok = false;
            }
            for (d, r) in sent.into_iter().zip(results) {
                match r {
                    Ok(e) => done.push((d, e)),
                    Err(e) => {
                        ok = false;
                        eprintln!(
                            "peerpost-fs: delivery of {:?} into {} not committed: {e}; \
                             kept in {}, retried",
                            d.name,
                            d.folder,
                            self.lock().deliveries.file(d.id).display()
                        );
                    }
                }
            }
        }
        let mut st = self.lock();
        let mut ids = Vec::with_capacity(done.len());
        for (d, entry) in done {
            let keywords = maps
                .entry(d.folder.clone())
                .or_insert_with(|| self.keywords(&d.folder));
            Self::promote(&mut st, d, entry, keywords);
            ids.push(d.id);
        }
        let files = st.deliveries.committed(&ids);
        drop(st);
        for f in files {
            self.spares.recycle(&f);
        }
        ok
    }

    /// A committed delivery: its provisional entry becomes the engine's, under the same
    /// name and inode number (the directory's mtime is left alone: no name changed).
    fn promote(st: &mut State, d: &Delivery, entry: MessageEntry, keywords: &KeywordMap) {
        let pkey = d.key();
        let bare = d.sub == Sub::Cur && !d.name.contains(":2,");
        st.set_bare(&d.folder, &pkey, false);
        st.set_bare(&d.folder, &entry.key, bare);
        let from = NodeKey::Message(d.folder.clone(), pkey.clone());
        let to = NodeKey::Message(d.folder.clone(), entry.key.clone());
        if let Some(l) = st.listings.get_mut(&d.folder) {
            let mtime = l.mtime;
            l.remove(&pkey);
            l.insert(entry, keywords, &[], bare);
            l.mtime = mtime;
        }
        if st.inodes.contains(&from) {
            st.inodes.rekey(&from, &to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemorySource;

    struct T {
        tree: Tree<MemorySource>,
        src: Arc<MemorySource>,
        dir: PathBuf,
    }

    impl Drop for T {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn setup() -> T {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("peerpost-fs-deliv-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let src = Arc::new(MemorySource::new(1 << 20).with_max_message_size(1000));
        let tree = Tree::new(Arc::clone(&src), &dir, Owner { uid: 8, gid: 8 }).unwrap();
        T { tree, src, dir }
    }

    impl T {
        /// A tree over the same source and backing directory (a restart).
        fn again(&mut self) {
            self.tree =
                Tree::new(Arc::clone(&self.src), &self.dir, Owner { uid: 8, gid: 8 }).unwrap();
        }

        fn ino(&self, path: &str) -> Result<u64, Errno> {
            super::super::tests::ino_in(&self.tree, path)
        }

        fn names(&self, dir: &str) -> Vec<String> {
            super::super::tests::names_in(&self.tree, dir)
        }

        /// Writes `tmp/<name>`; its inode number.
        fn make(&self, name: &str, bytes: &[u8]) -> u64 {
            let tmp = self.ino("tmp").unwrap();
            let (a, fh) = self
                .tree
                .create(tmp, name, OpenMode::from_flags(libc::O_WRONLY))
                .unwrap();
            self.tree.write(fh, 0, bytes).unwrap();
            self.tree.release(fh);
            a.ino
        }

        /// Writes `tmp/<name>` and renames it to `<to>/<target>`.
        fn deliver(&self, name: &str, to: &str, target: &str, bytes: &[u8]) {
            let tmp = self.ino("tmp").unwrap();
            self.make(name, bytes);
            self.tree
                .rename(tmp, name, self.ino(to).unwrap(), target, false)
                .unwrap();
        }

        fn cat(&self, path: &str) -> Vec<u8> {
            let fh = self
                .tree
                .open(
                    self.ino(path).unwrap(),
                    OpenMode::from_flags(libc::O_RDONLY),
                )
                .unwrap();
            let b = self.tree.read(fh, 0, 1 << 20).unwrap();
            self.tree.release(fh);
            b
        }

        /// (base, bytes) of every message the engine has in INBOX, sorted.
        fn engine(&self) -> Vec<(String, Vec<u8>)> {
            let mut v: Vec<_> = self
                .src
                .messages(INBOX)
                .unwrap()
                .into_iter()
                .map(|e| (e.base.clone(), self.src.read(&e.key).unwrap().to_vec()))
                .collect();
            v.sort();
            v
        }

        fn pending_files(&self) -> usize {
            fs::read_dir(self.dir.join(STATE_DIR).join("pending"))
                .map(|rd| rd.count())
                .unwrap_or(0)
        }
    }

    #[test]
    fn a_delivery_is_visible_and_readable_before_its_commit_then_committed_in_one_batch() {
        let t = setup();
        for i in 0..5 {
            t.deliver(
                &format!("{i}.t"),
                "new",
                &format!("{i}.m"),
                b"Subject: x\n\nbody\n",
            );
        }
        t.deliver("9.t", "cur", "9.m:2,S", b"seen");
        assert!(t.tree.deliveries_pending());
        assert!(t.engine().is_empty(), "nothing committed yet");
        assert_eq!(t.names("new"), vec!["0.m", "1.m", "2.m", "3.m", "4.m"]);
        assert_eq!(t.names("cur"), vec!["9.m:2,S"]);
        assert!(t.names("tmp").is_empty());
        let a = t.tree.lookup(t.ino("new").unwrap(), "3.m").unwrap();
        assert_eq!(a.size, 17);
        assert_eq!(t.cat("new/3.m"), b"Subject: x\n\nbody\n");
        let before: Vec<u64> = ["new/0.m", "new/4.m", "cur/9.m:2,S"]
            .iter()
            .map(|p| t.ino(p).unwrap())
            .collect();
        t.tree.flush().unwrap();
        assert!(!t.tree.deliveries_pending());
        assert_eq!(t.engine().len(), 6);
        assert_eq!(t.pending_files(), 0);
        // Same names, same numbers, now the engine's.
        let after: Vec<u64> = ["new/0.m", "new/4.m", "cur/9.m:2,S"]
            .iter()
            .map(|p| t.ino(p).unwrap())
            .collect();
        assert_eq!(before, after);
        assert_eq!(t.cat("cur/9.m:2,S"), b"seen");
        let m = t.src.messages(INBOX).unwrap();
        assert!(
            m.iter()
                .any(|e| e.base == "9.m" && e.flags.seen && !e.recent)
        );
        // A refresh from the engine changes no name (watchers are not woken twice).
        assert!(t.tree.refresh_folder(INBOX).is_empty());
    }

    #[test]
    fn a_flag_rename_or_unlink_of_a_pending_message_commits_it_first() {
        let t = setup();
        t.deliver("1.t", "new", "1.m", b"one");
        t.deliver("2.t", "new", "2.m", b"two");
        let ino = t.ino("new/1.m").unwrap();
        let (new, cur) = (t.ino("new").unwrap(), t.ino("cur").unwrap());
        t.tree.rename(new, "1.m", cur, "1.m:2,FS", false).unwrap();
        assert!(!t.tree.deliveries_pending());
        assert_eq!(t.names("cur"), vec!["1.m:2,FS"]);
        assert_eq!(t.ino("cur/1.m:2,FS").unwrap(), ino);
        t.tree.flush().unwrap();
        let m = t.src.messages(INBOX).unwrap();
        let one = m.iter().find(|e| e.base == "1.m").unwrap();
        assert!(one.flags.flagged && one.flags.seen && !one.recent);
        t.deliver("3.t", "new", "3.m", b"three");
        t.tree.unlink(new, "3.m").unwrap();
        assert_eq!(t.names("new"), vec!["2.m"]);
        assert_eq!(t.engine().len(), 2);
    }

    #[test]
    fn a_killed_daemons_deliveries_are_delivered_exactly_once() {
        let mut t = setup();
        for i in 0..4 {
            t.deliver(
                &format!("{i}.t"),
                "new",
                &format!("{i}.m"),
                format!("m{i}").as_bytes(),
            );
        }
        // Killed before any commit: the next start shows them and delivers them.
        t.again();
        assert_eq!(t.names("new"), vec!["0.m", "1.m", "2.m", "3.m"]);
        assert_eq!(t.cat("new/2.m"), b"m2");
        // Killed between the engine's commit and the journal's cleanup: a batch is taken
        // and committed, but the tree never hears back.
        let batch = t.tree.lock().deliveries.take();
        let msgs = batch
            .iter()
            .take(2)
            .map(|d| {
                let bytes = fs::read(t.tree.lock().deliveries.file(d.id)).unwrap();
                let m = NewMessage {
                    bytes,
                    internal_date: d.internal_date,
                    flags: Flags::default(),
                    recent: true,
                    base: d.name.clone(),
                };
                (INBOX.to_string(), m)
            })
            .collect();
        assert!(t.src.deliver_many(msgs).iter().all(Result::is_ok));
        t.again();
        assert_eq!(t.names("new"), vec!["0.m", "1.m", "2.m", "3.m"]);
        t.tree.flush().unwrap();
        assert_eq!(t.names("new"), vec!["0.m", "1.m", "2.m", "3.m"]);
        let want: Vec<(String, Vec<u8>)> = (0..4)
            .map(|i| (format!("{i}.m"), format!("m{i}").into_bytes()))
            .collect();
        assert_eq!(t.engine(), want);
        t.again();
        assert!(!t.tree.deliveries_pending());
        assert_eq!(t.engine(), want);
        assert_eq!(t.pending_files(), 0);
    }

    #[test]
    fn a_failed_batch_keeps_the_files_and_is_retried() {
        let mut t = setup();
        t.deliver("1.t", "new", "1.m", b"one");
        t.deliver("2.t", "cur", "2.m:2,S", b"two");
        t.src.fail_deliveries(true);
        assert_eq!(t.tree.flush(), Err(Errno::EIO));
        assert!(t.engine().is_empty());
        assert_eq!(t.pending_files(), 2);
        assert_eq!(t.names("new"), vec!["1.m"]);
        assert_eq!(t.cat("cur/2.m:2,S"), b"two");
        // Still there after a restart; delivered once the engine takes them.
        t.again();
        assert_eq!(t.tree.flush(), Err(Errno::EIO));
        t.src.fail_deliveries(false);
        t.tree.flush().unwrap();
        assert_eq!(t.engine().len(), 2);
        assert_eq!(t.pending_files(), 0);
        assert_eq!(t.names("cur"), vec!["2.m:2,S"]);
    }

    #[test]
    fn engine_errors_are_given_at_rename_time() {
        let t = setup();
        let tmp = t.ino("tmp").unwrap();
        let new = t.ino("new").unwrap();
        // Over the quota (1 MiB) counting what is queued: ENOSPC, the file stays in tmp/.
        let big = vec![b'x'; 900];
        for i in 0..1200 {
            let name = format!("{i}.q");
            let (_, fh) = t
                .tree
                .create(tmp, &name, OpenMode::from_flags(libc::O_WRONLY))
                .unwrap();
            t.tree.write(fh, 0, &big).unwrap();
            t.tree.release(fh);
            match t.tree.rename(tmp, &name, new, &name, false) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e, Errno::ENOSPC);
                    assert!(i > 1000, "refused at {i}");
                    assert_eq!(t.names("tmp"), vec![name]);
                    return;
                }
            }
        }
        panic!("the quota was never reached");
    }

    #[test]
    fn a_link_from_tmp_queues_a_copy_and_keeps_the_tmp_file() {
        let t = setup();
        let tmp = t.ino("tmp").unwrap();
        let a = t.make("1.l", b"linked");
        let m = t.tree.link(a, t.ino("new").unwrap(), "1.l").unwrap();
        assert_eq!(m.size, 6);
        assert_eq!(t.names("tmp"), vec!["1.l"]);
        t.tree.unlink(tmp, "1.l").unwrap();
        assert_eq!(t.cat("new/1.l"), b"linked");
        t.tree.flush().unwrap();
        assert_eq!(t.engine(), vec![("1.l".to_string(), b"linked".to_vec())]);
        assert_eq!(t.ino("new/1.l").unwrap(), m.ino);
    }

    #[test]
    fn committed_delivery_files_become_new_tmp_files_that_start_empty() {
        let t = setup();
        let tmp = t.ino("tmp").unwrap();
        for i in 0..3 {
            t.deliver(&format!("{i}.t"), "new", &format!("{i}.m"), b"0123456789");
        }
        // A `link` delivery whose tmp/ file is still there when the batch is committed.
        let a = t.make("kept.l", b"linked");
        t.tree.link(a, t.ino("new").unwrap(), "kept.m").unwrap();
        t.tree.flush().unwrap();
        assert_eq!(t.pending_files(), 0);
        let spare = t.dir.join(STATE_DIR).join("spare");
        assert_eq!(
            fs::read_dir(&spare).unwrap().count(),
            3,
            "the linked file is not reused"
        );
        assert_eq!(t.cat("tmp/kept.l"), b"linked");
        assert_eq!(t.cat("new/kept.m"), b"linked");

        // New tmp/ files are the spare ones: empty, dated now, and a name that exists is
        // refused with O_EXCL, its file untouched and the spare kept.
        let excl = OpenMode::from_flags(libc::O_WRONLY | libc::O_EXCL);
        assert_eq!(
            t.tree.create(tmp, "kept.l", excl).err(),
            Some(Errno::EEXIST)
        );
        assert_eq!(t.cat("tmp/kept.l"), b"linked");
        assert_eq!(fs::read_dir(&spare).unwrap().count(), 3);
        let before = SystemTime::now() - Duration::from_secs(2);
        let delivered: Vec<u64> = ["new/0.m", "new/1.m", "new/2.m"]
            .iter()
            .map(|p| t.ino(p).unwrap())
            .collect();
        let (a, fh) = t.tree.create(tmp, "n.t", excl).unwrap();
        t.tree.release(fh);
        // Its backing inode is a delivered message's old one, whose node kept the number
        // that inode gave it: the new file gets another.
        assert!(!delivered.contains(&a.ino), "{} reused", a.ino);
        assert_eq!(a.size, 0);
        assert!(a.mtime >= before, "a reused file is dated now");
        assert_eq!(fs::read_dir(&spare).unwrap().count(), 2);
        assert_eq!(t.cat("tmp/n.t"), b"");
        let (_, fh) = t.tree.create(tmp, "n2.t", excl).unwrap();
        t.tree.write(fh, 0, b"abc").unwrap();
        t.tree.release(fh);
        t.tree
            .rename(tmp, "n2.t", t.ino("new").unwrap(), "n2.m", false)
            .unwrap();
        t.tree.flush().unwrap();
        assert_eq!(t.cat("new/n2.m"), b"abc");
        assert_eq!(t.cat("new/0.m"), b"0123456789");
        assert_eq!(t.engine().len(), 5);
    }
}
