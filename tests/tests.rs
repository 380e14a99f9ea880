#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap freely
//! One integration-test binary (ripgrep's layout): each module is an area, tested the way a
//! user meets it: through the `peerpost` binary, or through a real child process.

// `peerpost init/key/passwd/status` through the binary: files, permissions, phrases, errors.
mod cli;
// What an admin installs: systemd units (verify), completions in bash, man pages, scripts/install, autoconfig.
mod admin;
// A `peerpost run` taking mail is SIGKILLed mid-stream; no acknowledged message is lost.
mod crash;
// `peerpost mount` through the real kernel: shell tools, other processes, remount, SIGKILL, errnos.
mod fs;
// Dovecot on the mount under ten concurrent imaplib clients (tests/data/imap_torture.py): no error in its log.
mod fs_concurrency;
// The IMAP server through `peerpost run`: imaplib (every command, STARTTLS, IMAPS, IDLE), hostile input, mutt.
mod imap;
// IMAP extensions through `peerpost run` with imaplib: QRESYNC, COPYUID, ESEARCH, BINARY, QUOTA, IMAP4rev2, SORT, THREAD.
mod imap_rfc;
// Ten imaplib clients at once for 20 s, every reply checked against the RFCs (tests/data/imap_torture.py).
mod imap_concurrency;
// IMAP extensions through imaplib: COMPRESS=DEFLATE (plain, STARTTLS, IMAPS, a zip bomb), THREAD=REFERENCES.
mod imap_ext;
// Durability: 60 % of a ring (the owners too) fail, mail survives, holders repair, `restore`
// rebuilds mailboxes from the phrase (in-process and through the binary); quota.
mod durability;
// Hostile clients against the real IMAP, POP3 and SMTP listeners: memory, MIME depth, slots, shutdown.
mod adversary_servers;
// DKIM/SPF/DMARC on the SMTP intake of `peerpost run` (tag, enforce, off), DNS from a records file.
mod mailauth;
// The OpenMetrics endpoint of `peerpost run`: parsed by prometheus_client, moved by a send, hostile HTTP.
mod metrics;
// Mail flow through real nodes: submission, the overlay (online and offline), smarthost, bounces.
mod flow;
// Several devices per user: two homes from one phrase share one live mailbox (issue #15).
mod devices;
// Who owns an address: outside addresses to the smarthost, arrival levels, From: mismatch, no clear-text fallback.
mod ownership;
// Decoders fed random and hostile bytes through the public API: typed errors, never panics.
mod formats;
// import (Maildir++, mbox) then export through the binary: same bytes, flags, folders, dates; mutt reads it.
mod mailbox;
// Many full nodes in one process: directory, objects, node loss, hostile peers.
mod overlay;
// Hostile peers in the overlay: stalled frames, inbox junk and strangers, record floods, skew.
mod adversary_overlay;
// Five `peerpost run` processes on loopback: status, lookup, clean stop.
mod overlay_procs;
// Organizational rings: `ring init/issue/join`, a private ring beside a global one, nothing
// crosses, a node without the PSK is shut out, status of a small ring, restore inside it.
mod rings;
// Postfix in front of (relay to the intake) and behind (STARTTLS + SASL smarthost, its 550 a DSN)
// `peerpost run`; submission over implicit TLS with smtplib.SMTP_SSL and swaks.
mod postfix;
// The POP3 server against Python's poplib (plain, STLS, TLS) and hostile raw input.
mod pop3;
// `peerpost run` serving SMTP intake and POP3 on one mailbox, through the binary.
mod run_mail;
// The SMTP intake against smtplib, swaks and hostile raw input.
mod smtp;
mod stats;
// `peerpost sync DIR` running: deliveries, flags (also by real mutt), deletions, moves, SIGKILL.
mod sync;
mod util;
// Laptops behind NAT: a node that others cannot dial uses the DHT but never holds data for it.
mod nat;
