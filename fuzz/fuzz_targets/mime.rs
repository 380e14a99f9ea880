//! The IMAP MIME renderer (`src/imap/mime.rs`): ENVELOPE, BODY and BODYSTRUCTURE of arbitrary
//! message bytes, part paths, header fields — what FETCH does with a message anyone could
//! have sent (the intake, the overlay). Bounded depth and part count: no stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("mime"), |data: &[u8]| {
    peerpost::imap::fuzz::message(data);
});
