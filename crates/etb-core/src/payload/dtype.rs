//! The dtypes of CUDA tensor payloads, numbered for the C ABI (never reused) and named as torch
//! names them (`torch.float32` is `GLOBAL torch float32` in a pickle).

/// (number, torch's name, bytes per element).
pub const DTYPES: [(i32, &str, usize); 12] = [
    (0, "float32", 4),
    (1, "float64", 8),
    (2, "float16", 2),
    (3, "bfloat16", 2),
    (4, "uint8", 1),
    (5, "int8", 1),
    (6, "int16", 2),
    (7, "int32", 4),
    (8, "int64", 8),
    (9, "bool", 1),
    (10, "float8_e4m3fn", 1),
    (11, "float8_e5m2", 1),
];

/// torch's name of dtype `code`, if it is one.
pub fn name(code: i32) -> Option<&'static str> {
    DTYPES.iter().find(|d| d.0 == code).map(|d| d.1)
}

/// Bytes per element of dtype `code` (0 if unknown).
pub fn size(code: i32) -> usize {
    DTYPES.iter().find(|d| d.0 == code).map_or(0, |d| d.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (i, d) in DTYPES.iter().enumerate() {
            assert_eq!(d.0, i as i32, "numbers are dense and in order");
        }
        assert_eq!((name(3), size(3)), (Some("bfloat16"), 2));
        assert_eq!((name(12), size(-1)), (None, 0));
    }
}
