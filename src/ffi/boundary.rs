//! The C boundary: one place that catches panics, records the thread's last error (and logs
//! it), and turns results into statuses. Every exported function goes through `call` (status
//! returning) or `value` (accessors returning a value or a sentinel).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use super::status::{status_name, status_of, EtbStatus, ETB_ERR_NULL_ARGUMENT, ETB_ERR_PANIC, ETB_OK};
use crate::error::Error;

/// A failure on its way to C: a status and a message.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: EtbStatus,
    pub message: String,
}

impl FfiError {
    pub fn new(status: EtbStatus, message: impl Into<String>) -> Self {
        FfiError { status, message: message.into() }
    }

    pub fn null(function: &str, argument: &str) -> Self {
        FfiError::new(ETB_ERR_NULL_ARGUMENT, format!("{function}: argument `{argument}` is NULL"))
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError { status: status_of(e.kind()), message: e.message().to_owned() }
    }
}

/// Returns `Err(FfiError::null(..))` from the enclosing closure when a pointer is NULL.
macro_rules! require_non_null {
    ($function:literal, $($ptr:ident),+) => {
        $(
            if $ptr.is_null() {
                return Err($crate::ffi::boundary::FfiError::null($function, stringify!($ptr)));
            }
        )+
    };
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static IN_BOUNDARY: Cell<bool> = const { Cell::new(false) };
}

/// Records `message` as this thread's last error and logs it (debug level: the caller gets the
/// status and decides what to tell its user).
pub(crate) fn record(status: EtbStatus, message: &str) -> EtbStatus {
    let text = format!("{}: {}", status_name(status).to_string_lossy(), message);
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
    LAST_ERROR
        .try_with(|e| e.try_borrow().map(|s| s.as_ptr()).unwrap_or(c"".as_ptr()))
        .unwrap_or(c"".as_ptr())
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

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Box<dyn Any + Send>> {
    let outer = IN_BOUNDARY.try_with(|b| b.replace(true)).unwrap_or(false);
    let result = catch_unwind(AssertUnwindSafe(|| {
        install_panic_hook();
        crate::logging::init();
        f()
    }));
    let _ = IN_BOUNDARY.try_with(|b| b.set(outer));
    result
}

/// Runs a status-returning export body.
pub(crate) fn call(function: &str, f: impl FnOnce() -> Result<(), FfiError>) -> EtbStatus {
    match guarded(f) {
        Ok(Ok(())) => ETB_OK,
        Ok(Err(e)) => record(e.status, &e.message),
        Err(payload) => record(
            ETB_ERR_PANIC,
            &format!("internal error in {function}: {}; please report it (the process is unharmed)", panic_text(&*payload)),
        ),
    }
}

/// Runs a value-returning export body (an accessor): an error or a panic records the message
/// and returns `sentinel`.
pub(crate) fn value<T>(function: &str, sentinel: T, f: impl FnOnce() -> Result<T, FfiError>) -> T {
    match guarded(f) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            record(e.status, &e.message);
            sentinel
        }
        Err(payload) => {
            record(ETB_ERR_PANIC, &format!("internal error in {function}: {}", panic_text(&*payload)));
            sentinel
        }
    }
}

/// A static C string's pointer.
pub(crate) fn static_str(s: &'static CStr) -> *const libc::c_char {
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        unsafe { CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn panics_become_a_status_and_a_message() {
        let s = call("etb_test", || panic!("boom"));
        assert_eq!(s, ETB_ERR_PANIC);
        assert!(last().contains("boom") && last().contains("etb_test"), "{}", last());
        assert_eq!(value("etb_test", -1, || -> Result<i32, FfiError> { panic!("x") }), -1);
    }

    #[test]
    fn success_leaves_the_last_error_alone() {
        call("f", || Err(FfiError::new(ETB_ERR_NULL_ARGUMENT, "first")));
        assert_eq!(call("f", || Ok(())), ETB_OK);
        assert_eq!(last(), "ETB_ERR_NULL_ARGUMENT: first");
        let p: *const u8 = std::ptr::null();
        let s = call("g", || {
            require_non_null!("g", p);
            Ok(())
        });
        assert_eq!(s, ETB_ERR_NULL_ARGUMENT);
        assert!(last().contains("`p` is NULL"));
    }
}
