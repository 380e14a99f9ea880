//! NAT-PMP replies (`src/overlay/natpmp.rs`, RFC 6886): datagrams from the gateway decode or
//! are refused, never panic; a decoded mapping reply is accepted as the answer to a request
//! for its own internal port and refused for any other; the route-table parser that finds
//! the gateway takes any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpost::overlay::natpmp::{self, Reply, Request};

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("natpmp"), |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        match natpmp::decode(rest) {
            Ok(Reply::MapTcp { internal, lifetime, .. }) => {
                let ask = |port| Request::MapTcp { internal: port, external: port, lifetime: 3600 };
                assert!(natpmp::decode_for(&ask(internal), rest).is_ok());
                assert!(natpmp::decode_for(&ask(internal.wrapping_add(1)), rest).is_err());
                assert!(natpmp::decode_for(&Request::ExternalAddress, rest).is_err());
                assert!(natpmp::renew_after(lifetime).as_secs() >= 60);
            }
            Ok(Reply::ExternalAddress { .. }) => {
                assert!(natpmp::decode_for(&Request::ExternalAddress, rest).is_ok());
            }
            Err(_) => {}
        }
    } else {
        let _ = natpmp::default_gateway(&String::from_utf8_lossy(rest));
    }
});
