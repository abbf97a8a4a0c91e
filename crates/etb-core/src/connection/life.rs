//! One verdict on the agent's life, from the state LMDB's lock: bootstrap, reconnect, `etb
//! doctor` and `etb status` all ask [`agent_life`], so they agree in the same instant.
//!
//! Every process with the state environment open holds LMDB's read lock on byte 0 of its `-lock`
//! file, and the kernel drops it when the process ends (also on SIGKILL). So, asked with
//! `F_GETLK` through the descriptor the state env already keeps (never another one: closing any
//! descriptor of the file drops this process's own locks, LMDB's included):
//! - no other holder (`F_UNLCK`): nobody else has the env open, the agent that wrote the files is
//!   gone, whatever its heartbeat's age;
//! - a holder in this pid namespace: it may be the agent, a worker of a dead agent or an
//!   `etb status` that reads: the agent is the holder that has the state file open for writing
//!   (identified through `/proc`); when no holder does, the agent is gone ([`AgentLife::NoWriter`]),
//!   unless one in another pid namespace holds the lock too, which `/proc/locks` does not show
//!   (so a worker that shares its agent with peers does not take that answer as final);
//! - a holder in another pid namespace (the kernel reports pid 0): alive as far as can be told,
//!   its pid unknown.

use std::path::Path;

use crate::lmdb::lock_path;
use crate::protocol::state_db::StateDb;
use crate::sys::process::{has_open_for_writing, lock_holders, writers_among, Holders, LockAnswer};

/// What is known of the agent's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentLife {
    /// The verified writer of the state file, alive: the agent.
    Alive(i32),
    /// A holder of the lock in another pid namespace: alive as far as can be told, pid unknown.
    Elsewhere,
    /// Nobody else holds the state environment: the agent that wrote the files has exited and
    /// left them behind.
    Gone,
    /// Only processes of this pid namespace that do not write the state file hold it (workers of
    /// a dead agent, readers such as `etb status`), as far as `/proc/locks` shows: the agent is
    /// gone, unless a holder in another pid namespace hides behind them (`/proc/locks` lists only
    /// this namespace's). The pids of the holders.
    NoWriter(Vec<i32>),
    /// It cannot be told, and why (`/proc/locks` unreadable, several writers, no lock file).
    Unknown(String),
}

impl AgentLife {
    /// The agent's pid, when identified.
    pub fn pid(&self) -> Option<i32> {
        match self {
            AgentLife::Alive(pid) => Some(*pid),
            _ => None,
        }
    }

    /// Whether the agent is taken for gone: nobody holds its files, or only processes that do not
    /// write them, unless the worker shares its agent with peers (`shared`: then other holders are
    /// expected, and one in another pid namespace could hide behind them).
    pub fn gone(&self, shared: bool) -> bool {
        match self {
            AgentLife::Gone => true,
            AgentLife::NoWriter(_) => !shared,
            _ => false,
        }
    }
}

/// The verdict for the state environment `state` (at `path`), from its lock: `F_GETLK` first
/// (one system call; enough for the common answers), `/proc` only to tell who a local holder is.
pub fn agent_life(state: &StateDb, path: &Path) -> AgentLife {
    let id = state.file_id();
    match state.lock_answer() {
        None => by_proc_locks(path, "the state LMDB's lock file could not be opened"),
        Some(LockAnswer::Free) => AgentLife::Gone,
        Some(LockAnswer::HeldElsewhere) => AgentLife::Elsewhere,
        // Fast path: the holder F_GETLK names writes the state file.
        Some(LockAnswer::Held(pid)) if has_open_for_writing(pid, id.dev, id.ino) => AgentLife::Alive(pid),
        // Another holder may be the agent (F_GETLK names one of them): ask /proc/locks for all.
        Some(LockAnswer::Held(_)) => by_proc_locks(path, "F_GETLK named a holder that does not write the state file"),
        Some(LockAnswer::Failed(errno)) => {
            by_proc_locks(path, &format!("F_GETLK failed: {}", crate::error::errno_text(errno)))
        }
    }
}

/// The verdict without an open environment (for a state file that cannot be opened, e.g. one
/// that is not trusted): from `/proc/locks` alone (no descriptor of the lock file is opened).
pub fn agent_life_at(path: &Path) -> AgentLife {
    by_proc_locks(path, "")
}

/// Among the holders `/proc/locks` lists, the one that writes the state file.
fn by_proc_locks(path: &Path, context: &str) -> AgentLife {
    let and = |why: &str| if context.is_empty() { why.to_string() } else { format!("{context}, and {why}") };
    let Holders::Pids(pids) = lock_holders(&lock_path(path)) else {
        return AgentLife::Unknown(and("/proc/locks is unreadable"));
    };
    match writers_among(&pids, path) {
        Ok(writers) => match writers.as_slice() {
            [] if pids.is_empty() && context.is_empty() => AgentLife::Gone,
            [] if pids.is_empty() => AgentLife::Unknown(and("/proc/locks lists no holder")),
            [] => AgentLife::NoWriter(pids),
            [one] => AgentLife::Alive(*one),
            several => AgentLife::Unknown(and(&format!(
                "several holders of the state LMDB's lock have the state file open for writing (pids {})",
                several.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
            ))),
        },
        Err(why) => AgentLife::Unknown(and(&why)),
    }
}
