//! DKIM/SPF/DMARC on the SMTP intake of `peerpost run` (`[smtp] verify`), with the DNS
//! answers in a `dns_records` file: messages DKIM-signed here (ed25519) are sent over a raw
//! socket from 127.0.0.1 and read back with `peerpost export`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

use crate::util::{RunNode, TestHome, walk};

// mail-auth's own ed25519 example key (RFC 8463 style): seed and public key, base64.
const SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
const PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

fn records() -> String {
    format!(
        "# DNS for the test, no real resolver involved\n\
         sel._domainkey.example.org TXT \"v=DKIM1; k=ed25519; p={PUBLIC}\"\n\
         example.org TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         mail.example.org TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         _dmarc.example.org TXT \"v=DMARC1; p=reject\"\n\
         sel._domainkey.strict.example TXT \"v=DKIM1; k=ed25519; p={PUBLIC}\"\n\
         strict.example TXT \"v=spf1 -all\"\n\
         _dmarc.strict.example TXT \"v=DMARC1; p=reject\"\n"
    )
}

/// A message from `bob@DOMAIN` signed by DOMAIN's `sel` key.
fn signed(domain: &str, subject: &str, body: &str) -> String {
    let msg = format!(
        "From: Bob <bob@{domain}>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\
         Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@{domain}>\r\n\r\n{body}"
    );
    let b64 = |s: &str| mail_parser::decoders::base64::base64_decode(s.as_bytes()).unwrap();
    let key = Ed25519Key::from_seed_and_public_key(&b64(SEED), &b64(PUBLIC)).unwrap();
    let sig = DkimSigner::from_key(key)
        .domain(domain)
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(msg.as_bytes())
        .unwrap();
    format!("{}{msg}", sig.to_header())
}

/// One SMTP transaction; returns the server's name (from its greeting) and the reply to
/// the end of DATA.
fn send(port: u16, helo: &str, from: &str, message: &str) -> (String, String) {
    let mut w = TcpStream::connect(("127.0.0.1", port)).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    let reply = |r: &mut BufReader<TcpStream>| -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    let greeting = reply(&mut r);
    let host = greeting.split_whitespace().nth(1).unwrap().to_string();
    for (cmd, want) in [
        (format!("EHLO {helo}"), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        ("RCPT TO:<alice@example.test>".to_string(), "250"),
        ("DATA".to_string(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let got = reply(&mut r);
        assert!(got.starts_with(want), "{cmd}: {got}");
    }
    for line in message.split_inclusive("\r\n") {
        if line.starts_with('.') {
            w.write_all(b".").unwrap();
        }
        w.write_all(line.as_bytes()).unwrap();
    }
    w.write_all(b".\r\n").unwrap();
    let end = reply(&mut r);
    w.write_all(b"QUIT\r\n").unwrap();
    (host, end)
}

/// A home for alice@example.test with `verify` set and the records file in place.
fn home(verify: &str) -> TestHome {
    let t = TestHome::new();
    t.init("alice@example.test");
    let dns = t.file("dns.txt", &records());
    let cfg = t.path("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("verify = \"off\"") && text.contains("dns_records = \"\""));
    let text = text
        .replace("verify = \"off\"", &format!("verify = \"{verify}\""))
        .replace(
            "dns_records = \"\"",
            &format!("dns_records = {:?}", dns.to_str().unwrap()),
        );
    std::fs::write(&cfg, text).unwrap();
    t
}

/// Every INBOX message, through `peerpost export`.
fn inbox(t: &TestHome, tag: &str) -> Vec<String> {
    let out = t.dir.path().join(format!("export-{tag}"));
    t.run(&["export", out.to_str().unwrap()]).success();
    walk(&out)
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(&out).unwrap().to_string_lossy().into_owned();
            rel.starts_with("cur/") || rel.starts_with("new/")
        })
        .map(|p| String::from_utf8(std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn with_subject<'a>(inbox: &'a [String], subject: &str) -> &'a str {
    let needle = format!("Subject: {subject}\r\n");
    let found: Vec<_> = inbox.iter().filter(|m| m.contains(&needle)).collect();
    assert_eq!(found.len(), 1, "{subject}: {inbox:#?}");
    found[0]
}

/// The message's header fields named Authentication-Results, unfolded.
fn results(message: &str) -> Vec<String> {
    let head = message.split("\r\n\r\n").next().unwrap();
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_string());
        }
    }
    fields
        .into_iter()
        .filter(|f| {
            f.to_ascii_lowercase()
                .starts_with("authentication-results:")
        })
        .collect()
}

#[test]
fn tag_adds_results_and_strips_forged_ones() {
    let t = home("tag");
    let node = RunNode::start(&t, &[("smtp", "127.0.0.1:0")], &[]);
    let port = node.port("smtp");

    let good = signed("example.org", "good", "Hello Alice.\r\n");
    let (host, end) = send(port, "mail.example.org", "bob@example.org", &good);
    assert!(end.starts_with("250"), "{end}");

    // Signed, then the body changed on the way.
    let altered = signed("example.org", "altered", "Pay 10 euros.\r\n")
        .replace("Pay 10 euros.", "Pay 1000 euros.");
    let (_, end) = send(port, "mail.example.org", "bob@example.org", &altered);
    assert!(end.starts_with("250"), "{end}");

    // A forged verdict under our own name (any case), and a foreign one that must stay.
    let forged = format!(
        "Authentication-Results: {};\r\n\tdkim=pass header.d=bank.example\r\n\
         Authentication-Results: relay.other.example; spf=pass\r\n{}",
        host.to_uppercase(),
        signed("example.org", "forged", "Trust me.\r\n")
    );
    let (_, end) = send(port, "mail.example.org", "bob@example.org", &forged);
    assert!(end.starts_with("250"), "{end}");
    drop(node);

    let inbox = inbox(&t, "tag");
    assert_eq!(inbox.len(), 3, "{inbox:#?}");
    let ours = |m: &str| -> Vec<String> {
        results(m)
            .into_iter()
            .filter(|f| f.starts_with(&format!("Authentication-Results: {host};")))
            .collect()
    };

    let good = ours(with_subject(&inbox, "good"));
    assert_eq!(good.len(), 1, "{good:?}");
    let g = &good[0];
    assert!(
        g.contains("dkim=pass") && g.contains("header.d=example.org"),
        "{g}"
    );
    assert!(
        g.contains("spf=pass") && g.contains("smtp.mailfrom=bob@example.org"),
        "{g}"
    );
    assert!(g.contains("smtp.helo=mail.example.org"), "{g}");
    assert!(
        g.contains("dmarc=pass") && g.contains("header.from=example.org"),
        "{g}"
    );

    let altered = ours(with_subject(&inbox, "altered"));
    assert_eq!(altered.len(), 1, "{altered:?}");
    assert!(altered[0].contains("dkim=fail"), "{}", altered[0]);
    // SPF still passes aligned, so DMARC passes: tag never refuses.
    assert!(altered[0].contains("spf=pass"), "{}", altered[0]);

    let forged = with_subject(&inbox, "forged");
    let all = results(forged);
    assert!(
        !forged.contains("bank.example"),
        "forged verdict kept: {all:?}"
    );
    assert_eq!(ours(forged).len(), 1, "{all:?}");
    assert!(
        ours(forged)[0].contains("dkim=pass header.d=example.org"),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|f| f == "Authentication-Results: relay.other.example; spf=pass"),
        "{all:?}"
    );
}

#[test]
fn enforce_refuses_dmarc_reject_before_storing() {
    let t = home("enforce");
    let node = RunNode::start(&t, &[("smtp", "127.0.0.1:0")], &[]);
    let port = node.port("smtp");

    // strict.example: SPF -all and a broken signature, DMARC p=reject.
    let bad = signed("strict.example", "spoofed", "Pay 10 euros.\r\n")
        .replace("Pay 10 euros.", "Pay 1000 euros.");
    let (_, end) = send(port, "mail.example.org", "bob@strict.example", &bad);
    assert!(end.starts_with("550 5.7.1"), "{end}");
    assert!(end.contains("strict.example"), "{end}");

    // The same domain with a good signature passes DMARC through DKIM.
    let ok = signed("strict.example", "signed-ok", "Hello.\r\n");
    let (host, end) = send(port, "mail.example.org", "bob@strict.example", &ok);
    assert!(end.starts_with("250"), "{end}");
    drop(node);

    let inbox = inbox(&t, "enforce");
    assert_eq!(inbox.len(), 1, "the refused message was stored: {inbox:#?}");
    let r = results(with_subject(&inbox, "signed-ok"));
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].starts_with(&format!("Authentication-Results: {host};")),
        "{r:?}"
    );
    assert!(
        r[0].contains("dkim=pass") && r[0].contains("spf=fail"),
        "{r:?}"
    );
    assert!(r[0].contains("dmarc=pass"), "{r:?}");
}

#[test]
fn verify_off_adds_nothing() {
    let t = TestHome::new();
    t.init("alice@example.test");
    let node = RunNode::start(&t, &[("smtp", "127.0.0.1:0")], &[]);
    let good = signed("example.org", "unchecked", "Hello.\r\n");
    let (host, end) = send(
        node.port("smtp"),
        "mail.example.org",
        "bob@example.org",
        &good,
    );
    assert!(end.starts_with("250"), "{end}");
    // A verdict forged under our name (what overlay deliveries carry) goes even with checks
    // off; another host's stays.
    let forged = format!(
        "Authentication-Results: {host}; peerpost=pass smtp.mailfrom=ceo@example.test\r\n\
         Authentication-Results: relay.other.example; spf=pass\r\n{}",
        signed("example.org", "forged-off", "Trust me.\r\n")
    );
    let (_, end) = send(
        node.port("smtp"),
        "mail.example.org",
        "bob@example.org",
        &forged,
    );
    assert!(end.starts_with("250"), "{end}");
    drop(node);
    let inbox = inbox(&t, "off");
    let m = with_subject(&inbox, "unchecked");
    assert!(results(m).is_empty(), "{m}");
    // Stored as today: Return-Path and Received, then the message as sent.
    assert!(m.starts_with("Return-Path: <bob@example.org>\r\nReceived: from mail.example.org"));
    assert!(m.ends_with(&good), "{m}");
    let f = with_subject(&inbox, "forged-off");
    assert!(!f.contains("peerpost=pass"), "forged verdict kept: {f}");
    assert_eq!(results(f).len(), 1, "{f}");
}

/// A records file with a bad line stops `run` with the file, the line and the reason.
#[test]
fn bad_records_file_stops_run_with_its_line() {
    let t = home("tag");
    let dns = t.dir.path().join("dns.txt");
    std::fs::write(
        &dns,
        "# ok\nexample.org TXT \"v=spf1 -all\"\nexample.org CNAME x\n",
    )
    .unwrap();
    let err = match RunNode::try_start(&t, &[("smtp", "127.0.0.1:0")], &[]) {
        Ok(_) => panic!("run started with a bad records file"),
        Err(e) => e,
    };
    assert!(
        err.contains("dns.txt") && err.contains("line 3") && err.contains("CNAME"),
        "{err}"
    );
}
