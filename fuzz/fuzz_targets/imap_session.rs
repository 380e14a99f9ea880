//! The IMAP server driven by arbitrary client bytes: one real session per input, over
//! loopback TCP against a temporary account (see fuzz/src/lib.rs). A panic anywhere in the
//! server, or a session that hangs after the client's EOF, is a crash.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peerpost_fuzz::{Protocol, Server};

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| Server::new(Protocol::Imap))
}

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("imap_session"), |data: &[u8]| {
    server().drive(data);
});
