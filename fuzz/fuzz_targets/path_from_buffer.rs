//! ffi::naming::path_from_buffer on arbitrary buffers: Ok iff the first NUL is at an index > 0,
//! and then the path is the bytes before it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etb_fuzz::check_path_from_buffer(data, "state path");
});
