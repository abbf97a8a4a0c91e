//! A client used in a forked child returns `Forked`, and closing it there only forgets it: the
//! parent's LMDB environments and semaphores stay intact. Alone in its binary because it forks.

mod common;

use common::{boot_shared, register, DevAgent, TempDir};
use etb_core::protocol::commands::TransferKind::Send;
use etb_core::timeout::Timeout;
use etha_tensor_bus::ErrorKind;

#[test]
fn forked_child_cannot_use_the_parent_client() {
    let dir = TempDir::new("fork");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--never-ack", "Transfer"], true);
    // Shared: the child's own bootstrap below is a second worker of the agent.
    let (c, _) = boot_shared(&paths, 5.0).unwrap();
    register(&c, &["fork-pending"]);
    let t = Timeout::from_secs_f64(5.0, "t").unwrap();
    let pending = c.transfer_async("fork-pending", Send, t).unwrap(); // never acknowledged
    let sem_file = format!("/dev/shm/sem.{}", &pending.semaphore_name()[1..]);
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
                 // A fresh bootstrap in the child gets environments of its own, not the parent's.
        match boot_shared(&paths, 5.0) {
            Ok((child_client, _)) => {
                if child_client.cleanup_batch("fork-child-own", t).is_err() {
                    code |= 8;
                }
            }
            Err(_) => code |= 16,
        }
        // SAFETY: _exit ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; out-pointer to a local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child crashed");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "bits 1/2/4: transfer/heartbeat/completion not refused; 8/16: the child's own client failed"
    );
    // The parent's completion semaphore survived the child, and the parent's client works.
    assert!(std::path::Path::new(&sem_file).exists(), "the child removed the parent's semaphore");
    assert!(!pending.poll().unwrap());
    c.cleanup_batch("fork-parent", t).unwrap();
    assert!(c.heartbeat_age().unwrap() < 5.0);
    drop(pending);
    assert!(!std::path::Path::new(&sem_file).exists());
}
