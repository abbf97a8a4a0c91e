//! state_db::parse_heartbeat on arbitrary bytes gives only finite values; and the float made of
//! the input's first 8 bytes, if finite, round-trips through every form Rust prints it in.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etb_fuzz::check_parse_heartbeat(data);
    if let Some(bits) = data.get(..8) {
        etb_fuzz::check_heartbeat_round_trip(f64::from_le_bytes(bits.try_into().unwrap()));
    }
});
