//! peerpost-fs: the user's mail as a Maildir over FUSE.
//!
//! This crate knows nothing of the overlay, the store or the cryptography. It defines
//! [`MaildirSource`], the trait it needs from a mail engine; peerpost's mailbox engine
//! implements it, and this crate's own tests run over [`memory::MemorySource`]. (The FUSE
//! adapter, the inode tree and the kernel-notification path arrive with the FUSE issue; the
//! boundary is fixed now so the engine can be designed against it.)
//!
//! Names follow the Maildir convention that peerpost uses everywhere:
//! `<internal-date-secs>.<id-prefix>.peerpost:2,<flags>` with flags in ASCII order.

pub mod inode;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod tree;

use std::fmt;

/// A folder, by its IMAP-style name: `INBOX`, `Sent`, `Archive/2024`.
pub type FolderName = String;

/// A message's stable identity (the engine's content id, hex), the same on every device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey(pub String);

/// Maildir flags (the `:2,` suffix).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub draft: bool,
    pub flagged: bool,
    pub passed: bool,
    pub replied: bool,
    pub seen: bool,
    pub trashed: bool,
}

impl Flags {
    /// Parses the letters after `:2,` (unknown letters are ignored here; keywords are the
    /// engine's business).
    pub fn from_letters(s: &str) -> Flags {
        let mut f = Flags::default();
        for c in s.chars() {
            match c {
                'D' => f.draft = true,
                'F' => f.flagged = true,
                'P' => f.passed = true,
                'R' => f.replied = true,
                'S' => f.seen = true,
                'T' => f.trashed = true,
                _ => {}
            }
        }
        f
    }
}

impl fmt::Display for Flags {
    /// The letters in ASCII order, as Maildir requires.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, c) in [
            (self.draft, 'D'),
            (self.flagged, 'F'),
            (self.passed, 'P'),
            (self.replied, 'R'),
            (self.seen, 'S'),
            (self.trashed, 'T'),
        ] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// What the file system shows of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEntry {
    pub key: MessageKey,
    /// The Maildir base name (what precedes `:2,`): the name the message was delivered or
    /// imported with, or one the engine derived.
    pub base: String,
    /// Exact size of the bytes [`MaildirSource::read`] returns.
    pub size: u64,
    /// Internal date (unix seconds): the file's mtime.
    pub internal_date: i64,
    pub flags: Flags,
    /// In `new/` (not yet seen by a mail reader) rather than `cur/`.
    pub recent: bool,
}

impl MessageEntry {
    /// The file name under `new/` or `cur/`: a bare base while the message is in `new/`
    /// without flags (as delivery agents write it), `<base>:2,<flags>` otherwise.
    pub fn file_name(&self) -> String {
        if self.recent && self.flags == Flags::default() {
            self.base.clone()
        } else {
            format!("{}:2,{}", self.base, self.flags)
        }
    }
}

/// A message handed to [`MaildirSource::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub bytes: Vec<u8>,
    pub internal_date: i64,
    pub flags: Flags,
    /// Delivered into `new/` (rather than `cur/`).
    pub recent: bool,
    /// The base name the client chose (kept, so the file is where the client put it).
    pub base: String,
}

/// Why an operation failed, in the terms the kernel will be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    NotFound,
    Exists,
    NoSpace,
    /// Larger than the engine accepts.
    TooLarge,
    /// The data is not available now (e.g. held only by peers that did not answer in time).
    Unavailable,
    Invalid(String),
    Io(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::NotFound => f.write_str("not found"),
            SourceError::Exists => f.write_str("already exists"),
            SourceError::NoSpace => f.write_str("over quota"),
            SourceError::TooLarge => f.write_str("message too large"),
            SourceError::Unavailable => f.write_str("temporarily unavailable"),
            SourceError::Invalid(why) => write!(f, "invalid: {why}"),
            SourceError::Io(why) => write!(f, "I/O error: {why}"),
        }
    }
}

impl std::error::Error for SourceError {}

pub type Result<T> = std::result::Result<T, SourceError>;

/// What the Maildir file system needs from a mail engine. Implementations are called from
/// FUSE worker threads: they must be thread-safe and must not block on the network without a
/// bound.
pub trait MaildirSource: Send + Sync + 'static {
    /// Every folder, `INBOX` first. Subfolders are `/`-separated (`Archive/2024`).
    fn folders(&self) -> Result<Vec<FolderName>>;
    /// The messages of a folder.
    fn messages(&self, folder: &str) -> Result<Vec<MessageEntry>>;
    /// The message's bytes (exactly `size` of them).
    fn read(&self, key: &MessageKey) -> Result<Vec<u8>>;
    /// A new message written into `tmp/` and renamed (or linked) into `new/` or `cur/`.
    fn deliver(&self, folder: &str, msg: NewMessage) -> Result<MessageEntry>;
    /// Flags changed (rename within a folder); `seen_by_reader` when it left `new/`.
    /// Other flags the engine keeps (IMAP keywords) are left alone.
    fn set_flags(
        &self,
        folder: &str,
        key: &MessageKey,
        flags: Flags,
        seen_by_reader: bool,
    ) -> Result<()>;
    /// Renamed into another folder; returns the message as it is there.
    fn move_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<MessageEntry>;
    /// Hard-linked into another folder (Dovecot's copy); returns the copy.
    fn copy_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<MessageEntry>;
    /// Unlinked.
    fn expunge(&self, folder: &str, key: &MessageKey) -> Result<()>;
    fn create_folder(&self, name: &str) -> Result<()>;
    fn rename_folder(&self, from: &str, to: &str) -> Result<()>;
    fn delete_folder(&self, name: &str) -> Result<()>;
    /// (bytes used, bytes allowed) for statfs.
    fn quota(&self) -> Result<(u64, u64)>;
    /// The largest message the engine accepts: files in `tmp/` cannot grow beyond it.
    fn max_message_size(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_ascii_order_and_parse_back() {
        let f = Flags::from_letters("TSRFPD");
        assert_eq!(f.to_string(), "DFPRST");
        assert_eq!(Flags::from_letters(&f.to_string()), f);
        assert_eq!(Flags::default().to_string(), "");
    }

    #[test]
    fn file_name_shape() {
        let mut e = MessageEntry {
            key: MessageKey("0123456789abcdef0123".into()),
            base: "1700000000.0123456789abcdef.peerpost".into(),
            size: 10,
            internal_date: 1_700_000_000,
            flags: Flags::from_letters("SR"),
            recent: false,
        };
        assert_eq!(e.file_name(), "1700000000.0123456789abcdef.peerpost:2,RS");
        e.flags = Flags::default();
        assert_eq!(e.file_name(), "1700000000.0123456789abcdef.peerpost:2,");
        e.recent = true;
        assert_eq!(e.file_name(), "1700000000.0123456789abcdef.peerpost");
    }
}
