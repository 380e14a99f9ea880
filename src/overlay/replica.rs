//! `/peerpost/replica/1`: the request-response protocol between the devices of one user
//! (docs/design.md, "Devices"). The overlay only carries the frames — `u32 len ‖ payload`,
//! `len ≤ MAX_REPLICA_FRAME`, checked before anything is allocated, read paced like every
//! other frame — and hands inbound requests to the owner ([`super::Event::ReplicaRequest`]),
//! which authenticates the peer (a live device of the same user) and answers. What a payload
//! holds (device list, version vector, log entries, bodies) is the devices module's format.

use std::time::Duration;

use libp2p::{StreamProtocol, request_response};

use super::opaque::OpaqueCodec;
use super::protocol;

pub const REPLICA_PROTOCOL: &str = "/peerpost/replica/1";
/// Largest replica frame (what the overlay's frame writer allows).
pub const MAX_REPLICA_FRAME: usize = protocol::MAX_FRAME;
/// Concurrent replica streams per connection: few, as every one may hold a full frame.
const MAX_REPLICA_STREAMS: usize = 4;
/// Time a replica frame's payload may take (it may hold bodies: up to a full frame).
const FRAME_TOTAL: Duration = Duration::from_secs(30);

/// The replica behaviour (its own codec: the frames are opaque to the overlay).
pub(crate) fn behaviour(request_timeout: Duration) -> request_response::Behaviour<OpaqueCodec> {
    request_response::Behaviour::with_codec(
        OpaqueCodec::new(MAX_REPLICA_FRAME, FRAME_TOTAL, "replica"),
        [(
            StreamProtocol::new(REPLICA_PROTOCOL),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(MAX_REPLICA_STREAMS),
    )
}
