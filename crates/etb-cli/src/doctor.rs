//! `etb doctor`: this environment's bootstrap, step by step, without attaching to the queue,
//! taking the worker lock or authorizing anything. Each failing step gives the message
//! bootstrap itself would give (the library's own error builders), so what the doctor says is
//! what the worker will see.
//!
//! Steps, in order: `environment`, `paths`, `state_file`, `trust`, `heartbeat`, `queue`,
//! `worker_lock`, then the informational `ptrace` and `cuda` (they never fail the verdict). The
//! first failing step ends the run.

use std::path::Path;

use etb_core::bootstrap::rank_origin;
use etb_core::connection::{queue_error, state_error, state_writer, Origin, StateWriter};
use etb_core::protocol::command_queue::{read_positions, AttachError, QueueNames, ReadError};
use etb_core::protocol::naming::{AgentPaths, NamingTemplate};
use etb_core::protocol::rank::{self, ProcessEnv};
use etb_core::protocol::state_db::{StateDb, StateError};
use etb_core::sys::trust::{check_agent_process, check_file, check_semaphore, Distrust, TrustPolicy};
use etb_core::sys::worker_lock;
use serde_json::json;

/// One step of the report.
struct Step {
    name: &'static str,
    ok: bool,
    message: String,
}

struct Report {
    steps: Vec<Step>,
    agent_rank: Option<i64>,
}

impl Report {
    fn pass(&mut self, name: &'static str, message: impl Into<String>) {
        self.steps.push(Step { name, ok: true, message: message.into() });
    }

    /// Records a failing step; the run ends there.
    fn fail(&mut self, name: &'static str, message: impl Into<String>) -> bool {
        self.steps.push(Step { name, ok: false, message: message.into() });
        false
    }
}

fn permission(d: Distrust) -> Option<String> {
    match d {
        Distrust::Permission(m) => Some(m),
        _ => None,
    }
}

/// The checks bootstrap makes, in its order; false at the first failing one.
fn diagnose(report: &mut Report, template: &NamingTemplate) -> bool {
    let policy = TrustPolicy::default();
    // environment
    let ranks = match rank::resolve(&ProcessEnv) {
        Ok(r) => r,
        Err(e) => return report.fail("environment", e.message()),
    };
    report.agent_rank = Some(ranks.agent_rank);
    let default_naming = *template == NamingTemplate::default();
    let origin: Origin = rank_origin(&ranks, default_naming);
    report.pass("environment", format!("{origin}; LOCAL_RANK {} (device {})", ranks.local_rank, ranks.device()));
    // paths
    let paths: AgentPaths = match template.paths_for(ranks.agent_rank).validate() {
        Ok(p) => p,
        Err(e) => return report.fail("paths", e.message()),
    };
    report.pass("paths", format!("state {}, command queue {}", paths.state.display(), paths.command_queue.display()));
    // state_file
    if std::fs::symlink_metadata(&paths.state).is_err() {
        let e = state_error(&paths.state, StateError::Missing(std::io::ErrorKind::NotFound), 0.0, &origin);
        return report.fail("state_file", e.message());
    }
    report.pass("state_file", format!("{} exists", paths.state.display()));
    // trust: every file and semaphore bootstrap opens, and the agent's process.
    let lock = etb_core::lmdb::lock_path(&paths.state);
    let queue_lock = etb_core::lmdb::lock_path(&paths.command_queue);
    let checks: [(&Path, &str); 4] = [
        (&paths.state, "agent state LMDB"),
        (&lock, "agent state LMDB lock file"),
        (&paths.command_queue, "agent command queue LMDB"),
        (&queue_lock, "agent command queue lock file"),
    ];
    for (path, what) in checks {
        if let Some(m) = check_file(path, what, policy).err().and_then(permission) {
            return report.fail("trust", m);
        }
    }
    let names = QueueNames::for_path(&paths.command_queue);
    for name in [&names.items, &names.space] {
        if let Some(m) = check_semaphore(name, policy).err().and_then(permission) {
            return report.fail("trust", m);
        }
    }
    let writer = state_writer(&paths.state);
    if let StateWriter::Alive(pid) = writer {
        if let Err(e) = check_agent_process(pid) {
            return report.fail("trust", e.message());
        }
    }
    report.pass("trust", "the agent's files and semaphores belong to this user or root and are not writable by others");
    // heartbeat
    let state = match StateDb::open(&paths.state, policy) {
        Ok(s) => s,
        Err(e) => return report.fail("heartbeat", state_error(&paths.state, e, 0.0, &origin).message()),
    };
    match state.fresh_heartbeat_age() {
        Ok(age) => report.pass("heartbeat", format!("fresh: {:.3} s old", age)),
        Err(e) => return report.fail("heartbeat", state_error(&paths.state, e, 0.0, &origin).message()),
    }
    // queue: the file, read-only, and the two semaphores a worker opens.
    let depth = match read_positions(&paths.command_queue, policy) {
        Ok((head, tail)) => tail.saturating_sub(head),
        Err(ReadError::Missing) => {
            return report
                .fail("queue", queue_error(&paths.command_queue, AttachError::MissingFile, 0.0, &origin).message())
        }
        Err(ReadError::Untrusted(m)) => return report.fail("queue", m),
        Err(ReadError::NotLmdb(m)) => {
            return report
                .fail("queue", queue_error(&paths.command_queue, AttachError::NotLmdb(m), 0.0, &origin).message())
        }
    };
    let missing: Vec<String> = [&names.items, &names.space]
        .into_iter()
        .filter(|n| check_semaphore(n, policy).is_err_and(|d| d == Distrust::Missing))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    if !missing.is_empty() {
        let e = queue_error(&paths.command_queue, AttachError::MissingSemaphores(missing), 0.0, &origin);
        return report.fail("queue", e.message());
    }
    report.pass("queue", format!("ready, {depth} command(s) waiting"));
    // worker_lock
    match worker_lock::holder_of(&paths.state) {
        Some(pid) => {
            return report.fail("worker_lock", worker_lock::busy(&paths.state, &format!("pid {pid}")).message())
        }
        None => report.pass("worker_lock", "no other worker is attached"),
    }
    // ptrace (informational)
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok().map(|s| s.trim().to_string());
    let yama = match &scope {
        None => "the kernel has no Yama: no consent is needed".to_string(),
        Some(s) => format!("Yama ptrace_scope {s}"),
    };
    let tracer = match writer {
        StateWriter::Alive(pid) => format!("would authorize exactly the agent, pid {pid} (PR_SET_PTRACER)"),
        _ => "the agent's process cannot be identified: would authorize every process (PR_SET_PTRACER_ANY), \
              with a warning"
            .to_string(),
    };
    report.pass("ptrace", format!("{tracer}; {yama}"));
    // cuda (informational)
    let cuda = match etb_core::cuda::probe_driver() {
        Ok(path) => format!("would bind {} (its primary context) through {path}, in the default mode", ranks.device()),
        Err(why) => format!("{}: {why}: the default mode goes on unbound; the require mode would fail", ranks.device()),
    };
    report.pass("cuda", cuda);
    true
}

/// Prints the report; true when a bootstrap would succeed now.
pub fn run(template: &NamingTemplate, json: bool) -> bool {
    let mut report = Report { steps: Vec::new(), agent_rank: None };
    let ok = diagnose(&mut report, template);
    if json {
        let steps: Vec<_> =
            report.steps.iter().map(|s| json!({"name": s.name, "ok": s.ok, "message": s.message})).collect();
        crate::print_json(&json!({"ok": ok, "agent_rank": report.agent_rank, "steps": steps}));
    } else {
        for s in &report.steps {
            println!("{:<12} {:<4} {}", s.name, if s.ok { "ok" } else { "FAIL" }, s.message);
        }
        println!(
            "{}",
            if ok { "a bootstrap would succeed now" } else { "a bootstrap would fail now: see the FAIL step" }
        );
    }
    ok
}
