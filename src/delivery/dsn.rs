//! Bounces: a delivery status notification (RFC 3464 `multipart/report;
//! report-type=delivery-status`) put into the sender's own INBOX when a recipient cannot be
//! reached: a permanent refusal, or no success within `give_up_after`.

/// One recipient that could not be reached.
#[derive(Debug, Clone)]
pub struct Failed<'a> {
    pub recipient: &'a str,
    /// RFC 3463 enhanced status, e.g. "5.1.1".
    pub status: &'a str,
    pub diagnostic: &'a str,
    /// When the message was accepted (unix s).
    pub arrival: u64,
}

/// Builds the DSN for one failed recipient of `original` (only its header is quoted back).
pub fn build(
    hostname: &str,
    sender: &str,
    failed: &Failed<'_>,
    now: u64,
    original: &[u8],
) -> Vec<u8> {
    let Failed {
        recipient,
        status,
        diagnostic,
        arrival,
    } = *failed;
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(900)
            .collect()
    };
    let id = crate::crypto::hex(&crate::crypto::random_bytes::<12>().unwrap_or([0; 12]));
    let boundary = format!("peerpost-dsn-{id}");
    let headers = header_of(original);
    let action = if status.starts_with('5') {
        "failed"
    } else {
        "delayed"
    };
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Your message could not be delivered to <{rcpt}>.\r\n\
         \r\n\
         {diag}\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         Arrival-Date: {arrival}\r\n\
         \r\n\
         Final-Recipient: rfc822; {rcpt}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; {diag}\r\n\
         Last-Attempt-Date: {date}\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {headers}\
         --{boundary}--\r\n",
        host = clean(hostname),
        sender = clean(sender),
        rcpt = clean(recipient),
        date = crate::date::rfc5322(now as i64),
        arrival = crate::date::rfc5322(arrival as i64),
        diag = clean(diagnostic),
        status = clean(status),
    )
    .into_bytes()
}

/// The header section of a message (up to and including its blank line), bounded to 64 KiB,
/// with CRLF line ends.
fn header_of(message: &[u8]) -> String {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| message.windows(2).position(|w| w == b"\n\n").map(|i| i + 1))
        .unwrap_or(message.len())
        .min(64 * 1024);
    let text = String::from_utf8_lossy(&message[..end]);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dsn_is_a_delivery_status_report_quoting_the_header() {
        let orig = b"From: alice@demo.test\r\nSubject: hello\r\n\r\nsecret body\r\n";
        let failed = Failed {
            recipient: "carol@outside.example",
            status: "5.1.1",
            diagnostic: "550 no such user",
            arrival: 1_700_000_000,
        };
        let d = build("node.test", "alice@demo.test", &failed, 1_700_000_100, orig);
        let d = String::from_utf8(d).expect("utf-8");
        assert!(d.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(d.contains("Final-Recipient: rfc822; carol@outside.example\r\n"));
        assert!(d.contains("Action: failed\r\nStatus: 5.1.1\r\n"));
        assert!(d.contains("Subject: hello\r\n"));
        assert!(!d.contains("secret body"), "the body is not quoted back");
        assert!(d.ends_with("--\r\n"));
    }
}
