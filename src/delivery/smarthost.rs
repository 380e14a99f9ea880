//! The smarthost relay: mail for recipients outside the overlay leaves through the configured
//! SMTP server (config `[smarthost]`). The only module that uses lettre.
//!
//! One connection per attempt (the queue retries; a pool would hold connections to a relay
//! that is mostly idle). A 5xx answer is permanent (the message bounces); a 4xx answer, a
//! connection failure or a timeout is temporary (the queue retries with backoff).

use std::path::PathBuf;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// Time allowed for one whole relay conversation.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext (a relay on loopback or a trusted network only).
    None,
    /// STARTTLS, required.
    StartTls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone)]
pub struct Smarthost {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM certificates to trust for the relay instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
}

/// How one relay attempt ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again later (4xx, no connection, timeout).
    Temporary(String),
    /// The relay refused for good (5xx): `status` is the enhanced code for the DSN.
    Permanent { status: String, diagnostic: String },
}

/// Relays one message for one recipient.
pub async fn send(sh: &Smarthost, from: &str, rcpt: &str, bytes: &[u8]) -> Result<(), Failure> {
    let temp = |e: String| Failure::Temporary(e);
    let parse = |a: &str| {
        a.parse::<Address>().map_err(|e| Failure::Permanent {
            status: "5.1.3".into(),
            diagnostic: format!("bad address {a:?}: {e}"),
        })
    };
    let sender = if from.is_empty() {
        None
    } else {
        Some(parse(from)?)
    };
    let envelope = Envelope::new(sender, vec![parse(rcpt)?]).map_err(|e| Failure::Permanent {
        status: "5.1.3".into(),
        diagnostic: e.to_string(),
    })?;
    let tls = match sh.tls {
        TlsMode::None => Tls::None,
        TlsMode::StartTls | TlsMode::Tls => {
            let mut params = TlsParameters::builder(sh.host.clone());
            if let Some(path) = &sh.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| temp(format!("cannot read {}: {e}", path.display())))?;
                let certs = Certificate::from_pem(&pem)
                    .map_err(|e| temp(format!("{}: {e}", path.display())))?;
                params = params
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(certs);
            }
            let params = params.build().map_err(|e| temp(e.to_string()))?;
            if sh.tls == TlsMode::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(sh.host.clone())
        .port(sh.port)
        .tls(tls)
        .timeout(Some(TIMEOUT));
    if let Some(user) = &sh.user {
        let password = match &sh.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| temp(format!("cannot read {}: {e}", p.display())))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    let transport = builder.build();
    match tokio::time::timeout(TIMEOUT, transport.send_raw(&envelope, bytes)).await {
        Err(_) => Err(temp(format!("{}:{} timed out", sh.host, sh.port))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.is_permanent() => {
            let code = e.status().map(|c| c.to_string()).unwrap_or_default();
            Err(Failure::Permanent {
                status: enhanced(&code),
                diagnostic: format!("{}:{} said: {e}", sh.host, sh.port),
            })
        }
        Ok(Err(e)) => Err(temp(format!("{}:{}: {e}", sh.host, sh.port))),
    }
}

/// The enhanced status for a DSN from a basic 5yz reply code.
fn enhanced(code: &str) -> String {
    match code {
        "550" | "551" | "553" => "5.1.1".into(),
        "552" => "5.3.4".into(),
        _ => "5.0.0".into(),
    }
}
