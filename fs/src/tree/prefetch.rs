//! Readahead of a directory's messages (issue #4 c): a reader that lists a directory and then
//! reads its messages one by one (`cat cur/*`, a backup, a client's first sync) reads them
//! in the listing's order. When a message of a listed directory is read for the first time
//! through a handle, the tree tells the source which messages follow it in the directory's
//! last listing ([`MaildirSource::prefetch`]), so that the source can start fetching them
//! (many at once) before the reader asks.
//!
//! Invariants:
//! * A hint, never a wait: the source's `prefetch` must return at once, and it is called with
//!   no lock of the tree held.
//! * Each message of a listing is hinted at most once (a high-water mark per directory; a new
//!   listing starts over), at most [`WINDOW`] keys per call, never more than [`WINDOW`] ahead
//!   of the message read, and only after a read: listing alone hints nothing.
//! * Bounded memory: the orders of the last [`MAX_DIRS`] directories listed, at most
//!   [`MAX_KEYS`] keys each (shared references to the listing's keys).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::{MaildirSource, MessageKey};

use super::Tree;

/// How far ahead of the message read the tree hints. Hints go out in batches of half of it,
/// when fewer than half of it are left hinted ahead.
pub const WINDOW: usize = 64;
/// Directories whose listing order is kept (the most recently listed).
pub const MAX_DIRS: usize = 4;
/// The most keys kept of one listing (messages beyond are never hinted).
pub const MAX_KEYS: usize = 1 << 20;

/// The listing orders and how far each was hinted.
#[derive(Debug, Default)]
pub(super) struct Readahead {
    /// Oldest first.
    dirs: Mutex<VecDeque<Order>>,
}

/// One directory's last listing.
#[derive(Debug)]
struct Order {
    dir: u64,
    keys: Vec<MessageKey>,
    /// Each key's position, built at the first read that is not of the next message.
    pos: Option<HashMap<MessageKey, usize>>,
    /// The position of the message last read.
    last: Option<usize>,
    /// Messages before this position were hinted (or read) already.
    high: usize,
}

impl Order {
    fn position(&mut self, key: &MessageKey) -> Option<usize> {
        let next = self.last.map_or(0, |l| l + 1);
        if self.keys.get(next) == Some(key) {
            return Some(next);
        }
        let keys = &self.keys;
        let pos = self.pos.get_or_insert_with(|| {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i))
                .collect()
        });
        pos.get(key).copied()
    }

    /// The keys to hint now that the message at `p` is read.
    fn after_read(&mut self, p: usize) -> &[MessageKey] {
        self.last = Some(p);
        let next = p + 1;
        self.high = self.high.max(next);
        if self.high >= next + WINDOW / 2 || self.high >= self.keys.len() {
            return &[];
        }
        let from = self.high;
        let to = (next + WINDOW).min(self.keys.len());
        self.high = to;
        &self.keys[from..to]
    }
}

impl Readahead {
    /// The directory `dir` was listed with these messages, in this order.
    pub(super) fn listed(&self, dir: u64, mut keys: Vec<MessageKey>) {
        keys.truncate(MAX_KEYS);
        let order = Order {
            dir,
            keys,
            pos: None,
            last: None,
            high: 0,
        };
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        dirs.retain(|o| o.dir != dir);
        while dirs.len() >= MAX_DIRS {
            dirs.pop_front();
        }
        dirs.push_back(order);
    }

    /// The messages to hint now that `key` is read (empty: none).
    fn on_read(&self, key: &MessageKey) -> Vec<MessageKey> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        for o in dirs.iter_mut().rev() {
            if let Some(p) = o.position(key) {
                return o.after_read(p).to_vec();
            }
        }
        Vec::new()
    }
}

impl<S: MaildirSource> Tree<S> {
    /// Before the first read of `key` through a handle: hints the messages that follow it in
    /// its directory's last listing (none if it was not listed).
    pub(super) fn prefetch_after(&self, key: &MessageKey) {
        let keys = self.readahead.on_read(key);
        if !keys.is_empty() {
            self.source.prefetch(&keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::inode::ROOT;
    use crate::memory::MemorySource;
    use crate::tree::{OpenMode, Owner};
    use crate::{Flags, NewMessage};

    struct T {
        tree: Tree<MemorySource>,
        dir: std::path::PathBuf,
    }

    impl Drop for T {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A tree over `n` messages in INBOX's `cur/`.
    fn setup(n: usize) -> T {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let i = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("peerpost-fs-prefetch-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = Arc::new(MemorySource::new(u64::MAX));
        for m in 0..n {
            src.deliver(
                "INBOX",
                NewMessage {
                    base: format!("{}.M{m}.test", 1_700_000_000 + m),
                    bytes: format!("Subject: {m}\r\n\r\nbody {m}\r\n").into_bytes(),
                    flags: Flags::from_letters("S"),
                    internal_date: 1_700_000_000 + m as i64,
                    recent: false,
                },
            )
            .unwrap();
        }
        let tree = Tree::new(src, &dir, Owner { uid: 8, gid: 8 }).unwrap();
        T { tree, dir }
    }

    /// `cur/`'s message files, in listing order: (inode, key).
    fn list(t: &T) -> Vec<u64> {
        let cur = t.tree.lookup(ROOT, "cur").unwrap().ino;
        t.tree
            .readdir(cur)
            .unwrap()
            .into_iter()
            .filter(|d| d.name != "." && d.name != "..")
            .map(|d| d.ino)
            .collect()
    }

    fn key_of(t: &T, ino: u64) -> MessageKey {
        let st = t.tree.lock();
        match t.tree.key(&st, ino).unwrap() {
            crate::inode::NodeKey::Message(_, k) => k,
            other => panic!("not a message: {other:?}"),
        }
    }

    fn read(t: &T, ino: u64) {
        let fh = t
            .tree
            .open(ino, OpenMode::from_flags(libc::O_RDONLY))
            .unwrap();
        assert!(!t.tree.read(fh, 0, 1 << 16).unwrap().is_empty());
        // A second read of the same handle does not hint again.
        t.tree.read(fh, 1, 1 << 16).unwrap();
        t.tree.release(fh);
    }

    /// Reading a listed directory in order hints every message after the first exactly once,
    /// in order, in calls of at most WINDOW keys, each message hinted before it is read and
    /// never more than WINDOW ahead; listing alone hints nothing, and a new listing starts
    /// over.
    #[test]
    fn reads_in_listing_order_hint_each_next_message_once_within_the_window() {
        let n = 300;
        let t = setup(n);
        let inos = list(&t);
        assert_eq!(inos.len(), n);
        let keys: Vec<MessageKey> = inos.iter().map(|i| key_of(&t, *i)).collect();
        assert!(
            t.tree.source().prefetched().is_empty(),
            "listing alone hints nothing"
        );
        let mut hinted = 0usize;
        for (p, ino) in inos.iter().enumerate() {
            read(&t, *ino);
            let calls = t.tree.source().prefetched();
            let flat: Vec<MessageKey> = calls.concat();
            assert!(calls.iter().all(|c| !c.is_empty() && c.len() <= WINDOW));
            // Hinted so far: exactly the messages after p, in order, up to WINDOW ahead.
            assert_eq!(flat[..], keys[1..1 + flat.len()], "in order, each once");
            let ahead = flat.len() - p;
            assert!(
                flat.len() == n - 1 || (WINDOW / 2..=WINDOW).contains(&ahead),
                "after reading {p}: {ahead} hinted ahead"
            );
            hinted = flat.len();
        }
        assert_eq!(hinted, n - 1, "every message but the first");
        let calls = t.tree.source().prefetched().len();
        // Reading again without a new listing: nothing more.
        read(&t, inos[5]);
        read(&t, inos[6]);
        assert_eq!(t.tree.source().prefetched().len(), calls);
        // A new listing starts over (the reader lists again, as `ls` then `cat` does).
        let inos = list(&t);
        read(&t, inos[0]);
        let last = t.tree.source().prefetched().pop().unwrap();
        assert_eq!(last[..], keys[1..=WINDOW]);
    }

    /// Reads out of order (a jump ahead, back, ahead) hint only messages not hinted yet, and a
    /// message not in any listing hints nothing.
    #[test]
    fn jumps_hint_only_what_was_not_hinted_and_unlisted_reads_hint_nothing() {
        let t = setup(200);
        let cur = t.tree.lookup(ROOT, "cur").unwrap().ino;
        // Opened by name, never listed: no order, no hint.
        let inos: Vec<u64> = t
            .tree
            .readdir(cur)
            .unwrap()
            .into_iter()
            .filter(|d| d.name != "." && d.name != "..")
            .map(|d| d.ino)
            .collect();
        let keys: Vec<MessageKey> = inos.iter().map(|i| key_of(&t, *i)).collect();
        t.tree.readahead.dirs.lock().unwrap().clear();
        read(&t, inos[0]);
        assert!(t.tree.source().prefetched().is_empty());
        let _ = list(&t);
        read(&t, inos[100]);
        // Back: everything up to the high-water mark counts as hinted.
        read(&t, inos[10]);
        read(&t, inos[150]);
        let calls = t.tree.source().prefetched();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0][..], keys[101..101 + WINDOW]);
        // 101..165 were hinted: from the high-water mark on, up to the end.
        assert_eq!(calls[1][..], keys[101 + WINDOW..]);
        let flat = calls.concat();
        let mut unique = flat.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), flat.len(), "no message hinted twice");
    }

    /// At most MAX_DIRS listings are kept.
    #[test]
    fn listing_orders_are_bounded() {
        let r = Readahead::default();
        for d in 0..(MAX_DIRS as u64 + 3) {
            r.listed(d, vec![MessageKey(format!("{d}").into())]);
        }
        r.listed(MAX_DIRS as u64 + 2, Vec::new());
        let dirs = r.dirs.lock().unwrap();
        assert_eq!(dirs.len(), MAX_DIRS);
        assert_eq!(dirs.back().map(|o| o.dir), Some(MAX_DIRS as u64 + 2));
    }
}
