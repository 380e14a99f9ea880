//! The delivery notice: what a sender seals (in an envelope, crypto::envelope) to one
//! recipient for one message. It travels as the notification payload and as the DHT inbox
//! entry. Version 1 (docs/design.md, "Delivery notice"):
//!
//! ```text
//!   u8      version = 1
//!   [16]    message id (random, chosen at submission; one id for all recipients)
//!   u64     sent (unix s)
//!   bytes8  sender address (normalized)
//!   bytes8  recipient address (normalized)
//!   [32]    ack secret (the DHT inbox entry is removed by whoever shows it)
//!   u8      body kind: 1 = inline ‖ bytes32 message (≤ MAX_INLINE)
//!                      2 = object ‖ part
//!                      3 = parts ‖ u8 count (2..=MAX_PARTS) ‖ count × part
//!   part:   [32] object id ‖ [32] content key ‖ u32 length (≤ MAX_PART)
//! ```
//!
//! A message longer than one overlay object is cut into parts of `MAX_PART` bytes (the last
//! one shorter), each sealed under its own key; the parts' lengths add up to at most
//! `MAX_MESSAGE`.

use crate::crypto::{Envelope, UserKeys};
use crate::wire::{DecodeError, Reader, Writer};

// --- the wrapping of a notice for the recipient's DHT inbox and devices ---
//
// What leaves the sender is not the notice's envelope (which names the sender's key in
// clear) but an outer envelope: sealed to the recipient, signed by the sender's pseudonym
// for that recipient, its payload the inner envelope. A holder sees the pseudonym (the same
// for every entry one sender leaves one recipient, so it can bound them) and nothing that
// names the sender; the recipient opens both layers and checks the inner signer against the
// sender's directory record as before.

/// The sender's pseudonym towards one recipient: keys derived from the sender's seed and
/// the recipient's Ed25519 key (signs the inbox put and the outer envelope).
pub fn pseudonym(sender: &UserKeys, recipient_sign: &[u8; 32]) -> UserKeys {
    const CONTEXT: &[u8] = b"peerpost inbox sender v1";
    let mut m = Vec::with_capacity(CONTEXT.len() + 64);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(sender.seed());
    m.extend_from_slice(recipient_sign);
    UserKeys::from_seed(crate::crypto::hash(&m))
}

/// Wraps the sender's envelope `inner` for the recipient (`recipient_enc`) under `pseudonym`.
pub fn wrap(
    pseudonym: &UserKeys,
    recipient_enc: &[u8; 32],
    inner: &Envelope,
) -> crate::crypto::Result<Vec<u8>> {
    Envelope::seal(pseudonym, recipient_enc, inner.as_bytes()).map(Envelope::into_bytes)
}

/// Opens the outer layer with the recipient's keys: the sender's envelope, still to be
/// opened and its signer checked.
pub fn unwrap(me: &UserKeys, outer: Vec<u8>) -> crate::crypto::Result<Envelope> {
    let opened = Envelope::from_bytes(outer)?.open(me)?;
    Envelope::from_bytes(opened.payload)
}

pub const VERSION: u8 = 1;
/// Messages up to this size travel inside the notice (one round trip fewer); larger ones are
/// sealed objects in the overlay.
pub const MAX_INLINE: usize = 48 * 1024;
/// The most plaintext one sealed overlay object carries (a blob holds the seal's overhead
/// too).
pub const MAX_PART: usize = crate::overlay::protocol::MAX_BLOB - 1024;
/// The longest message the overlay carries (the largest `smtp.max_message_size`).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Parts of one message: enough for `MAX_MESSAGE`.
pub const MAX_PARTS: usize = MAX_MESSAGE.div_ceil(MAX_PART);
const INLINE: u8 = 1;
const OBJECT: u8 = 2;
const PARTS: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Inline(Vec<u8>),
    /// One sealed object per part, in order (one part: body kind 2).
    Objects(Vec<Part>),
}

/// One sealed overlay object of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub id: [u8; 32],
    pub key: [u8; 32],
    pub len: u32,
}

impl Part {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&self.id).fixed(&self.key).u32(self.len);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Part, DecodeError> {
        let part = Part {
            id: r.array("object id")?,
            key: r.array("content key")?,
            len: r.u32("length")?,
        };
        if part.len as usize > MAX_PART || part.len == 0 {
            return Err(DecodeError::Invalid {
                field: "length",
                why: "a part is empty or longer than one overlay object",
            });
        }
        Ok(part)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub msg_id: [u8; 16],
    pub sent: u64,
    pub sender: String,
    pub recipient: String,
    pub ack_secret: [u8; 32],
    pub body: Body,
}

impl Notice {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION)
            .fixed(&self.msg_id)
            .u64(self.sent)
            .bytes8(self.sender.as_bytes())
            .bytes8(self.recipient.as_bytes())
            .fixed(&self.ack_secret);
        match &self.body {
            Body::Inline(b) => {
                w.u8(INLINE).bytes32(b);
            }
            Body::Objects(parts) if parts.len() == 1 => {
                w.u8(OBJECT);
                parts[0].encode(&mut w);
            }
            Body::Objects(parts) => {
                w.u8(PARTS).u8(parts.len() as u8);
                for p in parts {
                    p.encode(&mut w);
                }
            }
        }
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Notice, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8("version")? != VERSION {
            return Err(DecodeError::Invalid {
                field: "version",
                why: "unsupported notice version",
            });
        }
        let msg_id = r.array("message id")?;
        let sent = r.u64("sent")?;
        let text = |b: &[u8], field| {
            String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid {
                field,
                why: "not UTF-8",
            })
        };
        let sender = text(r.bytes8("sender", 255)?, "sender")?;
        let recipient = text(r.bytes8("recipient", 255)?, "recipient")?;
        let ack_secret = r.array("ack secret")?;
        let body = match r.u8("body kind")? {
            INLINE => Body::Inline(r.bytes32("body", MAX_INLINE)?.to_vec()),
            OBJECT => Body::Objects(vec![Part::decode(&mut r)?]),
            PARTS => {
                let count = r.u8("part count")? as usize;
                if !(2..=MAX_PARTS).contains(&count) {
                    return Err(DecodeError::Invalid {
                        field: "part count",
                        why: "out of range",
                    });
                }
                let parts = (0..count)
                    .map(|_| Part::decode(&mut r))
                    .collect::<Result<Vec<_>, _>>()?;
                if parts.iter().map(|p| p.len as usize).sum::<usize>() > MAX_MESSAGE {
                    return Err(DecodeError::Invalid {
                        field: "parts",
                        why: "longer than the largest message",
                    });
                }
                Body::Objects(parts)
            }
            _ => {
                return Err(DecodeError::Invalid {
                    field: "body kind",
                    why: "unknown",
                });
            }
        };
        r.finish("delivery notice")?;
        Ok(Notice {
            msg_id,
            sent,
            sender,
            recipient,
            ack_secret,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn notice(body: Body) -> Notice {
        Notice {
            msg_id: [9; 16],
            sent: 1_700_000_000,
            sender: "alice@demo.test".into(),
            recipient: "bob@demo.test".into(),
            ack_secret: [3; 32],
            body,
        }
    }

    fn part(n: u8, len: u32) -> Part {
        Part {
            id: [n; 32],
            key: [n ^ 0xff; 32],
            len,
        }
    }

    #[test]
    fn notices_round_trip_and_truncations_fail() {
        for body in [
            Body::Inline(b"Subject: x\r\n\r\nhi\r\n".to_vec()),
            Body::Objects(vec![part(1, 70_000)]),
            Body::Objects(vec![part(1, MAX_PART as u32), part(2, 5)]),
        ] {
            let n = notice(body);
            let enc = n.encode();
            assert_eq!(Notice::decode(&enc).unwrap(), n);
            for cut in 0..enc.len() {
                assert!(Notice::decode(&enc[..cut]).is_err());
            }
        }
        // One object keeps body kind 2 (what nodes before parts understand).
        let one = notice(Body::Objects(vec![part(1, 70_000)])).encode();
        assert_eq!(one[one.len() - 69], OBJECT);
    }

    #[test]
    fn parts_beyond_the_bounds_are_refused() {
        let too_many = vec![part(1, 1); MAX_PARTS + 1];
        assert!(Notice::decode(&notice(Body::Objects(too_many)).encode()).is_err());
        let too_long = vec![part(1, MAX_PART as u32); MAX_PARTS];
        const { assert!(MAX_PARTS * MAX_PART > MAX_MESSAGE) };
        assert!(Notice::decode(&notice(Body::Objects(too_long)).encode()).is_err());
        let oversized_part = vec![part(1, MAX_PART as u32 + 1), part(2, 1)];
        assert!(Notice::decode(&notice(Body::Objects(oversized_part)).encode()).is_err());
        let empty_part = vec![part(1, 0)];
        assert!(Notice::decode(&notice(Body::Objects(empty_part)).encode()).is_err());
        // The largest notice still fits one notification.
        let largest = notice(Body::Objects(vec![part(1, 1); MAX_PARTS]));
        assert!(largest.encode().len() < crate::overlay::protocol::MAX_NOTIFY / 4);
    }

    #[test]
    fn a_wrapped_notice_names_only_the_pseudonym() {
        let (alice, bob, carol) = (
            UserKeys::generate().unwrap(),
            UserKeys::generate().unwrap(),
            UserKeys::generate().unwrap(),
        );
        let inner = Envelope::seal(&alice, &bob.public().enc, b"notice").unwrap();
        let p = pseudonym(&alice, &bob.public().sign);
        assert_eq!(p.public(), pseudonym(&alice, &bob.public().sign).public());
        assert_ne!(p.public(), pseudonym(&alice, &carol.public().sign).public());
        let outer = wrap(&p, &bob.public().enc, &inner).unwrap();
        let clear = &outer[..66];
        assert!(!clear.windows(32).any(|w| w == alice.public().sign));
        assert!(
            !outer.windows(32).any(|w| w == alice.public().sign),
            "sealed, not in clear"
        );
        let got = unwrap(&bob, outer.clone()).unwrap();
        assert_eq!(got, inner);
        assert_eq!(got.open(&bob).unwrap().sender, alice.public().sign);
        assert!(unwrap(&carol, outer).is_err());
        // The largest notice, wrapped twice, still fits one inbox entry and one push.
        let largest = notice(Body::Inline(vec![0; MAX_INLINE])).encode();
        let inner = Envelope::seal(&alice, &bob.public().enc, &largest).unwrap();
        let outer = wrap(&p, &bob.public().enc, &inner).unwrap();
        assert!(outer.len() <= crate::overlay::protocol::MAX_INBOX_ENTRY);
    }

    proptest! {
        #[test]
        fn any_notice_round_trips(
            inline in proptest::collection::vec(any::<u8>(), 0..512),
            lens in proptest::collection::vec(1..=MAX_PART as u32, 1..4),
            use_parts: bool,
            sent: u64,
        ) {
            let body = if use_parts {
                Body::Objects(lens.iter().enumerate().map(|(i, l)| part(i as u8, *l)).collect())
            } else {
                Body::Inline(inline)
            };
            let mut n = notice(body);
            n.sent = sent;
            prop_assert_eq!(Notice::decode(&n.encode()).unwrap(), n);
        }
    }
}
