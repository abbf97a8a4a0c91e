//! Truthful outcomes (docs/protocol.md sections 2, 5, 6): a command succeeds only when the
//! agent was seen to survive it, garbage never reaches the agent, and each failure says what to
//! do. Against a real etb-dev-agent, whose fault injection dies as the agent does: it posts the
//! completion, writes no heartbeat, waits `--fail-delay`, then removes its files (the launch
//! script's `finally`) and exits.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{boot, register, DevAgent, LeftoversGuard, TempDir};
use etb_core::protocol::commands::TransferKind::Send;
use etb_core::timeout::Timeout;
use etha_tensor_bus::{Client, ErrorKind};

fn t(s: f64) -> Timeout {
    Timeout::from_secs_f64(s, "t").unwrap()
}

/// pickle.dumps(b"\x01\x02", 3): a pickle, as every payload must be.
const PICKLE: &[u8] = b"\x80\x03C\x02\x01\x02q\x00.";

/// Runs one command of kind `ty` against an agent that fails it after posting, lives
/// `delay` seconds more (no heartbeat), then dies (leaving its files when `keep_files`).
fn dying_agent(name: &str, ty: &str, keep_files: bool, run: impl FnOnce(&Client) -> etha_tensor_bus::Result<()>) {
    let dir = TempDir::new(name);
    let paths = dir.paths();
    let mut args = vec!["--fail-on", ty, "--fail-delay", "1.2"];
    if keep_files {
        args.push("--keep-files");
    }
    let _leftovers = LeftoversGuard(paths.clone());
    let mut agent = DevAgent::start(&paths, &args, true);
    let (c, info) = boot(&paths, 5.0).unwrap();
    // What the real agent needs before the command: the pair matched, the batch registered.
    if ty != "InitPair" {
        c.init_pair("p", "a", "b", 1, None, None, t(5.0)).unwrap();
    }
    if ty != "InitPair" && ty != "RegisterTensors" {
        c.register_tensors("b", &[("p", PICKLE)], None, t(5.0)).unwrap();
    }
    let start = Instant::now();
    let e = run(&c).expect_err("a command the agent failed after posting must not succeed");
    assert_eq!(e.kind(), ErrorKind::AgentDied, "{ty}: {e}");
    assert!(start.elapsed() >= Duration::from_millis(1100), "{ty}: decided before the agent died: {e}");
    let pid = info.agent_pid.unwrap();
    assert!(e.message().contains(&format!("pid {pid}")), "{e}");
    assert!(e.message().contains("pairs and batches are gone"), "{e}");
    assert!(e.message().contains("reconnect the client once a new agent runs"), "{e}");
    let _ = agent.child.wait();
    drop(c);
}

#[test]
fn init_pair_posted_by_a_dying_agent_is_agent_died() {
    dying_agent("die-initpair", "InitPair", false, |c| c.init_pair("p", "a", "b", 1, None, None, t(10.0)));
}

#[test]
fn register_tensors_posted_by_a_dying_agent_is_agent_died() {
    dying_agent("die-register", "RegisterTensors", false, |c| c.register_tensors("b", &[("p", PICKLE)], None, t(10.0)));
}

#[test]
fn transfer_posted_by_a_dying_agent_is_agent_died() {
    dying_agent("die-transfer", "Transfer", false, |c| c.transfer("b", Send, t(10.0)));
}

#[test]
fn query_posted_by_a_dying_agent_is_agent_died() {
    dying_agent("die-query", "QueryStatus", false, |c| c.query_transfer_signal("b", t(10.0)).map(|_| ()));
}

#[test]
fn cleanup_posted_by_a_dying_agent_is_agent_died() {
    dying_agent("die-cleanup", "CleanupBatch", false, |c| c.cleanup_batch("b", t(10.0)));
}

#[test]
fn a_dying_agent_that_leaves_its_files_is_seen_by_its_exit() {
    dying_agent("die-keep", "Transfer", true, |c| c.transfer("b", Send, t(10.0)));
}

#[test]
fn async_wait_and_poll_on_a_dying_agent_are_agent_died() {
    dying_agent("die-async-wait", "Transfer", false, |c| c.transfer_async("b", Send, t(10.0))?.wait(t(10.0)));
    dying_agent("die-async-poll", "Transfer", false, |c| {
        let done = c.transfer_async("b", Send, t(10.0))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if done.poll()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("poll neither proved nor refuted the command in 10 s");
    });
}

#[test]
fn a_living_agent_proves_every_command() {
    let dir = TempDir::new("live");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    c.init_pair("p", "a", "b", 1, Some(PICKLE), Some(PICKLE), t(5.0)).unwrap();
    c.register_tensors("b", &[("p", PICKLE)], None, t(5.0)).unwrap();
    c.transfer("b", Send, t(5.0)).unwrap();
    assert!(c.query_transfer_signal("b", t(5.0)).unwrap());
    c.cleanup_batch("b", t(5.0)).unwrap();
    c.register_tensors("b", &[("p", PICKLE)], None, t(5.0)).unwrap();
    c.transfer_async("b", Send, t(5.0)).unwrap().wait(t(5.0)).unwrap();
    let done = c.transfer_async("b", Send, t(5.0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done.poll().unwrap() {
        assert!(Instant::now() < deadline, "poll never proved a command a living agent survived");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_later_dequeue_proves_an_earlier_command() {
    // The agent never beats again after its first heartbeat: only the queue's head can prove
    // that it lived past a command. (CleanupBatch of a batch nobody registered: the agent
    // survives it, and needs nothing registered first.)
    let dir = TempDir::new("headproof");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--stall-heartbeat"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let first = c.cleanup_batch_async("b1", t(5.0)).unwrap();
    // Alone, it cannot be proven: the outcome is unknown at the deadline.
    let e = first.wait(t(0.3)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.message().contains("acknowledged the command") && e.message().contains("unknown"), "{e}");
    assert!(!first.poll().unwrap());
    // A later command dequeued: the agent lived past the first.
    c.cleanup_batch_detached("b2", t(5.0)).unwrap();
    first.wait(t(5.0)).unwrap();
    assert!(first.poll().unwrap());
}

#[test]
fn pipelined_commands_prove_the_first_while_the_agent_holds_the_next() {
    let dir = TempDir::new("pipelined");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--ack-delay", "1.5", "--ack-delay-on", "CleanupBatch"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    register(&c, &["pipe"]);
    let c = Arc::new(c);
    let first = c.transfer_async("pipe", Send, t(5.0)).unwrap();
    let finished = Arc::new(AtomicBool::new(false));
    let blocking = {
        let (c, finished) = (c.clone(), finished.clone());
        std::thread::spawn(move || {
            let r = c.cleanup_batch("pipe", t(10.0));
            finished.store(true, Ordering::SeqCst);
            r
        })
    };
    first.wait(t(5.0)).unwrap();
    assert!(!finished.load(Ordering::SeqCst), "the first was proven only after the held command ended");
    blocking.join().unwrap().unwrap();
}

#[test]
fn non_pickle_payloads_are_refused_with_nothing_enqueued() {
    let dir = TempDir::new("garbage");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--no-dequeue"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    c.adopt_pair("p").unwrap(); // nobody reads this queue: no InitPair could be answered
    let raw_tensor: Vec<u8> = (0..64u8).collect();
    let random: Vec<u8> = (0..257u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let truncated = &PICKLE[..PICKLE.len() - 1];
    let before = c.test_hooks().queue_positions().unwrap();
    for bad in [&b""[..], &random, &raw_tensor, truncated] {
        let e = c.register_tensors("g", &[("p", PICKLE), ("p", bad)], None, t(1.0)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(
            e.message().contains("RegisterTensors payload 1") && e.message().contains("ForkingPickler.dumps(tensor)"),
            "{e}"
        );
        assert!(e.message().contains("agent would have died"), "{e}");
        let e = c.init_pair("g", "a", "b", 1, Some(bad), None, t(1.0)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let e = c.init_pair("g", "a", "b", 1, None, Some(bad), t(1.0)).unwrap_err();
        assert!(e.message().contains("InitPair placements_payload"), "{e}");
        assert_eq!(c.test_hooks().queue_positions().unwrap(), before, "the queue's tail moved");
    }
    // A pickle is accepted (enqueued: the agent does not dequeue, so the call times out).
    let e = c.register_tensors("g", &[("p", PICKLE)], None, t(0.05)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(c.test_hooks().queue_positions().unwrap(), (before.0, before.1 + 1));
}

#[test]
fn an_init_pair_timeout_says_the_agent_waits_for_its_peers() {
    let dir = TempDir::new("peers");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--never-ack", "InitPair"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let e = c.init_pair("weights", "train", "infer", 4, None, None, t(0.2)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    for part in [
        "waiting for the peers of pair \"weights\"",
        "local \"train\"",
        "remote \"infer\"",
        "world size 4",
        "init_pair with the same pair name",
    ] {
        assert!(e.message().contains(part), "{part:?} missing: {e}");
    }
    let e = c.cleanup_batch("x", t(0.0)).err();
    assert!(e.is_none_or(|e| !e.message().contains("peers")), "only InitPair's timeout speaks of peers");
}

#[test]
fn a_stale_heartbeat_without_a_writer_says_the_agent_is_gone() {
    let dir = TempDir::new("gone");
    let paths = dir.paths();
    let _leftovers = LeftoversGuard(paths.clone());
    // Alive but stale: not "gone".
    let mut agent = DevAgent::start(&paths, &["--heartbeat-offset", "30", "--keep-files"], true);
    let e = boot(&paths, 0.2).err().expect("a stale heartbeat fails the bootstrap");
    assert_eq!(e.kind(), ErrorKind::AgentNotResponding, "{e}");
    assert!(e.message().contains("too old") && !e.message().contains("is gone"), "{e}");
    // Killed: its files stay with their stale heartbeat, and nobody holds the lock.
    // SAFETY: signals the agent child, then reaps it.
    unsafe { libc::kill(agent.pid(), libc::SIGKILL) };
    let _ = agent.child.wait();
    let e = boot(&paths, 0.2).err().expect("a dead agent's files fail the bootstrap");
    assert_eq!(e.kind(), ErrorKind::AgentNotResponding, "{e}");
    assert!(e.message().contains("is gone") && e.message().contains("too old"), "{e}");
    assert!(e.message().contains("holds the state LMDB's lock"), "{e}");
}

/// A SIGKILLed agent leaves its files with a fresh heartbeat for about 5 s: bootstrap must not
/// attach to it. Nobody holds its state LMDB's lock any more, so it waits for a live agent until
/// its deadline, then says the agent is gone (one status whether the heartbeat is fresh or stale).
#[test]
fn no_bootstrap_against_a_just_killed_agent() {
    let dir = TempDir::new("justkilled");
    let paths = dir.paths();
    let _leftovers = LeftoversGuard(paths.clone());
    let mut agent = DevAgent::start(&paths, &[], true);
    // SAFETY: signals the agent child, then reaps it.
    unsafe { libc::kill(agent.pid(), libc::SIGKILL) };
    let _ = agent.child.wait();
    let start = Instant::now();
    let e = boot(&paths, 0.5).err().expect("a just-killed agent's files must not bootstrap");
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::AgentNotResponding, "{e}");
    assert!(e.message().contains("is gone") && e.message().contains("nobody writes it any more"), "{e}");
    assert!(took >= Duration::from_millis(500), "gave up before its deadline: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // A new agent on the same paths within the deadline is found.
    let waiter = {
        let paths = paths.clone();
        std::thread::spawn(move || boot(&paths, 10.0).map(|(c, info)| (c.agent_pid(), info.agent_pid)))
    };
    std::thread::sleep(Duration::from_millis(300));
    let again = DevAgent::start(&paths, &[], true);
    let (pid, info_pid) = waiter.join().unwrap().expect("the restarted agent is attached");
    assert_eq!((pid, info_pid), (Some(again.pid()), Some(again.pid())));
}
