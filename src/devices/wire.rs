//! The payload of a `/peerpost/replica/1` request or answer (docs/design.md, "Devices"):
//!
//! ```text
//!   u8   version = 1
//!   u32 len ‖ signed device list (≤ device_list::MAX_LIST)
//!   u16 n (≤ MAX_VV) ‖ n × (u64 device ‖ u64 highest seq)     the sender's version vector
//!   u16 m (≤ MAX_ENTRIES) ‖ m × (u32 len ‖ log entry)         entries the receiver lacks
//!   u16 k (≤ MAX_OBJECTS) ‖ k × (u32 len ‖ sealed object)     the bodies those entries add
//!   u8   more (1: the sender has more the receiver lacks)
//! ```
//!
//! The frame as a whole is bounded by the overlay (replica::MAX_REPLICA_FRAME).

use std::collections::BTreeMap;

use crate::crypto::device_list::MAX_LIST;
use crate::mailbox::DeviceId;
use crate::mailbox::log::MAX_ENTRY;
use crate::overlay::replica::MAX_REPLICA_FRAME;
use crate::wire::{DecodeError, Reader, Writer};

pub const VERSION: u8 = 1;
/// Devices a version vector names at most (every device ever, with room).
pub const MAX_VV: usize = 1024;
pub const MAX_ENTRIES: usize = 1024;
pub const MAX_OBJECTS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub list: Vec<u8>,
    pub vv: BTreeMap<DeviceId, u64>,
    pub entries: Vec<Vec<u8>>,
    pub objects: Vec<Vec<u8>>,
    pub more: bool,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION).bytes32(&self.list);
        let vv: Vec<_> = self.vv.iter().take(MAX_VV).collect();
        w.u16(vv.len() as u16);
        for (d, s) in vv {
            w.u64(*d).u64(*s);
        }
        let entries = &self.entries[..self.entries.len().min(MAX_ENTRIES)];
        w.u16(entries.len() as u16);
        for e in entries {
            w.bytes32(e);
        }
        let objects = &self.objects[..self.objects.len().min(MAX_OBJECTS)];
        w.u16(objects.len() as u16);
        for o in objects {
            w.bytes32(o);
        }
        w.u8(u8::from(self.more));
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        if bytes.len() > MAX_REPLICA_FRAME {
            return Err(DecodeError::TooLong {
                field: "replica frame",
                len: bytes.len(),
                max: MAX_REPLICA_FRAME,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Invalid {
                field: "replica frame version",
                why: "not 1",
            });
        }
        let list = r.bytes32("device list", MAX_LIST)?.to_vec();
        let count = |r: &mut Reader<'_>, field, max| -> Result<usize, DecodeError> {
            let n = usize::from(r.u16(field)?);
            if n > max {
                return Err(DecodeError::TooLong { field, len: n, max });
            }
            Ok(n)
        };
        let n = count(&mut r, "version vector", MAX_VV)?;
        let mut vv = BTreeMap::new();
        for _ in 0..n {
            let (d, s) = (r.u64("device")?, r.u64("seq")?);
            vv.insert(d, s);
        }
        let m = count(&mut r, "entries", MAX_ENTRIES)?;
        let mut entries = Vec::with_capacity(m.min(64));
        for _ in 0..m {
            entries.push(r.bytes32("entry", MAX_ENTRY + 200)?.to_vec());
        }
        let k = count(&mut r, "objects", MAX_OBJECTS)?;
        let mut objects = Vec::with_capacity(k.min(64));
        for _ in 0..k {
            objects.push(r.bytes32("object", MAX_REPLICA_FRAME)?.to_vec());
        }
        let more = match r.u8("more")? {
            0 => false,
            1 => true,
            _ => {
                return Err(DecodeError::Invalid {
                    field: "more flag",
                    why: "not 0 or 1",
                });
            }
        };
        r.finish("replica frame")?;
        Ok(Frame {
            list,
            vv,
            entries,
            objects,
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let f = Frame {
            list: vec![1; 100],
            vv: [(1, 5), (9, 2)].into_iter().collect(),
            entries: vec![vec![2; 30], vec![]],
            objects: vec![vec![3; 10]],
            more: true,
        };
        assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::decode(&bytes);
        }
    }
}
