//! A command issued without waiting: a [`Completion`] to wait on or poll later.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::commands::check_pair_matched;
use super::link::{Link, Shared};
use super::outcome::{closed_error, wait_posted, Seen, Tracker};
use crate::error::Result;
use crate::protocol::completion::CompletionSemaphore;
use crate::timeout::Timeout;

/// A command issued without waiting (`transfer_async`): wait on it or poll it later. Owns its
/// semaphore, which is removed when the completion is dropped. It reports done only once the
/// agent posted it *and* was seen to survive the command.
pub struct Completion {
    pub(super) sem: CompletionSemaphore,
    pub(super) shared: Arc<Shared>,
    /// The agent link it was issued on: weak, so that a closed or reconnected client's
    /// environments close with it (the completion then reports `Closed` or `AgentDied`).
    pub(super) link: Weak<Link>,
    /// What the proof has seen so far (the post consumes the semaphore: it goes on from there).
    pub(super) tracker: Mutex<Tracker>,
    /// The command's type, for messages.
    pub(super) what: &'static str,
    /// What the agent is most likely doing when the completion does not come.
    pub(super) hint: String,
    /// For `InitPair`: the pair whose match must be recorded once survival is proven.
    pub(super) pair: Option<String>,
    pub(super) done: AtomicBool,
}

impl Completion {
    pub fn semaphore_name(&self) -> &str {
        self.sem.name()
    }

    fn usable(&self) -> Result<()> {
        self.shared.check_process()?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error(self.sem.name()));
        }
        Ok(())
    }

    /// The link it was issued on, while its client still uses it; else why not.
    fn link(&self) -> Result<Arc<Link>> {
        match self.link.upgrade() {
            Some(link) => Ok(link),
            None if self.shared.closed.load(Ordering::Acquire) => Err(closed_error(self.sem.name())),
            None => Err(self.shared.died_error(self.what)),
        }
    }

    /// The command's type (`Transfer`, `InitPair`, ...).
    pub fn command(&self) -> &'static str {
        self.what
    }

    /// Once survival is proven: for `InitPair`, the recorded match.
    fn finish(&self, link: &Link) -> Result<()> {
        match &self.pair {
            Some(pair) => check_pair_matched(link, pair),
            None => Ok(()),
        }
    }

    /// Waits until the agent acknowledges the command and is seen to survive it, or `timeout`
    /// (then `Timeout`, saying whether the post was seen).
    pub fn wait(&self, timeout: Timeout) -> Result<()> {
        self.usable()?;
        if self.done.load(Ordering::Acquire) {
            return Ok(());
        }
        let deadline = timeout.start();
        let closed = || self.shared.closed.load(Ordering::Acquire);
        let link = self.link()?;
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        if tracker.after.is_none() {
            wait_posted(&self.sem, &link, &mut tracker, &deadline, self.what, &self.hint, &closed)?;
        }
        link.prove_survival(&tracker, &deadline, self.what, self.sem.name(), &closed)?;
        self.finish(&link)?;
        self.done.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the agent has acknowledged the command and was seen to survive it; never blocks.
    /// `AgentDied` when it was seen dead first (also after posting: it posts failed commands
    /// too, then ends).
    pub fn poll(&self) -> Result<bool> {
        self.usable()?;
        if self.done.load(Ordering::Acquire) {
            return Ok(true);
        }
        let link = self.link()?;
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        if tracker.after.is_none() {
            link.observe_dequeue(&mut tracker);
            match self.sem.semaphore().try_wait() {
                Ok(true) => link.observe_post(&mut tracker),
                Ok(false) if self.shared.agent_dead() => return Err(self.shared.died_error(self.what)),
                Ok(false) => return Ok(false),
                Err(e) => return Err(crate::protocol::completion::ipc_error(self.sem.name(), e)),
            }
        }
        match link.survival(&tracker) {
            Some(Seen::Dead) => Err(self.shared.died_error(&format!("{} was acknowledged, but", self.what))),
            Some(_) => {
                self.finish(&link)?;
                self.done.store(true, Ordering::Release);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
