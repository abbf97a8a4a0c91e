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

pub mod life;
mod messages;
pub mod steps;

pub use life::{agent_life, agent_life_at, AgentLife};
pub use messages::{queue_error, state_error};
use steps::{Step, Trail};

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::lmdb::lock_path;
use crate::protocol::command_queue::{AttachError, CommandQueue, QueueNames};
use crate::protocol::naming::{AgentPaths, NamingTemplate};
use crate::protocol::state_db::{StateDb, StateError};
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
    /// A holder of the state LMDB's lock in another pid namespace (a container): alive, its pid
    /// unknown here.
    Elsewhere,
    /// Not identified, and why (/proc hidden, several candidates, no lock file).
    Unknown(String),
}

impl AgentIdentity {
    /// The pid, when identified.
    pub fn pid(&self) -> Option<i32> {
        match self {
            AgentIdentity::Pid(p) => Some(*p),
            AgentIdentity::Elsewhere | AgentIdentity::Unknown(_) => None,
        }
    }
}

/// For messages and log lines: "pid 1234" or "pid unknown (why)".
impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentIdentity::Pid(p) => write!(f, "pid {p}"),
            AgentIdentity::Elsewhere => f.write_str("pid unknown (in another pid namespace)"),
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
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub trust: TrustPolicy,
    pub ptrace_mode: PtraceMode,
    /// The naming as templates, when the paths follow one (the default naming); `None` for a
    /// naming callback. For messages: the node's other agents can be listed then.
    pub template: Option<NamingTemplate>,
    /// Other workers may attach to the same agent (the client's guard is off then: a peer may
    /// have made the pairs and batches this worker addresses).
    pub share_agent: bool,
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
    /// The naming as templates, when the paths follow one (the default naming, `etb doctor`'s
    /// `--state`/`--queue`); `None` for a naming callback (other agents cannot be listed then).
    pub template: Option<NamingTemplate>,
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
    shared: bool,
) -> Result<Connection> {
    let mut waiting = Waiting { origin, said: false };
    wait_for_state_file(&paths.state, trust, deadline, &mut waiting)?;
    trail.pass(Step::StateFile);
    check_agent_files(paths, trust)?;
    trail.pass(Step::Trust);
    let (state, life) = wait_for_state(&paths.state, trust, deadline, &mut waiting, shared)?;
    trail.pass(Step::Heartbeat);
    let queue = wait_for_queue(&paths.command_queue, state.file_id(), trust, deadline, origin)?;
    let agent = match life {
        AgentLife::Alive(pid) => {
            trust::check_agent_process(pid)?;
            AgentIdentity::Pid(pid)
        }
        AgentLife::Elsewhere => AgentIdentity::Elsewhere,
        AgentLife::NoWriter(pids) => AgentIdentity::Unknown(format!(
            "none of the holders of the state LMDB's lock in this pid namespace (pids {}) has the state file open \
             for writing, and the agent is shared with peers: it may be in another pid namespace",
            pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
        )),
        AgentLife::Gone => unreachable!("wait_for_state returns no gone agent"),
        AgentLife::Unknown(why) => AgentIdentity::Unknown(why),
    };
    if let AgentIdentity::Unknown(why) = &agent {
        log::debug!("agent process not identified: {why}");
    }
    trail.pass(Step::Queue);
    Ok(Connection { state, queue, agent })
}

/// Says once, at info level, that a bootstrap waits for its agent (a missing agent is otherwise
/// silent until the deadline).
struct Waiting<'a> {
    origin: &'a Origin,
    said: bool,
}

impl Waiting<'_> {
    fn note(&mut self, deadline: &Deadline, path: &Path, why: &dyn std::fmt::Display) {
        if std::mem::replace(&mut self.said, true) || deadline.expired() {
            return;
        }
        log::info!(
            "waiting up to {} for the agent ({}) at {}: {why}",
            deadline.remaining().map_or("forever".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.origin,
            path.display()
        );
    }
}

/// Step `state_file`: waits until the state LMDB exists (anything at the path: what it is, and
/// whether it is trusted, the next steps tell).
fn wait_for_state_file(path: &Path, trust: TrustPolicy, deadline: &Deadline, waiting: &mut Waiting<'_>) -> Result<()> {
    loop {
        if !matches!(check_file(path, "agent state LMDB", trust), Err(Distrust::Missing)) {
            return Ok(());
        }
        waiting.note(deadline, path, &"its state file does not exist yet");
        if !deadline.sleep_step(POLL_INTERVAL) {
            let missing = StateError::Missing(std::io::ErrorKind::NotFound);
            return Err(state_error(path, missing, deadline.elapsed_secs(), waiting.origin));
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

/// Step `heartbeat`: opens the state LMDB and waits for a fresh heartbeat written by a live
/// agent: one the lock says is gone (`life`) is waited on as an absent one is (a restarted agent
/// replaces the files), and reported as gone at the deadline, fresh heartbeat or stale.
/// `shared`: the worker shares its agent with peers (see [`AgentLife::gone`]).
fn wait_for_state(
    path: &Path,
    trust: TrustPolicy,
    deadline: &Deadline,
    waiting: &mut Waiting<'_>,
    shared: bool,
) -> Result<(StateDb, AgentLife)> {
    let mut state: Option<StateDb> = None;
    loop {
        let attempt = match &state {
            Some(s) => s.fresh_heartbeat_age(),
            None => StateDb::open(path, trust).and_then(|s| {
                let r = s.fresh_heartbeat_age();
                state = Some(s);
                r
            }),
        };
        let mut last = match attempt {
            Ok(age) => {
                let s = state.as_ref().expect("set when the heartbeat was read");
                let life = agent_life(s, path);
                if !life.gone(shared) {
                    return Ok((state.expect("set when the heartbeat was read"), life));
                }
                StateError::Gone(age)
            }
            Err(e) => e,
        };
        log::trace!("state not ready: {last}");
        let permanent = match &last {
            StateError::Lmdb(e) => e.is_permanent(),
            StateError::Missing(kind) => *kind == std::io::ErrorKind::PermissionDenied,
            StateError::Permission(_) => true,
            _ => false,
        };
        let expired = deadline.expired();
        if let (StateError::Stale(age), Some(s), true) = (&last, &state, permanent || expired) {
            // At the end: a stale heartbeat whose writer is gone is said so.
            if agent_life(s, path).gone(shared) {
                last = StateError::Gone(*age);
            }
        }
        if permanent || expired {
            return Err(state_error(path, last, deadline.elapsed_secs(), waiting.origin));
        }
        waiting.note(deadline, path, &last);
        // A restarted agent replaces its files: follow the new one.
        if let Some(s) = &state {
            if FileId::of_path(path).ok() != Some(s.file_id()) {
                state = None;
            }
        }
        if !deadline.sleep_step(POLL_INTERVAL) {
            continue; // the deadline passed: one more look, then the error above
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

/// Lets the agent (only it, when known) ptrace this process; failures are logged, not returned.
pub fn authorize_agent(agent: &AgentIdentity, mode: PtraceMode) {
    let tracer = match (mode, agent) {
        (PtraceMode::None, _) => return,
        (PtraceMode::Any, _) => Tracer::Any,
        (PtraceMode::Agent, AgentIdentity::Pid(pid)) => Tracer::Pid(*pid),
        (PtraceMode::Agent, AgentIdentity::Elsewhere) => {
            log::warn!(
                "the agent runs in another pid namespace (its pid is not visible here): authorizing every process \
                 to ptrace this worker (PR_SET_PTRACER_ANY); choose the ptrace mode \"none\" and authorize the \
                 agent's pid yourself to avoid that"
            );
            Tracer::Any
        }
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
