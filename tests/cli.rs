use std::os::unix::fs::PermissionsExt;

use crate::util::{TestHome, mode_of, run_bin};

#[test]
fn init_creates_private_keys_certificate_and_a_config_that_loads() {
    let t = TestHome::new();
    let out = t.init("Alice@Example.org");
    assert!(
        out.stdout().contains("alice@example.org"),
        "{}",
        out.stdout()
    );
    for secret in [
        "keys/user.key",
        "keys/device.key",
        "password",
        "tls/key.pem",
    ] {
        assert_eq!(mode_of(&t.path(secret)), 0o600, "{secret}");
    }
    assert_eq!(mode_of(&t.home()), 0o700);
    let cert = std::fs::read_to_string(t.path("tls/cert.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let config = std::fs::read_to_string(t.path("config.toml")).unwrap();
    for key in [
        "listen",
        "bootstrap",
        "contribution",
        "failure_fraction",
        "smarthost",
        "owner",
        "intake",
        "submission",
    ] {
        assert!(config.contains(key), "config lacks {key}");
    }
    let status = t.run(&["status", "--json"]).success().json();
    assert_eq!(status["address"], "alice@example.org");
    assert_eq!(status["config_ok"], true);
    assert_eq!(status["key_protected"], false);
    assert_eq!(status["store"]["objects"], 0);
}

#[test]
fn init_twice_is_refused_and_force_replaces_the_keys() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let before = t.run(&["key", "show", "--json"]).success().json();
    let pw = t.file("pw2", "pw\n");
    t.run(&[
        "init",
        "--address",
        "bob@example.org",
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .failure(&["already holds the identity of alice@example.org", "--force"]);
    // Refused means untouched.
    let same = t.run(&["key", "show", "--json"]).success().json();
    assert_eq!(before, same);
    t.run(&[
        "init",
        "--address",
        "bob@example.org",
        "--password-file",
        pw.to_str().unwrap(),
        "--force",
    ])
    .success();
    let after = t.run(&["key", "show", "--json"]).success().json();
    assert_eq!(after["address"], "bob@example.org");
    assert_ne!(after["user_fingerprint"], before["user_fingerprint"]);
    assert!(t.path("config.toml.bak").exists());
}

#[test]
fn phrase_export_then_import_gives_the_same_fingerprints() {
    let a = TestHome::new();
    a.init("alice@example.org");
    let phrase = a.run(&["key", "export", "--phrase"]).success().stdout();
    assert_eq!(phrase.lines().count(), 5, "{phrase}");
    let b = TestHome::new();
    let pw = b.file("pw", "other-password\n");
    b.run_stdin(
        &[
            "key",
            "import",
            "--phrase",
            "--address",
            "alice@example.org",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        Some(&phrase),
    )
    .success();
    let ka = a.run(&["key", "show", "--json"]).success().json();
    let kb = b.run(&["key", "show", "--json"]).success().json();
    assert_eq!(ka["user_fingerprint"], kb["user_fingerprint"]);
    assert_eq!(ka["sign_key"], kb["sign_key"]);
    assert_eq!(ka["enc_key"], kb["enc_key"]);
    assert_ne!(
        ka["device_fingerprint"], kb["device_fingerprint"],
        "each device has its own key"
    );
    // The imported home exports the same phrase again.
    assert_eq!(
        b.run(&["key", "export", "--phrase"]).success().stdout(),
        phrase
    );
}

#[test]
fn phrase_with_one_word_changed_is_rejected_and_creates_nothing() {
    let a = TestHome::new();
    a.init("alice@example.org");
    let phrase = a.run(&["key", "export", "--phrase"]).success().stdout();
    let words: Vec<&str> = phrase
        .split_whitespace()
        .filter(|w| !w.ends_with('.'))
        .collect();
    assert_eq!(words.len(), 25);
    // Change word 13 to another real word.
    let replacement = if words[12] == "zoo" { "abandon" } else { "zoo" };
    let mut changed = words.clone();
    changed[12] = replacement;
    let b = TestHome::new();
    let file = b.file("phrase", &changed.join(" "));
    let pw = b.file("pw", "x\n");
    b.run(&[
        "key",
        "import",
        "--phrase",
        "--phrase-file",
        file.to_str().unwrap(),
        "--address",
        "alice@example.org",
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .failure(&["checksum", "mistyped"]);
    assert!(!b.home().join("identity.toml").exists());
    assert!(!b.home().join("keys/user.key").exists());
    // A misspelt word is named.
    let mut misspelt = words.clone();
    misspelt[3] = "qqqqq";
    let file = b.file("phrase2", &misspelt.join(" "));
    b.run(&[
        "key",
        "import",
        "--phrase",
        "--phrase-file",
        file.to_str().unwrap(),
        "--address",
        "alice@example.org",
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .failure(&["word 4", "qqqqq"]);
}

#[test]
fn a_world_readable_key_is_refused() {
    let t = TestHome::new();
    t.init("alice@example.org");
    std::fs::set_permissions(
        t.path("keys/user.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    t.run(&["key", "export", "--phrase"])
        .failure(&["readable by other users", "chmod 600"]);
}

#[test]
fn passphrase_protected_key_needs_the_passphrase() {
    let t = TestHome::new();
    let pass = t.file("pass", "correct horse battery staple\n");
    let wrong = t.file("wrong", "incorrect horse\n");
    let pw = t.file("pw", "pw\n");
    t.run(&[
        "init",
        "--address",
        "carol@example.org",
        "--password-file",
        pw.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ])
    .success();
    let raw = std::fs::read(t.path("keys/user.key")).unwrap();
    assert_eq!(
        raw.len(),
        4 + 3 + 12 + 16 + 24 + 48,
        "protected key file layout"
    );
    assert_eq!(
        t.run(&["status", "--json"]).success().json()["key_protected"],
        true
    );
    t.run(&["key", "export", "--phrase"])
        .failure(&["passphrase-protected", "--passphrase-file"]);
    t.run(&[
        "key",
        "export",
        "--phrase",
        "--passphrase-file",
        wrong.to_str().unwrap(),
    ])
    .failure(&["wrong passphrase"]);
    let phrase = t
        .run(&[
            "key",
            "export",
            "--phrase",
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
        .success()
        .stdout();
    assert_eq!(
        phrase
            .split_whitespace()
            .filter(|w| !w.ends_with('.'))
            .count(),
        25
    );
}

#[test]
fn password_is_stored_only_as_a_hash_and_passwd_changes_it() {
    let t = TestHome::new();
    // No --password-file: the password comes from standard input.
    t.run_stdin(
        &["init", "--address", "dave@example.org"],
        Some("first-password\n"),
    )
    .success();
    let stored = std::fs::read_to_string(t.path("password")).unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("first-password"));
    assert!(peerpost::crypto::password::verify_password("first-password", stored.trim()).unwrap());
    t.run_stdin(&["passwd"], Some("second-password\n"))
        .success();
    let stored2 = std::fs::read_to_string(t.path("password")).unwrap();
    assert!(
        peerpost::crypto::password::verify_password("second-password", stored2.trim()).unwrap()
    );
    assert!(
        !peerpost::crypto::password::verify_password("first-password", stored2.trim()).unwrap()
    );
    // An empty password is refused and changes nothing.
    t.run_stdin(&["passwd"], Some("\n")).failure(&["empty"]);
    assert_eq!(
        std::fs::read_to_string(t.path("password")).unwrap(),
        stored2
    );
}

#[test]
fn invalid_config_is_one_clear_error_naming_key_and_file() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let path = t.path("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "listen = \"127.0.0.1:1143\"",
            "listen = \"127.0.0.1:70000\"",
        ),
    )
    .unwrap();
    let run = t
        .run(&["status"])
        .failure(&["config.toml", "imap.listen", "127.0.0.1:70000"]);
    assert!(run.stdout().contains("INVALID"));
    std::fs::write(
        &path,
        text.replace("[storage]", "[storage]\ncontrbution = \"1GiB\""),
    )
    .unwrap();
    t.run(&["status"]).failure(&["config.toml", "contrbution"]);
}

#[test]
fn commands_on_an_empty_home_say_to_run_init() {
    let t = TestHome::new();
    for args in [
        &["status"][..],
        &["key", "show"],
        &["key", "export", "--phrase"],
        &["passwd"],
    ] {
        t.run(args).failure(&["peerpost init"]);
    }
}

#[test]
fn bad_address_is_refused() {
    let t = TestHome::new();
    let pw = t.file("pw", "x\n");
    t.run(&[
        "init",
        "--address",
        "not-an-address",
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .failure(&["--address", "no '@'"]);
    assert!(!t.home().join("identity.toml").exists());
}

#[test]
fn home_comes_from_the_environment_too() {
    let t = TestHome::new();
    t.init("erin@example.org");
    let out = std::process::Command::new(crate::util::BIN)
        .args(["key", "show"])
        .env("PEERPOST_HOME", t.home())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("erin@example.org"));
    // And two homes side by side stay independent.
    let other = TestHome::new();
    other.init("frank@example.org");
    let a = run_bin(&t.home(), &["key", "show", "--json"], None)
        .success()
        .json();
    let b = run_bin(&other.home(), &["key", "show", "--json"], None)
        .success()
        .json();
    assert_ne!(a["user_fingerprint"], b["user_fingerprint"]);
}

#[test]
fn help_lists_only_working_subcommands() {
    let out = std::process::Command::new(crate::util::BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "init", "passwd", "key", "status", "mount", "send", "restore", "demo",
    ] {
        assert!(help.contains(cmd), "{help}");
    }
}
