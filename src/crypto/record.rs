//! Directory records: the signed statement "mail for this address goes to these keys, reached
//! through these devices", published in the overlay's DHT and checked by everyone who reads it.
//!
//! Directory record, version 1 (docs/design.md, "Directory record"):
//!
//! ```text
//!   0     u8        version = 1
//!   1     u8 len ‖  address (lower-cased, ≤ 254 bytes, one '@')
//!         [32]      user Ed25519 key (signs)
//!         [32]      user X25519 key (envelopes are sealed to it)
//!         u8 count ‖ count × [32] device Ed25519 keys (≤ 16; the devices' overlay identities)
//!         u64       seq (a newer record has a higher seq)
//!         u64       issued at (unix seconds)
//!         u64       expires at (unix seconds; at most MAX_LIFETIME after issued)
//!         [64]      self-signature: user key over "peerpost record v1" ‖ 0 ‖ bytes above
//!         u8        certified: 0 = no, 1 = yes, then
//!           [32]    ring authority Ed25519 key
//!           [64]    ring signature over "peerpost ring cert v1" ‖ 0 ‖ body ‖ self-signature
//! ```

use super::keys::verify;
use super::{Error, Result, UserKeys, UserPublicKeys};
use crate::wire::{DecodeError, Reader, Writer};

pub const VERSION: u8 = 1;
pub const MAX_ADDRESS: usize = 254;
pub const MAX_DEVICES: usize = 16;
/// Records are short-lived so that a revoked device disappears; nodes republish before expiry.
pub const MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// How far in the future a record may say it was issued: clock skew between honest nodes,
/// not a forgery (issue #18).
pub const MAX_CLOCK_SKEW_SECS: u64 = 15 * 60;
pub const MAX_RECORD: usize = 1 + 1 + MAX_ADDRESS + 64 + 1 + 32 * MAX_DEVICES + 24 + 64 + 1 + 96;
const SELF_CONTEXT: &str = "peerpost record v1";
const RING_CONTEXT: &str = "peerpost ring cert v1";

/// A ring authority's certificate on a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCert {
    pub ring_key: [u8; 32],
    pub sig: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryRecord {
    pub address: String,
    pub keys: UserPublicKeys,
    pub devices: Vec<[u8; 32]>,
    pub seq: u64,
    pub issued: u64,
    pub expires: u64,
    pub self_sig: [u8; 64],
    pub cert: Option<RingCert>,
}

/// Lower-cases and checks an address: `local@domain`, printable ASCII or UTF-8, no spaces.
pub fn normalize_address(address: &str) -> std::result::Result<String, &'static str> {
    let a = address.trim().to_lowercase();
    if a.len() > MAX_ADDRESS {
        return Err("longer than 254 bytes");
    }
    let Some((local, domain)) = a.split_once('@') else {
        return Err("has no '@'");
    };
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err("must be local@domain");
    }
    if a.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\".contains(c))
    {
        return Err("contains a space, control or special character");
    }
    Ok(a)
}

impl DirectoryRecord {
    /// Builds and self-signs a record.
    pub fn new(
        keys: &UserKeys,
        address: &str,
        devices: Vec<[u8; 32]>,
        seq: u64,
        issued: u64,
        lifetime_secs: u64,
    ) -> Result<DirectoryRecord> {
        let address = normalize_address(address).map_err(Error::InvalidRecord)?;
        if devices.len() > MAX_DEVICES {
            return Err(Error::InvalidRecord("more than 16 devices"));
        }
        if lifetime_secs > MAX_LIFETIME_SECS {
            return Err(Error::InvalidRecord("lifetime longer than 30 days"));
        }
        let mut rec = DirectoryRecord {
            address,
            keys: *keys.public(),
            devices,
            seq,
            issued,
            expires: issued.saturating_add(lifetime_secs),
            self_sig: [0; 64],
            cert: None,
        };
        rec.self_sig = keys.sign(SELF_CONTEXT, &rec.body());
        Ok(rec)
    }

    /// Adds a ring authority's certificate (the authority signs body ‖ self-signature).
    pub fn certify(&mut self, ring: &UserKeys) {
        let sig = ring.sign(RING_CONTEXT, &self.cert_message());
        self.cert = Some(RingCert {
            ring_key: ring.public().sign,
            sig,
        });
    }

    fn body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_RECORD);
        w.u8(VERSION)
            .bytes8(self.address.as_bytes())
            .fixed(&self.keys.sign)
            .fixed(&self.keys.enc)
            .u8(u8::try_from(self.devices.len()).unwrap_or(u8::MAX));
        for d in &self.devices {
            w.fixed(d);
        }
        w.u64(self.seq).u64(self.issued).u64(self.expires);
        w.into_vec()
    }

    fn cert_message(&self) -> Vec<u8> {
        let mut m = self.body();
        m.extend_from_slice(&self.self_sig);
        m
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_RECORD);
        w.fixed(&self.body()).fixed(&self.self_sig);
        match &self.cert {
            None => {
                w.u8(0);
            }
            Some(c) => {
                w.u8(1).fixed(&c.ring_key).fixed(&c.sig);
            }
        }
        w.into_vec()
    }

    /// Decodes without verifying (see [`verify`](Self::verify)); bounded and panic-free.
    pub fn from_bytes(bytes: &[u8]) -> Result<DirectoryRecord> {
        if bytes.len() > MAX_RECORD {
            return Err(Error::TooLarge {
                format: "directory record",
                len: bytes.len(),
                max: MAX_RECORD,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                format: "directory record",
                found: version,
                supported: VERSION,
            });
        }
        let address = std::str::from_utf8(r.bytes8("address", MAX_ADDRESS)?)
            .map_err(|_| DecodeError::Invalid {
                field: "address",
                why: "not UTF-8",
            })?
            .to_owned();
        let keys = UserPublicKeys {
            sign: r.array("sign key")?,
            enc: r.array("enc key")?,
        };
        let count = usize::from(r.u8("device count")?);
        if count > MAX_DEVICES {
            return Err(DecodeError::TooLong {
                field: "devices",
                len: count,
                max: MAX_DEVICES,
            }
            .into());
        }
        let devices = (0..count)
            .map(|_| r.array::<32>("device key"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let seq = r.u64("seq")?;
        let issued = r.u64("issued")?;
        let expires = r.u64("expires")?;
        let self_sig = r.array("self-signature")?;
        let cert = match r.u8("certified")? {
            0 => None,
            1 => Some(RingCert {
                ring_key: r.array("ring key")?,
                sig: r.array("ring signature")?,
            }),
            _ => {
                return Err(DecodeError::Invalid {
                    field: "certified",
                    why: "neither 0 nor 1",
                }
                .into());
            }
        };
        r.finish("directory record")?;
        Ok(DirectoryRecord {
            address,
            keys,
            devices,
            seq,
            issued,
            expires,
            self_sig,
            cert,
        })
    }

    /// Checks everything a reader must check before trusting a record at time `now`:
    /// address form, lifetime, expiry, the self-signature, and the ring certificate if present.
    pub fn verify(&self, now: u64) -> Result<()> {
        let normalized = normalize_address(&self.address).map_err(Error::InvalidRecord)?;
        if normalized != self.address {
            return Err(Error::InvalidRecord("address is not in normal form"));
        }
        if self.expires < self.issued || self.expires - self.issued > MAX_LIFETIME_SECS {
            return Err(Error::InvalidRecord("lifetime out of range"));
        }
        // Allow clock skew for records issued "in the future".
        if self.issued > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(Error::InvalidRecord("issued in the future"));
        }
        if self.expires <= now {
            return Err(Error::Expired {
                expires: self.expires,
                now,
            });
        }
        self.keys
            .verify(SELF_CONTEXT, &self.body(), &self.self_sig)?;
        if let Some(c) = &self.cert {
            verify(&c.ring_key, RING_CONTEXT, &self.cert_message(), &c.sig)?;
        }
        Ok(())
    }

    /// [`verify`](Self::verify), and also requires a certificate by `ring_key`.
    pub fn verify_certified(&self, now: u64, ring_key: &[u8; 32]) -> Result<()> {
        self.verify(now)?;
        match &self.cert {
            Some(c) if &c.ring_key == ring_key => Ok(()),
            _ => Err(Error::InvalidRecord(
                "not certified by this ring's authority",
            )),
        }
    }
}

/// How sure a node is that a record's keys belong to the person behind its address (issue #18;
/// docs/design.md "Address ownership"). Shown by `peerpost lookup` and in the
/// `Authentication-Results` of overlay mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// The address's domain names the key in its `_peerpost` TXT records.
    VerifiedDomain,
    /// The configured ring authority certified the record.
    VerifiedRing,
    /// The user said so (`peerpost trust ADDRESS FINGERPRINT`).
    Pinned,
    /// Trust on first use: nothing vouches for the key.
    Unverified,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::VerifiedDomain => "verified-domain",
            Level::VerifiedRing => "verified-ring",
            Level::Pinned => "pinned",
            Level::Unverified => "unverified",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user key fingerprint as bytes: the 20 bytes `UserPublicKeys::fingerprint` shows as ten
/// groups of four hex digits.
pub type Fingerprint = [u8; 20];

/// The fingerprint of a record's user keys, as bytes.
pub fn fingerprint_of(keys: &UserPublicKeys) -> Fingerprint {
    parse_fingerprint(&keys.fingerprint()).unwrap_or([0; 20])
}

/// Reads a fingerprint as people copy it: 40 hex digits, in any case, with or without the
/// spaces (or colons) between groups.
pub fn parse_fingerprint(s: &str) -> Option<Fingerprint> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'\t'))
        .collect();
    if digits.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Shows a fingerprint the way `peerpost key show` does.
pub fn show_fingerprint(fp: &Fingerprint) -> String {
    super::hex(fp)
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The largest `_peerpost` TXT value read (a record names one user and one fingerprint).
pub const MAX_VOUCH: usize = 512;

/// One `_peerpost.DOMAIN` TXT record: the domain vouches that `local@DOMAIN` has the user key
/// with fingerprint `fingerprint` (docs/design.md "Address ownership"):
///
/// ```text
/// v=peerpost1; a=LOCAL-PART; k=FINGERPRINT (40 hex digits, spaces allowed)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouch {
    /// The local part, lower-cased (as addresses are normalized).
    pub local: String,
    pub fingerprint: Fingerprint,
}

impl Vouch {
    /// Parses one TXT value. `Ok(None)`: not a peerpost record at all (no `v=peerpost1`
    /// first), which a domain may have beside its own; `Err`: claims to be one but is not
    /// well formed.
    pub fn parse(txt: &str) -> std::result::Result<Option<Vouch>, String> {
        if txt.len() > MAX_VOUCH {
            return Err(format!("longer than {MAX_VOUCH} bytes"));
        }
        let mut tags = txt.split(';').map(str::trim).filter(|t| !t.is_empty());
        match tags.next().map(|t| t.split_once('=')) {
            Some(Some((v, val))) if v.trim() == "v" && val.trim() == "peerpost1" => {}
            _ => return Ok(None),
        }
        let (mut local, mut fingerprint) = (None, None);
        for tag in tags {
            let Some((name, value)) = tag.split_once('=') else {
                return Err(format!("{tag:?} is not NAME=VALUE"));
            };
            let value = value.trim();
            let slot = match name.trim() {
                "a" => &mut local,
                "k" => &mut fingerprint,
                // Unknown tags are ignored, so later versions can add some.
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(format!("tag {} appears twice", name.trim()));
            }
        }
        let local = local.ok_or("no a=LOCAL-PART tag")?.to_lowercase();
        if local.is_empty()
            || normalize_address(&format!("{local}@example.org")).is_err()
            || local.contains('@')
        {
            return Err(format!("a={local:?} is not the local part of an address"));
        }
        let k = fingerprint.ok_or("no k=FINGERPRINT tag")?;
        let fingerprint = parse_fingerprint(k)
            .ok_or_else(|| format!("k={k:?} is not a fingerprint (40 hex digits)"))?;
        Ok(Some(Vouch { local, fingerprint }))
    }

    /// The TXT value for `address`'s key (what `peerpost key show` suggests publishing).
    pub fn txt_for(local: &str, keys: &UserPublicKeys) -> String {
        format!(
            "v=peerpost1; a={}; k={}",
            local.to_lowercase(),
            super::hex(&fingerprint_of(keys))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn record(devices: usize, seq: u64) -> DirectoryRecord {
        let k = UserKeys::from_seed([1; 32]);
        DirectoryRecord::new(
            &k,
            "Alice@Example.org",
            vec![[7; 32]; devices],
            seq,
            NOW,
            86400,
        )
        .unwrap()
    }

    proptest! {
        #[test]
        fn roundtrip(devices in 0usize..=16, seq in any::<u64>(), certified in any::<bool>()) {
            let mut rec = record(devices, seq);
            if certified {
                rec.certify(&UserKeys::from_seed([9; 32]));
            }
            let again = DirectoryRecord::from_bytes(&rec.to_bytes()).unwrap();
            prop_assert_eq!(&again, &rec);
            prop_assert!(again.verify(NOW + 1).is_ok());
        }

        #[test]
        fn any_flipped_byte_is_detected(pos in any::<usize>(), bit in 0u8..8, certified in any::<bool>()) {
            let mut rec = record(2, 5);
            if certified {
                rec.certify(&UserKeys::from_seed([9; 32]));
            }
            let mut bytes = rec.to_bytes();
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let res = DirectoryRecord::from_bytes(&bytes).and_then(|r| r.verify(NOW + 1));
            prop_assert!(res.is_err(), "flip at {} went unnoticed", pos);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
            if let Ok(r) = DirectoryRecord::from_bytes(&bytes) {
                let _ = r.verify(NOW);
            }
        }
    }

    #[test]
    fn address_is_normalized() {
        assert_eq!(record(0, 1).address, "alice@example.org");
        assert!(normalize_address("no-at-sign").is_err());
        assert!(normalize_address("a b@c").is_err());
        assert!(normalize_address("a@b@c").is_err());
    }

    #[test]
    fn expired_record_is_refused() {
        let rec = record(0, 1);
        assert!(matches!(
            rec.verify(NOW + 86400),
            Err(Error::Expired { .. })
        ));
    }

    #[test]
    fn record_signed_by_another_key_is_refused() {
        let mut rec = record(0, 1);
        let mallory = UserKeys::from_seed([3; 32]);
        rec.keys.enc = mallory.public().enc; // swap in Mallory's encryption key
        assert_eq!(rec.verify(NOW), Err(Error::BadSignature));
    }

    #[test]
    fn certificate_must_come_from_the_ring() {
        let ring = UserKeys::from_seed([9; 32]);
        let other = UserKeys::from_seed([8; 32]);
        let mut rec = record(1, 1);
        assert!(rec.verify_certified(NOW, &ring.public().sign).is_err());
        rec.certify(&other);
        assert!(rec.verify(NOW).is_ok());
        assert!(rec.verify_certified(NOW, &ring.public().sign).is_err());
        rec.certify(&ring);
        assert!(rec.verify_certified(NOW, &ring.public().sign).is_ok());
    }

    #[test]
    fn fingerprints_read_as_shown() {
        let k = UserKeys::from_seed([1; 32]);
        let fp = fingerprint_of(k.public());
        assert_eq!(show_fingerprint(&fp), k.public().fingerprint());
        let joined = k.public().fingerprint().replace(' ', "").to_uppercase();
        assert_eq!(parse_fingerprint(&joined), Some(fp));
        assert_eq!(parse_fingerprint("abcd"), None);
        assert_eq!(parse_fingerprint(&"g".repeat(40)), None);
    }

    #[test]
    fn vouch_txt_parses_and_refuses() {
        let k = UserKeys::from_seed([1; 32]);
        let fp = fingerprint_of(k.public());
        let txt = Vouch::txt_for("Alice", k.public());
        assert_eq!(
            Vouch::parse(&txt).unwrap(),
            Some(Vouch {
                local: "alice".into(),
                fingerprint: fp
            })
        );
        let spaced = format!(
            " v=peerpost1 ;k={} ; a=ALICE; x=later",
            k.public().fingerprint()
        );
        assert_eq!(Vouch::parse(&spaced).unwrap().unwrap().fingerprint, fp);
        // Not ours: ignored, not an error.
        assert_eq!(Vouch::parse("v=spf1 -all").unwrap(), None);
        assert_eq!(Vouch::parse("").unwrap(), None);
        assert_eq!(Vouch::parse("v=peerpost2; a=x; k=00").unwrap(), None);
        for bad in [
            "v=peerpost1; k=00",
            "v=peerpost1; a=alice",
            "v=peerpost1; a=alice; k=1234",
            "v=peerpost1; a=al ice; k=0000000000000000000000000000000000000000",
            "v=peerpost1; a=alice; a=bob; k=0000000000000000000000000000000000000000",
            "v=peerpost1; a; k=0000000000000000000000000000000000000000",
        ] {
            assert!(Vouch::parse(bad).is_err(), "{bad}");
        }
        assert!(Vouch::parse(&format!("v=peerpost1; a={}", "x".repeat(600))).is_err());
    }

    #[test]
    fn oversized_and_truncated_are_typed_errors() {
        let bytes = record(3, 1).to_bytes();
        for cut in 0..bytes.len() {
            assert!(DirectoryRecord::from_bytes(&bytes[..cut]).is_err());
        }
        assert!(matches!(
            DirectoryRecord::from_bytes(&vec![1; MAX_RECORD + 1]),
            Err(Error::TooLarge { .. })
        ));
    }
}
