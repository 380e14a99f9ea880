//! COMPRESS=DEFLATE (RFC 4978): after `COMPRESS DEFLATE` is answered OK, both directions of
//! the connection are raw deflate (RFC 1951, no zlib header). The only module that uses flate2.
//!
//! [`Stream`] sits between the session's `BufReader` and the connection (plain or TLS: the
//! compression is inside TLS). Until [`Stream::start`] it passes bytes through.
//!
//! Bounds, so that compression changes nothing of what a client can make the server hold:
//! * Inflating happens only into the buffer the reader asks to fill (the session's
//!   `BufReader`, 8 KiB): the session counts those bytes against its line and literal limits
//!   exactly as it counts plain text, before they are buffered anywhere. Nothing is inflated
//!   ahead of what the session reads, so a zip bomb costs its inflated size in CPU only as far
//!   as the session keeps reading, and a too-long line under compression closes the
//!   connection ([`Stream::compressed`]).
//! * At most [`IN_BUF`] compressed bytes are held; the deflate output buffer holds what one
//!   write produced ([`OUT_CHUNK`] of input at a time) until it is written.
//! * A flush is a Z_SYNC_FLUSH: every response burst the session flushes reaches the client
//!   complete, so a client never waits for more data to decode the end of a response.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::{Acceptor, SessionStream};

/// Compressed input read from the client at a time.
const IN_BUF: usize = 16 * 1024;
/// Uncompressed output taken into the deflater per write call.
const OUT_CHUNK: usize = 64 * 1024;
/// RFC 4978 §4 suggests speed over ratio; zlib level 6 costs ~3× level 1 for little gain on
/// mail, so a middle level.
const LEVEL: u32 = 5;

/// Both directions' deflate state.
struct Deflate {
    inflate: Decompress,
    deflate: Compress,
    /// Compressed bytes from the client, `input[start..end]` not yet inflated.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The client's deflate stream ended (a final block): nothing more is read.
    ended: bool,
    /// Compressed bytes for the client, `output[written..]` not yet sent.
    output: Vec<u8>,
    written: usize,
    /// Bytes were deflated since the last sync flush.
    dirty: bool,
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("deflate: {e}"))
}

/// A connection that becomes deflate-compressed when [`Stream::start`] is called.
pub(super) struct Stream<S = SessionStream> {
    inner: S,
    z: Option<Box<Deflate>>,
}

impl Stream<SessionStream> {
    pub fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }

    /// STARTTLS (which comes before login, and so before any COMPRESS).
    pub async fn upgrade(self, acceptor: &Acceptor) -> std::io::Result<Stream> {
        Ok(Stream::new(self.inner.upgrade(acceptor).await?))
    }
}

impl<S> Stream<S> {
    pub fn new(inner: S) -> Stream<S> {
        Stream { inner, z: None }
    }

    pub fn compressed(&self) -> bool {
        self.z.is_some()
    }

    /// Compresses everything from now on, both ways. Call it with nothing buffered either way
    /// (after the tagged OK was flushed, with no client byte read past the command).
    pub fn start(&mut self) {
        self.z = Some(Box::new(Deflate {
            inflate: Decompress::new(false),
            deflate: Compress::new(Compression::new(LEVEL), false),
            input: vec![0; IN_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            ended: false,
            output: Vec::new(),
            written: 0,
            dirty: false,
        }));
    }
}

impl Deflate {
    /// Deflates `data` (or, with `flush`, ends the current block with a sync flush) into
    /// `output`, growing it as needed; returns how much of `data` was taken.
    fn deflate(&mut self, data: &[u8], flush: FlushCompress) -> std::io::Result<usize> {
        let mut taken = 0;
        loop {
            if self.output.capacity() - self.output.len() < 1024 {
                self.output.reserve((data.len() - taken).max(8 * 1024));
            }
            let in0 = self.deflate.total_in();
            self.deflate
                .compress_vec(&data[taken..], &mut self.output, flush)
                .map_err(invalid)?;
            taken += (self.deflate.total_in() - in0) as usize;
            // zlib's rule: the call is complete (input taken, flush done) once it returns
            // with output room left; otherwise call again with more room.
            if taken == data.len() && self.output.len() < self.output.capacity() {
                return Ok(taken);
            }
        }
    }

    /// Writes `output` to `inner` until it is all sent.
    fn drain<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.written < self.output.len() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.output[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.output.clear();
        self.written = 0;
        // A large burst's buffer is not kept for the rest of the session.
        if self.output.capacity() > 4 * OUT_CHUNK {
            self.output.shrink_to(OUT_CHUNK);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(z) = this.z.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if z.ended {
                return Poll::Ready(Ok(()));
            }
            // Even with no input left the inflater may hold output (a long match cut off
            // when the reader's buffer was full): ask it first.
            {
                let (in0, out0) = (z.inflate.total_in(), z.inflate.total_out());
                // Never more than the reader asked for: the session's limits see every byte.
                let status = z
                    .inflate
                    .decompress(
                        &z.input[z.start..z.end],
                        buf.initialize_unfilled(),
                        FlushDecompress::None,
                    )
                    .map_err(invalid)?;
                z.start += (z.inflate.total_in() - in0) as usize;
                let produced = (z.inflate.total_out() - out0) as usize;
                buf.advance(produced);
                if status == Status::StreamEnd {
                    z.ended = true;
                }
                if produced > 0 || z.ended {
                    return Poll::Ready(Ok(()));
                }
                if z.start < z.end {
                    // Input left, no output, room in buf: the inflater is stuck.
                    if z.inflate.total_in() == in0 {
                        return Poll::Ready(Err(invalid("no progress")));
                    }
                    continue;
                }
            }
            z.start = 0;
            z.end = 0;
            let mut rb = ReadBuf::new(&mut z.input);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                // The client closed the connection.
                return Poll::Ready(Ok(()));
            }
            z.end = n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(z) = this.z.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        };
        // What the last call deflated goes out first: the buffer stays one chunk's worth.
        ready!(z.drain(&mut this.inner, cx))?;
        let chunk = &data[..data.len().min(OUT_CHUNK)];
        let n = z.deflate(chunk, FlushCompress::None)?;
        z.dirty |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(z) = this.z.as_deref_mut() {
            if z.dirty {
                z.deflate(&[], FlushCompress::Sync)?;
                z.dirty = false;
            }
            ready!(z.drain(&mut this.inner, cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    fn deflate_all(data: &[u8], sync: bool) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        let flush = if sync {
            FlushCompress::Sync
        } else {
            FlushCompress::Finish
        };
        c.compress_vec(data, &mut out, flush).unwrap();
        out
    }

    fn inflate_all(data: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        while (d.total_in() as usize) < data.len() {
            out.reserve(1 << 20);
            let at = d.total_in() as usize;
            d.decompress_vec(&data[at..], &mut out, FlushDecompress::Sync)
                .unwrap();
        }
        out
    }

    #[tokio::test]
    async fn passes_through_until_started() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut s = Stream::new(server);
        let mut client = client;
        client.write_all(b"a1 NOOP\r\n").await.unwrap();
        let mut buf = [0u8; 9];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"a1 NOOP\r\n");
        assert!(!s.compressed());
    }

    #[tokio::test]
    async fn both_ways_and_every_flush_is_complete() {
        let (mut client, server) = tokio::io::duplex(1024 * 1024);
        let mut s = BufReader::new(Stream::new(server));
        s.get_mut().start();
        client
            .write_all(&deflate_all(b"a2 SELECT INBOX\r\nA3 NOOP\r\n", true))
            .await
            .unwrap();
        let mut line = Vec::new();
        s.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line, b"a2 SELECT INBOX\r\n");
        line.clear();
        s.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line, b"A3 NOOP\r\n");
        // A large response, then a small one: each flush ends in a sync point, so what the
        // client has received so far inflates to exactly what was written.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut wanted = Vec::new();
        for part in [&big[..], b"a2 OK done\r\n"] {
            s.get_mut().write_all(part).await.unwrap();
            s.get_mut().flush().await.unwrap();
            wanted.extend_from_slice(part);
        }
        drop(s);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let back = inflate_all(&got);
        assert!(
            back == wanted,
            "{} bytes back, {} sent",
            back.len(),
            wanted.len()
        );
        assert!(got.ends_with(&[0, 0, 0xff, 0xff]), "sync flush marker");
    }

    #[tokio::test]
    async fn output_held_by_the_inflater_is_read_without_more_input() {
        // A long run inflates in one match; read through a small buffer, part of it is still
        // inside the inflater when all compressed input is consumed, and the client (still
        // connected) sends nothing more until it gets an answer.
        let (mut client, server) = tokio::io::duplex(1024 * 1024);
        let mut wanted = b"A APPEND INBOX {300000}\r\n".to_vec();
        wanted.extend(std::iter::repeat_n(b'z', 300_000));
        client.write_all(&deflate_all(&wanted, true)).await.unwrap();
        let mut s = BufReader::with_capacity(100, Stream::new(server));
        s.get_mut().start();
        let mut got = vec![0u8; wanted.len()];
        // A guard against a hang (the bug), not a timing threshold.
        tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut got))
            .await
            .expect("stalled with inflated bytes pending")
            .unwrap();
        assert!(got == wanted);
        drop(client);
    }

    #[tokio::test]
    async fn a_zip_bomb_is_inflated_only_as_far_as_it_is_read() {
        // 64 MiB of 'a' without a line end: some 64 KiB compressed.
        let (mut client, server) = tokio::io::duplex(4 * 1024 * 1024);
        let bomb = deflate_all(&vec![b'a'; 64 << 20], true);
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&bomb).await;
            client
        });
        let mut s = Stream::new(server);
        s.start();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0 && n <= 8192);
        // What the stream itself holds: the compressed window, no inflated backlog.
        let z = s.z.as_ref().unwrap();
        assert_eq!(z.input.len(), IN_BUF);
        assert!(z.inflate.total_out() as usize <= buf.len());
        drop(s);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_is_an_error_and_the_end_of_stream_is_eof() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = Stream::new(server);
        s.start();
        client.write_all(&[0xff; 64]).await.unwrap();
        let mut buf = [0u8; 64];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);

        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = Stream::new(server);
        s.start();
        client
            .write_all(&deflate_all(b"x LOGOUT\r\n", false))
            .await
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"x LOGOUT\r\n");
    }
}
