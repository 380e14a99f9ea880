//! Device logs: each device appends entries of ops; an entry is sealed with the user's log key
//! (so the ring stores it unreadably) and signed with the user key (so no one else can forge
//! one). docs/design.md, "Log entry":
//!
//! ```text
//!   u8   version = 1
//!   u64  device · u64 seq · u64 hlc
//!   u32 len ‖ sealed object (log key): u64 device · u64 seq · u64 hlc · u32 count · ops
//!   [64] user signature ("peerpost log v1") over every preceding byte
//! ```
//!
//! The header is repeated inside the ciphertext and checked, so a valid body cannot be
//! re-labelled with another device or sequence number.

use super::limits::{self, Unloggable};
use super::model::{DeviceId, MAX_OPS, Op};
use super::{Error, Result};
use crate::crypto::{ContentKey, SealedObject, UserKeys, UserPublicKeys};
use crate::wire::{DecodeError, Reader, Writer};

pub const VERSION: u8 = 1;
/// The largest entry accepted (an import batch of a few hundred adds is ~50 KiB).
pub const MAX_ENTRY: usize = 16 * 1024 * 1024;
const SIG_CONTEXT: &str = "peerpost log v1";

/// A decoded, verified log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub device: DeviceId,
    pub seq: u64,
    pub hlc: u64,
    pub ops: Vec<Op>,
}

impl LogEntry {
    /// Seals and signs the entry. An entry [`LogEntry::open`] would refuse (over a limit:
    /// see [`limits`]) is refused here instead, so no entry is written that does not decode.
    pub fn seal(&self, keys: &UserKeys, log_key: &ContentKey) -> Result<Vec<u8>> {
        let body = self.encode_body()?;
        let sealed = SealedObject::seal_with_key(&body, log_key)?;
        if sealed.as_bytes().len() > MAX_ENTRY {
            return Err(Unloggable::TooMany {
                what: "bytes in one log entry",
                len: sealed.as_bytes().len(),
                max: MAX_ENTRY,
            }
            .into());
        }
        let mut w = Writer::with_capacity(sealed.as_bytes().len() + 100);
        w.u8(VERSION)
            .u64(self.device)
            .u64(self.seq)
            .u64(self.hlc)
            .bytes32(sealed.as_bytes());
        let sig = keys.sign(SIG_CONTEXT, w.as_slice());
        w.fixed(&sig);
        Ok(w.into_vec())
    }

    /// The plaintext body (what is sealed): the header again, the op count, the ops. Refuses
    /// what [`LogEntry::decode_body`] would.
    pub fn encode_body(&self) -> Result<Vec<u8>> {
        if self.ops.len() > MAX_OPS {
            return Err(Unloggable::TooMany {
                what: "ops in one log entry",
                len: self.ops.len(),
                max: MAX_OPS,
            }
            .into());
        }
        for op in &self.ops {
            limits::check(op)?;
            if !limits::fits(op) {
                return Err(Unloggable::Invalid {
                    what: "log op",
                    why: "names more entries or keywords than one op may (split it first)",
                }
                .into());
            }
        }
        let mut body = Writer::new();
        body.u64(self.device)
            .u64(self.seq)
            .u64(self.hlc)
            .u32(self.ops.len() as u32);
        for op in &self.ops {
            op.encode(&mut body);
        }
        // The sealed object adds a header and a tag (under 100 bytes).
        if body.len() + 100 > MAX_ENTRY {
            return Err(Unloggable::TooMany {
                what: "bytes in one log entry",
                len: body.len(),
                max: MAX_ENTRY - 100,
            }
            .into());
        }
        Ok(body.into_vec())
    }

    /// Verifies and decrypts an entry from the store or a peer.
    pub fn open(bytes: &[u8], public: &UserPublicKeys, log_key: &ContentKey) -> Result<LogEntry> {
        if bytes.len() > MAX_ENTRY + 200 {
            return Err(Error::Corrupt(format!(
                "log entry of {} bytes",
                bytes.len()
            )));
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(Error::Corrupt(format!("log entry version {version}")));
        }
        let device = r.u64("device")?;
        let seq = r.u64("seq")?;
        let hlc = r.u64("hlc")?;
        let sealed = r.bytes32("body", MAX_ENTRY)?;
        let signed = r.consumed();
        let sig = r.array::<64>("signature")?;
        r.finish("log entry")?;
        public.verify(SIG_CONTEXT, signed, &sig)?;
        let body = SealedObject::from_bytes(sealed.to_vec())?.open(log_key)?;
        let entry = LogEntry::decode_body(&body)?;
        if (entry.device, entry.seq, entry.hlc) != (device, seq, hlc) {
            return Err(Error::Corrupt(
                "log entry header does not match its body".into(),
            ));
        }
        Ok(entry)
    }

    /// Decodes a decrypted body (the part [`LogEntry::open`] checks after the signature and
    /// the decryption; public for the fuzz targets and the limit tests).
    pub fn decode_body(body: &[u8]) -> Result<LogEntry> {
        let mut r = Reader::new(body);
        let (device, seq, hlc) = (r.u64("device")?, r.u64("seq")?, r.u64("hlc")?);
        let count = r.u32("op count")? as usize;
        if count > MAX_OPS {
            return Err(DecodeError::TooLong {
                field: "ops",
                len: count,
                max: MAX_OPS,
            }
            .into());
        }
        let ops = (0..count)
            .map(|_| Op::decode(&mut r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        r.finish("log entry body")?;
        Ok(LogEntry {
            device,
            seq,
            hlc,
            ops,
        })
    }

    /// Reads the header without verifying (to file an entry from a peer under its key).
    pub fn peek(bytes: &[u8]) -> Option<(DeviceId, u64)> {
        let mut r = Reader::new(bytes);
        (r.u8("version").ok()? == VERSION).then_some(())?;
        Some((r.u64("device").ok()?, r.u64("seq").ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::model::tests::arb_op;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn roundtrip(ops in proptest::collection::vec(arb_op(), 0..8), device in any::<u64>(), seq in any::<u64>(), hlc in any::<u64>()) {
            let keys = UserKeys::from_seed([1; 32]);
            let e = LogEntry { device, seq, hlc, ops };
            let bytes = e.seal(&keys, &keys.log_key()).unwrap();
            prop_assert_eq!(LogEntry::peek(&bytes), Some((device, seq)));
            prop_assert_eq!(LogEntry::open(&bytes, keys.public(), &keys.log_key()).unwrap(), e);
        }

        #[test]
        fn any_flipped_byte_is_detected(pos in any::<usize>(), bit in 0u8..8) {
            let keys = UserKeys::from_seed([1; 32]);
            let e = LogEntry { device: 1, seq: 2, hlc: 3, ops: vec![Op::Remove { entries: vec![] }] };
            let mut bytes = e.seal(&keys, &keys.log_key()).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            prop_assert!(LogEntry::open(&bytes, keys.public(), &keys.log_key()).is_err());
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let keys = UserKeys::from_seed([1; 32]);
            let _ = LogEntry::open(&bytes, keys.public(), &keys.log_key());
        }
    }

    #[test]
    fn another_users_entry_is_refused() {
        let alice = UserKeys::from_seed([1; 32]);
        let mallory = UserKeys::from_seed([2; 32]);
        let e = LogEntry {
            device: 1,
            seq: 1,
            hlc: 1,
            ops: vec![],
        };
        let forged = e.seal(&mallory, &alice.log_key()).unwrap();
        assert!(LogEntry::open(&forged, alice.public(), &alice.log_key()).is_err());
    }
}
