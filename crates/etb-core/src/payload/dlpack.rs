//! DLPack managed tensors (`DLManagedTensorVersioned` of DLPack 1.x and the legacy
//! `DLManagedTensor`) as CUDA tensor payloads (docs/torch-ipc.md section 7): the `DLTensor` is
//! checked and converted into the [`CudaTensor`] a native worker would fill, and the payload is
//! made by [`cuda_tensor::make`](super::cuda_tensor::make), so both routes give the same bytes
//! (the same `rebuild_cuda_tensor` arguments) for the same memory.
//!
//! What is refused, each by name: a device type other than `kDLCUDA`, a device other than the
//! client's, `lanes` other than 1, every dtype but the 12 `ETB_DTYPE_*` (mapped by DLPack's code
//! *name*: DLPack's code 11 is float8_e4m3fnuz, ours is float8_e5m2), the sub-byte padded flag, a
//! layout torch cannot express (the checks of [`cuda_tensor::layout`](super::cuda_tensor::layout)),
//! and a versioned tensor whose major version is not 1 (only its version is read). On a refusal
//! the caller keeps the managed tensor.
//!
//! Ownership: a payload made from a managed tensor owns it ([`Managed`]); its deleter runs once,
//! when the payload is freed and its reference-counter slot reads 0: at once on the freeing
//! thread, or later on the reaper thread ([`super::reaper`]). The DLPack types are dlpark's.

use std::ptr::NonNull;

use dlpark::ffi::{DLDataType, DLDataTypeCode as Code, DLDeviceType as Dev};
pub use dlpark::ffi::{DLManagedTensor, DLManagedTensorVersioned, DLPackVersion, DLTensor};

use super::cuda_tensor::{CudaTensor, MAX_NDIM};
use super::dtype;
use crate::cuda::ipc::StreamHandle;
use crate::error::{Error, ErrorKind, Result};

/// `DLPACK_FLAG_BITMASK_READ_ONLY`: the producer forbids writes to the memory.
pub const FLAG_READ_ONLY: u64 = dlpark::ffi::DLPACK_FLAG_BITMASK_READ_ONLY as u64;
/// `DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED`: sub-byte elements padded to a byte each.
pub const FLAG_SUBBYTE_PADDED: u64 = dlpark::ffi::DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED as u64;
/// The DLPack major version whose `DLManagedTensorVersioned` layout this library reads.
pub const MAJOR_VERSION: u32 = 1;

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// A managed tensor whose deleter a payload will run. Dropping a `Managed` does nothing: only
/// [`Managed::delete`] calls the deleter, so on a refusal the caller still owns the tensor.
#[derive(Debug)]
pub enum Managed {
    Versioned(NonNull<DLManagedTensorVersioned>),
    Legacy(NonNull<DLManagedTensor>),
}

// SAFETY: DLPack lets a consumer call the deleter from any thread once it owns the tensor
// (the producer's manager context is the producer's business; the DLPack Python spec says the
// deleter must be callable without the GIL held), and nothing else of the tensor is touched
// after the payload was made.
unsafe impl Send for Managed {}

impl Managed {
    /// Runs the deleter (when not NULL), once: it consumes `self`.
    pub fn delete(self) {
        match self {
            Managed::Versioned(p) => {
                // SAFETY: `p` is the live managed tensor the payload owns (the export's contract);
                // read here once, before the deleter frees it.
                if let Some(deleter) = unsafe { p.as_ref() }.deleter {
                    // SAFETY: DLPack's contract: the owner calls the deleter once with the tensor.
                    unsafe { deleter(p.as_ptr()) }
                }
            }
            Managed::Legacy(p) => {
                // SAFETY: as above, for the legacy struct.
                if let Some(deleter) = unsafe { p.as_ref() }.deleter {
                    // SAFETY: as above.
                    unsafe { deleter(p.as_ptr()) }
                }
            }
        }
    }
}

/// What a managed tensor describes, checked: the [`CudaTensor`] to make the payload of, and
/// whether the producer marked it read-only.
#[derive(Debug)]
pub struct Described<'a> {
    pub tensor: CudaTensor<'a>,
    pub read_only: bool,
}

/// The DLPack name of a device type, as dlpack.h spells it (`kDLCPU`, ...), with why it cannot
/// be sent; `None` for `kDLCUDA`.
pub fn device_refusal(device_type: u32) -> Option<String> {
    let (name, why) = match Dev(device_type) {
        Dev::CUDA => return None,
        Dev::CPU => ("kDLCPU", "host memory: copy it to a CUDA device first"),
        Dev::CUDAHOST => ("kDLCUDAHost", "pinned host memory (cudaMallocHost) has no CUDA IPC handle"),
        Dev::CUDAMANAGED => ("kDLCUDAManaged", "managed memory (cudaMallocManaged) has no CUDA IPC handle"),
        Dev::OPENCL => ("kDLOpenCL", "not CUDA memory"),
        Dev::VULKAN => ("kDLVulkan", "not CUDA memory"),
        Dev::METAL => ("kDLMetal", "not CUDA memory"),
        Dev::VPI => ("kDLVPI", "not CUDA memory"),
        Dev::ROCM => ("kDLROCM", "AMD GPU memory, not CUDA memory"),
        Dev::ROCMHOST => ("kDLROCMHost", "pinned ROCm host memory, not CUDA memory"),
        Dev::EXTDEV => ("kDLExtDev", "not CUDA memory"),
        Dev::ONEAPI => ("kDLOneAPI", "not CUDA memory"),
        Dev::WEBGPU => ("kDLWebGPU", "not CUDA memory"),
        Dev::HEXAGON => ("kDLHexagon", "not CUDA memory"),
        Dev::MAIA => ("kDLMAIA", "not CUDA memory"),
        Dev::TRN => ("kDLTrn", "not CUDA memory"),
        _ => {
            return Some(format!(
                "device type {device_type} is not one this library knows (not kDLCUDA 2): only CUDA device memory \
                 can be sent"
            ))
        }
    };
    Some(format!("device type {name} ({device_type}) is {why}: only kDLCUDA (2) device memory can be sent"))
}

/// DLPack's name of a dtype code (dlpack.h's `kDL*` without the prefix, lower case).
fn code_name(code: u8) -> Option<&'static str> {
    Some(match Code(code) {
        Code::INT => "int",
        Code::UINT => "uint",
        Code::FLOAT => "float",
        Code::OPAQUEHANDLE => "opaque_handle",
        Code::BFLOAT => "bfloat",
        Code::COMPLEX => "complex",
        Code::BOOL => "bool",
        Code::FLOAT8_E3M4 => "float8_e3m4",
        Code::FLOAT8_E4M3 => "float8_e4m3",
        Code::FLOAT8_E4M3B11FNUZ => "float8_e4m3b11fnuz",
        Code::FLOAT8_E4M3FN => "float8_e4m3fn",
        Code::FLOAT8_E4M3FNUZ => "float8_e4m3fnuz",
        Code::FLOAT8_E5M2 => "float8_e5m2",
        Code::FLOAT8_E5M2FNUZ => "float8_e5m2fnuz",
        Code::FLOAT8_E8M0FNU => "float8_e8m0fnu",
        Code::FLOAT6_E2M3FN => "float6_e2m3fn",
        Code::FLOAT6_E3M2FN => "float6_e3m2fn",
        Code::FLOAT4_E2M1FN => "float4_e2m1fn",
        _ => return None,
    })
}

/// The `ETB_DTYPE_*` of a DLPack dtype, matched by name (DLPack's code and bits against torch's
/// name), never by number; everything else is refused, naming it.
pub fn etb_dtype(dt: DLDataType) -> Result<i32> {
    let DLDataType { code, bits, lanes } = dt;
    let name: Option<&str> = match (code, bits) {
        (Code::FLOAT, 32) => Some("float32"),
        (Code::FLOAT, 64) => Some("float64"),
        (Code::FLOAT, 16) => Some("float16"),
        (Code::BFLOAT, 16) => Some("bfloat16"),
        (Code::UINT, 8) => Some("uint8"),
        (Code::INT, 8) => Some("int8"),
        (Code::INT, 16) => Some("int16"),
        (Code::INT, 32) => Some("int32"),
        (Code::INT, 64) => Some("int64"),
        (Code::BOOL, 8) => Some("bool"),
        (Code::FLOAT8_E4M3FN, 8) => Some("float8_e4m3fn"),
        (Code::FLOAT8_E5M2, 8) => Some("float8_e5m2"),
        _ => None,
    };
    let spelled = match code_name(code.0) {
        Some(n) if n.starts_with("float8") || n.starts_with("float6") || n.starts_with("float4") => {
            format!("{n} ({bits} bits)")
        }
        Some("opaque_handle") => format!("opaque_handle ({bits} bits)"),
        Some(n) => format!("{n}{bits}"),
        None => format!("of unknown code {} ({bits} bits)", code.0),
    };
    let Some(name) = name else {
        return Err(invalid(format!(
            "DLPack dtype {spelled} (code {}) has no ETB_DTYPE_*: only float32, float64, float16, bfloat16, uint8, \
             int8, int16, int32, int64, bool, float8_e4m3fn and float8_e5m2 can be sent (another would kill the \
             agent at Transfer)",
            code.0
        )));
    };
    if lanes != 1 {
        return Err(invalid(format!(
            "DLPack dtype {spelled} has {lanes} lanes (a vector type): only lanes 1 can be sent"
        )));
    }
    Ok(dtype::DTYPES.iter().find(|d| d.1 == name).expect("every name above is in the table").0)
}

/// Checks the `DLTensor` of a managed tensor (whose `flags` are `flags`; 0 for a legacy one)
/// against the client's device `device` and converts it: `data + byte_offset` is the first
/// element, DLPack's strides are in elements as ours (NULL: compact row-major).
///
/// # Safety
/// `t.shape` (and `t.strides`, when not NULL) point to `t.ndim` readable int64s that live as
/// long as `'a`, when `t.ndim` is in 0..=64.
pub unsafe fn describe<'a>(
    t: &'a DLTensor,
    flags: u64,
    device: i32,
    wait_on_stream: Option<StreamHandle>,
) -> Result<Described<'a>> {
    if let Some(why) = device_refusal(t.device.device_type.0) {
        return Err(invalid(why));
    }
    if t.device.device_id != device {
        return Err(invalid(format!(
            "the DLPack tensor is on cuda:{} and this client is bound to cuda:{device}: a payload names its client's \
             device (use the client of that device)",
            t.device.device_id
        )));
    }
    let dtype = etb_dtype(t.dtype)?;
    if flags & FLAG_SUBBYTE_PADDED != 0 {
        return Err(invalid(
            "the DLPack tensor has DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED set: padded sub-byte elements have no \
             torch dtype"
                .into(),
        ));
    }
    if t.ndim < 0 || t.ndim as usize > MAX_NDIM {
        return Err(invalid(format!("the DLPack tensor's ndim is {}; it must be 0..={MAX_NDIM}", t.ndim)));
    }
    let ndim = t.ndim as usize;
    let shape: &[i64] = if ndim == 0 {
        &[]
    } else if t.shape.is_null() {
        return Err(invalid(format!("the DLPack tensor's shape is NULL with ndim {ndim}")));
    } else {
        // SAFETY: the caller's contract: `ndim` readable int64s.
        unsafe { std::slice::from_raw_parts(t.shape, ndim) }
    };
    let strides: Option<&[i64]> = if t.strides.is_null() || ndim == 0 {
        None
    } else {
        // SAFETY: as above, for the strides.
        Some(unsafe { std::slice::from_raw_parts(t.strides, ndim) })
    };
    let data = (t.data as u64).checked_add(t.byte_offset).ok_or_else(|| {
        invalid(format!(
            "the DLPack tensor's data 0x{:x} plus byte_offset {} overflows 64 bits",
            t.data as u64, t.byte_offset
        ))
    })?;
    Ok(Described {
        tensor: CudaTensor { dtype, data, shape, strides, wait_on_stream },
        read_only: flags & FLAG_READ_ONLY != 0,
    })
}

/// The refusal of a versioned managed tensor whose major version is not [`MAJOR_VERSION`].
pub fn version_refusal(major: u32, minor: u32) -> Option<Error> {
    (major != MAJOR_VERSION).then(|| {
        invalid(format!(
            "the DLManagedTensorVersioned is DLPack {major}.{minor}: only major version {MAJOR_VERSION} is read (the \
             rest of another major version's struct may be laid out differently); only its version was read"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlpark::ffi::DLDevice;

    fn dt(code: Code, bits: u8) -> DLDataType {
        DLDataType { code, bits, lanes: 1 }
    }

    #[test]
    fn dtypes_map_by_name_onto_the_twelve() {
        let want = [
            (dt(Code::FLOAT, 32), 0),
            (dt(Code::FLOAT, 64), 1),
            (dt(Code::FLOAT, 16), 2),
            (dt(Code::BFLOAT, 16), 3),
            (dt(Code::UINT, 8), 4),
            (dt(Code::INT, 8), 5),
            (dt(Code::INT, 16), 6),
            (dt(Code::INT, 32), 7),
            (dt(Code::INT, 64), 8),
            (dt(Code::BOOL, 8), 9),
            (dt(Code::FLOAT8_E4M3FN, 8), 10),
            (dt(Code::FLOAT8_E5M2, 8), 11),
        ];
        for (d, code) in want {
            assert_eq!(etb_dtype(d).unwrap(), code, "{d:?}");
        }
        // DLPack's 11 is float8_e4m3fnuz (ours is float8_e5m2); DLPack's e5m2 is 12 (ours is nothing).
        assert_eq!(Code::FLOAT8_E4M3FNUZ.0, 11);
        assert_eq!(Code::FLOAT8_E5M2.0, 12);
        assert!(etb_dtype(dt(Code(11), 8)).unwrap_err().message().contains("float8_e4m3fnuz"));
        assert_eq!(etb_dtype(dt(Code(12), 8)).unwrap(), 11);
        for (d, name) in [
            (dt(Code::FLOAT8_E5M2FNUZ, 8), "float8_e5m2fnuz"),
            (dt(Code::FLOAT8_E8M0FNU, 8), "float8_e8m0fnu"),
            (dt(Code::FLOAT8_E3M4, 8), "float8_e3m4"),
            (dt(Code::FLOAT8_E4M3, 8), "float8_e4m3 "),
            (dt(Code::FLOAT8_E4M3B11FNUZ, 8), "float8_e4m3b11fnuz"),
            (dt(Code::FLOAT6_E2M3FN, 6), "float6_e2m3fn"),
            (dt(Code::FLOAT6_E3M2FN, 6), "float6_e3m2fn"),
            (dt(Code::FLOAT4_E2M1FN, 4), "float4_e2m1fn"),
            (dt(Code::COMPLEX, 64), "complex64"),
            (dt(Code::UINT, 16), "uint16"),
            (dt(Code::UINT, 64), "uint64"),
            (dt(Code::INT, 4), "int4"),
            (dt(Code::FLOAT, 8), "float8 "),
            (dt(Code::BOOL, 1), "bool1"),
            (dt(Code::OPAQUEHANDLE, 64), "opaque_handle"),
            (dt(Code(200), 8), "unknown code 200"),
        ] {
            let e = etb_dtype(d).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.message().contains(name) && e.message().contains("no ETB_DTYPE_*"), "{name}: {e}");
        }
        let vector = DLDataType { code: Code::FLOAT, bits: 32, lanes: 4 };
        assert!(etb_dtype(vector).unwrap_err().message().contains("4 lanes"));
    }

    #[test]
    fn devices_flags_and_versions() {
        assert!(device_refusal(2).is_none());
        for (n, name) in [(1, "kDLCPU"), (3, "kDLCUDAHost"), (13, "kDLCUDAManaged"), (10, "kDLROCM"), (99, "99")] {
            assert!(device_refusal(n).unwrap().contains(name), "{n}");
        }
        assert!(version_refusal(1, 3).is_none());
        assert!(version_refusal(2, 0).unwrap().message().contains("DLPack 2.0"));
        assert!(version_refusal(0, 8).is_some());
        let mut shape = [2i64, 3];
        let mut strides = [1i64, 2];
        let t = DLTensor {
            data: 0x1000 as *mut _,
            device: DLDevice { device_type: Dev::CUDA, device_id: 1 },
            ndim: 2,
            dtype: dt(Code::FLOAT, 32),
            shape: shape.as_mut_ptr(),
            strides: strides.as_mut_ptr(),
            byte_offset: 256,
        };
        // SAFETY: shape and strides hold ndim int64s.
        let d = unsafe { describe(&t, FLAG_READ_ONLY, 1, None) }.unwrap();
        assert_eq!(
            (d.tensor.data, d.tensor.shape, d.tensor.strides, d.read_only),
            (0x1100, &[2, 3][..], Some(&[1, 2][..]), true)
        );
        // SAFETY: as above.
        let e = unsafe { describe(&t, 0, 0, None) }.unwrap_err();
        assert!(e.message().contains("cuda:1") && e.message().contains("cuda:0"), "{e}");
        // SAFETY: as above.
        assert!(unsafe { describe(&t, FLAG_SUBBYTE_PADDED, 1, None) }.unwrap_err().message().contains("PADDED"));
        let compact = DLTensor { strides: std::ptr::null_mut(), ..t };
        // SAFETY: as above.
        assert_eq!(unsafe { describe(&compact, 0, 1, None) }.unwrap().tensor.strides, None);
        let negative = DLTensor { ndim: -1, ..t };
        // SAFETY: ndim is refused before shape is read.
        assert!(unsafe { describe(&negative, 0, 1, None) }.unwrap_err().message().contains("ndim is -1"));
    }
}
