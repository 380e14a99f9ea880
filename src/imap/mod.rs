//! The IMAP server (RFC 3501 IMAP4rev1 and, after ENABLE, RFC 9051 IMAP4rev2; IDLE, UIDPLUS,
//! MOVE, LITERAL+, NAMESPACE, ID, ENABLE, UNSELECT, SPECIAL-USE, CHILDREN, STARTTLS,
//! CONDSTORE/QRESYNC (RFC 7162), WITHIN (RFC 5032), STATUS=SIZE (RFC 8438), ESEARCH (RFC
//! 4731), LIST-EXTENDED/LIST-STATUS (RFC 5258/5819), BINARY (RFC 3516), UTF8=ACCEPT (RFC
//! 6855), QUOTA (RFC 9208), APPENDLIMIT (RFC 7889), SORT/THREAD=ORDEREDSUBJECT (RFC 5256), COMPRESS=DEFLATE (RFC
//! 4978)) on
//! the mailbox engine. docs/design.md lists what Dovecot 2.3 offers beyond it.
//!
//! The only module that uses imap-codec (command parsing) and mail-parser (ENVELOPE,
//! BODYSTRUCTURE, sections, SEARCH). Responses are written by [`out`].
//!
//! * [`session`]: one task per connection: framing (lines into a bounded buffer, literals
//!   checked against the limit before a byte of them is read), the state machine
//!   NotAuthenticated → Authenticated → Selected → Logout, STARTTLS, IDLE.
//! * [`commands`]: one file per command group.
//! * [`extended`]: the command syntax imap-codec does not parse (SEARCH RETURN, RFC 5258
//!   LIST), read before it.
//! * A selected folder is a [`session::Selected`]: the session's own seq ↔ uid map, kept up to
//!   date from the engine's change feed (a lagging feed means re-list and diff), so commands do
//!   not re-list the folder.
//! * [`compress`]: COMPRESS=DEFLATE, between the session and the connection.
//! * [`mime`]: parsed messages, with a bounded cache of ENVELOPE/BODYSTRUCTURE by object id
//!   (content-addressed, so never stale).
//! * [`seen`]: `\Seen` set by FETCH, committed in groups across sessions.
//! * [`recent`]: `\Recent` claimed by one session (RFC 3501 §2.3.2).

mod commands;
mod compress;
mod extended;
mod mime;
mod out;
mod recent;
mod seen;
mod session;
mod utf7;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::mailbox::Mailbox;
use crate::server::auth::Authenticator;
use crate::server::{self, Limits};
use crate::tls::Acceptor;

/// Largest literal accepted (an APPENDed message, a long search string).
pub const DEFAULT_MAX_LITERAL: u32 = 50 * 1024 * 1024;

/// What every IMAP session shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub mailbox: Mailbox,
    pub auth: Arc<Authenticator>,
    /// For STARTTLS (and implicit TLS).
    pub tls: Option<Acceptor>,
    /// Largest literal (and so message) accepted.
    pub max_literal: u32,
    /// Rendered ENVELOPE and BODYSTRUCTURE by message object.
    pub(crate) cache: Arc<mime::Cache>,
    /// `\Seen` by FETCH, committed in groups.
    pub(crate) seen: Arc<seen::Seen>,
    /// Which session a `\Recent` message belongs to.
    pub(crate) recent: Arc<recent::Claims>,
}

impl Context {
    pub fn new(mailbox: Mailbox, auth: Arc<Authenticator>, tls: Option<Acceptor>) -> Context {
        Context {
            mailbox,
            auth,
            tls,
            max_literal: DEFAULT_MAX_LITERAL,
            cache: Arc::new(mime::Cache::default()),
            seen: Arc::new(seen::Seen::default()),
            recent: Arc::new(recent::Claims::default()),
        }
    }
}

/// Entry points for the fuzz targets (fuzz/): not an API.
#[doc(hidden)]
pub mod fuzz {
    use crate::crypto::ObjectId;

    /// What FETCH renders of a stored message: ENVELOPE, BODY, BODYSTRUCTURE (through the
    /// cache), a few part paths with their bytes, and the header fields SEARCH and
    /// BODY[HEADER.FIELDS] read.
    pub fn message(raw: &[u8]) {
        let cache = super::mime::Cache::default();
        let r = cache.get_or_render(ObjectId::of(raw), raw);
        debug_assert!(!r.bodystructure.is_empty());
        if let Some(m) = super::mime::parse(raw) {
            for path in [&[][..], &[1], &[2], &[1, 1], &[1, 2, 1], &[3, 1, 1, 1]] {
                if let Some(super::mime::Target::Part(p, bytes)) = super::mime::resolve(&m, path) {
                    let _ = super::mime::part_bytes(p, bytes);
                }
            }
        }
        let h = super::mime::header_len(raw);
        let header = raw.get(..h).unwrap_or(raw);
        for (name, value) in super::mime::fields(header) {
            let _ = (name, super::mime::field_value(value));
        }
        let names = [b"subject".to_vec(), b"from".to_vec()];
        let _ = super::mime::header_fields(header, &names, false);
        let _ = super::mime::header_fields(header, &names, true);
    }
}

/// Serves IMAP on `listener` until `shutdown`. With `implicit_tls`, connections start with a
/// TLS handshake (IMAPS, port 993's protocol).
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
        "imap",
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
