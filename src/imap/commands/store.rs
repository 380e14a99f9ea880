//! STORE (+/-FLAGS[.SILENT]), COPY and MOVE (with UIDPLUS's COPYUID), and their UID forms.

use std::collections::HashSet;

use imap_codec::imap_types::flag::{Flag as ImapFlag, StoreResponse, StoreType};
use imap_codec::imap_types::sequence::SequenceSet;

use super::{flags_from, no, resolve, sel, uid_set};
use crate::imap::out;
use crate::imap::session::{Reply, Session, State};
use crate::mailbox::{EntryId, FlagMode};

pub(super) async fn store(
    s: &mut Session,
    set: &SequenceSet,
    kind: StoreType,
    response: StoreResponse,
    flags: &[ImapFlag<'_>],
    uid: bool,
    unchanged_since: Option<u64>,
) -> Reply {
    if unchanged_since.is_some() {
        s.condstore = true;
    }
    let condstore = s.condstore;
    let Some(cur) = sel(s) else {
        return Reply::Bad("no folder selected".into());
    };
    if cur.read_only {
        return Reply::No("[READ-ONLY] the folder is open read-only".into());
    }
    let idx = resolve(cur, set, uid);
    let entries: Vec<EntryId> = idx.iter().map(|i| cur.msgs[*i].entry).collect();
    let (folder, name) = (cur.id, cur.name.clone());
    // This session reports these itself (or, with .SILENT, not at all).
    cur.quiet.extend(entries.iter().copied());
    let mode = match kind {
        StoreType::Add => FlagMode::Add,
        StoreType::Remove => FlagMode::Remove,
        StoreType::Replace => FlagMode::Replace,
    };
    let wanted = flags_from(flags);
    // Messages expunged meanwhile by someone else are skipped (RFC 3501 allows either).
    // UNCHANGEDSINCE (RFC 7162 §3.1.3): a message changed after the client's MODSEQ is left
    // as it is and named in MODIFIED. The test and the change are two steps: a change by
    // another session between them is not detected (the engine has no conditional store).
    let mut modified: Vec<u32> = Vec::new();
    let live: Vec<EntryId> = idx
        .iter()
        .zip(s.ctx.mailbox.messages_by_entry_light(folder, &entries))
        .filter_map(|(i, m)| {
            let m = m?;
            if unchanged_since.is_some_and(|n| m.modseq > n) {
                modified.push(if uid { m.uid } else { *i as u32 + 1 });
                return None;
            }
            Some(m.entry)
        })
        .collect();
    if let Err(e) = s
        .ctx
        .mailbox
        .set_flags_present(&name, &live, mode, &wanted, false)
        .await
    {
        return no(e);
    }
    let changed: HashSet<EntryId> = live.iter().copied().collect();
    if !modified.is_empty()
        && let State::Selected(cur) = &mut s.state
    {
        // Not changed here: another session's change to them is still to be reported.
        cur.quiet.retain(|e| changed.contains(e));
    }
    // With UNCHANGEDSINCE even .SILENT answers with the new MODSEQ of what it changed.
    if response == StoreResponse::Answer || unchanged_since.is_some() {
        let silent = response != StoreResponse::Answer;
        for (i, info) in idx
            .iter()
            .zip(s.ctx.mailbox.messages_by_entry_light(folder, &entries))
        {
            let Some(info) = info else { continue };
            if !changed.contains(&info.entry) {
                continue;
            }
            let mut recent = false;
            if let State::Selected(cur) = &mut s.state {
                cur.announce(&mut s.conn.out, &info.flags);
                recent = cur.recent.contains(&info.uid);
            }
            let o = &mut s.conn.out;
            o.extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
            if uid {
                o.extend_from_slice(format!("UID {} ", info.uid).as_bytes());
            }
            if !silent {
                o.extend_from_slice(b"FLAGS ");
                out::flags_with(o, &info.flags, recent);
                if condstore {
                    o.push(b' ');
                }
            }
            if condstore {
                o.extend_from_slice(format!("MODSEQ ({})", info.modseq).as_bytes());
            }
            o.extend_from_slice(b")\r\n");
        }
    }
    if !modified.is_empty() {
        modified.sort_unstable();
        return Reply::Ok(format!(
            "[MODIFIED {}] conditional STORE completed",
            uid_set(&modified)
        ));
    }
    Reply::Ok("STORE completed".into())
}

pub(super) async fn copy(
    s: &mut Session,
    set: &SequenceSet,
    to: &str,
    uid: bool,
    moving: bool,
) -> Reply {
    let Some(cur) = sel(s) else {
        return Reply::Bad("no folder selected".into());
    };
    if moving && cur.read_only {
        return Reply::No("[READ-ONLY] the folder is open read-only".into());
    }
    let idx = resolve(cur, set, uid);
    let entries: Vec<EntryId> = idx.iter().map(|i| cur.msgs[*i].entry).collect();
    let src_uid: std::collections::HashMap<EntryId, u32> = idx
        .iter()
        .map(|i| (cur.msgs[*i].entry, cur.msgs[*i].uid))
        .collect();
    let (folder, name) = (cur.id, cur.name.clone());
    let Some(target) = s.ctx.mailbox.folder(to) else {
        return Reply::No(format!("[TRYCREATE] no folder named {to:?}"));
    };
    let live: Vec<EntryId> = s
        .ctx
        .mailbox
        .messages_by_entry_light(folder, &entries)
        .into_iter()
        .flatten()
        .map(|m| m.entry)
        .collect();
    if live.is_empty() {
        return Reply::Ok(
            if moving {
                "MOVE completed"
            } else {
                "COPY completed"
            }
            .into(),
        );
    }
    // Messages expunged meanwhile (even between the filter above and the engine's lock)
    // are skipped: COPY/MOVE of the rest succeeds.
    let done = s
        .ctx
        .mailbox
        .transfer_present(&name, &live, &target.name, moving)
        .await;
    let pairs = match done {
        Ok(p) => p,
        Err(e) => return no(e),
    };
    let validity = s
        .ctx
        .mailbox
        .folder(&target.name)
        .map_or(target.uidvalidity, |f| f.uidvalidity)
        .max(1);
    let from: Vec<u32> = pairs
        .iter()
        .filter_map(|(e, _)| src_uid.get(e).copied())
        .collect();
    let into: Vec<u32> = pairs.iter().map(|(_, m)| m.uid).collect();
    let code = format!("[COPYUID {validity} {} {}]", uid_set(&from), uid_set(&into));
    if moving {
        // RFC 6851: COPYUID in an untagged OK before the EXPUNGEs.
        s.conn.line(&format!("* OK {code} moved"));
        Reply::Ok("MOVE completed".into())
    } else {
        Reply::Ok(format!("{code} COPY completed"))
    }
}
