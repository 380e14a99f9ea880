//! User and device keys, and the byte format of their secret files.
//!
//! Secret key file, version 1 (docs/design.md, "Secret key file"):
//!
//! ```text
//!   0..4   "PPSK"
//!   4      u8  version = 1
//!   5      u8  kind: 1 = user master seed, 2 = device key
//!   6      u8  protection: 0 = none, 1 = passphrase (Argon2id → XChaCha20-Poly1305)
//!   none:  [32] secret
//!   1:     u32 m_cost (KiB) · u32 t_cost · u32 p_cost · [16] salt · [24] nonce ·
//!          [48] secret ‖ tag          (AAD = every byte before the nonce)
//! ```

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::{Zeroize, Zeroizing};

use super::{Error, Result, derive, fingerprint, random_bytes};
use crate::wire::{DecodeError, Reader, Writer};

const MAGIC: &[u8; 4] = b"PPSK";
const VERSION: u8 = 1;
const PROTECTION_NONE: u8 = 0;
const PROTECTION_PASSPHRASE: u8 = 1;

/// Argon2id cost for passphrase-protected key files: 64 MiB, 3 passes (RFC 9106's second
/// recommended option). Stored in the file, so it can be raised without a format change.
const KDF_M_COST: u32 = 64 * 1024;
const KDF_T_COST: u32 = 3;
const KDF_P_COST: u32 = 1;
/// Upper bounds accepted when reading a file: a forged header cannot make us allocate 4 TiB.
const KDF_M_MAX: u32 = 1024 * 1024;
const KDF_T_MAX: u32 = 64;
const KDF_P_MAX: u32 = 16;

/// What a secret key file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The user's master seed (the one the recovery phrase encodes).
    User = 1,
    /// A device's own overlay identity key.
    Device = 2,
}

/// The public half of a user identity: what a directory record publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserPublicKeys {
    /// Ed25519: verifies the user's signatures.
    pub sign: [u8; 32],
    /// X25519: what envelopes are sealed to.
    pub enc: [u8; 32],
}

impl UserPublicKeys {
    pub fn fingerprint(&self) -> String {
        fingerprint(&[&self.sign, &self.enc])
    }

    /// Verifies `sig` over `context ‖ 0x00 ‖ msg` (strict Ed25519: no malleable signatures).
    pub fn verify(&self, context: &str, msg: &[u8], sig: &[u8; 64]) -> Result<()> {
        verify(&self.sign, context, msg, sig)
    }
}

/// Verifies an Ed25519 signature made by [`UserKeys::sign`] or [`DeviceKey::sign`].
pub fn verify(public: &[u8; 32], context: &str, msg: &[u8], sig: &[u8; 64]) -> Result<()> {
    let vk = VerifyingKey::from_bytes(public).map_err(|_| Error::BadPublicKey)?;
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    vk.verify_strict(&domain(context, msg), &sig)
        .map_err(|_| Error::BadSignature)
}

fn domain(context: &str, msg: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(context.len() + 1 + msg.len());
    v.extend_from_slice(context.as_bytes());
    v.push(0);
    v.extend_from_slice(msg);
    v
}

/// The user's secret keys, all derived from one 32-byte master seed.
pub struct UserKeys {
    seed: Zeroizing<[u8; 32]>,
    signing: SigningKey,
    enc_secret: Zeroizing<[u8; 32]>,
    public: UserPublicKeys,
}

impl std::fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserKeys")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl UserKeys {
    pub fn generate() -> Result<UserKeys> {
        Ok(Self::from_seed(random_bytes()?))
    }

    pub fn from_seed(seed: [u8; 32]) -> UserKeys {
        let mut sign_seed = derive("peerpost 2026 user ed25519 v1", &seed);
        let signing = SigningKey::from_bytes(&sign_seed);
        sign_seed.zeroize();
        let enc_secret = Zeroizing::new(derive("peerpost 2026 user x25519 v1", &seed));
        let enc_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*enc_secret));
        let public = UserPublicKeys {
            sign: signing.verifying_key().to_bytes(),
            enc: enc_public.to_bytes(),
        };
        UserKeys {
            seed: Zeroizing::new(seed),
            signing,
            enc_secret,
            public,
        }
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> &UserPublicKeys {
        &self.public
    }

    /// Signs `context ‖ 0x00 ‖ msg`; the context separates the formats that are signed.
    pub fn sign(&self, context: &str, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(&domain(context, msg)).to_bytes()
    }

    /// The key this user's devices seal their mailbox logs with (all devices derive it from
    /// the seed; nobody else can read the logs stored in the ring).
    pub fn log_key(&self) -> super::ContentKey {
        super::ContentKey::from_bytes(derive("peerpost 2026 log key v1", self.seed.as_ref()))
    }

    pub(crate) fn enc_secret(&self) -> &[u8; 32] {
        &self.enc_secret
    }
}

/// A device's own key: its identity in the overlay (the libp2p peer id derives from it).
pub struct DeviceKey {
    seed: Zeroizing<[u8; 32]>,
    signing: SigningKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({})", self.fingerprint())
    }
}

impl DeviceKey {
    pub fn generate() -> Result<DeviceKey> {
        Ok(Self::from_seed(random_bytes()?))
    }

    pub fn from_seed(seed: [u8; 32]) -> DeviceKey {
        DeviceKey {
            signing: SigningKey::from_bytes(&seed),
            seed: Zeroizing::new(seed),
        }
    }

    /// The Ed25519 secret seed, for the overlay to build its libp2p keypair from.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&[&self.public()])
    }

    pub fn sign(&self, context: &str, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(&domain(context, msg)).to_bytes()
    }
}

/// Encodes a secret key file, protected by `passphrase` when one is given.
pub fn encode_key_file(
    kind: KeyKind,
    secret: &[u8; 32],
    passphrase: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let mut w = Writer::with_capacity(128);
    w.fixed(MAGIC).u8(VERSION).u8(kind as u8);
    match passphrase {
        None => {
            w.u8(PROTECTION_NONE).fixed(secret);
        }
        Some(pass) => {
            let salt: [u8; 16] = random_bytes()?;
            let nonce: [u8; 24] = random_bytes()?;
            w.u8(PROTECTION_PASSPHRASE)
                .u32(KDF_M_COST)
                .u32(KDF_T_COST)
                .u32(KDF_P_COST)
                .fixed(&salt);
            let aad = w.as_slice().to_vec();
            let kek = kdf(pass, &salt, KDF_M_COST, KDF_T_COST, KDF_P_COST)?;
            let mut body = Zeroizing::new(*secret);
            let cipher =
                XChaCha20Poly1305::new_from_slice(kek.as_ref()).map_err(|_| Error::Decrypt)?;
            let tag = cipher
                .encrypt_inout_detached(&XNonce::from(nonce), &aad, body.as_mut_slice().into())
                .map_err(|_| Error::Decrypt)?;
            w.fixed(&nonce).fixed(body.as_ref()).fixed(tag.as_slice());
        }
    }
    Ok(w.into_vec())
}

/// What [`decode_key_file`] needs to know before it can decrypt.
pub fn key_file_is_protected(bytes: &[u8]) -> bool {
    bytes.len() > 6 && &bytes[..4] == MAGIC && bytes[6] == PROTECTION_PASSPHRASE
}

/// Decodes a secret key file of the expected kind. A protected file without a passphrase gives
/// [`Error::PassphraseRequired`]; a wrong passphrase gives [`Error::WrongPassphrase`].
pub fn decode_key_file(
    bytes: &[u8],
    kind: KeyKind,
    passphrase: Option<&[u8]>,
) -> Result<Zeroizing<[u8; 32]>> {
    let mut r = Reader::new(bytes);
    if r.take(4, "magic")? != MAGIC {
        return Err(DecodeError::Invalid {
            field: "magic",
            why: "not a peerpost key file",
        }
        .into());
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            format: "key file",
            found: version,
            supported: VERSION,
        });
    }
    let found_kind = r.u8("kind")?;
    if found_kind != kind as u8 {
        return Err(DecodeError::Invalid {
            field: "kind",
            why: "this file holds a different kind of key",
        }
        .into());
    }
    match r.u8("protection")? {
        PROTECTION_NONE => {
            let secret = Zeroizing::new(r.array::<32>("secret")?);
            r.finish("key file")?;
            Ok(secret)
        }
        PROTECTION_PASSPHRASE => {
            let m = r.u32("m_cost")?;
            let t = r.u32("t_cost")?;
            let p = r.u32("p_cost")?;
            if m > KDF_M_MAX || t > KDF_T_MAX || p > KDF_P_MAX || t == 0 || p == 0 {
                return Err(DecodeError::Invalid {
                    field: "kdf parameters",
                    why: "out of the accepted range",
                }
                .into());
            }
            let salt = r.array::<16>("salt")?;
            let aad = r.consumed().to_vec();
            let nonce = r.array::<24>("nonce")?;
            let mut body = Zeroizing::new(r.array::<32>("secret")?);
            let tag = r.array::<16>("tag")?;
            r.finish("key file")?;
            let Some(pass) = passphrase else {
                return Err(Error::PassphraseRequired);
            };
            let kek = kdf(pass, &salt, m, t, p)?;
            let cipher =
                XChaCha20Poly1305::new_from_slice(kek.as_ref()).map_err(|_| Error::Decrypt)?;
            let tag = chacha20poly1305::Tag::from(tag);
            cipher
                .decrypt_inout_detached(
                    &XNonce::from(nonce),
                    &aad,
                    body.as_mut_slice().into(),
                    &tag,
                )
                .map_err(|_| Error::WrongPassphrase)?;
            Ok(body)
        }
        _ => Err(DecodeError::Invalid {
            field: "protection",
            why: "unknown protection scheme",
        }
        .into()),
    }
}

fn kdf(pass: &[u8], salt: &[u8; 16], m: u32, t: u32, p: u32) -> Result<Zeroizing<[u8; 32]>> {
    let params = Params::new(m, t, p, Some(32)).map_err(|_| {
        Error::from(DecodeError::Invalid {
            field: "kdf parameters",
            why: "rejected by Argon2",
        })
    })?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass, salt, out.as_mut())
        .map_err(|_| {
            Error::from(DecodeError::Invalid {
                field: "kdf parameters",
                why: "rejected by Argon2",
            })
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_determines_keys() {
        let a = UserKeys::from_seed([9; 32]);
        let b = UserKeys::from_seed([9; 32]);
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), UserKeys::from_seed([8; 32]).public());
        assert_ne!(a.public().sign, a.public().enc);
    }

    #[test]
    fn signatures_are_domain_separated() {
        let k = UserKeys::generate().unwrap();
        let sig = k.sign("ctx-a", b"msg");
        assert!(k.public().verify("ctx-a", b"msg", &sig).is_ok());
        assert_eq!(
            k.public().verify("ctx-b", b"msg", &sig),
            Err(Error::BadSignature)
        );
        assert_eq!(
            k.public().verify("ctx-a", b"msh", &sig),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn plain_key_file_roundtrip_and_kind_check() {
        let secret = [5u8; 32];
        let f = encode_key_file(KeyKind::User, &secret, None).unwrap();
        assert!(!key_file_is_protected(&f));
        assert_eq!(*decode_key_file(&f, KeyKind::User, None).unwrap(), secret);
        assert!(decode_key_file(&f, KeyKind::Device, None).is_err());
        for cut in 0..f.len() {
            assert!(decode_key_file(&f[..cut], KeyKind::User, None).is_err());
        }
    }

    #[test]
    fn protected_key_file_needs_the_right_passphrase() {
        let secret = [6u8; 32];
        let f = encode_key_file(KeyKind::User, &secret, Some(b"correct horse")).unwrap();
        assert!(key_file_is_protected(&f));
        assert_eq!(
            decode_key_file(&f, KeyKind::User, None).unwrap_err(),
            Error::PassphraseRequired
        );
        assert_eq!(
            decode_key_file(&f, KeyKind::User, Some(b"wrong")).unwrap_err(),
            Error::WrongPassphrase
        );
        assert_eq!(
            *decode_key_file(&f, KeyKind::User, Some(b"correct horse")).unwrap(),
            secret
        );
        // A flipped byte in the protected body is caught too.
        let mut bad = f.clone();
        let last = bad.len() - 20;
        bad[last] ^= 1;
        assert!(decode_key_file(&bad, KeyKind::User, Some(b"correct horse")).is_err());
    }

    #[test]
    fn forged_kdf_cost_is_refused_before_hashing() {
        let mut f = encode_key_file(KeyKind::User, &[1; 32], Some(b"x")).unwrap();
        f[7..11].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_key_file(&f, KeyKind::User, Some(b"x")),
            Err(Error::Decode(DecodeError::Invalid { .. }))
        ));
    }
}
