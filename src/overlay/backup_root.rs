//! Backup roots (issue #6): the one mutable thing a user keeps in the ring, a small signed
//! Kademlia record under `BLAKE3("peerpost backup v1" ‖ user Ed25519 key)` that points (inside
//! an opaque payload the durability layer seals) at the user's current backup index. Found
//! from the user key alone; only the user key can sign a newer one. docs/design.md, "Backup
//! root":
//!
//! ```text
//! u8 tag = 0xB1 (backup root, version 1; a directory record starts with 0x01)
//! [32] user Ed25519 key · u64 seq · u64 expires (unix s) · u32 len ‖ payload (≤ MAX_PAYLOAD)
//! [64] Ed25519 signature by the user key over "peerpost backup root v1" ‖ 0x00 ‖ all above
//! ```
//!
//! Holders keep a root only if it verifies, sits under its own key, has not expired, lives at
//! most [`MAX_LIFETIME_SECS`], and its `seq` is not lower than the held one's.

use thiserror::Error;

use crate::crypto::{self, UserKeys};
use crate::wire::{DecodeError, Reader, Writer};

/// First byte of a backup root (distinguishes it from directory records among DHT values).
pub const TAG: u8 = 0xB1;
/// Domain separation of backup-root DHT keys.
pub const KEY_CONTEXT: &[u8] = b"peerpost backup v1";
const SIGN_CONTEXT: &str = "peerpost backup root v1";
/// Largest payload (a sealed index receipt: 128 fragment ids and a header).
pub const MAX_PAYLOAD: usize = 6 * 1024;
/// Largest encoded root.
pub const MAX_ROOT: usize = 1 + 32 + 8 + 8 + 4 + MAX_PAYLOAD + 64;
/// Longest lifetime a holder accepts (the owner republishes well before).
pub const MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RootError {
    #[error("malformed backup root: {0}")]
    Decode(#[from] DecodeError),
    #[error("not a backup root (tag {0:#04x})")]
    Tag(u8),
    #[error("backup root signature does not verify")]
    Signature,
    #[error("backup root stored under another key")]
    WrongKey,
    #[error("backup root expired")]
    Expired,
    #[error("backup root lifetime too long")]
    Lifetime,
    #[error("older backup root (seq {offered} < held {held})")]
    Older { offered: u64, held: u64 },
}

/// A verified backup root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRoot {
    pub user: [u8; 32],
    pub seq: u64,
    pub expires: u64,
    pub payload: Vec<u8>,
}

/// The DHT key of a user's backup root.
pub fn key(user_sign_public: &[u8; 32]) -> [u8; 32] {
    let mut m = Vec::with_capacity(KEY_CONTEXT.len() + 32);
    m.extend_from_slice(KEY_CONTEXT);
    m.extend_from_slice(user_sign_public);
    crypto::hash(&m)
}

/// Whether DHT value bytes claim to be a backup root (then [`validate`] decides).
pub fn is_root(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TAG)
}

impl BackupRoot {
    fn body(&self) -> Writer {
        let mut w = Writer::with_capacity(MAX_ROOT);
        w.u8(TAG)
            .fixed(&self.user)
            .u64(self.seq)
            .u64(self.expires)
            .bytes32(&self.payload);
        w
    }

    /// Signs a root with the user key.
    pub fn sign(keys: &UserKeys, seq: u64, expires: u64, payload: Vec<u8>) -> Vec<u8> {
        let root = BackupRoot {
            user: keys.public().sign,
            seq,
            expires,
            payload,
        };
        let mut w = root.body();
        let sig = keys.sign(SIGN_CONTEXT, w.as_slice());
        w.fixed(&sig);
        w.into_vec()
    }
}

/// Decodes and verifies a root found under DHT key `key` at time `now`.
pub fn validate(bytes: &[u8], key_bytes: &[u8], now: u64) -> Result<BackupRoot, RootError> {
    if bytes.len() > MAX_ROOT {
        return Err(DecodeError::TooLong {
            field: "backup root",
            len: bytes.len(),
            max: MAX_ROOT,
        }
        .into());
    }
    let mut r = Reader::new(bytes);
    let tag = r.u8("tag")?;
    if tag != TAG {
        return Err(RootError::Tag(tag));
    }
    let user: [u8; 32] = r.array("user key")?;
    let seq = r.u64("seq")?;
    let expires = r.u64("expires")?;
    let payload = r.bytes32("payload", MAX_PAYLOAD)?.to_vec();
    let signed_len = r.position();
    let sig: [u8; 64] = r.array("signature")?;
    r.finish("backup root")?;
    crypto::keys::verify(&user, SIGN_CONTEXT, &bytes[..signed_len], &sig)
        .map_err(|_| RootError::Signature)?;
    if key(&user).as_slice() != key_bytes {
        return Err(RootError::WrongKey);
    }
    if expires <= now {
        return Err(RootError::Expired);
    }
    if expires > now.saturating_add(MAX_LIFETIME_SECS + 3600) {
        return Err(RootError::Lifetime);
    }
    Ok(BackupRoot {
        user,
        seq,
        expires,
        payload,
    })
}

/// Validates a root about to be published under its own key.
pub fn validate_own(bytes: &[u8], now: u64) -> Result<BackupRoot, RootError> {
    let user: [u8; 32] =
        bytes
            .get(1..33)
            .and_then(|b| b.try_into().ok())
            .ok_or(RootError::Decode(DecodeError::Invalid {
                field: "backup root",
                why: "too short",
            }))?;
    validate(bytes, &key(&user), now)
}

/// Holder side: may `new` replace `held` (both valid under one key)?
pub fn may_replace(held: &BackupRoot, new: &BackupRoot) -> Result<(), RootError> {
    if new.seq < held.seq {
        return Err(RootError::Older {
            offered: new.seq,
            held: held.seq,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_verify_and_refuse_forgeries() {
        let keys = UserKeys::from_seed([3; 32]);
        let k = key(&keys.public().sign);
        let bytes = BackupRoot::sign(&keys, 7, 2_000, vec![1, 2, 3]);
        let root = validate(&bytes, &k, 1_000).unwrap();
        assert_eq!((root.seq, root.payload.as_slice()), (7, &[1u8, 2, 3][..]));
        assert_eq!(validate(&bytes, &[0; 32], 1_000), Err(RootError::WrongKey));
        assert_eq!(validate(&bytes, &k, 2_000), Err(RootError::Expired));
        // Every changed byte is refused.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(validate(&b, &k, 1_000).is_err(), "byte {i}");
        }
        // Another user's key cannot sign for this one.
        let other = UserKeys::from_seed([4; 32]);
        let mut forged = BackupRoot::sign(&other, 8, 2_000, vec![9]);
        forged[1..33].copy_from_slice(&keys.public().sign);
        assert!(validate(&forged, &k, 1_000).is_err());
        let newer = validate(&BackupRoot::sign(&keys, 8, 2_000, vec![]), &k, 1_000).unwrap();
        assert!(may_replace(&root, &newer).is_ok());
        assert!(may_replace(&newer, &root).is_err());
    }
}
