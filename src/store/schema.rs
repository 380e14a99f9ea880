//! Every LMDB database name and key encoding, in one place (docs/design.md, "Local store").
//!
//! Bump [`SCHEMA_VERSION`] on any change to a name, a key encoding or a value format, and add a
//! migration in `store/mod.rs`. A store written by a newer schema is refused, never guessed at.

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// `meta`: store-wide facts. Keys are ASCII names.
pub const DB_META: &str = "meta";
/// `meta` key → u32 big-endian schema version.
pub const META_SCHEMA_VERSION: &[u8] = b"schema_version";

/// `objects`: sealed objects this node keeps a full copy of (its own mail).
/// Key: the 32-byte object id (BLAKE3 of the value). Value: the sealed object bytes
/// (crypto::content format, version byte first).
pub const DB_OBJECTS: &str = "objects";

/// `log`: every device's mailbox operation log (this device's and other devices' of the same
/// user). Key: device id (u64) ‖ seq (u64), big-endian, so one device's entries are contiguous
/// and in order. Value: a log entry (mailbox::log format, version byte first).
pub const DB_LOG: &str = "log";

/// `log_index`: arrival order of log entries in this store, so a process can pick up entries
/// that another process (or the overlay) added. Key: u64 arrival counter. Value: device ‖ seq.
pub const DB_LOG_INDEX: &str = "log_index";

/// `folder_uids`: this device's IMAP numbering per folder. Key: folder id (20 bytes).
/// Value: u32 uidvalidity ‖ u32 uidnext ‖ u64 highestmodseq.
pub const DB_FOLDER_UIDS: &str = "folder_uids";

/// `uids`: this device's UID and MODSEQ of each entry. Key: folder id (20) ‖ entry id (20).
/// Value: u32 uid ‖ u64 modseq. Rows are kept after expunge (value uid = 0 marks it gone), so a
/// UID is never reused.
pub const DB_UIDS: &str = "uids";

/// `sync`: what `peerpost sync DIR` last saw of each file. Key: [16] hash of DIR ‖ folder id
/// (20) ‖ base file name (UTF-8). Value: u8 flag bits ‖ u8 len ‖ keyword letters.
pub const DB_SYNC: &str = "sync";

/// Every database this schema creates (LMDB needs the count up front).
pub const ALL: &[&str] = &[
    DB_META,
    DB_OBJECTS,
    DB_LOG,
    DB_LOG_INDEX,
    DB_FOLDER_UIDS,
    DB_UIDS,
    DB_SYNC,
    DB_HELD,
    DB_PINS,
    DB_OUTBOX,
    DB_DELIVERED,
    DB_INBOX,
    DB_BACKUP,
];

/// The tables other modules may read and write through [`crate::store::Tx`] (objects have
/// their own typed API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Log,
    LogIndex,
    FolderUids,
    Uids,
    Sync,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Log => DB_LOG,
            Table::LogIndex => DB_LOG_INDEX,
            Table::FolderUids => DB_FOLDER_UIDS,
            Table::Uids => DB_UIDS,
            Table::Sync => DB_SYNC,
        }
    }
}

/// `meta` key of the log arrival counter (u64, the next free `log_index` key).
pub const META_LOG_COUNTER: &[u8] = b"log_counter";

/// Room for the databases later schema versions add without reopening the environment.
pub const MAX_DBS: u32 = 32;

/// Virtual size of the memory map. LMDB files are sparse: this bounds growth, it does not
/// reserve disk.
pub const MAP_SIZE: usize = 1 << 40;

/// Encodes an object-table key.
pub fn object_key(id: &crate::crypto::ObjectId) -> [u8; 32] {
    *id.as_bytes()
}

// --- overlay tables ---

/// `held`: blobs (sealed objects, later fragments) this node keeps for other peers, bounded by
/// the configured contribution. Key: the 32-byte BLAKE3 of the value. Value: the bytes as
/// received (a STORE frame is refused unless they hash to the key).
pub const DB_HELD: &str = "held";
/// `meta` key → u64 big-endian sum of the sizes of all values in `held`.
pub const META_HELD_BYTES: &[u8] = b"held_bytes";
/// `pins`: trust on first use of directory keys. Key: the normalized address (UTF-8).
/// Value: `u8 version = 1 ‖ [32] user Ed25519 key ‖ [32] user X25519 key`.
pub const DB_PINS: &str = "pins";

// --- mail-flow tables (delivery) ---

/// `outbox`: the persistent outbound queue. Two kinds of rows, by the key's first byte:
/// - `0x00 ‖ [16] msg` → the message: `u8 version = 1 ‖ u64 queued (unix s) ‖ bytes8 sender
///   address ‖ sealed object (crypto::content) of the message bytes, under the user's outbox
///   key` (`msg` is 16 random bytes chosen at submission);
/// - `0x01 ‖ [16] msg ‖ recipient (UTF-8, normalized)` → one recipient still to do:
///   `u8 version = 1 ‖ u64 next attempt (unix s) ‖ u32 attempts ‖ bytes16 last error`;
/// - `0x02 ‖ [16] msg` → (empty) the copy into Sent is still to be made.
///
/// A recipient row is deleted once its copy is handed over (or bounced), the Sent row once
/// the copy is in Sent; the message row goes with the last of them. Recipient rows are scanned without reading message bodies.
pub const DB_OUTBOX: &str = "outbox";
/// `delivered`: messages already put into INBOX, so a redelivery (sender restart, a
/// notification and a collected inbox entry for one message) lands once. Key: BLAKE3(sender
/// Ed25519 key ‖ message id) (32). Value: u64 unix time of delivery.
pub const DB_DELIVERED: &str = "delivered";
/// `inbox`: entries this node holds in other users' DHT inboxes. Key: [32] inbox key
/// (overlay::protocol::inbox_key) ‖ [32] entry id (BLAKE3 of the entry). Value:
/// `u64 stored (unix s) ‖ [32] ack hash ‖ [32] sender pseudonym ‖ entry bytes`.
pub const DB_INBOX: &str = "inbox";

// --- durability tables (backup of the user's mailbox into the ring) ---

/// `backup`: what this node has placed in the ring for its user (docs/design.md, "Backup").
/// A new database: older builds never open it, so the schema version is unchanged.
/// Keys (first byte names the row kind):
/// - `b'r' ‖ [32] bundle id` → a receipt entry (durability::backup format): the bundles of
///   the user's backup, found again from the ring's index on a fresh home;
/// - `b'o' ‖ [32] object id` → empty: this sealed object is in a placed bundle;
/// - `b'l' ‖ u64 device ‖ u64 seq` → empty: this log entry is in a placed bundle;
/// - `b's'` → `u64 root seq ‖ receipt entry of the current index bundle`;
/// - `b'q'` → u64 repairs done (fragments re-created by this node).
pub const DB_BACKUP: &str = "backup";
