//! Finding a live agent and letting it in: the part of bootstrap that `Client::reconnect` repeats
//! for a new agent (docs/protocol.md sections 1-3), as the steps `state_file`, `trust`,
//! `heartbeat` and `queue` of the one list of bootstrap steps ([`steps`]).
//!
//! Within one deadline: wait for the state LMDB, check that the agent's files are trusted, open
//! the state read-only and wait for a fresh heartbeat; then attach to the command queue as a
//! follower; then identify the agent's process. Polls every millisecond (the reference polls
//! every 100 ms), so a worker started before its agent connects within a few ms of the first
//! heartbeat. Then [`authorize_agent`] lets the agent (only it, when identified) ptrace this
//! worker. The messages of every way this can fail are built in [`messages`].

mod messages;
pub mod steps;

pub use messages::{queue_error, state_error};
use steps::{Step, Trail};

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::lmdb::lock_path;
use crate::protocol::command_queue::{AttachError, CommandQueue, QueueNames};
use crate::protocol::naming::AgentPaths;
use crate::protocol::state_db::{StateDb, StateError};
use crate::sys::process::{has_open_for_writing, lock_holders, pick_agent, Holders};
use crate::sys::ptrace::{self, Tracer};
use crate::sys::registry::FileId;
use crate::sys::trust::{self, check_file, check_semaphore, Distrust, TrustPolicy};
use crate::timeout::Deadline;

/// How often the waits poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1);

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

/// Who the agent is, as far as this process can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentIdentity {
    /// The verified writer of the state file.
    Pid(i32),
    /// Not identified, and why (another pid namespace, /proc hidden, several candidates).
    Unknown(String),
}

impl AgentIdentity {
    /// The pid, when identified.
    pub fn pid(&self) -> Option<i32> {
        match self {
            AgentIdentity::Pid(p) => Some(*p),
            AgentIdentity::Unknown(_) => None,
        }
    }
}

/// For messages and log lines: "pid 1234" or "pid unknown (why)".
impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentIdentity::Pid(p) => write!(f, "pid {p}"),
            AgentIdentity::Unknown(why) => write!(f, "pid unknown ({why})"),
        }
    }
}

/// A validated agent: its state LMDB (fresh heartbeat), its attached command queue, its identity.
pub struct Connection {
    pub state: StateDb,
    pub queue: CommandQueue,
    pub agent: AgentIdentity,
}

/// How a client authorizes and trusts an agent, at bootstrap and again at every reconnect.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub trust: TrustPolicy,
    pub ptrace_mode: PtraceMode,
    /// The paths follow the default naming (for messages: other agents can be listed then).
    pub default_naming: bool,
}

/// How the agent's paths were found, for messages.
#[derive(Debug, Clone)]
pub struct Origin {
    /// In words, e.g. "agent rank 3 = RANK 3 + AGENT_RANK_OFFSET 0".
    pub text: String,
    pub agent_rank: i64,
    /// `RANK`, when the agent rank is `RANK + AGENT_RANK_OFFSET`.
    pub global_rank: Option<i64>,
    pub rank_offset: Option<i64>,
    /// The default naming (`/tmp/agent_rank{N}_*`), not a naming callback.
    pub default_naming: bool,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Validates the agent within `deadline`, running the steps `state_file`, `trust`, `heartbeat`
/// and `queue` (and recording each in `trail`).
pub fn connect(
    paths: &AgentPaths,
    trust: TrustPolicy,
    deadline: &Deadline,
    origin: &Origin,
    trail: &mut Trail,
) -> Result<Connection> {
    wait_for_state_file(&paths.state, trust, deadline, origin)?;
    trail.pass(Step::StateFile);
    check_agent_files(paths, trust)?;
    trail.pass(Step::Trust);
    let state = wait_for_state(&paths.state, trust, deadline, origin)?;
    trail.pass(Step::Heartbeat);
    let queue = wait_for_queue(&paths.command_queue, state.file_id(), trust, deadline, origin)?;
    let agent = match identify_agent(&state, &paths.state) {
        Ok(pid) => {
            trust::check_agent_process(pid)?;
            AgentIdentity::Pid(pid)
        }
        Err(why) => {
            log::debug!("agent process not identified: {why}");
            AgentIdentity::Unknown(why)
        }
    };
    trail.pass(Step::Queue);
    Ok(Connection { state, queue, agent })
}

/// Step `state_file`: waits until the state LMDB exists (anything at the path: what it is, and
/// whether it is trusted, the next steps tell).
fn wait_for_state_file(path: &Path, trust: TrustPolicy, deadline: &Deadline, origin: &Origin) -> Result<()> {
    loop {
        if !matches!(check_file(path, "agent state LMDB", trust), Err(Distrust::Missing)) {
            return Ok(());
        }
        if !deadline.sleep_step(POLL_INTERVAL) {
            let missing = StateError::Missing(std::io::ErrorKind::NotFound);
            return Err(state_error(path, missing, deadline.elapsed_secs(), origin));
        }
    }
}

/// Step `trust`: every file and semaphore of the agent that bootstrap opens belongs to this user
/// (or root, or a group the policy allows) and is not writable by others, and none is a symbolic
/// link; `Permission` otherwise, with the check's own message. What does not exist yet is
/// checked again when it is opened (so is everything: a file may be replaced meanwhile).
pub fn check_agent_files(paths: &AgentPaths, trust: TrustPolicy) -> Result<()> {
    let state_lock = lock_path(&paths.state);
    let queue_lock = lock_path(&paths.command_queue);
    let files: [(&Path, &str); 4] = [
        (&paths.state, "agent state LMDB"),
        (&state_lock, "agent state LMDB lock file"),
        (&paths.command_queue, "agent command queue LMDB"),
        (&queue_lock, "agent command queue lock file"),
    ];
    for (path, what) in files {
        if let Err(Distrust::Permission(m)) = check_file(path, what, trust) {
            return Err(Error::new(ErrorKind::Permission, m));
        }
    }
    let names = QueueNames::for_path(&paths.command_queue);
    for name in [&names.items, &names.space, &names.ready] {
        if let Err(Distrust::Permission(m) | Distrust::NotRegular(m)) = check_semaphore(name, trust) {
            return Err(Error::new(ErrorKind::Permission, m));
        }
    }
    Ok(())
}

fn wait_for_state(path: &Path, trust: TrustPolicy, deadline: &Deadline, origin: &Origin) -> Result<StateDb> {
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
        log::trace!("state not ready: {last}");
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

fn wait_for_queue(
    path: &Path,
    state_id: FileId,
    trust: TrustPolicy,
    deadline: &Deadline,
    origin: &Origin,
) -> Result<CommandQueue> {
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
        Holders::Unavailable => Err(match candidate {
            Some(pid) => format!("/proc/locks is unreadable and the lock holder, pid {pid}, could not be verified"),
            None => "/proc/locks is unreadable and F_GETLK names no lock holder".to_string(),
        }),
        Holders::Pids(pids) => pick_agent(&pids, path).map_err(|n| match n {
            0 => "no other process holds the state LMDB's lock in this pid namespace (an agent in another \
                  container, or one that does not use the lock file)"
                .to_string(),
            n => format!("none, or more than one, of the {n} holders of the state LMDB's lock has the state file open for writing (pids {})", join_pids(&pids)),
        }),
    }
}

/// Whether the process that writes an agent's state file is still there, judged by LMDB's lock
/// on the state's lock file: the one "agent gone, files left" check, for bootstrap's messages
/// and the node tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWriter {
    /// A process holding the lock has the state file open for writing: the agent.
    Alive(i32),
    /// No process of this pid namespace (other than this one) holds the lock with the state
    /// file open for writing: the agent that wrote the files is gone.
    Gone,
    /// `/proc/locks` or the files cannot be read: unknown.
    Unknown,
}

/// Looks for the state file's writer among the holders of its LMDB lock (reads `/proc/locks`:
/// milliseconds, so never on a hot path).
pub fn state_writer(state_path: &Path) -> StateWriter {
    use std::os::unix::fs::MetadataExt;
    let Holders::Pids(pids) = lock_holders(&lock_path(state_path)) else { return StateWriter::Unknown };
    let Ok(meta) = std::fs::metadata(state_path) else { return StateWriter::Unknown };
    match pids.into_iter().find(|&pid| has_open_for_writing(pid, meta.dev(), meta.ino())) {
        Some(pid) => StateWriter::Alive(pid),
        None => StateWriter::Gone,
    }
}

/// Lets the agent (only it, when known) ptrace this process; failures are logged, not returned.
pub fn authorize_agent(agent: &AgentIdentity, mode: PtraceMode) {
    let tracer = match (mode, agent) {
        (PtraceMode::None, _) => return,
        (PtraceMode::Any, _) => Tracer::Any,
        (PtraceMode::Agent, AgentIdentity::Pid(pid)) => Tracer::Pid(*pid),
        (PtraceMode::Agent, AgentIdentity::Unknown(why)) => {
            log::warn!(
                "the agent's process could not be identified ({why}): authorizing every process to \
                 ptrace this worker (PR_SET_PTRACER_ANY); choose the ptrace mode \"none\" and authorize \
                 the agent's pid yourself to avoid that"
            );
            Tracer::Any
        }
    };
    if let Err(e) = ptrace::grant(tracer, Path::new(ptrace::YAMA_DIR)) {
        log::warn!("{e}; the agent may fail to import CUDA memory shared by this worker");
    }
}

fn join_pids(pids: &[i32]) -> String {
    pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
}
