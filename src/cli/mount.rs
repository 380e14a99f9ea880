//! `peerpost mount [MOUNTPOINT]`: the mailbox as a Maildir over FUSE, until SIGINT/SIGTERM.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{RecvTimeoutError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use peerpost_fs::{Changes, Mount, MountOptions, Owner, Unmounted};
use tokio::sync::broadcast::error::RecvError;

use super::open;
use crate::config::Config;
use crate::home::Home;
use crate::mailbox::fs_source::{FsSource, message_key};
use crate::mailbox::{Change, EntryId, FolderId, Mailbox};

/// How often the engine looks for entries other processes wrote (`peerpost import`, …).
const REFRESH: Duration = Duration::from_millis(250);
/// Changes arriving within this window are shown together (each showing re-reads the cached
/// folders: at 50 ms, a stream of writes through the mount ran ~30 % slower).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// FUSE worker threads.
const THREADS: usize = 4;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to mount (default: `maildir.path` of the config, `~/Maildir`). Created if
    /// missing; a stale mount left by a killed daemon is cleared first.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,
    /// Who owns the files: a user name, `UID` or `UID:GID` (default: `maildir.owner`, else
    /// the owner of the mount point). Dovecot refuses to serve files owned by root.
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// File holding the passphrase of a protected key (asked on a terminal otherwise).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let config = open::config(home)?;
    let mountpoint = args
        .mountpoint
        .clone()
        .unwrap_or_else(|| config.maildir.path.clone());
    let rt = open::runtime()?;
    let mb = rt.block_on(open::mailbox(home, args.passphrase_file.as_deref()))?;
    let served = Served::start(
        mb.clone(),
        rt.handle().clone(),
        home,
        &config,
        &mountpoint,
        args.owner.as_deref(),
    )?;
    let result = rt.block_on(async {
        let mut tick = tokio::time::interval(REFRESH);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {
                    // Mail other processes wrote (`peerpost import`, `sync`, a running node).
                    if let Err(e) = mb.refresh().await {
                        eprintln!("mount: cannot read the store: {e}");
                    }
                }
            }
        }
        anyhow::Ok(())
    });
    served.stop()?;
    result
}

/// A mailbox served as a Maildir over FUSE: the kernel mount, and the forwarding of the
/// engine's changes to it (new names, woken watchers). Used by `peerpost mount` and by
/// `peerpost run` (`maildir.mount`, `--mount`).
pub struct Served {
    mount: Arc<Mount<FsSource>>,
    mountpoint: PathBuf,
    forward: tokio::task::JoinHandle<()>,
    shower: std::thread::JoinHandle<()>,
}

impl Served {
    /// Mounts `mb` at `mountpoint` (created if missing; a stale mount is cleared first).
    /// `rt` runs the engine calls of the FUSE threads and must not be the caller's thread's
    /// runtime if the caller is a FUSE thread (it never is here).
    pub fn start(
        mb: Mailbox,
        rt: tokio::runtime::Handle,
        home: &Home,
        config: &Config,
        mountpoint: &Path,
        owner: Option<&str>,
    ) -> Result<Served> {
        clear_stale_mount(mountpoint)?;
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("cannot create {}", mountpoint.display()))?;
        let owner = match owner.or(config.maildir.owner.as_deref()) {
            Some(spec) => parse_owner(spec)?,
            None => {
                use std::os::unix::fs::MetadataExt;
                let m = std::fs::metadata(mountpoint)?;
                Owner {
                    uid: m.uid(),
                    gid: m.gid(),
                }
            }
        };
        let backing = home.root().join("maildir-local");
        std::fs::create_dir_all(&backing)?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Dovecot's index files hold headers: as private as the mount itself.
            std::fs::set_permissions(&backing, std::fs::Permissions::from_mode(0o700))?;
        }
        // The user's share of the ring (durability): contribution ÷ overhead.
        let quota = crate::durability::backup::quota(
            config.storage.contribution,
            None,
            config.durability.failure_fraction,
            config.durability.loss_probability,
        );
        mb.set_quota(Some(quota));
        let source = FsSource::new(mb.clone(), rt.clone(), config.smtp.max_message_size, quota);
        let opts = MountOptions {
            owner,
            backing,
            threads: THREADS,
            auto_unmount: which("fusermount3"),
            // PEERPOST_MOUNT_PASSTHROUGH=0: no FUSE passthrough (to compare, or if a kernel
            // mishandles it).
            passthrough: std::env::var("PEERPOST_MOUNT_PASSTHROUGH").map_or(true, |v| v != "0"),
        };
        let mount = Mount::spawn(Arc::new(source), mountpoint, &opts).map_err(|e| {
            let hint = if e.kind() == ErrorKind::PermissionDenied {
                " (FUSE needs root here, or read-write /dev/fuse and user_allow_other in /etc/fuse.conf)"
            } else {
                ""
            };
            anyhow::anyhow!("cannot mount {}: {e}{hint}", mountpoint.display())
        })?;
        let ops = mount.ops();
        crate::metrics::get().watch_mount(Box::new(move || {
            ops.snapshot()
                .into_iter()
                .map(|o| (o.op.name(), o.count, o.seconds, o.buckets))
                .collect()
        }));
        let mount = Arc::new(mount);
        eprintln!(
            "mount: serving the mailbox at {} (files owned by {}:{})",
            mountpoint.display(),
            owner.uid,
            owner.gid
        );

        // Engine changes (this process's, other processes' via refresh, the overlay's)
        // reach the mount from a plain thread: it calls into the kernel and through the
        // mount, which a tokio worker must not do.
        // What changed since the last showing.
        let pending: Arc<Mutex<Unshown>> = Arc::default();
        let (changed_tx, changed_rx) = sync_channel::<()>(1);
        let shower = {
            let mount = Arc::clone(&mount);
            let pending = Arc::clone(&pending);
            let mb = mb.clone();
            std::thread::Builder::new()
                .name("fuse-changes".into())
                .spawn(move || show_changes(&mount, &mb, &pending, changed_rx))?
        };
        let mut feed = mb.subscribe();
        let forward = rt.spawn(async move {
            let signal = |tx: &std::sync::mpsc::SyncSender<()>| match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {}
            };
            loop {
                match feed.recv().await {
                    Ok(change) => {
                        lock(&pending).note(&change);
                        signal(&changed_tx);
                    }
                    Err(RecvError::Lagged(_)) => {
                        lock(&pending).all = true;
                        signal(&changed_tx);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Ok(Served {
            mount,
            mountpoint: mountpoint.to_path_buf(),
            forward,
            shower,
        })
    }

    /// Stops forwarding changes and unmounts.
    pub fn stop(self) -> Result<()> {
        // Aborting the forwarder drops the channel's sender: the shower thread ends.
        self.forward.abort();
        let _ = self.shower.join();
        match Arc::try_unwrap(self.mount) {
            Ok(m) => match m.unmount().context("cannot unmount")? {
                Unmounted::Clean => eprintln!("mount: unmounted {}", self.mountpoint.display()),
                Unmounted::StillInUse => eprintln!(
                    "mount: unmounted {} (processes still using it see errors from now on)",
                    self.mountpoint.display()
                ),
            },
            Err(_) => bail!("the mount is still in use by a thread"),
        }
        Ok(())
    }
}

/// Messages named per showing at most; beyond, the folder is re-read whole.
const MAX_UNSHOWN: usize = 10_000;

/// The engine's changes not shown through the mount yet.
#[derive(Debug, Default)]
struct Unshown {
    /// Everything may have changed (the feed lagged): every folder is re-read.
    all: bool,
    /// The folder list or subscriptions changed.
    folders: bool,
    /// Per folder, the entries that changed (`None`: re-read the folder).
    messages: HashMap<FolderId, Option<HashSet<EntryId>>>,
    /// Entries named in `messages`.
    named: usize,
}

impl Unshown {
    fn note(&mut self, change: &Change) {
        let (folder, entry) = match change {
            Change::Added { folder, entry, .. }
            | Change::Removed { folder, entry, .. }
            | Change::Flags { folder, entry, .. } => (*folder, *entry),
            Change::Folders => {
                self.folders = true;
                return;
            }
        };
        let slot = self
            .messages
            .entry(folder)
            .or_insert_with(|| Some(HashSet::new()));
        if let Some(set) = slot {
            if self.named < MAX_UNSHOWN {
                self.named += usize::from(set.insert(entry));
            } else {
                *slot = None;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shower thread: after each signal (debounced), tells the mount what changed. The
/// mount's own commits come back through here too: naming the messages (not the folder)
/// lets it see they are shown already instead of re-reading the folder.
fn show_changes(
    mount: &Mount<FsSource>,
    mb: &Mailbox,
    pending: &Mutex<Unshown>,
    changed_rx: std::sync::mpsc::Receiver<()>,
) {
    loop {
        match changed_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(()) => {
                std::thread::sleep(DEBOUNCE);
                while changed_rx.try_recv().is_ok() {}
                let unshown = std::mem::take(&mut *lock(pending));
                if unshown.all {
                    mount.engine_changed();
                    continue;
                }
                let names: HashMap<FolderId, String> = mb
                    .folder_names()
                    .into_iter()
                    .map(|(id, name, _)| (id, name))
                    .collect();
                let messages = unshown
                    .messages
                    .into_iter()
                    .filter_map(|(id, entries)| {
                        let name = names.get(&id)?.clone();
                        let keys = entries.map(|set| set.into_iter().map(message_key).collect());
                        Some((name, keys))
                    })
                    .collect();
                mount.show(&Changes {
                    folders: unshown.folders,
                    messages,
                });
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// `user`, `uid` or `uid:gid`.
fn parse_owner(spec: &str) -> Result<Owner> {
    if let Some((u, g)) = spec.split_once(':')
        && let (Ok(uid), Ok(gid)) = (u.parse(), g.parse())
    {
        return Ok(Owner { uid, gid });
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4
            && (f[0] == spec || f[2] == spec)
            && let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse())
        {
            return Ok(Owner { uid, gid });
        }
    }
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok(Owner { uid, gid: uid });
    }
    bail!("no user {spec:?} (give a user name, UID or UID:GID)")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// A FUSE mount whose daemon died answers every access with ENOTCONN: unmount it (lazily,
/// so a shell sitting in it does not block us).
fn clear_stale_mount(mountpoint: &Path) -> Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc_enotconn()) => {}
        _ => return Ok(()),
    }
    eprintln!(
        "mount: clearing the stale mount at {} (left by a daemon that died)",
        mountpoint.display()
    );
    for (cmd, args) in [("fusermount3", &["-u", "-z"][..]), ("umount", &["-l"][..])] {
        // The dead daemon's auto-unmount helper may be unmounting at the same moment: what
        // counts is that the mount point answers afterwards, not who unmounted it.
        let _ = Command::new(cmd)
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status();
        if std::fs::metadata(mountpoint).is_ok() {
            return Ok(());
        }
    }
    bail!(
        "{} is a stale mount and could not be unmounted: run `fusermount3 -u {}`",
        mountpoint.display(),
        mountpoint.display()
    )
}

/// ENOTCONN on Linux ("Transport endpoint is not connected").
fn libc_enotconn() -> i32 {
    107
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(parse_owner("8:9").unwrap(), Owner { uid: 8, gid: 9 });
        assert_eq!(parse_owner("root").unwrap(), Owner { uid: 0, gid: 0 });
        assert!(parse_owner("no-such-user-here").is_err());
    }
}
