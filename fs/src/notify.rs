//! Changes made by the engine (mail from another process or from peers) reaching the kernel
//! and the programs watching the mount.
//!
//! Two things are needed (notes/real-clients.md §3): the kernel's name cache must forget
//! what changed (`inval_entry`, so `ls` is right at once), and inotify watchers (Dovecot's
//! IDLE, mutt) must be woken, which only an operation passing through the VFS does. So a
//! separate thread — never a FUSE worker, never while the tree's lock is held — creates and
//! unlinks the placeholder [`WAKE_NAME`] in the changed `new/`/`cur/` *through the mount*:
//! watchers see `IN_CREATE`/`IN_DELETE` there and rescan.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// The placeholder file created and removed in a directory to wake its watchers. Not a
/// message: the tree lets it be created in `new/` and `cur/` as a local file.
pub const WAKE_NAME: &str = ".peerpost-wake";
/// Directories waiting to be poked; when full, further pokes are dropped (the directory is
/// already due for one).
pub const WAKE_QUEUE: usize = 256;

/// The thread that pokes directories through the mount.
#[derive(Debug)]
pub struct Waker {
    tx: Option<SyncSender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl Waker {
    pub fn spawn() -> std::io::Result<Waker> {
        let (tx, rx) = sync_channel(WAKE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("fuse-waker".into())
            .spawn(move || run(rx))?;
        Ok(Waker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a directory (a path on the mount) to be poked.
    pub fn poke(&self, dir: PathBuf) {
        if let Some(tx) = &self.tx {
            match tx.try_send(dir) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<PathBuf>) {
    while let Ok(dir) = rx.recv() {
        // Coalesce what is queued: one poke per directory.
        let mut dirs = vec![dir];
        while let Ok(d) = rx.try_recv() {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        for d in dirs {
            let p = d.join(WAKE_NAME);
            if std::fs::File::create(&p).is_ok() {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}
