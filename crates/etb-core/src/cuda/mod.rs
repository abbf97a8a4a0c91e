//! Putting the worker on its agent's GPU: the CUDA driver API, loaded at run time.
//!
//! The driver (`libcuda.so.1`, or `ETB_CUDA_DRIVER_PATH`) is loaded lazily and once per process
//! with `dlopen`, trying `RTLD_NOLOAD` first so that a driver PyTorch already loaded is reused;
//! nothing links against libcuda, so the library loads on hosts without a GPU. Entry points are
//! looked up by the versioned names the CUDA headers bind to (`cuDevicePrimaryCtxRelease_v2`,
//! `cuDeviceGetUuid_v2`), falling back to the unversioned ones, and a missing one is an error,
//! never a crash.
//!
//! Only the device's *primary* context is used (`cuDevicePrimaryCtxRetain`, the context the CUDA
//! runtime and PyTorch use), never `cuCtxCreate`. A binding holds one retain and releases it
//! when dropped, except in a forked child (the parent's retain is not the child's to release).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::PathBuf;

use once_cell::sync::OnceCell;

use crate::error::{Error, ErrorKind, Result};

pub mod ipc;

/// The environment variable that names the driver library to load instead of libcuda.so.1.
pub const DRIVER_PATH_ENV: &str = "ETB_CUDA_DRIVER_PATH";
const DEFAULT_DRIVER: &str = "libcuda.so.1";

type CuResult = c_int;
type CuDevice = c_int;
/// A `CUcontext`.
pub type CuContext = *mut c_void;

/// When to bind the worker to its GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaMode {
    /// Bind when a driver and the device exist; otherwise go on without.
    Auto,
    /// No driver, a failing `cuInit` or a missing device is an error.
    Require,
    /// Never touch the driver.
    Skip,
}

struct Api {
    path: String,
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    driver_get_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_get_pci_bus_id: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_get_uuid: unsafe extern "C" fn(*mut [u8; 16], CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_get_current: Option<unsafe extern "C" fn(*mut CuContext) -> CuResult>,
    get_error_string: Option<unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>,
    get_error_name: Option<unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>,
    // The entry points of CUDA tensor payloads (ipc.rs): looked up at load time, but a missing
    // one is an error only when a payload needs it.
    mem_get_address_range: Option<ipc::MemGetAddressRange>,
    pointer_get_attribute: Option<ipc::PointerGetAttribute>,
    pointer_get_attributes: Option<ipc::PointerGetAttributes>,
    ipc_get_mem_handle: Option<ipc::IpcGetMemHandle>,
    event_create: Option<ipc::EventCreate>,
    event_record: Option<ipc::EventRecord>,
    ipc_get_event_handle: Option<ipc::IpcGetEventHandle>,
    event_destroy: Option<ipc::EventDestroy>,
    ctx_push_current: Option<ipc::CtxPushCurrent>,
    ctx_pop_current: Option<ipc::CtxPopCurrent>,
    // Keeps the entry points above valid: the library is never unloaded.
    _lib: libloading::Library,
}

static DRIVER: OnceCell<std::result::Result<Api, String>> = OnceCell::new();

/// The process that first called `cuInit` through us: CUDA cannot be used again in a child
/// forked after that (NVIDIA leaves it undefined), so such a child is refused the driver.
static INIT_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn load() -> std::result::Result<Api, String> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    let path = std::env::var_os(DRIVER_PATH_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_DRIVER));
    let shown = path.display().to_string();
    // SAFETY: loading the CUDA driver runs its initializers, as any CUDA program does.
    let lib = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL | libc::RTLD_NOLOAD) }
        // SAFETY: as above: the second try loads the driver if it was not loaded yet.
        .or_else(|_| unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) })
        .map_err(|e| format!("the CUDA driver {shown} could not be loaded: {e}"))?;
    let lib: libloading::Library = lib.into();
    macro_rules! sym {
        ($($name:literal),+) => {{
            let mut found = None;
            $(
                if found.is_none() {
                    // SAFETY: the symbol is the CUDA driver entry point of that name, whose C
                    // signature the field's type spells out.
                    // A symbol whose address is NULL is as missing as an absent one.
                    found = unsafe { lib.get::<*const ()>(concat!($name, "\0").as_bytes()) }
                        .ok()
                        .filter(|s| !(**s).is_null())
                        // SAFETY: the symbol's address is non-NULL and is that entry point; the field's fn type is its C signature, and fn pointers have the size of a data pointer.
                        .map(|s| unsafe { std::mem::transmute_copy(&*s) });
                }
            )+
            found
        }};
    }
    macro_rules! required {
        ($($name:literal),+) => {
            sym!($($name),+).ok_or_else(|| format!("the CUDA driver {shown} has no entry point {}", [$($name),+].join(" or ")))?
        };
    }
    Ok(Api {
        init: required!("cuInit"),
        driver_get_version: required!("cuDriverGetVersion"),
        device_get_count: required!("cuDeviceGetCount"),
        device_get: required!("cuDeviceGet"),
        device_get_name: required!("cuDeviceGetName"),
        device_get_pci_bus_id: required!("cuDeviceGetPCIBusId"),
        device_get_uuid: required!("cuDeviceGetUuid_v2", "cuDeviceGetUuid"),
        primary_ctx_retain: required!("cuDevicePrimaryCtxRetain"),
        primary_ctx_release: required!("cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"),
        ctx_set_current: required!("cuCtxSetCurrent"),
        ctx_get_current: sym!("cuCtxGetCurrent"),
        get_error_string: sym!("cuGetErrorString"),
        get_error_name: sym!("cuGetErrorName"),
        // Never the unversioned cuMemGetAddressRange: that is the pre-3.2 ABI with 32-bit
        // pointers and sizes.
        mem_get_address_range: sym!("cuMemGetAddressRange_v2"),
        pointer_get_attribute: sym!("cuPointerGetAttribute"),
        // The plural: one call for every attribute a payload asks (the singular calls without it).
        pointer_get_attributes: sym!("cuPointerGetAttributes"),
        ipc_get_mem_handle: sym!("cuIpcGetMemHandle"),
        event_create: sym!("cuEventCreate"),
        event_record: sym!("cuEventRecord"),
        ipc_get_event_handle: sym!("cuIpcGetEventHandle"),
        // The unversioned names share the ABI of these three.
        event_destroy: sym!("cuEventDestroy_v2", "cuEventDestroy"),
        ctx_push_current: sym!("cuCtxPushCurrent_v2", "cuCtxPushCurrent"),
        ctx_pop_current: sym!("cuCtxPopCurrent_v2", "cuCtxPopCurrent"),
        path: shown,
        _lib: lib,
    })
}

fn api() -> std::result::Result<&'static Api, String> {
    DRIVER.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// Loads the driver as bootstrap would (once per process; no `cuInit`) and says which library it
/// is, or why it cannot be loaded: for diagnostics (`etb doctor`).
pub fn probe_driver() -> std::result::Result<String, String> {
    api().map(|a| a.path.clone())
}

impl Api {
    /// "CUDA_ERROR_NO_DEVICE (100): no CUDA-capable device is detected", as the driver says it.
    fn describe(&self, code: CuResult) -> String {
        let text = |f: Option<unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>| {
            let mut p: *const c_char = std::ptr::null();
            match f {
                // SAFETY: the driver writes a pointer to a static string, or leaves NULL.
                Some(f) if unsafe { f(code, &mut p) } == 0 && !p.is_null() => {
                    // SAFETY: the driver returned success and a non-NULL pointer to a static NUL-terminated string.
                    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
                }
                _ => None,
            }
        };
        match (text(self.get_error_name), text(self.get_error_string)) {
            (Some(n), Some(s)) => format!("{n} ({code}): {s}"),
            (Some(n), None) => format!("{n} ({code})"),
            _ => format!("CUDA error {code}"),
        }
    }

    /// An optional entry point, or the error that names it.
    fn entry<T: Copy>(&self, f: Option<T>, name: &str) -> Result<T> {
        f.ok_or_else(|| {
            Error::new(
                ErrorKind::Cuda,
                format!("the CUDA driver {} has no entry point {name} (needed for CUDA tensor payloads)", self.path),
            )
        })
    }

    fn call(&self, what: &str, code: CuResult) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Cuda, format!("{what} failed: {}", self.describe(code))))
        }
    }
}

/// What the driver says about the bound device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub name: String,
    pub pci_bus_id: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case.
    pub uuid: String,
}

/// The outcome of binding: the driver's version (0 when no driver answered) and, when bound,
/// the device's identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CudaReport {
    pub driver_version: i32,
    pub identity: Option<DeviceIdentity>,
    /// When not bound: why (the CUDA mode was skip, no driver, `cuInit`'s error, the ordinal past
    /// the device count...), for the errors of calls that need the GPU.
    pub unbound_reason: Option<String>,
}

/// Which device to bind, and where its ordinal came from: that says how messages name it and
/// what an ordinal past the driver's device count does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// The ordinal as the driver numbers devices (so `CUDA_VISIBLE_DEVICES` applies); >= 0.
    pub ordinal: i32,
    pub source: DeviceSource,
}

/// Where a [`Device`]'s ordinal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSource {
    /// `LOCAL_RANK`, bootstrap's default: past the device count, `Auto` goes on unbound.
    LocalRank,
    /// Device 0, the default of a connect with explicit paths: as `LocalRank`.
    ConnectDefault,
    /// The caller's `device_index`: past the device count it is an error in every mode but
    /// `Skip` (a device named on purpose that does not exist is a mistake, not a CPU-only host).
    Chosen,
}

impl Device {
    /// `cuda:{ordinal}`, the device string of the info.
    pub fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    /// What to say when the driver reports only `count` devices.
    fn past_count(&self, count: c_int) -> String {
        let (ordinal, devices) = (
            self.ordinal,
            match count {
                0 => "no device".to_string(),
                1 => "1 device (cuda:0)".to_string(),
                n => format!("{n} devices (cuda:0 to cuda:{})", n - 1),
            },
        );
        let hidden = "CUDA_VISIBLE_DEVICES may hide the others";
        match self.source {
            DeviceSource::LocalRank => {
                format!(
                    "device ordinal {ordinal} (LOCAL_RANK) is past the {count} device(s) the driver reports ({hidden})"
                )
            }
            DeviceSource::ConnectDefault => format!(
                "device ordinal {ordinal} (the default of a connect without device_index) is past the {count} \
                 device(s) the driver reports ({hidden})"
            ),
            DeviceSource::Chosen => format!(
                "device_index {ordinal} is past the {count} device(s) the driver reports: it has {devices} \
                 ({hidden}); choose one of those"
            ),
        }
    }
}

/// A retain of a device's primary context, current on the bootstrapping thread.
pub struct CudaBinding {
    api: &'static Api,
    device: CuDevice,
    context: CuContext,
    owner_pid: u32,
    /// `cuDriverGetVersion`'s answer at bootstrap (0 when it failed): which calls payloads use.
    driver_version: i32,
}

// SAFETY: a CUcontext is a handle usable from any thread (cuCtxSetCurrent is per thread); the
// release happens once, in Drop.
unsafe impl Send for CudaBinding {}
// SAFETY: as for Send: the handle has no thread affinity; every method takes &self and the driver is thread-safe.
unsafe impl Sync for CudaBinding {}

impl CudaBinding {
    pub fn context(&self) -> CuContext {
        self.context
    }

    /// Makes the primary context current on the calling thread (current contexts are per thread).
    pub fn make_current(&self) -> Result<()> {
        // SAFETY: a context we retained and still hold.
        self.api.call("cuCtxSetCurrent", unsafe { (self.api.ctx_set_current)(self.context) })
    }
}

impl Drop for CudaBinding {
    fn drop(&mut self) {
        if std::process::id() == self.owner_pid {
            // Leave no context of ours current on this thread: if ours was the last retain, the
            // driver resets the context, and a thread keeping it current would use a dead one.
            // (Other threads that bound it keep it current: unbind them before closing.)
            if let Some(get) = self.api.ctx_get_current {
                let mut current: CuContext = std::ptr::null_mut();
                // SAFETY: out-pointer to a local; setting NULL is always valid.
                if unsafe { get(&mut current) } == 0 && current == self.context {
                    // SAFETY: setting no context current is always valid; only this thread's current context changes.
                    unsafe { (self.api.ctx_set_current)(std::ptr::null_mut()) };
                }
            }
            // SAFETY: releases the one retain this binding holds.
            let rc = unsafe { (self.api.primary_ctx_release)(self.device) };
            if rc != 0 {
                log::warn!("cuDevicePrimaryCtxRelease({}) failed: {}", self.device, self.api.describe(rc));
            }
        }
    }
}

/// The canonical text of a CUDA UUID.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

fn c_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Binds this thread to `device`'s primary context as `mode` says. `Auto` goes on unbound when
/// there is no driver, the driver fails, or (for a default device) the ordinal is past the device
/// count; a chosen device past the count is an error in `Auto` too.
pub fn bind(device: Device, mode: CudaMode) -> Result<(Option<CudaBinding>, CudaReport)> {
    if mode == CudaMode::Skip {
        let reason = Some("the CUDA mode was skip at bootstrap".to_string());
        return Ok((None, CudaReport { unbound_reason: reason, ..CudaReport::default() }));
    }
    let api = match api() {
        Ok(api) => api,
        Err(why) if mode == CudaMode::Require => {
            return Err(Error::new(ErrorKind::Cuda, format!("{why}; the CUDA mode is require, so bootstrap fails")))
        }
        Err(why) => {
            log::debug!("{why}: going on without CUDA");
            return Ok((None, CudaReport { unbound_reason: Some(why), ..CudaReport::default() }));
        }
    };
    let mut report = CudaReport::default();
    match try_bind(api, device, &mut report) {
        Ok(binding) => Ok((Some(binding), report)),
        Err(Unbound { error, chosen_is_missing }) if mode == CudaMode::Require || chosen_is_missing => Err(error),
        Err(Unbound { error: e, .. }) => {
            log::warn!("not bound to a GPU: {e}");
            report.unbound_reason = Some(e.message().to_string());
            Ok((None, report))
        }
    }
}

/// Why [`try_bind`] did not bind.
struct Unbound {
    error: Error,
    /// The caller chose the device and the driver has no such device: an error in every mode.
    chosen_is_missing: bool,
}

impl From<Error> for Unbound {
    fn from(error: Error) -> Unbound {
        Unbound { error, chosen_is_missing: false }
    }
}

fn try_bind(api: &'static Api, device: Device, report: &mut CudaReport) -> std::result::Result<CudaBinding, Unbound> {
    use std::sync::atomic::Ordering;
    let ordinal = device.ordinal;
    let me = std::process::id();
    match INIT_PID.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(pid) if pid == me => {}
        Err(pid) => {
            return Err(Error::new(
                ErrorKind::Cuda,
                format!(
                    "this process was forked from {pid} after CUDA was initialized there: CUDA cannot be used in it"
                ),
            )
            .into())
        }
    }
    // SAFETY (whole function): CUDA driver calls with out-pointers to locals of the right types
    // and buffers of the sizes passed.
    let mut version = 0;
    // Asked before cuInit (it needs none), so that logs have it even when cuInit fails.
    // SAFETY: out-pointer to a local c_int; cuDriverGetVersion needs no cuInit.
    if unsafe { (api.driver_get_version)(&mut version) } == 0 {
        report.driver_version = version;
    }
    // SAFETY: cuInit takes only its flags (0).
    api.call(&format!("cuInit(0) of {}", api.path), unsafe { (api.init)(0) })?;
    let mut count = 0;
    // SAFETY: out-pointer to a local c_int.
    api.call("cuDeviceGetCount", unsafe { (api.device_get_count)(&mut count) })?;
    if ordinal < 0 || ordinal >= count {
        return Err(Unbound {
            error: Error::new(ErrorKind::Cuda, device.past_count(count)),
            chosen_is_missing: device.source == DeviceSource::Chosen,
        });
    }
    let mut device = 0;
    // SAFETY: out-pointer to a local CUdevice; the ordinal is below the device count.
    api.call(&format!("cuDeviceGet({ordinal})"), unsafe { (api.device_get)(&mut device, ordinal) })?;
    let mut name = [0u8; 256];
    // SAFETY: a 256-byte local buffer, its length passed; the device came from cuDeviceGet.
    api.call("cuDeviceGetName", unsafe {
        (api.device_get_name)(name.as_mut_ptr().cast(), name.len() as c_int, device)
    })?;
    let mut bus = [0u8; 64];
    // SAFETY: a 64-byte local buffer, its length passed; the device came from cuDeviceGet.
    api.call("cuDeviceGetPCIBusId", unsafe {
        (api.device_get_pci_bus_id)(bus.as_mut_ptr().cast(), bus.len() as c_int, device)
    })?;
    let mut uuid = [0u8; 16];
    // SAFETY: out-pointer to a local 16-byte CUuuid; the device came from cuDeviceGet.
    api.call("cuDeviceGetUuid", unsafe { (api.device_get_uuid)(&mut uuid, device) })?;
    let mut context: CuContext = std::ptr::null_mut();
    // SAFETY: out-pointer to a local CUcontext; the retain is released by the binding's Drop.
    api.call(&format!("cuDevicePrimaryCtxRetain({ordinal})"), unsafe {
        (api.primary_ctx_retain)(&mut context, device)
    })?;
    // From here the binding owns the retain: dropping it on an error releases it.
    let binding = CudaBinding { api, device, context, owner_pid: std::process::id(), driver_version: version };
    binding.make_current()?;
    report.identity = Some(DeviceIdentity { name: c_text(&name), pci_bus_id: c_text(&bus), uuid: uuid_text(&uuid) });
    Ok(binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_canonical_lower_case() {
        let b: [u8; 16] =
            [0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89, 0x0A, 0xBC, 0xDE, 0xF0, 0x12, 0x34, 0x56, 0x78];
        assert_eq!(uuid_text(&b), "GPU-abcdef01-2345-6789-0abc-def012345678");
    }

    #[test]
    fn a_missing_device_is_named_as_it_was_chosen() {
        let chosen = Device { ordinal: 5, source: DeviceSource::Chosen };
        assert_eq!(
            chosen.past_count(2),
            "device_index 5 is past the 2 device(s) the driver reports: it has 2 devices (cuda:0 to cuda:1) \
             (CUDA_VISIBLE_DEVICES may hide the others); choose one of those"
        );
        assert!(chosen.past_count(1).contains("it has 1 device (cuda:0)"));
        assert!(chosen.past_count(0).contains("it has no device"));
        let local = Device { ordinal: 3, source: DeviceSource::LocalRank };
        assert!(local.past_count(2).starts_with("device ordinal 3 (LOCAL_RANK) is past the 2 device(s)"));
        let connect = Device { ordinal: 0, source: DeviceSource::ConnectDefault };
        assert!(connect.past_count(0).contains("the default of a connect without device_index"));
        assert_eq!(chosen.name(), "cuda:5");
    }

    #[test]
    fn skip_never_touches_the_driver() {
        let (binding, report) = bind(Device { ordinal: 0, source: DeviceSource::Chosen }, CudaMode::Skip).unwrap();
        assert!(binding.is_none());
        assert_eq!((report.driver_version, report.identity), (0, None));
        assert_eq!(report.unbound_reason.as_deref(), Some("the CUDA mode was skip at bootstrap"));
        assert!(DRIVER.get().is_none(), "SKIP must not even load the driver");
    }
}
