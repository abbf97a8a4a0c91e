//! rank::resolve on arbitrary values of AGENT_RANK, RANK, AGENT_RANK_OFFSET and LOCAL_RANK.
//! The input is split into the four values at NUL bytes (a real environment value holds none);
//! the low four bits of the first byte say which of them are set.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mask, rest)) = data.split_first() else { return };
    let mut parts = rest.split(|&b| b == 0);
    let vars: [Option<Vec<u8>>; 4] = std::array::from_fn(|i| {
        let value = parts.next().unwrap_or_default().to_vec();
        (mask & (1 << i) != 0).then_some(value)
    });
    etb_fuzz::check_resolve(&vars);
});
