//! Startup-phase packets and the `options` startup parameter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcat::proxy::protocol::codec::peek_startup_len;
use pgcat::proxy::protocol::messages::{parse_startup, StartupPacket};
use pgcat::proxy::protocol::settings::parse_options;

fuzz_target!(|data: &[u8]| {
    let _ = peek_startup_len(data);
    if let Ok(StartupPacket::Startup { params, .. }) = parse_startup(data) {
        for (k, v) in params {
            if k == "options" {
                let _ = parse_options(&v);
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_options(s);
    }
});
