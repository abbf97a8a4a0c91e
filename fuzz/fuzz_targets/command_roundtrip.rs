//! commands::Command::encode on arbitrary commands (all five variants, any strings, payloads,
//! integers, floats, optional fields): rmpv decodes one map whose keys are "type", the
//! command's fields, "timestamp", "semaphore_name", in that order, with the encoded values.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: etb_fuzz::Encoded| etb_fuzz::check_command_roundtrip(&input));
