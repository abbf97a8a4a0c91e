//! `bootstrap_client`: from the environment to an attached client (PROTOCOL.md sections 1-3).
//!
//! 1. Resolve the agent rank (`rank`), then the two paths (`naming`).
//! 2. Within one deadline: wait for the state LMDB, open it read-only, wait for a fresh
//!    heartbeat; then attach to the command queue as a follower. Polls every millisecond (the
//!    reference polls every 100 ms), so a worker started before its agent connects within a few
//!    ms of the first heartbeat.
//! 3. Authorize the agent (only its pid, when known) to ptrace this process.
//! 4. Bind this thread to `cuda:{LOCAL_RANK}`'s primary context, as the CUDA mode says.

use std::path::Path;
use std::time::Duration;

use crate::agent_process::{has_open_for_writing, lock_holders, pick_agent, Holders};
use crate::client::{Client, Settings};
use crate::command_queue::{AttachError, CommandQueue};
use crate::cuda::{self, CudaMode, CudaReport};
use crate::error::{Error, ErrorKind, Result};
use crate::lmdb::lock_path;
use crate::lmdb_registry::FileId;
use crate::naming::AgentPaths;
use crate::ptrace::{self, Tracer};
use crate::rank::{self, EnvSource, Method, RankInfo};
use crate::state_db::{StateDb, StateError, HEARTBEAT_FRESH_SECS};
use crate::timeout::{Deadline, Timeout};
use crate::trust::TrustPolicy;

thread_local! {
    /// Why the last `connect` on this thread could not identify the agent (for the ANY warning).
    static UNIDENTIFIED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// How often the waits poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// The reference's default connection timeout, in seconds.
pub const DEFAULT_CONNECTION_TIMEOUT_SECS: f64 = 30.0;

/// A path naming function: agent rank to paths.
pub type PathNaming<'a> = &'a mut dyn FnMut(i64) -> Result<AgentPaths>;

/// What `bootstrap_client` needs.
pub struct BootstrapOptions<'a> {
    /// `None`: the default names (`naming::AgentPaths::default_for_rank`).
    pub path_naming: Option<PathNaming<'a>>,
    pub connection_timeout: Timeout,
    pub env: &'a dyn EnvSource,
    /// Whether to bind the worker to its GPU (`cuda:{LOCAL_RANK}`'s primary context).
    pub cuda_mode: CudaMode,
    /// Whom to let ptrace this worker.
    pub ptrace_mode: PtraceMode,
    /// What is trusted beyond files of our own user, not writable by others.
    pub trust: TrustPolicy,
    /// Whether other workers may attach to the same agent (all of them must allow it).
    pub share_agent: bool,
}

/// Whom bootstrap lets ptrace this worker (the agent takes CUDA memory out of it with
/// `pidfd_getfd`, which Yama `ptrace_scope=1` allows only to an authorized tracer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PtraceMode {
    /// Exactly the agent process identified at bootstrap (it and its descendants); every process
    /// (ANY), with a warning saying why, when it cannot be identified.
    #[default]
    Agent,
    /// Every process of this user (`PR_SET_PTRACER_ANY`), as the reference does.
    Any,
    /// Nothing: the caller takes care of it.
    None,
}

/// What bootstrap found out, as the reference's `BootstrapInfo` plus the agent's pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapInfo {
    pub agent_rank: i64,
    pub global_rank: i64,
    pub rank_offset: Option<i64>,
    pub local_rank: i32,
    pub device: String,
    pub paths: AgentPaths,
    pub method: Method,
    pub agent_pid: Option<i32>,
    /// The CUDA driver's version and, when bound, the device's identity.
    pub cuda: CudaReport,
}

/// How the rank was found, for error messages.
fn rank_origin(r: &RankInfo) -> String {
    match r.method {
        Method::Direct => format!("agent rank {} from AGENT_RANK", r.agent_rank),
        Method::Offset => format!(
            "agent rank {} = RANK {} + AGENT_RANK_OFFSET {}",
            r.agent_rank,
            r.global_rank,
            r.rank_offset.unwrap_or(0)
        ),
    }
}

/// Runs the whole bootstrap.
pub fn bootstrap_client(options: BootstrapOptions<'_>) -> Result<(Client, BootstrapInfo)> {
    let ranks = rank::resolve(options.env)?;
    let paths = match options.path_naming {
        Some(naming) => naming(ranks.agent_rank)?,
        None => AgentPaths::default_for_rank(ranks.agent_rank),
    }
    .validate()?;
    let deadline = options.connection_timeout.start();
    let origin = rank_origin(&ranks);

    let trust = options.trust;
    let (state, queue, agent_pid) = connect(&paths, trust, &deadline, &origin)?;
    let worker_lock = crate::worker_lock::acquire(&paths.state, options.share_agent, trust)?;
    authorize_agent(agent_pid, options.ptrace_mode);
    // Only once the agent is validated: a missing agent never costs a CUDA initialization.
    let (cuda_binding, cuda) = cuda::bind(ranks.local_rank, options.cuda_mode)?;

    let info = BootstrapInfo {
        agent_rank: ranks.agent_rank,
        global_rank: ranks.global_rank,
        rank_offset: ranks.rank_offset,
        local_rank: ranks.local_rank,
        device: ranks.device(),
        paths: paths.clone(),
        method: ranks.method,
        agent_pid,
        cuda,
    };
    log::info!(
        "bootstrapped: {origin}, state {}, queue {}, agent pid {agent_pid:?}, {:.3} ms",
        paths.state.display(),
        paths.command_queue.display(),
        deadline.elapsed_secs() * 1e3
    );
    let settings = Settings { trust, ptrace_mode: options.ptrace_mode };
    Ok((Client::new(ranks.agent_rank, paths, state, queue, agent_pid, cuda_binding, worker_lock, settings), info))
}

/// Validates the agent (state, fresh heartbeat, queue, process) within `deadline`: the part of
/// bootstrap that `Client::reconnect` repeats for a new agent.
pub(crate) fn connect(
    paths: &AgentPaths,
    trust: TrustPolicy,
    deadline: &Deadline,
    origin: &str,
) -> Result<(StateDb, CommandQueue, Option<i32>)> {
    let state = wait_for_state(&paths.state, trust, deadline, origin)?;
    log::trace!("state ready after {:.3} ms", deadline.elapsed_secs() * 1e3);
    let queue = wait_for_queue(&paths.command_queue, state.file_id(), trust, deadline, origin)?;
    log::trace!("queue attached after {:.3} ms", deadline.elapsed_secs() * 1e3);
    let agent_pid = match identify_agent(&state, &paths.state) {
        Ok(pid) => {
            crate::trust::check_agent_process(pid)?;
            Some(pid)
        }
        Err(why) => {
            log::debug!("agent process not identified: {why}");
            UNIDENTIFIED.with(|u| *u.borrow_mut() = why);
            None
        }
    };
    Ok((state, queue, agent_pid))
}

fn wait_for_state(path: &Path, trust: TrustPolicy, deadline: &Deadline, origin: &str) -> Result<StateDb> {
    let mut state: Option<StateDb> = None;
    loop {
        let attempt = match &state {
            Some(s) => s.fresh_heartbeat_age().map(|_| ()),
            None => StateDb::open(path, trust).and_then(|s| {
                let r = s.fresh_heartbeat_age().map(|_| ());
                state = Some(s);
                r
            }),
        };
        let last = match attempt {
            Ok(()) => return Ok(state.expect("set when the heartbeat was read")),
            Err(e) => e,
        };
        log::trace!("state not ready: {last:?}");
        let permanent = match &last {
            StateError::Lmdb(e) => e.is_permanent(),
            StateError::Missing(kind) => *kind == std::io::ErrorKind::PermissionDenied,
            StateError::Permission(_) => true,
            _ => false,
        };
        if permanent {
            return Err(state_error(path, last, deadline.elapsed_secs(), origin));
        }
        // A restarted agent replaces its files: follow the new one.
        if let Some(s) = &state {
            if FileId::of_path(path).ok() != Some(s.file_id()) {
                state = None;
            }
        }
        if !deadline.sleep_step(POLL_INTERVAL) {
            return Err(state_error(path, last, deadline.elapsed_secs(), origin));
        }
    }
}

fn state_error(path: &Path, last: StateError, secs: f64, origin: &str) -> Error {
    let p = path.display();
    let hint = format!("Check AGENT_RANK, or RANK and AGENT_RANK_OFFSET ({origin}).");
    match last {
        StateError::Missing(std::io::ErrorKind::PermissionDenied) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent state LMDB at {p} cannot be reached: permission denied on the path. {hint}"),
        ),
        StateError::Missing(_) => Error::new(
            ErrorKind::AgentNotFound,
            format!("Agent LMDB not found at {p} after {secs:.3}s. Please ensure the agent process is running. {hint}"),
        ),
        StateError::Lmdb(e) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent state LMDB at {p} could not be read after {secs:.3}s: {}. {hint}", e.text()),
        ),
        StateError::NotLmdb(why) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent state LMDB at {p} is still not a usable LMDB file after {secs:.3}s: {why}. {hint}"),
        ),
        StateError::Permission(why) => Error::new(ErrorKind::Permission, why),
        other => {
            let why = match other {
                StateError::NoDatabase => "The state LMDB has no 'pair_state' database yet".to_string(),
                StateError::NoHeartbeat => "Heartbeat is missing".to_string(),
                StateError::BadHeartbeat(v) => format!("Heartbeat {v:?} is not a finite number of seconds"),
                StateError::Stale(age) if age < 0.0 => {
                    format!("Heartbeat lies {:.3}s in the future", -age)
                }
                StateError::Stale(age) => {
                    format!("Heartbeat is too old ({age:.3}s; fresh means under {HEARTBEAT_FRESH_SECS}s)")
                }
                StateError::Missing(_) | StateError::Lmdb(_) | StateError::NotLmdb(_) | StateError::Permission(_) => {
                    unreachable!("handled above")
                }
            };
            Error::new(
                ErrorKind::AgentNotResponding,
                format!("Agent at {p} is not responding after {secs:.3}s. {why}. Agent may have crashed or be stalled. {hint}"),
            )
        }
    }
}

fn wait_for_queue(path: &Path, state_id: FileId, trust: TrustPolicy, deadline: &Deadline, origin: &str) -> Result<CommandQueue> {
    loop {
        let last = match CommandQueue::attach(path, Some(state_id), trust) {
            Ok(q) => return Ok(q),
            Err(e) => e,
        };
        let permanent = match &last {
            AttachError::Semaphore(..) | AttachError::SameFileAsState | AttachError::Permission(_) => true,
            AttachError::Lmdb(e) => e.is_permanent(),
            AttachError::MissingSemaphores(_) | AttachError::MissingFile | AttachError::NotLmdb(_) => false,
        };
        if permanent || !deadline.sleep_step(POLL_INTERVAL) {
            return Err(queue_error(path, last, deadline.elapsed_secs(), origin));
        }
    }
}

fn queue_error(path: &Path, last: AttachError, secs: f64, origin: &str) -> Error {
    let p = path.display();
    let tail = format!(
        "The agent creates its queue before its state, so it may have crashed, or it uses another queue path ({origin})."
    );
    match last {
        AttachError::Permission(why) => Error::new(ErrorKind::Permission, why),
        AttachError::NotLmdb(why) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent command queue at {p} is still not a usable LMDB file after {secs:.3}s: {why}"),
        ),
        AttachError::SameFileAsState => Error::new(
            ErrorKind::Naming,
            format!("the command queue path {p} is the state LMDB itself (same file)"),
        ),
        AttachError::MissingSemaphores(names) => Error::new(
            ErrorKind::AgentNotFound,
            format!("Agent command queue at {p} is not ready after {secs:.3}s: semaphore {} missing. {tail}", names.join(" and ")),
        ),
        AttachError::MissingFile => Error::new(
            ErrorKind::AgentNotFound,
            format!("Agent command queue LMDB not found at {p} after {secs:.3}s. {tail}"),
        ),
        AttachError::Semaphore(name, e) if e.errno == libc::ENAMETOOLONG => Error::new(
            ErrorKind::Naming,
            format!(
                "the command queue path {p} gives semaphore name {name:?}, longer than the {} bytes POSIX allows: \
                 use a shorter file name (the semaphores are named after the file's stem)",
                crate::semaphore::MAX_NAME_LEN
            ),
        ),
        AttachError::Semaphore(name, e) => Error::new(
            ErrorKind::Ipc,
            format!("Agent command queue semaphore {name} could not be opened: {}", e.text()),
        ),
        AttachError::Lmdb(e) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent command queue LMDB at {p} could not be opened after {secs:.3}s: {}", e.text()),
        ),
    }
}

/// The agent's pid: the other process holding LMDB's lock on the state LMDB's lock file that has
/// the state file open for writing (workers, sharing peers among them, open it read-only). A
/// holder that cannot be verified so (another pid namespace, /proc hidden) leaves the agent
/// unidentified: `Err` says why.
fn identify_agent(state: &StateDb, path: &Path) -> std::result::Result<i32, String> {
    // Fast path: the holder F_GETLK names (on the descriptor kept open since before our own
    // open, so our own locks are never dropped), if it has the state file open for writing.
    let candidate = state.lock_holder();
    if let Some(pid) = candidate {
        let id = state.file_id();
        if has_open_for_writing(pid, id.dev, id.ino) {
            return Ok(pid);
        }
    }
    // Slow path (reading /proc/locks costs the kernel an RCU grace period: milliseconds).
    match lock_holders(&lock_path(path)) {
        Holders::Unavailable => Err(format!("/proc/locks is unreadable and lock holder {candidate:?} could not be verified")),
        Holders::Pids(pids) => pick_agent(&pids, path).map_err(|n| match n {
            0 => "no other process holds the state LMDB's lock in this pid namespace (an agent in another \
                  container, or one that does not use the lock file)"
                .to_string(),
            n => format!("none, or more than one, of the {n} holders of the state LMDB's lock has the state file open for writing ({pids:?})"),
        }),
    }
}

/// Lets the agent (only it, when known) ptrace this process; failures are logged, not returned.
pub(crate) fn authorize_agent(agent_pid: Option<i32>, mode: PtraceMode) {
    let tracer = match (mode, agent_pid) {
        (PtraceMode::None, _) => return,
        (PtraceMode::Any, _) => Tracer::Any,
        (PtraceMode::Agent, Some(pid)) => Tracer::Pid(pid),
        (PtraceMode::Agent, None) => {
            let why = UNIDENTIFIED.with(|u| u.borrow().clone());
            log::warn!(
                "the agent's process could not be identified ({why}): authorizing every process to \
                 ptrace this worker (PR_SET_PTRACER_ANY); use ETB_PTRACE_NONE and etb_setup_ptrace_pid to choose"
            );
            Tracer::Any
        }
    };
    if let Err(e) = ptrace::grant(tracer, Path::new(ptrace::YAMA_DIR)) {
        log::warn!("{e}; the agent may fail to import CUDA memory shared by this worker");
    }
}
