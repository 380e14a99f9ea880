//! The mail side of a node: the mailbox engine, the POP3, IMAP and SMTP listeners, and
//! delivery (issue #7).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Error, NodeConfig};
use crate::crypto::UserKeys;
use crate::delivery::{self, Delivery};
use crate::mailbox::Mailbox;
use crate::overlay;
use crate::server::Limits;
use crate::server::auth::{Authenticator, HashSource};
use crate::store::Store;
use crate::{imap, pop3, smtp, tls};

/// The mail servers a node runs on its mailbox (each `None` is off).
pub struct MailConfig {
    pub pop3: Option<SocketAddr>,
    pub pop3s: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub imaps: Option<SocketAddr>,
    pub smtp: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The current password hash (re-read at each login).
    pub password: HashSource,
    pub max_message_size: u64,
    /// The name in SMTP greetings and Received headers.
    pub hostname: String,
    // --- mail flow (issue #7) ---
    /// The SMTP submission listener (AUTH, any recipient), if wanted.
    pub submission: Option<SocketAddr>,
    /// The same over implicit TLS (RFC 8314), if wanted.
    pub submissions: Option<SocketAddr>,
    /// Delivery's timings and smarthost (its address and hostname are the node's).
    pub delivery: delivery::Config,
    /// DKIM/SPF/DMARC checks on the SMTP intake (`[smtp] verify`); `None`: off.
    pub verify: Option<smtp::auth_check::Settings>,
    /// `[smtp] dns_records`: the `_peerpost` TXT answers of address ownership come from this
    /// file only (`None`: the system resolver), as the intake's checks do.
    pub dns_records: Option<PathBuf>,
    // --- hostile clients (issue #18) ---
    /// Where SMTP DATA past 1 MiB is spooled while it arrives; `None`: the temp directory.
    pub spool: Option<PathBuf>,
    /// Of each listener: sessions, per address, deadlines.
    pub limits: Limits,
}

/// Opens the mailbox engine on the node's store and starts the configured mail servers;
/// returns the engine and the bound addresses.
pub(super) async fn start_mail(
    mail: &MailConfig,
    config: &NodeConfig,
    store: &Store,
    client: &overlay::Client,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(Mailbox, Vec<(&'static str, SocketAddr)>, Delivery), Error> {
    let keys = UserKeys::from_seed(*config.user_keys.seed());
    let mailbox = Mailbox::open(store.clone(), keys, config.device_public).await?;
    let acceptor = tls::Acceptor::load(&mail.tls_cert, &mail.tls_key)?;
    let auth = Arc::new(Authenticator::new(
        &config.address,
        Arc::clone(&mail.password),
    ));
    let bind = |what: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { what, addr, source })
    };
    let mut bound = Vec::new();
    let pop3_ctx = pop3::Context {
        mailbox: mailbox.clone(),
        auth: Arc::clone(&auth),
        tls: Some(acceptor.clone()),
    };
    for (what, addr, implicit) in [("pop3", mail.pop3, false), ("pop3s", mail.pop3s, true)] {
        if let Some(addr) = addr {
            let l = bind(what, addr).await?;
            bound.push((what, l.local_addr().unwrap_or(addr)));
            tasks.spawn(
                pop3::serve(
                    l,
                    pop3_ctx.clone(),
                    implicit,
                    mail.limits.clone(),
                    cancel.clone(),
                )
                .in_current_span(),
            );
        }
    }
    // IMAP (STARTTLS) and IMAPS.
    let mut imap_ctx = imap::Context::new(
        mailbox.clone(),
        Arc::clone(&pop3_ctx.auth),
        Some(acceptor.clone()),
    );
    // The node's message size limit is IMAP's too (APPEND literals, APPENDLIMIT).
    imap_ctx.max_literal = u32::try_from(mail.max_message_size).unwrap_or(u32::MAX);
    for (what, addr, implicit) in [("imap", mail.imap, false), ("imaps", mail.imaps, true)] {
        if let Some(addr) = addr {
            let l = bind(what, addr).await?;
            bound.push((what, l.local_addr().unwrap_or(addr)));
            tasks.spawn(
                imap::serve(
                    l,
                    imap_ctx.clone(),
                    implicit,
                    mail.limits.clone(),
                    cancel.clone(),
                )
                .in_current_span(),
            );
        }
    }
    if let Some(addr) = mail.smtp {
        // The records file is read (and refused with its line number) before we listen.
        let verify = match &mail.verify {
            Some(s) => Some(Arc::new(smtp::auth_check::Verifier::new(
                s,
                &mail.hostname,
            )?)),
            None => None,
        };
        let l = bind("smtp", addr).await?;
        bound.push(("smtp", l.local_addr().unwrap_or(addr)));
        let ctx = smtp::Context {
            mailbox: mailbox.clone(),
            local: vec![config.address.to_lowercase()],
            hostname: mail.hostname.clone(),
            max_message_size: mail.max_message_size,
            tls: Some(acceptor.clone()),
            mode: smtp::Mode::Intake { verify },
            spool: mail.spool.clone(),
        };
        tasks.spawn(smtp::serve(l, ctx, mail.limits.clone(), cancel.clone()).in_current_span());
    }
    // --- mail flow (issue #7): delivery and the submission listener ---
    let mut dc = mail.delivery.clone();
    dc.address = config.address.to_lowercase();
    dc.hostname = mail.hostname.clone();
    // Address ownership (issue #18): who vouches for a recipient's or sender's key.
    let ownership = Arc::new(smtp::auth_check::OwnershipDns::new(
        mail.dns_records.as_deref(),
    )?);
    dc.vouches = Some(delivery::ownership::Vouches(Arc::new(
        move |domain: String| {
            let dns = Arc::clone(&ownership);
            Box::pin(async move { dns.peerpost_txt(&domain).await })
        },
    )));
    dc.ring_authority = config.overlay.ring_authority;
    let delivery = Delivery::new(
        dc,
        UserKeys::from_seed(*config.user_keys.seed()),
        client.clone(),
        store.clone(),
        mailbox.clone(),
    );
    let submission_ctx = smtp::Context {
        mailbox: mailbox.clone(),
        local: vec![config.address.to_lowercase()],
        hostname: mail.hostname.clone(),
        max_message_size: mail.max_message_size,
        tls: Some(acceptor),
        mode: smtp::Mode::Submission {
            auth,
            delivery: delivery.clone(),
        },
        spool: mail.spool.clone(),
    };
    if let Some(addr) = mail.submission {
        let l = bind("submission", addr).await?;
        bound.push(("submission", l.local_addr().unwrap_or(addr)));
        let serving = smtp::serve(
            l,
            submission_ctx.clone(),
            mail.limits.clone(),
            cancel.clone(),
        );
        tasks.spawn(serving.in_current_span());
    }
    if let Some(addr) = mail.submissions {
        let l = bind("submissions", addr).await?;
        bound.push(("submissions", l.local_addr().unwrap_or(addr)));
        let serving =
            smtp::serve_implicit_tls(l, submission_ctx, mail.limits.clone(), cancel.clone());
        tasks.spawn(serving.in_current_span());
    }
    // Mail written by other processes of this device (import, sync) shows up within a second.
    let (mb, token) = (mailbox.clone(), cancel.clone());
    tasks.spawn(
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = mb.refresh().await {
                            tracing::warn!(error = %e, "mailbox refresh failed");
                        }
                    }
                }
            }
        }
        .in_current_span(),
    );
    Ok((mailbox, bound, delivery))
}
