//! Import from a Maildir tree or an mbox file, and export to a Maildir tree that Dovecot and
//! mutt read as is. Bad messages are reported one by one and skipped; the rest goes on.

use std::collections::HashMap;
use std::path::Path;

use super::maildir::{self, KeywordMap};
use super::model::{Flag, Flags};
use super::tree::{self, Sub};
use super::{Error, Mailbox, NewMessage, Result};

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: usize,
    pub bytes: u64,
    pub folders: Vec<String>,
    /// (file or mbox position, why it was skipped)
    pub skipped: Vec<(String, String)>,
}

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub exported: usize,
    pub bytes: u64,
    pub folders: usize,
}

/// Progress callback: (done, total).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

const READ_BATCH: usize = 256;

/// Imports every folder of a Maildir++ tree. Flags come from the file names (keywords through
/// each folder's `dovecot-keywords`), the internal date from the file's mtime, the Maildir
/// name is kept. Files over `max_size`, empty, unreadable or with a malformed name are skipped
/// with a reason.
pub async fn import_maildir(
    mb: &Mailbox,
    root: &Path,
    max_size: u64,
    progress: Progress<'_>,
) -> Result<ImportReport> {
    let folders = tree::folders(root).map_err(|e| io_err(root, e))?;
    if folders.is_empty() {
        return Err(Error::Corrupt(format!(
            "{} is not a Maildir (no cur/ and new/, and no .Folder/ inside)",
            root.display()
        )));
    }
    let mut listing = Vec::new();
    let mut total = 0u64;
    for (name, dir) in &folders {
        let files = tree::files(dir).map_err(|e| io_err(dir, e))?;
        total += files.len() as u64;
        let keywords = std::fs::read_to_string(dir.join("dovecot-keywords"))
            .map(|t| KeywordMap::parse(&t))
            .unwrap_or_default();
        listing.push((name.clone(), files, keywords));
    }
    let mut report = ImportReport::default();
    progress(0, total);
    for (name, files, keywords) in listing {
        if mb.folder(&name).is_none() {
            mb.create_folder(&name).await?;
        }
        report.folders.push(name.clone());
        for chunk in files.chunks(READ_BATCH) {
            let chunk = chunk.to_vec();
            let kw = keywords.clone();
            let read = tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|f| {
                        let r = read_maildir_file(&f, &kw, max_size);
                        (f.path, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|_| Error::Corrupt("import reader stopped".into()))?;
            let mut batch = Vec::new();
            for (path, r) in read {
                match r {
                    Ok(m) => {
                        report.bytes += m.bytes.len() as u64;
                        batch.push(m);
                    }
                    Err(why) => report.skipped.push((path.display().to_string(), why)),
                }
            }
            report.imported += batch.len();
            mb.append_batch(&name, batch).await?;
            progress((report.imported + report.skipped.len()) as u64, total);
        }
    }
    Ok(report)
}

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::Corrupt(format!("{}: {e}", p.display()))
}

fn read_maildir_file(
    f: &tree::MailFile,
    keywords: &KeywordMap,
    max_size: u64,
) -> std::result::Result<NewMessage, String> {
    let parsed = maildir::parse(&f.file_name).map_err(|e| format!("file name: {e}"))?;
    let (bytes, internal_date) = tree::read_message_file(&f.path, max_size)?;
    Ok(NewMessage {
        bytes,
        internal_date,
        flags: keywords.flags_of(&parsed),
        recent: f.sub == Sub::New,
        maildir_name: Some(parsed.base),
    })
}

/// Imports an mbox file (mboxo/mboxrd: `>From ` un-escaped) into `folder` (created if
/// missing). The internal date comes from the `From ` line, flags from `Status:` and
/// `X-Status:` headers.
pub async fn import_mbox(
    mb: &Mailbox,
    file: &Path,
    folder: &str,
    max_size: u64,
    progress: Progress<'_>,
) -> Result<ImportReport> {
    let data = std::fs::read(file).map_err(|e| io_err(file, e))?;
    let messages = split_mbox(&data);
    if mb.folder(folder).is_none() {
        mb.create_folder(folder).await?;
    }
    let total = messages.len() as u64;
    let mut report = ImportReport {
        folders: vec![folder.to_string()],
        ..ImportReport::default()
    };
    progress(0, total);
    let mut batch = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let pos = format!("{} message {}", file.display(), i + 1);
        if m.body.is_empty() {
            report.skipped.push((pos, "empty message".into()));
            continue;
        }
        if m.body.len() as u64 > max_size {
            report.skipped.push((
                pos,
                format!("{} bytes, over the limit of {max_size}", m.body.len()),
            ));
            continue;
        }
        report.bytes += m.body.len() as u64;
        batch.push(NewMessage {
            flags: mbox_flags(&m.body),
            recent: !mbox_flags(&m.body).has(Flag::Seen)
                && !header(&m.body, "Status").is_some_and(|s| s.contains('O')),
            internal_date: m.date.unwrap_or_else(|| (super::now_ms() / 1000) as i64),
            bytes: m.body,
            maildir_name: None,
        });
        if batch.len() == READ_BATCH {
            report.imported += batch.len();
            mb.append_batch(folder, std::mem::take(&mut batch)).await?;
            progress((report.imported + report.skipped.len()) as u64, total);
        }
    }
    report.imported += batch.len();
    mb.append_batch(folder, batch).await?;
    progress(total, total);
    Ok(report)
}

struct MboxMessage {
    date: Option<i64>,
    body: Vec<u8>,
}

/// Splits an mbox at `From ` lines that start the file or follow an empty line.
fn split_mbox(data: &[u8]) -> Vec<MboxMessage> {
    let mut out = Vec::new();
    let mut current: Option<MboxMessage> = None;
    let mut prev_empty = true;
    for line in data.split_inclusive(|b| *b == b'\n') {
        if prev_empty && line.starts_with(b"From ") {
            if let Some(mut m) = current.take() {
                drop_separator(&mut m.body);
                out.push(m);
            }
            current = Some(MboxMessage {
                date: parse_from_line(line),
                body: Vec::new(),
            });
            prev_empty = false;
            continue;
        }
        prev_empty = line == b"\n" || line == b"\r\n";
        if let Some(m) = current.as_mut() {
            // mboxrd: one '>' is removed from ">From ", ">>From ", …
            let unescaped = line
                .iter()
                .position(|b| *b != b'>')
                .filter(|&n| n > 0 && line[n..].starts_with(b"From "));
            match unescaped {
                Some(_) => m.body.extend_from_slice(&line[1..]),
                None => m.body.extend_from_slice(line),
            }
        }
    }
    // Writers (mutt, mboxrd) end the last message with the same separator line.
    if let Some(mut m) = current {
        drop_separator(&mut m.body);
        out.push(m);
    }
    out
}

/// The empty line before "From " (or at the end of the file) belongs to the separator.
fn drop_separator(body: &mut Vec<u8>) {
    if body.ends_with(b"\r\n\r\n") {
        body.truncate(body.len() - 2);
    } else if body.ends_with(b"\n\n") {
        body.pop();
    }
}

/// `From sender Sat Nov 25 12:00:00 2023` → unix seconds (UTC).
fn parse_from_line(line: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(line).ok()?;
    let parts: Vec<&str> = s.split_whitespace().collect();
    // From addr Www Mmm dd hh:mm:ss yyyy
    if parts.len() < 7 {
        return None;
    }
    let month = crate::date::MONTHS.iter().position(|m| *m == parts[3])? as i64 + 1;
    let day: i64 = parts[4].parse().ok()?;
    let hms: Vec<i64> = parts[5]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let year: i64 = parts[6].parse().ok()?;
    if hms.len() != 3 || !(1..=31).contains(&day) {
        return None;
    }
    Some(
        crate::date::days_from_civil(year, month, day) * 86400
            + hms[0] * 3600
            + hms[1] * 60
            + hms[2],
    )
}

/// The value of a header in the message's header block (first occurrence).
fn header(msg: &[u8], name: &str) -> Option<String> {
    // The header block ends at the first empty line, LF or CRLF (a CRLF mbox has no "\n\n",
    // and body lines were read as headers).
    let mut end = msg.len();
    let mut pos = 0;
    for line in msg.split_inclusive(|b| *b == b'\n') {
        if line == b"\n" || line == b"\r\n" {
            end = pos;
            break;
        }
        pos += line.len();
    }
    let head = String::from_utf8_lossy(&msg[..end]);
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn mbox_flags(msg: &[u8]) -> Flags {
    let mut f = Flags::default();
    if let Some(s) = header(msg, "Status") {
        f.set(Flag::Seen, s.contains('R'));
    }
    if let Some(x) = header(msg, "X-Status") {
        f.set(Flag::Replied, x.contains('A'));
        f.set(Flag::Flagged, x.contains('F'));
        f.set(Flag::Trashed, x.contains('D'));
        f.set(Flag::Draft, x.contains('T'));
    }
    f
}

/// Writes every folder into a new Maildir++ tree at `root` (which must be absent or empty):
/// unread-by-any-reader mail into `new/`, the rest into `cur/` with `:2,` flags, keywords
/// through `dovecot-keywords`, subscriptions into `subscriptions`, mtimes = internal dates.
pub async fn export_maildir(
    mb: &Mailbox,
    root: &Path,
    progress: Progress<'_>,
) -> Result<ExportReport> {
    if root.exists()
        && std::fs::read_dir(root)
            .map_err(|e| io_err(root, e))?
            .next()
            .is_some()
    {
        return Err(Error::Corrupt(format!(
            "{} is not empty; export writes a new Maildir (choose an empty or new directory)",
            root.display()
        )));
    }
    let folders = mb.folders();
    let total: u64 = folders.iter().map(|f| f.exists as u64).sum();
    let mut report = ExportReport::default();
    let mut subscriptions = String::new();
    progress(0, total);
    for f in &folders {
        let dir = tree::folder_dir(root, &f.name);
        tree::create_folder(&dir).map_err(|e| io_err(&dir, e))?;
        report.folders += 1;
        if f.subscribed && f.name != "INBOX" {
            subscriptions.push_str(&f.name.replace('/', "."));
            subscriptions.push('\n');
        }
        let mut keywords = KeywordMap::default();
        let mut used: HashMap<String, u32> = HashMap::new();
        for m in mb.messages_of(f.id) {
            let bytes = mb.read(m.entry).await?;
            let mut base = m.maildir_name.clone();
            let n = used.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                base = format!("{base}.{}", m.uid);
            }
            let sub = if m.recent { Sub::New } else { Sub::Cur };
            let name = maildir::disk_name(&base, m.recent, &m.flags, &mut keywords);
            let dir2 = dir.clone();
            let date = m.internal_date;
            tokio::task::spawn_blocking(move || tree::deliver(&dir2, sub, &name, &bytes, date))
                .await
                .map_err(|_| Error::Corrupt("export writer stopped".into()))?
                .map_err(|e| io_err(&dir, e))?;
            report.exported += 1;
            report.bytes += m.size;
            progress(report.exported as u64, total);
        }
        if !keywords.is_empty() {
            let p = dir.join("dovecot-keywords");
            std::fs::write(&p, keywords.to_file()).map_err(|e| io_err(&p, e))?;
        }
    }
    if !subscriptions.is_empty() {
        let p = root.join("subscriptions");
        std::fs::write(&p, subscriptions).map_err(|e| io_err(&p, e))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_split_and_dates() {
        let data = b"From a@b Sat Nov 25 12:00:00 2023\nStatus: RO\nSubject: one\n\nbody\n>From the start\n\nFrom c@d Thu Jan  1 00:00:10 1970\nSubject: two\n\nx\n";
        let m = split_mbox(data);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0].body,
            b"Status: RO\nSubject: one\n\nbody\nFrom the start\n"
        );
        assert_eq!(m[0].date, Some(1_700_913_600));
        assert_eq!(m[1].date, Some(10));
        assert!(mbox_flags(&m[0].body).has(Flag::Seen));
        // The blank line ending the last message is the separator too.
        let last = split_mbox(b"From a@b Sat Nov 25 12:00:00 2023\nSubject: x\n\nbody\n\n");
        assert_eq!(last[0].body, b"Subject: x\n\nbody\n");
    }
}
