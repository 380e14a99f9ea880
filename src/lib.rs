//! peerpost: serverless, encrypted, peer-to-peer email.
//!
//! Layout (layers point down only; ARCHITECTURE.md has the invariants):
//!
//! * [`cli`]: one file per subcommand; parses arguments, calls into the layers below.
//! * [`config`]: `config.toml` (every setting documented and defaulted) → validated [`config::Config`].
//! * [`node`]: the composition root: wires store, overlay and control socket for `run`.
//! * [`control`]: the control socket of a running node (`status`, `lookup`).
//! * [`home`]: the files of a node's home directory and their permissions.
//! * [`tls`]: the servers' certificate (generated at `init`).
//! * [`mailbox`]: the mailbox engine: folders, flags, UIDs, device logs that merge.
//! * [`delivery`]: the outbound queue (overlay, smarthost, bounces) and arriving mail.
//! * [`imap`]: the IMAP server (the only module using imap-codec and mail-parser).
//! * [`pop3`]: the POP3 server (INBOX), on the shared listener layer in [`server`].
//! * [`smtp`]: the SMTP intake: mail for this node's user, into INBOX.
//! * [`sync`]: `peerpost sync DIR`, a plain Maildir kept in step with the engine (notify).
//! * [`overlay`]: the libp2p swarm (the only module using libp2p): directory, blobs, notifications.
//! * [`durability`]: bundles, erasure-coded fragments with manifests, and the n/k calculator.
//! * [`store`]: LMDB behind an async facade; [`store::schema`] names every table.
//! * [`crypto`]: keys, sealed objects, envelopes, directory records, recovery phrase, passwords.
//! * [`wire`]: bounded binary encoding shared by every versioned format.

pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod date;
pub mod delivery;
pub mod devices;
pub mod durability;
pub mod home;
pub mod imap;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod overlay;
pub mod pop3;
pub mod server;
pub mod smtp;
pub mod store;
pub mod sync;
pub mod tls;
pub mod wire;
