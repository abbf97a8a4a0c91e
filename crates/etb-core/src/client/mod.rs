//! A worker's connection to its agent: the state LMDB (read-only), the command queue, and the
//! five commands of the reference client (docs/protocol.md sections 3-5, 7).
//!
//! One file per concept: this one holds the client's lifecycle (bootstrap hands it a connection,
//! `reconnect` swaps it, `Drop` closes it) and its accessors; `link` what ties it to one agent
//! process; `outcome` the survival proof, `agent_writer` its first signal (the agent's LMDB writer
//! mutex); `commands` the command methods; `completion` a command issued without waiting;
//! `watcher` the one thread per client that resolves watched completions for event loops;
//! `hooks` what the integration tests may look at.
//!
//! Thread-safety: every method takes `&self` and may run on several threads at once (LMDB
//! serializes the queue's write transactions; each call owns its completion semaphore).
//! Fork: a client used in a child process returns `Forked`; dropping it there only forgets it
//! (the bundled LMDB 0.9.21 must not close the parent's environments, nor may the child remove
//! the parent's semaphores).

mod agent_writer;
mod commands;
mod completion;
mod guard;
mod hooks;
mod link;
mod outcome;
mod watcher;

use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

pub use completion::Completion;
pub use hooks::TestHooks;
use link::Link;
pub use link::Proof;

use crate::connection::steps::{Step, Trail};
use crate::connection::{self, Connection, Settings};
use crate::cuda::ipc::StreamHandle;
use crate::cuda::{CuContext, CudaBinding};
use crate::error::{Error, ErrorKind, Result};
use crate::payload::cuda_tensor::CudaTensor;
use crate::payload::dlpack::{self, DLTensor, Managed};
use crate::payload::Payload;
use crate::protocol::naming::AgentPaths;
use crate::protocol::state_db::{unix_now, StateError};
use crate::sys::process::process_alive;
use crate::sys::worker_lock::WorkerLock;
use crate::timeout::Timeout;

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
    settings: Settings,
    /// The watcher of completions handed to it (`Completion::watch`), with the event fd.
    hub: Arc<watcher::Hub>,
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
            link: RwLock::new(Arc::new(Link::new(connection, &paths, !settings.share_agent))),
            paths,
            reconnecting: Mutex::new(()),
            stable: ManuallyDrop::new(Stable { cuda, cuda_unbound, _worker_lock: worker_lock }),
            settings,
            hub: watcher::Hub::new(),
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
        start.shared.check_not_forked()?;
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
            template: self.settings.template.clone(),
        };
        let (old_pid, old_state) = (start.shared.watch.pid(), start.state.file_id());
        // A dead agent's files stay behind with a heartbeat younger than 5 s for a while: a new
        // agent is a live process other than the old one (verified as the state's writer), or,
        // when it cannot be identified, new files.
        let connection = loop {
            let mut trail = Trail::starting_at(Step::StateFile);
            let c = connection::connect(
                &self.paths,
                self.settings.trust,
                &deadline,
                &origin,
                &mut trail,
                self.settings.share_agent,
            )?;
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
        let fresh = Arc::new(Link::new(connection, &self.paths, !self.settings.share_agent));
        let old = std::mem::replace(&mut *self.link.write().unwrap_or_else(|p| p.into_inner()), fresh);
        // The old agent's completions and calls in flight see it dead; its environments close
        // when the last call using them ends.
        old.shared.died.store(true, Ordering::Release);
        drop(old);
        log::info!("reconnected to agent rank {} ({agent})", self.agent_rank);
        Ok(agent.pid())
    }

    /// The client's event fd: readable (level-triggered) while a watched completion
    /// (`Completion::watch`) has its final outcome and its token was not taken yet
    /// ([`Client::take_resolved`]). Starts the client's one watcher thread on first use. The fd
    /// belongs to the client: never close it; it is valid until the client is dropped.
    pub fn event_fd(&self) -> Result<i32> {
        self.link().shared.check_not_forked()?;
        self.hub.event_fd()
    }

    /// Takes up to `max` tokens of watched completions whose outcome is final, oldest first;
    /// the event fd stops being readable once none is left. Never blocks.
    pub fn take_resolved(&self, max: usize) -> Result<Vec<u64>> {
        self.link().shared.check_not_forked()?;
        Ok(self.hub.take_resolved(max))
    }

    /// What the integration tests look at (the queue's positions and slots, the state's
    /// locking): not part of the API, hidden from its documentation.
    #[doc(hidden)]
    pub fn test_hooks(&self) -> TestHooks {
        TestHooks { link: self.link(), paths: self.paths.clone(), hub: self.hub.clone() }
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
        self.check_not_forked()?;
        Ok(self.stable.cuda.as_ref().map(CudaBinding::context))
    }

    /// Makes the client's context current on the calling thread.
    pub fn bind_current_thread(&self) -> Result<()> {
        self.check_not_forked()?;
        self.binding()?.make_current()
    }

    /// `Ok` when the client is bound to a GPU; else `Cuda`, saying why it is not (`Forked` in a
    /// forked child).
    pub fn check_cuda_bound(&self) -> Result<()> {
        self.check_not_forked()?;
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
        self.check_not_forked()?;
        let binding = self.binding()?;
        crate::payload::cuda_tensor::make(binding, tensor)
    }

    /// A CUDA tensor payload of a DLPack managed tensor (`payload::dlpack`): its `DLTensor`
    /// (with `flags`, 0 for a legacy one) is checked against the client's device and converted
    /// into the [`CudaTensor`] of [`Client::cuda_tensor_payload`], which makes the payload; on
    /// success the payload owns `managed`, on failure the caller does (its deleter is not run).
    ///
    /// # Safety
    /// `tensor` is the `DLTensor` of `managed`, whose shape and strides are readable for the call.
    pub unsafe fn dlpack_payload(
        &self,
        managed: Managed,
        tensor: &DLTensor,
        flags: u64,
        wait_on_stream: Option<StreamHandle>,
    ) -> Result<Payload> {
        self.check_not_forked()?;
        let binding = self.binding()?;
        // SAFETY: the caller's contract.
        let d = unsafe { dlpack::describe(tensor, flags, binding.device_ordinal(), wait_on_stream) }?;
        let payload = crate::payload::cuda_tensor::make(binding, &d.tensor)?;
        Ok(payload.own_dlpack(managed, d.read_only))
    }

    /// Seconds since the agent's last heartbeat (however old).
    pub fn heartbeat_age(&self) -> Result<f64> {
        self.check_not_forked()?;
        match self.link().state.heartbeat() {
            Ok(beat) => Ok(unix_now() - beat),
            Err(StateError::Lmdb(e)) => Err(e.at(&self.paths.state)),
            Err(e) => Err(Error::new(
                ErrorKind::AgentNotResponding,
                format!("agent heartbeat in {} unreadable: {e}", self.paths.state.display()),
            )),
        }
    }

    /// `Forked` when used in a child forked after bootstrap (the one fork check, `Shared`'s).
    pub(super) fn check_not_forked(&self) -> Result<()> {
        self.link().shared.check_not_forked()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let link = self.link.get_mut().unwrap_or_else(|p| p.into_inner());
        link.shared.closed.store(true, Ordering::Release);
        if link.shared.in_owner_process() {
            // The watcher's waits end on `closed`; its thread is joined and the event fd closed.
            self.hub.stop();
            // SAFETY: dropped exactly once, here; nothing uses it afterwards.
            unsafe { ManuallyDrop::drop(&mut self.stable) };
        } else {
            // In a forked child the handles are the parent's: forget them (leak the copies). The
            // watcher's thread is the parent's too: never joined nor detached here.
            std::mem::forget(link.clone());
            std::mem::forget(self.hub.clone());
        }
    }
}
