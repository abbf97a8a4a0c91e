//! rank::parse_integer on arbitrary bytes: agrees with the reference model, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etb_fuzz::check_parse_integer(data));
