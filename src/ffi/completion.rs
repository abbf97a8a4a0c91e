//! `EtbCompletion`: a command issued without waiting (the `_async` commands), and its wait, poll
//! and release.

use super::args::{out, reference, take_handle, timeout};
use super::status::EtbStatus;
use etb_core::client::Completion;

/// A command issued by `etb_client_transfer_async`. Opaque; wait on it or poll it, then release
/// it with `etb_completion_free`, which removes its semaphore. Owned by the caller (a box);
/// independent of its client's lifetime.
pub struct EtbCompletion {
    pub(crate) completion: Completion,
}

/// Waits until the agent acknowledges the command and is seen to survive it, at most
/// `timeout_s` (rules as above): `ETB_OK` (also on every later call), `ETB_ERR_TIMEOUT`
/// (the post not seen, or seen but survival not shown yet), `ETB_ERR_AGENT_DIED`, or
/// `ETB_ERR_CLOSED` once its client was closed. Use a completion from one thread at a time.
/// NULL `completion`: `ETB_ERR_NULL_ARGUMENT`.
///
/// # Safety
/// `completion` is NULL or a live completion not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn etb_completion_wait(completion: *mut EtbCompletion, timeout_s: f64) -> EtbStatus {
    status_boundary!({
        let c = reference(completion, "completion")?;
        Ok(c.completion.wait(timeout(timeout_s, "timeout_s")?)?)
    })
}

/// Tells, without blocking, whether the agent has acknowledged the command and was seen to
/// survive it (true only once proven; false also while the client's watcher thread, or another
/// thread, is looking at it): writes `*done_out` (required) on success. Once the outcome is final
/// it is answered at once, every time. `ETB_ERR_AGENT_DIED` when the agent exited first;
/// `ETB_ERR_CLOSED` once its client was closed. Use a completion from one thread at a time.
/// NULL `completion` or `done_out`: `ETB_ERR_NULL_ARGUMENT`.
///
/// # Safety
/// `completion` is NULL or a live completion not used by another thread during the call;
/// `done_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn etb_completion_poll(completion: *mut EtbCompletion, done_out: *mut bool) -> EtbStatus {
    status_boundary!({
        let c = reference(completion, "completion")?;
        let done_out = out(done_out, "done_out")?;
        done_out.write(c.completion.poll()?);
        Ok(())
    })
}

/// Hands the completion to its client's watcher thread (started on first use; see
/// `etb_client_event_fd`): once its outcome is final, `token` (any number the caller chooses,
/// e.g. an index or a pointer) is returned by `etb_client_take_resolved` and the client's event fd
/// turns readable; a completion already final is resolved at once. Watching it again replaces
/// the token. The completion stays the caller's: wait on it, poll it (a poll that finds the
/// watcher looking at it answers false at once), and free it as before; freeing it unwatches it
/// (its token, if not taken yet, is dropped). `ETB_ERR_CLOSED` once its client was closed.
/// Use a completion from one thread at a time.
///
/// # Safety
/// `completion` is NULL or a live completion not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn etb_completion_watch(completion: *mut EtbCompletion, token: u64) -> EtbStatus {
    status_boundary!({
        let c = reference(completion, "completion")?;
        Ok(c.completion.watch(token)?)
    })
}

/// Releases a completion and removes its semaphore from /dev/shm, whether or not the command
/// was acknowledged, before or after its client's close. NULL is accepted and ignored. Freeing
/// twice or using it afterwards is undefined behaviour. In a forked child it only forgets (the
/// semaphore is the parent's). Does not block.
/// Thread-safety: no other thread may use this completion during or after the free.
///
/// # Safety
/// `completion` is NULL or a completion from `etb_client_transfer_async` not yet freed; the
/// caller gives it up.
#[no_mangle]
pub unsafe extern "C" fn etb_completion_free(completion: *mut EtbCompletion) {
    value_boundary!((), {
        drop(take_handle(completion));
        Ok(())
    })
}
