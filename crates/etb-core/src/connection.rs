//! Finding a live agent and letting it in: the part of bootstrap that `Client::reconnect` repeats
//! for a new agent (docs/protocol.md sections 1-3).
//!
//! Within one deadline: wait for the state LMDB, open it read-only, wait for a fresh heartbeat;
//! then attach to the command queue as a follower; then identify the agent's process. Polls
//! every millisecond (the reference polls every 100 ms), so a worker started before its agent
//! connects within a few ms of the first heartbeat. Then [`authorize_agent`] lets the agent (only
//! it, when identified) ptrace this worker.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::lmdb::lock_path;
use crate::protocol::command_queue::{AttachError, CommandQueue};
use crate::protocol::naming::{rank_ranges, AgentPaths, NamingTemplate};
use crate::protocol::state_db::{StateDb, StateError, HEARTBEAT_FRESH_SECS};
use crate::sys::process::{has_open_for_writing, lock_holders, pick_agent, Holders};
use crate::sys::ptrace::{self, Tracer};
use crate::sys::registry::FileId;
use crate::sys::trust::{self, TrustPolicy};
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

/// Validates the agent (state, fresh heartbeat, queue, process) within `deadline`.
pub fn connect(paths: &AgentPaths, trust: TrustPolicy, deadline: &Deadline, origin: &Origin) -> Result<Connection> {
    let state = wait_for_state(&paths.state, trust, deadline, origin)?;
    log::trace!("state ready after {:.3} ms", deadline.elapsed_secs() * 1e3);
    let queue = wait_for_queue(&paths.command_queue, state.file_id(), trust, deadline, origin)?;
    log::trace!("queue attached after {:.3} ms", deadline.elapsed_secs() * 1e3);
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
    Ok(Connection { state, queue, agent })
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

/// The error bootstrap reports when the state LMDB was not ready by its deadline (`last` says why).
pub fn state_error(path: &Path, last: StateError, secs: f64, origin: &Origin) -> Error {
    let p = path.display();
    let hint = format!("Check AGENT_RANK, or RANK and AGENT_RANK_OFFSET ({origin}).");
    match last {
        StateError::Missing(std::io::ErrorKind::PermissionDenied) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent state LMDB at {p} cannot be reached: permission denied on the path. {hint}"),
        ),
        StateError::Missing(_) => Error::new(
            ErrorKind::AgentNotFound,
            format!(
                "Agent LMDB not found at {p} after {secs:.3}s. Please ensure the agent process is running. {hint} {}",
                agents_elsewhere(origin)
            ),
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
                StateError::Stale(age) if state_writer(path) == StateWriter::Gone => {
                    return Error::new(
                        ErrorKind::AgentNotResponding,
                        format!(
                            "Agent at {p} is gone: its heartbeat is too old ({age:.1}s) and no process (in this pid \
                             namespace) holds the state LMDB's lock with the file open for writing, so the agent \
                             that wrote these files has exited and left them behind (waited {secs:.3}s). Start the \
                             agent again (its launch script clears the old files). {hint}"
                        ),
                    );
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

/// The error bootstrap reports when the command queue could not be attached by its deadline.
pub fn queue_error(path: &Path, last: AttachError, secs: f64, origin: &Origin) -> Error {
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
        AttachError::SameFileAsState => {
            Error::new(ErrorKind::Naming, format!("the command queue path {p} is the state LMDB itself (same file)"))
        }
        AttachError::MissingSemaphores(names) => Error::new(
            ErrorKind::AgentNotFound,
            format!(
                "Agent command queue at {p} is not ready after {secs:.3}s: semaphore {} missing. {tail}",
                names.join(" and ")
            ),
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
                crate::sys::semaphore::MAX_NAME_LEN
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

/// Where the other agents of this node are, for a bootstrap that found none at its path: computed
/// once, at the deadline (it lists a folder).
fn agents_elsewhere(origin: &Origin) -> String {
    if !origin.default_naming {
        return "A naming callback chose this path, so the library cannot list the node's other agents: \
                `etb status --state TEMPLATE --queue TEMPLATE` with the job's naming lists them."
            .to_string();
    }
    let template = NamingTemplate::default();
    let found: Vec<i64> = template.scan().into_iter().filter(|&r| r != origin.agent_rank).collect();
    let folder = Path::new(&template.state).parent().map_or_else(String::new, |f| f.display().to_string());
    let Some(&first) = found.first() else {
        return format!("No other agent's state file is in {folder} either.");
    };
    let mut text = format!(
        "No agent for rank {} there; agents found in {folder}: ranks {}",
        origin.agent_rank,
        rank_ranges(&found)
    );
    // A job whose ranks start at 0 and uses the agents from `first` on has that offset.
    if let (Some(global), offset) = (origin.global_rank, origin.rank_offset.unwrap_or(0)) {
        if first != offset && found.contains(&(global + first)) {
            if offset == 0 {
                text.push_str(&format!(": is AGENT_RANK_OFFSET={first} missing?"));
            } else {
                text.push_str(&format!(": is AGENT_RANK_OFFSET={first} meant (it is {offset})?"));
            }
            return text;
        }
    }
    text.push('.');
    text
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
