//! The request/reply tracker fed random client messages, pgcat's own
//! expectations and random server replies (with bodies): no panic, and
//! outcomes never outnumber tickets.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgcat::proxy::protocol::tracker::{Expect, Synthetic, Tracker};

fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::new();
    let mut out = BytesMut::new();
    let (mut tickets, mut outcomes) = (0usize, 0usize);
    let mut it = data.chunks(2);
    while let Some(step) = it.next() {
        let (kind, pick) = (step[0] % 4, *step.get(1).unwrap_or(&0));
        match kind {
            0 => t.client_message(b"QPBDECSHdcfF"[pick as usize % 12]),
            1 => {
                match pick % 6 {
                    0 => t.push_extended(Expect::Parse { swallow: pick & 8 != 0, ticket: true }),
                    1 => t.push_extended(Expect::Bind { ticket: true }),
                    2 => t.push_extended(Expect::Close { swallow: pick & 8 != 0, ticket: true }),
                    3 => t.push_extended(Expect::Synthetic(Synthetic::ParseComplete, true)),
                    4 => t.push_synthetic_query(Synthetic::Deallocate, true),
                    _ => {
                        t.raise(Bytes::from_static(b"E\0\0\0\x04"));
                        continue;
                    }
                }
                tickets += 1;
            }
            2 => {
                let tag = b"123TnCIsGZESNAtdD"[pick as usize % 17];
                let body: Vec<u8> = it.next().map(|b| b.to_vec()).unwrap_or_default();
                t.server_message(tag, &body, &mut out);
            }
            _ => t.emit_due(&mut out),
        }
        let mut o = Vec::new();
        t.take_outcomes(&mut o);
        outcomes += o.len();
        assert!(outcomes <= tickets);
        out.clear();
    }
});
