//! Command-line options of etb-dev-agent.

use std::ffi::OsString;
use std::time::Duration;

use etb_core::protocol::naming::AgentPaths;

pub const USAGE: &str = "\
usage: etb-dev-agent (--rank N | --command-queue PATH --state PATH) [options]
  --rank N                 use the default paths /tmp/agent_rank{N}_{command,state}.lmdb
  --command-queue PATH     the command-queue LMDB file
  --state PATH             the state LMDB file
  --no-queue               do not create the command queue (a broken agent)
  --stall-heartbeat        write the first heartbeat, then never again
  --beat-from-thread       write heartbeats from a helper thread (the loop hands each beat to it and
                           waits), not from the main thread as the agent does: the state env's
                           writer mutex is then never owned by the agent's main thread
  --beat-hold SECS         keep each heartbeat's write transaction open SECS (a slow disk's commit)
  --heartbeat-offset SECS  write heartbeats SECS in the past (negative: in the future)
  --stale-after SECS       after SECS, write heartbeats 60 s in the past (alive but stale)
  --start-delay SECS       wait before creating anything
  --exit-after SECS        exit cleanly after SECS
  --keep-files             on exit, leave files and semaphores in place (as a crash would)
  --die-with-parent        exit when the parent process dies
fault injection (TYPE: InitPair, RegisterTensors, Transfer, QueryStatus, CleanupBatch):
  --no-dequeue             never consume commands (a stopped consumer)
  --pause-dequeue SECS     consume commands only SECS after start
  --exit-on TYPE           crash (exit 3, files kept) on receiving TYPE, before acknowledging
  --fail-on TYPE           acknowledge TYPE, then die as the real agent does when a command raises:
                           no heartbeat after the post, --fail-delay, then its launch script's
                           clean-up (files and semaphores removed, unless --keep-files), exit 3
  --fail-delay SECS        with --fail-on: how long the dying agent lives after posting (default 0)
  --never-ack TYPE         handle TYPE but never post its completion
  --never-unlink           post completions but never unlink them (posix_ipc 1.3.2's defect)
  --unmatched              InitPair never records the pair as matched
  --ack-delay SECS         wait before acknowledging each command (no heartbeat meanwhile)
  --ack-delay-on TYPE      apply --ack-delay to commands of TYPE only
  --record PATH            append one line per command: type, batch or pair, transfer type, semaphore
  --lenient                accept every command (only for tests of the stand-in itself): by default
                           it dies as the real agent does on a Transfer for a batch it does not hold,
                           a RegisterTensors with no tensors or naming a pair it never matched, and a
                           payload that is not a pickle";

#[derive(Default)]
pub struct Faults {
    pub no_dequeue: bool,
    pub pause_dequeue: Option<Duration>,
    pub exit_on: Option<String>,
    pub fail_on: Option<String>,
    pub never_ack: Option<String>,
    pub never_unlink: bool,
    pub unmatched: bool,
    pub ack_delay: Option<Duration>,
    pub ack_delay_on: Option<String>,
    pub fail_delay: Option<Duration>,
    pub record: Option<std::path::PathBuf>,
    pub lenient: bool,
}

pub struct Options {
    pub paths: AgentPaths,
    pub create_queue: bool,
    pub stall_heartbeat: bool,
    pub beat_from_thread: bool,
    pub beat_hold: Option<Duration>,
    pub heartbeat_offset: f64,
    pub stale_after: Option<Duration>,
    pub start_delay: Option<Duration>,
    pub exit_after: Option<Duration>,
    pub keep_files: bool,
    pub die_with_parent: bool,
    pub faults: Faults,
}

fn secs(flag: &str, v: Option<OsString>) -> Result<f64, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.to_str()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| f.is_finite())
        .ok_or_else(|| format!("{flag}: {v:?} is not a number of seconds"))
}

fn text(flag: &str, v: Option<OsString>) -> Result<String, String> {
    v.and_then(|v| v.into_string().ok()).ok_or_else(|| format!("{flag} needs a value"))
}

fn duration(flag: &str, v: Option<OsString>) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs(flag, v)?).map_err(|e| format!("{flag}: {e}"))
}

impl Options {
    pub fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Options, String> {
        let (mut rank, mut queue, mut state) = (None, None, None);
        let mut o = Options {
            paths: AgentPaths::default_for_rank(0),
            create_queue: true,
            stall_heartbeat: false,
            beat_from_thread: false,
            beat_hold: None,
            heartbeat_offset: 0.0,
            stale_after: None,
            start_delay: None,
            exit_after: None,
            keep_files: false,
            die_with_parent: false,
            faults: Faults::default(),
        };
        while let Some(arg) = args.next() {
            match arg.to_str().unwrap_or("") {
                "--rank" => {
                    let v = args.next().ok_or("--rank needs a value")?;
                    rank = Some(
                        v.to_str()
                            .and_then(|s| s.parse::<i64>().ok())
                            .filter(|r| *r >= 0)
                            .ok_or(format!("--rank: {v:?}"))?,
                    );
                }
                "--command-queue" => queue = Some(args.next().ok_or("--command-queue needs a path")?),
                "--state" => state = Some(args.next().ok_or("--state needs a path")?),
                "--no-queue" => o.create_queue = false,
                "--stall-heartbeat" => o.stall_heartbeat = true,
                "--beat-from-thread" => o.beat_from_thread = true,
                "--beat-hold" => o.beat_hold = Some(duration("--beat-hold", args.next())?),
                "--heartbeat-offset" => o.heartbeat_offset = secs("--heartbeat-offset", args.next())?,
                "--start-delay" => o.start_delay = Some(duration("--start-delay", args.next())?),
                "--exit-after" => o.exit_after = Some(duration("--exit-after", args.next())?),
                "--keep-files" => o.keep_files = true,
                "--die-with-parent" => o.die_with_parent = true,
                "--no-dequeue" => o.faults.no_dequeue = true,
                "--pause-dequeue" => o.faults.pause_dequeue = Some(duration("--pause-dequeue", args.next())?),
                "--stale-after" => o.stale_after = Some(duration("--stale-after", args.next())?),
                "--never-unlink" => o.faults.never_unlink = true,
                "--unmatched" => o.faults.unmatched = true,
                "--exit-on" => o.faults.exit_on = Some(text("--exit-on", args.next())?),
                "--fail-on" => o.faults.fail_on = Some(text("--fail-on", args.next())?),
                "--never-ack" => o.faults.never_ack = Some(text("--never-ack", args.next())?),
                "--ack-delay-on" => o.faults.ack_delay_on = Some(text("--ack-delay-on", args.next())?),
                "--fail-delay" => o.faults.fail_delay = Some(duration("--fail-delay", args.next())?),
                "--ack-delay" => o.faults.ack_delay = Some(duration("--ack-delay", args.next())?),
                "--lenient" => o.faults.lenient = true,
                "--record" => o.faults.record = Some(args.next().ok_or("--record needs a path")?.into()),
                "--help" | "-h" => return Err("help".into()),
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        o.paths = match (rank, queue, state) {
            (Some(r), None, None) => AgentPaths::default_for_rank(r),
            (None, Some(q), Some(s)) => AgentPaths { command_queue: q.into(), state: s.into() },
            _ => return Err("give either --rank, or both --command-queue and --state".into()),
        };
        Ok(o)
    }
}
