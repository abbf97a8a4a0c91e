//! The Rust core's bootstrap against a real etb-dev-agent process.

mod common;

use std::time::{Duration, Instant};

use common::{env_of, leftovers, unique_rank, DevAgent, TempDir};
use etb_core::connection::PtraceMode;
use etb_core::cuda::CudaMode;
use etb_core::protocol::naming::AgentPaths;
use etb_core::protocol::rank::Method;
use etb_core::sys::trust::TrustPolicy;
use etb_core::timeout::Timeout;
use etha_tensor_bus::{bootstrap_client, BootstrapInfo, BootstrapOptions, Client, ErrorKind};

fn secs(s: f64) -> Timeout {
    Timeout::from_secs_f64(s, "t").unwrap()
}

fn boot_paths(paths: &AgentPaths, timeout: f64) -> etha_tensor_bus::Result<(Client, BootstrapInfo)> {
    let env = env_of(&[("AGENT_RANK", "0".into()), ("RANK", "0".into())]);
    let mut naming = |_rank: i64| Ok(paths.clone());
    bootstrap_client(BootstrapOptions {
        path_naming: Some(&mut naming),
        connection_timeout: secs(timeout),
        env: &env,
        cuda_mode: CudaMode::Skip,
        ptrace_mode: PtraceMode::Agent,
        trust: TrustPolicy::default(),
        share_agent: true,
        device_index: None,
    })
}

#[test]
fn default_names_offset_method() {
    let rank = unique_rank();
    let agent = DevAgent::with_rank(rank, &[]);
    let env =
        env_of(&[("RANK", (rank - 4).to_string()), ("AGENT_RANK_OFFSET", "4".into()), ("LOCAL_RANK", "3".into())]);
    let (client, info) = bootstrap_client(BootstrapOptions {
        path_naming: None,
        connection_timeout: secs(5.0),
        env: &env,
        cuda_mode: CudaMode::Skip,
        ptrace_mode: PtraceMode::Agent,
        trust: TrustPolicy::default(),
        share_agent: true,
        device_index: None,
    })
    .unwrap();
    assert_eq!(info.agent_rank, rank);
    assert_eq!(info.global_rank, rank - 4);
    assert_eq!(info.rank_offset, Some(4));
    assert_eq!(info.method, Method::Offset);
    assert_eq!(info.device, "cuda:3");
    assert_eq!(info.paths, AgentPaths::default_for_rank(rank));
    assert_eq!(info.agent_pid, Some(agent.pid()));
    assert_eq!(client.agent_pid(), Some(agent.pid()));
    assert!(client.test_hooks().state_locking(), "the lock file is writable: a reader slot must be used");
    let age = client.heartbeat_age().unwrap();
    assert!((0.0..5.0).contains(&age), "{age}");
    assert_eq!(client.test_hooks().queue_positions().unwrap(), (0, 0));
    assert_eq!(client.test_hooks().queue_semaphore_values().unwrap(), (0, 50_000));
    drop(client);
    let paths = agent.paths.clone();
    drop(agent);
    assert_eq!(leftovers(&paths), Vec::<String>::new());
}

#[test]
fn naming_function_gets_the_rank() {
    let dir = TempDir::new("naming");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let env = env_of(&[("AGENT_RANK", "17".into()), ("RANK", "2".into())]);
    let mut seen = Vec::new();
    let mut naming = |rank: i64| {
        seen.push(rank);
        Ok(paths.clone())
    };
    let (_client, info) = bootstrap_client(BootstrapOptions {
        path_naming: Some(&mut naming),
        connection_timeout: secs(5.0),
        env: &env,
        cuda_mode: CudaMode::Skip,
        ptrace_mode: PtraceMode::Agent,
        trust: TrustPolicy::default(),
        share_agent: true,
        device_index: None,
    })
    .unwrap();
    assert_eq!(seen, vec![17]);
    assert_eq!((info.agent_rank, info.global_rank, info.rank_offset, info.method), (17, 2, None, Method::Direct));
    assert_eq!(info.paths, paths);
}

/// LMDB forbids opening one environment twice in a process: clients of one agent share it, and
/// closing one must not drop the other's fcntl locks (which closing a second descriptor would).
#[test]
fn two_clients_of_one_agent_share_environments() {
    let dir = TempDir::new("two");
    let paths = dir.paths();
    let agent = DevAgent::start(&paths, &[], true);
    let (a, ia) = boot_paths(&paths, 5.0).unwrap();
    let (b, ib) = boot_paths(&paths, 5.0).unwrap();
    assert_eq!(ia.agent_pid, Some(agent.pid()));
    assert_eq!(ib.agent_pid, Some(agent.pid()), "the second client learns the pid from the shared entry");
    assert_eq!(a.test_hooks().state_file_id(), b.test_hooks().state_file_id());
    let lock_ino = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(etb_core::protocol::state_db::lock_path(&paths.state)).unwrap(),
    );
    assert!(holds_lock(lock_ino), "we hold LMDB's lock on the state lock file");
    drop(a);
    assert!(holds_lock(lock_ino), "closing one client must keep the other's lock");
    assert!(b.heartbeat_age().unwrap() < 5.0);
    drop(b);
    assert!(!holds_lock(lock_ino), "the last client closes the environment");
}

/// Whether this process holds a POSIX lock on inode `ino` (per /proc/locks).
fn holds_lock(ino: u64) -> bool {
    let me = std::process::id().to_string();
    std::fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: POSIX  ADVISORY  READ 1234 fd:01:5678 0 0"
        let (pid, id) = if f.get(1) == Some(&"->") { (f.get(5), f.get(6)) } else { (f.get(4), f.get(5)) };
        f.contains(&"POSIX") && pid == Some(&me.as_str()) && id.is_some_and(|id| id.ends_with(&format!(":{ino}")))
    })
}

#[test]
fn concurrent_bootstraps_from_threads() {
    let dir = TempDir::new("threads");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let p = paths.clone();
            std::thread::spawn(move || boot_paths(&p, 5.0).map(|(c, _)| c.heartbeat_age().unwrap()))
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().unwrap() < 5.0);
    }
}

#[test]
fn agent_started_after_the_worker() {
    let dir = TempDir::new("late");
    let paths = dir.paths();
    // Timed from before the spawn: the agent's delay starts once it runs, which may be before
    // this thread gets the CPU back.
    let t = Instant::now();
    let _agent = DevAgent::start(&paths, &["--start-delay", "0.3"], false);
    let (client, _) = boot_paths(&paths, 10.0).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(client.heartbeat_age().unwrap() < 5.0);
}

#[test]
fn no_agent_times_out_at_the_deadline() {
    let dir = TempDir::new("none");
    let t = Instant::now();
    let e = boot_paths(&dir.paths(), 0.25).err().unwrap();
    let elapsed = t.elapsed();
    assert_eq!(e.kind(), ErrorKind::AgentNotFound, "{e}");
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(e.message().contains("Agent LMDB not found at") && e.message().contains("AGENT_RANK"), "{e}");
    let t = Instant::now();
    assert_eq!(boot_paths(&dir.paths(), 0.0).err().unwrap().kind(), ErrorKind::AgentNotFound);
    assert!(t.elapsed() < Duration::from_millis(100), "timeout 0 makes a single attempt");
}

#[test]
fn stale_and_future_heartbeats_are_not_responding() {
    for (offset, words) in [("60", "too old"), ("-60", "in the future")] {
        let dir = TempDir::new("stale");
        let paths = dir.paths();
        let _agent = DevAgent::start(&paths, &["--heartbeat-offset", offset], true);
        let e = boot_paths(&paths, 0.2).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::AgentNotResponding, "{e}");
        assert!(e.message().contains(words), "{e}");
    }
}

#[test]
fn missing_queue_names_the_semaphores() {
    let dir = TempDir::new("noqueue");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--no-queue"], true);
    let e = boot_paths(&paths, 0.2).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::AgentNotFound, "{e}");
    assert!(e.message().contains("/cq_") && e.message().contains("/cq_space_"), "{e}");
}

#[test]
fn same_file_for_queue_and_state_is_a_naming_error() {
    let dir = TempDir::new("same");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let link = dir.0.join("link_command.lmdb");
    std::fs::hard_link(&paths.state, &link).unwrap();
    let bad = AgentPaths { command_queue: link, state: paths.state.clone() };
    let e = boot_paths(&bad, 0.2).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Naming, "{e}");
}

#[test]
fn agent_restart_while_waiting_is_followed() {
    let dir = TempDir::new("restart");
    let paths = dir.paths();
    // A dead agent's leftovers: a stale heartbeat, files kept.
    let mut old = DevAgent::start(&paths, &["--heartbeat-offset", "60", "--keep-files"], true);
    old.stop();
    // Started from this thread: PR_SET_PDEATHSIG fires when the spawning *thread* exits.
    let new_agent = DevAgent::start(&paths, &["--start-delay", "0.2"], false);
    let (_client, info) = boot_paths(&paths, 10.0).unwrap();
    assert_eq!(info.agent_pid, Some(new_agent.pid()));
}

/// With the queue's semaphores present but no queue file, attaching must create nothing (LMDB
/// would create the data and lock files) and never touch `/cq_ready_`.
#[test]
fn attach_creates_nothing_when_the_queue_file_is_missing() {
    use etb_core::protocol::command_queue::QueueNames;
    use etb_core::sys::semaphore::NamedSemaphore;
    let dir = TempDir::new("nocreate");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--no-queue"], true);
    let names = QueueNames::for_path(&paths.command_queue);
    let items = NamedSemaphore::create(&names.items, 0o600, 0, true).unwrap();
    let space = NamedSemaphore::create(&names.space, 0o600, 50_000, true).unwrap();
    let t = Instant::now();
    let e = boot_paths(&paths, 0.2).err().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(e.kind(), ErrorKind::AgentNotFound, "{e}");
    assert!(e.message().contains("queue LMDB not found"), "{e}");
    assert!(!paths.command_queue.exists(), "attach created the queue file");
    assert!(!etb_core::lmdb::lock_path(&paths.command_queue).exists(), "attach created the lock file");
    assert_eq!(NamedSemaphore::open_existing(&names.ready).unwrap_err().errno, libc::ENOENT, "ready touched");
    assert_eq!((items.value().unwrap(), space.value().unwrap()), (0, 50_000));
    for n in [&names.items, &names.space] {
        NamedSemaphore::unlink(n).unwrap();
    }
}

#[test]
fn overlong_queue_stem_is_a_naming_error_at_once() {
    let dir = TempDir::new("longstem");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--no-queue"], true);
    let long =
        AgentPaths { command_queue: dir.0.join(format!("{}.lmdb", "q".repeat(250))), state: paths.state.clone() };
    let t = Instant::now();
    let e = boot_paths(&long, 5.0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Naming, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "a permanent error must not wait out the deadline");
}

/// One worker per agent: a second client (in this process or another) gets AgentBusy naming the
/// first, unless every one of them allows sharing; the lock goes with the client.
#[test]
fn one_worker_per_agent() {
    let dir = TempDir::new("busy");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let env = env_of(&[("AGENT_RANK", "0".into()), ("RANK", "0".into())]);
    let boot_as = |share: bool| {
        let mut naming = |_rank: i64| Ok(paths.clone());
        bootstrap_client(BootstrapOptions {
            path_naming: Some(&mut naming),
            connection_timeout: secs(2.0),
            env: &env,
            cuda_mode: CudaMode::Skip,
            ptrace_mode: PtraceMode::Agent,
            trust: TrustPolicy::default(),
            share_agent: share,
            device_index: None,
        })
    };
    let (first, _) = boot_as(false).unwrap();
    let e = boot_as(false).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::AgentBusy, "{e}");
    assert!(e.message().contains(&std::process::id().to_string()) && e.message().contains("AGENT_RANK_OFFSET"), "{e}");
    assert_eq!(boot_as(true).err().unwrap().kind(), ErrorKind::AgentBusy, "sharing needs everyone's consent");
    // Another process is refused too, and is told our pid.
    let lock = etb_core::sys::worker_lock::lock_file_path(&paths.state);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl,sys,struct; f=open(sys.argv[1],'r+b'); \
            fl=fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)); \
            print(struct.unpack('hhqqi', fl)[4])",
        ])
        .arg(&lock)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), std::process::id().to_string(), "{out:?}");
    drop(first);
    let (a, _) = boot_as(true).unwrap();
    let (b, _) = boot_as(true).unwrap();
    assert_eq!(boot_as(false).err().unwrap().kind(), ErrorKind::AgentBusy);
    drop((a, b));
    drop(boot_as(false).unwrap());
}

/// Bootstrap and `etb doctor` run the one list of steps: a successful bootstrap passed exactly
/// `STEPS`, in order, and the doctor reports exactly `STEPS`, in order, for the same agent.
#[test]
fn bootstrap_and_doctor_run_the_same_steps() {
    use etb_core::connection::steps::STEPS;
    let rank = unique_rank();
    let dir = TempDir::new("steps");
    let paths = AgentPaths {
        command_queue: dir.0.join(format!("{rank}_command.lmdb")),
        state: dir.0.join(format!("{rank}_state.lmdb")),
    };
    let agent = DevAgent::start(&paths, &[], true);
    let (client, info) = boot_paths(&paths, 5.0).unwrap();
    assert_eq!(info.steps, STEPS.to_vec(), "the steps bootstrap passed");
    drop(client);
    let etb = common::dev_agent_exe().with_file_name("etb");
    let out = std::process::Command::new(&etb)
        .args(["doctor", "--json", "--state"])
        .arg(dir.0.join("{rank}_state.lmdb"))
        .arg("--queue")
        .arg(dir.0.join("{rank}_command.lmdb"))
        .env("AGENT_RANK", rank.to_string())
        .env("RANK", "0")
        .env("ETB_CUDA_DRIVER_PATH", "/nonexistent/libcuda.so.1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (build the workspace first)", etb.display()));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let names: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let expected: Vec<&str> = STEPS.iter().map(|s| s.name()).collect();
    assert_eq!(names, expected, "the steps the doctor reports");
    drop(agent);
}

fn boot_on_device(
    paths: &AgentPaths,
    device_index: Option<i32>,
    timeout: f64,
) -> etha_tensor_bus::Result<(Client, BootstrapInfo)> {
    let env = env_of(&[("AGENT_RANK", "0".into()), ("RANK", "0".into()), ("LOCAL_RANK", "3".into())]);
    let mut naming = |_rank: i64| Ok(paths.clone());
    bootstrap_client(BootstrapOptions {
        path_naming: Some(&mut naming),
        connection_timeout: secs(timeout),
        env: &env,
        cuda_mode: CudaMode::Skip,
        ptrace_mode: PtraceMode::Agent,
        trust: TrustPolicy::default(),
        share_agent: true,
        device_index,
    })
}

/// `device_index` chooses the client's device: the info names it (here in the skip mode, which
/// binds nothing) and LOCAL_RANK no longer does; without it LOCAL_RANK's device, as before; a
/// negative one is refused before any wait for the agent.
#[test]
fn device_index_names_the_device_and_is_checked_first() {
    let dir = TempDir::new("devindex");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let (client, info) = boot_on_device(&paths, Some(1), 5.0).unwrap();
    assert_eq!((info.device.as_str(), info.device_index, info.local_rank), ("cuda:1", 1, 3));
    assert!(info.cuda.identity.is_none(), "skip binds nothing");
    drop(client);
    let (client, info) = boot_on_device(&paths, None, 5.0).unwrap();
    assert_eq!((info.device.as_str(), info.device_index, info.local_rank), ("cuda:3", 3, 3));
    drop(client);
    // No agent at these paths and no time to wait: an unchecked index would be AgentNotFound.
    let absent = TempDir::new("devindex-absent");
    let e = boot_on_device(&absent.paths(), Some(-1), 0.0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().starts_with("device_index is -1: a CUDA device ordinal is 0 or more"), "{e}");
}
