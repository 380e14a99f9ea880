//! Writing responses: strings (quoted or literal), flags, dates.

use crate::mailbox::{Flag, Flags};

/// Appends an IMAP string: quoted when it is short 7-bit text, a literal otherwise.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() <= 1024 && s.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t');
    if quotable {
        out.push(b'"');
        for b in s {
            if *b == b'"' || *b == b'\\' {
                out.push(b'\\');
            }
            out.push(*b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends a literal.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// Appends a literal, as `~{n}` (RFC 3516 literal8) when it holds a NUL.
pub fn literal8(out: &mut Vec<u8>, s: &[u8]) {
    if s.contains(&0) {
        out.push(b'~');
    }
    literal(out, s);
}

/// Appends NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends a folder name, in modified UTF-7 (the engine's names are UTF-8).
pub fn mailbox(out: &mut Vec<u8>, name: &str) {
    string(out, super::utf7::encode(name).as_bytes());
}

/// Appends a folder name: UTF-8 once the client ENABLEd UTF8=ACCEPT (RFC 6855 §3: then
/// names are sent in UTF-8; a quoted string may hold it), modified UTF-7 otherwise.
pub fn mailbox_as(out: &mut Vec<u8>, name: &str, utf8: bool) {
    if !utf8 {
        return mailbox(out, name);
    }
    let b = name.as_bytes();
    let quotable = b.len() <= 1024 && b.iter().all(|c| *c >= 0x20 && *c != 0x7f);
    if quotable {
        out.push(b'"');
        for c in b {
            if *c == b'"' || *c == b'\\' {
                out.push(b'\\');
            }
            out.push(*c);
        }
        out.push(b'"');
    } else {
        literal(out, b);
    }
}

/// `(\Recent \Seen \Flagged kw …)`: a flag list, with `\Recent` first when the message is recent in this session.
pub fn flags_with(out: &mut Vec<u8>, f: &Flags, recent: bool) {
    out.push(b'(');
    let mut first = true;
    if recent {
        out.extend_from_slice(b"\\Recent");
        first = false;
    }
    for flag in Flag::ALL {
        if f.has(flag) {
            if !first {
                out.push(b' ');
            }
            first = false;
            out.extend_from_slice(flag.imap().as_bytes());
        }
    }
    for k in &f.keywords {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(k.as_bytes());
    }
    out.push(b')');
}

/// An INTERNALDATE: `"17-Jul-1996 02:44:25 +0000"` (UTC), quotes included.
pub fn date_time(secs: i64) -> String {
    let (y, m, d) = crate::date::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "\"{:02}-{}-{:04} {:02}:{:02}:{:02} +0000\"",
        d,
        crate::date::MONTHS[(m - 1) as usize],
        y,
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_dates() {
        let mut o = Vec::new();
        string(&mut o, b"a \"b\" \\c");
        assert_eq!(o, b"\"a \\\"b\\\" \\\\c\"");
        let mut o = Vec::new();
        string(&mut o, "é".as_bytes());
        assert_eq!(o, b"{2}\r\n\xc3\xa9");
        assert_eq!(date_time(0), "\"01-Jan-1970 00:00:00 +0000\"");
        assert_eq!(date_time(1_700_000_000), "\"14-Nov-2023 22:13:20 +0000\"");
        let mut o = Vec::new();
        let f = Flags::default().with(Flag::Seen).with(Flag::Trashed);
        flags_with(&mut o, &f, false);
        assert_eq!(o, b"(\\Seen \\Deleted)");
        let mut o = Vec::new();
        flags_with(&mut o, &f, true);
        assert_eq!(o, b"(\\Recent \\Seen \\Deleted)");
        let mut o = Vec::new();
        mailbox_as(&mut o, "Entwürfe", false);
        assert_eq!(o, b"\"Entw&APw-rfe\"");
        let mut o = Vec::new();
        mailbox_as(&mut o, "Entwürfe", true);
        assert_eq!(o, "\"Entwürfe\"".as_bytes());
        let mut o = Vec::new();
        flags_with(&mut o, &Flags::default(), true);
        assert_eq!(o, b"(\\Recent)");
    }
}
