//! Conversions from C arguments, each failing with a status and a message naming the argument.

use std::ffi::CStr;

use super::boundary::FfiError;
use super::status::{ETB_ERR_INVALID_ARGUMENT, ETB_ERR_NULL_ARGUMENT};
use crate::commands::TransferKind;
use crate::timeout::Timeout;

/// A transfer direction across the C ABI: `ETB_TRANSFER_SEND` or `ETB_TRANSFER_RECV`.
pub type EtbTransferKind = i32;
/// This worker sends the batch.
pub const ETB_TRANSFER_SEND: EtbTransferKind = 0;
/// This worker receives the batch.
pub const ETB_TRANSFER_RECV: EtbTransferKind = 1;

/// A NUL-terminated UTF-8 string argument, borrowed for the call.
pub(crate) fn utf8<'a>(function: &str, name: &str, ptr: *const libc::c_char) -> Result<&'a str, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(function, name));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract; borrowed for the call only.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::new(
            ETB_ERR_INVALID_ARGUMENT,
            format!("{function}: argument `{name}` is not valid UTF-8 (byte {}): the agent's protocol needs text", e.valid_up_to()),
        )
    })
}

/// An optional payload: NULL with length 0 is absent (nil), non-NULL with length 0 is an empty
/// payload, NULL with a length is an error.
pub(crate) fn payload<'a>(function: &str, name: &str, ptr: *const u8, len: usize) -> Result<Option<&'a [u8]>, FfiError> {
    match (ptr.is_null(), len) {
        (true, 0) => Ok(None),
        (true, _) => Err(FfiError::new(ETB_ERR_NULL_ARGUMENT, format!("{function}: argument `{name}` is NULL with length {len}"))),
        // SAFETY: non-NULL, `len` readable bytes by the caller's contract; borrowed for the call.
        (false, _) => Ok(Some(unsafe { std::slice::from_raw_parts(ptr, len) })),
    }
}

pub(crate) fn transfer_kind(function: &str, kind: EtbTransferKind) -> Result<TransferKind, FfiError> {
    match kind {
        ETB_TRANSFER_SEND => Ok(TransferKind::Send),
        ETB_TRANSFER_RECV => Ok(TransferKind::Recv),
        other => Err(FfiError::new(
            ETB_ERR_INVALID_ARGUMENT,
            format!("{function}: `kind` is {other}; use ETB_TRANSFER_SEND (0) or ETB_TRANSFER_RECV (1)"),
        )),
    }
}

pub(crate) fn timeout(seconds: f64, name: &str) -> Result<Timeout, FfiError> {
    Ok(Timeout::from_secs_f64(seconds, name)?)
}
