//! The worker commands of a client (PROTOCOL.md sections 3-5): each enqueues one message in the
//! agent's command queue and, unless detached, waits on a completion semaphore that it creates
//! and always removes.
//!
//! Common to every function here:
//! - `client` must come from `etb_bootstrap_client` and not be closed; any thread may call, also
//!   several at once on the same client. In a process forked after bootstrap: `ETB_ERR_FORKED`.
//! - Strings are NUL-terminated UTF-8, borrowed for the call (`ETB_ERR_INVALID_ARGUMENT` if not
//!   UTF-8, `ETB_ERR_NULL_ARGUMENT` if NULL). Payloads: NULL with length 0 is absent (nil),
//!   non-NULL with length 0 is empty, NULL with a length is `ETB_ERR_NULL_ARGUMENT`.
//! - `timeout_s`: seconds, finite >= 0 or INFINITY (NaN, negative: `ETB_ERR_INVALID_ARGUMENT`);
//!   one deadline covers the wait for queue space and the wait for the completion; 0 makes one
//!   non-blocking attempt at each. Past it: `ETB_ERR_QUEUE_FULL` (nothing was enqueued) or
//!   `ETB_ERR_TIMEOUT` (enqueued, not acknowledged).
//! - If the agent process exits during a wait, the call returns `ETB_ERR_AGENT_DIED` at once
//!   (within about 10 ms), and so does every later call on this client.

use super::boundary::{call, FfiError};
use super::bootstrap::EtbClient;
use super::convert::{payload, timeout, transfer_kind, utf8, EtbTransferKind};
use super::status::{EtbStatus, ETB_ERR_NULL_ARGUMENT};
use crate::client::Completion;

/// One tensor of `etb_client_register_tensors`: the pair it belongs to and its payload (the
/// pickled CUDA IPC handle the agent unpickles; opaque to this library).
#[repr(C)]
pub struct EtbTensorPayload {
    /// NUL-terminated UTF-8.
    pub pair_name: *const libc::c_char,
    /// `len` bytes; NULL only when `len` is 0 (an empty payload).
    pub data: *const u8,
    pub len: usize,
}

/// A command issued by `etb_client_transfer_async`. Opaque; wait on it or poll it, then release
/// it with `etb_completion_free`, which removes its semaphore.
pub struct EtbCompletion {
    completion: Completion,
}

fn client_ref<'a>(function: &str, ptr: *const EtbClient) -> Result<&'a EtbClient, FfiError> {
    // SAFETY: non-NULL pointers come from etb_bootstrap_client, live until etb_client_close.
    unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(function, "client"))
}

/// Sends `InitPair` and waits for it: the agent rendezvouses with every local and remote rank
/// (this can take minutes: size `timeout_s` for it). Succeeds only if the agent then records the
/// pair as matched (`pair:{pair_name}/state:match`), else `ETB_ERR_PAIR_NOT_MATCHED`.
/// `expected_world_size` must be >= 1. The payloads are the pickled mesh shape and placements,
/// or NULL/0 for none.
/// Blocks as the command conventions at the top of the header say; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn etb_client_init_pair(
    client: *mut EtbClient,
    pair_name: *const libc::c_char,
    local_name: *const libc::c_char,
    remote_name: *const libc::c_char,
    expected_world_size: i64,
    mesh_shape_payload: *const u8,
    mesh_shape_payload_len: usize,
    placements_payload: *const u8,
    placements_payload_len: usize,
    timeout_s: f64,
) -> EtbStatus {
    const F: &str = "etb_client_init_pair";
    call(F, || {
        let c = client_ref(F, client)?;
        let (pair, local, remote) = (utf8(F, "pair_name", pair_name)?, utf8(F, "local_name", local_name)?, utf8(F, "remote_name", remote_name)?);
        let mesh = payload(F, "mesh_shape_payload", mesh_shape_payload, mesh_shape_payload_len)?;
        let placements = payload(F, "placements_payload", placements_payload, placements_payload_len)?;
        let t = timeout(timeout_s, "timeout_s")?;
        Ok(c.client.init_pair(pair, local, remote, expected_world_size, mesh, placements, t)?)
    })
}

/// Sends `RegisterTensors` and waits for it. `tensors` points to `tensor_count` entries (NULL
/// only when the count is 0); `bucket_size` <= 0 sends nil (the agent's default).
/// Blocks as the command conventions at the top of the header say; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn etb_client_register_tensors(
    client: *mut EtbClient,
    batch_id: *const libc::c_char,
    tensors: *const EtbTensorPayload,
    tensor_count: usize,
    bucket_size: i64,
    timeout_s: f64,
) -> EtbStatus {
    const F: &str = "etb_client_register_tensors";
    call(F, || {
        let c = client_ref(F, client)?;
        let batch = utf8(F, "batch_id", batch_id)?;
        let entries: &[EtbTensorPayload] = match (tensors.is_null(), tensor_count) {
            (true, 0) => &[],
            (true, n) => return Err(FfiError::new(ETB_ERR_NULL_ARGUMENT, format!("{F}: argument `tensors` is NULL with count {n}"))),
            // SAFETY: `tensor_count` readable entries by the caller's contract.
            (false, n) => unsafe { std::slice::from_raw_parts(tensors, n) },
        };
        let mut list = Vec::with_capacity(entries.len());
        for (i, t) in entries.iter().enumerate() {
            let name = utf8(F, &format!("tensors[{i}].pair_name"), t.pair_name)?;
            let data = payload(F, &format!("tensors[{i}].data"), t.data, t.len)?.unwrap_or(&[]);
            list.push((name, data));
        }
        let t = timeout(timeout_s, "timeout_s")?;
        Ok(c.client.register_tensors(batch, &list, (bucket_size > 0).then_some(bucket_size), t)?)
    })
}

/// Sends `Transfer` (`ETB_TRANSFER_SEND` or `ETB_TRANSFER_RECV`) and waits until the agent
/// acknowledges it (after its NCCL send or recv of the whole batch).
/// Blocks as the command conventions at the top of the header say; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn etb_client_transfer(
    client: *mut EtbClient,
    batch_id: *const libc::c_char,
    kind: EtbTransferKind,
    timeout_s: f64,
) -> EtbStatus {
    const F: &str = "etb_client_transfer";
    call(F, || {
        let c = client_ref(F, client)?;
        let (batch, k, t) = (utf8(F, "batch_id", batch_id)?, transfer_kind(F, kind)?, timeout(timeout_s, "timeout_s")?);
        Ok(c.client.transfer(batch, k, t)?)
    })
}

/// Sends `QueryStatus` for the batch's transfer signal, waits for it, and writes the signal the
/// agent recorded to `*signal_out` (false when absent, as the reference). `signal_out` required.
/// Blocks as the command conventions at the top of the header say; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn etb_client_query_transfer_signal(
    client: *mut EtbClient,
    batch_id: *const libc::c_char,
    timeout_s: f64,
    signal_out: *mut bool,
) -> EtbStatus {
    const F: &str = "etb_client_query_transfer_signal";
    call(F, || {
        let c = client_ref(F, client)?;
        if signal_out.is_null() {
            return Err(FfiError::null(F, "signal_out"));
        }
        let (batch, t) = (utf8(F, "batch_id", batch_id)?, timeout(timeout_s, "timeout_s")?);
        let signal = c.client.query_transfer_signal(batch, t)?;
        // SAFETY: checked non-NULL; written on success only.
        unsafe { *signal_out = signal };
        Ok(())
    })
}

/// Sends `CleanupBatch` and waits for it: the agent forgets the batch.
/// Blocks as the command conventions at the top of the header say; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn etb_client_cleanup_batch(client: *mut EtbClient, batch_id: *const libc::c_char, timeout_s: f64) -> EtbStatus {
    const F: &str = "etb_client_cleanup_batch";
    call(F, || {
        let c = client_ref(F, client)?;
        let (batch, t) = (utf8(F, "batch_id", batch_id)?, timeout(timeout_s, "timeout_s")?);
        Ok(c.client.cleanup_batch(batch, t)?)
    })
}

/// Sends `Transfer` without waiting for it, as the reference's `transfer(blocking=False)`:
/// `timeout_s` bounds only the wait for queue space. On success writes a new completion to
/// `*completion_out` (required): wait on it with `etb_completion_wait` or poll it with
/// `etb_completion_poll`, then release it with `etb_completion_free`. Each pending completion
/// holds a named semaphore: a 4 KiB page of /dev/shm and one memory mapping (glibc keeps no
/// descriptor open), so the practical limit is the process's mapping limit, `vm.max_map_count`
/// (65530 by default, shared with everything else the process maps): free completions you no
/// longer need.
/// NULL `client`, `batch_id` or `completion_out`: `ETB_ERR_NULL_ARGUMENT`. Thread-safe (command
/// conventions at the top of the header).
#[no_mangle]
pub unsafe extern "C" fn etb_client_transfer_async(
    client: *mut EtbClient,
    batch_id: *const libc::c_char,
    kind: EtbTransferKind,
    timeout_s: f64,
    completion_out: *mut *mut EtbCompletion,
) -> EtbStatus {
    const F: &str = "etb_client_transfer_async";
    call(F, || {
        let c = client_ref(F, client)?;
        if completion_out.is_null() {
            return Err(FfiError::null(F, "completion_out"));
        }
        let (batch, k, t) = (utf8(F, "batch_id", batch_id)?, transfer_kind(F, kind)?, timeout(timeout_s, "timeout_s")?);
        let completion = c.client.transfer_async(batch, k, t)?;
        // SAFETY: checked non-NULL; written on success only.
        unsafe { *completion_out = Box::into_raw(Box::new(EtbCompletion { completion })) };
        Ok(())
    })
}

/// Sends `Transfer` with no completion semaphore (`semaphore_name` nil): fire and forget,
/// nothing to wait on. `timeout_s` bounds the wait for queue space.
/// Blocks as the command conventions at the top of the header say; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn etb_client_transfer_detached(
    client: *mut EtbClient,
    batch_id: *const libc::c_char,
    kind: EtbTransferKind,
    timeout_s: f64,
) -> EtbStatus {
    const F: &str = "etb_client_transfer_detached";
    call(F, || {
        let c = client_ref(F, client)?;
        let (batch, k, t) = (utf8(F, "batch_id", batch_id)?, transfer_kind(F, kind)?, timeout(timeout_s, "timeout_s")?);
        Ok(c.client.transfer_detached(batch, k, t)?)
    })
}

fn completion_ref<'a>(function: &str, ptr: *const EtbCompletion) -> Result<&'a EtbCompletion, FfiError> {
    // SAFETY: non-NULL pointers come from etb_client_transfer_async, live until freed.
    unsafe { ptr.as_ref() }.ok_or_else(|| FfiError::null(function, "completion"))
}

/// Waits until the agent acknowledges the command, at most `timeout_s` (rules as above):
/// `ETB_OK` (also on every later call), `ETB_ERR_TIMEOUT`, `ETB_ERR_AGENT_DIED`, or
/// `ETB_ERR_CLOSED` once its client was closed. Use a completion from one thread at a time.
/// NULL `completion`: `ETB_ERR_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn etb_completion_wait(completion: *mut EtbCompletion, timeout_s: f64) -> EtbStatus {
    const F: &str = "etb_completion_wait";
    call(F, || {
        let c = completion_ref(F, completion)?;
        Ok(c.completion.wait(timeout(timeout_s, "timeout_s")?)?)
    })
}

/// Tells, without blocking, whether the agent has acknowledged the command: writes
/// `*done_out` (required) on success. `ETB_ERR_AGENT_DIED` when the agent exited first;
/// `ETB_ERR_CLOSED` once its client was closed. Use a completion from one thread at a time.
/// NULL `completion` or `done_out`: `ETB_ERR_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn etb_completion_poll(completion: *mut EtbCompletion, done_out: *mut bool) -> EtbStatus {
    const F: &str = "etb_completion_poll";
    call(F, || {
        let c = completion_ref(F, completion)?;
        if done_out.is_null() {
            return Err(FfiError::null(F, "done_out"));
        }
        let done = c.completion.poll()?;
        // SAFETY: checked non-NULL.
        unsafe { *done_out = done };
        Ok(())
    })
}

/// Releases a completion and removes its semaphore from /dev/shm, whether or not the command
/// was acknowledged, before or after its client's close. NULL is accepted and ignored. Freeing
/// twice or using it afterwards is undefined behaviour. In a forked child it only forgets (the
/// semaphore is the parent's). Does not block.
/// Thread-safety: no other thread may use this completion during or after the free.
#[no_mangle]
pub unsafe extern "C" fn etb_completion_free(completion: *mut EtbCompletion) {
    call("etb_completion_free", || {
        if !completion.is_null() {
            // SAFETY: made by Box::into_raw in etb_client_transfer_async; the caller gives it up.
            drop(unsafe { Box::from_raw(completion) });
        }
        Ok(())
    });
}
