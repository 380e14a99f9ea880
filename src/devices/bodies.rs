//! Chunked fetch of bodies too large for a sync frame (docs/design.md, "Devices": "Bodies
//! that do not fit a frame"). A merged Add whose sealed body did not travel with it (over the
//! frame's body budget) is *pending*; the device asks a device it synced with for the body
//! in chunks of ≤ 1 MiB, bounds the whole by the node's message size limit, keeps the chunks
//! in memory (one fetch at a time per device) and stores the body only once its BLAKE3 hash
//! is the object id the signed log entry names — so a lying or vanished device leaves
//! nothing behind, and the body stays pending for the next sync.

use std::future::Future;
use std::sync::Arc;

use super::wire::{BodyAnswer, BodyRequest, MAX_CHUNK};
use super::{Error, Result};
use crate::crypto::{ObjectId, SealedObject};

/// Bodies waiting for a fetch, at most (more are found again at the next start).
pub const MAX_PENDING: usize = 4096;

/// Fetches the sealed body `object` of `total` bytes through `ask` (one replica request,
/// one answer), and returns it verified against its id. `max` bounds `total` (the node's
/// message size limit, sealed). Any answer that is not exactly the chunk asked for — another
/// object, another offset, another total, a short chunk — ends the fetch with an error.
pub async fn fetch<F, Fut>(
    object: ObjectId,
    total: u64,
    max: u64,
    mut ask: F,
) -> Result<SealedObject>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<Vec<u8>>>,
{
    if total > max {
        return Err(Error::Refused(
            "the body is over this node's message size limit",
        ));
    }
    let len = usize::try_from(total).map_err(|_| Error::Refused("body too large"))?;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let offset = buf.len() as u64;
        let want = (total - offset).min(u64::from(MAX_CHUNK)) as u32;
        let answer = ask(BodyRequest {
            object,
            offset,
            len: want,
        }
        .encode())
        .await?;
        match BodyAnswer::decode(&answer)? {
            BodyAnswer::Chunk {
                object: o,
                total: t,
                offset: at,
                bytes,
            } if o == object && t == total && at == offset && bytes.len() == want as usize => {
                buf.extend_from_slice(&bytes);
            }
            BodyAnswer::Chunk { .. } => {
                return Err(Error::Refused("the device answered another chunk"));
            }
            BodyAnswer::Absent { .. } => {
                return Err(Error::Refused("the device does not hold the body"));
            }
        }
    }
    SealedObject::from_bytes_verified(buf, &object)
        .map_err(|_| Error::Refused("the fetched body does not match its id"))
}

/// The answer to a body request from `held` (the sealed object, when this store has it).
/// An offset at or beyond the end is refused (the stream closes unanswered).
pub fn answer(req: &BodyRequest, held: Option<&Arc<SealedObject>>) -> Result<Vec<u8>> {
    let Some(obj) = held else {
        return Ok(BodyAnswer::Absent { object: req.object }.encode());
    };
    let bytes = obj.as_bytes();
    let total = bytes.len() as u64;
    if req.offset >= total {
        return Err(Error::Refused("chunk offset beyond the body"));
    }
    let start = req.offset as usize;
    let end = start + (req.len as usize).min(bytes.len() - start);
    Ok(BodyAnswer::Chunk {
        object: req.object,
        total,
        offset: req.offset,
        bytes: bytes[start..end].to_vec(),
    }
    .encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn body(len: usize) -> Arc<SealedObject> {
        let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        Arc::new(SealedObject::seal(&plain).unwrap().0)
    }

    /// A holder that answers honestly, through the real encoder and decoder.
    async fn honest(obj: Arc<SealedObject>, req: Vec<u8>) -> Result<Vec<u8>> {
        let q = BodyRequest::decode(&req)?;
        answer(&q, Some(&obj))
    }

    #[tokio::test]
    async fn a_body_of_several_chunks_arrives_whole_and_verified() {
        let obj = body(2 * MAX_CHUNK as usize + 12_345);
        let asked = Arc::new(Mutex::new(0));
        let got = fetch(obj.id(), obj.as_bytes().len() as u64, u64::MAX, |req| {
            *asked.lock().unwrap() += 1;
            honest(Arc::clone(&obj), req)
        })
        .await
        .unwrap();
        assert_eq!(got.as_bytes(), obj.as_bytes());
        assert_eq!(*asked.lock().unwrap(), 3, "three chunks of ≤ 1 MiB");
    }

    #[tokio::test]
    async fn over_the_size_limit_nothing_is_asked() {
        let obj = body(1000);
        let total = obj.as_bytes().len() as u64;
        let r = fetch(obj.id(), total, total - 1, |_| async {
            panic!("asked although over the limit")
        })
        .await;
        assert!(matches!(r, Err(Error::Refused(_))));
    }

    #[tokio::test]
    async fn a_lying_holder_gets_nothing_stored() {
        let obj = body(MAX_CHUNK as usize + 500);
        let total = obj.as_bytes().len() as u64;
        // A chunk whose bytes were changed: every chunk is the asked one, the hash is not.
        let r = fetch(obj.id(), total, u64::MAX, |req| {
            let obj = Arc::clone(&obj);
            async move {
                let q = BodyRequest::decode(&req)?;
                let a = answer(&q, Some(&obj))?;
                let BodyAnswer::Chunk {
                    object,
                    total,
                    offset,
                    mut bytes,
                } = BodyAnswer::decode(&a)?
                else {
                    unreachable!()
                };
                bytes[0] ^= 1;
                Ok(BodyAnswer::Chunk {
                    object,
                    total,
                    offset,
                    bytes,
                }
                .encode())
            }
        })
        .await;
        assert!(matches!(r, Err(Error::Refused(m)) if m.contains("does not match")));

        // Another total, another offset, a short chunk, another object, absent, garbage:
        // each ends the fetch with an error.
        let other = body(10);
        type Liar<'a> = Box<dyn Fn(&BodyRequest) -> Vec<u8> + 'a>;
        let lies: Vec<Liar<'_>> = vec![
            Box::new(|q| {
                BodyAnswer::Chunk {
                    object: q.object,
                    total: total + 1,
                    offset: q.offset,
                    bytes: vec![0; q.len as usize],
                }
                .encode()
            }),
            Box::new(|q| {
                BodyAnswer::Chunk {
                    object: q.object,
                    total,
                    offset: q.offset + 1,
                    bytes: vec![0; q.len as usize - 1],
                }
                .encode()
            }),
            Box::new(|q| {
                BodyAnswer::Chunk {
                    object: q.object,
                    total,
                    offset: q.offset,
                    bytes: vec![0; q.len as usize - 1],
                }
                .encode()
            }),
            Box::new(|q| {
                BodyAnswer::Chunk {
                    object: other.id(),
                    total,
                    offset: q.offset,
                    bytes: vec![0; q.len as usize],
                }
                .encode()
            }),
            Box::new(|q| BodyAnswer::Absent { object: q.object }.encode()),
            Box::new(|_| vec![3, 1, 2]),
        ];
        for (i, lie) in lies.iter().enumerate() {
            let r = fetch(obj.id(), total, u64::MAX, |req| {
                let a = BodyRequest::decode(&req).map(|q| lie(&q));
                async move { Ok(a?) }
            })
            .await;
            assert!(r.is_err(), "lie {i} accepted");
        }
        // A holder that vanished halfway: the error of the request is the fetch's.
        let calls = Mutex::new(0);
        let r = fetch(obj.id(), total, u64::MAX, |req| {
            let n = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c
            };
            let obj = Arc::clone(&obj);
            async move {
                if n > 1 {
                    return Err(Error::Request("connection closed".into()));
                }
                honest(obj, req).await
            }
        })
        .await;
        assert!(matches!(r, Err(Error::Request(_))));
    }

    #[test]
    fn the_holder_answers_within_the_body_only() {
        let obj = body(100);
        let total = obj.as_bytes().len() as u64;
        let q = |offset, len| BodyRequest {
            object: obj.id(),
            offset,
            len,
        };
        // The last chunk is cut at the end of the body.
        let a = BodyAnswer::decode(&answer(&q(total - 3, 10), Some(&obj)).unwrap()).unwrap();
        assert!(matches!(a, BodyAnswer::Chunk { ref bytes, .. } if bytes.len() == 3));
        // At or beyond the end: refused.
        assert!(answer(&q(total, 1), Some(&obj)).is_err());
        assert!(answer(&q(u64::MAX, 1), Some(&obj)).is_err());
        // Not held: said so.
        let a = BodyAnswer::decode(&answer(&q(0, 1), None).unwrap()).unwrap();
        assert_eq!(a, BodyAnswer::Absent { object: obj.id() });
    }
}
