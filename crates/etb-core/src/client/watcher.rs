//! Completions an event loop can wait on: one library thread per client (started by the first
//! `watch` or `event_fd`) waits for the posts of the completions handed to it, runs their survival
//! proof (`outcome`), and signals an eventfd once a completion has its final outcome. The fd is
//! level-triggered: readable while some resolved completion's token was not yet taken
//! ([`Hub::take_resolved`], which drains it when none is left). Named semaphores have no fd, so
//! something must wait on them: one thread per client, never one per pending command.
//!
//! The thread blocks on the semaphore of the watched completion issued first (the agent handles
//! commands one at a time, in queue order, so it is posted first), in slices of [`SLICE`], and
//! between slices looks, without blocking, at all of them (a completion the agent never posts
//! does not hold the others up for more than a slice). With nothing watched it sleeps on a
//! condition variable. It never holds a completion's lock while another thread waits on it
//! (`try_lock`): a completion waited on by its owner meanwhile is left to that wait.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// How long the thread blocks on one semaphore before it looks at every watched completion.
pub(super) const SLICE: Duration = Duration::from_millis(10);

/// What the watcher needs of a completion (`completion::Inner` implements it): whether its outcome
/// is final, its queue position, and one look without blocking or one blocking slice, each of
/// which answers whether the outcome is final now.
pub(super) trait Watched: Send + Sync {
    fn is_final(&self) -> bool;
    fn position(&self) -> u64;
    fn poll_quietly(&self) -> bool;
    fn wait_quietly(&self, slice: Duration) -> bool;
}

type Inner = dyn Watched;

/// A client's watcher: its watched and resolved completions, its eventfd and its thread.
pub(super) struct Hub {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Handed to the thread, not resolved yet: (token, completion).
    watched: Vec<(u64, Weak<Inner>)>,
    /// Resolved, the token not taken yet.
    resolved: VecDeque<(u64, Weak<Inner>)>,
    /// Made with the thread, closed by `stop`.
    event: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    stopped: bool,
}

impl Hub {
    pub(super) fn new() -> Arc<Hub> {
        Arc::new(Hub { state: Mutex::new(State::default()), wake: Condvar::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The eventfd, made (with the thread) on first use: readable while a resolved token waits
    /// in [`Hub::take_resolved`]. Owned by the hub: valid until the client is closed.
    pub(super) fn event_fd(self: &Arc<Self>) -> Result<RawFd> {
        let mut st = self.lock();
        self.start(&mut st)?;
        Ok(st.event.as_ref().map(AsRawFd::as_raw_fd).unwrap_or(-1))
    }

    /// Makes the eventfd and starts the thread, once.
    fn start(self: &Arc<Self>, st: &mut State) -> Result<()> {
        if st.stopped {
            return Err(Error::new(ErrorKind::Closed, "the client was closed: its event fd and watcher are gone"));
        }
        if st.thread.is_some() {
            return Ok(());
        }
        // SAFETY: eventfd with integer arguments; the descriptor it returns is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            let errno = crate::error::last_errno();
            return Err(Error::new(
                ErrorKind::Ipc,
                format!("eventfd for the client's completions failed: {}", crate::error::errno_text(errno)),
            ));
        }
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        st.event = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        let hub = Arc::downgrade(self);
        let thread = std::thread::Builder::new().name("etb-watch".into()).spawn(move || run(hub)).map_err(|e| {
            st.event = None;
            Error::new(ErrorKind::Ipc, format!("could not start the completion watcher thread: {e}"))
        })?;
        st.thread = Some(thread);
        Ok(())
    }

    /// Hands `inner` to the thread; its `token` comes out of [`Hub::take_resolved`] once its
    /// outcome is final (at once if it already is). Watching it again replaces the token.
    pub(super) fn watch(self: &Arc<Self>, inner: Arc<Inner>, token: u64) -> Result<()> {
        let mut st = self.lock();
        self.start(&mut st)?;
        let weak = Arc::downgrade(&inner);
        st.watched.retain(|(_, w)| !w.ptr_eq(&weak));
        st.resolved.retain(|(_, w)| !w.ptr_eq(&weak));
        if inner.is_final() {
            push_resolved(&mut st, token, weak);
        } else {
            st.watched.push((token, weak));
            self.wake.notify_all();
        }
        Ok(())
    }

    /// Forgets `inner` (freed): it leaves the watched set, and its token, if not taken yet, the
    /// resolved queue (the fd is drained when none is left).
    pub(super) fn unwatch(&self, inner: *const ()) {
        let mut st = self.lock();
        st.watched.retain(|(_, w)| w.as_ptr() as *const () != inner);
        let before = st.resolved.len();
        st.resolved.retain(|(_, w)| w.as_ptr() as *const () != inner);
        if before > 0 && st.resolved.is_empty() {
            drain(&st);
        }
    }

    /// Takes up to `max` tokens of resolved completions, oldest first; drains the fd when none
    /// is left.
    pub(super) fn take_resolved(&self, max: usize) -> Vec<u64> {
        let mut st = self.lock();
        let n = max.min(st.resolved.len());
        let tokens = st.resolved.drain(..n).map(|(t, _)| t).collect();
        if st.resolved.is_empty() {
            drain(&st);
        }
        tokens
    }

    /// How many completions are watched and not resolved yet.
    pub(super) fn watched(&self) -> usize {
        self.lock().watched.len()
    }

    /// Whether the thread was started (for tests: how many threads the library added).
    pub(super) fn started(&self) -> bool {
        self.lock().thread.is_some()
    }

    /// Stops the thread (it returns within a slice: the client's `closed` flag ends its waits)
    /// and closes the fd. Later `watch`/`event_fd` calls say `Closed`.
    pub(super) fn stop(&self) {
        let thread = {
            let mut st = self.lock();
            st.stopped = true;
            st.watched.clear();
            st.resolved.clear();
            self.wake.notify_all();
            st.thread.take()
        };
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        self.lock().event = None;
    }

    /// Moves `inner` from watched to resolved (if it is still watched) and signals the fd.
    fn resolve(&self, inner: &Arc<Inner>) {
        let mut st = self.lock();
        let weak = Arc::downgrade(inner);
        if let Some(i) = st.watched.iter().position(|(_, w)| w.ptr_eq(&weak)) {
            let (token, w) = st.watched.remove(i);
            push_resolved(&mut st, token, w);
        }
    }
}

fn push_resolved(st: &mut State, token: u64, weak: Weak<Inner>) {
    st.resolved.push_back((token, weak));
    if st.resolved.len() == 1 {
        if let Some(fd) = &st.event {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A full counter
            // (EAGAIN) cannot happen: it is drained whenever the queue empties.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// Resets the eventfd's counter to 0 (not readable).
fn drain(st: &State) {
    if let Some(fd) = &st.event {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd we own (EAGAIN when
        // already 0).
        unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// The thread: until stopped, proves the watched completions and resolves them.
fn run(hub: Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        let batch: Vec<Arc<Inner>> = {
            let mut st = h.lock();
            loop {
                if st.stopped {
                    return;
                }
                st.watched.retain(|(_, w)| w.strong_count() > 0);
                if !st.watched.is_empty() {
                    break;
                }
                st = h.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.watched.iter().filter_map(|(_, w)| w.upgrade()).collect()
        };
        let mut resolved = false;
        for inner in &batch {
            if inner.poll_quietly() {
                h.resolve(inner);
                resolved = true;
            }
        }
        if !resolved {
            // Block on the first issued: the agent posts in queue order.
            match batch.iter().filter(|i| !i.is_final()).min_by_key(|i| i.position()) {
                Some(first) if first.wait_quietly(SLICE) => h.resolve(first),
                Some(_) => {}
                // Every one final but not resolved: resolve them next turn.
                None => {}
            }
        }
        drop(batch);
        drop(h);
    }
}
