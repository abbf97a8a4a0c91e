//! `etb`: the node tool of the Etha tensor bus.
//!
//! - `etb status`: every agent of this node, read as any LMDB reader would (nothing written);
//! - `etb doctor`: this environment's bootstrap, step by step, without attaching or authorizing;
//! - `etb gc`: what dead workers left in /dev/shm (completion semaphores, reference-counter
//!   files), removed; with `--dead-agents` also dead agents' files and queue semaphores.
//!
//! Exit status: `--help` (or `-h`, `help`; after a command, that command's) prints the usage to
//! stdout and 0; 2 for a usage error; `status` and `gc` 0; `doctor` 0 when a bootstrap would
//! succeed now, 1 otherwise. `--json` output is a stable interface (README, "The node tool").

mod doctor;
mod gc;
mod status;

use std::process::ExitCode;

use etb_core::protocol::naming::NamingTemplate;

const USAGE: &str = "\
usage: etb status [--state TEMPLATE --queue TEMPLATE] [--json]
       etb doctor [--state TEMPLATE --queue TEMPLATE] [--json]
       etb gc [--dead-agents [--state TEMPLATE --queue TEMPLATE]] [--dry-run] [--json]
       etb COMMAND --help

  status   every agent on this node: pid, liveness, heartbeat age, queue depth, worker, problems
  doctor   runs this environment's bootstrap step by step (AGENT_RANK, RANK, AGENT_RANK_OFFSET,
           LOCAL_RANK) without attaching or authorizing anything; exit 0 when it would succeed
  gc       removes what dead processes left in /dev/shm: completion semaphores and reference-counter
           files of dead workers; with --dead-agents also the files and queue semaphores of dead agents

  --state TEMPLATE, --queue TEMPLATE   the job's naming, {rank} standing for the agent rank
                                       (both or neither; default /tmp/agent_rank{rank}_*.lmdb)
  --json                               machine-readable output
  --dry-run                            gc: say what would be removed, remove nothing";

const STATUS_USAGE: &str = "\
usage: etb status [--state TEMPLATE --queue TEMPLATE] [--json]

Every agent whose state file exists under the naming (default /tmp/agent_rank{rank}_state.lmdb
and /tmp/agent_rank{rank}_command.lmdb; {rank} stands for the agent rank): its pid, whether it
lives (the verdict bootstrap uses, from the state LMDB's lock), its heartbeat's age, its queue's
depth, the worker attached to it, and the problems seen (heartbeat_stale, agent_dead,
queue_missing, not_lmdb, untrusted_file, world_readable_queue). Reads only; exit 0.";

const DOCTOR_USAGE: &str = "\
usage: etb doctor [--state TEMPLATE --queue TEMPLATE] [--json]

Runs this environment's bootstrap (AGENT_RANK, RANK, AGENT_RANK_OFFSET, LOCAL_RANK, the naming)
step by step without attaching, locking or authorizing anything: environment, paths, state_file,
trust, heartbeat, queue, worker_lock, then the informational ptrace and cuda. The first failing
step ends the run, with the message bootstrap itself would give. Exit 0 when a bootstrap would
succeed now, 1 otherwise.";

const GC_USAGE: &str = "\
usage: etb gc [--dead-agents [--state TEMPLATE --queue TEMPLATE]] [--dry-run] [--json]

Removes what dead processes left behind, never anything of a live one:
  - completion semaphores (/dev/shm/sem.command_{kind}_{context}_{pid}_{32 hex}) and
    reference-counter files (/dev/shm/etb_rc_{pid}_{n}) whose process (the pid in the name) no
    longer exists and that no process maps; of other users only when run as root;
  - with --dead-agents, for each agent under the naming (default /tmp/agent_rank{rank}_*.lmdb)
    that the verdict bootstrap uses finds gone (nobody holds its state LMDB): the data and -lock
    files of its state and command queue, and its queue semaphores /cq_{stem}, /cq_space_{stem}
    and /cq_ready_{stem} unless a process maps them or a live agent under the naming has the same
    stem; only files and semaphores of the calling user. Never a worker lock file
    (.{state file}.worker).
  --dry-run says what would be removed and removes nothing. Exit 0.";

/// What the command line asks for.
struct Args {
    command: String,
    template: NamingTemplate,
    json: bool,
    dry_run: bool,
    dead_agents: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = args.next().ok_or("no command given")?;
    if !matches!(command.as_str(), "status" | "doctor" | "gc") {
        return Err(format!("unknown command {command:?}"));
    }
    let (mut state, mut queue, mut json, mut dry_run, mut dead_agents) = (None, None, false, false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state" => state = Some(args.next().ok_or("--state needs a template")?),
            "--queue" => queue = Some(args.next().ok_or("--queue needs a template")?),
            "--json" => json = true,
            "--dry-run" if command == "gc" => dry_run = true,
            "--dead-agents" if command == "gc" => dead_agents = true,
            other => return Err(format!("{command}: unknown argument {other:?}")),
        }
    }
    if command == "gc" && !dead_agents && (state.is_some() || queue.is_some()) {
        return Err("gc: --state and --queue name the agents of --dead-agents".into());
    }
    let template = match (state, queue) {
        (None, None) => NamingTemplate::default(),
        (Some(s), Some(q)) => NamingTemplate::new(&s, &q).map_err(|e| e.message().to_string())?,
        _ => return Err("give both --state and --queue, or neither".into()),
    };
    Ok(Args { command, template, json, dry_run, dead_agents })
}

/// Prints JSON on one line per document.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// A path as JSON: a string, with bytes that are not UTF-8 replaced by U+FFFD.
pub fn path_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::Value::String(path.to_string_lossy().into_owned())
}

fn main() -> ExitCode {
    // A command-line tool whose output is piped into `head` or `grep -q` ends quietly when the
    // reader goes, as other Unix tools do, instead of println! panicking on EPIPE.
    // SAFETY: resetting a signal's disposition to the default before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if matches!(argv.first().map(String::as_str), Some("--help" | "-h" | "help")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if argv.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        println!(
            "{}",
            match argv[0].as_str() {
                "status" => STATUS_USAGE,
                "doctor" => DOCTOR_USAGE,
                "gc" => GC_USAGE,
                _ => USAGE,
            }
        );
        return ExitCode::SUCCESS;
    }
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e == "no command given" => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("etb: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The library's own warnings (a readable queue, a lock file we cannot write) go to stderr as
    // in a worker, so that a tool run shows the same hints.
    etb_core::logging::init();
    match args.command.as_str() {
        "status" => {
            status::run(&args.template, args.json);
            ExitCode::SUCCESS
        }
        "doctor" => {
            if doctor::run(&args.template, args.json) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => {
            gc::run(args.dry_run, args.json, args.dead_agents.then_some(&args.template));
            ExitCode::SUCCESS
        }
    }
}
