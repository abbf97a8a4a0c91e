//! The C boundary: the two macros every export's body is written with ([`status_boundary!`],
//! [`value_boundary!`]), the panic boundary they put around the body, and the thread's last
//! error, recorded (and logged) in one place. Every export is a plain `#[no_mangle] pub [unsafe]
//! extern "C" fn` in the source (so that grep, ctags and cbindgen see it as it is), whose whole
//! body is one of the two macros.
//!
//! Every error message reads `ETB_ERR_X: etb_function: what failed ...`: the status name and the
//! export's name are added here, once, so no export repeats its own name and no helper needs it.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use super::status::{status_name, status_of, EtbStatus, ETB_ERR_NULL_ARGUMENT, ETB_ERR_PANIC, ETB_OK};
use etb_core::error::{Error, ErrorKind};

/// The name of the export this expands in, for messages: the enclosing function's name, read from
/// the type name of a function item declared in its body (no second hand-written copy of the
/// name; `tests/exports.rs` checks every export's messages name it). Expand it at the top of the
/// export's body, outside any closure.
macro_rules! export_name {
    () => {{
        fn here() {}
        $crate::ffi::boundary::enclosing_function(::std::any::type_name_of_val(&here))
    }};
}

/// The body of a status-returning export: `status_boundary!({ .. })` runs the block, which
/// evaluates to `Result<(), FfiError>`, inside the panic boundary under the export's own name;
/// `Ok` is `ETB_OK`, an error its status (recorded as the thread's last error), a panic
/// `ETB_ERR_PANIC`.
macro_rules! status_boundary {
    ($body:block) => {
        $crate::ffi::boundary::status(export_name!(), move || $body)
    };
}

/// The body of an export that returns a value (an accessor) or nothing (a release function):
/// `value_boundary!(sentinel, { .. })` runs the block, which evaluates to `Result<T, FfiError>`,
/// inside the panic boundary; an error (or a panic) is recorded and the export returns `sentinel`
/// (`()` for a function that returns nothing).
macro_rules! value_boundary {
    ($sentinel:expr, $body:block) => {
        $crate::ffi::boundary::value(export_name!(), $sentinel, move || $body)
    };
}

/// The function's own name out of the type name of a function item declared in its body
/// (`etha_tensor_bus::ffi::commands::etb_client_transfer::here` gives `etb_client_transfer`).
pub(crate) fn enclosing_function(item_type_name: &'static str) -> &'static str {
    let path = item_type_name.strip_suffix("::here").unwrap_or(item_type_name);
    path.rsplit("::").next().unwrap_or(path)
}

/// A failure on its way to C: a status and a message (without the status or function name,
/// which the boundary adds).
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: EtbStatus,
    pub message: String,
}

impl FfiError {
    pub fn new(status: EtbStatus, message: impl Into<String>) -> Self {
        FfiError { status, message: message.into() }
    }

    /// A required pointer argument was NULL.
    pub fn null(argument: &str) -> Self {
        FfiError::new(ETB_ERR_NULL_ARGUMENT, format!("argument `{argument}` is NULL"))
    }
}

/// The C name of what a core message tells the caller to do, added where it helps.
const RECONNECT: &str = " (etb_client_reconnect)";

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let mut message = e.message().to_owned();
        if e.kind() == ErrorKind::AgentDied && message.ends_with("reconnect the client once a new agent runs") {
            message.push_str(RECONNECT);
        }
        FfiError { status: status_of(e.kind()), message }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static IN_BOUNDARY: Cell<bool> = const { Cell::new(false) };
}

/// Records `"{STATUS}: {function}: {message}"` as this thread's last error and logs it (debug
/// level: the caller gets the status and decides what to tell its user).
fn record(status: EtbStatus, function: &str, message: &str) -> EtbStatus {
    let text = format!("{}: {function}: {message}", status_name(status).to_string_lossy());
    log::debug!("{text}");
    let c = CString::new(text.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; never panic here (we are
    // outside catch_unwind).
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut slot) = e.try_borrow_mut() {
            *slot = c;
        }
    });
    status
}

/// The thread's last error message; "" when none. Valid until the next failing call on this
/// thread.
pub(crate) fn last_error_ptr() -> *const libc::c_char {
    LAST_ERROR.try_with(|e| e.try_borrow().map(|s| s.as_ptr()).unwrap_or(c"".as_ptr())).unwrap_or(c"".as_ptr())
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Keeps the default panic hook from printing when a panic is caught at our boundary (the
/// library never prints); panics elsewhere in a Rust host still reach the host's hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_BOUNDARY.try_with(Cell::get).unwrap_or(false) {
                log::error!("caught at the C boundary: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f` inside the boundary: a panic becomes `ETB_ERR_PANIC` with its message.
fn guarded<T>(function: &str, f: impl FnOnce() -> Result<T, FfiError>) -> Result<T, EtbStatus> {
    let outer = IN_BOUNDARY.try_with(|b| b.replace(true)).unwrap_or(false);
    let result = catch_unwind(AssertUnwindSafe(|| {
        install_panic_hook();
        etb_core::logging::init();
        f()
    }));
    let _ = IN_BOUNDARY.try_with(|b| b.set(outer));
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(record(e.status, function, &e.message)),
        Err(payload) => Err(record(
            ETB_ERR_PANIC,
            function,
            &format!("internal error: {}; please report it (the process is unharmed)", panic_text(&*payload)),
        )),
    }
}

/// Runs a status-returning export body.
pub(crate) fn status(function: &str, f: impl FnOnce() -> Result<(), FfiError>) -> EtbStatus {
    match guarded(function, f) {
        Ok(()) => ETB_OK,
        Err(status) => status,
    }
}

/// Runs a value-returning export body (an accessor): an error or a panic is recorded and the
/// export returns `sentinel`.
pub(crate) fn value<T>(function: &str, sentinel: T, f: impl FnOnce() -> Result<T, FfiError>) -> T {
    guarded(function, f).unwrap_or(sentinel)
}

/// A static C string's pointer.
pub(crate) fn static_str(s: &'static CStr) -> *const libc::c_char {
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: last_error_ptr is never NULL and NUL-terminated, valid until the next failure.
        unsafe { CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn panics_become_a_status_and_a_message() {
        let s = status("etb_test", || panic!("boom"));
        assert_eq!(s, ETB_ERR_PANIC);
        assert!(last().starts_with("ETB_ERR_PANIC: etb_test: internal error: boom"), "{}", last());
        assert_eq!(value("etb_test", -1, || -> Result<i32, FfiError> { panic!("x") }), -1);
    }

    #[test]
    fn agent_died_names_the_c_reconnect_function() {
        let e = Error::new(
            ErrorKind::AgentDied,
            "Transfer: the agent process (pid 7) has exited; reconnect the client once a new agent runs",
        );
        assert!(FfiError::from(e).message.ends_with("once a new agent runs (etb_client_reconnect)"));
        let other = Error::new(ErrorKind::Timeout, "reconnect the client once a new agent runs");
        assert!(!FfiError::from(other).message.contains("etb_client_reconnect"));
    }

    #[test]
    fn the_export_name_is_the_enclosing_function() {
        fn etb_example() -> EtbStatus {
            status_boundary!({ Err(FfiError::new(ETB_ERR_NULL_ARGUMENT, "x")) })
        }
        assert_eq!(etb_example(), ETB_ERR_NULL_ARGUMENT);
        assert_eq!(last(), "ETB_ERR_NULL_ARGUMENT: etb_example: x");
        assert_eq!(enclosing_function("a::b::etb_c::here"), "etb_c");
        assert_eq!(enclosing_function("etb_d"), "etb_d");
    }

    #[test]
    fn success_leaves_the_last_error_alone() {
        status("f", || Err(FfiError::new(ETB_ERR_NULL_ARGUMENT, "first")));
        assert_eq!(status("f", || Ok(())), ETB_OK);
        assert_eq!(last(), "ETB_ERR_NULL_ARGUMENT: f: first");
        assert_eq!(status("g", || Err(FfiError::null("p"))), ETB_ERR_NULL_ARGUMENT);
        assert_eq!(last(), "ETB_ERR_NULL_ARGUMENT: g: argument `p` is NULL");
    }
}
