//! What a caller reads after a failure: a status's name and the thread's last error message.

use super::boundary::{last_error_ptr, static_str};
use super::status::{status_name, EtbStatus};

/// The name of a status code, e.g. `"ETB_ERR_ENV"`; `"ETB_UNKNOWN_STATUS"` for values that are
/// not published codes. A static string, valid forever. Thread-safe.
/// Takes no pointer argument (nothing can be NULL).
#[no_mangle]
pub extern "C" fn etb_status_name(status: EtbStatus) -> *const libc::c_char {
    value_boundary!(static_str(c"ETB_UNKNOWN_STATUS"), { Ok(static_str(status_name(status))) })
}

/// The message of the last failed call on the calling thread, e.g. `"ETB_ERR_ENV: environment
/// variable RANK is not set: ..."`; `""` when no call on this thread has failed. Successful calls
/// leave it as it was. Owned by the library, per thread: valid until the next failing call on
/// the same thread. Never NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn etb_last_error_message() -> *const libc::c_char {
    value_boundary!(c"".as_ptr(), { Ok(last_error_ptr()) })
}
