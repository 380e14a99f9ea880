//! Bundles (many small sealed objects coded together) and fragments (one coded piece of a
//! bundle, with the manifest that lets anyone verify it). docs/design.md, "Bundle" and
//! "Fragment":
//!
//! ```text
//! bundle   u8 version = 1 · u32 count · count × ([32] object id · u32 len · sealed object)
//!          id = BLAKE3(bundle bytes)
//! fragment u8 version = 1 · u8 codec · [32] bundle id · u16 index · u16 n · u16 k ·
//!          u64 bundle length · n × [32] BLAKE3 of every fragment · u32 len ‖ fragment bytes
//! ```
//!
//! A fragment whose bytes do not hash to its manifest entry is refused on decode, so a holder
//! that flips a byte is caught by whoever reads it; a rebuilt bundle is checked against its id.

use std::collections::HashMap;

use thiserror::Error;

use super::codec::{CodecError, ErasureCodec};
use super::params::Params;
use crate::crypto::{self, ObjectId, SealedObject};
use crate::wire::{DecodeError, Reader, Writer};

pub const BUNDLE_VERSION: u8 = 1;
pub const FRAGMENT_VERSION: u8 = 1;
/// Largest bundle (the coder holds it in memory).
pub const MAX_BUNDLE: usize = 80 * 1024 * 1024;
pub const MAX_OBJECTS: usize = 65_536;
pub const MAX_N: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported {what} version {found}")]
    Version { what: &'static str, found: u8 },
    #[error("fragment {index} does not match its manifest (altered or corrupt)")]
    Corrupt { index: u16 },
    #[error("the rebuilt bundle does not hash to its id")]
    BundleMismatch,
    #[error("object {0} in the bundle does not match its id")]
    ObjectMismatch(ObjectId),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no fragments")]
    Empty,
    #[error("codec {0} is not known to this build")]
    UnknownCodec(u8),
    #[error("bundle of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Packs sealed objects into one bundle; returns its bytes and id.
pub fn pack(objects: &[SealedObject]) -> Result<(Vec<u8>, ObjectId), Error> {
    let size: usize = objects
        .iter()
        .map(|o| o.as_bytes().len() + 36)
        .sum::<usize>()
        + 5;
    if size > MAX_BUNDLE || objects.len() > MAX_OBJECTS {
        return Err(Error::TooLarge(size));
    }
    let mut w = Writer::with_capacity(size);
    w.u8(BUNDLE_VERSION).u32(objects.len() as u32);
    for o in objects {
        w.fixed(o.id().as_bytes()).bytes32(o.as_bytes());
    }
    let bytes = w.into_vec();
    let id = ObjectId::of(&bytes);
    Ok((bytes, id))
}

/// Unpacks a bundle, checking every object against its id.
pub fn unpack(bytes: &[u8]) -> Result<Vec<SealedObject>, Error> {
    if bytes.len() > MAX_BUNDLE {
        return Err(Error::TooLarge(bytes.len()));
    }
    let mut r = Reader::new(bytes);
    let v = r.u8("bundle version")?;
    if v != BUNDLE_VERSION {
        return Err(Error::Version {
            what: "bundle",
            found: v,
        });
    }
    let count = r.u32("object count")? as usize;
    if count > MAX_OBJECTS {
        return Err(DecodeError::TooLong {
            field: "objects",
            len: count,
            max: MAX_OBJECTS,
        }
        .into());
    }
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let id = ObjectId(r.array("object id")?);
        let body = r.bytes32("object", MAX_BUNDLE)?;
        let obj = SealedObject::from_bytes_verified(body.to_vec(), &id)
            .map_err(|_| Error::ObjectMismatch(id))?;
        out.push(obj);
    }
    r.finish("bundle")?;
    Ok(out)
}

/// What every fragment of one bundle carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub codec: u8,
    pub bundle: ObjectId,
    pub n: u16,
    pub k: u16,
    pub len: u64,
    pub hashes: Vec<[u8; 32]>,
}

impl Manifest {
    fn write(&self, w: &mut Writer, index: u16) {
        w.u8(FRAGMENT_VERSION)
            .u8(self.codec)
            .fixed(self.bundle.as_bytes())
            .u16(index)
            .u16(self.n)
            .u16(self.k)
            .u64(self.len);
        for h in &self.hashes {
            w.fixed(h);
        }
    }

    /// Identifies the manifest (fragments of one coding of one bundle share it).
    pub fn id(&self) -> [u8; 32] {
        let mut w = Writer::new();
        self.write(&mut w, 0);
        crypto::hash(w.as_slice())
    }
}

/// One coded piece of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub manifest: Manifest,
    pub index: u16,
    pub bytes: Vec<u8>,
}

/// Where fragment `index` of `bundle` lives: the peer closest to BLAKE3(id ‖ index).
pub fn placement_key(bundle: &ObjectId, index: u16) -> [u8; 32] {
    let mut b = [0u8; 34];
    b[..32].copy_from_slice(bundle.as_bytes());
    b[32..].copy_from_slice(&index.to_be_bytes());
    crypto::hash(&b)
}

impl Fragment {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.bytes.len() + 64 + 32 * self.manifest.hashes.len());
        self.manifest.write(&mut w, self.index);
        w.bytes32(&self.bytes);
        w.into_vec()
    }

    /// Decodes and verifies a fragment from a peer: bounded, and its bytes must hash to its
    /// manifest entry.
    pub fn decode(bytes: &[u8]) -> Result<Fragment, Error> {
        let mut r = Reader::new(bytes);
        let v = r.u8("fragment version")?;
        if v != FRAGMENT_VERSION {
            return Err(Error::Version {
                what: "fragment",
                found: v,
            });
        }
        let codec = r.u8("codec")?;
        let bundle = ObjectId(r.array("bundle id")?);
        let index = r.u16("index")?;
        let n = r.u16("n")?;
        let k = r.u16("k")?;
        let len = r.u64("bundle length")?;
        if n == 0
            || usize::from(n) > MAX_N
            || k == 0
            || k > n
            || index >= n
            || len > MAX_BUNDLE as u64
        {
            return Err(DecodeError::Invalid {
                field: "fragment header",
                why: "n, k, index or length out of range",
            }
            .into());
        }
        let hashes = (0..n)
            .map(|_| r.array::<32>("fragment hash"))
            .collect::<Result<Vec<_>, _>>()?;
        let body = r.bytes32("fragment", MAX_BUNDLE)?.to_vec();
        r.finish("fragment")?;
        if crypto::hash(&body) != hashes[usize::from(index)] {
            return Err(Error::Corrupt { index });
        }
        Ok(Fragment {
            manifest: Manifest {
                codec,
                bundle,
                n,
                k,
                len,
                hashes,
            },
            index,
            bytes: body,
        })
    }
}

/// Codes a bundle into `params.n` fragments.
pub fn make_fragments(
    codec: &dyn ErasureCodec,
    bundle: &[u8],
    params: Params,
) -> Result<Vec<Fragment>, Error> {
    if bundle.len() > MAX_BUNDLE {
        return Err(Error::TooLarge(bundle.len()));
    }
    let (n, k) = (usize::from(params.n), usize::from(params.k));
    let shards = codec.encode(bundle, n, k)?;
    let manifest = Manifest {
        codec: codec.id(),
        bundle: ObjectId::of(bundle),
        n: params.n,
        k: params.k,
        len: bundle.len() as u64,
        hashes: shards.iter().map(|s| crypto::hash(s)).collect(),
    };
    Ok(shards
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Fragment {
            manifest: manifest.clone(),
            index: i as u16,
            bytes,
        })
        .collect())
}

/// Rebuilds a bundle from verified fragments (any k of one manifest; the manifest most
/// fragments agree on is used, so a forged manifest on a few fragments is outvoted), and checks
/// the result against the bundle id.
pub fn rebuild(codec: &dyn ErasureCodec, fragments: Vec<Fragment>) -> Result<Vec<u8>, Error> {
    let mut groups: HashMap<[u8; 32], Vec<Fragment>> = HashMap::new();
    for f in fragments {
        groups.entry(f.manifest.id()).or_default().push(f);
    }
    let group = groups
        .into_values()
        .max_by_key(Vec::len)
        .ok_or(Error::Empty)?;
    let m = group[0].manifest.clone();
    if m.codec != codec.id() {
        return Err(Error::UnknownCodec(m.codec));
    }
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; usize::from(m.n)];
    for f in group {
        let slot = usize::from(f.index);
        if crypto::hash(&f.bytes) == m.hashes[slot] {
            shards[slot] = Some(f.bytes);
        }
    }
    let data = codec.decode(shards, usize::from(m.n), usize::from(m.k), m.len as usize)?;
    if ObjectId::of(&data) != m.bundle {
        return Err(Error::BundleMismatch);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::codec::ReedSolomon8;
    use proptest::prelude::*;

    fn objects(n: usize) -> Vec<SealedObject> {
        (0..n)
            .map(|i| SealedObject::seal(&vec![i as u8; 100 + i * 37]).unwrap().0)
            .collect()
    }

    #[test]
    fn bundle_roundtrip_and_ids_checked() {
        let objs = objects(20);
        let (bytes, id) = pack(&objs).unwrap();
        assert_eq!(ObjectId::of(&bytes), id);
        assert_eq!(unpack(&bytes).unwrap(), objs);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(unpack(&bad), Err(Error::ObjectMismatch(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn fragments_roundtrip_and_any_k_rebuild(count in 1usize..8, k in 1u16..6, extra in 0u16..6, drop_seed in any::<u64>()) {
            let (bundle, id) = pack(&objects(count)).unwrap();
            let params = Params { n: k + extra, k };
            let frags = make_fragments(&ReedSolomon8, &bundle, params).unwrap();
            let wire: Vec<Vec<u8>> = frags.iter().map(Fragment::encode).collect();
            let decoded: Vec<Fragment> = wire.iter().map(|b| Fragment::decode(b).unwrap()).collect();
            prop_assert_eq!(&decoded, &frags);
            // Keep k of them, chosen by the seed.
            let mut idx: Vec<usize> = (0..frags.len()).collect();
            idx.sort_by_key(|i| (drop_seed.rotate_left(*i as u32 * 7) ^ *i as u64) % 1009);
            let kept: Vec<Fragment> = idx[..usize::from(k)].iter().map(|i| decoded[*i].clone()).collect();
            let rebuilt = rebuild(&ReedSolomon8, kept.clone()).unwrap();
            prop_assert_eq!(ObjectId::of(&rebuilt), id);
            prop_assert_eq!(&rebuilt, &bundle);
            if k > 1 {
                prop_assert!(rebuild(&ReedSolomon8, kept[..usize::from(k) - 1].to_vec()).is_err());
            }
        }

        /// A fragment with any one byte changed is detected and not used.
        #[test]
        fn a_changed_byte_is_caught(pos in any::<usize>(), bit in 0u8..8) {
            let (bundle, _) = pack(&objects(3)).unwrap();
            let frags = make_fragments(&ReedSolomon8, &bundle, Params { n: 6, k: 3 }).unwrap();
            let mut wire = frags[2].encode();
            let pos = pos % wire.len();
            wire[pos] ^= 1 << bit;
            match Fragment::decode(&wire) {
                Err(_) => {}
                // Changed somewhere that still decodes (e.g. another fragment's hash in the
                // manifest): then it is no longer the same manifest, and is outvoted.
                Ok(f) => {
                    prop_assert_ne!(&f, &frags[2]);
                    let mut set: Vec<Fragment> = frags[..2].to_vec();
                    set.push(f);
                    set.push(frags[3].clone());
                    set.push(frags[4].clone());
                    prop_assert_eq!(rebuild(&ReedSolomon8, set).unwrap(), bundle);
                }
            }
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let _ = Fragment::decode(&bytes);
            let _ = unpack(&bytes);
        }
    }

    #[test]
    fn placement_spreads_fragments() {
        let id = ObjectId([7; 32]);
        let keys: std::collections::HashSet<[u8; 32]> =
            (0..48).map(|i| placement_key(&id, i)).collect();
        assert_eq!(keys.len(), 48);
    }
}
