//! The SMTP intake (RFC 5321 ESMTP with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES, STARTTLS): mail for this node's user — e.g. a copy forwarded by the
//! legacy mail server — goes into INBOX. The only module that imports smtp-proto.
//!
//! The reply to DATA is 250 only after the message is durably in the store (the engine's
//! append commits with fsync). Recipients that are not local are refused (5.1.1); delivery to
//! other overlay users and submission with AUTH come with the mail-flow issue.

mod session;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::mailbox::Mailbox;
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
}

/// Serves the intake on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ctx: Context,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(ctx);
    server::serve(
        "smtp",
        listener,
        None,
        limits,
        shutdown,
        move |stream, peer, token| {
            let ctx = Arc::clone(&ctx);
            async move { session::run(stream, peer, ctx, token).await }
        },
    )
    .await;
}
