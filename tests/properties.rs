//! Property tests of the parsers that face untrusted bytes: the frame
//! decoder, the startup and authentication parsers, the request/reply
//! tracker fed random server replies, and the text scanners. They run in
//! `cargo test` on stable with a fixed number of cases; the coverage-
//! guided fuzz targets in `fuzz/` (`scripts/fuzz`) run the same
//! functions for longer.

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use pgcat::proxy::auth::{ScramSecret, ScramServer};
use pgcat::proxy::protocol::codec::{client_limit, peek_header, MessageCodec, HEADER_LEN};
use pgcat::proxy::protocol::effects::{deallocate, QueryHints};
use pgcat::proxy::protocol::messages::{
    parse_data_row, parse_error_fields, parse_parameter_status, parse_startup,
};
use pgcat::proxy::protocol::settings::{parse_options, parse_readback};
use pgcat::proxy::protocol::tracker::{sqlstate, Expect, Synthetic, Tracker};

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the bytes and however they are split into reads, the
    /// decoder yields the same messages as from one read, or an error;
    /// it never panics and never yields a message it was not given.
    #[test]
    fn the_frame_decoder_does_not_care_how_bytes_arrive(
        messages in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)), 0..12),
        junk in prop::collection::vec(any::<u8>(), 0..16),
        cuts in prop::collection::vec(1usize..40, 0..20),
    ) {
        let mut stream = Vec::new();
        for (tag, body) in &messages {
            stream.extend(frame(*tag, body));
        }
        stream.extend(&junk);
        let whole = {
            let mut codec = MessageCodec::new(1 << 20);
            let mut buf = BytesMut::from(&stream[..]);
            let mut out = Vec::new();
            while let Ok(Some(m)) = codec.decode(&mut buf) {
                out.push(m);
            }
            out
        };
        prop_assert!(whole.len() >= messages.len());
        for (m, (tag, body)) in whole.iter().zip(&messages) {
            prop_assert_eq!(m.tag, *tag);
            prop_assert_eq!(&m.body[..], &body[..]);
        }
        let mut codec = MessageCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut failed = false;
        for cut in cuts.iter().copied().chain(std::iter::repeat(7)) {
            if at >= stream.len() {
                break;
            }
            let end = (at + cut).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(m)) => got.push(m),
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break;
            }
        }
        if !failed {
            prop_assert_eq!(got, whole);
        }
    }

    #[test]
    fn headers_are_never_shorter_than_a_header(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
        if let Ok(Some(h)) = peek_header(&bytes, client_limit) {
            prop_assert!(h.total >= HEADER_LEN);
            prop_assert!(h.total - 1 <= client_limit(h.tag));
        }
    }

    #[test]
    fn startup_packets_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_startup(&bytes);
        let mut with_len = ((bytes.len() + 8) as i32).to_be_bytes().to_vec();
        with_len.extend_from_slice(&196_608i32.to_be_bytes());
        with_len.extend_from_slice(&bytes);
        let _ = parse_startup(&with_len);
    }

    #[test]
    fn scram_messages_never_panic(
        first in prop::collection::vec(any::<u8>(), 0..120),
        last in prop::collection::vec(any::<u8>(), 0..200),
        text in "n,,n=,r=[a-zA-Z0-9+/]{0,30}",
    ) {
        let secret = ScramSecret::mock("fuzz");
        let _ = ScramServer::start(secret.clone(), &first);
        if let Ok((server, _)) = ScramServer::start(secret, text.as_bytes()) {
            prop_assert!(server.finish(&last).is_err());
        }
    }

    #[test]
    fn reply_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = parse_error_fields(&bytes);
        let _ = parse_data_row(&bytes);
        let _ = parse_parameter_status(&bytes);
        let _ = sqlstate(&bytes);
    }

    #[test]
    fn texts_never_panic(text in prop::collection::vec(any::<u8>(), 0..300), s in "\\PC{0,80}") {
        let _ = QueryHints::scan(&text);
        let _ = deallocate(&text);
        let _ = parse_options(&s);
        let hints = QueryHints::scan(s.as_bytes());
        prop_assert!(hints.names.len() <= 64);
    }

    #[test]
    fn readback_rows_never_panic(rows in prop::collection::vec(prop::collection::vec(prop::option::of("[a-z_.0-9]{0,12}"), 0..5), 0..20)) {
        let _ = parse_readback(&rows);
    }

    /// The tracker fed any interleaving of client messages, pgcat's own
    /// expectations and server replies: no panic, outcomes never exceed
    /// the tickets given, and once every request is answered with a final
    /// ReadyForQuery(I) it is idle.
    #[test]
    fn the_tracker_survives_any_replies(
        steps in prop::collection::vec((0u8..4, any::<u8>(), any::<bool>()), 0..200),
    ) {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        let mut tickets = 0usize;
        let mut outcomes = 0usize;
        let client_tags = b"QPBDECSHdcfF";
        let server_tags = b"123TnCIsGZESNAtdD";
        for (kind, pick, flag) in steps {
            match kind {
                0 => t.client_message(client_tags[pick as usize % client_tags.len()]),
                1 => {
                    let e = match pick % 6 {
                        0 => Expect::Parse { swallow: flag, ticket: true },
                        1 => Expect::Bind { ticket: true },
                        2 => Expect::Close { swallow: flag, ticket: true },
                        3 => Expect::Synthetic(Synthetic::ParseComplete, true),
                        4 => {
                            t.raise(bytes::Bytes::from_static(b"E\0\0\0\x04"));
                            continue;
                        }
                        _ => {
                            t.push_query(true);
                            tickets += 1;
                            continue;
                        }
                    };
                    t.push_extended(e);
                    tickets += 1;
                }
                2 => {
                    let tag = server_tags[pick as usize % server_tags.len()];
                    let body: &[u8] = match tag {
                        b'Z' => if flag { b"I" } else { b"T" },
                        b'E' => b"C42P05\0Mx\0\0",
                        _ => b"",
                    };
                    t.server_message(tag, body, &mut out);
                }
                _ => t.emit_due(&mut out),
            }
            let mut o = Vec::new();
            t.take_outcomes(&mut o);
            outcomes += o.len();
            prop_assert!(outcomes <= tickets);
        }
        // Answer everything: replies of each kind, then ReadyForQuery(I)
        // until nothing is owed.
        for _ in 0..400 {
            if !t.awaiting_replies() {
                break;
            }
            for tag in *b"123TCZ" {
                t.server_message(tag, if tag == b'Z' { b"I" } else { b"" }, &mut out);
            }
            t.emit_due(&mut out);
        }
        t.client_message(b'S');
        t.server_message(b'Z', b"I", &mut out);
        t.emit_due(&mut out);
        prop_assert!(!t.awaiting_replies());
    }
}
