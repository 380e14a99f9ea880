//! Command handlers, one file per group. [`dispatch`] checks the state each command needs.

mod append;
mod auth;
mod fetch;
mod folders;
mod search;
mod select;
mod sort;
mod store;

use imap_codec::imap_types::command::{CommandBody, StoreModifier};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::flag::Flag as ImapFlag;
use imap_codec::imap_types::mailbox::Mailbox as ImapMailbox;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use super::session::{Reply, Selected, Session, State};
use crate::mailbox::{self, Flag, Flags};

/// May untagged EXPUNGEs be sent after this command? Not after FETCH, STORE and SEARCH by
/// sequence number (RFC 3501 §7.4.1): the client's numbers would shift under it.
pub(super) fn allows_expunge(body: &CommandBody<'_>) -> bool {
    !matches!(
        body,
        CommandBody::Fetch { uid: false, .. }
            | CommandBody::Store { uid: false, .. }
            | CommandBody::Search { uid: false, .. }
            | CommandBody::Sort { uid: false, .. }
            | CommandBody::Thread { uid: false, .. }
    )
}

/// COMPRESS DEFLATE (RFC 4978; the only algorithm the codec parses): answers, and the
/// session turns compression on once the answer is sent.
fn compress(s: &mut Session, tag: &str) -> Reply {
    if s.conn.io.get_ref().compressed() {
        return Reply::No("[COMPRESSIONACTIVE] DEFLATE is already active".into());
    }
    if !s.conn.io.buffer().is_empty() {
        // RFC 4978 §3: the client waits for the answer; bytes behind the command would be
        // read as the wrong kind (compressed or not): refuse, as for STARTTLS.
        s.conn.line(&format!("{tag} BAD data after COMPRESS"));
        s.conn.line("* BYE closing");
        return Reply::Close;
    }
    s.conn.line(&format!("{tag} OK DEFLATE active"));
    Reply::Compress
}

pub(super) async fn dispatch(
    s: &mut Session,
    tag: &str,
    body: CommandBody<'static>,
) -> std::io::Result<Reply> {
    let authed = !matches!(s.state, State::NotAuthenticated);
    let selected = matches!(s.state, State::Selected(_));
    Ok(match body {
        CommandBody::Capability => {
            let caps = s.capabilities();
            s.conn.line(&format!("* CAPABILITY {caps}"));
            Reply::Ok("CAPABILITY completed".into())
        }
        CommandBody::Noop => Reply::Ok("NOOP completed".into()),
        CommandBody::Logout => {
            s.conn.line("* BYE logging out");
            s.conn.line(&format!("{tag} OK LOGOUT completed"));
            Reply::Close
        }
        CommandBody::Id { .. } => {
            s.conn
                .line("* ID (\"name\" \"peerpost\" \"vendor\" \"peerpost\")");
            Reply::Ok("ID completed".into())
        }
        CommandBody::StartTLS if !authed => s.starttls(tag),
        CommandBody::Login { username, password } if !authed => {
            let user = String::from_utf8_lossy(username.as_ref()).into_owned();
            let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
            auth::login(s, &user, &pass).await
        }
        CommandBody::Authenticate {
            mechanism,
            initial_response,
        } if !authed => {
            auth::authenticate(
                s,
                &mechanism,
                initial_response.map(|r| r.declassify().to_vec()),
            )
            .await?
        }
        CommandBody::StartTLS | CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
            Reply::Bad("already authenticated".into())
        }
        _ if !authed => Reply::Bad("log in first".into()),

        // ----- authenticated -----
        CommandBody::Compress { .. } => compress(s, tag),
        CommandBody::Select {
            mailbox,
            parameters,
        } => select::select(s, &name(&mailbox), false, &parameters).await,
        CommandBody::Examine {
            mailbox,
            parameters,
        } => select::select(s, &name(&mailbox), true, &parameters).await,
        CommandBody::Create { mailbox } => folders::create(s, &name(&mailbox)).await,
        CommandBody::Delete { mailbox } => folders::delete(s, &name(&mailbox)).await,
        CommandBody::Rename { from, to } => folders::rename(s, &name(&from), &name(&to)).await,
        CommandBody::Subscribe { mailbox } => folders::subscribe(s, &name(&mailbox), true).await,
        CommandBody::Unsubscribe { mailbox } => folders::subscribe(s, &name(&mailbox), false).await,
        CommandBody::List {
            reference,
            mailbox_wildcard,
        } => folders::list(s, &name(&reference), &mailbox_wildcard, false).await,
        CommandBody::Lsub {
            reference,
            mailbox_wildcard,
        } => folders::list(s, &name(&reference), &mailbox_wildcard, true).await,
        CommandBody::Status {
            mailbox,
            item_names,
        } => folders::status(s, &name(&mailbox), &item_names).await,
        CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } => append::append(s, &name(&mailbox), &flags, date.as_ref(), message).await,
        CommandBody::Namespace => {
            s.conn.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
            Reply::Ok("NAMESPACE completed".into())
        }
        CommandBody::Enable { capabilities } => enable(s, capabilities.as_ref()),
        CommandBody::GetQuotaRoot { mailbox } => quota_root(s, &name(&mailbox)).await,
        CommandBody::GetQuota { root } => {
            let root = String::from_utf8_lossy(root.as_ref()).into_owned();
            quota(s, &root).await
        }
        CommandBody::SetQuota { .. } => {
            Reply::No("[NOPERM] the quota is the node's storage share; see the config".into())
        }
        CommandBody::Idle => s.idle().await?,
        CommandBody::Check if selected => Reply::Ok("CHECK completed".into()),
        CommandBody::Close if selected => select::close(s, true).await,
        CommandBody::Unselect if selected => select::close(s, false).await,
        CommandBody::Expunge if selected => select::expunge(s, None).await,
        CommandBody::ExpungeUid { sequence_set } if selected => {
            select::expunge(s, Some(&sequence_set)).await
        }
        CommandBody::Fetch {
            sequence_set,
            macro_or_item_names,
            uid,
            modifiers,
        } if selected => {
            fetch::fetch(s, &sequence_set, macro_or_item_names, uid, &modifiers).await?
        }
        CommandBody::Store {
            sequence_set,
            kind,
            response,
            flags,
            uid,
            modifiers,
        } if selected => {
            let unchanged_since = modifiers
                .iter()
                .map(|m| match m {
                    StoreModifier::UnchangedSince(n) => *n,
                })
                .next();
            store::store(
                s,
                &sequence_set,
                kind,
                response,
                &flags,
                uid,
                unchanged_since,
            )
            .await
        }
        CommandBody::Copy {
            sequence_set,
            mailbox,
            uid,
        } if selected => store::copy(s, &sequence_set, &name(&mailbox), uid, false).await,
        CommandBody::Move {
            sequence_set,
            mailbox,
            uid,
        } if selected => store::copy(s, &sequence_set, &name(&mailbox), uid, true).await,
        CommandBody::Search {
            charset,
            criteria,
            uid,
        } if selected => {
            search::search(
                s,
                tag,
                charset.as_ref().map(|c| c.as_ref()),
                criteria.as_ref(),
                uid,
            )
            .await?
        }
        CommandBody::Sort {
            sort_criteria,
            charset,
            search_criteria,
            uid,
        } if selected => {
            sort::sort(
                s,
                sort_criteria.as_ref(),
                charset.as_ref(),
                search_criteria.as_ref(),
                uid,
            )
            .await
        }
        CommandBody::Thread {
            algorithm,
            charset,
            search_criteria,
            uid,
        } if selected => {
            sort::thread(
                s,
                &algorithm,
                charset.as_ref(),
                search_criteria.as_ref(),
                uid,
            )
            .await
        }
        CommandBody::Sort { .. }
        | CommandBody::Thread { .. }
        | CommandBody::Check
        | CommandBody::Close
        | CommandBody::Unselect
        | CommandBody::Expunge
        | CommandBody::ExpungeUid { .. }
        | CommandBody::Fetch { .. }
        | CommandBody::Store { .. }
        | CommandBody::Copy { .. }
        | CommandBody::Move { .. }
        | CommandBody::Search { .. } => Reply::Bad("no folder selected".into()),
    })
}

/// An extended LIST (read by [`crate::imap::extended`]): authenticated state only.
pub(super) async fn list_extended(s: &mut Session, l: crate::imap::extended::ListExt) -> Reply {
    if matches!(s.state, State::NotAuthenticated) {
        return Reply::Bad("log in first".into());
    }
    folders::list_extended(s, &l).await
}

/// `* QUOTA "" (STORAGE used limit)` (RFC 9208 §5.1), in KiB; None without a quota.
async fn quota_line(s: &Session) -> Result<Option<String>, Reply> {
    let Some(limit) = s.ctx.mailbox.quota() else {
        return Ok(None);
    };
    let used = s.ctx.mailbox.storage_used().await.map_err(no)?;
    Ok(Some(format!(
        "* QUOTA \"\" (STORAGE {} {})",
        used.div_ceil(1024),
        limit / 1024
    )))
}

/// GETQUOTAROOT (RFC 9208 §4.3): every folder is under the user's one root, `""`.
async fn quota_root(s: &mut Session, folder: &str) -> Reply {
    let Some(f) = s.ctx.mailbox.folder(folder) else {
        return Reply::No(format!("[NONEXISTENT] no folder named {folder:?}"));
    };
    let line = match quota_line(s).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let mut o = b"* QUOTAROOT ".to_vec();
    crate::imap::out::mailbox_as(&mut o, &f.name, s.utf8);
    if line.is_some() {
        o.extend_from_slice(b" \"\"");
    }
    o.extend_from_slice(b"\r\n");
    s.conn.out.extend_from_slice(&o);
    if let Some(l) = line {
        s.conn.line(&l);
    }
    Reply::Ok("GETQUOTAROOT completed".into())
}

/// GETQUOTA (RFC 9208 §4.2) of the one root, `""`.
async fn quota(s: &mut Session, root: &str) -> Reply {
    match quota_line(s).await {
        Ok(Some(l)) if root.is_empty() => {
            s.conn.line(&l);
            Reply::Ok("GETQUOTA completed".into())
        }
        Ok(_) => Reply::No("[NONEXISTENT] no such quota root".into()),
        Err(r) => r,
    }
}

/// ENABLE (RFC 5161): CONDSTORE and QRESYNC (which implies CONDSTORE, RFC 7162 §3.2.3),
/// UTF8=ACCEPT (RFC 6855), IMAP4rev2 (RFC 9051); anything else is not enabled (and not an
/// error).
fn enable(s: &mut Session, caps: &[CapabilityEnable<'_>]) -> Reply {
    let mut enabled: Vec<&str> = Vec::new();
    for c in caps {
        let text = c.to_string();
        if text.eq_ignore_ascii_case("UTF8=ACCEPT") && !s.utf8 {
            s.utf8 = true;
            enabled.push("UTF8=ACCEPT");
        }
        if text.eq_ignore_ascii_case("IMAP4rev2") && !s.rev2 {
            // RFC 9051 §6.3.1: no \Recent, ESEARCH for SEARCH, UTF-8 folder names.
            s.rev2 = true;
            s.utf8 = true;
            if let State::Selected(cur) = &mut s.state {
                cur.recent.clear();
            }
            enabled.push("IMAP4rev2");
        }
        let qresync = text.eq_ignore_ascii_case("QRESYNC");
        if qresync && !s.qresync {
            s.qresync = true;
            enabled.push("QRESYNC");
        }
        if (qresync || matches!(c, CapabilityEnable::CondStore)) && !s.condstore {
            s.condstore = true;
            enabled.push("CONDSTORE");
        }
    }
    let mut line = String::from("* ENABLED");
    for e in enabled {
        line.push(' ');
        line.push_str(e);
    }
    s.conn.line(&line);
    Reply::Ok("ENABLE completed".into())
}

/// A folder name as the engine spells it (INBOX in any case is INBOX; a trailing
/// delimiter is dropped).
pub(super) fn name(m: &ImapMailbox<'_>) -> String {
    match m {
        ImapMailbox::Inbox => "INBOX".into(),
        ImapMailbox::Other(o) => {
            let raw = String::from_utf8_lossy(o.as_ref());
            // Modified UTF-7 on the wire; a name that is not valid in it is taken as is.
            let n = crate::imap::utf7::decode(&raw).unwrap_or_else(|| raw.into_owned());
            n.strip_suffix('/').map(str::to_string).unwrap_or(n)
        }
    }
}

/// A folder's UIDVALIDITY, allocated if no message was ever numbered in it.
pub(super) async fn uidvalidity(s: &Session, info: &mailbox::FolderInfo) -> Result<u32, Reply> {
    if info.uidvalidity != 0 {
        return Ok(info.uidvalidity);
    }
    s.ctx.mailbox.uidvalidity(info.id).await.map_err(no)
}

/// The engine's error as a tagged NO.
pub(super) fn no(e: mailbox::Error) -> Reply {
    use mailbox::Error as E;
    match e {
        E::NoSuchFolder(n) => Reply::No(format!("[NONEXISTENT] no folder named {n:?}")),
        E::FolderExists(n) => Reply::No(format!("[ALREADYEXISTS] a folder named {n:?} exists")),
        E::InvalidName(..) | E::NotAllowed(_) | E::Empty => Reply::No(format!("[CANNOT] {e}")),
        E::TooLarge { .. } => Reply::No(format!("[TOOBIG] {e}")),
        E::OverQuota { .. } => Reply::No(format!("[OVERQUOTA] {e}")),
        E::Limit(mailbox::limits::Unloggable::TooMany { .. }) => Reply::No(format!("[LIMIT] {e}")),
        E::Limit(_) => Reply::No(format!("[CANNOT] {e}")),
        E::NoSuchMessage => Reply::No("[EXPUNGEISSUED] some messages are gone".into()),
        other => {
            tracing::warn!(error = %other, "IMAP command failed in the engine");
            Reply::No("[SERVERBUG] the mailbox could not do that now".into())
        }
    }
}

/// The selected folder (callers have checked the state).
pub(super) fn sel(s: &mut Session) -> Option<&mut Selected> {
    match &mut s.state {
        State::Selected(sel) => Some(sel),
        _ => None,
    }
}

/// Ranges of a sequence set, `*` being `largest`, each (low, high): sorted, overlapping and
/// adjacent ones merged, so `1:*,1:*,…` is one range before anything is expanded (issue #18).
/// A set has at most 32,768 sequences (it is one command line of at most 64 KiB).
pub(super) fn ranges(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    let v = |x: &SeqOrUid| match x {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    let mut r: Vec<(u32, u32)> = set
        .0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(x) => (v(x), v(x)),
            Sequence::Range(a, b) => (v(a).min(v(b)), v(a).max(v(b))),
        })
        .collect();
    r.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// Whether `n` is in merged `ranges` (binary search).
pub(super) fn in_ranges(ranges: &[(u32, u32)], n: u32) -> bool {
    let i = ranges.partition_point(|(_, hi)| *hi < n);
    ranges.get(i).is_some_and(|(lo, _)| *lo <= n)
}

/// Indexes (seq − 1) of the selected messages a set names, ascending, without duplicates.
/// Numbers beyond the folder are ignored; UID sets cost a binary search per range.
pub(super) fn resolve(sel: &Selected, set: &SequenceSet, uid: bool) -> Vec<usize> {
    let n = sel.msgs.len();
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    if uid {
        let largest = sel.msgs[n - 1].uid;
        for (lo, hi) in ranges(set, largest) {
            let a = sel.msgs.partition_point(|m| m.uid < lo);
            let b = sel.msgs.partition_point(|m| m.uid <= hi);
            out.extend(a..b);
        }
    } else {
        for (lo, hi) in ranges(set, n as u32) {
            let lo = (lo as usize).max(1);
            let hi = (hi as usize).min(n);
            if lo <= hi {
                out.extend(lo - 1..hi);
            }
        }
    }
    // The ranges are disjoint and ascending: so are the indexes.
    debug_assert!(out.windows(2).all(|w| w[0] < w[1]));
    out
}

/// IMAP flags → the engine's (`\Recent` and unknown `\Ext` flags are ignored).
pub(super) fn flags_from(list: &[ImapFlag<'_>]) -> Flags {
    let mut f = Flags::default();
    for x in list {
        match x {
            ImapFlag::Answered => f.set(Flag::Replied, true),
            ImapFlag::Deleted => f.set(Flag::Trashed, true),
            ImapFlag::Draft => f.set(Flag::Draft, true),
            ImapFlag::Flagged => f.set(Flag::Flagged, true),
            ImapFlag::Seen => f.set(Flag::Seen, true),
            ImapFlag::Keyword(k) if k.as_ref().eq_ignore_ascii_case("$Forwarded") => {
                f.set(Flag::Passed, true)
            }
            ImapFlag::Keyword(k) => {
                f.keywords.insert(k.as_ref().to_string());
            }
            _ => {}
        }
    }
    f
}

/// A compact UID set: `1:3,7`.
pub(super) fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::imap::session::Msg;
    use crate::mailbox::OpId;

    fn selected(uids: &[u32]) -> Selected {
        let id = |i: u32| OpId {
            device: 1,
            seq: u64::from(i),
            idx: 0,
        };
        Selected {
            name: "INBOX".into(),
            id: id(0),
            read_only: false,
            msgs: uids
                .iter()
                .map(|u| Msg {
                    uid: *u,
                    entry: id(*u),
                    modseq: 1,
                })
                .collect(),
            feed: tokio::sync::broadcast::channel(1).1,
            gone: Vec::new(),
            quiet: HashSet::new(),
            announced_exists: uids.len(),
            keywords: Default::default(),
            stash: Vec::new(),
            lagged: false,
            recent: HashSet::new(),
        }
    }

    fn set(s: &str) -> SequenceSet {
        SequenceSet::try_from(s).unwrap()
    }

    #[test]
    fn sequence_sets() {
        let sel = selected(&[3, 5, 9]);
        assert_eq!(resolve(&sel, &set("1:*"), false), vec![0, 1, 2]);
        assert_eq!(
            resolve(&sel, &set("2,2,7"), false),
            vec![1],
            "beyond the end is ignored"
        );
        assert_eq!(resolve(&sel, &set("4:*"), true), vec![1, 2]);
        // RFC 3501: n:* includes the last message even when n is above every UID.
        assert_eq!(resolve(&sel, &set("10:*"), true), vec![2]);
        assert_eq!(resolve(&sel, &set("1:4294967295"), true), vec![0, 1, 2]);
        assert!(resolve(&selected(&[]), &set("1:*"), true).is_empty());
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(resolve(&sel, &set("3,1:2,2:3,1"), false), vec![0, 1, 2]);
        assert_eq!(resolve(&sel, &set("9,3:4,5"), true), vec![0, 1, 2]);
    }

    #[test]
    fn issue_18_repeated_ranges_merge_before_expansion() {
        let many = vec!["1:*"; 16_000].join(",");
        let r = ranges(&set(&many), 100_000);
        assert_eq!(r, vec![(1, 100_000)]);
        let r = ranges(&set("7,1:3,4,9:8,20"), 50);
        assert_eq!(r, vec![(1, 4), (7, 9), (20, 20)]);
        assert!(in_ranges(&r, 8) && in_ranges(&r, 1) && in_ranges(&r, 20));
        assert!(!in_ranges(&r, 5) && !in_ranges(&r, 21) && !in_ranges(&r, 0));
    }
}
