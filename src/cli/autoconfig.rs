//! `peerpost autoconfig [--format thunderbird|apple]`: the client settings of this node, in
//! the two formats mail clients import, so a user points a client at the node without typing
//! ports: Thunderbird's autoconfig XML (clientConfig 1.1, what Thunderbird fetches from
//! `autoconfig.<domain>/mail/config-v1.1.xml` or reads from its `isp/` directory) and an
//! Apple configuration profile (`.mobileconfig`, a `com.apple.mail.managed` payload).
//!
//! Everything comes from the node's config: the IMAP (IMAPS, IMAP with STARTTLS), POP3 and
//! submission listeners that are on, in the order a client should prefer them (implicit TLS
//! first, RFC 8314). The user name is the address, as the servers accept it.

use std::net::SocketAddr;

use anyhow::{Result, bail};

use super::open;
use crate::config::Config;
use crate::home::Home;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Thunderbird autoconfig XML (clientConfig version 1.1).
    Thunderbird,
    /// Apple configuration profile (.mobileconfig plist, com.apple.mail.managed).
    Apple,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which client format to print.
    #[arg(long, value_enum, default_value = "thunderbird")]
    pub format: Format,
    /// The address the account is for (default: identity.address of the config).
    #[arg(long, value_name = "ADDRESS")]
    pub address: Option<String>,
    /// Host name clients reach the node by (default: the IP the listeners are bound to; needed
    /// when they listen on every interface, 0.0.0.0 or ::).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

/// How a client talks TLS to one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (IMAPS, POP3S, submissions).
    Implicit,
    /// Plain connection upgraded with STARTTLS / STLS; the servers refuse login before it.
    StartTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Pop3,
    Smtp,
}

/// One listener a client can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub security: Security,
}

/// The account a client is configured for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub address: String,
    /// Incoming servers, preferred first.
    pub incoming: Vec<Server>,
    /// Outgoing (submission) servers, preferred first.
    pub outgoing: Vec<Server>,
}

/// The listeners of a config, as a client sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    pub imaps: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub pop3s: Option<SocketAddr>,
    pub pop3: Option<SocketAddr>,
    /// Submission over implicit TLS (`[smtp] submission_tls`, RFC 8314 port 465); when set,
    /// the account offers it before STARTTLS submission.
    pub submission_tls: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
}

impl Listeners {
    pub fn of(config: &Config) -> Listeners {
        Listeners {
            imaps: config.imap.tls_listen,
            imap: config.imap.listen,
            pop3s: config.pop3.tls_listen,
            pop3: config.pop3.listen,
            submission_tls: config.smtp.submission_tls,
            submission: config.smtp.submission,
        }
    }
}

impl Account {
    /// The account for `address` on these listeners; `host` names unspecified (wildcard)
    /// binds.
    pub fn new(address: &str, listeners: &Listeners, host: Option<&str>) -> Result<Account> {
        let server = |protocol, addr: Option<SocketAddr>, security| -> Result<Option<Server>> {
            let Some(addr) = addr else { return Ok(None) };
            let host = match host {
                Some(h) => h.to_string(),
                None if addr.ip().is_unspecified() => bail!(
                    "a listener is bound to {addr} (every interface): give --host NAME, the name \
                     clients reach this machine by"
                ),
                None => addr.ip().to_string(),
            };
            Ok(Some(Server {
                protocol,
                host,
                port: addr.port(),
                security,
            }))
        };
        use Protocol::*;
        use Security::*;
        let incoming = [
            server(Imap, listeners.imaps, Implicit)?,
            server(Imap, listeners.imap, StartTls)?,
            server(Pop3, listeners.pop3s, Implicit)?,
            server(Pop3, listeners.pop3, StartTls)?,
        ];
        let outgoing = [
            server(Smtp, listeners.submission_tls, Implicit)?,
            server(Smtp, listeners.submission, StartTls)?,
        ];
        let account = Account {
            address: address.to_string(),
            incoming: incoming.into_iter().flatten().collect(),
            outgoing: outgoing.into_iter().flatten().collect(),
        };
        if account.incoming.is_empty() {
            bail!(
                "no IMAP or POP3 listener is on in the config: a client has nothing to read from"
            );
        }
        if account.outgoing.is_empty() {
            bail!("smtp.submission is off in the config: a client has nothing to send through");
        }
        Ok(account)
    }

    fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// Thunderbird's autoconfig format, clientConfig version 1.1.
    pub fn thunderbird_xml(&self) -> String {
        let domain = xml_escape(self.domain());
        let user = xml_escape(&self.address);
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str("<clientConfig version=\"1.1\">\n");
        x.push_str(&format!("  <emailProvider id=\"{domain}\">\n"));
        x.push_str(&format!("    <domain>{domain}</domain>\n"));
        x.push_str(&format!(
            "    <displayName>peerpost node of {user}</displayName>\n"
        ));
        x.push_str("    <displayShortName>peerpost</displayShortName>\n");
        for (tag, servers) in [
            ("incomingServer", &self.incoming),
            ("outgoingServer", &self.outgoing),
        ] {
            for s in servers {
                let kind = match s.protocol {
                    Protocol::Imap => "imap",
                    Protocol::Pop3 => "pop3",
                    Protocol::Smtp => "smtp",
                };
                let socket = match s.security {
                    Security::Implicit => "SSL",
                    Security::StartTls => "STARTTLS",
                };
                x.push_str(&format!("    <{tag} type=\"{kind}\">\n"));
                x.push_str(&format!(
                    "      <hostname>{}</hostname>\n",
                    xml_escape(&s.host)
                ));
                x.push_str(&format!("      <port>{}</port>\n", s.port));
                x.push_str(&format!("      <socketType>{socket}</socketType>\n"));
                x.push_str("      <authentication>password-cleartext</authentication>\n");
                x.push_str(&format!("      <username>{user}</username>\n"));
                x.push_str(&format!("    </{tag}>\n"));
            }
        }
        x.push_str("  </emailProvider>\n");
        x.push_str("</clientConfig>\n");
        x
    }

    /// An Apple configuration profile with one Mail account (com.apple.mail.managed). A
    /// profile holds one incoming and one outgoing server: the preferred IMAP one and the
    /// preferred submission one. Identifiers and UUIDs derive from the address, so importing
    /// a newer profile replaces the older one instead of adding a second account.
    pub fn apple_mobileconfig(&self) -> Result<String> {
        let Some(inc) = self
            .incoming
            .iter()
            .find(|s| s.protocol == Protocol::Imap)
            .or_else(|| self.incoming.first())
        else {
            bail!("no incoming server")
        };
        let Some(out) = self.outgoing.first() else {
            bail!("no outgoing server")
        };
        let account_type = match inc.protocol {
            Protocol::Pop3 => "EmailTypePOP",
            _ => "EmailTypeIMAP",
        };
        let user = xml_escape(&self.address);
        let reverse = self.domain().split('.').rev().collect::<Vec<_>>().join(".");
        // Reverse-DNS identifier: letters, digits, '-' and '.' only.
        let local: String = self
            .address
            .split('@')
            .next()
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let ident = xml_escape(&format!("{reverse}.peerpost.{local}"));
        let uuid = |what: &str| {
            let h = crate::crypto::hash(
                format!("peerpost mobileconfig {what} {}", self.address).as_bytes(),
            );
            uuid_text(&h)
        };
        // Apple's UseSSL covers both: implicit TLS on the TLS ports, STARTTLS on the others.
        Ok(format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>PayloadContent</key>
  <array>
    <dict>
      <key>EmailAccountDescription</key>
      <string>peerpost ({user})</string>
      <key>EmailAccountName</key>
      <string>{user}</string>
      <key>EmailAccountType</key>
      <string>{account_type}</string>
      <key>EmailAddress</key>
      <string>{user}</string>
      <key>IncomingMailServerAuthentication</key>
      <string>EmailAuthPassword</string>
      <key>IncomingMailServerHostName</key>
      <string>{inc_host}</string>
      <key>IncomingMailServerPortNumber</key>
      <integer>{inc_port}</integer>
      <key>IncomingMailServerUseSSL</key>
      <true/>
      <key>IncomingMailServerUsername</key>
      <string>{user}</string>
      <key>OutgoingMailServerAuthentication</key>
      <string>EmailAuthPassword</string>
      <key>OutgoingMailServerHostName</key>
      <string>{out_host}</string>
      <key>OutgoingMailServerPortNumber</key>
      <integer>{out_port}</integer>
      <key>OutgoingMailServerUseSSL</key>
      <true/>
      <key>OutgoingMailServerUsername</key>
      <string>{user}</string>
      <key>OutgoingPasswordSameAsIncomingPassword</key>
      <true/>
      <key>PayloadDisplayName</key>
      <string>peerpost mail ({user})</string>
      <key>PayloadIdentifier</key>
      <string>{ident}.mail</string>
      <key>PayloadType</key>
      <string>com.apple.mail.managed</string>
      <key>PayloadUUID</key>
      <string>{mail_uuid}</string>
      <key>PayloadVersion</key>
      <integer>1</integer>
    </dict>
  </array>
  <key>PayloadDisplayName</key>
  <string>peerpost ({user})</string>
  <key>PayloadIdentifier</key>
  <string>{ident}</string>
  <key>PayloadType</key>
  <string>Configuration</string>
  <key>PayloadUUID</key>
  <string>{profile_uuid}</string>
  <key>PayloadVersion</key>
  <integer>1</integer>
</dict>
</plist>
"#,
            inc_host = xml_escape(&inc.host),
            inc_port = inc.port,
            out_host = xml_escape(&out.host),
            out_port = out.port,
            mail_uuid = uuid("mail"),
            profile_uuid = uuid("profile"),
        ))
    }
}

/// A UUID-formatted (version 4 layout, variant 1) text from 16 of these bytes.
fn uuid_text(h: &[u8; 32]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = crate::crypto::hex(&b).to_uppercase();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Text for XML character data and attribute values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

pub fn execute(args: Args, home: &Home) -> Result<()> {
    let config = open::config(home)?;
    let address = match args.address.as_deref().unwrap_or(&config.address) {
        "" => bail!("the config has no identity.address: give --address you@example.org"),
        a => crate::crypto::record::normalize_address(a)
            .map_err(|why| anyhow::anyhow!("--address {a:?}: {why}"))?,
    };
    let account = Account::new(&address, &Listeners::of(&config), args.host.as_deref())?;
    let text = match args.format {
        Format::Thunderbird => account.thunderbird_xml(),
        Format::Apple => account.apple_mobileconfig()?,
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners() -> Listeners {
        Listeners {
            imaps: Some("127.0.0.1:1993".parse().unwrap()),
            imap: Some("127.0.0.1:1143".parse().unwrap()),
            pop3s: None,
            pop3: None,
            submission_tls: None,
            submission: Some("127.0.0.1:2587".parse().unwrap()),
        }
    }

    #[test]
    fn implicit_tls_submission_comes_first_when_there_is_one() {
        let mut l = listeners();
        let a = Account::new("a@b.example", &l, None).unwrap();
        assert_eq!(a.outgoing.len(), 1);
        assert_eq!(a.outgoing[0].security, Security::StartTls);
        l.submission_tls = Some("127.0.0.1:2465".parse().unwrap());
        let a = Account::new("a@b.example", &l, None).unwrap();
        assert_eq!(
            a.outgoing[0],
            Server {
                protocol: Protocol::Smtp,
                host: "127.0.0.1".into(),
                port: 2465,
                security: Security::Implicit
            }
        );
        assert_eq!(a.outgoing[1].port, 2587);
        let xml = a.thunderbird_xml();
        let first_out = xml.find("<outgoingServer").unwrap();
        assert!(xml[first_out..].find("2465") < xml[first_out..].find("2587"));
        assert!(
            a.apple_mobileconfig()
                .unwrap()
                .contains("<integer>2465</integer>")
        );
    }

    #[test]
    fn wildcard_binds_need_a_host_and_text_is_escaped() {
        let mut l = listeners();
        l.imap = Some("0.0.0.0:1143".parse().unwrap());
        let err = Account::new("a@b.example", &l, None).unwrap_err();
        assert!(err.to_string().contains("--host"), "{err}");
        let a = Account::new("a@b.example", &l, Some("mail<&>.example")).unwrap();
        let xml = a.thunderbird_xml();
        assert!(xml.contains("mail&lt;&amp;&gt;.example"), "{xml}");
        assert!(!xml.contains("mail<&>"));
    }

    #[test]
    fn no_submission_is_an_error() {
        let mut l = listeners();
        l.submission = None;
        assert!(Account::new("a@b.example", &l, None).is_err());
    }

    #[test]
    fn uuids_are_stable_and_shaped() {
        let a = Account::new("a@b.example", &listeners(), None).unwrap();
        let p1 = a.apple_mobileconfig().unwrap();
        assert_eq!(p1, a.apple_mobileconfig().unwrap());
        let u = uuid_text(&[0xab; 32]);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
