//! Bounded binary encoding shared by every versioned format (envelopes, records, key files,
//! store values, and later the overlay's frames).
//!
//! Integers are big-endian. Variable-length fields carry an explicit length prefix and a
//! caller-given upper bound, so a decoder never allocates more than the format allows, and a
//! truncated input is an error, never a panic.

use thiserror::Error;

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("input ends early: needed {needed} more bytes for {field}")]
    Truncated { field: &'static str, needed: usize },
    #[error("{field} is {len} bytes, more than the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{extra} unexpected bytes after the end of the {format}")]
    TrailingBytes { format: &'static str, extra: usize },
    #[error("{field} holds an invalid value: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
}

/// Appends fields to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }

    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Raw bytes whose length the format fixes.
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Bytes prefixed with a one-byte length. Panics if `v` is longer than 255 bytes: callers
    /// check their own limits before encoding (encoding is never fed untrusted lengths).
    pub fn bytes8(&mut self, v: &[u8]) -> &mut Self {
        let len = u8::try_from(v.len()).expect("bytes8 field longer than 255 bytes");
        self.u8(len).fixed(v)
    }

    /// Bytes prefixed with a four-byte length.
    pub fn bytes32(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("bytes32 field longer than 4 GiB");
        self.u32(len).fixed(v)
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from a byte slice, never past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Everything read so far (useful for "signature over all preceding bytes").
    pub fn consumed(&self) -> &'a [u8] {
        &self.buf[..self.pos]
    }

    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A one-byte-length-prefixed field of at most `max` bytes.
    pub fn bytes8(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u8(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// A four-byte-length-prefixed field of at most `max` bytes. The bound is checked before
    /// anything is read, so an announced length of 4 GiB costs nothing.
    pub fn bytes32(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails if anything is left: every format here has an exact length.
    pub fn finish(&self, format: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { format, extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fields_roundtrip(a in any::<u8>(), b in any::<u16>(), c in any::<u32>(), d in any::<u64>(),
                            s in proptest::collection::vec(any::<u8>(), 0..255),
                            t in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut w = Writer::new();
            w.u8(a).u16(b).u32(c).u64(d).bytes8(&s).bytes32(&t);
            let bytes = w.into_vec();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.u8("a").unwrap(), a);
            prop_assert_eq!(r.u16("b").unwrap(), b);
            prop_assert_eq!(r.u32("c").unwrap(), c);
            prop_assert_eq!(r.u64("d").unwrap(), d);
            prop_assert_eq!(r.bytes8("s", 255).unwrap(), &s[..]);
            prop_assert_eq!(r.bytes32("t", 4096).unwrap(), &t[..]);
            prop_assert!(r.finish("test").is_ok());
        }

        #[test]
        fn truncation_is_an_error(t in proptest::collection::vec(any::<u8>(), 1..100), cut in 0usize..100) {
            let mut w = Writer::new();
            w.bytes32(&t);
            let bytes = w.into_vec();
            let cut = cut % bytes.len();
            let mut r = Reader::new(&bytes[..cut]);
            let res = r.bytes32("t", 4096);
            prop_assert!(
                matches!(res, Err(DecodeError::Truncated { .. })),
                "cut at {} gave {:?}",
                cut,
                res
            );
        }
    }

    #[test]
    fn announced_length_over_bound_is_refused_before_reading() {
        let bytes = [0xff, 0xff, 0xff, 0xff];
        let mut r = Reader::new(&bytes);
        assert_eq!(
            r.bytes32("body", 1024),
            Err(DecodeError::TooLong {
                field: "body",
                len: u32::MAX as usize,
                max: 1024
            })
        );
    }
}
