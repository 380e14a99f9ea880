//! Debian's Postfix on both sides of real `peerpost run` processes (issue #22), and submission
//! over implicit TLS (RFC 8314) with Python's smtplib.SMTP_SSL and swaks.
//!
//! - In front: the legacy server of the user's domain (`relay_domains` + a transport map to
//!   the node's SMTP intake) takes mail from smtplib and hands it on; it arrives once.
//! - Behind: the smarthost the node relays outside mail through, with STARTTLS (a certificate
//!   the test makes, trusted through `ca_file`) and SASL through a private Dovecot auth
//!   service (passwd-file); Postfix delivers to a virtual Maildir, and refuses an unknown
//!   user with 550, which comes back as a DSN in the sender's INBOX.
//!
//! Each Postfix is a private instance (its own config, queue and data directories under a
//! temporary directory, `postfix -c DIR start`/`stop`, listening on 127.0.0.1 on a free
//! port: Postfix refuses `inet_interfaces` addresses that are not on an interface, and only
//! 127.0.0.1 is). Without Postfix (or without root, which it needs) the Postfix tests say why
//! and skip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::flow::eventually;
use crate::util::{RunNode, TestHome};

const PASSWORD: &str = "secret-password";
const IMAP_DUMP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/imap_dump.py");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    eventually(what, 20, || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

/// The messages of `mailbox`, read with imaplib.
fn imap_messages(port: u16, user: &str, mailbox: &str) -> Vec<String> {
    let out = Command::new("python3")
        .args([IMAP_DUMP, &port.to_string(), user, PASSWORD, mailbox])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "imap_dump.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("imap_dump.py prints JSON")
}

fn count(messages: &[String], needle: &str) -> usize {
    messages.iter().filter(|m| m.contains(needle)).count()
}

/// Why Postfix cannot run here, if it cannot.
fn postfix_missing() -> Option<String> {
    if !Path::new("/usr/sbin/postfix").exists() {
        return Some("postfix is not installed (scripts/setup --test installs it)".into());
    }
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("a private Postfix instance needs root (its master runs as root)".into());
    }
    None
}

macro_rules! require_postfix {
    () => {
        if let Some(why) = postfix_missing() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// The main.cf lines every instance shares: nothing from /etc/postfix, no DNS, no local
/// delivery, logging into `maillog` in its directory.
fn base_main_cf(dir: &Path, hostname: &str) -> String {
    let d = dir.display();
    format!(
        "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = {hostname}
mydomain = {hostname}
mydestination =
alias_maps =
alias_database =
biff = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
"
    )
}

/// master.cf: Debian's services, none chrooted, and one smtpd on `listen`.
fn master_cf(listen: &str) -> String {
    format!(
        "{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
    )
}

/// A private Postfix instance; stopped on drop.
struct Postfix {
    dir: PathBuf,
    port: u16,
}

impl Postfix {
    /// Starts Postfix in `dir` (made traversable: its daemons run as `postfix`), with
    /// `base_main_cf` + `main_extra`, serving SMTP on 127.0.0.1:`port`.
    fn start(dir: &Path, hostname: &str, port: u16, main_extra: &str) -> Postfix {
        use std::os::unix::fs::PermissionsExt;
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir.join("data"), "postfix:postfix");
        let conf = dir.join("conf");
        std::fs::write(
            conf.join("main.cf"),
            base_main_cf(dir, hostname) + main_extra,
        )
        .unwrap();
        std::fs::write(
            conf.join("master.cf"),
            master_cf(&format!("127.0.0.1:{port}")),
        )
        .unwrap();
        let pf = Postfix {
            dir: dir.to_path_buf(),
            port,
        };
        let out = pf.postfix(&["start"]);
        assert!(
            out.status.success(),
            "postfix start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.log()
        );
        wait_port(port, "Postfix listening");
        pf
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("conf")
    }

    fn postfix(&self, args: &[&str]) -> std::process::Output {
        Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run postfix")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Messages still in Postfix's queue (`postqueue -p`).
    fn queued(&self) -> String {
        let out = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.conf())
            .arg("-p")
            .output()
            .expect("postqueue");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = self.postfix(&["stop"]);
        // `stop` signals the master; wait for it to go (and make sure it does).
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: the master of the instance this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn chown(path: &Path, owner: &str) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(owner)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "chown {owner} {}", path.display());
}

/// A private Dovecot serving only its auth service, for Postfix's `smtpd_sasl_type =
/// dovecot`: one passwd-file user. Killed on drop.
struct DovecotAuth {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl DovecotAuth {
    fn start(dir: &Path, user: &str, password: &str) -> DovecotAuth {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.display();
        let socket = dir.join("auth");
        std::fs::write(dir.join("passwd"), format!("{user}:{{PLAIN}}{password}\n")).unwrap();
        let instance = dir.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(
            dir.join("dovecot.conf"),
            format!(
                "base_dir = {d}/run
state_dir = {d}/state
instance_name = peerpost-test-{instance}
log_path = {d}/dovecot.log
protocols =
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {socket} {{
    mode = 0666
  }}
}}
",
                socket = socket.display()
            ),
        )
        .unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot (dovecot-core)");
        let mut auth = DovecotAuth {
            child,
            socket,
            dir: dir.to_path_buf(),
        };
        eventually("Dovecot's auth socket", 20, || {
            if let Ok(Some(st)) = auth.child.try_wait() {
                panic!(
                    "dovecot exited ({st}): {}",
                    std::fs::read_to_string(auth.dir.join("dovecot.log")).unwrap_or_default()
                );
            }
            auth.socket.exists().then_some(())
        });
        auth
    }
}

impl Drop for DovecotAuth {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid (the master takes its children down).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A `peerpost init` home with quick retries and collection (`tune` replaces more lines of
/// the generated config).
fn home(address: &str, tune: &[(&str, String)]) -> TestHome {
    let t = TestHome::new();
    t.init(address);
    let path = t.path("config.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    let quick = [
        ("retry_first = \"5s\"", "retry_first = \"1s\"".to_string()),
        ("retry_max = \"10m\"", "retry_max = \"1s\"".to_string()),
        (
            "collect_every = \"60s\"",
            "collect_every = \"2s\"".to_string(),
        ),
    ];
    for (from, to) in quick.iter().chain(tune) {
        assert!(config.contains(from), "config lacks {from}");
        config = config.replacen(from, to, 1);
    }
    std::fs::write(&path, config).unwrap();
    t
}

/// The node's TCP overlay address (for another node's `--bootstrap`).
fn overlay_addr(node: &RunNode) -> String {
    node.started
        .iter()
        .filter_map(|l| l.trim().strip_prefix("listening on "))
        .find(|a| a.contains("/tcp/"))
        .expect("a TCP overlay address")
        .to_string()
}

/// Sends one message with smtplib (no TLS, no AUTH: an MTA delivering to an MX).
fn smtplib_send(port: u16, from: &str, to: &[&str], subject: &str) {
    let script = r#"
import smtplib, sys
port, sender, subject, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
msg = "From: <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@far.test>\r\n\r\nHello through Postfix.\r\n" % (
    sender, ", ".join(rcpts), subject, subject)
with smtplib.SMTP("127.0.0.1", port, "far.test", timeout=30) as s:
    refused = s.sendmail(sender, rcpts, msg)
    assert not refused, refused
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), from, subject])
        .args(to)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Postfix as the legacy server of example.org: it relays the domain to the node's intake
/// (transport map), and a message sent to it with smtplib arrives in the user's INBOX once.
#[test]
fn postfix_in_front_forwards_a_domain_into_the_intake_once() {
    require_postfix!();
    let t = home("alice@example.org", &[]);
    let node = RunNode::start(&t, &[("smtp", "127.0.0.1:0"), ("imap", "127.0.0.1:0")], &[]);
    let intake = node.port("smtp");
    let pf_dir = tempfile::tempdir().unwrap();
    let transport = pf_dir.path().join("transport");
    std::fs::write(
        &transport,
        format!("example.org smtp:[127.0.0.1]:{intake}\n"),
    )
    .unwrap();
    // The test's client is not in mynetworks: Postfix takes the mail as the domain's MX, not
    // as a relay for a trusted client.
    let postfix = Postfix::start(
        pf_dir.path(),
        "legacy.test",
        free_port(),
        &format!(
            "mynetworks = 192.0.2.1/32
relay_domains = example.org
transport_maps = texthash:{}
",
            transport.display()
        ),
    );
    smtplib_send(
        postfix.port,
        "sender@far.test",
        &["alice@example.org"],
        "via-legacy-postfix",
    );
    let inbox = eventually("the message reaches alice's INBOX", 60, || {
        let m = imap_messages(node.port("imap"), "alice@example.org", "INBOX");
        (count(&m, "Subject: via-legacy-postfix") > 0).then_some(m)
    });
    let msg = inbox
        .iter()
        .find(|m| m.contains("Subject: via-legacy-postfix"))
        .unwrap();
    // It went through Postfix, then the intake.
    assert!(msg.contains("by legacy.test (Postfix)"), "{msg}");
    assert!(msg.contains("Hello through Postfix."), "{msg}");
    let log = postfix.log();
    assert!(
        log.contains(&format!("relay=127.0.0.1[127.0.0.1]:{intake}"))
            && log.contains("status=sent"),
        "{log}"
    );
    // Postfix holds nothing back for a retry, and nothing arrives twice.
    eventually("Postfix's queue is empty", 30, || {
        postfix
            .queued()
            .contains("Mail queue is empty")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let inbox = imap_messages(node.port("imap"), "alice@example.org", "INBOX");
    assert_eq!(count(&inbox, "Subject: via-legacy-postfix"), 1, "{inbox:?}");

    // A recipient of the domain the node does not serve: the intake refuses it (5.1.1), and
    // Postfix, which had accepted it for relay, does not retry.
    smtplib_send(
        postfix.port,
        "sender@far.test",
        &["nobody@example.org"],
        "for-nobody",
    );
    let log = eventually("Postfix gets the intake's refusal", 30, || {
        let log = postfix.log();
        log.contains("to=<nobody@example.org>")
            .then_some(log)
            .filter(|l| l.contains("status=bounced"))
    });
    assert!(log.contains("5.1.1"), "{log}");
    let inbox = imap_messages(node.port("imap"), "alice@example.org", "INBOX");
    assert_eq!(count(&inbox, "Subject: for-nobody"), 0, "{inbox:?}");
}

/// Postfix as the smarthost: mail from the node to an outside address leaves over STARTTLS
/// (certificate trusted through `ca_file`) with SASL (Postfix `smtpd_sasl_type = dovecot`),
/// and lands in Postfix's Maildir for the address; the 550 Postfix gives an unknown user
/// comes back as a DSN in the sender's INBOX.
#[test]
fn postfix_behind_relays_outside_mail_over_starttls_and_sasl_and_its_550_bounces() {
    require_postfix!();
    let pf_dir = tempfile::tempdir().unwrap();
    let dir = pf_dir.path();
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let (cert, key) = (dir.join("conf/cert.pem"), dir.join("conf/key.pem"));
    peerpost::tls::generate_self_signed(vec!["127.0.0.1".into()], &cert, &key).unwrap();
    let vmail = dir.join("vmail");
    std::fs::create_dir_all(&vmail).unwrap();
    chown(&vmail, "nobody:nogroup");
    let vmailbox = dir.join("conf/vmailbox");
    std::fs::write(&vmailbox, "carol@outside.test carol/\n").unwrap();
    let auth = DovecotAuth::start(&dir.join("dovecot"), "relay-user", "s3cret pass");
    // Only authenticated clients, only after STARTTLS: the node must do both to get through.
    let postfix = Postfix::start(
        dir,
        "smarthost.test",
        free_port(),
        &format!(
            "mynetworks = 192.0.2.1/32
virtual_mailbox_domains = outside.test
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = texthash:{vmailbox}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_tls_received_header = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {socket}
smtpd_sasl_authenticated_header = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
",
            vmail = vmail.display(),
            vmailbox = vmailbox.display(),
            cert = cert.display(),
            key = key.display(),
            socket = auth.socket.display(),
        ),
    );
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "s3cret pass\n").unwrap();
    let alice_home = home(
        "alice@ring.test",
        &[
            ("host = \"\"", "host = \"127.0.0.1\"".into()),
            ("port = 587", format!("port = {}", postfix.port)),
            ("user = \"\"", "user = \"relay-user\"".into()),
            (
                "password_file = \"\"",
                format!("password_file = \"{}\"", pw.path().display()),
            ),
            (
                "ca_file = \"\"",
                format!("ca_file = \"{}\"", cert.display()),
            ),
        ],
    );
    let alice = RunNode::start(
        &alice_home,
        &[("submission", "127.0.0.1:0"), ("imap", "127.0.0.1:0")],
        &[],
    );
    // Outside mail is routed once a peer answers that the address has no record.
    let bob_home = home("bob@ring.test", &[]);
    let _bob = RunNode::start(&bob_home, &[], &["--bootstrap", &overlay_addr(&alice)]);
    let script = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
msg = ("From: <alice@ring.test>\r\nTo: carol@outside.test, nobody@outside.test\r\n"
       "Subject: out-through-postfix\r\n\r\nTo the world, by way of Postfix.\r\n")
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    s.login("alice@ring.test", "secret-password")
    refused = s.sendmail("alice@ring.test", ["carol@outside.test", "nobody@outside.test"], msg)
    assert not refused, refused
"#;
    let out = Command::new("python3")
        .args(["-c", script, &alice.port("submission").to_string()])
        .arg(alice_home.path("tls/cert.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // carol's copy went through Postfix, over TLS, logged in, and into her Maildir.
    let delivered = eventually("Postfix delivers carol's copy", 60, || {
        let files: Vec<PathBuf> = std::fs::read_dir(vmail.join("carol/new"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        (!files.is_empty()).then_some(files)
    });
    let copy = std::fs::read_to_string(&delivered[0]).unwrap();
    assert!(copy.contains("Subject: out-through-postfix"), "{copy}");
    assert!(copy.contains("(using TLS"), "not over TLS: {copy}");
    assert!(
        copy.contains("(Authenticated sender: relay-user)"),
        "not authenticated: {copy}"
    );
    assert!(copy.contains("with ESMTPSA"), "{copy}");
    let log = postfix.log();
    assert!(
        log.contains("sasl_method=PLAIN") || log.contains("sasl_method=LOGIN"),
        "{log}"
    );
    assert!(log.contains("sasl_username=relay-user"), "{log}");
    assert!(
        log.contains("550 5.1.1 <nobody@outside.test>"),
        "Postfix refused the unknown user: {log}"
    );

    // The 550 becomes an RFC 3464 report in alice's INBOX.
    let inbox = eventually("a DSN reaches alice", 60, || {
        let i = imap_messages(alice.port("imap"), "alice@ring.test", "INBOX");
        (count(&i, "report-type=delivery-status") > 0).then_some(i)
    });
    let dsn = inbox
        .iter()
        .find(|m| m.contains("report-type=delivery-status"))
        .unwrap();
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@outside.test")
            && dsn.contains("Action: failed")
            && dsn.contains("550")
            && dsn.contains("Subject: out-through-postfix"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("Final-Recipient: rfc822; carol@outside.test"),
        "carol's copy was delivered: {dsn}"
    );
    // Once each: no second copy for carol, no second report.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        std::fs::read_dir(vmail.join("carol/new")).unwrap().count(),
        1
    );
    let inbox = imap_messages(alice.port("imap"), "alice@ring.test", "INBOX");
    assert_eq!(count(&inbox, "report-type=delivery-status"), 1, "{inbox:?}");
}

// ----- submission over implicit TLS (RFC 8314) -----

/// `--submissions`: smtplib.SMTP_SSL logs in and sends (no STARTTLS on offer: the session is
/// TLS from the first byte), swaks --tlsc too; the copies land in Sent.
#[test]
fn submissions_over_implicit_tls_takes_smtp_ssl_and_swaks() {
    let t = home("alice@tls465.test", &[]);
    let node = RunNode::start(
        &t,
        &[("submissions", "127.0.0.1:0"), ("imap", "127.0.0.1:0")],
        &[],
    );
    let port = node.port("submissions");
    let script = r#"
import smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30) as s:
    code, _ = s.ehlo("client.test")
    assert code == 250, code
    assert "starttls" not in s.esmtp_features, s.esmtp_features
    assert "PLAIN" in s.esmtp_features.get("auth", ""), s.esmtp_features
    # MAIL before AUTH is refused, as on the STARTTLS port.
    code, text = s.mail("alice@tls465.test")
    assert code == 530, (code, text)
    s.rset()
    s.login("alice@tls465.test", "secret-password")
    msg = "From: <alice@tls465.test>\r\nTo: <out@elsewhere.example>\r\nSubject: via-smtps\r\n\r\nhi\r\n"
    refused = s.sendmail("alice@tls465.test", ["out@elsewhere.example"], msg)
    assert not refused, refused
print(ssl.OPENSSL_VERSION)
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .arg(t.path("tls/cert.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The login failing is refused the same way.
    let bad = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
with smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=30) as s:
    try:
        s.login("alice@tls465.test", "wrong")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
        print("refused")
"#;
    let out = Command::new("python3")
        .args(["-c", bad, &port.to_string()])
        .arg(t.path("tls/cert.pem"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    let mut expected = 1;
    if Command::new("swaks").arg("--version").output().is_ok() {
        let out = Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{port}"), "--tlsc"])
            .args(["--auth", "PLAIN", "--auth-user", "alice@tls465.test"])
            .args(["--auth-password", PASSWORD])
            .args([
                "--from",
                "alice@tls465.test",
                "--to",
                "out@elsewhere.example",
            ])
            .args(["--header", "Subject: via-swaks-tlsc"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "swaks: {text}");
        assert!(text.contains("TLS started"), "{text}");
        assert!(text.contains("235 "), "{text}");
        expected += 1;
    } else {
        eprintln!("swaks is not installed: only smtplib tried (scripts/setup --test)");
    }
    let sent = eventually("the copies are in Sent", 30, || {
        let m = imap_messages(node.port("imap"), "alice@tls465.test", "Sent");
        (m.len() >= expected).then_some(m)
    });
    assert_eq!(count(&sent, "Subject: via-smtps"), 1, "{sent:?}");
    assert_eq!(sent.len(), expected, "{sent:?}");
}

/// Nothing in the clear: a client speaking SMTP (EHLO, AUTH) to the submissions port gets
/// no SMTP reply (its bytes are not a TLS ClientHello), and a silent one is dropped by the
/// handshake timeout (10 s), long before the login deadline.
#[test]
fn submissions_says_nothing_in_the_clear_and_drops_a_silent_client() {
    let t = home("alice@tls465.test", &[]);
    let node = RunNode::start(&t, &[("submissions", "127.0.0.1:0")], &[]);
    let port = node.port("submissions");

    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let login = "\0alice@tls465.test\0secret-password";
    let b64 = base64_encode(login.as_bytes());
    let _ = plain.write_all(format!("EHLO plain.test\r\nAUTH PLAIN {b64}\r\n").as_bytes());
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("220") && !text.contains("235") && !text.contains("250"),
        "an SMTP reply in the clear: {text:?}"
    );
    // What comes back, if anything, is a TLS alert record (content type 21).
    assert!(got.is_empty() || got[0] == 21, "{got:?}");

    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "the server said something: {:?}", &buf[..n]);
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(25),
        "closed after {waited:?}, not by the 10 s handshake timeout"
    );
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
