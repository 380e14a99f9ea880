//! An in-memory [`MaildirSource`] for tests of this crate (and of code that mounts it).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::{Flags, FolderName, MaildirSource, MessageEntry, MessageKey, Result, SourceError};

#[derive(Debug, Default)]
struct State {
    folders: BTreeMap<FolderName, BTreeMap<MessageKey, MessageEntry>>,
    bodies: BTreeMap<MessageKey, Vec<u8>>,
    next: u64,
    quota: u64,
}

/// Folders and messages in a mutex; message keys are a counter in hex.
#[derive(Debug)]
pub struct MemorySource {
    state: Mutex<State>,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new(u64::MAX)
    }
}

impl MemorySource {
    /// An empty mailbox with an INBOX and the given quota in bytes.
    pub fn new(quota: u64) -> MemorySource {
        let mut folders = BTreeMap::new();
        folders.insert("INBOX".to_string(), BTreeMap::new());
        MemorySource {
            state: Mutex::new(State {
                folders,
                quota,
                ..State::default()
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| SourceError::Io("poisoned".into()))?;
        f(&mut s)
    }
}

impl State {
    fn used(&self) -> u64 {
        self.bodies.values().map(|b| b.len() as u64).sum()
    }

    fn folder(&mut self, name: &str) -> Result<&mut BTreeMap<MessageKey, MessageEntry>> {
        self.folders.get_mut(name).ok_or(SourceError::NotFound)
    }
}

impl MaildirSource for MemorySource {
    fn folders(&self) -> Result<Vec<FolderName>> {
        self.with(|s| {
            let mut v: Vec<_> = s
                .folders
                .keys()
                .filter(|k| *k != "INBOX")
                .cloned()
                .collect();
            v.insert(0, "INBOX".into());
            Ok(v)
        })
    }

    fn messages(&self, folder: &str) -> Result<Vec<MessageEntry>> {
        self.with(|s| Ok(s.folder(folder)?.values().cloned().collect()))
    }

    fn read(&self, key: &MessageKey) -> Result<Vec<u8>> {
        self.with(|s| s.bodies.get(key).cloned().ok_or(SourceError::NotFound))
    }

    fn deliver(
        &self,
        folder: &str,
        bytes: Vec<u8>,
        internal_date: i64,
        flags: Flags,
    ) -> Result<MessageEntry> {
        self.with(|s| {
            if s.used() + bytes.len() as u64 > s.quota {
                return Err(SourceError::NoSpace);
            }
            s.next += 1;
            let key = MessageKey(format!("{:032x}", s.next));
            let entry = MessageEntry {
                key: key.clone(),
                size: bytes.len() as u64,
                internal_date,
                flags,
                recent: !flags.seen,
            };
            s.folder(folder)?.insert(key.clone(), entry.clone());
            s.bodies.insert(key, bytes);
            Ok(entry)
        })
    }

    fn set_flags(&self, folder: &str, key: &MessageKey, flags: Flags) -> Result<()> {
        self.with(|s| {
            let e = s
                .folder(folder)?
                .get_mut(key)
                .ok_or(SourceError::NotFound)?;
            e.flags = flags;
            e.recent = false;
            Ok(())
        })
    }

    fn move_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<()> {
        self.with(|s| {
            s.folder(to)?;
            let e = s.folder(from)?.remove(key).ok_or(SourceError::NotFound)?;
            s.folder(to)?.insert(key.clone(), e);
            Ok(())
        })
    }

    fn copy_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<MessageEntry> {
        let (bytes, e) = self.with(|s| {
            let e = s
                .folder(from)?
                .get(key)
                .cloned()
                .ok_or(SourceError::NotFound)?;
            let b = s.bodies.get(key).cloned().ok_or(SourceError::NotFound)?;
            Ok((b, e))
        })?;
        self.deliver(to, bytes, e.internal_date, e.flags)
    }

    fn expunge(&self, folder: &str, key: &MessageKey) -> Result<()> {
        self.with(|s| {
            s.folder(folder)?.remove(key).ok_or(SourceError::NotFound)?;
            s.bodies.remove(key);
            Ok(())
        })
    }

    fn create_folder(&self, name: &str) -> Result<()> {
        self.with(|s| {
            if s.folders.contains_key(name) {
                return Err(SourceError::Exists);
            }
            s.folders.insert(name.to_string(), BTreeMap::new());
            Ok(())
        })
    }

    fn rename_folder(&self, from: &str, to: &str) -> Result<()> {
        self.with(|s| {
            if from == "INBOX" {
                return Err(SourceError::Invalid("INBOX cannot be renamed".into()));
            }
            if s.folders.contains_key(to) {
                return Err(SourceError::Exists);
            }
            let f = s.folders.remove(from).ok_or(SourceError::NotFound)?;
            s.folders.insert(to.to_string(), f);
            Ok(())
        })
    }

    fn delete_folder(&self, name: &str) -> Result<()> {
        self.with(|s| {
            if name == "INBOX" {
                return Err(SourceError::Invalid("INBOX cannot be deleted".into()));
            }
            let f = s.folders.remove(name).ok_or(SourceError::NotFound)?;
            for k in f.keys() {
                s.bodies.remove(k);
            }
            Ok(())
        })
    }

    fn quota(&self) -> Result<(u64, u64)> {
        self.with(|s| Ok((s.used(), s.quota)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_move_copy_expunge() {
        let m = MemorySource::new(1000);
        m.create_folder("Archive").unwrap();
        let e = m
            .deliver("INBOX", b"hello".to_vec(), 1, Flags::default())
            .unwrap();
        assert!(e.recent);
        assert_eq!(m.read(&e.key).unwrap(), b"hello");
        m.set_flags("INBOX", &e.key, Flags::from_letters("S"))
            .unwrap();
        let c = m.copy_to("INBOX", &e.key, "Archive").unwrap();
        assert_ne!(c.key, e.key);
        m.move_to("INBOX", &e.key, "Archive").unwrap();
        assert!(m.messages("INBOX").unwrap().is_empty());
        assert_eq!(m.messages("Archive").unwrap().len(), 2);
        m.expunge("Archive", &e.key).unwrap();
        assert_eq!(m.quota().unwrap(), (5, 1000));
        assert_eq!(
            m.deliver("INBOX", vec![0; 996], 1, Flags::default()),
            Err(SourceError::NoSpace)
        );
        assert_eq!(
            m.folders().unwrap(),
            vec!["INBOX".to_string(), "Archive".into()]
        );
        assert!(m.rename_folder("INBOX", "X").is_err());
    }
}
