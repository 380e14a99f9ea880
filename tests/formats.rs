//! A mutation fuzzer over every decoder, through the public API: start from a valid encoding,
//! apply random damage (flip, truncate, extend, splice, overwrite a length), and require a
//! typed error (never a panic, never acceptance of damaged signed or sealed data).

use peerpost::crypto::keys::{KeyKind, decode_key_file, encode_key_file};
use peerpost::crypto::record::DirectoryRecord;
use peerpost::crypto::{Envelope, SealedObject, UserKeys, phrase};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    Overwrite(usize, [u8; 4]),
    Splice(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Damage::Flip(p, x)),
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Extend),
        (any::<usize>(), any::<[u8; 4]>()).prop_map(|(p, v)| Damage::Overwrite(p, v)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(p, v)| Damage::Splice(p, v)),
    ]
}

fn apply(mut v: Vec<u8>, d: &Damage) -> Vec<u8> {
    let n = v.len().max(1);
    match d {
        Damage::Flip(p, x) => {
            if !v.is_empty() {
                v[p % n] ^= x;
            }
        }
        Damage::Truncate(p) => v.truncate(p % n),
        Damage::Extend(e) => v.extend_from_slice(e),
        Damage::Overwrite(p, b) => {
            let p = p % n;
            for (i, x) in b.iter().enumerate() {
                if let Some(slot) = v.get_mut(p + i) {
                    if *slot == *x {
                        *slot ^= 0x80;
                    } else {
                        *slot = *x;
                    }
                }
            }
        }
        Damage::Splice(p, e) => {
            let p = p % n;
            v.splice(p..p, e.iter().copied());
        }
    }
    v
}

const NOW: u64 = 1_900_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sealed_object_damage_is_caught(d in damage(), msg in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (obj, key) = SealedObject::seal(&msg).unwrap();
        let id = obj.id();
        let bad = apply(obj.into_bytes(), &d);
        prop_assert!(SealedObject::from_bytes_verified(bad.clone(), &id).is_err());
        if let Ok(o) = SealedObject::from_bytes(bad) {
            prop_assert!(o.open(&key).is_err());
        }
    }

    #[test]
    fn envelope_damage_is_caught(d in damage(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let alice = UserKeys::from_seed([1; 32]);
        let bob = UserKeys::from_seed([2; 32]);
        let env = Envelope::seal(&alice, &bob.public().enc, &payload).unwrap();
        let bad = apply(env.into_bytes(), &d);
        prop_assert!(Envelope::from_bytes(bad).and_then(|e| e.open(&bob)).is_err());
    }

    #[test]
    fn record_damage_is_caught(d in damage(), devices in 0usize..4) {
        let k = UserKeys::from_seed([3; 32]);
        let rec = DirectoryRecord::new(&k, "a@b.example", vec![[9; 32]; devices], 7, NOW, 3600).unwrap();
        let bad = apply(rec.to_bytes(), &d);
        prop_assert!(DirectoryRecord::from_bytes(&bad).and_then(|r| r.verify(NOW + 1)).is_err());
    }

    #[test]
    fn key_file_damage_never_panics_and_never_yields_a_wrong_key(d in damage(), protected in any::<bool>()) {
        let secret = [4u8; 32];
        let pass: Option<&[u8]> = if protected { Some(b"pw") } else { None };
        let file = encode_key_file(KeyKind::User, &secret, pass).unwrap();
        let bad = apply(file, &d);
        // An unprotected file has no integrity check of its own (its permissions protect
        // it), so damage to the secret itself may decode; anything else must not.
        if let Ok(got) = decode_key_file(&bad, KeyKind::User, pass) {
            prop_assert!(!protected || *got == secret);
        }
    }

    #[test]
    fn phrase_decoder_never_panics(s in "[a-z .0-9\n]{0,400}") {
        let _ = phrase::decode(&s);
    }

    #[test]
    fn config_parser_never_panics(s in "[\\[\\]a-z_=\". 0-9\n:/]{0,300}") {
        let _ = peerpost::config::Config::parse(&s, std::path::Path::new("c.toml"), std::path::Path::new("/h"));
    }
}

#[test]
fn a_replayed_older_record_is_recognisable_by_seq() {
    // Replay protection is the overlay's job (it keeps the highest seq per address); the
    // record format makes it possible: seq is signed.
    let k = UserKeys::from_seed([5; 32]);
    let old = DirectoryRecord::new(&k, "a@b.example", vec![], 1, NOW, 3600).unwrap();
    let new = DirectoryRecord::new(&k, "a@b.example", vec![], 2, NOW, 3600).unwrap();
    assert!(old.verify(NOW).is_ok() && new.verify(NOW).is_ok());
    let mut forged = old.clone();
    forged.seq = 3;
    assert!(
        forged.verify(NOW).is_err(),
        "seq is covered by the signature"
    );
}
