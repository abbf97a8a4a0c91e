//! Errors of the core: a kind (which the C layer maps to an `EtbStatus`) and a message that says
//! what failed, with the path, variable or errno a user needs to act on it.

use std::fmt;

/// What went wrong, coarsely. Each kind maps to one published `EtbStatus` number in `ffi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An argument has a value the call cannot accept (NaN timeout, ...).
    InvalidArgument,
    /// An environment variable (AGENT_RANK, RANK, AGENT_RANK_OFFSET, LOCAL_RANK) is missing or malformed.
    Env,
    /// The path naming function failed or returned unusable paths.
    Naming,
    /// The agent's files or queue semaphores did not appear before the deadline.
    AgentNotFound,
    /// The agent's state exists but its heartbeat is missing, stale or unreadable.
    AgentNotResponding,
    /// LMDB refused an operation.
    Lmdb,
    /// A POSIX IPC object (semaphore) could not be used.
    Ipc,
    /// A wait ran out of time.
    Timeout,
    /// `prctl(PR_SET_PTRACER)` failed.
    Ptrace,
    /// The command queue stayed full until the deadline; nothing was written.
    QueueFull,
    /// The agent process exited.
    AgentDied,
    /// InitPair completed but the pair's match key does not say "matched".
    PairNotMatched,
    /// A client made in another process (before a fork) was used.
    Forked,
    /// The client this object belongs to was closed.
    Closed,
    /// The CUDA driver is missing or failed.
    Cuda,
    /// A file, semaphore or process of the agent is not trusted (owner, mode, symlink).
    Permission,
    /// Another worker is attached to this agent.
    AgentBusy,
}

/// An error of the core: its kind and a complete, user-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The text of an errno value, e.g. "No such file or directory (os error 2)".
pub fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// The calling thread's current errno.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
