//! What the integration tests under `tests/` look at: the queue's positions, slots and semaphore
//! counts, and how the state LMDB is read. Reached through the `#[doc(hidden)]`
//! `Client::test_hooks`, so that it stays out of the API (a `cfg(test)` item would be invisible
//! to integration tests, and a cargo feature would build the library twice per test run).

use std::sync::Arc;

use super::link::{Link, Proof};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::naming::AgentPaths;
use crate::sys::registry::FileId;

/// A view of one client's agent link, for tests.
pub struct TestHooks {
    pub(super) link: Arc<Link>,
    pub(super) paths: AgentPaths,
    pub(super) hub: Arc<super::watcher::Hub>,
}

impl TestHooks {
    /// Head and tail of the agent's command queue.
    pub fn queue_positions(&self) -> Result<(u64, u64)> {
        self.link.queue.positions().map_err(|e| e.at(&self.paths.command_queue))
    }

    /// The queue's semaphore counts (items, free slots).
    pub fn queue_semaphore_values(&self) -> Result<(i32, i32)> {
        self.link.queue.semaphore_values().map_err(|e| Error::new(ErrorKind::Ipc, e.text()))
    }

    /// The message at logical position `position` of the queue, if any.
    pub fn queue_peek(&self, position: u64) -> Result<Option<Vec<u8>>> {
        self.link.queue.peek(position).map_err(|e| e.at(&self.paths.command_queue))
    }

    /// Whether the state LMDB is read with a reader slot (false: MDB_NOLOCK fallback).
    pub fn state_locking(&self) -> bool {
        self.link.state.locking()
    }

    /// How many commands each signal proved, as (signal, count) in the order the check looks.
    pub fn proof_counts(&self) -> Vec<(Proof, u64)> {
        Proof::ALL.into_iter().zip(self.link.proof_counts()).collect()
    }

    /// The TID the writer-lock signal expects as the mutex's owner (the agent's pid in its own
    /// namespace); `None`: the signal is off.
    pub fn writer_owner(&self) -> Option<i32> {
        self.link.writer.as_ref().and_then(|w| w.owner())
    }

    /// Whether the client's watcher thread was started, and how many completions it watches.
    pub fn watcher(&self) -> (bool, usize) {
        (self.hub.started(), self.hub.watched())
    }

    /// The state LMDB's file identity.
    pub fn state_file_id(&self) -> FileId {
        self.link.state.file_id()
    }
}
