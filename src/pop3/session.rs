//! One POP3 connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::Context;
use super::codec::{self, Command, MAX_LINE};
use crate::mailbox::EntryId;
use crate::server::Peer;
use crate::server::auth::Outcome;
use crate::tls::SessionStream;

const TIMEOUT_BEFORE_LOGIN: Duration = Duration::from_secs(60);
/// RFC 1939: an autologout timer of at least 10 minutes.
const TIMEOUT_AFTER_LOGIN: Duration = Duration::from_secs(600);
/// A client that keeps sending garbage is dropped.
const MAX_ERRORS: u32 = 20;

struct Msg {
    entry: EntryId,
    uid: u32,
    size: u64,
    deleted: bool,
}

enum State {
    Authorization { user: Option<String> },
    Transaction { msgs: Vec<Msg>, uidvalidity: u32 },
}

enum Read {
    Line(Vec<u8>),
    TooLong,
    Closed,
    TimedOut,
    Shutdown,
}

struct Conn {
    io: BufReader<SessionStream>,
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.get_mut().write_all(bytes).await?;
        self.io.get_mut().flush().await
    }

    async fn line(&mut self, s: &str) -> std::io::Result<()> {
        self.send(format!("{s}\r\n").as_bytes()).await
    }

    async fn read(&mut self, timeout: Duration, shutdown: &CancellationToken) -> Read {
        let mut buf = Vec::new();
        let fut = async {
            loop {
                let chunk = match self.io.fill_buf().await {
                    Ok(c) => c,
                    Err(_) => return Read::Closed,
                };
                if chunk.is_empty() {
                    return Read::Closed;
                }
                match chunk.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        let take = i + 1;
                        if buf.len() + take <= MAX_LINE + 2 {
                            buf.extend_from_slice(&chunk[..take]);
                            self.io.consume(take);
                            return Read::Line(std::mem::take(&mut buf));
                        }
                        self.io.consume(take);
                        return Read::TooLong;
                    }
                    None => {
                        let n = chunk.len();
                        if buf.len() + n <= MAX_LINE + 2 {
                            buf.extend_from_slice(chunk);
                        } else {
                            // Keep discarding until the end of the line, without storing it.
                            buf.clear();
                            buf.resize(MAX_LINE + 3, 0);
                        }
                        self.io.consume(n);
                    }
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => Read::Shutdown,
            r = tokio::time::timeout(timeout, fut) => r.unwrap_or(Read::TimedOut),
        }
    }
}

pub(super) async fn run(
    stream: SessionStream,
    peer: Peer,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let conn = Conn {
        io: BufReader::new(stream),
    };
    if let Err(e) = session(conn, &peer, &ctx, &shutdown).await {
        tracing::debug!(error = %e, "session ended by an I/O error");
    }
}

async fn session(
    mut conn: Conn,
    peer: &Peer,
    ctx: &Context,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    conn.line("+OK peerpost POP3 ready").await?;
    let mut state = State::Authorization { user: None };
    let mut errors = 0u32;
    loop {
        let timeout = match state {
            State::Authorization { .. } => TIMEOUT_BEFORE_LOGIN,
            State::Transaction { .. } => TIMEOUT_AFTER_LOGIN,
        };
        let line = match conn.read(timeout, shutdown).await {
            Read::Line(l) => l,
            Read::TooLong => {
                errors += 1;
                conn.line("-ERR line too long").await?;
                if errors > MAX_ERRORS {
                    return conn.line("-ERR too many errors, closing").await;
                }
                continue;
            }
            Read::Closed => return Ok(()),
            Read::TimedOut => return conn.line("-ERR autologout: idle too long").await,
            Read::Shutdown => return conn.line("-ERR server shutting down").await,
        };
        let cmd = match codec::parse(&line) {
            Ok(c) => {
                crate::metrics::get().command("pop3", c.name());
                c
            }
            Err(e) => {
                crate::metrics::get().command("pop3", "invalid");
                errors += 1;
                conn.line(&format!("-ERR {e}")).await?;
                if errors > MAX_ERRORS {
                    return conn.line("-ERR too many errors, closing").await;
                }
                continue;
            }
        };
        let tls = conn.io.get_ref().is_tls();
        match (&mut state, cmd) {
            (_, Command::Capa) => {
                let mut caps = String::from(
                    "+OK capabilities follow\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n",
                );
                if matches!(state, State::Authorization { .. }) {
                    if tls || peer.is_loopback() {
                        caps.push_str("USER\r\n");
                    }
                    if !tls && ctx.tls.is_some() {
                        caps.push_str("STLS\r\n");
                    }
                }
                caps.push_str("IMPLEMENTATION peerpost\r\n.\r\n");
                conn.send(caps.as_bytes()).await?;
            }
            (_, Command::Noop) => conn.line("+OK").await?,
            (State::Authorization { .. }, Command::Quit) => return conn.line("+OK bye").await,
            (State::Authorization { .. }, Command::Stls) => {
                let Some(acceptor) = ctx.tls.clone() else {
                    conn.line("-ERR TLS is not configured").await?;
                    continue;
                };
                if tls {
                    conn.line("-ERR already using TLS").await?;
                    continue;
                }
                if !conn.io.buffer().is_empty() {
                    // Commands pipelined behind STLS would be read in plaintext: refuse.
                    return conn.line("-ERR data after STLS; closing").await;
                }
                conn.line("+OK begin TLS negotiation").await?;
                conn = Conn {
                    io: BufReader::new(conn.io.into_inner().upgrade(&acceptor).await?),
                };
                state = State::Authorization { user: None };
            }
            (State::Authorization { user }, Command::User(name)) => {
                if !tls && !peer.is_loopback() {
                    conn.line("-ERR [AUTH] TLS required: use STLS first")
                        .await?;
                    continue;
                }
                *user = Some(name);
                conn.line("+OK send PASS").await?;
            }
            (State::Authorization { user }, Command::Pass(pass)) => {
                if !tls && !peer.is_loopback() {
                    conn.line("-ERR [AUTH] TLS required: use STLS first")
                        .await?;
                    continue;
                }
                let Some(name) = user.take() else {
                    conn.line("-ERR USER first").await?;
                    continue;
                };
                match ctx.auth.check(peer.addr.ip(), &name, &pass).await {
                    Outcome::Ok => {
                        peer.set_logged_in();
                        if let Err(e) = ctx.mailbox.refresh().await {
                            tracing::warn!(error = %e, "refresh before POP3 login");
                        }
                        let uidvalidity = ctx.mailbox.folder("INBOX").map_or(0, |f| f.uidvalidity);
                        let msgs: Vec<Msg> = ctx
                            .mailbox
                            .messages("INBOX")
                            .unwrap_or_default()
                            .into_iter()
                            .map(|m| Msg {
                                entry: m.entry,
                                uid: m.uid,
                                size: m.size,
                                deleted: false,
                            })
                            .collect();
                        conn.line(&format!("+OK {} messages", msgs.len())).await?;
                        state = State::Transaction { msgs, uidvalidity };
                    }
                    Outcome::Denied => {
                        conn.line("-ERR [AUTH] invalid user name or password")
                            .await?
                    }
                    Outcome::Busy => {
                        conn.line("-ERR [SYS/TEMP] too many logins being checked; try again")
                            .await?
                    }
                    Outcome::Throttled => {
                        conn.line(
                            "-ERR [SYS/TEMP] too many failed logins from your address; try later",
                        )
                        .await?
                    }
                }
            }
            (State::Authorization { .. }, _) => conn.line("-ERR log in first (USER, PASS)").await?,
            (State::Transaction { .. }, Command::User(_) | Command::Pass(_) | Command::Stls) => {
                conn.line("-ERR already logged in").await?
            }
            (State::Transaction { msgs, .. }, Command::Stat) => {
                let live = msgs.iter().filter(|m| !m.deleted);
                let (n, size) = live.fold((0, 0u64), |(n, s), m| (n + 1, s + m.size));
                conn.line(&format!("+OK {n} {size}")).await?;
            }
            (State::Transaction { msgs, .. }, Command::List(None)) => {
                let mut out = format!(
                    "+OK {} messages\r\n",
                    msgs.iter().filter(|m| !m.deleted).count()
                );
                for (i, m) in msgs.iter().enumerate().filter(|(_, m)| !m.deleted) {
                    out.push_str(&format!("{} {}\r\n", i + 1, m.size));
                }
                out.push_str(".\r\n");
                conn.send(out.as_bytes()).await?;
            }
            (State::Transaction { msgs, uidvalidity }, Command::Uidl(None)) => {
                let mut out = String::from("+OK\r\n");
                for (i, m) in msgs.iter().enumerate().filter(|(_, m)| !m.deleted) {
                    out.push_str(&format!("{} {}.{}\r\n", i + 1, uidvalidity, m.uid));
                }
                out.push_str(".\r\n");
                conn.send(out.as_bytes()).await?;
            }
            (State::Transaction { msgs, uidvalidity }, cmd) => {
                let n = match &cmd {
                    Command::List(Some(n))
                    | Command::Uidl(Some(n))
                    | Command::Retr(n)
                    | Command::Dele(n)
                    | Command::Top(n, _) => Some(*n),
                    _ => None,
                };
                let target = n
                    .and_then(|n| msgs.get_mut(n as usize - 1))
                    .filter(|m| !m.deleted);
                match (cmd, target) {
                    (Command::Rset, _) => {
                        msgs.iter_mut().for_each(|m| m.deleted = false);
                        conn.line(&format!("+OK {} messages", msgs.len())).await?;
                    }
                    (Command::Quit, _) => {
                        let doomed: Vec<EntryId> =
                            msgs.iter().filter(|m| m.deleted).map(|m| m.entry).collect();
                        if doomed.is_empty() {
                            return conn.line("+OK bye").await;
                        }
                        // Some may be gone already (another client); expunge what is left.
                        let live: Vec<EntryId> = {
                            let now: std::collections::HashSet<EntryId> = ctx
                                .mailbox
                                .messages("INBOX")
                                .unwrap_or_default()
                                .into_iter()
                                .map(|m| m.entry)
                                .collect();
                            doomed.iter().copied().filter(|e| now.contains(e)).collect()
                        };
                        return match ctx.mailbox.expunge("INBOX", &live).await {
                            Ok(()) => {
                                conn.line(&format!("+OK bye, {} deleted", doomed.len()))
                                    .await
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "POP3 expunge failed");
                                conn.line("-ERR [SYS/TEMP] some deleted messages were not removed")
                                    .await
                            }
                        };
                    }
                    (_, None) => conn.line("-ERR no such message").await?,
                    (Command::List(Some(n)), Some(m)) => {
                        conn.line(&format!("+OK {n} {}", m.size)).await?
                    }
                    (Command::Uidl(Some(n)), Some(m)) => {
                        conn.line(&format!("+OK {n} {uidvalidity}.{}", m.uid))
                            .await?
                    }
                    (Command::Dele(n), Some(m)) => {
                        m.deleted = true;
                        conn.line(&format!("+OK message {n} deleted")).await?;
                    }
                    (Command::Retr(_), Some(m)) => {
                        retr(&mut conn, ctx, m.entry, m.size, None).await?
                    }
                    (Command::Top(_, lines), Some(m)) => {
                        retr(&mut conn, ctx, m.entry, m.size, Some(lines)).await?
                    }
                    (_, Some(_)) => conn.line("-ERR unexpected command").await?,
                }
            }
        }
    }
}

async fn retr(
    conn: &mut Conn,
    ctx: &Context,
    entry: EntryId,
    size: u64,
    lines: Option<u32>,
) -> std::io::Result<()> {
    match ctx.mailbox.read(entry).await {
        Ok(bytes) => {
            conn.line(&format!("+OK {size} octets")).await?;
            conn.send(&codec::multiline(&bytes, lines)).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "POP3 read failed");
            conn.line("-ERR [SYS/TEMP] the message cannot be read now")
                .await
        }
    }
}
