//! SELECT, EXAMINE, CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE.

use std::collections::HashSet;

use imap_codec::imap_types::sequence::SequenceSet;

use super::{no, resolve, sel, uidvalidity};
use crate::imap::session::{Msg, Reply, Selected, Session, State};
use crate::mailbox::{EntryId, Flag};

pub(super) async fn select(s: &mut Session, name: &str, read_only: bool) -> Reply {
    // Leaving the current folder first (RFC 3501: even if the new SELECT fails).
    s.state = State::Authenticated;
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
    let out = &mut s.conn;
    // Keywords are announced as FETCH responses come to use them (Selected::announce).
    crate::imap::session::flag_lines(&mut out.out, &Default::default(), read_only);
    out.line(&format!("* {} EXISTS", msgs.len()));
    out.line(&format!("* {} RECENT", info.recent));
    out.line(&format!("* OK [UIDVALIDITY {validity}] UIDs valid"));
    out.line(&format!(
        "* OK [UIDNEXT {}] predicted next UID",
        info.uidnext
    ));
    if let Some(i) = first_unseen {
        out.line(&format!("* OK [UNSEEN {}] first unseen message", i + 1));
    }
    let n = msgs.len();
    s.state = State::Selected(Box::new(Selected {
        name: info.name,
        id: info.id,
        read_only,
        msgs,
        feed,
        gone: Vec::new(),
        quiet: HashSet::new(),
        announced_exists: n,
        keywords: Default::default(),
        stash: Vec::new(),
        lagged: false,
    }));
    if read_only {
        Reply::Ok("[READ-ONLY] EXAMINE completed".into())
    } else {
        Reply::Ok("[READ-WRITE] SELECT completed".into())
    }
}

/// The selected messages flagged \Deleted (within `only`, if given).
fn deleted(s: &Session, sel: &Selected, only: Option<&[usize]>) -> Vec<EntryId> {
    let entries: Vec<EntryId> = match only {
        Some(idx) => idx.iter().map(|i| sel.msgs[*i].entry).collect(),
        None => sel.msgs.iter().map(|m| m.entry).collect(),
    };
    s.ctx
        .mailbox
        .messages_by_entry(sel.id, &entries)
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
    Reply::Ok("EXPUNGE completed".into())
}
