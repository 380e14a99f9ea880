//! What the fuzz targets share: re-encoding checks, and a real server (IMAP, POP3, SMTP
//! intake) on a temporary account, driven over loopback TCP by the fuzzer's bytes.
//!
//! The servers take a `SessionStream`, which wraps a `TcpStream` (for STARTTLS), so a session
//! is driven through its real listener (`imap::serve`, …) rather than a `tokio::io::duplex`:
//! each input is one connection, from its own 127.a.b.1 source address (so per-address
//! throttling and session caps of one input do not slow the next). The client writes every
//! byte, half-closes, and reads until the server closes; no answer for [`STALL`] after the
//! client's EOF is a hang, reported as a crash.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerpost::mailbox::{Flags, Mailbox, NewMessage};
use peerpost::server::Limits;
use peerpost::server::auth::Authenticator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// The account the sessions serve; the seeds log in with these.
pub const ADDRESS: &str = "fuzz@example.org";
pub const PASSWORD: &str = "fuzz-password";

/// Longest a session may stay silent after the client's EOF before it counts as hung (longer
/// than the 8 s failed-login delay, the longest legitimate pause).
pub const STALL: Duration = Duration::from_secs(20);

/// Inputs served before the account is thrown away and made afresh (APPENDed and delivered
/// mail would otherwise pile up and slow every later input).
const RESET_EVERY: u64 = 2_000;

/// Sample messages the account starts with (also corpus seeds of the `mime` target).
pub const MESSAGES: &[&[u8]] = &[
    b"From: Alice <alice@example.org>\r\nTo: fuzz@example.org\r\nSubject: plain\r\nDate: Mon, 7 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello.\r\n",
    b"From: bob@example.net\r\nTo: fuzz@example.org, \"C\" <c@example.com>\r\nSubject: =?UTF-8?B?w6nDqQ==?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n--b2\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b2--\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y\r\nSubject: inner\r\n\r\ninner body\r\n--b1\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\nAAECAwQ=\r\n--b1--\r\n",
];

/// Which server a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Pop3,
    SmtpIntake,
}

struct Account {
    addr: SocketAddr,
    shutdown: CancellationToken,
    served: u64,
    _dir: tempfile::TempDir,
}

/// One protocol's server on a temporary account, restarted every [`RESET_EVERY`] inputs.
pub struct Server {
    protocol: Protocol,
    rt: Runtime,
    account: Mutex<Option<Account>>,
    next_source: Mutex<u32>,
}

impl Server {
    pub fn new(protocol: Protocol) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Server {
            protocol,
            rt,
            account: Mutex::new(None),
            next_source: Mutex::new(0),
        }
    }

    fn start(&self) -> Account {
        let dir = tempfile::tempdir().expect("tempdir");
        let protocol = self.protocol;
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).expect("spool dir");
        let store_dir = dir.path().join("store");
        let (addr, shutdown) = self.rt.block_on(async move {
            let store = peerpost::store::Store::open(&store_dir).expect("store");
            let keys = peerpost::crypto::UserKeys::generate().expect("keys");
            let device = peerpost::crypto::DeviceKey::generate().expect("device key");
            let mailbox = Mailbox::open(store, keys, device.public())
                .await
                .expect("mailbox");
            for (i, m) in MESSAGES.iter().enumerate() {
                mailbox
                    .append(
                        "INBOX",
                        NewMessage {
                            bytes: m.to_vec(),
                            internal_date: 1_700_000_000 + i as i64,
                            flags: Flags::default(),
                            recent: true,
                            maildir_name: None,
                        },
                    )
                    .await
                    .expect("append");
            }
            let hash = peerpost::crypto::password::hash_password(PASSWORD).expect("hash");
            let auth = Arc::new(Authenticator::new(
                ADDRESS,
                Arc::new(move || Some(hash.clone())),
            ));
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            let limits = Limits::default();
            match protocol {
                Protocol::Imap => {
                    let ctx = peerpost::imap::Context::new(mailbox, auth, None);
                    tokio::spawn(peerpost::imap::serve(listener, ctx, false, limits, token));
                }
                Protocol::Pop3 => {
                    let ctx = peerpost::pop3::Context {
                        mailbox,
                        auth,
                        tls: None,
                    };
                    tokio::spawn(peerpost::pop3::serve(listener, ctx, false, limits, token));
                }
                Protocol::SmtpIntake => {
                    let ctx = peerpost::smtp::Context {
                        mailbox,
                        local: vec![ADDRESS.to_string()],
                        hostname: "fuzz.example.org".into(),
                        max_message_size: 1 << 20,
                        tls: None,
                        mode: peerpost::smtp::Mode::Intake { verify: None },
                        spool: Some(spool),
                    };
                    tokio::spawn(peerpost::smtp::serve(listener, ctx, limits, token));
                }
            }
            (addr, shutdown)
        });
        Account {
            addr,
            shutdown,
            served: 0,
            _dir: dir,
        }
    }

    /// One connection: sends `input`, half-closes, reads to the end. Panics (a crash for
    /// libFuzzer) if the server stays silent for [`STALL`] before closing.
    pub fn drive(&self, input: &[u8]) {
        let addr = {
            let mut slot = self.account.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_some_and(|a| a.served >= RESET_EVERY) {
                if let Some(old) = slot.take() {
                    old.shutdown.cancel();
                }
            }
            let account = slot.get_or_insert_with(|| self.start());
            account.served += 1;
            account.addr
        };
        let source = {
            let mut n = self.next_source.lock().unwrap_or_else(|p| p.into_inner());
            *n = n.wrapping_add(1);
            let [_, _, a, b] = n.to_be_bytes();
            Ipv4Addr::new(127, a, b.max(1), 1)
        };
        let input = input.to_vec();
        self.rt.block_on(async move {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(source.into(), 0))
                .expect("bind source");
            let stream = socket.connect(addr).await.expect("connect");
            let (mut rd, mut wr) = stream.into_split();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tokio::time::timeout(STALL, rd.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return true,
                        Ok(Ok(_)) => {}
                        Err(_) => return false,
                    }
                }
            });
            // The server may stop reading (it closed, or refuses): a failed write is fine.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            let ended = reader.await.unwrap_or(true);
            assert!(
                ended,
                "the session stayed silent for {STALL:?} after the client's EOF"
            );
        });
    }
}

/// Seed inputs made by the real encoders, per target: `scripts/fuzz --seeds` writes them to
/// `fuzz/corpus/<target>/` (each target calls [`seeds::write_if_asked`] at start-up).
pub mod seeds {
    use peerpost::crypto::{DirectoryRecord, Envelope, SealedObject, UserKeys};
    use peerpost::durability::backup::{self, Entry, Kind, LogRow};
    use peerpost::durability::repair::Lease;
    use peerpost::durability::{Params, Receipt, ReedSolomon8};
    use peerpost::mailbox::log::LogEntry;
    use peerpost::mailbox::{Flags, Op, OpId};
    use peerpost::overlay::backup_root::BackupRoot;
    use peerpost::overlay::protocol::{Refusal, Request, Response};

    const NOW: u64 = 1_800_000_000;

    fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(bytes);
        v
    }

    fn alice() -> UserKeys {
        UserKeys::from_seed([1; 32])
    }

    fn receipt() -> Receipt {
        let bundle = peerpost::durability::pack(&[SealedObject::seal(b"body").expect("seal").0])
            .expect("pack")
            .1;
        Receipt {
            bundle,
            params: Params { n: 3, k: 2 },
            blobs: vec![[1; 32], [2; 32], [3; 32]],
            holders: vec![None; 3],
            stored: 3,
        }
    }

    /// The seeds of `target`.
    pub fn of(target: &str) -> Vec<Vec<u8>> {
        let k = alice();
        match target {
            "record" => {
                let mut r =
                    DirectoryRecord::new(&k, "alice@example.org", vec![[2; 32]], NOW, NOW, 3600)
                        .expect("record");
                let plain = r.to_bytes();
                r.certify(&UserKeys::from_seed([3; 32]));
                vec![plain, r.to_bytes()]
            }
            "envelope" => {
                let me = UserKeys::from_seed([7; 32]);
                let env = Envelope::seal(&k, &me.public().enc, b"payload").expect("envelope");
                let (obj, _) = SealedObject::seal(b"object").expect("seal");
                let key_file = peerpost::crypto::keys::encode_key_file(
                    peerpost::crypto::KeyKind::User,
                    &[5; 32],
                    None,
                )
                .expect("key file");
                let notice = peerpost::delivery::notice::Notice {
                    msg_id: [1; 16],
                    sent: NOW,
                    sender: "alice@example.org".into(),
                    recipient: "bob@example.org".into(),
                    ack_secret: [2; 32],
                    body: peerpost::delivery::notice::Body::Inline(
                        b"Subject: hi\r\n\r\nhi\r\n".to_vec(),
                    ),
                };
                vec![
                    tagged(0, env.as_bytes()),
                    tagged(1, obj.as_bytes()),
                    tagged(2, &key_file),
                    tagged(3, peerpost::crypto::phrase::encode(&[9; 32]).as_bytes()),
                    tagged(4, &notice.encode()),
                ]
            }
            "overlay_frame" => {
                let id = *blake3_id(b"blob");
                let reqs = [
                    Request::Store {
                        id,
                        bytes: b"blob".to_vec(),
                    },
                    Request::Fetch { id },
                    Request::Has { id },
                    Request::Notify {
                        payload: b"notice".to_vec(),
                    },
                    Request::InboxPut {
                        key: [1; 32],
                        ack_hash: [2; 32],
                        sender: [3; 32],
                        entry: b"entry".to_vec(),
                        sig: [4; 64],
                    },
                    Request::InboxList {
                        key: [1; 32],
                        recipient: [2; 32],
                        time: NOW,
                        cursor: [0; 32],
                        sig: [5; 64],
                    },
                    Request::InboxAck {
                        key: [1; 32],
                        entry: [2; 32],
                        secret: [3; 32],
                    },
                ];
                let resps = [
                    Response::Stored,
                    Response::Found {
                        bytes: b"blob".to_vec(),
                    },
                    Response::HasAnswer(true),
                    Response::Ack,
                    Response::Refused(Refusal::Busy),
                    Response::InboxEntries {
                        entries: vec![b"a".to_vec(), b"b".to_vec()],
                        more: true,
                    },
                ];
                let mut out = Vec::new();
                for (i, r) in reqs.iter().enumerate() {
                    let tag = match r {
                        Request::Notify { .. } => 1,
                        Request::Store { .. } | Request::Fetch { .. } | Request::Has { .. } => 0,
                        _ => 2,
                    };
                    out.push(tagged(tag, &r.encode()));
                    if i == 0 {
                        // The same, framed (`u32 len ‖ payload`).
                        let p = r.encode();
                        let mut f = (p.len() as u32).to_be_bytes().to_vec();
                        f.extend_from_slice(&p);
                        out.push(tagged(0, &f));
                    }
                }
                for r in &resps {
                    out.push(tagged(0, &r.encode()));
                }
                let root = BackupRoot::sign(&k, 1, NOW + 3600, b"sealed index entry".to_vec());
                let mut with_key = peerpost::overlay::backup_root::key(&k.public().sign).to_vec();
                with_key.extend_from_slice(&root);
                out.push(tagged(3, &with_key));
                out
            }
            "durability" => {
                let objects = [
                    SealedObject::seal(b"a").expect("seal").0,
                    SealedObject::seal(b"bb").expect("seal").0,
                ];
                let (bundle, _) = peerpost::durability::pack(&objects).expect("pack");
                let frags = peerpost::durability::make_fragments(
                    &ReedSolomon8,
                    &bundle,
                    Params { n: 3, k: 2 },
                )
                .expect("fragments");
                let entry = Entry {
                    kind: Kind::Bodies,
                    objects: 2,
                    bytes: bundle.len() as u64,
                    receipt: receipt(),
                };
                let lease = Lease::sign(&k, &receipt(), NOW + 86_400);
                let index = backup::encode_index(
                    std::slice::from_ref(&entry),
                    NOW,
                    Some("alice@example.org"),
                    Some(&[7; 32]),
                );
                let segment = backup::encode_segment(&[LogRow {
                    device: 1,
                    seq: 2,
                    bytes: b"entry".to_vec(),
                }]);
                vec![
                    tagged(0, &frags[0].encode()),
                    tagged(1, &bundle),
                    tagged(2, &lease.encode()),
                    tagged(3, &entry.encode()),
                    tagged(4, &index),
                    tagged(5, &segment),
                ]
            }
            "mailbox_log" => {
                let f = OpId {
                    device: 1,
                    seq: 1,
                    idx: 0,
                };
                let e = OpId {
                    device: 1,
                    seq: 2,
                    idx: 0,
                };
                let mut flags = Flags::default();
                flags.keywords.insert("$Label1".into());
                let ops = vec![
                    Op::CreateFolder {
                        folder: f,
                        name: "Archive".into(),
                        role: None,
                    },
                    Op::Subscribe {
                        folder: f,
                        subscribed: true,
                    },
                    Op::Add {
                        folder: f,
                        message: peerpost::mailbox::MessageRef {
                            object: peerpost::crypto::ObjectId([4; 32]),
                            key: [5; 32],
                            size: 120,
                            internal_date: 1_700_000_000,
                            maildir_name: "1700000000.M1P1.peerpost".into(),
                        },
                        flags,
                        recent: true,
                    },
                    Op::SetFlags {
                        entries: vec![e],
                        set: 1,
                        clear: 0,
                        set_keywords: vec!["$Junk".into()],
                        clear_keywords: vec![],
                        seen_by_reader: true,
                    },
                    Op::RenameFolder {
                        folder: f,
                        name: "Old".into(),
                    },
                    Op::Remove { entries: vec![e] },
                    Op::DeleteFolder {
                        folder: f,
                        observed: vec![e],
                    },
                ];
                let entry = LogEntry {
                    device: 1,
                    seq: 3,
                    hlc: 99,
                    ops,
                };
                let sealed = entry.seal(&k, &k.log_key()).expect("seal");
                vec![
                    tagged(0, &entry.encode_body().expect("body")),
                    tagged(1, &sealed),
                    tagged(2, b"1700000000.M1P1.host,S=120:2,FS"),
                    tagged(2, b"0 $Label1\n1 Junk\n"),
                ]
            }
            "config" => vec![
                peerpost::config::template("alice@example.org").into_bytes(),
                b"[identity]\naddress = \"a@b.test\"\n[smtp]\nmax_message_size = \"1MiB\"\nverify = true\ndns_records = \"dns.txt\"\n[smarthost]\nhost = \"smtp.example.org\"\nport = 587\n".to_vec(),
            ],
            "natpmp" => {
                let map = vec![0, 0, 0x82, 0, 0, 0, 0, 0, 9, 0x0f, 0xa1, 0x13, 0x8a, 0, 0, 0x0e, 0x10];
                let ext = vec![0, 0, 0x80, 0, 0, 0, 0, 0, 7, 10, 99, 0, 2];
                let route = b"\x01Iface\tDestination\tGateway\tFlags\nx1\t00000000\t0101A8C0\t0003\n".to_vec();
                let mut refused = map.clone();
                refused[4] = 2;
                vec![map, ext, route, refused]
            }
            _ => Vec::new(),
        }
    }

    fn blake3_id(b: &[u8]) -> Box<[u8; 32]> {
        Box::new(peerpost::crypto::ObjectId::of(b).0)
    }

    /// With `PEERPOST_FUZZ_SEEDS=DIR` set, writes the seeds of `target` to `DIR` (named by
    /// their hash, as libFuzzer names corpus files).
    pub fn write_if_asked(target: &str) {
        let Some(dir) = std::env::var_os("PEERPOST_FUZZ_SEEDS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("seed dir");
        for s in of(target) {
            let name = peerpost::crypto::ObjectId::of(&s).to_hex();
            std::fs::write(dir.join(&name[..16]), &s).expect("write seed");
        }
    }
}
