//! Completions an event loop can wait on, against real etb-dev-agent processes: the client's
//! event fd turns readable once a watched completion has its final outcome, and
//! `take_resolved` says which; one watcher thread per client, whatever the number of watched
//! completions; a freed completion is never reported and leaves no semaphore; an agent that
//! dies resolves its watched completions as `AgentDied`. (C: tests/c/test_events.c, an epoll
//! loop; Python: tests/python/test_asyncio.py.)

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{boot, our_completion_semaphores, register, remove_worker_lock, DevAgent, LeftoversGuard, TempDir};
use etb_core::timeout::Timeout;
use etha_tensor_bus::{ErrorKind, TransferKind};

fn t(s: f64) -> Timeout {
    Timeout::from_secs_f64(s, "t").unwrap()
}

/// Whether `fd` is readable within `ms` milliseconds (poll(2)).
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, valid for the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && p.revents & libc::POLLIN != 0
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The tests of this binary count this process's threads: they run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn watched_completions_resolve_through_the_fd_with_one_thread() {
    let _serial = serial();
    let dir = TempDir::new("events-many");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--ack-delay", "0.02", "--ack-delay-on", "Transfer"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    register(&c, &["ev_b"]);
    let before = threads();
    let fd = c.event_fd().unwrap();
    assert!(fd >= 0 && !readable(fd, 0), "nothing resolved yet: not readable");
    let completions: Vec<_> = (0..8).map(|_| c.transfer_async("ev_b", TransferKind::Send, t(5.0)).unwrap()).collect();
    for (i, done) in completions.iter().enumerate() {
        done.watch(100 + i as u64).unwrap();
    }
    assert_eq!(threads(), before + 1, "one watcher thread for the client, none per completion");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 8 && Instant::now() < deadline {
        if readable(fd, 1000) {
            let tokens = c.take_resolved(3).unwrap();
            assert!(!tokens.is_empty() && tokens.len() <= 3, "readable means a token waits: {tokens:?}");
            seen.extend(tokens);
        }
    }
    assert_eq!(seen, (100..108).collect(), "every watched completion resolved once");
    assert!(!readable(fd, 0), "drained once every token was taken");
    for done in &completions {
        assert!(done.poll().unwrap(), "final: poll answers done at once");
        done.wait(t(0.0)).unwrap();
    }
    assert_eq!(c.test_hooks().watcher(), (true, 0));
    drop(completions);
    drop(c);
    remove_worker_lock(&paths);
}

#[test]
fn a_freed_completion_is_never_reported_and_leaves_no_semaphore() {
    let _serial = serial();
    let dir = TempDir::new("events-free");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--ack-delay", "0.2", "--ack-delay-on", "Transfer"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    register(&c, &["ev_free"]);
    let fd = c.event_fd().unwrap();
    let kept = c.transfer_async("ev_free", TransferKind::Send, t(5.0)).unwrap();
    let freed = c.transfer_async("ev_free", TransferKind::Send, t(5.0)).unwrap();
    kept.watch(1).unwrap();
    freed.watch(2).unwrap();
    drop(freed);
    assert!(readable(fd, 10_000));
    let mut tokens = c.take_resolved(8).unwrap();
    // The freed one's command still runs in the agent; it is never reported.
    std::thread::sleep(Duration::from_millis(500));
    tokens.extend(c.take_resolved(8).unwrap());
    assert_eq!(tokens, vec![1]);
    assert!(!readable(fd, 0));
    drop(kept);
    assert_eq!(our_completion_semaphores("ev_free"), Vec::<String>::new());
    drop(c);
    remove_worker_lock(&paths);
}

#[test]
fn a_dead_agents_watched_completion_turns_the_fd_readable_as_agent_died() {
    let _serial = serial();
    let dir = TempDir::new("events-dead");
    let paths = dir.paths();
    let _leftovers = LeftoversGuard(paths.clone());
    let mut agent = DevAgent::start(&paths, &["--never-ack", "Transfer"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    register(&c, &["ev_dead"]);
    let fd = c.event_fd().unwrap();
    let done = c.transfer_async("ev_dead", TransferKind::Send, t(5.0)).unwrap();
    done.watch(7).unwrap();
    assert!(!readable(fd, 200), "never acknowledged: nothing to report");
    assert!(!done.poll().unwrap());
    agent.child.kill().unwrap();
    let _ = agent.child.wait();
    assert!(readable(fd, 10_000), "the agent's death resolves the completion");
    assert_eq!(c.take_resolved(4).unwrap(), vec![7]);
    assert_eq!(done.poll().unwrap_err().kind(), ErrorKind::AgentDied);
    assert_eq!(done.wait(t(1.0)).unwrap_err().kind(), ErrorKind::AgentDied, "final: the same answer");
    drop(done);
    drop(c);
    remove_worker_lock(&paths);
}

#[test]
fn watching_a_completion_already_final_resolves_it_at_once_and_close_ends_the_watcher() {
    let _serial = serial();
    let dir = TempDir::new("events-final");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    register(&c, &["ev_fin"]);
    let done = c.transfer_async("ev_fin", TransferKind::Send, t(5.0)).unwrap();
    done.wait(t(5.0)).unwrap();
    let fd = c.event_fd().unwrap();
    done.watch(9).unwrap();
    assert!(readable(fd, 0), "already final: resolved at once");
    assert_eq!(c.take_resolved(0).unwrap(), Vec::<u64>::new(), "capacity 0 takes nothing");
    assert!(readable(fd, 0), "still readable: the token waits");
    assert_eq!(c.take_resolved(1).unwrap(), vec![9]);
    let before = threads();
    drop(c);
    assert_eq!(threads(), before - 1, "close joined the watcher thread");
    assert_eq!(done.watch(10).unwrap_err().kind(), ErrorKind::Closed);
    drop(done);
    remove_worker_lock(&paths);
}
