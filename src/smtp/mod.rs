//! The SMTP servers (RFC 5321 ESMTP with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES, STARTTLS), one session loop in two [`Mode`]s. The only module that
//! imports smtp-proto.
//!
//! - **Intake**: mail for this node's user — e.g. a copy forwarded by the legacy mail server —
//!   goes into INBOX. Recipients that are not local are refused (5.1.1): the intake stays
//!   local-only, so it is never an open relay (other overlay users are reached through
//!   submission).
//! - **Submission** (RFC 6409): AUTH PLAIN / LOGIN (RFC 4954) against the user's password,
//!   throttled per client address, and offered only over TLS or on loopback; MAIL FROM must
//!   be the user's own address; any recipient; the message goes to `delivery` (a copy into
//!   Sent and the persistent outbound queue). Served with STARTTLS ([`serve`]) and over
//!   implicit TLS (RFC 8314, [`serve_implicit_tls`]): the same session after the handshake.
//!
//! Either way the reply to DATA is 250 only after the message is durably in the store.
//! DATA is streamed: past 1 MiB into an unlinked file in the spool directory (`spool.rs`), and
//! read back into memory once, under a budget shared by all sessions.
//! On the intake, DKIM/SPF/DMARC are checked before that when configured ([`auth_check`]).

pub mod auth_check;
mod session;
mod spool;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::mailbox::Mailbox;
use crate::server::auth::Authenticator;
use crate::server::{self, Limits};
use crate::tls::Acceptor;

/// What every SMTP session shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub mailbox: Mailbox,
    /// The local address(es) accepted as recipients (lower case).
    pub local: Vec<String>,
    /// The name this server gives in its greeting and Received headers.
    pub hostname: String,
    /// Largest message accepted (SIZE).
    pub max_message_size: u64,
    pub tls: Option<Acceptor>,
    pub mode: Mode,
    /// Where DATA past 1 MiB is spooled while it arrives (unlinked files); `None`: the
    /// system's temporary directory.
    pub spool: Option<std::path::PathBuf>,
}

/// What a listener is for.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Mail for the local user, no authentication; `verify`: DKIM/SPF/DMARC checks
    /// (`[smtp] verify`), `None` when off. Submission has no such field: authenticated
    /// mail is never checked this way.
    Intake {
        verify: Option<Arc<auth_check::Verifier>>,
    },
    /// Mail from the local user to anyone, after AUTH.
    Submission {
        auth: Arc<Authenticator>,
        delivery: Delivery,
    },
}

/// Serves `ctx.mode` on `listener` until `shutdown`, STARTTLS offered when `ctx.tls` is set.
pub async fn serve(
    listener: TcpListener,
    ctx: Context,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let name = match ctx.mode {
        Mode::Intake { .. } => "smtp",
        Mode::Submission { .. } => "submission",
    };
    serve_as(name, listener, None, ctx, limits, shutdown).await;
}

/// Serves submission over implicit TLS (RFC 8314, "submissions", port 465's protocol) on
/// `listener` until `shutdown`: every connection starts with a TLS handshake with
/// `ctx.tls`, within `limits.handshake_timeout`, before the greeting, so AUTH is never
/// offered in the clear. The rules after the handshake are those of [`serve`]'s.
pub async fn serve_implicit_tls(
    listener: TcpListener,
    ctx: Context,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let Some(acceptor) = ctx.tls.clone() else {
        tracing::error!("submissions listener without a TLS certificate: not serving");
        return;
    };
    serve_as(
        "submissions",
        listener,
        Some(acceptor),
        ctx,
        limits,
        shutdown,
    )
    .await;
}

async fn serve_as(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Acceptor>,
    ctx: Context,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(ctx);
    server::serve(
        name,
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
