//! An agent in another pid namespace (a container): the kernel names no pid for its lock, so the
//! client cannot watch its process; it watches the state LMDB's lock instead, and a command whose
//! agent is killed ends in AGENT_DIED within about 100 ms, never in a TIMEOUT that blames a busy
//! agent. Two ways in: the test seam `ETB_TEST_AGENT_ELSEWHERE=1` (the lock's holder reads as one
//! of another namespace), in its own test binary because it is read once per process; and a
//! worker really run in a new pid namespace (`unshare --pid --fork`), skipped with the reason
//! where that is not permitted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{boot, register, DevAgent, TempDir};
use etb_core::protocol::commands::TransferKind::Send;
use etb_core::timeout::Timeout;
use etha_tensor_bus::ErrorKind;

fn t(s: f64) -> Timeout {
    Timeout::from_secs_f64(s, "t").unwrap()
}

/// The worker's side: bootstrap (the agent's pid unknown), a transfer the agent never
/// acknowledges, and the agent killed meanwhile by whoever runs this: AGENT_DIED, soon.
fn transfer_until_the_agent_dies(paths: &etb_core::protocol::naming::AgentPaths, announce: bool) -> Duration {
    let (c, info) = boot(paths, 10.0).unwrap();
    assert_eq!(info.agent_pid, None, "the agent must not be identified");
    assert_eq!(c.agent_pid(), None);
    register(&c, &["elsewhere"]);
    if announce {
        println!("ready");
    }
    let start = Instant::now();
    let e = c.transfer("elsewhere", Send, t(30.0)).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::AgentDied, "{e}");
    assert!(e.message().contains("in another pid namespace"), "{e}");
    // Every later call says so at once.
    assert_eq!(c.cleanup_batch("x", t(30.0)).unwrap_err().kind(), ErrorKind::AgentDied);
    took
}

#[test]
fn an_agent_in_another_pid_namespace_is_watched_by_its_lock() {
    std::env::set_var("ETB_TEST_AGENT_ELSEWHERE", "1");
    let dir = TempDir::new("elsewhere");
    let paths = dir.paths();
    let mut agent = DevAgent::start(&paths, &["--never-ack", "Transfer"], true);
    let pid = agent.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        // SAFETY: signalling the agent child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Instant::now()
    });
    let took = transfer_until_the_agent_dies(&paths, false);
    let killed = killer.join().unwrap();
    assert!(took < Duration::from_secs(2), "AGENT_DIED only after {took:?}");
    assert!(
        killed.elapsed() < Duration::from_millis(100) + Duration::from_millis(400),
        "seen {:?} after the kill",
        killed.elapsed()
    );
    let _ = agent.child.wait();
    common::remove_agent_leftovers(&paths);
}

/// The same with the worker in a pid namespace of its own: this test binary run again, as
/// `elsewhere_child`, under `unshare --pid --fork`.
#[test]
fn a_worker_in_its_own_pid_namespace_sees_its_agent_die() {
    let probe = Command::new("unshare").args(["--pid", "--fork", "true"]).stderr(Stdio::null()).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare --pid --fork` is not permitted here (needs CAP_SYS_ADMIN)");
        return;
    }
    let dir = TempDir::new("unshare");
    let paths = dir.paths();
    let mut agent = DevAgent::start(&paths, &["--never-ack", "Transfer"], true);
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(std::env::current_exe().unwrap())
        .args(["elsewhere_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("ETB_TEST_QUEUE", &paths.command_queue)
        .env("ETB_TEST_STATE", &paths.state)
        .env("ETB_DEV_AGENT", common::dev_agent_exe())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.trim_end().ends_with("ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child ended before it was ready");
    }
    // SAFETY: signalling the agent child.
    unsafe { libc::kill(agent.pid(), libc::SIGKILL) };
    let killed = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "the worker in its own pid namespace failed");
    assert!(killed.elapsed() < Duration::from_secs(2), "{:?}", killed.elapsed());
    let _ = agent.child.wait();
    common::remove_agent_leftovers(&paths);
}

/// Not a test by itself (hence ignored): the worker of
/// `a_worker_in_its_own_pid_namespace_sees_its_agent_die`, in a pid namespace of its own.
#[test]
#[ignore = "run by a_worker_in_its_own_pid_namespace_sees_its_agent_die in a new pid namespace"]
fn elsewhere_child() {
    let paths = etb_core::protocol::naming::AgentPaths {
        command_queue: std::env::var_os("ETB_TEST_QUEUE").expect("run by its parent test").into(),
        state: std::env::var_os("ETB_TEST_STATE").unwrap().into(),
    };
    let took = transfer_until_the_agent_dies(&paths, true);
    assert!(took < Duration::from_secs(5), "{took:?}");
}
