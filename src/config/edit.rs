//! Edits of a config file that keep its comments (`peerpost ring join`, issue #16): one key
//! of one section set to a new TOML value, the rest of the file left as the user wrote it.

/// `text` with `key` of `[section]` set to `value` (a TOML value, already quoted): the
/// existing `key = …` line (a multi-line array included) is replaced, or the key is added
/// at the top of the section, or the section is appended.
pub fn set_key(text: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]");
    let line_for = format!("{key} = {value}");
    let mut out: Vec<String> = Vec::new();
    let mut in_section = false;
    let mut seen_section = false;
    let mut done = false;
    let mut skipping_array = false;
    for line in text.lines() {
        let t = line.trim();
        if skipping_array {
            if t.contains(']') && !t.starts_with('#') {
                skipping_array = false;
            }
            continue;
        }
        if t.starts_with('[') {
            if in_section && !done {
                // The key was not in the section: it goes at the section's end (before
                // this next header and the blank lines preceding it).
                let at = out
                    .iter()
                    .rposition(|l| !l.trim().is_empty())
                    .map_or(out.len(), |i| i + 1);
                out.insert(at, line_for.clone());
                done = true;
            }
            in_section = t == header;
            seen_section |= in_section;
        } else if in_section && !done && is_key_line(t, key) {
            let value_part = t.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
            if value_part.starts_with('[') && !closes_array(value_part) {
                skipping_array = true;
            }
            out.push(line_for.clone());
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !done {
        if in_section {
            out.push(line_for);
        } else {
            debug_assert!(!seen_section || done);
            out.push(String::new());
            out.push(header);
            out.push(line_for);
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn is_key_line(t: &str, key: &str) -> bool {
    t.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// Whether a one-line array value closes on its line (no `]` inside strings is assumed:
/// multiaddrs and paths have none).
fn closes_array(v: &str) -> bool {
    let code = v.split('#').next().unwrap_or(v);
    code.contains(']')
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML array of basic strings.
pub fn toml_strings(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| toml_string(s)).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replaces_keeps_comments_and_adds() {
        let t = "# top\n[overlay]\n# the key\npsk_file = \"\"\nbootstrap = [\n  \"a\",\n  \"b\",\n]\nmdns = true\n\n[imap]\nlisten = \"x\"\n";
        let s = set_key(t, "overlay", "psk_file", &toml_string("ring/swarm.key"));
        let s = set_key(&s, "overlay", "bootstrap", &toml_strings(&["c".into()]));
        let s = set_key(&s, "overlay", "ring_authority", &toml_string("ab"));
        let s = set_key(&s, "delivery", "from_mismatch", &toml_string("refuse"));
        assert!(
            s.contains("# the key\npsk_file = \"ring/swarm.key\"\n"),
            "{s}"
        );
        assert!(
            s.contains("bootstrap = [\"c\"]\nmdns = true\nring_authority = \"ab\"\n\n[imap]"),
            "{s}"
        );
        assert!(
            s.ends_with("[delivery]\nfrom_mismatch = \"refuse\"\n"),
            "{s}"
        );
        let parsed: toml::Table = s.parse().unwrap();
        assert_eq!(parsed["overlay"]["bootstrap"].as_array().unwrap().len(), 1);
        assert_eq!(parsed["imap"]["listen"].as_str(), Some("x"));
    }
}
