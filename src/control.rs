//! The control socket of a running node: `control.sock` in the home, a Unix socket (mode
//! 0600, so only the node's user can talk to it) with one JSON object per line each way.
//!
//! Requests: `{"op":"status"}`, `{"op":"lookup","address":"bob@example.org"}`,
//! `{"op":"send","recipients":[…],"size":N}` followed by exactly N bytes of message (at most
//! [`MAX_SEND`]; `peerpost send`),
//! `{"op":"durability"}` (the user's backup, fragments located in the ring).
//! Replies: `{"ok":true,"status":{…}}`, `{"ok":true,"lookup":{…}}`, `{"ok":true,"queued":"ID"}`,
//! `{"ok":true,"durability":{…}}`,
//! `{"ok":false,"error":"…"}`.
//! A request line is at most [`MAX_LINE`] bytes; at most [`MAX_CLIENTS`] connections are served
//! at once; an idle connection is closed after [`IDLE`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::overlay;

pub const SOCKET_NAME: &str = "control.sock";
pub const MAX_LINE: usize = 4096;
pub const MAX_CLIENTS: usize = 16;
pub const IDLE: Duration = Duration::from_secs(60);
/// Replies are bounded too (a status lists at most a few hundred peers).
const MAX_REPLY: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no node is running in this home (cannot connect to {path}: {source})")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a node is already running in this home ({0} answers)")]
    AlreadyRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the node answered with something unreadable: {0}")]
    Protocol(String),
    #[error("{0}")]
    Node(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Lookup {
        address: String,
    },
    /// The message follows the request line: `size` raw bytes.
    Send {
        recipients: Vec<String>,
        size: u64,
    },
    Durability,
    /// The ring's statistics totals (issue #17).
    Stats,
}

/// Largest message `send` takes over the socket.
pub const MAX_SEND: u64 = crate::crypto::content::MAX_PLAINTEXT as u64;

/// `status` of a running node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub address: String,
    #[serde(flatten)]
    pub overlay: overlay::Status,
    /// The metrics endpoint's URL, when the node serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// A lookup's answer: the verified keys of an address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LookupReply {
    pub address: String,
    pub user_fingerprint: String,
    pub sign_key: String,
    pub enc_key: String,
    pub devices: Vec<String>,
    pub seq: u64,
    pub expires: u64,
    pub certified: bool,
    /// How this node believes the key (docs/design.md "Address ownership"): `pinned`,
    /// `verified-domain`, `verified-ring` or `unverified`; `None`: no mail flow here.
    #[serde(default)]
    pub level: Option<String>,
    pub requests: u32,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<NodeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lookup: Option<LookupReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued: Option<String>,
    durability: Option<crate::durability::status::DurabilityStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats: Option<RingStats>,
}

/// `peerpost stats`: the ring's totals for the last finished round, as a collector has them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RingStats {
    /// Whether this node shares its own figures.
    pub sharing: bool,
    /// The round's number (unix time / round length) and its length in seconds.
    pub epoch: u64,
    pub every_secs: u64,
    /// Every share arrived (else some figures are missing and the numbers are noise).
    pub complete: bool,
    pub holders: u32,
    pub shares: u32,
    pub nodes: u64,
    /// (version, nodes): this node's version by name, other slots as "other (slot n)".
    pub versions: Vec<(String, u64)>,
    /// Nodes up < 1 h, < 1 day, < 7 days, longer.
    pub uptime: [u64; 4],
    pub offered_bytes: u64,
    pub used_bytes: u64,
    pub delivered: u64,
    pub reachable: u64,
    pub nated: u64,
}

impl RingStats {
    fn from_totals(t: &overlay::stats::Totals, sharing: bool, every_secs: u64) -> RingStats {
        use overlay::stats::{VERSION_SLOTS, field, version_slot};
        let v = &t.values;
        let mine = version_slot(env!("CARGO_PKG_VERSION"));
        let versions = (0..VERSION_SLOTS)
            .filter(|i| v[field::VERSION + i] > 0)
            .map(|i| {
                let name = if i == mine {
                    env!("CARGO_PKG_VERSION").to_string()
                } else {
                    format!("other (slot {i})")
                };
                (name, v[field::VERSION + i])
            })
            .collect();
        RingStats {
            sharing,
            epoch: t.epoch,
            every_secs,
            complete: t.complete(),
            holders: t.holders,
            shares: t.shares,
            nodes: v[field::NODES],
            versions,
            uptime: [
                v[field::UPTIME],
                v[field::UPTIME + 1],
                v[field::UPTIME + 2],
                v[field::UPTIME + 3],
            ],
            offered_bytes: v[field::OFFERED],
            used_bytes: v[field::USED],
            delivered: v[field::DELIVERED],
            reachable: v[field::REACHABLE],
            nated: v[field::NATED],
        }
    }
}

pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_NAME)
}

/// What the server needs from the node.
pub struct Context {
    pub address: String,
    pub client: overlay::Client,
    /// For `send` (None when the node runs no mail).
    pub delivery: Option<crate::delivery::Delivery>,
    /// The node's store and how its backup is made (durability).
    pub store: crate::store::Store,
    pub backup: crate::durability::backup::BackupConfig,
    /// The metrics endpoint's address, when served.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Binds the socket (refusing if a node already answers on it; removing a stale one).
pub async fn bind(path: &Path) -> Result<UnixListener, Error> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::AlreadyRunning(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves until `cancel` fires; removes the socket file on the way out.
pub async fn serve(listener: UnixListener, path: PathBuf, ctx: Context, cancel: CancellationToken) {
    let ctx = Arc::new(ctx);
    let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    tracing::debug!("control socket busy; connection refused");
                    continue;
                };
                let ctx = Arc::clone(&ctx);
                let cancel = cancel.clone();
                conns.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = handle(stream, &ctx) => {}
                    }
                    drop(permit);
                });
            }
        }
    }
    conns.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

async fn handle(stream: UnixStream, ctx: &Context) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64 + 1));
    loop {
        let mut line = String::new();
        let n = match tokio::time::timeout(IDLE, reader.read_line(&mut line)).await {
            Ok(Ok(n)) => n,
            _ => return,
        };
        if n == 0 {
            return;
        }
        let reply = if line.len() > MAX_LINE || !line.ends_with('\n') {
            error_reply("request line too long")
        } else {
            match serde_json::from_str::<Request>(line.trim()) {
                Ok(Request::Send { recipients, size }) => {
                    if size > MAX_SEND {
                        let e = format!("message of {size} bytes is over the limit of {MAX_SEND}");
                        let _ = write_reply(&mut write, &error_reply(&e)).await;
                        return;
                    }
                    reader.get_mut().set_limit(size);
                    let mut message = vec![0u8; size as usize];
                    let read = tokio::time::timeout(IDLE, reader.read_exact(&mut message)).await;
                    if !matches!(read, Ok(Ok(_))) {
                        return;
                    }
                    send(ctx, recipients, message).await
                }
                Ok(req) => answer(req, ctx).await,
                Err(e) => error_reply(&format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() || line.len() > MAX_LINE {
            return;
        }
        reader.get_mut().set_limit(MAX_LINE as u64 + 1);
    }
}

fn error_reply(e: &str) -> Reply {
    Reply {
        ok: false,
        status: None,
        lookup: None,
        error: Some(e.to_string()),
        queued: None,
        durability: None,
        stats: None,
    }
}

async fn write_reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut out = serde_json::to_string(reply).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    write.write_all(out.as_bytes()).await
}

async fn send(ctx: &Context, recipients: Vec<String>, message: Vec<u8>) -> Reply {
    let Some(delivery) = &ctx.delivery else {
        return error_reply("this node runs no mail servers");
    };
    match delivery.submit(&recipients, message).await {
        Ok(id) => Reply {
            queued: Some(id),
            ..error_reply("")
        }
        .ok(),
        Err(e) => error_reply(&e.to_string()),
    }
}

impl Reply {
    fn ok(mut self) -> Reply {
        self.ok = true;
        self.error = None;
        self
    }
}

async fn answer(req: Request, ctx: &Context) -> Reply {
    match req {
        Request::Status => match ctx.client.status().await {
            Ok(overlay) => Reply {
                ok: true,
                status: Some(NodeStatus {
                    address: ctx.address.clone(),
                    overlay,
                    metrics: ctx.metrics.map(|a| format!("http://{a}/metrics")),
                }),
                lookup: None,
                error: None,
                queued: None,
                durability: None,
                stats: None,
            },
            Err(e) => error_reply(&e.to_string()),
        },
        Request::Stats => match ctx.client.ring_stats().await {
            Some(t) => Reply {
                ok: true,
                stats: Some(RingStats::from_totals(
                    &t,
                    ctx.client.stats_sharing(),
                    ctx.client.stats_every_secs(),
                )),
                ..Reply::default()
            },
            None => error_reply(
                "no collector has totals for the last rounds yet (the first round's totals \
                 are ready one round after the node joins; see `stats.every`)",
            ),
        },
        Request::Durability => {
            let st = crate::durability::status::check(&ctx.client, &ctx.store, &ctx.backup);
            match st.await {
                Ok(d) => Reply {
                    ok: true,
                    status: None,
                    lookup: None,
                    error: None,
                    queued: None,
                    durability: Some(d),
                    stats: None,
                },
                Err(e) => error_reply(&e.to_string()),
            }
        }
        Request::Lookup { address } => match ctx.client.lookup(&address).await {
            Ok(found) => {
                let r = &found.record;
                let level = match &ctx.delivery {
                    Some(d) => Some(match d.level_of(&address).await {
                        Ok(l) => l.as_str().to_string(),
                        Err(e) => format!("not believed ({e})"),
                    }),
                    None => None,
                };
                Reply {
                    ok: true,
                    status: None,
                    lookup: Some(LookupReply {
                        address: r.address.clone(),
                        user_fingerprint: r.keys.fingerprint(),
                        sign_key: crate::crypto::hex(&r.keys.sign),
                        enc_key: crate::crypto::hex(&r.keys.enc),
                        devices: r.devices.iter().map(|d| crate::crypto::hex(d)).collect(),
                        seq: r.seq,
                        expires: r.expires,
                        certified: r.cert.is_some(),
                        level,
                        requests: found.requests,
                        elapsed_ms: u64::try_from(found.elapsed.as_millis()).unwrap_or(u64::MAX),
                    }),
                    error: None,
                    queued: None,
                    durability: None,
                    stats: None,
                }
            }
            Err(e) => error_reply(&e.to_string()),
        },
        Request::Send { .. } => error_reply("send carries a message body"),
    }
}

/// Client side: sends one request to the node running in `home` and returns its reply.
pub async fn call(home: &Path, req: &Request) -> Result<serde_json::Value, Error> {
    call_with(home, req, &[]).await
}

/// [`call`] with bytes written after the request line (the message of a `send`).
pub async fn call_with(
    home: &Path,
    req: &Request,
    body: &[u8],
) -> Result<serde_json::Value, Error> {
    let path = socket_path(home);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|source| Error::NotRunning {
            path: path.clone(),
            source,
        })?;
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(|e| Error::Protocol(e.to_string()))?;
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io)?;
    write.write_all(body).await.map_err(io)?;
    let mut reader = BufReader::new(read.take(MAX_REPLY as u64));
    let mut reply = String::new();
    tokio::time::timeout(IDLE, reader.read_line(&mut reply))
        .await
        .map_err(|_| Error::Protocol("no answer in time".into()))?
        .map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_str(reply.trim()).map_err(|e| Error::Protocol(e.to_string()))?;
    if v.get("ok") != Some(&serde_json::Value::Bool(true)) {
        return Err(Error::Node(
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error")
                .to_string(),
        ));
    }
    Ok(v)
}

/// Blocking convenience for the CLI: the durability of the user's backup as the running node
/// finds it in the ring, or `None` if no node runs.
pub fn durability_blocking(home: &Path) -> Option<crate::durability::status::DurabilityStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let v = rt.block_on(call(home, &Request::Durability)).ok()?;
    serde_json::from_value(v.get("durability")?.clone()).ok()
}

/// Blocking convenience for the CLI: status of the running node, or `None` if none runs.
pub fn status_blocking(home: &Path) -> Option<NodeStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let v = rt.block_on(call(home, &Request::Status)).ok()?;
    serde_json::from_value(v.get("status")?.clone()).ok()
}
