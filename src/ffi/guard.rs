//! What a client knows its agent holds, and how to tell it more: the client refuses, before the
//! queue, a `Transfer` or `QueryStatus` for a batch it never registered and a `RegisterTensors`
//! naming a pair it never matched (the agent would die of the first and the third, and answer
//! nothing to the second; docs/protocol.md section 5). The agent keeps pairs and batches for its
//! whole life, across worker processes: a worker that restarts names what its earlier process
//! made with `etb_client_adopt_pair` / `etb_client_adopt_batch`. A reconnect starts with nothing
//! known (the new agent knows nothing of the old one's); with `allow_shared_agent` the check is
//! off (a peer may have made them) and these functions change nothing.

use super::args::{out, reference, utf8};
use super::client::EtbClient;
use super::status::EtbStatus;

/// Lets commands on `client` address the pair `pair_name`, which an earlier process of this worker
/// matched with the same agent: `etb_client_register_tensors` may name it. Sends nothing. NULL
/// `client` or `pair_name`: `ETB_ERR_NULL_ARGUMENT`; not UTF-8: `ETB_ERR_INVALID_ARGUMENT`;
/// in a forked child `ETB_ERR_FORKED`. Does not block; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `pair_name` is NULL or NUL-terminated (borrowed).
#[no_mangle]
pub unsafe extern "C" fn etb_client_adopt_pair(client: *const EtbClient, pair_name: *const libc::c_char) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        Ok(c.client.adopt_pair(utf8(pair_name, "pair_name")?)?)
    })
}

/// Lets commands on `client` address the batch `batch_id`, which an earlier process of this
/// worker registered with the same agent: `etb_client_transfer*` and
/// `etb_client_query_transfer_signal*` may name it. Sends nothing. Errors as
/// `etb_client_adopt_pair`. Does not block; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed).
#[no_mangle]
pub unsafe extern "C" fn etb_client_adopt_batch(client: *const EtbClient, batch_id: *const libc::c_char) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        Ok(c.client.adopt_batch(utf8(batch_id, "batch_id")?)?)
    })
}

/// Writes to `*known_out` (required) whether commands may address `batch_id`: the client
/// registered or adopted it and has not cleaned it up since, or the agent is shared
/// (`allow_shared_agent`, no check). Sends nothing. Does not block; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `batch_id` is NULL or NUL-terminated (borrowed);
/// `known_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_batch_known(
    client: *const EtbClient,
    batch_id: *const libc::c_char,
    known_out: *mut bool,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let known_out = out(known_out, "known_out")?;
        known_out.write(c.client.batch_known(utf8(batch_id, "batch_id")?)?);
        Ok(())
    })
}

/// Writes to `*known_out` (required) whether `etb_client_register_tensors` may name `pair_name`:
/// the client matched or adopted it, or the agent is shared (no check). Sends nothing. Does not
/// block; thread-safe.
///
/// # Safety
/// `client` is NULL or a live client; `pair_name` is NULL or NUL-terminated (borrowed);
/// `known_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_client_pair_known(
    client: *const EtbClient,
    pair_name: *const libc::c_char,
    known_out: *mut bool,
) -> EtbStatus {
    status_boundary!({
        let c = reference(client, "client")?;
        let known_out = out(known_out, "known_out")?;
        known_out.write(c.client.pair_known(utf8(pair_name, "pair_name")?)?);
        Ok(())
    })
}
