//! What a CUDA tensor payload needs of the driver (docs/torch-ipc.md section 1): the kind of
//! memory a pointer is, its allocation, the allocation's IPC handle (cached per allocation), and
//! an interprocess event recorded on a stream.
//!
//! The fewest driver calls per payload: the kind and the allocation come from one
//! `cuPointerGetAttributes` call, which needs no current context (none of the attributes asked
//! depends on one); the handle and the event are made under one push of the client's context
//! (popped after, so any thread may make payloads), and a payload of an allocation whose handle is
//! cached, without an event, makes no call but the lookup. A driver without the plural entry
//! point, older than 11.3, or whose plural call fails as unsupported, gets the singular calls
//! (`cuPointerGetAttribute` per attribute and `cuMemGetAddressRange_v2`, under a push of their own).

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;

use once_cell::sync::Lazy;

use super::{Api, CuContext, CuResult, CudaBinding};
use crate::error::{Error, ErrorKind, Result};

pub type MemGetAddressRange = unsafe extern "C" fn(*mut u64, *mut usize, u64) -> CuResult;
pub type PointerGetAttribute = unsafe extern "C" fn(*mut c_void, c_int, u64) -> CuResult;
pub type PointerGetAttributes = unsafe extern "C" fn(c_uint, *mut c_int, *mut *mut c_void, u64) -> CuResult;
pub type IpcGetMemHandle = unsafe extern "C" fn(*mut [u8; 64], u64) -> CuResult;
pub type EventCreate = unsafe extern "C" fn(*mut *mut c_void, c_uint) -> CuResult;
pub type EventRecord = unsafe extern "C" fn(*mut c_void, *mut c_void) -> CuResult;
pub type IpcGetEventHandle = unsafe extern "C" fn(*mut [u8; 64], *mut c_void) -> CuResult;
pub type EventDestroy = unsafe extern "C" fn(*mut c_void) -> CuResult;
pub type CtxPushCurrent = unsafe extern "C" fn(CuContext) -> CuResult;
pub type CtxPopCurrent = unsafe extern "C" fn(*mut CuContext) -> CuResult;

const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
const CUDA_ERROR_INVALID_CONTEXT: CuResult = 201;
const CUDA_ERROR_NOT_SUPPORTED: CuResult = 801;
// CUpointer_attribute (cuda.h).
const ATTR_MEMORY_TYPE: c_int = 2;
const ATTR_BUFFER_ID: c_int = 7;
const ATTR_IS_MANAGED: c_int = 8;
const ATTR_DEVICE_ORDINAL: c_int = 9;
const ATTR_IS_LEGACY_CUDA_IPC_CAPABLE: c_int = 10;
const ATTR_RANGE_START_ADDR: c_int = 11;
const ATTR_RANGE_SIZE: c_int = 12;
const ATTR_MEMPOOL_HANDLE: c_int = 17;
/// What one `cuPointerGetAttributes` call asks, in this order.
const ASKED: [c_int; 8] = [
    ATTR_MEMORY_TYPE,
    ATTR_IS_MANAGED,
    ATTR_DEVICE_ORDINAL,
    ATTR_BUFFER_ID,
    ATTR_MEMPOOL_HANDLE,
    ATTR_IS_LEGACY_CUDA_IPC_CAPABLE,
    ATTR_RANGE_START_ADDR,
    ATTR_RANGE_SIZE,
];
/// The first driver version that knows every attribute in [`ASKED`] (MEMPOOL_HANDLE came in 11.3):
/// an older one may fail the plural call or leave an attribute it does not know unwritten (a zero
/// IS_LEGACY_CUDA_IPC_CAPABLE would refuse good memory), so it gets the singular calls.
const PLURAL_SINCE: i32 = 11030;
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

    /// The allocation holding `ptr`, checked to be memory CUDA IPC can share, on this device: one
    /// `cuPointerGetAttributes` call without a context push, or the singular calls under one.
    pub fn allocation_of(&self, ptr: u64) -> Result<Allocation> {
        if let Some(allocation) = self.allocation_by_attributes(ptr)? {
            return Ok(allocation);
        }
        let device = self.device;
        self.with_context(|api| {
            let get = api.entry(api.pointer_get_attribute, "cuPointerGetAttribute")?;
            let range = api.entry(api.mem_get_address_range, "cuMemGetAddressRange_v2")?;
            let mut ask = |attr, name: &str| Self::attribute(api, get, ptr, attr, name);
            check_kind(ptr, device, &mut ask, || {
                let (mut base, mut size) = (0u64, 0usize);
                // SAFETY: out-pointers to locals of the entry point's types.
                api.call("cuMemGetAddressRange_v2", unsafe { range(&mut base, &mut size, ptr) })?;
                Ok((base, size as u64))
            })
        })
    }

    /// [`Self::allocation_of`] by one `cuPointerGetAttributes` call: `Ok(None)` when the singular
    /// calls must answer instead (no plural entry point, a driver older than 11.3, a plural call
    /// failing with CUDA_ERROR_INVALID_VALUE, NOT_SUPPORTED or INVALID_CONTEXT).
    fn allocation_by_attributes(&self, ptr: u64) -> Result<Option<Allocation>> {
        let api = self.api;
        let Some(get) = api.pointer_get_attributes.filter(|_| self.driver_version >= PLURAL_SINCE) else {
            return Ok(None);
        };
        let mut asked = ASKED;
        let mut values = [0u64; ASKED.len()];
        let first = values.as_mut_ptr();
        let mut data: [*mut c_void; ASKED.len()] = std::array::from_fn(|i| first.wrapping_add(i).cast());
        // SAFETY: `asked` and `data` hold ASKED.len() entries each; every data[i] points at its own
        // zeroed, 8-aligned 8-byte value, large enough for each attribute asked (at most 8 bytes).
        let rc = unsafe { get(ASKED.len() as c_uint, asked.as_mut_ptr(), data.as_mut_ptr(), ptr) };
        match rc {
            0 => {}
            CUDA_ERROR_INVALID_VALUE | CUDA_ERROR_NOT_SUPPORTED | CUDA_ERROR_INVALID_CONTEXT => {
                log::debug!(
                    "cuPointerGetAttributes of 0x{ptr:x}: {}; asking one attribute at a time",
                    api.describe(rc)
                );
                return Ok(None);
            }
            rc => {
                return Err(Error::new(
                    ErrorKind::Cuda,
                    format!("cuPointerGetAttributes of 0x{ptr:x} failed: {}", api.describe(rc)),
                ))
            }
        }
        let value = |attr: c_int| values[ASKED.iter().position(|&a| a == attr).expect("an asked attribute")];
        // An unknown pointer answers NULL values: MEMORY_TYPE 0, which check_kind refuses. A range
        // that does not hold the tensor is refused by the caller's span check.
        let range = (value(ATTR_RANGE_START_ADDR), value(ATTR_RANGE_SIZE));
        let mut ask = |attr, _: &str| Ok(Some(value(attr)));
        check_kind(ptr, self.device, &mut ask, || Ok(range)).map(Some)
    }

    /// The IPC handle of an allocation's base (made once per allocation, then cached) and, with
    /// `stream`, an interprocess event recorded on it (0: the legacy default stream): under one
    /// push of the client's context, and none when the handle is cached and no event is asked.
    pub fn share(&self, allocation: &Allocation, stream: Option<StreamHandle>) -> Result<([u8; 64], Option<IpcEvent>)> {
        let key = (allocation.base, allocation.buffer_id);
        let cache = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
        let cached = cache.get(&key).copied();
        if let (Some(handle), None) = (cached, stream) {
            return Ok((handle, None));
        }
        // Held while this allocation's handle is made, so that it is made once.
        let mut making = if cached.is_none() { Some(cache) } else { None };
        self.with_context(|api| {
            let handle = match (cached, making.as_mut()) {
                (Some(handle), _) => handle,
                (None, cache) => {
                    let get = api.entry(api.ipc_get_mem_handle, "cuIpcGetMemHandle")?;
                    let mut handle = [0u8; 64];
                    // SAFETY: a 64-byte out-buffer (cudaIpcMemHandle_t); the base of a live allocation.
                    api.call("cuIpcGetMemHandle", unsafe { get(&mut handle, allocation.base) })?;
                    if let Some(cache) = cache {
                        cache.insert(key, handle);
                    }
                    handle
                }
            };
            drop(making);
            let event = stream.map(|stream| Self::event(api, stream)).transpose()?;
            Ok((handle, event))
        })
    }

    /// An interprocess event recorded on `stream`, and its handle; the context is current.
    fn event(api: &'static Api, stream: StreamHandle) -> Result<IpcEvent> {
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
    }
}

/// The checks of docs/torch-ipc.md section 1, in its order, refusing at the first mismatch:
/// `ask(attribute, name)` is the attribute's value (`None`: the driver answered
/// CUDA_ERROR_INVALID_VALUE), `range` the base and size of the allocation holding `ptr`.
fn check_kind(
    ptr: u64,
    device: i32,
    ask: &mut dyn FnMut(c_int, &str) -> Result<Option<u64>>,
    range: impl FnOnce() -> Result<(u64, u64)>,
) -> Result<Allocation> {
    // Unknown to the driver: INVALID_VALUE from the singular call, NULL values from the plural.
    let memory_type = match ask(ATTR_MEMORY_TYPE, "MEMORY_TYPE")? {
        None | Some(0) => {
            return Err(invalid(format!(
                "data 0x{ptr:x} is unknown to the CUDA driver (not memory it allocated): {USE_INSTEAD}"
            )))
        }
        Some(t) => t,
    };
    // An older driver answers INVALID_VALUE for attributes it does not know: "not that kind".
    let mut flag = |attr, name| ask(attr, name).map(|v| v.unwrap_or(0));
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
    if ask(ATTR_IS_LEGACY_CUDA_IPC_CAPABLE, "IS_LEGACY_CUDA_IPC_CAPABLE")? == Some(0) {
        return Err(invalid(format!(
            "data 0x{ptr:x} is virtual memory (cuMemCreate), which legacy CUDA IPC cannot share: {USE_INSTEAD}"
        )));
    }
    let (base, size) = range()?;
    Ok(Allocation { base, size, buffer_id })
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
