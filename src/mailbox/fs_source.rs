//! The mailbox engine as a [`peerpost_fs::MaildirSource`]: what `peerpost mount` serves.
//!
//! FUSE worker threads are plain OS threads, not tokio workers, so each call bridges to the
//! engine's async API with [`Handle::block_on`] on the command's runtime, bounded by a
//! timeout (an engine that does not answer gives the client EIO, never a hung thread).
//! Message keys are entry ids (40 hex digits). Flags are the engine's system flags and
//! keywords (the tree maps keywords to letters through the folder's `dovecot-keywords`, and
//! passes back the ones a name cannot show, so a flag rename keeps them).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerpost_fs::{self as pfs, MaildirSource, MessageKey, SourceError};
use tokio::runtime::Handle;

use super::readahead::Readahead;
use super::{EntryId, Error, FlagMode, Flags, Mailbox, MessageInfo, NewMessage, OpId};

/// The longest a FUSE request waits for the engine.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// [`Mailbox`] seen through the Maildir file system's trait.
#[derive(Debug, Clone)]
pub struct FsSource {
    mb: Mailbox,
    rt: Handle,
    max_message_size: u64,
    quota: u64,
    /// [`FsSource::used_bytes`]'s last answer.
    used: Arc<Mutex<Option<(Instant, u64)>>>,
    /// The queue of readahead hints (readahead.rs).
    readahead: Readahead,
}

/// How long the store's size is taken as known for the quota check of a delivery.
pub const USED_TTL: Duration = Duration::from_millis(500);

impl FsSource {
    /// `rt` must not be the runtime of the calling thread (FUSE threads are not tokio's).
    pub fn new(mb: Mailbox, rt: Handle, max_message_size: u64, quota: u64) -> FsSource {
        FsSource {
            mb: mb.clone(),
            rt: rt.clone(),
            max_message_size,
            quota,
            used: Arc::new(Mutex::new(None)),
            readahead: Readahead::start(mb, &rt),
        }
    }

    /// The store's bytes, as of at most [`USED_TTL`] ago (every delivery through the mount
    /// checks the quota: a store read per rename would cost more than the rename). The
    /// mount's own queued deliveries are counted by the caller; the engine checks again at
    /// commit.
    fn used_bytes(&self) -> pfs::Result<u64> {
        let mut cached = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, used)) = *cached
            && at.elapsed() < USED_TTL
        {
            return Ok(used);
        }
        let used = self.run(async { Ok(self.mb.store().stats().await?.object_bytes) })?;
        *cached = Some((Instant::now(), used));
        Ok(used)
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mb
    }

    fn run<T>(&self, f: impl Future<Output = super::Result<T>>) -> pfs::Result<T> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(TIMEOUT, f).await })
        {
            Ok(r) => r.map_err(source_error),
            Err(_) => Err(SourceError::Unavailable),
        }
    }
}

fn source_error(e: Error) -> SourceError {
    match e {
        Error::NoSuchFolder(_) | Error::NoSuchMessage => SourceError::NotFound,
        Error::FolderExists(_) => SourceError::Exists,
        Error::TooLarge { .. } => SourceError::TooLarge,
        Error::OverQuota { .. } => SourceError::NoSpace,
        Error::ContentMissing(_) => SourceError::Unavailable,
        Error::InvalidName(..) | Error::NotAllowed(_) | Error::Empty => {
            SourceError::Invalid(e.to_string())
        }
        other => SourceError::Io(other.to_string()),
    }
}

/// An entry id as a message key: 40 hex digits.
pub fn message_key(entry: EntryId) -> MessageKey {
    MessageKey(
        entry
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into(),
    )
}

/// The entry id of a message key (anything else is not found).
pub fn entry_of(key: &MessageKey) -> pfs::Result<EntryId> {
    let s = key.0.as_bytes();
    if s.len() != 2 * OpId::LEN {
        return Err(SourceError::NotFound);
    }
    let mut b = [0u8; OpId::LEN];
    for (i, out) in b.iter_mut().enumerate() {
        let hex = std::str::from_utf8(&s[2 * i..2 * i + 2]).map_err(|_| SourceError::NotFound)?;
        *out = u8::from_str_radix(hex, 16).map_err(|_| SourceError::NotFound)?;
    }
    Ok(OpId::from_bytes(&b))
}

fn fs_flags(f: &Flags) -> pfs::Flags {
    let b = |i: u8| f.bits & (1 << i) != 0;
    pfs::Flags {
        draft: b(0),
        flagged: b(1),
        passed: b(2),
        replied: b(3),
        seen: b(4),
        trashed: b(5),
        keywords: f.keywords.clone(),
    }
}

fn bits(f: &pfs::Flags) -> u8 {
    [f.draft, f.flagged, f.passed, f.replied, f.seen, f.trashed]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, on)| if *on { acc | (1 << i) } else { acc })
}

fn new_message(msg: pfs::NewMessage) -> NewMessage {
    NewMessage {
        bytes: msg.bytes,
        internal_date: msg.internal_date,
        flags: Flags {
            bits: bits(&msg.flags),
            keywords: msg.flags.keywords,
        },
        recent: msg.recent,
        maildir_name: Some(msg.base),
    }
}

fn entry(m: &MessageInfo) -> pfs::MessageEntry {
    pfs::MessageEntry {
        key: message_key(m.entry),
        base: m.maildir_name.clone(),
        size: m.size,
        internal_date: m.internal_date,
        flags: fs_flags(&m.flags),
        recent: m.recent,
    }
}

impl MaildirSource for FsSource {
    fn folders(&self) -> pfs::Result<Vec<pfs::FolderName>> {
        Ok(self.mb.folder_names().into_iter().map(|f| f.1).collect())
    }

    fn messages(&self, folder: &str) -> pfs::Result<Vec<pfs::MessageEntry>> {
        self.mb
            .messages_map(folder, |m| entry(&m))
            .map_err(source_error)
    }

    fn message(&self, folder: &str, key: &MessageKey) -> pfs::Result<Option<pfs::MessageEntry>> {
        let Ok(e) = entry_of(key) else {
            return Ok(None);
        };
        self.mb
            .message_map(folder, e, |m| entry(&m))
            .map_err(source_error)
    }

    fn read(&self, key: &MessageKey) -> pfs::Result<Arc<Vec<u8>>> {
        let e = entry_of(key)?;
        // The kernel's page cache holds what the mount serves (its pages are kept between
        // opens): the engine's cache would be a second copy.
        // On this thread (FUSE threads may block; the body is read from the local store
        // only): the blocking pool's two thread hand-offs cost more than the read of a
        // cached page (issue #4 c).
        self.mb.read_uncached_blocking(e).map_err(source_error)
    }

    fn deliver(&self, folder: &str, msg: pfs::NewMessage) -> pfs::Result<pfs::MessageEntry> {
        if msg.bytes.len() as u64 > self.max_message_size {
            return Err(SourceError::TooLarge);
        }
        let m = self.run(self.mb.append(folder, new_message(msg)))?;
        Ok(entry(&m))
    }

    /// One engine commit for the batch. If it fails, each message is tried alone (one
    /// commit each), so one the engine refuses does not hold back the others; not after a
    /// timeout, though (the commit may still land: the caller retries, looking first).
    fn deliver_many(
        &self,
        msgs: Vec<(pfs::FolderName, pfs::NewMessage)>,
    ) -> Vec<pfs::Result<pfs::MessageEntry>> {
        let n = msgs.len();
        if msgs
            .iter()
            .any(|(_, m)| m.bytes.len() as u64 > self.max_message_size)
            || n < 2
        {
            return msgs.into_iter().map(|(f, m)| self.deliver(&f, m)).collect();
        }
        let items = msgs
            .iter()
            .map(|(f, m)| (f.clone(), new_message(m.clone())))
            .collect();
        match self.run(self.mb.append_many(items)) {
            Ok(v) if v.len() == n => v.iter().map(|m| Ok(entry(m))).collect(),
            Ok(_) | Err(SourceError::Unavailable) => {
                vec![Err(SourceError::Unavailable); n]
            }
            Err(_) => msgs.into_iter().map(|(f, m)| self.deliver(&f, m)).collect(),
        }
    }

    /// What the engine's append would refuse: too large, empty, a bad base name or keyword,
    /// over the engine's quota (when one is set) counting what is queued.
    fn check_delivery(
        &self,
        _folder: &str,
        base: &str,
        flags: &pfs::Flags,
        size: u64,
        queued: u64,
    ) -> pfs::Result<()> {
        if size > self.max_message_size {
            return Err(SourceError::TooLarge);
        }
        if size == 0 {
            return Err(source_error(Error::Empty));
        }
        if !super::maildir::valid_base(base) {
            return Err(source_error(Error::InvalidName(
                base.to_string(),
                "not a Maildir base name",
            )));
        }
        if let Some(k) = flags
            .keywords
            .iter()
            .find(|k| !super::model::valid_keyword(k))
        {
            return Err(source_error(Error::InvalidName(
                k.clone(),
                "not a valid keyword",
            )));
        }
        if let Some(quota) = self.mb.quota() {
            let used = self.used_bytes()?;
            // As the engine counts: a sealed body is its plaintext plus 42 bytes.
            let needed = size + 42;
            if used.saturating_add(queued).saturating_add(needed) > quota {
                return Err(SourceError::NoSpace);
            }
        }
        Ok(())
    }

    fn set_flags(
        &self,
        folder: &str,
        key: &MessageKey,
        flags: pfs::Flags,
        seen_by_reader: bool,
    ) -> pfs::Result<()> {
        let e = [entry_of(key)?];
        let want = Flags {
            bits: bits(&flags),
            keywords: flags.keywords,
        };
        self.run(
            self.mb
                .set_flags(folder, &e, FlagMode::Replace, &want, seen_by_reader),
        )
    }

    fn set_flags_many(&self, changes: Vec<pfs::FlagChange>) -> pfs::Result<()> {
        let items = changes
            .into_iter()
            .filter_map(|c| {
                let e = entry_of(&c.key).ok()?;
                let flags = Flags {
                    bits: bits(&c.flags),
                    keywords: c.flags.keywords,
                };
                Some((c.folder, e, flags, c.seen_by_reader))
            })
            .collect();
        self.run(self.mb.set_flags_each(items)).map(|_| ())
    }

    fn move_to(&self, from: &str, key: &MessageKey, to: &str) -> pfs::Result<pfs::MessageEntry> {
        let e = [entry_of(key)?];
        let v = self.run(self.mb.move_to(from, &e, to))?;
        v.first()
            .map(|(_, m)| entry(m))
            .ok_or(SourceError::NotFound)
    }

    fn copy_to(&self, from: &str, key: &MessageKey, to: &str) -> pfs::Result<pfs::MessageEntry> {
        let e = [entry_of(key)?];
        let v = self.run(self.mb.copy(from, &e, to))?;
        v.first()
            .map(|(_, m)| entry(m))
            .ok_or(SourceError::NotFound)
    }

    fn expunge(&self, folder: &str, key: &MessageKey) -> pfs::Result<()> {
        let e = [entry_of(key)?];
        self.run(self.mb.expunge(folder, &e))
    }

    fn create_folder(&self, name: &str) -> pfs::Result<()> {
        self.run(self.mb.create_folder(name)).map(|_| ())
    }

    fn rename_folder(&self, from: &str, to: &str) -> pfs::Result<()> {
        self.run(self.mb.rename_folder(from, to))
    }

    fn delete_folder(&self, name: &str) -> pfs::Result<()> {
        self.run(self.mb.delete_folder(name))
    }

    fn quota(&self) -> pfs::Result<(u64, u64)> {
        let stats = self.run(async { Ok(self.mb.store().stats().await?) })?;
        Ok((stats.object_bytes, self.mb.quota().unwrap_or(self.quota)))
    }

    fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    fn subscriptions(&self) -> pfs::Result<Vec<pfs::FolderName>> {
        Ok(self
            .mb
            .folder_names()
            .into_iter()
            .filter(|f| f.2)
            .map(|f| f.1)
            .collect())
    }

    fn set_subscribed(&self, folder: &str, subscribed: bool) -> pfs::Result<()> {
        self.run(self.mb.subscribe_folder(folder, subscribed))
    }

    /// Queued for the readahead task, never waited for (keys that are not entries are
    /// skipped; a hint that finds the queue full is dropped).
    fn prefetch(&self, keys: &[MessageKey]) {
        let entries: Vec<EntryId> = keys.iter().filter_map(|k| entry_of(k).ok()).collect();
        self.readahead.hint(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_quota_is_enospc() {
        let e = Error::OverQuota {
            used: 9,
            quota: 10,
            needed: 2,
        };
        assert!(matches!(source_error(e), SourceError::NoSpace));
    }

    #[test]
    fn keys_round_trip_and_garbage_is_not_found() {
        let id = OpId {
            device: 0x0123_4567_89ab_cdef,
            seq: 42,
            idx: 7,
        };
        let k = message_key(id);
        assert_eq!(k.0.len(), 40);
        assert_eq!(entry_of(&k), Ok(id));
        for bad in ["", "zz", &"g".repeat(40), &"é".repeat(20)] {
            assert_eq!(
                entry_of(&MessageKey(bad.into())),
                Err(SourceError::NotFound)
            );
        }
    }

    #[test]
    fn flag_bits_match_the_engine() {
        for b in 0u8..64 {
            let f = Flags {
                bits: b,
                keywords: Default::default(),
            };
            assert_eq!(bits(&fs_flags(&f)), b);
        }
        let f = pfs::Flags::from_letters("S");
        assert_eq!(bits(&f), super::super::Flag::Seen.bit());
    }
}
