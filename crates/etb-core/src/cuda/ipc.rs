//! What a CUDA tensor payload needs of the driver (docs/torch-ipc.md section 1): the kind of
//! memory a pointer is, its allocation, the allocation's IPC handle (cached per allocation), and
//! an interprocess event recorded on a stream. Every call runs with the client's context pushed
//! current on the calling thread and popped after (so any thread may make payloads).

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;

use once_cell::sync::Lazy;

use super::{Api, CuContext, CuResult, CudaBinding};
use crate::error::{Error, ErrorKind, Result};

pub type MemGetAddressRange = unsafe extern "C" fn(*mut u64, *mut usize, u64) -> CuResult;
pub type PointerGetAttribute = unsafe extern "C" fn(*mut c_void, c_int, u64) -> CuResult;
pub type IpcGetMemHandle = unsafe extern "C" fn(*mut [u8; 64], u64) -> CuResult;
pub type EventCreate = unsafe extern "C" fn(*mut *mut c_void, c_uint) -> CuResult;
pub type EventRecord = unsafe extern "C" fn(*mut c_void, *mut c_void) -> CuResult;
pub type IpcGetEventHandle = unsafe extern "C" fn(*mut [u8; 64], *mut c_void) -> CuResult;
pub type EventDestroy = unsafe extern "C" fn(*mut c_void) -> CuResult;
pub type CtxPushCurrent = unsafe extern "C" fn(CuContext) -> CuResult;
pub type CtxPopCurrent = unsafe extern "C" fn(*mut CuContext) -> CuResult;

const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
const ATTR_MEMORY_TYPE: c_int = 2;
const ATTR_BUFFER_ID: c_int = 7;
const ATTR_IS_MANAGED: c_int = 8;
const ATTR_DEVICE_ORDINAL: c_int = 9;
const ATTR_IS_LEGACY_CUDA_IPC_CAPABLE: c_int = 10;
const ATTR_MEMPOOL_HANDLE: c_int = 17;
const MEMORYTYPE_HOST: u64 = 1;
const EVENT_DISABLE_TIMING: c_uint = 2;
const EVENT_INTERPROCESS: c_uint = 4;

/// An allocation CUDA IPC can share, holding a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub base: u64,
    pub size: u64,
    pub buffer_id: u64,
}

/// The IPC handles made in this process, by allocation (base and buffer id: a freed and reused
/// address is another allocation): the same allocation always gives the same handle bytes, as
/// torch's caches on the receiving side need.
static HANDLES: Lazy<Mutex<HandleCache>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// IPC handles by (allocation base, buffer id).
type HandleCache = HashMap<(u64, u64), [u8; 64]>;

/// A `CUstream` as the caller gives it: an opaque driver handle (0 is the legacy default stream,
/// 2 `CU_STREAM_PER_THREAD`), passed to the driver and never dereferenced here, like device
/// addresses.
pub type StreamHandle = usize;

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

const USE_INSTEAD: &str = "use device memory from cuMemAlloc or cudaMalloc (CUDA IPC shares only that)";

impl CudaBinding {
    /// The device ordinal the client is bound to.
    pub fn device_ordinal(&self) -> i32 {
        self.device
    }

    /// Runs `f` with this binding's context current on the calling thread, restoring what was
    /// current after (`cuCtxPushCurrent_v2` / `cuCtxPopCurrent_v2`).
    fn with_context<T>(&self, f: impl FnOnce(&'static Api) -> Result<T>) -> Result<T> {
        let api = self.api;
        let push = api.entry(api.ctx_push_current, "cuCtxPushCurrent_v2")?;
        let pop = api.entry(api.ctx_pop_current, "cuCtxPopCurrent_v2")?;
        // SAFETY: a context this binding retained and still holds.
        api.call("cuCtxPushCurrent_v2", unsafe { push(self.context) })?;
        let out = f(api);
        let mut popped: CuContext = std::ptr::null_mut();
        // SAFETY: pops the context pushed above; out-pointer to a local.
        let rc = unsafe { pop(&mut popped) };
        if rc != 0 {
            log::warn!("cuCtxPopCurrent_v2 failed: {}", api.describe(rc));
        }
        out
    }

    /// One pointer attribute into a zeroed 8-byte buffer (every attribute asked for here is at
    /// most 8 bytes): `Ok(None)` when the driver answers CUDA_ERROR_INVALID_VALUE.
    fn attribute(api: &Api, f: PointerGetAttribute, ptr: u64, attribute: c_int, name: &str) -> Result<Option<u64>> {
        let mut value: u64 = 0;
        // SAFETY: an 8-byte, 8-aligned out-buffer, large enough for each attribute asked for.
        match unsafe { f((&mut value as *mut u64).cast(), attribute, ptr) } {
            0 => Ok(Some(value)),
            CUDA_ERROR_INVALID_VALUE => Ok(None),
            rc => Err(Error::new(
                ErrorKind::Cuda,
                format!("cuPointerGetAttribute({name}) of 0x{ptr:x} failed: {}", api.describe(rc)),
            )),
        }
    }

    /// The allocation holding `ptr`, checked to be memory CUDA IPC can share, on this device.
    pub fn allocation_of(&self, ptr: u64) -> Result<Allocation> {
        let device = self.device;
        self.with_context(|api| {
            let get = api.entry(api.pointer_get_attribute, "cuPointerGetAttribute")?;
            let Some(memory_type) = Self::attribute(api, get, ptr, ATTR_MEMORY_TYPE, "MEMORY_TYPE")? else {
                return Err(invalid(format!(
                    "data 0x{ptr:x} is unknown to the CUDA driver (not memory it allocated): {USE_INSTEAD}"
                )));
            };
            // An older driver answers INVALID_VALUE for attributes it does not know: "not that kind".
            let flag = |attr, name| Self::attribute(api, get, ptr, attr, name).map(|v| v.unwrap_or(0));
            if memory_type == MEMORYTYPE_HOST {
                return Err(invalid(format!("data 0x{ptr:x} is host memory: {USE_INSTEAD}")));
            }
            if flag(ATTR_IS_MANAGED, "IS_MANAGED")? != 0 {
                return Err(invalid(format!("data 0x{ptr:x} is managed (unified) memory: {USE_INSTEAD}")));
            }
            let ordinal = flag(ATTR_DEVICE_ORDINAL, "DEVICE_ORDINAL")? as u32 as i32;
            if ordinal != device {
                return Err(invalid(format!(
                    "data 0x{ptr:x} is memory of another device (cuda:{ordinal}) than the client's (cuda:{device}): \
                     make the payload through a client bound to that device"
                )));
            }
            let buffer_id = flag(ATTR_BUFFER_ID, "BUFFER_ID")?;
            if flag(ATTR_MEMPOOL_HANDLE, "MEMPOOL_HANDLE")? != 0 {
                return Err(invalid(format!("data 0x{ptr:x} is pool memory (cudaMallocAsync): {USE_INSTEAD}")));
            }
            if Self::attribute(api, get, ptr, ATTR_IS_LEGACY_CUDA_IPC_CAPABLE, "IS_LEGACY_CUDA_IPC_CAPABLE")? == Some(0)
            {
                return Err(invalid(format!(
                    "data 0x{ptr:x} is virtual memory (cuMemCreate), which legacy CUDA IPC cannot share: {USE_INSTEAD}"
                )));
            }
            let range = api.entry(api.mem_get_address_range, "cuMemGetAddressRange_v2")?;
            let (mut base, mut size) = (0u64, 0usize);
            // SAFETY: out-pointers to locals of the entry point's types.
            api.call("cuMemGetAddressRange_v2", unsafe { range(&mut base, &mut size, ptr) })?;
            Ok(Allocation { base, size: size as u64, buffer_id })
        })
    }

    /// The IPC handle of an allocation's base, made once per allocation.
    pub fn ipc_mem_handle(&self, allocation: &Allocation) -> Result<[u8; 64]> {
        let key = (allocation.base, allocation.buffer_id);
        let mut cache = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = cache.get(&key) {
            return Ok(*handle);
        }
        let handle = self.with_context(|api| {
            let get = api.entry(api.ipc_get_mem_handle, "cuIpcGetMemHandle")?;
            let mut handle = [0u8; 64];
            // SAFETY: a 64-byte out-buffer (cudaIpcMemHandle_t); the base of a live allocation.
            api.call("cuIpcGetMemHandle", unsafe { get(&mut handle, allocation.base) })?;
            Ok(handle)
        })?;
        cache.insert(key, handle);
        Ok(handle)
    }

    /// An interprocess event recorded on `stream` (0: the legacy default stream), and its handle.
    pub fn ipc_event(&self, stream: StreamHandle) -> Result<IpcEvent> {
        self.with_context(|api| {
            let create = api.entry(api.event_create, "cuEventCreate")?;
            let record = api.entry(api.event_record, "cuEventRecord")?;
            let handle_of = api.entry(api.ipc_get_event_handle, "cuIpcGetEventHandle")?;
            let destroy = api.entry(api.event_destroy, "cuEventDestroy_v2")?;
            let mut event: *mut c_void = std::ptr::null_mut();
            // SAFETY: out-pointer to a local CUevent; valid flags.
            api.call("cuEventCreate", unsafe { create(&mut event, EVENT_INTERPROCESS | EVENT_DISABLE_TIMING) })?;
            // From here the event is owned: dropped (destroyed) on an error.
            let mut owned = IpcEvent { api, event, handle: [0; 64], destroy, owner_pid: std::process::id() };
            // SAFETY: the event just created; the stream is the caller's (its contract).
            api.call("cuEventRecord", unsafe { record(event, stream as *mut c_void) })?;
            // SAFETY: a 64-byte out-buffer (cudaIpcEventHandle_t); an interprocess event.
            api.call("cuIpcGetEventHandle", unsafe { handle_of(&mut owned.handle, event) })?;
            Ok(owned)
        })
    }
}

/// An interprocess event a payload holds: destroyed with it (not in a forked child).
pub struct IpcEvent {
    api: &'static Api,
    event: *mut c_void,
    pub handle: [u8; 64],
    destroy: EventDestroy,
    owner_pid: u32,
}

// SAFETY: a CUevent is a driver handle without thread affinity; it is only destroyed, once, in Drop.
unsafe impl Send for IpcEvent {}
// SAFETY: as for Send: nothing mutates the event through a shared reference.
unsafe impl Sync for IpcEvent {}

impl Drop for IpcEvent {
    fn drop(&mut self) {
        if std::process::id() != self.owner_pid {
            return;
        }
        // SAFETY: the event this value created and still owns.
        let rc = unsafe { (self.destroy)(self.event) };
        if rc != 0 {
            log::warn!("cuEventDestroy_v2 failed: {}", self.api.describe(rc));
        }
    }
}
