//! The log decoder's limits, enforced where entries are written (issue #20): every change the
//! engine commits is checked against what [`LogEntry::open`](super::log::LogEntry::open) and
//! [`Op::decode`] accept, and a change too big for one entry is split into several.
//!
//! * Splittable: more ops than an entry holds ([`MAX_OPS`]), more entries than one op names
//!   ([`MAX_OPS`]), more keywords in a flag change than one list holds ([`MAX_KEYWORDS`]),
//!   more bytes than an entry should carry ([`MAX_BODY`]). A big `Remove`, `DeleteFolder` or
//!   `SetFlags` becomes several ops of the same kind over parts of its entries (each op is
//!   idempotent and commutes, so the pieces mean what the whole did); the ops are then packed,
//!   in order, into as few entries as the limits allow. The engine writes all the entries of
//!   one change in one durable commit, so the change is still all or nothing on this device.
//! * Not splittable, refused with [`Unloggable`] before anything is written or applied: a
//!   message with more than [`MAX_KEYWORDS`] keywords (an `Add` carries them all), an invalid
//!   keyword, folder or Maildir name (what the decoder would reject).

use thiserror::Error;

use super::model::{
    EntryId, MAX_FOLDER_NAME, MAX_KEYWORDS, MAX_MAILDIR_NAME, MAX_OPS, Op, check_name,
    valid_keyword,
};
use crate::wire::Writer;

/// Bytes of encoded ops one entry carries at most: a quarter of the decoder's
/// [`MAX_ENTRY`](super::log::MAX_ENTRY), so the sealed entry is far inside it, and a log
/// entry stays a small part of a backup bundle. Normal entries are far smaller (256 adds are
/// ~50 KiB); only bulk changes reach it.
pub const MAX_BODY: usize = 4 << 20;

/// A change the log cannot record, refused before anything is written or applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unloggable {
    #[error("{what}: {len}, more than the {max} the mailbox log allows")]
    TooMany {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} is invalid: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
}

/// The entries one change is written as, and where each op of the change went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The ops of each log entry, in order.
    pub entries: Vec<Vec<Op>>,
    /// For each op of the change, (entry, index) of its first piece: an `Add` or
    /// `CreateFolder` is never split, so this is the op that creates the entry or folder.
    pub first: Vec<(usize, u32)>,
}

/// Checks what splitting cannot fix: names, keywords, and the keywords of one message.
pub fn check(op: &Op) -> Result<(), Unloggable> {
    let name = |what, s: &str, max| {
        check_name(what, s, max).map_err(|_| Unloggable::Invalid {
            what,
            why: "empty, too long or has control characters",
        })
    };
    fn keywords<'a>(mut k: impl Iterator<Item = &'a String>) -> Result<(), Unloggable> {
        if k.any(|k| !valid_keyword(k)) {
            return Err(Unloggable::Invalid {
                what: "keyword",
                why: "not an IMAP atom of at most 64 bytes",
            });
        }
        Ok(())
    }
    match op {
        Op::CreateFolder { name: n, .. } | Op::RenameFolder { name: n, .. } => {
            name("folder name", n, MAX_FOLDER_NAME)
        }
        Op::Add { message, flags, .. } => {
            name("Maildir name", &message.maildir_name, MAX_MAILDIR_NAME)?;
            if message.maildir_name.contains('/') {
                return Err(Unloggable::Invalid {
                    what: "Maildir name",
                    why: "contains '/'",
                });
            }
            if flags.keywords.len() > MAX_KEYWORDS {
                return Err(Unloggable::TooMany {
                    what: "keywords on one message",
                    len: flags.keywords.len(),
                    max: MAX_KEYWORDS,
                });
            }
            keywords(flags.keywords.iter())
        }
        Op::SetFlags {
            set_keywords,
            clear_keywords,
            ..
        } => keywords(set_keywords.iter().chain(clear_keywords)),
        Op::DeleteFolder { .. } | Op::Subscribe { .. } | Op::Remove { .. } => Ok(()),
    }
}

/// Whether one op is inside every per-op limit of the decoder (after [`check`]).
pub fn fits(op: &Op) -> bool {
    match op {
        Op::DeleteFolder { observed: ids, .. } | Op::Remove { entries: ids } => {
            ids.len() <= MAX_OPS
        }
        Op::SetFlags {
            entries,
            set_keywords,
            clear_keywords,
            ..
        } => {
            entries.len() <= MAX_OPS
                && set_keywords.len() <= MAX_KEYWORDS
                && clear_keywords.len() <= MAX_KEYWORDS
        }
        Op::Add { flags, .. } => flags.keywords.len() <= MAX_KEYWORDS,
        Op::CreateFolder { .. } | Op::RenameFolder { .. } | Op::Subscribe { .. } => true,
    }
}

/// `ids` in parts of at most [`MAX_OPS`] (one empty part if `ids` is empty).
fn parts(ids: &[EntryId]) -> Vec<Vec<EntryId>> {
    if ids.is_empty() {
        return vec![Vec::new()];
    }
    ids.chunks(MAX_OPS).map(<[EntryId]>::to_vec).collect()
}

/// Splits one (checked) op into pieces that each [`fits`].
fn pieces(op: Op, out: &mut Vec<Op>) {
    match op {
        Op::Remove { entries } => out.extend(
            parts(&entries)
                .into_iter()
                .map(|entries| Op::Remove { entries }),
        ),
        Op::DeleteFolder { folder, observed } => out.extend(
            parts(&observed)
                .into_iter()
                .map(|observed| Op::DeleteFolder { folder, observed }),
        ),
        Op::SetFlags {
            entries,
            set,
            clear,
            set_keywords,
            clear_keywords,
            seen_by_reader,
        } => {
            let rounds = set_keywords
                .len()
                .max(clear_keywords.len())
                .div_ceil(MAX_KEYWORDS)
                .max(1);
            let kw = |v: &[String], i: usize| {
                v.iter()
                    .skip(i * MAX_KEYWORDS)
                    .take(MAX_KEYWORDS)
                    .cloned()
                    .collect()
            };
            for entries in parts(&entries) {
                for i in 0..rounds {
                    // The system flags and the reader mark go with the first piece only.
                    out.push(Op::SetFlags {
                        entries: entries.clone(),
                        set: if i == 0 { set } else { 0 },
                        clear: if i == 0 { clear } else { 0 },
                        set_keywords: kw(&set_keywords, i),
                        clear_keywords: kw(&clear_keywords, i),
                        seen_by_reader: seen_by_reader && i == 0,
                    });
                }
            }
        }
        other => out.push(other),
    }
}

/// The encoded size of an op.
pub fn encoded_len(op: &Op) -> usize {
    let mut w = Writer::new();
    op.encode(&mut w);
    w.len()
}

/// Splits a change into log entries that each decode: checks every op ([`check`]), splits the
/// ones over a per-op limit, and packs the pieces in order, at most [`MAX_OPS`] ops and
/// [`MAX_BODY`] bytes per entry.
pub fn split(ops: Vec<Op>) -> Result<Split, Unloggable> {
    for op in &ops {
        check(op)?;
    }
    let mut entries: Vec<Vec<Op>> = Vec::new();
    let mut first = Vec::with_capacity(ops.len());
    let mut current: Vec<Op> = Vec::new();
    let mut bytes = 0;
    let mut scratch = Vec::new();
    for op in ops {
        pieces(op, &mut scratch);
        for (n, piece) in scratch.drain(..).enumerate() {
            let len = encoded_len(&piece);
            if !current.is_empty() && (current.len() == MAX_OPS || bytes + len > MAX_BODY) {
                entries.push(std::mem::take(&mut current));
                bytes = 0;
            }
            if n == 0 {
                first.push((entries.len(), current.len() as u32));
            }
            bytes += len;
            current.push(piece);
        }
    }
    if !current.is_empty() {
        entries.push(current);
    }
    Ok(Split { entries, first })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crypto::{ObjectId, UserKeys};
    use crate::mailbox::log::{LogEntry, MAX_ENTRY};
    use crate::mailbox::model::{Flags, MessageRef, OpId, Role};

    fn ids(n: usize, salt: u64) -> Vec<EntryId> {
        (0..n)
            .map(|i| OpId {
                device: salt,
                seq: (i / 1000) as u64,
                idx: (i % 1000) as u32,
            })
            .collect()
    }

    fn keywords(n: usize, long: bool) -> Vec<String> {
        (0..n)
            .map(|i| {
                if long {
                    format!("k{i:063}")
                } else {
                    format!("k{i}")
                }
            })
            .collect()
    }

    fn add(n_keywords: usize, name_len: usize, long: bool) -> Op {
        Op::Add {
            folder: Role::Inbox.folder_id(),
            message: MessageRef {
                object: ObjectId([3; 32]),
                key: [4; 32],
                size: 10,
                internal_date: 1,
                maildir_name: "m".repeat(name_len),
            },
            flags: Flags {
                bits: 0,
                keywords: keywords(n_keywords, long).into_iter().collect(),
            },
            recent: false,
        }
    }

    /// Ops around and past every limit of the decoder. Sizes are chosen so that one case
    /// stays cheap; many small ops stand for "more ops than an entry holds".
    fn arb_big_op() -> impl Strategy<Value = Vec<Op>> {
        let count = prop_oneof![0usize..4, MAX_OPS - 1..MAX_OPS + 2, Just(2 * MAX_OPS + 1)];
        let kw = prop_oneof![0usize..3, 62usize..67, 120usize..200];
        prop_oneof![
            (count.clone(), any::<u64>())
                .prop_map(|(n, s)| vec![Op::Remove { entries: ids(n, s) }]),
            (count.clone(), any::<u64>()).prop_map(|(n, s)| vec![Op::DeleteFolder {
                folder: Role::Junk.folder_id(),
                observed: ids(n, s),
            }]),
            // Many entries and few keywords, or few entries and many (long) keywords.
            (
                count.clone(),
                0usize..3,
                0usize..3,
                any::<u8>(),
                any::<bool>()
            )
                .prop_map(|(n, s, c, bits, seen)| vec![Op::SetFlags {
                    entries: ids(n, 1),
                    set: bits,
                    clear: !bits,
                    set_keywords: keywords(s, false),
                    clear_keywords: keywords(c, false),
                    seen_by_reader: seen,
                }]),
            (0usize..3, kw.clone(), kw.clone(), any::<bool>()).prop_map(|(n, s, c, long)| {
                vec![Op::SetFlags {
                    entries: ids(n, 2),
                    set: 1,
                    clear: 0,
                    set_keywords: keywords(s, long),
                    clear_keywords: keywords(c, long)
                        .into_iter()
                        .map(|k| format!("c{k}"))
                        .collect(),
                    seen_by_reader: true,
                }]
            }),
            // Adds: keywords around 64, names around 255.
            (kw, 250usize..260, any::<bool>()).prop_map(|(k, len, long)| vec![add(k, len, long)]),
            // Many ops in one change: cheap subscribes, or adds with 64 long keywords
            // (~4.5 KiB each: the byte limit of an entry comes first).
            count.clone().prop_map(|n| (0..n)
                .map(|i| Op::Subscribe {
                    folder: Role::Sent.folder_id(),
                    subscribed: i % 2 == 0,
                })
                .collect()),
            prop_oneof![0usize..3, 900usize..1100]
                .prop_map(|n| (0..n).map(|_| add(64, 255, true)).collect()),
            // Names a decoder refuses.
            prop_oneof![Just(0usize), 254usize..258, Just(300)].prop_map(|len| vec![
                Op::CreateFolder {
                    folder: Role::Archive.folder_id(),
                    name: "f".repeat(len),
                    role: None,
                }
            ]),
        ]
    }

    /// What a list of ops asserts, atom by atom: splitting must keep exactly this.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    enum Fact {
        Removed(Option<OpId>, EntryId),
        Deleted(OpId),
        Sys(EntryId, u8, u8),
        Keyword(EntryId, bool, String),
        Reader(EntryId),
        Other(Vec<u8>),
    }

    /// The facts of `ops`, each hashed, sorted, without duplicates.
    fn facts(ops: &[Op]) -> Vec<u64> {
        let mut out = Facts(Vec::new());
        for op in ops {
            match op {
                Op::Remove { entries } => {
                    out.extend(entries.iter().map(|e| Fact::Removed(None, *e)))
                }
                Op::DeleteFolder { folder, observed } => {
                    out.insert(Fact::Deleted(*folder));
                    out.extend(observed.iter().map(|e| Fact::Removed(Some(*folder), *e)));
                }
                Op::SetFlags {
                    entries,
                    set,
                    clear,
                    set_keywords,
                    clear_keywords,
                    seen_by_reader,
                } => {
                    for e in entries {
                        for bit in 0..8 {
                            let b = 1u8 << bit;
                            if set & b != 0 || clear & b != 0 {
                                out.insert(Fact::Sys(*e, b, set & b));
                            }
                        }
                        for k in set_keywords {
                            out.insert(Fact::Keyword(*e, true, k.clone()));
                        }
                        for k in clear_keywords {
                            out.insert(Fact::Keyword(*e, false, k.clone()));
                        }
                        if *seen_by_reader {
                            out.insert(Fact::Reader(*e));
                        }
                    }
                }
                other => {
                    let mut w = Writer::new();
                    other.encode(&mut w);
                    out.insert(Fact::Other(w.into_vec()));
                }
            }
        }
        out.0.sort_unstable();
        out.0.dedup();
        out.0
    }

    struct Facts(Vec<u64>);

    impl Facts {
        fn insert(&mut self, f: Fact) {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            f.hash(&mut h);
            self.0.push(h.finish());
        }

        fn extend(&mut self, fs: impl Iterator<Item = Fact>) {
            fs.for_each(|f| self.insert(f));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Every change past a limit is split into entries that each encode and decode to
        /// what was split (and say together what the change said), or refused clearly.
        #[test]
        fn every_entry_written_decodes(ops in arb_big_op()) {
            let total = ops.len();
            let unsplit = LogEntry { device: 9, seq: 1, hlc: 2, ops: ops.clone() };
            match split(ops) {
                Err(e) => {
                    // Refused: so is the change written as one entry, before anything is
                    // written (the encoder never writes what the decoder refuses).
                    prop_assert!(!e.to_string().is_empty());
                    prop_assert!(unsplit.encode_body().is_err());
                }
                Ok(Split { entries, first }) => {
                    let whole = facts(&unsplit.ops);
                    prop_assert_eq!(first.len(), total);
                    prop_assert!(first.windows(2).all(|w| w[0] < w[1]), "ops stay in order");
                    let mut pieces = Vec::new();
                    for (n, ops) in entries.into_iter().enumerate() {
                        prop_assert!(!ops.is_empty() && ops.len() <= MAX_OPS);
                        let e = LogEntry { device: 9, seq: n as u64 + 1, hlc: 2, ops };
                        let body = e.encode_body().unwrap();
                        prop_assert!(body.len() <= MAX_BODY + 64 && body.len() < MAX_ENTRY);
                        prop_assert_eq!(&LogEntry::decode_body(&body).unwrap(), &e);
                        pieces.extend(e.ops);
                    }
                    prop_assert!(facts(&pieces) == whole, "the pieces say what the change said");
                    // Wherever the unsplit entry encodes, it decodes too.
                    if let Ok(body) = unsplit.encode_body() {
                        prop_assert_eq!(LogEntry::decode_body(&body).unwrap(), unsplit);
                    }
                }
            }
        }
    }

    /// The sealed form too (the cases above skip the encryption, which is slow in debug).
    #[test]
    fn split_entries_seal_and_open() {
        let keys = UserKeys::from_seed([5; 32]);
        let ops = vec![
            Op::Remove {
                entries: ids(MAX_OPS + 1, 3),
            },
            add(64, 255, true),
        ];
        let Split { entries, first } = split(ops).unwrap();
        assert_eq!(
            entries.len(),
            1,
            "two pieces of the remove and the add fit one entry"
        );
        assert_eq!(first, vec![(0, 0), (0, 2)]);
        for (n, ops) in entries.into_iter().enumerate() {
            let e = LogEntry {
                device: 1,
                seq: n as u64 + 1,
                hlc: 7,
                ops,
            };
            let bytes = e.seal(&keys, &keys.log_key()).unwrap();
            assert_eq!(
                LogEntry::open(&bytes, keys.public(), &keys.log_key()).unwrap(),
                e
            );
        }
        let too_many = LogEntry {
            device: 1,
            seq: 1,
            hlc: 1,
            ops: vec![add(65, 10, false)],
        };
        let err = too_many.seal(&keys, &keys.log_key()).unwrap_err();
        assert!(
            err.to_string().contains("keywords on one message: 65"),
            "{err}"
        );
    }
}
