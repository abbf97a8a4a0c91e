//! `etb_bootstrap_client`, `etb_bootstrap_client_ex` and `etb_client_connect`: from the
//! environment (or explicit paths) and the versioned `EtbBootstrapOptions` to a new `EtbClient`
//! and `EtbBootstrapInfo`.

use std::ffi::c_void;

use super::args::{c_str, decode, new_handle, optional_reference, out, timeout, versioned, Out, Versioned};
use super::boundary::FfiError;
use super::client::EtbClient;
use super::info::EtbBootstrapInfo;
use super::naming::{call_naming_fn, EtbPathNamingFn};
use super::status::{EtbStatus, ETB_ERR_INVALID_ARGUMENT, ETB_ERR_NAMING};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use etb_core::bootstrap::{bootstrap_client, connect_client, BootstrapOptions, DEFAULT_CONNECTION_TIMEOUT_SECS};
use etb_core::connection::PtraceMode;
use etb_core::cuda::CudaMode;
use etb_core::protocol::naming::AgentPaths;
use etb_core::protocol::rank::ProcessEnv;
use etb_core::sys::trust::TrustPolicy;

/// When to bind the worker to its GPU: `ETB_CUDA_AUTO`, `ETB_CUDA_REQUIRE` or `ETB_CUDA_SKIP`.
pub type EtbCudaMode = i32;
/// Bind to the client's device (`device_index`, else `cuda:{LOCAL_RANK}`) when a CUDA driver and
/// that device exist; otherwise go on unbound, except that a `device_index` the driver does not
/// have is `ETB_ERR_CUDA` (a device chosen on purpose). In a process that has not touched CUDA
/// yet this costs the first `cuInit` and a new primary context (typically a few hundred
/// milliseconds and a few hundred MiB of GPU memory); where PyTorch already initialized the
/// device, retaining its primary context costs nothing more.
pub const ETB_CUDA_AUTO: EtbCudaMode = 0;
/// As AUTO, but no driver, a failing `cuInit` or an ordinal past the device count is
/// `ETB_ERR_CUDA`, with the driver's own error text.
pub const ETB_CUDA_REQUIRE: EtbCudaMode = 1;
/// Never touch the CUDA driver (CPU-only control processes); a `device_index` then only names
/// the info's device, unchecked.
pub const ETB_CUDA_SKIP: EtbCudaMode = 2;

/// Options of `etb_bootstrap_client_ex` and `etb_client_connect`. Fill it with
/// `etb_bootstrap_options_init`, then set what you need. The layout is fixed: later versions only
/// append fields at the end (from offset `sizeof` of this version: 64 bytes on 64-bit Linux), and
/// `struct_size` (the `sizeof` the caller was compiled with) tells the library how much of it the
/// caller knows: a field past an older caller's `struct_size` takes its default (0.1's first
/// layouts, 40 and 56 bytes, end before `device_index`, so they bind as before).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EtbBootstrapOptions {
    /// `sizeof(EtbBootstrapOptions)` as the caller knows it.
    pub struct_size: u32,
    /// NULL: the default names `/tmp/agent_rank{N}_{command,state}.lmdb`.
    pub path_naming_fn: EtbPathNamingFn,
    /// Passed to `path_naming_fn` only.
    pub user_data: *mut c_void,
    /// Seconds to wait for the agent: finite >= 0, or INFINITY.
    pub connection_timeout_s: f64,
    /// `ETB_CUDA_AUTO`, `ETB_CUDA_REQUIRE` or `ETB_CUDA_SKIP`.
    pub cuda_mode: EtbCudaMode,
    /// Ignored. It fills what was the struct's padding in 0.1's first layout (offsets 36..40),
    /// so that fields added later never land where an older caller left garbage.
    pub reserved0: u32,
    /// `ETB_PTRACE_AGENT` (default), `ETB_PTRACE_ANY` or `ETB_PTRACE_NONE`.
    pub ptrace_mode: EtbPtraceMode,
    /// Non-zero: the agent's files and semaphores may be writable by their group when that group
    /// is one of this process's groups (a shared service group). Default 0: only by their owner.
    pub allow_shared_group: u32,
    /// Non-zero: other workers may attach to the same agent (every one of them must allow it).
    /// Default 0: a second worker gets `ETB_ERR_AGENT_BUSY` (a wrong AGENT_RANK_OFFSET, usually).
    pub allow_shared_agent: u32,
    /// Ignored. It fills what was the struct's padding in the 56-byte layout (offsets 52..56), so
    /// that `device_index` never lands where an older caller left garbage.
    pub reserved1: u32,
    /// The CUDA device the client binds and makes its payloads on, as the driver numbers devices
    /// (so `CUDA_VISIBLE_DEVICES` applies): 0 and up. Default -1: `cuda:{LOCAL_RANK}` for
    /// `etb_bootstrap_client_ex`, `cuda:0` for `etb_client_connect` (as before this field). A
    /// process that drives several GPUs (JAX, any single-controller runtime) makes one client per
    /// local agent, each with its own device. Past the driver's device count: `ETB_ERR_CUDA`
    /// naming both, under `ETB_CUDA_AUTO` too; under `ETB_CUDA_SKIP` it only names the info's
    /// device. Below -1: `ETB_ERR_INVALID_ARGUMENT`, before any wait.
    pub device_index: i32,
}

/// Whom bootstrap lets ptrace this worker: `ETB_PTRACE_AGENT`, `ETB_PTRACE_ANY`, `ETB_PTRACE_NONE`.
pub type EtbPtraceMode = i32;
/// Exactly the agent process identified at bootstrap (and its descendants); when it cannot be
/// identified, every process, with a warning that says why. The kernel keeps one tracer per
/// process: when this process already authorized another agent that still runs (one process,
/// several agents), every process, with a warning naming both pids; ANY then stays.
pub const ETB_PTRACE_AGENT: EtbPtraceMode = 0;
/// Every process of this user (`PR_SET_PTRACER_ANY`), the reference's behaviour.
pub const ETB_PTRACE_ANY: EtbPtraceMode = 1;
/// Nothing: the caller authorizes the agent itself (e.g. with `etb_setup_ptrace_pid`).
pub const ETB_PTRACE_NONE: EtbPtraceMode = 2;

/// What a caller's options say, in the core's terms.
struct Parsed {
    path_naming_fn: EtbPathNamingFn,
    user_data: *mut c_void,
    connection_timeout_s: f64,
    cuda_mode: CudaMode,
    ptrace_mode: PtraceMode,
    trust: TrustPolicy,
    share_agent: bool,
    device_index: Option<i32>,
}

/// The smallest `struct_size` accepted: the end of the five fields every version has.
const MIN_OPTIONS_SIZE: usize =
    std::mem::offset_of!(EtbBootstrapOptions, cuda_mode) + std::mem::size_of::<EtbCudaMode>();

// SAFETY: `#[repr(C)]`, starts with `struct_size: u32`; its fields are integers, a float, a raw
// pointer and an optional function pointer, for which every bit pattern is a valid value.
// (`device_index` sits after `reserved1`, past the 56 bytes of the layout before it.)
unsafe impl Versioned for EtbBootstrapOptions {
    const INIT_FN: &'static str = "etb_bootstrap_options_init";
}

/// The CUDA modes, for decoding.
const CUDA_MODES: [(EtbCudaMode, &str, CudaMode); 3] = [
    (ETB_CUDA_AUTO, "ETB_CUDA_AUTO", CudaMode::Auto),
    (ETB_CUDA_REQUIRE, "ETB_CUDA_REQUIRE", CudaMode::Require),
    (ETB_CUDA_SKIP, "ETB_CUDA_SKIP", CudaMode::Skip),
];

/// The ptrace modes, for decoding.
const PTRACE_MODES: [(EtbPtraceMode, &str, PtraceMode); 3] = [
    (ETB_PTRACE_AGENT, "ETB_PTRACE_AGENT", PtraceMode::Agent),
    (ETB_PTRACE_ANY, "ETB_PTRACE_ANY", PtraceMode::Any),
    (ETB_PTRACE_NONE, "ETB_PTRACE_NONE", PtraceMode::None),
];

/// Fills `*options` with the defaults: `struct_size` = `sizeof(EtbBootstrapOptions)`, default
/// naming, `user_data` NULL, 30 s, `ETB_CUDA_AUTO`, `ETB_PTRACE_AGENT`, `device_index` -1 (the
/// default device); every other byte zero.
/// NULL is ignored (and recorded as the thread's last error). Thread-safe; does not block.
///
/// It writes this library version's `sizeof(EtbBootstrapOptions)` bytes. Fields are only ever
/// appended in a release that changes the SONAME (`libetha_tensor_bus.so.0.<minor>`), so a
/// program can never meet a library whose struct is larger than the one it was compiled with.
///
/// # Safety
/// `options` is NULL or points to `sizeof(EtbBootstrapOptions)` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn etb_bootstrap_options_init(options: *mut EtbBootstrapOptions) {
    value_boundary!((), {
        out(options, "options")?.write_zero_padded(default_options());
        Ok(())
    })
}

fn default_options() -> EtbBootstrapOptions {
    EtbBootstrapOptions {
        struct_size: std::mem::size_of::<EtbBootstrapOptions>() as u32,
        path_naming_fn: None,
        user_data: std::ptr::null_mut(),
        connection_timeout_s: DEFAULT_CONNECTION_TIMEOUT_SECS,
        cuda_mode: ETB_CUDA_AUTO,
        reserved0: 0,
        ptrace_mode: ETB_PTRACE_AGENT,
        allow_shared_group: 0,
        allow_shared_agent: 0,
        reserved1: 0,
        device_index: DEFAULT_DEVICE_INDEX,
    }
}

/// `device_index`'s default: the device of today's rule (`LOCAL_RANK`, or 0 for a connect).
const DEFAULT_DEVICE_INDEX: i32 = -1;

/// `device_index` in the core's terms: -1 is the default (`None`), 0 and up a device.
fn device_index(value: i32) -> Result<Option<i32>, FfiError> {
    match value {
        DEFAULT_DEVICE_INDEX => Ok(None),
        v if v >= 0 => Ok(Some(v)),
        v => Err(FfiError::new(
            ETB_ERR_INVALID_ARGUMENT,
            format!(
                "device_index is {v}: use -1 (the default: cuda:{{LOCAL_RANK}}, or cuda:0 for etb_client_connect) or a \
                 CUDA device ordinal, 0 and up"
            ),
        )),
    }
}

/// Reads a caller's options, whatever version of the struct it was compiled with (an older,
/// smaller one takes the defaults for what it does not cover; see `args::versioned`); NULL is
/// the defaults when `null_is_default`, else `ETB_ERR_NULL_ARGUMENT`.
fn read_options(options: *const EtbBootstrapOptions, null_is_default: bool) -> Result<Parsed, FfiError> {
    let local = match optional_reference(options) {
        None if null_is_default => default_options(),
        _ => versioned(options, "options", MIN_OPTIONS_SIZE, default_options())?,
    };
    Ok(Parsed {
        path_naming_fn: local.path_naming_fn,
        user_data: local.user_data,
        connection_timeout_s: local.connection_timeout_s,
        cuda_mode: decode(local.cuda_mode, "cuda_mode", &CUDA_MODES)?,
        ptrace_mode: decode(local.ptrace_mode, "ptrace_mode", &PTRACE_MODES)?,
        trust: TrustPolicy { allow_shared_group: local.allow_shared_group != 0 },
        share_agent: local.allow_shared_agent != 0,
        device_index: device_index(local.device_index)?,
    })
}

/// Which agent to attach to: the environment's (with the options' naming), or one given with
/// its paths.
enum Target {
    Environment,
    Explicit { agent_rank: i64, paths: AgentPaths },
}

/// The one attach both `etb_bootstrap_client*` and `etb_client_connect` run: the options in the
/// core's terms, the bootstrap, then the two handles written, only on success.
fn attach(
    p: Parsed,
    target: Target,
    client_out: Out<*mut EtbClient>,
    info_out: Out<*mut EtbBootstrapInfo>,
) -> Result<(), FfiError> {
    let connection_timeout = timeout(p.connection_timeout_s, "connection_timeout_s")?;
    let user_data = p.user_data;
    let mut naming = match target {
        Target::Environment => p.path_naming_fn.map(|f| move |rank| call_naming_fn(f, user_data, rank)),
        Target::Explicit { .. } => None,
    };
    let options = BootstrapOptions {
        path_naming: naming.as_mut().map(|n| n as _),
        connection_timeout,
        env: &ProcessEnv,
        cuda_mode: p.cuda_mode,
        ptrace_mode: p.ptrace_mode,
        trust: p.trust,
        share_agent: p.share_agent,
        device_index: p.device_index,
    };
    let (client, info) = match target {
        Target::Environment => bootstrap_client(options)?,
        Target::Explicit { agent_rank, paths } => connect_client(agent_rank, paths, &options)?,
    };
    let info = EtbBootstrapInfo::new(info).map_err(|e| FfiError::new(ETB_ERR_NAMING, e))?;
    // Written only now, on success.
    client_out.write(new_handle(EtbClient { client }));
    info_out.write(new_handle(info));
    Ok(())
}

/// Finds this worker's agent and attaches to it, as the reference `bootstrap_client` does, then
/// binds the calling thread to its GPU as `ETB_CUDA_AUTO` says (see `etb_bootstrap_client_ex`).
///
/// Reads `AGENT_RANK` (or `RANK` + `AGENT_RANK_OFFSET`; `RANK` is required either way) and
/// `LOCAL_RANK` from the process environment; names the agent's two LMDB files with
/// `path_naming_fn` (NULL: `/tmp/agent_rank{N}_command.lmdb` and `/tmp/agent_rank{N}_state.lmdb`);
/// waits until the state LMDB exists and carries a fresh heartbeat (younger than 5 s); attaches
/// to the command queue as a follower (nothing is created or written); and authorizes the agent's
/// process, when identified, to ptrace this one (failures are logged, not returned).
///
/// - `connection_timeout_s`: seconds to wait for the agent, finite and >= 0 or +infinity; 0 makes
///   a single attempt. NaN or negative: `ETB_ERR_INVALID_ARGUMENT`. Polls every millisecond, so a
///   worker started before its agent connects within a few ms of the first heartbeat.
/// - Blocks up to `connection_timeout_s`; never reports a timeout before it.
/// - On success writes a new client to `*client_out` (owned by the caller: release with
///   `etb_client_close`) and a new info to `*info_out` (release with `etb_info_free`); the two are
///   independent. On failure writes neither and returns `ETB_ERR_ENV`, `ETB_ERR_NAMING`,
///   `ETB_ERR_AGENT_NOT_FOUND`, `ETB_ERR_AGENT_NOT_RESPONDING`, `ETB_ERR_LMDB`, `ETB_ERR_IPC` or
///   another code, with the details in `etb_last_error_message()`.
/// - `client_out` and `info_out` are required (`ETB_ERR_NULL_ARGUMENT`); `user_data` may be
///   anything, and is only passed to `path_naming_fn`.
/// - Thread-safe: may run on several threads at once, also for the same agent (clients of one
///   agent in one process share one LMDB environment per file). Reads the environment, so do not
///   call `setenv` concurrently.
///
/// # Safety
/// `path_naming_fn` is NULL or a function that keeps the callback contract of
/// `EtbPathNamingFn`; `client_out` and `info_out` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_bootstrap_client(
    path_naming_fn: EtbPathNamingFn,
    user_data: *mut c_void,
    connection_timeout_s: f64,
    client_out: *mut *mut EtbClient,
    info_out: *mut *mut EtbBootstrapInfo,
) -> EtbStatus {
    status_boundary!({
        let (client_out, info_out) = (out(client_out, "client_out")?, out(info_out, "info_out")?);
        let defaults = read_options(std::ptr::null(), true)?;
        let p = Parsed { path_naming_fn, user_data, connection_timeout_s, ..defaults };
        attach(p, Target::Environment, client_out, info_out)
    })
}

/// `etb_bootstrap_client` with options (NULL: `ETB_ERR_NULL_ARGUMENT`), an extensible struct
/// whose `struct_size` may be that of an older caller (fields it does not cover take their
/// defaults) or of a newer one (accepted only if every byte past the fields this library knows
/// is zero), else `ETB_ERR_INVALID_ARGUMENT`; an unknown `cuda_mode` or `ptrace_mode` too.
///
/// CUDA (after the agent is validated): the driver (`libcuda.so.1`, or the library named by
/// `ETB_CUDA_DRIVER_PATH`) is loaded at run time, once per process, reusing one already loaded;
/// the device is `options->device_index`, or by default `cuda:{LOCAL_RANK}`, as the driver
/// numbers it (so `CUDA_VISIBLE_DEVICES` applies); its *primary* context (the one PyTorch and the
/// CUDA runtime use) is retained and made current on the calling thread. The client holds the
/// retain and releases it on close; the driver calls of its payloads that need a context run
/// under that one, pushed on whatever thread makes them.
/// See `ETB_CUDA_AUTO`, `ETB_CUDA_REQUIRE`, `ETB_CUDA_SKIP` for what each mode does and costs.
/// With a `device_index`, `LOCAL_RANK` no longer picks the device (it is still read, and a
/// malformed one is still `ETB_ERR_ENV`). Everything else as `etb_bootstrap_client`.
///
/// # Safety
/// `options` is NULL or points to `options->struct_size` readable bytes (filled by
/// `etb_bootstrap_options_init`), whose naming callback keeps the `EtbPathNamingFn` contract;
/// `client_out` and `info_out` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_bootstrap_client_ex(
    options: *const EtbBootstrapOptions,
    client_out: *mut *mut EtbClient,
    info_out: *mut *mut EtbBootstrapInfo,
) -> EtbStatus {
    status_boundary!({
        let (client_out, info_out) = (out(client_out, "client_out")?, out(info_out, "info_out")?);
        attach(read_options(options, false)?, Target::Environment, client_out, info_out)
    })
}

/// Connects to agent `agent_rank` at the two given paths, reading nothing of the environment:
/// the reference's `TensorBusClient(agent_rank, lmdb_command_queue_path,
/// agent_state_lmdb_path)`. Validates the agent, attaches its queue and authorizes it as
/// `etb_bootstrap_client_ex` does, with `options` (NULL: the defaults; its naming callback is
/// ignored). The info's method is `"direct"` and its global rank -1. The device is
/// `options->device_index` (default -1: `cuda:0`; `LOCAL_RANK` is not read): one process that
/// drives several GPUs connects once per local agent, each client with its own device, and may
/// then use each client, and make its payloads, from any thread. Authorizing a second agent's
/// process to ptrace this one widens the authorization to every process (`PR_SET_PTRACER_ANY`)
/// with a warning, unless the first agent is gone (`ETB_PTRACE_AGENT`; the kernel keeps one
/// tracer per process). Paths are bytes (any but NUL). Writes `*client_out` and `*info_out` on
/// success only (release with `etb_client_close` and `etb_info_free`). Blocks up to the options'
/// connection timeout. Thread-safe.
///
/// # Safety
/// The paths are NULL or NUL-terminated; `options` is NULL or as for `etb_bootstrap_client_ex`;
/// `client_out` and `info_out` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_connect(
    agent_rank: i64,
    command_queue_path: *const libc::c_char,
    state_path: *const libc::c_char,
    options: *const EtbBootstrapOptions,
    client_out: *mut *mut EtbClient,
    info_out: *mut *mut EtbBootstrapInfo,
) -> EtbStatus {
    status_boundary!({
        let (client_out, info_out) = (out(client_out, "client_out")?, out(info_out, "info_out")?);
        let path = |p, name| c_str(p, name).map(|c| PathBuf::from(OsStr::from_bytes(c.to_bytes())));
        let paths = AgentPaths {
            command_queue: path(command_queue_path, "command_queue_path")?,
            state: path(state_path, "state_path")?,
        };
        attach(read_options(options, true)?, Target::Explicit { agent_rank, paths }, client_out, info_out)
    })
}
