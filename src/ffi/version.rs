//! The library's version: `etb_version` and the `ETB_VERSION_*` macros, from Cargo.toml.

use super::boundary::static_str;

/// The library's major version (from Cargo.toml; a test checks they agree).
pub const ETB_VERSION_MAJOR: u32 = 0;
/// The library's minor version.
pub const ETB_VERSION_MINOR: u32 = 1;
/// The library's patch version.
pub const ETB_VERSION_PATCH: u32 = 0;

/// The library's version, `"MAJOR.MINOR.PATCH"` (from Cargo.toml). A static string, valid
/// forever. Thread-safe.
/// Takes no pointer argument (nothing can be NULL).
#[no_mangle]
pub extern "C" fn etb_version() -> *const libc::c_char {
    value_boundary!(c"".as_ptr(), {
        Ok(static_str(match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(s) => s,
            Err(_) => c"",
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_macros_match_cargo_toml() {
        assert_eq!(ETB_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
        assert_eq!(ETB_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
        assert_eq!(ETB_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
        // SAFETY: etb_version returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(etb_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
