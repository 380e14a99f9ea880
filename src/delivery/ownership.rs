//! Who owns an address (issue #18; docs/design.md "Address ownership"): whether a recipient
//! is an *overlay address* (mail for it never goes to the smarthost), and how strongly a
//! directory record is vouched for (the level in `Authentication-Results`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{Delivery, lock, now_secs};
use crate::crypto::DirectoryRecord;
use crate::crypto::record::{Fingerprint, Vouch, fingerprint_of};
use crate::overlay::LookupError;

/// How long a `_peerpost` TXT answer is reused, and how many domains are kept.
const VOUCH_TTL: Duration = Duration::from_secs(60);
const MAX_CACHED_DOMAINS: usize = 1024;

/// The TXT values at `_peerpost.DOMAIN` (`Ok(empty)`: the domain vouches for nobody; `Err`: a
/// temporary failure). node.rs wires the intake's resolver (`smtp::auth_check::OwnershipDns`)
/// here, so delivery does not know DNS.
pub type VouchFn =
    dyn Fn(String) -> BoxFuture<'static, Result<Vec<String>, String>> + Send + Sync + 'static;

/// Where `_peerpost` answers come from.
#[derive(Clone)]
pub struct Vouches(pub Arc<VouchFn>);

impl std::fmt::Debug for Vouches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vouches")
    }
}

/// How strongly a record is vouched for, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Pinned,
    VerifiedDomain,
    VerifiedRing,
    Unverified,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Pinned => "pinned",
            Level::VerifiedDomain => "verified-domain",
            Level::VerifiedRing => "verified-ring",
            Level::Unverified => "unverified",
        }
    }
}

/// What ownership says of an address before its record is looked up.
pub(super) struct Claim {
    /// The key the user pinned (`peerpost trust`).
    pub pinned: Option<Fingerprint>,
    /// Keys the address's domain names in `_peerpost` TXT records.
    pub vouched: Vec<Fingerprint>,
}

impl Claim {
    /// Pinned or domain-vouched: an overlay address whatever the DHT holds.
    pub fn is_overlay(&self) -> bool {
        self.pinned.is_some() || !self.vouched.is_empty()
    }
}

/// The keys `txt` vouches for `local` (malformed values are skipped with a log line).
pub fn vouched_keys(txt: &[String], local: &str, domain: &str) -> Vec<Fingerprint> {
    let mut out = Vec::new();
    for t in txt {
        match Vouch::parse(t) {
            Ok(Some(v)) if v.local == local && !out.contains(&v.fingerprint) => {
                out.push(v.fingerprint)
            }
            Ok(_) => {}
            Err(why) => tracing::debug!(%domain, "a _peerpost TXT value is not well formed: {why}"),
        }
    }
    out
}

impl Delivery {
    /// The `_peerpost` TXT values of `domain`, cached for [`VOUCH_TTL`].
    async fn domain_txt(&self, domain: &str) -> Result<Vec<String>, String> {
        let Some(v) = &self.inner.config.vouches else {
            return Ok(Vec::new());
        };
        if let Some((txt, at)) = lock(&self.inner.vouch_cache).get(domain)
            && at.elapsed() < VOUCH_TTL
        {
            return Ok(txt.clone());
        }
        let txt = (v.0)(domain.to_string()).await?;
        let mut cache = lock(&self.inner.vouch_cache);
        if cache.len() >= MAX_CACHED_DOMAINS {
            cache.retain(|_, (_, at)| at.elapsed() < VOUCH_TTL);
            if cache.len() >= MAX_CACHED_DOMAINS {
                cache.clear();
            }
        }
        cache.insert(domain.to_string(), (txt.clone(), Instant::now()));
        Ok(txt)
    }

    /// The user's pin and the domain's vouches for `address` (normalized). `Err`: a
    /// temporary failure (the store, DNS): nothing can be concluded, the caller retries.
    pub(super) async fn claim(&self, address: &str) -> Result<Claim, String> {
        let pinned = self
            .inner
            .store
            .trust_get(address.to_string())
            .await
            .map_err(|e| e.to_string())?;
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let txt = self
            .domain_txt(domain)
            .await
            .map_err(|e| format!("cannot learn who {domain} vouches for: {e}"))?;
        Ok(Claim {
            pinned,
            vouched: vouched_keys(&txt, local, domain),
        })
    }

    /// The level of `record` given `claim` (the lookup believed only pinned or vouched keys).
    pub(super) fn level(&self, claim: &Claim, record: &DirectoryRecord) -> Level {
        if claim
            .pinned
            .is_some_and(|fp| fp == fingerprint_of(&record.keys))
        {
            Level::Pinned
        } else if claim.vouched.contains(&fingerprint_of(&record.keys)) {
            Level::VerifiedDomain
        } else if self
            .inner
            .config
            .ring_authority
            .is_some_and(|k| record.verify_certified(now_secs(), &k).is_ok())
        {
            Level::VerifiedRing
        } else {
            Level::Unverified
        }
    }

    /// The directory record of `address` believing only what `claim` allows (pinned key,
    /// vouched keys, else the overlay's first-use rules).
    pub(super) async fn owned_record(
        &self,
        address: &str,
        claim: &Claim,
        fresh: bool,
    ) -> Result<(DirectoryRecord, Level), LookupError> {
        let (_, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let by = format!("the _peerpost TXT records of {domain}");
        // The user's pin outranks the domain (the overlay's lookup applies it too; saying it
        // here keeps a record cached before the pin from being used).
        let pinned = claim.pinned.map(|fp| [fp]);
        let vouched = match &pinned {
            Some(fp) => Some((&fp[..], "your `peerpost trust`")),
            None => (!claim.vouched.is_empty()).then_some((&claim.vouched[..], by.as_str())),
        };
        let record = self.record(address, fresh, vouched).await?;
        let level = self.level(claim, &record);
        Ok((record, level))
    }
}

impl Delivery {
    /// The level at which this node believes `address`'s key (what `peerpost lookup` shows):
    /// `Err` when no record it would believe is found or nothing can be concluded yet.
    pub async fn level_of(&self, address: &str) -> Result<Level, String> {
        let address = crate::crypto::record::normalize_address(address)
            .map_err(|why| format!("{address:?} {why}"))?;
        let claim = self.claim(&address).await?;
        let (_, level) = self
            .owned_record(&address, &claim, false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_local_parts_keys_are_vouched() {
        let fp = "ab".repeat(20);
        let txt = vec![
            format!("v=peerpost1; a=bob; k={fp}"),
            format!("v=peerpost1; a=carol; k={}", "cd".repeat(20)),
            "v=spf1 -all".to_string(),
            "v=peerpost1; a=bob".to_string(),
        ];
        assert_eq!(vouched_keys(&txt, "bob", "d.test"), vec![[0xab; 20]]);
        assert!(vouched_keys(&txt, "dave", "d.test").is_empty());
    }
}
