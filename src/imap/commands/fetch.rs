//! FETCH and UID FETCH: FLAGS, INTERNALDATE, RFC822[.HEADER|.TEXT|.SIZE], ENVELOPE, BODY,
//! BODYSTRUCTURE, BODY[section]<partial>, BODY.PEEK, UID. A non-peek body fetch sets \Seen.

use std::borrow::Cow;
use std::io::Write as _;

use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Section,
};
use imap_codec::imap_types::sequence::SequenceSet;

use super::{resolve, sel};
use crate::imap::mime::{self, Target};
use crate::imap::out;
use crate::imap::session::{Reply, Session, State};
use crate::mailbox::{EntryId, Flag};

enum Item {
    Uid,
    Flags,
    /// RFC 7162.
    ModSeq,
    InternalDate,
    Size,
    Envelope,
    Body,
    BodyStructure,
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    Section {
        section: Option<Section<'static>>,
        partial: Option<(u32, u32)>,
        peek: bool,
    },
    /// RFC 3516: a part with its content-transfer-encoding undone.
    Binary {
        path: Vec<u32>,
        partial: Option<(u32, u32)>,
        peek: bool,
    },
    BinarySize {
        path: Vec<u32>,
    },
}

impl Item {
    fn needs_bytes(&self) -> bool {
        matches!(
            self,
            Item::Rfc822
                | Item::Rfc822Header
                | Item::Rfc822Text
                | Item::Section { .. }
                | Item::Binary { .. }
                | Item::BinarySize { .. }
        )
    }

    fn sets_seen(&self) -> bool {
        matches!(
            self,
            Item::Rfc822
                | Item::Rfc822Text
                | Item::Section { peek: false, .. }
                | Item::Binary { peek: false, .. }
        )
    }
}

fn items(m: MacroOrMessageDataItemNames<'static>) -> Result<Vec<Item>, &'static str> {
    let names = match m {
        MacroOrMessageDataItemNames::Macro(Macro::Fast) => {
            return Ok(vec![Item::Flags, Item::InternalDate, Item::Size]);
        }
        MacroOrMessageDataItemNames::Macro(Macro::All) => {
            return Ok(vec![
                Item::Flags,
                Item::InternalDate,
                Item::Size,
                Item::Envelope,
            ]);
        }
        MacroOrMessageDataItemNames::Macro(Macro::Full) => {
            return Ok(vec![
                Item::Flags,
                Item::InternalDate,
                Item::Size,
                Item::Envelope,
                Item::Body,
            ]);
        }
        MacroOrMessageDataItemNames::Macro(_) => return Err("unknown macro"),
        MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
    };
    names
        .into_iter()
        .map(|n| {
            Ok(match n {
                MessageDataItemName::Body => Item::Body,
                MessageDataItemName::BodyExt {
                    section,
                    partial,
                    peek,
                } => Item::Section {
                    section,
                    partial: partial.map(|(o, n)| (o, n.get())),
                    peek,
                },
                MessageDataItemName::BodyStructure => Item::BodyStructure,
                MessageDataItemName::Envelope => Item::Envelope,
                MessageDataItemName::Flags => Item::Flags,
                MessageDataItemName::InternalDate => Item::InternalDate,
                MessageDataItemName::Rfc822 => Item::Rfc822,
                MessageDataItemName::Rfc822Header => Item::Rfc822Header,
                MessageDataItemName::Rfc822Size => Item::Size,
                MessageDataItemName::Rfc822Text => Item::Rfc822Text,
                MessageDataItemName::Uid => Item::Uid,
                MessageDataItemName::ModSeq => Item::ModSeq,
                MessageDataItemName::Binary {
                    section,
                    partial,
                    peek,
                } => Item::Binary {
                    path: section.iter().map(|n| n.get()).collect(),
                    partial: partial.map(|(o, n)| (o, n.get())),
                    peek,
                },
                MessageDataItemName::BinarySize { section } => Item::BinarySize {
                    path: section.iter().map(|n| n.get()).collect(),
                },
            })
        })
        .collect()
}

pub(super) async fn fetch(
    s: &mut Session,
    set: &SequenceSet,
    names: MacroOrMessageDataItemNames<'static>,
    uid: bool,
    modifiers: &[FetchModifier],
) -> std::io::Result<Reply> {
    let mut items = match items(names) {
        Ok(i) => i,
        Err(e) => return Ok(Reply::Bad(e.into())),
    };
    let mut changed_since = None;
    let mut vanished = false;
    for m in modifiers {
        match m {
            FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
            FetchModifier::Vanished => vanished = true,
        }
    }
    // RFC 7162 §3.2.6: VANISHED only in UID FETCH, with CHANGEDSINCE, once QRESYNC is on.
    if vanished && !(uid && s.qresync && changed_since.is_some()) {
        return Ok(Reply::Bad(
            "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC".into(),
        ));
    }
    if changed_since.is_some() || items.iter().any(|i| matches!(i, Item::ModSeq)) {
        s.condstore = true;
    }
    // With CONDSTORE on, flags go with their MODSEQ (as Dovecot does): a client keeps the
    // pair; CHANGEDSINCE implies MODSEQ (RFC 7162 §3.1.4.1).
    let flags_asked = items.iter().any(|i| matches!(i, Item::Flags));
    if (changed_since.is_some() || (s.condstore && flags_asked))
        && !items.iter().any(|i| matches!(i, Item::ModSeq))
    {
        items.push(Item::ModSeq);
    }
    if uid && !items.iter().any(|i| matches!(i, Item::Uid)) {
        items.insert(0, Item::Uid);
    }
    let condstore = s.condstore;
    if vanished && let (Some(since), Some(cur)) = (changed_since, sel(s)) {
        let folder = cur.id;
        // `*` is the largest UID there can be: expunged UIDs may lie above the live ones.
        let wanted = super::ranges(set, u32::MAX);
        match s.ctx.mailbox.vanished_since(folder, since).await {
            Ok(gone) => {
                let gone: Vec<u32> = gone
                    .into_iter()
                    .filter(|u| super::in_ranges(&wanted, *u))
                    .collect();
                if !gone.is_empty() {
                    s.conn
                        .line(&format!("* VANISHED (EARLIER) {}", super::uid_set(&gone)));
                }
            }
            Err(e) => return Ok(super::no(e)),
        }
    }
    let Some(cur) = sel(s) else {
        return Ok(Reply::Bad("no folder selected".into()));
    };
    let idx = resolve(cur, set, uid);
    let (folder, name, read_only) = (cur.id, cur.name.clone(), cur.read_only);
    let entries: Vec<EntryId> = idx.iter().map(|i| cur.msgs[*i].entry).collect();
    let mut infos = s.ctx.mailbox.messages_by_entry_light(folder, &entries);
    if let Some(since) = changed_since {
        // By the engine's MODSEQ: the session's copy lags (changes since its last sync).
        for info in infos.iter_mut() {
            if info.as_ref().is_some_and(|m| m.modseq <= since) {
                *info = None;
            }
        }
    }

    // \Seen first, so the answers show it.
    let mut seen_now = std::collections::HashSet::new();
    if !read_only && items.iter().any(Item::sets_seen) {
        let unseen: Vec<EntryId> = infos
            .iter()
            .flatten()
            .filter(|m| !m.flags.has(Flag::Seen))
            .map(|m| m.entry)
            .collect();
        if !unseen.is_empty() {
            match s.ctx.seen.mark(&s.ctx.mailbox, &name, unseen.clone()).await {
                Ok(()) => {
                    for m in infos.iter_mut().flatten() {
                        if unseen.contains(&m.entry) {
                            m.flags.set(Flag::Seen, true);
                        }
                    }
                    seen_now.extend(unseen.iter().copied());
                    if let Some(cur) = sel(s) {
                        cur.quiet.extend(unseen);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "setting \\Seen on FETCH"),
            }
        }
    }
    let wants_flags = items.iter().any(|i| matches!(i, Item::Flags));
    let needs_bytes = items.iter().any(Item::needs_bytes);
    let needs_parse = items
        .iter()
        .any(|i| matches!(i, Item::Envelope | Item::Body | Item::BodyStructure));
    let mut failed = 0usize;
    let mut unknown_cte = false;
    for (i, info) in idx.iter().zip(infos) {
        let Some(info) = info else {
            continue;
        };
        let rendered = if needs_parse {
            s.ctx.cache.get(&info.object)
        } else {
            None
        };
        let raw = if needs_bytes || (needs_parse && rendered.is_none()) {
            match s.ctx.mailbox.read(info.entry).await {
                Ok(r) => Some(r),
                // Expunged by another session since the lookup above (its bytes may be
                // gone too): nothing to say about it; the session reports the EXPUNGE when
                // it may.
                Err(_)
                    if s.ctx
                        .mailbox
                        .messages_by_entry_light(folder, &[info.entry])
                        .first()
                        .is_some_and(Option::is_none) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "FETCH read failed");
                    failed += 1;
                    continue;
                }
            }
        } else {
            None
        };
        let rendered = match (rendered, &raw) {
            (Some(r), _) => Some(r),
            (None, Some(raw)) if needs_parse => Some(s.ctx.cache.get_or_render(info.object, raw)),
            _ => None,
        };
        if (wants_flags || seen_now.contains(&info.entry))
            && let State::Selected(cur) = &mut s.state
        {
            cur.announce(&mut s.conn.out, &info.flags);
        }
        let is_recent = matches!(&s.state, State::Selected(c) if c.recent.contains(&info.uid));
        let o = &mut s.conn.out;
        let _ = write!(o, "* {} FETCH (", i + 1);
        let mut first = true;
        let mut sep = |o: &mut Vec<u8>| {
            if !first {
                o.push(b' ');
            }
            first = false;
        };
        for item in &items {
            sep(o);
            match item {
                Item::Uid => {
                    let _ = write!(o, "UID {}", info.uid);
                }
                Item::ModSeq => {
                    let _ = write!(o, "MODSEQ ({})", info.modseq);
                }
                Item::Flags => {
                    o.extend_from_slice(b"FLAGS ");
                    out::flags_with(o, &info.flags, is_recent);
                }
                Item::InternalDate => {
                    o.extend_from_slice(b"INTERNALDATE ");
                    o.extend_from_slice(out::date_time(info.internal_date).as_bytes());
                }
                Item::Size => {
                    let _ = write!(o, "RFC822.SIZE {}", info.size);
                }
                Item::Envelope | Item::Body | Item::BodyStructure => {
                    let (label, bytes): (&[u8], &[u8]) = match (item, &rendered) {
                        (Item::Envelope, Some(r)) => (b"ENVELOPE ", &r.envelope),
                        (Item::Body, Some(r)) => (b"BODY ", &r.body),
                        (_, Some(r)) => (b"BODYSTRUCTURE ", &r.bodystructure),
                        _ => (b"ENVELOPE ", b"NIL"),
                    };
                    o.extend_from_slice(label);
                    o.extend_from_slice(bytes);
                }
                Item::Rfc822 | Item::Rfc822Header | Item::Rfc822Text => {
                    let raw = raw.as_deref().map_or(&[][..], |r| r.as_slice());
                    let h = mime::header_len(raw);
                    let (label, bytes): (&[u8], &[u8]) = match item {
                        Item::Rfc822 => (b"RFC822 ", raw),
                        Item::Rfc822Header => (b"RFC822.HEADER ", &raw[..h]),
                        _ => (b"RFC822.TEXT ", &raw[h..]),
                    };
                    o.extend_from_slice(label);
                    out::literal(o, bytes);
                }
                Item::Section {
                    section, partial, ..
                } => {
                    let raw = raw.as_deref().map_or(&[][..], |r| r.as_slice());
                    let bytes = section_bytes(raw, section.as_ref());
                    o.extend_from_slice(b"BODY[");
                    section_name(o, section.as_ref());
                    o.push(b']');
                    match partial {
                        Some((origin, count)) => {
                            let start = (*origin as usize).min(bytes.len());
                            let end = start.saturating_add(*count as usize).min(bytes.len());
                            let _ = write!(o, "<{origin}> ");
                            out::literal(o, &bytes[start..end]);
                        }
                        None => {
                            o.push(b' ');
                            out::literal(o, &bytes);
                        }
                    }
                }
                Item::Binary { path, .. } | Item::BinarySize { path } => {
                    let partial = match item {
                        Item::Binary { partial, .. } => *partial,
                        _ => None,
                    };
                    let raw = raw.as_deref().map_or(&[][..], |r| r.as_slice());
                    let bytes = match binary(raw, path) {
                        Some(b) => b,
                        None => {
                            unknown_cte = true;
                            Cow::Borrowed(&[][..])
                        }
                    };
                    let size = matches!(item, Item::BinarySize { .. });
                    o.extend_from_slice(if size { b"BINARY.SIZE[" } else { b"BINARY[" });
                    let p: Vec<String> = path.iter().map(u32::to_string).collect();
                    o.extend_from_slice(p.join(".").as_bytes());
                    o.push(b']');
                    if size {
                        let _ = write!(o, " {}", bytes.len());
                    } else {
                        let part = match partial {
                            Some((origin, count)) => {
                                let start = (origin as usize).min(bytes.len());
                                let end = start.saturating_add(count as usize).min(bytes.len());
                                let _ = write!(o, "<{origin}>");
                                &bytes[start..end]
                            }
                            None => &bytes[..],
                        };
                        o.push(b' ');
                        out::literal8(o, part);
                    }
                }
            }
        }
        if !wants_flags && seen_now.contains(&info.entry) {
            sep(o);
            o.extend_from_slice(b"FLAGS ");
            out::flags_with(o, &info.flags, is_recent);
        }
        // RFC 7162 §3.1: with CONDSTORE on, a FETCH that reports a flag change carries MODSEQ.
        if condstore
            && seen_now.contains(&info.entry)
            && !items.iter().any(|i| matches!(i, Item::ModSeq))
        {
            sep(o);
            let _ = write!(o, "MODSEQ ({})", info.modseq);
        }
        o.extend_from_slice(b")\r\n");
        s.conn.flush_if_big().await?;
    }
    Ok(if unknown_cte {
        // RFC 3516 §4.3: the part's encoding is not one this server can undo.
        Reply::No("[UNKNOWN-CTE] a part has an unknown content-transfer-encoding".into())
    } else if failed == 0 {
        Reply::Ok("FETCH completed".into())
    } else {
        Reply::No(format!(
            "[UNAVAILABLE] {failed} messages could not be read now"
        ))
    })
}

fn part_path(p: &imap_codec::imap_types::fetch::Part) -> Vec<u32> {
    p.0.as_ref().iter().map(|n| n.get()).collect()
}

fn write_path(o: &mut Vec<u8>, p: &Option<imap_codec::imap_types::fetch::Part>, dot: bool) {
    if let Some(p) = p {
        let s: Vec<String> = part_path(p).iter().map(u32::to_string).collect();
        o.extend_from_slice(s.join(".").as_bytes());
        if dot {
            o.push(b'.');
        }
    }
}

/// Echoes a section spec: `1.2.HEADER.FIELDS (SUBJECT FROM)`.
fn section_name(o: &mut Vec<u8>, section: Option<&Section<'_>>) {
    let Some(section) = section else {
        return;
    };
    let names = |o: &mut Vec<u8>, list: &[imap_codec::imap_types::core::AString<'_>]| {
        o.extend_from_slice(b" (");
        for (i, n) in list.iter().enumerate() {
            if i > 0 {
                o.push(b' ');
            }
            let b: &[u8] = n.as_ref();
            if !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_graphic() && !b"()\"\\{}%*[]".contains(c))
            {
                o.extend_from_slice(b);
            } else {
                out::string(o, b);
            }
        }
        o.push(b')');
    };
    match section {
        Section::Part(p) => write_path(o, &Some(p.clone()), false),
        Section::Header(p) => {
            write_path(o, p, true);
            o.extend_from_slice(b"HEADER");
        }
        Section::HeaderFields(p, list) => {
            write_path(o, p, true);
            o.extend_from_slice(b"HEADER.FIELDS");
            names(o, list.as_ref());
        }
        Section::HeaderFieldsNot(p, list) => {
            write_path(o, p, true);
            o.extend_from_slice(b"HEADER.FIELDS.NOT");
            names(o, list.as_ref());
        }
        Section::Text(p) => {
            write_path(o, p, true);
            o.extend_from_slice(b"TEXT");
        }
        Section::Mime(p) => {
            write_path(o, &Some(p.clone()), true);
            o.extend_from_slice(b"MIME");
        }
    }
}

/// Header-ish sections of a message's bytes.
fn of_message<'a>(raw: &'a [u8], section: &Section<'_>) -> Cow<'a, [u8]> {
    let h = mime::header_len(raw);
    let names = |list: &[imap_codec::imap_types::core::AString<'_>]| -> Vec<Vec<u8>> {
        list.iter().map(|n| n.as_ref().to_vec()).collect()
    };
    match section {
        Section::Header(_) => Cow::Borrowed(&raw[..h]),
        Section::Text(_) => Cow::Borrowed(&raw[h..]),
        Section::HeaderFields(_, l) => {
            Cow::Owned(mime::header_fields(&raw[..h], &names(l.as_ref()), false))
        }
        Section::HeaderFieldsNot(_, l) => {
            Cow::Owned(mime::header_fields(&raw[..h], &names(l.as_ref()), true))
        }
        Section::Part(_) | Section::Mime(_) => Cow::Borrowed(raw),
    }
}

/// The bytes a section names; empty when the message has no such part.
fn section_bytes<'a>(raw: &'a [u8], section: Option<&Section<'_>>) -> Cow<'a, [u8]> {
    let Some(section) = section else {
        return Cow::Borrowed(raw);
    };
    let path = match section {
        Section::Part(p) | Section::Mime(p) => Some(part_path(p)),
        Section::Header(p) | Section::Text(p) => p.as_ref().map(part_path),
        Section::HeaderFields(p, _) | Section::HeaderFieldsNot(p, _) => p.as_ref().map(part_path),
    };
    let Some(path) = path else {
        return of_message(raw, section);
    };
    let Some(msg) = mime::parse(raw) else {
        return Cow::Borrowed(&[]);
    };
    let Some(Target::Part(part, praw)) = mime::resolve(&msg, &path) else {
        return Cow::Borrowed(&[]);
    };
    let (header, body) = mime::part_bytes(part, praw);
    match section {
        Section::Part(_) => Cow::Owned(body.to_vec()),
        Section::Mime(_) => Cow::Owned(header.to_vec()),
        // HEADER/TEXT of a part: the part is a message/rfc822; its body is that message.
        other => Cow::Owned(of_message(body, other).into_owned()),
    }
}

/// BINARY[path] (RFC 3516): the part's body with its content-transfer-encoding undone (the
/// whole message as is for an empty path); None for an encoding that is not 7bit, 8bit,
/// binary, base64 or quoted-printable. A part that does not exist is empty.
fn binary<'a>(raw: &'a [u8], path: &[u32]) -> Option<Cow<'a, [u8]>> {
    if path.is_empty() {
        return Some(Cow::Borrowed(raw));
    }
    let Some(msg) = mime::parse(raw) else {
        return Some(Cow::Borrowed(&[]));
    };
    let Some(Target::Part(part, praw)) = mime::resolve(&msg, path) else {
        return Some(Cow::Borrowed(&[]));
    };
    let (header, body) = mime::part_bytes(part, praw);
    let cte = mime::fields(header)
        .into_iter()
        .rev()
        .find(|(n, _)| {
            n.trim_ascii()
                .eq_ignore_ascii_case(b"content-transfer-encoding")
        })
        .map(|(_, v)| mime::field_value(v).trim_ascii().to_ascii_lowercase());
    Some(Cow::Owned(match cte.as_deref() {
        None | Some(b"7bit" | b"8bit" | b"binary") => body.to_vec(),
        Some(b"base64") => mime::decode_base64(body),
        Some(b"quoted-printable") => mime::decode_qp(body),
        Some(_) => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::binary;

    #[test]
    fn binary_undoes_the_transfer_encoding() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nlong=3D line\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n--b--\r\n";
        assert_eq!(&*binary(raw, &[1]).unwrap(), "café long= line".as_bytes());
        assert_eq!(&*binary(raw, &[2]).unwrap(), &[0u8, 1, 2, 255]);
        assert!(binary(raw, &[3]).is_none(), "unknown CTE");
        assert!(binary(raw, &[9]).unwrap().is_empty(), "no such part");
        assert_eq!(&*binary(raw, &[]).unwrap(), &raw[..]);
    }
}
