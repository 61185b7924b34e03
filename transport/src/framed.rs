//! Length-prefixed prost frames over quinn streams (the layout is in `strata_proto::frame`).

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use strata_proto::frame::{LENGTH_PREFIX, decode_body};
use strata_proto::{FrameDecoder, FrameError, encode_frame};

use crate::TransportError;

/// Writes frames to a send stream.
#[derive(Debug)]
pub struct FrameWriter {
    send: SendStream,
    max_frame_size: usize,
}

impl FrameWriter {
    pub fn new(send: SendStream, max_frame_size: usize) -> Self {
        Self {
            send,
            max_frame_size,
        }
    }

    pub async fn send<M: prost::Message>(&mut self, msg: &M) -> Result<(), TransportError> {
        let frame = encode_frame(msg, self.max_frame_size)?;
        self.send_encoded(frame).await
    }

    /// Writes `body` as one frame (for bodies that are not prost messages).
    pub async fn send_raw(&mut self, body: &[u8]) -> Result<(), TransportError> {
        if body.len() > self.max_frame_size {
            return Err(strata_proto::FrameError::TooLarge {
                len: body.len(),
                max: self.max_frame_size,
            }
            .into());
        }
        let len = u32::try_from(body.len()).map_err(|_| strata_proto::FrameError::TooLarge {
            len: body.len(),
            max: self.max_frame_size,
        })?;
        self.send.write_all(&len.to_be_bytes()).await?;
        self.send
            .write_all(body)
            .await
            .map_err(TransportError::Write)
    }

    /// Writes an already encoded frame (lets a caller encode outside a lock).
    pub async fn send_encoded(&mut self, frame: Bytes) -> Result<(), TransportError> {
        self.send
            .write_all(&frame)
            .await
            .map_err(TransportError::Write)
    }

    /// Gracefully ends the stream: the peer reads everything sent, then end-of-stream.
    pub fn finish(&mut self) {
        // Fails only if already finished or reset, which is the state we want anyway.
        let _ = self.send.finish();
    }

    /// Abruptly ends the stream with an application error code.
    pub fn reset(&mut self, code: u32) {
        let _ = self.send.reset(quinn::VarInt::from_u32(code));
    }
}

/// Reads frames from a receive stream, refusing any frame above the size limit.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    pub fn new(recv: RecvStream, max_frame_size: usize) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame_size),
        }
    }

    /// The next frame, or `None` at a clean end of stream (between frames).
    pub async fn recv<M: prost::Message + Default>(&mut self) -> Result<Option<M>, TransportError> {
        match self.recv_body().await? {
            Some(body) => Ok(Some(decode_body(body)?)),
            None => Ok(None),
        }
    }

    /// The next frame's body, undecoded, or `None` at a clean end of stream.
    pub async fn recv_raw(&mut self) -> Result<Option<Bytes>, TransportError> {
        self.recv_body().await
    }

    async fn recv_body(&mut self) -> Result<Option<Bytes>, TransportError> {
        let mut prefix = [0u8; LENGTH_PREFIX];
        let got = self.read_up_to(&mut prefix).await?;
        if got == 0 {
            return Ok(None);
        }
        if got < LENGTH_PREFIX {
            return Err(FrameError::Truncated {
                expected: LENGTH_PREFIX,
                got,
            }
            .into());
        }
        let len = self.decoder.check_length(prefix)?;
        let mut body = vec![0u8; len];
        let got = self.read_up_to(&mut body).await?;
        if got < len {
            return Err(FrameError::Truncated {
                expected: LENGTH_PREFIX + len,
                got: LENGTH_PREFIX + got,
            }
            .into());
        }
        Ok(Some(Bytes::from(body)))
    }

    /// Fills `buf` unless the stream ends first; returns how many bytes were read.
    async fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.recv.read(&mut buf[filled..]).await? {
                Some(n) => filled += n,
                None => break,
            }
        }
        Ok(filled)
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }
}
