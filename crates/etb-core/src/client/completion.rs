//! A command issued without waiting: a [`Completion`] to wait on, poll, or hand to the client's
//! watcher (`watcher`) so that an event loop learns of its outcome through an fd.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::link::{Link, Shared};
use super::outcome::{closed_error, Pending};
use super::watcher::{Hub, Watched};
use crate::error::{ErrorKind, Result};
use crate::timeout::{Deadline, Timeout};

/// A command issued without waiting (`transfer_async`): wait on it, poll it, or watch it. Owns
/// its semaphore, which is removed when the completion is dropped. It reports done only once the
/// agent posted it *and* was seen to survive the command (the one proof of `outcome`).
pub struct Completion {
    inner: Arc<Inner>,
    hub: Arc<Hub>,
}

/// What a completion shares with its client's watcher thread.
pub(super) struct Inner {
    shared: Arc<Shared>,
    /// The agent link it was issued on: weak, so that a closed or reconnected client's
    /// environments close with it (the completion then reports `Closed` or `AgentDied`).
    link: Weak<Link>,
    pending: Mutex<Pending>,
    /// The final outcome, once known: success, or an error that every later look repeats
    /// (anything but a timeout of a wait). Set once; read without the lock.
    outcome: OnceLock<Result<()>>,
    /// The command's type, its semaphore's name and its queue position, readable without the lock.
    what: &'static str,
    semaphore_name: String,
    position: u64,
}

impl Completion {
    pub(super) fn new(pending: Pending, link: &Arc<Link>, hub: &Arc<Hub>) -> Completion {
        let inner = Inner {
            shared: link.shared.clone(),
            link: Arc::downgrade(link),
            what: pending.what(),
            semaphore_name: pending.semaphore_name().to_string(),
            position: pending.position(),
            pending: Mutex::new(pending),
            outcome: OnceLock::new(),
        };
        Completion { inner: Arc::new(inner), hub: hub.clone() }
    }

    pub fn semaphore_name(&self) -> &str {
        &self.inner.semaphore_name
    }

    /// The command's type (`Transfer`, `InitPair`, ...).
    pub fn command(&self) -> &'static str {
        self.inner.what
    }

    /// Waits until the agent acknowledges the command and is seen to survive it, or `timeout`
    /// (then `Timeout`, saying whether the post was seen). Once the outcome is final, every call
    /// returns it at once.
    pub fn wait(&self, timeout: Timeout) -> Result<()> {
        self.inner.usable()?;
        if let Some(outcome) = self.inner.outcome.get() {
            return outcome.clone();
        }
        let deadline = timeout.start();
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outcome) = self.inner.outcome.get() {
            return outcome.clone();
        }
        let closed = || self.inner.shared.closed.load(Ordering::Acquire);
        let result = self.inner.link().and_then(|link| pending.wait(&link, &deadline, &closed, true));
        self.inner.settle(result)
    }

    /// Whether the agent has acknowledged the command and was seen to survive it; never blocks
    /// (false while the client's watcher or another thread is looking at it). `AgentDied` when it
    /// was seen dead first (also after posting: it posts failed commands too, then ends).
    pub fn poll(&self) -> Result<bool> {
        self.inner.usable()?;
        if let Some(outcome) = self.inner.outcome.get() {
            return outcome.clone().map(|()| true);
        }
        let Ok(mut pending) = self.inner.pending.try_lock() else { return Ok(false) };
        let result = self.inner.link().and_then(|link| pending.poll(&link));
        match result {
            Ok(false) => Ok(false),
            Ok(true) => self.inner.settle(Ok(())).map(|()| true),
            Err(e) => self.inner.settle(Err(e)).map(|()| true),
        }
    }

    /// Hands the completion to its client's watcher thread: once its outcome is final, `token`
    /// comes out of `Client::take_resolved` and the client's event fd turns readable. Watching
    /// again replaces the token; dropping the completion unwatches it.
    pub fn watch(&self, token: u64) -> Result<()> {
        self.inner.usable()?;
        self.hub.watch(self.inner.clone(), token)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.hub.unwatch(Arc::as_ptr(&self.inner) as *const ());
    }
}

impl Inner {
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

    /// Records a result when it is final (success, or any error but a wait's timeout and a
    /// forked child's) and returns it.
    fn settle(&self, result: Result<()>) -> Result<()> {
        match &result {
            Err(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Forked) => {}
            _ => {
                let _ = self.outcome.set(result.clone());
            }
        }
        result
    }
}

impl Watched for Inner {
    fn is_final(&self) -> bool {
        self.outcome.get().is_some()
    }

    fn position(&self) -> u64 {
        self.position
    }

    /// The watcher's look, without blocking: whether the outcome is final now. Leaves the
    /// completion alone while another thread holds it.
    fn poll_quietly(&self) -> bool {
        if self.is_final() {
            return true;
        }
        let Ok(mut pending) = self.pending.try_lock() else { return false };
        let result = self.link().and_then(|link| pending.poll(&link));
        match result {
            Ok(false) => false,
            Ok(true) => {
                let _ = self.settle(Ok(()));
                true
            }
            Err(e) => {
                let _ = self.settle(Err(e));
                self.is_final()
            }
        }
    }

    /// The watcher's blocking look: waits at most `slice` for the post and the proof (without
    /// the first spin of a caller's wait); whether the outcome is final then. While another
    /// thread holds the completion, sleeps a little instead.
    fn wait_quietly(&self, slice: Duration) -> bool {
        if self.is_final() {
            return true;
        }
        let Ok(mut pending) = self.pending.try_lock() else {
            std::thread::sleep(Duration::from_millis(1));
            return self.is_final();
        };
        let deadline: Deadline = Timeout::After(slice).start();
        let closed = || self.shared.closed.load(Ordering::Acquire);
        let result = self.link().and_then(|link| pending.wait(&link, &deadline, &closed, false));
        let _ = self.settle(result);
        self.is_final()
    }
}
