//! Reading passwords, passphrases and recovery phrases: from a file when one is given,
//! otherwise from the terminal (without echo, asked twice for new secrets), otherwise the first
//! line of standard input (so scripts can pipe them in).

use std::io::{BufRead, IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

/// Longest secret line accepted from a file or stdin.
const MAX_SECRET_LINE: usize = 4096;

/// Reads the first line of `path` (without its line ending).
pub fn from_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))?,
    );
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("the {what} file {} is not UTF-8", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.len() > MAX_SECRET_LINE {
        bail!(
            "the {what} in {} is longer than {MAX_SECRET_LINE} bytes",
            path.display()
        );
    }
    Ok(Zeroizing::new(line.to_string()))
}

fn stdin_line(what: &str) -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    let n = std::io::stdin()
        .lock()
        .take(MAX_SECRET_LINE as u64 + 2)
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from standard input"))?;
    if n == 0 {
        bail!("no {what} given: standard input is empty (use a terminal or a --*-file option)");
    }
    let trimmed = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
    if trimmed.len() > MAX_SECRET_LINE {
        bail!("the {what} is longer than {MAX_SECRET_LINE} bytes");
    }
    Ok(trimmed)
}

/// A new secret: from `file`, or asked twice on a terminal, or one line of stdin.
pub fn new_secret(file: Option<&Path>, what: &str) -> Result<Zeroizing<String>> {
    let s = match file {
        Some(f) => from_file(f, what)?,
        None if std::io::stdin().is_terminal() => {
            let a = Zeroizing::new(rpassword::prompt_password(format!("New {what}: "))?);
            let b = Zeroizing::new(rpassword::prompt_password(format!("Repeat the {what}: "))?);
            if a != b {
                bail!("the two {what}s differ; nothing was changed");
            }
            a
        }
        None => stdin_line(what)?,
    };
    if s.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(s)
}

/// An existing secret: from `file`, or asked once on a terminal; `None` when neither is
/// available (the caller says what to do).
pub fn existing_secret(file: Option<&Path>, what: &str) -> Result<Option<Zeroizing<String>>> {
    match file {
        Some(f) => Ok(Some(from_file(f, what)?)),
        None if std::io::stdin().is_terminal() => Ok(Some(Zeroizing::new(
            rpassword::prompt_password(format!("{what}: "))?,
        ))),
        None => Ok(None),
    }
}

/// A recovery phrase: from `file`, or typed on the terminal / piped on stdin (all lines, since
/// a written-down phrase often spans several).
pub fn phrase(file: Option<&Path>) -> Result<Zeroizing<String>> {
    if let Some(f) = file {
        let bytes = Zeroizing::new(
            std::fs::read(f)
                .with_context(|| format!("cannot read the phrase file {}", f.display()))?,
        );
        if bytes.len() > MAX_SECRET_LINE {
            bail!(
                "the phrase file {} is too large to hold a phrase",
                f.display()
            );
        }
        return Ok(Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()));
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Type the 25 words of the recovery phrase, then an empty line:");
    }
    let mut all = Zeroizing::new(String::new());
    for line in std::io::stdin().lock().lines() {
        let line = Zeroizing::new(line.context("cannot read the phrase from standard input")?);
        if line.trim().is_empty() && !all.trim().is_empty() {
            break;
        }
        all.push_str(&line);
        all.push(' ');
        if all.len() > MAX_SECRET_LINE {
            bail!("the phrase is too long");
        }
    }
    Ok(all)
}
