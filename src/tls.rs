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
