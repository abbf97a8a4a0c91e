//! `etb`: the node tool of the Etha tensor bus.
//!
//! - `etb status`: every agent of this node, read as any LMDB reader would (nothing written);
//! - `etb doctor`: this environment's bootstrap, step by step, without attaching or authorizing;
//! - `etb gc`: the completion semaphores dead workers left in /dev/shm, removed.
//!
//! Exit status: `--help` (or `-h`, `help`) prints the usage and 0; 2 for a usage error; `status` and `gc` 0; `doctor` 0 when a bootstrap would
//! succeed now, 1 otherwise. `--json` output is a stable interface (README, "The node tool").

mod doctor;
mod gc;
mod status;

use std::process::ExitCode;

use etb_core::protocol::naming::NamingTemplate;

const USAGE: &str = "\
usage: etb status [--state TEMPLATE --queue TEMPLATE] [--json]
       etb doctor [--state TEMPLATE --queue TEMPLATE] [--json]
       etb gc [--dry-run] [--json]

  status   every agent on this node: pid, liveness, heartbeat age, queue depth, worker, problems
  doctor   runs this environment's bootstrap step by step (AGENT_RANK, RANK, AGENT_RANK_OFFSET,
           LOCAL_RANK) without attaching or authorizing anything; exit 0 when it would succeed
  gc       removes the completion semaphores that dead workers left in /dev/shm

  --state TEMPLATE, --queue TEMPLATE   the job's naming, {rank} standing for the agent rank
                                       (both or neither; default /tmp/agent_rank{rank}_*.lmdb)
  --json                               machine-readable output
  --dry-run                            gc: say what would be removed, remove nothing";

/// What the command line asks for.
struct Args {
    command: String,
    template: NamingTemplate,
    json: bool,
    dry_run: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = args.next().ok_or("no command given")?;
    if !matches!(command.as_str(), "status" | "doctor" | "gc") {
        return Err(format!("unknown command {command:?}"));
    }
    let (mut state, mut queue, mut json, mut dry_run) = (None, None, false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state" if command != "gc" => state = Some(args.next().ok_or("--state needs a template")?),
            "--queue" if command != "gc" => queue = Some(args.next().ok_or("--queue needs a template")?),
            "--json" => json = true,
            "--dry-run" if command == "gc" => dry_run = true,
            other => return Err(format!("{command}: unknown argument {other:?}")),
        }
    }
    let template = match (state, queue) {
        (None, None) => NamingTemplate::default(),
        (Some(s), Some(q)) => NamingTemplate::new(&s, &q).map_err(|e| e.message().to_string())?,
        _ => return Err("give both --state and --queue, or neither".into()),
    };
    Ok(Args { command, template, json, dry_run })
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
    if matches!(std::env::args().nth(1).as_deref(), Some("--help" | "-h" | "help")) {
        println!("{USAGE}");
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
            gc::run(args.dry_run, args.json);
            ExitCode::SUCCESS
        }
    }
}
