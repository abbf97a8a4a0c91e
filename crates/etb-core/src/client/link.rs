//! What ties a client to one agent process: the agent's state LMDB and command queue as this
//! worker opened them, and what a client shares with the completions it issued (whether the
//! agent was seen dead, whether the client was closed, the process that made them). `reconnect`
//! replaces the whole link.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::agent_writer::AgentWriter;
use super::guard::Guard;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::command_queue::CommandQueue;
use crate::protocol::naming::AgentPaths;
use crate::protocol::state_db::{StateDb, HEARTBEAT_KEY};
use crate::sys::process::LockAnswer;
use crate::sys::process_watch::AgentWatch;
use crate::sys::registry::FileId;

/// What a client shares with the completions it issued.
pub(super) struct Shared {
    pub(super) watch: AgentWatch,
    /// Set once the agent was seen dead: every later call fails with `AgentDied`.
    pub(super) died: AtomicBool,
    /// The agent (pid unknown) was seen dead by its lock falling free.
    lock_free: AtomicBool,
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

    /// Records that the agent (pid unknown) was seen gone by its lock.
    fn lock_fell_free(&self) {
        self.lock_free.store(true, Ordering::Release);
        self.died.store(true, Ordering::Release);
    }

    pub(super) fn died_error(&self, what: &str) -> Error {
        let how = match self.watch.pid() {
            Some(pid) => format!("the agent process (pid {pid}) has exited"),
            None if self.lock_free.load(Ordering::Acquire) => {
                "the agent (pid unknown: in another pid namespace) has exited: nothing holds its state LMDB any more"
                    .to_string()
            }
            None => "the agent process (pid unknown) has exited".to_string(),
        };
        Error::new(
            ErrorKind::AgentDied,
            format!("{what}: {how}; its pairs and batches are gone: reconnect the client once a new agent runs"),
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
    /// The pairs and batches this client made with this agent (`guard`).
    pub(super) guard: Guard,
    /// The agent's pid is unknown (it runs in another pid namespace, or could not be identified)
    /// and no peer shares it: its death shows as the state LMDB's lock falling free, which the
    /// waits watch (`agent_dead`).
    watch_lock: bool,
    /// The agent's state lock file, read for the survival proof's first signals.
    pub(super) writer: Option<AgentWriter>,
    /// How many commands each signal proved, in the order of [`Proof`].
    proofs: [AtomicU64; Proof::COUNT],
}

/// What proved that the agent survived a command (docs/protocol.md section 5), in the order the
/// survival check looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// After the post, the state env's writer mutex held by the agent's main thread: its loop
    /// began its next transaction.
    WriterLock,
    /// A state commit since the post (the lock file's txnid word advanced).
    Commit,
    /// The heartbeat value changed since the post (or since the dequeue).
    Heartbeat,
    /// The agent dequeued a command after ours.
    LaterDequeue,
}

impl Proof {
    pub const COUNT: usize = 4;
    pub const ALL: [Proof; Proof::COUNT] = [Proof::WriterLock, Proof::Commit, Proof::Heartbeat, Proof::LaterDequeue];

    /// How the debug log line names it ("survival proven ... (by {})": bench/run.py counts them).
    pub fn describe(self) -> &'static str {
        match self {
            Proof::WriterLock => "the writer lock",
            Proof::Commit => "a commit",
            Proof::Heartbeat => "a new heartbeat",
            Proof::LaterDequeue => "a later dequeue",
        }
    }
}

impl Link {
    /// `guarded`: whether the guard is on (off when other workers share the agent).
    pub(super) fn new(connection: Connection, paths: &AgentPaths, guarded: bool) -> Link {
        let watch_lock = guarded && connection.agent.pid().is_none();
        let shared = Arc::new(Shared {
            watch: AgentWatch::new(connection.agent.pid()),
            died: AtomicBool::new(false),
            lock_free: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            owner_pid: std::process::id(),
        });
        let writer = AgentWriter::open(&connection.state, paths, connection.agent.pid());
        Link {
            state: connection.state,
            queue: connection.queue,
            shared,
            paths: paths.clone(),
            guard: Guard::new(guarded),
            watch_lock,
            writer,
            proofs: Default::default(),
        }
    }

    /// Counts a command proven by `proof`.
    pub(super) fn proven_by(&self, proof: Proof) {
        self.proofs[proof as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many commands each signal proved so far, in the order of [`Proof::ALL`].
    pub(super) fn proof_counts(&self) -> [u64; Proof::COUNT] {
        std::array::from_fn(|i| self.proofs[i].load(Ordering::Relaxed))
    }

    /// Whether the agent was seen dead: its process exited (the pidfd), or, when its pid is
    /// unknown, the state LMDB's lock fell free (nobody but this process has the environment
    /// open). Cheap: one `poll` or one `F_GETLK`. Once seen, every later call says so.
    pub(super) fn agent_dead(&self) -> bool {
        if self.shared.agent_dead() {
            return true;
        }
        if self.watch_lock && self.state.lock_answer() == Some(LockAnswer::Free) {
            self.shared.lock_fell_free();
            return true;
        }
        false
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
