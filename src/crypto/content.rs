//! Content sealing: every object (a message, a log segment) is encrypted under a fresh random
//! key with XChaCha20-Poly1305, and named by the BLAKE3 hash of the resulting bytes.
//!
//! Sealed object, version 1 (docs/design.md, "Sealed object"):
//!
//! ```text
//!   0      u8   version = 1
//!   1      u8   aead    = 1 (XChaCha20-Poly1305)
//!   2..26  [24] nonce (random)
//!   26..   ciphertext ‖ 16-byte Poly1305 tag      (AAD = bytes 0..26)
//!   id = BLAKE3(all bytes)
//! ```
//!
//! Not convergent encryption: two copies of one message get two different ids, so nobody can
//! confirm a guessed plaintext by computing its id.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{Error, ObjectId, Result, random_bytes};

pub const VERSION: u8 = 1;
pub const AEAD_XCHACHA20POLY1305: u8 = 1;
pub const HEADER_LEN: usize = 2 + 24;
pub const TAG_LEN: usize = 16;
/// The largest plaintext that can be sealed (a message of 64 MiB is far beyond what any mail
/// system accepts; the bound keeps every decoder's allocation finite).
pub const MAX_PLAINTEXT: usize = 64 * 1024 * 1024;
pub const MAX_SEALED: usize = MAX_PLAINTEXT + HEADER_LEN + TAG_LEN;

/// The 32-byte key an object was sealed with. It only ever travels inside an envelope.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    pub fn generate() -> Result<ContentKey> {
        Ok(ContentKey(random_bytes()?))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> ContentKey {
        ContentKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

/// Ciphertext of an object, with a validated header. Cheap to verify, useless without its key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedObject {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for SealedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedObject({} bytes)", self.bytes.len())
    }
}

impl SealedObject {
    /// Seals `plaintext` under a fresh key.
    pub fn seal(plaintext: &[u8]) -> Result<(SealedObject, ContentKey)> {
        let key = ContentKey::generate()?;
        let sealed = Self::seal_with_key(plaintext, &key)?;
        Ok((sealed, key))
    }

    /// Seals under a given key (used when re-sealing is deterministic in the caller's design;
    /// the nonce is still fresh, so the id is still unique).
    pub fn seal_with_key(plaintext: &[u8], key: &ContentKey) -> Result<SealedObject> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::TooLarge {
                format: "sealed object",
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let nonce: [u8; 24] = random_bytes()?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        bytes.push(VERSION);
        bytes.push(AEAD_XCHACHA20POLY1305);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(plaintext);
        let cipher =
            XChaCha20Poly1305::new_from_slice(key.as_bytes()).map_err(|_| Error::Decrypt)?;
        let (header, body) = bytes.split_at_mut(HEADER_LEN);
        let tag = cipher
            .encrypt_inout_detached(&XNonce::from(nonce), header, body.into())
            .map_err(|_| Error::TooLarge {
                format: "sealed object",
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            })?;
        bytes.extend_from_slice(tag.as_slice());
        Ok(SealedObject { bytes })
    }

    /// Checks the header and bounds of bytes from the disk or the network.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<SealedObject> {
        if bytes.len() > MAX_SEALED {
            return Err(Error::TooLarge {
                format: "sealed object",
                len: bytes.len(),
                max: MAX_SEALED,
            });
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(crate::wire::DecodeError::Truncated {
                field: "sealed object",
                needed: HEADER_LEN + TAG_LEN - bytes.len(),
            }
            .into());
        }
        if bytes[0] != VERSION {
            return Err(Error::UnsupportedVersion {
                format: "sealed object",
                found: bytes[0],
                supported: VERSION,
            });
        }
        if bytes[1] != AEAD_XCHACHA20POLY1305 {
            return Err(Error::UnsupportedAlgorithm {
                format: "sealed object",
                found: bytes[1],
            });
        }
        Ok(SealedObject { bytes })
    }

    /// Like [`from_bytes`](Self::from_bytes), and also checks the bytes hash to `expected`:
    /// what a reader does with bytes fetched by id from an untrusted peer.
    pub fn from_bytes_verified(bytes: Vec<u8>, expected: &ObjectId) -> Result<SealedObject> {
        let obj = Self::from_bytes(bytes)?;
        if obj.id() != *expected {
            return Err(Error::IdMismatch);
        }
        Ok(obj)
    }

    /// The content address: BLAKE3 of the sealed bytes.
    pub fn id(&self) -> ObjectId {
        ObjectId::of(&self.bytes)
    }

    /// Length of the plaintext inside.
    pub fn plaintext_len(&self) -> usize {
        self.bytes.len() - HEADER_LEN - TAG_LEN
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Decrypts with `key`. A changed byte anywhere, or the wrong key, gives [`Error::Decrypt`].
    pub fn open(&self, key: &ContentKey) -> Result<Vec<u8>> {
        let (header, rest) = self.bytes.split_at(HEADER_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&header[2..]);
        let cipher =
            XChaCha20Poly1305::new_from_slice(key.as_bytes()).map_err(|_| Error::Decrypt)?;
        let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| Error::Decrypt)?;
        let mut out = ct.to_vec();
        cipher
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                header,
                out.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Error::Decrypt)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_open_roundtrip(msg in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (sealed, key) = SealedObject::seal(&msg).unwrap();
            prop_assert_eq!(sealed.plaintext_len(), msg.len());
            let again = SealedObject::from_bytes_verified(sealed.as_bytes().to_vec(), &sealed.id()).unwrap();
            prop_assert_eq!(again.open(&key).unwrap(), msg);
        }

        #[test]
        fn any_flipped_byte_is_detected(msg in proptest::collection::vec(any::<u8>(), 0..512),
                                        pos in any::<usize>(), bit in 0u8..8) {
            let (sealed, key) = SealedObject::seal(&msg).unwrap();
            let id = sealed.id();
            let mut bytes = sealed.into_bytes();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            // Detected by the id check, and by the AEAD whenever the header still parses.
            prop_assert!(SealedObject::from_bytes_verified(bytes.clone(), &id).is_err());
            if let Ok(obj) = SealedObject::from_bytes(bytes) {
                prop_assert_eq!(obj.open(&key), Err(Error::Decrypt));
            }
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(obj) = SealedObject::from_bytes(bytes) {
                let _ = obj.open(&ContentKey::from_bytes([7; 32]));
            }
        }
    }

    #[test]
    fn wrong_key_fails() {
        let (sealed, _) = SealedObject::seal(b"hello").unwrap();
        let other = ContentKey::generate().unwrap();
        assert_eq!(sealed.open(&other), Err(Error::Decrypt));
    }

    #[test]
    fn same_plaintext_gives_different_ids() {
        let (a, _) = SealedObject::seal(b"same").unwrap();
        let (b, _) = SealedObject::seal(b"same").unwrap();
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn truncated_and_oversized_are_typed_errors() {
        assert!(matches!(
            SealedObject::from_bytes(vec![1, 1, 0]),
            Err(Error::Decode(_))
        ));
        let mut big = vec![0u8; MAX_SEALED + 1];
        big[0] = 1;
        big[1] = 1;
        assert!(matches!(
            SealedObject::from_bytes(big),
            Err(Error::TooLarge { .. })
        ));
        let mut v2 = vec![0u8; 64];
        v2[0] = 2;
        assert!(matches!(
            SealedObject::from_bytes(v2),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
    }
}
