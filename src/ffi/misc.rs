//! Library-wide functions: ptrace consent, status names, the last error, the version.

use std::ffi::{c_void, CString};
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

/// A log callback: receives every record that passes `ETB_LOG`'s filter, with its level
/// (`ETB_LOG_ERROR` .. `ETB_LOG_TRACE`), its target (the library's module, e.g.
/// `"etb_core::client"`) and its message, both NUL-terminated UTF-8 valid for the call only, and
/// the `user_data` given to `etb_set_log_callback`. It may run on any thread, several at once; it
/// must not unwind (throw) into the library, nor call `etb_set_log_callback`; records the library
/// logs from inside it are dropped.
pub type EtbLogFn = Option<
    unsafe extern "C" fn(level: i32, target: *const libc::c_char, message: *const libc::c_char, user_data: *mut c_void),
>;
/// An error.
pub const ETB_LOG_ERROR: i32 = 1;
/// A warning.
pub const ETB_LOG_WARN: i32 = 2;
/// Information.
pub const ETB_LOG_INFO: i32 = 3;
/// Debugging detail.
pub const ETB_LOG_DEBUG: i32 = 4;
/// Tracing detail.
pub const ETB_LOG_TRACE: i32 = 5;

/// The callback and its user data, for any thread (the caller's contract).
struct Callback {
    f: unsafe extern "C" fn(i32, *const libc::c_char, *const libc::c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: `etb_set_log_callback`'s contract: the callback and its user data may be used from any
// thread, several at once.
unsafe impl Send for Callback {}
// SAFETY: as for Send.
unsafe impl Sync for Callback {}

impl Callback {
    fn call(&self, level: log::Level, target: &str, message: &str) {
        let c = |s: &str| CString::new(s.replace('\0', "\\0")).unwrap_or_default();
        let (target, message) = (c(target), c(message));
        let level = match level {
            log::Level::Error => ETB_LOG_ERROR,
            log::Level::Warn => ETB_LOG_WARN,
            log::Level::Info => ETB_LOG_INFO,
            log::Level::Debug => ETB_LOG_DEBUG,
            log::Level::Trace => ETB_LOG_TRACE,
        };
        // SAFETY: the caller's callback (its contract: callable from any thread, never unwinds),
        // with two NUL-terminated strings that outlive the call and its own user data.
        unsafe { (self.f)(level, target.as_ptr(), message.as_ptr(), self.user_data) }
    }
}

ffi_fn! {
    /// Sends the library's log records to `fn` instead of standard error (NULL: back to standard
    /// error). `ETB_LOG` still filters first. Callable before or after bootstrap, from any thread;
    /// once it returns, the previous callback is never called again (a record being delivered to it
    /// finishes first). `ETB_ERR_INVALID_ARGUMENT` when called from inside the callback. See
    /// `EtbLogFn` for what the callback may do.
    ///
    /// # Safety
    /// `fn` is NULL or a function keeping the `EtbLogFn` contract; `user_data` is whatever it
    /// needs, usable from any thread until the callback is replaced.
    unsafe fn etb_set_log_callback(r#fn: EtbLogFn, user_data: *mut c_void) -> EtbStatus {
        let sink: Option<etb_core::logging::Sink> = r#fn.map(|f| {
            let callback = Callback { f, user_data };
            Box::new(move |level: log::Level, target: &str, message: &str| callback.call(level, target, message))
                as etb_core::logging::Sink
        });
        etb_core::logging::set_sink(sink)?;
        Ok(())
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
