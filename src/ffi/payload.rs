//! Payloads a native worker makes (docs/torch-ipc.md): CUDA tensors from device pointers, mesh
//! shapes and placements, as `EtbPayload` handles to put into `etb_client_register_tensors` and
//! `etb_client_init_pair`. Every payload this library makes is a pickle of protocol 3: it starts
//! with the bytes 0x80 0x03 and ends with '.' (STOP).

use std::ffi::{c_void, CStr};

use super::args::{
    decode, new_handle, optional_reference, out, reference, slice, take_handle, utf8, versioned, Versioned,
};
use super::boundary::FfiError;
use super::client::EtbClient;
use super::status::{EtbStatus, ETB_ERR_INVALID_ARGUMENT};
use etb_core::cuda::ipc::StreamHandle;
use etb_core::payload::cuda_tensor::{CudaTensor, MAX_NDIM};
use etb_core::payload::dlpack::{self, DLManagedTensor, DLManagedTensorVersioned, DLPackVersion, Managed};
use etb_core::payload::layout::{self, Placement};
use etb_core::payload::{dtype, Payload};

/// An owned, immutable byte string to put in a command. Opaque; made by the `etb_*_payload`
/// functions (a box owned by the caller), released by `etb_payload_free`. It outlives the client
/// that made it (and the client's reconnects): it holds its own references. Immutable: its
/// accessors may run on several threads at once.
pub struct EtbPayload {
    payload: Payload,
}

/// A dtype, numbered for the C ABI after torch's dtypes; numbers are never reused.
pub type EtbDtype = i32;
/// `torch.float32`
pub const ETB_DTYPE_FLOAT32: EtbDtype = 0;
/// `torch.float64`
pub const ETB_DTYPE_FLOAT64: EtbDtype = 1;
/// `torch.float16`
pub const ETB_DTYPE_FLOAT16: EtbDtype = 2;
/// `torch.bfloat16`
pub const ETB_DTYPE_BFLOAT16: EtbDtype = 3;
/// `torch.uint8`
pub const ETB_DTYPE_UINT8: EtbDtype = 4;
/// `torch.int8`
pub const ETB_DTYPE_INT8: EtbDtype = 5;
/// `torch.int16`
pub const ETB_DTYPE_INT16: EtbDtype = 6;
/// `torch.int32`
pub const ETB_DTYPE_INT32: EtbDtype = 7;
/// `torch.int64`
pub const ETB_DTYPE_INT64: EtbDtype = 8;
/// `torch.bool`
pub const ETB_DTYPE_BOOL: EtbDtype = 9;
/// `torch.float8_e4m3fn`
pub const ETB_DTYPE_FLOAT8_E4M3FN: EtbDtype = 10;
/// `torch.float8_e5m2`
pub const ETB_DTYPE_FLOAT8_E5M2: EtbDtype = 11;

/// A tensor in device memory, for `etb_client_cuda_tensor_payload`. Extensible like
/// `EtbBootstrapOptions`: fill it with `etb_cuda_tensor_init`, then set the fields. 48 bytes on
/// 64-bit Linux.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EtbCudaTensor {
    /// `sizeof(EtbCudaTensor)` as the caller knows it.
    pub struct_size: u32,
    /// An `ETB_DTYPE_*`.
    pub dtype: EtbDtype,
    /// The device address of the first element (a `CUdeviceptr`); 0 only when the tensor has no
    /// elements.
    pub data: u64,
    /// 0..=64.
    pub ndim: u32,
    /// 0: the caller has synchronized (`stream` is ignored). 1: the agent must first wait for the
    /// work queued so far on `stream`.
    pub wait_on_stream: i32,
    /// `ndim` sizes, each >= 0 (NULL only when `ndim` is 0).
    pub shape: *const i64,
    /// `ndim` strides in elements, each >= 0, or NULL for contiguous row-major.
    pub strides: *const i64,
    /// A `CUstream`: NULL is CUDA's legacy default stream; `CU_STREAM_PER_THREAD` is allowed.
    pub stream: *mut c_void,
}

/// A DTensor placement for `etb_placements_payload`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EtbPlacement {
    /// `ETB_PLACEMENT_SHARD`, `ETB_PLACEMENT_REPLICATE` or `ETB_PLACEMENT_PARTIAL`.
    pub kind: i32,
    /// The shard dimension (`ETB_PLACEMENT_SHARD`; negative dims count from the end, as in torch).
    pub dim: i32,
    /// The reduction of `ETB_PLACEMENT_PARTIAL`, NUL-terminated UTF-8; NULL means `"sum"`.
    pub reduce_op: *const libc::c_char,
}

/// `Shard(dim)`.
pub const ETB_PLACEMENT_SHARD: i32 = 0;
/// `Replicate()`.
pub const ETB_PLACEMENT_REPLICATE: i32 = 1;
/// `Partial(reduce_op)`.
pub const ETB_PLACEMENT_PARTIAL: i32 = 2;

/// The placement kinds, for decoding.
const PLACEMENT_KINDS: [(i32, &str, i32); 3] = [
    (ETB_PLACEMENT_SHARD, "ETB_PLACEMENT_SHARD", ETB_PLACEMENT_SHARD),
    (ETB_PLACEMENT_REPLICATE, "ETB_PLACEMENT_REPLICATE", ETB_PLACEMENT_REPLICATE),
    (ETB_PLACEMENT_PARTIAL, "ETB_PLACEMENT_PARTIAL", ETB_PLACEMENT_PARTIAL),
];

fn invalid(message: String) -> FfiError {
    FfiError::new(ETB_ERR_INVALID_ARGUMENT, message)
}

// SAFETY: `#[repr(C)]`, starts with `struct_size: u32`; its fields are integers, raw pointers
// and a `CUstream` pointer, for which every bit pattern is a valid value.
unsafe impl Versioned for EtbCudaTensor {
    const INIT_FN: &'static str = "etb_cuda_tensor_init";
}

/// What `etb_cuda_tensor_init` writes: this version's size, every other field zero.
fn tensor_defaults() -> EtbCudaTensor {
    EtbCudaTensor {
        struct_size: std::mem::size_of::<EtbCudaTensor>() as u32,
        dtype: 0,
        data: 0,
        ndim: 0,
        wait_on_stream: 0,
        shape: std::ptr::null(),
        strides: std::ptr::null(),
        stream: std::ptr::null_mut(),
    }
}

fn give(payload: Payload, out_ptr: super::args::Out<*mut EtbPayload>) {
    out_ptr.write(new_handle(EtbPayload { payload }));
}

/// Fills `*tensor` with this version's `struct_size` and zeroes every other byte. NULL is
/// ignored (and recorded as the thread's last error). Thread-safe; does not block.
///
/// # Safety
/// `tensor` is NULL or points to `sizeof(EtbCudaTensor)` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn etb_cuda_tensor_init(tensor: *mut EtbCudaTensor) {
    value_boundary!((), {
        out(tensor, "tensor")?.write_zero_padded(tensor_defaults());
        Ok(())
    })
}

/// The bytes the agent's `ForkingPickler.loads` turns into a tensor of `tensor`'s dtype, shape
/// and strides aliasing the caller's memory (a pickle of
/// `torch.multiprocessing.reductions.rebuild_cuda_tensor`), written to `*payload_out` (owned by
/// the caller: release with `etb_payload_free`). Uses the client's CUDA binding and context,
/// made current on the calling thread for the call and restored after, so any thread may call.
///
/// Checks, in this order: NULL arguments (`ETB_ERR_NULL_ARGUMENT`); `struct_size`; the
/// client's binding (an unbound client is `ETB_ERR_CUDA`, saying why it is unbound, also for
/// a tensor with no elements); then the fields (`ETB_ERR_INVALID_ARGUMENT`: unknown dtype, ndim
/// over 64, negative sizes or strides, a span that overflows 64 bits, `wait_on_stream` other
/// than 0 and 1) and the memory: only device memory from `cuMemAlloc`/`cudaMalloc` on the client's device;
/// host, managed, virtual-memory (`cuMemCreate`) or pool (`cudaMallocAsync`) memory, memory of
/// another device, a pointer the driver does not know, or a span past the end of its
/// allocation is `ETB_ERR_INVALID_ARGUMENT` saying what was found and what to use instead. A
/// driver that lacks an entry point, or a driver call that fails: `ETB_ERR_CUDA`. Nothing is
/// allocated on failure.
///
/// The IPC handle is the one of the allocation holding `data` (the same bytes for every
/// payload of that allocation); the storage runs from `data` to the allocation's end. With
/// `wait_on_stream`, an interprocess event is recorded on `stream` and lives with the payload.
/// The payload holds a reference-counter slot: `etb_payload_in_use` tells when no consumer
/// holds the memory any more. **Keep the memory allocated and unchanged while
/// `etb_payload_in_use` says true**: freeing or reusing it while the agent still maps it is
/// undefined behaviour on the GPU (the agent reads or writes whatever lives there then).
/// Thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `tensor` is NULL or points to `tensor->struct_size`
/// readable bytes whose `shape` (and `strides`, when not NULL) point to `ndim` readable
/// int64s; `stream`, when waited on, is a stream of the client's context; `payload_out` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_cuda_tensor_payload(
    client: *const EtbClient,
    tensor: *const EtbCudaTensor,
    payload_out: *mut *mut EtbPayload,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        reference(tensor.cast::<u32>(), "tensor")?;
        let payload_out = out(payload_out, "payload_out")?;
        // Every field is needed: an older, smaller struct is refused.
        let t = versioned(tensor, "tensor", std::mem::size_of::<EtbCudaTensor>(), tensor_defaults())?;
        c.client.check_cuda_bound()?;
        if t.ndim as usize > MAX_NDIM {
            return Err(invalid(format!("tensor->ndim is {}; at most {MAX_NDIM}", t.ndim)));
        }
        let wait_on_stream = match t.wait_on_stream {
            0 => None,
            1 => Some(t.stream as usize),
            other => return Err(invalid(format!("tensor->wait_on_stream is {other}; it must be 0 or 1"))),
        };
        let shape = slice(t.shape, t.ndim as usize, "tensor->shape")?;
        let strides = match optional_reference(t.strides) {
            None => None,
            Some(_) => Some(slice(t.strides, t.ndim as usize, "tensor->strides")?),
        };
        let core = CudaTensor { dtype: t.dtype, data: t.data, shape, strides, wait_on_stream };
        give(c.client.cuda_tensor_payload(&core)?, payload_out);
        Ok(())
    })
}

fn stream_choice(wait_on_stream: i32, stream: *mut c_void) -> Result<Option<StreamHandle>, FfiError> {
    match wait_on_stream {
        0 => Ok(None),
        1 => Ok(Some(stream as usize)),
        other => Err(invalid(format!("wait_on_stream is {other}; it must be 0 or 1"))),
    }
}

/// The same payload `etb_client_cuda_tensor_payload` makes for the same memory (the same
/// `rebuild_cuda_tensor` arguments, reference counter and release rules), from a DLPack 1.x
/// `DLManagedTensorVersioned` (dlpack.h): its `DLTensor` is converted into an `EtbCudaTensor`
/// (`data + byte_offset` is the first element; strides in elements, NULL meaning compact) and
/// goes through the same checks and code. `wait_on_stream` and `stream` are `EtbCudaTensor`'s
/// (0: the producer's work is complete; 1: the agent first waits for the work queued so far on
/// `stream`, a `CUstream` of the client's context, NULL the legacy default stream). Written to
/// `*payload_out` (release with `etb_payload_free`). Only a bare `DLTensor` is not offered: a
/// payload must own what keeps the memory alive.
///
/// Checks, in this order, each `ETB_ERR_INVALID_ARGUMENT` naming what it found unless said: NULL
/// arguments (`ETB_ERR_NULL_ARGUMENT`); the client's binding (`ETB_ERR_CUDA`); `version.major`
/// other than 1 (only the version is read); `wait_on_stream`; the device type (only `kDLCUDA`:
/// `kDLCPU`, `kDLCUDAHost`, `kDLCUDAManaged` and every other type refused by name, saying why);
/// `device_id` other than the client's device; the dtype, mapped by name onto the 12
/// `ETB_DTYPE_*` (DLPack's code 11 is float8_e4m3fnuz, not our 11), every other refused by name
/// (float8 e4m3fnuz, e5m2fnuz, e8m0fnu, fp6, fp4, complex, uint16...), and `lanes` other than
/// 1; `DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED`; then `etb_client_cuda_tensor_payload`'s
/// checks of the layout (ndim 0..=64, sizes and strides >= 0, the span) and of the memory.
/// `DLPACK_FLAG_BITMASK_READ_ONLY` is recorded: `etb_client_transfer*` with direction recv of a
/// batch registered with this payload is refused before the queue.
///
/// Ownership: on any failure the caller keeps `tensor` (its deleter is not called). On success
/// the payload owns it: the caller must not use or delete it again. Its deleter runs exactly
/// once, after `etb_payload_free` and only once the payload's reference-counter slot reads 0
/// (`etb_payload_in_use` false): if it reads 0 at the free, `etb_payload_free` runs the deleter
/// on the calling thread; otherwise the process's `etb-dlpack` thread (started on the first
/// such free, one per process) looks each 10 ms and runs it there once the agent's torch
/// released the memory. Never at `etb_client_close`, and never if the slot never reads 0: the
/// producer's memory must outlive the agent's use. In a process forked after the payload was
/// made, the free only forgets it (the deleter is the parent's to run). The deleter must be
/// callable from any thread. Thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `tensor` is NULL or a live managed tensor whose
/// `dl_tensor.shape` (and `strides`, when not NULL) point to `ndim` readable int64s (when
/// `version.major` is 1); `stream`, when waited on, is a stream of the client's context;
/// `payload_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_dlpack_payload(
    client: *const EtbClient,
    tensor: *mut DLManagedTensorVersioned,
    wait_on_stream: i32,
    stream: *mut c_void,
    payload_out: *mut *mut EtbPayload,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        // Only the version first: another major version's struct may be laid out differently.
        let version = *reference(tensor.cast_const().cast::<DLPackVersion>(), "tensor")?;
        let payload_out = out(payload_out, "payload_out")?;
        c.client.check_cuda_bound()?;
        if let Some(e) = dlpack::version_refusal(version.major, version.minor) {
            return Err(e.into());
        }
        let wait = stream_choice(wait_on_stream, stream)?;
        let managed = reference(tensor.cast_const(), "tensor")?;
        let owner = Managed::Versioned(std::ptr::NonNull::new(tensor).expect("checked non-NULL"));
        // SAFETY: the export's contract: shape and strides readable for the call.
        let payload = unsafe { c.client.dlpack_payload(owner, &managed.dl_tensor, managed.flags.bits(), wait) }?;
        give(payload, payload_out);
        Ok(())
    })
}

/// `etb_client_dlpack_payload` for a legacy (pre-1.0) `DLManagedTensor`, which has no version
/// and no flags (never read-only). The same checks but the version, the same payload, the same
/// ownership: on failure the caller keeps `tensor`; on success its deleter runs exactly once,
/// after `etb_payload_free` and once the slot reads 0, on the freeing thread or on the
/// `etb-dlpack` thread. Thread-safe.
///
/// # Safety
/// As `etb_client_dlpack_payload`, with `tensor` NULL or a live legacy managed tensor.
#[no_mangle]
pub unsafe extern "C" fn etb_client_dlpack_legacy_payload(
    client: *const EtbClient,
    tensor: *mut DLManagedTensor,
    wait_on_stream: i32,
    stream: *mut c_void,
    payload_out: *mut *mut EtbPayload,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let managed = reference(tensor.cast_const(), "tensor")?;
        let payload_out = out(payload_out, "payload_out")?;
        c.client.check_cuda_bound()?;
        let wait = stream_choice(wait_on_stream, stream)?;
        let owner = Managed::Legacy(std::ptr::NonNull::new(tensor).expect("checked non-NULL"));
        // SAFETY: the export's contract: shape and strides readable for the call.
        let payload = unsafe { c.client.dlpack_payload(owner, &managed.dl_tensor, 0, wait) }?;
        give(payload, payload_out);
        Ok(())
    })
}

/// What the reference sends for `tuple(device_mesh.mesh.shape)`: a tuple of the `ndims` ints
/// at `dims` (ndims >= 1, every dim >= 1, else `ETB_ERR_INVALID_ARGUMENT`), written to
/// `*payload_out` (release with `etb_payload_free`). Needs no client and no GPU. Thread-safe.
///
/// # Safety
/// `dims` is NULL or points to `ndims` readable int64s; `payload_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_mesh_shape_payload(
    dims: *const i64,
    ndims: usize,
    payload_out: *mut *mut EtbPayload,
) -> EtbStatus {
    status_boundary!({
        let payload_out = out(payload_out, "payload_out")?;
        let dims = slice(dims, ndims, "dims")?;
        give(Payload::plain(layout::mesh_shape(dims)?), payload_out);
        Ok(())
    })
}

/// A tuple of `torch.distributed.tensor.placement_types` objects equal to `Shard(dim)`,
/// `Replicate()` and `Partial(reduce_op)`, written as constructor calls so that the same bytes
/// unpickle on torch 2.10 through 2.15; `count` 0 gives the empty tuple (`placements` may then
/// be NULL). An unknown kind or an empty `reduce_op` is `ETB_ERR_INVALID_ARGUMENT`. Written to
/// `*payload_out` (release with `etb_payload_free`). Needs no client and no GPU. Thread-safe.
///
/// # Safety
/// `placements` is NULL or points to `count` readable entries whose `reduce_op` is NULL or
/// NUL-terminated; `payload_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_placements_payload(
    placements: *const EtbPlacement,
    count: usize,
    payload_out: *mut *mut EtbPayload,
) -> EtbStatus {
    status_boundary!({
        let payload_out = out(payload_out, "payload_out")?;
        let entries = slice(placements, count, "placements")?;
        let mut list = Vec::with_capacity(entries.len());
        for (i, p) in entries.iter().enumerate() {
            let kind = decode(p.kind, &format!("placements[{i}].kind"), &PLACEMENT_KINDS)?;
            list.push(match kind {
                ETB_PLACEMENT_SHARD => Placement::Shard(i64::from(p.dim)),
                ETB_PLACEMENT_REPLICATE => Placement::Replicate,
                _ if optional_reference(p.reduce_op).is_none() => Placement::Partial("sum".into()),
                _ => Placement::Partial(utf8(p.reduce_op, &format!("placements[{i}].reduce_op"))?.into()),
            });
        }
        give(Payload::plain(layout::placements(&list)?), payload_out);
        Ok(())
    })
}

/// The payload's bytes: owned by the payload, valid until `etb_payload_free`. NULL when
/// `payload` is NULL. Thread-safe.
///
/// # Safety
/// `payload` is NULL or a live payload.
#[no_mangle]
pub unsafe extern "C" fn etb_payload_data(payload: *const EtbPayload) -> *const u8 {
    value_boundary!(std::ptr::null(), { Ok(reference(payload, "payload")?.payload.bytes().as_ptr()) })
}

/// The payload's length in bytes; 0 when `payload` is NULL. Thread-safe.
///
/// # Safety
/// `payload` is NULL or a live payload.
#[no_mangle]
pub unsafe extern "C" fn etb_payload_len(payload: *const EtbPayload) -> usize {
    value_boundary!(0, { Ok(reference(payload, "payload")?.payload.bytes().len()) })
}

/// For a CUDA tensor payload, whether a consumer still holds the memory: torch decrements the
/// payload's reference-counter slot when its tensor dies (e.g. after `CleanupBatch`). False for
/// every other payload, and for a tensor with no elements. When a consumer already holds a
/// storage for the same allocation and offset, torch reuses it and gives the new payload's slot
/// back at once: the memory is free only when *every* payload made for it reads false. Writes
/// `*in_use_out` (required). In a process forked after the payload was made: `ETB_ERR_FORKED`.
/// One atomic load; thread-safe.
///
/// # Safety
/// `payload` is NULL or a live payload; `in_use_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_payload_in_use(payload: *const EtbPayload, in_use_out: *mut bool) -> EtbStatus {
    status_boundary!({
        let p = reference(payload, "payload")?;
        let in_use_out = out(in_use_out, "in_use_out")?;
        in_use_out.write(p.payload.in_use()?);
        Ok(())
    })
}

/// Releases a payload: its bytes, and for a CUDA tensor payload its event and its
/// reference-counter slot (given back; reused only once it reads 0). A DLPack payload's
/// deleter runs here, on the calling thread, when its slot reads 0; otherwise later on the
/// `etb-dlpack` thread, once it does (`etb_client_dlpack_payload`). NULL is accepted and
/// ignored. In a process forked after it was made it only forgets it. Freeing twice or using
/// it afterwards is undefined behaviour. Does not block.
/// Thread-safety: no other thread may use this payload during or after the free.
///
/// # Safety
/// `payload` is NULL or a payload from this library not yet freed; the caller gives it up.
#[no_mangle]
pub unsafe extern "C" fn etb_payload_free(payload: *mut EtbPayload) {
    value_boundary!((), {
        drop(take_handle(payload));
        Ok(())
    })
}

/// torch's name of a dtype (e.g. `"bfloat16"`), a static string; NULL if `dtype` is not an
/// `ETB_DTYPE_*`. Thread-safe.
/// Takes no pointer argument (nothing can be NULL).
#[no_mangle]
pub extern "C" fn etb_dtype_name(dtype: EtbDtype) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), {
        Ok(match dtype::name(dtype) {
            Some(_) => DTYPE_NAMES[dtype as usize].as_ptr(),
            None => std::ptr::null(),
        })
    })
}

/// Bytes per element of a dtype; 0 if `dtype` is not an `ETB_DTYPE_*`. Thread-safe.
/// Takes no pointer argument (nothing can be NULL).
#[no_mangle]
pub extern "C" fn etb_dtype_size(dtype: EtbDtype) -> usize {
    value_boundary!(0, { Ok(dtype::size(dtype)) })
}

/// The dtype names as static C strings, by number.
const DTYPE_NAMES: [&CStr; 12] = [
    c"float32",
    c"float64",
    c"float16",
    c"bfloat16",
    c"uint8",
    c"int8",
    c"int16",
    c"int32",
    c"int64",
    c"bool",
    c"float8_e4m3fn",
    c"float8_e5m2",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_agree_with_the_core() {
        for (code, name, _) in dtype::DTYPES {
            assert_eq!(DTYPE_NAMES[code as usize].to_str().unwrap(), name);
        }
        assert_eq!(std::mem::size_of::<EtbCudaTensor>(), 48);
    }
}
