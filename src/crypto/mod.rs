//! Cryptography: the only module that touches primitives (ed25519-dalek, x25519-dalek,
//! chacha20poly1305, hpke, blake3, argon2).
//!
//! Key hierarchy:
//!
//! ```text
//!   recovery phrase  ⇄  master seed (32 random bytes, the user's one secret)
//!                         ├─ BLAKE3 derive_key("peerpost 2026 user ed25519 v1") → signing key
//!                         └─ BLAKE3 derive_key("peerpost 2026 user x25519 v1")  → encryption key
//!   device key: 32 random bytes per device (its overlay identity), never derived from the seed
//!   content key: 32 random bytes per message (XChaCha20-Poly1305)
//! ```
//!
//! * [`content`]: seal/open of message bodies and other objects; the object id is the BLAKE3
//!   hash of the ciphertext, so anyone can verify an object and nobody can read it without its key.
//! * [`envelope`]: small payloads (content keys, notifications) HPKE-sealed to a recipient's
//!   X25519 key and Ed25519-signed by the sender.
//! * [`record`]: directory records binding an address to public keys.
//! * [`keys`]: the user and device keys, their files (optionally passphrase-protected).
//! * [`phrase`]: the printable recovery phrase.
//! * [`password`]: Argon2id hashes of the password the IMAP/POP3/SMTP servers ask for.
//!
//! Every byte format here starts with a version byte and is documented in docs/design.md.

pub mod content;
pub mod device_list;
pub mod envelope;
pub mod keys;
pub mod password;
pub mod phrase;
pub mod record;

use std::fmt;

use thiserror::Error;

use crate::wire::DecodeError;

pub use content::{ContentKey, SealedObject};
pub use envelope::{Envelope, OpenedEnvelope};
pub use keys::{DeviceKey, KeyKind, UserKeys, UserPublicKeys};
pub use record::DirectoryRecord;

/// Failures of cryptographic operations. Each says what a caller (or a user) needs to know;
/// none carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("malformed input: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported {format} version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        format: &'static str,
        found: u8,
        supported: u8,
    },
    #[error("unsupported {format} algorithm id {found}")]
    UnsupportedAlgorithm { format: &'static str, found: u8 },
    #[error("{format} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        format: &'static str,
        len: usize,
        max: usize,
    },
    #[error("authentication failed: the data was altered or the key is wrong")]
    Decrypt,
    #[error("signature does not verify")]
    BadSignature,
    #[error("not sealed to this key")]
    WrongRecipient,
    #[error("object id does not match its bytes")]
    IdMismatch,
    #[error("invalid public key")]
    BadPublicKey,
    #[error("record expired at {expires} (now {now})")]
    Expired { expires: u64, now: u64 },
    #[error("invalid record: {0}")]
    InvalidRecord(&'static str),
    #[error("the system random number generator failed")]
    Random,
    #[error("the key file is protected by a passphrase; give it with --passphrase-file")]
    PassphraseRequired,
    #[error("wrong passphrase for the key file")]
    WrongPassphrase,
}

pub type Result<T> = std::result::Result<T, Error>;

/// A 32-byte BLAKE3 content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of a byte string (what `SealedObject::id` computes for its ciphertext).
    pub fn of(bytes: &[u8]) -> ObjectId {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the 64-hex-digit form.
    pub fn from_hex(s: &str) -> Option<ObjectId> {
        let v = unhex(s)?;
        Some(ObjectId(v.try_into().ok()?))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Fills a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| Error::Random)?;
    Ok(out)
}

/// BLAKE3 hash of `data`, exposed so that callers (store, durability) do not import blake3.
pub fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Keyed derivation with a context string (BLAKE3 `derive_key`).
pub(crate) fn derive(context: &str, material: &[u8]) -> [u8; 32] {
    blake3::derive_key(context, material)
}

/// A human-comparable fingerprint: the first 20 bytes of a derivation over the public keys,
/// as ten groups of four hex digits.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new_derive_key("peerpost 2026 fingerprint v1");
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let hexed = hex(&digest.as_bytes()[..20]);
    hexed
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hex_roundtrip(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(unhex(&hex(&v)), Some(v));
        }

        #[test]
        fn unhex_never_panics(s in ".{0,80}") {
            let _ = unhex(&s);
        }
    }

    #[test]
    fn fingerprint_is_ten_groups() {
        let f = fingerprint(&[b"abc"]);
        assert_eq!(f.split(' ').count(), 10);
        assert_ne!(f, fingerprint(&[b"abd"]));
    }
}
