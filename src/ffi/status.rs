//! Status codes. The numbers are published: never change or reuse one.

use std::ffi::CStr;

use etb_core::error::ErrorKind;

/// The result of a call: `ETB_OK` (0) or one of the `ETB_ERR_*` codes below. A plain `int32_t`
/// on the C side, so that codes added later never make an old caller's `switch` undefined.
pub type EtbStatus = i32;

/// Success.
pub const ETB_OK: EtbStatus = 0;
/// A required pointer argument was NULL.
pub const ETB_ERR_NULL_ARGUMENT: EtbStatus = 1;
/// An argument's value is not acceptable (NaN or negative timeout, bad enum value, ...).
pub const ETB_ERR_INVALID_ARGUMENT: EtbStatus = 2;
/// AGENT_RANK, RANK, AGENT_RANK_OFFSET or LOCAL_RANK is missing or malformed.
pub const ETB_ERR_ENV: EtbStatus = 3;
/// The path naming callback failed, or returned an empty or unterminated path.
pub const ETB_ERR_NAMING: EtbStatus = 4;
/// The agent's state LMDB, queue LMDB or queue semaphores did not appear before the deadline.
pub const ETB_ERR_AGENT_NOT_FOUND: EtbStatus = 5;
/// The agent's heartbeat stayed missing, stale or unreadable until the deadline.
pub const ETB_ERR_AGENT_NOT_RESPONDING: EtbStatus = 6;
/// LMDB refused to open or read one of the agent's files.
pub const ETB_ERR_LMDB: EtbStatus = 7;
/// A POSIX semaphore could not be opened or used.
pub const ETB_ERR_IPC: EtbStatus = 8;
/// A wait ran out of time.
pub const ETB_ERR_TIMEOUT: EtbStatus = 9;
/// prctl(PR_SET_PTRACER) failed.
pub const ETB_ERR_PTRACE: EtbStatus = 10;
/// A bug in the library was caught at the C boundary; the host process is unharmed.
pub const ETB_ERR_PANIC: EtbStatus = 11;
/// The command queue stayed full until the deadline; nothing was written.
pub const ETB_ERR_QUEUE_FULL: EtbStatus = 12;
/// The agent process exited (seen at once while waiting); calls on the client keep returning it.
pub const ETB_ERR_AGENT_DIED: EtbStatus = 13;
/// InitPair completed but the agent did not record the pair as matched.
pub const ETB_ERR_PAIR_NOT_MATCHED: EtbStatus = 14;
/// A client (or completion) was used in a process forked from the one that made it.
pub const ETB_ERR_FORKED: EtbStatus = 15;
/// The CUDA driver is missing or failed where CUDA was required, or the client is not bound.
pub const ETB_ERR_CUDA: EtbStatus = 16;
/// A file, semaphore or the process of the agent has an owner or mode we do not trust, or a
/// file is a symbolic link.
pub const ETB_ERR_PERMISSION: EtbStatus = 17;
/// Another worker is attached to this agent (one worker per agent, unless sharing is allowed).
pub const ETB_ERR_AGENT_BUSY: EtbStatus = 18;
/// The client a completion belongs to was closed.
pub const ETB_ERR_CLOSED: EtbStatus = 19;

/// Every published code with its name, in order.
pub(crate) const STATUS_NAMES: [(EtbStatus, &CStr); 20] = [
    (ETB_OK, c"ETB_OK"),
    (ETB_ERR_NULL_ARGUMENT, c"ETB_ERR_NULL_ARGUMENT"),
    (ETB_ERR_INVALID_ARGUMENT, c"ETB_ERR_INVALID_ARGUMENT"),
    (ETB_ERR_ENV, c"ETB_ERR_ENV"),
    (ETB_ERR_NAMING, c"ETB_ERR_NAMING"),
    (ETB_ERR_AGENT_NOT_FOUND, c"ETB_ERR_AGENT_NOT_FOUND"),
    (ETB_ERR_AGENT_NOT_RESPONDING, c"ETB_ERR_AGENT_NOT_RESPONDING"),
    (ETB_ERR_LMDB, c"ETB_ERR_LMDB"),
    (ETB_ERR_IPC, c"ETB_ERR_IPC"),
    (ETB_ERR_TIMEOUT, c"ETB_ERR_TIMEOUT"),
    (ETB_ERR_PTRACE, c"ETB_ERR_PTRACE"),
    (ETB_ERR_PANIC, c"ETB_ERR_PANIC"),
    (ETB_ERR_QUEUE_FULL, c"ETB_ERR_QUEUE_FULL"),
    (ETB_ERR_AGENT_DIED, c"ETB_ERR_AGENT_DIED"),
    (ETB_ERR_PAIR_NOT_MATCHED, c"ETB_ERR_PAIR_NOT_MATCHED"),
    (ETB_ERR_FORKED, c"ETB_ERR_FORKED"),
    (ETB_ERR_CUDA, c"ETB_ERR_CUDA"),
    (ETB_ERR_PERMISSION, c"ETB_ERR_PERMISSION"),
    (ETB_ERR_AGENT_BUSY, c"ETB_ERR_AGENT_BUSY"),
    (ETB_ERR_CLOSED, c"ETB_ERR_CLOSED"),
];

/// The name of a status, or "ETB_UNKNOWN_STATUS".
pub(crate) fn status_name(status: EtbStatus) -> &'static CStr {
    STATUS_NAMES.iter().find(|(s, _)| *s == status).map(|(_, n)| *n).unwrap_or(c"ETB_UNKNOWN_STATUS")
}

/// The status a core error kind maps to.
pub(crate) fn status_of(kind: ErrorKind) -> EtbStatus {
    match kind {
        ErrorKind::InvalidArgument => ETB_ERR_INVALID_ARGUMENT,
        ErrorKind::Env => ETB_ERR_ENV,
        ErrorKind::Naming => ETB_ERR_NAMING,
        ErrorKind::AgentNotFound => ETB_ERR_AGENT_NOT_FOUND,
        ErrorKind::AgentNotResponding => ETB_ERR_AGENT_NOT_RESPONDING,
        ErrorKind::Lmdb => ETB_ERR_LMDB,
        ErrorKind::Ipc => ETB_ERR_IPC,
        ErrorKind::Timeout => ETB_ERR_TIMEOUT,
        ErrorKind::Ptrace => ETB_ERR_PTRACE,
        ErrorKind::QueueFull => ETB_ERR_QUEUE_FULL,
        ErrorKind::AgentDied => ETB_ERR_AGENT_DIED,
        ErrorKind::PairNotMatched => ETB_ERR_PAIR_NOT_MATCHED,
        ErrorKind::Forked => ETB_ERR_FORKED,
        ErrorKind::Closed => ETB_ERR_CLOSED,
        ErrorKind::Cuda => ETB_ERR_CUDA,
        ErrorKind::Permission => ETB_ERR_PERMISSION,
        ErrorKind::AgentBusy => ETB_ERR_AGENT_BUSY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_are_the_published_ones() {
        for (i, (code, name)) in STATUS_NAMES.iter().enumerate() {
            assert_eq!(*code, i as EtbStatus);
            assert_eq!(status_name(*code), *name);
        }
        assert_eq!(status_name(-1).to_str().unwrap(), "ETB_UNKNOWN_STATUS");
        assert_eq!(status_name(20).to_str().unwrap(), "ETB_UNKNOWN_STATUS");
        assert_eq!(status_name(ETB_ERR_AGENT_NOT_RESPONDING).to_str().unwrap(), "ETB_ERR_AGENT_NOT_RESPONDING");
    }
}
