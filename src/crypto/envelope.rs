//! Envelopes: small payloads (content keys, delivery notifications, log-head pointers) sealed
//! to one recipient with HPKE (RFC 9180, Base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305) and signed by the sender with Ed25519.
//!
//! Envelope, version 1 (docs/design.md, "Envelope"):
//!
//! ```text
//!   0        u8   version = 1
//!   1        u8   suite   = 1 (the HPKE suite above + Ed25519)
//!   2..34    [32] sender Ed25519 public key
//!   34..66   [32] recipient X25519 public key
//!   66..98   [32] HPKE encapsulated key
//!   98..102  u32  ciphertext length n (≤ MAX_PAYLOAD + 16)
//!   102..    [n]  HPKE ciphertext (payload ‖ tag)     HPKE info = "peerpost envelope v1",
//!                                                      HPKE aad  = bytes 0..66
//!   ..+64    [64] Ed25519 signature over "peerpost envelope v1" ‖ 0x00 ‖ every byte before it
//! ```
//!
//! The signature binds sender, recipient and ciphertext (so an envelope cannot be re-addressed
//! or re-signed by someone else without the recipient noticing), and the HPKE AAD binds the
//! sender key to the ciphertext (so a signature cannot be stripped and replaced).

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

use super::keys::verify;
use super::{Error, Result, UserKeys};
use crate::wire::{Reader, Writer};

pub const VERSION: u8 = 1;
pub const SUITE_HPKE_X25519_CHACHA_ED25519: u8 = 1;
/// Envelopes carry keys and small notices, never message bodies.
pub const MAX_PAYLOAD: usize = 64 * 1024;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 2 + 32 + 32;
pub const MAX_ENVELOPE: usize = HEADER_LEN + 32 + 4 + MAX_PAYLOAD + TAG_LEN + 64;
const INFO: &[u8] = b"peerpost envelope v1";
const SIG_CONTEXT: &str = "peerpost envelope v1";

type Kex = X25519HkdfSha256;

/// A signed, sealed envelope as it travels.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Envelope({} bytes)", self.bytes.len())
    }
}

/// An envelope whose signature verified and whose payload decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedEnvelope {
    /// The Ed25519 key that signed it. The caller decides whether that is who it expected
    /// (e.g. by looking the sender's address up in the directory).
    pub sender: [u8; 32],
    pub payload: Vec<u8>,
}

struct Parsed<'a> {
    sender: [u8; 32],
    recipient: [u8; 32],
    header: &'a [u8],
    enc: [u8; 32],
    ciphertext: &'a [u8],
    signed: &'a [u8],
    sig: [u8; 64],
}

impl Envelope {
    /// Seals `payload` to the recipient's X25519 key and signs it with the sender's key.
    pub fn seal(sender: &UserKeys, recipient_enc: &[u8; 32], payload: &[u8]) -> Result<Envelope> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                format: "envelope payload",
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let pk =
            <Kex as Kem>::PublicKey::from_bytes(recipient_enc).map_err(|_| Error::BadPublicKey)?;
        let mut w = Writer::with_capacity(HEADER_LEN + 100 + payload.len());
        w.u8(VERSION)
            .u8(SUITE_HPKE_X25519_CHACHA_ED25519)
            .fixed(&sender.public().sign)
            .fixed(recipient_enc);
        let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kex>(
            &OpModeS::Base,
            &pk,
            INFO,
            payload,
            w.as_slice(),
        )
        .map_err(|_| Error::BadPublicKey)?;
        w.fixed(&enc.to_bytes()).bytes32(&ciphertext);
        let sig = sender.sign(SIG_CONTEXT, w.as_slice());
        w.fixed(&sig);
        Ok(Envelope {
            bytes: w.into_vec(),
        })
    }

    /// Checks bounds and structure of bytes from the network (does not verify or decrypt).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Envelope> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(Error::TooLarge {
                format: "envelope",
                len: bytes.len(),
                max: MAX_ENVELOPE,
            });
        }
        parse(&bytes)?;
        Ok(Envelope { bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The claimed sender key (not yet verified).
    pub fn sender(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.bytes[2..34]);
        out
    }

    /// Verifies the signature and decrypts with the recipient's keys.
    pub fn open(&self, recipient: &UserKeys) -> Result<OpenedEnvelope> {
        let p = parse(&self.bytes)?;
        if p.recipient != recipient.public().enc {
            return Err(Error::WrongRecipient);
        }
        verify(&p.sender, SIG_CONTEXT, p.signed, &p.sig)?;
        let sk = <Kex as Kem>::PrivateKey::from_bytes(recipient.enc_secret())
            .map_err(|_| Error::Decrypt)?;
        let enc = <Kex as Kem>::EncappedKey::from_bytes(&p.enc).map_err(|_| Error::Decrypt)?;
        let payload = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kex>(
            &OpModeR::Base,
            &sk,
            &enc,
            INFO,
            p.ciphertext,
            p.header,
        )
        .map_err(|_| Error::Decrypt)?;
        Ok(OpenedEnvelope {
            sender: p.sender,
            payload,
        })
    }
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>> {
    let mut r = Reader::new(bytes);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            format: "envelope",
            found: version,
            supported: VERSION,
        });
    }
    let suite = r.u8("suite")?;
    if suite != SUITE_HPKE_X25519_CHACHA_ED25519 {
        return Err(Error::UnsupportedAlgorithm {
            format: "envelope",
            found: suite,
        });
    }
    let sender = r.array::<32>("sender key")?;
    let recipient = r.array::<32>("recipient key")?;
    let header = r.consumed();
    let enc = r.array::<32>("encapsulated key")?;
    let ciphertext = r.bytes32("ciphertext", MAX_PAYLOAD + TAG_LEN)?;
    if ciphertext.len() < TAG_LEN {
        return Err(crate::wire::DecodeError::Invalid {
            field: "ciphertext",
            why: "shorter than its tag",
        }
        .into());
    }
    let signed = r.consumed();
    let sig = r.array::<64>("signature")?;
    r.finish("envelope")?;
    Ok(Parsed {
        sender,
        recipient,
        header,
        enc,
        ciphertext,
        signed,
        sig,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (UserKeys, UserKeys) {
        (UserKeys::from_seed([1; 32]), UserKeys::from_seed([2; 32]))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (alice, bob) = pair();
            let env = Envelope::seal(&alice, &bob.public().enc, &payload).unwrap();
            let again = Envelope::from_bytes(env.as_bytes().to_vec()).unwrap();
            let opened = again.open(&bob).unwrap();
            prop_assert_eq!(opened.sender, alice.public().sign);
            prop_assert_eq!(opened.payload, payload);
        }

        #[test]
        fn any_flipped_byte_is_detected(pos in any::<usize>(), bit in 0u8..8) {
            let (alice, bob) = pair();
            let env = Envelope::seal(&alice, &bob.public().enc, b"content key").unwrap();
            let mut bytes = env.into_bytes();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let res = Envelope::from_bytes(bytes).and_then(|e| e.open(&bob));
            prop_assert!(res.is_err(), "flip at {} went unnoticed", pos);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let bob = UserKeys::from_seed([2; 32]);
            if let Ok(e) = Envelope::from_bytes(bytes) {
                let _ = e.open(&bob);
            }
        }
    }

    #[test]
    fn wrong_recipient_is_refused() {
        let (alice, bob) = pair();
        let carol = UserKeys::from_seed([3; 32]);
        let env = Envelope::seal(&alice, &bob.public().enc, b"x").unwrap();
        assert_eq!(env.open(&carol), Err(Error::WrongRecipient));
    }

    #[test]
    fn forged_signature_is_refused() {
        // Mallory re-signs Alice's envelope with her own key, claiming to be the sender.
        let (alice, bob) = pair();
        let mallory = UserKeys::from_seed([4; 32]);
        let env = Envelope::seal(&alice, &bob.public().enc, b"x").unwrap();
        let mut bytes = env.into_bytes();
        bytes[2..34].copy_from_slice(&mallory.public().sign);
        let end = bytes.len() - 64;
        let sig = mallory.sign(SIG_CONTEXT, &bytes[..end]);
        bytes[end..].copy_from_slice(&sig);
        // The signature now verifies, but the HPKE AAD still binds Alice's key.
        let env = Envelope::from_bytes(bytes).unwrap();
        assert_eq!(env.open(&bob), Err(Error::Decrypt));
    }

    #[test]
    fn truncated_and_oversized_are_typed_errors() {
        let (alice, bob) = pair();
        let env = Envelope::seal(&alice, &bob.public().enc, b"hello").unwrap();
        let bytes = env.into_bytes();
        for cut in 0..bytes.len() {
            assert!(matches!(
                Envelope::from_bytes(bytes[..cut].to_vec()),
                Err(Error::Decode(_) | Error::UnsupportedVersion { .. })
            ));
        }
        assert!(matches!(
            Envelope::seal(&alice, &bob.public().enc, &vec![0; MAX_PAYLOAD + 1]),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            Envelope::from_bytes(vec![1; MAX_ENVELOPE + 1]),
            Err(Error::TooLarge { .. })
        ));
    }
}
