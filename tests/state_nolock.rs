//! The state LMDB falls back to MDB_NOLOCK only when its lock file is not writable by us.
//! Runs alone in its own test binary because it forks (no other test threads may hold locks).
//! Needs root (to switch the child to another uid); prints a skip line otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{DevAgent, TempDir};
use etb_core::protocol::state_db::{lock_path, StateDb};
use etb_core::sys::trust::TrustPolicy;

#[test]
fn unwritable_lock_file_falls_back_to_nolock() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to run the reader as another uid");
        return;
    }
    let dir = TempDir::new("nolock");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    for p in [paths.state.clone(), lock_path(&paths.state)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // SAFETY: the child only calls async-signal-safe-enough code of a single-threaded library
    // path (no other thread of this test binary exists) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: in the forked child (single-threaded copy of this test): dropping privileges has no memory-safety preconditions.
        let code = unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                10
            } else {
                match StateDb::open(&paths.state, TrustPolicy::default()) {
                    Ok(s) if !s.locking() && s.fresh_heartbeat_age().is_ok() => 0,
                    Ok(s) if s.locking() => 11,
                    Ok(_) => 12,
                    Err(_) => 13,
                }
            }
        };
        // SAFETY: _exit ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; out-pointer to a local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child crashed: {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "10: setuid failed, 11: used the lock file it cannot write, 12: heartbeat unreadable, 13: open failed"
    );
    // And as ourselves (the lock file is writable): a reader slot.
    let s = StateDb::open(&paths.state, TrustPolicy::default()).unwrap();
    assert!(s.locking());
}
