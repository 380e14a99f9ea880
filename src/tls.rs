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

    /// Runs the TLS handshake on a connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<SessionStream> {
        Ok(SessionStream::Tls(Box::new(self.inner.accept(tcp).await?)))
    }
}

/// A client connection, plain or TLS (implicit or after STARTTLS/STLS).
#[derive(Debug)]
pub enum SessionStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl SessionStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, SessionStream::Tls(_))
    }

    /// STARTTLS/STLS: upgrades a plain connection (a TLS one is returned unchanged).
    pub async fn upgrade(self, acceptor: &Acceptor) -> std::io::Result<SessionStream> {
        match self {
            SessionStream::Plain(tcp) => acceptor.accept(tcp).await,
            tls => Ok(tls),
        }
    }
}

impl AsyncRead for SessionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
