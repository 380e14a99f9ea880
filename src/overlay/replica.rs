//! `/peerpost/replica/1`: the request-response protocol between the devices of one user
//! (docs/design.md, "Devices"). The overlay only carries the frames — `u32 len ‖ payload`,
//! `len ≤ MAX_REPLICA_FRAME`, checked before anything is allocated, read paced like every
//! other frame — and hands inbound requests to the owner ([`super::Event::ReplicaRequest`]),
//! which authenticates the peer (a live device of the same user) and answers. What a payload
//! holds (device list, version vector, log entries, bodies) is the devices module's format.

use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::{StreamProtocol, request_response};

use super::protocol;

pub const REPLICA_PROTOCOL: &str = "/peerpost/replica/1";
/// Largest replica frame (what the overlay's frame writer allows).
pub const MAX_REPLICA_FRAME: usize = protocol::MAX_FRAME;
/// Concurrent replica streams per connection: few, as every one may hold a full frame.
const MAX_REPLICA_STREAMS: usize = 4;
const FRAME_STALL: Duration = Duration::from_secs(5);
const FRAME_TOTAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub(crate) struct ReplicaCodec;

async fn read<T: AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<Vec<u8>> {
    let len = protocol::read_len(io, MAX_REPLICA_FRAME).await?;
    let frame = protocol::read_body_paced(io, len, FRAME_STALL, FRAME_TOTAL).await?;
    super::metrics::frame(REPLICA_PROTOCOL, "in", frame.len());
    Ok(frame)
}

async fn write<T: AsyncWrite + Unpin + Send>(io: &mut T, payload: &[u8]) -> std::io::Result<()> {
    super::metrics::frame(REPLICA_PROTOCOL, "out", payload.len());
    protocol::write_frame(io, payload).await
}

impl request_response::Codec for ReplicaCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write(io, &res).await
    }
}

/// The replica behaviour (its own codec: the frames are opaque to the overlay).
pub(crate) fn behaviour(request_timeout: Duration) -> request_response::Behaviour<ReplicaCodec> {
    request_response::Behaviour::with_codec(
        ReplicaCodec,
        [(
            StreamProtocol::new(REPLICA_PROTOCOL),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(MAX_REPLICA_STREAMS),
    )
}
