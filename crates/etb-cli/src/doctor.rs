//! `etb doctor`: this environment's bootstrap, step by step, without attaching to the queue,
//! taking the worker lock or authorizing anything. Each failing step gives the message
//! bootstrap itself would give (the library's own error builders), so what the doctor says is
//! what the worker will see.
//!
//! Steps: bootstrap's own list (`connection::steps::STEPS`), in its order: `environment`,
//! `paths`, `state_file`, `trust`, `heartbeat`, `queue`, `worker_lock`, then the informational
//! `ptrace` and `cuda` (they never fail the verdict). The first failing step ends the run.

use etb_core::bootstrap::rank_origin;
use etb_core::connection::steps::{Step, STEPS};
use etb_core::connection::{agent_life, check_agent_files, queue_error, state_error, AgentLife, Origin};
use etb_core::protocol::command_queue::{read_positions, AttachError, QueueNames, ReadError};
use etb_core::protocol::naming::{AgentPaths, NamingTemplate};
use etb_core::protocol::rank::{self, ProcessEnv, RankInfo};
use etb_core::protocol::state_db::{StateDb, StateError};
use etb_core::sys::trust::{check_agent_process, check_semaphore, Distrust, TrustPolicy};
use etb_core::sys::worker_lock;
use serde_json::json;

/// One step of the report.
struct Row {
    name: &'static str,
    ok: bool,
    message: String,
}

struct Report {
    rows: Vec<Row>,
    agent_rank: Option<i64>,
}

/// What the steps found so far, for the steps after them.
struct Found<'a> {
    template: &'a NamingTemplate,
    policy: TrustPolicy,
    ranks: Option<RankInfo>,
    origin: Option<Origin>,
    paths: Option<AgentPaths>,
    /// The verdict on the agent's life (bootstrap's own, `connection::life`).
    life: AgentLife,
}

impl Found<'_> {
    // Each step runs only once the steps before it passed: what they found is there.
    fn ranks(&self) -> &RankInfo {
        self.ranks.as_ref().expect("the environment step passed")
    }
    fn origin(&self) -> &Origin {
        self.origin.as_ref().expect("the environment step passed")
    }
    fn paths(&self) -> &AgentPaths {
        self.paths.as_ref().expect("the paths step passed")
    }
}

/// Runs bootstrap's steps (`connection::steps::STEPS`), in its order, without attaching, locking
/// or authorizing anything; false at the first failing one (informational steps never fail).
fn diagnose(report: &mut Report, template: &NamingTemplate) -> bool {
    let mut found = Found {
        template,
        policy: TrustPolicy::default(),
        ranks: None,
        origin: None,
        paths: None,
        life: AgentLife::Unknown("not looked at yet".into()),
    };
    for step in STEPS {
        let outcome = match step {
            Step::Environment => environment(&mut found),
            Step::Paths => paths(&mut found),
            Step::StateFile => state_file(&found),
            Step::Trust => trust(&mut found),
            Step::Heartbeat => heartbeat(&found),
            Step::Queue => queue(&found),
            Step::WorkerLock => worker_lock_step(&found),
            Step::Ptrace => Ok(ptrace(&found)),
            Step::Cuda => Ok(cuda(&found)),
        };
        if step == Step::Environment {
            report.agent_rank = found.ranks.as_ref().map(|r| r.agent_rank);
        }
        match outcome {
            Ok(message) => report.rows.push(Row { name: step.name(), ok: true, message }),
            Err(message) if step.informational() => report.rows.push(Row { name: step.name(), ok: true, message }),
            Err(message) => {
                report.rows.push(Row { name: step.name(), ok: false, message });
                return false;
            }
        }
    }
    true
}

fn environment(found: &mut Found<'_>) -> Result<String, String> {
    let ranks = rank::resolve(&ProcessEnv).map_err(|e| e.message().to_string())?;
    let origin = rank_origin(&ranks, Some(found.template.clone()));
    let message = format!("{origin}; LOCAL_RANK {} (device {})", ranks.local_rank, ranks.device());
    found.ranks = Some(ranks);
    found.origin = Some(origin);
    Ok(message)
}

fn paths(found: &mut Found<'_>) -> Result<String, String> {
    let paths = found.template.paths_for(found.ranks().agent_rank).validate().map_err(|e| e.message().to_string())?;
    let message = format!("state {}, command queue {}", paths.state.display(), paths.command_queue.display());
    found.paths = Some(paths);
    Ok(message)
}

fn state_file(found: &Found<'_>) -> Result<String, String> {
    let paths = found.paths();
    if std::fs::symlink_metadata(&paths.state).is_err() {
        let e = state_error(&paths.state, StateError::Missing(std::io::ErrorKind::NotFound), 0.0, found.origin());
        return Err(e.message().to_string());
    }
    Ok(format!("{} exists", paths.state.display()))
}

/// Every file and semaphore bootstrap opens (bootstrap's own check), and the agent's process.
fn trust(found: &mut Found<'_>) -> Result<String, String> {
    let paths = found.paths().clone();
    check_agent_files(&paths, found.policy).map_err(|e| e.message().to_string())?;
    // The verdict reads the lock through the state environment's own descriptor (opened once per
    // process, shared with the heartbeat step); a state that cannot be opened is that step's.
    if let Ok(state) = StateDb::open(&paths.state, found.policy) {
        found.life = agent_life(&state, &paths.state);
    }
    if let AgentLife::Alive(pid) = found.life {
        check_agent_process(pid).map_err(|e| e.message().to_string())?;
    }
    Ok("the agent's files and semaphores belong to this user or root and are not writable by others".to_string())
}

/// A fresh heartbeat, written by a live agent (bootstrap's verdict: a gone agent fails here, its
/// heartbeat fresh or stale, with bootstrap's message).
fn heartbeat(found: &Found<'_>) -> Result<String, String> {
    let (paths, origin) = (found.paths(), found.origin());
    let fail = |e: StateError| state_error(&paths.state, e, 0.0, origin).message().to_string();
    let state = StateDb::open(&paths.state, found.policy).map_err(fail)?;
    let gone = agent_life(&state, &paths.state).gone(false);
    match state.fresh_heartbeat_age() {
        Ok(age) if gone => Err(fail(StateError::Gone(age))),
        Ok(age) => Ok(format!("fresh: {:.3} s old", age)),
        Err(StateError::Stale(age)) if gone => Err(fail(StateError::Gone(age))),
        Err(e) => Err(fail(e)),
    }
}

/// The queue: the file, read-only, and the two semaphores a worker opens.
fn queue(found: &Found<'_>) -> Result<String, String> {
    let (paths, origin) = (found.paths(), found.origin());
    let attach_error = |e: AttachError| queue_error(&paths.command_queue, e, 0.0, origin).message().to_string();
    let depth = match read_positions(&paths.command_queue, found.policy) {
        Ok((head, tail)) => tail.saturating_sub(head),
        Err(ReadError::Missing) => return Err(attach_error(AttachError::MissingFile)),
        Err(ReadError::Untrusted(m)) => return Err(m),
        Err(ReadError::NotLmdb(m)) => return Err(attach_error(AttachError::NotLmdb(m))),
    };
    let names = QueueNames::for_path(&paths.command_queue);
    let missing: Vec<String> = [&names.items, &names.space]
        .into_iter()
        .filter(|n| check_semaphore(n, found.policy).is_err_and(|d| d == Distrust::Missing))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    if !missing.is_empty() {
        return Err(attach_error(AttachError::MissingSemaphores(missing)));
    }
    Ok(format!("ready, {depth} command(s) waiting"))
}

fn worker_lock_step(found: &Found<'_>) -> Result<String, String> {
    let state = &found.paths().state;
    match worker_lock::holder_of(state) {
        Some(pid) => Err(worker_lock::busy(state, &format!("pid {pid}")).message().to_string()),
        None => Ok("no other worker is attached".to_string()),
    }
}

/// Informational: what bootstrap would authorize.
fn ptrace(found: &Found<'_>) -> String {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok().map(|s| s.trim().to_string());
    let yama = match &scope {
        None => "the kernel has no Yama: no consent is needed".to_string(),
        Some(s) => format!("Yama ptrace_scope {s}"),
    };
    let tracer = match &found.life {
        AgentLife::Alive(pid) => format!("would authorize exactly the agent, pid {pid} (PR_SET_PTRACER)"),
        AgentLife::Elsewhere => "the agent runs in another pid namespace: would authorize every process \
                                 (PR_SET_PTRACER_ANY), with a warning"
            .to_string(),
        _ => "the agent's process cannot be identified: would authorize every process (PR_SET_PTRACER_ANY), \
              with a warning"
            .to_string(),
    };
    format!("{tracer}; {yama}")
}

/// Informational: what bootstrap would bind.
fn cuda(found: &Found<'_>) -> String {
    let device = found.ranks().device();
    match etb_core::cuda::probe_driver() {
        Ok(path) => format!("would bind {device} (its primary context) through {path}, in the default mode"),
        Err(why) => format!("{device}: {why}: the default mode goes on unbound; the require mode would fail"),
    }
}

/// Prints the report; true when a bootstrap would succeed now.
pub fn run(template: &NamingTemplate, json: bool) -> bool {
    let mut report = Report { rows: Vec::new(), agent_rank: None };
    let ok = diagnose(&mut report, template);
    if json {
        let steps: Vec<_> =
            report.rows.iter().map(|s| json!({"name": s.name, "ok": s.ok, "message": s.message})).collect();
        crate::print_json(&json!({"ok": ok, "agent_rank": report.agent_rank, "steps": steps}));
    } else {
        for s in &report.rows {
            println!("{:<12} {:<4} {}", s.name, if s.ok { "ok" } else { "FAIL" }, s.message);
        }
        println!(
            "{}",
            if ok { "a bootstrap would succeed now" } else { "a bootstrap would fail now: see the FAIL step" }
        );
    }
    ok
}
