//! The survival proof's first signal, the agent's LMDB writer mutex (docs/protocol.md section 5),
//! against real etb-dev-agent processes (lmdb-sys's LMDB; tests/python/test_survival.py runs
//! py-lmdb's): it proves commands when the agent's main thread takes the mutex after the post; it
//! is never taken for success when the agent dies of the command, nor when another thread of the
//! agent writes; an agent in a nested pid namespace is expected under its own pid there.
//!
//! The stand-in's `--beat-hold` keeps each heartbeat transaction open for a while, as a disk's
//! commit does (the real agent's lasts about 0.3 ms): so that the mutex is seen held, not only
//! its commit.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{agent_args, boot, dev_agent_exe, register, remove_worker_lock, DevAgent, LeftoversGuard, TempDir};
use etb_core::client::Proof;
use etb_core::timeout::Timeout;

fn t(s: f64) -> Timeout {
    Timeout::from_secs_f64(s, "t").unwrap()
}

/// How many commands `proof` proved on client `c`.
fn count(c: &etha_tensor_bus::Client, proof: Proof) -> u64 {
    c.test_hooks().proof_counts().into_iter().find(|(p, _)| *p == proof).map(|(_, n)| n).unwrap()
}

fn total(c: &etha_tensor_bus::Client) -> u64 {
    c.test_hooks().proof_counts().into_iter().map(|(_, n)| n).sum()
}

const ROUNDS: u64 = 10;

/// `ROUNDS` QueryStatus round trips of a registered batch; every one proven.
fn round_trips(c: &etha_tensor_bus::Client) {
    register(c, &["b"]);
    let before = total(c);
    for _ in 0..ROUNDS {
        assert!(!c.query_transfer_signal("b", t(10.0)).unwrap());
    }
    assert_eq!(total(c) - before, ROUNDS, "every command proven once: {:?}", c.test_hooks().proof_counts());
}

#[test]
fn the_agents_main_thread_holding_the_writer_lock_proves_commands() {
    let dir = TempDir::new("survival-lock");
    let paths = dir.paths();
    let agent = DevAgent::start(&paths, &["--beat-hold", "0.02"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    assert_eq!(c.test_hooks().writer_owner(), Some(agent.pid()), "the agent's pid, in its (our) namespace");
    round_trips(&c);
    assert!(count(&c, Proof::WriterLock) > 0, "{:?}", c.test_hooks().proof_counts());
    drop(c);
    remove_worker_lock(&paths);
}

#[test]
fn a_heartbeat_written_by_another_thread_of_the_agent_falls_back() {
    // The writer mutex is then owned by a thread that is not the agent's main thread: not the
    // signal. The commit, the heartbeat or the later dequeue prove the commands instead.
    let dir = TempDir::new("survival-thread");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--beat-hold", "0.02", "--beat-from-thread"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    assert!(c.test_hooks().writer_owner().is_some(), "the signal is on");
    round_trips(&c);
    assert_eq!(count(&c, Proof::WriterLock), 0, "{:?}", c.test_hooks().proof_counts());
    drop(c);
    remove_worker_lock(&paths);
}

#[test]
fn a_command_the_agent_dies_of_is_never_ok_with_the_signal_on() {
    for (fault, delay) in [("QueryStatus", "0"), ("QueryStatus", "0.3"), ("Transfer", "0.3")] {
        let dir = TempDir::new("survival-fail");
        let paths = dir.paths();
        let _leftovers = LeftoversGuard(paths.clone());
        let _agent = DevAgent::start(&paths, &["--beat-hold", "0.02", "--fail-on", fault, "--fail-delay", delay], true);
        let (c, _) = boot(&paths, 5.0).unwrap();
        assert!(c.test_hooks().writer_owner().is_some(), "the signal is on");
        register(&c, &["b"]);
        let before = total(&c);
        let e = if fault == "Transfer" {
            c.transfer("b", etha_tensor_bus::TransferKind::Send, t(10.0)).unwrap_err()
        } else {
            c.query_transfer_signal("b", t(10.0)).unwrap_err()
        };
        assert_eq!(e.kind(), etha_tensor_bus::ErrorKind::AgentDied, "{fault} (fail delay {delay}): {e}");
        assert_eq!(total(&c), before, "nothing proven for it: {:?}", c.test_hooks().proof_counts());
        drop(c);
        remove_worker_lock(&paths);
    }
}

#[test]
fn an_agent_in_a_nested_pid_namespace_is_expected_under_its_own_pid() {
    // `unshare --pid --fork`: the agent is pid 1 in a namespace nested in ours, where its main
    // thread's TID, the mutex's owner word, is 1; we see it under another pid.
    let dir = TempDir::new("survival-ns");
    let paths = dir.paths();
    let _leftovers = LeftoversGuard(paths.clone());
    let probe = Command::new("unshare").args(["--pid", "--fork", "true"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: `unshare --pid --fork` is not permitted here ({}): the nested-namespace case is covered by the \
             NSpid unit tests only",
            match probe {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            }
        );
        return;
    }
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(dev_agent_exe())
        .args(agent_args(&paths))
        .args(["--die-with-parent", "--exit-after", "60", "--beat-hold", "0.02"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready pid=1 "), "the agent is pid 1 in its namespace: {line:?}");
    let (c, info) = boot(&paths, 5.0).unwrap();
    let outer = info.agent_pid.expect("the agent's pid in our namespace");
    assert_ne!(outer, 1);
    assert_eq!(c.test_hooks().writer_owner(), Some(1), "the owner expected is its pid in its own namespace");
    round_trips(&c);
    assert!(count(&c, Proof::WriterLock) > 0, "{:?}", c.test_hooks().proof_counts());
    drop(c);
    // SAFETY: signalling the agent (a process of ours, under its pid in our namespace).
    unsafe { libc::kill(outer, libc::SIGTERM) };
    let _ = child.wait();
    remove_worker_lock(&paths);
}
