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
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::connection::{self, Connection, Settings};
use crate::cuda::{CuContext, CudaBinding};
use crate::error::{Error, ErrorKind, Result};
use crate::lmdb::registry::FileId;
use crate::payload::cuda_tensor::CudaTensor;
use crate::payload::Payload;
use crate::protocol::command_queue::{CommandQueue, EnqueueError};
use crate::protocol::commands::{Command, TransferKind, TRANSFER_SIGNAL};
use crate::protocol::completion::CompletionSemaphore;
use crate::protocol::naming::AgentPaths;
use crate::protocol::payload_check::{check_pickle, warn_if_not_shared};
use crate::protocol::state_db::{
    pair_match_key, transfer_signal_key, unix_now, PairMatch, StateDb, StateError, HEARTBEAT_KEY,
};
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
    paths: AgentPaths,
}

/// How long the survival proof sleeps between its first checks (doubling up to
/// [`PROOF_MAX_PAUSE`]): the real agent rewrites its heartbeat about 0.13 ms after it posts the
/// completion of a command it survived (docs/protocol.md section 5).
const PROOF_FIRST_PAUSE: Duration = Duration::from_micros(20);
const PROOF_MAX_PAUSE: Duration = Duration::from_millis(1);

/// What the survival check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A heartbeat written after the post.
    Heartbeat,
    /// A command after ours dequeued.
    LaterDequeue,
    /// The agent's process exited, or its files are gone.
    Dead,
}

/// One command on its way to a proven outcome: its position, and the heartbeat values that a
/// later change of proves the agent survived it.
///
/// After the agent dequeues our command its next heartbeat is written only once it handled the
/// command without raising. So a heartbeat that differs from one read *after* the command was
/// dequeued proves survival: `during`, read while waiting, once the queue's head passed our
/// position (before the post, when the command takes a while), and `after`, read right after
/// the post was seen (for a quick command; when the agent beat before we read, the proof waits
/// for its next loop turn or its next dequeue).
struct Tracker {
    /// The command's logical position in the queue.
    position: u64,
    /// The heartbeat read once the head had passed our position, before the post was seen.
    during: Option<Option<Vec<u8>>>,
    /// The heartbeat read right after the post was seen; `None` until then.
    after: Option<Option<Vec<u8>>>,
}

impl Tracker {
    fn new(position: u64) -> Tracker {
        Tracker { position, during: None, after: None }
    }
}

impl Link {
    fn heartbeat_value(&self) -> Option<Vec<u8>> {
        self.state.get(HEARTBEAT_KEY).ok().flatten()
    }

    /// Whether the agent's files were destroyed or replaced since this link attached: the dying
    /// agent's launch script removes them first (docs/protocol.md section 5), a restart replaces
    /// them.
    fn files_gone(&self) -> bool {
        FileId::of_path(&self.paths.state).ok() != Some(self.state.file_id()) || !self.paths.command_queue.exists()
    }

    /// While the post is awaited: once the agent dequeued our command, remembers the heartbeat
    /// of that moment (head first, then the heartbeat, so the value is one read after the dequeue).
    fn observe_dequeue(&self, tracker: &mut Tracker) {
        if tracker.during.is_none() && self.queue.head().is_ok_and(|head| head > tracker.position) {
            tracker.during = Some(self.heartbeat_value());
        }
    }

    /// Records what the state says right after a completion's post was seen.
    fn observe_post(&self, tracker: &mut Tracker) {
        tracker.after = Some(self.heartbeat_value());
    }

    /// One non-blocking look at whether the agent survived the posted command: it did when it
    /// wrote a heartbeat since the post (it beats once before its next dequeue, and never after a
    /// command that raised) or dequeued a command after ours (the queue's head reached our
    /// position + 2); it did not when it is seen dead (its process exited, or its files are
    /// gone); `None` while neither is known.
    fn survival(&self, tracker: &Tracker) -> Option<Seen> {
        let now = self.heartbeat_value();
        if tracker.after.as_ref().is_some_and(|after| *after != now)
            || tracker.during.as_ref().is_some_and(|d| *d != now)
        {
            return Some(Seen::Heartbeat);
        }
        if self.queue.head().is_ok_and(|head| head >= tracker.position.saturating_add(2)) {
            return Some(Seen::LaterDequeue);
        }
        if self.shared.agent_dead() || self.files_gone() {
            return Some(Seen::Dead);
        }
        None
    }

    /// Waits until [`Link::survival`] knows, at most until `deadline`.
    fn prove_survival(
        &self,
        tracker: &Tracker,
        deadline: &Deadline,
        what: &str,
        sem_name: &str,
        closed: &dyn Fn() -> bool,
    ) -> Result<()> {
        let mut pause = PROOF_FIRST_PAUSE;
        let started = std::time::Instant::now();
        loop {
            match self.survival(tracker) {
                Some(Seen::Dead) => return Err(self.shared.died_error(&format!("{what} was acknowledged, but"))),
                Some(how) => {
                    // bench/run.py reads these lines for the cost of the survival check.
                    log::debug!(
                        "{what}: survival proven {:.1} us after the post (by {})",
                        started.elapsed().as_secs_f64() * 1e6,
                        if how == Seen::Heartbeat { "a new heartbeat" } else { "a later dequeue" }
                    );
                    return Ok(());
                }
                None => {}
            }
            if closed() {
                return Err(closed_error(sem_name));
            }
            if !deadline.sleep_step(pause) {
                return Err(unproven_error(what, deadline));
            }
            pause = (pause * 2).min(PROOF_MAX_PAUSE);
        }
    }
}

/// The deadline passed after the agent posted but before its survival was shown.
fn unproven_error(what: &str, deadline: &Deadline) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "{what}: the agent acknowledged the command, but in the {:.3}s allowed it neither wrote its heartbeat \
             since nor dequeued a later command, and it is not seen dead: whether the command succeeded is \
             unknown (the agent posts also for a command that failed, then ends)",
            deadline.elapsed_secs()
        ),
    )
}

/// What a client keeps across reconnects.
struct Stable {
    /// Released after the agent's environments are closed.
    cuda: Option<CudaBinding>,
    /// Why `cuda` is `None` (from bootstrap), for the errors of calls that need the GPU.
    cuda_unbound: String,
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
/// semaphore, which is removed when the completion is dropped. It reports done only once the
/// agent posted it *and* was seen to survive the command.
pub struct Completion {
    sem: CompletionSemaphore,
    shared: Arc<Shared>,
    /// The agent link it was issued on: weak, so that a closed or reconnected client's
    /// environments close with it (the completion then reports `Closed` or `AgentDied`).
    link: Weak<Link>,
    /// What the proof has seen so far (the post consumes the semaphore: it goes on from there).
    tracker: Mutex<Tracker>,
    /// The command's type, for messages.
    what: &'static str,
    /// What the agent is most likely doing when the completion does not come.
    hint: String,
    /// For `InitPair`: the pair whose match must be recorded once survival is proven.
    pair: Option<String>,
    done: AtomicBool,
}

impl Client {
    pub(crate) fn new(
        agent_rank: i64,
        paths: AgentPaths,
        connection: Connection,
        cuda: Option<CudaBinding>,
        cuda_unbound: String,
        worker_lock: WorkerLock,
        settings: Settings,
    ) -> Client {
        Client {
            agent_rank,
            link: RwLock::new(Arc::new(Link::new(connection, &paths))),
            paths,
            reconnecting: Mutex::new(()),
            stable: ManuallyDrop::new(Stable { cuda, cuda_unbound, _worker_lock: worker_lock }),
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
        let origin = connection::Origin {
            text: format!("reconnect to agent rank {}", self.agent_rank),
            agent_rank: self.agent_rank,
            global_rank: None,
            rank_offset: None,
            default_naming: self.settings.default_naming,
        };
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
        let fresh = Arc::new(Link::new(connection, &self.paths));
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
        self.binding()?.make_current()
    }

    /// `Ok` when the client is bound to a GPU; else `Cuda`, saying why it is not (`Forked` in a
    /// forked child).
    pub fn check_cuda_bound(&self) -> Result<()> {
        self.check_process()?;
        self.binding().map(|_| ())
    }

    /// The client's GPU binding, or why it has none.
    fn binding(&self) -> Result<&CudaBinding> {
        self.stable.cuda.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::Cuda, format!("this client is not bound to a GPU: {}", self.stable.cuda_unbound))
        })
    }

    /// A CUDA tensor payload of memory on the client's device (`payload::cuda_tensor`), made
    /// with the client's context current on the calling thread for the call. Checks the binding
    /// first, then the tensor's fields, then its memory. The payload outlives the client.
    pub fn cuda_tensor_payload(&self, tensor: &CudaTensor<'_>) -> Result<Payload> {
        self.check_process()?;
        let binding = self.binding()?;
        crate::payload::cuda_tensor::make(binding, tensor)
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
    fn issue(&self, command: &Command<'_>, deadline: &Deadline, detached: bool) -> Result<Issued> {
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
            Ok(position) => Ok(Issued { sem, link: link.clone(), position }),
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

    /// Issues `command` and waits for its completion and for proof that the agent survived it,
    /// all within `timeout`.
    fn call(&self, command: &Command<'_>, timeout: Timeout) -> Result<()> {
        let deadline = timeout.start();
        let issued = self.issue(command, &deadline, false)?;
        let sem = issued.sem.as_ref().expect("a completion was asked for");
        let mut tracker = Tracker::new(issued.position);
        wait_posted(sem, &issued.link, &mut tracker, &deadline, command.type_name(), &busy_hint(command), &|| false)?;
        issued.link.prove_survival(&tracker, &deadline, command.type_name(), sem.name(), &|| false)
    }

    /// `InitPair`: succeeds only if the agent survives it and records the pair as matched. The
    /// payloads, when given, must look like pickles (`InvalidArgument` otherwise, nothing enqueued).
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
        let command = init_pair_command(
            pair_name,
            local_name,
            remote_name,
            expected_world_size,
            mesh_shape_payload,
            placements_payload,
        )?;
        self.call(&command, timeout)?;
        check_pair_matched(&self.link(), pair_name)
    }

    /// `InitPair` without waiting: `timeout` bounds only the wait for queue space. The completion
    /// reports done only once the agent survived the command and recorded the pair as matched
    /// (`PairNotMatched` when it survived without matching).
    #[allow(clippy::too_many_arguments)]
    pub fn init_pair_async(
        &self,
        pair_name: &str,
        local_name: &str,
        remote_name: &str,
        expected_world_size: i64,
        mesh_shape_payload: Option<&[u8]>,
        placements_payload: Option<&[u8]>,
        timeout: Timeout,
    ) -> Result<Completion> {
        let command = init_pair_command(
            pair_name,
            local_name,
            remote_name,
            expected_world_size,
            mesh_shape_payload,
            placements_payload,
        )?;
        self.issue_async(&command, timeout, Some(pair_name.to_string()))
    }

    /// `RegisterTensors`, always blocking. `tensors` are `(pair_name, payload)`; every payload must
    /// look like a pickle (`InvalidArgument` otherwise, nothing enqueued).
    pub fn register_tensors(
        &self,
        batch_id: &str,
        tensors: &[(&str, &[u8])],
        bucket_size: Option<i64>,
        timeout: Timeout,
    ) -> Result<()> {
        for (i, (pair, bytes)) in tensors.iter().enumerate() {
            check_pickle(&format!("RegisterTensors payload {i} (pair {pair:?})"), bytes)?;
        }
        for (i, (pair, bytes)) in tensors.iter().enumerate() {
            warn_if_not_shared(&format!("RegisterTensors payload {i} (pair {pair:?})"), bytes);
        }
        self.call(&Command::RegisterTensors { batch_id, tensors: tensors.to_vec(), bucket_size }, timeout)
    }

    /// `Transfer`, blocking until the agent acknowledges it.
    pub fn transfer(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<()> {
        self.call(&Command::Transfer { batch_id, transfer_type: kind }, timeout)
    }

    /// `Transfer` without waiting: `timeout` bounds only the wait for queue space.
    pub fn transfer_async(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<Completion> {
        self.issue_async(&Command::Transfer { batch_id, transfer_type: kind }, timeout, None)
    }

    /// `CleanupBatch` without waiting: `timeout` bounds only the wait for queue space.
    pub fn cleanup_batch_async(&self, batch_id: &str, timeout: Timeout) -> Result<Completion> {
        self.issue_async(&Command::CleanupBatch { batch_id }, timeout, None)
    }

    /// `QueryStatus` for the transfer signal, without waiting: the agent records the signal
    /// later; [`Client::read_transfer_signal`] reads what the state holds at any time.
    pub fn query_transfer_signal_async(&self, batch_id: &str, timeout: Timeout) -> Result<Completion> {
        self.issue_async(&Command::QueryStatus { batch_id, state_name: TRANSFER_SIGNAL }, timeout, None)
    }

    /// The transfer signal the state holds now for `batch_id` (absent reads as false, as the
    /// reference's non-blocking query returns): no command is sent.
    pub fn read_transfer_signal(&self, batch_id: &str) -> Result<bool> {
        self.check_process()?;
        match self.link().state.transfer_signal(batch_id).map_err(|e| e.at(&self.paths.state))? {
            Ok(signal) => Ok(signal),
            Err(other) => Err(Error::new(
                ErrorKind::Lmdb,
                format!("{} holds {other:02x?}, not a MessagePack bool", transfer_signal_key(batch_id)),
            )),
        }
    }

    /// Enqueues `command` with a completion to wait on or poll later.
    fn issue_async(&self, command: &Command<'_>, timeout: Timeout, pair: Option<String>) -> Result<Completion> {
        let deadline = timeout.start();
        let issued = self.issue(command, &deadline, false)?;
        Ok(Completion {
            sem: issued.sem.expect("asked for"),
            shared: issued.link.shared.clone(),
            link: Arc::downgrade(&issued.link),
            tracker: Mutex::new(Tracker::new(issued.position)),
            done: AtomicBool::new(false),
            what: command.type_name(),
            hint: busy_hint(command),
            pair,
        })
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

/// Checks `InitPair`'s arguments and builds the command.
fn init_pair_command<'a>(
    pair_name: &'a str,
    local_name: &'a str,
    remote_name: &'a str,
    expected_world_size: i64,
    mesh_shape_payload: Option<&'a [u8]>,
    placements_payload: Option<&'a [u8]>,
) -> Result<Command<'a>> {
    if expected_world_size < 1 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("expected_world_size is {expected_world_size}; it must be >= 1"),
        ));
    }
    for (name, payload) in [("mesh_shape_payload", mesh_shape_payload), ("placements_payload", placements_payload)] {
        if let Some(bytes) = payload {
            check_pickle(&format!("InitPair {name}"), bytes)?;
        }
    }
    Ok(Command::InitPair {
        pair_name,
        local_name,
        expected_world_size,
        remote_name,
        mesh_shape_payload,
        placements_payload,
    })
}

/// After a proven `InitPair`: the pair must be recorded as matched.
fn check_pair_matched(link: &Link, pair_name: &str) -> Result<()> {
    match link.state.pair_match(pair_name).map_err(|e| e.at(&link.paths.state))? {
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

/// What `issue` enqueued: the completion semaphore (unless detached), the link it went to, and
/// its logical position in the queue.
struct Issued {
    sem: Option<CompletionSemaphore>,
    link: Arc<Link>,
    position: u64,
}

/// How long the wait for a post first spins (yielding the CPU between looks) on the queue's head
/// and the semaphore: long enough to see a quick command dequeued before it is posted, so that
/// the heartbeat the agent writes after it proves it at once. Then timed waits in slices from
/// [`POST_FIRST_SLICE`], doubling up to [`POST_MAX_SLICE`], look again between slices.
const POST_SPIN: Duration = Duration::from_micros(300);
const POST_FIRST_SLICE: Duration = Duration::from_micros(50);
const POST_MAX_SLICE: Duration = Duration::from_millis(10);

/// Waits until the agent posts a completion (which alone proves nothing: the agent posts also
/// when the command failed, then ends), noting in `tracker` what the proof needs. `closed` ends
/// the wait early with `Closed`.
fn wait_posted(
    sem: &CompletionSemaphore,
    link: &Link,
    tracker: &mut Tracker,
    deadline: &Deadline,
    what: &str,
    hint: &str,
    closed: &dyn Fn() -> bool,
) -> Result<()> {
    let shared = &link.shared;
    let spin_until = std::time::Instant::now() + POST_SPIN;
    while tracker.during.is_none() && std::time::Instant::now() < spin_until && !deadline.expired() {
        link.observe_dequeue(tracker);
        match sem.semaphore().try_wait() {
            Ok(true) => {
                link.observe_post(tracker);
                return Ok(());
            }
            Ok(false) => std::thread::yield_now(),
            Err(e) => return Err(crate::protocol::completion::ipc_error(sem.name(), e)),
        }
    }
    let mut slice = POST_FIRST_SLICE;
    loop {
        let step = if tracker.during.is_some() { *deadline } else { deadline.capped(slice) };
        match sem.semaphore().wait(&step, &|| closed() || shared.agent_dead()) {
            Ok(()) => {
                link.observe_post(tracker);
                return Ok(());
            }
            Err(WaitError::TimedOut) if !deadline.expired() => {
                link.observe_dequeue(tracker);
                slice = (slice * 2).min(POST_MAX_SLICE);
            }
            Err(WaitError::TimedOut) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what}: no completion from the agent within {:.3}s (semaphore {}); {hint}",
                        deadline.elapsed_secs(),
                        sem.name(),
                    ),
                ))
            }
            Err(WaitError::GaveUp) if closed() => return Err(closed_error(sem.name())),
            Err(WaitError::GaveUp) => return Err(shared.died_error(what)),
            Err(WaitError::Sem(e)) => return Err(crate::protocol::completion::ipc_error(sem.name(), e)),
        }
    }
}

/// What the agent is most likely doing when a command's completion does not come.
fn busy_hint(command: &Command<'_>) -> String {
    match command {
        Command::InitPair { pair_name, local_name, remote_name, expected_world_size, .. } => format!(
            "the agent is waiting for the peers of pair {pair_name:?} (local {local_name:?}, remote {remote_name:?}, \
             expected world size {expected_world_size}): the other job must call init_pair with the same pair name"
        ),
        _ => "the agent may be busy with an earlier command (it does not beat its heartbeat meanwhile)".to_string(),
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

    /// The link it was issued on, while its client still uses it; else why not.
    fn link(&self) -> Result<Arc<Link>> {
        match self.link.upgrade() {
            Some(link) => Ok(link),
            None if self.shared.closed.load(Ordering::Acquire) => Err(closed_error(self.sem.name())),
            None => Err(self.shared.died_error(self.what)),
        }
    }

    /// The command's type (`Transfer`, `InitPair`, ...).
    pub fn command(&self) -> &'static str {
        self.what
    }

    /// Once survival is proven: for `InitPair`, the recorded match.
    fn finish(&self, link: &Link) -> Result<()> {
        match &self.pair {
            Some(pair) => check_pair_matched(link, pair),
            None => Ok(()),
        }
    }

    /// Waits until the agent acknowledges the command and is seen to survive it, or `timeout`
    /// (then `Timeout`, saying whether the post was seen).
    pub fn wait(&self, timeout: Timeout) -> Result<()> {
        self.usable()?;
        if self.done.load(Ordering::Acquire) {
            return Ok(());
        }
        let deadline = timeout.start();
        let closed = || self.shared.closed.load(Ordering::Acquire);
        let link = self.link()?;
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        if tracker.after.is_none() {
            wait_posted(&self.sem, &link, &mut tracker, &deadline, self.what, &self.hint, &closed)?;
        }
        link.prove_survival(&tracker, &deadline, self.what, self.sem.name(), &closed)?;
        self.finish(&link)?;
        self.done.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the agent has acknowledged the command and was seen to survive it; never blocks.
    /// `AgentDied` when it was seen dead first (also after posting: it posts failed commands
    /// too, then ends).
    pub fn poll(&self) -> Result<bool> {
        self.usable()?;
        if self.done.load(Ordering::Acquire) {
            return Ok(true);
        }
        let link = self.link()?;
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        if tracker.after.is_none() {
            link.observe_dequeue(&mut tracker);
            match self.sem.semaphore().try_wait() {
                Ok(true) => link.observe_post(&mut tracker),
                Ok(false) if self.shared.agent_dead() => return Err(self.shared.died_error(self.what)),
                Ok(false) => return Ok(false),
                Err(e) => return Err(crate::protocol::completion::ipc_error(self.sem.name(), e)),
            }
        }
        match link.survival(&tracker) {
            Some(Seen::Dead) => Err(self.shared.died_error(&format!("{} was acknowledged, but", self.what))),
            Some(_) => {
                self.finish(&link)?;
                self.done.store(true, Ordering::Release);
                Ok(true)
            }
            None => Ok(false),
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
    fn new(connection: Connection, paths: &AgentPaths) -> Link {
        let shared = Arc::new(Shared {
            watch: AgentWatch::new(connection.agent.pid()),
            died: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            owner_pid: std::process::id(),
        });
        Link { state: connection.state, queue: connection.queue, shared, paths: paths.clone() }
    }
}
