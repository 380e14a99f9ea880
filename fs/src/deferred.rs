//! Flag changes answered before the engine commits them.
//!
//! A rename within a folder that only changes flags (Dovecot moves every new message to
//! `cur/` at SELECT; every IMAP STORE is such a rename) is answered at once: the change is
//! appended to a journal file (written, not flushed: a killed daemon loses nothing, the
//! kernel has it) and shown by the tree; a flusher commits the queue to the engine in one
//! batch (one durable commit for many renames), and `fsync`/`fsyncdir` or an unmount commit
//! it before they return. At start, a journal left by a killed daemon is read back and
//! committed. A crash of the machine itself may lose the last unflushed flag changes, as it
//! may lose renames not followed by an fsync on a disk file system.
//!
//! Journal lines: `<folder, hex> <message key> <system letters or -> <keywords, each hex,
//! comma-separated, or -> <seen by reader: 0|1>`. Malformed lines are skipped.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{FlagChange, Flags, FolderName, MessageKey};

/// Changes queued at most (beyond: renames commit synchronously).
pub const MAX_DEFERRED: usize = 100_000;

const JOURNAL: &str = "flags.journal";
const FLUSHING: &str = "flags.flushing";

/// A change waiting for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub flags: Flags,
    pub seen_by_reader: bool,
}

/// The queue, the batch being committed, and the journal.
#[derive(Debug)]
pub struct Deferred {
    dir: PathBuf,
    queue: HashMap<FolderName, HashMap<MessageKey, Change>>,
    inflight: HashMap<FolderName, HashMap<MessageKey, Change>>,
    queued: usize,
    journal: Option<File>,
}

/// Replaces the journal `journal` in `dir` with `text` (through a temporary file and a
/// rename), then removes the set-aside journal `flushing`: only once every line is in the
/// new journal (if it cannot be written, both stay and are read back at the next start).
/// Also the deliveries' journal's.
pub(crate) fn replace_journal(dir: &Path, journal: &str, flushing: &str, text: &str) {
    let tmp = dir.join(format!("{journal}.tmp"));
    if fs::write(&tmp, text).is_ok() && fs::rename(&tmp, dir.join(journal)).is_ok() {
        let _ = fs::remove_file(dir.join(flushing));
    }
}

/// A journal field: UTF-8 as hex (names may hold spaces). Also the deliveries' journal's.
pub(crate) fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn line(folder: &str, key: &MessageKey, c: &Change) -> String {
    let letters = c.flags.to_string();
    let kws: Vec<String> = c.flags.keywords.iter().map(|k| hex(k)).collect();
    format!(
        "{} {} {} {} {}\n",
        hex(folder),
        key.0,
        if letters.is_empty() { "-" } else { &letters },
        if kws.is_empty() {
            "-".to_string()
        } else {
            kws.join(",")
        },
        u8::from(c.seen_by_reader)
    )
}

fn parse(line: &str) -> Option<(FolderName, MessageKey, Change)> {
    let f: Vec<&str> = line.split(' ').collect();
    let [folder, key, letters, kws, seen] = f.as_slice() else {
        return None;
    };
    if key.is_empty() || key.len() > 255 {
        return None;
    }
    let mut flags = Flags::from_letters(if *letters == "-" { "" } else { letters });
    if *kws != "-" {
        for k in kws.split(',') {
            flags.keywords.insert(unhex(k)?);
        }
    }
    let seen_by_reader = match *seen {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some((
        unhex(folder)?,
        MessageKey((*key).into()),
        Change {
            flags,
            seen_by_reader,
        },
    ))
}

impl Deferred {
    /// Opens the queue kept in `dir`: changes a killed daemon journaled are queued again
    /// (one journal file, compacted).
    pub fn load(dir: &Path) -> Deferred {
        let mut d = Deferred {
            dir: dir.to_path_buf(),
            queue: HashMap::new(),
            inflight: HashMap::new(),
            queued: 0,
            journal: None,
        };
        let mut found = false;
        for name in [FLUSHING, JOURNAL] {
            let Ok(text) = fs::read_to_string(dir.join(name)) else {
                continue;
            };
            found = true;
            for (folder, key, change) in text.lines().filter_map(parse) {
                d.insert(folder, key, change);
            }
        }
        if found {
            let mut text = String::new();
            for (folder, m) in &d.queue {
                for (key, c) in m {
                    text.push_str(&line(folder, key, c));
                }
            }
            replace_journal(dir, JOURNAL, FLUSHING, &text);
        }
        d
    }

    fn insert(&mut self, folder: FolderName, key: MessageKey, change: Change) {
        let m = self.queue.entry(folder).or_default();
        match m.get_mut(&key) {
            // Leaving new/ once is remembered, whatever the later flags.
            Some(old) => {
                let seen = old.seen_by_reader || change.seen_by_reader;
                *old = Change {
                    flags: change.flags,
                    seen_by_reader: seen,
                };
            }
            None => {
                m.insert(key, change);
                self.queued += 1;
            }
        }
    }

    /// Queues a change (journaled first). Fails when the queue is full or the journal cannot
    /// be written: the caller commits synchronously then.
    pub fn push(&mut self, folder: &str, key: &MessageKey, change: Change) -> io::Result<()> {
        if self.queued >= MAX_DEFERRED {
            return Err(io::Error::other("deferred flag queue full"));
        }
        if self.journal.is_none() {
            fs::create_dir_all(&self.dir)?;
            self.journal = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(self.dir.join(JOURNAL))?,
            );
        }
        if let Some(j) = self.journal.as_mut() {
            j.write_all(line(folder, key, &change).as_bytes())?;
        }
        self.insert(folder.to_string(), key.clone(), change);
        Ok(())
    }

    /// The change waiting for a message, if any (a queued one over one being committed).
    pub fn get(&self, folder: &str, key: &MessageKey) -> Option<&Change> {
        self.queue
            .get(folder)
            .and_then(|m| m.get(key))
            .or_else(|| self.inflight.get(folder).and_then(|m| m.get(key)))
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Hands the queue over for a commit: it becomes the in-flight batch (still shown), and
    /// the journal is set aside until [`Deferred::done`].
    pub fn take(&mut self) -> Vec<FlagChange> {
        if self.queued == 0 || !self.inflight.is_empty() {
            return Vec::new();
        }
        self.journal = None;
        let _ = fs::rename(self.dir.join(JOURNAL), self.dir.join(FLUSHING));
        self.inflight = std::mem::take(&mut self.queue);
        self.queued = 0;
        self.inflight
            .iter()
            .flat_map(|(folder, m)| {
                m.iter().map(|(key, c)| FlagChange {
                    folder: folder.clone(),
                    key: key.clone(),
                    flags: c.flags.clone(),
                    seen_by_reader: c.seen_by_reader,
                })
            })
            .collect()
    }

    /// The in-flight batch is committed (`ok`), or it failed: then its changes not
    /// superseded meanwhile are queued (and journaled) again.
    pub fn done(&mut self, ok: bool) {
        let batch = std::mem::take(&mut self.inflight);
        if !ok {
            for (folder, m) in batch {
                for (key, c) in m {
                    let newer = self
                        .queue
                        .get(&folder)
                        .is_some_and(|q| q.contains_key(&key));
                    if !newer {
                        let _ = self.push(&folder, &key, c);
                    }
                }
            }
        }
        let _ = fs::remove_file(self.dir.join(FLUSHING));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("peerpost-deferred-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn change(letters: &str, kws: &[&str], seen: bool) -> Change {
        let mut flags = Flags::from_letters(letters);
        flags.keywords = kws.iter().map(|k| k.to_string()).collect();
        Change {
            flags,
            seen_by_reader: seen,
        }
    }

    #[test]
    fn lines_round_trip_and_garbage_is_skipped() {
        for c in [
            change("", &[], false),
            change("FS", &["$Label1", "work stuff", "ünï"], true),
        ] {
            let l = line("Archive/2024 x", &MessageKey("ab12".into()), &c);
            let (f, k, back) = parse(l.trim_end()).unwrap();
            assert_eq!((f.as_str(), &*k.0, back), ("Archive/2024 x", "ab12", c));
        }
        for bad in [
            "",
            "zz k - - 1",
            "41 k - - 2",
            "41 k - zz 1",
            "41 k - - 1 extra",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_killed_daemons_journal_is_queued_again_and_failures_requeue() {
        let d = dir();
        let k = MessageKey("k1".into());
        let mut q = Deferred::load(&d);
        q.push("INBOX", &k, change("S", &[], true)).unwrap();
        q.push("INBOX", &k, change("FS", &[], false)).unwrap();
        assert_eq!(q.get("INBOX", &k), Some(&change("FS", &[], true)));
        drop(q);
        // "killed": the journal is read back; a batch taken is set aside, then put back.
        let mut q = Deferred::load(&d);
        assert_eq!(q.get("INBOX", &k), Some(&change("FS", &[], true)));
        let batch = q.take();
        assert_eq!(batch.len(), 1);
        assert!(q.is_empty());
        assert!(q.get("INBOX", &k).is_some(), "in flight is still shown");
        drop(q);
        // Killed mid-commit: the set-aside journal counts too.
        let mut q = Deferred::load(&d);
        assert_eq!(q.take().len(), 1);
        q.done(false);
        assert!(!q.is_empty());
        assert_eq!(q.take().len(), 1);
        q.done(true);
        assert!(q.is_empty() && q.get("INBOX", &k).is_none());
        drop(q);
        assert!(Deferred::load(&d).is_empty());
        let _ = fs::remove_dir_all(&d);
    }
}
