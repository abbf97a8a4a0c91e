//! The one family of argument helpers every export uses: the only place where a C pointer is
//! checked for NULL and becomes a Rust reference, slice or string, and where out-pointers are
//! written. Each failure names the argument; the boundary adds the status and function names.
//!
//! Soundness: these functions dereference what the C caller passed. They are called only by
//! exports whose `# Safety` contract makes every non-NULL pointer valid for what is asked of it
//! (a live handle, `len` readable elements, a NUL-terminated string, a writable out-pointer)
//! for the duration of the call; that contract is what each `SAFETY:` comment below relies on.

use std::ffi::CStr;

use super::boundary::FfiError;
use super::status::{ETB_ERR_INVALID_ARGUMENT, ETB_ERR_NULL_ARGUMENT};
use etb_core::timeout::Timeout;

/// A shared reference to what `ptr` points to; `ETB_ERR_NULL_ARGUMENT` naming `name` if NULL.
pub(crate) fn reference<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, FfiError> {
    // SAFETY: non-NULL pointers are valid and live for the call (the export's contract).
    unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(name))
}

/// A shared reference, or `None` for NULL (for arguments where NULL means "absent").
pub(crate) fn optional_reference<'a, T>(ptr: *const T) -> Option<&'a T> {
    // SAFETY: non-NULL pointers are valid and live for the call (the export's contract).
    unsafe { ptr.as_ref() }
}

/// An out-pointer, checked non-NULL now and written later, only on success.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Writes `value` (without dropping what was there: out-pointers may be uninitialized).
    pub fn write(self, value: T) {
        // SAFETY: checked non-NULL by `out`; writable and aligned by the export's contract.
        unsafe { self.0.write(value) }
    }
}

impl<T: Copy> Out<T> {
    /// Writes `value` after zeroing all `size_of::<T>()` bytes, so that its padding is zero too
    /// (for structs the caller may later hand back byte for byte).
    pub fn write_zero_padded(self, value: T) {
        // SAFETY: checked non-NULL by `out`; `size_of::<T>()` writable bytes, aligned for `T`, by
        // the export's contract; `T: Copy` has no destructor to skip.
        unsafe {
            std::ptr::write_bytes(self.0.cast::<u8>(), 0, std::mem::size_of::<T>());
            self.0.write(value);
        }
    }
}

/// Checks an out-pointer; `ETB_ERR_NULL_ARGUMENT` naming `name` if NULL.
pub(crate) fn out<T>(ptr: *mut T, name: &str) -> Result<Out<T>, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(name));
    }
    Ok(Out(ptr))
}

/// `len` elements from `ptr`: NULL is accepted only with `len` 0 (the empty slice).
pub(crate) fn slice<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T], FfiError> {
    match optional_slice(ptr, len, name)? {
        Some(s) => Ok(s),
        None => Ok(&[]),
    }
}

/// An optional byte string: NULL with length 0 is absent (`None`), non-NULL with length 0 is
/// empty, NULL with a length is `ETB_ERR_NULL_ARGUMENT`.
pub(crate) fn optional_slice<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<Option<&'a [T]>, FfiError> {
    if ptr.is_null() {
        return match len {
            0 => Ok(None),
            n => Err(FfiError::new(ETB_ERR_NULL_ARGUMENT, format!("argument `{name}` is NULL with length {n}"))),
        };
    }
    if len.checked_mul(std::mem::size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(FfiError::new(
            ETB_ERR_INVALID_ARGUMENT,
            format!("argument `{name}` has an impossible length {len}"),
        ));
    }
    // SAFETY: non-NULL, `len` readable and initialized elements that stay unchanged for the call
    // (the export's contract); the total size was checked to fit in isize.
    Ok(Some(unsafe { std::slice::from_raw_parts(ptr, len) }))
}

/// A NUL-terminated string (any bytes but NUL), borrowed for the call.
pub(crate) fn c_str<'a>(ptr: *const libc::c_char, name: &str) -> Result<&'a CStr, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated, unchanged for the call (the export's contract).
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// A NUL-terminated UTF-8 string, borrowed for the call: the agent's protocol needs text.
pub(crate) fn utf8<'a>(ptr: *const libc::c_char, name: &str) -> Result<&'a str, FfiError> {
    let bytes = c_str(ptr, name)?.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::new(
            ETB_ERR_INVALID_ARGUMENT,
            format!("argument `{name}` is not valid UTF-8 (byte {}): the agent's protocol needs text", e.valid_up_to()),
        )
    })
}

/// Gives a handle to C: the caller owns it until it hands it back to [`take_handle`].
pub(crate) fn new_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes back a handle made by [`new_handle`] (to drop it); `None` for NULL.
pub(crate) fn take_handle<T>(ptr: *mut T) -> Option<Box<T>> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL handles come from `new_handle` (Box::into_raw) and are given up by the
    // caller with this call, exactly once (the release function's contract).
    Some(unsafe { Box::from_raw(ptr) })
}

/// A timeout in seconds (finite >= 0, or +infinity), validated; the error names the argument.
pub(crate) fn timeout(seconds: f64, name: &str) -> Result<Timeout, FfiError> {
    Ok(Timeout::from_secs_f64(seconds, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_lengths() {
        let p: *const u8 = std::ptr::null();
        assert_eq!(reference(p, "x").unwrap_err().message, "argument `x` is NULL");
        assert_eq!(slice(p, 0, "s").unwrap(), &[] as &[u8]);
        assert_eq!(slice(p, 3, "s").unwrap_err().message, "argument `s` is NULL with length 3");
        assert_eq!(optional_slice(p, 0, "s").unwrap(), None);
        let data = [1u8, 2, 3];
        assert_eq!(optional_slice(data.as_ptr(), 0, "s").unwrap(), Some(&[] as &[u8]));
        assert_eq!(slice(data.as_ptr(), 3, "s").unwrap(), &data);
        let big: *const u64 = data.as_ptr().cast();
        assert_eq!(slice(big, usize::MAX / 4, "s").unwrap_err().status, ETB_ERR_INVALID_ARGUMENT);
        assert!(out(std::ptr::null_mut::<i32>(), "o").is_err());
        let mut v = 0i32;
        out(&mut v, "o").unwrap().write(7);
        assert_eq!(v, 7);
        assert_eq!(utf8(c"\xff".as_ptr(), "t").unwrap_err().status, ETB_ERR_INVALID_ARGUMENT);
        assert_eq!(utf8(c"ok".as_ptr(), "t").unwrap(), "ok");
        assert!(take_handle(std::ptr::null_mut::<i32>()).is_none());
        assert_eq!(*take_handle(new_handle(5)).unwrap(), 5);
    }
}
