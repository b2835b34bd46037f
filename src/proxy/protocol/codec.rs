//! Framing of PostgreSQL v3 messages. No IO happens here: callers hand in
//! bytes they read and get back message boundaries, or an error that says
//! why the peer must be disconnected.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Largest startup-phase packet we accept (StartupMessage, SSLRequest,
/// CancelRequest). PostgreSQL itself refuses anything over 10 000 bytes.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Largest regular message: PostgreSQL's own limit for a query string,
/// a CopyData chunk or a DataRow is 1 GiB - 1.
pub const MAX_MESSAGE_LEN: usize = (1 << 30) - 1;

/// Messages whose payload is a few bytes; a client announcing more is
/// broken or hostile (PostgreSQL uses the same 10 000 byte bound).
pub const MAX_SMALL_MESSAGE_LEN: usize = 10_000;

/// Size of the type byte plus the length word.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("message type {tag:?} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong { tag: char, len: usize, limit: usize },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(i64),
}

/// The header of one regular message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length of the whole message including the type byte.
    pub total: usize,
}

impl Header {
    pub fn body_len(&self) -> usize {
        self.total - HEADER_LEN
    }
}

/// The per-message length limit for a message type sent by a client.
pub fn client_limit(tag: u8) -> usize {
    match tag {
        // Sync, Flush, Terminate, CopyDone carry no payload; Close and
        // Describe carry a name.
        b'S' | b'H' | b'X' | b'c' | b'C' | b'D' => MAX_SMALL_MESSAGE_LEN,
        _ => MAX_MESSAGE_LEN,
    }
}

/// Reads the 5-byte header at the start of `buf`, if there is one.
/// `limit` gives the largest acceptable total length for a message type.
pub fn peek_header(buf: &[u8], limit: impl Fn(u8) -> usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as i64;
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len,
        });
    }
    let len = len as usize;
    let max = limit(tag);
    if len > max {
        return Err(FrameError::TooLong {
            tag: tag as char,
            len,
            limit: max,
        });
    }
    Ok(Some(Header {
        tag,
        total: len + 1,
    }))
}

/// Reads the length word of a startup-phase packet (no type byte).
/// Returns the total packet length once four bytes are available.
pub fn peek_startup_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as i64;
    // Smallest valid packet: length + protocol code.
    if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
        return Err(FrameError::BadStartupLength(len));
    }
    Ok(Some(len as usize))
}

/// One complete message: the type byte and the payload after the length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

/// A tokio-util codec for the slow paths (startup, authentication,
/// queries pgcat issues itself). The forwarding hot path uses
/// [`peek_header`] directly on its own buffers instead.
#[derive(Debug, Clone, Copy)]
pub struct MessageCodec {
    limit: usize,
}

impl MessageCodec {
    pub fn new(limit: usize) -> Self {
        MessageCodec { limit }
    }
}

impl Default for MessageCodec {
    fn default() -> Self {
        MessageCodec::new(MAX_MESSAGE_LEN)
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, std::io::Error> {
        let limit = self.limit;
        let header = peek_header(src, |_| limit)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let Some(header) = header else {
            return Ok(None);
        };
        if src.len() < header.total {
            src.reserve(header.total - src.len());
            return Ok(None);
        }
        let tag = src[0];
        src.advance(HEADER_LEN);
        let body = src.split_to(header.body_len()).freeze();
        Ok(Some(Message { tag, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", client_limit), Ok(None));
        let h = peek_header(&msg(b'Q', b"select 1\0"), client_limit)
            .unwrap()
            .unwrap();
        assert_eq!(h.tag, b'Q');
        assert_eq!(h.total, 5 + 9);
        assert_eq!(h.body_len(), 9);
    }

    #[test]
    fn length_below_four_is_malformed() {
        let bytes = [b'Q', 0, 0, 0, 3];
        assert!(matches!(
            peek_header(&bytes, client_limit),
            Err(FrameError::BadLength { len: 3, .. })
        ));
        let bytes = [b'Q', 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            peek_header(&bytes, client_limit),
            Err(FrameError::BadLength { len: -1, .. })
        ));
    }

    #[test]
    fn oversized_messages_are_refused() {
        // A Sync claiming 1 MB.
        let bytes = [b'S', 0, 0x10, 0, 0];
        assert!(matches!(
            peek_header(&bytes, client_limit),
            Err(FrameError::TooLong { tag: 'S', .. })
        ));
        // A query of exactly the limit is fine; one more byte is not.
        let ok = ((MAX_MESSAGE_LEN) as i32).to_be_bytes();
        let bytes = [b'Q', ok[0], ok[1], ok[2], ok[3]];
        assert!(peek_header(&bytes, client_limit).unwrap().is_some());
        let bad = ((MAX_MESSAGE_LEN + 1) as i32).to_be_bytes();
        let bytes = [b'd', bad[0], bad[1], bad[2], bad[3]];
        assert!(peek_header(&bytes, client_limit).is_err());
    }

    #[test]
    fn startup_length_bounds() {
        assert_eq!(peek_startup_len(&[0, 0, 0]), Ok(None));
        assert_eq!(peek_startup_len(&[0, 0, 0, 8]), Ok(Some(8)));
        assert!(peek_startup_len(&[0, 0, 0, 7]).is_err());
        // 2 GiB claimed by a startup packet.
        assert!(peek_startup_len(&[0x7f, 0xff, 0xff, 0xff]).is_err());
        assert!(peek_startup_len(&[0x80, 0, 0, 0]).is_err());
        let len = (MAX_STARTUP_LEN as i32 + 1).to_be_bytes();
        assert!(peek_startup_len(&len).is_err());
    }

    #[test]
    fn codec_yields_messages_across_partial_reads() {
        let mut codec = MessageCodec::default();
        let mut stream = msg(b'1', b"");
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'Z', b"I"));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(3) {
            buf.extend_from_slice(chunk);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].tag, b'1');
        assert!(out[0].body.is_empty());
        assert_eq!(&out[1].body[..], b"SELECT 1\0");
        assert_eq!(&out[2].body[..], b"I");
        assert!(buf.is_empty());
    }

    #[test]
    fn codec_rejects_over_limit() {
        let mut codec = MessageCodec::new(100);
        let mut buf = BytesMut::from(&msg(b'D', &[0u8; 200])[..]);
        assert!(codec.decode(&mut buf).is_err());
    }
}
