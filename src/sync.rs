//! `peerpost sync DIR`: keeps a plain Maildir++ directory and the mailbox engine in step, both
//! ways. The only module that imports notify.
//!
//! Reconciliation is a three-way comparison per folder and Maildir base name of
//! (engine, directory, last synced) — the last-synced state lives in the store's `sync` table —
//! so each side's changes are told apart:
//!
//! | engine | file | last synced | meaning → action |
//! |---|---|---|---|
//! | ✓ | ✓ | ✓ | flags changed on one side → copy them to the other (the directory wins a tie) |
//! | ✓ | ✓ | – | first meeting → the file's flags go to the engine |
//! | ✓ | – | ✓ | deleted in DIR → expunge (or move, if the name appeared in another folder) |
//! | ✓ | – | – | new in the engine → deliver the file (tmp/ then rename) |
//! | – | ✓ | ✓ | expunged in the engine → delete the file |
//! | – | ✓ | – | delivered into DIR → append to the engine (name kept) |
//!
//! Every step is idempotent and the "last synced" row is written after the step, so a sync
//! killed at any point resumes without losing or duplicating mail: a message appended to the
//! engine whose row was not yet written is recognised by its kept Maildir name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::crypto;
use crate::mailbox::maildir::{self, KeywordMap};
use crate::mailbox::tree::{self, Sub};
use crate::mailbox::{self, FlagMode, Flags, Mailbox, MessageInfo, NewMessage};
use crate::store::Table;
use crate::wire::{Reader, Writer};

/// How often the engine is polled for changes made by other processes.
const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// File-system events are gathered this long before a pass.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A full pass at least this often, whatever the events say.
const FULL_PASS_EVERY: Duration = Duration::from_secs(30);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub from_dir: usize,
    pub to_dir: usize,
    pub flags_to_engine: usize,
    pub flags_to_dir: usize,
    pub expunged: usize,
    pub deleted_files: usize,
    pub moved: usize,
    pub folders: usize,
    /// Files that could not be taken in (name, reason); they are retried every pass.
    pub problems: Vec<(String, String)>,
}

impl PassReport {
    pub fn changed(&self) -> bool {
        self.from_dir
            + self.to_dir
            + self.flags_to_engine
            + self.flags_to_dir
            + self.expunged
            + self.deleted_files
            + self.moved
            + self.folders
            > 0
    }
}

impl std::fmt::Display for PassReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new from the directory, {} written to it, flags {}→engine {}→directory, {} expunged, {} files deleted, {} moved, {} folders",
            self.from_dir,
            self.to_dir,
            self.flags_to_engine,
            self.flags_to_dir,
            self.expunged,
            self.deleted_files,
            self.moved,
            self.folders
        )
    }
}

/// The state both sides agreed on, per message file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Synced {
    sub: Sub,
    flags: Flags,
}

impl Synced {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(match self.sub {
            Sub::New => 0,
            Sub::Cur => 1,
        })
        .u8(self.flags.bits)
        .u8(self.flags.keywords.len().min(255) as u8);
        for k in self.flags.keywords.iter().take(255) {
            w.bytes8(k.as_bytes());
        }
        w.into_vec()
    }

    fn decode(b: &[u8]) -> Option<Synced> {
        let mut r = Reader::new(b);
        let sub = if r.u8("sub").ok()? == 0 {
            Sub::New
        } else {
            Sub::Cur
        };
        let bits = r.u8("bits").ok()?;
        let n = r.u8("n").ok()?;
        let mut keywords = BTreeSet::new();
        for _ in 0..n {
            keywords.insert(String::from_utf8(r.bytes8("kw", 255).ok()?.to_vec()).ok()?);
        }
        Some(Synced {
            sub,
            flags: Flags { bits, keywords },
        })
    }
}

/// A file seen in the directory.
#[derive(Debug, Clone)]
struct FileState {
    sub: Sub,
    flags: Flags,
    path: PathBuf,
}

/// Keeps one directory in step with the engine.
pub struct Syncer {
    mb: Mailbox,
    root: PathBuf,
    dir_key: [u8; 16],
    max_size: u64,
}

fn sync_prefix(dir_key: &[u8; 16], folder: &str) -> Vec<u8> {
    let mut k = dir_key.to_vec();
    k.push(folder.len().min(255) as u8);
    k.extend_from_slice(folder.as_bytes());
    k
}

/// How the engine wants a message to look on disk.
fn engine_look(m: &MessageInfo) -> Synced {
    let sub = if m.recent { Sub::New } else { Sub::Cur };
    Synced {
        sub,
        flags: m.flags.clone(),
    }
}

impl Syncer {
    pub fn new(mb: Mailbox, root: &Path, max_size: u64) -> std::io::Result<Syncer> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let h = crypto::hash(root.to_string_lossy().as_bytes());
        let mut dir_key = [0u8; 16];
        dir_key.copy_from_slice(&h[..16]);
        Ok(Syncer {
            mb,
            root,
            dir_key,
            max_size,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn synced_rows(&self, folder: &str) -> mailbox::Result<BTreeMap<String, Synced>> {
        let prefix = sync_prefix(&self.dir_key, folder);
        let plen = prefix.len();
        let rows = self
            .mb
            .store()
            .read(move |rx| -> mailbox::Result<_> { Ok(rx.prefix(Table::Sync, &prefix)?) })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let base = String::from_utf8(k.get(plen..)?.to_vec()).ok()?;
                Some((base, Synced::decode(&v)?))
            })
            .collect())
    }

    async fn write_rows(
        &self,
        folder: &str,
        puts: Vec<(String, Synced)>,
        dels: Vec<String>,
    ) -> mailbox::Result<()> {
        if puts.is_empty() && dels.is_empty() {
            return Ok(());
        }
        let prefix = sync_prefix(&self.dir_key, folder);
        self.mb
            .store()
            .transact(move |tx| -> mailbox::Result<()> {
                for (base, s) in puts {
                    let mut k = prefix.clone();
                    k.extend_from_slice(base.as_bytes());
                    tx.put(Table::Sync, &k, &s.encode())?;
                }
                for base in dels {
                    let mut k = prefix.clone();
                    k.extend_from_slice(base.as_bytes());
                    tx.delete(Table::Sync, &k)?;
                }
                Ok(())
            })
            .await
    }

    /// Folder names with synced rows (so a folder deleted on one side is noticed).
    async fn synced_folders(&self) -> mailbox::Result<BTreeSet<String>> {
        let key = self.dir_key;
        let rows = self
            .mb
            .store()
            .read(move |rx| -> mailbox::Result<_> { Ok(rx.prefix(Table::Sync, &key)?) })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, _)| {
                let n = usize::from(*k.get(16)?);
                String::from_utf8(k.get(17..17 + n)?.to_vec()).ok()
            })
            .collect())
    }

    /// The engine's messages of a folder by the base name they have on disk (duplicates of
    /// one name in one folder get ".<uid>", as `export` does).
    fn engine_files(&self, folder: &str) -> BTreeMap<String, MessageInfo> {
        let mut out = BTreeMap::new();
        for m in self.mb.messages(folder).unwrap_or_default() {
            let mut base = m.maildir_name.clone();
            if out.contains_key(&base) {
                base = format!("{base}.{}", m.uid);
            }
            out.insert(base, m);
        }
        out
    }

    fn dir_files(
        &self,
        folder: &str,
        keywords: &KeywordMap,
        report: &mut PassReport,
    ) -> BTreeMap<String, FileState> {
        let dir = tree::folder_dir(&self.root, folder);
        let mut out = BTreeMap::new();
        for f in tree::files(&dir).unwrap_or_default() {
            match maildir::parse(&f.file_name) {
                Ok(p) => {
                    let flags = keywords.flags_of(&p);
                    out.insert(
                        p.base,
                        FileState {
                            sub: f.sub,
                            flags,
                            path: f.path,
                        },
                    );
                }
                Err(e) => report
                    .problems
                    .push((f.path.display().to_string(), e.to_string())),
            }
        }
        out
    }

    /// One full reconciliation pass. Idempotent; safe to interrupt at any point.
    pub async fn pass(&self) -> mailbox::Result<PassReport> {
        self.mb.refresh().await?;
        let mut report = PassReport::default();
        let io =
            |p: &Path, e: std::io::Error| mailbox::Error::Corrupt(format!("{}: {e}", p.display()));

        // Folders: the union of the engine's, the directory's, and those synced before.
        let engine_folders: BTreeSet<String> =
            self.mb.folders().into_iter().map(|f| f.name).collect();
        let dir_folders: BTreeSet<String> = tree::folders(&self.root)
            .map_err(|e| io(&self.root, e))?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let synced_folders = self.synced_folders().await?;
        if synced_folders.contains("INBOX") && !self.root.join("cur").is_dir() {
            return Err(mailbox::Error::Corrupt(format!(
                "{} no longer holds a Maildir (cur/ is missing) although it was synced before; \
                 refusing to treat that as 'delete all mail'. Restore it, or sync to a new directory",
                self.root.display()
            )));
        }
        for name in dir_folders.difference(&engine_folders) {
            if synced_folders.contains(name) {
                continue; // deleted in the engine: its files go below, then the directory
            }
            if mailbox::check_folder_name(name).is_ok() {
                self.mb.create_folder(name).await?;
                report.folders += 1;
            }
        }
        let engine_folders: BTreeSet<String> =
            self.mb.folders().into_iter().map(|f| f.name).collect();
        for name in engine_folders.difference(&dir_folders) {
            if synced_folders.contains(name) && name != "INBOX" {
                continue; // deleted in the directory: handled below
            }
            let dir = tree::folder_dir(&self.root, name);
            tree::create_folder(&dir).map_err(|e| io(&dir, e))?;
            report.folders += 1;
        }
        let dir_folders: BTreeSet<String> = tree::folders(&self.root)
            .map_err(|e| io(&self.root, e))?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let all: BTreeSet<String> = engine_folders
            .iter()
            .chain(&dir_folders)
            .chain(&synced_folders)
            .cloned()
            .collect();

        // Gather the three views of every folder.
        struct View {
            engine: BTreeMap<String, MessageInfo>,
            files: BTreeMap<String, FileState>,
            synced: BTreeMap<String, Synced>,
            keywords: KeywordMap,
        }
        let mut views: BTreeMap<String, View> = BTreeMap::new();
        for name in &all {
            let dir = tree::folder_dir(&self.root, name);
            let keywords = std::fs::read_to_string(dir.join("dovecot-keywords"))
                .map(|t| KeywordMap::parse(&t))
                .unwrap_or_default();
            let files = self.dir_files(name, &keywords, &mut report);
            views.insert(
                name.clone(),
                View {
                    engine: if engine_folders.contains(name) {
                        self.engine_files(name)
                    } else {
                        BTreeMap::new()
                    },
                    files,
                    synced: self.synced_rows(name).await?,
                    keywords,
                },
            );
        }

        // Moves made in the directory: a name that vanished from one folder (engine still has
        // it, it was synced) and appeared in another (no engine entry, never synced there).
        let mut vanished: HashMap<String, (String, MessageInfo)> = HashMap::new();
        for (folder, v) in &views {
            for (base, m) in &v.engine {
                if !v.files.contains_key(base)
                    && v.synced.contains_key(base)
                    && dir_folders.contains(folder)
                {
                    vanished.insert(base.clone(), (folder.clone(), m.clone()));
                }
            }
        }
        let mut moves: Vec<(String, String, MessageInfo)> = Vec::new(); // (from, to, msg)
        for (folder, v) in &views {
            if !engine_folders.contains(folder) {
                continue;
            }
            for base in v.files.keys() {
                if !v.engine.contains_key(base)
                    && !v.synced.contains_key(base)
                    && let Some((from, m)) = vanished.get(base)
                    && from != folder
                {
                    moves.push((from.clone(), folder.clone(), m.clone()));
                }
            }
        }
        if !moves.is_empty() {
            for (from, to, m) in &moves {
                self.mb.move_to(from, &[m.entry], to).await?;
                self.write_rows(from, Vec::new(), vec![m.maildir_name.clone()])
                    .await?;
                report.moved += 1;
                if let Some(v) = views.get_mut(from) {
                    v.engine.remove(&m.maildir_name);
                    v.synced.remove(&m.maildir_name);
                }
            }
            // The moved entries are new in their target folders: re-read those views.
            for (_, to, _) in &moves {
                if let Some(v) = views.get_mut(to) {
                    v.engine = self.engine_files(to);
                }
            }
        }

        for (folder, mut v) in views {
            self.reconcile_folder(
                &folder,
                &mut v.engine,
                &v.files,
                &v.synced,
                &mut v.keywords,
                &mut report,
            )
            .await?;
            // A folder gone from one side, now empty: remove it from the other.
            let dir = tree::folder_dir(&self.root, &folder);
            if folder != "INBOX" && synced_folders.contains(&folder) {
                if !engine_folders.contains(&folder)
                    && dir.exists()
                    && tree::files(&dir).map(|f| f.is_empty()).unwrap_or(false)
                {
                    let _ = std::fs::remove_dir_all(&dir);
                    report.folders += 1;
                } else if engine_folders.contains(&folder)
                    && !dir_folders.contains(&folder)
                    && self.mb.folder(&folder).is_some_and(|f| f.exists == 0)
                {
                    self.mb.delete_folder(&folder).await?;
                    report.folders += 1;
                }
            }
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn reconcile_folder(
        &self,
        folder: &str,
        engine: &mut BTreeMap<String, MessageInfo>,
        files: &BTreeMap<String, FileState>,
        synced: &BTreeMap<String, Synced>,
        keywords: &mut KeywordMap,
        report: &mut PassReport,
    ) -> mailbox::Result<()> {
        let dir = tree::folder_dir(&self.root, folder);
        let in_engine = self.mb.folder(folder).is_some();
        let keywords_before = keywords.clone();
        let mut puts: Vec<(String, Synced)> = Vec::new();
        let mut dels: Vec<String> = Vec::new();
        let mut new_from_dir: Vec<(String, FileState)> = Vec::new();

        let bases: BTreeSet<&String> = engine
            .keys()
            .chain(files.keys())
            .chain(synced.keys())
            .collect();
        for base in bases {
            let e = engine.get(base);
            let f = files.get(base);
            let s = synced.get(base);
            match (e, f, s) {
                (Some(m), Some(file), s) => {
                    let want = engine_look(m);
                    let on_disk = Synced {
                        sub: file.sub,
                        flags: file.flags.clone(),
                    };
                    if want == on_disk {
                        if s != Some(&on_disk) {
                            puts.push((base.clone(), on_disk));
                        }
                        continue;
                    }
                    let engine_changed = s.is_some_and(|s| *s != want);
                    let file_changed = s.is_none_or(|s| *s != on_disk);
                    if file_changed || !engine_changed {
                        // The directory wins: replace the engine's flags with the file's.
                        self.mb
                            .set_flags(
                                folder,
                                &[m.entry],
                                FlagMode::Replace,
                                &file.flags,
                                file.sub == Sub::Cur,
                            )
                            .await?;
                        report.flags_to_engine += 1;
                        puts.push((base.clone(), on_disk));
                    } else {
                        let path = self
                            .write_look(&dir, base, &want, keywords, Some(&file.path), m)
                            .await?;
                        drop(path);
                        report.flags_to_dir += 1;
                        puts.push((base.clone(), want));
                    }
                }
                (Some(m), None, Some(_)) => {
                    // Deleted in the directory (or its folder was).
                    self.mb.expunge(folder, &[m.entry]).await?;
                    report.expunged += 1;
                    dels.push(base.clone());
                }
                (Some(m), None, None) => {
                    let want = engine_look(m);
                    self.write_look(&dir, base, &want, keywords, None, m)
                        .await?;
                    report.to_dir += 1;
                    puts.push((base.clone(), want));
                }
                (None, Some(file), Some(_)) => {
                    // Expunged in the engine (or its folder deleted).
                    match std::fs::remove_file(&file.path) {
                        Ok(()) => report.deleted_files += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => report
                            .problems
                            .push((file.path.display().to_string(), e.to_string())),
                    }
                    dels.push(base.clone());
                }
                (None, Some(file), None) => {
                    if in_engine {
                        new_from_dir.push((base.clone(), file.clone()));
                    }
                }
                (None, None, Some(_)) => dels.push(base.clone()),
                (None, None, None) => {}
            }
        }

        if !new_from_dir.is_empty() {
            let mut msgs = Vec::new();
            let mut names = Vec::new();
            for (base, file) in new_from_dir {
                match read_new(&file, &base, self.max_size) {
                    Ok(m) => {
                        names.push((
                            base,
                            Synced {
                                sub: file.sub,
                                flags: file.flags.clone(),
                            },
                        ));
                        msgs.push(m);
                    }
                    Err(why) => report.problems.push((file.path.display().to_string(), why)),
                }
            }
            report.from_dir += msgs.len();
            self.mb.append_batch(folder, msgs).await?;
            puts.extend(names);
        }
        if *keywords != keywords_before {
            let p = dir.join("dovecot-keywords");
            std::fs::write(&p, keywords.to_file())
                .map_err(|e| mailbox::Error::Corrupt(format!("{}: {e}", p.display())))?;
        }
        self.write_rows(folder, puts, dels).await
    }

    /// Makes the file of `m` look as `want` says: delivered fresh (tmp/ → new|cur) or renamed.
    async fn write_look(
        &self,
        dir: &Path,
        base: &str,
        want: &Synced,
        keywords: &mut KeywordMap,
        current: Option<&Path>,
        m: &MessageInfo,
    ) -> mailbox::Result<PathBuf> {
        let name = maildir::disk_name(base, want.sub == Sub::New, &want.flags, keywords);
        let dest = dir.join(want.sub.dir()).join(&name);
        let err = |e: std::io::Error| mailbox::Error::Corrupt(format!("{}: {e}", dest.display()));
        if let Some(cur) = current {
            std::fs::rename(cur, &dest).map_err(err)?;
            return Ok(dest);
        }
        tree::create_folder(dir).map_err(err)?;
        let bytes = self.mb.read(m.entry).await?;
        let (d, sub, date) = (dir.to_path_buf(), want.sub, m.internal_date);
        tokio::task::spawn_blocking(move || tree::deliver(&d, sub, &name, &bytes, date))
            .await
            .map_err(|_| mailbox::Error::Corrupt("file writer stopped".into()))?
            .map_err(err)
    }

    /// Runs until `shutdown`: a pass at start, then on file-system events (debounced), on
    /// engine changes (polled every 250 ms, which also sees other processes' writes), and at
    /// least every 30 s. `on_pass` hears about every pass that changed something.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        on_pass: impl Fn(&PassReport),
    ) -> mailbox::Result<()> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let root = self.root.clone();
        // Writes into a folder's tmp/ are deliveries in progress: only their rename matters.
        let in_tmp = move |p: &Path| {
            p.strip_prefix(&root)
                .map(|rel| rel.components().any(|c| c.as_os_str() == "tmp"))
                .unwrap_or(false)
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !ev.paths.iter().all(|p| in_tmp(p))
            {
                // Full channel = a pass is already pending.
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| {
            mailbox::Error::Corrupt(format!("cannot watch {}: {e}", self.root.display()))
        })?;
        use notify::Watcher;
        watcher
            .watch(&self.root, notify::RecursiveMode::Recursive)
            .map_err(|e| {
                mailbox::Error::Corrupt(format!("cannot watch {}: {e}", self.root.display()))
            })?;
        let mut changes = self.mb.subscribe();
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        let mut full = tokio::time::interval(FULL_PASS_EVERY);
        loop {
            let r = self.pass().await?;
            if r.changed() || !r.problems.is_empty() {
                on_pass(&r);
            }
            // Wait for a reason to look again.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    Some(()) = rx.recv() => {
                        tokio::time::sleep(DEBOUNCE).await;
                        while rx.try_recv().is_ok() {}
                        break;
                    }
                    _ = refresh.tick() => {
                        if self.mb.refresh().await? > 0 {
                            break;
                        }
                    }
                    c = changes.recv() => {
                        // Our own pass's changes were drained after it: this one came from
                        // elsewhere in this process. A lagging feed just means "look again".
                        if matches!(c, Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) {
                            changes = self.mb.subscribe();
                        }
                        break;
                    }
                    _ = full.tick() => break,
                }
            }
            // Our own writes caused both file events and engine changes: drop them.
            while changes.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(10)).await;
            while rx.try_recv().is_ok() {}
        }
    }
}

fn read_new(
    file: &FileState,
    base: &str,
    max_size: u64,
) -> std::result::Result<NewMessage, String> {
    let (bytes, internal_date) = tree::read_message_file(&file.path, max_size)?;
    Ok(NewMessage {
        bytes,
        internal_date,
        flags: file.flags.clone(),
        recent: file.sub == Sub::New,
        maildir_name: Some(base.to_string()),
    })
}
