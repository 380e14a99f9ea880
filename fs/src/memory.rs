//! An in-memory [`MaildirSource`] for tests of this crate (and of code that mounts it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::{
    Flags, FolderName, MaildirSource, MessageEntry, MessageKey, NewMessage, Result, SourceError,
};

#[derive(Debug, Default)]
struct State {
    folders: BTreeMap<FolderName, BTreeMap<MessageKey, MessageEntry>>,
    bodies: BTreeMap<MessageKey, Vec<u8>>,
    next: u64,
    quota: u64,
    max_message: u64,
    subscribed: std::collections::BTreeSet<FolderName>,
    /// Deliveries fail (a test's broken engine).
    failing: bool,
    /// Every [`MaildirSource::prefetch`] call's keys, in order.
    prefetched: Vec<Vec<MessageKey>>,
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
                max_message: 64 * 1024 * 1024,
                ..State::default()
            }),
        }
    }

    /// Sets the largest message accepted (and so the largest file in `tmp/`).
    pub fn with_max_message_size(self, max: u64) -> MemorySource {
        if let Ok(mut s) = self.state.lock() {
            s.max_message = max;
        }
        self
    }

    /// Makes every delivery fail with an I/O error (or work again).
    pub fn fail_deliveries(&self, on: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.failing = on;
        }
    }

    /// The keys of every [`MaildirSource::prefetch`] call so far, one list per call.
    pub fn prefetched(&self) -> Vec<Vec<MessageKey>> {
        self.with(|s| Ok(s.prefetched.clone())).unwrap_or_default()
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

    fn deliver(&mut self, folder: &str, msg: NewMessage) -> Result<MessageEntry> {
        if self.failing {
            return Err(SourceError::Io("deliveries made to fail".into()));
        }
        if msg.bytes.len() as u64 > self.max_message {
            return Err(SourceError::TooLarge);
        }
        if self.used() + msg.bytes.len() as u64 > self.quota {
            return Err(SourceError::NoSpace);
        }
        self.folder(folder)?;
        self.next += 1;
        let key = MessageKey(format!("{:032x}", self.next).into());
        let entry = MessageEntry {
            key: key.clone(),
            base: msg.base,
            size: msg.bytes.len() as u64,
            internal_date: msg.internal_date,
            flags: msg.flags,
            recent: msg.recent,
        };
        self.folder(folder)?.insert(key.clone(), entry.clone());
        self.bodies.insert(key, msg.bytes);
        Ok(entry)
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

    fn read(&self, key: &MessageKey) -> Result<Arc<Vec<u8>>> {
        self.with(|s| {
            s.bodies
                .get(key)
                .map(|b| Arc::new(b.clone()))
                .ok_or(SourceError::NotFound)
        })
    }

    fn deliver(&self, folder: &str, msg: NewMessage) -> Result<MessageEntry> {
        self.with(|s| s.deliver(folder, msg))
    }

    fn set_flags(
        &self,
        folder: &str,
        key: &MessageKey,
        flags: Flags,
        seen_by_reader: bool,
    ) -> Result<()> {
        self.with(|s| {
            let e = s
                .folder(folder)?
                .get_mut(key)
                .ok_or(SourceError::NotFound)?;
            e.flags = flags;
            if seen_by_reader {
                e.recent = false;
            }
            Ok(())
        })
    }

    fn move_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<MessageEntry> {
        self.with(|s| {
            s.folder(to)?;
            let e = s.folder(from)?.remove(key).ok_or(SourceError::NotFound)?;
            s.folder(to)?.insert(key.clone(), e.clone());
            Ok(e)
        })
    }

    fn copy_to(&self, from: &str, key: &MessageKey, to: &str) -> Result<MessageEntry> {
        self.with(|s| {
            let e = s
                .folder(from)?
                .get(key)
                .cloned()
                .ok_or(SourceError::NotFound)?;
            let bytes = s.bodies.get(key).cloned().ok_or(SourceError::NotFound)?;
            s.deliver(
                to,
                NewMessage {
                    bytes,
                    internal_date: e.internal_date,
                    flags: e.flags.clone(),
                    recent: e.recent,
                    base: e.base,
                },
            )
        })
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

    fn prefetch(&self, keys: &[MessageKey]) {
        let _ = self.with(|s| {
            s.prefetched.push(keys.to_vec());
            Ok(())
        });
    }

    fn max_message_size(&self) -> u64 {
        self.with(|s| Ok(s.max_message)).unwrap_or(0)
    }

    fn subscriptions(&self) -> Result<Vec<FolderName>> {
        self.with(|s| Ok(s.subscribed.iter().cloned().collect()))
    }

    fn set_subscribed(&self, folder: &str, subscribed: bool) -> Result<()> {
        self.with(|s| {
            s.folder(folder)?;
            if subscribed {
                s.subscribed.insert(folder.to_string());
            } else {
                s.subscribed.remove(folder);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(bytes: &[u8], base: &str) -> NewMessage {
        NewMessage {
            bytes: bytes.to_vec(),
            internal_date: 1,
            flags: Flags::default(),
            recent: true,
            base: base.into(),
        }
    }

    #[test]
    fn deliver_move_copy_expunge() {
        let m = MemorySource::new(1000);
        m.create_folder("Archive").unwrap();
        let e = m.deliver("INBOX", msg(b"hello", "1.a")).unwrap();
        assert!(e.recent);
        assert_eq!(*m.read(&e.key).unwrap(), b"hello");
        m.set_flags("INBOX", &e.key, Flags::from_letters("S"), true)
            .unwrap();
        let c = m.copy_to("INBOX", &e.key, "Archive").unwrap();
        assert_ne!(c.key, e.key);
        m.move_to("INBOX", &e.key, "Archive").unwrap();
        assert!(m.messages("INBOX").unwrap().is_empty());
        assert_eq!(m.messages("Archive").unwrap().len(), 2);
        m.expunge("Archive", &e.key).unwrap();
        assert_eq!(m.quota().unwrap(), (5, 1000));
        assert_eq!(
            m.deliver("INBOX", msg(&[0; 996], "2.b")),
            Err(SourceError::NoSpace)
        );
        assert_eq!(
            m.folders().unwrap(),
            vec!["INBOX".to_string(), "Archive".into()]
        );
        assert!(m.rename_folder("INBOX", "X").is_err());
    }
}
