//! `config.toml` (`src/config.rs`): any text is a config or a clear error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("config"), |data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = peerpost::config::Config::parse(
            text,
            Path::new("config.toml"),
            Path::new("/nonexistent/peerpost-fuzz-home"),
        );
        let _ = peerpost::config::parse_duration(text);
        let _ = peerpost::config::parse_size(text);
    }
});
