//! The listener layer shared by the POP3, IMAP and SMTP servers: a bounded number of
//! concurrent sessions, backoff when `accept` fails (e.g. out of file descriptors), implicit
//! TLS, one tracing span per session, and graceful shutdown (sessions see the cancellation
//! and say goodbye in their protocol).
//!
//! [`auth`] checks the password and throttles guessing.

pub mod auth;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::tls::{Acceptor, SessionStream};

/// Limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent sessions. When all are taken, a newcomer takes the slot of the oldest
    /// session that has not logged in, from the address with the most sessions; when every
    /// session has logged in, the newcomer is told to come back later.
    pub max_sessions: usize,
    /// Concurrent sessions from one address (an IPv6 /64); more are told to come back later.
    pub sessions_per_ip: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// A session that has not logged in by then is closed, however active (an SMTP intake
    /// session never logs in: this bounds it).
    pub login_within: Duration,
    /// No session lasts longer.
    pub session_max: Duration,
    /// Longest a write to a client may make no progress.
    pub write_timeout: Duration,
    /// On shutdown (and eviction, and the deadlines above), a session has this long to say
    /// goodbye before it is dropped.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 256,
            sessions_per_ip: 16,
            handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
            login_within: Duration::from_secs(600),
            session_max: Duration::from_secs(24 * 3600),
            write_timeout: crate::tls::DEFAULT_WRITE_TIMEOUT,
            grace: Duration::from_secs(2),
        }
    }
}

/// What a session is told about its connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The listener's own address (plaintext logins are allowed only on loopback).
    pub local: SocketAddr,
    pub session: u64,
    /// Set once the client has logged in (it then keeps its slot when the listener is full).
    logged_in: Arc<AtomicBool>,
}

impl Peer {
    pub fn new(addr: SocketAddr, local: SocketAddr, session: u64) -> Peer {
        Peer {
            addr,
            local,
            session,
            logged_in: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Plaintext passwords are accepted only where they cannot be sniffed.
    pub fn is_loopback(&self) -> bool {
        self.local.ip().is_loopback() && self.addr.ip().is_loopback()
    }

    /// The session has logged in.
    pub fn set_logged_in(&self) {
        self.logged_in.store(true, Ordering::Relaxed);
    }

    pub fn logged_in(&self) -> bool {
        self.logged_in.load(Ordering::Relaxed)
    }
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// Sessions are counted per IPv4 address and per IPv6 /64 (one subscriber's allocation).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

struct Slot {
    key: IpAddr,
    since: Instant,
    logged_in: Arc<AtomicBool>,
    /// Cancelling it asks the session to say goodbye.
    token: CancellationToken,
}

/// The sessions of one listener.
#[derive(Default)]
struct Registry {
    slots: HashMap<u64, Slot>,
}

enum Admit {
    Yes,
    /// Over the per-address cap, or full of logged-in sessions.
    Busy,
}

impl Registry {
    fn admit(&mut self, id: u64, slot: Slot, limits: &Limits) -> Admit {
        let from_key = self.slots.values().filter(|s| s.key == slot.key).count();
        if from_key >= limits.sessions_per_ip {
            return Admit::Busy;
        }
        if self.slots.len() >= limits.max_sessions {
            // The oldest session not logged in, of the address with the most sessions.
            let mut per_key: HashMap<IpAddr, usize> = HashMap::new();
            for s in self.slots.values() {
                *per_key.entry(s.key).or_default() += 1;
            }
            let victim = self
                .slots
                .iter()
                .filter(|(_, s)| !s.logged_in.load(Ordering::Relaxed))
                .max_by_key(|(_, s)| {
                    (
                        per_key.get(&s.key).copied().unwrap_or(0),
                        std::cmp::Reverse(s.since),
                    )
                })
                .map(|(id, _)| *id);
            let Some(victim) = victim.and_then(|v| self.slots.remove(&v)) else {
                return Admit::Busy;
            };
            tracing::info!(peer = %victim.key, "listener full: closing an idle session that has not logged in");
            victim.token.cancel();
        }
        self.slots.insert(id, slot);
        Admit::Yes
    }
}

/// Removes a session from its registry when its task ends.
struct Registered {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry).slots.remove(&self.id);
    }
}

fn lock(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// The metrics label of a listener: its protocol family (the SMTP intake and submission
/// listeners are all "smtp").
fn family(protocol: &'static str) -> &'static str {
    match protocol {
        "imap" | "imaps" => "imap",
        "pop3" | "pop3s" => "pop3",
        _ => "smtp",
    }
}

/// What a client that cannot be served now is told, in its protocol, before the close.
fn busy_line(protocol: &str) -> &'static [u8] {
    match protocol {
        "imap" => b"* BYE [UNAVAILABLE] too many connections; try again later\r\n",
        "pop3" => b"-ERR [SYS/TEMP] too many connections; try again later\r\n",
        _ => b"421 4.7.0 Too many connections; try again later\r\n",
    }
}

/// Accepts connections until `shutdown`, running `handle` for each in its own task, within
/// `limits` (see [`Limits`]). With `tls`, every connection is TLS from the first byte
/// (IMAPS, POP3S). Returns when every session has ended: each gets `limits.grace` to say
/// goodbye after `shutdown`, then is dropped.
pub async fn serve<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    tls: Option<Acceptor>,
    limits: Limits,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(SessionStream, Peer, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let registry = Arc::new(Mutex::new(Registry::default()));
    let local = listener.local_addr().ok();
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => {
                    backoff = Duration::from_millis(5);
                    c
                }
                Err(e) => {
                    tracing::warn!(%protocol, error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        // Reap finished sessions so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let peer = Peer::new(addr, local.unwrap_or(addr), session);
        let token = shutdown.child_token();
        let slot = Slot {
            key: ip_key(addr.ip()),
            since: Instant::now(),
            logged_in: Arc::clone(&peer.logged_in),
            token: token.clone(),
        };
        if let Admit::Busy = lock(&registry).admit(session, slot, &limits) {
            tracing::info!(%protocol, peer = %addr, "refused: too many connections");
            crate::metrics::get().session_refused(family(protocol));
            if tls.is_none() {
                // A fresh socket's send buffer is empty: this does not block.
                let _ = tcp.try_write(busy_line(protocol));
            }
            continue;
        }
        let registered = Registered {
            registry: Arc::clone(&registry),
            id: session,
        };
        let span = tracing::info_span!("session", %protocol, session, peer = %addr);
        let handle = Arc::clone(&handle);
        let tls = tls.clone();
        let limits = limits.clone();
        tasks.spawn(
            async move {
                let _registered = registered;
                let _active = crate::metrics::get().session(family(protocol));
                let logged_in = Arc::clone(&peer.logged_in);
                let started = Instant::now();
                let work = async {
                    let _ = tcp.set_nodelay(true);
                    let stream = match tls {
                        None => SessionStream::plain(tcp),
                        Some(acceptor) => match tokio::time::timeout(
                            limits.handshake_timeout,
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(s)) => {
                                crate::metrics::get().tls_handshake(family(protocol), "ok");
                                s
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                crate::metrics::get().tls_handshake(family(protocol), "failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                crate::metrics::get().tls_handshake(family(protocol), "timeout");
                                return;
                            }
                        },
                    };
                    tracing::debug!("connected");
                    handle(
                        stream.with_write_timeout(limits.write_timeout),
                        peer,
                        token.clone(),
                    )
                    .await;
                };
                tokio::pin!(work);
                let deadline = async {
                    tokio::time::sleep_until(started + limits.login_within).await;
                    if logged_in.load(Ordering::Relaxed) {
                        tokio::time::sleep_until(started + limits.session_max).await;
                        "session too long"
                    } else {
                        "no login in time"
                    }
                };
                let ended = tokio::select! {
                    _ = &mut work => None,
                    why = deadline => Some(why),
                    _ = token.cancelled() => Some("shutdown or eviction"),
                };
                if let Some(why) = ended {
                    // Say goodbye (the session sees its token), but not for longer than this.
                    token.cancel();
                    if tokio::time::timeout(limits.grace, &mut work).await.is_err() {
                        tracing::debug!(why, "session dropped after its grace");
                    }
                }
                tracing::debug!("closed");
            }
            .instrument(span),
        );
    }
    // Sessions got the cancellation through their child tokens; wait for their goodbyes
    // (each bounded by its grace).
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ip: &str, since: Instant, logged_in: bool) -> Slot {
        Slot {
            key: ip_key(ip.parse().unwrap()),
            since,
            logged_in: Arc::new(AtomicBool::new(logged_in)),
            token: CancellationToken::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_evicts_the_oldest_anonymous_session_of_the_busiest_address() {
        let limits = Limits {
            max_sessions: 4,
            sessions_per_ip: 3,
            ..Limits::default()
        };
        let mut r = Registry::default();
        let t0 = Instant::now();
        let mut id = 0;
        let mut add = |r: &mut Registry, ip: &str, secs: u64, logged: bool| {
            id += 1;
            let s = slot(ip, t0 + Duration::from_secs(secs), logged);
            let token = s.token.clone();
            (matches!(r.admit(id, s, &limits), Admit::Yes), token)
        };
        let (_, user) = add(&mut r, "192.0.2.1", 0, true);
        let (_, a1) = add(&mut r, "192.0.2.9", 1, false);
        let (_, a2) = add(&mut r, "192.0.2.9", 2, false);
        let (_, b1) = add(&mut r, "198.51.100.7", 3, false);
        // Full: a newcomer from elsewhere takes the oldest anonymous slot of 192.0.2.9.
        let (ok, _) = add(&mut r, "203.0.113.5", 5, false);
        assert!(ok);
        assert!(a1.is_cancelled() && !a2.is_cancelled() && !b1.is_cancelled());
        assert!(!user.is_cancelled(), "a logged-in session keeps its slot");
        assert_eq!(r.slots.len(), 4);
        let mut only_users = Registry::default();
        for i in 0..4 {
            let ip = format!("192.0.2.{}", 100 + i);
            let s = slot(&ip, t0, true);
            assert!(matches!(only_users.admit(100 + i, s, &limits), Admit::Yes));
        }
        assert!(
            matches!(
                only_users.admit(200, slot("192.0.2.200", t0, false), &limits),
                Admit::Busy
            ),
            "full of logged-in sessions: the newcomer is refused"
        );
        let mut per_ip = Registry::default();
        for i in 0..3 {
            let s = slot(&format!("2001:db8:1:1::{i}"), t0, false);
            assert!(matches!(per_ip.admit(300 + i, s, &limits), Admit::Yes));
        }
        assert!(
            matches!(
                per_ip.admit(400, slot("2001:db8:1:1:ffff::1", t0, false), &limits),
                Admit::Busy
            ),
            "one /64 is one address"
        );
    }
}
