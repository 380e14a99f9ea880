//! SEARCH and UID SEARCH: every RFC 3501 key, CHARSET UTF-8/US-ASCII. Text keys match
//! case-insensitively (ASCII) against the raw header field or its decoded value, and BODY/TEXT
//! against the raw message bytes.

use std::sync::Arc;

use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;

use super::{resolve, sel};
use crate::imap::extended::SearchReturn;
use crate::imap::mime;
use crate::imap::session::{Reply, Selected, Session};
use crate::mailbox::{EntryId, Flag, MessageInfo};

fn needs_bytes(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::And(v) => v.as_ref().iter().any(needs_bytes),
        SearchKey::Not(k) => needs_bytes(k),
        SearchKey::Or(a, b) => needs_bytes(a) || needs_bytes(b),
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        _ => false,
    }
}

/// Seconds since the epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Does a search key use MODSEQ (RFC 7162)?
fn uses_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::And(v) => v.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::ModSequence { .. } => true,
        _ => false,
    }
}

/// Case-insensitive (ASCII) substring test.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.len() > hay.len() {
        return false;
    }
    let first = needle[0].to_ascii_lowercase();
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        match hay[i..=last]
            .iter()
            .position(|b| b.to_ascii_lowercase() == first)
        {
            Some(p) => i += p,
            None => return false,
        }
        if hay[i..i + needle.len()].eq_ignore_ascii_case(needle) {
            return true;
        }
        i += 1;
    }
    false
}

fn day(d: &NaiveDate) -> i64 {
    d.as_ref()
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp())
        .div_euclid(86_400)
}

/// Days since 1970-01-01 of a calendar date (proleptic Gregorian; H. Hinnant's
/// days_from_civil), or None for a month or day out of range.
fn civil_day(y: i64, m: u32, d: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Header fields holding addresses (SEARCH FROM/TO/CC/BCC, HEADER of these).
const ADDRESS_FIELDS: [&[u8]; 6] = [b"from", b"to", b"cc", b"bcc", b"sender", b"reply-to"];

/// One message being tested, its bytes read once if any key needs them.
struct Candidate<'a> {
    seq: u32,
    info: &'a MessageInfo,
    raw: Option<&'a [u8]>,
    header_len: usize,
    sets: &'a SetCache,
}

impl Candidate<'_> {
    fn header(&self) -> &[u8] {
        self.raw.map_or(&[][..], |r| &r[..self.header_len])
    }

    /// Does any field `name` contain `needle` (raw, or decoded by mail-parser)?
    fn field_has(&self, name: &[u8], needle: &[u8]) -> bool {
        let fields = mime::fields(self.header());
        let mut encoded = false;
        let mut any_address = false;
        for (n, f) in &fields {
            if !n.trim_ascii().eq_ignore_ascii_case(name) {
                continue;
            }
            let v = mime::field_value(f);
            if contains(&v, needle) {
                return true;
            }
            encoded |= contains(&v, b"=?");
            // An address field: also as `name <addr>` (quotes, comments and folding gone),
            // so "Bob Smith <bob@" finds `"Bob Smith" <bob@…>` (Dovecot does the same).
            any_address |= ADDRESS_FIELDS.iter().any(|a| a.eq_ignore_ascii_case(name));
        }
        let encoded = encoded || any_address;
        if !encoded {
            return false;
        }
        // Encoded words: compare with the decoded value as well.
        let raw = self.raw.unwrap_or_default();
        let Some(m) = mime::parse(&raw[..self.header_len]) else {
            return false;
        };
        let name = String::from_utf8_lossy(name);
        m.headers().iter().any(|h| {
            h.name.as_str().eq_ignore_ascii_case(&name)
                && decoded(h.value()).is_some_and(|v| contains(v.as_bytes(), needle))
        })
    }

    /// The day of the Date: header as written, its time and zone disregarded (RFC 3501
    /// §6.4.4: "disregarding time and timezone").
    fn sent_day(&self) -> Option<i64> {
        let raw = self.raw?;
        let m = mime::parse(&raw[..self.header_len])?;
        let d = m.date()?;
        civil_day(i64::from(d.year), u32::from(d.month), u32::from(d.day))
    }

    fn matches(&self, k: &SearchKey<'_>, sel: &Selected, largest_uid: u32) -> bool {
        let f = &self.info.flags;
        let idate = self.info.internal_date.div_euclid(86_400);
        match k {
            SearchKey::And(v) => v.as_ref().iter().all(|k| self.matches(k, sel, largest_uid)),
            SearchKey::SequenceSet(set) => self.sets.contains(set, self.seq, sel.msgs.len() as u32),
            SearchKey::Uid(set) => self.sets.contains(set, self.info.uid, largest_uid),
            SearchKey::All => true,
            SearchKey::Answered => f.has(Flag::Replied),
            SearchKey::Deleted => f.has(Flag::Trashed),
            SearchKey::Draft => f.has(Flag::Draft),
            SearchKey::Flagged => f.has(Flag::Flagged),
            SearchKey::Seen => f.has(Flag::Seen),
            SearchKey::Unanswered => !f.has(Flag::Replied),
            SearchKey::Undeleted => !f.has(Flag::Trashed),
            SearchKey::Undraft => !f.has(Flag::Draft),
            SearchKey::Unflagged => !f.has(Flag::Flagged),
            SearchKey::Unseen => !f.has(Flag::Seen),
            SearchKey::Recent => sel.recent.contains(&self.info.uid),
            SearchKey::New => sel.recent.contains(&self.info.uid) && !f.has(Flag::Seen),
            SearchKey::Old => !sel.recent.contains(&self.info.uid),
            SearchKey::Keyword(k) => has_keyword(self.info, k.as_ref()),
            SearchKey::Unkeyword(k) => !has_keyword(self.info, k.as_ref()),
            SearchKey::Larger(n) => self.info.size > u64::from(*n),
            SearchKey::Smaller(n) => self.info.size < u64::from(*n),
            SearchKey::Before(d) => idate < day(d),
            SearchKey::On(d) => idate == day(d),
            SearchKey::Since(d) => idate >= day(d),
            SearchKey::SentBefore(d) => self.sent_day().is_some_and(|x| x < day(d)),
            SearchKey::SentOn(d) => self.sent_day().is_some_and(|x| x == day(d)),
            SearchKey::SentSince(d) => self.sent_day().is_some_and(|x| x >= day(d)),
            SearchKey::Not(k) => !self.matches(k, sel, largest_uid),
            SearchKey::Or(a, b) => {
                self.matches(a, sel, largest_uid) || self.matches(b, sel, largest_uid)
            }
            SearchKey::Bcc(v) => self.field_has(b"bcc", v.as_ref()),
            SearchKey::Cc(v) => self.field_has(b"cc", v.as_ref()),
            SearchKey::From(v) => self.field_has(b"from", v.as_ref()),
            SearchKey::To(v) => self.field_has(b"to", v.as_ref()),
            SearchKey::Subject(v) => self.field_has(b"subject", v.as_ref()),
            SearchKey::Header(name, v) => self.field_has(name.as_ref(), v.as_ref()),
            SearchKey::Body(v) => self
                .raw
                .is_some_and(|r| contains(&r[self.header_len..], v.as_ref())),
            SearchKey::Text(v) => self.raw.is_some_and(|r| contains(r, v.as_ref())),
            // RFC 7162 §3.1.5: one MODSEQ per message (the entry name and type are not kept
            // apart: every flag's change is the message's change).
            SearchKey::ModSequence { modseq, .. } => self.info.modseq >= *modseq,
            // RFC 5032 WITHIN: by INTERNALDATE against now, in seconds.
            SearchKey::Older(n) => self.info.internal_date <= now() - i64::from(n.get()),
            SearchKey::Younger(n) => self.info.internal_date >= now() - i64::from(n.get()),
        }
    }
}

fn decoded(v: &mail_parser::HeaderValue<'_>) -> Option<String> {
    use mail_parser::{Address, HeaderValue};
    match v {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(l) => Some(l.join(" ")),
        HeaderValue::Address(a) => {
            let list: Vec<&mail_parser::Addr<'_>> = match a {
                Address::List(l) => l.iter().collect(),
                Address::Group(g) => g.iter().flat_map(|g| g.addresses.iter()).collect(),
            };
            Some(
                list.iter()
                    .map(|x| {
                        format!(
                            "{} <{}>",
                            x.name.as_deref().unwrap_or(""),
                            x.address.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
        _ => None,
    }
}

fn has_keyword(info: &MessageInfo, k: &str) -> bool {
    if k.eq_ignore_ascii_case("$Forwarded") {
        return info.flags.has(Flag::Passed);
    }
    info.flags
        .keywords
        .iter()
        .any(|x| x.eq_ignore_ascii_case(k))
}

/// Merged ranges of the sequence sets of one SEARCH, each computed once (not once per
/// message): by the set's address and the `*` it was resolved with.
#[derive(Default)]
struct SetCache(std::cell::RefCell<Vec<CachedSet>>);

/// (address of the set, the `*` used, its merged ranges).
type CachedSet = (usize, u32, Vec<(u32, u32)>);

impl SetCache {
    fn contains(&self, set: &SequenceSet, n: u32, largest: u32) -> bool {
        let key = set as *const SequenceSet as usize;
        let mut c = self.0.borrow_mut();
        let i = match c.iter().position(|(k, l, _)| *k == key && *l == largest) {
            Some(i) => i,
            None => {
                c.push((key, largest, super::ranges(set, largest)));
                c.len() - 1
            }
        };
        super::in_ranges(&c[i].2, n)
    }
}

/// `* ESEARCH (TAG "t") [UID] MIN n MAX n COUNT n ALL set [MODSEQ n]` (RFC 4731 §3.1, RFC
/// 7162 §3.1.5): `hits` ascending; MIN, MAX and ALL are left out when nothing matched.
pub(super) fn esearch(
    tag: &str,
    uid: bool,
    r: &SearchReturn,
    hits: &[u32],
    modseq: Option<u64>,
) -> String {
    let mut o = Vec::new();
    o.extend_from_slice(b"* ESEARCH (TAG ");
    crate::imap::out::string(&mut o, tag.as_bytes());
    o.push(b')');
    let mut line = String::from_utf8_lossy(&o).into_owned();
    if uid {
        line.push_str(" UID");
    }
    if let (true, Some(min)) = (r.min, hits.first()) {
        line.push_str(&format!(" MIN {min}"));
    }
    if let (true, Some(max)) = (r.max, hits.last()) {
        line.push_str(&format!(" MAX {max}"));
    }
    if r.count {
        line.push_str(&format!(" COUNT {}", hits.len()));
    }
    if r.all && !hits.is_empty() {
        line.push_str(&format!(" ALL {}", super::uid_set(hits)));
    }
    if let Some(m) = modseq.filter(|m| *m > 0 && !hits.is_empty()) {
        line.push_str(&format!(" MODSEQ {m}"));
    }
    line
}

/// SEARCH's CHARSET (and SORT's, THREAD's): UTF-8 and US-ASCII are read.
pub(super) fn check_charset(charset: Option<&str>) -> Result<(), Reply> {
    match charset {
        Some(c) if !c.eq_ignore_ascii_case("UTF-8") && !c.eq_ignore_ascii_case("US-ASCII") => Err(
            Reply::No("[BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into()),
        ),
        _ => Ok(()),
    }
}

/// The selected folder's messages that match every key, by sequence number (ascending),
/// each with its sequence number. At most the folder's messages.
pub(super) async fn matching(
    s: &mut Session,
    criteria: &[SearchKey<'_>],
) -> Result<Vec<(u32, MessageInfo)>, Reply> {
    let Some(cur) = sel(s) else {
        return Err(Reply::Bad("no folder selected".into()));
    };
    let all = SequenceSet::try_from("1:*").ok();
    let idx = match &all {
        Some(a) => resolve(cur, a, false),
        None => (0..cur.msgs.len()).collect(),
    };
    let entries: Vec<EntryId> = idx.iter().map(|i| cur.msgs[*i].entry).collect();
    let folder = cur.id;
    let largest_uid = cur.msgs.last().map_or(0, |m| m.uid);
    let infos = s.ctx.mailbox.messages_by_entry_light(folder, &entries);
    let bytes = criteria.iter().any(needs_bytes);
    let mut hits = Vec::new();
    let sets = SetCache::default();
    for (i, info) in idx.iter().zip(infos) {
        let Some(info) = info else { continue };
        let raw: Option<Arc<Vec<u8>>> = if bytes {
            match s.ctx.mailbox.read(info.entry).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "SEARCH read failed");
                    continue;
                }
            }
        } else {
            None
        };
        let Some(cur) = sel(s) else {
            return Err(Reply::Bad("no folder selected".into()));
        };
        let c = Candidate {
            seq: *i as u32 + 1,
            info: &info,
            raw: raw.as_deref().map(|r| r.as_slice()),
            header_len: raw.as_deref().map_or(0, |r| mime::header_len(r)),
            sets: &sets,
        };
        if criteria.iter().all(|k| c.matches(k, cur, largest_uid)) {
            hits.push((*i as u32 + 1, info));
        }
    }
    Ok(hits)
}

pub(super) async fn search(
    s: &mut Session,
    tag: &str,
    charset: Option<&str>,
    criteria: &[SearchKey<'_>],
    uid: bool,
) -> std::io::Result<Reply> {
    if let Err(r) = check_charset(charset) {
        return Ok(r);
    }
    let with_modseq = criteria.iter().any(uses_modseq);
    if with_modseq {
        s.condstore = true;
    }
    let found = match matching(s, criteria).await {
        Ok(f) => f,
        Err(r) => return Ok(r),
    };
    let highest = found.iter().map(|(_, m)| m.modseq).max().unwrap_or(0);
    let hits: Vec<u32> = found
        .iter()
        .map(|(seq, m)| if uid { m.uid } else { *seq })
        .collect();
    // RFC 4731 SEARCH RETURN, or IMAP4rev2 (RFC 9051 §6.4.4: SEARCH is answered by ESEARCH).
    let ret = s.search_return.take().or_else(|| {
        s.rev2.then_some(SearchReturn {
            all: true,
            ..SearchReturn::default()
        })
    });
    let line = match ret {
        Some(r) => esearch(tag, uid, &r, &hits, with_modseq.then_some(highest)),
        None => {
            let mut line = String::with_capacity(9 + hits.len() * 7);
            line.push_str("* SEARCH");
            for h in hits {
                use std::fmt::Write as _;
                let _ = write!(line, " {h}");
            }
            // RFC 7162 §3.1.5: the highest MODSEQ of what matched, when anything did.
            if with_modseq && highest > 0 {
                line.push_str(&format!(" (MODSEQ {highest})"));
            }
            line
        }
    };
    s.conn.line(&line);
    Ok(Reply::Ok("SEARCH completed".into()))
}

#[cfg(test)]
mod tests {
    use super::{civil_day, contains, mime};

    #[test]
    fn sent_dates_are_calendar_days() {
        assert_eq!(civil_day(1970, 1, 1), Some(0));
        assert_eq!(civil_day(2000, 3, 1), Some(11_017));
        assert_eq!(civil_day(2026, 12, 7), Some(20_794));
        assert_eq!(civil_day(2024, 2, 29), Some(19_782));
        assert_eq!(civil_day(2026, 13, 1), None);
        // 23:30 -0800 is the next day in UTC, but SENTON compares the day as written.
        let raw = b"Date: Mon, 7 Dec 2026 23:30:00 -0800\r\nSubject: x\r\n\r\nbody\r\n";
        let m = mime::parse(raw).unwrap();
        let d = m.date().unwrap();
        let day = civil_day(i64::from(d.year), u32::from(d.month), u32::from(d.day));
        assert_eq!(day, Some(20_794));
        assert_ne!(
            Some(d.to_timestamp().div_euclid(86_400)),
            day,
            "UTC is a day later"
        );
    }

    #[test]
    fn address_search_sees_name_and_address_as_a_client_writes_them() {
        use crate::mailbox::{MessageInfo, OpId};
        let id = OpId {
            device: 1,
            seq: 1,
            idx: 0,
        };
        let raw: &[u8] = b"From: \"Smith, Bob\" <bob@example.net>\r\nTo: Ann\r\n\t<ann@example.org>, carl@example.com (Carl C)\r\nSubject: x\r\n\r\nbody\r\n";
        let info = MessageInfo {
            entry: id,
            uid: 1,
            modseq: 1,
            object: crate::crypto::ObjectId::of(raw),
            size: raw.len() as u64,
            internal_date: 0,
            flags: Default::default(),
            recent: false,
            maildir_name: String::new(),
        };
        let sets = super::SetCache::default();
        let c = super::Candidate {
            seq: 1,
            info: &info,
            raw: Some(raw),
            header_len: mime::header_len(raw),
            sets: &sets,
        };
        assert!(c.field_has(b"from", b"bob@example.net"));
        assert!(c.field_has(b"from", b"Smith, Bob <bob@example.net>"));
        assert!(c.field_has(b"to", b"Ann <ann@example.org>"));
        assert!(c.field_has(b"to", b"carl@example.com"));
        assert!(c.field_has(b"to", b"Carl C <carl@"));
        assert!(!c.field_has(b"to", b"bob@example.net"));
        assert!(!c.field_has(b"from", b"nobody"));
    }

    #[test]
    fn esearch_replies() {
        use super::{SearchReturn, esearch};
        let all = SearchReturn {
            min: true,
            max: true,
            count: true,
            all: true,
        };
        assert_eq!(
            esearch("a1", true, &all, &[2, 3, 4, 9], Some(17)),
            "* ESEARCH (TAG \"a1\") UID MIN 2 MAX 9 COUNT 4 ALL 2:4,9 MODSEQ 17"
        );
        assert_eq!(
            esearch("a2", false, &all, &[], Some(17)),
            "* ESEARCH (TAG \"a2\") COUNT 0",
            "MIN, MAX, ALL and MODSEQ only when something matched"
        );
        let count = SearchReturn {
            count: true,
            ..SearchReturn::default()
        };
        assert_eq!(
            esearch("a3", false, &count, &[1, 5], None),
            "* ESEARCH (TAG \"a3\") COUNT 2"
        );
    }

    #[test]
    fn substring() {
        assert!(contains(b"Hello World", b"world"));
        assert!(contains(b"abc", b""));
        assert!(!contains(b"abc", b"abcd"));
        assert!(contains(b"aaab", b"AAB"));
    }
}
