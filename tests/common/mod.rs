//! Shared helpers of the Rust integration tests: a running etb-dev-agent, unique names, and
//! leak checks. Every test uses its own agent rank or file names (semaphore names depend on the
//! queue file's name alone), so tests can run in parallel.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use etb_core::protocol::naming::AgentPaths;

static NEXT: AtomicU32 = AtomicU32::new(1);

/// An agent rank no other test process uses: derived from our pid.
pub fn unique_rank() -> i64 {
    i64::from(std::process::id()) * 1000 + i64::from(NEXT.fetch_add(1, Ordering::SeqCst))
}

/// A fresh folder under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "etb-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Paths with a stem unique to this folder.
    pub fn paths(&self) -> AgentPaths {
        let tag = self.0.file_name().unwrap().to_string_lossy().replace('-', "_");
        AgentPaths {
            command_queue: self.0.join(format!("{tag}_command.lmdb")),
            state: self.0.join(format!("{tag}_state.lmdb")),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The etb-dev-agent binary (a crate of its own in this workspace, so cargo does not hand its
/// path to these tests): `ETB_DEV_AGENT` when set, else the one beside this test's own profile
/// folder (`target/<profile>/etb-dev-agent`), which `cargo build --workspace` (scripts/build.sh)
/// makes.
pub fn dev_agent_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("ETB_DEV_AGENT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash>
    let path = exe.parent().and_then(Path::parent).expect("target/<profile>").join("etb-dev-agent");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --workspace` (or set ETB_DEV_AGENT)",
        path.display()
    );
    path
}

/// A running etb-dev-agent, stopped (cleanly: files and semaphores removed) on drop.
pub struct DevAgent {
    pub child: Child,
    pub paths: AgentPaths,
}

pub fn agent_args(paths: &AgentPaths) -> Vec<OsString> {
    vec!["--command-queue".into(), paths.command_queue.clone().into(), "--state".into(), paths.state.clone().into()]
}

impl DevAgent {
    /// Starts an agent and waits for its `ready` line (unless `wait_ready` is false). Start it
    /// from the test's own thread: `--die-with-parent` (PR_SET_PDEATHSIG) fires when the spawning
    /// *thread* exits.
    pub fn start(paths: &AgentPaths, extra: &[&str], wait_ready: bool) -> DevAgent {
        let mut child = Command::new(dev_agent_exe())
            .args(agent_args(paths))
            .args(["--die-with-parent", "--exit-after", "120"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start etb-dev-agent");
        if wait_ready {
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
            assert!(line.starts_with("ready pid="), "agent said {line:?}");
        }
        DevAgent { child, paths: paths.clone() }
    }

    pub fn with_rank(rank: i64, extra: &[&str]) -> DevAgent {
        DevAgent::start(&AgentPaths::default_for_rank(rank), extra, true)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops the agent cleanly and waits for it.
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Removes the worker lock file beside an agent's state (`.{state}.worker`), which the library
/// never removes (removing lock files races): the tests do, as an operator would, once done.
pub fn remove_worker_lock(paths: &AgentPaths) {
    let _ = std::fs::remove_file(etb_core::sys::worker_lock::lock_file_path(&paths.state));
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.stop();
        remove_worker_lock(&self.paths);
    }
}

/// Names in /dev/shm and files next to `paths` that a test may have left behind.
pub fn leftovers(paths: &AgentPaths) -> Vec<String> {
    let stem = etb_core::protocol::naming::file_stem(&paths.command_queue).to_vec();
    let stem = String::from_utf8_lossy(&stem).into_owned();
    let mut left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(&format!("_{stem}")))
        .collect();
    for p in [&paths.command_queue, &paths.state] {
        for suffix in ["", "-lock"] {
            let mut s = p.clone().into_os_string();
            s.push(suffix);
            if Path::new(&s).exists() {
                left.push(PathBuf::from(s).display().to_string());
            }
        }
    }
    left
}

/// An environment for the core's resolver, as a closure over a table.
pub fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<OsString> {
    let pairs: Vec<(String, OsString)> = pairs.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
    move |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Completion semaphores of this process still in /dev/shm whose name contains `filter` (tests
/// run in parallel threads of one process: give each its own batch or pair names).
pub fn our_completion_semaphores(filter: &str) -> Vec<String> {
    let tag = format!("_{}_", std::process::id());
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sem.command_") && n.contains(&tag) && n.contains(filter))
        .collect()
}

/// Removes a killed agent's leftovers when dropped, also when the test panics first.
pub struct LeftoversGuard(pub AgentPaths);

impl Drop for LeftoversGuard {
    fn drop(&mut self) {
        remove_agent_leftovers(&self.0);
    }
}

/// Removes what a killed agent left behind (its files and queue semaphores, and the worker lock
/// file).
pub fn remove_agent_leftovers(paths: &AgentPaths) {
    remove_worker_lock(paths);
    for p in [&paths.command_queue, &paths.state] {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(etb_core::lmdb::lock_path(p));
    }
    let names = etb_core::protocol::command_queue::QueueNames::for_path(&paths.command_queue);
    for n in [&names.items, &names.space, &names.ready] {
        let _ = etb_core::sys::semaphore::NamedSemaphore::unlink(n);
    }
}

/// Bootstraps the core against `paths` (AGENT_RANK=0, RANK=0), as the only worker of the agent
/// (the client's guard on).
pub fn boot(
    paths: &AgentPaths,
    timeout: f64,
) -> etha_tensor_bus::Result<(etha_tensor_bus::Client, etha_tensor_bus::BootstrapInfo)> {
    boot_as(paths, timeout, false)
}

/// As [`boot`], with other workers allowed on the same agent (the client's guard off).
pub fn boot_shared(
    paths: &AgentPaths,
    timeout: f64,
) -> etha_tensor_bus::Result<(etha_tensor_bus::Client, etha_tensor_bus::BootstrapInfo)> {
    boot_as(paths, timeout, true)
}

fn boot_as(
    paths: &AgentPaths,
    timeout: f64,
    share_agent: bool,
) -> etha_tensor_bus::Result<(etha_tensor_bus::Client, etha_tensor_bus::BootstrapInfo)> {
    let env = env_of(&[("AGENT_RANK", "0".into()), ("RANK", "0".into())]);
    let mut naming = |_rank: i64| Ok(paths.clone());
    etha_tensor_bus::bootstrap_client(etha_tensor_bus::BootstrapOptions {
        path_naming: Some(&mut naming),
        connection_timeout: etb_core::timeout::Timeout::from_secs_f64(timeout, "t").unwrap(),
        env: &env,
        cuda_mode: etb_core::cuda::CudaMode::Skip,
        ptrace_mode: etb_core::connection::PtraceMode::Agent,
        trust: etb_core::sys::trust::TrustPolicy::default(),
        share_agent,
        device_index: None,
    })
}

/// The pair that [`register`] matches.
pub const PAIR: &str = "pair";

/// A payload the stand-ins take for a tensor: a whole pickle (of bytes, `pickle.dumps(b"\x01\x02",
/// 3)`); the stand-ins check that payloads are pickles, not what they unpickle to.
pub const TENSOR: &[u8] = b"\x80\x03C\x02\x01\x02q\x00.";

/// What the real agent needs before a batch can be transferred or queried: matches [`PAIR`] and
/// registers each batch with one [`TENSOR`] of it.
pub fn register(c: &etha_tensor_bus::Client, batches: &[&str]) {
    let t = etb_core::timeout::Timeout::from_secs_f64(10.0, "t").unwrap();
    c.init_pair(PAIR, "train", "infer", 1, None, None, t).unwrap();
    for batch in batches {
        c.register_tensors(batch, &[(PAIR, TENSOR)], None, t).unwrap();
    }
}

/// For a queue nobody reads (`--no-dequeue`): the client's guard is told the batches exist, as an
/// earlier process's batches are adopted; nothing is sent.
pub fn adopt(c: &etha_tensor_bus::Client, batches: &[&str]) {
    for batch in batches {
        c.adopt_batch(batch).unwrap();
    }
}

/// The lines an agent started with `--record` wrote: (type, subject, transfer type, semaphore).
pub fn recorded(path: &Path) -> Vec<(String, String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect()
}
