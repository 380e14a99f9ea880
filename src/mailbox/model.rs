//! The mailbox's vocabulary: ids, flags, folders, message references and the operations that
//! device logs record, with their byte encoding (docs/design.md, "Mailbox operations").

use std::collections::BTreeSet;
use std::fmt;

use crate::crypto::{ContentKey, ObjectId};
use crate::wire::{DecodeError, Reader, Writer};

/// A device's short id: the first 8 bytes of BLAKE3(device public key). Unique among one
/// user's devices (which are all that write to one mailbox).
pub type DeviceId = u64;

/// Identifies one operation: the device that wrote it, the sequence number of the log entry
/// it is in, and its index in that entry. Entries (a message in a folder) and user folders are
/// named by the op that created them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId {
    pub device: DeviceId,
    pub seq: u64,
    pub idx: u32,
}

impl OpId {
    pub const LEN: usize = 20;

    pub fn to_bytes(self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.device.to_be_bytes());
        b[8..16].copy_from_slice(&self.seq.to_be_bytes());
        b[16..].copy_from_slice(&self.idx.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 20]) -> OpId {
        let mut d = [0u8; 8];
        let mut s = [0u8; 8];
        let mut i = [0u8; 4];
        d.copy_from_slice(&b[..8]);
        s.copy_from_slice(&b[8..16]);
        i.copy_from_slice(&b[16..]);
        OpId {
            device: u64::from_be_bytes(d),
            seq: u64::from_be_bytes(s),
            idx: u32::from_be_bytes(i),
        }
    }

    fn write(self, w: &mut Writer) {
        w.fixed(&self.to_bytes());
    }

    fn read(r: &mut Reader<'_>, field: &'static str) -> Result<OpId, DecodeError> {
        Ok(OpId::from_bytes(&r.array(field)?))
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}-{}", self.device, self.seq, self.idx)
    }
}

/// A message in a folder.
pub type EntryId = OpId;
/// A folder. INBOX and the special-use folders have well-known ids (device 0, seq 0), so every
/// device creates the same ones; user folders are named by their create op.
pub type FolderId = OpId;

/// SPECIAL-USE roles (RFC 6154), plus INBOX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Inbox = 0,
    Sent = 1,
    Drafts = 2,
    Trash = 3,
    Junk = 4,
    Archive = 5,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Inbox,
        Role::Sent,
        Role::Drafts,
        Role::Trash,
        Role::Junk,
        Role::Archive,
    ];

    pub fn folder_id(self) -> FolderId {
        OpId {
            device: 0,
            seq: 0,
            idx: self as u32,
        }
    }

    pub fn default_name(self) -> &'static str {
        match self {
            Role::Inbox => "INBOX",
            Role::Sent => "Sent",
            Role::Drafts => "Drafts",
            Role::Trash => "Trash",
            Role::Junk => "Junk",
            Role::Archive => "Archive",
        }
    }

    /// The IMAP SPECIAL-USE attribute.
    pub fn attribute(self) -> Option<&'static str> {
        match self {
            Role::Inbox => None,
            Role::Sent => Some("\\Sent"),
            Role::Drafts => Some("\\Drafts"),
            Role::Trash => Some("\\Trash"),
            Role::Junk => Some("\\Junk"),
            Role::Archive => Some("\\Archive"),
        }
    }

    fn from_u8(v: u8) -> Option<Role> {
        Role::ALL.get(usize::from(v)).copied()
    }
}

/// The system flags, as bits. Maildir letters: D F P R S T.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    Draft = 0,
    Flagged = 1,
    /// Maildir "P" (passed/forwarded); IMAP `$Forwarded`.
    Passed = 2,
    /// Maildir "R"; IMAP `\Answered`.
    Replied = 3,
    Seen = 4,
    /// Maildir "T"; IMAP `\Deleted`.
    Trashed = 5,
}

impl Flag {
    pub const ALL: [Flag; 6] = [
        Flag::Draft,
        Flag::Flagged,
        Flag::Passed,
        Flag::Replied,
        Flag::Seen,
        Flag::Trashed,
    ];

    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn letter(self) -> char {
        ['D', 'F', 'P', 'R', 'S', 'T'][self as usize]
    }

    pub fn from_letter(c: char) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.letter() == c)
    }

    /// The IMAP name.
    pub fn imap(self) -> &'static str {
        match self {
            Flag::Draft => "\\Draft",
            Flag::Flagged => "\\Flagged",
            Flag::Passed => "$Forwarded",
            Flag::Replied => "\\Answered",
            Flag::Seen => "\\Seen",
            Flag::Trashed => "\\Deleted",
        }
    }
}

pub const MAX_KEYWORDS: usize = 64;
pub const MAX_KEYWORD_LEN: usize = 64;
pub const MAX_FOLDER_NAME: usize = 255;
pub const MAX_MAILDIR_NAME: usize = 255;
/// Upper bound on ops in one log entry and entries named by one op.
pub const MAX_OPS: usize = 65_536;

/// A message's system flags and keywords.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub bits: u8,
    pub keywords: BTreeSet<String>,
}

impl Flags {
    pub fn has(&self, f: Flag) -> bool {
        self.bits & f.bit() != 0
    }

    pub fn with(mut self, f: Flag) -> Flags {
        self.bits |= f.bit();
        self
    }

    pub fn set(&mut self, f: Flag, on: bool) {
        if on {
            self.bits |= f.bit();
        } else {
            self.bits &= !f.bit();
        }
    }

    /// Maildir letters in ASCII order ("DFPRST" order), without keywords.
    pub fn letters(&self) -> String {
        Flag::ALL
            .iter()
            .filter(|f| self.has(**f))
            .map(|f| f.letter())
            .collect()
    }
}

/// Is this a keyword IMAP can carry (an atom without flag-specials)?
pub fn valid_keyword(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEYWORD_LEN
        && !k.starts_with('\\')
        && k.bytes()
            .all(|b| b > b' ' && b < 0x7f && !b"(){%*\"\\]".contains(&b))
}

/// Everything needed to read a message: where its sealed bytes are and the key to open them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageRef {
    pub object: ObjectId,
    pub key: [u8; 32],
    /// Plaintext size.
    pub size: u64,
    /// Internal date, unix seconds.
    pub internal_date: i64,
    /// The Maildir base name (without `:2,…`): the one it was imported or delivered with, or
    /// the derived `<date>.<id-prefix>.peerpost`.
    pub maildir_name: String,
}

impl fmt::Debug for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRef")
            .field("object", &self.object)
            .field("size", &self.size)
            .field("internal_date", &self.internal_date)
            .field("maildir_name", &self.maildir_name)
            .finish_non_exhaustive()
    }
}

impl MessageRef {
    pub fn content_key(&self) -> ContentKey {
        ContentKey::from_bytes(self.key)
    }
}

/// What a log entry records. Every op is idempotent and commutes with every other (see
/// `crdt.rs`): the mailbox is the same whatever order the ops of different devices arrive in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateFolder {
        folder: FolderId,
        name: String,
        role: Option<Role>,
    },
    RenameFolder {
        folder: FolderId,
        name: String,
    },
    /// Deletes the folder and the entries this device saw in it. Entries added concurrently
    /// (not observed) survive, and keep the folder visible.
    DeleteFolder {
        folder: FolderId,
        observed: Vec<EntryId>,
    },
    Subscribe {
        folder: FolderId,
        subscribed: bool,
    },
    /// A message enters a folder; the new entry's id is this op's id.
    Add {
        folder: FolderId,
        message: MessageRef,
        flags: Flags,
        /// Delivered to `new/` (not yet seen by a mail reader).
        recent: bool,
    },
    /// Expunge (observed-remove of these entries).
    Remove {
        entries: Vec<EntryId>,
    },
    /// Per-flag assignments (last writer wins per flag).
    SetFlags {
        entries: Vec<EntryId>,
        set: u8,
        clear: u8,
        set_keywords: Vec<String>,
        clear_keywords: Vec<String>,
        /// Clears the "recent" (in `new/`) state.
        seen_by_reader: bool,
    },
}

const K_CREATE: u8 = 1;
const K_RENAME: u8 = 2;
const K_DELETE: u8 = 3;
const K_SUBSCRIBE: u8 = 4;
const K_ADD: u8 = 5;
const K_REMOVE: u8 = 6;
const K_FLAGS: u8 = 7;

fn write_str8(w: &mut Writer, s: &str) {
    w.bytes8(s.as_bytes());
}

fn read_str8(r: &mut Reader<'_>, field: &'static str, max: usize) -> Result<String, DecodeError> {
    let b = r.bytes8(field, max)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid {
        field,
        why: "not UTF-8",
    })
}

fn write_ids(w: &mut Writer, ids: &[EntryId]) {
    w.u32(ids.len() as u32);
    for id in ids {
        id.write(w);
    }
}

fn read_ids(r: &mut Reader<'_>) -> Result<Vec<EntryId>, DecodeError> {
    let n = r.u32("entry count")? as usize;
    if n > MAX_OPS || n * OpId::LEN > r.remaining() {
        return Err(DecodeError::TooLong {
            field: "entry list",
            len: n,
            max: MAX_OPS.min(r.remaining() / OpId::LEN),
        });
    }
    (0..n).map(|_| OpId::read(r, "entry id")).collect()
}

fn write_keywords(w: &mut Writer, k: &[String]) {
    w.u8(k.len() as u8);
    for s in k {
        write_str8(w, s);
    }
}

fn read_keywords(r: &mut Reader<'_>) -> Result<Vec<String>, DecodeError> {
    let n = usize::from(r.u8("keyword count")?);
    if n > MAX_KEYWORDS {
        return Err(DecodeError::TooLong {
            field: "keywords",
            len: n,
            max: MAX_KEYWORDS,
        });
    }
    let v = (0..n)
        .map(|_| read_str8(r, "keyword", MAX_KEYWORD_LEN))
        .collect::<Result<Vec<_>, _>>()?;
    if v.iter().any(|k| !valid_keyword(k)) {
        return Err(DecodeError::Invalid {
            field: "keyword",
            why: "not an IMAP atom",
        });
    }
    Ok(v)
}

pub(super) fn check_name(field: &'static str, s: &str, max: usize) -> Result<(), DecodeError> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(DecodeError::Invalid {
            field,
            why: "empty, too long or has control characters",
        });
    }
    Ok(())
}

impl Op {
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Op::CreateFolder { folder, name, role } => {
                w.u8(K_CREATE);
                folder.write(w);
                write_str8(w, name);
                w.u8(role.map(|r| r as u8 + 1).unwrap_or(0));
            }
            Op::RenameFolder { folder, name } => {
                w.u8(K_RENAME);
                folder.write(w);
                write_str8(w, name);
            }
            Op::DeleteFolder { folder, observed } => {
                w.u8(K_DELETE);
                folder.write(w);
                write_ids(w, observed);
            }
            Op::Subscribe { folder, subscribed } => {
                w.u8(K_SUBSCRIBE);
                folder.write(w);
                w.u8(u8::from(*subscribed));
            }
            Op::Add {
                folder,
                message,
                flags,
                recent,
            } => {
                w.u8(K_ADD);
                folder.write(w);
                w.fixed(message.object.as_bytes())
                    .fixed(&message.key)
                    .u64(message.size)
                    .u64(message.internal_date as u64);
                write_str8(w, &message.maildir_name);
                w.u8(flags.bits);
                write_keywords(w, &flags.keywords.iter().cloned().collect::<Vec<_>>());
                w.u8(u8::from(*recent));
            }
            Op::Remove { entries } => {
                w.u8(K_REMOVE);
                write_ids(w, entries);
            }
            Op::SetFlags {
                entries,
                set,
                clear,
                set_keywords,
                clear_keywords,
                seen_by_reader,
            } => {
                w.u8(K_FLAGS);
                write_ids(w, entries);
                w.u8(*set).u8(*clear);
                write_keywords(w, set_keywords);
                write_keywords(w, clear_keywords);
                w.u8(u8::from(*seen_by_reader));
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Op, DecodeError> {
        let bool8 = |r: &mut Reader<'_>, field| match r.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid {
                field,
                why: "not 0 or 1",
            }),
        };
        Ok(match r.u8("op kind")? {
            K_CREATE => {
                let folder = OpId::read(r, "folder")?;
                let name = read_str8(r, "folder name", MAX_FOLDER_NAME)?;
                check_name("folder name", &name, MAX_FOLDER_NAME)?;
                let role = match r.u8("role")? {
                    0 => None,
                    v => Some(Role::from_u8(v - 1).ok_or(DecodeError::Invalid {
                        field: "role",
                        why: "unknown role",
                    })?),
                };
                Op::CreateFolder { folder, name, role }
            }
            K_RENAME => {
                let folder = OpId::read(r, "folder")?;
                let name = read_str8(r, "folder name", MAX_FOLDER_NAME)?;
                check_name("folder name", &name, MAX_FOLDER_NAME)?;
                Op::RenameFolder { folder, name }
            }
            K_DELETE => Op::DeleteFolder {
                folder: OpId::read(r, "folder")?,
                observed: read_ids(r)?,
            },
            K_SUBSCRIBE => Op::Subscribe {
                folder: OpId::read(r, "folder")?,
                subscribed: bool8(r, "subscribed")?,
            },
            K_ADD => {
                let folder = OpId::read(r, "folder")?;
                let object = ObjectId(r.array("object id")?);
                let key = r.array("content key")?;
                let size = r.u64("size")?;
                let internal_date = r.u64("internal date")? as i64;
                let maildir_name = read_str8(r, "maildir name", MAX_MAILDIR_NAME)?;
                check_name("maildir name", &maildir_name, MAX_MAILDIR_NAME)?;
                if maildir_name.contains('/') {
                    return Err(DecodeError::Invalid {
                        field: "maildir name",
                        why: "contains '/'",
                    });
                }
                let bits = r.u8("flags")?;
                let keywords = read_keywords(r)?.into_iter().collect();
                let recent = bool8(r, "recent")?;
                Op::Add {
                    folder,
                    message: MessageRef {
                        object,
                        key,
                        size,
                        internal_date,
                        maildir_name,
                    },
                    flags: Flags { bits, keywords },
                    recent,
                }
            }
            K_REMOVE => Op::Remove {
                entries: read_ids(r)?,
            },
            K_FLAGS => Op::SetFlags {
                entries: read_ids(r)?,
                set: r.u8("set")?,
                clear: r.u8("clear")?,
                set_keywords: read_keywords(r)?,
                clear_keywords: read_keywords(r)?,
                seen_by_reader: bool8(r, "seen by reader")?,
            },
            _ => {
                return Err(DecodeError::Invalid {
                    field: "op kind",
                    why: "unknown operation",
                });
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_opid() -> impl Strategy<Value = OpId> {
        (0u64..4, 0u64..50, 0u32..8).prop_map(|(device, seq, idx)| OpId { device, seq, idx })
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9 /._-]{0,20}"
    }

    fn arb_keywords() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-z$][a-zA-Z0-9]{0,10}", 0..4)
    }

    pub fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (arb_opid(), arb_name(), proptest::option::of(0u8..6)).prop_map(
                |(folder, name, role)| Op::CreateFolder {
                    folder,
                    name,
                    role: role.and_then(Role::from_u8)
                }
            ),
            (arb_opid(), arb_name()).prop_map(|(folder, name)| Op::RenameFolder { folder, name }),
            (arb_opid(), proptest::collection::vec(arb_opid(), 0..5))
                .prop_map(|(folder, observed)| Op::DeleteFolder { folder, observed }),
            (arb_opid(), any::<bool>())
                .prop_map(|(folder, subscribed)| Op::Subscribe { folder, subscribed }),
            (
                arb_opid(),
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<i64>(),
                any::<u8>(),
                arb_keywords(),
                any::<bool>()
            )
                .prop_map(|(folder, o, size, date, bits, kw, recent)| Op::Add {
                    folder,
                    message: MessageRef {
                        object: ObjectId(o),
                        key: [1; 32],
                        size,
                        internal_date: date,
                        maildir_name: format!("{date}.x.peerpost"),
                    },
                    flags: Flags {
                        bits,
                        keywords: kw.into_iter().collect()
                    },
                    recent,
                }),
            proptest::collection::vec(arb_opid(), 0..5).prop_map(|entries| Op::Remove { entries }),
            (
                proptest::collection::vec(arb_opid(), 0..5),
                any::<u8>(),
                any::<u8>(),
                arb_keywords(),
                arb_keywords(),
                any::<bool>()
            )
                .prop_map(
                    |(entries, set, clear, set_keywords, clear_keywords, seen_by_reader)| {
                        Op::SetFlags {
                            entries,
                            set,
                            clear,
                            set_keywords,
                            clear_keywords,
                            seen_by_reader,
                        }
                    }
                ),
        ]
    }

    proptest! {
        #[test]
        fn op_roundtrip(op in arb_op()) {
            let mut w = Writer::new();
            op.encode(&mut w);
            let bytes = w.into_vec();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(Op::decode(&mut r).unwrap(), op);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn op_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Op::decode(&mut Reader::new(&bytes));
        }
    }

    #[test]
    fn flag_letters_are_in_ascii_order() {
        let f = Flags::default()
            .with(Flag::Trashed)
            .with(Flag::Seen)
            .with(Flag::Draft)
            .with(Flag::Replied);
        assert_eq!(f.letters(), "DRST");
        let letters: Vec<char> = Flag::ALL.iter().map(|f| f.letter()).collect();
        let mut sorted = letters.clone();
        sorted.sort();
        assert_eq!(letters, sorted);
    }

    #[test]
    fn keywords_are_atoms() {
        assert!(valid_keyword("$Junk"));
        assert!(valid_keyword("work"));
        assert!(!valid_keyword("\\Seen"));
        assert!(!valid_keyword("two words"));
        assert!(!valid_keyword(""));
    }
}
