//! The config file `peerpost init` writes.

/// The config file `peerpost init` writes: every setting, commented, at its default.
pub fn template(address: &str) -> String {
    format!(
        r#"# peerpost configuration, written by `peerpost init`.
# Every setting is shown at its default. Relative paths are relative to this directory;
# "~/" is your home directory. Check it with `peerpost status`.

[identity]
# Your mail address. The keys in keys/ are the identity; this is what they are published as.
address = "{address}"

[overlay]
# Multiaddrs the node listens on for other peerpost nodes (TCP and QUIC).
listen = ["/ip4/0.0.0.0/tcp/4040", "/ip4/0.0.0.0/udp/4040/quic-v1"]
# Nodes to join the ring through, e.g. ["/ip4/192.0.2.10/tcp/4040/p2p/12D3KooW..."].
bootstrap = []
# Find other nodes on the local network with mDNS.
mdns = true
# Upper bound on simultaneous overlay connections.
max_connections = 256
# Pre-shared key file of a private (organizational) ring; "" = the global ring.
psk_file = ""
# Prometheus metrics endpoint (loopback); "" disables it.
metrics = "127.0.0.1:9464"
# The ring authority's Ed25519 key (64 hex digits): a record it certifies may change the
# key pinned for an address; "" = none.
ring_authority = ""
# Can other nodes dial this one? "auto" = AutoNAT finds out (a node behind NAT then uses the
# ring without holding data for it); "yes" / "no" force it (e.g. "yes" on a server with a
# public address, "no" on a laptop that roams).
reachable = "auto"
# Ask the home router to forward the listen ports (UPnP IGD), so peers can dial this node
# without a relay. Off by default: it makes a program open a port in the router's firewall
# by request, without the router's admin, which many admins (and company networks) refuse;
# some routers' UPnP services have been attacked too. The mapped address is used only
# once AutoNAT confirms peers can dial it (needs reachable = "auto").
upnp = false
# The same through NAT-PMP (RFC 6886: UDP to the default gateway's port 5351; Apple
# routers, miniupnpd, many open-source firmwares). Off by default for the same reason:
# any program on the network may open ports this way, so many admins switch it off and
# a node should not rely on it without its owner saying so. The mapping (1 h, renewed
# every 30 min, deleted on shutdown) is used only once AutoNAT confirms it.
natpmp = false

[imap]
# IMAP with STARTTLS, and IMAP over implicit TLS. "" disables a listener.
listen = "127.0.0.1:1143"
tls_listen = "127.0.0.1:1993"

[pop3]
listen = "127.0.0.1:1110"
tls_listen = "127.0.0.1:1995"

[smtp]
# Intake: mail for you (e.g. forwarded by your old mail server). No authentication.
intake = "127.0.0.1:2525"
# Submission: mail from you to anyone. Requires the password set with `peerpost passwd`.
submission = "127.0.0.1:2587"
# Submission over implicit TLS (RFC 8314, what port 465 speaks), same rules; "" = off,
# e.g. "127.0.0.1:1465".
submission_tls = ""
# Largest message accepted.
max_message_size = "50MiB"
# DKIM, SPF and DMARC checks of mail taken by the intake (never of submission):
# "off"; "tag" adds an Authentication-Results header (and removes any that claims this
# host's name); "enforce" also refuses mail failing DMARC with p=reject (550), and asks the
# sender to retry after a temporary DNS error (451).
verify = "off"
# Answer those checks' DNS lookups from this file instead of DNS ("" = the system
# resolver). One record a line: `NAME TXT "..."`, `NAME A IP`, `NAME AAAA IP`,
# `NAME MX PREF HOST`, `IP PTR HOST`; names not in it do not exist.
dns_records = ""

[tls]
# Certificate and key of the IMAP/POP3/SMTP servers (PEM). init writes a self-signed pair.
cert = "tls/cert.pem"
key = "tls/key.pem"

[storage]
# Disk space this node gives to the ring for other users' fragments. You may store what
# your nodes contribute divided by the durability overhead.
contribution = "10GiB"

[durability]
# Your mail must survive the simultaneous loss of this fraction of the ring's nodes ...
failure_fraction = 0.6
# ... with at most this probability of losing any one message.
loss_probability = 1e-6
# New mail is placed in the ring (erasure-coded at the target above, in small bundles that
# are merged into 1 MiB ones once mail stops arriving) at most this many seconds after the
# previous backup pass, so mail is in the ring about this long after it was accepted.
backup_every_secs = 10

[smarthost]
# Mail to people outside the overlay (no directory record) leaves through this relay, e.g.
# host = "mail.example.org". "" = such mail bounces.
host = ""
port = 587
# "starttls" (required), "tls" (implicit, port 465) or "none" (a relay on loopback only).
tls = "starttls"
# Relay login; the password is the first line of password_file.
user = ""
password_file = ""
# The relay's certificate is checked against the web's root CAs; a relay with a private CA
# or a self-signed certificate: the PEM file of the certificates to trust instead.
ca_file = ""

[maildir]
# Whether `peerpost run` also mounts your mail as a Maildir over FUSE (needs /dev/fuse;
# `peerpost run --mount` / `--no-mount` override it; `peerpost mount` mounts on its own).
mount = false
# Where: `peerpost run` and `peerpost mount` mount here.
path = "~/Maildir"
# User that owns the files on the mount (Dovecot refuses root); "" = the invoking user.
owner = ""

[delivery]
# Mail not delivered after this long bounces back to you (a DSN in your INBOX).
give_up_after = "5d"
# First retry after a temporary failure; the delay doubles up to retry_max.
retry_first = "5s"
retry_max = "10m"
# How often your node collects mail left for you in the overlay while it was offline.
collect_every = "60s"
# Overlay mail whose From: is not the address that signed it: "mark" delivers it with
# peerpost=fail (from-mismatch) in its Authentication-Results; "refuse" drops it.
from_mismatch = "mark"

[devices]
# Your other devices (homes made with `peerpost key import --phrase`) get every change at
# once; this often, and whenever one connects, they also compare what they have.
sync_every = "10s"
# One of your devices backs your mailbox up into the ring (the others' changes reach it); if
# it has not been heard of for this long, another device takes the backup over.
backup_takeover = "3h"

[limits]
# Of each IMAP, POP3 and SMTP listener. Sessions at once; when all are taken, a new client
# takes the slot of the oldest session that has not logged in, from the address with the
# most sessions (a session that has logged in keeps its slot).
max_sessions = 256
# Sessions at once from one address (IPv6: one /64); more are told to try again later.
sessions_per_ip = 16
# A session that has not logged in by then is closed (the SMTP intake never logs in: this
# bounds its sessions too). Idle clients are closed sooner: 60 s before login.
login_within = "10m"
# No session lasts longer (mail clients reconnect).
session_max = "24h"
# A client that does not read what it is sent for this long is dropped.
write_timeout = "60s"

[stats]
# Share a few aggregate figures with the ring once a round (version, uptime bucket,
# storage offered and used, messages delivered, reachable or not), split into random shares
# so that no peer learns yours; never who mails whom. `peerpost stats` shows the ring's
# totals. false: send nothing (and hold nothing for others' statistics).
share = true
every = "1h"

[gateway]
# A node of a private ring (overlay.psk_file) that also joins the global ring and carries,
# between the two, directory lookups and sealed delivery notices (at most 65 KiB each) —
# nothing else: the ring's stored mail, fragments, inbox entries and backups stay inside.
# It publishes the ring members' certified records in the global ring and announces itself
# in both. `peerpost run --gateway` turns it on too. Its global side has its own peer key
# (derived from this device's) and store (gateway/store in the home).
enabled = false
# The global side listens here (not the ring's port) and dials these global peers.
listen = ["/ip4/0.0.0.0/tcp/4041"]
bootstrap = []
# Requests a minute one peer or one sender may make, and in all (then refused).
per_sender_per_minute = 60
per_minute = 600
"#
    )
}
