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
//!
//! A body too large for a sync frame is fetched in chunks over the same protocol; the first
//! byte tells the payloads apart (an older build answers only 1 and closes the stream on the
//! others, which the fetcher takes as "not now"):
//!
//! ```text
//!   request  u8 kind = 2 ‖ [32] object id ‖ u64 offset ‖ u32 len (1 ..= MAX_CHUNK)
//!   answer   u8 kind = 3 ‖ [32] object id ‖ u64 total (sealed length) ‖ u64 offset
//!              ‖ u32 len (≤ MAX_CHUNK, offset + len ≤ total) ‖ len bytes
//!        or  u8 kind = 4 ‖ [32] object id                      (not held here)
//! ```

use std::collections::BTreeMap;

use crate::crypto::ObjectId;
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
/// Kinds of the chunked body fetch (the sync frame's first byte is its version, 1).
pub const KIND_BODY_REQUEST: u8 = 2;
pub const KIND_BODY_CHUNK: u8 = 3;
pub const KIND_BODY_ABSENT: u8 = 4;
/// Bytes of a body one chunk carries at most.
pub const MAX_CHUNK: u32 = 1 << 20;

/// Asks for `len` bytes of a sealed body from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRequest {
    pub object: ObjectId,
    pub offset: u64,
    pub len: u32,
}

/// What the holder answers to a [`BodyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAnswer {
    Chunk {
        object: ObjectId,
        /// Length of the whole sealed body.
        total: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    Absent {
        object: ObjectId,
    },
}

fn kind(r: &mut Reader<'_>, want: &[u8]) -> Result<u8, DecodeError> {
    let k = r.u8("kind")?;
    if !want.contains(&k) {
        return Err(DecodeError::Invalid {
            field: "replica payload kind",
            why: "not the kind expected here",
        });
    }
    Ok(k)
}

impl BodyRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(KIND_BODY_REQUEST)
            .fixed(self.object.as_bytes())
            .u64(self.offset)
            .u32(self.len);
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<BodyRequest, DecodeError> {
        let mut r = Reader::new(bytes);
        kind(&mut r, &[KIND_BODY_REQUEST])?;
        let object = ObjectId(r.array("object id")?);
        let offset = r.u64("offset")?;
        let len = r.u32("length")?;
        if len == 0 || len > MAX_CHUNK {
            return Err(DecodeError::Invalid {
                field: "chunk length",
                why: "not between 1 and 1 MiB",
            });
        }
        r.finish("body request")?;
        Ok(BodyRequest {
            object,
            offset,
            len,
        })
    }
}

impl BodyAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            BodyAnswer::Chunk {
                object,
                total,
                offset,
                bytes,
            } => {
                w.u8(KIND_BODY_CHUNK)
                    .fixed(object.as_bytes())
                    .u64(*total)
                    .u64(*offset)
                    .bytes32(bytes);
            }
            BodyAnswer::Absent { object } => {
                w.u8(KIND_BODY_ABSENT).fixed(object.as_bytes());
            }
        }
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<BodyAnswer, DecodeError> {
        let mut r = Reader::new(bytes);
        let k = kind(&mut r, &[KIND_BODY_CHUNK, KIND_BODY_ABSENT])?;
        let object = ObjectId(r.array("object id")?);
        let answer = if k == KIND_BODY_ABSENT {
            BodyAnswer::Absent { object }
        } else {
            let total = r.u64("total")?;
            let offset = r.u64("offset")?;
            let bytes = r.bytes32("chunk", MAX_CHUNK as usize)?.to_vec();
            let end = offset.checked_add(bytes.len() as u64);
            if end.is_none_or(|e| e > total) {
                return Err(DecodeError::Invalid {
                    field: "chunk",
                    why: "ends beyond the body",
                });
            }
            BodyAnswer::Chunk {
                object,
                total,
                offset,
                bytes,
            }
        };
        r.finish("body answer")?;
        Ok(answer)
    }
}

/// The kind of a replica payload (its first byte), to route it; `None` for an empty one.
pub fn kind_of(payload: &[u8]) -> Option<u8> {
    payload.first().copied()
}

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
            let _ = BodyRequest::decode(&bytes);
            let _ = BodyAnswer::decode(&bytes);
        }

        #[test]
        fn body_request_roundtrips(id in any::<[u8; 32]>(), offset in any::<u64>(), len in 1..=MAX_CHUNK) {
            let q = BodyRequest { object: ObjectId(id), offset, len };
            prop_assert_eq!(BodyRequest::decode(&q.encode()).unwrap(), q);
        }

        #[test]
        fn body_answer_roundtrips(
            id in any::<[u8; 32]>(),
            offset in 0u64..1 << 40,
            extra in 0u64..1 << 20,
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            absent in any::<bool>(),
        ) {
            let object = ObjectId(id);
            let a = if absent {
                BodyAnswer::Absent { object }
            } else {
                BodyAnswer::Chunk { object, total: offset + bytes.len() as u64 + extra, offset, bytes }
            };
            let enc = a.encode();
            prop_assert_eq!(BodyAnswer::decode(&enc).unwrap(), a);
            // Every truncation is an error, never a panic or a shorter answer.
            for cut in 0..enc.len() {
                prop_assert!(BodyAnswer::decode(&enc[..cut]).is_err());
            }
        }
    }

    #[test]
    fn forged_body_payloads_are_refused() {
        let object = ObjectId([9; 32]);
        let q = BodyRequest {
            object,
            offset: 5,
            len: 10,
        }
        .encode();
        // Truncated, trailing, zero or oversized lengths, wrong kinds.
        for cut in 0..q.len() {
            assert!(BodyRequest::decode(&q[..cut]).is_err());
        }
        let mut long = q.clone();
        long.push(0);
        assert!(BodyRequest::decode(&long).is_err());
        for len in [0, MAX_CHUNK + 1, u32::MAX] {
            let mut b = q.clone();
            b[41..45].copy_from_slice(&len.to_be_bytes());
            assert!(BodyRequest::decode(&b).is_err(), "len {len}");
        }
        assert!(BodyAnswer::decode(&q).is_err(), "a request is no answer");
        assert!(BodyRequest::decode(&Frame::default().encode()).is_err());
        assert!(Frame::decode(&q).is_err(), "a request is no sync frame");
        // A chunk that claims to end beyond the body it is part of.
        let chunk = |total, offset| {
            BodyAnswer::Chunk {
                object,
                total,
                offset,
                bytes: vec![1; 10],
            }
            .encode()
        };
        assert!(BodyAnswer::decode(&chunk(15, 5)).is_ok());
        assert!(BodyAnswer::decode(&chunk(14, 5)).is_err());
        assert!(BodyAnswer::decode(&chunk(u64::MAX, u64::MAX - 3)).is_err());
        // A chunk longer than MAX_CHUNK is refused before it is copied.
        let mut big = Writer::new();
        big.u8(KIND_BODY_CHUNK)
            .fixed(&[0; 32])
            .u64(u64::MAX)
            .u64(0)
            .u32(MAX_CHUNK + 1);
        let mut big = big.into_vec();
        big.resize(big.len() + MAX_CHUNK as usize + 1, 0);
        assert!(BodyAnswer::decode(&big).is_err());
    }
}
