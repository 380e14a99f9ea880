//! Stable inode numbers.
//!
//! Every node of the tree has a [`NodeKey`] naming it without reference to a mount: the root,
//! a folder by name, a folder's `cur`/`new`/`tmp`, a message by (folder, message key), a local
//! file by its path relative to the Maildir root. Its inode number is a 64-bit FNV-1a hash of
//! that key (the root is 1, numbers below [`FIRST_HASHED`] are never handed out), so the same
//! message gets the same number on every mount; on the rare collision the next free number is
//! taken (and that one is stable only for the mount). A rename within one mount re-keys the
//! node and keeps its number, as the kernel expects of `rename(2)`.
//!
//! A local file is the exception: its number is drawn afresh each time the table first sees
//! it ([`local_number`]: its backing inode number hashed with a per-mount serial), because
//! the backing file system hands a freed inode number to the next file it makes. Had the
//! number followed the backing one, a file made where a deleted one was (a re-created
//! folder's `dovecot.index.log`) would have come back under the deleted file's number, and
//! the kernel, which may still hold that inode (its cached pages and attributes, a
//! descriptor of a process), would have served the old file's bytes for the new one.

use std::collections::HashMap;

use crate::MessageKey;

/// The root directory (the INBOX Maildir).
pub const ROOT: u64 = 1;
/// Hashed inode numbers are at least this (leaves room for fixed ones).
pub const FIRST_HASHED: u64 = 1 << 16;
/// Numbers of deleted directories kept out of use at most (oldest handed out again first).
pub const MAX_RETIRED: usize = 4096;

/// `cur`, `new` or `tmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sub {
    Cur,
    New,
    Tmp,
}

impl Sub {
    pub const ALL: [Sub; 3] = [Sub::Cur, Sub::New, Sub::Tmp];

    pub fn name(self) -> &'static str {
        match self {
            Sub::Cur => "cur",
            Sub::New => "new",
            Sub::Tmp => "tmp",
        }
    }

    pub fn from_name(name: &str) -> Option<Sub> {
        Sub::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a node is, independent of any mount.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKey {
    Root,
    /// A folder's directory (`.A.B` for `A/B`); INBOX is the root.
    Folder(String),
    /// `cur`, `new` or `tmp` of a folder.
    Sub(String, Sub),
    /// A message, by folder and key (in `new/` or `cur/`, as its state says).
    Message(String, MessageKey),
    /// A file kept on local disk, by its inode number in the backing directory (so hard
    /// links share a number, as Dovecot's lock files expect).
    Local(u64),
}

impl NodeKey {
    /// The hashed bytes: a tag, then the key's text (parts joined by NUL).
    fn hash(&self) -> u64 {
        let mut h = Fnv::new();
        match self {
            NodeKey::Root => h.feed(&[0]),
            NodeKey::Folder(f) => {
                h.feed(&[1]);
                h.feed(f.as_bytes());
            }
            NodeKey::Sub(f, s) => {
                h.feed(&[2]);
                h.feed(f.as_bytes());
                h.feed(&[0]);
                h.feed(s.name().as_bytes());
            }
            NodeKey::Message(f, k) => {
                h.feed(&[3]);
                h.feed(f.as_bytes());
                h.feed(&[0]);
                h.feed(k.0.as_bytes());
            }
            NodeKey::Local(b) => {
                h.feed(&[4]);
                h.feed(b.to_string().as_bytes());
            }
        }
        h.0
    }
}

/// FNV-1a, 64 bits, fed in pieces (no key is formatted into a string to be hashed).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// FNV-1a, 64 bits: fixed forever (inode numbers must not change between builds).
pub fn fnv1a(tag: u8, text: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.feed(&[tag]);
    h.feed(text);
    h.0
}

/// The number of the `serial`-th local file seen by a mount, backing inode `b`: the two
/// hashed together (tag 5), so a backing inode number used again by the backing file system
/// gets another number (no two draws of one mount meet but by a 64-bit hash collision).
pub fn local_number(b: u64, serial: u64) -> u64 {
    let mut h = Fnv::new();
    h.feed(&[5]);
    h.feed(&b.to_le_bytes());
    h.feed(&serial.to_le_bytes());
    FIRST_HASHED + h.0 % (u64::MAX - 2 * FIRST_HASHED)
}

/// The preferred number of a key.
pub fn preferred(key: &NodeKey) -> u64 {
    if *key == NodeKey::Root {
        return ROOT;
    }
    // Keep clear of the fixed numbers and of u64::MAX (FUSE reserves nothing else).
    FIRST_HASHED + key.hash() % (u64::MAX - 2 * FIRST_HASHED)
}

/// The two-way map between keys and numbers for one mount. Each key is held once: a key's
/// number is its [`preferred`] one unless `moved` says otherwise (a collision took the next
/// free number, or a rename kept the old node's), so looking a key up is one hash and one
/// probe of `by_ino` (with 100k messages listed, a second full map of keys cost 20 MiB).
#[derive(Debug, Default)]
pub struct Inodes {
    by_ino: HashMap<u64, NodeKey>,
    /// The keys whose number is not their preferred one.
    moved: HashMap<NodeKey, u64>,
    /// Numbers of deleted directories not handed out again ([`Inodes::retire`]), oldest first.
    retired: std::collections::VecDeque<u64>,
    retired_set: std::collections::HashSet<u64>,
    /// Local files numbered so far ([`local_number`]).
    local_serial: u64,
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut t = Inodes::default();
        t.by_ino.insert(ROOT, NodeKey::Root);
        t
    }

    /// The number of a known key.
    fn find(&self, key: &NodeKey) -> Option<u64> {
        if let Some(i) = self.moved.get(key) {
            return Some(*i);
        }
        let i = preferred(key);
        (self.by_ino.get(&i) == Some(key)).then_some(i)
    }

    /// Records `key` under number `i`.
    fn place(&mut self, key: NodeKey, i: u64) {
        if i != preferred(&key) {
            self.moved.insert(key.clone(), i);
        }
        self.by_ino.insert(i, key);
    }

    /// The number of a key, assigning one on first sight.
    pub fn ino(&mut self, key: &NodeKey) -> u64 {
        if let Some(i) = self.find(key) {
            return i;
        }
        let mut i = match key {
            NodeKey::Local(b) => {
                self.local_serial += 1;
                local_number(*b, self.local_serial)
            }
            _ => preferred(key),
        };
        while self.by_ino.contains_key(&i)
            || self.retired_set.contains(&i)
            || i < FIRST_HASHED
            || i == u64::MAX
        {
            i = i.wrapping_add(1).max(FIRST_HASHED);
        }
        self.place(key.clone(), i);
        i
    }

    /// Whether the key has a number (it was shown).
    pub fn contains(&self, key: &NodeKey) -> bool {
        self.find(key).is_some()
    }

    pub fn key(&self, ino: u64) -> Option<&NodeKey> {
        self.by_ino.get(&ino)
    }

    /// The node `from` is now `to` (a rename): it keeps its number. A node already known as
    /// `to` (replaced by the rename) is forgotten.
    pub fn rekey(&mut self, from: &NodeKey, to: &NodeKey) {
        if from == to {
            return;
        }
        self.remove(to);
        if let Some(i) = self.find(from) {
            self.moved.remove(from);
            self.place(to.clone(), i);
        }
    }

    /// Forgets a node that no longer exists (its number may be handed out again).
    pub fn remove(&mut self, key: &NodeKey) {
        if let Some(i) = self.find(key) {
            self.moved.remove(key);
            self.by_ino.remove(&i);
        }
    }

    /// Forgets a deleted directory and keeps its number out of use: a directory made again
    /// under the same name is a new inode to the kernel, as on a disk, so entries the kernel
    /// still caches under the old one (a deleted folder's `dovecot.index.log`) are never
    /// found in the new one.
    pub fn retire(&mut self, key: &NodeKey) {
        let Some(i) = self.find(key) else {
            return;
        };
        self.remove(key);
        if self.retired_set.insert(i) {
            self.retired.push_back(i);
        }
        while self.retired.len() > MAX_RETIRED {
            if let Some(old) = self.retired.pop_front() {
                self.retired_set.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_directory_made_again_gets_another_number() {
        let mut t = Inodes::new();
        let f = NodeKey::Folder("Churn".into());
        let old = t.ino(&f);
        t.retire(&f);
        assert_eq!(t.key(old), None);
        let new = t.ino(&f);
        assert_ne!(new, old);
        assert_eq!(t.key(new), Some(&f));
        // A plain remove hands the number out again (messages keep theirs across mounts).
        let m = NodeKey::Message("INBOX".into(), MessageKey("k".into()));
        let i = t.ino(&m);
        t.remove(&m);
        assert_eq!(t.ino(&m), i);
    }

    #[test]
    fn numbers_are_stable_across_tables() {
        let k = NodeKey::Message("INBOX".into(), MessageKey("abc".into()));
        let mut a = Inodes::new();
        let mut b = Inodes::new();
        b.ino(&NodeKey::Folder("X".into()));
        assert_eq!(a.ino(&k), b.ino(&k));
        assert_eq!(a.ino(&k), preferred(&k));
        assert_eq!(a.ino(&NodeKey::Root), ROOT);
        // Different kinds with the same text get different numbers.
        assert_ne!(
            preferred(&NodeKey::Folder("1".into())),
            preferred(&NodeKey::Local(1))
        );
    }

    #[test]
    fn collisions_take_the_next_free_number_and_rekey_keeps_it() {
        let mut t = Inodes::new();
        let msg = |k: &str| NodeKey::Message("INBOX".into(), MessageKey(k.into()));
        let k1 = msg("1");
        let i1 = t.ino(&k1);
        // Force a collision: occupy k2's preferred number with k1's entry.
        let k2 = msg("2");
        let p2 = preferred(&k2);
        t.by_ino.insert(p2, k1.clone());
        let i2 = t.ino(&k2);
        assert_ne!(i2, p2);
        assert!(i2 >= FIRST_HASHED);
        let k3 = msg("3");
        t.rekey(&k1, &k3);
        assert_eq!(t.ino(&k3), i1);
        assert_eq!(t.key(i1), Some(&k3));
        t.remove(&k3);
        assert_eq!(t.key(i1), None);
    }

    /// The backing file system reuses a freed inode number for the next file it makes: the
    /// new file must not come back under the old one's number, which the kernel may still
    /// hold with the old file's cached pages (a re-created folder's `dovecot.index.log`
    /// read with the deleted one's bytes: Dovecot's "indexid changed").
    #[test]
    fn a_local_file_seen_again_never_gets_a_number_used_before() {
        let mut t = Inodes::new();
        let k = NodeKey::Local(4242);
        let first = t.ino(&k);
        // Hard links (one backing inode) share the number while it is known.
        assert_eq!(t.ino(&k), first);
        let mut seen = std::collections::HashSet::from([first]);
        for _ in 0..1000 {
            t.remove(&k);
            let again = t.ino(&k);
            assert!(seen.insert(again), "number {again} handed out twice");
            assert_eq!(t.key(again), Some(&k));
        }
        // Two mounts number the same backing file alike (the serial is the mount's).
        let mut u = Inodes::new();
        assert_eq!(u.ino(&k), first);
    }

    /// The number formula as first written (the key formatted into text, then hashed): the
    /// streaming hash must give the same numbers, or every inode changes between builds.
    fn preferred_by_text(key: &NodeKey) -> u64 {
        let (tag, text) = match key {
            NodeKey::Root => return ROOT,
            NodeKey::Folder(f) => (1, f.clone()),
            NodeKey::Sub(f, s) => (2, format!("{f}\0{}", s.name())),
            NodeKey::Message(f, k) => (3, format!("{f}\0{}", k.0)),
            NodeKey::Local(b) => (4, b.to_string()),
        };
        FIRST_HASHED + fnv1a(tag, text.as_bytes()) % (u64::MAX - 2 * FIRST_HASHED)
    }

    /// The two-map table the one-map table replaced: the reference model.
    #[derive(Default)]
    struct Model {
        by_ino: HashMap<u64, NodeKey>,
        by_key: HashMap<NodeKey, u64>,
        local_serial: u64,
    }

    impl Model {
        fn ino(&mut self, key: &NodeKey, taken: &dyn Fn(u64) -> bool) -> u64 {
            if let Some(i) = self.by_key.get(key) {
                return *i;
            }
            let mut i = match key {
                NodeKey::Local(b) => {
                    self.local_serial += 1;
                    local_number(*b, self.local_serial)
                }
                _ => preferred(key),
            };
            while self.by_ino.contains_key(&i) || taken(i) {
                i = i.wrapping_add(1).max(FIRST_HASHED);
            }
            self.by_ino.insert(i, key.clone());
            self.by_key.insert(key.clone(), i);
            i
        }
        fn rekey(&mut self, from: &NodeKey, to: &NodeKey) {
            if from == to {
                return;
            }
            if let Some(old) = self.by_key.remove(to) {
                self.by_ino.remove(&old);
            }
            if let Some(i) = self.by_key.remove(from) {
                self.by_ino.insert(i, to.clone());
                self.by_key.insert(to.clone(), i);
            }
        }
        fn remove(&mut self, key: &NodeKey) {
            if let Some(i) = self.by_key.remove(key) {
                self.by_ino.remove(&i);
            }
        }
    }

    fn key_strategy() -> impl proptest::strategy::Strategy<Value = NodeKey> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec!["INBOX", "A", "A/B", "\u{e9}t\u{e9}", ""]);
        prop_oneof![
            name.clone().prop_map(|f| NodeKey::Folder(f.to_string())),
            (name.clone(), 0..3usize).prop_map(|(f, s)| NodeKey::Sub(f.to_string(), Sub::ALL[s])),
            (name, 0..6u8).prop_map(|(f, k)| NodeKey::Message(
                f.to_string(),
                MessageKey(format!("{k:040x}").into())
            )),
            (0..6u64).prop_map(NodeKey::Local),
        ]
    }

    proptest::proptest! {
        #[test]
        fn streaming_hash_matches_the_text_formula(k in key_strategy(), text in ".{0,40}") {
            proptest::prop_assert_eq!(preferred(&k), preferred_by_text(&k));
            let m = NodeKey::Message(text.clone(), MessageKey(text.into()));
            proptest::prop_assert_eq!(preferred(&m), preferred_by_text(&m));
        }

        /// Any sequence of lookups, renames and removals, with collisions forced by squatting
        /// preferred numbers, numbers and resolves keys exactly as the two-map table did.
        #[test]
        fn one_map_table_agrees_with_the_two_map_model(
            ops in proptest::collection::vec((0..4u8, key_strategy(), key_strategy()), 1..60)
        ) {
            let mut t = Inodes::new();
            let mut m = Model::default();
            m.by_ino.insert(ROOT, NodeKey::Root);
            m.by_key.insert(NodeKey::Root, ROOT);
            for (op, a, b) in ops {
                match op {
                    0 => {
                        let i = t.ino(&a);
                        proptest::prop_assert_eq!(i, m.ino(&a, &|_| false));
                    }
                    1 => {
                        t.rekey(&a, &b);
                        m.rekey(&a, &b);
                    }
                    2 => {
                        t.remove(&a);
                        m.remove(&a);
                    }
                    _ => {
                        // A stranger squats b's preferred number (a collision).
                        let p = preferred(&b);
                        if let std::collections::hash_map::Entry::Vacant(v) = t.by_ino.entry(p) {
                            let squat = NodeKey::Local(1_000_000 + p % 1000);
                            v.insert(squat.clone());
                            m.by_ino.insert(p, squat);
                        }
                    }
                }
                for (i, k) in &m.by_ino {
                    proptest::prop_assert_eq!(t.key(*i), Some(k));
                }
                proptest::prop_assert_eq!(t.len(), m.by_ino.len());
                for (k, i) in &m.by_key {
                    proptest::prop_assert_eq!(t.find(k), Some(*i));
                }
            }
        }
    }
}
