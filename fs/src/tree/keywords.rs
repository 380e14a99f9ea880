//! Keywords: Dovecot's `dovecot-keywords` letters ([`KeywordMap`]) and what follows a change
//! of that file.

use super::*;

/// A folder's `dovecot-keywords` (Dovecot's format: `<index> <keyword>` per line, index 0 =
/// letter `a`): how keywords appear in file names. The file is local and Dovecot's; the
/// tree only reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeywordMap {
    by_index: Vec<Option<String>>,
}

impl KeywordMap {
    /// Parses the file; malformed lines are skipped.
    pub fn parse(text: &str) -> KeywordMap {
        let mut by_index = vec![None; 26];
        for line in text.lines().take(1000) {
            let Some((n, kw)) = line.split_once(' ') else {
                continue;
            };
            if let Ok(n) = n.parse::<usize>()
                && n < 26
                && !kw.is_empty()
                && kw.len() <= 255
                && !kw.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                by_index[n] = Some(kw.to_string());
            }
        }
        KeywordMap { by_index }
    }

    pub fn keyword(&self, letter: char) -> Option<&str> {
        let i = (letter as u32).checked_sub('a' as u32)? as usize;
        self.by_index.get(i)?.as_deref()
    }

    pub fn letter(&self, keyword: &str) -> Option<char> {
        let i = self
            .by_index
            .iter()
            .position(|k| k.as_deref() == Some(keyword))?;
        char::from_u32('a' as u32 + i as u32)
    }

    /// The file name of an entry: a bare base while it is in `new/` with no letters to show,
    /// `<base>:2,<system letters><keyword letters>` otherwise (keywords without a letter
    /// here are not shown).
    pub fn file_name(&self, e: &MessageEntry) -> String {
        self.file_name_with(e, &[], false)
    }

    /// [`KeywordMap::file_name`] with more keyword letters shown.
    /// `bare`: the client named it without `:2,` (mutt moves old unread mail into `cur/`
    /// that way): shown so while there are no letters to show.
    pub fn file_name_with(&self, e: &MessageEntry, extra: &[char], bare: bool) -> String {
        let mut letters = e.flags.to_string();
        let mut kw: Vec<char> = e
            .flags
            .keywords
            .iter()
            .filter_map(|k| self.letter(k))
            .chain(extra.iter().copied())
            .collect();
        kw.sort_unstable();
        kw.dedup();
        letters.extend(kw);
        if (e.recent || bare) && letters.is_empty() {
            e.base.clone()
        } else {
            format!("{}:2,{letters}", e.base)
        }
    }

    /// A file name's base and flags: `base:2,FSa` → (`base`, F S + the keyword of `a`).
    /// A name without `:2,` has no flags; letters this map does not know are dropped.
    pub fn parse_name(&self, name: &str) -> (String, Flags) {
        match name.rfind(":2,") {
            Some(i) => {
                let letters = &name[i + 3..];
                let mut f = Flags::from_letters(letters);
                f.keywords = letters
                    .chars()
                    .filter(char::is_ascii_lowercase)
                    .filter_map(|c| self.keyword(c).map(str::to_string))
                    .collect();
                (name[..i].to_string(), f)
            }
            None => (name.to_string(), Flags::default()),
        }
    }

    /// Keyword letters of a name that this map does not define.
    pub fn unknown_letters(&self, name: &str) -> Vec<char> {
        let Some(i) = name.rfind(":2,") else {
            return Vec::new();
        };
        let mut v: Vec<char> = name[i + 3..]
            .chars()
            .filter(|c| c.is_ascii_lowercase() && self.keyword(*c).is_none())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Keywords the map cannot show (kept as they are when a rename sets flags).
    pub fn hidden(&self, flags: &Flags) -> BTreeSet<String> {
        flags
            .keywords
            .iter()
            .filter(|k| self.letter(k).is_none())
            .cloned()
            .collect()
    }
}

impl<S: MaildirSource> Tree<S> {
    /// The folder's keyword letters (its local `dovecot-keywords`; none if absent).
    pub fn keywords(&self, folder: &str) -> KeywordMap {
        let rel = Self::local_rel(&Place::FolderDir(folder.to_string()), "dovecot-keywords");
        let path = self.local_path(&rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= 64 * 1024 => {
                KeywordMap::parse(&fs::read_to_string(&path).unwrap_or_default())
            }
            _ => KeywordMap::default(),
        }
    }

    /// The folder's `dovecot-keywords` changed: letters named before they were defined
    /// become engine keywords, and names are recomputed on next use.
    pub(super) fn keywords_changed(&self, st: &mut State, folder: &str) {
        let map = self.keywords(folder);
        let pending = st.pending.remove(folder).unwrap_or_default();
        let mut still = HashMap::new();
        for (key, letters) in pending {
            let resolved: Vec<String> = letters
                .iter()
                .filter_map(|c| map.keyword(*c).map(str::to_string))
                .collect();
            if resolved.len() < letters.len() {
                still.insert(key, letters);
                continue;
            }
            let Some(e) = st
                .listings
                .get(folder)
                .and_then(|l| l.entries.get(&key))
                .cloned()
            else {
                continue;
            };
            let mut flags = e.flags.clone();
            flags.keywords.extend(resolved);
            // Queued behind the flag changes answered before it (deferred.rs), in order.
            let change = Change {
                flags: flags.clone(),
                seen_by_reader: false,
            };
            if st.deferred.push(folder, &key, change).is_ok() {
                self.signal_flush();
            } else if self.source.set_flags(folder, &key, flags, false).is_err() {
                still.insert(key, letters);
            }
        }
        if !still.is_empty() {
            st.pending.insert(folder.to_string(), still);
        }
        st.listings.remove(folder);
    }
}
