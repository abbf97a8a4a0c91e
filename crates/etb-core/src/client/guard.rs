//! The client refuses, before the queue, what would kill the agent (docs/protocol.md section 5,
//! "What each handler of the real agent rejects"), from what it knows: the pairs it matched and
//! the batches it registered.
//!
//! A pair is known from the moment its `InitPair` was enqueued, a batch from the moment its
//! `RegisterTensors` was (the agent handles its queue in order), also after that command timed
//! out; a batch is gone from the moment a `CleanupBatch` for it was enqueued; a pair whose InitPair
//! completed unmatched is forgotten. The decision is made inside the queue's write transaction
//! ([`CommandQueue::enqueue`](crate::protocol::command_queue::CommandQueue::enqueue)'s `admit`),
//! so it follows the queue's order across threads. The known sets belong to one process and one
//! agent link: a reconnect starts empty (the new agent knows nothing of the old one's).
//!
//! The agent keeps pairs and batches for its whole life, across worker processes, so a restarted
//! worker names what an earlier one made with [`Guard::adopt_pair`] / [`Guard::adopt_batch`].
//! With the agent-sharing option the guard is off (a peer may have registered the batch): only
//! what would kill the agent whatever it knows (an empty tensor list) is still refused.
//!
//! A batch registered with a read-only payload ([`read_only`]: DLPack's read-only flag) is
//! remembered as such, with the guard on or off, and a `Transfer(recv)` of it is refused: the
//! direction is known only then.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::payload::read_only;
use crate::protocol::commands::{Command, TransferKind};

#[derive(Default)]
struct Known {
    pairs: HashSet<String>,
    batches: HashSet<String>,
    /// Batches registered with a read-only payload (DLPack's flag): a receive would write them.
    /// Kept also with the guard off: this client registered them.
    read_only: HashSet<String>,
}

/// What one client knows its agent holds.
pub(super) struct Guard {
    /// False with the agent-sharing option.
    on: bool,
    known: Mutex<Known>,
}

impl Guard {
    pub(super) fn new(on: bool) -> Guard {
        Guard { on, known: Mutex::new(Known::default()) }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether commands may address `batch_id`: it was registered (or adopted) by this client, or
    /// the guard is off.
    pub(super) fn batch_known(&self, batch_id: &str) -> bool {
        !self.on || self.known().batches.contains(batch_id)
    }

    /// Whether `RegisterTensors` may name `pair_name`: it was matched (or adopted) by this client,
    /// or the guard is off.
    pub(super) fn pair_known(&self, pair_name: &str) -> bool {
        !self.on || self.known().pairs.contains(pair_name)
    }

    /// A pair an earlier process of this worker matched with this agent.
    pub(super) fn adopt_pair(&self, pair_name: &str) {
        self.known().pairs.insert(pair_name.to_string());
    }

    /// A batch an earlier process of this worker registered with this agent.
    pub(super) fn adopt_batch(&self, batch_id: &str) {
        self.known().batches.insert(batch_id.to_string());
    }

    /// After an `InitPair` the agent survived without recording the match: the pair is not one.
    pub(super) fn forget_pair(&self, pair_name: &str) {
        self.known().pairs.remove(pair_name);
    }

    /// Refuses `command` if the agent would die of it (or, for `QueryStatus`, answer nothing);
    /// else records what enqueueing it makes known or gone. Called before the wait for queue
    /// space with `record` false (a refused command never waits), and inside the queue's write
    /// transaction with `record` true.
    pub(super) fn admit(&self, command: &Command<'_>, record: bool) -> Result<()> {
        let mut known = self.known();
        match command {
            Command::Transfer { batch_id, .. } if self.on && !known.batches.contains(*batch_id) => Err(refused(
                format!(
                    "Transfer for batch {batch_id:?}: this client never registered that batch with its agent (or \
                     cleaned it up): the agent would die of it (\"Transfer for unknown batch\")"
                ),
                "register the batch first, or adopt_batch one that an earlier process of this worker registered",
            )),
            Command::Transfer { batch_id, transfer_type: TransferKind::Recv }
                if known.read_only.contains(*batch_id) =>
            {
                Err(refused(
                    format!(
                        "Transfer(recv) for batch {batch_id:?}: the batch holds a read-only payload (its DLPack \
                         producer set DLPACK_FLAG_BITMASK_READ_ONLY) and a receive writes into its tensors"
                    ),
                    "send from it, or register a writable tensor to receive into",
                ))
            }
            Command::QueryStatus { batch_id, .. } if self.on && !known.batches.contains(*batch_id) => Err(refused(
                format!(
                    "QueryStatus for batch {batch_id:?}: this client never registered that batch with its agent (or \
                     cleaned it up): the agent answers nothing for an unknown batch, and a value an earlier batch of \
                     the same id left would be read as the answer"
                ),
                "register the batch first, or adopt_batch one that an earlier process of this worker registered",
            )),
            Command::RegisterTensors { batch_id, tensors, .. } => {
                if tensors.is_empty() {
                    return Err(refused(
                        format!(
                            "RegisterTensors for batch {batch_id:?} has no tensors: the agent would die of it (it \
                             reads the first tensor's pair)"
                        ),
                        "pass at least one tensor",
                    ));
                }
                if self.on {
                    if let Some((pair, _)) = tensors.iter().find(|(pair, _)| !known.pairs.contains(*pair)) {
                        return Err(refused(
                            format!(
                                "RegisterTensors for batch {batch_id:?} names pair {pair:?}, which this client never \
                             matched with its agent: the agent would die of it (\"RegisterTensors for unknown pair\")"
                            ),
                            "init_pair first, or adopt_pair one that an earlier process of this worker matched",
                        ));
                    }
                }
                if record {
                    known.batches.insert(batch_id.to_string());
                    if read_only::holds_any(tensors.iter().map(|(_, bytes)| *bytes)) {
                        known.read_only.insert(batch_id.to_string());
                    } else {
                        known.read_only.remove(*batch_id);
                    }
                }
                Ok(())
            }
            Command::InitPair { pair_name, .. } => {
                if record {
                    known.pairs.insert(pair_name.to_string());
                }
                Ok(())
            }
            Command::CleanupBatch { batch_id } => {
                if record {
                    known.batches.remove(*batch_id);
                    known.read_only.remove(*batch_id);
                }
                Ok(())
            }
            Command::Transfer { .. } | Command::QueryStatus { .. } => Ok(()),
        }
    }
}

fn refused(what: String, instead: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument, format!("{what}; nothing was enqueued: {instead}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(batch_id: &str) -> Command<'_> {
        Command::Transfer { batch_id, transfer_type: TransferKind::Send }
    }

    #[test]
    fn knows_what_was_enqueued() {
        let g = Guard::new(true);
        let e = g.admit(&transfer("b"), true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("\"b\"") && e.message().contains("nothing was enqueued"), "{e}");
        let register = Command::RegisterTensors { batch_id: "b", tensors: vec![("p", b"x")], bucket_size: None };
        assert!(g.admit(&register, true).unwrap_err().message().contains("pair \"p\""));
        let init = Command::InitPair {
            pair_name: "p",
            local_name: "l",
            expected_world_size: 1,
            remote_name: "r",
            mesh_shape_payload: None,
            placements_payload: None,
        };
        g.admit(&init, false).unwrap();
        assert!(!g.pair_known("p"), "a pre-check records nothing");
        g.admit(&init, true).unwrap();
        g.admit(&register, true).unwrap();
        g.admit(&transfer("b"), true).unwrap();
        g.admit(&Command::QueryStatus { batch_id: "b", state_name: "transfer_signal" }, true).unwrap();
        g.admit(&Command::CleanupBatch { batch_id: "b" }, true).unwrap();
        assert!(g.admit(&transfer("b"), true).is_err(), "cleaned up");
        g.adopt_batch("b");
        g.admit(&transfer("b"), true).unwrap();
        g.admit(&Command::CleanupBatch { batch_id: "never" }, true).unwrap();
        let empty = Command::RegisterTensors { batch_id: "e", tensors: vec![], bucket_size: None };
        assert!(g.admit(&empty, true).unwrap_err().message().contains("no tensors"));
    }

    #[test]
    fn a_batch_with_a_read_only_payload_refuses_a_receive() {
        // A payload the read-only registry knows by its bytes (as a DLPack payload with the flag).
        let ro: &[u8] = b"\x80\x03guard-read-only-test.";
        crate::payload::read_only::mark_for_tests(ro);
        for on in [true, false] {
            let g = Guard::new(on);
            g.adopt_pair("p");
            let register =
                Command::RegisterTensors { batch_id: "b", tensors: vec![("p", b"x"), ("p", ro)], bucket_size: None };
            g.admit(&register, true).unwrap();
            let recv = Command::Transfer { batch_id: "b", transfer_type: TransferKind::Recv };
            for record in [false, true] {
                let e = g.admit(&recv, record).unwrap_err();
                assert!(e.message().contains("read-only") && e.message().contains("nothing was enqueued"), "{e}");
            }
            g.admit(&transfer("b"), true).unwrap();
            g.admit(&Command::CleanupBatch { batch_id: "b" }, true).unwrap();
            g.adopt_batch("b");
            g.admit(&recv, true).unwrap();
        }
        crate::payload::read_only::unmark_for_tests(ro);
    }

    #[test]
    fn off_when_the_agent_is_shared() {
        let g = Guard::new(false);
        g.admit(&transfer("anything"), true).unwrap();
        assert!(g.batch_known("anything") && g.pair_known("any"));
        let empty = Command::RegisterTensors { batch_id: "e", tensors: vec![], bucket_size: None };
        assert!(g.admit(&empty, true).is_err(), "an empty list kills the agent whatever it knows");
    }
}
