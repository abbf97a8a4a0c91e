//! The five worker commands against a real etb-dev-agent process: effects, completions,
//! timeouts, a full queue, a dying agent, ordering under load, and no leaked semaphores.

mod common;

use std::time::{Duration, Instant};

use common::{
    adopt, boot, boot_shared, our_completion_semaphores, recorded, register, remove_agent_leftovers, DevAgent, TempDir,
};
use etb_core::protocol::commands::TransferKind::{Recv, Send};
use etb_core::timeout::Timeout;
use etha_tensor_bus::ErrorKind;

fn t(s: f64) -> Timeout {
    Timeout::from_secs_f64(s, "t").unwrap()
}

#[test]
fn every_command_has_its_effect() {
    let dir = TempDir::new("cmds");
    let paths = dir.paths();
    let rec = dir.0.join("record.tsv");
    let _agent = DevAgent::start(&paths, &["--record", rec.to_str().unwrap()], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    // Payloads must look like pickles: pickle.dumps((2, 4), 3) and pickle.dumps(b"\x01\x02", 3).
    c.init_pair("effect_pair", "train", "infer", 4, None, Some(b"\x80\x03K\x02K\x04\x86q\x00."), t(5.0)).unwrap();
    let tensor: &[u8] = b"\x80\x03C\x02\x01\x02q\x00.";
    c.register_tensors("effect_0", &[("effect_pair", tensor), ("effect_pair", b"\x80\x04N.")], Some(1 << 20), t(5.0))
        .unwrap();
    assert!(!c.query_transfer_signal("effect_0", t(5.0)).unwrap(), "absent signal reads false");
    c.transfer("effect_0", Send, t(5.0)).unwrap();
    assert!(c.query_transfer_signal("effect_0", t(5.0)).unwrap());
    c.transfer("effect_0", Recv, t(5.0)).unwrap();
    assert!(!c.query_transfer_signal("effect_0", t(5.0)).unwrap());
    c.cleanup_batch("effect_0", t(5.0)).unwrap();
    let long = "b".repeat(300);
    for batch in ["effect_1", &long] {
        c.register_tensors(batch, &[("effect_pair", tensor)], None, t(5.0)).unwrap();
    }
    c.transfer_detached("effect_1", Send, t(5.0)).unwrap();
    c.transfer(&long, Send, t(5.0)).unwrap();
    assert!(c.query_transfer_signal(&long, t(5.0)).unwrap());
    let lines = recorded(&rec);
    let kinds: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "InitPair",
            "RegisterTensors",
            "QueryStatus",
            "Transfer",
            "QueryStatus",
            "Transfer",
            "QueryStatus",
            "CleanupBatch",
            "RegisterTensors",
            "RegisterTensors",
            "Transfer",
            "Transfer",
            "QueryStatus"
        ]
    );
    assert_eq!(
        lines[10],
        ("Transfer".into(), "effect_1".into(), "send".into(), "-".into()),
        "detached: semaphore_name nil"
    );
    assert!(lines[0].3.starts_with("/command_register_effect_pair_"), "{:?}", lines[0]);
    assert!(lines[11].3.len() <= 252 && lines[11].3.starts_with("/command_transfer_batch_bbb"), "{:?}", lines[11]);
    // Names no other test of this binary uses: its tests run in parallel in one process (one pid).
    for f in ["effect_0", "effect_pair", "batch_bbb"] {
        assert_eq!(our_completion_semaphores(f), Vec::<String>::new());
    }
}

#[test]
fn unmatched_pair_is_an_error() {
    let dir = TempDir::new("unmatched");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--unmatched"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let e = c.init_pair("p", "a", "b", 2, None, None, t(5.0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PairNotMatched, "{e}");
    assert_eq!(c.init_pair("p", "a", "b", 0, None, None, t(5.0)).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn no_acknowledgement_times_out_and_leaves_no_semaphore() {
    let dir = TempDir::new("noack");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--never-ack", "CleanupBatch"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let start = Instant::now();
    let e = c.cleanup_batch("noack", t(0.2)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(our_completion_semaphores("noack"), Vec::<String>::new());
    // Timeout 0 makes one attempt and returns at once.
    let start = Instant::now();
    assert_eq!(c.cleanup_batch("noack", t(0.0)).unwrap_err().kind(), ErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_millis(50), "{:?}", start.elapsed());
}

#[test]
fn agent_that_never_unlinks_leaves_nothing_of_ours() {
    let dir = TempDir::new("nounlink");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--never-unlink"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let batches: Vec<String> = (0..20).map(|i| format!("nounlink{i}")).chain(["nounlink-async".into()]).collect();
    register(&c, &batches.iter().map(String::as_str).collect::<Vec<_>>());
    for batch in &batches[..20] {
        c.transfer(batch, Send, t(5.0)).unwrap();
    }
    let done = c.transfer_async("nounlink-async", Recv, t(5.0)).unwrap();
    done.wait(t(5.0)).unwrap();
    drop(done);
    assert_eq!(our_completion_semaphores("nounlink"), Vec::<String>::new());
}

#[test]
fn full_queue_changes_nothing() {
    let dir = TempDir::new("full");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--no-dequeue"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    adopt(&c, &["one-too-many", "fullblocking"]);
    for i in 0..50_000 {
        let batch = format!("b{i}");
        adopt(&c, &[&batch]);
        c.transfer_detached(&batch, Send, t(0.0)).unwrap();
    }
    let before = c.test_hooks().queue_positions().unwrap();
    assert_eq!(before, (0, 50_000));
    let slots: Vec<_> =
        [0u64, 1, 25_000, 49_999].iter().map(|&p| c.test_hooks().queue_peek(p).unwrap().unwrap()).collect();
    let start = Instant::now();
    let e = c.transfer_detached("one-too-many", Send, t(0.1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QueueFull, "{e}");
    assert!(start.elapsed() >= Duration::from_millis(100));
    let e = c.transfer("fullblocking", Send, t(0.0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QueueFull, "{e}");
    assert_eq!(c.test_hooks().queue_positions().unwrap(), before, "head and tail unchanged");
    let after: Vec<_> =
        [0u64, 1, 25_000, 49_999].iter().map(|&p| c.test_hooks().queue_peek(p).unwrap().unwrap()).collect();
    assert_eq!(slots, after, "contents unchanged");
    assert_eq!(c.test_hooks().queue_semaphore_values().unwrap(), (50_000, 0));
    assert_eq!(
        our_completion_semaphores("fullblocking"),
        Vec::<String>::new(),
        "the blocking call's semaphore is removed"
    );
}

#[test]
fn dead_agent_is_seen_at_once() {
    let dir = TempDir::new("death");
    let paths = dir.paths();
    let mut agent = DevAgent::start(&paths, &["--never-ack", "Transfer"], true);
    let (c, info) = boot(&paths, 5.0).unwrap();
    assert_eq!(info.agent_pid, Some(agent.pid()));
    register(&c, &["death"]);
    let pid = agent.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signalling the agent child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let start = Instant::now();
    let e = c.transfer("death", Send, t(30.0)).unwrap_err();
    let took = start.elapsed();
    killer.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::AgentDied, "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Every later call says so too, without waiting.
    let start = Instant::now();
    assert_eq!(c.cleanup_batch("b", t(30.0)).unwrap_err().kind(), ErrorKind::AgentDied);
    assert!(start.elapsed() < Duration::from_millis(100));
    let _ = agent.child.wait();
    drop(c);
    remove_agent_leftovers(&paths);
    assert_eq!(our_completion_semaphores("death"), Vec::<String>::new());
}

#[test]
fn async_completions_wait_poll_and_outlive_their_client() {
    let dir = TempDir::new("async");
    let paths = dir.paths();
    // --never-unlink: the agent posts but never removes names, so only our free can.
    let _agent = DevAgent::start(&paths, &["--ack-delay", "0.2", "--never-unlink"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    register(&c, &["async-a", "async-never"]);
    let a = c.transfer_async("async-a", Send, t(5.0)).unwrap();
    assert!(!a.poll().unwrap(), "acknowledged before the agent's delay?");
    a.wait(t(5.0)).unwrap();
    assert!(a.poll().unwrap());
    a.wait(t(0.0)).unwrap();
    let never = c.transfer_async("async-never", Send, t(5.0)).unwrap();
    let name = format!("/dev/shm/sem.{}", &never.semaphore_name()[1..]);
    drop(c);
    assert_eq!(never.wait(t(1.0)).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(never.poll().unwrap_err().kind(), ErrorKind::Closed);
    drop(a);
    std::thread::sleep(Duration::from_millis(300)); // the agent has acknowledged it meanwhile
    assert!(std::path::Path::new(&name).exists(), "removed before its free");
    drop(never);
    assert!(!std::path::Path::new(&name).exists(), "free must remove the semaphore");
    assert_eq!(our_completion_semaphores("async"), Vec::<String>::new());
}

/// 3 threads x 20,000 commands through the 50,000-slot ring while the agent consumes: each
/// command arrives exactly once, and each thread's order is kept. The commands are detached
/// `CleanupBatch`es of batches nobody registered, which the agent survives (a warning each).
#[test]
fn nothing_lost_and_order_kept_across_threads() {
    let dir = TempDir::new("order");
    let paths = dir.paths();
    let rec = dir.0.join("record.tsv");
    let _agent = DevAgent::start(&paths, &["--record", rec.to_str().unwrap()], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    const N: usize = 20_000;
    std::thread::scope(|s| {
        for th in 0..3 {
            let c = &c;
            s.spawn(move || {
                for i in 0..N {
                    c.cleanup_batch_detached(&format!("t{th}-{i}"), t(30.0)).unwrap();
                }
            });
        }
    });
    c.cleanup_batch("end", t(60.0)).unwrap(); // acknowledged after everything before it
    let lines = recorded(&rec);
    assert_eq!(lines.len(), 3 * N + 1);
    let mut next = [0usize; 3];
    for (ty, subject, _, _) in &lines[..3 * N] {
        assert_eq!(ty, "CleanupBatch");
        let (th, i) = subject[1..].split_once('-').unwrap();
        let (th, i): (usize, usize) = (th.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[th], "thread {th} out of order");
        next[th] += 1;
    }
    assert_eq!(next, [N; 3]);
    let (head, tail) = c.test_hooks().queue_positions().unwrap();
    assert_eq!((head, tail), (3 * N as u64 + 1, 3 * N as u64 + 1), "the ring wrapped past 50,000");
}

/// Four producer processes through one queue while the agent consumes: nothing lost, each
/// producer's order kept. The producers are this test binary, re-run as `producer_child`, four
/// workers sharing one agent (detached `CleanupBatch`es, which the agent survives).
#[test]
fn nothing_lost_across_processes() {
    let dir = TempDir::new("procs");
    let paths = dir.paths();
    let rec = dir.0.join("record.tsv");
    let _agent = DevAgent::start(&paths, &["--record", rec.to_str().unwrap()], true);
    const N: usize = 5_000;
    let children: Vec<_> = (0..4)
        .map(|k| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["producer_child", "--exact", "--ignored", "--quiet", "--test-threads", "1"])
                .stdout(std::process::Stdio::null())
                .env("ETB_TEST_PRODUCER", format!("{k}"))
                .env("ETB_TEST_QUEUE", &paths.command_queue)
                .env("ETB_TEST_STATE", &paths.state)
                .env("ETB_TEST_COUNT", N.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut ch in children {
        assert!(ch.wait().unwrap().success());
    }
    let (c, _) = boot_shared(&paths, 5.0).unwrap();
    c.cleanup_batch("procs-end", t(60.0)).unwrap();
    let lines = recorded(&rec);
    assert_eq!(lines.len(), 4 * N + 1);
    let mut next = [0usize; 4];
    for (_, subject, _, _) in &lines[..4 * N] {
        let (k, i) = subject[1..].split_once('-').unwrap();
        let (k, i): (usize, usize) = (k.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[k], "producer {k} out of order");
        next[k] += 1;
    }
    assert_eq!(next, [N; 4]);
}

/// Not a test by itself (hence ignored): the body of one producer process of
/// `nothing_lost_across_processes`, which runs it with `--ignored`.
#[test]
#[ignore = "run by nothing_lost_across_processes as a child process"]
fn producer_child() {
    let k = std::env::var("ETB_TEST_PRODUCER").expect("run by nothing_lost_across_processes");
    let paths = etb_core::protocol::naming::AgentPaths {
        command_queue: std::env::var_os("ETB_TEST_QUEUE").unwrap().into(),
        state: std::env::var_os("ETB_TEST_STATE").unwrap().into(),
    };
    let n: usize = std::env::var("ETB_TEST_COUNT").unwrap().parse().unwrap();
    let (c, _) = boot_shared(&paths, 5.0).unwrap();
    for i in 0..n {
        c.cleanup_batch_detached(&format!("p{k}-{i}"), t(30.0)).unwrap();
    }
}

#[test]
fn dead_agent_seen_while_waiting_for_space_and_before_enqueue() {
    let dir = TempDir::new("deadspace");
    let paths = dir.paths();
    let mut agent = DevAgent::start(&paths, &["--no-dequeue"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    adopt(&c, &["deadspace-more"]);
    for i in 0..50_000 {
        let batch = format!("deadspace{i}");
        adopt(&c, &[&batch]);
        c.transfer_detached(&batch, Send, t(0.0)).unwrap();
    }
    let pid = agent.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signalling the agent child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let start = Instant::now();
    let e = c.transfer_detached("deadspace-more", Send, t(30.0)).unwrap_err();
    killer.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::AgentDied, "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let _ = agent.child.wait();
    drop(c);
    remove_agent_leftovers(&paths);

    // A client whose agent died before any call: the first call says so, nothing enqueued.
    let mut agent = DevAgent::start(&paths, &["--no-dequeue"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    // SAFETY: signalling the agent child.
    unsafe { libc::kill(agent.pid(), libc::SIGKILL) };
    let _ = agent.child.wait();
    adopt(&c, &["deadspace-first"]);
    assert_eq!(c.transfer_detached("deadspace-first", Send, t(5.0)).unwrap_err().kind(), ErrorKind::AgentDied);
    assert_eq!(c.transfer_async("deadspace-first", Send, t(5.0)).err().unwrap().kind(), ErrorKind::AgentDied);
    assert_eq!(c.test_hooks().queue_positions().unwrap(), (0, 0), "nothing enqueued into a dead agent's queue");
    drop(c);
    remove_agent_leftovers(&paths);
    assert_eq!(our_completion_semaphores("deadspace"), Vec::<String>::new());
}

/// The agent does not beat while it executes a command: a stale heartbeat is not death.
#[test]
fn stale_heartbeat_is_not_death() {
    let dir = TempDir::new("staleok");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--stale-after", "0.3"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    register(&c, &["staleok"]);
    let start = Instant::now();
    while c.heartbeat_age().unwrap() < 5.0 {
        assert!(start.elapsed() < Duration::from_secs(5), "the heartbeat never went stale");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.transfer("staleok", Send, t(5.0)).unwrap();
    assert!(c.query_transfer_signal("staleok", t(5.0)).unwrap());
}

/// One deadline covers the wait for queue space and the wait for the completion.
#[test]
fn one_deadline_covers_space_and_completion() {
    let dir = TempDir::new("onedeadline");
    let paths = dir.paths();
    // Detached CleanupBatches fill the queue (the agent survives them), and the last, blocking
    // one is never acknowledged.
    let _agent = DevAgent::start(&paths, &["--pause-dequeue", "3", "--never-ack", "CleanupBatch"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let filled = Instant::now();
    for i in 0..50_000 {
        c.cleanup_batch_detached(&format!("onedeadline{i}"), t(0.0)).unwrap();
    }
    let fill = filled.elapsed();
    let start = Instant::now();
    let e = c.cleanup_batch("onedeadline-last", t(4.0)).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(took >= Duration::from_secs(4), "{took:?}");
    if fill < Duration::from_millis(2500) {
        // The space wait lasted until the agent resumed (>= 0.5 s): separate deadlines would
        // take that plus 4 s.
        assert!(took < Duration::from_millis(4450), "{took:?} after a {fill:?} fill");
    } else {
        eprintln!("one_deadline_covers_space_and_completion: the fill took {fill:?}, too slow to tell");
    }
    assert_eq!(our_completion_semaphores("onedeadline"), Vec::<String>::new());
}

/// A restarted agent: calls keep failing with AgentDied until reconnect, which keeps the handle.
#[test]
fn reconnect_to_a_restarted_agent() {
    let dir = TempDir::new("reconnect");
    let paths = dir.paths();
    let mut old = DevAgent::start(&paths, &[], true);
    let (c, info) = boot(&paths, 5.0).unwrap();
    assert_eq!(info.agent_pid, Some(old.pid()));
    register(&c, &["reconnect-before"]);
    c.transfer("reconnect-before", Send, t(5.0)).unwrap();
    // SAFETY: signalling the agent child.
    unsafe { libc::kill(old.pid(), libc::SIGKILL) };
    let _ = old.child.wait();
    assert_eq!(c.transfer("reconnect-dead", Send, t(5.0)).unwrap_err().kind(), ErrorKind::AgentDied);
    // No agent yet: reconnect times out, and calls still say AgentDied.
    assert_eq!(c.reconnect(t(0.1)).unwrap_err().kind(), ErrorKind::AgentNotResponding);
    assert_eq!(c.cleanup_batch("reconnect-dead", t(5.0)).unwrap_err().kind(), ErrorKind::AgentDied);
    // A new agent on the same paths (its start-up cleans the old files and semaphores).
    let new = DevAgent::start(&paths, &[], true);
    assert_eq!(c.reconnect(t(5.0)).unwrap(), Some(new.pid()));
    assert_eq!(c.agent_pid(), Some(new.pid()));
    assert!(!c.batch_known("reconnect-before").unwrap(), "the new agent knows nothing of the old one's batches");
    register(&c, &["reconnect-after"]);
    c.transfer("reconnect-after", Send, t(5.0)).unwrap();
    assert!(c.query_transfer_signal("reconnect-after", t(5.0)).unwrap());
    assert!(c.heartbeat_age().unwrap() < 5.0);
    assert_eq!(our_completion_semaphores("reconnect"), Vec::<String>::new());
}
