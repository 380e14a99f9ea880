//! Private rings (issue #16): libp2p's pre-shared-key network (pnet) under the TCP and memory
//! transports, and the protocol names that keep a ring's nodes apart from every other ring.
//!
//! A node with a PSK XSalsa20-encrypts every byte of every connection with it, below Noise:
//! a peer without the same key cannot complete even the multistream-select that precedes
//! Noise, so it learns nothing but that the port speaks something. QUIC cannot carry pnet
//! (its handshake is TLS inside UDP, with no place for a PSK layer), so a private ring is
//! TCP-only: its QUIC listen addresses are dropped with a log line.
//!
//! Each ring also runs its own protocol names (`/peerpost/ring/FP/kad/1.0.0`, …, FP = the
//! key's fingerprint): a node given the wrong config (two PSKs on one host, a gateway's two
//! swarms) never mixes one ring's DHT, blobs or notices into another's.

use std::path::Path;

use futures::future::Either;
use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;
use libp2p::pnet::{PnetConfig, PnetError, PnetOutput, PreSharedKey};

use super::protocol::{BLOB_PROTOCOL, KAD_PROTOCOL, NOTIFY_PROTOCOL};
use super::{Config, Error};

/// Largest PSK file read (the standard file is 87 bytes).
const MAX_PSK_FILE: u64 = 4096;
/// Identify's protocol name in the global ring.
pub(super) const IDENTIFY_PROTOCOL: &str = "/peerpost/id/1.0.0";

/// A ring's pre-shared key (32 bytes), read from its standard `/key/swarm/psk/1.0.0/` file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Psk(pub [u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psk({})", self.fingerprint())
    }
}

impl Psk {
    /// A fresh random key.
    pub fn generate() -> Result<Psk, Error> {
        crate::crypto::random_bytes::<32>()
            .map(Psk)
            .map_err(|e| Error::Start(format!("cannot make a pre-shared key: {e}")))
    }

    /// Parses the standard key file (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits).
    pub fn parse(text: &str) -> Result<Psk, String> {
        let key: PreSharedKey = text.parse().map_err(|e| {
            format!(
                "not a pre-shared key file (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits): {e:?}"
            )
        })?;
        // PreSharedKey keeps its bytes private; its key file is the way back to them.
        let file = key.to_key_file();
        let hex = file.lines().nth(2).unwrap_or_default();
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = hex
                .get(i * 2..i * 2 + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("malformed key")?;
        }
        Ok(Psk(out))
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Psk, Error> {
        use std::io::Read;
        let what = |e: String| Error::Start(format!("overlay.psk_file {}: {e}", path.display()));
        let f = std::fs::File::open(path).map_err(|e| what(e.to_string()))?;
        let mut text = String::new();
        f.take(MAX_PSK_FILE)
            .read_to_string(&mut text)
            .map_err(|e| what(e.to_string()))?;
        Psk::parse(&text).map_err(what)
    }

    /// The standard key file.
    pub fn to_file(self) -> String {
        PreSharedKey::new(self.0).to_key_file()
    }

    /// The key's fingerprint (go-libp2p's), safe to show and log.
    pub fn fingerprint(&self) -> String {
        PreSharedKey::new(self.0).fingerprint().to_string()
    }
}

/// The protocol names a ring runs (the global ring's, or a private ring's own).
#[derive(Debug, Clone)]
pub(crate) struct Protocols {
    pub kad: StreamProtocol,
    pub blob: StreamProtocol,
    pub notify: StreamProtocol,
    pub identify: String,
    pub gateway: StreamProtocol,
}

impl Protocols {
    pub fn of(config: &Config) -> Protocols {
        match &config.psk {
            None => Protocols {
                kad: StreamProtocol::new(KAD_PROTOCOL),
                blob: StreamProtocol::new(BLOB_PROTOCOL),
                notify: StreamProtocol::new(NOTIFY_PROTOCOL),
                identify: IDENTIFY_PROTOCOL.to_string(),
                gateway: StreamProtocol::new(super::gateway::GATEWAY_PROTOCOL),
            },
            Some(psk) => {
                let fp = psk.fingerprint();
                let name = |global: &str| {
                    let rest = global.strip_prefix("/peerpost").unwrap_or(global);
                    format!("/peerpost/ring/{fp}{rest}")
                };
                let proto = |global: &str| {
                    StreamProtocol::try_from_owned(name(global))
                        .unwrap_or_else(|_| StreamProtocol::new(KAD_PROTOCOL))
                };
                Protocols {
                    kad: proto(KAD_PROTOCOL),
                    blob: proto(BLOB_PROTOCOL),
                    notify: proto(NOTIFY_PROTOCOL),
                    identify: name(IDENTIFY_PROTOCOL),
                    gateway: proto(super::gateway::GATEWAY_PROTOCOL),
                }
            }
        }
    }
}

/// The pnet handshake on `socket` when the ring is private; the socket as is otherwise.
pub(super) async fn handshake<S>(
    psk: Option<Psk>,
    socket: S,
) -> Result<Either<PnetOutput<S>, S>, PnetError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match psk {
        Some(k) => PnetConfig::new(PreSharedKey::new(k.0))
            .handshake(socket)
            .await
            .map(Either::Left),
        None => Ok(Either::Right(socket)),
    }
}

/// Why a connection failed, in an administrator's words, when it failed in the handshake
/// (`None`: it failed before, e.g. refused or unreachable, which says nothing of keys).
pub(super) fn explain_failure(psk: Option<&Psk>, error: &str) -> Option<String> {
    let e = error.to_ascii_lowercase();
    let before_handshake = [
        "connection refused",
        "timed out",
        "no route",
        "unreachable",
        "address not available",
        "unsupported",
        "multiaddr is not supported",
        "no addresses",
        "dial backoff",
        "wrong peer",
        "aborted",
        "denied",
        "limit",
    ];
    // What a missing or other key looks like: the bytes after the pnet nonces are noise, so
    // protocol negotiation (multistream-select) or the Noise handshake fails, or the side
    // that knows the key hangs up.
    let in_handshake = [
        "negotiat",
        "handshake",
        "multistream",
        "reset by peer",
        "end of file",
    ];
    if before_handshake.iter().any(|s| e.contains(s)) || !in_handshake.iter().any(|s| e.contains(s))
    {
        return None;
    }
    Some(match psk {
        Some(k) => format!(
            "the connection failed during the handshake: this node is in a private ring \
             (pre-shared key fingerprint {}), and the other side does not hold the same \
             pre-shared key (it is in the global ring or in another private ring, or its \
             overlay.psk_file is wrong); private rings speak TCP only ({error})",
            k.fingerprint()
        ),
        None => format!(
            "the connection failed during the handshake: the other side may be a node of a \
             private (organizational) ring, which only accepts nodes holding the ring's \
             pre-shared key; to join it, get the ring's member file from its administrator \
             and run `peerpost ring join FILE` (it sets overlay.psk_file) ({error})"
        ),
    })
}

/// Whether a handshake failure may be logged at WARN now: at most one every
/// [`WARN_EVERY_SECS`] per process (a node pointed at the wrong ring retries its dials;
/// the rest go to the debug log).
pub(super) fn warn_now() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = super::now_secs();
    let last = LAST.load(Ordering::Relaxed);
    (last == 0 || now >= last.saturating_add(WARN_EVERY_SECS))
        && LAST
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

const WARN_EVERY_SECS: u64 = 10;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_file_round_trip_and_errors() {
        let k = Psk([7; 32]);
        let f = k.to_file();
        assert!(f.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"), "{f}");
        assert_eq!(Psk::parse(&f).unwrap(), k);
        assert!(Psk::parse("/key/swarm/psk/1.0.0/\n/base16/\nabc\n").is_err());
        assert!(Psk::parse("/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n").is_err());
        assert!(Psk::parse("").is_err());
        assert_ne!(Psk([7; 32]).fingerprint(), Psk([8; 32]).fingerprint());
    }

    #[test]
    fn rings_have_their_own_protocol_names() {
        let mut c = Config::new([1; 32], super::super::TransportKind::Memory);
        let global = Protocols::of(&c);
        assert_eq!(global.kad.as_ref(), KAD_PROTOCOL);
        c.psk = Some(Psk([7; 32]));
        let a = Protocols::of(&c);
        c.psk = Some(Psk([8; 32]));
        let b = Protocols::of(&c);
        for (x, y) in [(&a.kad, &b.kad), (&a.blob, &b.blob), (&a.notify, &b.notify)] {
            assert_ne!(x, y);
            assert!(x.as_ref().starts_with("/peerpost/ring/"), "{x}");
        }
        assert_ne!(a.kad, global.kad);
        assert!(a.notify.as_ref().ends_with("/notify/1"));
    }

    #[test]
    fn handshake_failures_are_explained_refusals_are_not() {
        assert!(explain_failure(None, "Connection refused (os error 111)").is_none());
        assert!(explain_failure(None, "Handshake failed: Connection refused").is_none());
        assert!(explain_failure(None, "Dial error: no addresses for peer").is_none());
        let why = explain_failure(
            Some(&Psk([1; 32])),
            "Failed to negotiate transport protocol(s)",
        )
        .unwrap();
        assert!(why.contains("pre-shared key"), "{why}");
        let why = explain_failure(
            None,
            "Handshake failed: Connection reset by peer (os error 104)",
        )
        .unwrap();
        assert!(why.contains("peerpost ring join"), "{why}");
    }
}
