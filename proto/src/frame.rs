//! Length-prefixed frames.
//!
//! ```text
//! +----------------+------------------------------+
//! | length: u32 BE | body: `length` bytes (prost) |
//! +----------------+------------------------------+
//! ```
//!
//! The decoder refuses a length above the configured maximum before reading the body, so a
//! peer cannot make a server allocate more than `max_frame_size` for one frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Default limit for one frame's body: 5 MiB, as Pulsar's `maxMessageSize`.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 5 * 1024 * 1024;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("frame body is not a valid {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

/// Encodes one message as a frame.
pub fn encode_frame<M: prost::Message>(msg: &M, max: usize) -> Result<Bytes, FrameError> {
    let len = msg.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = BytesMut::with_capacity(LENGTH_PREFIX + len);
    // `len <= max` and max fits u32 by construction of FrameDecoder; clamp defensively.
    buf.put_u32(u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?);
    msg.encode_raw(&mut buf);
    Ok(buf.freeze())
}

/// Decodes a frame body into a message, naming the expected type in the error.
pub fn decode_body<M: prost::Message + Default>(body: Bytes) -> Result<M, FrameError> {
    M::decode(body).map_err(|source| FrameError::Malformed {
        what: std::any::type_name::<M>(),
        source,
    })
}

/// Incremental decoder: feed it bytes as they arrive, take whole frame bodies out.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_size: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FrameDecoder {
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            max_frame_size: max_frame_size.min(u32::MAX as usize),
        }
    }

    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Checks a length prefix against the limit; used by stream readers before they read a body.
    pub fn check_length(&self, prefix: [u8; LENGTH_PREFIX]) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_size {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        Ok(len)
    }

    /// Takes one frame body out of `buf` if a whole frame is there; `Ok(None)` means "need more".
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(&buf[..LENGTH_PREFIX]);
        let len = self.check_length(prefix)?;
        if buf.len() < LENGTH_PREFIX + len {
            return Ok(None);
        }
        buf.advance(LENGTH_PREFIX);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// Called at end of stream with what is left: anything but nothing is a truncated frame.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if buf.is_empty() {
            return Ok(());
        }
        let expected = if buf.len() < LENGTH_PREFIX {
            LENGTH_PREFIX
        } else {
            let mut prefix = [0u8; LENGTH_PREFIX];
            prefix.copy_from_slice(&buf[..LENGTH_PREFIX]);
            LENGTH_PREFIX + self.check_length(prefix)?
        };
        Err(FrameError::Truncated {
            expected,
            got: buf.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::client::{ClientFrame, Flow, client_frame};

    fn flow_frame(permits: u32) -> ClientFrame {
        ClientFrame {
            frame: Some(client_frame::Frame::Flow(Flow { permits })),
        }
    }

    #[test]
    fn frames_round_trip_one_byte_at_a_time() {
        let dec = FrameDecoder::default();
        let mut wire = BytesMut::new();
        for p in 0..3 {
            wire.extend_from_slice(
                &encode_frame(&flow_frame(p), DEFAULT_MAX_FRAME_SIZE).expect("encode"),
            );
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(body) = dec.decode(&mut buf).expect("decode") {
                got.push(decode_body::<ClientFrame>(body).expect("body"));
            }
        }
        assert_eq!(got, vec![flow_frame(0), flow_frame(1), flow_frame(2)]);
        dec.finish(&buf).expect("nothing left over");
    }

    /// A length over the limit is refused from the prefix alone, before any body arrives.
    #[test]
    fn oversized_length_is_refused_before_the_body() {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&1025u32.to_be_bytes()[..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024
            })
        ));
        let big = ClientFrame {
            frame: Some(client_frame::Frame::Send(crate::pb::client::SendBatch {
                sequence_id: 1,
                messages: vec![crate::pb::client::Message {
                    payload: vec![0u8; 2048].into(),
                    ..Default::default()
                }],
                txn_id: 0,
                txn_start: None,
            })),
        };
        assert!(matches!(
            encode_frame(&big, 1024),
            Err(FrameError::TooLarge { max: 1024, .. })
        ));
    }

    #[test]
    fn truncated_input_reports_expected_and_actual_lengths() {
        let dec = FrameDecoder::default();
        let frame = encode_frame(&flow_frame(7), DEFAULT_MAX_FRAME_SIZE).expect("encode");
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert!(dec.decode(&mut buf).expect("partial is fine").is_none());
        match dec.finish(&buf) {
            Err(FrameError::Truncated { expected, got }) => {
                assert_eq!(expected, frame.len());
                assert_eq!(got, frame.len() - 1);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        assert!(matches!(
            dec.finish(&BytesMut::from(&[0u8, 0][..])),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[test]
    fn garbage_body_is_a_malformed_error_not_a_panic() {
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        buf.put_u32(4);
        buf.put_slice(&[0xff, 0xff, 0xff, 0xff]);
        let body = dec
            .decode(&mut buf)
            .expect("length ok")
            .expect("whole frame");
        let err = decode_body::<ClientFrame>(body).expect_err("garbage");
        assert!(err.to_string().contains("ClientFrame"), "{err}");
    }

    /// Deterministic pseudo-random inputs never panic the decoder (the fuzz target goes further).
    #[test]
    fn random_bytes_never_panic() {
        let dec = FrameDecoder::new(64 * 1024);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            let n = (state % 64) as usize;
            for _ in 0..n {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.put_u8(state as u8);
            }
            while let Ok(Some(body)) = dec.decode(&mut buf) {
                let _ = decode_body::<ClientFrame>(body);
            }
            let _ = dec.finish(&buf);
        }
    }
}
