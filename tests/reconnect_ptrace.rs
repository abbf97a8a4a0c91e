//! After a reconnect the new agent, not the dead one, may ptrace the worker. Alone in its binary:
//! what the process granted is process-wide.

mod common;

use common::{boot, DevAgent, TempDir};
use etb_core::sys::ptrace::{current_grant, Tracer};
use etb_core::timeout::Timeout;

#[test]
fn reconnect_authorizes_the_new_agent() {
    let dir = TempDir::new("reptrace");
    let paths = dir.paths();
    let mut old = DevAgent::start(&paths, &[], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    assert_eq!(current_grant(), Some(Tracer::Pid(old.pid())), "bootstrap authorizes exactly the agent");
    // SAFETY: signalling the agent child.
    unsafe { libc::kill(old.pid(), libc::SIGKILL) };
    let _ = old.child.wait();
    let new = DevAgent::start(&paths, &[], true);
    c.reconnect(Timeout::from_secs_f64(5.0, "t").unwrap()).unwrap();
    assert_eq!(current_grant(), Some(Tracer::Pid(new.pid())), "the dead agent is replaced, not widened to ANY");
}
