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
//!                      2 = object ‖ [32] object id ‖ [32] content key ‖ u32 length
//! ```

use crate::wire::{DecodeError, Reader, Writer};

pub const VERSION: u8 = 1;
/// Messages up to this size travel inside the notice (one round trip fewer); larger ones are
/// sealed objects in the overlay.
pub const MAX_INLINE: usize = 48 * 1024;
const INLINE: u8 = 1;
const OBJECT: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Inline(Vec<u8>),
    Object {
        id: [u8; 32],
        key: [u8; 32],
        len: u32,
    },
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
            Body::Object { id, key, len } => {
                w.u8(OBJECT).fixed(id).fixed(key).u32(*len);
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
            OBJECT => Body::Object {
                id: r.array("object id")?,
                key: r.array("content key")?,
                len: r.u32("length")?,
            },
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

    #[test]
    fn notices_round_trip_and_truncations_fail() {
        for body in [
            Body::Inline(b"Subject: x\r\n\r\nhi\r\n".to_vec()),
            Body::Object {
                id: [1; 32],
                key: [2; 32],
                len: 70_000,
            },
        ] {
            let n = Notice {
                msg_id: [9; 16],
                sent: 1_700_000_000,
                sender: "alice@demo.test".into(),
                recipient: "bob@demo.test".into(),
                ack_secret: [3; 32],
                body,
            };
            let enc = n.encode();
            assert_eq!(Notice::decode(&enc).unwrap(), n);
            for cut in 0..enc.len() {
                assert!(Notice::decode(&enc[..cut]).is_err());
            }
        }
    }
}
