//! Password checks for the servers, with guessing throttled per client address.
//!
//! The stored hash is re-read on every attempt, so `peerpost passwd` takes effect at once.
//! After each failure from an address its next answer is delayed (0.25 s, 0.5 s, … up to 8 s);
//! after [`LOCKOUT_AFTER`] failures in [`WINDOW`] the address is refused without a check until
//! the window has passed. The table of addresses is bounded.
//!
//! A successful check is remembered for [`VERIFIED_FOR`] (as a digest of user and password
//! under a random per-process key, tied to the stored hash it was checked against), so mail
//! clients that log in for every action do not pay Argon2 each time; a changed password hash
//! or a different password is checked in full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::crypto::password;

pub const LOCKOUT_AFTER: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(600);
const MAX_TRACKED: usize = 4096;
/// How long a verified (user, password) is remembered.
pub const VERIFIED_FOR: Duration = Duration::from_secs(600);
const MAX_VERIFIED: usize = 8;

/// A remembered successful login.
struct Verified {
    stored_hash: String,
    digest: [u8; 32],
    at: Instant,
}

/// Where the current password hash comes from (the home's `password` file, in practice).
pub type HashSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Wrong user or password (after the throttling delay).
    Denied,
    /// Too many failures from this address: refused without a check.
    Throttled,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
}

pub struct Authenticator {
    address: String,
    hash: HashSource,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Random key of the remembered-login digests (`None`: no remembering).
    cache_key: Option<[u8; 32]>,
    verified: Mutex<Vec<Verified>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({})", self.address)
    }
}

impl Authenticator {
    pub fn new(address: &str, hash: HashSource) -> Authenticator {
        Authenticator {
            address: address.to_lowercase(),
            hash,
            failures: Mutex::new(HashMap::new()),
            cache_key: crate::crypto::random_bytes().ok(),
            verified: Mutex::new(Vec::new()),
        }
    }

    /// The user name this node answers to: the full address, or its local part.
    pub fn user_matches(&self, user: &str) -> bool {
        let user = user.to_lowercase();
        user == self.address || self.address.split('@').next() == Some(user.as_str())
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, Vec<Verified>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digest(&self, user: &str, pass: &str) -> Option<[u8; 32]> {
        let key = self.cache_key?;
        let mut b = Vec::with_capacity(32 + user.len() + 1 + pass.len());
        b.extend_from_slice(&key);
        b.extend_from_slice(user.to_lowercase().as_bytes());
        b.push(0);
        b.extend_from_slice(pass.as_bytes());
        Some(crate::crypto::hash(&b))
    }

    /// Checks a login. Never faster than the throttle allows for this address.
    pub async fn check(&self, from: IpAddr, user: &str, pass: &str) -> Outcome {
        let now = Instant::now();
        let prior = {
            let mut f = self.failures();
            if let Some(e) = f.get(&from).copied()
                && now.duration_since(e.first) > WINDOW
            {
                f.remove(&from);
            }
            f.get(&from).copied()
        };
        if prior.is_some_and(|p| p.count >= LOCKOUT_AFTER) {
            return Outcome::Throttled;
        }
        let ok = self.user_matches(user) && {
            let hash = (self.hash)();
            let digest = self.digest(user, pass);
            let remembered = match (&hash, digest) {
                (Some(h), Some(d)) => self.verified().iter().any(|v| {
                    v.stored_hash == *h && v.digest == d && now.duration_since(v.at) < VERIFIED_FOR
                }),
                _ => false,
            };
            if remembered {
                true
            } else {
                let pass = pass.to_string();
                match hash {
                    Some(h) => {
                        let checked = h.clone();
                        let ok = tokio::task::spawn_blocking(move || {
                            password::verify_password(&pass, &checked).unwrap_or(false)
                        })
                        .await
                        .unwrap_or(false);
                        if let (true, Some(d)) = (ok, digest) {
                            let mut v = self.verified();
                            v.retain(|x| x.digest != d && now.duration_since(x.at) < VERIFIED_FOR);
                            if v.len() >= MAX_VERIFIED {
                                v.remove(0);
                            }
                            v.push(Verified {
                                stored_hash: h,
                                digest: d,
                                at: now,
                            });
                        }
                        ok
                    }
                    None => false,
                }
            }
        };
        if ok {
            self.failures().remove(&from);
            return Outcome::Ok;
        }
        let count = {
            let mut f = self.failures();
            if f.len() >= MAX_TRACKED && !f.contains_key(&from) {
                // Forget the oldest entry (bounded memory under a distributed attack).
                if let Some(oldest) = f.iter().min_by_key(|(_, v)| v.first).map(|(k, _)| *k) {
                    f.remove(&oldest);
                }
            }
            let e = f.entry(from).or_insert(Failures {
                count: 0,
                first: now,
            });
            e.count += 1;
            e.count
        };
        let delay = Duration::from_millis(250u64 << count.min(5)).min(Duration::from_secs(8));
        tokio::time::sleep(delay).await;
        Outcome::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_remembered_login_follows_the_stored_hash() {
        let current = Arc::new(Mutex::new(password::hash_password("one").unwrap()));
        let c = Arc::clone(&current);
        let a = Authenticator::new(
            "alice@example.org",
            Arc::new(move || Some(c.lock().unwrap().clone())),
        );
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(a.check(ip, "alice", "one").await, Outcome::Ok);
        assert_eq!(a.check(ip, "alice", "one").await, Outcome::Ok, "remembered");
        assert_eq!(a.check(ip, "alice", "two").await, Outcome::Denied);
        *current.lock().unwrap() = password::hash_password("two").unwrap();
        assert_eq!(
            a.check(ip, "alice", "one").await,
            Outcome::Denied,
            "passwd applies at once"
        );
        assert_eq!(a.check(ip, "alice", "two").await, Outcome::Ok);
    }

    fn auth() -> Authenticator {
        let h = password::hash_password("right").unwrap();
        Authenticator::new("Alice@Example.org", Arc::new(move || Some(h.clone())))
    }

    #[tokio::test(start_paused = true)]
    async fn right_wrong_and_throttled() {
        let a = auth();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(a.check(ip, "alice", "right").await, Outcome::Ok);
        assert_eq!(a.check(ip, "alice@example.org", "right").await, Outcome::Ok);
        assert_eq!(a.check(ip, "bob", "right").await, Outcome::Denied);
        assert_eq!(a.check(ip, "alice", "wrong").await, Outcome::Denied);
        for _ in 0..LOCKOUT_AFTER {
            a.check(ip, "alice", "wrong").await;
        }
        assert_eq!(
            a.check(ip, "alice", "right").await,
            Outcome::Throttled,
            "locked out"
        );
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            a.check(other, "alice", "right").await,
            Outcome::Ok,
            "per address"
        );
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert_eq!(
            a.check(ip, "alice", "right").await,
            Outcome::Ok,
            "the window passes"
        );
    }
}
