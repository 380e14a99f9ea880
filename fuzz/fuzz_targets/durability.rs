//! Backup formats from peers and from the DHT (`src/durability/*`): fragments, bundles,
//! leases, index entries, indexes, log segments. What decodes re-encodes to bytes that
//! decode equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpost::durability::backup::{self, Entry};
use peerpost::durability::repair::Lease;
use peerpost::durability::{Fragment, unpack};

fuzz_target!(init: peerpost_fuzz::seeds::write_if_asked("durability"), |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(f) = Fragment::decode(rest) {
                assert_eq!(
                    Fragment::decode(&f.encode()).expect("re-encoded fragment"),
                    f
                );
            }
        }
        1 => {
            if let Ok(objects) = unpack(rest) {
                let (bytes, _) = peerpost::durability::pack(&objects).expect("repack");
                assert_eq!(unpack(&bytes).expect("repacked bundle"), objects);
            }
        }
        2 => {
            if let Ok(l) = Lease::decode(rest) {
                assert_eq!(Lease::decode(&l.encode()).expect("re-encoded lease"), l);
                let _ = l.placement();
            }
        }
        3 => {
            if let Ok(e) = Entry::decode(rest) {
                assert_eq!(Entry::decode(&e.encode()).expect("re-encoded entry"), e);
            }
        }
        4 => {
            if let Ok(i) = backup::decode_index(rest) {
                let bytes = backup::encode_index(
                    &i.entries,
                    i.created,
                    i.address.as_deref(),
                    i.device.as_ref(),
                );
                assert_eq!(backup::decode_index(&bytes).expect("re-encoded index"), i);
            }
        }
        _ => {
            if let Ok(rows) = backup::decode_segment(rest) {
                let bytes = backup::encode_segment(&rows);
                assert_eq!(
                    backup::decode_segment(&bytes).expect("re-encoded segment"),
                    rows
                );
            }
        }
    }
});
