//! What a mail admin installs: the systemd units (checked by `systemd-analyze verify` with the
//! built binary, their ExecStart flags parsed by that binary), shell completions loaded by a
//! real bash, manual pages rendered by man(1), `scripts/install` into a scratch prefix, and the
//! client autoconfiguration read back by Python's XML and plist parsers and used by imaplib
//! and smtplib against a running node.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{BIN, RunNode, TestHome};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn units_dir() -> PathBuf {
    Path::new(ROOT).join("contrib/systemd")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn out(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `ExecStart=` command lines of a unit or drop-in (an empty one resets; skipped).
fn exec_starts(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStart="))
        .filter(|v| !v.is_empty())
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// `systemd-analyze verify` of `unit` (with `dropins` in `<unit>.d/`) with ExecStart pointing
/// at `bin`: no error and not one warning.
fn verify(unit: &Path, dropins: &[&Path], bin: &str, user: bool) {
    let dir = tempfile::tempdir().unwrap();
    // Verified under the name it is installed as.
    let name = if user {
        "peerpost.service"
    } else {
        unit.file_name().unwrap().to_str().unwrap()
    };
    let fix = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .replace("/usr/local/bin/peerpost", bin)
    };
    std::fs::write(dir.path().join(name), fix(unit)).unwrap();
    if !dropins.is_empty() {
        let d = dir.path().join(format!("{name}.d"));
        std::fs::create_dir(&d).unwrap();
        for p in dropins {
            std::fs::write(d.join(p.file_name().unwrap()), fix(p)).unwrap();
        }
    }
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("--man=no");
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    let (ok, stdout, stderr) = out(cmd.arg("verify").arg(dir.path().join(name)));
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify {} + {dropins:?}:\n{stdout}{stderr}",
        unit.display()
    );
}

#[test]
fn systemd_units_verify_and_their_command_lines_parse() {
    let dir = units_dir();
    let user = dir.join("peerpost.user.service");
    let system = dir.join("peerpost.service");
    let dropins = [
        "peerpost-mount.conf",
        "peerpost-privileged-ports.conf",
        "peerpost-passphrase.conf",
    ]
    .map(|n| dir.join(n));

    // Every ExecStart is a command line the binary accepts (unknown flags fail clap before
    // --help is acted on).
    let mut lines = 0;
    for f in [&user, &system].into_iter().chain(dropins.iter()) {
        let text = std::fs::read_to_string(f).unwrap();
        for argv in exec_starts(&text) {
            assert_eq!(argv[0], "/usr/local/bin/peerpost", "{}", f.display());
            let args: Vec<String> = argv[1..]
                .iter()
                .map(|a| a.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x"))
                .collect();
            let (ok, _, stderr) = out(Command::new(BIN).args(&args).arg("--help"));
            assert!(ok, "{}: {argv:?}: {stderr}", f.display());
            lines += 1;
        }
    }
    assert_eq!(
        lines, 4,
        "user, system, mount and passphrase ExecStart lines"
    );
    // What the brief of each unit promises.
    let u = std::fs::read_to_string(&user).unwrap();
    for want in [
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "WantedBy=default.target",
    ] {
        assert!(u.contains(want), "user unit lacks {want}");
    }
    let s = std::fs::read_to_string(&system).unwrap();
    for want in [
        "User=peerpost",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/peerpost",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(s.contains(want), "system unit lacks {want:?}");
    }

    if !have("systemd-analyze") {
        println!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    verify(&user, &[], BIN, true);
    verify(&user, &[&dropins[2]], BIN, true);
    verify(&system, &[], BIN, false);
    verify(
        &system,
        &dropins.each_ref().map(|p| p.as_path()),
        BIN,
        false,
    );
    // The check can fail: a misspelt key is a warning.
    let bad = tempfile::tempdir().unwrap();
    let typo = bad.path().join("peerpost.service");
    std::fs::write(
        &typo,
        s.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    )
    .unwrap();
    let (_, _, stderr) = out(Command::new("systemd-analyze")
        .args(["--man=no", "verify"])
        .arg(&typo));
    assert!(stderr.contains("NoNewPrivilege"), "{stderr}");
}

#[test]
fn bash_loads_the_completions_and_completes_subcommands_and_flags() {
    let script = format!(
        r#"source <("{BIN}" completions bash) || exit 3
complete -p peerpost || exit 4
COMP_WORDS=(peerpost aut); COMP_CWORD=1; _peerpost peerpost aut peerpost
echo "sub: ${{COMPREPLY[*]}}"
COMP_WORDS=(peerpost run --no-m); COMP_CWORD=2; _peerpost peerpost --no-m run
echo "flag: ${{COMPREPLY[*]}}"
COMP_WORDS=(peerpost autoconfig --format ''); COMP_CWORD=3; _peerpost peerpost '' --format
echo "value: ${{COMPREPLY[*]}}""#
    );
    let (ok, stdout, stderr) = out(Command::new("bash").args(["-c", &script]));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("-F _peerpost peerpost"), "{stdout}");
    assert!(stdout.contains("sub: autoconfig"), "{stdout}");
    assert!(stdout.contains("flag: --no-mdns --no-mount"), "{stdout}");
    assert!(stdout.contains("value: thunderbird apple"), "{stdout}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (ok, stdout, stderr) = out(Command::new(BIN).args(["completions", shell]));
        assert!(ok && stdout.contains("autoconfig"), "{shell}: {stderr}");
    }
    let (ok, _, stderr) = out(Command::new(BIN).args(["completions", "tcsh"]));
    assert!(!ok && stderr.contains("tcsh"), "{stderr}");
}

fn render(page: &Path) -> String {
    let (ok, stdout, stderr) = out(Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "")
        .env("PAGER", "cat"));
    assert!(ok, "man -l {}: {stderr}", page.display());
    stdout
}

#[test]
fn man_pages_for_every_subcommand_render_with_man() {
    if !have("man") {
        println!(
            "SKIPPED man pages: man(1) is not installed (scripts/setup --test installs man-db)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages");
    let (ok, stdout, stderr) = out(Command::new(BIN).args(["man", "--dir"]).arg(&pages));
    assert!(ok, "{stderr}");
    // One page per subcommand the binary lists, nested ones too.
    let (_, help, _) = out(Command::new(BIN).arg("--help"));
    let subs: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .collect();
    assert!(subs.len() >= 15, "{subs:?}");
    for s in subs
        .iter()
        .map(|s| format!("peerpost-{s}.1"))
        .chain(["peerpost.1".into(), "peerpost-key-show.1".into()])
    {
        assert!(pages.join(&s).is_file(), "{s} missing; written:\n{stdout}");
    }
    let run = render(&pages.join("peerpost-run.1"));
    for want in [
        "NAME",
        "peerpost-run",
        "--submission",
        "--passphrase-file",
        "SIGTERM",
    ] {
        assert!(run.contains(want), "peerpost-run(1) lacks {want}:\n{run}");
    }
    let main = render(&pages.join("peerpost.1"));
    assert!(
        main.contains("peerpost-autoconfig(1)") || main.contains("autoconfig"),
        "{main}"
    );
    // `man peerpost` through a man path, as after an install.
    let man1 = dir.path().join("share/man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    for e in std::fs::read_dir(&pages).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), man1.join(e.file_name())).unwrap();
    }
    let (ok, page, stderr) = out(Command::new("man")
        .arg("-M")
        .arg(dir.path().join("share/man"))
        .arg("peerpost-autoconfig")
        .env("MANWIDTH", "80")
        .env("PAGER", "cat"));
    assert!(ok && page.contains("--format"), "{page}{stderr}");
    // Without --dir: peerpost.1 on stdout, the same page.
    let (ok, stdout, _) = out(Command::new(BIN).arg("man"));
    assert!(ok);
    assert_eq!(
        stdout,
        std::fs::read_to_string(pages.join("peerpost.1")).unwrap()
    );
}

#[test]
fn install_script_puts_binary_pages_completions_and_units_in_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("usr");
    let (ok, stdout, stderr) = out(Command::new(Path::new(ROOT).join("scripts/install"))
        .arg("--binary")
        .arg(BIN)
        .arg(&prefix));
    assert!(ok, "{stdout}{stderr}");
    let bin = prefix.join("bin/peerpost");
    let (ok, version, _) = out(Command::new(&bin).arg("--version"));
    assert!(ok && version.starts_with("peerpost "), "{version}");
    for f in [
        "share/man/man1/peerpost.1",
        "share/man/man1/peerpost-run.1",
        "share/bash-completion/completions/peerpost",
        "share/zsh/site-functions/_peerpost",
        "share/fish/vendor_completions.d/peerpost.fish",
        "lib/systemd/user/peerpost.service",
        "lib/systemd/system/peerpost.service",
        "lib/sysusers.d/peerpost.conf",
        "share/doc/peerpost/systemd/peerpost-mount.conf",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed:\n{stdout}");
    }
    // The units start the installed binary.
    let bin_s = bin.to_str().unwrap();
    for unit in [
        "lib/systemd/user/peerpost.service",
        "lib/systemd/system/peerpost.service",
    ] {
        let text = std::fs::read_to_string(prefix.join(unit)).unwrap();
        assert!(
            text.contains(&format!("ExecStart={bin_s} run")),
            "{unit}:\n{text}"
        );
        assert!(!text.contains("/usr/local/bin"), "{unit}");
    }
    let (ok, stdout, stderr) = out(Command::new("bash").args([
        "-c",
        &format!(
            "source {}/share/bash-completion/completions/peerpost && complete -p peerpost",
            prefix.display()
        ),
    ]));
    assert!(ok && stdout.contains("_peerpost"), "{stdout}{stderr}");
    if have("systemd-analyze") {
        let (ok, stdout, stderr) = out(Command::new("systemd-analyze")
            .args(["--man=no", "verify"])
            .arg(prefix.join("lib/systemd/system/peerpost.service")));
        assert!(ok && stderr.trim().is_empty(), "{stdout}{stderr}");
    }
}

/// Rewrites the listeners of a fresh config to these addresses.
fn set_listeners(t: &TestHome, pairs: &[(&str, &str)]) {
    let path = t.path("config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in pairs {
        assert!(text.contains(from), "config has no {from}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const PARSE: &str = r#"
import sys, json, plistlib, xml.etree.ElementTree as ET
kind, data = sys.argv[1], sys.stdin.buffer.read()
if kind == "thunderbird":
    root = ET.fromstring(data)
    assert root.tag == "clientConfig" and root.get("version") == "1.1", root.tag
    p = root.find("emailProvider")
    def srv(e):
        return {"type": e.get("type"), "host": e.findtext("hostname"), "port": int(e.findtext("port")),
                "socket": e.findtext("socketType"), "user": e.findtext("username"),
                "auth": e.findtext("authentication")}
    print(json.dumps({"domain": p.findtext("domain"),
                      "in": [srv(e) for e in p.findall("incomingServer")],
                      "out": [srv(e) for e in p.findall("outgoingServer")]}))
else:
    pl = plistlib.loads(data)
    assert pl["PayloadType"] == "Configuration", pl
    (m,) = pl["PayloadContent"]
    assert m["PayloadType"] == "com.apple.mail.managed", m
    print(json.dumps({"type": m["EmailAccountType"], "address": m["EmailAddress"],
                      "in": [m["IncomingMailServerHostName"], m["IncomingMailServerPortNumber"],
                             m["IncomingMailServerUseSSL"], m["IncomingMailServerUsername"]],
                      "out": [m["OutgoingMailServerHostName"], m["OutgoingMailServerPortNumber"],
                              m["OutgoingMailServerUseSSL"], m["OutgoingMailServerUsername"]],
                      "uuid": [m["PayloadUUID"], pl["PayloadUUID"]]}))
"#;

fn parse(kind: &str, doc: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", PARSE, kind])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{doc}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn autoconfig_documents_carry_the_configs_ports_and_parse() {
    let t = TestHome::new();
    t.init("Alice@Example.org");
    set_listeners(
        &t,
        &[
            ("127.0.0.1:1143", "127.0.0.2:21143"),
            ("127.0.0.1:1993", "127.0.0.2:21993"),
            ("127.0.0.1:1110", ""),
            ("127.0.0.1:1995", "127.0.0.2:21995"),
            ("127.0.0.1:2587", "127.0.0.2:22587"),
        ],
    );
    let xml = t.run(&["autoconfig"]).success().stdout();
    let v = parse("thunderbird", &xml);
    assert_eq!(v["domain"], "example.org");
    let inc: Vec<(String, String, i64)> = v["in"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["user"], "alice@example.org");
            assert_eq!(s["auth"], "password-cleartext");
            assert_eq!(s["host"], "127.0.0.2");
            (
                s["type"].as_str().unwrap().into(),
                s["socket"].as_str().unwrap().into(),
                s["port"].as_i64().unwrap(),
            )
        })
        .collect();
    let want = |t: &str, s: &str, p| (t.to_string(), s.to_string(), p);
    // Implicit TLS first (RFC 8314); the POP3 listener turned off is not offered.
    assert_eq!(
        inc,
        vec![
            want("imap", "SSL", 21993),
            want("imap", "STARTTLS", 21143),
            want("pop3", "SSL", 21995),
        ]
    );
    assert_eq!(v["out"].as_array().unwrap().len(), 1);
    assert_eq!(v["out"][0]["type"], "smtp");
    assert_eq!(v["out"][0]["port"], 22587);
    assert_eq!(v["out"][0]["socket"], "STARTTLS");

    let plist = t
        .run(&[
            "autoconfig",
            "--format",
            "apple",
            "--address",
            "Bob@Other.example",
        ])
        .success()
        .stdout();
    let p = parse("apple", &plist);
    assert_eq!(p["type"], "EmailTypeIMAP");
    assert_eq!(p["address"], "bob@other.example");
    assert_eq!(
        p["in"],
        serde_json::json!(["127.0.0.2", 21993, true, "bob@other.example"])
    );
    assert_eq!(
        p["out"],
        serde_json::json!(["127.0.0.2", 22587, true, "bob@other.example"])
    );
    assert_ne!(p["uuid"][0], p["uuid"][1]);
    // Same input, same profile: a re-import replaces the account instead of adding one.
    let again = t
        .run(&[
            "autoconfig",
            "--format",
            "apple",
            "--address",
            "bob@other.example",
        ])
        .success()
        .stdout();
    assert_eq!(plist, again);

    // Listeners on every interface need the name clients use.
    set_listeners(&t, &[("127.0.0.2:21993", "0.0.0.0:21993")]);
    t.run(&["autoconfig"]).failure(&["0.0.0.0:21993", "--host"]);
    let xml = t
        .run(&["autoconfig", "--host", "mail.example.org"])
        .success()
        .stdout();
    let v = parse("thunderbird", &xml);
    assert_eq!(v["in"][0]["host"], "mail.example.org");
    assert_eq!(v["out"][0]["host"], "mail.example.org");
    t.run(&["autoconfig", "--address", "not an address"])
        .failure(&["--address"]);
}

/// A client configured from the autoconfig alone reaches the running node: smtplib logs in
/// on the submission entry (STARTTLS, AUTH), imaplib over the IMAPS entry reads the message
/// the legacy server forwarded into the intake. (Mail a lone node submits to its own user
/// waits for ring peers to hold copies, so the message comes in through the intake here.)
#[test]
fn a_client_set_up_from_autoconfig_sends_and_reads_mail() {
    let t = TestHome::new();
    t.init("alice@example.org");
    let (imaps, sub, intake) = (free_port(), free_port(), free_port());
    let imaps_addr = format!("127.0.0.1:{imaps}");
    let sub_addr = format!("127.0.0.1:{sub}");
    set_listeners(
        &t,
        &[
            ("127.0.0.1:1993", &imaps_addr),
            ("127.0.0.1:2587", &sub_addr),
        ],
    );
    let xml = t.run(&["autoconfig"]).success().stdout();
    let _node = RunNode::start(
        &t,
        &[
            ("imaps", &imaps_addr),
            ("submission", &sub_addr),
            ("smtp", &format!("127.0.0.1:{intake}")),
        ],
        &[],
    );
    let client = r#"
import sys, ssl, time, imaplib, smtplib, xml.etree.ElementTree as ET
doc, cert, password, intake = sys.stdin.read(), sys.argv[1], sys.argv[2], int(sys.argv[3])
p = ET.fromstring(doc).find("emailProvider")
inc = [e for e in p.findall("incomingServer") if e.get("type") == "imap" and e.findtext("socketType") == "SSL"][0]
out = p.findall("outgoingServer")[0]
ctx = ssl.create_default_context(cafile=cert)
user = out.findtext("username")
s = smtplib.SMTP(out.findtext("hostname"), int(out.findtext("port")), timeout=30)
assert out.findtext("socketType") == "STARTTLS"
s.starttls(context=ctx)
s.login(user, password)
assert s.noop()[0] == 250
s.quit()
legacy = smtplib.SMTP("127.0.0.1", intake, timeout=30)
legacy.sendmail("carol@outside.example", [user], b"From: carol@outside.example\r\nTo: " + user.encode() + b"\r\nSubject: via autoconfig\r\n\r\nhello\r\n")
legacy.quit()
m = imaplib.IMAP4_SSL(inc.findtext("hostname"), int(inc.findtext("port")), ssl_context=ctx, timeout=30)
m.login(inc.findtext("username"), password)
for _ in range(100):
    m.select("INBOX")
    typ, data = m.search(None, 'SUBJECT "via autoconfig"')
    if data[0].split():
        print("READ BACK", len(data[0].split()))
        break
    time.sleep(0.2)
m.logout()
"#;
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", client])
        .arg(t.path("tls/cert.pem"))
        .arg("secret-password")
        .arg(intake.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("READ BACK 1"),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
