//! The client-side frame decoder: any bytes, split into reads where the
//! first byte says, decode to the same messages as in one read (or fail
//! the same), and never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcat::proxy::protocol::codec::{client_limit, peek_header, MessageCodec};
use tokio_util::codec::Decoder;

fn decode_all(chunks: &[&[u8]]) -> (Vec<(u8, Vec<u8>)>, bool) {
    let mut codec = MessageCodec::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => out.push((m.tag, m.body.to_vec())),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = peek_header(data, client_limit) {
        assert!(h.total >= 5);
    }
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = (step as usize % 13) + 1;
    let whole = decode_all(&[rest]);
    let chunks: Vec<&[u8]> = rest.chunks(step).collect();
    let split = decode_all(&chunks);
    assert_eq!(whole, split);
});
