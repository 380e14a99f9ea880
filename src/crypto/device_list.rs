//! The user's device list: which device keys (overlay identities) belong to the user, signed
//! by the user key. docs/design.md, "Devices":
//!
//! ```text
//!   u8   version = 1
//!   u64  seq (grows with every change)
//!   u8   count (≤ MAX_ENTRIES) ‖ count × entry, sorted by device key, no key twice:
//!        [32] device Ed25519 key ‖ u8 state (1 live, 2 removed, 3 revoked)
//!        ‖ u64 changed (unix seconds) ‖ u64 upto (removed/revoked: the highest log sequence
//!          number of that device still accepted; 0 for a live device)
//!   [64] user signature ("peerpost devices v1") over every preceding byte
//! ```
//!
//! Lists merge as a join (commutative, idempotent): per key the later state wins (live <
//! removed < revoked; a device never comes back), and of two removals the smaller `upto`.
//! So two devices that change the list at once converge whatever order they hear of it.

use std::collections::BTreeMap;

use super::{Error, Result, UserKeys, UserPublicKeys};
use crate::wire::{DecodeError, Reader, Writer};

pub const VERSION: u8 = 1;
/// Key of the signed list in the store's `sync` table (devices/ keeps it, the backup election
/// reads it).
pub const STORE_KEY: &[u8] = b"peerpost/devices/list";
/// Live devices at most (what a directory record can name).
pub const MAX_LIVE: usize = super::record::MAX_DEVICES;
/// Entries at most, removed ones included.
pub const MAX_ENTRIES: usize = 64;
/// The largest encoded list.
pub const MAX_LIST: usize = 1 + 8 + 1 + MAX_ENTRIES * (32 + 1 + 8 + 8) + 64;
const SIG_CONTEXT: &str = "peerpost devices v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceState {
    Live = 1,
    Removed = 2,
    Revoked = 3,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Live => "live",
            DeviceState::Removed => "removed",
            DeviceState::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceEntry {
    pub state: DeviceState,
    pub changed: u64,
    pub upto: u64,
}

/// A verified (or locally built) device list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceList {
    pub seq: u64,
    pub devices: BTreeMap<[u8; 32], DeviceEntry>,
}

impl DeviceList {
    pub fn live(&self) -> Vec<[u8; 32]> {
        self.devices
            .iter()
            .filter(|(_, e)| e.state == DeviceState::Live)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn is_live(&self, device: &[u8; 32]) -> bool {
        matches!(self.devices.get(device), Some(e) if e.state == DeviceState::Live)
    }

    /// Adds a device as live. Refused when it was removed or revoked (a device key never
    /// comes back: set the device up again, which makes a new key) or when 16 are live.
    pub fn add(&mut self, device: [u8; 32], now: u64) -> std::result::Result<bool, &'static str> {
        match self.devices.get(&device) {
            Some(e) if e.state == DeviceState::Live => return Ok(false),
            Some(_) => return Err("this device was removed or revoked; it cannot come back"),
            None => {}
        }
        if self.live().len() >= MAX_LIVE {
            return Err("16 devices are live already; remove one first");
        }
        if self.devices.len() >= MAX_ENTRIES {
            return Err("the device list is full (64 devices ever)");
        }
        self.devices.insert(
            device,
            DeviceEntry {
                state: DeviceState::Live,
                changed: now,
                upto: 0,
            },
        );
        self.seq += 1;
        Ok(true)
    }

    /// Removes (or revokes) a device: its log entries after `upto` are refused from now on.
    pub fn remove(
        &mut self,
        device: [u8; 32],
        state: DeviceState,
        upto: u64,
        now: u64,
    ) -> std::result::Result<(), &'static str> {
        if state == DeviceState::Live {
            return Err("not a removal");
        }
        let cur = self.devices.get(&device).copied();
        if cur.is_none() && self.devices.len() >= MAX_ENTRIES {
            return Err("the device list is full (64 devices ever)");
        }
        let next = DeviceEntry {
            state,
            changed: now,
            upto,
        };
        let merged = match cur {
            Some(c) => join(c, next),
            None => next,
        };
        self.devices.insert(device, merged);
        self.seq += 1;
        Ok(())
    }

    /// The join of two lists (see the module doc). The result's seq is above both when it
    /// differs from both, so a list that learned something is preferred by everyone.
    pub fn merge(&self, other: &DeviceList) -> DeviceList {
        let mut devices = self.devices.clone();
        for (k, e) in &other.devices {
            let v = match devices.get(k) {
                Some(c) => join(*c, *e),
                None => *e,
            };
            devices.insert(*k, v);
        }
        // Bounded: a list over the limits cannot be encoded; keep the first MAX_ENTRIES
        // (both inputs were within them, so this only bites on hostile-but-signed input).
        while devices.len() > MAX_ENTRIES {
            devices.pop_last();
        }
        let mut seq = self.seq.max(other.seq);
        if devices != self.devices && devices != other.devices {
            seq += 1;
        }
        DeviceList { seq, devices }
    }

    pub fn sign(&self, keys: &UserKeys) -> Result<Vec<u8>> {
        if self.devices.len() > MAX_ENTRIES {
            return Err(Error::InvalidRecord("more than 64 devices in the list"));
        }
        if self.live().len() > MAX_LIVE {
            return Err(Error::InvalidRecord("more than 16 live devices"));
        }
        let mut w = Writer::with_capacity(MAX_LIST);
        w.u8(VERSION).u64(self.seq).u8(self.devices.len() as u8);
        for (k, e) in &self.devices {
            w.fixed(k).u8(e.state as u8).u64(e.changed).u64(e.upto);
        }
        let sig = keys.sign(SIG_CONTEXT, w.as_slice());
        w.fixed(&sig);
        Ok(w.into_vec())
    }

    /// Decodes and verifies a list signed by `public`.
    pub fn open(bytes: &[u8], public: &UserPublicKeys) -> Result<DeviceList> {
        if bytes.len() > MAX_LIST {
            return Err(Error::TooLarge {
                format: "device list",
                len: bytes.len(),
                max: MAX_LIST,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                format: "device list",
                found: version,
                supported: VERSION,
            });
        }
        let seq = r.u64("seq")?;
        let count = usize::from(r.u8("count")?);
        if count > MAX_ENTRIES {
            return Err(DecodeError::TooLong {
                field: "devices",
                len: count,
                max: MAX_ENTRIES,
            }
            .into());
        }
        let mut devices = BTreeMap::new();
        let mut last: Option<[u8; 32]> = None;
        for _ in 0..count {
            let key: [u8; 32] = r.array("device key")?;
            if last.is_some_and(|l| l >= key) {
                return Err(Error::InvalidRecord("device keys not sorted or repeated"));
            }
            last = Some(key);
            let state = match r.u8("state")? {
                1 => DeviceState::Live,
                2 => DeviceState::Removed,
                3 => DeviceState::Revoked,
                _ => return Err(Error::InvalidRecord("unknown device state")),
            };
            let changed = r.u64("changed")?;
            let upto = r.u64("upto")?;
            devices.insert(
                key,
                DeviceEntry {
                    state,
                    changed,
                    upto,
                },
            );
        }
        let signed = r.consumed();
        let sig = r.array::<64>("signature")?;
        r.finish("device list")?;
        public.verify(SIG_CONTEXT, signed, &sig)?;
        let list = DeviceList { seq, devices };
        if list.live().len() > MAX_LIVE {
            return Err(Error::InvalidRecord("more than 16 live devices"));
        }
        Ok(list)
    }
}

fn join(a: DeviceEntry, b: DeviceEntry) -> DeviceEntry {
    match a.state.cmp(&b.state) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => DeviceEntry {
            state: a.state,
            changed: a.changed.max(b.changed),
            upto: if a.state == DeviceState::Live {
                0
            } else {
                a.upto.min(b.upto)
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> UserKeys {
        UserKeys::from_seed([3; 32])
    }

    #[test]
    fn roundtrip_and_forgery() {
        let mut l = DeviceList::default();
        l.add([1; 32], 10).unwrap();
        l.add([2; 32], 11).unwrap();
        l.remove([1; 32], DeviceState::Revoked, 7, 12).unwrap();
        let bytes = l.sign(&keys()).unwrap();
        assert_eq!(DeviceList::open(&bytes, keys().public()).unwrap(), l);
        let other = UserKeys::from_seed([4; 32]);
        assert!(DeviceList::open(&bytes, other.public()).is_err());
        assert!(DeviceList::open(&l.sign(&other).unwrap(), keys().public()).is_err());
    }

    #[test]
    fn a_removed_device_never_comes_back_and_16_live_at_most() {
        let mut l = DeviceList::default();
        for i in 0..16u8 {
            l.add([i; 32], 0).unwrap();
        }
        assert!(l.add([99; 32], 0).is_err());
        l.remove([0; 32], DeviceState::Removed, 3, 1).unwrap();
        assert!(l.add([0; 32], 2).is_err());
        l.add([99; 32], 0).unwrap();
        assert_eq!(l.live().len(), 16);
    }

    #[test]
    fn concurrent_changes_converge() {
        let mut base = DeviceList::default();
        base.add([1; 32], 0).unwrap();
        let (mut a, mut b) = (base.clone(), base.clone());
        a.add([2; 32], 1).unwrap();
        b.remove([1; 32], DeviceState::Revoked, 5, 1).unwrap();
        let (ab, ba) = (a.merge(&b), b.merge(&a));
        assert_eq!(ab, ba);
        assert!(ab.is_live(&[2; 32]) && !ab.is_live(&[1; 32]));
        assert!(ab.seq > a.seq && ab.seq > b.seq);
        assert_eq!(ab.merge(&a), ab, "idempotent once merged");
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = DeviceList::open(&bytes, keys().public());
        }

        #[test]
        fn any_flipped_byte_is_detected(pos in any::<usize>(), bit in 0u8..8) {
            let mut l = DeviceList::default();
            l.add([1; 32], 1).unwrap();
            let mut bytes = l.sign(&keys()).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            prop_assert!(DeviceList::open(&bytes, keys().public()).is_err());
        }
    }
}
