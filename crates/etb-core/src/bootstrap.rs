//! `bootstrap_client`: from the environment to an attached client (docs/protocol.md sections 1-3),
//! running the one list of bootstrap steps (`connection::steps::STEPS`) in its order:
//!
//! 1. `environment`, `paths`: resolve the agent rank (`rank`), then the two paths (`naming`).
//! 2. `state_file`, `trust`, `heartbeat`, `queue` ([`connection::connect`]): within one
//!    deadline, the agent's files trusted, a fresh heartbeat in the state LMDB, the command queue
//!    attached as a follower, the agent's process identified.
//! 3. `worker_lock`, `ptrace`: take the worker lock, then authorize the agent (only its pid, when
//!    known) to ptrace this process.
//! 4. `cuda`: bind this thread to its device's primary context, as the CUDA mode says: the
//!    options' `device_index` when chosen, else `cuda:{LOCAL_RANK}` (bootstrap) or `cuda:0`
//!    (a connect with explicit paths).

use crate::client::Client;
use crate::connection::steps::{Step, Trail};
use crate::connection::{self, Settings};
use crate::cuda::{self, CudaMode, CudaReport, Device, DeviceSource};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::naming::{AgentPaths, NamingTemplate};
use crate::protocol::rank::{self, EnvSource, Method, RankInfo};
use crate::sys::trust::TrustPolicy;
use crate::sys::worker_lock;
use crate::timeout::Timeout;

pub use crate::connection::PtraceMode;

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
    /// Whether to bind the worker to its GPU (its device's primary context).
    pub cuda_mode: CudaMode,
    /// The CUDA device this client binds and makes its payloads on, as the driver numbers devices
    /// (so `CUDA_VISIBLE_DEVICES` applies), >= 0. `None`: `cuda:{LOCAL_RANK}` for
    /// [`bootstrap_client`], `cuda:0` for [`connect_client`]. A process that drives several GPUs
    /// makes one client per local agent, each with its own device. Chosen and past the driver's
    /// device count: a `Cuda` error in every mode but `Skip` (which binds nothing).
    pub device_index: Option<i32>,
    /// Whom to let ptrace this worker.
    pub ptrace_mode: PtraceMode,
    /// What is trusted beyond files of our own user, not writable by others.
    pub trust: TrustPolicy,
    /// Whether other workers may attach to the same agent (all of them must allow it).
    pub share_agent: bool,
}

/// What bootstrap found out, as the reference's `BootstrapInfo` plus the agent's pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapInfo {
    pub agent_rank: i64,
    pub global_rank: i64,
    pub rank_offset: Option<i64>,
    /// `LOCAL_RANK` (0 when unset, and for a connect with explicit paths).
    pub local_rank: i32,
    /// `cuda:{device_index}`.
    pub device: String,
    /// The client's device: the options' `device_index` when chosen, else `LOCAL_RANK`
    /// (bootstrap) or 0 (connect); reported also when the client is not bound (see `cuda`).
    pub device_index: i32,
    pub paths: AgentPaths,
    pub method: Method,
    pub agent_pid: Option<i32>,
    /// The CUDA driver's version and, when bound, the device's identity.
    pub cuda: CudaReport,
    /// The bootstrap steps passed, in order (all of `connection::steps::STEPS` on success).
    pub steps: Vec<Step>,
}

/// How the rank and the paths were found, for error messages.
pub fn rank_origin(r: &RankInfo, template: Option<NamingTemplate>) -> connection::Origin {
    let text = match r.method {
        Method::Direct => format!("agent rank {} from AGENT_RANK", r.agent_rank),
        Method::Offset => format!(
            "agent rank {} = RANK {} + AGENT_RANK_OFFSET {}",
            r.agent_rank,
            r.global_rank,
            r.rank_offset.unwrap_or(0)
        ),
    };
    connection::Origin {
        text,
        agent_rank: r.agent_rank,
        global_rank: (r.method == Method::Offset).then_some(r.global_rank),
        rank_offset: r.rank_offset,
        template,
    }
}

/// A chosen device is an ordinal, >= 0: checked before anything else, so that a bad argument
/// never waits for an agent.
fn check_device_index(device_index: Option<i32>) -> Result<()> {
    match device_index {
        Some(i) if i < 0 => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("device_index is {i}: a CUDA device ordinal is 0 or more (none: the default device)"),
        )),
        _ => Ok(()),
    }
}

/// Runs the whole bootstrap.
pub fn bootstrap_client(mut options: BootstrapOptions<'_>) -> Result<(Client, BootstrapInfo)> {
    check_device_index(options.device_index)?;
    let mut trail = Trail::new();
    let ranks = rank::resolve(options.env)?;
    trail.pass(Step::Environment);
    let template = options.path_naming.is_none().then(NamingTemplate::default);
    let paths = match options.path_naming.as_mut() {
        Some(naming) => naming(ranks.agent_rank)?,
        None => AgentPaths::default_for_rank(ranks.agent_rank),
    }
    .validate()?;
    trail.pass(Step::Paths);
    let origin = rank_origin(&ranks, template);
    attach(&ranks, paths, origin, &options, trail, DeviceSource::LocalRank)
}

/// Connects to agent `agent_rank` at explicit `paths`, reading nothing of the environment (the
/// reference's `TensorBusClient(agent_rank, queue_path, state_path)`): the info's method is
/// direct, its global rank -1, the device `options.device_index`'s (default `cuda:0`).
/// `options.path_naming` and `options.env` are not used.
pub fn connect_client(
    agent_rank: i64,
    paths: AgentPaths,
    options: &BootstrapOptions<'_>,
) -> Result<(Client, BootstrapInfo)> {
    check_device_index(options.device_index)?;
    let mut trail = Trail::new();
    // The environment step: the rank is given, nothing is read.
    let ranks = RankInfo { agent_rank, global_rank: -1, rank_offset: None, local_rank: 0, method: Method::Direct };
    trail.pass(Step::Environment);
    let paths = paths.validate()?;
    trail.pass(Step::Paths);
    let origin = connection::Origin {
        text: format!("agent rank {agent_rank} given with its paths"),
        agent_rank,
        global_rank: None,
        rank_offset: None,
        template: None,
    };
    attach(&ranks, paths, origin, options, trail, DeviceSource::ConnectDefault)
}

/// From resolved ranks and paths to an attached client. `default_device` says where the device
/// comes from when the options choose none (its ordinal is `ranks.local_rank`).
fn attach(
    ranks: &RankInfo,
    paths: AgentPaths,
    origin: connection::Origin,
    options: &BootstrapOptions<'_>,
    mut trail: Trail,
    default_device: DeviceSource,
) -> Result<(Client, BootstrapInfo)> {
    let device = match options.device_index {
        Some(ordinal) => Device { ordinal, source: DeviceSource::Chosen },
        None => Device { ordinal: ranks.local_rank, source: default_device },
    };
    let deadline = options.connection_timeout.start();
    let settings = Settings {
        trust: options.trust,
        ptrace_mode: options.ptrace_mode,
        template: origin.template.clone(),
        share_agent: options.share_agent,
    };
    let connection = connection::connect(&paths, settings.trust, &deadline, &origin, &mut trail, settings.share_agent)?;
    let worker_lock = worker_lock::acquire(&paths.state, options.share_agent, settings.trust)?;
    trail.pass(Step::WorkerLock);
    connection::authorize_agent(&connection.agent, settings.ptrace_mode);
    trail.pass(Step::Ptrace);
    // Only once the agent is validated: a missing agent never costs a CUDA initialization.
    let (cuda_binding, cuda) = cuda::bind(device, options.cuda_mode)?;
    trail.pass(Step::Cuda);
    let unbound = cuda.unbound_reason.clone().unwrap_or_default();

    let info = BootstrapInfo {
        agent_rank: ranks.agent_rank,
        global_rank: ranks.global_rank,
        rank_offset: ranks.rank_offset,
        local_rank: ranks.local_rank,
        device: device.name(),
        device_index: device.ordinal,
        paths: paths.clone(),
        method: ranks.method,
        agent_pid: connection.agent.pid(),
        cuda,
        steps: trail.passed().to_vec(),
    };
    log::info!(
        "bootstrapped: {origin}, state {}, queue {}, agent {}, {} {}, {:.3} ms",
        paths.state.display(),
        paths.command_queue.display(),
        connection.agent,
        info.device,
        if cuda_binding.is_some() { "bound" } else { "not bound" },
        deadline.elapsed_secs() * 1e3
    );
    Ok((Client::new(ranks.agent_rank, paths, connection, cuda_binding, unbound, worker_lock, settings), info))
}
