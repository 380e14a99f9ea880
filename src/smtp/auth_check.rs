//! DKIM, SPF and DMARC on the SMTP intake (issue #7): the only module that uses mail-auth.
//!
//! The intake takes outside mail that the user's legacy mail server forwards. With
//! `[smtp] verify = "tag"` each message accepted there is checked before it is stored: every
//! DKIM signature (RFC 6376), SPF for the EHLO name and for MAIL FROM against the connecting
//! IP (RFC 7208), then DMARC for the From domain (RFC 7489). The results go into an
//! `Authentication-Results` header (RFC 8601) under the node's host name, and any such
//! header already in the message that claims that name is removed first (§5: a sender must
//! not be able to forge our verdict). `"enforce"` also refuses, before anything is stored,
//! a message whose DMARC check fails under `p=reject` (550 5.7.1), and one whose check met
//! a temporary DNS error (451 4.7.0, so the sender retries). Submission never comes here:
//! [`super::Mode::Intake`] is the only holder of a [`Verifier`].
//!
//! DNS answers come from the system resolver, or, with `dns_records = FILE`, only from that
//! file (see [`parse_records`]; docs/design.md "DNS records file"): a name not in the file
//! does not exist, and DNS is never asked. Every check runs under one [`TIMEOUT`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crypto::record::Vouch;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Dmarc, Policy as DmarcPolicy};
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    DnsError, DnssecStatus, MX, MessageAuthenticator, Parameters, RecordSet, ResolverCache,
    SpfOutput, Txt,
};

/// The longest one message's checks may take (all lookups together).
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Bounds of the records file.
const MAX_FILE: u64 = 1024 * 1024;
const MAX_LINE: usize = 8 * 1024;
const MAX_RECORDS: usize = 10_000;

/// How the intake treats a message's DKIM/SPF/DMARC results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Add `Authentication-Results`; accept whatever the results.
    Tag,
    /// Tag, and refuse DMARC failures under `p=reject` (and retry temporary DNS errors).
    Enforce,
}

/// What the node passes to [`Verifier::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub policy: Policy,
    /// DNS answers from this file only; `None`: the system resolver.
    pub dns_records: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the DNS records file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS records file {path}: {source}")]
    Records {
        path: PathBuf,
        #[source]
        source: RecordsError,
    },
    #[error("cannot set up the DNS resolver for DKIM/SPF/DMARC: {0}")]
    Resolver(String),
}

/// A bad records file: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RecordsError {
    pub line: usize,
    pub message: String,
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store it with this `Authentication-Results` field (CRLF-terminated) prepended.
    Accept { header: String },
    /// Refuse it with this SMTP reply (CRLF-terminated); nothing is stored.
    Refuse(String),
}

/// Checks intake messages. Cheap to share (`Arc`); one per node.
pub struct Verifier {
    authenticator: MessageAuthenticator,
    records: Records,
    authserv_id: String,
    policy: Policy,
    timeout: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("authserv_id", &self.authserv_id)
            .field("policy", &self.policy)
            .field("fixed_records", &self.records.fixed)
            .finish()
    }
}

impl Verifier {
    /// `authserv_id` is the name the node's `Authentication-Results` fields carry (its host
    /// name, as in its Received headers).
    pub fn new(settings: &Settings, authserv_id: &str) -> Result<Verifier, Error> {
        let (authenticator, records) = match &settings.dns_records {
            Some(path) => {
                let records = load_records(path)?;
                // No name servers: every answer comes from the file (misses are answered
                // there as "does not exist"), so nothing can reach the network.
                let a = MessageAuthenticator::new(
                    ResolverConfig::from_name_servers(Vec::new()),
                    ResolverOpts::default(),
                )
                .map_err(|e| Error::Resolver(e.to_string()))?;
                (a, records)
            }
            None => (
                MessageAuthenticator::new_system_conf()
                    .map_err(|e| Error::Resolver(e.to_string()))?,
                Records::default(),
            ),
        };
        Ok(Verifier {
            authenticator,
            records,
            authserv_id: authserv_id.to_string(),
            policy: settings.policy,
            timeout: TIMEOUT,
        })
    }

    /// The name our `Authentication-Results` fields carry.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// Checks `message` as received from `ip`, which said `EHLO helo` and `MAIL FROM:<from>`.
    pub async fn check(&self, message: &[u8], ip: IpAddr, helo: &str, from: &str) -> Verdict {
        let ip = ip.to_canonical();
        match tokio::time::timeout(self.timeout, self.evaluate(message, ip, helo, from)).await {
            Ok(v) => v,
            Err(_) => {
                tracing::warn!(%ip, "DKIM/SPF/DMARC checks timed out");
                if self.policy == Policy::Enforce {
                    return Verdict::Refuse(TEMP_REPLY.to_string());
                }
                Verdict::Accept {
                    header: format!(
                        "Authentication-Results: {};\r\n\tdkim=temperror; spf=temperror; \
                         dmarc=temperror (checks timed out)\r\n",
                        self.authserv_id
                    ),
                }
            }
        }
    }

    async fn evaluate(&self, message: &[u8], ip: IpAddr, helo: &str, from: &str) -> Verdict {
        let r = &self.records;
        let a = &self.authenticator;
        let host = self.authserv_id.as_str();
        // SPF: the EHLO identity, and MAIL FROM (for DMARC; the EHLO one for a null sender).
        let helo_domain = helo.trim_start_matches('[').trim_end_matches(']');
        let spf_helo = a
            .verify_spf(r.params(SpfParameters::verify_ehlo(ip, helo_domain, host)))
            .await;
        let spf_from = if from.is_empty() {
            None
        } else {
            Some(
                a.verify_spf(r.params(SpfParameters::verify_mail_from(
                    ip,
                    helo_domain,
                    host,
                    from,
                )))
                .await,
            )
        };
        let spf_for_dmarc: &SpfOutput = spf_from.as_ref().unwrap_or(&spf_helo);
        let from_domain = match from.rsplit_once('@') {
            Some((_, d)) => d,
            None => helo_domain,
        };
        let mut ar = AuthenticationResults::new(host);
        let mut dmarc: Option<DmarcOutput> = None;
        let mut dkim_count = 0;
        let mut dkim_pass = 0;
        match AuthenticatedMessage::parse(message) {
            Some(parsed) => {
                let dkim: Vec<DkimOutput> = a
                    .verify_dkim(r.params(&parsed))
                    .await
                    .into_iter()
                    .map(|o| body_hash_fails(o, &parsed))
                    .collect();
                dkim_count = dkim.len();
                dkim_pass = dkim
                    .iter()
                    .filter(|o| o.result() == &DkimResult::Pass)
                    .count();
                let header_from = parsed.from.first().map(String::as_str).unwrap_or("");
                ar = ar.with_dkim_results(&dkim, header_from);
                let out = a
                    .verify_dmarc(r.params(DmarcParameters::new(
                        &parsed,
                        &dkim,
                        from_domain,
                        spf_for_dmarc,
                    )))
                    .await;
                dmarc = Some(out);
            }
            None => tracing::debug!("message has no parsable header: no DKIM or DMARC"),
        }
        ar = ar.with_spf_ehlo_result(&spf_helo, ip, helo_domain);
        if let Some(spf) = &spf_from {
            ar = ar.with_spf_mailfrom_result(spf, ip, from, helo_domain);
        }
        let has_dmarc = dmarc.as_ref().is_some_and(|d| !d.domain().is_empty());
        if let Some(d) = dmarc.as_ref().filter(|_| has_dmarc) {
            ar = ar.with_dmarc_result(d);
        }
        let mut header = ar.to_header();
        // mail-auth writes nothing for a message without signatures or DMARC domain; RFC 8601
        // wants "none" said explicitly.
        let head = format!("Authentication-Results: {host}");
        if header.starts_with(&head) {
            let mut extra = String::new();
            if dkim_count == 0 {
                extra.push_str(";\r\n\tdkim=none");
            }
            if !has_dmarc {
                extra.push_str(";\r\n\tdmarc=none");
            }
            header.insert_str(head.len(), &extra);
        }
        let spf_result = spf_for_dmarc.result();
        let dmarc_result = dmarc.as_ref().map(DmarcOutput::result);
        tracing::info!(
            %ip,
            dkim_signatures = dkim_count,
            dkim_pass,
            spf = %spf_result,
            dmarc = dmarc_result.as_ref().map(|r| r.to_string()).unwrap_or_else(|| "none".into()),
            "intake message checked"
        );
        if self.policy == Policy::Enforce
            && let Some(d) = &dmarc
        {
            match d.result() {
                DmarcResult::Fail(_) if d.policy() == DmarcPolicy::Reject => {
                    return Verdict::Refuse(format!(
                        "550 5.7.1 Rejected by the DMARC policy of {}\r\n",
                        clean(d.domain())
                    ));
                }
                // Retry unless the policy is known and would not reject anyway.
                DmarcResult::TempError(_)
                    if d.dmarc_record().is_none() || d.policy() == DmarcPolicy::Reject =>
                {
                    return Verdict::Refuse(TEMP_REPLY.to_string());
                }
                _ => {}
            }
        }
        Verdict::Accept { header }
    }
}

/// mail-auth calls a signature whose body hash does not match "neutral"; RFC 6376 §6.1.3
/// makes it a failure (PERMFAIL "body hash did not verify"), and RFC 8601 §2.7.1 reports
/// that as `dkim=fail`. (DMARC only looks for passes, so this changes only the header.)
fn body_hash_fails<'x>(o: DkimOutput<'x>, parsed: &'x AuthenticatedMessage<'x>) -> DkimOutput<'x> {
    let DkimResult::Neutral(e @ mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)) =
        o.result()
    else {
        return o;
    };
    let signature = o.signature().and_then(|sig| {
        parsed
            .dkim_headers
            .iter()
            .map(|h| &h.header)
            .find(|s| std::ptr::eq(*s, sig))
    });
    let fail = DkimOutput::fail(e.clone());
    match signature {
        Some(sig) => fail.with_signature(sig),
        None => fail,
    }
}

const TEMP_REPLY: &str =
    "451 4.7.0 Temporary DNS failure checking DKIM/SPF/DMARC; try again later\r\n";

fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(253)
        .collect()
}

pub use crate::delivery::headers::{strip_own_results, strip_own_results_in};

// --- address ownership: `_peerpost.DOMAIN` TXT records ------------------------------

/// The name label under which a domain vouches for its users' keys.
const PEERPOST_LABEL: &str = "_peerpost.";
/// The longest a `_peerpost` lookup may take.
pub const OWNERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// TXT strings read from one answer (the rest are ignored).
const MAX_OWNERSHIP_TXT: usize = 1024;

/// `_peerpost.DOMAIN` TXT lookups for address ownership (issue #18; docs/design.md "Address
/// ownership"), with the intake's resolver settings: from the `dns_records` file only when
/// one is configured (a name not in it has no records), else the system resolver. Read with
/// [`crate::crypto::record::Vouch::parse`] by the caller.
pub struct OwnershipDns {
    resolver: Option<MessageAuthenticator>,
    fixed: Option<HashMap<Box<str>, Vec<String>>>,
}

impl std::fmt::Debug for OwnershipDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnershipDns")
            .field("fixed", &self.fixed.as_ref().map(HashMap::len))
            .finish()
    }
}

impl OwnershipDns {
    /// `dns_records`: `[smtp] dns_records` (read and checked here, as for the intake).
    pub fn new(dns_records: Option<&Path>) -> Result<OwnershipDns, Error> {
        match dns_records {
            Some(path) => Ok(OwnershipDns {
                resolver: None,
                fixed: Some(load_records(path)?.peerpost),
            }),
            None => Ok(OwnershipDns {
                resolver: Some(
                    MessageAuthenticator::new_system_conf()
                        .map_err(|e| Error::Resolver(e.to_string()))?,
                ),
                fixed: None,
            }),
        }
    }

    /// The TXT strings at `_peerpost.DOMAIN`: empty when the name does not exist or has none
    /// (the domain vouches for nobody); `Err` for a temporary failure (a time-out, SERVFAIL),
    /// when nothing can be concluded.
    pub async fn peerpost_txt(&self, domain: &str) -> Result<Vec<String>, String> {
        let Ok(name) = fqdn(&format!("{PEERPOST_LABEL}{domain}")) else {
            return Ok(Vec::new()); // not a DNS name (e.g. non-ASCII): nothing can vouch
        };
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.get(&name).cloned().unwrap_or_default());
        }
        let Some(a) = &self.resolver else {
            return Ok(Vec::new());
        };
        use mail_auth::hickory_resolver::proto::rr::{Name, RData};
        let name = Name::from_str_relaxed(&*name).map_err(|e| e.to_string())?;
        let lookup =
            match tokio::time::timeout(OWNERSHIP_TIMEOUT, a.resolver().txt_lookup(name)).await {
                Err(_) => return Err(format!("no DNS answer for {domain} in time")),
                Ok(Err(e)) => {
                    return match mail_auth::Error::from(e) {
                        mail_auth::Error::Dns(DnsError::RecordNotFound(_)) => Ok(Vec::new()),
                        e => Err(e.to_string()),
                    };
                }
                Ok(Ok(l)) => l,
            };
        let mut out = Vec::new();
        for record in lookup.answers() {
            if let RData::TXT(txt) = &record.data {
                let mut entry = Vec::new();
                for part in txt.txt_data.iter() {
                    entry.extend_from_slice(part);
                }
                out.push(String::from_utf8_lossy(&entry).into_owned());
                if out.len() >= MAX_OWNERSHIP_TXT {
                    break;
                }
            }
        }
        Ok(out)
    }
}

// --- the records file ---------------------------------------------------------------

/// A resolver cache that holds fixed answers. With `miss` set, a name it lacks is answered
/// with `miss` ("does not exist") instead of going to DNS.
struct Fixed<K, V> {
    map: HashMap<K, V>,
    miss: Option<V>,
}

impl<K, V> Default for Fixed<K, V> {
    fn default() -> Self {
        Fixed {
            map: HashMap::new(),
            miss: None,
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for Fixed<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(name).cloned().or_else(|| self.miss.clone())
    }

    fn remove<Q>(&self, _: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    /// Answers are fixed: what the resolver learns is not kept (it asks again next time).
    fn insert(&self, _: K, _: V, _: Instant) {}
}

/// The parsed records file (or nothing: the system resolver answers everything).
#[derive(Default)]
pub struct Records {
    fixed: bool,
    txt: Fixed<Box<str>, Txt>,
    mx: Fixed<Box<str>, RecordSet<MX>>,
    a: Fixed<Box<str>, RecordSet<Ipv4Addr>>,
    aaaa: Fixed<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: Fixed<IpAddr, RecordSet<Box<str>>>,
    /// `_peerpost.DOMAIN` TXT records (address ownership; several per name).
    peerpost: HashMap<Box<str>, Vec<String>>,
}

/// mail-auth's parameters with every cache pointing into `Records`.
type Params<'x, P> = Parameters<
    'x,
    P,
    Fixed<Box<str>, Txt>,
    Fixed<Box<str>, RecordSet<MX>>,
    Fixed<Box<str>, RecordSet<Ipv4Addr>>,
    Fixed<Box<str>, RecordSet<Ipv6Addr>>,
    Fixed<IpAddr, RecordSet<Box<str>>>,
>;

impl Records {
    fn params<P>(&self, p: P) -> Params<'_, P> {
        Parameters::new(p)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ptr_cache(&self.ptr)
            .with_ipv4_cache(&self.a)
            .with_ipv6_cache(&self.aaaa)
    }

    /// How many names have answers (all types).
    pub fn len(&self) -> usize {
        self.peerpost.len()
            + self.txt.map.len()
            + self.mx.map.len()
            + self.a.map.len()
            + self.aaaa.map.len()
            + self.ptr.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn load_records(path: &Path) -> Result<Records, Error> {
    let read = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_FILE {
        return Err(read(std::io::Error::other(format!(
            "larger than {MAX_FILE} bytes"
        ))));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse_records(&text).map_err(|source| Error::Records {
        path: path.to_path_buf(),
        source,
    })
}

fn set<T>(v: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: Arc::from(v.into_boxed_slice()),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

/// Parses a DNS records file: one record a line, `NAME [IN] TYPE VALUE`, blank lines and
/// lines starting with `#` or `;` ignored. Types: `TXT` (one or more "quoted strings",
/// joined, or the rest of the line unquoted; a DKIM key under `S._domainkey.D`, a DMARC
/// policy under `_dmarc.D`, or an SPF record `v=spf1 …`; one TXT record per name), `A`,
/// `AAAA`, `MX PREFERENCE HOST` and `PTR` (NAME is the IP address). Names are matched
/// case-insensitively; a trailing dot is optional.
pub fn parse_records(text: &str) -> Result<Records, RecordsError> {
    let not_found = mail_auth::Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain));
    let mut r = Records {
        fixed: true,
        ..Records::default()
    };
    let mut mx: HashMap<Box<str>, Vec<MX>> = HashMap::new();
    let mut a: HashMap<Box<str>, Vec<Ipv4Addr>> = HashMap::new();
    let mut aaaa: HashMap<Box<str>, Vec<Ipv6Addr>> = HashMap::new();
    let mut ptr: HashMap<IpAddr, Vec<Box<str>>> = HashMap::new();
    let mut count = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| RecordsError {
            line: line_no,
            message,
        };
        if raw.len() > MAX_LINE {
            return Err(err(format!("longer than {MAX_LINE} bytes")));
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        count += 1;
        if count > MAX_RECORDS {
            return Err(err(format!("more than {MAX_RECORDS} records")));
        }
        let (name, rest) = split_word(line);
        let (mut kind, mut rest) = split_word(rest);
        if kind.eq_ignore_ascii_case("IN") {
            (kind, rest) = split_word(rest);
        }
        if rest.is_empty() {
            return Err(err(format!(
                "expected NAME TYPE VALUE (e.g. `example.org TXT \"v=spf1 ip4:192.0.2.1 -all\"`), got {:?}",
                short(line)
            )));
        }
        match kind.to_ascii_uppercase().as_str() {
            "TXT" if fqdn(name).is_ok_and(|k| k.starts_with(PEERPOST_LABEL)) => {
                // Address ownership (docs/design.md): several per name, each well formed.
                let key = fqdn(name).map_err(&err)?;
                let value = txt_value(rest).map_err(&err)?;
                match Vouch::parse(&value) {
                    Ok(Some(_)) => r.peerpost.entry(key).or_default().push(value),
                    Ok(None) => {
                        return Err(err(format!(
                            "a TXT record under {key} must start \"v=peerpost1;\""
                        )));
                    }
                    Err(e) => return Err(err(format!("not a valid peerpost record: {e}"))),
                }
            }
            "TXT" => {
                let key = fqdn(name).map_err(&err)?;
                let value = txt_value(rest).map_err(&err)?;
                let parsed = txt_record(&key, &value).map_err(&err)?;
                if r.txt.map.insert(key.clone(), parsed).is_some() {
                    return Err(err(format!(
                        "a second TXT record for {key} (one TXT record per name)"
                    )));
                }
            }
            "A" => {
                let ip: Ipv4Addr = rest
                    .parse()
                    .map_err(|_| err(format!("{:?} is not an IPv4 address", short(rest))))?;
                a.entry(fqdn(name).map_err(&err)?).or_default().push(ip);
            }
            "AAAA" => {
                let ip: Ipv6Addr = rest
                    .parse()
                    .map_err(|_| err(format!("{:?} is not an IPv6 address", short(rest))))?;
                aaaa.entry(fqdn(name).map_err(&err)?).or_default().push(ip);
            }
            "MX" => {
                let (pref, host) = split_word(rest);
                let preference: u16 = pref.parse().map_err(|_| {
                    err(format!(
                        "MX wants PREFERENCE HOST (e.g. `10 mx.example.org`), got {:?}",
                        short(rest)
                    ))
                })?;
                if host.is_empty() || host.contains(char::is_whitespace) {
                    return Err(err(format!("MX host {:?} is not one name", short(host))));
                }
                let host = fqdn(host).map_err(&err)?;
                mx.entry(fqdn(name).map_err(&err)?).or_default().push(MX {
                    exchanges: vec![host].into_boxed_slice(),
                    preference,
                });
            }
            "PTR" => {
                let ip: IpAddr = name.parse().map_err(|_| {
                    err(format!(
                        "PTR records are written `IP PTR HOST`; {:?} is not an IP address",
                        short(name)
                    ))
                })?;
                ptr.entry(ip.to_canonical())
                    .or_default()
                    .push(fqdn(rest).map_err(&err)?);
            }
            other => {
                return Err(err(format!(
                    "unknown record type {:?} (expected TXT, A, AAAA, MX or PTR)",
                    short(other)
                )));
            }
        }
    }
    for (k, mut v) in mx {
        v.sort_by_key(|m| m.preference);
        r.mx.map.insert(k, set(v));
    }
    r.a.map = a.into_iter().map(|(k, v)| (k, set(v))).collect();
    r.aaaa.map = aaaa.into_iter().map(|(k, v)| (k, set(v))).collect();
    r.ptr.map = ptr.into_iter().map(|(k, v)| (k, set(v))).collect();
    r.txt.miss = Some(Txt::Error(not_found));
    r.mx.miss = Some(set(Vec::new()));
    r.a.miss = Some(set(Vec::new()));
    r.aaaa.miss = Some(set(Vec::new()));
    r.ptr.miss = Some(set(Vec::new()));
    Ok(r)
}

fn short(s: &str) -> String {
    let mut t: String = s.chars().take(60).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// A name as mail-auth looks it up: lower case with a trailing dot.
fn fqdn(name: &str) -> Result<Box<str>, String> {
    let n = name.trim_end_matches('.');
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(format!("{:?} is not a domain name", short(name)));
    }
    Ok(format!("{}.", n.to_ascii_lowercase()).into_boxed_str())
}

/// `"part one" "part two"` → `part onepart two` (zone-file style); unquoted: as is.
fn txt_value(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.starts_with('"') {
        return Ok(s.to_string());
    }
    let mut out = String::new();
    let mut chars = s.chars();
    loop {
        match chars.next() {
            None => return Ok(out),
            Some(c) if c.is_whitespace() => continue,
            Some('"') => loop {
                match chars.next() {
                    None => return Err("unterminated \"quoted string\"".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => out.push(c),
                        None => return Err("unterminated \"quoted string\"".into()),
                    },
                    Some(c) => out.push(c),
                }
            },
            Some(c) => {
                return Err(format!(
                    "unexpected {c:?} after a quoted string (quote every part)"
                ));
            }
        }
    }
}

/// Parses a TXT value as the record its name says it is.
fn txt_record(name: &str, value: &str) -> Result<Txt, String> {
    let bytes = value.as_bytes();
    if name.contains("._domainkey.") {
        DomainKey::parse(bytes)
            .map(Txt::from)
            .map_err(|e| format!("not a valid DKIM key record for {name}: {e}"))
    } else if name.starts_with("_dmarc.") {
        Dmarc::parse(bytes)
            .map(Txt::from)
            .map_err(|e| format!("not a valid DMARC record for {name}: {e}"))
    } else if bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"v=spf1") {
        Spf::parse(bytes)
            .map(Txt::from)
            .map_err(|e| format!("not a valid SPF record for {name}: {e}"))
    } else {
        Err(format!(
            "unsupported TXT record for {name}: expected a DKIM key under \
             SELECTOR._domainkey.DOMAIN, a DMARC policy under _dmarc.DOMAIN, or an SPF \
             record \"v=spf1 …\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `dns_records` fuzz target: a TXT value with a multi-byte character
    /// within its first six bytes panicked on a str slice instead of being refused.
    #[test]
    fn a_txt_value_with_a_multibyte_character_early_is_refused_not_a_panic() {
        for value in ["v=spf\u{78d}esl.org", "v=sp\u{78d}"] {
            match txt_record("example.org", value) {
                Err(e) => assert!(e.contains("unsupported TXT record"), "{e}"),
                Ok(_) => panic!("{value:?} was taken as a record"),
            }
        }
    }

    const KEY: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn err(text: &str) -> RecordsError {
        match parse_records(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn records_file_parses_every_type() {
        let text = format!(
            "# test zone\n\
             \n\
             sel._domainkey.Example.ORG. TXT \"{KEY}\"\n\
             example.org IN TXT \"v=spf1 ip4:127.0.0.1\" \" -all\"\n\
             _dmarc.example.org TXT v=DMARC1; p=reject\n\
             ; comment\n\
             mail.example.org A 127.0.0.1\n\
             mail.example.org A 127.0.0.2\n\
             mail.example.org AAAA ::1\n\
             example.org MX 20 mx2.example.org\n\
             example.org MX 10 mx1.example.org.\n\
             127.0.0.1 PTR mail.example.org\n"
        );
        let r = parse_records(&text).unwrap();
        assert_eq!(r.len(), 3 + 1 + 1 + 1 + 1);
        assert!(matches!(
            r.txt.get("sel._domainkey.example.org."),
            Some(Txt::DomainKey(_))
        ));
        assert!(matches!(r.txt.get("example.org."), Some(Txt::Spf(_))));
        assert!(matches!(
            r.txt.get("_dmarc.example.org."),
            Some(Txt::Dmarc(_))
        ));
        // A name not in the file does not exist; nothing goes to DNS.
        assert!(matches!(
            r.txt.get("other.example."),
            Some(Txt::Error(mail_auth::Error::Dns(DnsError::RecordNotFound(
                _
            ))))
        ));
        assert_eq!(r.a.get("mail.example.org.").unwrap().rrset.len(), 2);
        assert!(r.a.get("nope.example.").unwrap().rrset.is_empty());
        let mx = r.mx.get("example.org.").unwrap();
        assert_eq!(mx.rrset[0].preference, 10);
        assert_eq!(&*mx.rrset[0].exchanges[0], "mx1.example.org.");
        let ptr = r.ptr.get(&"127.0.0.1".parse::<IpAddr>().unwrap()).unwrap();
        assert_eq!(&*ptr.rrset[0], "mail.example.org.");
    }

    #[test]
    fn peerpost_txt_records_are_several_per_name() {
        let fp = "0123456789abcdef0123456789abcdef01234567";
        let text = format!(
            "_peerpost.Example.org TXT \"v=peerpost1; a=alice; k={fp}\"\n\
             _peerpost.example.org. TXT \"v=peerpost1; a=bob; \" \"k={fp}\"\n"
        );
        let r = parse_records(&text).unwrap();
        assert_eq!(r.peerpost.get("_peerpost.example.org.").unwrap().len(), 2);
        let e = err("_peerpost.example.org TXT \"v=spf1 -all\"\n");
        assert!(e.message.contains("v=peerpost1"), "{e}");
        let e = err("_peerpost.example.org TXT \"v=peerpost1; a=alice; k=12\"\n");
        assert!(e.message.contains("not a valid peerpost record"), "{e}");
    }

    #[tokio::test]
    async fn ownership_answers_come_from_the_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.txt");
        let fp = "0123456789abcdef0123456789abcdef01234567";
        std::fs::write(
            &path,
            format!("_peerpost.example.org TXT \"v=peerpost1; a=alice; k={fp}\"\n"),
        )
        .unwrap();
        let dns = OwnershipDns::new(Some(&path)).unwrap();
        let got = dns.peerpost_txt("EXAMPLE.org").await.unwrap();
        assert_eq!(got, vec![format!("v=peerpost1; a=alice; k={fp}")]);
        assert!(dns.peerpost_txt("gmail.test").await.unwrap().is_empty());
        assert!(dns.peerpost_txt("bad..name").await.unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("example.org\n", 1, "expected NAME TYPE VALUE"),
            ("# c\nexample.org TXT\n", 2, "expected NAME TYPE VALUE"),
            (
                "\n\nexample.org CNAME x.example\n",
                3,
                "unknown record type",
            ),
            ("example.org TXT \"v=spf1 -all\n", 1, "unterminated"),
            ("example.org TXT hello world\n", 1, "unsupported TXT record"),
            (
                "s._domainkey.example.org TXT \"p=!!\"\n",
                1,
                "not a valid DKIM key",
            ),
            ("_dmarc.example.org TXT \"v=DMARC1; p=\"\n", 1, "DMARC"),
            ("host A 300.1.1.1\n", 1, "not an IPv4 address"),
            ("host AAAA 127.0.0.1\n", 1, "not an IPv6 address"),
            ("host MX mx.example\n", 1, "MX wants PREFERENCE HOST"),
            ("mail.example PTR host\n", 1, "not an IP address"),
            ("exa mple.org\n", 1, "expected NAME TYPE VALUE"),
            ("bad..name A 127.0.0.1\n", 1, "not a domain name"),
            (
                "example.org TXT \"v=spf1 -all\"\nexample.org TXT \"v=spf1 +all\"\n",
                2,
                "a second TXT record",
            ),
        ];
        for (text, line, needle) in cases {
            let e = err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
        let long = format!("example.org TXT \"{}\"\n", "a".repeat(MAX_LINE));
        assert!(err(&long).message.contains("longer than"));
    }

    fn verifier(policy: Policy) -> (tempfile::TempDir, Verifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.txt");
        std::fs::write(
            &path,
            "example.org TXT \"v=spf1 ip4:192.0.2.1 -all\"\n\
             _dmarc.example.org TXT \"v=DMARC1; p=reject\"\n",
        )
        .unwrap();
        let settings = Settings {
            policy,
            dns_records: Some(path),
        };
        (dir, Verifier::new(&settings, "mx.test").unwrap())
    }

    const UNSIGNED: &[u8] = b"From: bob@example.org\r\nSubject: x\r\n\r\nhi\r\n";

    #[tokio::test]
    async fn unsigned_mail_says_dkim_none_and_dmarc_follows_spf() {
        let (_d, v) = verifier(Policy::Enforce);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let Verdict::Accept { header } = v
            .check(UNSIGNED, ip, "[192.0.2.1]", "bob@example.org")
            .await
        else {
            panic!("refused")
        };
        assert!(
            header.starts_with("Authentication-Results: mx.test;\r\n\tdkim=none;"),
            "{header}"
        );
        assert!(header.contains("smtp.mailfrom=bob@example.org"), "{header}");
        assert!(
            header.contains("dmarc=pass header.from=example.org"),
            "{header}"
        );
        assert!(
            header.ends_with("\r\n") && !header.contains("\n\r\n"),
            "{header}"
        );
        // From another address SPF fails, nothing passes DMARC, p=reject: refused.
        let other: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        let v2 = v
            .check(UNSIGNED, other, "evil.example", "bob@example.org")
            .await;
        assert_eq!(
            v2,
            Verdict::Refuse("550 5.7.1 Rejected by the DMARC policy of example.org\r\n".into())
        );
    }

    /// A name server that never answers: the checks hit the timeout, which is temporary.
    #[tokio::test]
    async fn timeouts_are_temporary() {
        use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig};
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ns = NameServerConfig::udp(silent.local_addr().unwrap().ip());
        let mut conn = ConnectionConfig::udp();
        conn.port = silent.local_addr().unwrap().port();
        ns.connections = vec![conn];
        let verifier = |policy| Verifier {
            authenticator: MessageAuthenticator::new(
                ResolverConfig::from_name_servers(vec![ns.clone()]),
                ResolverOpts::default(),
            )
            .unwrap(),
            records: Records::default(),
            authserv_id: "mx.test".into(),
            policy,
            timeout: Duration::from_millis(300),
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let started = Instant::now();
        let got = verifier(Policy::Enforce)
            .check(UNSIGNED, ip, "h.example", "bob@example.org")
            .await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(&got, Verdict::Refuse(r) if r.starts_with("451 4.7.0")),
            "{got:?}"
        );
        let got = verifier(Policy::Tag)
            .check(UNSIGNED, ip, "h.example", "bob@example.org")
            .await;
        assert!(
            matches!(&got, Verdict::Accept { header } if header.contains("dmarc=temperror")),
            "{got:?}"
        );
    }

    /// A name server answering SERVFAIL to everything: a temporary DNS error.
    #[tokio::test]
    async fn servfail_is_temporary() {
        use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig};
        use std::sync::atomic::{AtomicBool, Ordering};
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf)
                    && n >= 12
                {
                    buf[2] |= 0x80; // a response
                    buf[3] = 0x80 | 2; // RA, SERVFAIL
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        let mut ns = NameServerConfig::udp(addr.ip());
        let mut conn = ConnectionConfig::udp();
        conn.port = addr.port();
        ns.connections = vec![conn];
        let v = Verifier {
            authenticator: MessageAuthenticator::new(
                ResolverConfig::from_name_servers(vec![ns]),
                ResolverOpts::default(),
            )
            .unwrap(),
            records: Records::default(),
            authserv_id: "mx.test".into(),
            policy: Policy::Enforce,
            timeout: Duration::from_secs(10),
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let got = v.check(UNSIGNED, ip, "h.example", "bob@example.org").await;
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert!(
            matches!(&got, Verdict::Refuse(r) if r.starts_with("451 4.7.0")),
            "{got:?}"
        );
    }

    #[test]
    fn own_results_are_stripped_others_kept() {
        use crate::delivery::headers::authserv_id_of;
        let msg = b"Received: x\r\n\
Authentication-Results: (comment) MX.Example;\r\n\tdkim=pass header.d=evil.example\r\n\
Authentication-Results: other.example; spf=fail\r\n\
Authentication-Results:mx.example; dmarc=pass\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example; in the body stays\r\n";
        let out = String::from_utf8(strip_own_results(msg, "mx.example")).unwrap();
        assert_eq!(
            out,
            "Received: x\r\n\
Authentication-Results: other.example; spf=fail\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.example; in the body stays\r\n"
        );
        // Nothing to strip: the bytes are unchanged.
        let plain = b"Subject: x\n\nbody\n";
        assert_eq!(strip_own_results(plain, "mx.example"), plain.to_vec());
        let mut inplace = b"Trace: 1\r\n".to_vec();
        inplace.extend_from_slice(msg);
        strip_own_results_in(&mut inplace, 10, "mx.example");
        assert_eq!(&inplace[10..], strip_own_results(msg, "mx.example"));
        assert!(inplace.starts_with(b"Trace: 1\r\n"));
        assert_eq!(
            authserv_id_of(b" (a (nested)) host.example ; x"),
            Some(&b"host.example"[..])
        );
        assert_eq!(authserv_id_of(b"   "), None);
    }
}
