//! Header fields of a message, read without a MIME parser (bounded, on raw bytes): the
//! `Authentication-Results` fields that claim this node's name (removed from arriving mail,
//! on the SMTP intake and from the overlay alike; RFC 8601 §5), and the `From:` addresses
//! (compared with the signing sender of overlay mail).

/// Header bytes looked at for `From:` (a longer header has its From: in the first 256 KiB or
/// is treated as having none).
const MAX_HEADER_SCAN: usize = 256 * 1024;
/// Addresses read from one From: field.
const MAX_FROM: usize = 16;

/// `message` without the header fields `Authentication-Results` whose authserv-id is
/// `authserv_id` (ASCII case-insensitive; RFC 8601 §5). Only the header is looked at.
pub fn strip_own_results(message: &[u8], authserv_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut rest = message;
    let mut dropping = false;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        if line == b"\r\n" || line == b"\n" {
            break; // end of the header: the body is copied as is
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            dropping = false;
            if let Some(field) = field_value(line, b"authentication-results") {
                // The whole field (with its folded lines) decides.
                let mut whole = field.to_vec();
                let mut t = tail;
                while matches!(t.first(), Some(b' ' | b'\t')) {
                    let e = t
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(t.len(), |i| i + 1);
                    whole.extend_from_slice(&t[..e]);
                    t = &t[e..];
                }
                dropping = authserv_id_of(&whole)
                    .is_some_and(|id| id.eq_ignore_ascii_case(authserv_id.as_bytes()));
                if dropping {
                    tracing::info!("removed an Authentication-Results field claiming our name");
                }
            }
        }
        if !dropping {
            out.extend_from_slice(line);
        }
        rest = tail;
    }
    out.extend_from_slice(rest);
    out
}

/// [`strip_own_results`] on the message that starts at `from` in `bytes`, in place: only its
/// header is copied; the body is moved, not duplicated.
pub fn strip_own_results_in(bytes: &mut Vec<u8>, from: usize, authserv_id: &str) {
    let Some(msg) = bytes.get(from..) else {
        return;
    };
    let mut hlen = 0;
    for line in msg.split_inclusive(|b| *b == b'\n') {
        hlen += line.len();
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let stripped = strip_own_results(&msg[..hlen], authserv_id);
    if stripped.len() != hlen {
        bytes.splice(from..from + hlen, stripped);
    }
}

/// The value of a header line if its field name is `name` (lower case).
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|b| *b == b':')?;
    let (n, v) = line.split_at(colon);
    let n = n.trim_ascii_end();
    n.eq_ignore_ascii_case(name).then_some(&v[1..])
}

/// The authserv-id of an `Authentication-Results` value: its first token after comments and
/// white space (RFC 8601 §2.2).
pub(crate) fn authserv_id_of(value: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let mut depth = 0u32;
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            c if depth == 0 && !c.is_ascii_whitespace() => break,
            _ => {}
        }
        i += 1;
    }
    let start = i.min(value.len());
    let len = value[start..]
        .iter()
        .position(|b| b.is_ascii_whitespace() || matches!(b, b';' | b'('))
        .unwrap_or(value.len() - start);
    (len > 0).then(|| &value[start..start + len])
}

/// The addresses (lower-cased) of the first `From:` field of `message`'s header; empty when
/// there is none. Display names, comments and quoted strings are skipped; at most
/// [`MAX_FROM`] addresses are returned (RFC 5322 §3.6.2 allows a list).
pub fn from_addresses(message: &[u8]) -> Vec<String> {
    let head = &message[..message.len().min(MAX_HEADER_SCAN)];
    let mut lines = head.split_inclusive(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let Some(v) = field_value(line, b"from") else {
            continue;
        };
        let mut value = v.to_vec();
        while let Some(next) = lines.peek() {
            if !matches!(next.first(), Some(b' ' | b'\t')) {
                break;
            }
            value.extend_from_slice(next);
            lines.next();
        }
        return parse_mailboxes(&String::from_utf8_lossy(&value));
    }
    Vec::new()
}

/// `Name <a@b>, "x, y" <c@d>, e@f (comment)` → `[a@b, c@d, e@f]`.
fn parse_mailboxes(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut escaped) = (0u32, false, false);
    let mut plain = String::new();
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let finish = |plain: &mut String, angle: &mut Option<String>, out: &mut Vec<String>| {
        let a = angle.take().unwrap_or_else(|| plain.trim().to_string());
        let a = a
            .trim()
            .trim_matches(|c| c == '<' || c == '>')
            .to_lowercase();
        if !a.is_empty() && out.len() < MAX_FROM {
            out.push(a);
        }
        plain.clear();
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 && !in_angle => quoted = !quoted,
            _ if quoted => {}
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '<' => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' => in_angle = false,
            ',' if !in_angle => finish(&mut plain, &mut angle, &mut out),
            c if c.is_whitespace() || c == '\r' || c == '\n' => {}
            c if in_angle => {
                if let Some(a) = angle.as_mut() {
                    a.push(c);
                }
            }
            c => plain.push(c),
        }
    }
    finish(&mut plain, &mut angle, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_addresses_are_read_as_clients_show_them() {
        let cases: &[(&str, &[&str])] = &[
            ("From: alice@x.test\r\n\r\n", &["alice@x.test"]),
            (
                "Subject: s\r\nfrom: Alice <Alice@X.test>\r\n\r\n",
                &["alice@x.test"],
            ),
            (
                "From: \"Bob, <the> boss\" <bob@y.test>,\r\n\tcarol@z.test (Carol)\r\n\r\n",
                &["bob@y.test", "carol@z.test"],
            ),
            ("From: (a) <d@e.test> (b)\n\n", &["d@e.test"]),
            ("Subject: none\r\n\r\nFrom: body@x.test\r\n", &[]),
            ("To: x@y\r\n", &[]),
        ];
        for (msg, want) in cases {
            assert_eq!(from_addresses(msg.as_bytes()), *want, "{msg:?}");
        }
        let many = format!("From: {}\r\n\r\n", vec!["a@b"; 100].join(","));
        assert_eq!(from_addresses(many.as_bytes()).len(), MAX_FROM);
    }
}
