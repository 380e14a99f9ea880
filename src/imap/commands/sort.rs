//! SORT and THREAD=ORDEREDSUBJECT (RFC 5256), over the messages a SEARCH would find.
//!
//! Sort keys are read from each match's header once (decoded by mail-parser) and cut to
//! [`MAX_KEY`] bytes, so a SORT holds at most that much per message of the folder.

use std::cmp::Ordering;

use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
use imap_codec::imap_types::search::SearchKey;

use super::search::{check_charset, matching};
use crate::imap::mime;
use crate::imap::session::{Reply, Session};
use crate::mailbox::MessageInfo;

/// Bytes of one text sort key kept.
const MAX_KEY: usize = 256;

/// What one message sorts by.
#[derive(Debug, Default, Clone)]
struct Keys {
    seq: u32,
    uid: u32,
    arrival: i64,
    /// The Date: header in UTC, or the arrival when there is none (RFC 5256 §2.2).
    date: i64,
    size: u64,
    subject: String,
    from: String,
    to: String,
    cc: String,
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_KEY {
        let mut end = MAX_KEY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The local part (addr-mailbox) of a field's first address, lower-cased.
fn first_mailbox(a: Option<&mail_parser::Address<'_>>) -> String {
    use mail_parser::Address;
    let addr = match a {
        Some(Address::List(l)) => l.first(),
        Some(Address::Group(g)) => g.iter().flat_map(|g| g.addresses.iter()).next(),
        None => None,
    };
    let full = addr.and_then(|x| x.address.as_deref()).unwrap_or("");
    cut(full.split('@').next().unwrap_or("").to_lowercase())
}

/// RFC 5256 §2.1 base subject: encoded words decoded, white space collapsed, `Re:`, `Fw:`,
/// `Fwd:`, `[blob]` prefixes and `(fwd)` trailers and `[Fwd: …]` wrappers removed, case
/// folded.
pub(super) fn base_subject(s: &str) -> String {
    let mut s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    loop {
        let before = s.len();
        // Trailers.
        loop {
            let t = s.trim_end();
            let lower = t.to_ascii_lowercase();
            if lower.ends_with("(fwd)") {
                s = t[..t.len() - 5].to_string();
            } else {
                s = t.to_string();
                break;
            }
        }
        // Leaders: blobs and re/fw/fwd [blob] ":".
        loop {
            let t = s.trim_start();
            let next = strip_leader(t);
            match next {
                Some(rest) => s = rest.to_string(),
                None => {
                    s = t.to_string();
                    break;
                }
            }
        }
        // [fwd: subject]
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("[fwd:") && s.ends_with(']') {
            s = s[5..s.len() - 1].to_string();
        }
        if s.len() == before {
            break;
        }
    }
    cut(s.to_lowercase())
}

/// `[blob]` (unless it is all that is left) or `re`/`fw`/`fwd` `[blob]` `:`.
fn strip_leader(t: &str) -> Option<&str> {
    let lower = t.to_ascii_lowercase();
    for w in ["re", "fwd", "fw"] {
        if let Some(rest) = lower.strip_prefix(w) {
            let mut r = &t[t.len() - rest.len()..];
            r = r.trim_start();
            if r.starts_with('[')
                && let Some(e) = r.find(']')
            {
                r = r[e + 1..].trim_start();
            }
            if let Some(r) = r.strip_prefix(':') {
                return Some(r);
            }
        }
    }
    if t.starts_with('[')
        && let Some(e) = t.find(']')
    {
        let rest = t[e + 1..].trim_start();
        if !rest.is_empty() {
            return Some(rest);
        }
    }
    None
}

async fn keys_of(s: &Session, hits: Vec<(u32, MessageInfo)>, text: bool) -> Vec<Keys> {
    let mut v = Vec::with_capacity(hits.len());
    for (seq, info) in hits {
        let mut k = Keys {
            seq,
            uid: info.uid,
            arrival: info.internal_date,
            date: info.internal_date,
            size: info.size,
            ..Keys::default()
        };
        if text && let Ok(raw) = s.ctx.mailbox.read(info.entry).await {
            let h = mime::header_len(&raw);
            if let Some(m) = mime::parse(&raw[..h]) {
                if let Some(d) = m.date() {
                    k.date = d.to_timestamp();
                }
                k.subject = base_subject(m.subject().unwrap_or(""));
                k.from = first_mailbox(m.from());
                k.to = first_mailbox(m.to());
                k.cc = first_mailbox(m.cc());
            }
        }
        v.push(k);
    }
    v
}

fn compare(a: &Keys, b: &Keys, criteria: &[SortCriterion]) -> Ordering {
    for c in criteria {
        let o = match c.key {
            SortKey::Arrival => a.arrival.cmp(&b.arrival),
            SortKey::Date => a.date.cmp(&b.date),
            SortKey::Size => a.size.cmp(&b.size),
            SortKey::Subject => a.subject.cmp(&b.subject),
            SortKey::From | SortKey::DisplayFrom => a.from.cmp(&b.from),
            SortKey::To | SortKey::DisplayTo => a.to.cmp(&b.to),
            SortKey::Cc => a.cc.cmp(&b.cc),
        };
        let o = if c.reverse { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    // RFC 5256 §3: the sequence number breaks ties.
    a.seq.cmp(&b.seq)
}

pub(super) async fn sort(
    s: &mut Session,
    criteria: &[SortCriterion],
    charset: &str,
    search: &[SearchKey<'_>],
    uid: bool,
) -> Reply {
    if let Err(r) = check_charset(Some(charset)) {
        return r;
    }
    let hits = match matching(s, search).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let text = criteria
        .iter()
        .any(|c| !matches!(c.key, SortKey::Arrival | SortKey::Size));
    let mut keys = keys_of(s, hits, text).await;
    keys.sort_by(|a, b| compare(a, b, criteria));
    let mut line = String::from("* SORT");
    for k in &keys {
        line.push(' ');
        line.push_str(&(if uid { k.uid } else { k.seq }).to_string());
    }
    s.conn.line(&line);
    Reply::Ok("SORT completed".into())
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §3): messages with one base subject form a thread, the
/// first (by sent date) the parent of the others; threads in the order of their first.
fn ordered_subject(mut keys: Vec<Keys>, uid: bool) -> String {
    keys.sort_by(|a, b| (&a.subject, a.date, a.seq).cmp(&(&b.subject, b.date, b.seq)));
    let mut threads: Vec<Vec<Keys>> = Vec::new();
    for k in keys {
        match threads.last_mut() {
            Some(t) if t[0].subject == k.subject => t.push(k),
            _ => threads.push(vec![k]),
        }
    }
    threads.sort_by(|a, b| (a[0].date, a[0].seq).cmp(&(b[0].date, b[0].seq)));
    let n = |k: &Keys| if uid { k.uid } else { k.seq };
    let mut line = String::from("* THREAD ");
    for t in &threads {
        line.push('(');
        line.push_str(&n(&t[0]).to_string());
        if t.len() > 1 {
            line.push(' ');
            for k in &t[1..] {
                line.push_str(&format!("({})", n(k)));
            }
        }
        line.push(')');
    }
    line.trim_end().to_string()
}

pub(super) async fn thread(
    s: &mut Session,
    algorithm: &ThreadingAlgorithm<'_>,
    charset: &str,
    search: &[SearchKey<'_>],
    uid: bool,
) -> Reply {
    if !matches!(algorithm, ThreadingAlgorithm::OrderedSubject) {
        return Reply::Bad("THREAD=ORDEREDSUBJECT is the algorithm offered".into());
    }
    if let Err(r) = check_charset(Some(charset)) {
        return r;
    }
    let hits = match matching(s, search).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let keys = keys_of(s, hits, true).await;
    let line = ordered_subject(keys, uid);
    s.conn.line(&line);
    Reply::Ok("THREAD completed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects() {
        assert_eq!(base_subject("Re: Fwd:  Hello   World"), "hello world");
        assert_eq!(base_subject("RE [list]: [list] hello (fwd)"), "hello");
        assert_eq!(base_subject("[Fwd: re: Lunch]"), "lunch");
        assert_eq!(base_subject("[only a blob]"), "[only a blob]");
        assert_eq!(base_subject("Reply to this"), "reply to this");
        assert_eq!(base_subject(&"x".repeat(1000)).len(), MAX_KEY);
    }

    fn k(seq: u32, date: i64, subject: &str, size: u64) -> Keys {
        Keys {
            seq,
            uid: seq * 10,
            arrival: 100 - i64::from(seq),
            date,
            size,
            subject: subject.into(),
            ..Keys::default()
        }
    }

    #[test]
    fn sort_and_thread_orders() {
        let keys = vec![
            k(1, 30, "b", 5),
            k(2, 10, "a", 5),
            k(3, 20, "b", 1),
            k(4, 40, "c", 9),
        ];
        let by = |key, reverse| vec![SortCriterion { reverse, key }];
        let mut v = keys.clone();
        v.sort_by(|a, b| compare(a, b, &by(SortKey::Size, false)));
        assert_eq!(v.iter().map(|k| k.seq).collect::<Vec<_>>(), [3, 1, 2, 4]);
        v.sort_by(|a, b| compare(a, b, &by(SortKey::Date, true)));
        assert_eq!(v.iter().map(|k| k.seq).collect::<Vec<_>>(), [4, 1, 3, 2]);
        v.sort_by(|a, b| compare(a, b, &by(SortKey::Arrival, false)));
        assert_eq!(v.iter().map(|k| k.seq).collect::<Vec<_>>(), [4, 3, 2, 1]);
        assert_eq!(
            ordered_subject(keys.clone(), false),
            "* THREAD (2)(3 (1))(4)"
        );
        assert_eq!(ordered_subject(keys, true), "* THREAD (20)(30 (10))(40)");
        assert_eq!(ordered_subject(Vec::new(), false), "* THREAD");
    }
}
