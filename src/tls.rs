//! TLS material for the IMAP, POP3 and SMTP servers. The only module that imports rcgen.
//!
//! `peerpost init` writes a self-signed certificate for `localhost`, `127.0.0.1` and `::1`
//! (and the host name, when known) to `tls/cert.pem`, with its key in `tls/key.pem` (0600).
//! A certificate from elsewhere is configured by path in `[tls]`.

use std::path::Path;

use thiserror::Error;

use crate::home::{self, HomeError};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot generate the TLS certificate: {0}")]
    Generate(String),
    #[error(transparent)]
    Write(#[from] HomeError),
}

/// Names the self-signed certificate is valid for.
pub fn default_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            names.push(h.to_string());
        }
    }
    names
}

/// Generates a self-signed certificate and writes it (cert 0644, key 0600).
pub fn generate_self_signed(
    names: Vec<String>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    home::write_atomic(
        key_path,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    home::write_atomic(cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_pem_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        generate_self_signed(default_names(), &c, &k).unwrap();
        assert!(
            std::fs::read_to_string(&c)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(std::fs::read_to_string(&k).unwrap().contains("PRIVATE KEY"));
    }
}

// ----- serving: the only place that touches rustls and tokio-rustls -----

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why the servers' TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the TLS certificate {path}: {why}")]
    Cert { path: String, why: String },
    #[error("cannot read the TLS key {path}: {why}")]
    Key { path: String, why: String },
    #[error("the TLS certificate and key do not fit together: {0}")]
    Config(String),
}

/// Accepts TLS connections with the configured certificate.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tls::Acceptor")
    }
}

impl Acceptor {
    /// Loads a PEM certificate chain and private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Acceptor, LoadError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| LoadError::Cert {
                path: cert_path.display().to_string(),
                why: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(LoadError::Cert {
                path: cert_path.display().to_string(),
                why: "no certificate in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| LoadError::Key {
            path: key_path.display().to_string(),
            why: e.to_string(),
        })?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| LoadError::Config(e.to_string()))?;
        Ok(Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the TLS handshake on a connection, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<SessionStream> {
        self.accept_timed(tcp, DEFAULT_WRITE_TIMEOUT).await
    }

    async fn accept_timed(
        &self,
        tcp: TcpStream,
        write_timeout: Duration,
    ) -> std::io::Result<SessionStream> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.inner.accept(tcp)).await {
            Ok(Ok(s)) => Ok(SessionStream {
                inner: Inner::Tls(Box::new(s)),
                write_timeout,
                stalled: None,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Longest a TLS handshake may take (implicit TLS, STARTTLS, STLS): a client that asks for
/// TLS and goes silent is dropped (issue #18).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a write may make no progress (a client that never reads) before it fails.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Inner {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A client connection, plain or TLS (implicit or after STARTTLS/STLS). A write (or flush)
/// that makes no progress for its write timeout fails with `TimedOut`.
#[derive(Debug)]
pub struct SessionStream {
    inner: Inner,
    write_timeout: Duration,
    /// Since when writing has been blocked.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SessionStream {
    /// A plaintext connection.
    pub fn plain(tcp: TcpStream) -> SessionStream {
        SessionStream {
            inner: Inner::Plain(tcp),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            stalled: None,
        }
    }

    /// Sets how long a write may make no progress.
    pub fn with_write_timeout(mut self, t: Duration) -> SessionStream {
        self.write_timeout = t;
        self
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// STARTTLS/STLS: upgrades a plain connection (a TLS one is returned unchanged), within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn upgrade(self, acceptor: &Acceptor) -> std::io::Result<SessionStream> {
        match self.inner {
            Inner::Plain(tcp) => acceptor.accept_timed(tcp, self.write_timeout).await,
            tls => Ok(SessionStream {
                inner: tls,
                write_timeout: self.write_timeout,
                stalled: None,
            }),
        }
    }

    /// Maps a pending write to `TimedOut` once it has been pending for the write timeout.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => {
                let t = self.write_timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client does not read",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for SessionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        this.watch(cx, r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        };
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        };
        this.watch(cx, r)
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_client_never_reads_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let mut s = SessionStream::plain(server).with_write_timeout(Duration::from_millis(300));
        let big = vec![0u8; 64 << 20];
        let started = std::time::Instant::now();
        let e = s.write_all(&big).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(client);
    }
}
