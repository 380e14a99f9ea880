//! Mailbox log entries from other devices (`src/mailbox/log.rs`): the signed, sealed entry
//! (`LogEntry::open`, `peek`), its body and ops, the ops applied to the CRDT state
//! (`src/mailbox/crdt.rs`), and Maildir file names and keyword files (`sync`, the mount).
//! A decoded body re-encodes to the same bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peerpost::crypto::UserKeys;
use peerpost::mailbox::OpId;
use peerpost::mailbox::crdt::State;
use peerpost::mailbox::log::LogEntry;
use peerpost::mailbox::maildir::{self, KeywordMap};

fn keys() -> &'static UserKeys {
    static K: OnceLock<UserKeys> = OnceLock::new();
    K.get_or_init(|| UserKeys::from_seed([9; 32]))
}

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("mailbox_log"), |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(entry) = LogEntry::decode_body(rest) {
                let bytes = entry.encode_body().expect("a decoded body encodes");
                assert_eq!(bytes, rest, "the log body encoding is canonical");
                // Applying hostile ops to the merge state: no panic, bounded work.
                let mut state = State::default();
                for (i, op) in entry.ops.iter().enumerate() {
                    let id = OpId::from_bytes(&[i as u8; 20]);
                    let _ = state.apply(id, entry.hlc.wrapping_add(i as u64), op);
                }
                let _ = state.folders();
                let _ = state.canonical();
            }
        }
        1 => {
            let k = keys();
            let _ = LogEntry::peek(rest);
            let _ = LogEntry::open(rest, k.public(), &k.log_key());
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = maildir::parse(text);
                let _ = KeywordMap::parse(text);
            }
        }
    }
});
