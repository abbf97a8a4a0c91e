//! A command issued without waiting: a [`Completion`] to wait on or poll later.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use super::link::{Link, Shared};
use super::outcome::{closed_error, Pending};
use crate::error::Result;
use crate::timeout::Timeout;

/// A command issued without waiting (`transfer_async`): wait on it or poll it later. Owns its
/// semaphore, which is removed when the completion is dropped. It reports done only once the
/// agent posted it *and* was seen to survive the command (the one proof of `outcome`).
pub struct Completion {
    shared: Arc<Shared>,
    /// The agent link it was issued on: weak, so that a closed or reconnected client's
    /// environments close with it (the completion then reports `Closed` or `AgentDied`).
    link: Weak<Link>,
    pending: Mutex<Pending>,
    /// The command's type and its semaphore's name, readable without the lock.
    what: &'static str,
    semaphore_name: String,
}

impl Completion {
    pub(super) fn new(pending: Pending, link: &Arc<Link>) -> Completion {
        Completion {
            shared: link.shared.clone(),
            link: Arc::downgrade(link),
            what: pending.what(),
            semaphore_name: pending.semaphore_name().to_string(),
            pending: Mutex::new(pending),
        }
    }

    pub fn semaphore_name(&self) -> &str {
        &self.semaphore_name
    }

    /// The command's type (`Transfer`, `InitPair`, ...).
    pub fn command(&self) -> &'static str {
        self.what
    }

    fn usable(&self) -> Result<()> {
        self.shared.check_not_forked()?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error(&self.semaphore_name));
        }
        Ok(())
    }

    /// The link it was issued on, while its client still uses it; else why not.
    fn link(&self) -> Result<Arc<Link>> {
        match self.link.upgrade() {
            Some(link) => Ok(link),
            None if self.shared.closed.load(Ordering::Acquire) => Err(closed_error(&self.semaphore_name)),
            None => Err(self.shared.died_error(self.what)),
        }
    }

    /// Waits until the agent acknowledges the command and is seen to survive it, or `timeout`
    /// (then `Timeout`, saying whether the post was seen).
    pub fn wait(&self, timeout: Timeout) -> Result<()> {
        self.usable()?;
        let deadline = timeout.start();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.done() {
            return Ok(());
        }
        let closed = || self.shared.closed.load(Ordering::Acquire);
        pending.wait(&*self.link()?, &deadline, &closed)
    }

    /// Whether the agent has acknowledged the command and was seen to survive it; never blocks.
    /// `AgentDied` when it was seen dead first (also after posting: it posts failed commands
    /// too, then ends).
    pub fn poll(&self) -> Result<bool> {
        self.usable()?;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.done() {
            return Ok(true);
        }
        pending.poll(&*self.link()?)
    }
}
