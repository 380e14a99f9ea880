//! CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS.

use imap_codec::imap_types::mailbox::ListMailbox;
use imap_codec::imap_types::status::StatusDataItemName;

use super::{no, uidvalidity};
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

pub(super) fn list(
    s: &mut Session,
    reference: &str,
    pattern: &ListMailbox<'_>,
    lsub: bool,
) -> Reply {
    let what = if lsub { "LSUB" } else { "LIST" };
    let pattern = pattern_text(pattern);
    if pattern.is_empty() && !lsub {
        s.conn.line("* LIST (\\Noselect) \"/\" \"\"");
        return Reply::Ok("LIST completed".into());
    }
    let full = if reference.is_empty() || pattern.starts_with('/') {
        pattern
    } else if reference.ends_with('/') {
        format!("{reference}{pattern}")
    } else {
        format!("{reference}/{pattern}")
    };
    let pat: Vec<char> = full.chars().collect();
    let folders = s.ctx.mailbox.folders();
    for f in &folders {
        if lsub && !f.subscribed {
            continue;
        }
        let cmp: Vec<char> = if f.name == "INBOX" && full.to_ascii_uppercase().starts_with("INBOX")
        {
            // INBOX matches case-insensitively.
            let upper: String = full
                .chars()
                .take(5)
                .collect::<String>()
                .to_ascii_uppercase();
            let rest: String = full.chars().skip(5).collect();
            if !matches(
                &format!("{upper}{rest}").chars().collect::<Vec<_>>(),
                &['I', 'N', 'B', 'O', 'X'],
            ) {
                continue;
            }
            Vec::new()
        } else {
            f.name.chars().collect()
        };
        if !cmp.is_empty() && !matches(&pat, &cmp) {
            continue;
        }
        let prefix = format!("{}/", f.name);
        let children = folders.iter().any(|g| g.name.starts_with(&prefix));
        let mut attrs = vec![if children {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        }];
        if let Some(a) = f.role.and_then(|r| r.attribute()) {
            attrs.push(a);
        }
        let mut line = format!("* {what} ({}) \"/\" ", attrs.join(" ")).into_bytes();
        out::mailbox(&mut line, &f.name);
        line.extend_from_slice(b"\r\n");
        s.conn.out.extend_from_slice(&line);
    }
    Reply::Ok(format!("{what} completed"))
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
            StatusDataItemName::HighestModSeq => {
                s.condstore = true;
                parts.push(format!("HIGHESTMODSEQ {}", info.highestmodseq));
            }
            _ => {}
        }
    }
    let mut line = b"* STATUS ".to_vec();
    out::mailbox(&mut line, &info.name);
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
