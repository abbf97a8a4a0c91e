//! Where the library's log records go: standard error (filtered by `ETB_LOG`), or a callback
//! set with `etb_set_log_callback`.

use std::ffi::{c_void, CString};

use super::status::EtbStatus;

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

/// Sends the library's log records to `fn` instead of standard error (NULL: back to standard
/// error). `ETB_LOG` still filters first. Callable before or after bootstrap, from any thread;
/// once it returns, the previous callback is never called again (a record being delivered to it
/// finishes first). `ETB_ERR_INVALID_ARGUMENT` when called from inside the callback. See
/// `EtbLogFn` for what the callback may do.
///
/// # Safety
/// `fn` is NULL or a function keeping the `EtbLogFn` contract; `user_data` is whatever it
/// needs, usable from any thread until the callback is replaced.
#[no_mangle]
pub unsafe extern "C" fn etb_set_log_callback(r#fn: EtbLogFn, user_data: *mut c_void) -> EtbStatus {
    status_boundary!({
        let sink: Option<etb_core::logging::Sink> = r#fn.map(|f| {
            let callback = Callback { f, user_data };
            Box::new(move |level: log::Level, target: &str, message: &str| callback.call(level, target, message))
                as etb_core::logging::Sink
        });
        etb_core::logging::set_sink(sink)?;
        Ok(())
    })
}
