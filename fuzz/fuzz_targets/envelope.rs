//! Envelopes and sealed objects (`src/crypto/*`) as they arrive from peers, key files and
//! recovery phrases: never a panic; what decodes re-encodes to the same bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peerpost::crypto::keys::{KeyKind, decode_key_file};
use peerpost::crypto::{Envelope, ObjectId, SealedObject, UserKeys, phrase};
use peerpost::delivery::notice;

fn me() -> &'static UserKeys {
    static K: OnceLock<UserKeys> = OnceLock::new();
    K.get_or_init(|| UserKeys::from_seed([7; 32]))
}

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("envelope"), |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(env) = Envelope::from_bytes(rest.to_vec()) {
                assert_eq!(env.as_bytes(), rest);
                let _ = env.sender();
                // Fails (not for us), never panics.
                let _ = env.open(me());
            }
            // An envelope as a notice's outer wrapping.
            let _ = notice::unwrap(me(), rest.to_vec());
        }
        1 => {
            if let Ok(obj) = SealedObject::from_bytes(rest.to_vec()) {
                assert_eq!(obj.as_bytes(), rest);
                let _ = obj.plaintext_len();
                let _ = obj.open(&peerpost::crypto::ContentKey::from_bytes([3; 32]));
                let id = obj.id();
                SealedObject::from_bytes_verified(rest.to_vec(), &id).expect("its own id");
            }
            let _ = SealedObject::from_bytes_verified(rest.to_vec(), &ObjectId([0; 32]));
        }
        2 => {
            let _ = decode_key_file(rest, KeyKind::User, None);
            // A passphrase only when the file says it is protected (the KDF is slow).
            if peerpost::crypto::keys::key_file_is_protected(rest) && rest.len() < 200 {
                let _ = decode_key_file(rest, KeyKind::Device, Some(b"pass"));
            }
        }
        3 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(seed) = phrase::decode(text) {
                    let words = phrase::encode(&seed);
                    assert_eq!(phrase::decode(&words).ok(), Some(seed));
                }
            }
        }
        _ => {
            if let Ok(n) = notice::Notice::decode(rest) {
                assert_eq!(notice::Notice::decode(&n.encode()).as_ref(), Ok(&n));
            }
        }
    }
});
