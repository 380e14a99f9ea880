//! Password checks for the servers, with guessing throttled per client address prefix.
//!
//! The stored hash is re-read on every attempt, so `peerpost passwd` takes effect at once.
//! Attempts are counted per prefix ([`prefix`]: /24 for IPv4, /64 for IPv6), and an attempt is
//! counted *before* its hash runs: it reserves a slot, and the slot becomes a failure (or is
//! released on success). After [`LOCKOUT_AFTER`] failures and attempts in flight within
//! [`WINDOW`] the prefix is refused without a check until the window has passed, so parallel
//! wrong passwords from one prefix run at most [`LOCKOUT_AFTER`] hashes. After each failure the
//! next answer to that prefix is delayed (0.25 s, 0.5 s, … up to 8 s). The table of prefixes is
//! bounded. Only the prefix is refused, never the account: the user can still log in from
//! elsewhere.
//!
//! At most [`MAX_HASHING`] Argon2 verifications run at once (19 MiB each); an attempt that waits
//! longer than [`HASH_WAIT`] for its turn gets [`Outcome::Busy`] (a temporary failure), and is
//! not counted as a failure.
//!
//! A successful check is remembered for [`VERIFIED_FOR`] (as a digest of user and password
//! under a random per-process key, tied to the stored hash it was checked against), so mail
//! clients that log in for every action do not pay Argon2 each time; a changed password hash
//! or a different password is checked in full.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::crypto::password;

pub const LOCKOUT_AFTER: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(600);
const MAX_TRACKED: usize = 4096;
/// How long a verified (user, password) is remembered.
pub const VERIFIED_FOR: Duration = Duration::from_secs(600);
const MAX_VERIFIED: usize = 8;
/// Argon2 verifications running at once, for all listeners together.
pub const MAX_HASHING: usize = 2;
/// How long an attempt waits for its turn to hash before it gets [`Outcome::Busy`].
pub const HASH_WAIT: Duration = Duration::from_secs(10);

/// The throttled unit of a client address: its /24 (IPv4, IPv4-mapped IPv6 included) or /64
/// (IPv6).
pub fn prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4_prefix(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4_prefix(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn v4_prefix(v4: Ipv4Addr) -> Ipv4Addr {
    let o = v4.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 0)
}

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
    /// Too many failures (or attempts in flight) from this address prefix: refused without a
    /// check.
    Throttled,
    /// Too many password checks running at once: a temporary failure, try again.
    Busy,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// Attempts reserved but not finished yet (they count towards the lockout).
    in_flight: u32,
    first: Instant,
}

pub struct Authenticator {
    address: String,
    hash: HashSource,
    /// Per address prefix ([`prefix`]).
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Bounds concurrent Argon2 verifications ([`MAX_HASHING`]).
    hashing: Arc<Semaphore>,
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
            hashing: Arc::new(Semaphore::new(MAX_HASHING)),
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

    /// Reserves an attempt for `key` (counted at once), or `None` if the prefix is locked out.
    fn reserve(&self, key: IpAddr, now: Instant) -> Option<Reservation<'_>> {
        let mut f = self.failures();
        if let Some(e) = f.get_mut(&key)
            && now.duration_since(e.first) > WINDOW
        {
            // The window passed: forget the failures, keep the attempts still running.
            e.count = 0;
            e.first = now;
        }
        if !f.contains_key(&key) && f.len() >= MAX_TRACKED {
            // Forget the oldest entry (bounded memory under a distributed attack).
            if let Some(oldest) = f.iter().min_by_key(|(_, v)| v.first).map(|(k, _)| *k) {
                f.remove(&oldest);
            }
        }
        let e = f.entry(key).or_insert(Failures {
            count: 0,
            in_flight: 0,
            first: now,
        });
        if e.count.saturating_add(e.in_flight) >= LOCKOUT_AFTER {
            return None;
        }
        e.in_flight += 1;
        Some(Reservation {
            auth: self,
            key,
            now,
            settled: false,
        })
    }

    /// Ends a reserved attempt: a failure (counted, returns the count) or not (released).
    fn settle(&self, key: IpAddr, now: Instant, failed: bool, cleared: bool) -> u32 {
        let mut f = self.failures();
        let e = f.entry(key).or_insert(Failures {
            count: 0,
            in_flight: 1,
            first: now,
        });
        e.in_flight = e.in_flight.saturating_sub(1);
        if failed {
            e.count = e.count.saturating_add(1);
        }
        if cleared {
            e.count = 0;
        }
        let count = e.count;
        if e.count == 0 && e.in_flight == 0 {
            f.remove(&key);
        }
        count
    }

    /// Whether `user` and `pass` are right; `None` if no hashing slot was free in time.
    async fn verify(&self, user: &str, pass: &str, now: Instant) -> Option<bool> {
        if !self.user_matches(user) {
            return Some(false);
        }
        let Some(hash) = (self.hash)() else {
            return Some(false);
        };
        let digest = self.digest(user, pass);
        if let Some(d) = digest
            && self.verified().iter().any(|v| {
                v.stored_hash == hash && v.digest == d && now.duration_since(v.at) < VERIFIED_FOR
            })
        {
            return Some(true);
        }
        // The permit moves into the blocking task: a client that hangs up does not free it
        // while its hash still runs.
        let permit = tokio::time::timeout(HASH_WAIT, Arc::clone(&self.hashing).acquire_owned())
            .await
            .ok()?
            .ok()?;
        let pass = pass.to_string();
        let checked = hash.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let ok = password::verify_password(&pass, &checked).unwrap_or(false);
            drop(permit);
            ok
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
                stored_hash: hash,
                digest: d,
                at: now,
            });
        }
        Some(ok)
    }

    /// Checks a login. Never faster than the throttle allows for this address's prefix.
    pub async fn check(&self, from: IpAddr, user: &str, pass: &str) -> Outcome {
        let now = Instant::now();
        let Some(mut slot) = self.reserve(prefix(from), now) else {
            crate::metrics::get().login_failed();
            return Outcome::Throttled;
        };
        match self.verify(user, pass, now).await {
            Some(true) => {
                slot.settle(false, true);
                Outcome::Ok
            }
            None => {
                slot.settle(false, false);
                Outcome::Busy
            }
            Some(false) => {
                crate::metrics::get().login_failed();
                let count = slot.settle(true, false);
                let delay =
                    Duration::from_millis(250u64 << count.min(5)).min(Duration::from_secs(8));
                tokio::time::sleep(delay).await;
                Outcome::Denied
            }
        }
    }
}

/// An attempt counted before its check; dropped unsettled (the client hung up mid-check), it
/// counts as a failure.
struct Reservation<'a> {
    auth: &'a Authenticator,
    key: IpAddr,
    now: Instant,
    settled: bool,
}

impl Reservation<'_> {
    fn settle(&mut self, failed: bool, cleared: bool) -> u32 {
        self.settled = true;
        self.auth.settle(self.key, self.now, failed, cleared)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.auth.settle(self.key, self.now, true, false);
        }
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
        let neighbour: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            a.check(neighbour, "alice", "right").await,
            Outcome::Throttled,
            "per /24"
        );
        let other: IpAddr = "127.0.1.2".parse().unwrap();
        assert_eq!(
            a.check(other, "alice", "right").await,
            Outcome::Ok,
            "another prefix"
        );
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert_eq!(
            a.check(ip, "alice", "right").await,
            Outcome::Ok,
            "the window passes"
        );
    }

    /// An authenticator for "right" that counts how often a check got as far as the hash.
    fn counting() -> (Arc<Authenticator>, Arc<std::sync::atomic::AtomicUsize>) {
        let h = password::hash_password("right").unwrap();
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&n);
        let a = Authenticator::new(
            "alice@example.org",
            Arc::new(move || {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(h.clone())
            }),
        );
        (Arc::new(a), n)
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_wrong_passwords_are_counted_before_they_hash() {
        let (a, hashed) = counting();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let a = Arc::clone(&a);
            // Every host of one /24.
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i % 250) as u8));
            set.spawn(async move { a.check(ip, "alice", "wrong").await });
        }
        let mut denied = 0;
        let mut throttled = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Outcome::Denied => denied += 1,
                Outcome::Throttled => throttled += 1,
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(denied, LOCKOUT_AFTER as usize);
        assert_eq!(throttled, 200 - LOCKOUT_AFTER as usize);
        assert_eq!(
            hashed.load(std::sync::atomic::Ordering::SeqCst),
            LOCKOUT_AFTER as usize
        );
        let same: IpAddr = "127.0.1.251".parse().unwrap();
        assert_eq!(a.check(same, "alice", "right").await, Outcome::Throttled);
        let other: IpAddr = "127.0.9.1".parse().unwrap();
        assert_eq!(
            a.check(other, "alice", "right").await,
            Outcome::Ok,
            "the account is not locked"
        );
    }

    #[test]
    fn prefixes() {
        let p = |s: &str| prefix(s.parse().unwrap()).to_string();
        assert_eq!(p("192.0.2.77"), "192.0.2.0");
        assert_eq!(p("::ffff:192.0.2.77"), "192.0.2.0");
        assert_eq!(p("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_is_throttled_per_64() {
        let a = auth();
        for i in 0..LOCKOUT_AFTER {
            let ip: IpAddr = format!("2001:db8:0:1::{:x}", i + 1).parse().unwrap();
            a.check(ip, "alice", "wrong").await;
        }
        let same: IpAddr = "2001:db8:0:1:ffff::1".parse().unwrap();
        assert_eq!(a.check(same, "alice", "right").await, Outcome::Throttled);
        let other: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert_eq!(a.check(other, "alice", "right").await, Outcome::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn no_free_hashing_slot_is_a_temporary_failure_not_a_strike() {
        let (a, _) = counting();
        let held = Arc::clone(&a.hashing)
            .acquire_many_owned(MAX_HASHING as u32)
            .await
            .unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let started = Instant::now();
        assert_eq!(a.check(ip, "alice", "right").await, Outcome::Busy);
        assert!(started.elapsed() >= HASH_WAIT);
        assert!(a.failures().is_empty(), "a busy answer is not a failure");
        drop(held);
        assert_eq!(a.check(ip, "alice", "right").await, Outcome::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_hangs_up_mid_check_is_counted() {
        let (a, _) = counting();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..LOCKOUT_AFTER {
            let check = a.check(ip, "alice", "wrong");
            // Dropped before it finishes (as when the connection closes).
            let _ = tokio::time::timeout(Duration::from_millis(1), check).await;
        }
        assert_eq!(a.check(ip, "alice", "right").await, Outcome::Throttled);
    }
}
