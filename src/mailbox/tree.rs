//! Maildir trees on disk (Maildir++ layout, as Dovecot and mutt use it): INBOX is the root,
//! folder `A/B` is the directory `.A.B`, each with `cur/`, `new/` and `tmp/`; per folder an
//! optional `dovecot-keywords`, at the root an optional `subscriptions`.
//!
//! Used by `import`, `export` and `sync`; the engine itself knows nothing of directories.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `new/` or `cur/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sub {
    New,
    Cur,
}

impl Sub {
    pub fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// One message file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFile {
    pub sub: Sub,
    pub file_name: String,
    pub path: PathBuf,
}

fn is_maildir(p: &Path) -> bool {
    p.join("cur").is_dir() && p.join("new").is_dir()
}

/// The folders of a Maildir++ tree, INBOX (the root) first: (folder name, directory).
pub fn folders(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    if is_maildir(root) {
        out.push(("INBOX".to_string(), root.to_path_buf()));
    }
    let mut subs = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix('.')
            && !rest.is_empty()
            && !rest.starts_with('.')
            && !rest.eq_ignore_ascii_case("INBOX")
            && is_maildir(&entry.path())
        {
            subs.push((rest.replace('.', "/"), entry.path()));
        }
    }
    subs.sort();
    out.extend(subs);
    Ok(out)
}

/// The directory of a folder under `root`.
pub fn folder_dir(root: &Path, name: &str) -> PathBuf {
    if name == "INBOX" {
        root.to_path_buf()
    } else {
        root.join(format!(".{}", name.replace('/', ".")))
    }
}

/// The folder a directory name stands for (`.A.B` → `A/B`), if it is one.
pub fn folder_of_dir_name(dir_name: &str) -> Option<String> {
    let rest = dir_name.strip_prefix('.')?;
    (!rest.is_empty() && !rest.starts_with('.')).then(|| rest.replace('.', "/"))
}

/// Message files of one folder (new/ then cur/), each sorted by name. Dot-files are skipped.
pub fn files(folder: &Path) -> std::io::Result<Vec<MailFile>> {
    let mut out = Vec::new();
    for sub in [Sub::New, Sub::Cur] {
        let dir = folder.join(sub.dir());
        let mut v = Vec::new();
        match fs::read_dir(&dir) {
            Ok(rd) => {
                for entry in rd {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let ft = entry.file_type()?;
                    // Symlinks are listed too: a dangling one is reported when read.
                    if name.starts_with('.') || !(ft.is_file() || ft.is_symlink()) {
                        continue;
                    }
                    v.push(MailFile {
                        sub,
                        file_name: name,
                        path: entry.path(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        v.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        out.extend(v);
    }
    Ok(out)
}

/// Creates `cur/`, `new/`, `tmp/` of a folder.
pub fn create_folder(dir: &Path) -> std::io::Result<()> {
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

/// Delivers a file the Maildir way: write into `tmp/`, fsync, rename into `new/` or `cur/`,
/// and set its mtime to `mtime` (the message's internal date). Readers never see half a file.
pub fn deliver(
    dir: &Path,
    sub: Sub,
    file_name: &str,
    bytes: &[u8],
    mtime: i64,
) -> std::io::Result<PathBuf> {
    let tmp = dir
        .join("tmp")
        .join(format!("{file_name}.{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
        f.set_modified(t)?;
    }
    let dest = dir.join(sub.dir()).join(file_name);
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Reads a message file for import: its bytes and mtime, or why it cannot be taken (empty,
/// over `max_size`, unreadable) in words for the user.
pub fn read_message_file(path: &Path, max_size: u64) -> Result<(Vec<u8>, i64), String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() == 0 {
        return Err("empty file (0 bytes): not a message".into());
    }
    if meta.len() > max_size {
        return Err(format!(
            "{} bytes, over the limit of {max_size}",
            meta.len()
        ));
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let date = mtime(path).map_err(|e| format!("cannot read its date: {e}"))?;
    Ok((bytes, date))
}

/// The file's mtime in unix seconds.
pub fn mtime(path: &Path) -> std::io::Result<i64> {
    let m = fs::metadata(path)?.modified()?;
    Ok(match m.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildirplusplus_layout() {
        let d = tempfile::tempdir().unwrap();
        create_folder(d.path()).unwrap();
        create_folder(&folder_dir(d.path(), "A/B")).unwrap();
        create_folder(&folder_dir(d.path(), "Sent")).unwrap();
        fs::create_dir_all(d.path().join(".notafolder")).unwrap();
        let f: Vec<String> = folders(d.path())
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(f, ["INBOX", "A/B", "Sent"]);
        assert_eq!(folder_of_dir_name(".A.B").as_deref(), Some("A/B"));
        assert_eq!(folder_of_dir_name(".."), None);
        let p = deliver(d.path(), Sub::New, "1.x.host", b"hello", 1_600_000_000).unwrap();
        assert_eq!(mtime(&p).unwrap(), 1_600_000_000);
        let files = files(d.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].sub, Sub::New);
        assert!(fs::read_dir(d.path().join("tmp")).unwrap().next().is_none());
    }
}
