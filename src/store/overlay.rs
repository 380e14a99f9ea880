//! The overlay's tables (schema.rs, "overlay tables"): blobs held for other peers, bounded by
//! the node's contribution, and the directory pins (trust on first use).

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, WithoutTls};

use super::{Error, Result, Store, read_u64, schema};

const META_HELD: &[u8] = schema::META_HELD_BYTES;

pub(super) struct Tables {
    pub(super) held: Database<'static, Bytes, Bytes>,
    pins: Database<'static, Bytes, Bytes>,
}

impl Tables {
    pub(super) fn create(env: &Env<WithoutTls>) -> heed::Result<Tables> {
        let wtxn = env.write_txn()?;
        env.create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
            let held: Database<Bytes, Bytes> = dbo.create_database(wtxn, Some(schema::DB_HELD))?;
            let pins: Database<Bytes, Bytes> = dbo.create_database(wtxn, Some(schema::DB_PINS))?;
            Ok(CommitOrAbort::<_, ()>::Commit((held, pins)))
        })
        .map(|c| match c {
            CommitOrAbort::Commit((held, pins)) => Some(Tables { held, pins }),
            CommitOrAbort::Abort(()) => None,
        })?
        .ok_or(heed::Error::Mdb(heed::MdbError::Panic))
    }
}

/// What happened to a blob offered for holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldPut {
    Stored,
    AlreadyHeld,
    /// Holding it would exceed the contribution.
    Full,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeldStats {
    pub blobs: u64,
    pub bytes: u64,
}

/// The keys pinned for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub sign: [u8; 32],
    pub enc: [u8; 32],
}

const PIN_VERSION: u8 = 1;
/// A pin the user set by hand (`peerpost trust`): `2 ‖ [20] fingerprint`. It replaces the
/// address's first-use pin, and first-use pinning never overwrites it.
const TRUST_VERSION: u8 = 2;
/// Most addresses `trust_list` returns.
pub const MAX_TRUSTED: usize = 10_000;

impl Store {
    /// Keeps `bytes` for a peer under `id` (the caller checked `id == BLAKE3(bytes)`), unless
    /// the held total would pass `limit` bytes. Durable when it returns `Stored`.
    pub async fn held_put(&self, id: [u8; 32], bytes: Vec<u8>, limit: u64) -> Result<HeldPut> {
        self.blocking(move |s| {
            let t = &s.overlay;
            let mut wtxn = s.env.write_txn()?;
            if t.held.get(&wtxn, &id)?.is_some() {
                return Ok(HeldPut::AlreadyHeld);
            }
            let total = read_u64(&s.meta, &wtxn, META_HELD)?;
            let new_total = total.saturating_add(bytes.len() as u64);
            if new_total > limit {
                return Ok(HeldPut::Full);
            }
            t.held.put(&mut wtxn, &id, &bytes)?;
            s.meta.put(&mut wtxn, META_HELD, &new_total.to_be_bytes())?;
            wtxn.commit()?;
            Ok(HeldPut::Stored)
        })
        .await
    }

    /// A held blob, checked against its id; a blob that no longer hashes to it is reported
    /// as corrupt rather than served.
    pub async fn held_get(&self, id: [u8; 32]) -> Result<Option<Vec<u8>>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            let Some(v) = s.overlay.held.get(&rtxn, &id)? else {
                return Ok(None);
            };
            if crate::crypto::hash(v) != id {
                return Err(Error::Corrupt {
                    id: crate::crypto::ObjectId(id),
                    why: "held blob does not hash to its id".into(),
                });
            }
            Ok(Some(v.to_vec()))
        })
        .await
    }

    pub async fn held_has(&self, id: [u8; 32]) -> Result<bool> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.overlay.held.get(&rtxn, &id)?.is_some())
        })
        .await
    }

    pub async fn held_stats(&self) -> Result<HeldStats> {
        self.blocking(|s| {
            let rtxn = s.env.read_txn()?;
            Ok(HeldStats {
                blobs: s.overlay.held.len(&rtxn)?,
                bytes: read_u64(&s.meta, &rtxn, META_HELD)?,
            })
        })
        .await
    }

    /// The keys pinned for `address` (normalized), if any.
    pub async fn pin_get(&self, address: String) -> Result<Option<Pin>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.overlay
                .pins
                .get(&rtxn, address.as_bytes())?
                .and_then(decode_pin))
        })
        .await
    }

    /// Pins `pin` for `address` unless a pin exists; returns the pin in force afterwards.
    pub async fn pin_first(&self, address: String, pin: Pin) -> Result<Pin> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            match s.overlay.pins.get(&wtxn, address.as_bytes())? {
                Some(v) if v.first() == Some(&TRUST_VERSION) => {
                    // The user's own pin is not a key pair: nothing first-seen is pinned.
                    return Ok(Pin {
                        sign: [0; 32],
                        enc: [0; 32],
                    });
                }
                Some(v) => {
                    if let Some(existing) = decode_pin(v) {
                        return Ok(existing);
                    }
                }
                None => {}
            }
            let mut v = Vec::with_capacity(65);
            v.push(PIN_VERSION);
            v.extend_from_slice(&pin.sign);
            v.extend_from_slice(&pin.enc);
            s.overlay.pins.put(&mut wtxn, address.as_bytes(), &v)?;
            wtxn.commit()?;
            Ok(pin)
        })
        .await
    }

    /// Replaces the first-use pin of `address` (after a certified key change); a pin the user
    /// set stays.
    pub async fn pin_replace(&self, address: String, pin: Pin) -> Result<()> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            if s.overlay
                .pins
                .get(&wtxn, address.as_bytes())?
                .is_some_and(|v| v.first() == Some(&TRUST_VERSION))
            {
                return Ok(());
            }
            let mut v = Vec::with_capacity(65);
            v.push(PIN_VERSION);
            v.extend_from_slice(&pin.sign);
            v.extend_from_slice(&pin.enc);
            s.overlay.pins.put(&mut wtxn, address.as_bytes(), &v)?;
            wtxn.commit()?;
            Ok(())
        })
        .await
    }
}

impl Store {
    /// Pins `address` (normalized) to the user key with `fingerprint`, by the user's word:
    /// replaces a first-use pin, survives restarts. Durable when it returns.
    pub async fn trust_set(&self, address: String, fingerprint: [u8; 20]) -> Result<()> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let mut v = Vec::with_capacity(21);
            v.push(TRUST_VERSION);
            v.extend_from_slice(&fingerprint);
            s.overlay.pins.put(&mut wtxn, address.as_bytes(), &v)?;
            wtxn.commit()?;
            Ok(())
        })
        .await
    }

    /// The fingerprint the user pinned for `address`, if any.
    pub async fn trust_get(&self, address: String) -> Result<Option<[u8; 20]>> {
        self.blocking(move |s| {
            let rtxn = s.env.read_txn()?;
            Ok(s.overlay
                .pins
                .get(&rtxn, address.as_bytes())?
                .and_then(decode_trust))
        })
        .await
    }

    /// Drops the user's pin of `address` (the next lookup pins on first use again). Returns
    /// whether there was one; a first-use pin is left alone.
    pub async fn trust_remove(&self, address: String) -> Result<bool> {
        self.blocking(move |s| {
            let mut wtxn = s.env.write_txn()?;
            let had = s
                .overlay
                .pins
                .get(&wtxn, address.as_bytes())?
                .and_then(decode_trust)
                .is_some();
            if had {
                s.overlay.pins.delete(&mut wtxn, address.as_bytes())?;
                wtxn.commit()?;
            }
            Ok(had)
        })
        .await
    }

    /// Every address the user pinned, in address order (at most [`MAX_TRUSTED`]).
    pub async fn trust_list(&self) -> Result<Vec<(String, [u8; 20])>> {
        self.blocking(|s| {
            let rtxn = s.env.read_txn()?;
            let mut out = Vec::new();
            for item in s.overlay.pins.iter(&rtxn)? {
                let (k, v) = item?;
                if let Some(fp) = decode_trust(v) {
                    out.push((String::from_utf8_lossy(k).into_owned(), fp));
                    if out.len() >= MAX_TRUSTED {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

fn decode_trust(v: &[u8]) -> Option<[u8; 20]> {
    if v.len() != 21 || v[0] != TRUST_VERSION {
        return None;
    }
    v[1..].try_into().ok()
}

fn decode_pin(v: &[u8]) -> Option<Pin> {
    if v.len() != 65 || v[0] != PIN_VERSION {
        return None;
    }
    Some(Pin {
        sign: v[1..33].try_into().ok()?,
        enc: v[33..65].try_into().ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn held_blobs_respect_the_contribution() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = vec![1u8; 600];
        let ida = crate::crypto::hash(&a);
        let b = vec![2u8; 600];
        let idb = crate::crypto::hash(&b);
        assert_eq!(
            store.held_put(ida, a.clone(), 1000).await.unwrap(),
            HeldPut::Stored
        );
        assert_eq!(
            store.held_put(ida, a.clone(), 1000).await.unwrap(),
            HeldPut::AlreadyHeld
        );
        assert_eq!(store.held_put(idb, b, 1000).await.unwrap(), HeldPut::Full);
        assert_eq!(store.held_get(ida).await.unwrap(), Some(a));
        assert_eq!(store.held_get(idb).await.unwrap(), None);
        assert!(store.held_has(ida).await.unwrap());
        assert_eq!(
            store.held_stats().await.unwrap(),
            HeldStats {
                blobs: 1,
                bytes: 600
            }
        );
    }

    #[tokio::test]
    async fn the_first_pin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = Pin {
            sign: [1; 32],
            enc: [2; 32],
        };
        let b = Pin {
            sign: [3; 32],
            enc: [4; 32],
        };
        let addr = "alice@example.org".to_string();
        assert_eq!(store.pin_get(addr.clone()).await.unwrap(), None);
        assert_eq!(store.pin_first(addr.clone(), a).await.unwrap(), a);
        assert_eq!(store.pin_first(addr.clone(), b).await.unwrap(), a);
        store.pin_replace(addr.clone(), b).await.unwrap();
        assert_eq!(store.pin_get(addr.clone()).await.unwrap(), Some(b));
        // The user's pin replaces it, and first-use pinning leaves the user's pin alone.
        store.trust_set(addr.clone(), [5; 20]).await.unwrap();
        assert_eq!(store.pin_get(addr.clone()).await.unwrap(), None);
        assert_ne!(store.pin_first(addr.clone(), a).await.unwrap(), a);
        store.pin_replace(addr.clone(), a).await.unwrap();
        assert_eq!(store.trust_get(addr.clone()).await.unwrap(), Some([5; 20]));
        assert_eq!(
            store.trust_list().await.unwrap(),
            vec![(addr.clone(), [5; 20])]
        );
        assert!(store.trust_remove(addr.clone()).await.unwrap());
        assert!(!store.trust_remove(addr.clone()).await.unwrap());
        assert_eq!(store.trust_get(addr).await.unwrap(), None);
    }
}
