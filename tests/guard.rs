//! The client refuses, before the queue, what would kill the agent (docs/protocol.md section 5),
//! from the pairs and batches it made; an earlier process's are adopted. Against the strict
//! etb-dev-agent, which dies of each of these commands as the real agent does.

mod common;

use common::{boot, boot_shared, register, DevAgent, TempDir, PAIR, TENSOR};
use etb_core::protocol::commands::TransferKind::{Recv, Send};
use etb_core::timeout::Timeout;
use etha_tensor_bus::{Client, ErrorKind};

fn t(s: f64) -> Timeout {
    Timeout::from_secs_f64(s, "t").unwrap()
}

fn refused(r: etha_tensor_bus::Result<impl std::fmt::Debug>, needles: &[&str]) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("nothing was enqueued"), "{e}");
    for n in needles {
        assert!(e.message().contains(n), "{n:?} missing: {e}");
    }
}

/// The agent still lives and answers: a registered batch goes through.
fn still_alive(c: &Client, batch: &str) {
    register(c, &[batch]);
    c.transfer(batch, Send, t(5.0)).unwrap();
    assert!(c.query_transfer_signal(batch, t(5.0)).unwrap());
}

#[test]
fn what_would_kill_the_agent_is_refused_with_nothing_enqueued() {
    let dir = TempDir::new("guard");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    let before = c.test_hooks().queue_positions().unwrap();
    let die = "the agent would die of it";
    refused(c.transfer("never", Send, t(1.0)), &["Transfer for batch \"never\"", die, "adopt_batch"]);
    refused(c.transfer_async("never", Recv, t(1.0)).map(|_| ()), &["\"never\"", die]);
    refused(c.transfer_detached("never", Send, t(1.0)), &["\"never\"", die]);
    refused(c.query_transfer_signal("never", t(1.0)), &["QueryStatus for batch \"never\"", "answers nothing"]);
    refused(c.query_transfer_signal_async("never", t(1.0)).map(|_| ()), &["\"never\""]);
    refused(c.register_tensors("b", &[], None, t(1.0)), &["batch \"b\" has no tensors", die]);
    refused(c.register_tensors("b", &[(PAIR, TENSOR)], None, t(1.0)), &["names pair \"pair\"", die, "adopt_pair"]);
    assert_eq!(c.test_hooks().queue_positions().unwrap(), before, "something was enqueued");
    assert_eq!(common::our_completion_semaphores("never"), Vec::<String>::new());
    // A cleaned-up batch is gone: its Transfer is refused as well.
    register(&c, &["gone"]);
    c.cleanup_batch("gone", t(5.0)).unwrap();
    assert!(!c.batch_known("gone").unwrap());
    refused(c.transfer("gone", Send, t(1.0)), &["\"gone\"", "or cleaned it up"]);
    // A CleanupBatch of an unknown batch is let through: the agent survives it.
    c.cleanup_batch("never", t(5.0)).unwrap();
    still_alive(&c, "alive");
}

#[test]
fn an_earlier_process_batch_and_pair_are_adopted() {
    let dir = TempDir::new("adopt");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    {
        let (first, _) = boot(&paths, 5.0).unwrap();
        register(&first, &["kept"]);
    } // the first worker process is gone; the agent keeps its pair and batch
    let (c, _) = boot(&paths, 5.0).unwrap();
    refused(c.transfer("kept", Send, t(1.0)), &["\"kept\""]);
    c.adopt_batch("kept").unwrap();
    assert!(c.batch_known("kept").unwrap());
    c.transfer("kept", Send, t(5.0)).unwrap();
    assert!(c.query_transfer_signal("kept", t(5.0)).unwrap());
    refused(c.register_tensors("more", &[(PAIR, TENSOR)], None, t(1.0)), &["\"pair\""]);
    c.adopt_pair(PAIR).unwrap();
    assert!(c.pair_known(PAIR).unwrap());
    c.register_tensors("more", &[(PAIR, TENSOR)], None, t(5.0)).unwrap();
    c.transfer("more", Recv, t(5.0)).unwrap();
    // Adopting what the agent does not hold is the caller's word: the agent dies of it.
    c.adopt_batch("invented").unwrap();
    let e = c.transfer("invented", Send, t(5.0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AgentDied, "{e}");
}

#[test]
fn known_from_the_enqueue_also_after_a_timeout() {
    let dir = TempDir::new("guardtimeout");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--ack-delay", "0.5", "--ack-delay-on", "RegisterTensors"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    c.init_pair(PAIR, "a", "b", 1, None, None, t(5.0)).unwrap();
    let e = c.register_tensors("slow", &[(PAIR, TENSOR)], None, t(0.05)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(c.batch_known("slow").unwrap(), "enqueued: the agent handles its queue in order");
    c.transfer("slow", Send, t(5.0)).unwrap();
}

#[test]
fn an_unmatched_pair_is_forgotten() {
    let dir = TempDir::new("guardunmatched");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &["--unmatched"], true);
    let (c, _) = boot(&paths, 5.0).unwrap();
    assert_eq!(c.init_pair("p", "a", "b", 2, None, None, t(5.0)).unwrap_err().kind(), ErrorKind::PairNotMatched);
    assert!(!c.pair_known("p").unwrap());
    refused(c.register_tensors("b", &[("p", TENSOR)], None, t(1.0)), &["\"p\""]);
}

#[test]
fn a_shared_agent_turns_the_guard_off() {
    let dir = TempDir::new("guardshared");
    let paths = dir.paths();
    let _agent = DevAgent::start(&paths, &[], true);
    let (c, _) = boot_shared(&paths, 5.0).unwrap();
    assert!(c.batch_known("anything").unwrap() && c.pair_known("anything").unwrap());
    // What would kill the agent whatever it knows is still refused.
    refused(c.register_tensors("b", &[], None, t(1.0)), &["no tensors"]);
    // A peer may have registered the batch: it goes to the agent, which here dies of it.
    let e = c.transfer("peer-batch", Send, t(5.0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AgentDied, "{e}");
}
