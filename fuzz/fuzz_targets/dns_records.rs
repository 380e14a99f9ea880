//! The DNS records file of the intake's DKIM/SPF/DMARC checks (`[smtp] dns_records`,
//! `src/smtp/auth_check.rs` `parse_records`), and the stripping of forged
//! Authentication-Results headers from arbitrary message bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpost::smtp::auth_check;

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("dns_records"), |data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(records) = auth_check::parse_records(text) {
            let _ = records.len();
        }
    }
    let stripped = auth_check::strip_own_results(data, "fuzz.example.org");
    assert!(stripped.len() <= data.len(), "stripping never adds bytes");
});
