//! A client used in a forked child returns `Forked`, and closing it there only forgets it: the
//! parent's LMDB environments and semaphores stay intact. Alone in its binary because it forks.

mod common;

use common::{boot, DevAgent, TempDir};
use etha_tensor_bus::commands::TransferKind::Send;
use etha_tensor_bus::timeout::Timeout;
use etha_tensor_bus::ErrorKind;

#[test]
fn forked_child_cannot_use_the_parent_client() {
    let dir = TempDir::new("fork");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let t = Timeout::from_secs_f64(5.0, "t").unwrap();
    let pending = c.transfer_async("fork-pending", Send, t).unwrap();
    // SAFETY: the child only calls code that checks the pid first, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut code = 0;
        if c.transfer("fork-child", Send, t).map_err(|e| e.kind()) != Err(ErrorKind::Forked) {
            code |= 1;
        }
        if c.heartbeat_age().map_err(|e| e.kind()) != Err(ErrorKind::Forked) {
            code |= 2;
        }
        if pending.wait(t).map_err(|e| e.kind()) != Err(ErrorKind::Forked) {
            code |= 4;
        }
        drop(pending); // must not unlink the parent's semaphore
        drop(c); // must not close the parent's environments
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child crashed");
    assert_eq!(libc::WEXITSTATUS(status), 0, "bit 1: transfer, 2: heartbeat, 4: completion not refused");
    // The parent's client and completion still work.
    pending.wait(t).unwrap();
    c.transfer("fork-parent", Send, t).unwrap();
    assert!(c.heartbeat_age().unwrap() < 5.0);
}
