//! A worker's connection to its agent: the state LMDB (read-only), the command queue, and the
//! five commands of the reference client (docs/protocol.md sections 3-5, 7).
//!
//! Thread-safety: every method takes `&self` and may run on several threads at once (LMDB
//! serializes the queue's write transactions; each call owns its completion semaphore).
//! Fork: a client used in a child process returns `Forked`; dropping it there only forgets it
//! (the bundled LMDB 0.9.21 must not close the parent's environments, nor may the child remove
//! the parent's semaphores).

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::connection::{self, Connection, Settings};
use crate::cuda::{CuContext, CudaBinding};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::command_queue::{CommandQueue, EnqueueError};
use crate::protocol::commands::{Command, TransferKind, TRANSFER_SIGNAL};
use crate::protocol::completion::CompletionSemaphore;
use crate::protocol::naming::AgentPaths;
use crate::protocol::state_db::{pair_match_key, transfer_signal_key, unix_now, PairMatch, StateDb, StateError};
use crate::sys::process::process_alive;
use crate::sys::process_watch::AgentWatch;
use crate::sys::semaphore::WaitError;
use crate::sys::worker_lock::WorkerLock;
use crate::timeout::{Deadline, Timeout};

/// What a client shares with the completions it issued.
struct Shared {
    watch: AgentWatch,
    /// Set once the agent was seen dead: every later call fails with `AgentDied`.
    died: AtomicBool,
    /// Set when the client is closed: its completions' waits return `Closed`.
    closed: AtomicBool,
    owner_pid: u32,
}

impl Shared {
    fn agent_dead(&self) -> bool {
        if self.died.load(Ordering::Acquire) {
            return true;
        }
        if self.watch.is_dead() {
            self.died.store(true, Ordering::Release);
            return true;
        }
        false
    }

    fn died_error(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::AgentDied,
            format!(
                "{what}: the agent process (pid {}) has exited; its pairs and batches are gone: \
                 reconnect the client once a new agent runs",
                self.watch.pid().map_or("unknown".to_string(), |p| p.to_string())
            ),
        )
    }

    fn check_process(&self) -> Result<()> {
        if std::process::id() != self.owner_pid {
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
struct Link {
    state: StateDb,
    queue: CommandQueue,
    shared: Arc<Shared>,
}

/// What a client keeps across reconnects.
struct Stable {
    /// Released after the agent's environments are closed.
    cuda: Option<CudaBinding>,
    /// One worker per agent: held for the client's lifetime (the lock file outlives agents).
    _worker_lock: WorkerLock,
}

/// A bootstrapped client. Dropping it closes only this worker's own handles: it never removes
/// the agent's files or semaphores (the reference's `close()` does, a defect).
pub struct Client {
    agent_rank: i64,
    paths: AgentPaths,
    /// Swapped whole by `reconnect`; each call works on a clone of the Arc, so a reconnect never
    /// waits for calls in flight (nor they for it).
    link: RwLock<Arc<Link>>,
    /// Serializes reconnects.
    reconnecting: Mutex<()>,
    stable: ManuallyDrop<Stable>,
    owner_pid: u32,
    settings: Settings,
}

/// A command issued without waiting (`transfer_async`): wait on it or poll it later. Owns its
/// semaphore, which is removed when the completion is dropped.
pub struct Completion {
    sem: CompletionSemaphore,
    shared: Arc<Shared>,
    done: AtomicBool,
}

impl Client {
    pub(crate) fn new(
        agent_rank: i64,
        paths: AgentPaths,
        connection: Connection,
        cuda: Option<CudaBinding>,
        worker_lock: WorkerLock,
        settings: Settings,
    ) -> Client {
        Client {
            agent_rank,
            paths,
            link: RwLock::new(Arc::new(Link::new(connection))),
            reconnecting: Mutex::new(()),
            stable: ManuallyDrop::new(Stable { cuda, _worker_lock: worker_lock }),
            owner_pid: std::process::id(),
            settings,
        }
    }

    fn link(&self) -> Arc<Link> {
        self.link.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After the agent died and a new one started (new files, new heartbeat): validates the new
    /// agent, attaches its queue, authorizes it to ptrace this worker, and makes this client use
    /// it, keeping the same handle (and its GPU binding and worker lock). The new agent knows no
    /// pair or batch of the old one: init them again. Until it succeeds, calls keep returning
    /// `AgentDied`. Returns the new agent's pid, when identified.
    pub fn reconnect(&self, timeout: Timeout) -> Result<Option<i32>> {
        let start = self.link();
        start.shared.check_process()?;
        let _serial = self.reconnecting.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.link();
        if !Arc::ptr_eq(&current, &start) {
            // Another thread reconnected while this one waited for its turn.
            return Ok(current.shared.watch.pid());
        }
        let deadline = timeout.start();
        let origin = format!("reconnect to agent rank {}", self.agent_rank);
        let (old_pid, old_state) = (start.shared.watch.pid(), start.state.file_id());
        // A dead agent's files stay behind with a heartbeat younger than 5 s for a while: a new
        // agent is a live process other than the old one (verified as the state's writer), or,
        // when it cannot be identified, new files.
        let connection = loop {
            let c = connection::connect(&self.paths, self.settings.trust, &deadline, &origin)?;
            let new_process = c.agent.pid().is_some_and(|p| Some(p) != old_pid && process_alive(p));
            if new_process || (c.agent.pid().is_none() && c.state.file_id() != old_state) {
                break c;
            }
            drop(c);
            if !deadline.sleep_step(connection::POLL_INTERVAL) {
                return Err(Error::new(
                    ErrorKind::AgentNotResponding,
                    format!(
                        "no new agent at {} after {:.3}s: the files there are still the dead agent's ({origin})",
                        self.paths.state.display(),
                        deadline.elapsed_secs()
                    ),
                ));
            }
        };
        connection::authorize_agent(&connection.agent, self.settings.ptrace_mode);
        let agent = connection.agent.clone();
        let fresh = Arc::new(Link::new(connection));
        let old = std::mem::replace(&mut *self.link.write().unwrap_or_else(|p| p.into_inner()), fresh);
        // The old agent's completions and calls in flight see it dead; its environments close
        // when the last call using them ends.
        old.shared.died.store(true, Ordering::Release);
        drop(old);
        log::info!("reconnected to agent rank {} ({agent})", self.agent_rank);
        Ok(agent.pid())
    }

    /// Head and tail of the agent's command queue.
    pub fn queue_positions(&self) -> Result<(u64, u64)> {
        self.link().queue.positions().map_err(|e| e.at(&self.paths.command_queue))
    }

    /// The queue's semaphore counts (items, free slots).
    pub fn queue_semaphore_values(&self) -> Result<(i32, i32)> {
        self.link().queue.semaphore_values().map_err(|e| Error::new(ErrorKind::Ipc, e.text()))
    }

    /// The message at logical position `position` of the queue, if any.
    pub fn queue_peek(&self, position: u64) -> Result<Option<Vec<u8>>> {
        self.link().queue.peek(position).map_err(|e| e.at(&self.paths.command_queue))
    }

    /// Whether the state LMDB is read with a reader slot (false: MDB_NOLOCK fallback).
    pub fn state_locking(&self) -> bool {
        self.link().state.locking()
    }

    /// The state LMDB's file identity.
    pub fn state_file_id(&self) -> crate::lmdb::registry::FileId {
        self.link().state.file_id()
    }

    pub fn agent_rank(&self) -> i64 {
        self.agent_rank
    }

    pub fn paths(&self) -> &AgentPaths {
        &self.paths
    }

    /// The agent's pid, when bootstrap (or the last reconnect) could identify it.
    pub fn agent_pid(&self) -> Option<i32> {
        self.link().shared.watch.pid()
    }

    /// The primary context this client holds (`CUcontext`), when bound; `Forked` in a child.
    pub fn cuda_context(&self) -> Result<Option<CuContext>> {
        self.check_process()?;
        Ok(self.stable.cuda.as_ref().map(CudaBinding::context))
    }

    /// Makes the client's context current on the calling thread.
    pub fn bind_current_thread(&self) -> Result<()> {
        self.check_process()?;
        match &self.stable.cuda {
            Some(b) => b.make_current(),
            None => Err(Error::new(
                ErrorKind::Cuda,
                "this client is not bound to a GPU (no driver or device at bootstrap, or the CUDA mode was skip)",
            )),
        }
    }

    /// Seconds since the agent's last heartbeat (however old).
    pub fn heartbeat_age(&self) -> Result<f64> {
        self.check_process()?;
        match self.link().state.heartbeat() {
            Ok(beat) => Ok(unix_now() - beat),
            Err(StateError::Lmdb(e)) => Err(e.at(&self.paths.state)),
            Err(e) => Err(Error::new(
                ErrorKind::AgentNotResponding,
                format!("agent heartbeat in {} unreadable: {e}", self.paths.state.display()),
            )),
        }
    }

    /// A client of a dead agent is unusable: checked before every command (one `poll` with a
    /// zero timeout), so nothing is enqueued into a queue nobody will read.
    fn check_process(&self) -> Result<()> {
        self.link().shared.check_process()
    }

    /// Enqueues `command`, with a fresh completion semaphore unless `detached`.
    fn issue(
        &self,
        command: &Command<'_>,
        deadline: &Deadline,
        detached: bool,
    ) -> Result<(Option<CompletionSemaphore>, Arc<Shared>)> {
        let what = command.type_name();
        let link = self.link();
        link.shared.check_process()?;
        // A client of a dead agent is unusable: checked before every command (one `poll` with a
        // zero timeout), so nothing is enqueued into a queue nobody will read.
        if link.shared.agent_dead() {
            return Err(link.shared.died_error(what));
        }
        let sem = if detached {
            None
        } else {
            let (kind, context) = command.completion_label();
            Some(CompletionSemaphore::create(kind, &context)?)
        };
        let message = command.encode(Some(unix_now()), sem.as_ref().map(CompletionSemaphore::name));
        let shared = &link.shared;
        match link.queue.enqueue(&message, deadline, &|| shared.agent_dead()) {
            Ok(()) => Ok((sem, shared.clone())),
            Err(EnqueueError::Full) => {
                let (head, tail) = link.queue.positions().unwrap_or((0, 0));
                Err(Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "{what}: the agent's command queue {} stayed full for {:.3}s (head {head}, tail {tail}): \
                         the agent is not consuming; nothing was enqueued",
                        self.paths.command_queue.display(),
                        deadline.elapsed_secs()
                    ),
                ))
            }
            Err(EnqueueError::GaveUp) => Err(shared.died_error(what)),
            Err(EnqueueError::Lmdb(e)) => Err(e.at(&self.paths.command_queue)),
            Err(EnqueueError::Sem(e)) => {
                Err(Error::new(ErrorKind::Ipc, format!("{what}: command queue semaphore: {}", e.text())))
            }
        }
    }

    /// Issues `command` and waits for its completion, all within `timeout`.
    fn call(&self, command: &Command<'_>, timeout: Timeout) -> Result<()> {
        let deadline = timeout.start();
        let (sem, shared) = self.issue(command, &deadline, false)?;
        let sem = sem.expect("a completion was asked for");
        wait_completion(&sem, &shared, &deadline, command.type_name(), &|| false)
    }

    /// `InitPair`: succeeds only if the agent then records the pair as matched.
    #[allow(clippy::too_many_arguments)]
    pub fn init_pair(
        &self,
        pair_name: &str,
        local_name: &str,
        remote_name: &str,
        expected_world_size: i64,
        mesh_shape_payload: Option<&[u8]>,
        placements_payload: Option<&[u8]>,
        timeout: Timeout,
    ) -> Result<()> {
        if expected_world_size < 1 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("expected_world_size is {expected_world_size}; it must be >= 1"),
            ));
        }
        let command = Command::InitPair {
            pair_name,
            local_name,
            expected_world_size,
            remote_name,
            mesh_shape_payload,
            placements_payload,
        };
        self.call(&command, timeout)?;
        match self.link().state.pair_match(pair_name).map_err(|e| e.at(&self.paths.state))? {
            PairMatch::Matched => Ok(()),
            found => Err(Error::new(
                ErrorKind::PairNotMatched,
                format!(
                    "InitPair {pair_name:?} completed but {} is {}: the agent did not match the pair \
                     (check the peers' names and world size)",
                    pair_match_key(pair_name),
                    match found {
                        PairMatch::Other(v) => format!("{v:02x?}"),
                        _ => "absent".to_string(),
                    }
                ),
            )),
        }
    }

    /// `RegisterTensors`, always blocking. `tensors` are `(pair_name, payload)`.
    pub fn register_tensors(
        &self,
        batch_id: &str,
        tensors: &[(&str, &[u8])],
        bucket_size: Option<i64>,
        timeout: Timeout,
    ) -> Result<()> {
        self.call(&Command::RegisterTensors { batch_id, tensors: tensors.to_vec(), bucket_size }, timeout)
    }

    /// `Transfer`, blocking until the agent acknowledges it.
    pub fn transfer(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<()> {
        self.call(&Command::Transfer { batch_id, transfer_type: kind }, timeout)
    }

    /// `Transfer` without waiting: `timeout` bounds only the wait for queue space.
    pub fn transfer_async(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<Completion> {
        let deadline = timeout.start();
        let (sem, shared) = self.issue(&Command::Transfer { batch_id, transfer_type: kind }, &deadline, false)?;
        Ok(Completion { sem: sem.expect("asked for"), shared, done: AtomicBool::new(false) })
    }

    /// `Transfer` with no completion semaphore (`semaphore_name` nil): nothing to wait on.
    pub fn transfer_detached(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<()> {
        let deadline = timeout.start();
        self.issue(&Command::Transfer { batch_id, transfer_type: kind }, &deadline, true).map(|_| ())
    }

    /// `QueryStatus` for the transfer signal; absent reads as false, as the reference.
    pub fn query_transfer_signal(&self, batch_id: &str, timeout: Timeout) -> Result<bool> {
        self.call(&Command::QueryStatus { batch_id, state_name: TRANSFER_SIGNAL }, timeout)?;
        match self.link().state.transfer_signal(batch_id).map_err(|e| e.at(&self.paths.state))? {
            Ok(signal) => Ok(signal),
            Err(other) => Err(Error::new(
                ErrorKind::Lmdb,
                format!("{} holds {other:02x?}, not a MessagePack bool", transfer_signal_key(batch_id)),
            )),
        }
    }

    /// `CleanupBatch`.
    pub fn cleanup_batch(&self, batch_id: &str, timeout: Timeout) -> Result<()> {
        self.call(&Command::CleanupBatch { batch_id }, timeout)
    }
}

/// Waits for a completion; a completion posted by an agent that then exited is a failure
/// (the agent posts also when the command failed, then re-raises and ends). `closed` ends the
/// wait early with `Closed`.
fn wait_completion(
    sem: &CompletionSemaphore,
    shared: &Shared,
    deadline: &Deadline,
    what: &str,
    closed: &dyn Fn() -> bool,
) -> Result<()> {
    match sem.semaphore().wait(deadline, &|| closed() || shared.agent_dead()) {
        Ok(()) if shared.agent_dead() => Err(shared.died_error(&format!("{what} was acknowledged, but"))),
        Ok(()) => Ok(()),
        Err(WaitError::TimedOut) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "{what}: no completion from the agent within {:.3}s (semaphore {}); the agent may be busy \
                 with an earlier command (it does not beat its heartbeat meanwhile)",
                deadline.elapsed_secs(),
                sem.name()
            ),
        )),
        Err(WaitError::GaveUp) if closed() => Err(closed_error(sem.name())),
        Err(WaitError::GaveUp) => Err(shared.died_error(what)),
        Err(WaitError::Sem(e)) => Err(crate::protocol::completion::ipc_error(sem.name(), e)),
    }
}

fn closed_error(name: &str) -> Error {
    Error::new(ErrorKind::Closed, format!("the client of completion {name} was closed; free the completion"))
}

impl Completion {
    pub fn semaphore_name(&self) -> &str {
        self.sem.name()
    }

    fn usable(&self) -> Result<()> {
        self.shared.check_process()?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error(self.sem.name()));
        }
        Ok(())
    }

    /// Waits until the agent acknowledges the command, or `timeout`.
    pub fn wait(&self, timeout: Timeout) -> Result<()> {
        self.usable()?;
        if self.done.load(Ordering::Acquire) {
            return Ok(());
        }
        let closed = || self.shared.closed.load(Ordering::Acquire);
        wait_completion(&self.sem, &self.shared, &timeout.start(), "Transfer", &closed)?;
        self.done.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the agent has acknowledged the command; never blocks.
    pub fn poll(&self) -> Result<bool> {
        self.usable()?;
        if self.done.load(Ordering::Acquire) {
            return Ok(true);
        }
        match self.sem.semaphore().try_wait() {
            // Posted, then exited: the agent posts failed commands too, then ends.
            Ok(true) if self.shared.agent_dead() => Err(self.shared.died_error("Transfer was acknowledged, but")),
            Ok(true) => {
                self.done.store(true, Ordering::Release);
                Ok(true)
            }
            Ok(false) if self.shared.agent_dead() => Err(self.shared.died_error("Transfer")),
            Ok(false) => Ok(false),
            Err(e) => Err(crate::protocol::completion::ipc_error(self.sem.name(), e)),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let link = self.link.get_mut().unwrap_or_else(|p| p.into_inner());
        link.shared.closed.store(true, Ordering::Release);
        if std::process::id() == self.owner_pid {
            // SAFETY: dropped exactly once, here; nothing uses it afterwards.
            unsafe { ManuallyDrop::drop(&mut self.stable) };
        } else {
            // In a forked child the handles are the parent's: forget them (leak the copies).
            std::mem::forget(link.clone());
        }
    }
}

impl Link {
    fn new(connection: Connection) -> Link {
        let shared = Arc::new(Shared {
            watch: AgentWatch::new(connection.agent.pid()),
            died: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            owner_pid: std::process::id(),
        });
        Link { state: connection.state, queue: connection.queue, shared }
    }
}
