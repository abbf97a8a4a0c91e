//! The LMDB file checks (lmdb_file::check_meta) on arbitrary bytes: never a panic, and a page
//! accepted only with LMDB's magic, data version and a power-of-two page size in range.
#![no_main]

use etb_core::lmdb::file_check::{check_meta, DATA_VERSION, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(psize) = check_meta(data, 0) {
        let u32_at = |o: usize| u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(16), MAGIC);
        assert_eq!(u32_at(20), DATA_VERSION);
        assert!(psize.is_power_of_two() && (512..=65536).contains(&psize));
        assert_eq!(u32_at(40), psize);
    }
});
