//! `peerpost send [-t] [-f FROM] [RECIPIENT…]`: sendmail for the running node. Reads one
//! message on stdin, hands it to the node over the control socket (`send`: a copy into Sent,
//! then the outbound queue), and exits 0 once it is queued durably; non-zero, with the
//! reason, when it is not (no node running, a bad recipient, …). mutt: `set
//! sendmail="peerpost send"`.

use std::io::Read;

use anyhow::{Context, Result, bail};

use crate::control;
use crate::home::Home;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also take the recipients from the To, Cc and Bcc headers (Bcc is then removed).
    #[arg(short = 't')]
    pub from_headers: bool,
    /// The envelope sender: must be this user's address (the only one the node sends as).
    #[arg(short = 'f', value_name = "FROM")]
    pub from: Option<String>,
    /// Accepted for sendmail compatibility (a lone "." does not end the message here).
    #[arg(short = 'i')]
    pub ignore_dots: bool,
    /// sendmail options (-oi, -oem, …): accepted and ignored.
    #[arg(short = 'o', value_name = "OPTION", hide = true)]
    pub options: Vec<String>,
    /// sendmail body type (-B8BITMIME): accepted and ignored (bodies are sent as they are).
    #[arg(short = 'B', value_name = "TYPE", hide = true)]
    pub body_type: Option<String>,
    /// Recipients.
    pub recipients: Vec<String>,
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let identity = home.load_identity()?;
    if let Some(f) = &args.from
        && !f.trim().eq_ignore_ascii_case(&identity.address)
    {
        bail!(
            "-f {f}: this node sends only as {} (its own address)",
            identity.address
        );
    }
    let mut raw = Vec::new();
    std::io::stdin()
        .take(control::MAX_SEND + 1)
        .read_to_end(&mut raw)
        .context("cannot read the message on stdin")?;
    if raw.len() as u64 > control::MAX_SEND {
        bail!("the message is over {} bytes", control::MAX_SEND);
    }
    let mut message = crlf(&raw);
    let mut recipients = args.recipients.clone();
    if args.from_headers {
        let (found, without_bcc) = header_recipients(&message);
        recipients.extend(found);
        message = without_bcc;
    }
    if recipients.is_empty() {
        bail!("no recipients: give them as arguments, or use -t to read To/Cc/Bcc");
    }
    if message.is_empty() {
        bail!("empty message on stdin");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let req = control::Request::Send {
        recipients,
        size: message.len() as u64,
    };
    let reply = rt
        .block_on(control::call_with(home.root(), &req, &message))
        .context("the message was not sent")?;
    let id = reply.get("queued").and_then(|v| v.as_str()).unwrap_or("?");
    eprintln!("peerpost: queued as {id}");
    Ok(())
}

/// The message with every line ending CRLF (stdin usually has bare LF).
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The addresses in To, Cc and Bcc, and the message without its Bcc header.
fn header_recipients(message: &[u8]) -> (Vec<String>, Vec<u8>) {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..end]).into_owned();
    // Unfolded fields, each with the byte range it covers.
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split_inclusive("\r\n") {
        if (line.starts_with(' ') || line.starts_with('\t'))
            && let Some(last) = fields.last_mut()
        {
            last.1.push_str(line);
            continue;
        }
        fields.push((line.to_string(), line.to_string()));
    }
    let mut rcpts = Vec::new();
    let mut kept = Vec::new();
    for (first, whole) in fields {
        let name = first
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if matches!(name.as_str(), "to" | "cc" | "bcc") {
            let value = whole.split_once(':').map(|x| x.1).unwrap_or("");
            rcpts.extend(addresses(value));
        }
        if name != "bcc" {
            kept.extend_from_slice(whole.as_bytes());
        }
    }
    kept.extend_from_slice(&message[end..]);
    (rcpts, kept)
}

/// Addresses in a To/Cc value: `<a@b>` forms, or bare `a@b` words.
fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        let addr = match (part.rfind('<'), part.rfind('>')) {
            (Some(a), Some(b)) if a < b => &part[a + 1..b],
            _ => part
                .split_whitespace()
                .find(|w| w.contains('@'))
                .unwrap_or(""),
        };
        let addr = addr.trim().trim_matches(|c| c == '"' || c == '\'');
        if addr.contains('@') {
            out.push(addr.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_from_headers_and_bcc_removed() {
        let m = crlf(
            b"From: alice@demo.test\nTo: Bob <bob@demo.test>, carol@demo.test\nCc: \"D, E\" <dave@demo.test>\nBcc: eve@demo.test,\n\tfrank@demo.test\nSubject: hi\n\nbody\nTo: not@header\n",
        );
        let (r, kept) = header_recipients(&m);
        assert_eq!(
            r,
            [
                "bob@demo.test",
                "carol@demo.test",
                "dave@demo.test",
                "eve@demo.test",
                "frank@demo.test"
            ]
        );
        let kept = String::from_utf8(kept).unwrap_or_default();
        assert!(!kept.contains("Bcc") && !kept.contains("frank"), "{kept}");
        assert!(kept.ends_with("Subject: hi\r\n\r\nbody\r\nTo: not@header\r\n"));
    }
}
