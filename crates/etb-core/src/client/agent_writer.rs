//! The agent's writer mutex as the first survival signal (docs/protocol.md section 5).
//!
//! After a command it survived, the agent's loop begins its next heartbeat transaction a median
//! 12 µs after the post (measured against the real agent): it locks LMDB's writer mutex in the
//! state env's `-lock` file, whose owner word then holds the TID of the locking thread, the
//! agent's main thread (its loop runs there, so TID = its pid in its own pid namespace). After a
//! command that raised it writes nothing: it closes the env and exits. So, once the completion
//! was posted, the mutex owned by the agent's main thread means the handler returned and the loop
//! went on; its commit shows much later (342 µs on disk). The signal is accepted only when every
//! guard holds; otherwise the proof goes on with its fallbacks (`outcome`):
//!
//! - the view's own checks (`lmdb::lock_file`: glibc, LMDB's magic and lock format, a robust or
//!   plain process-shared mutex, every offset from this platform's `pthread_mutex_t`);
//! - the expected owner is the agent's pid in its own namespace (`NSpid`), so off when the
//!   agent's pid is unknown;
//! - for a robust mutex, the lock word names the same thread;
//! - at the moment of acceptance, the agent's pidfd has not reported an exit and the lock file at
//!   the agent's path is still the mapped one.
//!
//! The view's txnid word serves the cheaper form of the heartbeat fallback (a commit since the
//! post) also where the owner is unknown.

use std::path::PathBuf;

use crate::lmdb::lock_file::LockView;
use crate::protocol::naming::AgentPaths;
use crate::protocol::state_db::{lock_path, StateDb};

/// A client's view of its agent's state lock file.
pub(super) struct AgentWriter {
    view: LockView,
    /// The TID the agent's main thread has in its own pid namespace; `None`: the writer-lock
    /// signal is off (only the txnid serves).
    owner: Option<i32>,
    lock_path: PathBuf,
}

impl AgentWriter {
    /// The view for an agent of pid `agent_pid` (a pid of this namespace; `None` when unknown),
    /// or `None`, logged at debug level with the reason, when there is none.
    pub(super) fn open(state: &StateDb, paths: &AgentPaths, agent_pid: Option<i32>) -> Option<AgentWriter> {
        let view = match state.lock_view(&paths.state) {
            Ok(view) => view,
            Err(why) => {
                log::debug!("survival proof without the writer-lock signal nor the txnid: {why}");
                return None;
            }
        };
        let owner = match agent_pid {
            None => {
                log::debug!("survival proof without the writer-lock signal: the agent's pid is unknown");
                None
            }
            Some(pid) => {
                let owner = crate::sys::process::pid_in_own_namespace(pid);
                if owner.is_none() {
                    log::debug!(
                        "survival proof without the writer-lock signal: /proc/{pid}/status gives no NSpid \
                         (the agent's pid in its own namespace)"
                    );
                }
                owner
            }
        };
        Some(AgentWriter::new(view, owner, lock_path(&paths.state)))
    }

    pub(super) fn new(view: LockView, owner: Option<i32>, lock_path: PathBuf) -> AgentWriter {
        AgentWriter { view, owner, lock_path }
    }

    /// The expected owner, if the writer-lock signal is on.
    pub(super) fn owner(&self) -> Option<i32> {
        self.owner
    }

    /// The last committed transaction of the state env.
    pub(super) fn txnid(&self) -> u64 {
        self.view.txnid()
    }

    /// Whether the writer mutex is held by the agent's main thread now, the agent not seen dead
    /// (`agent_dead`, asked only once the words agree) and the lock file still the mapped one.
    /// Read after the post was seen, this proves the agent's loop went on past the command.
    pub(super) fn held_by_agent(&self, agent_dead: impl FnOnce() -> bool) -> bool {
        self.owner.is_some_and(|tid| self.view.held_by(tid)) && !agent_dead() && self.view.is_at(&self.lock_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lmdb::lock_file::{Layout, FORMAT, KIND_ROBUST_SHARED, KIND_SHARED, MAGIC};
    use std::io::Write;

    /// A lock file header whose writer mutex is held by `tid` (robust: the lock word too).
    fn lock_file(path: &std::path::Path, kind: i32, lock: u32, owner: i32) {
        let l = Layout::native();
        let mut bytes = vec![0u8; 4096];
        bytes[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
        bytes[4..8].copy_from_slice(&FORMAT.to_ne_bytes());
        bytes[l.writer_mutex..l.writer_mutex + 4].copy_from_slice(&lock.to_ne_bytes());
        bytes[l.writer_mutex + 8..l.writer_mutex + 12].copy_from_slice(&owner.to_ne_bytes());
        bytes[l.writer_mutex + 16..l.writer_mutex + 20].copy_from_slice(&kind.to_ne_bytes());
        std::fs::File::create(path).unwrap().write_all(&bytes).unwrap();
    }

    fn writer(path: &std::path::Path, owner: Option<i32>) -> AgentWriter {
        let view = LockView::map(&std::fs::File::open(path).unwrap(), Layout::native()).unwrap();
        AgentWriter::new(view, owner, path.to_path_buf())
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn each_guard_refuses_the_signal() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-agentwriter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.lmdb-lock");
        lock_file(&p, KIND_ROBUST_SHARED, 77, 77);
        let w = writer(&p, Some(77));
        assert!(w.held_by_agent(|| false), "every guard holds: the signal");
        assert!(!w.held_by_agent(|| true), "the pidfd reported the agent's exit");
        assert!(!writer(&p, Some(78)).held_by_agent(|| false), "an owner that is not the agent's main thread");
        assert!(!writer(&p, None).held_by_agent(|| false), "the agent's pid (or NSpid) unknown: off");
        // The agent's pid in a namespace nested in ours: the owner word holds its pid there.
        let nested = crate::sys::process::parse_nspid("NSpid:\t31337\t77\n");
        assert!(writer(&p, nested).held_by_agent(|| false), "the NSpid owner is the one expected");
        assert!(!writer(&p, Some(31337)).held_by_agent(|| false), "not the pid of our namespace");
        // A robust mutex whose lock word says the owner died (FUTEX_OWNER_DIED, no TID).
        lock_file(&p, KIND_ROBUST_SHARED, 0x4000_0000, 77);
        assert!(!writer(&p, Some(77)).held_by_agent(|| false), "a robust lock word that disagrees");
        // A plain mutex has no TID in its lock word: the owner word alone.
        lock_file(&p, KIND_SHARED, 1, 77);
        assert!(writer(&p, Some(77)).held_by_agent(|| false));
        // The lock file replaced under the same path (an agent restarted): the mapped one is not it.
        let old = writer(&p, Some(77));
        let q = dir.join("new-lock");
        lock_file(&q, KIND_SHARED, 1, 77);
        std::fs::rename(&q, &p).unwrap();
        assert!(!old.held_by_agent(|| false), "the file at the path is another");
        std::fs::remove_file(&p).unwrap();
        assert!(!old.held_by_agent(|| false), "the file is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
