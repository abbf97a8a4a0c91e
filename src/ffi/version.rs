//! The library's version: `etb_version` and the `ETB_VERSION_*` numbers, derived from Cargo.toml's
//! workspace version, the only place it is written. cbindgen writes only constants whose value is a
//! literal, so it leaves these out (cbindgen.toml excludes them) and the header's macros are
//! [`header_macros`], which `tests/header.rs` puts after the header's includes.

use super::boundary::static_str;

/// The library's major version (from Cargo.toml).
pub const ETB_VERSION_MAJOR: u32 = number(env!("CARGO_PKG_VERSION_MAJOR"));
/// The library's minor version.
pub const ETB_VERSION_MINOR: u32 = number(env!("CARGO_PKG_VERSION_MINOR"));
/// The library's patch version.
pub const ETB_VERSION_PATCH: u32 = number(env!("CARGO_PKG_VERSION_PATCH"));

/// One number of Cargo's version: decimal digits (Cargo accepts nothing else there); a value
/// past `u32` fails the build.
const fn number(digits: &str) -> u32 {
    let bytes = digits.as_bytes();
    let mut value: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit(), "a version number is decimal digits");
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

/// The header's `ETB_VERSION_*` macros, documented as cbindgen documents constants.
#[doc(hidden)]
pub fn header_macros() -> String {
    [
        ("MAJOR", ETB_VERSION_MAJOR, "The library's major version (from Cargo.toml)."),
        ("MINOR", ETB_VERSION_MINOR, "The library's minor version."),
        ("PATCH", ETB_VERSION_PATCH, "The library's patch version."),
    ]
    .iter()
    .map(|(name, value, doc)| format!("\n/**\n * {doc}\n */\n#define ETB_VERSION_{name} {value}\n"))
    .collect::<String>()
    .trim_end()
    .to_string()
}

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
        assert_eq!((number("0"), number("17"), number("4294967295")), (0, 17, u32::MAX));
        let macros = header_macros();
        assert!(
            macros.contains(&format!("#define ETB_VERSION_MINOR {}\n", env!("CARGO_PKG_VERSION_MINOR"))),
            "{macros}"
        );
        // SAFETY: etb_version returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(etb_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
