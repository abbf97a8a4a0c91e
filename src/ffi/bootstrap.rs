//! `etb_bootstrap_client` and the client handle.

use std::ffi::c_void;

use super::boundary::{call, FfiError};
use super::info::EtbBootstrapInfo;
use super::status::{EtbStatus, ETB_ERR_NAMING};
use crate::bootstrap::{bootstrap_client, BootstrapOptions};
use crate::client::Client;
use crate::naming::{path_from_buffer, AgentPaths, PATH_BUFFER_CAPACITY};
use crate::rank::ProcessEnv;
use crate::timeout::Timeout;

/// A worker's connection to its agent. Opaque; made by `etb_bootstrap_client`, released by
/// `etb_client_close`.
pub struct EtbClient {
    pub(crate) client: Client,
}

/// A path naming callback: writes the agent's command-queue LMDB path and state LMDB path for
/// `agent_rank` as NUL-terminated bytes (any bytes but NUL; UTF-8 not required) into the two
/// buffers, which the library zero-fills and which hold `*_capacity` bytes each (at least 4096).
/// Returns 0 on success; any other value fails the bootstrap with `ETB_ERR_NAMING`, quoting the
/// value. An empty path, or one that fills its buffer without a NUL, is `ETB_ERR_NAMING` too.
/// `user_data` is the pointer given to `etb_bootstrap_client`. The callback is called at most
/// once per bootstrap, on the calling thread, and must not unwind (throw) into the library.
pub type EtbPathNamingFn = Option<
    unsafe extern "C" fn(
        agent_rank: i64,
        command_queue_path: *mut libc::c_char,
        command_queue_path_capacity: usize,
        state_path: *mut libc::c_char,
        state_path_capacity: usize,
        user_data: *mut c_void,
    ) -> i32,
>;

/// Calls a C naming callback and validates what it wrote.
fn call_naming_fn(
    f: unsafe extern "C" fn(i64, *mut libc::c_char, usize, *mut libc::c_char, usize, *mut c_void) -> i32,
    user_data: *mut c_void,
    agent_rank: i64,
) -> crate::Result<AgentPaths> {
    let mut command_queue = vec![0u8; PATH_BUFFER_CAPACITY];
    let mut state = vec![0u8; PATH_BUFFER_CAPACITY];
    // SAFETY: two live, zero-filled buffers of the capacities we pass; user_data is the
    // caller's, passed through untouched.
    let rc = unsafe {
        f(
            agent_rank,
            command_queue.as_mut_ptr().cast(),
            command_queue.len(),
            state.as_mut_ptr().cast(),
            state.len(),
            user_data,
        )
    };
    if rc != 0 {
        return Err(crate::Error::new(
            crate::ErrorKind::Naming,
            format!("the path naming callback returned {rc} for agent rank {agent_rank} (0 means success)"),
        ));
    }
    Ok(AgentPaths {
        command_queue: path_from_buffer(&command_queue, "command queue path")?,
        state: path_from_buffer(&state, "state path")?,
    })
}

/// Finds this worker's agent and attaches to it, as the reference `bootstrap_client` does.
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
/// - On success writes a new client to `*client_out` (release with `etb_client_close`) and a new
///   info to `*info_out` (release with `etb_info_free`); the two are independent. On failure
///   writes neither and returns `ETB_ERR_ENV`, `ETB_ERR_NAMING`, `ETB_ERR_AGENT_NOT_FOUND`,
///   `ETB_ERR_AGENT_NOT_RESPONDING`, `ETB_ERR_LMDB`, `ETB_ERR_IPC` or another code, with the
///   details in `etb_last_error_message()`.
/// - `client_out` and `info_out` are required (`ETB_ERR_NULL_ARGUMENT`); `user_data` may be
///   anything, and is only passed to `path_naming_fn`.
/// - Thread-safe: may run on several threads at once, also for the same agent (clients of one
///   agent in one process share one LMDB environment per file). Reads the environment, so do not
///   call `setenv` concurrently.
#[no_mangle]
pub unsafe extern "C" fn etb_bootstrap_client(
    path_naming_fn: EtbPathNamingFn,
    user_data: *mut c_void,
    connection_timeout_s: f64,
    client_out: *mut *mut EtbClient,
    info_out: *mut *mut EtbBootstrapInfo,
) -> EtbStatus {
    call("etb_bootstrap_client", || {
        require_non_null!("etb_bootstrap_client", client_out, info_out);
        let connection_timeout = Timeout::from_secs_f64(connection_timeout_s, "connection_timeout_s")?;
        let mut naming = path_naming_fn.map(|f| move |rank| call_naming_fn(f, user_data, rank));
        let options = BootstrapOptions {
            path_naming: naming.as_mut().map(|n| n as _),
            connection_timeout,
            env: &ProcessEnv,
        };
        let (client, info) = bootstrap_client(options)?;
        let info = EtbBootstrapInfo::new(info).map_err(|e| FfiError::new(ETB_ERR_NAMING, e))?;
        // SAFETY: both out-pointers were checked non-NULL; written only now, on success.
        unsafe {
            *client_out = Box::into_raw(Box::new(EtbClient { client }));
            *info_out = Box::into_raw(Box::new(info));
        }
        Ok(())
    })
}

/// Closes a client: releases this worker's handles on the agent's queue and state (and nothing
/// of the agent's: its files and semaphores stay). NULL is accepted and ignored. Closing a client
/// twice, or using it after closing, is undefined behaviour. Must not race with other calls on
/// the same client; other clients are unaffected. Does not block.
#[no_mangle]
pub unsafe extern "C" fn etb_client_close(client: *mut EtbClient) {
    call("etb_client_close", || {
        if !client.is_null() {
            // SAFETY: made by Box::into_raw in etb_bootstrap_client; the caller gives it up.
            drop(unsafe { Box::from_raw(client) });
        }
        Ok(())
    });
}

/// Seconds since the agent's last heartbeat, however old (the agent does not beat while it
/// executes a command, so a large age alone does not mean it died). Writes `*age_s_out` on
/// success only. `ETB_ERR_NULL_ARGUMENT` when `client` or `age_s_out` is NULL;
/// `ETB_ERR_AGENT_NOT_RESPONDING` when the heartbeat is missing or unreadable; `ETB_ERR_LMDB` when
/// LMDB fails. One short read transaction; thread-safe, also on the same client.
#[no_mangle]
pub unsafe extern "C" fn etb_client_heartbeat_age(client: *const EtbClient, age_s_out: *mut f64) -> EtbStatus {
    call("etb_client_heartbeat_age", || {
        require_non_null!("etb_client_heartbeat_age", client, age_s_out);
        // SAFETY: non-NULL, and live by the caller's contract.
        let age = unsafe { &*client }.client.heartbeat_age()?;
        unsafe { *age_s_out = age };
        Ok(())
    })
}
