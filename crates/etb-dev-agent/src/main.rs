//! `etb-dev-agent`: a stand-in for the Python agent's side of docs/protocol.md sections 2, 3 and 6,
//! for the demo and the tests. It cleans up stale files and semaphores as the deployed launch
//! scripts do, creates the command queue as its leader, then the state LMDB, then writes a
//! heartbeat about every millisecond (its commits skip fsync). It consumes commands, performs
//! their visible effects and acknowledges them, with fault injection for the tests (--help).
//!
//! Prints one line `ready pid=<pid> beat=<first heartbeat, Unix seconds>` on stdout after its
//! first heartbeat. On SIGTERM, SIGINT or
//! `--exit-after`, it removes its files and semaphores (as the agent's clean exit does).

mod consumer;
mod options;
mod queue_leader;
mod state_writer;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use options::Options;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn run(opts: &Options) -> Result<(), String> {
    if opts.die_with_parent {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) };
    }
    install_signal_handlers();
    for path in [&opts.paths.command_queue, &opts.paths.state] {
        let folder = match path.parent() {
            Some(f) if !f.as_os_str().is_empty() => f,
            _ => std::path::Path::new("."),
        };
        if !folder.is_dir() {
            return Err(format!(
                "the folder {} of {} does not exist (or is not a folder): create it first",
                folder.display(),
                path.display()
            ));
        }
    }
    if let Some(delay) = opts.start_delay {
        std::thread::sleep(delay);
    }
    queue_leader::clean_stale(&opts.paths.command_queue, &opts.paths.state);
    let queue =
        if opts.create_queue { Some(queue_leader::QueueLeader::create(&opts.paths.command_queue)?) } else { None };
    let mut state = state_writer::StateWriter::create(&opts.paths.state)?;
    state.beat_hold = opts.beat_hold;
    let state = std::sync::Arc::new(state);
    // Everything the agent opens is open before it says ready.
    let mut consumer = match &queue {
        Some(q) if !opts.faults.no_dequeue => Some(consumer::Consumer::new(q, &opts.faults)?),
        _ => None,
    };
    let beater = state_writer::Beater::new(std::sync::Arc::clone(&state), opts.beat_from_thread);
    let first_beat = beater.beat(opts.heartbeat_offset)?;
    // Nobody may be reading: a closed pipe must not stop the agent.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready pid={} beat={first_beat}", std::process::id()).and_then(|_| out.flush());

    let started = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        if opts.exit_after.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let paused = opts.faults.pause_dequeue.is_some_and(|d| started.elapsed() < d);
        match &mut consumer {
            Some(c) if !paused => {
                match c.step(Duration::from_millis(1), &state)? {
                    consumer::Outcome::Continue => {}
                    // As a crash: nothing cleaned up.
                    consumer::Outcome::Crash => std::process::exit(3),
                    consumer::Outcome::Fail => {
                        // As the agent whose command raised: no heartbeat after the post, then
                        // its launch script's `finally` (queue and state destroyed), then exit.
                        if let Some(d) = opts.faults.fail_delay {
                            std::thread::sleep(d);
                        }
                        if !opts.keep_files {
                            drop(consumer.take());
                            if let Some(q) = queue {
                                q.destroy();
                            }
                            drop(state);
                            if let Some(state) = beater.stop() {
                                state.destroy();
                            }
                        }
                        std::process::exit(3);
                    }
                }
            }
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
        if !opts.stall_heartbeat {
            let stale = opts.stale_after.is_some_and(|d| started.elapsed() >= d);
            beater.beat(opts.heartbeat_offset + if stale { 60.0 } else { 0.0 })?;
        }
    }
    drop(consumer);
    drop(state);
    let state = beater.stop();
    if opts.keep_files {
        std::mem::forget(queue);
        std::mem::forget(state);
        return Ok(());
    }
    if let Some(q) = queue {
        q.destroy();
    }
    if let Some(state) = state {
        state.destroy();
    }
    Ok(())
}

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args_os().skip(1)) {
        Ok(o) => o,
        Err(e) if e == "help" => {
            println!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("etb-dev-agent: {e}\n\n{}", options::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etb-dev-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
