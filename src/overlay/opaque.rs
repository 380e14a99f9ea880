//! The codec of the overlay's opaque protocols (replica, gateway): frames `u32 len ‖ payload`
//! whose payload the overlay does not read, `len` checked against the protocol's bound before
//! anything is allocated, the body read paced (no byte for 5 s fails it, all of it within the
//! protocol's deadline), every frame counted in `peerpost_overlay_protocol_bytes_total`.

use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::{StreamProtocol, request_response};

use super::protocol;

const FRAME_STALL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct OpaqueCodec {
    /// Largest payload accepted.
    max: usize,
    /// Time the whole payload may take.
    total: Duration,
    /// The protocol's label in the traffic counters (one of `metrics::TRAFFIC_PROTOCOLS`).
    label: &'static str,
}

impl OpaqueCodec {
    pub(crate) const fn new(max: usize, total: Duration, label: &'static str) -> OpaqueCodec {
        OpaqueCodec { max, total, label }
    }

    async fn read<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> std::io::Result<Vec<u8>> {
        let len = protocol::read_len(io, self.max).await?;
        let frame = protocol::read_body_paced(io, len, FRAME_STALL, self.total).await?;
        crate::metrics::get().overlay_frame(self.label, "in", frame.len() + 4);
        Ok(frame)
    }

    async fn write<T: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut T,
        payload: &[u8],
    ) -> std::io::Result<()> {
        crate::metrics::get().overlay_frame(self.label, "out", payload.len() + 4);
        protocol::write_frame(io, payload).await
    }
}

impl request_response::Codec for OpaqueCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(io).await
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
        self.write(io, &req).await
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
        self.write(io, &res).await
    }
}
