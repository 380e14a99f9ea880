//! One SMTP connection.

use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING,
    EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS,
};
use smtp_proto::{EhloResponse, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::auth_check::{Verdict, strip_own_results_in};
use super::spool::Spool;
use super::{Context, Mode};
use crate::mailbox::{Flags, NewMessage};
use crate::server::Peer;
use crate::server::auth::Outcome;
use crate::tls::SessionStream;

/// RFC 5321 §4.5.3.2: at least 5 minutes per command; less while nobody has said hello.
const TIMEOUT_COMMAND: Duration = Duration::from_secs(300);
const TIMEOUT_DATA: Duration = Duration::from_secs(600);
const MAX_RECIPIENTS: usize = 100;
const MAX_ERRORS: u32 = 20;
const READ_CHUNK: usize = 16 * 1024;
/// Longest AUTH continuation line (base64 of a user name and password).
const MAX_AUTH_LINE: usize = 4096;

#[derive(Default)]
struct Envelope {
    helo: Option<String>,
    from: Option<String>,
    rcpts: Vec<String>,
}

struct Conn {
    io: SessionStream,
    buf: Vec<u8>,
}

enum Got {
    Data,
    Closed,
    TimedOut,
    Shutdown,
}

impl Conn {
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        self.io.write_all(text.as_bytes()).await?;
        self.io.flush().await
    }

    /// Reads more bytes into the buffer.
    async fn fill(&mut self, timeout: Duration, shutdown: &CancellationToken) -> Got {
        let mut chunk = vec![0u8; READ_CHUNK];
        tokio::select! {
            _ = shutdown.cancelled() => Got::Shutdown,
            r = tokio::time::timeout(timeout, self.io.read(&mut chunk)) => match r {
                Err(_) => Got::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => Got::Closed,
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    Got::Data
                }
            },
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
        io: stream,
        buf: Vec::new(),
    };
    if let Err(e) = session(conn, &peer, &ctx, &shutdown).await {
        tracing::debug!(error = %e, "SMTP session ended by an I/O error");
    }
}

fn code(e: &smtp_proto::Error) -> &'static str {
    match e {
        smtp_proto::Error::UnknownCommand => "500 5.5.1 Unknown command\r\n",
        smtp_proto::Error::InvalidSenderAddress => "501 5.1.7 Invalid sender address\r\n",
        smtp_proto::Error::InvalidRecipientAddress => "501 5.1.3 Invalid recipient address\r\n",
        smtp_proto::Error::ResponseTooLong => "500 5.5.2 Line too long\r\n",
        smtp_proto::Error::UnsupportedParameter { .. } => "555 5.5.4 Unsupported parameter\r\n",
        _ => "501 5.5.2 Syntax error\r\n",
    }
}

async fn session(
    mut conn: Conn,
    peer: &Peer,
    ctx: &Context,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    conn.reply(&format!("220 {} peerpost ESMTP ready\r\n", ctx.hostname))
        .await?;
    let mut receiver = RequestReceiver::default();
    let mut env = Envelope::default();
    let submission = matches!(ctx.mode, Mode::Submission { .. });
    // RFC 4954: the login holds until QUIT (or STARTTLS, which starts the session over).
    let mut authed = false;
    let mut errors = 0u32;
    let mut discarding = false;
    loop {
        if discarding {
            // The rest of an over-long line is not a command: drop it up to its end.
            match conn.buf.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    conn.buf.drain(..=i);
                    discarding = false;
                    receiver = RequestReceiver::default();
                }
                None => {
                    conn.buf.clear();
                    match conn.fill(TIMEOUT_COMMAND, shutdown).await {
                        Got::Data => continue,
                        Got::Closed => return Ok(()),
                        Got::TimedOut => {
                            return conn.reply("421 4.4.2 Idle too long, closing\r\n").await;
                        }
                        Got::Shutdown => {
                            return conn.reply("421 4.3.2 Server shutting down\r\n").await;
                        }
                    }
                }
            }
        }
        // Parse every complete command in the buffer (PIPELINING), then read more.
        let mut iter = conn.buf.iter();
        let parsed = receiver.ingest(&mut iter).map(|r| r.into_owned());
        let consumed = conn.buf.len() - iter.as_slice().len();
        conn.buf.drain(..consumed);
        let request = match parsed {
            Ok(r) => r,
            Err(smtp_proto::Error::NeedsMoreData { .. }) => {
                match conn.fill(TIMEOUT_COMMAND, shutdown).await {
                    Got::Data => continue,
                    Got::Closed => return Ok(()),
                    Got::TimedOut => {
                        return conn.reply("421 4.4.2 Idle too long, closing\r\n").await;
                    }
                    Got::Shutdown => return conn.reply("421 4.3.2 Server shutting down\r\n").await,
                }
            }
            Err(e) => {
                crate::metrics::get().command("smtp", "invalid");
                errors += 1;
                if matches!(e, smtp_proto::Error::ResponseTooLong) {
                    discarding = true;
                }
                conn.reply(code(&e)).await?;
                if errors > MAX_ERRORS {
                    return conn.reply("421 4.7.0 Too many errors, closing\r\n").await;
                }
                continue;
            }
        };
        crate::metrics::get().command("smtp", request.name());
        match request {
            Request::Ehlo { host } | Request::Lhlo { host } => {
                env = Envelope {
                    helo: Some(host),
                    ..Envelope::default()
                };
                let mut ehlo = EhloResponse::new(ctx.hostname.as_str());
                ehlo.capabilities = EXT_PIPELINING
                    | EXT_SIZE
                    | EXT_8BIT_MIME
                    | EXT_SMTP_UTF8
                    | EXT_ENHANCED_STATUS_CODES;
                if ctx.tls.is_some() && !conn.io.is_tls() {
                    ehlo.capabilities |= EXT_START_TLS;
                }
                if submission && !authed && (conn.io.is_tls() || peer.is_loopback()) {
                    ehlo.capabilities |= EXT_AUTH;
                    ehlo.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
                }
                ehlo.size = ctx.max_message_size as usize;
                let mut out = Vec::new();
                ehlo.write(&mut out)?;
                conn.io.write_all(&out).await?;
                conn.io.flush().await?;
            }
            Request::Helo { host } => {
                env = Envelope {
                    helo: Some(host),
                    ..Envelope::default()
                };
                conn.reply(&format!("250 {}\r\n", ctx.hostname)).await?;
            }
            Request::StartTls => {
                let Some(acceptor) = ctx.tls.clone() else {
                    conn.reply("454 4.7.0 TLS not available\r\n").await?;
                    continue;
                };
                if conn.io.is_tls() {
                    conn.reply("503 5.5.1 Already using TLS\r\n").await?;
                    continue;
                }
                if !conn.buf.is_empty() {
                    // Commands pipelined behind STARTTLS would cross the TLS boundary.
                    return conn
                        .reply("503 5.5.1 Data after STARTTLS, closing\r\n")
                        .await;
                }
                conn.reply("220 2.0.0 Ready to start TLS\r\n").await?;
                conn.io = conn.io.upgrade(&acceptor).await?;
                env = Envelope::default();
                authed = false;
                receiver = RequestReceiver::default();
            }
            Request::Mail { from } => {
                if env.helo.is_none() {
                    conn.reply("503 5.5.1 Say EHLO first\r\n").await?;
                } else if submission && !authed {
                    conn.reply("530 5.7.0 Authentication required\r\n").await?;
                } else if submission && !ctx.local.contains(&from.address.to_lowercase()) {
                    conn.reply("553 5.7.1 You may send only as your own address\r\n")
                        .await?;
                } else if env.from.is_some() {
                    conn.reply("503 5.5.1 Sender already given\r\n").await?;
                } else if from.size as u64 > ctx.max_message_size {
                    conn.reply(&format!(
                        "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                        ctx.max_message_size
                    ))
                    .await?;
                } else {
                    env.from = Some(from.address);
                    env.rcpts.clear();
                    conn.reply("250 2.1.0 Sender OK\r\n").await?;
                }
            }
            Request::Rcpt { to } => {
                let addr = to.address.to_lowercase();
                if env.from.is_none() {
                    conn.reply("503 5.5.1 MAIL FROM first\r\n").await?;
                } else if env.rcpts.len() >= MAX_RECIPIENTS {
                    conn.reply("452 4.5.3 Too many recipients\r\n").await?;
                } else if ctx.local.contains(&addr) || (submission && valid_address(&addr)) {
                    if !env.rcpts.contains(&addr) {
                        env.rcpts.push(addr);
                    }
                    conn.reply("250 2.1.5 Recipient OK\r\n").await?;
                } else if submission {
                    conn.reply("501 5.1.3 Invalid recipient address\r\n")
                        .await?;
                } else {
                    conn.reply("550 5.1.1 Not a local address of this node (relaying denied)\r\n")
                        .await?;
                }
            }
            Request::Data => {
                if env.from.is_none() || env.rcpts.is_empty() {
                    conn.reply("503 5.5.1 Need MAIL FROM and RCPT TO first\r\n")
                        .await?;
                    continue;
                }
                conn.reply("354 Start mail input; end with <CRLF>.<CRLF>\r\n")
                    .await?;
                let mut data_rx = DataReceiver::new();
                // Streamed: in memory up to 1 MiB, then to an unlinked file (issue #18).
                let mut spool = Spool::new(ctx.spool.as_deref());
                let mut too_big = false;
                let mut chunk = Vec::with_capacity(READ_CHUNK);
                loop {
                    let mut iter = conn.buf.iter();
                    chunk.clear();
                    let done = data_rx.ingest(&mut iter, &mut chunk);
                    let consumed = conn.buf.len() - iter.as_slice().len();
                    conn.buf.drain(..consumed);
                    if !too_big {
                        if (spool.len() + chunk.len()) as u64 > ctx.max_message_size {
                            too_big = true;
                            spool = Spool::new(None);
                        } else if let Err(e) = spool.write(&chunk).await {
                            tracing::warn!(error = %e, "cannot spool the message");
                            return conn
                                .reply("451 4.3.0 Cannot take the message now; closing\r\n")
                                .await;
                        }
                    }
                    if done {
                        break;
                    }
                    match conn.fill(TIMEOUT_DATA, shutdown).await {
                        Got::Data => {}
                        Got::Closed => return Ok(()), // nothing was acknowledged: nothing lost
                        Got::TimedOut => {
                            return conn.reply("421 4.4.2 Timeout during DATA\r\n").await;
                        }
                        Got::Shutdown => {
                            return conn.reply("421 4.3.2 Server shutting down\r\n").await;
                        }
                    }
                }
                let from = env.from.take().unwrap_or_default();
                let rcpts = std::mem::take(&mut env.rcpts);
                if too_big {
                    conn.reply(&format!(
                        "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                        ctx.max_message_size
                    ))
                    .await?;
                    continue;
                }
                if spool.is_empty() {
                    conn.reply("554 5.6.0 Empty message\r\n").await?;
                    continue;
                }
                let received = received_header(
                    ctx,
                    peer,
                    env.helo.as_deref().unwrap_or(""),
                    &from,
                    &rcpts,
                    conn.io.is_tls(),
                );
                let submitted = matches!(ctx.mode, Mode::Submission { .. });
                // Return-Path belongs to final delivery, not to submission.
                let trace = match received.split_once('\n') {
                    Some((_, rest)) if submitted => rest,
                    _ => received.as_str(),
                };
                // One copy of the message, made under the process-wide budget, with room for
                // an Authentication-Results field.
                let (mut bytes, _budget) = match spool.into_bytes(trace.as_bytes(), 1024).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the spooled message back");
                        conn.reply("451 4.3.0 Could not store the message; try again later\r\n")
                            .await?;
                        continue;
                    }
                };
                let start = trace.len();
                if let Mode::Intake { verify: None } = &ctx.mode {
                    // Our overlay deliveries put `Authentication-Results: HOST; peerpost=pass`
                    // on top: an outside sender must not bring a verdict under that name,
                    // checks or no checks (RFC 8601 §5).
                    strip_own_results_in(&mut bytes, start, &ctx.hostname);
                }
                if let Mode::Intake {
                    verify: Some(verifier),
                } = &ctx.mode
                {
                    // Checked before anything is stored; the 250 still waits for the store.
                    let helo = env.helo.as_deref().unwrap_or("");
                    match verifier
                        .check(&bytes[start..], peer.addr.ip(), helo, &from)
                        .await
                    {
                        Verdict::Accept { header } => {
                            strip_own_results_in(&mut bytes, start, verifier.authserv_id());
                            bytes.splice(start..start, header.into_bytes());
                        }
                        Verdict::Refuse(reply) => {
                            conn.reply(&reply).await?;
                            continue;
                        }
                    }
                }
                if let Mode::Submission { delivery, .. } = &ctx.mode {
                    match delivery.submit(&rcpts, bytes).await {
                        Ok(id) => conn.reply(&format!("250 2.0.0 Queued as {id}\r\n")).await?,
                        Err(crate::delivery::Error::QueueFull(_)) => {
                            conn.reply("452 4.3.1 Outbound queue full; try again later\r\n")
                                .await?
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "submission failed");
                            conn.reply("451 4.3.0 Could not queue the message; try again later\r\n")
                                .await?
                        }
                    }
                    continue;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let delivered = ctx
                    .mailbox
                    .append(
                        "INBOX",
                        NewMessage {
                            bytes,
                            internal_date: now,
                            flags: Flags::default(),
                            recent: true,
                            maildir_name: None,
                        },
                    )
                    .await;
                match delivered {
                    Ok(m) => {
                        conn.reply(&format!("250 2.0.0 Stored as UID {}\r\n", m.uid))
                            .await?
                    }
                    Err(crate::mailbox::Error::OverQuota { quota, needed, .. }) => {
                        // Permanent when the message alone exceeds the quota (RFC 3463 x.2.2).
                        conn.reply(if needed > quota {
                            "552 5.2.2 Mailbox full: the message exceeds the quota\r\n"
                        } else {
                            "452 4.2.2 Mailbox full; try again later\r\n"
                        })
                        .await?
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SMTP delivery failed");
                        conn.reply("451 4.3.0 Could not store the message; try again later\r\n")
                            .await?
                    }
                }
            }
            Request::Bdat { .. } => conn.reply("502 5.5.1 CHUNKING is not offered\r\n").await?,
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                let Mode::Submission { auth, .. } = &ctx.mode else {
                    conn.reply("502 5.5.1 AUTH is offered on the submission port only\r\n")
                        .await?;
                    continue;
                };
                if authed {
                    conn.reply("503 5.5.1 Already authenticated\r\n").await?;
                    continue;
                }
                if !conn.io.is_tls() && !peer.is_loopback() {
                    conn.reply("538 5.7.11 Encryption required: STARTTLS first\r\n")
                        .await?;
                    continue;
                }
                let creds = match sasl(&mut conn, mechanism, initial_response, shutdown).await? {
                    Sasl::Credentials(user, pass) => (user, pass),
                    Sasl::Reply(text) => {
                        errors += 1;
                        conn.reply(text).await?;
                        if errors > MAX_ERRORS {
                            return conn.reply("421 4.7.0 Too many errors, closing\r\n").await;
                        }
                        continue;
                    }
                    Sasl::Closed => return Ok(()),
                };
                match auth.check(peer.addr.ip(), &creds.0, &creds.1).await {
                    Outcome::Ok => {
                        authed = true;
                        peer.set_logged_in();
                        conn.reply("235 2.7.0 Authentication successful\r\n")
                            .await?;
                    }
                    Outcome::Denied => {
                        errors += 1;
                        conn.reply("535 5.7.8 Authentication credentials invalid\r\n")
                            .await?;
                    }
                    Outcome::Busy => {
                        conn.reply("454 4.7.0 Temporary authentication failure\r\n")
                            .await?;
                    }
                    Outcome::Throttled => {
                        return conn
                            .reply(
                                "421 4.7.0 Too many failed logins from your address; closing\r\n",
                            )
                            .await;
                    }
                }
            }
            Request::Rset => {
                env.from = None;
                env.rcpts.clear();
                conn.reply("250 2.0.0 OK\r\n").await?;
            }
            Request::Noop { .. } => conn.reply("250 2.0.0 OK\r\n").await?,
            Request::Vrfy { .. } => {
                conn.reply("252 2.5.2 Cannot verify; send it and see\r\n")
                    .await?
            }
            Request::Help { .. } => {
                conn.reply("214 2.0.0 peerpost intake: see RFC 5321\r\n")
                    .await?
            }
            Request::Quit => return conn.reply("221 2.0.0 Bye\r\n").await,
            _ => conn.reply("502 5.5.1 Command not implemented\r\n").await?,
        }
    }
}

enum Sasl {
    Credentials(String, String),
    /// The exchange failed: answer this.
    Reply(&'static str),
    Closed,
}

/// Runs the SASL exchange of AUTH PLAIN or LOGIN (RFC 4616, draft-murchison-sasl-login).
async fn sasl(
    conn: &mut Conn,
    mechanism: u64,
    initial: String,
    shutdown: &CancellationToken,
) -> std::io::Result<Sasl> {
    let next = async |conn: &mut Conn, prompt: &str| -> std::io::Result<Option<Vec<u8>>> {
        conn.reply(prompt).await?;
        let Some(line) = read_line(conn, shutdown).await else {
            return Ok(None);
        };
        Ok(Some(line))
    };
    let decode = |b: &[u8]| -> Option<String> {
        let t = std::str::from_utf8(b).ok()?.trim();
        if t == "*" {
            return None;
        }
        String::from_utf8(base64_decode(t)?).ok()
    };
    const BAD: &str = "501 5.5.2 Cannot decode the response\r\n";
    if mechanism == AUTH_PLAIN {
        let resp = if initial.is_empty() || initial == "=" {
            match next(conn, "334 \r\n").await? {
                Some(l) => l,
                None => return Ok(Sasl::Closed),
            }
        } else {
            initial.into_bytes()
        };
        let Some(text) = decode(&resp) else {
            return Ok(Sasl::Reply(BAD));
        };
        // authzid NUL authcid NUL passwd
        let mut parts = text.split('\0');
        let (Some(authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(Sasl::Reply(BAD));
        };
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(user) {
            return Ok(Sasl::Reply("535 5.7.8 Cannot act for another user\r\n"));
        }
        Ok(Sasl::Credentials(user.to_string(), pass.to_string()))
    } else if mechanism == AUTH_LOGIN {
        let user = if initial.is_empty() {
            match next(conn, "334 VXNlcm5hbWU6\r\n").await? {
                Some(l) => l,
                None => return Ok(Sasl::Closed),
            }
        } else {
            initial.into_bytes()
        };
        let Some(user) = decode(&user) else {
            return Ok(Sasl::Reply(BAD));
        };
        let Some(pass) = next(conn, "334 UGFzc3dvcmQ6\r\n").await? else {
            return Ok(Sasl::Closed);
        };
        let Some(pass) = decode(&pass) else {
            return Ok(Sasl::Reply(BAD));
        };
        Ok(Sasl::Credentials(user, pass))
    } else {
        Ok(Sasl::Reply("504 5.5.4 Mechanism not supported\r\n"))
    }
}

/// One line from the client (without its end), at most [`MAX_AUTH_LINE`] bytes; `None` when
/// the client goes away, stalls, or sends more.
async fn read_line(conn: &mut Conn, shutdown: &CancellationToken) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = conn.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = conn.buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(line);
        }
        if conn.buf.len() > MAX_AUTH_LINE {
            return None;
        }
        match conn.fill(TIMEOUT_COMMAND, shutdown).await {
            Got::Data => {}
            _ => return None,
        }
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
            3 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]),
            2 => out.push((n >> 16) as u8),
            _ => return None,
        }
    }
    Some(out)
}

fn valid_address(a: &str) -> bool {
    crate::crypto::record::normalize_address(a).is_ok()
}

/// RFC 5321 §4.4 trace header.
fn received_header(
    ctx: &Context,
    peer: &Peer,
    helo: &str,
    from: &str,
    rcpts: &[String],
    tls: bool,
) -> String {
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(200).collect() };
    let date = crate::date::rfc5322(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    // Final delivery: the envelope sender as Return-Path (RFC 5321 §4.4), then the trace.
    format!(
        "Return-Path: <{}>\r\nReceived: from {} ([{}])\r\n\tby {} (peerpost) with {} id {}\r\n\tfor <{}>; {}\r\n",
        clean(from),
        clean(helo),
        peer.addr.ip(),
        ctx.hostname,
        if tls { "ESMTPS" } else { "ESMTP" },
        peer.session,
        clean(rcpts.first().map(String::as_str).unwrap_or("")),
        date
    )
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64() {
        assert_eq!(
            base64_decode("AGFsaWNlAHNlY3JldA==").as_deref(),
            Some(&b"\0alice\0secret"[..])
        );
        assert_eq!(
            base64_decode("VXNlcm5hbWU6").as_deref(),
            Some(&b"Username:"[..])
        );
        assert_eq!(base64_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("!!!!").is_none());
    }
}
