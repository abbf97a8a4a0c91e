//! A worker's connection to its agent: the state LMDB (read-only) and the command queue.

use crate::command_queue::CommandQueue;
use crate::error::{Error, ErrorKind, Result};
use crate::naming::AgentPaths;
use crate::state_db::{unix_now, StateDb, StateError};

/// A bootstrapped client. Dropping it closes only this worker's own handles: it never removes
/// the agent's files or semaphores (the reference's `close()` does, a defect).
pub struct Client {
    agent_rank: i64,
    paths: AgentPaths,
    state: StateDb,
    queue: CommandQueue,
    agent_pid: Option<i32>,
}

impl Client {
    pub(crate) fn new(
        agent_rank: i64,
        paths: AgentPaths,
        state: StateDb,
        queue: CommandQueue,
        agent_pid: Option<i32>,
    ) -> Client {
        Client { agent_rank, paths, state, queue, agent_pid }
    }

    pub fn agent_rank(&self) -> i64 {
        self.agent_rank
    }

    pub fn paths(&self) -> &AgentPaths {
        &self.paths
    }

    /// The agent's pid, when bootstrap could identify it.
    pub fn agent_pid(&self) -> Option<i32> {
        self.agent_pid
    }

    pub fn state(&self) -> &StateDb {
        &self.state
    }

    pub fn queue(&self) -> &CommandQueue {
        &self.queue
    }

    /// Seconds since the agent's last heartbeat (however old).
    pub fn heartbeat_age(&self) -> Result<f64> {
        match self.state.heartbeat() {
            Ok(beat) => Ok(unix_now() - beat),
            Err(StateError::Lmdb(e)) => Err(e.at(&self.paths.state)),
            Err(e) => Err(Error::new(
                ErrorKind::AgentNotResponding,
                format!("agent heartbeat in {} unreadable: {e:?}", self.paths.state.display()),
            )),
        }
    }
}
