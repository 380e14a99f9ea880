//! Maildir naming, in one place: `<base>:2,<flags>` where the base is the name a message was
//! delivered or imported with (foreign names are kept as given) or, for mail that arrives
//! through peerpost, `<internal-date-secs>.<id-prefix>.peerpost` — the same on every device.
//!
//! Flags after `:2,` are in ASCII order: the system letters `D F P R S T`, then keyword
//! letters `a`–`z`, each naming the keyword on that line of the folder's `dovecot-keywords`
//! file (Dovecot's format: `<index> <keyword>` per line, index 0 = `a`).

use std::collections::BTreeMap;

use thiserror::Error;

use super::model::{Flag, Flags, MAX_MAILDIR_NAME};
use crate::crypto::ObjectId;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("empty file name")]
    Empty,
    #[error("file name longer than {MAX_MAILDIR_NAME} bytes")]
    TooLong,
    #[error("file name has a control character or '/'")]
    BadCharacter,
    #[error("unsupported Maildir info {0:?} (only \":2,\" flags are defined)")]
    UnsupportedInfo(String),
    #[error("invalid flag letter {0:?} after \":2,\"")]
    BadFlag(char),
}

/// A Maildir file name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName {
    pub base: String,
    /// System flag bits.
    pub bits: u8,
    /// Keyword letters (`a`–`z`), sorted, without duplicates.
    pub keyword_letters: Vec<char>,
}

/// The base name peerpost gives a message it delivers: date, then 16 hex digits of its id.
pub fn derived_base(internal_date: i64, object: &ObjectId) -> String {
    format!("{}.{}.peerpost", internal_date, &object.to_hex()[..16])
}

/// The base name of a message that arrived through the overlay: `<secs>.D<32 hex>.peerpost`,
/// the hex the first 16 bytes of the delivery id (BLAKE3 of sender key ‖ message id). Every
/// device of the recipient derives the same key, so the mailbox can tell that two devices
/// stored the same delivery ([`delivery_key`]; docs/design.md, "Devices").
pub fn delivery_base(internal_date: i64, delivery_id: &[u8; 32]) -> String {
    let hex: String = delivery_id[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{internal_date}.D{hex}.peerpost")
}

/// The delivery key a [`delivery_base`] name carries.
pub fn delivery_key(base: &str) -> Option<[u8; 16]> {
    let mut parts = base.split('.');
    let (_, mid, tail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || tail != "peerpost" {
        return None;
    }
    let hex = mid.strip_prefix('D')?;
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Can this be the base of a file name (what precedes `:2,`)?
pub fn valid_base(base: &str) -> bool {
    !base.is_empty()
        && base.len() <= MAX_MAILDIR_NAME
        && !base.chars().any(|c| c.is_control() || c == '/')
}

/// Parses a file name from `new/` or `cur/`. Names without `:` (usual in `new/`) have no flags.
pub fn parse(name: &str) -> Result<ParsedName, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_MAILDIR_NAME + 60 {
        return Err(NameError::TooLong);
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(NameError::BadCharacter);
    }
    let (base, info) = match name.rfind(':') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    if base.is_empty() {
        return Err(NameError::Empty);
    }
    if base.len() > MAX_MAILDIR_NAME {
        return Err(NameError::TooLong);
    }
    let mut bits = 0u8;
    let mut keyword_letters = Vec::new();
    if let Some(info) = info {
        let Some(letters) = info.strip_prefix("2,") else {
            return Err(NameError::UnsupportedInfo(info.chars().take(8).collect()));
        };
        for c in letters.chars() {
            if let Some(f) = Flag::from_letter(c) {
                bits |= f.bit();
            } else if c.is_ascii_lowercase() {
                keyword_letters.push(c);
            } else {
                return Err(NameError::BadFlag(c));
            }
        }
    }
    keyword_letters.sort_unstable();
    keyword_letters.dedup();
    Ok(ParsedName {
        base: base.to_string(),
        bits,
        keyword_letters,
    })
}

/// `<base>:2,<system letters><keyword letters>`, all in ASCII order.
pub fn file_name(base: &str, bits: u8, keyword_letters: &[char]) -> String {
    let mut letters: Vec<char> = Flag::ALL
        .iter()
        .filter(|f| bits & f.bit() != 0)
        .map(|f| f.letter())
        .chain(keyword_letters.iter().copied())
        .collect();
    letters.sort_unstable();
    letters.dedup();
    let mut s = String::with_capacity(base.len() + 3 + letters.len());
    s.push_str(base);
    s.push_str(":2,");
    s.extend(letters);
    s
}

/// The file name a message gets: while no reader has seen it (it lives in `new/`) a bare base
/// if it has no flags, as delivery agents write it; otherwise `base:2,FLAGS` (mutt and mbsync
/// flag unread mail in `new/` that way too).
pub fn disk_name(base: &str, in_new: bool, flags: &Flags, keywords: &mut KeywordMap) -> String {
    if in_new && *flags == Flags::default() {
        return base.to_string();
    }
    let letters = keywords.letters_of(flags);
    file_name(base, flags.bits, &letters)
}

/// A folder's `dovecot-keywords`: letter index ↔ keyword.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeywordMap {
    by_index: BTreeMap<u8, String>,
}

impl KeywordMap {
    /// Parses the file; malformed lines are skipped (Dovecot rewrites the file as needed).
    pub fn parse(text: &str) -> KeywordMap {
        let mut by_index = BTreeMap::new();
        for line in text.lines() {
            let Some((n, kw)) = line.split_once(' ') else {
                continue;
            };
            if let Ok(n) = n.parse::<u8>()
                && n < 26
                && super::model::valid_keyword(kw)
            {
                by_index.insert(n, kw.to_string());
            }
        }
        KeywordMap { by_index }
    }

    pub fn keyword(&self, letter: char) -> Option<&str> {
        let i = (letter as u32).checked_sub('a' as u32)?;
        self.by_index
            .get(&u8::try_from(i).ok()?)
            .map(String::as_str)
    }

    /// The letter for a keyword, assigning the next free one (None when all 26 are taken).
    pub fn letter_for(&mut self, keyword: &str) -> Option<char> {
        if let Some((i, _)) = self.by_index.iter().find(|(_, k)| *k == keyword) {
            return Some(char::from(b'a' + i));
        }
        let free = (0u8..26).find(|i| !self.by_index.contains_key(i))?;
        self.by_index.insert(free, keyword.to_string());
        Some(char::from(b'a' + free))
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }

    pub fn to_file(&self) -> String {
        self.by_index
            .iter()
            .map(|(i, k)| format!("{i} {k}\n"))
            .collect()
    }

    /// Flags for a parsed name (keyword letters missing from the map are dropped).
    pub fn flags_of(&self, p: &ParsedName) -> Flags {
        Flags {
            bits: p.bits,
            keywords: p
                .keyword_letters
                .iter()
                .filter_map(|c| self.keyword(*c).map(str::to_string))
                .collect(),
        }
    }

    /// Letters for a flag set's keywords (assigning new ones; keywords beyond 26 are not
    /// representable in Maildir names and are left out).
    pub fn letters_of(&mut self, flags: &Flags) -> Vec<char> {
        flags
            .keywords
            .iter()
            .filter_map(|k| self.letter_for(k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn name_roundtrip(base in "[A-Za-z0-9._,=-]{1,60}", bits in 0u8..64, kw in proptest::collection::vec(proptest::char::range('a', 'z'), 0..5)) {
            let name = file_name(&base, bits, &kw);
            let p = parse(&name).unwrap();
            prop_assert_eq!(&p.base, &base);
            prop_assert_eq!(p.bits, bits);
            let mut sorted = kw.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(&p.keyword_letters, &sorted);
            // Flags are in ASCII order.
            let letters: Vec<char> = name.rsplit(',').next().unwrap().chars().collect();
            let mut s = letters.clone();
            s.sort_unstable();
            prop_assert_eq!(letters, s);
        }

        #[test]
        fn parse_never_panics(name in "\\PC{0,80}") {
            let _ = parse(&name);
        }

        #[test]
        fn keyword_map_roundtrip(kws in proptest::collection::btree_set("[a-z$][a-zA-Z0-9]{0,8}", 0..10)) {
            let mut m = KeywordMap::default();
            let flags = Flags { bits: 0, keywords: kws.clone() };
            let letters = m.letters_of(&flags);
            let reparsed = KeywordMap::parse(&m.to_file());
            let p = ParsedName { base: "x".into(), bits: 0, keyword_letters: letters };
            prop_assert_eq!(reparsed.flags_of(&p).keywords, kws);
        }
    }

    #[test]
    fn grammar() {
        assert_eq!(parse("1700000000.M1P2.host").unwrap().bits, 0);
        let p = parse("123.abc.peerpost:2,FRSa").unwrap();
        assert_eq!(p.base, "123.abc.peerpost");
        assert_eq!(
            p.bits,
            Flag::Flagged.bit() | Flag::Replied.bit() | Flag::Seen.bit()
        );
        assert_eq!(p.keyword_letters, vec!['a']);
        assert_eq!(
            parse("x:1,foo"),
            Err(NameError::UnsupportedInfo("1,foo".into()))
        );
        assert_eq!(parse("x:2,S!"), Err(NameError::BadFlag('!')));
        assert_eq!(parse("x:2,Q"), Err(NameError::BadFlag('Q')));
        assert_eq!(parse(":2,S"), Err(NameError::Empty));
        assert_eq!(parse(""), Err(NameError::Empty));
        assert_eq!(parse("a\nb"), Err(NameError::BadCharacter));
        assert_eq!(
            file_name("b", Flag::Seen.bit() | Flag::Draft.bit(), &['c', 'a']),
            "b:2,DSac"
        );
        // A base may itself hold a colon; it round-trips.
        let p = parse("a:b:2,S").unwrap();
        assert_eq!(p.base, "a:b");
        assert!(valid_base(&p.base));
        assert_eq!(parse(&file_name(&p.base, p.bits, &[])).unwrap(), p);
        let id = ObjectId([0xab; 32]);
        assert_eq!(derived_base(17, &id), "17.abababababababab.peerpost");
    }
}
