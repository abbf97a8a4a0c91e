//! What ties a client to one agent process: the agent's state LMDB and command queue as this
//! worker opened them, and what a client shares with the completions it issued (whether the
//! agent was seen dead, whether the client was closed, the process that made them). `reconnect`
//! replaces the whole link.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::command_queue::CommandQueue;
use crate::protocol::naming::AgentPaths;
use crate::protocol::state_db::{StateDb, HEARTBEAT_KEY};
use crate::sys::process_watch::AgentWatch;
use crate::sys::registry::FileId;

/// What a client shares with the completions it issued.
pub(super) struct Shared {
    pub(super) watch: AgentWatch,
    /// Set once the agent was seen dead: every later call fails with `AgentDied`.
    pub(super) died: AtomicBool,
    /// Set when the client is closed: its completions' waits return `Closed`.
    pub(super) closed: AtomicBool,
    /// The process that made the client: the one fork check (`check_not_forked`) compares with it.
    owner_pid: u32,
}

impl Shared {
    pub(super) fn agent_dead(&self) -> bool {
        if self.died.load(Ordering::Acquire) {
            return true;
        }
        if self.watch.is_dead() {
            self.died.store(true, Ordering::Release);
            return true;
        }
        false
    }

    pub(super) fn died_error(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::AgentDied,
            format!(
                "{what}: the agent process (pid {}) has exited; its pairs and batches are gone: \
                 reconnect the client once a new agent runs",
                self.watch.pid().map_or("unknown".to_string(), |p| p.to_string())
            ),
        )
    }

    /// Whether this is the process that made the client (false in a forked child).
    pub(super) fn in_owner_process(&self) -> bool {
        std::process::id() == self.owner_pid
    }

    /// `Forked` in a child forked after the client was made: LMDB environments and completion
    /// semaphores cannot cross a fork.
    pub(super) fn check_not_forked(&self) -> Result<()> {
        if !self.in_owner_process() {
            return Err(Error::new(
                ErrorKind::Forked,
                format!(
                    "this object was made in process {} and is used in {} (after fork()): LMDB environments \
                     and completions cannot cross a fork; bootstrap a new client in the child",
                    self.owner_pid,
                    std::process::id()
                ),
            ));
        }
        Ok(())
    }
}

/// What ties a client to one agent process; replaced whole by `reconnect`.
pub(super) struct Link {
    pub(super) state: StateDb,
    pub(super) queue: CommandQueue,
    pub(super) shared: Arc<Shared>,
    pub(super) paths: AgentPaths,
}

impl Link {
    pub(super) fn new(connection: Connection, paths: &AgentPaths) -> Link {
        let shared = Arc::new(Shared {
            watch: AgentWatch::new(connection.agent.pid()),
            died: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            owner_pid: std::process::id(),
        });
        Link { state: connection.state, queue: connection.queue, shared, paths: paths.clone() }
    }

    pub(super) fn heartbeat_value(&self) -> Option<Vec<u8>> {
        self.state.get(HEARTBEAT_KEY).ok().flatten()
    }

    /// Whether the agent's files were destroyed or replaced since this link attached: the dying
    /// agent's launch script removes them first (docs/protocol.md section 5), a restart replaces
    /// them.
    pub(super) fn files_gone(&self) -> bool {
        FileId::of_path(&self.paths.state).ok() != Some(self.state.file_id()) || !self.paths.command_queue.exists()
    }
}
