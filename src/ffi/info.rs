//! `EtbBootstrapInfo` and its accessors.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;

use super::args::{reference, take_handle};
use super::boundary::{static_str, FfiError};
use etb_core::bootstrap::BootstrapInfo;
use etb_core::protocol::rank::Method;

/// What `etb_bootstrap_client` found out. Opaque; read through the `etb_info_*` accessors,
/// released with `etb_info_free`. Immutable: the accessors may be called from any thread at once.
pub struct EtbBootstrapInfo {
    info: BootstrapInfo,
    device: CString,
    command_queue_path: CString,
    state_path: CString,
    device_name: Option<CString>,
    device_pci_bus_id: Option<CString>,
    device_uuid: Option<CString>,
}

impl EtbBootstrapInfo {
    pub(crate) fn new(info: BootstrapInfo) -> Result<Self, String> {
        let c = |bytes: &[u8]| CString::new(bytes).map_err(|_| "a path contains a NUL byte".to_string());
        let text = |s: &str| CString::new(s.replace('\0', "")).ok();
        let identity = info.cuda.identity.as_ref();
        Ok(EtbBootstrapInfo {
            device: c(info.device.as_bytes())?,
            command_queue_path: c(info.paths.command_queue.as_os_str().as_bytes())?,
            state_path: c(info.paths.state.as_os_str().as_bytes())?,
            device_name: identity.and_then(|i| text(&i.name)),
            device_pci_bus_id: identity.and_then(|i| text(&i.pci_bus_id)),
            device_uuid: identity.and_then(|i| text(&i.uuid)),
            info,
        })
    }
}

/// Borrows the info behind a pointer, or fails with ETB_ERR_NULL_ARGUMENT.
fn borrow_info<'a>(info: *const EtbBootstrapInfo) -> Result<&'a EtbBootstrapInfo, FfiError> {
    reference(info, "info")
}

/// The agent rank this worker is connected to; -1 when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_agent_rank(info: *const EtbBootstrapInfo) -> i64 {
    value_boundary!(-1, { Ok(borrow_info(info)?.info.agent_rank) })
}

/// The worker's global rank (`RANK`); -1 when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_global_rank(info: *const EtbBootstrapInfo) -> i64 {
    value_boundary!(-1, { Ok(borrow_info(info)?.info.global_rank) })
}

/// Whether the agent rank came from `RANK + AGENT_RANK_OFFSET` (method "offset"), so that
/// `etb_info_rank_offset` is meaningful; false for "direct" and when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_has_rank_offset(info: *const EtbBootstrapInfo) -> bool {
    value_boundary!(false, { Ok(borrow_info(info)?.info.rank_offset.is_some()) })
}

/// The `AGENT_RANK_OFFSET` used (0 when it was unset); 0 when absent (method "direct") or when
/// `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_rank_offset(info: *const EtbBootstrapInfo) -> i64 {
    value_boundary!(0, { Ok(borrow_info(info)?.info.rank_offset.unwrap_or(0)) })
}

/// The CUDA device string of the client, `"cuda:{etb_info_device_index}"`: the options'
/// `device_index` when chosen, else `"cuda:{LOCAL_RANK}"` (bootstrap) or `"cuda:0"`
/// (`etb_client_connect`), bound or not. Owned by `info`: valid until `etb_info_free`. NULL when
/// `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_device(info: *const EtbBootstrapInfo) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), { Ok(borrow_info(info)?.device.as_ptr()) })
}

/// The client's CUDA device ordinal: the options' `device_index` when chosen, else `LOCAL_RANK`
/// (0 when unset; bootstrap) or 0 (`etb_client_connect`); -1 when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_device_index(info: *const EtbBootstrapInfo) -> i32 {
    value_boundary!(-1, { Ok(borrow_info(info)?.info.device_index) })
}

/// The agent's command-queue LMDB path (bytes, NUL-terminated, not necessarily UTF-8). Owned by
/// `info`: valid until `etb_info_free`. NULL when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_command_queue_path(info: *const EtbBootstrapInfo) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), { Ok(borrow_info(info)?.command_queue_path.as_ptr()) })
}

/// The agent's state LMDB path (bytes, NUL-terminated, not necessarily UTF-8). Owned by `info`:
/// valid until `etb_info_free`. NULL when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_state_path(info: *const EtbBootstrapInfo) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), { Ok(borrow_info(info)?.state_path.as_ptr()) })
}

/// How the agent rank was determined: `"direct"` (AGENT_RANK) or `"offset"` (RANK +
/// AGENT_RANK_OFFSET). A static string, valid forever. NULL when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_method(info: *const EtbBootstrapInfo) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), {
        let method: &'static CStr = match borrow_info(info)?.info.method {
            Method::Direct => c"direct",
            Method::Offset => c"offset",
        };
        Ok(static_str(method))
    })
}

/// The agent's process id, identified at bootstrap as the holder of LMDB's lock on the state
/// LMDB's lock file; -1 when it could not be identified (no holder visible, or a holder in
/// another pid namespace) or when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_agent_pid(info: *const EtbBootstrapInfo) -> i32 {
    value_boundary!(-1, { Ok(borrow_info(info)?.info.agent_pid.unwrap_or(-1)) })
}

/// Whether bootstrap bound the worker to its GPU (retained its device's primary context, see
/// `etb_info_device`, and made it current); false when unbound (no driver or device under `ETB_CUDA_AUTO`, or
/// `ETB_CUDA_SKIP`) or when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_cuda_bound(info: *const EtbBootstrapInfo) -> bool {
    value_boundary!(false, { Ok(borrow_info(info)?.info.cuda.identity.is_some()) })
}

/// The bound device's name as the driver reports it (e.g. "NVIDIA H100 80GB HBM3"). Owned by
/// `info`: valid until `etb_info_free`. NULL when unbound or when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_device_name(info: *const EtbBootstrapInfo) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), {
        Ok(borrow_info(info)?.device_name.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
    })
}

/// The bound device's PCI bus id (e.g. "0000:18:00.0"). Owned by `info`: valid until
/// `etb_info_free`. NULL when unbound or when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_device_pci_bus_id(info: *const EtbBootstrapInfo) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), {
        Ok(borrow_info(info)?.device_pci_bus_id.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
    })
}

/// The bound device's UUID as canonical lower-case text, `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
/// Owned by `info`: valid until `etb_info_free`. NULL when unbound or when `info` is NULL.
/// Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_device_uuid(info: *const EtbBootstrapInfo) -> *const libc::c_char {
    value_boundary!(std::ptr::null(), {
        Ok(borrow_info(info)?.device_uuid.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
    })
}

/// The CUDA driver's version as `cuDriverGetVersion` reports it (e.g. 12080 for 12.8); 0 when no
/// driver answered (none installed, `ETB_CUDA_SKIP`); -1 when `info` is NULL. Thread-safe.
///
/// # Safety
/// `info` is NULL or a live info from `etb_bootstrap_client`.
#[no_mangle]
pub unsafe extern "C" fn etb_info_cuda_driver_version(info: *const EtbBootstrapInfo) -> i32 {
    value_boundary!(-1, { Ok(borrow_info(info)?.info.cuda.driver_version) })
}

/// Releases an info and every string its accessors returned. NULL is accepted and ignored.
/// Freeing twice, or using the info or its strings afterwards, is undefined behaviour. Must not
/// race with accessors on the same info.
/// Thread-safety: no other thread may use this info during or after the free.
///
/// # Safety
/// `info` is NULL or an info from `etb_bootstrap_client` not yet freed; the caller gives it up.
#[no_mangle]
pub unsafe extern "C" fn etb_info_free(info: *mut EtbBootstrapInfo) {
    value_boundary!((), {
        drop(take_handle(info));
        Ok(())
    })
}
