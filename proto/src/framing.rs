//! gRPC's message framing, for the places that speak it by hand (the master's replication
//! stream, the benchmark's client, the gRPC-Web tests) and the one size limit every end uses.
//!
//! On the wire each message is a 5-byte prefix, a flag byte and the big-endian length, then
//! the protobuf bytes. Flag bit `0x01` marks a compressed message, which replog never
//! negotiates, so it is refused. gRPC-Web adds trailer frames (flag bit `0x80`) whose payload
//! is HTTP/1-style `name: value\r\n` lines, `grpc-message` percent-encoded.
//!
//! Only `bytes`, `prost` and `std`: this builds for `wasm32-unknown-unknown` too.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Largest gRPC message any replog end sends or accepts, replication and public API alike; the
/// master's batches stay far below it.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A frame's prefix: the flag byte and the 4-byte length.
pub const PREFIX_BYTES: usize = 5;

/// The flag bit of a compressed message.
pub const COMPRESSED: u8 = 0x01;

/// The flag bit of a gRPC-Web trailers frame.
pub const TRAILERS: u8 = 0x80;

/// Why a frame cannot be made or taken.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a gRPC message of {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("a compressed gRPC message, though no compression was negotiated")]
    Compressed,
    #[error("a gRPC frame with unknown flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("a gRPC-Web trailers frame where a message was expected")]
    UnexpectedTrailers,
    #[error("cannot encode a gRPC message: {0}")]
    Encode(#[from] prost::EncodeError),
    #[error("an undecodable gRPC message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Appends `message` as one frame to `out`. Refuses a message over [`MAX_MESSAGE_BYTES`],
/// which the other end would refuse anyway.
pub fn encode_into(message: &impl Message, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = message.encoded_len();
    let prefix = prefix(0, len, MAX_MESSAGE_BYTES)?;
    out.reserve(PREFIX_BYTES + len);
    out.put_slice(&prefix);
    message.encode(out)?;
    Ok(())
}

/// `message` as one frame.
pub fn encode(message: &impl Message) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::new();
    encode_into(message, &mut out)?;
    Ok(out.freeze())
}

fn prefix(flags: u8, len: usize, max: usize) -> Result<[u8; PREFIX_BYTES], FrameError> {
    let too_large = FrameError::TooLarge { len, max };
    if len > max {
        return Err(too_large);
    }
    let [a, b, c, d] = u32::try_from(len).map_err(|_| too_large)?.to_be_bytes();
    Ok([flags, a, b, c, d])
}

/// One frame taken off a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message's protobuf bytes.
    Message(Bytes),
    /// A gRPC-Web trailers frame's payload (see [`parse_trailers`]).
    Trailers(Bytes),
}

/// Takes whole frames off the front of a buffer that received bytes are appended to, however
/// the bytes were split into reads.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max: usize,
    web: bool,
}

impl Decoder {
    /// Plain gRPC (over HTTP/2): every frame is a message, up to [`MAX_MESSAGE_BYTES`].
    pub const fn grpc() -> Self {
        Decoder {
            max: MAX_MESSAGE_BYTES,
            web: false,
        }
    }

    /// gRPC-Web: messages, and trailers frames at the end of a call.
    pub const fn grpc_web() -> Self {
        Decoder {
            max: MAX_MESSAGE_BYTES,
            web: true,
        }
    }

    /// The same, with another limit on a frame's length.
    pub const fn with_max(self, max: usize) -> Self {
        Decoder { max, ..self }
    }

    /// The next whole frame in `buffer`, taken off it; `None` while its prefix or body is
    /// still partial. A length over the limit is refused from the prefix alone, before any
    /// room is made for the body; then the buffer is left as it was and the stream is
    /// unusable.
    pub fn next(&self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(&[flags, a, b, c, d]) = buffer.get(..PREFIX_BYTES) else {
            return Ok(None);
        };
        let trailers = self.web && flags & TRAILERS != 0;
        match flags & !(if self.web { TRAILERS } else { 0 }) {
            0 => {}
            COMPRESSED => return Err(FrameError::Compressed),
            _ => return Err(FrameError::UnknownFlags(flags)),
        }
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if buffer.len() < PREFIX_BYTES + len {
            // Room for the rest at once, so a large message does not grow the buffer read
            // by read.
            buffer.reserve(PREFIX_BYTES + len - buffer.len());
            return Ok(None);
        }
        buffer.advance(PREFIX_BYTES);
        let payload = buffer.split_to(len).freeze();
        Ok(Some(if trailers {
            Frame::Trailers(payload)
        } else {
            Frame::Message(payload)
        }))
    }

    /// The next whole message in `buffer`, decoded as `M`; a trailers frame is an error.
    pub fn next_message<M: Message + Default>(
        &self,
        buffer: &mut BytesMut,
    ) -> Result<Option<M>, FrameError> {
        match self.next(buffer)? {
            None => Ok(None),
            Some(Frame::Message(bytes)) => Ok(Some(M::decode(bytes)?)),
            Some(Frame::Trailers(_)) => Err(FrameError::UnexpectedTrailers),
        }
    }
}

/// What a gRPC-Web trailers frame says about the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trailers {
    /// `grpc-status` (0 is OK), if present and a number.
    pub status: Option<i32>,
    /// `grpc-message`, percent-decoded; empty if absent.
    pub message: String,
}

/// Reads a trailers frame's `name: value\r\n` lines (names in any case).
pub fn parse_trailers(payload: &[u8]) -> Trailers {
    let text = String::from_utf8_lossy(payload);
    let mut trailers = Trailers::default();
    for line in text.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.trim().eq_ignore_ascii_case("grpc-status") {
                trailers.status = value.parse().ok();
            } else if name.trim().eq_ignore_ascii_case("grpc-message") {
                trailers.message = percent_decode(value);
            }
        }
    }
    trailers
}

/// Decodes `grpc-message`, which is percent-encoded UTF-8 on the wire. A `%` not followed by
/// two hex digits stays as it is; bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex_digit),
                bytes.get(i + 2).copied().and_then(hex_digit),
            ) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{AppendRequest, ReplicaState};

    fn request(message: &str) -> AppendRequest {
        AppendRequest {
            message: message.into(),
            w: Some(2),
            key: None,
        }
    }

    fn trailers_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![TRAILERS];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn a_message_round_trips() {
        let sent = request("hi");
        let frame = encode(&sent).unwrap();
        assert_eq!(frame[0], 0);
        assert_eq!(&frame[1..5], &(sent.encoded_len() as u32).to_be_bytes());
        assert_eq!(frame.len(), PREFIX_BYTES + sent.encoded_len());
        let mut buffer = BytesMut::from(&frame[..]);
        let got: AppendRequest = Decoder::grpc().next_message(&mut buffer).unwrap().unwrap();
        assert_eq!(got, sent);
        assert!(buffer.is_empty());
    }

    #[test]
    fn an_empty_message_is_a_prefix_alone() {
        let frame = encode(&ReplicaState::default()).unwrap();
        assert_eq!(&frame[..], &[0, 0, 0, 0, 0]);
        let mut buffer = BytesMut::from(&frame[..]);
        let got: Option<ReplicaState> = Decoder::grpc().next_message(&mut buffer).unwrap();
        assert_eq!(got, Some(ReplicaState::default()));
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let sent = request("split across reads");
        let frame = encode(&sent).unwrap();
        // Every split point: inside the prefix, at its end, inside the body.
        for cut in 1..frame.len() {
            let mut buffer = BytesMut::from(&frame[..cut]);
            let decoder = Decoder::grpc();
            assert_eq!(decoder.next(&mut buffer).unwrap(), None, "cut at {cut}");
            assert_eq!(buffer.len(), cut, "a partial frame stays (cut at {cut})");
            buffer.extend_from_slice(&frame[cut..]);
            let got: AppendRequest = decoder.next_message(&mut buffer).unwrap().unwrap();
            assert_eq!(got, sent, "cut at {cut}");
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn several_frames_in_one_buffer_come_out_in_order() {
        let mut buffer = BytesMut::new();
        for message in ["one", "two", "three"] {
            encode_into(&request(message), &mut buffer).unwrap();
        }
        buffer.extend_from_slice(&trailers_frame(b"grpc-status:0\r\n"));
        buffer.extend_from_slice(&[0, 0]);
        let decoder = Decoder::grpc_web();
        for message in ["one", "two", "three"] {
            match decoder.next(&mut buffer).unwrap() {
                Some(Frame::Message(bytes)) => {
                    assert_eq!(AppendRequest::decode(bytes).unwrap(), request(message));
                }
                other => panic!("{message}: {other:?}"),
            }
        }
        assert_eq!(
            decoder.next(&mut buffer).unwrap(),
            Some(Frame::Trailers(Bytes::from_static(b"grpc-status:0\r\n")))
        );
        assert_eq!(decoder.next(&mut buffer).unwrap(), None);
        assert_eq!(&buffer[..], &[0, 0], "a partial prefix stays");
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_is_read() {
        let mut buffer = BytesMut::with_capacity(16);
        buffer.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff]);
        let error = Decoder::grpc().next(&mut buffer).unwrap_err();
        assert!(
            matches!(error, FrameError::TooLarge { len, max }
                if len == u32::MAX as usize && max == MAX_MESSAGE_BYTES),
            "{error}"
        );
        assert!(buffer.capacity() < 1024, "no room was made for the body");
        assert_eq!(buffer.len(), PREFIX_BYTES);

        let mut buffer = BytesMut::from(&encode(&request("eleven")).unwrap()[..]);
        let limit = buffer.len() - PREFIX_BYTES - 1;
        let error = Decoder::grpc()
            .with_max(limit)
            .next(&mut buffer)
            .unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { max, .. } if max == limit));
        let at_limit = Decoder::grpc().with_max(limit + 1).next(&mut buffer);
        assert!(matches!(at_limit, Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn a_message_over_the_limit_is_not_encoded() {
        let huge = request(&"x".repeat(MAX_MESSAGE_BYTES));
        let mut out = BytesMut::new();
        let error = encode_into(&huge, &mut out).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { .. }), "{error}");
        assert!(out.is_empty());
    }

    #[test]
    fn unsupported_flags_are_refused() {
        let body = encode(&request("hi")).unwrap();
        let with_flags = |flags: u8| {
            let mut buffer = BytesMut::from(&body[..]);
            buffer[0] = flags;
            buffer
        };
        let refused = |decoder: Decoder, flags: u8| decoder.next(&mut with_flags(flags));
        assert!(matches!(
            refused(Decoder::grpc(), COMPRESSED),
            Err(FrameError::Compressed)
        ));
        assert!(matches!(
            refused(Decoder::grpc_web(), TRAILERS | COMPRESSED),
            Err(FrameError::Compressed)
        ));
        assert!(matches!(
            refused(Decoder::grpc(), TRAILERS),
            Err(FrameError::UnknownFlags(TRAILERS))
        ));
        assert!(matches!(
            refused(Decoder::grpc_web(), 0x02),
            Err(FrameError::UnknownFlags(0x02))
        ));
        let trailers = Decoder::grpc_web().next_message::<AppendRequest>(&mut with_flags(TRAILERS));
        assert!(matches!(trailers, Err(FrameError::UnexpectedTrailers)));
    }

    #[test]
    fn a_body_that_is_not_the_message_is_a_decode_error() {
        let mut buffer = BytesMut::from(&[0, 0, 0, 0, 2, 0xff, 0xff][..]);
        let got = Decoder::grpc().next_message::<AppendRequest>(&mut buffer);
        assert!(matches!(got, Err(FrameError::Decode(_))), "{got:?}");
    }

    #[test]
    fn trailers_give_status_and_decoded_message() {
        let trailers = parse_trailers(
            b"grpc-status:3\r\nGrpc-Message: w%20must%20be%201..=3\r\nx-other: 1\r\n",
        );
        assert_eq!(
            trailers,
            Trailers {
                status: Some(3),
                message: "w must be 1..=3".into(),
            }
        );
        assert_eq!(
            parse_trailers(b"grpc-status: 0\r\n"),
            Trailers {
                status: Some(0),
                message: String::new(),
            }
        );
        assert_eq!(parse_trailers(b"grpc-status: ok\r\n").status, None);
        assert_eq!(parse_trailers(b"").status, None);
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("w%20must%20be%201..=3"), "w must be 1..=3");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%+f%zz"), "%+f%zz");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }
}
