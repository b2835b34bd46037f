//! Reading whole messages from a stream on the slow paths: startup,
//! authentication and the queries pgcat sends on its own behalf.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

use super::protocol::codec::{peek_startup_len, Message, MessageCodec};

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads one complete regular message of at most `limit` bytes.
pub async fn read_message<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: usize,
) -> io::Result<Message>
where
    S: AsyncRead + Unpin,
{
    let mut codec = MessageCodec::new(limit);
    loop {
        if let Some(msg) = codec.decode(buf)? {
            return Ok(msg);
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads one startup-phase packet (length word included).
pub async fn read_startup<S>(stream: &mut S, buf: &mut BytesMut) -> io::Result<Bytes>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(len) = peek_startup_len(buf).map_err(invalid)? {
            if buf.len() >= len {
                return Ok(buf.split_to(len).freeze());
            }
            buf.reserve(len - buf.len());
        } else {
            buf.reserve(64);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}
