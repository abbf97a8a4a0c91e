//! `etb status`: every agent whose state file exists under the naming, read without writing.
//!
//! Per agent: its pid (the state lock's holder that has the state file open for writing, as the
//! library identifies agents), whether it lives, the heartbeat's age, the queue's depth, the
//! worker holding the worker lock, and the problems seen. The state and queue files go through
//! the library's trust and LMDB pre-open checks before LMDB sees them, so a hostile file is
//! refused, never modified; LMDB itself only gains a reader slot in the lock file while it reads.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use etb_core::connection::{agent_life, agent_life_at, AgentLife};
use etb_core::protocol::command_queue::{read_positions, QueueNames, ReadError};
use etb_core::protocol::naming::{AgentPaths, NamingTemplate};
use etb_core::protocol::state_db::{StateDb, StateError, HEARTBEAT_FRESH_SECS};
use etb_core::sys::process::process_alive;
use etb_core::sys::trust::{check_file, check_semaphore, TrustPolicy};
use etb_core::sys::worker_lock;
use serde_json::{json, Value};

/// The problem codes (a stable interface).
pub const HEARTBEAT_STALE: &str = "heartbeat_stale";
pub const AGENT_DEAD: &str = "agent_dead";
pub const QUEUE_MISSING: &str = "queue_missing";
pub const NOT_LMDB: &str = "not_lmdb";
pub const UNTRUSTED_FILE: &str = "untrusted_file";
pub const WORLD_READABLE_QUEUE: &str = "world_readable_queue";

/// What `etb status` says of one agent.
pub struct AgentStatus {
    pub rank: i64,
    pub paths: AgentPaths,
    pub agent_pid: Option<i32>,
    pub agent_alive: Option<bool>,
    pub heartbeat_age_s: Option<f64>,
    pub queue_depth: Option<u64>,
    pub worker_pid: Option<i32>,
    pub problems: Vec<&'static str>,
}

impl AgentStatus {
    pub fn to_json(&self) -> Value {
        json!({
            "rank": self.rank,
            "state_path": crate::path_json(&self.paths.state),
            "command_queue_path": crate::path_json(&self.paths.command_queue),
            "agent_pid": self.agent_pid,
            "agent_alive": self.agent_alive,
            "heartbeat_age_s": self.heartbeat_age_s,
            "queue_depth": self.queue_depth,
            "worker_pid": self.worker_pid,
            "problems": self.problems,
        })
    }
}

fn push(problems: &mut Vec<&'static str>, p: &'static str) {
    if !problems.contains(&p) {
        problems.push(p);
    }
}

/// Reads one agent's files.
pub fn inspect(rank: i64, paths: AgentPaths) -> AgentStatus {
    let policy = TrustPolicy::default();
    let mut problems = Vec::new();
    let opened = StateDb::open(&paths.state, policy);
    // The one verdict bootstrap and the doctor give too (connection::life), through the state
    // environment's own lock descriptor; from /proc/locks alone when it cannot be opened.
    let life = match &opened {
        Ok(state) => agent_life(state, &paths.state),
        Err(_) => agent_life_at(&paths.state),
    };
    let (agent_pid, agent_alive) = match &life {
        AgentLife::Alive(pid) => (Some(*pid), Some(process_alive(*pid))),
        AgentLife::Elsewhere => (None, Some(true)),
        AgentLife::Gone | AgentLife::NoWriter(_) => {
            push(&mut problems, AGENT_DEAD);
            (None, Some(false))
        }
        AgentLife::Unknown(_) => (None, None),
    };
    let heartbeat_age_s = match opened {
        Ok(state) => match state.heartbeat() {
            Ok(beat) => {
                let age = etb_core::protocol::state_db::unix_now() - beat;
                if !(age.is_finite() && age.abs() < HEARTBEAT_FRESH_SECS) {
                    push(&mut problems, HEARTBEAT_STALE);
                }
                Some(age)
            }
            Err(StateError::Lmdb(_)) => {
                push(&mut problems, NOT_LMDB);
                None
            }
            Err(_) => {
                push(&mut problems, HEARTBEAT_STALE);
                None
            }
        },
        Err(StateError::Permission(_)) => {
            push(&mut problems, UNTRUSTED_FILE);
            None
        }
        Err(StateError::NotLmdb(_) | StateError::Lmdb(_)) => {
            push(&mut problems, NOT_LMDB);
            None
        }
        Err(StateError::NoDatabase | StateError::NoHeartbeat) => {
            push(&mut problems, HEARTBEAT_STALE);
            None
        }
        Err(_) => None,
    };
    let queue_depth = match read_positions(&paths.command_queue, policy) {
        Ok((head, tail)) => Some(tail.saturating_sub(head)),
        Err(ReadError::Missing) => {
            push(&mut problems, QUEUE_MISSING);
            None
        }
        Err(ReadError::Untrusted(_)) => {
            push(&mut problems, UNTRUSTED_FILE);
            None
        }
        Err(ReadError::NotLmdb(_)) => {
            push(&mut problems, NOT_LMDB);
            None
        }
    };
    let names = QueueNames::for_path(&paths.command_queue);
    for name in [&names.items, &names.space] {
        if let Err(etb_core::sys::trust::Distrust::Permission(_)) = check_semaphore(name, policy) {
            push(&mut problems, UNTRUSTED_FILE);
        }
    }
    if check_file(&etb_core::lmdb::lock_path(&paths.state), "state lock file", policy)
        .is_err_and(|d| matches!(d, etb_core::sys::trust::Distrust::Permission(_)))
    {
        push(&mut problems, UNTRUSTED_FILE);
    }
    if std::fs::symlink_metadata(&paths.command_queue).is_ok_and(|m| m.mode() & 0o004 != 0) {
        push(&mut problems, WORLD_READABLE_QUEUE);
    }
    let worker_pid = worker_lock::holder_of(&paths.state);
    AgentStatus { rank, paths, agent_pid, agent_alive, heartbeat_age_s, queue_depth, worker_pid, problems }
}

/// Every agent under `template`, by rank.
pub fn scan(template: &NamingTemplate) -> Vec<AgentStatus> {
    template.scan().into_iter().map(|rank| inspect(rank, template.paths_for(rank))).collect()
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub fn run(template: &NamingTemplate, json: bool) {
    let agents = scan(template);
    if json {
        crate::print_json(&json!({ "agents": agents.iter().map(AgentStatus::to_json).collect::<Vec<_>>() }));
        return;
    }
    if agents.is_empty() {
        let folder = Path::new(&template.state).parent().map_or_else(String::new, |f| f.display().to_string());
        println!("no agent state file under {} (folder {folder})", template.state);
        return;
    }
    let header = ["RANK", "AGENT PID", "ALIVE", "HEARTBEAT AGE", "QUEUE", "WORKER", "PROBLEMS", "STATE"];
    let rows: Vec<[String; 8]> = agents
        .iter()
        .map(|a| {
            [
                a.rank.to_string(),
                or_dash(a.agent_pid),
                a.agent_alive.map_or("?".to_string(), |v| if v { "yes".into() } else { "no".into() }),
                a.heartbeat_age_s.map_or("-".to_string(), |v| format!("{v:.3} s")),
                or_dash(a.queue_depth),
                or_dash(a.worker_pid),
                if a.problems.is_empty() { "-".to_string() } else { a.problems.join(",") },
                a.paths.state.display().to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    let dead: Vec<String> =
        agents.iter().filter(|a| a.problems.contains(&AGENT_DEAD)).map(|a| a.rank.to_string()).collect();
    if !dead.is_empty() {
        println!(
            "\nagent_dead (rank {}): the agent exited and left its files. Start it again (its launch script clears \
             the old files), or remove them: `etb gc --dead-agents{} --dry-run` shows what would go, without \
             --dry-run it goes.",
            dead.join(", "),
            template_args(template)
        );
    }
}

/// ` --state T --queue T` for a naming other than the default one (for the hints printed).
pub fn template_args(template: &NamingTemplate) -> String {
    if *template == NamingTemplate::default() {
        String::new()
    } else {
        format!(" --state '{}' --queue '{}'", template.state, template.command_queue)
    }
}
