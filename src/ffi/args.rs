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

/// An out-array of `capacity` elements, checked now and written later, only on success.
pub(crate) struct OutSlice<T>(*mut T, usize);

impl<T: Copy> OutSlice<T> {
    pub fn capacity(&self) -> usize {
        self.1
    }

    /// Writes `values` (at most `capacity`) to the array's first elements.
    pub fn write(self, values: &[T]) {
        let n = values.len().min(self.1);
        if n > 0 {
            // SAFETY: checked non-NULL by `out_slice` when the capacity is not 0; `capacity`
            // writable, aligned elements by the export's contract; `n <= capacity`.
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0, n) };
        }
    }
}

/// Checks an out-array of `capacity` elements; NULL is accepted only with capacity 0.
pub(crate) fn out_slice<T>(ptr: *mut T, capacity: usize, name: &str) -> Result<OutSlice<T>, FfiError> {
    if ptr.is_null() && capacity > 0 {
        return Err(FfiError::null(name));
    }
    Ok(OutSlice(ptr, capacity))
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

/// A versioned struct of the C ABI (`EtbBootstrapOptions`, `EtbCudaTensor`): its first field is a
/// `u32` `struct_size`, the `sizeof` the caller was compiled with, and later versions only append
/// fields.
///
/// # Safety
/// Implement it only for `#[repr(C)]` structs that start with a `u32` and for which every bit
/// pattern of every field is a valid value (integers, floats, raw pointers, optional function
/// pointers): [`versioned`] copies the caller's bytes over such a struct.
pub(crate) unsafe trait Versioned: Copy {
    /// The function that fills the struct for the caller (named in messages).
    const INIT_FN: &'static str;
}

/// A `struct_size` past this is garbage (an uninitialized struct), not a newer caller.
pub(crate) const MAX_STRUCT_SIZE: usize = 4096;

/// Reads a caller's versioned struct, whatever version it was compiled with: `min_size` and up
/// (an older caller's smaller struct: the fields it does not cover keep `defaults`), or a newer
/// caller's larger one, accepted only if every byte past this library's struct is zero (a request
/// this library would silently ignore otherwise). Padding inside the struct is not checked.
/// `name` names the argument in messages.
pub(crate) fn versioned<T: Versioned>(ptr: *const T, name: &str, min_size: usize, defaults: T) -> Result<T, FfiError> {
    let known = std::mem::size_of::<T>();
    // `struct_size` is the first field: read it alone, then exactly the bytes it announces.
    let size = *reference(ptr.cast::<u32>(), name)? as usize;
    if !(min_size..=MAX_STRUCT_SIZE).contains(&size) {
        return Err(FfiError::new(
            ETB_ERR_INVALID_ARGUMENT,
            format!(
                "{name}->struct_size is {size}, outside {min_size}..={MAX_STRUCT_SIZE}: fill the {name} with {} first",
                T::INIT_FN
            ),
        ));
    }
    let bytes = slice(ptr.cast::<u8>(), size, name)?;
    let (ours, tail) = bytes.split_at(size.min(known));
    if let Some(i) = tail.iter().position(|&b| b != 0) {
        return Err(FfiError::new(
            ETB_ERR_INVALID_ARGUMENT,
            format!(
                "{name} byte {} is set, past the fields this library ({}) knows: the caller was built for a newer \
                 etha-tensor-bus",
                known + i,
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    // Only the caller's bytes are read, into a local that starts with the defaults.
    let mut local = defaults;
    // SAFETY: `ours` holds at most size_of::<T>() bytes and is copied over the start of a
    // properly aligned local of that size; every bit pattern is a valid value of each field
    // (the `Versioned` contract).
    unsafe { std::ptr::copy_nonoverlapping(ours.as_ptr(), (&mut local as *mut T).cast::<u8>(), ours.len()) };
    Ok(local)
}

/// Decodes an enum value of the C ABI with its table of `(number, C name, value)`; anything else
/// is `ETB_ERR_INVALID_ARGUMENT` naming `what` and listing the table.
pub(crate) fn decode<T: Copy>(number: i32, what: &str, table: &[(i32, &str, T)]) -> Result<T, FfiError> {
    if let Some((_, _, value)) = table.iter().find(|(n, _, _)| *n == number) {
        return Ok(*value);
    }
    let names: Vec<String> = table.iter().map(|(n, name, _)| format!("{name} ({n})")).collect();
    let list = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(FfiError::new(ETB_ERR_INVALID_ARGUMENT, format!("{what} is {number}; use {list}")))
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

    #[test]
    fn enum_decoding_lists_the_choices() {
        let table = [(0, "ETB_A", 'a'), (1, "ETB_B", 'b'), (2, "ETB_C", 'c')];
        assert_eq!(decode(1, "mode", &table).unwrap(), 'b');
        let e = decode(7, "mode", &table).unwrap_err();
        assert_eq!(e.status, ETB_ERR_INVALID_ARGUMENT);
        assert_eq!(e.message, "mode is 7; use ETB_A (0), ETB_B (1) or ETB_C (2)");
        assert_eq!(decode(-1, "`kind`", &table[..2]).unwrap_err().message, "`kind` is -1; use ETB_A (0) or ETB_B (1)");
    }
}
