//! Library-wide functions: ptrace consent, status names, the last error, the version.

use std::path::Path;

use super::boundary::{last_error_ptr, static_str};
use super::status::{status_name, EtbStatus};
use etb_core::sys::ptrace::{grant, set, Tracer, YAMA_DIR};

/// The library's major version (from Cargo.toml; a test checks they agree).
pub const ETB_VERSION_MAJOR: u32 = 0;
/// The library's minor version.
pub const ETB_VERSION_MINOR: u32 = 1;
/// The library's patch version.
pub const ETB_VERSION_PATCH: u32 = 0;

ffi_fn! {
    /// Lets every process of this user ptrace the calling process (`PR_SET_PTRACER_ANY`), as the
    /// reference `setup_ptrace()` does, so that the agent can take file descriptors out of this
    /// worker (`pidfd_getfd`) under Yama `ptrace_scope=1`. Prefer what `etb_bootstrap_client`
    /// already does: authorize only the agent's process.
    ///
    /// Later bootstraps keep this (they never narrow ANY to one pid).
    ///
    /// Returns `ETB_OK` when done, and also when the kernel has no Yama (no consent exists; logged
    /// at debug level); `ETB_ERR_PTRACE` with the errno otherwise. Affects the whole process;
    /// thread-safe; does not block.
    /// Takes no pointer argument (nothing can be NULL).
    fn etb_setup_ptrace() -> EtbStatus {
        grant(Tracer::Any, Path::new(YAMA_DIR))?;
        Ok(())
    }
}

ffi_fn! {
    /// Lets exactly one process (and its descendants) ptrace the calling process
    /// (`PR_SET_PTRACER`, `tracer_pid`), replacing any earlier authorization of this process: the
    /// least-privilege form of `etb_setup_ptrace`. `ETB_ERR_INVALID_ARGUMENT` for a pid <= 0;
    /// `ETB_OK` also where the kernel has no Yama; under Yama `ptrace_scope` 2 or 3,
    /// `ETB_ERR_PTRACE` with what the administrator must change. Affects the whole process;
    /// thread-safe; does not block.
    /// Takes no pointer argument (nothing can be NULL).
    fn etb_setup_ptrace_pid(tracer_pid: i32) -> EtbStatus {
        set(Tracer::Pid(tracer_pid), Path::new(YAMA_DIR))?;
        Ok(())
    }
}

ffi_fn! {
    /// The name of a status code, e.g. `"ETB_ERR_ENV"`; `"ETB_UNKNOWN_STATUS"` for values that are
    /// not published codes. A static string, valid forever. Thread-safe.
    /// Takes no pointer argument (nothing can be NULL).
    fn etb_status_name(status: EtbStatus) -> *const libc::c_char = static_str(c"ETB_UNKNOWN_STATUS"); {
        Ok(static_str(status_name(status)))
    }
}

ffi_fn! {
    /// The message of the last failed call on the calling thread, e.g. `"ETB_ERR_ENV: environment
    /// variable RANK is not set: ..."`; `""` when no call on this thread has failed. Successful calls
    /// leave it as it was. Owned by the library, per thread: valid until the next failing call on
    /// the same thread. Never NULL. Thread-safe.
    fn etb_last_error_message() -> *const libc::c_char = c"".as_ptr(); {
        Ok(last_error_ptr())
    }
}

ffi_fn! {
    /// The library's version, `"MAJOR.MINOR.PATCH"` (from Cargo.toml). A static string, valid
    /// forever. Thread-safe.
    /// Takes no pointer argument (nothing can be NULL).
    fn etb_version() -> *const libc::c_char = c"".as_ptr(); {
        Ok(static_str(
            match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
                Ok(s) => s,
                Err(_) => c"",
            },
        ))
    }
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
