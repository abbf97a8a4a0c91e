//! The worker commands of a client (docs/protocol.md sections 3-5): each enqueues one message in
//! the agent's command queue and, unless detached, waits on a completion semaphore that it
//! creates and always removes.
//!
//! Common to every function here (also in the header's preamble):
//! - `client` must come from `etb_bootstrap_client` and not be closed; any thread may call, also
//!   several at once on the same client (hence `const EtbClient *`). In a process forked after
//!   bootstrap: `ETB_ERR_FORKED`.
//! - Strings are NUL-terminated UTF-8, borrowed for the call (`ETB_ERR_INVALID_ARGUMENT` if not
//!   UTF-8, `ETB_ERR_NULL_ARGUMENT` if NULL). Payloads: NULL with length 0 is absent (nil),
//!   non-NULL with length 0 is empty, NULL with a length is `ETB_ERR_NULL_ARGUMENT`.
//! - `timeout_s`: seconds, finite >= 0 or INFINITY (NaN, negative: `ETB_ERR_INVALID_ARGUMENT`);
//!   one deadline covers the wait for queue space and the wait for the completion; 0 makes one
//!   non-blocking attempt at each. Past it: `ETB_ERR_QUEUE_FULL` (nothing was enqueued) or
//!   `ETB_ERR_TIMEOUT` (enqueued, not acknowledged).
//! - Success means the agent survived: after the agent posts a completion (it posts also for a
//!   command that failed, then ends), the call waits, within the same deadline, until the agent
//!   wrote a heartbeat after dequeuing the command or dequeued a later one (`ETB_OK`), or is seen
//!   dead (`ETB_ERR_AGENT_DIED`); at the deadline the outcome is unknown (`ETB_ERR_TIMEOUT`).
//! - If the agent process exits during a wait, the call returns `ETB_ERR_AGENT_DIED` at once
//!   (within about 10 ms), and so does every later call on this client.

use super::args::{decode, new_handle, optional_slice, out, reference, slice, timeout, utf8, Out};
use super::boundary::FfiError;
use super::client::EtbClient;
use super::completion::EtbCompletion;
use super::status::EtbStatus;
use etb_core::client::{Client, Completion};
use etb_core::protocol::commands::TransferKind;
use etb_core::timeout::Timeout;

/// A transfer direction across the C ABI: `ETB_TRANSFER_SEND` or `ETB_TRANSFER_RECV`.
pub type EtbTransferKind = i32;
/// This worker sends the batch.
pub const ETB_TRANSFER_SEND: EtbTransferKind = 0;
/// This worker receives the batch.
pub const ETB_TRANSFER_RECV: EtbTransferKind = 1;

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

/// Hands a new completion to the caller.
fn give(completion: Completion, completion_out: Out<*mut EtbCompletion>) {
    completion_out.write(new_handle(EtbCompletion { completion }));
}

/// The transfer directions, for decoding.
const TRANSFER_KINDS: [(EtbTransferKind, &str, TransferKind); 2] = [
    (ETB_TRANSFER_SEND, "ETB_TRANSFER_SEND", TransferKind::Send),
    (ETB_TRANSFER_RECV, "ETB_TRANSFER_RECV", TransferKind::Recv),
];

/// `InitPair`'s arguments, read once for its blocking and async exports.
struct InitPairArgs<'a> {
    client: &'a Client,
    pair: &'a str,
    local: &'a str,
    remote: &'a str,
    mesh: Option<&'a [u8]>,
    placements: Option<&'a [u8]>,
    timeout: Timeout,
}

/// Reads `InitPair`'s arguments after the client (and the out-pointer, for the async form): the
/// order in which NULLs are reported.
#[allow(clippy::too_many_arguments)]
fn init_pair_args<'a>(
    c: &'a EtbClient,
    pair_name: *const libc::c_char,
    local_name: *const libc::c_char,
    remote_name: *const libc::c_char,
    mesh_shape_payload: *const u8,
    mesh_shape_payload_len: usize,
    placements_payload: *const u8,
    placements_payload_len: usize,
    timeout_s: f64,
) -> Result<InitPairArgs<'a>, FfiError> {
    Ok(InitPairArgs {
        client: &c.client,
        pair: utf8(pair_name, "pair_name")?,
        local: utf8(local_name, "local_name")?,
        remote: utf8(remote_name, "remote_name")?,
        mesh: optional_slice(mesh_shape_payload, mesh_shape_payload_len, "mesh_shape_payload")?,
        placements: optional_slice(placements_payload, placements_payload_len, "placements_payload")?,
        timeout: timeout(timeout_s, "timeout_s")?,
    })
}

/// The arguments of a command about one batch (`QueryStatus`, `CleanupBatch`, the signal read),
/// read once for each of its exports.
fn batch_args<'a>(batch_id: *const libc::c_char, timeout_s: f64) -> Result<(&'a str, Timeout), FfiError> {
    Ok((utf8(batch_id, "batch_id")?, timeout(timeout_s, "timeout_s")?))
}

/// `Transfer`'s arguments, read once for its blocking, async and detached exports.
fn transfer_args<'a>(
    batch_id: *const libc::c_char,
    kind: EtbTransferKind,
    timeout_s: f64,
) -> Result<(&'a str, TransferKind, Timeout), FfiError> {
    Ok((utf8(batch_id, "batch_id")?, decode(kind, "`kind`", &TRANSFER_KINDS)?, timeout(timeout_s, "timeout_s")?))
}

/// Sends `InitPair` and waits for it: the agent rendezvouses with every local and remote rank
/// (this can take minutes: size `timeout_s` for it). Succeeds only if the agent then records the
/// pair as matched (`pair:{pair_name}/state:match`), else `ETB_ERR_PAIR_NOT_MATCHED`.
/// `expected_world_size` must be >= 1. The payloads are the pickled mesh shape and placements,
/// or NULL/0 for none; a payload that does not look like a pickle is `ETB_ERR_INVALID_ARGUMENT`
/// (nothing enqueued). A timeout says the agent is waiting for the pair's peers.
/// Blocks as the command conventions at the top of the header say; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; each string is NULL or NUL-terminated; each payload
/// pointer is NULL or points to its length in readable bytes. All borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn etb_client_init_pair(
    client: *const EtbClient,
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
    status_boundary!({
        let c = reference(client, "client")?;
        let a = init_pair_args(
            c,
            pair_name,
            local_name,
            remote_name,
            mesh_shape_payload,
            mesh_shape_payload_len,
            placements_payload,
            placements_payload_len,
            timeout_s,
        )?;
        Ok(a.client.init_pair(a.pair, a.local, a.remote, expected_world_size, a.mesh, a.placements, a.timeout)?)
    })
}

/// Sends `RegisterTensors` and waits for it. `tensors` points to `tensor_count` entries (NULL
/// only when the count is 0); `bucket_size` <= 0 sends nil (the agent's default). Every
/// payload must look like a pickle (`ForkingPickler.dumps(tensor)`, or a payload this library
/// made): else `ETB_ERR_INVALID_ARGUMENT` and nothing is enqueued (the agent would die on it).
/// Blocks as the command conventions at the top of the header say; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated; `tensors` is NULL
/// or points to `tensor_count` readable entries whose strings and payloads follow the same
/// rules. All borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn etb_client_register_tensors(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    tensors: *const EtbTensorPayload,
    tensor_count: usize,
    bucket_size: i64,
    timeout_s: f64,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let batch = utf8(batch_id, "batch_id")?;
        let entries = slice(tensors, tensor_count, "tensors")?;
        let mut list = Vec::with_capacity(entries.len());
        for (i, t) in entries.iter().enumerate() {
            let name = utf8(t.pair_name, &format!("tensors[{i}].pair_name"))?;
            let data = slice(t.data, t.len, &format!("tensors[{i}].data"))?;
            list.push((name, data));
        }
        let t = timeout(timeout_s, "timeout_s")?;
        Ok(c.client.register_tensors(batch, &list, (bucket_size > 0).then_some(bucket_size), t)?)
    })
}

/// Sends `Transfer` (`ETB_TRANSFER_SEND` or `ETB_TRANSFER_RECV`) and waits until the agent
/// acknowledges it (after its NCCL send or recv of the whole batch).
/// Blocks as the command conventions at the top of the header say; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed).
#[no_mangle]
pub unsafe extern "C" fn etb_client_transfer(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    kind: EtbTransferKind,
    timeout_s: f64,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let (batch, k, t) = transfer_args(batch_id, kind, timeout_s)?;
        Ok(c.client.transfer(batch, k, t)?)
    })
}

/// Sends `QueryStatus` for the batch's transfer signal, waits for it, and writes the signal the
/// agent recorded to `*signal_out` (false when absent, as the reference). `signal_out` required.
/// Blocks as the command conventions at the top of the header say; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed);
/// `signal_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_query_transfer_signal(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    timeout_s: f64,
    signal_out: *mut bool,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let signal_out = out(signal_out, "signal_out")?;
        let (batch, t) = batch_args(batch_id, timeout_s)?;
        signal_out.write(c.client.query_transfer_signal(batch, t)?);
        Ok(())
    })
}

/// Sends `CleanupBatch` and waits for it: the agent forgets the batch.
/// Blocks as the command conventions at the top of the header say; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed).
#[no_mangle]
pub unsafe extern "C" fn etb_client_cleanup_batch(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    timeout_s: f64,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let (batch, t) = batch_args(batch_id, timeout_s)?;
        Ok(c.client.cleanup_batch(batch, t)?)
    })
}

/// Sends `Transfer` without waiting for it, as the reference's `transfer(blocking=False)`:
/// `timeout_s` bounds only the wait for queue space. On success writes a new completion to
/// `*completion_out` (required), owned by the caller: wait on it with `etb_completion_wait` or
/// poll it with `etb_completion_poll`, then release it with `etb_completion_free`. Each pending
/// completion holds a named semaphore: a 4 KiB page of /dev/shm and one memory mapping (glibc
/// keeps no descriptor open), so the practical limit is the process's mapping limit,
/// `vm.max_map_count` (65530 by default, shared with everything else the process maps): free
/// completions you no longer need.
/// NULL `client`, `batch_id` or `completion_out`: `ETB_ERR_NULL_ARGUMENT`. Thread-safe (command
/// conventions at the top of the header).
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed);
/// `completion_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_transfer_async(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    kind: EtbTransferKind,
    timeout_s: f64,
    completion_out: *mut *mut EtbCompletion,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let completion_out = out(completion_out, "completion_out")?;
        let (batch, k, t) = transfer_args(batch_id, kind, timeout_s)?;
        give(c.client.transfer_async(batch, k, t)?, completion_out);
        Ok(())
    })
}

/// Sends `Transfer` with no completion semaphore (`semaphore_name` nil): fire and forget,
/// nothing to wait on. `timeout_s` bounds the wait for queue space.
/// Blocks as the command conventions at the top of the header say; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed).
#[no_mangle]
pub unsafe extern "C" fn etb_client_transfer_detached(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    kind: EtbTransferKind,
    timeout_s: f64,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let (batch, k, t) = transfer_args(batch_id, kind, timeout_s)?;
        Ok(c.client.transfer_detached(batch, k, t)?)
    })
}

/// Sends `CleanupBatch` with no completion semaphore (`semaphore_name` nil): a clean-up nobody
/// waits for (the Python package sends a dropped batch handler's this way), which leaves the
/// agent no semaphore to look for. `timeout_s` bounds the wait for queue space. Blocks as the
/// command conventions at the top of the header say; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed).
#[no_mangle]
pub unsafe extern "C" fn etb_client_cleanup_batch_detached(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    timeout_s: f64,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let (batch, t) = batch_args(batch_id, timeout_s)?;
        Ok(c.client.cleanup_batch_detached(batch, t)?)
    })
}

/// Sends `InitPair` without waiting for it (the reference's `init_pair(blocking=False)`):
/// arguments as `etb_client_init_pair`, `timeout_s` bounding only the wait for queue space. On
/// success writes a new completion to `*completion_out` (required, owned by the caller:
/// release with `etb_completion_free`), whose wait and poll report done only once the agent
/// survived the command and recorded the pair as matched (`ETB_ERR_PAIR_NOT_MATCHED` when it
/// survived without matching). Thread-safe.
///
/// # Safety
/// As for `etb_client_init_pair`; `completion_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_init_pair_async(
    client: *const EtbClient,
    pair_name: *const libc::c_char,
    local_name: *const libc::c_char,
    remote_name: *const libc::c_char,
    expected_world_size: i64,
    mesh_shape_payload: *const u8,
    mesh_shape_payload_len: usize,
    placements_payload: *const u8,
    placements_payload_len: usize,
    timeout_s: f64,
    completion_out: *mut *mut EtbCompletion,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let completion_out = out(completion_out, "completion_out")?;
        let a = init_pair_args(
            c,
            pair_name,
            local_name,
            remote_name,
            mesh_shape_payload,
            mesh_shape_payload_len,
            placements_payload,
            placements_payload_len,
            timeout_s,
        )?;
        give(
            a.client.init_pair_async(
                a.pair,
                a.local,
                a.remote,
                expected_world_size,
                a.mesh,
                a.placements,
                a.timeout,
            )?,
            completion_out,
        );
        Ok(())
    })
}

/// Sends `CleanupBatch` without waiting for it (the reference's `BatchHandler.close(blocking=False)`):
/// `timeout_s` bounds only the wait for queue space. On success writes a new completion to
/// `*completion_out` (required; release with `etb_completion_free`, also unwaited: its
/// semaphore is removed). Thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed);
/// `completion_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_cleanup_batch_async(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    timeout_s: f64,
    completion_out: *mut *mut EtbCompletion,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let completion_out = out(completion_out, "completion_out")?;
        let (batch, t) = batch_args(batch_id, timeout_s)?;
        give(c.client.cleanup_batch_async(batch, t)?, completion_out);
        Ok(())
    })
}

/// Sends `QueryStatus` for the batch's transfer signal without waiting for it (the reference's
/// `query_transfer_signal(blocking=False)`): `timeout_s` bounds only the wait for queue space.
/// On success writes a new completion to `*completion_out` (required; release with
/// `etb_completion_free`). `etb_client_read_transfer_signal` reads what the state holds at any
/// time (the agent records the answer when it handles the query). Thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed);
/// `completion_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_query_transfer_signal_async(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    timeout_s: f64,
    completion_out: *mut *mut EtbCompletion,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let completion_out = out(completion_out, "completion_out")?;
        let (batch, t) = batch_args(batch_id, timeout_s)?;
        give(c.client.query_transfer_signal_async(batch, t)?, completion_out);
        Ok(())
    })
}

/// Reads the transfer signal the agent's state holds now for the batch (false when absent, as
/// the reference), without sending anything; writes `*signal_out` (required). One short read
/// transaction; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed);
/// `signal_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_read_transfer_signal(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    signal_out: *mut bool,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let signal_out = out(signal_out, "signal_out")?;
        signal_out.write(c.client.read_transfer_signal(utf8(batch_id, "batch_id")?)?);
        Ok(())
    })
}
