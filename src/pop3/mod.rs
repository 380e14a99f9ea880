//! The POP3 server (RFC 1939 with CAPA, UIDL, TOP, STLS; RFC 2449 response codes) on the
//! user's INBOX.
//!
//! A session is AUTHORIZATION → TRANSACTION → UPDATE: after PASS it snapshots INBOX (message
//! numbers are stable for the session), DELE marks, RSET unmarks, and only QUIT expunges.
//! UIDL is `<uidvalidity>.<uid>`, stable across sessions. On a non-loopback connection USER
//! and PASS are refused until STLS (or implicit TLS). Lines are bounded, reads time out
//! (shorter before login), and failed logins are throttled per address.

pub mod codec;
mod session;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::mailbox::Mailbox;
use crate::server::auth::Authenticator;
use crate::server::{self, Limits};
use crate::tls::Acceptor;

/// What every POP3 session shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub mailbox: Mailbox,
    pub auth: Arc<Authenticator>,
    /// For STLS (and implicit TLS).
    pub tls: Option<Acceptor>,
}

/// Serves POP3 on `listener` until `shutdown`. With `implicit_tls`, connections start with a
/// TLS handshake (POP3S, port 995's protocol).
pub async fn serve(
    listener: TcpListener,
    ctx: Context,
    implicit_tls: bool,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let tls = if implicit_tls { ctx.tls.clone() } else { None };
    let ctx = Arc::new(ctx);
    server::serve(
        "pop3",
        listener,
        tls,
        limits,
        shutdown,
        move |stream, peer, token| {
            let ctx = Arc::clone(&ctx);
            async move { session::run(stream, peer, ctx, token).await }
        },
    )
    .await;
}
