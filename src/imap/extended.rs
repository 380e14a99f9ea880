//! Command syntax imap-codec 2.0.0-alpha.10 does not parse, read before it is asked to:
//! `SEARCH RETURN (…)` (RFC 4731 ESEARCH) and the extended LIST (RFC 5258 LIST-EXTENDED,
//! RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE): selection options, several patterns,
//! RETURN options.
//!
//! Only a command the codec refused comes here. SEARCH RETURN is cut out of the line (it
//! stands right after SEARCH, so before any literal) and the rest goes back to the codec; an
//! extended LIST is parsed here whole (literals included: a literal whose bytes have not
//! arrived yet is asked for like the codec does). Everything is bounded: at most
//! [`MAX_PATTERNS`] patterns of at most [`MAX_PATTERN`] bytes, [`MAX_OPTIONS`] options.

use imap_codec::imap_types::core::LiteralMode;
use imap_codec::imap_types::status::StatusDataItemName;

/// Patterns in one LIST.
pub const MAX_PATTERNS: usize = 32;
/// Bytes of one LIST pattern or reference (matching costs pattern × name).
pub const MAX_PATTERN: usize = 1024;
/// Options in one parenthesised list.
const MAX_OPTIONS: usize = 16;

/// What `SEARCH RETURN (…)` asked for (RFC 4731 §3.1); `RETURN ()` means ALL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub count: bool,
    pub all: bool,
}

/// An extended LIST (or a plain one, when the session wants the same code path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListExt {
    pub tag: String,
    /// Raw (modified UTF-7) reference and patterns.
    pub reference: Vec<u8>,
    pub patterns: Vec<Vec<u8>>,
    /// Selection options (RFC 5258 §3.1, RFC 6154 §3).
    pub subscribed_only: bool,
    pub recursive_match: bool,
    pub special_use_only: bool,
    /// Return options (RFC 5258 §3.2, RFC 5819, RFC 6154).
    pub ret_subscribed: bool,
    pub ret_children: bool,
    pub ret_special_use: bool,
    pub status: Option<Vec<StatusDataItemName>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Pre {
    /// Not a command this module reads.
    NotMine,
    /// `SEARCH RETURN (…)`: the buffer now holds the plain SEARCH.
    Search(SearchReturn),
    List(Box<ListExt>),
    /// A literal's bytes are still to come (and, for a synchronizing one, a `+` to send).
    NeedLiteral {
        length: u32,
        mode: LiteralMode,
    },
    Bad {
        tag: String,
        text: &'static str,
    },
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

enum Tok {
    Bytes(Vec<u8>),
    NeedLiteral(u32, LiteralMode),
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &[u8]) -> bool {
        let end = self.i + w.len();
        if self.b.len() >= end && self.b[self.i..end].eq_ignore_ascii_case(w) {
            let after = self.b.get(end).copied();
            if after.is_none_or(|c| !is_atom(c)) {
                self.i = end;
                return true;
            }
        }
        false
    }

    fn atom(&mut self) -> Option<&[u8]> {
        let start = self.i;
        while self.peek().is_some_and(is_atom) {
            self.i += 1;
        }
        (self.i > start).then(|| &self.b[start..self.i])
    }

    /// An astring or list-mailbox: atom (with `%`, `*`, `]`), quoted string or literal.
    fn string(&mut self) -> Option<Tok> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                let mut v = Vec::new();
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.i += 1;
                            return Some(Tok::Bytes(v));
                        }
                        b'\\' => {
                            self.i += 1;
                            let c = self.peek()?;
                            if c != b'"' && c != b'\\' {
                                return None;
                            }
                            v.push(c);
                            self.i += 1;
                        }
                        b'\r' | b'\n' => return None,
                        c => {
                            v.push(c);
                            self.i += 1;
                        }
                    }
                    if v.len() > MAX_PATTERN {
                        return None;
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                let n: u32 = std::str::from_utf8(&self.b[start..self.i])
                    .ok()?
                    .parse()
                    .ok()?;
                let mode = if self.eat(b'+') {
                    LiteralMode::NonSync
                } else {
                    LiteralMode::Sync
                };
                if !(self.eat(b'}') && self.eat(b'\r') && self.eat(b'\n')) {
                    return None;
                }
                if n as usize > MAX_PATTERN {
                    return None;
                }
                let end = self.i + n as usize;
                // Nothing after the literal yet (the session reads the literal, then the
                // rest of the command): its bytes, even none of them, are still to come.
                if self.b.len() <= end {
                    return Some(Tok::NeedLiteral(n, mode));
                }
                let v = self.b[self.i..end].to_vec();
                self.i = end;
                Some(Tok::Bytes(v))
            }
            _ => {
                let a = self.atom()?;
                (a.len() <= MAX_PATTERN).then(|| Tok::Bytes(a.to_vec()))
            }
        }
    }

    /// `(A B C)`: atoms, upper-cased.
    fn atoms(&mut self) -> Option<Vec<String>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut v = Vec::new();
        loop {
            if self.eat(b')') {
                return Some(v);
            }
            if !v.is_empty() && !self.eat(b' ') {
                return None;
            }
            let a = self.atom()?;
            v.push(String::from_utf8_lossy(a).to_ascii_uppercase());
            if v.len() > MAX_OPTIONS {
                return None;
            }
        }
    }

    fn at_end(&self) -> bool {
        &self.b[self.i..] == b"\r\n"
    }
}

/// Atom characters, plus the list wildcards and `]` (list-char, RFC 3501 §9).
fn is_atom(c: u8) -> bool {
    c.is_ascii_graphic() && !matches!(c, b'(' | b')' | b'{' | b'"' | b'\\')
}

/// Reads what the codec refused in `buf` (one whole command so far, ending in CRLF).
pub fn preparse(buf: &mut Vec<u8>) -> Pre {
    let mut c = Cursor { b: buf, i: 0 };
    let Some(tag) = c.atom().map(|t| String::from_utf8_lossy(t).into_owned()) else {
        return Pre::NotMine;
    };
    if tag.len() > 64 || tag.contains(['*', '%', '+']) || !c.eat(b' ') {
        return Pre::NotMine;
    }
    let after_tag = c.i;
    if c.eat_word(b"UID") && !c.eat(b' ') {
        return Pre::NotMine;
    }
    if c.eat_word(b"SEARCH") {
        return search_return(buf, tag, after_tag);
    }
    c.i = after_tag;
    if c.eat_word(b"LIST") && c.eat(b' ') {
        return match list(&mut c, tag.clone()) {
            Ok(p) => p,
            Err(text) => Pre::Bad { tag, text },
        };
    }
    Pre::NotMine
}

fn search_return(buf: &mut Vec<u8>, tag: String, after_tag: usize) -> Pre {
    let mut c = Cursor {
        b: buf,
        i: after_tag,
    };
    if c.eat_word(b"UID") {
        c.eat(b' ');
    }
    c.eat_word(b"SEARCH");
    if !c.eat(b' ') {
        return Pre::NotMine;
    }
    let start = c.i;
    if !(c.eat_word(b"RETURN") && c.eat(b' ')) {
        return Pre::NotMine;
    }
    let Some(opts) = c.atoms() else {
        return Pre::Bad {
            tag,
            text: "RETURN takes a list of MIN MAX COUNT ALL",
        };
    };
    if !c.eat(b' ') {
        return Pre::Bad {
            tag,
            text: "SEARCH RETURN needs search keys",
        };
    }
    let mut r = SearchReturn::default();
    for o in &opts {
        match o.as_str() {
            "MIN" => r.min = true,
            "MAX" => r.max = true,
            "COUNT" => r.count = true,
            "ALL" => r.all = true,
            _ => {
                return Pre::Bad {
                    tag,
                    text: "unknown SEARCH RETURN option (MIN MAX COUNT ALL are)",
                };
            }
        }
    }
    if opts.is_empty() {
        r.all = true;
    }
    let end = c.i;
    buf.drain(start..end);
    Pre::Search(r)
}

fn tok(t: Option<Tok>) -> Result<Result<Vec<u8>, Pre>, &'static str> {
    match t {
        Some(Tok::Bytes(b)) => Ok(Ok(b)),
        Some(Tok::NeedLiteral(length, mode)) => Ok(Err(Pre::NeedLiteral { length, mode })),
        None => Err("syntax error in LIST"),
    }
}

fn list(c: &mut Cursor<'_>, tag: String) -> Result<Pre, &'static str> {
    let mut l = ListExt {
        tag,
        ..ListExt::default()
    };
    if c.peek() == Some(b'(') {
        let opts = c.atoms().ok_or("bad LIST selection options")?;
        for o in &opts {
            match o.as_str() {
                "SUBSCRIBED" => l.subscribed_only = true,
                "REMOTE" => {}
                "RECURSIVEMATCH" => l.recursive_match = true,
                "SPECIAL-USE" => l.special_use_only = true,
                _ => return Err("unknown LIST selection option"),
            }
        }
        // RFC 5258 §3.1: RECURSIVEMATCH alone is an error.
        if l.recursive_match && !l.subscribed_only && !l.special_use_only {
            return Err("RECURSIVEMATCH needs another selection option");
        }
        if !c.eat(b' ') {
            return Err("syntax error in LIST");
        }
    }
    l.reference = match tok(c.string())? {
        Ok(b) => b,
        Err(p) => return Ok(p),
    };
    if !c.eat(b' ') {
        return Err("syntax error in LIST");
    }
    if c.eat(b'(') {
        loop {
            if !l.patterns.is_empty() && c.eat(b')') {
                break;
            }
            if !l.patterns.is_empty() && !c.eat(b' ') {
                return Err("syntax error in LIST patterns");
            }
            match tok(c.string())? {
                Ok(b) => l.patterns.push(b),
                Err(p) => return Ok(p),
            }
            if l.patterns.len() > MAX_PATTERNS {
                return Err("too many LIST patterns");
            }
        }
    } else {
        match tok(c.string())? {
            Ok(b) => l.patterns.push(b),
            Err(p) => return Ok(p),
        }
    }
    if c.eat(b' ') {
        if !(c.eat_word(b"RETURN") && c.eat(b' ') && c.eat(b'(')) {
            return Err("syntax error in LIST RETURN");
        }
        let mut n = 0;
        loop {
            if c.eat(b')') {
                break;
            }
            if n > 0 && !c.eat(b' ') {
                return Err("syntax error in LIST RETURN");
            }
            n += 1;
            if n > MAX_OPTIONS {
                return Err("too many LIST RETURN options");
            }
            let o = c
                .atom()
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
                .ok_or("syntax error in LIST RETURN")?;
            match o.as_str() {
                "SUBSCRIBED" => l.ret_subscribed = true,
                "CHILDREN" => l.ret_children = true,
                "SPECIAL-USE" => l.ret_special_use = true,
                "STATUS" => {
                    if !c.eat(b' ') {
                        return Err("STATUS takes a list of status items");
                    }
                    let items = c.atoms().ok_or("STATUS takes a list of status items")?;
                    let mut v = Vec::new();
                    for i in &items {
                        v.push(status_item(i).ok_or("unknown STATUS item")?);
                    }
                    l.status = Some(v);
                }
                _ => return Err("unknown LIST RETURN option"),
            }
        }
    }
    if !c.at_end() {
        return Err("syntax error in LIST");
    }
    Ok(Pre::List(Box::new(l)))
}

fn status_item(s: &str) -> Option<StatusDataItemName> {
    Some(match s {
        "MESSAGES" => StatusDataItemName::Messages,
        "RECENT" => StatusDataItemName::Recent,
        "UIDNEXT" => StatusDataItemName::UidNext,
        "UIDVALIDITY" => StatusDataItemName::UidValidity,
        "UNSEEN" => StatusDataItemName::Unseen,
        "DELETED" => StatusDataItemName::Deleted,
        "SIZE" => StatusDataItemName::Size,
        "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(s: &str) -> (Pre, String) {
        let mut b = s.as_bytes().to_vec();
        let p = preparse(&mut b);
        (p, String::from_utf8(b).unwrap())
    }

    #[test]
    fn search_return_is_cut_out() {
        let (p, rest) = pre("a1 UID SEARCH RETURN (MIN count) UNSEEN\r\n");
        assert_eq!(
            p,
            Pre::Search(SearchReturn {
                min: true,
                count: true,
                ..Default::default()
            })
        );
        assert_eq!(rest, "a1 UID SEARCH UNSEEN\r\n");
        let (p, rest) = pre("a2 search return () 1:* SUBJECT {3}\r\n");
        assert_eq!(
            p,
            Pre::Search(SearchReturn {
                all: true,
                ..Default::default()
            })
        );
        assert_eq!(rest, "a2 search 1:* SUBJECT {3}\r\n");
        assert!(matches!(
            pre("a3 SEARCH RETURN (SAVE) ALL\r\n").0,
            Pre::Bad { .. }
        ));
        assert_eq!(pre("a4 SEARCH FOO\r\n").0, Pre::NotMine);
        assert_eq!(pre("a5 FETCH 1 RETURN\r\n").0, Pre::NotMine);
    }

    #[test]
    fn extended_list() {
        let (p, _) = pre(
            "t LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" %/x {2}\r\nab) RETURN (CHILDREN STATUS (MESSAGES unseen))\r\n",
        );
        let Pre::List(l) = p else { panic!("{p:?}") };
        assert!(l.subscribed_only && l.recursive_match && l.ret_children);
        assert_eq!(l.reference, b"");
        assert_eq!(
            l.patterns,
            vec![b"INBOX".to_vec(), b"%/x".to_vec(), b"ab".to_vec()]
        );
        assert_eq!(
            l.status,
            Some(vec![
                StatusDataItemName::Messages,
                StatusDataItemName::Unseen
            ])
        );
        // A literal still to come is asked for.
        assert_eq!(
            pre("t LIST (SUBSCRIBED) {5+}\r\n").0,
            Pre::NeedLiteral {
                length: 5,
                mode: LiteralMode::NonSync
            }
        );
        assert_eq!(
            pre("t LIST (SUBSCRIBED) {0}\r\n").0,
            Pre::NeedLiteral {
                length: 0,
                mode: LiteralMode::Sync
            }
        );
        assert!(matches!(
            pre("t LIST (RECURSIVEMATCH) \"\" *\r\n").0,
            Pre::Bad { .. }
        ));
        assert!(matches!(
            pre("t LIST \"\" * RETURN (FOO)\r\n").0,
            Pre::Bad { .. }
        ));
        // Bounds: patterns, their length, literals.
        let many = vec!["a"; MAX_PATTERNS + 1].join(" ");
        assert!(matches!(
            pre(&format!("t LIST \"\" ({many})\r\n")).0,
            Pre::Bad { .. }
        ));
        let long = "x".repeat(MAX_PATTERN + 1);
        assert!(matches!(
            pre(&format!("t LIST \"\" {long}\r\n")).0,
            Pre::Bad { .. }
        ));
        assert!(matches!(
            pre("t LIST \"\" {99999999}\r\n").0,
            Pre::Bad { .. }
        ));
    }
}
