//! Directory records as a peer sends them: `DirectoryRecord::from_bytes` and the overlay's
//! `directory::validate` (signature, key, lifetime). A decoded record re-encodes to the same
//! bytes (the format is canonical) and decodes back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpost::crypto::DirectoryRecord;
use peerpost::overlay::directory;

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("record"), |data: &[u8]| {
    if let Ok(rec) = DirectoryRecord::from_bytes(data) {
        let bytes = rec.to_bytes();
        let again = DirectoryRecord::from_bytes(&bytes).expect("a re-encoded record decodes");
        assert_eq!(again, rec);
        assert_eq!(bytes, data, "the record encoding is canonical");
        let _ = rec.verify(1_800_000_000);
    }
    // Under any key (the first 32 bytes) and a fixed "now".
    let (key, rest) = data.split_at(data.len().min(32));
    let _ = directory::validate(rest, key, 1_800_000_000);
});
