//! Overlay protocol frames (`src/overlay/protocol.rs`), requests under each protocol (blob,
//! notify, kad: inbox PUT/LIST/ACK included) and responses, and the `u32 len ‖ payload`
//! framing itself; backup roots as the DHT hands them out. Decoded frames re-encode to
//! frames that decode equal.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peerpost::overlay::backup_root;
use peerpost::overlay::protocol::{
    self, BLOB_PROTOCOL, KAD_PROTOCOL, NOTIFY_PROTOCOL, Request, Response,
};

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("overlay_frame"), |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0..=2 => {
            let p = [BLOB_PROTOCOL, NOTIFY_PROTOCOL, KAD_PROTOCOL][which as usize % 4];
            if let Ok(req) = Request::decode(rest, p) {
                let again = Request::decode(&req.encode(), p).expect("re-encoded request");
                assert_eq!(again, req);
            }
            if let Ok(resp) = Response::decode(rest) {
                let again = Response::decode(&resp.encode()).expect("re-encoded response");
                assert_eq!(again, resp);
            }
            // The framing: a length past the protocol's limit is refused before allocating.
            let mut io = rest;
            let max = protocol::max_frame(p);
            if let Ok(frame) = rt().block_on(protocol::read_frame(&mut io, max)) {
                assert!(frame.len() <= max);
            }
        }
        _ => {
            let (key, bytes) = rest.split_at(rest.len().min(32));
            let _ = backup_root::is_root(bytes);
            if let Ok(root) = backup_root::validate(bytes, key, 1_800_000_000) {
                let _ = backup_root::may_replace(&root, &root);
            }
            let _ = backup_root::validate_own(bytes, 1_800_000_000);
        }
    }
});
