//! Messages as IMAP sees them: ENVELOPE, BODY/BODYSTRUCTURE, body sections, and the header
//! and text tests of SEARCH. Parsing is mail-parser's; the raw header block and its fields are
//! split here (the fast path of BODY[HEADER…] and header searches needs no MIME parse).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use super::out;
use crate::crypto::ObjectId;

/// Rendered once per message content (content-addressed: never stale).
#[derive(Debug)]
pub struct Rendered {
    pub envelope: Vec<u8>,
    pub body: Vec<u8>,
    pub bodystructure: Vec<u8>,
}

/// ENVELOPE/BODYSTRUCTURE by object id, bounded.
#[derive(Debug, Default)]
pub struct Cache {
    map: Mutex<HashMap<ObjectId, Arc<Rendered>>>,
}

const CACHE_ENTRIES: usize = 50_000;

impl Cache {
    pub fn get(&self, object: &ObjectId) -> Option<Arc<Rendered>> {
        self.lock().get(object).cloned()
    }

    pub fn get_or_render(&self, object: ObjectId, raw: &[u8]) -> Arc<Rendered> {
        if let Some(r) = self.lock().get(&object) {
            return Arc::clone(r);
        }
        let r = Arc::new(render(raw));
        let mut m = self.lock();
        if m.len() >= CACHE_ENTRIES {
            m.clear();
        }
        m.insert(object, Arc::clone(&r));
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Arc<Rendered>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Deepest MIME structure rendered: a part nested deeper (multipart in multipart, or
/// message/rfc822 in message/rfc822) is shown as one opaque leaf (issue #18: a message nested
/// 10,000 levels deep recursed past the stack and aborted the node).
pub const MAX_DEPTH: usize = 64;
/// Most MIME markers (lines starting with `--`, `Content-Type:` fields) a message may have
/// and still be parsed into parts; past it, the body is one opaque leaf. Bounds the parts a
/// parse makes (every part needs a delimiter line or a Content-Type of its own).
pub const MAX_MARKERS: usize = 4096;

/// A parsed message. Nested message/rfc822 parts are taken apart iteratively when it is
/// dropped (mail-parser's own drop recursed once per level).
pub struct Parsed<'x>(Message<'x>);

impl<'x> std::ops::Deref for Parsed<'x> {
    type Target = Message<'x>;
    fn deref(&self) -> &Message<'x> {
        &self.0
    }
}

impl Drop for Parsed<'_> {
    fn drop(&mut self) {
        fn detach<'x>(m: &mut Message<'x>, into: &mut Vec<Message<'x>>) {
            for p in &mut m.parts {
                if matches!(p.body, PartType::Message(_))
                    && let PartType::Message(n) = std::mem::take(&mut p.body)
                {
                    into.push(n);
                }
            }
        }
        let mut stack = Vec::new();
        detach(&mut self.0, &mut stack);
        while let Some(mut m) = stack.pop() {
            detach(&mut m, &mut stack);
        }
    }
}

/// Lines that could start a part: delimiters and Content-Type fields.
fn markers(raw: &[u8]) -> usize {
    raw.split(|b| *b == b'\n')
        .filter(|l| {
            l.starts_with(b"--")
                || l.get(..13)
                    .is_some_and(|h| h.eq_ignore_ascii_case(b"content-type:"))
        })
        .count()
}

pub fn parse(raw: &[u8]) -> Option<Parsed<'_>> {
    if markers(raw) <= MAX_MARKERS {
        return MessageParser::default().parse(raw).map(Parsed);
    }
    // Too many parts to take apart: the header, and the body as one leaf.
    let h = header_len(raw);
    let mut m = MessageParser::default().parse(&raw[..h])?;
    m.raw_message = std::borrow::Cow::Borrowed(raw);
    let root = m.parts.first_mut()?;
    root.body = PartType::Binary(std::borrow::Cow::Borrowed(&[]));
    root.offset_body = h as u32;
    root.offset_end = raw.len() as u32;
    Some(Parsed(m))
}

fn render(raw: &[u8]) -> Rendered {
    let mut envelope = Vec::new();
    let mut body = Vec::new();
    let mut bodystructure = Vec::new();
    match parse(raw) {
        Some(m) => {
            write_envelope(&mut envelope, &m, raw);
            write_body(&mut body, &m, 0, false, 0);
            write_body(&mut bodystructure, &m, 0, true, 0);
        }
        None => {
            // Not a parsable message: an empty envelope and a text/plain body.
            envelope.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
            let lines = raw.iter().filter(|b| **b == b'\n').count();
            let b = format!(
                "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" {} {lines})",
                raw.len()
            );
            body.extend_from_slice(b.as_bytes());
            bodystructure.extend_from_slice(b.as_bytes());
        }
    }
    Rendered {
        envelope,
        body,
        bodystructure,
    }
}

// ----- raw header block -----

/// Length of the header block including the blank line that ends it.
pub fn header_len(raw: &[u8]) -> usize {
    let mut i = 0;
    while i < raw.len() {
        // At the start of a line: is it empty?
        if raw[i..].starts_with(b"\r\n") {
            return i + 2;
        }
        if raw[i] == b'\n' {
            return i + 1;
        }
        match raw[i..].iter().position(|b| *b == b'\n') {
            Some(p) => i += p + 1,
            None => return raw.len(),
        }
    }
    raw.len()
}

/// The fields of a header block: (name, whole field bytes including its line ends).
pub fn fields(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out: Vec<(&[u8], &[u8])> = Vec::new();
    let mut i = 0;
    while i < header.len() {
        let end = header[i..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(header.len(), |p| i + p + 1);
        let line = &header[i..end];
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(last) = out.last_mut() {
                let start = last.1.as_ptr() as usize - header.as_ptr() as usize;
                last.1 = &header[start..end];
            }
        } else if let Some(colon) = line.iter().position(|b| *b == b':') {
            out.push((&line[..colon], line));
        }
        i = end;
    }
    out
}

/// The value of a field, unfolded and trimmed.
pub fn field_value(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|b| *b == b':').map_or(0, |p| p + 1);
    let v: Vec<u8> = field[colon..]
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    v.trim_ascii().to_vec()
}

/// HEADER.FIELDS / HEADER.FIELDS.NOT of a header block, with the closing blank line.
pub fn header_fields(header: &[u8], names: &[Vec<u8>], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, field) in fields(header) {
        let hit = names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.trim_ascii()));
        if hit != not {
            out.extend_from_slice(field);
            if !field.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

// ----- transfer encodings (BINARY) -----

/// Base64 decoded, skipping what is not in its alphabet (line breaks, stray bytes) and
/// stopping at `=`. The output is at most ¾ of the input.
pub fn decode_base64(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quoted-printable decoded (RFC 2045 §6.7): `=XY` is a byte, `=` at a line's end joins
/// lines, trailing blanks of a line go; anything malformed is kept as is. The output is at
/// most the input's length.
pub fn decode_qp(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    for line in s.split_inclusive(|b| *b == b'\n') {
        let (body, eol): (&[u8], &[u8]) = if let Some(b) = line.strip_suffix(b"\r\n") {
            (b, b"\r\n")
        } else if let Some(b) = line.strip_suffix(b"\n") {
            (b, b"\n")
        } else {
            (line, b"")
        };
        let body = body.trim_ascii_end();
        let mut i = 0;
        let mut soft = false;
        while i < body.len() {
            let c = body[i];
            if c == b'=' {
                if i + 1 == body.len() {
                    soft = true;
                    break;
                }
                if let (Some(h), Some(l)) = (
                    body.get(i + 1).and_then(|c| hex(*c)),
                    body.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(c);
            i += 1;
        }
        if !soft {
            out.extend_from_slice(eol);
        }
    }
    out
}

// ----- sections -----

/// Where a section path leads.
pub enum Target<'m, 'x> {
    /// The message itself (or a message/rfc822 part's message).
    Message(&'m Message<'x>),
    /// A leaf or multipart part, with the raw bytes its offsets refer to.
    Part(&'m MessagePart<'x>, &'m [u8]),
}

/// Follows a part path (`1.2.3`) from the message root. Iterative: a path as long as a
/// command line allows costs no stack.
pub fn resolve<'m, 'x>(msg: &'m Message<'x>, path: &[u32]) -> Option<Target<'m, 'x>> {
    let mut cur = Target::Message(msg);
    // The message whose parts the current part's children index into.
    let mut owner: &'m Message<'x> = msg;
    for n in path {
        let n = *n as usize;
        // The part whose children the number counts: a message's root, or the part itself.
        let (part, root) = match cur {
            Target::Message(m) => {
                owner = m;
                (m.parts.first()?, true)
            }
            Target::Part(p, _) => match &p.body {
                PartType::Message(m) => {
                    owner = m;
                    (m.parts.first()?, true)
                }
                _ => (p, false),
            },
        };
        let raw = owner.raw_message.as_ref();
        cur = match &part.body {
            PartType::Multipart(children) => {
                let id = *children.get(n.checked_sub(1)?)?;
                Target::Part(owner.parts.get(id as usize)?, raw)
            }
            // A message whose body is not multipart has that body as its part 1; a leaf
            // inside a multipart has no parts.
            _ if n == 1 && root => Target::Part(part, raw),
            _ => return None,
        };
    }
    Some(cur)
}

/// Bytes of a part: (header, body) slices of its raw message.
pub fn part_bytes<'r>(p: &MessagePart<'_>, raw: &'r [u8]) -> (&'r [u8], &'r [u8]) {
    let h0 = (p.offset_header as usize).min(raw.len());
    let b0 = (p.offset_body as usize).clamp(h0, raw.len());
    let e = (p.offset_end as usize).clamp(b0, raw.len());
    (&raw[h0..b0], &raw[b0..e])
}

// ----- ENVELOPE -----

fn write_envelope(o: &mut Vec<u8>, m: &Message<'_>, raw: &[u8]) {
    let header = &raw[..header_len(raw).min(raw.len())];
    let fields = fields(header);
    let raw_field = |name: &str| -> Option<Vec<u8>> {
        fields
            .iter()
            .find(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, f)| field_value(f))
    };
    o.push(b'(');
    out::nstring(o, raw_field("Date").as_deref());
    o.push(b' ');
    out::nstring(o, raw_field("Subject").as_deref());
    let from = m.from();
    for a in [
        from,
        m.sender().or(from),
        m.reply_to().or(from),
        m.to(),
        m.cc(),
        m.bcc(),
    ] {
        o.push(b' ');
        addresses(o, a);
    }
    o.push(b' ');
    out::nstring(o, raw_field("In-Reply-To").as_deref());
    o.push(b' ');
    out::nstring(o, raw_field("Message-ID").as_deref());
    o.push(b')');
}

fn one_address(o: &mut Vec<u8>, name: Option<&str>, addr: Option<&str>) {
    o.push(b'(');
    out::nstring(o, name.map(str::as_bytes));
    o.extend_from_slice(b" NIL ");
    let (local, host) = match addr {
        Some(a) => match a.rsplit_once('@') {
            Some((l, h)) => (Some(l), Some(h)),
            None => (Some(a), None),
        },
        None => (None, None),
    };
    out::nstring(o, local.map(str::as_bytes));
    o.push(b' ');
    out::nstring(o, host.map(str::as_bytes));
    o.push(b')');
}

fn addresses(o: &mut Vec<u8>, a: Option<&Address<'_>>) {
    let Some(a) = a else {
        o.extend_from_slice(b"NIL");
        return;
    };
    let start = o.len();
    o.push(b'(');
    match a {
        Address::List(list) => {
            for x in list {
                one_address(o, x.name.as_deref(), x.address.as_deref());
            }
        }
        Address::Group(groups) => {
            for g in groups {
                if let Some(name) = g.name.as_deref() {
                    // RFC 3501 group syntax: (NIL NIL "group" NIL) … (NIL NIL NIL NIL).
                    o.extend_from_slice(b"(NIL NIL ");
                    out::string(o, name.as_bytes());
                    o.extend_from_slice(b" NIL)");
                    for x in &g.addresses {
                        one_address(o, x.name.as_deref(), x.address.as_deref());
                    }
                    o.extend_from_slice(b"(NIL NIL NIL NIL)");
                } else {
                    for x in &g.addresses {
                        one_address(o, x.name.as_deref(), x.address.as_deref());
                    }
                }
            }
        }
    }
    if o.len() == start + 1 {
        o.truncate(start);
        o.extend_from_slice(b"NIL");
    } else {
        o.push(b')');
    }
}

// ----- BODY / BODYSTRUCTURE -----

fn upper(s: &str) -> Vec<u8> {
    s.to_ascii_uppercase().into_bytes()
}

fn write_params(
    o: &mut Vec<u8>,
    attrs: Option<&[mail_parser::Attribute<'_>]>,
    extra: &[(&str, &str)],
) {
    let mut items: Vec<(Vec<u8>, Vec<u8>)> = attrs
        .unwrap_or_default()
        .iter()
        .map(|a| (upper(&a.name), a.value.as_bytes().to_vec()))
        .collect();
    for (k, v) in extra {
        if !items.iter().any(|(n, _)| n == k.as_bytes()) {
            items.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
    }
    if items.is_empty() {
        o.extend_from_slice(b"NIL");
        return;
    }
    o.push(b'(');
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            o.push(b' ');
        }
        out::string(o, k);
        o.push(b' ');
        out::string(o, v);
    }
    o.push(b')');
}

fn write_ext(o: &mut Vec<u8>, p: &MessagePart<'_>) {
    // disposition, language, location
    o.push(b' ');
    match p.content_disposition() {
        Some(d) => {
            o.push(b'(');
            out::string(o, &upper(d.ctype()));
            o.push(b' ');
            write_params(o, d.attributes(), &[]);
            o.push(b')');
        }
        None => o.extend_from_slice(b"NIL"),
    }
    o.push(b' ');
    match p.content_language().as_text_list() {
        Some(l) if !l.is_empty() => {
            o.push(b'(');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    o.push(b' ');
                }
                out::string(o, x.as_bytes());
            }
            o.push(b')');
        }
        _ => match p.content_language().as_text() {
            Some(t) => out::string(o, t.as_bytes()),
            None => o.extend_from_slice(b"NIL"),
        },
    }
    o.push(b' ');
    out::nstring(o, p.content_location().map(str::as_bytes));
}

/// A part shown without its structure (too deep, or a leaf that claims a structured type).
fn write_opaque(o: &mut Vec<u8>, p: &MessagePart<'_>, raw: &[u8], ext: bool) {
    let (_, bytes) = part_bytes(p, raw);
    o.extend_from_slice(b"(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL ");
    let enc = p.content_transfer_encoding().unwrap_or("7BIT");
    out::string(o, &upper(enc));
    o.extend_from_slice(format!(" {}", bytes.len()).as_bytes());
    if ext {
        o.extend_from_slice(b" NIL NIL NIL NIL");
    }
    o.push(b')');
}

/// BODY/BODYSTRUCTURE of part `id` of `m`, `depth` levels below the message's root.
fn write_body(o: &mut Vec<u8>, m: &Message<'_>, id: usize, ext: bool, depth: usize) {
    let Some(p) = m.parts.get(id) else {
        o.extend_from_slice(b"NIL");
        return;
    };
    let raw = m.raw_message.as_ref();
    if depth >= MAX_DEPTH {
        return write_opaque(o, p, raw, ext);
    }
    let ct = p.content_type();
    // A type whose BODYSTRUCTURE has a structure, on a part that was not taken apart
    // (a multipart without a usable boundary, an unparsable message/rfc822).
    let unparsed = ct.is_some_and(|c| {
        let sub = c.subtype().unwrap_or_default();
        (c.ctype().eq_ignore_ascii_case("multipart") && !matches!(p.body, PartType::Multipart(_)))
            || (c.ctype().eq_ignore_ascii_case("message")
                && sub.eq_ignore_ascii_case("rfc822")
                && !matches!(p.body, PartType::Message(_)))
    });
    if unparsed {
        return write_opaque(o, p, raw, ext);
    }
    match &p.body {
        PartType::Multipart(children) => {
            o.push(b'(');
            for c in children {
                write_body(o, m, *c as usize, ext, depth + 1);
            }
            if children.is_empty() {
                // RFC 3501 needs at least one part.
                o.extend_from_slice(
                    b"(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 0 0)",
                );
            }
            o.push(b' ');
            let sub = ct.and_then(|c| c.subtype()).unwrap_or("mixed");
            out::string(o, &upper(sub));
            if ext {
                o.push(b' ');
                write_params(o, ct.and_then(|c| c.attributes()), &[]);
                write_ext(o, p);
            }
            o.push(b')');
        }
        body => {
            let (_, bytes) = part_bytes(p, raw);
            let (ty, sub) = match ct {
                Some(c) => (
                    c.ctype().to_string(),
                    c.subtype()
                        .unwrap_or(match c.ctype().to_ascii_lowercase().as_str() {
                            "text" => "plain",
                            _ => "octet-stream",
                        })
                        .to_string(),
                ),
                None => match body {
                    PartType::Message(_) => ("message".into(), "rfc822".into()),
                    _ => ("text".into(), "plain".into()),
                },
            };
            let is_text = ty.eq_ignore_ascii_case("text");
            o.push(b'(');
            out::string(o, &upper(&ty));
            o.push(b' ');
            out::string(o, &upper(&sub));
            o.push(b' ');
            let charset_default: &[(&str, &str)] = if is_text {
                &[("CHARSET", "US-ASCII")]
            } else {
                &[]
            };
            write_params(o, ct.and_then(|c| c.attributes()), charset_default);
            o.push(b' ');
            out::nstring(o, p.content_id().map(str::as_bytes));
            o.push(b' ');
            out::nstring(o, p.content_description().map(str::as_bytes));
            o.push(b' ');
            let enc = p.content_transfer_encoding().unwrap_or("7BIT");
            out::string(o, &upper(enc));
            o.extend_from_slice(format!(" {}", bytes.len()).as_bytes());
            let lines = bytes.iter().filter(|b| **b == b'\n').count();
            if let PartType::Message(nested) = body {
                if ty.eq_ignore_ascii_case("message") {
                    o.push(b' ');
                    write_envelope(o, nested, nested.raw_message.as_ref());
                    o.push(b' ');
                    write_body(o, nested, 0, ext, depth + 1);
                    o.extend_from_slice(format!(" {lines}").as_bytes());
                }
            } else if is_text {
                o.extend_from_slice(format!(" {lines}").as_bytes());
            }
            if ext {
                o.extend_from_slice(b" NIL");
                write_ext(o, p);
            }
            o.push(b')');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.org, \"C D\" <cd@x.y>\r\nSubject: hi\r\n there\r\nMessage-ID: <1@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n";

    #[test]
    fn envelope_and_structure() {
        let r = render(MSG);
        let env = String::from_utf8(r.envelope.clone()).unwrap();
        assert!(
            env.starts_with("(NIL \"hi there\" ((\"Alice\" NIL \"alice\" \"example.org\"))"),
            "{env}"
        );
        assert!(
            env.contains("((NIL NIL \"bob\" \"example.org\")(\"C D\" NIL \"cd\" \"x.y\"))"),
            "{env}"
        );
        assert!(env.ends_with(" NIL \"<1@x>\")"), "{env}");
        let bs = String::from_utf8(r.bodystructure).unwrap();
        assert!(
            bs.starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" "),
            "{bs}"
        );
        assert!(
            bs.contains("(\"APPLICATION\" \"PDF\" NIL NIL NIL \"BASE64\" "),
            "{bs}"
        );
        assert!(bs.contains(" \"MIXED\" (\"BOUNDARY\" \"b\")"), "{bs}");
        let m = parse(MSG).unwrap();
        let Some(Target::Part(p, raw)) = resolve(&m, &[1]) else {
            panic!("part 1")
        };
        assert!(part_bytes(p, raw).1.starts_with(b"hello"));
        assert!(resolve(&m, &[3]).is_none());
    }

    fn nested_multipart(levels: usize) -> Vec<u8> {
        let mut m = b"Subject: deep\r\n".to_vec();
        for i in 0..levels {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        m.extend_from_slice(b"Content-Type: text/plain\r\n\r\nleaf\r\n");
        for i in (0..levels).rev() {
            m.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
        }
        m
    }

    fn nested_rfc822(levels: usize) -> Vec<u8> {
        let mut m = Vec::new();
        for i in 0..levels {
            m.extend_from_slice(
                format!("Subject: {i}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
            );
        }
        m.extend_from_slice(b"Subject: inner\r\n\r\nleaf\r\n");
        m
    }

    /// Runs `f` on a thread with a small stack, as a tokio worker's would be.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .expect("no stack overflow");
    }

    fn depth_of(bs: &[u8]) -> usize {
        let (mut d, mut max) = (0usize, 0usize);
        for b in bs {
            match b {
                b'(' => {
                    d += 1;
                    max = max.max(d);
                }
                b')' => d = d.checked_sub(1).expect("balanced"),
                _ => {}
            }
        }
        assert_eq!(d, 0, "balanced");
        max
    }

    #[test]
    fn issue_18_deep_multiparts_end_in_an_opaque_leaf() {
        // 1,300 levels: under MAX_MARKERS, so parsed; rendered down to MAX_DEPTH.
        on_small_stack(|| {
            let raw = nested_multipart(1300);
            let r = render(&raw);
            let bs = String::from_utf8(r.bodystructure.clone()).unwrap();
            assert!(bs.contains("\"APPLICATION\" \"OCTET-STREAM\""), "{bs}");
            assert!(!bs.contains("\"TEXT\""), "the leaf is below the cap");
            assert!(depth_of(&r.bodystructure) <= MAX_DEPTH + 4, "{bs}");
            // The opaque leaf's bytes are still reachable by its path.
            let m = parse(&raw).unwrap();
            let path = vec![1u32; MAX_DEPTH];
            let Some(Target::Part(p, praw)) = resolve(&m, &path) else {
                panic!("the opaque part resolves")
            };
            let body = part_bytes(p, praw).1;
            assert!(body.starts_with(b"--b64\r\n"), "{:?}", &body[..20]);
            let needle = b"leaf\r\n--b1299--";
            assert!(body.windows(needle.len()).any(|w| w == needle));
        });
    }

    #[test]
    fn issue_18_deep_rfc822_is_rendered_and_dropped_without_recursion() {
        on_small_stack(|| {
            let raw = nested_rfc822(4000);
            let r = render(&raw);
            assert!(depth_of(&r.bodystructure) < 8 * MAX_DEPTH);
            let m = parse(&raw).unwrap();
            drop(m);
        });
    }

    #[test]
    fn parts_of_a_multipart_inside_a_multipart_resolve() {
        let raw = b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nplain\r\n--i\r\nContent-Type: text/html\r\n\r\n<p>html\r\n--i--\r\n--o\r\n\r\nsecond\r\n--o--\r\n";
        let m = parse(raw).unwrap();
        let body = |path: &[u32]| match resolve(&m, path) {
            Some(Target::Part(p, r)) => part_bytes(p, r).1.to_vec(),
            _ => b"none".to_vec(),
        };
        assert!(body(&[1, 2]).starts_with(b"<p>html"));
        assert!(body(&[1, 1]).starts_with(b"plain"));
        assert!(body(&[2]).starts_with(b"second"));
        assert_eq!(body(&[2, 1]), b"none");
        assert_eq!(body(&[1, 3]), b"none");
    }

    #[test]
    fn issue_18_too_many_parts_make_one_opaque_body() {
        let mut raw =
            b"Subject: many\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
        for _ in 0..MAX_MARKERS {
            raw.extend_from_slice(b"--x\r\n\r\np\r\n");
        }
        raw.extend_from_slice(b"--x--\r\n");
        let r = render(&raw);
        let bs = String::from_utf8(r.bodystructure).unwrap();
        assert!(bs.starts_with("(\"APPLICATION\" \"OCTET-STREAM\""), "{bs}");
        let env = String::from_utf8(r.envelope).unwrap();
        assert!(env.contains("\"many\""), "{env}");
        let m = parse(&raw).unwrap();
        let Some(Target::Part(p, praw)) = resolve(&m, &[1]) else {
            panic!("part 1 is the body")
        };
        assert_eq!(part_bytes(p, praw).1, &raw[header_len(&raw)..]);
    }

    #[test]
    fn header_helpers() {
        let h = &MSG[..header_len(MSG)];
        assert!(h.ends_with(b"boundary=b\r\n\r\n"));
        let f = header_fields(h, &[b"subject".to_vec()], false);
        assert_eq!(f, b"Subject: hi\r\n there\r\n\r\n");
        assert_eq!(field_value(fields(h)[2].1), b"hi there");
    }
}

#[cfg(test)]
mod group_tests {
    /// Issue #21: RFC 3501 §7.4.2 group syntax in ENVELOPE: `(NIL NIL "name" NIL)` opens a
    /// group, `(NIL NIL NIL NIL)` closes it, plain addresses around it stay in order.
    #[test]
    fn envelope_group_syntax() {
        let to = |h: &str| {
            let raw = format!("From: f@e.example\r\n{h}Subject: s\r\n\r\nbody\r\n");
            let env = String::from_utf8(super::render(raw.as_bytes()).envelope).unwrap();
            // Date, Subject, From, Sender, Reply-To: the To list follows.
            let from = "((NIL NIL \"f\" \"e.example\")) ";
            let rest = env.split_once(&from.repeat(3)).map(|(_, r)| r.to_string());
            rest.unwrap_or(env)
        };
        assert!(to("To: group: a@b, c@d;\r\n").starts_with(
            "((NIL NIL \"group\" NIL)(NIL NIL \"a\" \"b\")(NIL NIL \"c\" \"d\")(NIL NIL NIL NIL)) NIL NIL "
        ));
        assert!(
            to("To: undisclosed-recipients:;\r\n")
                .starts_with("((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) NIL")
        );
        assert!(to("To: x@y, team: a@b;, z@w\r\n").starts_with(
            "((NIL NIL \"x\" \"y\")(NIL NIL \"team\" NIL)(NIL NIL \"a\" \"b\")(NIL NIL NIL NIL)(NIL NIL \"z\" \"w\")) NIL"
        ));
        let cc = to("To: a@b\r\nCc: g2: c@d;, e@f\r\n");
        assert!(
            cc.starts_with("((NIL NIL \"a\" \"b\")) ((NIL NIL \"g2\" NIL)(NIL NIL \"c\" \"d\")(NIL NIL NIL NIL)(NIL NIL \"e\" \"f\")) NIL"),
            "{cc}"
        );
    }
}
