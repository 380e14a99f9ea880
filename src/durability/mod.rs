//! Durability after Glacier: small sealed objects are packed into bundles, a bundle is
//! erasure-coded into `n` fragments of which any `k` rebuild it, and fragment `i` is placed on
//! the peer closest to BLAKE3(bundle id ‖ i). [`params`] picks `n` and `k` from the survival
//! target and the ring's size; [`codec`] is the erasure code behind a trait (codec id in every
//! fragment); [`fragment`] holds the byte formats and the verified rebuild.
//!
//! [`ring`] stores a bundle's fragments on distinct peers and reads them back (any `k`
//! verified fragments). The repair loop, quota and restore from the phrase build on it.

pub mod backup;
pub mod codec;
pub mod fragment;
pub mod params;
pub mod repair;
pub mod restore;
pub mod ring;
pub mod schedule;
pub mod status;

pub use codec::{ErasureCodec, ReedSolomon8};
pub use fragment::{Fragment, Manifest, make_fragments, pack, placement_key, rebuild, unpack};
pub use params::{Choice, Params, choose};
pub use ring::{Receipt, RingError};
