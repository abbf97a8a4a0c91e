//! The client handle, `EtbClient`: its release, its accessors (heartbeat age, CUDA context and
//! thread binding) and `etb_client_reconnect`. Made by `etb_bootstrap_client` and its variants
//! (`bootstrap`); the commands it sends are in `commands`.

use std::ffi::c_void;

use super::args::{out, out_slice, reference, take_handle, timeout};
use super::status::EtbStatus;
use etb_core::client::Client;

/// A worker's connection to its agent. Opaque; made by `etb_bootstrap_client` (a box owned by the
/// caller), released by `etb_client_close`. Every command and accessor takes it `const`: they may
/// run on several threads at once.
pub struct EtbClient {
    pub(crate) client: Client,
}

/// Closes a client: releases this worker's handles on the agent's queue and state (and nothing
/// of the agent's: its files and semaphores stay). NULL is accepted and ignored. Closing a client
/// twice, or using it after closing, is undefined behaviour. Other clients are unaffected. Does
/// not block.
/// Thread-safety: no other thread may use this client during or after the close.
///
/// # Safety
/// `client` is NULL or a client from `etb_bootstrap_client` not yet closed; the caller gives
/// it up.
#[no_mangle]
pub unsafe extern "C" fn etb_client_close(client: *mut EtbClient) {
    value_boundary!((), {
        drop(take_handle(client));
        Ok(())
    })
}

/// Seconds since the agent's last heartbeat, however old (the agent does not beat while it
/// executes a command, so a large age alone does not mean it died). Writes `*age_s_out` on
/// success only. `ETB_ERR_NULL_ARGUMENT` when `client` or `age_s_out` is NULL;
/// `ETB_ERR_AGENT_NOT_RESPONDING` when the heartbeat is missing or unreadable; `ETB_ERR_LMDB` when
/// LMDB fails. One short read transaction; thread-safe, also on the same client.
///
/// # Safety
/// `client` is NULL or a live client; `age_s_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_heartbeat_age(client: *const EtbClient, age_s_out: *mut f64) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let age_s_out = out(age_s_out, "age_s_out")?;
        age_s_out.write(c.client.heartbeat_age()?);
        Ok(())
    })
}

/// The `CUcontext` this client holds (the device's primary context), or NULL when the client is
/// not bound to a GPU, `client` is NULL, or this is a forked child (the context is the parent's).
/// Owned by the client: valid until `etb_client_close`. Thread-safe.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn etb_client_cuda_context(client: *const EtbClient) -> *mut c_void {
    value_boundary!(std::ptr::null_mut(), {
        let c = reference(client, "client")?;
        Ok(c.client.cuda_context()?.unwrap_or(std::ptr::null_mut()))
    })
}

/// Makes the client's CUDA context current on the calling thread (current contexts are per
/// thread: call it on each thread that launches work). `ETB_ERR_CUDA` when the client is not
/// bound to a GPU or the driver fails; `ETB_ERR_FORKED` in a forked child; `client` NULL:
/// `ETB_ERR_NULL_ARGUMENT`. Thread-safe.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn etb_client_bind_current_thread(client: *const EtbClient) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        Ok(c.client.bind_current_thread()?)
    })
}

/// After the agent died and a new one started on the same files (as a restarted agent does),
/// makes this client use the new agent, keeping the same handle: validates it (fresh heartbeat,
/// trusted files), re-attaches its command queue, and authorizes it to ptrace this worker (as
/// the bootstrap's ptrace mode says); the GPU binding and the worker lock are kept. Waits up to
/// `timeout_s` (rules of `etb_bootstrap_client`) for the new agent. The new agent knows none of
/// the old one's pairs or batches: init them again. Until a reconnect succeeds, calls on the
/// client keep returning `ETB_ERR_AGENT_DIED`; completions issued before it report the old agent
/// dead. `client` NULL: `ETB_ERR_NULL_ARGUMENT`. Thread-safe: calls in flight finish on the old
/// agent, later ones use the new one; concurrent reconnects are serialized.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn etb_client_reconnect(client: *const EtbClient, timeout_s: f64) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        c.client.reconnect(timeout(timeout_s, "timeout_s")?)?;
        Ok(())
    })
}

/// The client's event fd, for an event loop (epoll, poll, select, asyncio's `add_reader`):
/// readable, level-triggered, while some completion handed to `etb_completion_watch` has its final
/// outcome and its token was not yet taken with `etb_client_take_resolved` (which makes it
/// unreadable again once none is left; never read it yourself). Writes `*fd_out` on success. The
/// first call (or the first watch) starts the client's one watcher thread, which waits for the
/// posts of the watched completions and runs their survival proof: the library adds that one
/// thread per client that uses it, never one per command. The fd belongs to the client: do not
/// close it; it is valid until `etb_client_close` (remove it from your loop first).
/// `ETB_ERR_CLOSED` after close began; `ETB_ERR_IPC` when no eventfd or thread could be made.
/// Thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `fd_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_event_fd(client: *const EtbClient, fd_out: *mut i32) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let fd_out = out(fd_out, "fd_out")?;
        fd_out.write(c.client.event_fd()?);
        Ok(())
    })
}

/// Takes the tokens of watched completions whose outcome became final (success or an error:
/// `etb_completion_poll` then answers it at once and never "pending" again), oldest first: up to
/// `capacity` into `tokens_out`, their number into `*count_out`. Once none is left, the event fd
/// is no longer readable. A freed completion's token is never returned. Never blocks; thread-safe.
/// NULL `tokens_out` is accepted with `capacity` 0 (then `*count_out` is 0).
///
/// # Safety
/// `client` is NULL or a live client; `tokens_out` is NULL or has `capacity` writable elements;
/// `count_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_take_resolved(
    client: *const EtbClient,
    tokens_out: *mut u64,
    capacity: usize,
    count_out: *mut usize,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let tokens = out_slice(tokens_out, capacity, "tokens_out")?;
        let count_out = out(count_out, "count_out")?;
        let taken = c.client.take_resolved(tokens.capacity())?;
        count_out.write(taken.len());
        tokens.write(&taken);
        Ok(())
    })
}
