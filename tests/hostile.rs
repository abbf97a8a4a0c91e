//! The hostile-input table: each row puts something hostile where the agent's files or
//! semaphores should be, and checks the bootstrap fails with the right status and a message, never
//! a crash or a hang (the deadline is kept). Runs as root in CI: owners are switched with chown.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{boot, DevAgent, TempDir};
use etb_core::lmdb::{lock_path, EnvOptions, Environment};
use etb_core::protocol::naming::AgentPaths;
use etha_tensor_bus::ErrorKind;

const TIMEOUT: f64 = 0.2;

/// Bootstraps against `paths` and checks the failure: its kind, a word of its message, and that
/// it came no earlier than the deadline for polled errors (`polled`) and within a second after.
fn expect(paths: &AgentPaths, kind: ErrorKind, words: &str, polled: bool) {
    let t = Instant::now();
    let e = boot(paths, TIMEOUT).err().expect("bootstrap must fail");
    let took = t.elapsed();
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.message().contains(words), "{e}");
    if polled {
        assert!(took >= Duration::from_secs_f64(TIMEOUT), "{took:?}");
    }
    assert!(took < Duration::from_secs_f64(TIMEOUT + 1.0), "{took:?}: a hang");
}

/// A state LMDB written by this process (then closed), with `heartbeat` if given.
fn state_file(path: &Path, heartbeat: Option<&[u8]>, with_db: bool) {
    let env = Environment::open(
        path,
        &EnvOptions { read_only: false, no_lock: false, no_sync: true, map_size: 1 << 20, max_dbs: 2 },
    )
    .unwrap();
    if with_db {
        let db = env.create_db("pair_state").unwrap();
        if let Some(h) = heartbeat {
            env.write(|t| t.put(db, b"agent:heartbeat", h)).unwrap();
        }
    }
    drop(env);
    for p in [path.to_path_buf(), lock_path(path)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn now() -> f64 {
    etb_core::protocol::state_db::unix_now()
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn chown(p: &Path, uid: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, uid) }, 0, "chown {}", p.display());
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! hostile_state {
    ($($name:ident: $setup:expr => ($kind:expr, $words:expr, $polled:expr);)+) => {$(
        #[test]
        fn $name() {
            let dir = TempDir::new(stringify!($name));
            let paths = dir.paths();
            let setup: &dyn Fn(&Path) -> bool = &$setup;
            if !setup(&paths.state) {
                eprintln!("skipped: needs root");
                return;
            }
            expect(&paths, $kind, $words, $polled);
        }
    )+};
}

hostile_state! {
    state_empty: |p: &Path| { std::fs::write(p, b"").unwrap(); std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap(); true }
        => (ErrorKind::Lmdb, "truncated", true);
    state_truncated: |p: &Path| {
        state_file(p, Some(b"1"), true);
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..100]).unwrap();
        true
    } => (ErrorKind::Lmdb, "not an LMDB file", true);
    state_random_bytes: |p: &Path| {
        let random: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        std::fs::write(p, random).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        true
    } => (ErrorKind::Lmdb, "not an LMDB file", true);
    state_without_pair_state: |p: &Path| { state_file(p, None, false); true }
        => (ErrorKind::AgentNotResponding, "no 'pair_state'", true);
    heartbeat_not_a_number: |p: &Path| { state_file(p, Some(b"soon"), true); true }
        => (ErrorKind::AgentNotResponding, "not a finite number", true);
    heartbeat_nan: |p: &Path| { state_file(p, Some(b"nan"), true); true }
        => (ErrorKind::AgentNotResponding, "not a finite number", true);
    heartbeat_infinite: |p: &Path| { state_file(p, Some(b"inf"), true); true }
        => (ErrorKind::AgentNotResponding, "not a finite number", true);
    heartbeat_negative: |p: &Path| { state_file(p, Some(b"-5.0"), true); true }
        => (ErrorKind::AgentNotResponding, "too old", true);
    heartbeat_in_the_future: |p: &Path| { state_file(p, Some(format!("{}", now() + 60.0).as_bytes()), true); true }
        => (ErrorKind::AgentNotResponding, "in the future", true);
    heartbeat_missing: |p: &Path| { state_file(p, None, true); true }
        => (ErrorKind::AgentNotResponding, "missing", true);
    state_fifo: |p: &Path| { mkfifo(p); true }
        => (ErrorKind::Lmdb, "not a regular file", true);
    state_directory: |p: &Path| { std::fs::create_dir(p).unwrap(); std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap(); true }
        => (ErrorKind::Lmdb, "not a regular file", true);
    state_symlink: |p: &Path| { state_file(&p.with_extension("real"), Some(b"1"), true); std::os::unix::fs::symlink(p.with_extension("real"), p).unwrap(); true }
        => (ErrorKind::Permission, "symbolic link", false);
    state_mode_0666: |p: &Path| { state_file(p, Some(format!("{}", now()).as_bytes()), true); std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).unwrap(); true }
        => (ErrorKind::Permission, "writable by every user", false);
    state_group_writable: |p: &Path| { state_file(p, Some(format!("{}", now()).as_bytes()), true); std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660)).unwrap(); true }
        => (ErrorKind::Permission, "group", false);
    state_of_another_owner: |p: &Path| { if !root() { return false; } state_file(p, Some(b"1"), true); chown(p, 65534); true }
        => (ErrorKind::Permission, "uid 65534", false);
    lock_fifo: |p: &Path| { state_file(p, Some(format!("{}", now()).as_bytes()), true); std::fs::remove_file(lock_path(p)).unwrap(); mkfifo(&lock_path(p)); true }
        => (ErrorKind::Lmdb, "not a regular file", true);
    lock_directory: |p: &Path| { state_file(p, Some(b"1"), true); std::fs::remove_file(lock_path(p)).unwrap(); std::fs::create_dir(lock_path(p)).unwrap(); std::fs::set_permissions(lock_path(p), std::fs::Permissions::from_mode(0o700)).unwrap(); true }
        => (ErrorKind::Lmdb, "not a regular file", true);
    lock_symlink: |p: &Path| { state_file(p, Some(b"1"), true); std::fs::remove_file(lock_path(p)).unwrap(); std::os::unix::fs::symlink("/dev/null", lock_path(p)).unwrap(); true }
        => (ErrorKind::Permission, "symbolic link", false);
    lock_mode_0666: |p: &Path| { state_file(p, Some(b"1"), true); std::fs::set_permissions(lock_path(p), std::fs::Permissions::from_mode(0o666)).unwrap(); true }
        => (ErrorKind::Permission, "writable by every user", false);
    lock_of_another_owner: |p: &Path| { if !root() { return false; } state_file(p, Some(b"1"), true); chown(&lock_path(p), 65534); true }
        => (ErrorKind::Permission, "uid 65534", false);
}

/// /dev/zero (a device of root, writable by all) named as the state: refused at once, no hang.
#[test]
fn dev_zero_as_the_state() {
    let dir = TempDir::new("devzero");
    let paths = AgentPaths { command_queue: dir.paths().command_queue, state: "/dev/zero".into() };
    expect(&paths, ErrorKind::Permission, "/dev/zero", false);
}

/// The queue side, with a live agent: its files and semaphores of another owner or mode.
#[test]
fn queue_file_and_semaphores_not_trusted() {
    let dir = TempDir::new("hostq");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--no-dequeue"], true);
    std::fs::set_permissions(&paths.command_queue, std::fs::Permissions::from_mode(0o666)).unwrap();
    expect(&paths, ErrorKind::Permission, "command queue LMDB", false);
    std::fs::set_permissions(&paths.command_queue, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(lock_path(&paths.command_queue), std::fs::Permissions::from_mode(0o622)).unwrap();
    expect(&paths, ErrorKind::Permission, "command queue lock file", false);
    std::fs::set_permissions(lock_path(&paths.command_queue), std::fs::Permissions::from_mode(0o600)).unwrap();
    let stem = String::from_utf8_lossy(etb_core::protocol::naming::file_stem(&paths.command_queue)).into_owned();
    let sem = Path::new("/dev/shm").join(format!("sem.cq_space_{stem}"));
    std::fs::set_permissions(&sem, std::fs::Permissions::from_mode(0o666)).unwrap();
    expect(&paths, ErrorKind::Permission, "semaphore /cq_space_", false);
    std::fs::set_permissions(&sem, std::fs::Permissions::from_mode(0o600)).unwrap();
    if root() {
        chown(&sem, 65534);
        expect(&paths, ErrorKind::Permission, "uid 65534", false);
        chown(&sem, 0);
    }
    // Everything trusted again: it works.
    assert!(boot(&paths, 5.0).is_ok());
}

/// An agent process of another user, whose files were handed to us (chown): refused by the
/// process check (needs root to switch the agent's uid: the seam CI's root makes possible).
#[test]
fn agent_process_of_another_user() {
    if !root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let dir = TempDir::new("otheruid");
    // Sticky, like /tmp: the other user may create files there but not replace ours.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let paths = dir.paths();
    let mut agent = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::dev_agent_exe())
        .args(common::agent_args(&paths))
        .args(["--exit-after", "60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(agent.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("ready"), "{line:?}");
    // Its files and semaphores, handed to us: only the process remains another user's.
    let stem = String::from_utf8_lossy(etb_core::protocol::naming::file_stem(&paths.command_queue)).into_owned();
    let mut owned: Vec<std::path::PathBuf> = vec![
        paths.state.clone(),
        lock_path(&paths.state),
        paths.command_queue.clone(),
        lock_path(&paths.command_queue),
    ];
    for prefix in ["cq_", "cq_space_", "cq_ready_"] {
        owned.push(Path::new("/dev/shm").join(format!("sem.{prefix}{stem}")));
    }
    for p in &owned {
        chown(p, 0);
    }
    let e = boot(&paths, 2.0).err().expect("an agent of another user must be refused");
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
    assert!(e.message().contains("uid 65534") && e.message().contains(&agent.id().to_string()), "{e}");
    // SAFETY: signals a child this test spawned and has not reaped yet.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    common::remove_agent_leftovers(&paths);
}

/// The folder of the files: another user's, or writable by everyone without the sticky bit.
#[test]
fn untrusted_folders() {
    let dir = TempDir::new("folder");
    let paths = dir.paths();
    // A live agent without a queue: it holds its state (a file nobody holds is a gone agent's).
    let _agent = DevAgent::start(&paths, &["--no-queue"], true);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    expect(&paths, ErrorKind::Permission, "not sticky", false);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Sticky: trusted; the bootstrap goes on to wait for the queue that is not there.
    expect(&paths, ErrorKind::AgentNotFound, "queue", true);
    if root() {
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir.0, 65534);
        expect(&paths, ErrorKind::Permission, "folder", false);
        chown(&dir.0, 0);
    }
}

/// Hostile things at the queue's paths (with a live agent's state, fresh heartbeat, and the
/// queue's semaphores present): refused without a crash or a hang.
#[test]
fn hostile_queue_files() {
    use etb_core::protocol::command_queue::QueueNames;
    use etb_core::sys::semaphore::NamedSemaphore;
    let dir = TempDir::new("hostq2");
    let paths = dir.paths();
    // A live agent without a queue: it holds its state (a file nobody holds is a gone agent's).
    let _agent = DevAgent::start(&paths, &["--no-queue"], true);
    let names = QueueNames::for_path(&paths.command_queue);
    let _sems: Vec<NamedSemaphore> =
        [&names.items, &names.space].iter().map(|n| NamedSemaphore::create(n, 0o600, 1, true).unwrap()).collect();
    let reset = |what: &str| {
        let _ = std::fs::remove_file(&paths.command_queue);
        let _ = std::fs::remove_file(lock_path(&paths.command_queue));
        let _ = std::fs::remove_dir(&paths.command_queue);
        what.to_string()
    };
    reset("fifo");
    mkfifo(&paths.command_queue);
    std::fs::write(lock_path(&paths.command_queue), b"").unwrap();
    std::fs::set_permissions(lock_path(&paths.command_queue), std::fs::Permissions::from_mode(0o600)).unwrap();
    expect(&paths, ErrorKind::Lmdb, "not a regular file", true);
    reset("random");
    let random: Vec<u8> = (0..32768u32).map(|i| (i.wrapping_mul(2246822519) >> 9) as u8).collect();
    std::fs::write(&paths.command_queue, random).unwrap();
    std::fs::set_permissions(&paths.command_queue, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(lock_path(&paths.command_queue), b"").unwrap();
    std::fs::set_permissions(lock_path(&paths.command_queue), std::fs::Permissions::from_mode(0o600)).unwrap();
    expect(&paths, ErrorKind::Lmdb, "not an LMDB file", true);
    reset("lock fifo");
    state_file(&paths.command_queue, None, false);
    std::fs::remove_file(lock_path(&paths.command_queue)).unwrap();
    mkfifo(&lock_path(&paths.command_queue));
    expect(&paths, ErrorKind::Lmdb, "not a regular file", true);
    reset("lock symlink");
    state_file(&paths.command_queue, None, false);
    std::fs::remove_file(lock_path(&paths.command_queue)).unwrap();
    std::os::unix::fs::symlink("/dev/null", lock_path(&paths.command_queue)).unwrap();
    expect(&paths, ErrorKind::Permission, "symbolic link", false);
    for n in [&names.items, &names.space] {
        NamedSemaphore::unlink(n).unwrap();
    }
}
