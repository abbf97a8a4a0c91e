//! One process, several agents (one client per local GPU, as JAX drives every local GPU from one
//! process): the kernel keeps one tracer per process (Yama's `PR_SET_PTRACER` takes a single
//! pid), so the default mode (`PtraceMode::Agent`) must not silently leave all but the last
//! agent unauthorized. The rule: the first agent alone is authorized; a second live agent widens
//! the authorization to every process (`PR_SET_PTRACER_ANY`) with one warning naming both pids;
//! ANY then stays, silently, for later agents and after the clients close. Alone in its binary:
//! what the process granted is process-wide.

mod common;

use std::sync::{Arc, Mutex};

use common::{boot, DevAgent, TempDir};
use etb_core::sys::ptrace::{current_grant, Tracer};

#[test]
fn a_second_live_agent_widens_to_any_with_one_warning() {
    let warnings: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = warnings.clone();
    etb_core::logging::set_sink(Some(Box::new(move |level, target, message| {
        if level == log::Level::Warn && target.contains("ptrace") {
            seen.lock().unwrap().push(message.to_string());
        }
    })))
    .unwrap();
    let said = || warnings.lock().unwrap().clone();
    let dirs = [TempDir::new("ptrace2a"), TempDir::new("ptrace2b"), TempDir::new("ptrace2c")];
    let a = DevAgent::start(&dirs[0].paths(), &[], true);
    let b = DevAgent::start(&dirs[1].paths(), &[], true);
    let c = DevAgent::start(&dirs[2].paths(), &[], true);

    let (first, _) = boot(&dirs[0].paths(), 5.0).unwrap();
    assert_eq!(current_grant(), Some(Tracer::Pid(a.pid())), "the first agent alone");
    assert_eq!(said(), Vec::<String>::new(), "nothing to say for one agent");

    let (second, _) = boot(&dirs[1].paths(), 5.0).unwrap();
    assert_eq!(current_grant(), Some(Tracer::Any), "both agents must stay authorized: ANY");
    let said_now = said();
    assert_eq!(said_now.len(), 1, "one warning: {said_now:?}");
    assert!(
        said_now[0].contains(&format!("agent pid {} ptrace it and now needs pid {} too", a.pid(), b.pid()))
            && said_now[0].contains("PR_SET_PTRACER_ANY"),
        "{}",
        said_now[0]
    );

    let (third, _) = boot(&dirs[2].paths(), 5.0).unwrap();
    assert_eq!(current_grant(), Some(Tracer::Any), "a third agent keeps ANY");
    assert_eq!(said().len(), 1, "and says nothing more: {:?}", said());
    drop((first, second, third));
    assert_eq!(current_grant(), Some(Tracer::Any), "ANY is never narrowed in this process");
    etb_core::logging::set_sink(None).unwrap();
    drop((a, b, c));
}
