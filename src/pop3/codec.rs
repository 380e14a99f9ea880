//! POP3 commands (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS), sans-I/O: a line in, a command or
//! an error out. Lines are bounded by the session's reader; here every argument is checked.

use thiserror::Error;

/// Longest command line accepted (RFC 2449 allows 255 octets; clients send far less).
pub const MAX_LINE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(String),
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Noop,
    Rset,
    Quit,
    Top(u32, u32),
    Uidl(Option<u32>),
    Capa,
    Stls,
}

impl Command {
    /// The command's name (metrics labels).
    pub fn name(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
            Command::Top(..) => "TOP",
            Command::Uidl(_) => "UIDL",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("empty command")]
    Empty,
    #[error("unknown command")]
    Unknown,
    #[error("wrong number of arguments")]
    Arguments,
    #[error("invalid message number")]
    Number,
    #[error("command is not ASCII")]
    NotAscii,
}

fn number(s: &str) -> Result<u32, ParseError> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Number);
    }
    s.parse::<u32>()
        .map_err(|_| ParseError::Number)
        .and_then(|n| {
            if n == 0 {
                Err(ParseError::Number)
            } else {
                Ok(n)
            }
        })
}

/// Parses one line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotAscii)?;
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, r),
        None => (line, ""),
    };
    let args: Vec<&str> = rest.split(' ').filter(|s| !s.is_empty()).collect();
    let verb = verb.to_ascii_uppercase();
    let none = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Arguments)
        }
    };
    let opt = |args: &[&str]| -> Result<Option<u32>, ParseError> {
        match args {
            [] => Ok(None),
            [n] => Ok(Some(number(n)?)),
            _ => Err(ParseError::Arguments),
        }
    };
    let one = |args: &[&str]| -> Result<u32, ParseError> {
        match args {
            [n] => number(n),
            _ => Err(ParseError::Arguments),
        }
    };
    match verb.as_str() {
        "USER" => match args.as_slice() {
            [u] => Ok(Command::User((*u).to_string())),
            _ => Err(ParseError::Arguments),
        },
        // A password may contain spaces: everything after "PASS ".
        "PASS" => {
            if rest.is_empty() {
                Err(ParseError::Arguments)
            } else {
                Ok(Command::Pass(rest.to_string()))
            }
        }
        "STAT" => none(Command::Stat),
        "LIST" => Ok(Command::List(opt(&args)?)),
        "RETR" => Ok(Command::Retr(one(&args)?)),
        "DELE" => Ok(Command::Dele(one(&args)?)),
        "NOOP" => none(Command::Noop),
        "RSET" => none(Command::Rset),
        "QUIT" => none(Command::Quit),
        "TOP" => match args.as_slice() {
            [m, n] => {
                let lines =
                    if n.len() <= 10 && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                        n.parse::<u32>().map_err(|_| ParseError::Number)?
                    } else {
                        return Err(ParseError::Number);
                    };
                Ok(Command::Top(number(m)?, lines))
            }
            _ => Err(ParseError::Arguments),
        },
        "UIDL" => Ok(Command::Uidl(opt(&args)?)),
        "CAPA" => none(Command::Capa),
        "STLS" => none(Command::Stls),
        _ => Err(ParseError::Unknown),
    }
}

/// A message as POP3 sends it: CRLF line endings, lines starting with '.' doubled, ended by
/// ".\r\n". With `body_lines`, only the header and that many body lines (TOP).
pub fn multiline(msg: &[u8], body_lines: Option<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 40 + 8);
    let mut in_body = false;
    let mut body_count = 0u32;
    for raw in msg.split_inclusive(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if in_body && let Some(max) = body_lines {
            if body_count >= max {
                break;
            }
            body_count += 1;
        }
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        if !in_body && line.is_empty() {
            in_body = true;
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands() {
        assert_eq!(parse(b"user alice"), Ok(Command::User("alice".into())));
        assert_eq!(
            parse(b"PASS two words"),
            Ok(Command::Pass("two words".into()))
        );
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"LIST 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse(b"TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse(b"RETR 0"), Err(ParseError::Number));
        assert_eq!(parse(b"RETR -1"), Err(ParseError::Number));
        assert_eq!(parse(b"RETR 99999999999"), Err(ParseError::Number));
        assert_eq!(parse(b"RETR"), Err(ParseError::Arguments));
        assert_eq!(parse(b"STAT x"), Err(ParseError::Arguments));
        assert_eq!(parse(b"APOP a b"), Err(ParseError::Unknown));
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(&[0xff, 0xfe]), Err(ParseError::NotAscii));
    }

    #[test]
    fn dot_stuffing_crlf_and_top() {
        let m = b"Subject: x\n\n.hidden\nline2\r\nline3";
        assert_eq!(
            multiline(m, None),
            b"Subject: x\r\n\r\n..hidden\r\nline2\r\nline3\r\n.\r\n"
        );
        assert_eq!(
            multiline(m, Some(1)),
            b"Subject: x\r\n\r\n..hidden\r\n.\r\n"
        );
        assert_eq!(multiline(m, Some(0)), b"Subject: x\r\n\r\n.\r\n");
    }

    proptest! {
        #[test]
        fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&line);
        }

        #[test]
        fn multiline_unstuffs_back(lines in proptest::collection::vec("[ -~]{0,20}", 0..20)) {
            let msg: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let wire = multiline(msg.as_bytes(), None);
            // What a client does: strip the terminator, split CRLF, unstuff.
            let body = &wire[..wire.len() - 3];
            let text = String::from_utf8(body.to_vec()).unwrap();
            let back: Vec<String> = text.split_terminator("\r\n").map(|l| l.strip_prefix('.').unwrap_or(l).to_string()).collect();
            prop_assert_eq!(back, lines);
        }
    }
}
