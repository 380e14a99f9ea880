//! SELECT, EXAMINE, CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE.

use std::collections::HashSet;

use imap_codec::imap_types::sequence::SequenceSet;

use imap_codec::imap_types::command::SelectParameter;

use super::{in_ranges, no, ranges, resolve, sel, uid_set, uidvalidity};
use crate::imap::session::{Msg, Reply, Selected, Session, State};
use crate::mailbox::{EntryId, Flag};

/// What a `SELECT … (QRESYNC (uidvalidity modseq [known-uids]))` asks for.
struct Resync {
    uidvalidity: u32,
    modseq: u64,
    known: Option<SequenceSet>,
}

pub(super) async fn select(
    s: &mut Session,
    name: &str,
    read_only: bool,
    params: &[SelectParameter],
) -> Reply {
    // Leaving the current folder first (RFC 3501: even if the new SELECT fails); RFC 7162
    // §3.2.11 (QRESYNC) and RFC 9051 §7.1 (IMAP4rev2) say so with [CLOSED].
    if matches!(s.state, State::Selected(_)) && (s.qresync || s.rev2) {
        s.conn.line("* OK [CLOSED] the previous folder is closed");
    }
    s.state = State::Authenticated;
    let mut resync = None;
    for p in params {
        match p {
            SelectParameter::CondStore => s.condstore = true,
            SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                known_uids,
                ..
            } => {
                // RFC 7162 §3.2.5: QRESYNC without ENABLE QRESYNC first is a BAD.
                if !s.qresync {
                    return Reply::Bad("ENABLE QRESYNC first".into());
                }
                resync = Some(Resync {
                    uidvalidity: uid_validity.get(),
                    modseq: mod_sequence_value.get(),
                    known: known_uids.clone(),
                });
            }
        }
    }
    let feed = s.ctx.mailbox.subscribe();
    let Some(info) = s.ctx.mailbox.folder(name) else {
        return Reply::No(format!("[NONEXISTENT] no folder named {name:?}"));
    };
    let validity = match uidvalidity(s, &info).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let map = s.ctx.mailbox.uid_map(info.id);
    let first_unseen = map.iter().position(|m| !m.3);
    let msgs: Vec<Msg> = map
        .into_iter()
        .map(|(uid, entry, modseq, _)| Msg { uid, entry, modseq })
        .collect();
    // \Recent: this session's if no other session took them first; EXAMINE takes nothing.
    let candidates: Vec<(u32, EntryId)> = s
        .ctx
        .mailbox
        .recent_in(info.id)
        .into_iter()
        .filter(|(uid, _)| msgs.binary_search_by_key(uid, |m| m.uid).is_ok())
        // IMAP4rev2 has no \Recent (RFC 9051 appendix E): such a session claims none.
        .filter(|_| !s.rev2)
        .collect();
    let entries: Vec<EntryId> = candidates.iter().map(|c| c.1).collect();
    let mine: HashSet<EntryId> = if read_only {
        s.ctx.recent.unclaimed(&entries)
    } else {
        s.ctx.recent.claim(&entries)
    }
    .into_iter()
    .collect();
    let recent: HashSet<u32> = candidates
        .iter()
        .filter(|c| mine.contains(&c.1))
        .map(|c| c.0)
        .collect();
    if !read_only {
        crate::imap::recent::persist(&s.ctx, &info.name, mine.iter().copied().collect()).await;
    }
    let (rev2, utf8) = (s.rev2, s.utf8);
    let out = &mut s.conn;
    // Keywords are announced as FETCH responses come to use them (Selected::announce).
    crate::imap::session::flag_lines(&mut out.out, &Default::default(), read_only);
    out.line(&format!("* {} EXISTS", msgs.len()));
    if rev2 {
        // RFC 9051 §6.3.2: a LIST response gives the folder's name as the server spells it.
        let mut line = b"* LIST () \"/\" ".to_vec();
        crate::imap::out::mailbox_as(&mut line, &info.name, utf8);
        line.extend_from_slice(b"\r\n");
        out.out.extend_from_slice(&line);
    } else {
        out.line(&format!("* {} RECENT", recent.len()));
    }
    out.line(&format!("* OK [UIDVALIDITY {validity}] UIDs valid"));
    out.line(&format!(
        "* OK [UIDNEXT {}] predicted next UID",
        info.uidnext
    ));
    // RFC 9051 dropped the UNSEEN response code.
    if let Some(i) = first_unseen.filter(|_| !rev2) {
        out.line(&format!("* OK [UNSEEN {}] first unseen message", i + 1));
    }
    // A MODSEQ is never 0; a folder with no change yet has none to give (RFC 7162 §3.1.2.2).
    let highest = info
        .highestmodseq
        .max(msgs.iter().map(|m| m.modseq).max().unwrap_or(0));
    if highest > 0 {
        out.line(&format!("* OK [HIGHESTMODSEQ {highest}] modseqs valid"));
    } else {
        out.line("* OK [NOMODSEQ] no changes yet");
    }
    let n = msgs.len();
    let mut selected = Selected {
        name: info.name,
        id: info.id,
        read_only,
        msgs,
        feed,
        gone: Vec::new(),
        // The engine's "seen by a reader" marks of the claim above are not flag changes.
        quiet: if read_only { HashSet::new() } else { mine },
        announced_exists: n,
        keywords: Default::default(),
        stash: Vec::new(),
        lagged: false,
        recent,
    };
    if let Some(r) = resync
        && r.uidvalidity == validity
        && let Err(e) = report_changes(s, &mut selected, &r).await
    {
        return e;
    }
    s.state = State::Selected(Box::new(selected));
    if read_only {
        Reply::Ok("[READ-ONLY] EXAMINE completed".into())
    } else {
        Reply::Ok("[READ-WRITE] SELECT completed".into())
    }
}

/// QRESYNC (RFC 7162 §3.2.5.1): what changed since the client's `modseq`, among the UIDs it
/// knows: `* VANISHED (EARLIER)` for the expunged ones, then a FETCH (UID, FLAGS, MODSEQ) for
/// each message changed or added since.
async fn report_changes(s: &mut Session, sel: &mut Selected, r: &Resync) -> Result<(), Reply> {
    // `*` is not allowed in known-uids; taken as the largest UID there can be.
    let known = r.known.as_ref().map(|set| ranges(set, u32::MAX));
    let in_known = |uid: u32| known.as_ref().is_none_or(|k| in_ranges(k, uid));
    let vanished: Vec<u32> = s
        .ctx
        .mailbox
        .vanished_since(sel.id, r.modseq)
        .await
        .map_err(no)?
        .into_iter()
        .filter(|u| in_known(*u))
        .collect();
    let out = &mut s.conn.out;
    if !vanished.is_empty() {
        out.extend_from_slice(
            format!("* VANISHED (EARLIER) {}\r\n", uid_set(&vanished)).as_bytes(),
        );
    }
    let changed: Vec<EntryId> = sel
        .msgs
        .iter()
        .filter(|m| m.modseq > r.modseq && in_known(m.uid))
        .map(|m| m.entry)
        .collect();
    for info in s
        .ctx
        .mailbox
        .messages_by_entry_light(sel.id, &changed)
        .into_iter()
        .flatten()
    {
        let Some(i) = sel.seq_of_uid(info.uid) else {
            continue;
        };
        sel.announce(out, &info.flags);
        out.extend_from_slice(format!("* {} FETCH (UID {} FLAGS ", i + 1, info.uid).as_bytes());
        crate::imap::out::flags_with(out, &info.flags, sel.recent.contains(&info.uid));
        out.extend_from_slice(format!(" MODSEQ ({}))\r\n", info.modseq).as_bytes());
    }
    Ok(())
}

/// The selected messages flagged \Deleted (within `only`, if given).
fn deleted(s: &Session, sel: &Selected, only: Option<&[usize]>) -> Vec<EntryId> {
    let entries: Vec<EntryId> = match only {
        Some(idx) => idx.iter().map(|i| sel.msgs[*i].entry).collect(),
        None => sel.msgs.iter().map(|m| m.entry).collect(),
    };
    s.ctx
        .mailbox
        .messages_by_entry_light(sel.id, &entries)
        .into_iter()
        .flatten()
        .filter(|m| m.flags.has(Flag::Trashed))
        .map(|m| m.entry)
        .collect()
}

/// CLOSE (expunging \Deleted messages silently unless read-only) and UNSELECT.
pub(super) async fn close(s: &mut Session, expunge: bool) -> Reply {
    let State::Selected(cur) = std::mem::replace(&mut s.state, State::Authenticated) else {
        return Reply::Bad("no folder selected".into());
    };
    if expunge && !cur.read_only {
        let doomed = deleted(s, &cur, None);
        if !doomed.is_empty()
            && let Err(e) = s.ctx.mailbox.expunge_present(&cur.name, &doomed).await
        {
            return no(e);
        }
    }
    Reply::Ok(
        if expunge {
            "CLOSE completed"
        } else {
            "UNSELECT completed"
        }
        .into(),
    )
}

/// EXPUNGE and UID EXPUNGE: the untagged EXPUNGEs come from the change feed.
pub(super) async fn expunge(s: &mut Session, uids: Option<&SequenceSet>) -> Reply {
    let Some(cur) = sel(s) else {
        return Reply::Bad("no folder selected".into());
    };
    if cur.read_only {
        return Reply::No("[READ-ONLY] the folder is open read-only".into());
    }
    let only = uids.map(|set| resolve(cur, set, true));
    let (name, doomed) = {
        let State::Selected(cur) = &s.state else {
            return Reply::Bad("no folder selected".into());
        };
        (cur.name.clone(), deleted(s, cur, only.as_deref()))
    };
    if !doomed.is_empty()
        && let Err(e) = s.ctx.mailbox.expunge_present(&name, &doomed).await
    {
        return no(e);
    }
    if s.condstore
        && let Some(cur) = sel(s)
    {
        let id = cur.id;
        let h = s.ctx.mailbox.highest_modseq(id);
        if h > 0 {
            return Reply::Ok(format!("[HIGHESTMODSEQ {h}] EXPUNGE completed"));
        }
    }
    Reply::Ok("EXPUNGE completed".into())
}
