//! The backup's byte formats: bundle entries, the index, log segments and the root payload
//! (docs/design.md, "Backup"). Pure encoders and decoders; nothing here touches the store or
//! the ring.

use super::Error;
use crate::crypto::{self, ContentKey, ObjectId, SealedObject, UserKeys};
use crate::durability::fragment;
use crate::durability::params::Params;
use crate::durability::ring::Receipt;
use crate::overlay::PeerId;
use crate::overlay::backup_root::BackupRoot;
use crate::wire::{DecodeError, Reader, Writer};

/// What a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sealed message bodies, as the store keeps them.
    Bodies = 1,
    /// Log segments sealed under the backup key.
    Log = 2,
    /// One index object sealed under the backup key.
    Index = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Bodies),
            2 => Some(Kind::Log),
            3 => Some(Kind::Index),
            _ => None,
        }
    }
}

pub const ENTRY_VERSION: u8 = 1;
/// 2 adds the user's address; 3 the publishing device's key (versions 1 and 2 are still read).
pub const INDEX_VERSION: u8 = 3;
pub const SEGMENT_VERSION: u8 = 1;
/// Bundles an index lists at most (a 10 M-message mailbox in 1 MiB bundles is ~20 k).
pub const MAX_INDEX_ENTRIES: usize = 1 << 20;
/// Log entries one segment holds at most.
pub const MAX_SEGMENT_ENTRIES: usize = 1 << 20;
/// Largest log entry a segment carries.
pub const MAX_LOG_ENTRY: usize = 16 << 20;

/// One bundle of the backup: what it carries and its receipt (the index keeps no holders; the
/// local rows keep them as hints, [`Entry::encode_local`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Objects in the bundle.
    pub objects: u32,
    /// Bundle length in bytes.
    pub bytes: u64,
    pub receipt: Receipt,
}

impl Entry {
    /// `u8 version · u8 kind · [32] bundle · u16 n · u16 k · u32 objects · u64 bytes ·
    /// n × [32] fragment blob ids`
    pub fn encode(&self) -> Vec<u8> {
        let r = &self.receipt;
        let mut w = Writer::with_capacity(52 + 32 * r.blobs.len());
        w.u8(ENTRY_VERSION)
            .u8(self.kind as u8)
            .fixed(r.bundle.as_bytes())
            .u16(r.params.n)
            .u16(r.params.k)
            .u32(self.objects)
            .u64(self.bytes);
        for b in &r.blobs {
            w.fixed(b);
        }
        w.into_vec()
    }

    pub(super) fn read(r: &mut Reader<'_>) -> Result<Entry, Error> {
        let v = r.u8("entry version")?;
        if v != ENTRY_VERSION {
            return Err(Error::Version {
                what: "backup entry",
                found: v,
            });
        }
        let kind = Kind::from_u8(r.u8("kind")?).ok_or(DecodeError::Invalid {
            field: "kind",
            why: "unknown bundle kind",
        })?;
        let bundle = ObjectId(r.array("bundle id")?);
        let (n, k) = (r.u16("n")?, r.u16("k")?);
        if n == 0 || k == 0 || k > n || usize::from(n) > fragment::MAX_N {
            return Err(DecodeError::Invalid {
                field: "n/k",
                why: "out of range",
            }
            .into());
        }
        let objects = r.u32("objects")?;
        let bytes = r.u64("bytes")?;
        let blobs = (0..n)
            .map(|_| r.array::<32>("fragment id"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Entry {
            kind,
            objects,
            bytes,
            receipt: Receipt {
                bundle,
                params: Params { n, k },
                holders: vec![None; blobs.len()],
                stored: blobs.len(),
                blobs,
            },
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, Error> {
        let mut r = Reader::new(bytes);
        let e = Entry::read(&mut r)?;
        r.finish("backup entry")?;
        Ok(e)
    }

    /// The local rows' form: the entry, then who took each fragment (a hint that finds a
    /// holder after the ring grew and it is no longer among the closest peers of the
    /// placement key): `entry · n × (u8 len ‖ peer id, 0 = unknown)`. Never shared: the index
    /// lists entries without holders.
    pub fn encode_local(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.fixed(&self.encode());
        for i in 0..self.receipt.blobs.len() {
            match self.receipt.holders.get(i).copied().flatten() {
                Some(p) if p.to_bytes().len() <= usize::from(u8::MAX) => {
                    w.bytes8(&p.to_bytes());
                }
                _ => {
                    w.u8(0);
                }
            }
        }
        w.into_vec()
    }

    /// Reads [`Entry::encode_local`]; a row without hints (older builds) reads as an entry
    /// with no holder known.
    pub(super) fn read_local(r: &mut Reader<'_>) -> Result<Entry, Error> {
        let mut e = Entry::read(r)?;
        if r.remaining() == 0 {
            return Ok(e);
        }
        for h in e.receipt.holders.iter_mut() {
            let len = usize::from(r.u8("holder length")?);
            if len > 0 {
                *h = PeerId::from_bytes(r.take(len, "holder")?).ok();
            }
        }
        Ok(e)
    }

    pub fn decode_local(bytes: &[u8]) -> Result<Entry, Error> {
        let mut r = Reader::new(bytes);
        let e = Entry::read_local(&mut r)?;
        r.finish("backup entry")?;
        Ok(e)
    }
}

/// The key segments, the index and root payloads are sealed under: from the seed alone.
pub fn backup_key(keys: &UserKeys) -> ContentKey {
    let mut m = b"peerpost backup key v1".to_vec();
    m.extend_from_slice(keys.log_key().as_bytes());
    ContentKey::from_bytes(crypto::hash(&m))
}

/// `u8 version = 3 · u64 created · u8 len ‖ address (may be empty) · u8 len ‖ device key
/// (0 or 32 bytes: the device that published it) · u32 count · count × (u32 len ‖ entry)`,
/// sealed.
pub fn encode_index(
    entries: &[Entry],
    created: u64,
    address: Option<&str>,
    device: Option<&[u8; 32]>,
) -> Vec<u8> {
    let mut w = Writer::new();
    let address = address.filter(|a| a.len() <= 254).unwrap_or("");
    w.u8(INDEX_VERSION)
        .u64(created)
        .bytes8(address.as_bytes())
        .bytes8(device.map_or(&[][..], |d| &d[..]))
        .u32(entries.len() as u32);
    for e in entries {
        w.bytes32(&e.encode());
    }
    w.into_vec()
}

/// What an index lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub created: u64,
    /// The user's address (`None` in a version 1 index, or when it was not known).
    pub address: Option<String>,
    /// The device that published it (`None` before version 3).
    pub device: Option<[u8; 32]>,
    pub entries: Vec<Entry>,
}

pub fn decode_index(bytes: &[u8]) -> Result<Index, Error> {
    let mut r = Reader::new(bytes);
    let v = r.u8("index version")?;
    if !(1..=INDEX_VERSION).contains(&v) {
        return Err(Error::Version {
            what: "backup index",
            found: v,
        });
    }
    let created = r.u64("created")?;
    let address = if v >= 2 {
        let a = r.bytes8("address", 254)?;
        let a = std::str::from_utf8(a).map_err(|_| DecodeError::Invalid {
            field: "address",
            why: "not UTF-8",
        })?;
        Some(a.to_string()).filter(|a| !a.is_empty())
    } else {
        None
    };
    let device = if v >= 3 {
        match r.bytes8("device", 32)? {
            [] => None,
            d => Some(<[u8; 32]>::try_from(d).map_err(|_| DecodeError::Invalid {
                field: "device",
                why: "not 32 bytes",
            })?),
        }
    } else {
        None
    };
    let count = r.u32("count")? as usize;
    if count > MAX_INDEX_ENTRIES {
        return Err(DecodeError::TooLong {
            field: "index entries",
            len: count,
            max: MAX_INDEX_ENTRIES,
        }
        .into());
    }
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        out.push(Entry::decode(r.bytes32("entry", 64 + 32 * 256)?)?);
    }
    r.finish("backup index")?;
    Ok(Index {
        created,
        address,
        device,
        entries: out,
    })
}

/// A log entry as the store keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub device: u64,
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// `u8 version · u32 count · count × (u64 device · u64 seq · u32 len ‖ entry)`, sealed.
pub fn encode_segment(rows: &[LogRow]) -> Vec<u8> {
    let size = rows.iter().map(|r| r.bytes.len() + 20).sum::<usize>() + 5;
    let mut w = Writer::with_capacity(size);
    w.u8(SEGMENT_VERSION).u32(rows.len() as u32);
    for r in rows {
        w.u64(r.device).u64(r.seq).bytes32(&r.bytes);
    }
    w.into_vec()
}

pub fn decode_segment(bytes: &[u8]) -> Result<Vec<LogRow>, Error> {
    let mut r = Reader::new(bytes);
    let v = r.u8("segment version")?;
    if v != SEGMENT_VERSION {
        return Err(Error::Version {
            what: "log segment",
            found: v,
        });
    }
    let count = r.u32("count")? as usize;
    if count > MAX_SEGMENT_ENTRIES {
        return Err(DecodeError::TooLong {
            field: "segment entries",
            len: count,
            max: MAX_SEGMENT_ENTRIES,
        }
        .into());
    }
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let device = r.u64("device")?;
        let seq = r.u64("seq")?;
        let bytes = r.bytes32("log entry", MAX_LOG_ENTRY)?.to_vec();
        out.push(LogRow { device, seq, bytes });
    }
    r.finish("log segment")?;
    Ok(out)
}

/// Opens a root's payload: the receipt of the index bundle.
pub fn open_root(root: &BackupRoot, key: &ContentKey) -> Result<Entry, Error> {
    let sealed = SealedObject::from_bytes(root.payload.clone())?;
    Entry::decode(&sealed.open(key)?)
}
