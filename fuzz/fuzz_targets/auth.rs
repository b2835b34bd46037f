//! The SCRAM server side (what a client sends before it authenticated)
//! and the password-phase message bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcat::proxy::auth::{ScramSecret, ScramServer};
use pgcat::proxy::protocol::messages::{read_cstr, read_i32};

fuzz_target!(|data: &[u8]| {
    let secret = ScramSecret::mock("fuzz");
    let (first, last) = data.split_at(data.len() / 2);
    if let Ok((mechanism, rest)) = read_cstr(first, "SASLInitialResponse") {
        let _ = mechanism;
        let _ = read_i32(rest, "SASLInitialResponse");
    }
    match ScramServer::start(secret, first) {
        Ok((server, _)) => {
            // No password matches a mock secret.
            assert!(server.finish(last).is_err());
        }
        Err(_) => {}
    }
});
