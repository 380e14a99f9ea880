//! Every message the overlay sends, with its version (docs/design.md, "Overlay frames").
//!
//! Request-response protocols use raw, length-prefixed frames:
//!
//! ```text
//!   u32        n = payload length (≤ MAX_FRAME; checked before anything is allocated)
//!   [n]        payload:
//!     u8       version = 1
//!     u8       kind
//!     …        kind-specific fields (below)
//! ```
//!
//! Requests on `/peerpost/blob/1`: `STORE` ([32] id ‖ u32 len ‖ bytes, id = BLAKE3(bytes)),
//! `FETCH` ([32] id), `HAS` ([32] id). Requests on `/peerpost/notify/1`: `NOTIFY` (u32 len ‖
//! bytes). Responses: `STORED`, `FOUND` (u32 len ‖ bytes), `HAS_ANSWER` (u8 0|1), `ACK`,
//! `REFUSED` (u8 reason). Kademlia runs under [`KAD_PROTOCOL`] with libp2p's own framing;
//! its values are directory records (crypto::record), keyed by [`directory_key`].
//!
//! Decoding is total: any byte string gives a message or a typed [`FrameError`].

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use thiserror::Error;

use crate::wire::{DecodeError, Reader, Writer};

/// Version byte of every frame this build sends; frames of another version are refused.
pub const VERSION: u8 = 1;
/// Kademlia protocol name: our own, so peerpost nodes never join the public IPFS DHT.
pub const KAD_PROTOCOL: &str = "/peerpost/kad/1.0.0";
/// Fragment/object store, fetch and has.
pub const BLOB_PROTOCOL: &str = "/peerpost/blob/1";
/// Small sealed notifications pushed to a peer.
pub const NOTIFY_PROTOCOL: &str = "/peerpost/notify/1";
/// Largest blob (sealed object or fragment) one frame carries.
pub const MAX_BLOB: usize = 4 << 20;
/// Largest notification payload (an envelope: 64 KiB + header).
pub const MAX_NOTIFY: usize = 65 * 1024;
/// Largest frame payload: a blob plus its header.
pub const MAX_FRAME: usize = MAX_BLOB + 64;
/// Largest Kademlia message (a directory record is under 1 KiB; routing replies are ~20 peers).
pub const MAX_KAD_PACKET: usize = 16 * 1024;
/// Domain separation of directory DHT keys.
pub const DIRECTORY_KEY_CONTEXT: &[u8] = b"peerpost dir v1";

const STORE: u8 = 1;
const FETCH: u8 = 2;
const HAS: u8 = 3;
const NOTIFY: u8 = 4;
const STORED: u8 = 0x81;
const FOUND: u8 = 0x82;
const HAS_ANSWER: u8 = 0x83;
const ACK: u8 = 0x84;
const REFUSED: u8 = 0x90;
use super::stats::{STATS, STATS_GET, STATS_SHARE, STATS_SUM};

// --- DHT inboxes (mail flow), on `/peerpost/blob/1`, frame version 1 ---
//
// Requests: `INBOX_PUT` ([32] inbox key ‖ [32] ack hash ‖ [32] sender pseudonym ‖ u32 len ‖
// entry ≤ MAX_INBOX_ENTRY ‖ [64] signature by the pseudonym, see [`inbox_put_signed`]),
// `INBOX_LIST` ([32] inbox key ‖ [32] recipient Ed25519 key ‖ u64 time ‖ [32] cursor ‖ [64]
// signature by the recipient, see [`inbox_list_signed`]), `INBOX_ACK` ([32] inbox key ‖ [32]
// entry id ‖ [32] ack secret, accepted when BLAKE3(secret) is the entry's ack hash).
// Response: `INBOX_ENTRIES` (u16 count ≤ MAX_INBOX_LIST ‖ count × (u32 len ‖ entry) ‖ u8
// more); PUT answers `STORED` or `REFUSED`, ACK answers `ACK` or `REFUSED not-found`.
// Kinds 0x10, 0x11 and 0x85 (unsigned puts, lists by anyone) are retired: unknown kinds now.
const INBOX_PUT: u8 = 0x13;
const INBOX_LIST: u8 = 0x14;
const INBOX_ACK: u8 = 0x12;
const INBOX_ENTRIES: u8 = 0x86;
/// Signature contexts of inbox puts and lists.
pub const INBOX_PUT_CONTEXT: &str = "peerpost inbox put v1";
pub const INBOX_LIST_CONTEXT: &str = "peerpost inbox list v1";
/// How far a list request's time may be from the holder's clock (clock skew is not abuse).
pub const INBOX_LIST_FRESH_SECS: u64 = 15 * 60;
/// Entries a holder keeps per sender pseudonym in one inbox.
pub const MAX_INBOX_PER_SENDER: usize = 16;
/// Largest DHT inbox entry (a sealed delivery notice).
pub const MAX_INBOX_ENTRY: usize = MAX_NOTIFY;
/// Most entries one `INBOX_LIST` answer carries (≤ 32 × 65 KiB, within one frame).
pub const MAX_INBOX_LIST: usize = 32;
/// Entries a holder keeps per recipient inbox, and in all inboxes together.
pub const MAX_INBOX_PER_RECIPIENT: usize = 256;
pub const MAX_INBOX_TOTAL: u64 = 16 * 1024;
/// A holder drops inbox entries older than this.
pub const INBOX_ENTRY_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// Domain separation of DHT inbox keys.
pub const INBOX_KEY_CONTEXT: &[u8] = b"peerpost inbox v2";

/// The DHT key of a user's inbox: BLAKE3("peerpost inbox v2" ‖ user Ed25519 key), so a
/// holder can check that a list request is signed by the key the inbox belongs to.
pub fn inbox_key(user_sign_public: &[u8; 32]) -> [u8; 32] {
    let mut m = Vec::with_capacity(INBOX_KEY_CONTEXT.len() + 32);
    m.extend_from_slice(INBOX_KEY_CONTEXT);
    m.extend_from_slice(user_sign_public);
    crate::crypto::hash(&m)
}

/// What a sender pseudonym signs for an `INBOX_PUT`: inbox key ‖ ack hash ‖ BLAKE3(entry).
pub fn inbox_put_signed(key: &[u8; 32], ack_hash: &[u8; 32], entry: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(key);
    m.extend_from_slice(ack_hash);
    m.extend_from_slice(&crate::crypto::hash(entry));
    m
}

/// What a recipient signs for an `INBOX_LIST`: the holder's peer id (bytes) ‖ inbox key ‖
/// u64 time ‖ cursor, so a request shown to one holder cannot be replayed to another.
pub fn inbox_list_signed(holder: &[u8], key: &[u8; 32], time: u64, cursor: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(holder.len() + 72);
    m.extend_from_slice(holder);
    m.extend_from_slice(key);
    m.extend_from_slice(&time.to_be_bytes());
    m.extend_from_slice(cursor);
    m
}

/// The DHT key of an address's directory record: BLAKE3("peerpost dir v1" ‖ address), the
/// address already normalized.
pub fn directory_key(normalized_address: &str) -> [u8; 32] {
    let mut m = Vec::with_capacity(DIRECTORY_KEY_CONTEXT.len() + normalized_address.len());
    m.extend_from_slice(DIRECTORY_KEY_CONTEXT);
    m.extend_from_slice(normalized_address.as_bytes());
    crate::crypto::hash(&m)
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame version {0} is not supported (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("frame kind {0:#04x} is not allowed on this protocol")]
    WrongProtocol(u8),
    #[error("STORE frame whose bytes do not hash to its id")]
    HashMismatch,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Keep these bytes (content-addressed: `id == BLAKE3(bytes)`).
    Store {
        id: [u8; 32],
        bytes: Vec<u8>,
    },
    Fetch {
        id: [u8; 32],
    },
    Has {
        id: [u8; 32],
    },
    Notify {
        payload: Vec<u8>,
    },
    /// Hold `entry` in the inbox `key` until acknowledged with the preimage of `ack_hash`;
    /// signed by the sender's pseudonym `sender` (the holder refuses a bad signature).
    InboxPut {
        key: [u8; 32],
        ack_hash: [u8; 32],
        sender: [u8; 32],
        entry: Vec<u8>,
        sig: [u8; 64],
    },
    /// The entries of inbox `key` after `cursor` (zeros: from the start); signed by the
    /// recipient key `recipient` whose inbox key is `key`, for this holder, at `time`.
    InboxList {
        key: [u8; 32],
        recipient: [u8; 32],
        time: u64,
        cursor: [u8; 32],
        sig: [u8; 64],
    },
    InboxAck {
        key: [u8; 32],
        entry: [u8; 32],
        secret: [u8; 32],
    },
    /// Ring statistics: a share, a holder's sum, or a collector's totals asked for
    /// ([`super::stats`]).
    Stats(super::stats::Message),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The holder's contribution is used up.
    Full = 1,
    /// Too many requests in flight from this peer.
    Busy = 2,
    /// The request was well-formed but not acceptable.
    Invalid = 3,
    NotFound = 4,
    /// The holder failed (disk error); try another.
    Internal = 5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Stored,
    Found {
        bytes: Vec<u8>,
    },
    HasAnswer(bool),
    Ack,
    Refused(Refusal),
    /// One page of an inbox, in entry-id order; `more` when entries after it remain.
    InboxEntries {
        entries: Vec<Vec<u8>>,
        more: bool,
    },
    /// A collector's totals for one epoch.
    Stats(super::stats::Totals),
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        match self {
            Request::Store { id, bytes } => {
                w.u8(STORE).fixed(id).bytes32(bytes);
            }
            Request::Fetch { id } => {
                w.u8(FETCH).fixed(id);
            }
            Request::Has { id } => {
                w.u8(HAS).fixed(id);
            }
            Request::Notify { payload } => {
                w.u8(NOTIFY).bytes32(payload);
            }
            Request::InboxPut {
                key,
                ack_hash,
                sender,
                entry,
                sig,
            } => {
                w.u8(INBOX_PUT)
                    .fixed(key)
                    .fixed(ack_hash)
                    .fixed(sender)
                    .bytes32(entry)
                    .fixed(sig);
            }
            Request::InboxList {
                key,
                recipient,
                time,
                cursor,
                sig,
            } => {
                w.u8(INBOX_LIST)
                    .fixed(key)
                    .fixed(recipient)
                    .u64(*time)
                    .fixed(cursor)
                    .fixed(sig);
            }
            Request::InboxAck { key, entry, secret } => {
                w.u8(INBOX_ACK).fixed(key).fixed(entry).fixed(secret);
            }
            Request::Stats(m) => m.encode(&mut w),
        }
        w.into_vec()
    }

    /// Decodes a request received on `protocol`; a kind that belongs to the other protocol
    /// is refused. A STORE whose bytes do not hash to its id is refused here.
    pub fn decode(payload: &[u8], protocol: &str) -> Result<Request, FrameError> {
        let mut r = Reader::new(payload);
        let kind = header(&mut r)?;
        let notify = protocol == NOTIFY_PROTOCOL;
        let req = match kind {
            STORE | FETCH | HAS | INBOX_PUT | INBOX_LIST | INBOX_ACK | STATS_SHARE | STATS_SUM
            | STATS_GET
                if notify =>
            {
                return Err(FrameError::WrongProtocol(kind));
            }
            NOTIFY if !notify => return Err(FrameError::WrongProtocol(kind)),
            STORE => {
                let id = r.array("id")?;
                let bytes = r.bytes32("blob", MAX_BLOB)?.to_vec();
                if crate::crypto::hash(&bytes) != id {
                    return Err(FrameError::HashMismatch);
                }
                Request::Store { id, bytes }
            }
            FETCH => Request::Fetch { id: r.array("id")? },
            HAS => Request::Has { id: r.array("id")? },
            NOTIFY => Request::Notify {
                payload: r.bytes32("notification", MAX_NOTIFY)?.to_vec(),
            },
            INBOX_PUT => Request::InboxPut {
                key: r.array("inbox key")?,
                ack_hash: r.array("ack hash")?,
                sender: r.array("sender pseudonym")?,
                entry: r.bytes32("inbox entry", MAX_INBOX_ENTRY)?.to_vec(),
                sig: r.array("signature")?,
            },
            INBOX_LIST => Request::InboxList {
                key: r.array("inbox key")?,
                recipient: r.array("recipient key")?,
                time: r.u64("time")?,
                cursor: r.array("cursor")?,
                sig: r.array("signature")?,
            },
            INBOX_ACK => Request::InboxAck {
                key: r.array("inbox key")?,
                entry: r.array("entry id")?,
                secret: r.array("ack secret")?,
            },
            STATS_SHARE | STATS_SUM | STATS_GET => {
                Request::Stats(super::stats::Message::decode(kind, &mut r)?)
            }
            other => return Err(FrameError::UnknownKind(other)),
        };
        r.finish("request frame")?;
        Ok(req)
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        match self {
            Response::Stored => {
                w.u8(STORED);
            }
            Response::Found { bytes } => {
                w.u8(FOUND).bytes32(bytes);
            }
            Response::HasAnswer(b) => {
                w.u8(HAS_ANSWER).u8(u8::from(*b));
            }
            Response::Ack => {
                w.u8(ACK);
            }
            Response::Refused(why) => {
                w.u8(REFUSED).u8(*why as u8);
            }
            Response::InboxEntries { entries, more } => {
                let n = entries.len().min(MAX_INBOX_LIST);
                w.u8(INBOX_ENTRIES).u16(n as u16);
                for e in entries.iter().take(n) {
                    w.bytes32(e);
                }
                w.u8(u8::from(*more || entries.len() > n));
            }
            Response::Stats(t) => t.encode(&mut w),
        }
        w.into_vec()
    }

    pub fn decode(payload: &[u8]) -> Result<Response, FrameError> {
        let mut r = Reader::new(payload);
        let resp = match header(&mut r)? {
            STORED => Response::Stored,
            FOUND => Response::Found {
                bytes: r.bytes32("blob", MAX_BLOB)?.to_vec(),
            },
            HAS_ANSWER => match r.u8("has")? {
                0 => Response::HasAnswer(false),
                1 => Response::HasAnswer(true),
                _ => {
                    return Err(DecodeError::Invalid {
                        field: "has",
                        why: "neither 0 nor 1",
                    }
                    .into());
                }
            },
            ACK => Response::Ack,
            STATS => Response::Stats(super::stats::Totals::decode(&mut r)?),
            REFUSED => Response::Refused(match r.u8("reason")? {
                1 => Refusal::Full,
                2 => Refusal::Busy,
                3 => Refusal::Invalid,
                4 => Refusal::NotFound,
                5 => Refusal::Internal,
                _ => {
                    return Err(DecodeError::Invalid {
                        field: "reason",
                        why: "unknown refusal",
                    }
                    .into());
                }
            }),
            INBOX_ENTRIES => {
                let n = usize::from(r.u16("entry count")?);
                if n > MAX_INBOX_LIST {
                    return Err(DecodeError::TooLong {
                        field: "inbox entries",
                        len: n,
                        max: MAX_INBOX_LIST,
                    }
                    .into());
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(r.bytes32("inbox entry", MAX_INBOX_ENTRY)?.to_vec());
                }
                let more = match r.u8("more")? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::Invalid {
                            field: "more",
                            why: "neither 0 nor 1",
                        }
                        .into());
                    }
                };
                Response::InboxEntries { entries, more }
            }
            other => return Err(FrameError::UnknownKind(other)),
        };
        r.finish("response frame")?;
        Ok(resp)
    }
}

fn header(r: &mut Reader<'_>) -> Result<u8, FrameError> {
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    Ok(r.u8("kind")?)
}

/// Reads one `u32 len ‖ payload` frame, refusing a length over `max` before allocating
/// (generous pacing: tests and tools; the swarm's codec sets its own).
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> std::io::Result<Vec<u8>> {
    let len = read_len(io, max).await?;
    read_body_paced(io, len, Duration::from_secs(60), Duration::from_secs(600)).await
}

/// Reads a frame's length prefix and checks it against `max`.
pub async fn read_len<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> std::io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid(FrameError::TooLarge { len, max }));
    }
    Ok(len)
}

/// Bytes a payload read grows its buffer by: memory follows the bytes that arrived, not the
/// length a peer announced.
const READ_STEP: usize = 64 * 1024;

/// Reads `len` payload bytes (the caller checked `len`), growing the buffer as they arrive.
/// Fails with `TimedOut` when no byte comes for `stall`, or not all of them within `total`.
pub async fn read_body_paced<T: AsyncRead + Unpin>(
    io: &mut T,
    len: usize,
    stall: Duration,
    total: Duration,
) -> std::io::Result<Vec<u8>> {
    let start = tokio::time::Instant::now();
    let deadline = start.checked_add(total).unwrap_or(start);
    let mut buf = Vec::with_capacity(len.min(READ_STEP));
    while buf.len() < len {
        let filled = buf.len();
        let end = len.min(filled + READ_STEP);
        buf.resize(end, 0);
        let now = tokio::time::Instant::now();
        let wait = now.checked_add(stall).unwrap_or(now).min(deadline);
        let n = match tokio::time::timeout_at(wait, io.read(&mut buf[filled..end])).await {
            Ok(read) => read?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "frame of {len} bytes: {filled} arrived, then nothing in time; given up"
                    ),
                ));
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.truncate(filled + n);
    }
    Ok(buf)
}

pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l as usize <= MAX_FRAME)
        .ok_or_else(|| {
            invalid(FrameError::TooLarge {
                len: payload.len(),
                max: MAX_FRAME,
            })
        })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(payload).await?;
    io.flush().await
}

pub fn invalid(e: FrameError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Largest frame a protocol accepts (notifications are small; blobs are not).
pub fn max_frame(protocol: &str) -> usize {
    if protocol == NOTIFY_PROTOCOL {
        MAX_NOTIFY + 64
    } else {
        MAX_FRAME
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn blob(n: usize) -> (Vec<u8>, [u8; 32]) {
        let b: Vec<u8> = (0..n).map(|i| i as u8).collect();
        let id = crate::crypto::hash(&b);
        (b, id)
    }

    #[test]
    fn every_message_round_trips() {
        let (bytes, id) = blob(1000);
        for req in [
            Request::Store {
                id,
                bytes: bytes.clone(),
            },
            Request::Fetch { id },
            Request::Has { id },
        ] {
            assert_eq!(Request::decode(&req.encode(), BLOB_PROTOCOL).unwrap(), req);
        }
        let n = Request::Notify {
            payload: vec![7; 100],
        };
        assert_eq!(Request::decode(&n.encode(), NOTIFY_PROTOCOL).unwrap(), n);
        for resp in [
            Response::Stored,
            Response::Found { bytes },
            Response::HasAnswer(true),
            Response::HasAnswer(false),
            Response::Ack,
            Response::Refused(Refusal::Full),
            Response::Refused(Refusal::Busy),
            Response::Refused(Refusal::Invalid),
            Response::Refused(Refusal::NotFound),
            Response::Refused(Refusal::Internal),
        ] {
            assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        }
    }

    #[test]
    fn inbox_messages_round_trip_and_stay_on_the_blob_protocol() {
        for req in [
            Request::InboxPut {
                key: [1; 32],
                ack_hash: [2; 32],
                sender: [8; 32],
                entry: vec![3; 500],
                sig: [9; 64],
            },
            Request::InboxList {
                key: [4; 32],
                recipient: [10; 32],
                time: 1_800_000_000,
                cursor: [11; 32],
                sig: [12; 64],
            },
            Request::InboxAck {
                key: [5; 32],
                entry: [6; 32],
                secret: [7; 32],
            },
        ] {
            assert_eq!(Request::decode(&req.encode(), BLOB_PROTOCOL).unwrap(), req);
            assert!(matches!(
                Request::decode(&req.encode(), NOTIFY_PROTOCOL),
                Err(FrameError::WrongProtocol(_))
            ));
        }
        for more in [false, true] {
            let resp = Response::InboxEntries {
                entries: vec![vec![1; 10], vec![], vec![2; 3]],
                more,
            };
            assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        }
        let mut w = Writer::new();
        w.u8(VERSION).u8(INBOX_ENTRIES).u16(1000);
        assert!(Response::decode(w.as_slice()).is_err(), "count bounded");
        assert_ne!(inbox_key(&[1; 32]), directory_key("a@b"));
        assert_ne!(inbox_key(&[1; 32]), inbox_key(&[2; 32]));
        // The retired kinds (unsigned puts, lists by anyone) are unknown now.
        for old in [0x10u8, 0x11] {
            let mut w = Writer::new();
            w.u8(VERSION).u8(old).fixed(&[0; 32]);
            assert_eq!(
                Request::decode(w.as_slice(), BLOB_PROTOCOL),
                Err(FrameError::UnknownKind(old))
            );
        }
    }

    #[test]
    fn store_with_wrong_hash_is_refused() {
        let (bytes, _) = blob(10);
        let req = Request::Store { id: [9; 32], bytes };
        assert_eq!(
            Request::decode(&req.encode(), BLOB_PROTOCOL),
            Err(FrameError::HashMismatch)
        );
    }

    #[test]
    fn kinds_are_bound_to_their_protocol() {
        let n = Request::Notify { payload: vec![1] };
        assert!(matches!(
            Request::decode(&n.encode(), BLOB_PROTOCOL),
            Err(FrameError::WrongProtocol(_))
        ));
        let f = Request::Fetch { id: [0; 32] };
        assert!(matches!(
            Request::decode(&f.encode(), NOTIFY_PROTOCOL),
            Err(FrameError::WrongProtocol(_))
        ));
    }

    #[test]
    fn truncated_and_versioned_frames_are_refused() {
        let (bytes, id) = blob(50);
        let enc = Request::Store { id, bytes }.encode();
        for cut in 0..enc.len() {
            assert!(
                Request::decode(&enc[..cut], BLOB_PROTOCOL).is_err(),
                "{cut}"
            );
        }
        let mut v2 = enc.clone();
        v2[0] = 2;
        assert_eq!(
            Request::decode(&v2, BLOB_PROTOCOL),
            Err(FrameError::UnsupportedVersion(2))
        );
        let mut long = enc;
        long.push(0);
        assert!(matches!(
            Request::decode(&long, BLOB_PROTOCOL),
            Err(FrameError::Decode(DecodeError::TrailingBytes { .. }))
        ));
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_before_allocation() {
        {
            let mut wire: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
            let err = read_frame(&mut wire, MAX_FRAME).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
            // A truncated frame is an error too, not a hang or a panic.
            let mut short: &[u8] = &[0, 0, 0, 10, 1, 2];
            assert!(read_frame(&mut short, MAX_FRAME).await.is_err());
            // The announced length of a blob field is bounded as well.
            let mut w = Writer::new();
            w.u8(VERSION).u8(STORE).fixed(&[0; 32]).u32(u32::MAX);
            assert!(matches!(
                Request::decode(w.as_slice(), BLOB_PROTOCOL),
                Err(FrameError::Decode(DecodeError::TooLong { .. }))
            ));
        }
    }

    /// A reader that yields `first` and then never another byte (a stalled peer).
    struct Stalls(Vec<u8>);

    impl AsyncRead for Stalls {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.0.is_empty() {
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_payload_times_out_and_is_not_allocated_up_front() {
        let stall = Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        let mut io = Stalls(vec![1; 10]);
        let err = read_body_paced(&mut io, MAX_FRAME, stall, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), stall);
        // The overall deadline holds even when a byte keeps coming every second.
        struct Trickle(std::pin::Pin<Box<tokio::time::Sleep>>);
        impl AsyncRead for Trickle {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::task::ready!(self.0.as_mut().poll(cx));
                let next = self.0.deadline() + Duration::from_secs(1);
                self.0.as_mut().reset(next);
                buf[0] = 7;
                std::task::Poll::Ready(Ok(1))
            }
        }
        use std::future::Future;
        let started = tokio::time::Instant::now();
        let mut slow = Trickle(Box::pin(tokio::time::sleep(Duration::from_secs(1))));
        let err = read_body_paced(&mut slow, 100, stall, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        let mut fast = Stalls(vec![3; 1000]);
        let ok = read_body_paced(&mut fast, 1000, stall, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(ok, vec![3; 1000]);
    }

    #[test]
    fn directory_keys_are_domain_separated() {
        let a = directory_key("alice@example.org");
        assert_ne!(a, directory_key("bob@example.org"));
        assert_ne!(a, crate::crypto::hash(b"alice@example.org"));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::decode(&bytes, BLOB_PROTOCOL);
            let _ = Request::decode(&bytes, NOTIFY_PROTOCOL);
            let _ = Response::decode(&bytes);
        }
    }
}
