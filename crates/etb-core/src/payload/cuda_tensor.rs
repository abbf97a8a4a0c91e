//! A CUDA tensor payload, made from a device pointer: the fields checked, the allocation, its IPC
//! handle, the event and the reference-counter slot found; [`super::torch`] writes them as the
//! pickle of `rebuild_cuda_tensor` (docs/torch-ipc.md section 1).
//!
//! The IPC handle is the one of the *allocation* holding `data` (its base), the storage starts
//! at `data` (`storage_offset_bytes` = data - base, tensor offset 0) and runs to the end of the
//! allocation: torch caches storages by handle and offset and cannot grow one, so every tensor
//! starting at that address fits in the storage the first payload opened.

use super::dtype;
use super::ref_counter::Slot;
use super::torch::{CudaTensorArgs, SharedStorage, FORMAT};
use super::Payload;
use crate::cuda::ipc::StreamHandle;
use crate::cuda::CudaBinding;
use crate::error::{Error, ErrorKind, Result};

/// The most dimensions a tensor may have.
pub const MAX_NDIM: usize = 64;

/// A tensor in device memory, as the caller describes it.
#[derive(Debug, Clone, Copy)]
pub struct CudaTensor<'a> {
    pub dtype: i32,
    /// The device address of the first element (`CUdeviceptr`); 0 only for no elements.
    pub data: u64,
    pub shape: &'a [i64],
    /// In elements; `None`: contiguous, row-major.
    pub strides: Option<&'a [i64]>,
    /// `Some(stream)`: the consumer first waits for the work queued so far on `stream` (null is
    /// CUDA's legacy default stream); `None`: the caller has synchronized.
    pub wait_on_stream: Option<StreamHandle>,
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// What the tensor's fields say, checked: element size, strides, element count and the bytes
/// its elements span from `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dtype_name: &'static str,
    pub element_size: u64,
    pub strides: Vec<i64>,
    pub elements: u64,
    pub span_bytes: u64,
}

/// Checks the fields (no driver call): a known dtype, at most 64 dims, sizes and strides >= 0,
/// and a span that fits in 64 bits.
pub fn layout(t: &CudaTensor<'_>) -> Result<Layout> {
    let dtype_name = dtype::name(t.dtype).ok_or_else(|| {
        invalid(format!("dtype {} is unknown (ETB_DTYPE_FLOAT32 0 .. ETB_DTYPE_FLOAT8_E5M2 11)", t.dtype))
    })?;
    let element_size = dtype::size(t.dtype) as u64;
    if t.shape.len() > MAX_NDIM {
        return Err(invalid(format!("ndim is {}; at most {MAX_NDIM}", t.shape.len())));
    }
    if let Some((i, s)) = t.shape.iter().enumerate().find(|(_, &s)| s < 0) {
        return Err(invalid(format!("shape[{i}] is {s}; sizes must be >= 0")));
    }
    let strides: Vec<i64> = match t.strides {
        Some(s) => {
            if s.len() != t.shape.len() {
                return Err(invalid(format!("{} strides for {} dimensions", s.len(), t.shape.len())));
            }
            if let Some((i, v)) = s.iter().enumerate().find(|(_, &v)| v < 0) {
                return Err(invalid(format!("strides[{i}] is {v}; strides must be >= 0")));
            }
            s.to_vec()
        }
        None => {
            let mut out = vec![0i64; t.shape.len()];
            let mut acc: i64 = 1;
            for i in (0..t.shape.len()).rev() {
                out[i] = acc;
                acc = acc.checked_mul(t.shape[i].max(1)).ok_or_else(overflow)?;
            }
            out
        }
    };
    let mut elements: u64 = 1;
    let mut last: u64 = 0;
    for (&size, &stride) in t.shape.iter().zip(&strides) {
        elements = elements.checked_mul(size as u64).ok_or_else(overflow)?;
        if size > 0 {
            last = ((size - 1) as u64)
                .checked_mul(stride as u64)
                .and_then(|x| last.checked_add(x))
                .ok_or_else(overflow)?;
        }
    }
    let span_bytes = if elements == 0 {
        0
    } else {
        last.checked_add(1).and_then(|n| n.checked_mul(element_size)).ok_or_else(overflow)?
    };
    if elements > 0 && t.data.checked_add(span_bytes).is_none() {
        return Err(overflow());
    }
    Ok(Layout { dtype_name, element_size, strides, elements, span_bytes })
}

fn overflow() -> Error {
    invalid("the tensor's span (sizes times strides times the element size) overflows 64 bits".into())
}

/// Makes the payload, through `binding` (the client's device and context).
pub fn make(binding: &CudaBinding, t: &CudaTensor<'_>) -> Result<Payload> {
    let l = layout(t)?;
    let mut args = CudaTensorArgs {
        shape: t.shape,
        strides: &l.strides,
        dtype_name: l.dtype_name,
        device: binding.device_ordinal(),
        storage: None,
    };
    if l.elements == 0 {
        return Ok(Payload::plain(FORMAT.cuda_tensor(&args)));
    }
    if t.data == 0 {
        return Err(invalid("data is 0 (NULL) for a tensor with elements".into()));
    }
    let allocation = binding.allocation_of(t.data)?;
    let end = allocation.base.saturating_add(allocation.size);
    if t.data < allocation.base || t.data.saturating_add(l.span_bytes) > end {
        return Err(invalid(format!(
            "the tensor's {} bytes from 0x{:x} run past the end of its allocation (0x{:x}, {} bytes)",
            l.span_bytes, t.data, allocation.base, allocation.size
        )));
    }
    // The handle and the event under one context push (none for a cached handle and no event).
    let (handle, event) = binding.share(&allocation, t.wait_on_stream)?;
    let storage_offset = t.data - allocation.base;
    // From the tensor's first element to the end of the allocation, in whole elements.
    let storage_size = (end - t.data) / l.element_size * l.element_size;
    let slot = Slot::take()?;
    args.storage = Some(SharedStorage {
        handle: &handle,
        size_bytes: storage_size,
        offset_bytes: storage_offset,
        ref_counter: (slot.file_name(), slot.index()),
        event_handle: event.as_ref().map(|e| &e.handle[..]),
    });
    let bytes = FORMAT.cuda_tensor(&args);
    Ok(Payload::cuda(bytes, slot, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(dtype: i32, shape: &'a [i64], strides: Option<&'a [i64]>) -> CudaTensor<'a> {
        CudaTensor { dtype, data: 0x1000, shape, strides, wait_on_stream: None }
    }

    #[test]
    fn layouts() {
        let l = layout(&t(3, &[1024, 1024], None)).unwrap();
        assert_eq!((l.strides.clone(), l.elements, l.span_bytes), (vec![1024, 1], 1 << 20, 2 << 20));
        let l = layout(&t(0, &[2, 3], Some(&[1, 2]))).unwrap();
        assert_eq!(l.span_bytes, (1 + 2 * 2 + 1) * 4);
        let l = layout(&t(8, &[], None)).unwrap();
        assert_eq!((l.elements, l.span_bytes, l.strides.len()), (1, 8, 0), "a 0-d tensor has one element");
        let l = layout(&t(0, &[4, 0, 3], None)).unwrap();
        assert_eq!((l.elements, l.span_bytes), (0, 0));
        assert!(layout(&t(12, &[1], None)).unwrap_err().message().contains("dtype 12"));
        assert!(layout(&t(0, &[-1], None)).unwrap_err().message().contains("shape[0] is -1"));
        assert!(layout(&t(0, &[2], Some(&[-1]))).unwrap_err().message().contains("strides[0]"));
        assert!(layout(&t(0, &[2, 2], Some(&[1]))).is_err());
        assert!(layout(&t(0, &[i64::MAX, i64::MAX], None)).unwrap_err().message().contains("overflows"));
        assert!(layout(&t(0, &[1; 65], None)).unwrap_err().message().contains("ndim is 65"));
    }
}
