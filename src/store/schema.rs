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

/// Every database this schema creates (LMDB needs the count up front).
pub const ALL: &[&str] = &[DB_META, DB_OBJECTS, DB_HELD, DB_PINS];

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
