use super::*;

fn parse(text: &str) -> Result<Config> {
    Config::parse(text, Path::new("/h/config.toml"), Path::new("/h"))
}

#[test]
fn template_is_the_defaults() {
    let text = template("alice@example.org");
    let file = parse_file(&text, Path::new("t")).unwrap();
    let mut expected = FileConfig::default();
    expected.identity.address = "alice@example.org".into();
    assert_eq!(file, expected, "template and Default must agree");
    let c = parse(&text).unwrap();
    assert_eq!(c.address, "alice@example.org");
    assert_eq!(c.tls.cert, PathBuf::from("/h/tls/cert.pem"));
    assert_eq!(c.storage.contribution, 10 * 1024 * 1024 * 1024);
    assert_eq!(c.imap.listen, Some("127.0.0.1:1143".parse().unwrap()));
}

#[test]
fn empty_file_is_all_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.smtp.intake, Some("127.0.0.1:2525".parse().unwrap()));
    assert!(c.smarthost.is_none());
}

#[test]
fn errors_name_the_key_and_file() {
    let e = parse("[imap]\nlisten = \"127.0.0.1:99999\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/h/config.toml") && e.contains("imap.listen"),
        "{e}"
    );
    let e = parse("[imap]\nlistn = \"x\"\n").unwrap_err().to_string();
    assert!(e.contains("imap") && e.contains("listn"), "{e}");
    let e = parse("[storage]\ncontribution = \"ten\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage.contribution"), "{e}");
    let e = parse("[durability]\nfailure_fraction = 1.5\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("durability.failure_fraction"), "{e}");
    let e = parse("[overlay]\nmdns = \"yes\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlay.mdns"), "{e}");
    let e = parse("[overlay]\nbootstrap = [\"10.0.0.1:4040\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlay.bootstrap"), "{e}");
    let e = parse("[imap\n").unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("10GiB"), Ok(10 << 30));
    assert_eq!(parse_size("500 MB"), Ok(500_000_000));
    assert_eq!(parse_size("1024"), Ok(1024));
    assert!(parse_size("1 parsec").is_err());
    assert!(parse_size("").is_err());
}

#[test]
fn reachable_option() {
    assert_eq!(parse("").unwrap().overlay.reachable, None);
    let c = parse("[overlay]\nreachable = \"yes\"\n").unwrap();
    assert_eq!(c.overlay.reachable, Some(true));
    let c = parse("[overlay]\nreachable = \"no\"\n").unwrap();
    assert_eq!(c.overlay.reachable, Some(false));
    let e = parse("[overlay]\nreachable = \"maybe\"\n").unwrap_err();
    assert!(e.to_string().contains("overlay.reachable"), "{e}");
}

#[test]
fn upnp_option_is_off_unless_set() {
    assert!(!parse("").unwrap().overlay.upnp);
    assert!(parse("[overlay]\nupnp = true\n").unwrap().overlay.upnp);
    assert!(!parse("[overlay]\nupnp = false\n").unwrap().overlay.upnp);
    let e = parse("[overlay]\nupnp = \"maybe\"\n").unwrap_err();
    assert!(e.to_string().contains("upnp"), "{e}");
    // The commented template says it is off.
    let t = super::template::template("a@b.example");
    assert!(t.contains("\nupnp = false\n"), "{t}");
}

#[test]
fn natpmp_option_is_off_unless_set() {
    assert!(!parse("").unwrap().overlay.natpmp);
    assert!(parse("[overlay]\nnatpmp = true\n").unwrap().overlay.natpmp);
    assert!(!parse("[overlay]\nnatpmp = false\n").unwrap().overlay.natpmp);
    let e = parse("[overlay]\nnatpmp = 1\n").unwrap_err();
    assert!(e.to_string().contains("natpmp"), "{e}");
    let t = super::template::template("a@b.example");
    assert!(t.contains("\nnatpmp = false\n"), "{t}");
    // The template parses with it (deny_unknown_fields).
    assert!(!parse(&t).unwrap().overlay.natpmp);
}

#[test]
fn ring_authority_option() {
    assert_eq!(parse("").unwrap().overlay.ring_authority, None);
    let key = "ab".repeat(32);
    let c = parse(&format!("[overlay]\nring_authority = \"{key}\"\n")).unwrap();
    assert_eq!(c.overlay.ring_authority, Some([0xab; 32]));
    let e = parse("[overlay]\nring_authority = \"abc\"\n").unwrap_err();
    assert!(e.to_string().contains("overlay.ring_authority"), "{e}");
}

#[test]
fn smtp_verify_values() {
    assert_eq!(parse("").unwrap().smtp.verify, SmtpVerify::Off);
    let c = parse("[smtp]\nverify = \"enforce\"\ndns_records = \"dns.txt\"\n").unwrap();
    assert_eq!(c.smtp.verify, SmtpVerify::Enforce);
    assert_eq!(c.smtp.dns_records, Some(PathBuf::from("/h/dns.txt")));
    let e = parse("[smtp]\nverify = \"yes\"\n").unwrap_err().to_string();
    assert!(e.contains("smtp.verify"), "{e}");
}

#[test]
fn limits() {
    let c = parse("").unwrap();
    assert_eq!(c.limits.sessions_per_ip, 16);
    assert_eq!(c.limits.login_within, Duration::from_secs(600));
    let c = parse("[limits]\nsessions_per_ip = 2\nlogin_within = \"2s\"\n").unwrap();
    assert_eq!(c.limits.sessions_per_ip, 2);
    assert_eq!(c.limits.login_within, Duration::from_secs(2));
    let e = parse("[limits]\nmax_sessions = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.max_sessions"), "{e}");
    let e = parse("[limits]\nsession_max = \"forever\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.session_max"), "{e}");
}

#[test]
fn empty_listener_disables_it() {
    let c = parse("[pop3]\nlisten = \"\"\n").unwrap();
    assert_eq!(c.pop3.listen, None);
}
