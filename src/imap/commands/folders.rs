//! CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS.

use imap_codec::imap_types::mailbox::ListMailbox;
use imap_codec::imap_types::status::StatusDataItemName;

use super::{no, uidvalidity};
use crate::imap::extended::{ListExt, MAX_PATTERN};
use crate::imap::out;
use crate::imap::session::{Reply, Session};
use crate::mailbox::Flag;

pub(super) async fn create(s: &mut Session, name: &str) -> Reply {
    if name.eq_ignore_ascii_case("INBOX") {
        return Reply::No("[ALREADYEXISTS] INBOX always exists".into());
    }
    // Parents are created as needed (RFC 3501 §6.3.3 allows it; clients expect it).
    let mut path = String::new();
    let levels: Vec<&str> = name.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(level);
        let last = i + 1 == levels.len();
        if !last && s.ctx.mailbox.folder(&path).is_some() {
            continue;
        }
        if let Err(e) = s.ctx.mailbox.create_folder(&path).await {
            if !last && matches!(e, crate::mailbox::Error::FolderExists(_)) {
                continue;
            }
            return no(e);
        }
    }
    Reply::Ok("CREATE completed".into())
}

pub(super) async fn delete(s: &mut Session, name: &str) -> Reply {
    let prefix = format!("{name}/");
    if s.ctx
        .mailbox
        .folders()
        .iter()
        .any(|f| f.name.starts_with(&prefix))
    {
        return Reply::No("[INUSE] the folder has subfolders; delete them first".into());
    }
    match s.ctx.mailbox.delete_folder(name).await {
        Ok(()) => Reply::Ok("DELETE completed".into()),
        Err(e) => no(e),
    }
}

pub(super) async fn rename(s: &mut Session, from: &str, to: &str) -> Reply {
    if from.eq_ignore_ascii_case("INBOX") {
        return Reply::No("[CANNOT] renaming INBOX is not supported".into());
    }
    if let Err(e) = s.ctx.mailbox.rename_folder(from, to).await {
        return no(e);
    }
    // Subfolders move along.
    let prefix = format!("{from}/");
    let children: Vec<String> = s
        .ctx
        .mailbox
        .folders()
        .into_iter()
        .filter(|f| f.name.starts_with(&prefix))
        .map(|f| f.name)
        .collect();
    for child in children {
        let new = format!("{to}/{}", &child[prefix.len()..]);
        if let Err(e) = s.ctx.mailbox.rename_folder(&child, &new).await {
            return no(e);
        }
    }
    Reply::Ok("RENAME completed".into())
}

pub(super) async fn subscribe(s: &mut Session, name: &str, on: bool) -> Reply {
    match s.ctx.mailbox.subscribe_folder(name, on).await {
        Ok(()) => Reply::Ok(
            if on {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            }
            .into(),
        ),
        Err(e) => no(e),
    }
}

/// Does `name` match a LIST pattern (`*` anything, `%` anything but the delimiter)?
/// Dynamic programming: O(pattern × name), whatever the wildcards.
pub(crate) fn matches(pattern: &[char], name: &[char]) -> bool {
    let n = name.len();
    let mut prev = vec![false; n + 1];
    prev[0] = true;
    for c in pattern {
        let mut cur = vec![false; n + 1];
        for j in 0..=n {
            cur[j] = match c {
                '*' => prev[j] || (j > 0 && cur[j - 1]),
                '%' => prev[j] || (j > 0 && name[j - 1] != '/' && cur[j - 1]),
                c => j > 0 && prev[j - 1] && name[j - 1] == *c,
            };
        }
        prev = cur;
    }
    prev[n]
}

fn pattern_text(lm: &ListMailbox<'_>) -> String {
    let raw = match lm {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    };
    crate::imap::utf7::decode(&raw).unwrap_or(raw)
}

/// The full pattern of a reference and a pattern (RFC 3501 §6.3.8).
fn full_pattern(reference: &str, pattern: &str) -> String {
    if reference.is_empty() || pattern.starts_with('/') {
        pattern.to_string()
    } else if reference.ends_with('/') {
        format!("{reference}{pattern}")
    } else {
        format!("{reference}/{pattern}")
    }
}

/// Does folder `name` match the full pattern? INBOX matches case-insensitively.
fn name_matches(full: &[char], name: &str) -> bool {
    if name == "INBOX" {
        let upper: Vec<char> = full
            .iter()
            .enumerate()
            .map(|(i, c)| if i < 5 { c.to_ascii_uppercase() } else { *c })
            .collect();
        return matches(&upper, &['I', 'N', 'B', 'O', 'X']);
    }
    let n: Vec<char> = name.chars().collect();
    matches(full, &n)
}

/// How LIST was asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    List,
    Lsub,
    /// RFC 5258 syntax (selection or return options, several patterns).
    Extended,
}

/// One LIST/LSUB: patterns already joined with the reference.
async fn list_core(s: &mut Session, patterns: &[String], opt: &ListExt, mode: Mode) -> Reply {
    let what = if mode == Mode::Lsub { "LSUB" } else { "LIST" };
    if patterns.iter().any(|p| p.chars().count() > MAX_PATTERN) {
        return Reply::Bad("pattern too long".into());
    }
    let pats: Vec<Vec<char>> = patterns.iter().map(|p| p.chars().collect()).collect();
    let hit = |name: &str| pats.iter().any(|p| name_matches(p, name));
    let folders = s.ctx.mailbox.folders();
    let subscribed_only = mode == Mode::Lsub || opt.subscribed_only;
    let show_subscribed = mode == Mode::Extended && (opt.subscribed_only || opt.ret_subscribed);
    let selected = |f: &crate::mailbox::FolderInfo| {
        (!subscribed_only || f.subscribed) && (!opt.special_use_only || f.role.is_some())
    };
    let utf8 = s.utf8;
    let mut lines: Vec<(Vec<u8>, Option<String>)> = Vec::new();
    for f in &folders {
        if !hit(&f.name) {
            continue;
        }
        let prefix = format!("{}/", f.name);
        let mut children = folders.iter().filter(|g| g.name.starts_with(&prefix));
        let has_children = children.clone().next().is_some();
        // RFC 5258 §3.5 RECURSIVEMATCH: a folder that does not meet the selection itself
        // but has a descendant that does (and that this LIST does not report) says so.
        let childinfo = opt.recursive_match
            && opt.subscribed_only
            && children.any(|g| selected(g) && !hit(&g.name));
        if !selected(f) && !childinfo {
            continue;
        }
        let mut attrs = vec![if has_children {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        }];
        if show_subscribed && f.subscribed {
            attrs.push("\\Subscribed");
        }
        if let Some(a) = f.role.and_then(|r| r.attribute()) {
            attrs.push(a);
        }
        let mut line = format!("* {what} ({}) \"/\" ", attrs.join(" ")).into_bytes();
        out::mailbox_as(&mut line, &f.name, utf8);
        if childinfo {
            line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
        }
        line.extend_from_slice(b"\r\n");
        lines.push((line, selected(f).then(|| f.name.clone())));
    }
    // A subscription outlives its folder: LSUB shows it \Noselect (RFC 3501 §6.3.9), LIST
    // (SUBSCRIBED) \NonExistent (RFC 5258 §3.4). At most as many as the folder limit.
    if subscribed_only && !opt.special_use_only {
        for name in s.ctx.mailbox.subscribed_deleted(MAX_GONE) {
            if !hit(&name) {
                continue;
            }
            let attrs = if mode == Mode::Lsub {
                "\\Noselect"
            } else {
                "\\NonExistent \\Subscribed"
            };
            let mut line = format!("* {what} ({attrs}) \"/\" ").into_bytes();
            out::mailbox_as(&mut line, &name, utf8);
            line.extend_from_slice(b"\r\n");
            lines.push((line, None));
        }
    }
    for (line, status_of) in lines {
        s.conn.out.extend_from_slice(&line);
        // RFC 5819: the STATUS of each selectable folder listed, after its LIST line.
        if let (Some(items), Some(name)) = (&opt.status, status_of)
            && let Reply::No(e) = status(s, &name, items).await
        {
            tracing::debug!(folder = %name, error = %e, "LIST-STATUS skipped a folder");
        }
        s.conn.flush_if_big().await.ok();
    }
    Reply::Ok(format!("{what} completed"))
}

/// Deleted folders still subscribed that one LIST shows, at most.
const MAX_GONE: usize = 10_000;

pub(super) async fn list(
    s: &mut Session,
    reference: &str,
    pattern: &ListMailbox<'_>,
    lsub: bool,
) -> Reply {
    let pattern = pattern_text(pattern);
    if pattern.is_empty() && !lsub {
        s.conn.line("* LIST (\\Noselect) \"/\" \"\"");
        return Reply::Ok("LIST completed".into());
    }
    let full = full_pattern(reference, &pattern);
    let mode = if lsub { Mode::Lsub } else { Mode::List };
    list_core(s, &[full], &ListExt::default(), mode).await
}

/// LIST with RFC 5258 syntax (see [`crate::imap::extended`]).
pub(crate) async fn list_extended(s: &mut Session, l: &ListExt) -> Reply {
    let decode = |b: &[u8]| {
        let raw = String::from_utf8_lossy(b).into_owned();
        crate::imap::utf7::decode(&raw).unwrap_or(raw)
    };
    let reference = decode(&l.reference);
    let reference = reference
        .strip_suffix('/')
        .unwrap_or(&reference)
        .to_string();
    let patterns: Vec<String> = l.patterns.iter().map(|p| decode(p)).collect();
    if patterns.iter().all(String::is_empty) {
        s.conn.line("* LIST (\\Noselect) \"/\" \"\"");
        return Reply::Ok("LIST completed".into());
    }
    let full: Vec<String> = patterns
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| full_pattern(&reference, p))
        .collect();
    list_core(s, &full, l, Mode::Extended).await
}

pub(super) async fn status(s: &mut Session, name: &str, items: &[StatusDataItemName]) -> Reply {
    let Some(info) = s.ctx.mailbox.folder(name) else {
        return Reply::No(format!("[NONEXISTENT] no folder named {name:?}"));
    };
    let validity = match uidvalidity(s, &info).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut parts = Vec::new();
    for item in items {
        match item {
            StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", info.exists)),
            StatusDataItemName::Recent => parts.push(format!("RECENT {}", info.recent)),
            StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", info.uidnext)),
            StatusDataItemName::UidValidity => parts.push(format!("UIDVALIDITY {validity}")),
            StatusDataItemName::Unseen => parts.push(format!("UNSEEN {}", info.unseen)),
            StatusDataItemName::Deleted => {
                let n = s
                    .ctx
                    .mailbox
                    .messages_of(info.id)
                    .iter()
                    .filter(|m| m.flags.has(Flag::Trashed))
                    .count();
                parts.push(format!("DELETED {n}"));
            }
            // RFC 8438 STATUS=SIZE: the folder's messages' RFC822.SIZE, added up.
            StatusDataItemName::Size => {
                let n: u64 = s
                    .ctx
                    .mailbox
                    .messages_of(info.id)
                    .iter()
                    .map(|m| m.size)
                    .sum();
                parts.push(format!("SIZE {n}"));
            }
            // RFC 9208 §4.2.1: KiB an EXPUNGE would free.
            StatusDataItemName::DeletedStorage => {
                let n: u64 = s
                    .ctx
                    .mailbox
                    .messages_of(info.id)
                    .iter()
                    .filter(|m| m.flags.has(Flag::Trashed))
                    .map(|m| m.size)
                    .sum();
                parts.push(format!("DELETED-STORAGE {}", n.div_ceil(1024)));
            }
            StatusDataItemName::HighestModSeq => {
                s.condstore = true;
                parts.push(format!("HIGHESTMODSEQ {}", info.highestmodseq));
            }
        }
    }
    let mut line = b"* STATUS ".to_vec();
    out::mailbox_as(&mut line, &info.name, s.utf8);
    line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
    s.conn.out.extend_from_slice(&line);
    Reply::Ok("STATUS completed".into())
}

#[cfg(test)]
mod tests {
    use super::matches;

    fn m(p: &str, n: &str) -> bool {
        matches(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn wildcards() {
        assert!(m("*", "a/b/c"));
        assert!(m("%", "Sent"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a*c", "a/b/c"));
        assert!(!m("x*", "a"));
    }
}
