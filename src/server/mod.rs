//! The listener layer shared by the POP3, IMAP and SMTP servers: a bounded number of
//! concurrent sessions, backoff when `accept` fails (e.g. out of file descriptors), implicit
//! TLS, one tracing span per session, and graceful shutdown (sessions see the cancellation
//! and say goodbye in their protocol).
//!
//! [`auth`] checks the password and throttles guessing.

pub mod auth;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::tls::{Acceptor, SessionStream};

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent sessions; further clients wait in the kernel's backlog.
    pub max_sessions: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 256,
            handshake_timeout: Duration::from_secs(15),
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
}

impl Peer {
    /// Plaintext passwords are accepted only where they cannot be sniffed.
    pub fn is_loopback(&self) -> bool {
        self.local.ip().is_loopback() && self.addr.ip().is_loopback()
    }
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// Accepts connections until `shutdown`, running `handle` for each in its own task, at most
/// `limits.max_sessions` at a time. With `tls`, every connection is TLS from the first byte
/// (IMAPS, POP3S). Returns when every session has ended.
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
    let permits = Arc::new(Semaphore::new(limits.max_sessions));
    let local = listener.local_addr().ok();
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
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
        let peer = Peer {
            addr,
            local: local.unwrap_or(addr),
            session,
        };
        let span = tracing::info_span!("session", %protocol, session, peer = %addr);
        let handle = Arc::clone(&handle);
        let tls = tls.clone();
        let token = shutdown.child_token();
        let timeout = limits.handshake_timeout;
        tasks.spawn(
            async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                let stream = match tls {
                    None => SessionStream::Plain(tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                tracing::debug!("connected");
                handle(stream, peer, token).await;
                tracing::debug!("closed");
            }
            .instrument(span),
        );
    }
    // Sessions got the cancellation through their child tokens; wait for their goodbyes.
    while tasks.join_next().await.is_some() {}
}
