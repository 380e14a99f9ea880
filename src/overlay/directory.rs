//! Directory rules, free of I/O: which records a node accepts for holding, and which record a
//! lookup returns given the pin (trust on first use) in the store.
//!
//! * A record is accepted only if it decodes, verifies at `now` (signature, version, expiry,
//!   lifetime, address form), fits [`MAX_RECORD`], and sits under its own DHT key.
//! * A holder keeps the highest `seq` per address, and refuses a record with other keys than
//!   the one it holds unless the new one is certified by the ring authority.
//! * A reader pins the first keys it accepts for an address and afterwards refuses (and
//!   reports) records with other keys unless certified by the ring authority.

use thiserror::Error;

use super::protocol::directory_key;
use crate::crypto::record::{Fingerprint, MAX_RECORD, fingerprint_of};
use crate::crypto::{self, DirectoryRecord};
use crate::store::Pin;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("record of {len} bytes exceeds {MAX_RECORD}")]
    TooLarge { len: usize },
    #[error("invalid record: {0}")]
    Invalid(#[from] crypto::Error),
    #[error("record for {address} stored under another DHT key")]
    WrongKey { address: String },
    #[error("record for {address} has seq {offered}, not newer than {held}")]
    Stale {
        address: String,
        held: u64,
        offered: u64,
    },
    #[error(
        "record for {address} carries a different user key than the one pinned \
         (fingerprint {pinned}, offered {offered}) and is not certified by the ring: refused"
    )]
    KeyChanged {
        address: String,
        pinned: String,
        offered: String,
    },
    #[error(
        "record for {address} carries the user key {offered}, not one that {by} vouches for: refused"
    )]
    NotVouched {
        address: String,
        offered: String,
        /// Who vouches ("your `peerpost trust`", "the domain example.org").
        by: String,
    },
}

/// Decodes and verifies a record received under DHT key `key`.
pub fn validate(bytes: &[u8], key: &[u8], now: u64) -> Result<DirectoryRecord, RecordError> {
    if bytes.len() > MAX_RECORD {
        return Err(RecordError::TooLarge { len: bytes.len() });
    }
    let rec = DirectoryRecord::from_bytes(bytes)?;
    rec.verify(now)?;
    if directory_key(&rec.address).as_slice() != key {
        return Err(RecordError::WrongKey {
            address: rec.address,
        });
    }
    Ok(rec)
}

pub fn pin_of(rec: &DirectoryRecord) -> Pin {
    Pin {
        sign: rec.keys.sign,
        enc: rec.keys.enc,
    }
}

fn certified_by(rec: &DirectoryRecord, ring: Option<&[u8; 32]>, now: u64) -> bool {
    ring.is_some_and(|k| rec.verify_certified(now, k).is_ok())
}

/// Holder side: may `new` replace `held` (both valid, same address)?
pub fn may_replace(
    held: &DirectoryRecord,
    new: &DirectoryRecord,
    ring: Option<&[u8; 32]>,
    now: u64,
) -> Result<(), RecordError> {
    if new.keys != held.keys && !certified_by(new, ring, now) {
        return Err(key_changed(&pin_of(held), new));
    }
    if new.seq < held.seq || (new.seq == held.seq && new != held) {
        return Err(RecordError::Stale {
            address: new.address.clone(),
            held: held.seq,
            offered: new.seq,
        });
    }
    Ok(())
}

fn key_changed(pinned: &Pin, new: &DirectoryRecord) -> RecordError {
    RecordError::KeyChanged {
        address: new.address.clone(),
        pinned: crypto::UserPublicKeys {
            sign: pinned.sign,
            enc: pinned.enc,
        }
        .fingerprint(),
        offered: new.keys.fingerprint(),
    }
}

/// What a lookup found, given the records the DHT returned (all already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The newest record that matches the pin (or, without a pin, the newest record).
    pub record: Option<DirectoryRecord>,
    /// Whether `record`'s keys should become (or replace) the pin.
    pub pin: Option<Pin>,
    /// Records refused because they carry other keys than the pinned ones.
    pub refused: Vec<RecordError>,
}

/// Reader side: picks the record to believe among `(record, how many peers served it)`.
///
/// Without a pin, the keys served by the most peers win (then the newest record with those
/// keys): one hostile peer near the key cannot win a first lookup by a higher `seq` alone.
pub fn resolve(
    found: &[(DirectoryRecord, usize)],
    pinned: Option<Pin>,
    ring: Option<&[u8; 32]>,
    now: u64,
) -> Resolution {
    let records: Vec<DirectoryRecord> = found.iter().map(|(r, _)| r.clone()).collect();
    let newest = |it: &mut dyn Iterator<Item = &DirectoryRecord>| it.max_by_key(|r| r.seq).cloned();
    match pinned {
        None => {
            let mut votes: Vec<(Pin, usize)> = Vec::new();
            for (r, n) in found {
                match votes.iter_mut().find(|(p, _)| *p == pin_of(r)) {
                    Some((_, v)) => *v += n,
                    None => votes.push((pin_of(r), *n)),
                }
            }
            let winner = votes.iter().max_by_key(|(_, v)| *v).map(|(p, _)| *p);
            let record = newest(&mut records.iter().filter(|r| Some(pin_of(r)) == winner));
            Resolution {
                pin: record.as_ref().map(pin_of),
                record,
                refused: Vec::new(),
            }
        }
        Some(pin) => {
            let matching = newest(&mut records.iter().filter(|r| pin_of(r) == pin));
            // A certified key change newer than the pinned record wins and moves the pin.
            let certified = newest(&mut records.iter().filter(|r| {
                pin_of(r) != pin
                    && certified_by(r, ring, now)
                    && matching.as_ref().is_none_or(|m| r.seq > m.seq)
            }));
            let refused = records
                .iter()
                .filter(|r| pin_of(r) != pin && !certified_by(r, ring, now))
                .map(|r| key_changed(&pin, r))
                .collect();
            match certified {
                Some(c) => Resolution {
                    pin: Some(pin_of(&c)),
                    record: Some(c),
                    refused,
                },
                None => Resolution {
                    record: matching,
                    pin: None,
                    refused,
                },
            }
        }
    }
}

/// Reader side when something stronger than first use names the keys (the user's `trust`,
/// the domain's `_peerpost` TXT records): the newest record whose user key has one of the
/// `accepted` fingerprints; every other record is refused, whatever the pin or the majority
/// say. `pin` is set when the first-use pin should follow.
pub fn resolve_accepting(
    found: &[(DirectoryRecord, usize)],
    accepted: &[Fingerprint],
    by: &str,
) -> Resolution {
    let ok = |r: &DirectoryRecord| accepted.contains(&fingerprint_of(&r.keys));
    let record = found
        .iter()
        .map(|(r, _)| r)
        .filter(|r| ok(r))
        .max_by_key(|r| r.seq)
        .cloned();
    let refused = found
        .iter()
        .map(|(r, _)| r)
        .filter(|r| !ok(r))
        .map(|r| RecordError::NotVouched {
            address: r.address.clone(),
            offered: r.keys.fingerprint(),
            by: by.to_string(),
        })
        .collect();
    Resolution {
        pin: record.as_ref().map(pin_of),
        record,
        refused,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::UserKeys;

    const NOW: u64 = 1_800_000_000;

    fn rec(keys: &UserKeys, seq: u64) -> DirectoryRecord {
        DirectoryRecord::new(keys, "alice@example.org", vec![[7; 32]], seq, NOW, 3600).unwrap()
    }

    fn key() -> [u8; 32] {
        directory_key("alice@example.org")
    }

    #[test]
    fn valid_record_is_accepted_under_its_key() {
        let k = UserKeys::generate().unwrap();
        let r = rec(&k, 1);
        assert_eq!(validate(&r.to_bytes(), &key(), NOW).unwrap(), r);
        assert!(matches!(
            validate(&r.to_bytes(), &directory_key("bob@example.org"), NOW),
            Err(RecordError::WrongKey { .. })
        ));
    }

    #[test]
    fn forged_expired_and_oversized_records_are_refused() {
        let k = UserKeys::generate().unwrap();
        let mut bytes = rec(&k, 1).to_bytes();
        let last = bytes.len() - 10;
        bytes[last] ^= 1; // inside the signature
        assert!(matches!(
            validate(&bytes, &key(), NOW),
            Err(RecordError::Invalid(_))
        ));
        let r = rec(&k, 1);
        assert!(matches!(
            validate(&r.to_bytes(), &key(), NOW + 7200),
            Err(RecordError::Invalid(crypto::Error::Expired { .. }))
        ));
        assert!(matches!(
            validate(&vec![1; MAX_RECORD + 1], &key(), NOW),
            Err(RecordError::TooLarge { .. })
        ));
        // A forger signing with their own key over alice's address is valid on its own,
        // which is why pins exist: see below.
    }

    #[test]
    fn holders_keep_the_highest_seq_and_the_first_key() {
        let k = UserKeys::generate().unwrap();
        let other = UserKeys::generate().unwrap();
        let (r1, r2) = (rec(&k, 1), rec(&k, 2));
        assert!(may_replace(&r1, &r2, None, NOW).is_ok());
        assert!(matches!(
            may_replace(&r2, &r1, None, NOW),
            Err(RecordError::Stale { .. })
        ));
        assert!(may_replace(&r2, &r2, None, NOW).is_ok(), "republication");
        assert!(matches!(
            may_replace(&r1, &rec(&other, 9), None, NOW),
            Err(RecordError::KeyChanged { .. })
        ));
        let ring = UserKeys::generate().unwrap();
        let mut certified = rec(&other, 9);
        certified.certify(&ring);
        assert!(may_replace(&r1, &certified, Some(&ring.public().sign), NOW).is_ok());
        assert!(may_replace(&r1, &certified, None, NOW).is_err());
    }

    #[test]
    fn readers_pin_the_first_key_and_refuse_others() {
        let k = UserKeys::generate().unwrap();
        let evil = UserKeys::generate().unwrap();
        let first = resolve(&[(rec(&k, 1), 1), (rec(&k, 3), 1)], None, None, NOW);
        assert_eq!(first.record.as_ref().unwrap().seq, 3);
        let pin = first.pin.unwrap();
        let later = resolve(
            &[(rec(&k, 3), 2), (rec(&evil, 99), 1)],
            Some(pin),
            None,
            NOW,
        );
        assert_eq!(later.record.unwrap().keys, *k.public());
        assert_eq!(later.refused.len(), 1);
        assert!(later.pin.is_none());
        let only_evil = resolve(&[(rec(&evil, 99), 5)], Some(pin), None, NOW);
        assert!(only_evil.record.is_none());
        assert!(matches!(
            only_evil.refused[0],
            RecordError::KeyChanged { .. }
        ));
    }

    #[test]
    fn a_vouched_key_wins_over_the_majority_and_the_pin() {
        let k = UserKeys::generate().unwrap();
        let evil = UserKeys::generate().unwrap();
        let fp = fingerprint_of(k.public());
        let r = resolve_accepting(
            &[(rec(&evil, 999), 5), (rec(&k, 3), 1), (rec(&k, 2), 1)],
            &[fp],
            "the domain example.org",
        );
        assert_eq!(r.record.as_ref().unwrap().keys, *k.public());
        assert_eq!(r.record.unwrap().seq, 3);
        assert!(matches!(
            &r.refused[..],
            [RecordError::NotVouched { by, .. }] if by == "the domain example.org"
        ));
        let none = resolve_accepting(&[(rec(&evil, 1), 9)], &[fp], "x");
        assert!(none.record.is_none() && none.refused.len() == 1);
    }

    #[test]
    fn a_first_lookup_follows_the_majority_not_the_highest_seq() {
        let k = UserKeys::generate().unwrap();
        let evil = UserKeys::generate().unwrap();
        let r = resolve(&[(rec(&evil, 999), 1), (rec(&k, 3), 4)], None, None, NOW);
        assert_eq!(r.record.unwrap().keys, *k.public());
    }
}
