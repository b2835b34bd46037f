//! The scanners of query texts and replies: effects and setting names,
//! DEALLOCATE, error fields, data rows, readback rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcat::proxy::protocol::effects::{deallocate, Effects, QueryHints};
use pgcat::proxy::protocol::messages::{parse_data_row, parse_error_fields, parse_parameter_status};
use pgcat::proxy::protocol::tracker::sqlstate;

fuzz_target!(|data: &[u8]| {
    let hints = QueryHints::scan(data);
    assert!(hints.names.len() <= 64);
    let _ = deallocate(data);
    let _ = Effects::of_tag(data);
    let _ = parse_error_fields(data);
    let _ = parse_data_row(data);
    let _ = parse_parameter_status(data);
    let _ = sqlstate(data);
});
