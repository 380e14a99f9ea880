//! One IMAP connection: framing, states, STARTTLS, IDLE, and the selected folder's view.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use imap_codec::decode::{CommandDecodeError, Decoder, IdleDoneDecodeError};
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::Command;
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::{CommandCodec, IdleDoneCodec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::commands;
use super::compress;
use super::extended::{self, ListExt, Pre, SearchReturn};
use crate::mailbox::{Change, EntryId, Flags, FolderId};
use crate::server::Peer;
use crate::tls::SessionStream;

/// Longest command line (without literals).
pub const MAX_LINE: usize = 64 * 1024;
/// Largest literal before login (a user name or password; issue #18): anyone can connect, so
/// what they can make the node hold stays small.
pub const MAX_LITERAL_BEFORE_LOGIN: u32 = 8 * 1024;
/// A literal's buffer grows as its bytes arrive, from at most this much reserved up front.
const LITERAL_RESERVE: usize = 64 * 1024;
const TIMEOUT_BEFORE_LOGIN: Duration = Duration::from_secs(60);
/// RFC 3501: an autologout timer of at least 30 minutes.
const TIMEOUT_AFTER_LOGIN: Duration = Duration::from_secs(30 * 60);
/// A client that keeps sending garbage is dropped.
const MAX_ERRORS: u32 = 50;
/// Output is sent once this much is buffered, even in the middle of a command.
const FLUSH_AT: usize = 256 * 1024;

pub(super) enum Read {
    Line,
    TooLong,
    Closed,
    TimedOut,
    Shutdown,
}

pub(super) struct Conn {
    pub io: BufReader<compress::Stream>,
    pub out: Vec<u8>,
}

impl Conn {
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.get_mut().write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.get_mut().flush().await
    }

    /// Flushes when much output has piled up (large FETCHes).
    pub async fn flush_if_big(&mut self) -> std::io::Result<()> {
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    pub fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Appends one line (with its LF) to `buf`, at most `max` bytes of it; a longer line is
    /// read to its end and discarded. Cancel-safe: what was consumed is in `buf`.
    pub async fn read_line(&mut self, buf: &mut Vec<u8>, max: usize, too_long: &mut bool) -> Read {
        loop {
            let chunk = match self.io.fill_buf().await {
                Ok(c) => c,
                Err(_) => return Read::Closed,
            };
            if chunk.is_empty() {
                return Read::Closed;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !*too_long && buf.len() + take <= max {
                buf.extend_from_slice(&chunk[..take]);
            } else {
                *too_long = true;
                if self.io.get_ref().compressed() {
                    // Skipping the rest would inflate all of it (a zip bomb): stop here.
                    self.io.consume(take);
                    *too_long = false;
                    return Read::TooLong;
                }
            }
            self.io.consume(take);
            if done {
                return if std::mem::take(too_long) {
                    Read::TooLong
                } else {
                    Read::Line
                };
            }
        }
    }

    async fn read_with(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Read {
        let mut too_long = false;
        tokio::select! {
            _ = shutdown.cancelled() => Read::Shutdown,
            r = tokio::time::timeout(timeout, self.read_line(buf, max, &mut too_long)) => {
                r.unwrap_or(Read::TimedOut)
            }
        }
    }
}

/// One message of the selected folder, at its sequence number.
#[derive(Debug, Clone, Copy)]
pub(super) struct Msg {
    pub uid: u32,
    pub entry: EntryId,
    pub modseq: u64,
}

/// The selected folder as this session has told the client about it.
pub(super) struct Selected {
    pub name: String,
    pub id: FolderId,
    pub read_only: bool,
    /// By sequence number (index + 1); UIDs ascending.
    pub msgs: Vec<Msg>,
    pub feed: broadcast::Receiver<Change>,
    /// UIDs removed but not yet announced (no EXPUNGE during FETCH, STORE, SEARCH).
    pub gone: Vec<u32>,
    /// Entries whose flag changes this session has already reported (or must not: .SILENT).
    pub quiet: HashSet<EntryId>,
    pub announced_exists: usize,
    /// Keywords announced by this session's last `* FLAGS` (RFC 3501 §7.2.6: a keyword is
    /// announced before a FETCH response uses it). At most the folder's keywords.
    pub keywords: BTreeSet<String>,
    /// Changes received while idling, not yet reported.
    pub stash: Vec<Change>,
    pub lagged: bool,
    /// UIDs `\Recent` in this session (RFC 3501 §2.3.2; see [`super::recent`]).
    pub recent: HashSet<u32>,
}

/// The system flags, in `* FLAGS` and PERMANENTFLAGS.
const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded";

/// `* FLAGS (system + keywords)` and `* OK [PERMANENTFLAGS (…)]` (empty when read-only).
pub(super) fn flag_lines(out: &mut Vec<u8>, keywords: &BTreeSet<String>, read_only: bool) {
    let mut list = String::from(SYSTEM_FLAGS);
    for k in keywords {
        list.push(' ');
        list.push_str(k);
    }
    out.extend_from_slice(format!("* FLAGS ({list})\r\n").as_bytes());
    if read_only {
        out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] read-only\r\n");
    } else {
        out.extend_from_slice(
            format!("* OK [PERMANENTFLAGS ({list} \\*)] flags permitted\r\n").as_bytes(),
        );
    }
}

impl Selected {
    /// Before a FETCH response shows `flags`: announces its keywords this session has not
    /// announced yet, with a new `* FLAGS` and PERMANENTFLAGS listing all of them.
    pub fn announce(&mut self, out: &mut Vec<u8>, flags: &Flags) {
        if flags.keywords.iter().all(|k| self.keywords.contains(k)) {
            return;
        }
        self.keywords.extend(flags.keywords.iter().cloned());
        flag_lines(out, &self.keywords, self.read_only);
    }

    pub fn seq_of_uid(&self, uid: u32) -> Option<usize> {
        self.msgs.binary_search_by_key(&uid, |m| m.uid).ok()
    }
}

/// Removes the `gone` UIDs from a session's view and returns the `* n EXPUNGE` numbers to
/// send, in order: relative to the view as the client knows it (the first `announced`
/// messages), highest first, so each number is within the count the client has at that
/// moment (RFC 3501 §7.4.1), and `announced` drops by one per EXPUNGE. Messages the client
/// was never told of (after `announced`) leave silently.
pub(super) fn expunge_view(
    msgs: &mut Vec<Msg>,
    announced: &mut usize,
    gone: &HashSet<u32>,
) -> Vec<usize> {
    let known = (*announced).min(msgs.len());
    let mut seqs: Vec<usize> = msgs[..known]
        .iter()
        .enumerate()
        .filter(|(_, m)| gone.contains(&m.uid))
        .map(|(i, _)| i + 1)
        .collect();
    seqs.reverse();
    msgs.retain(|m| !gone.contains(&m.uid));
    *announced = known - seqs.len();
    seqs
}

/// [`expunge_view`] for a QRESYNC session: the UIDs to list in `* VANISHED` (those of
/// messages the client was told of), ascending; `announced` drops by their number.
pub(super) fn vanish_view(
    msgs: &mut Vec<Msg>,
    announced: &mut usize,
    gone: &HashSet<u32>,
) -> Vec<u32> {
    let known = (*announced).min(msgs.len());
    let uids: Vec<u32> = msgs[..known]
        .iter()
        .filter(|m| gone.contains(&m.uid))
        .map(|m| m.uid)
        .collect();
    msgs.retain(|m| !gone.contains(&m.uid));
    *announced = known - uids.len();
    uids
}

pub(super) enum State {
    NotAuthenticated,
    Authenticated,
    Selected(Box<Selected>),
}

/// What a command handler answers with (the tagged line), after which the session sends
/// pending untagged updates.
pub(super) enum Reply {
    Ok(String),
    No(String),
    Bad(String),
    /// Answered; close the connection.
    Close,
    /// Answered; run the TLS handshake.
    StartTls,
    /// Answered; compress from now on (RFC 4978).
    Compress,
}

pub(super) struct Session {
    pub ctx: Arc<Context>,
    pub peer: Peer,
    pub conn: Conn,
    pub state: State,
    pub shutdown: CancellationToken,
    /// RFC 7162 CONDSTORE is on for the rest of the session: every FETCH response carries
    /// MODSEQ (set by ENABLE or by the first command that uses a MODSEQ).
    pub condstore: bool,
    /// RFC 7162 QRESYNC was ENABLEd: expunges are reported as `* VANISHED`.
    pub qresync: bool,
    /// `ENABLE IMAP4rev2` (RFC 9051): no `\Recent`, SEARCH answered by ESEARCH.
    pub rev2: bool,
    /// `ENABLE UTF8=ACCEPT` (RFC 6855): folder names in UTF-8, not modified UTF-7.
    pub utf8: bool,
    /// The current command's `SEARCH RETURN (…)` (RFC 4731), read by [`extended`].
    pub search_return: Option<SearchReturn>,
}

pub(super) async fn run(
    stream: SessionStream,
    peer: Peer,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let s = Session {
        ctx,
        peer,
        conn: Conn {
            io: BufReader::new(compress::Stream::new(stream)),
            out: Vec::new(),
        },
        state: State::NotAuthenticated,
        shutdown,
        condstore: false,
        qresync: false,
        rev2: false,
        utf8: false,
        search_return: None,
    };
    if let Err(e) = s.serve().await {
        tracing::debug!(error = %e, "session ended by an I/O error");
    }
}

/// Outcome of reading one command.
enum Next {
    Command(Box<Command<'static>>),
    /// An extended LIST, read by [`extended`].
    List(Box<ListExt>),
    /// Answered already (bad syntax, refused literal); read the next.
    Skip,
    /// Say goodbye (with this text, if any) and close.
    Close(Option<&'static str>),
}

/// A command, or the literal it needs next (tag, length, mode), or None: not a command.
type Decoded = Result<Box<Command<'static>>, Option<(String, u32, LiteralMode)>>;

fn decode(buf: &[u8]) -> Decoded {
    match CommandCodec::default().decode(buf) {
        Ok((_, cmd)) => Ok(Box::new(cmd.into_static())),
        Err(CommandDecodeError::LiteralFound { tag, length, mode }) => {
            Err(Some((tag.as_ref().to_string(), length, mode)))
        }
        Err(CommandDecodeError::Incomplete) | Err(CommandDecodeError::Failed) => Err(None),
    }
}

enum Work {
    Command(Box<Command<'static>>),
    List(Box<ListExt>),
}

/// The tag at the start of a line that did not parse, if it looks like one.
fn guess_tag(buf: &[u8]) -> String {
    let t: Vec<u8> = buf
        .iter()
        .take_while(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b'{' | b'(' | b')' | b'%' | b'*' | b'"' | b'\\' | b'+')
        })
        .take(64)
        .copied()
        .collect();
    match String::from_utf8(t) {
        Ok(t) if !t.is_empty() => t,
        _ => "*".into(),
    }
}

/// Does the line end with a non-synchronizing literal's announcement, `{123+}`?
fn announces_non_sync_literal(line: &[u8]) -> bool {
    let Some(rest) = line.strip_suffix(b"+}\r\n") else {
        return false;
    };
    let digits = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && rest.len() > digits && rest[rest.len() - digits - 1] == b'{'
}

impl Session {
    pub fn tls(&self) -> bool {
        self.conn.io.get_ref().is_tls()
    }

    /// Plaintext passwords only over TLS or on loopback.
    pub fn may_login(&self) -> bool {
        self.tls() || self.peer.is_loopback()
    }

    pub fn capabilities(&self) -> String {
        let mut c = String::from(
            "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN CONDSTORE QRESYNC WITHIN STATUS=SIZE ESEARCH LIST-EXTENDED LIST-STATUS BINARY UTF8=ACCEPT QUOTA QUOTA=RES-STORAGE SORT THREAD=ORDEREDSUBJECT COMPRESS=DEFLATE",
        );
        // RFC 7889: the largest message APPEND takes.
        c.push_str(&format!(" APPENDLIMIT={}", self.ctx.max_literal));
        if matches!(self.state, State::NotAuthenticated) {
            if !self.tls() && self.ctx.tls.is_some() {
                c.push_str(" STARTTLS");
            }
            if self.may_login() {
                c.push_str(" AUTH=PLAIN");
            } else {
                c.push_str(" LOGINDISABLED");
            }
        }
        c
    }

    async fn serve(mut self) -> std::io::Result<()> {
        let greeting = format!(
            "* OK [CAPABILITY {}] peerpost IMAP4rev1 ready",
            self.capabilities()
        );
        self.conn.line(&greeting);
        self.conn.flush().await?;
        let mut errors = 0u32;
        loop {
            let cmd = match self.read_command().await? {
                Next::Command(c) => Work::Command(c),
                Next::List(l) => Work::List(l),
                Next::Skip => {
                    crate::metrics::get().command("imap", "invalid");
                    errors += 1;
                    if errors > MAX_ERRORS {
                        self.conn.line("* BYE too many errors");
                        return self.conn.flush().await;
                    }
                    self.flush_unless_pipelined().await?;
                    continue;
                }
                Next::Close(bye) => {
                    if let Some(bye) = bye {
                        self.conn.line(&format!("* BYE {bye}"));
                        self.conn.flush().await?;
                    }
                    return Ok(());
                }
            };
            let (tag, expunge_ok, reply) = match cmd {
                Work::Command(cmd) => {
                    crate::metrics::get().command("imap", cmd.body.name());
                    let tag = cmd.tag.as_ref().to_string();
                    let expunge_ok = commands::allows_expunge(&cmd.body);
                    let reply = commands::dispatch(&mut self, &tag, cmd.body).await?;
                    (tag, expunge_ok, reply)
                }
                Work::List(l) => {
                    crate::metrics::get().command("imap", "LIST");
                    let tag = l.tag.clone();
                    (tag, true, commands::list_extended(&mut self, *l).await)
                }
            };
            match reply {
                Reply::Close => return self.conn.flush().await,
                Reply::Compress => {
                    self.conn.flush().await?;
                    self.conn.io.get_mut().start();
                    continue;
                }
                Reply::StartTls => match self.upgrade().await? {
                    Some(s) => {
                        self = s;
                        continue;
                    }
                    None => return Ok(()),
                },
                r => {
                    self.sync(expunge_ok);
                    let (status, text) = match r {
                        Reply::Ok(t) => ("OK", t),
                        Reply::No(t) => ("NO", t),
                        _ => {
                            errors += 1;
                            (
                                "BAD",
                                match r {
                                    Reply::Bad(t) => t,
                                    _ => String::new(),
                                },
                            )
                        }
                    };
                    self.conn.line(&format!("{tag} {status} {text}"));
                }
            }
            if errors > MAX_ERRORS {
                self.conn.line("* BYE too many errors");
                return self.conn.flush().await;
            }
            self.flush_unless_pipelined().await?;
        }
    }

    /// Pipelined commands are answered in one write. Nothing the engine has not made durable
    /// yet is sent (group commit: a change is in memory one batch before it is on disk).
    async fn flush_unless_pipelined(&mut self) -> std::io::Result<()> {
        if self.conn.io.buffer().is_empty() || self.conn.out.len() >= FLUSH_AT {
            self.ctx.mailbox.settled().await;
            self.conn.flush().await?;
        }
        Ok(())
    }

    /// The largest literal taken in this state: small before login.
    fn max_literal(&self) -> u32 {
        match self.state {
            State::NotAuthenticated => self.ctx.max_literal.min(MAX_LITERAL_BEFORE_LOGIN),
            _ => self.ctx.max_literal,
        }
    }

    fn before_login_note(&self) -> &'static str {
        match self.state {
            State::NotAuthenticated => " before login",
            _ => "",
        }
    }

    fn timeout(&self) -> Duration {
        match self.state {
            State::NotAuthenticated => TIMEOUT_BEFORE_LOGIN,
            _ => TIMEOUT_AFTER_LOGIN,
        }
    }

    /// Reads lines (and the literals they announce) until they make one command.
    async fn read_command(&mut self) -> std::io::Result<Next> {
        let mut buf = Vec::new();
        // Set once the line was given to `extended` (and it did not rewrite it).
        let mut preparsed = false;
        self.search_return = None;
        let max_literal = self.max_literal();
        let max_total = max_literal as usize + MAX_LINE;
        loop {
            let timeout = self.timeout();
            let room = (buf.len() + MAX_LINE).min(max_total);
            match self
                .conn
                .read_with(&mut buf, room, timeout, &self.shutdown)
                .await
            {
                Read::Line => {}
                Read::TooLong => {
                    let tag = guess_tag(&buf);
                    self.conn.line(&format!("{tag} BAD line too long"));
                    if self.conn.io.get_ref().compressed() {
                        return Ok(Next::Close(Some("line too long")));
                    }
                    return Ok(Next::Skip);
                }
                Read::Closed => return Ok(Next::Close(None)),
                Read::TimedOut => return Ok(Next::Close(Some("autologout: idle too long"))),
                Read::Shutdown => return Ok(Next::Close(Some("server shutting down"))),
            }
            if !buf.ends_with(b"\r\n") {
                let tag = guess_tag(&buf);
                self.conn
                    .line(&format!("{tag} BAD lines must end with CRLF"));
                return Ok(Next::Skip);
            }
            let decoded = decode(&buf);
            // What the codec does not read (SEARCH RETURN, extended LIST): see `extended`.
            let decoded = match decoded {
                Err(None) if !preparsed => {
                    preparsed = true;
                    match extended::preparse(&mut buf) {
                        Pre::NotMine => Err(None),
                        Pre::Search(r) => {
                            self.search_return = Some(r);
                            decode(&buf)
                        }
                        Pre::List(l) => return Ok(Next::List(l)),
                        Pre::NeedLiteral { length, mode } => {
                            preparsed = false;
                            Err(Some((guess_tag(&buf), length, mode)))
                        }
                        Pre::Bad { tag, text } => {
                            self.search_return = None;
                            self.conn.line(&format!("{tag} BAD {text}"));
                            return Ok(Next::Skip);
                        }
                    }
                }
                d => d,
            };
            match decoded {
                Ok(cmd) => return Ok(Next::Command(cmd)),
                Err(Some((tag, length, mode))) => {
                    let fits = length <= max_literal && buf.len() + length as usize <= max_total;
                    if !fits {
                        return Ok(match mode {
                            LiteralMode::Sync => {
                                self.conn.line(&format!(
                                    "{tag} NO [TOOBIG] literal of {length} bytes is over the limit of {max_literal}{}",
                                    self.before_login_note()
                                ));
                                Next::Skip
                            }
                            LiteralMode::NonSync => {
                                // Its bytes are on their way and cannot be skipped cheaply.
                                self.conn.line(&format!(
                                    "{tag} BAD [TOOBIG] literal of {length} bytes is over the limit"
                                ));
                                Next::Close(Some("literal too large"))
                            }
                        });
                    }
                    if mode == LiteralMode::Sync {
                        self.conn.line("+ Ready for literal data");
                        self.conn.flush().await?;
                    }
                    // Nothing is allocated for bytes that have not arrived: the buffer grows
                    // as they do (a declared length costs nothing until it is sent).
                    let start = buf.len();
                    buf.reserve((length as usize).min(LITERAL_RESERVE));
                    let timeout = self.timeout();
                    let mut literal = (&mut self.conn.io).take(u64::from(length));
                    let read = tokio::time::timeout(timeout, literal.read_to_end(&mut buf));
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(Next::Close(Some("server shutting down"))),
                        r = read => match r {
                            Ok(Ok(_)) if buf.len() - start == length as usize => {}
                            Ok(_) => return Ok(Next::Close(None)),
                            Err(_) => return Ok(Next::Close(Some("autologout: literal not sent"))),
                        },
                    }
                }
                Err(None) => {
                    self.search_return = None;
                    let tag = guess_tag(&buf);
                    if announces_non_sync_literal(&buf) {
                        // A literal the parser refused (its length is beyond 32 bits): its
                        // bytes are on their way and cannot be skipped cheaply.
                        self.conn
                            .line(&format!("{tag} BAD [TOOBIG] literal too large"));
                        return Ok(Next::Close(Some("literal too large")));
                    }
                    let what = if buf.iter().any(|b| !b.is_ascii()) {
                        "syntax error (8-bit data outside a literal?)"
                    } else {
                        "syntax error or unknown command"
                    };
                    self.conn.line(&format!("{tag} BAD {what}"));
                    return Ok(Next::Skip);
                }
            }
        }
    }

    /// Reads one raw line for AUTHENTICATE's continuation.
    pub async fn read_raw_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let timeout = self.timeout();
        Ok(
            match self
                .conn
                .read_with(&mut buf, MAX_LINE, timeout, &self.shutdown)
                .await
            {
                Read::Line => Some(buf),
                _ => None,
            },
        )
    }

    /// IDLE: `+ idling`, then untagged updates as they happen, until DONE.
    pub async fn idle(&mut self) -> std::io::Result<Reply> {
        enum Ev {
            Changed,
            Read(Read),
        }
        self.conn.line("+ idling");
        self.sync(true);
        self.ctx.mailbox.settled().await;
        self.conn.flush().await?;
        let mut buf = Vec::new();
        let mut too_long = false;
        loop {
            let ev = {
                let Session {
                    conn,
                    state,
                    shutdown,
                    ..
                } = &mut *self;
                let changed = async {
                    match state {
                        State::Selected(sel) => match sel.feed.recv().await {
                            Ok(c) => sel.stash.push(c),
                            Err(broadcast::error::RecvError::Lagged(_)) => sel.lagged = true,
                            Err(broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        },
                        _ => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => Ev::Read(Read::Shutdown),
                    _ = changed => Ev::Changed,
                    r = tokio::time::timeout(
                        TIMEOUT_AFTER_LOGIN,
                        conn.read_line(&mut buf, MAX_LINE, &mut too_long),
                    ) => Ev::Read(r.unwrap_or(Read::TimedOut)),
                }
            };
            let read = match ev {
                Ev::Changed => {
                    // Let the burst (a move, a batch) arrive, then report it.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    self.sync(true);
                    self.ctx.mailbox.settled().await;
                    self.conn.flush().await?;
                    continue;
                }
                Ev::Read(r) => r,
            };
            return Ok(match read {
                Read::Line => match IdleDoneCodec::default().decode(&buf) {
                    Ok(_) => Reply::Ok("IDLE terminated".into()),
                    Err(IdleDoneDecodeError::Incomplete | IdleDoneDecodeError::Failed) => {
                        Reply::Bad("expected DONE".into())
                    }
                },
                Read::TooLong => Reply::Bad("expected DONE".into()),
                Read::Closed => Reply::Close,
                Read::TimedOut => {
                    self.conn.line("* BYE autologout: idle too long");
                    Reply::Close
                }
                Read::Shutdown => {
                    self.conn.line("* BYE server shutting down");
                    Reply::Close
                }
            });
        }
    }

    /// Sends what changed in the selected folder since the last time: EXISTS, FETCH (flags)
    /// and, where allowed, EXPUNGE.
    pub fn sync(&mut self, allow_expunge: bool) {
        let (condstore, qresync, rev2) = (self.condstore, self.qresync, self.rev2);
        let State::Selected(sel) = &mut self.state else {
            return;
        };
        let mut relist = std::mem::take(&mut sel.lagged);
        let mut folders_changed = false;
        let mut flagged: Vec<EntryId> = Vec::new();
        let mut added: Vec<EntryId> = Vec::new();
        let mut stash = std::mem::take(&mut sel.stash).into_iter();
        loop {
            let next = match stash.next() {
                Some(c) => Ok(c),
                None => sel.feed.try_recv(),
            };
            match next {
                Ok(Change::Added { folder, uid, entry }) if folder == sel.id => {
                    if let Err(i) = sel.msgs.binary_search_by_key(&uid, |m| m.uid) {
                        added.push(entry);
                        sel.msgs.insert(
                            i,
                            Msg {
                                uid,
                                entry,
                                modseq: 0,
                            },
                        );
                    }
                }
                Ok(Change::Removed { folder, uid, .. }) if folder == sel.id => sel.gone.push(uid),
                Ok(Change::Flags {
                    folder,
                    uid,
                    entry,
                    modseq,
                }) if folder == sel.id => {
                    if let Some(i) = sel.seq_of_uid(uid) {
                        sel.msgs[i].modseq = modseq;
                        if !sel.quiet.contains(&entry) {
                            flagged.push(entry);
                        }
                    }
                }
                Ok(Change::Folders) => folders_changed = true,
                Ok(_) => {}
                Err(TryRecvError::Lagged(_)) => relist = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        sel.quiet.clear();
        if folders_changed || relist {
            // Renamed by another client: follow it (the engine's calls take names).
            if let Some(f) = self
                .ctx
                .mailbox
                .folders()
                .into_iter()
                .find(|f| f.id == sel.id)
            {
                sel.name = f.name;
            }
        }
        if relist {
            let now = self.ctx.mailbox.messages_of(sel.id);
            let live: HashSet<u32> = now.iter().map(|m| m.uid).collect();
            for m in &sel.msgs {
                if !live.contains(&m.uid) {
                    sel.gone.push(m.uid);
                }
            }
            for m in now {
                match sel.msgs.binary_search_by_key(&m.uid, |x| x.uid) {
                    Ok(i) => {
                        if sel.msgs[i].modseq != m.modseq {
                            sel.msgs[i].modseq = m.modseq;
                            flagged.push(m.entry);
                        }
                    }
                    Err(i) => {
                        added.push(m.entry);
                        sel.msgs.insert(
                            i,
                            Msg {
                                uid: m.uid,
                                entry: m.entry,
                                modseq: m.modseq,
                            },
                        )
                    }
                }
            }
        }
        // New mail is recent in the first session told of it (EXAMINE claims nothing).
        let mut recent_changed = false;
        // IMAP4rev2 has no \Recent: such a session claims none.
        if !added.is_empty() && !rev2 {
            let infos = self.ctx.mailbox.messages_by_entry_light(sel.id, &added);
            let candidates: Vec<EntryId> = infos
                .iter()
                .flatten()
                .filter(|m| m.recent)
                .map(|m| m.entry)
                .collect();
            let mine = if sel.read_only {
                self.ctx.recent.unclaimed(&candidates)
            } else {
                self.ctx.recent.claim(&candidates)
            };
            for m in infos.iter().flatten() {
                if mine.contains(&m.entry) {
                    recent_changed |= sel.recent.insert(m.uid);
                }
            }
            if !sel.read_only {
                super::recent::persist_later(&self.ctx, sel.name.clone(), mine);
            }
        }
        let out = &mut self.conn.out;
        if allow_expunge && !sel.gone.is_empty() {
            let gone: HashSet<u32> = sel.gone.drain(..).collect();
            sel.recent.retain(|u| !gone.contains(u));
            if qresync {
                let uids = vanish_view(&mut sel.msgs, &mut sel.announced_exists, &gone);
                if !uids.is_empty() {
                    let list = super::commands::uid_set(&uids);
                    out.extend_from_slice(format!("* VANISHED {list}\r\n").as_bytes());
                }
            } else {
                for line in expunge_view(&mut sel.msgs, &mut sel.announced_exists, &gone) {
                    out.extend_from_slice(format!("* {line} EXPUNGE\r\n").as_bytes());
                }
            }
        }
        if sel.msgs.len() > sel.announced_exists {
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.msgs.len()).as_bytes());
            sel.announced_exists = sel.msgs.len();
            // RFC 3501 §7.3.2: the number of messages with \Recent, after the EXISTS. Only
            // when the client knows them all (the count is within EXISTS).
            if recent_changed {
                let n = sel.recent.len();
                out.extend_from_slice(format!("* {n} RECENT\r\n").as_bytes());
            }
        }
        if !flagged.is_empty() {
            flagged.sort_unstable();
            flagged.dedup();
            let infos = self.ctx.mailbox.messages_by_entry_light(sel.id, &flagged);
            for info in infos.into_iter().flatten() {
                if let Some(i) = sel.seq_of_uid(info.uid) {
                    sel.announce(out, &info.flags);
                    out.extend_from_slice(
                        format!("* {} FETCH (UID {} FLAGS ", i + 1, info.uid).as_bytes(),
                    );
                    super::out::flags_with(out, &info.flags, sel.recent.contains(&info.uid));
                    if condstore {
                        out.extend_from_slice(format!(" MODSEQ ({})", info.modseq).as_bytes());
                    }
                    out.extend_from_slice(b")\r\n");
                }
            }
        }
    }

    /// STARTTLS: checks and answers; the caller then upgrades the connection.
    pub fn starttls(&mut self, tag: &str) -> Reply {
        if self.ctx.tls.is_none() {
            return Reply::No("TLS is not configured".into());
        }
        if self.tls() {
            return Reply::Bad("already using TLS".into());
        }
        if !self.conn.io.buffer().is_empty() {
            // Commands pipelined behind STARTTLS would be read in plaintext: refuse.
            self.conn.line(&format!("{tag} BAD data after STARTTLS"));
            self.conn.line("* BYE closing");
            return Reply::Close;
        }
        self.conn
            .line(&format!("{tag} OK begin TLS negotiation now"));
        Reply::StartTls
    }

    /// Runs the TLS handshake on the connection (after STARTTLS was answered).
    async fn upgrade(self) -> std::io::Result<Option<Session>> {
        let Session {
            ctx,
            peer,
            mut conn,
            state,
            shutdown,
            condstore,
            qresync,
            rev2,
            utf8,
            search_return,
        } = self;
        conn.flush().await?;
        let Some(acceptor) = ctx.tls.clone() else {
            return Ok(None);
        };
        let stream = conn.io.into_inner();
        match tokio::time::timeout(Duration::from_secs(15), stream.upgrade(&acceptor)).await {
            Ok(Ok(s)) => Ok(Some(Session {
                ctx,
                peer,
                conn: Conn {
                    io: BufReader::new(s),
                    out: Vec::new(),
                },
                state,
                shutdown,
                condstore,
                qresync,
                rev2,
                utf8,
                search_return,
            })),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(uids: &[u32]) -> Vec<Msg> {
        uids.iter()
            .map(|u| Msg {
                uid: *u,
                entry: crate::mailbox::OpId {
                    device: 1,
                    seq: u64::from(*u),
                    idx: 0,
                },
                modseq: 1,
            })
            .collect()
    }

    #[test]
    fn expunges_follow_the_sessions_own_view() {
        // The client knows 3 messages; 2 more arrived (not yet announced by EXISTS).
        let mut msgs = view(&[10, 20, 30, 40, 50]);
        let mut announced = 3;
        let gone: HashSet<u32> = [20, 30, 50].into_iter().collect();
        let seqs = expunge_view(&mut msgs, &mut announced, &gone);
        // Highest first, each within the count at that moment; 50 was never announced.
        assert_eq!(seqs, vec![3, 2]);
        assert_eq!(announced, 1);
        assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![10, 40]);
        let mut count = 3usize;
        for s in seqs {
            assert!(s >= 1 && s <= count);
            count -= 1;
        }
        assert!(expunge_view(&mut msgs, &mut announced, &HashSet::new()).is_empty());
    }

    #[test]
    fn vanished_lists_only_what_the_client_was_told_of() {
        // QRESYNC: the same view as for EXPUNGE, but UIDs ascending.
        let mut msgs = view(&[10, 20, 30, 40, 50]);
        let mut announced = 4;
        let gone: HashSet<u32> = [10, 30, 50].into_iter().collect();
        let uids = vanish_view(&mut msgs, &mut announced, &gone);
        assert_eq!(uids, vec![10, 30], "50 was never announced");
        assert_eq!(announced, 2);
        assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![20, 40]);
        assert_eq!(super::super::commands::uid_set(&uids), "10,30");
    }

    #[test]
    fn new_keywords_are_announced_once_before_use() {
        let mut sel = Selected {
            name: "INBOX".into(),
            id: crate::mailbox::OpId {
                device: 1,
                seq: 0,
                idx: 0,
            },
            read_only: false,
            msgs: Vec::new(),
            feed: broadcast::channel(1).1,
            gone: Vec::new(),
            quiet: HashSet::new(),
            announced_exists: 0,
            keywords: BTreeSet::new(),
            stash: Vec::new(),
            lagged: false,
            recent: HashSet::new(),
        };
        let mut out = Vec::new();
        let mut f = Flags::default();
        sel.announce(&mut out, &f);
        assert!(out.is_empty(), "no keyword, nothing to announce");
        f.keywords.insert("$Label1".into());
        sel.announce(&mut out, &f);
        let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
        assert!(text.starts_with("* FLAGS (\\Answered"), "{text}");
        assert!(text.contains("$Forwarded $Label1)\r\n"), "{text}");
        assert!(text.contains("[PERMANENTFLAGS (\\Answered"), "{text}");
        assert!(text.contains("$Label1 \\*)]"), "{text}");
        sel.announce(&mut out, &f);
        assert!(out.is_empty(), "announced once");
        f.keywords.insert("Todo".into());
        sel.announce(&mut out, &f);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("$Label1 Todo)"),
            "all keywords so far: {text}"
        );
    }

    #[test]
    fn tags_and_literal_announcements() {
        assert_eq!(guess_tag(b"a1 FETCH 1 (FLAGS)\r\n"), "a1");
        assert_eq!(guess_tag(b"\x00garbage\r\n"), "*");
        assert_eq!(guess_tag(b"* NOOP\r\n"), "*");
        assert!(announces_non_sync_literal(
            b"c1 APPEND INBOX {10000000000+}\r\n"
        ));
        assert!(!announces_non_sync_literal(
            b"c1 APPEND INBOX {10000000000}\r\n"
        ));
        assert!(!announces_non_sync_literal(b"c1 APPEND INBOX +}\r\n"));
        assert!(!announces_non_sync_literal(
            b"{5+}\r\n".get(1..).unwrap_or_default()
        ));
    }
}
