//! The survival proof (docs/protocol.md section 5): what a posted completion must be followed by
//! before the command counts as done. The agent posts a command's completion also when the
//! command failed, then ends; so a post alone proves nothing. After a command it survived, the
//! agent writes one heartbeat before it dequeues the next command, and none after a command that
//! raised.

use std::time::Duration;

use super::link::Link;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::completion::CompletionSemaphore;
use crate::sys::semaphore::WaitError;
use crate::timeout::Deadline;

/// How long the survival proof sleeps between its first checks (doubling up to
/// [`PROOF_MAX_PAUSE`]): the real agent rewrites its heartbeat about 0.13 ms after it posts the
/// completion of a command it survived (docs/protocol.md section 5).
const PROOF_FIRST_PAUSE: Duration = Duration::from_micros(20);
const PROOF_MAX_PAUSE: Duration = Duration::from_millis(1);

/// What the survival check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// A heartbeat written after the post.
    Heartbeat,
    /// A command after ours dequeued.
    LaterDequeue,
    /// The agent's process exited, or its files are gone.
    Dead,
}

/// One command on its way to a proven outcome: its position, and the heartbeat values that a
/// later change of proves the agent survived it.
///
/// After the agent dequeues our command its next heartbeat is written only once it handled the
/// command without raising. So a heartbeat that differs from one read *after* the command was
/// dequeued proves survival: `during`, read while waiting, once the queue's head passed our
/// position (before the post, when the command takes a while), and `after`, read right after
/// the post was seen (for a quick command; when the agent beat before we read, the proof waits
/// for its next loop turn or its next dequeue).
pub(super) struct Tracker {
    /// The command's logical position in the queue.
    pub(super) position: u64,
    /// The heartbeat read once the head had passed our position, before the post was seen.
    pub(super) during: Option<Option<Vec<u8>>>,
    /// The heartbeat read right after the post was seen; `None` until then.
    pub(super) after: Option<Option<Vec<u8>>>,
}

impl Tracker {
    pub(super) fn new(position: u64) -> Tracker {
        Tracker { position, during: None, after: None }
    }
}

impl Link {
    /// While the post is awaited: once the agent dequeued our command, remembers the heartbeat
    /// of that moment (head first, then the heartbeat, so the value is one read after the dequeue).
    pub(super) fn observe_dequeue(&self, tracker: &mut Tracker) {
        if tracker.during.is_none() && self.queue.head().is_ok_and(|head| head > tracker.position) {
            tracker.during = Some(self.heartbeat_value());
        }
    }

    /// Records what the state says right after a completion's post was seen.
    pub(super) fn observe_post(&self, tracker: &mut Tracker) {
        tracker.after = Some(self.heartbeat_value());
    }

    /// One non-blocking look at whether the agent survived the posted command: it did when it
    /// wrote a heartbeat since the post (it beats once before its next dequeue, and never after a
    /// command that raised) or dequeued a command after ours (the queue's head reached our
    /// position + 2); it did not when it is seen dead (its process exited, or its files are
    /// gone); `None` while neither is known.
    pub(super) fn survival(&self, tracker: &Tracker) -> Option<Seen> {
        let now = self.heartbeat_value();
        if tracker.after.as_ref().is_some_and(|after| *after != now)
            || tracker.during.as_ref().is_some_and(|d| *d != now)
        {
            return Some(Seen::Heartbeat);
        }
        if self.queue.head().is_ok_and(|head| head >= tracker.position.saturating_add(2)) {
            return Some(Seen::LaterDequeue);
        }
        if self.shared.agent_dead() || self.files_gone() {
            return Some(Seen::Dead);
        }
        None
    }

    /// Waits until [`Link::survival`] knows, at most until `deadline`.
    pub(super) fn prove_survival(
        &self,
        tracker: &Tracker,
        deadline: &Deadline,
        what: &str,
        sem_name: &str,
        closed: &dyn Fn() -> bool,
    ) -> Result<()> {
        let mut pause = PROOF_FIRST_PAUSE;
        let started = std::time::Instant::now();
        loop {
            match self.survival(tracker) {
                Some(Seen::Dead) => return Err(self.shared.died_error(&format!("{what} was acknowledged, but"))),
                Some(how) => {
                    // bench/run.py reads these lines for the cost of the survival check.
                    log::debug!(
                        "{what}: survival proven {:.1} us after the post (by {})",
                        started.elapsed().as_secs_f64() * 1e6,
                        if how == Seen::Heartbeat { "a new heartbeat" } else { "a later dequeue" }
                    );
                    return Ok(());
                }
                None => {}
            }
            if closed() {
                return Err(closed_error(sem_name));
            }
            if !deadline.sleep_step(pause) {
                return Err(unproven_error(what, deadline));
            }
            pause = (pause * 2).min(PROOF_MAX_PAUSE);
        }
    }
}

/// The deadline passed after the agent posted but before its survival was shown.
pub(super) fn unproven_error(what: &str, deadline: &Deadline) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "{what}: the agent acknowledged the command, but in the {:.3}s allowed it neither wrote its heartbeat \
             since nor dequeued a later command, and it is not seen dead: whether the command succeeded is \
             unknown (the agent posts also for a command that failed, then ends)",
            deadline.elapsed_secs()
        ),
    )
}

/// How long the wait for a post first spins (yielding the CPU between looks) on the queue's head
/// and the semaphore: long enough to see a quick command dequeued before it is posted, so that
/// the heartbeat the agent writes after it proves it at once. Then timed waits in slices from
/// [`POST_FIRST_SLICE`], doubling up to [`POST_MAX_SLICE`], look again between slices.
const POST_SPIN: Duration = Duration::from_micros(300);
const POST_FIRST_SLICE: Duration = Duration::from_micros(50);
const POST_MAX_SLICE: Duration = Duration::from_millis(10);

/// Waits until the agent posts a completion (which alone proves nothing: the agent posts also
/// when the command failed, then ends), noting in `tracker` what the proof needs. `closed` ends
/// the wait early with `Closed`.
pub(super) fn wait_posted(
    sem: &CompletionSemaphore,
    link: &Link,
    tracker: &mut Tracker,
    deadline: &Deadline,
    what: &str,
    hint: &str,
    closed: &dyn Fn() -> bool,
) -> Result<()> {
    let shared = &link.shared;
    let spin_until = std::time::Instant::now() + POST_SPIN;
    while tracker.during.is_none() && std::time::Instant::now() < spin_until && !deadline.expired() {
        link.observe_dequeue(tracker);
        match sem.semaphore().try_wait() {
            Ok(true) => {
                link.observe_post(tracker);
                return Ok(());
            }
            Ok(false) => std::thread::yield_now(),
            Err(e) => return Err(crate::protocol::completion::ipc_error(sem.name(), e)),
        }
    }
    let mut slice = POST_FIRST_SLICE;
    loop {
        let step = if tracker.during.is_some() { *deadline } else { deadline.capped(slice) };
        match sem.semaphore().wait(&step, &|| closed() || shared.agent_dead()) {
            Ok(()) => {
                link.observe_post(tracker);
                return Ok(());
            }
            Err(WaitError::TimedOut) if !deadline.expired() => {
                link.observe_dequeue(tracker);
                slice = (slice * 2).min(POST_MAX_SLICE);
            }
            Err(WaitError::TimedOut) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what}: no completion from the agent within {:.3}s (semaphore {}); {hint}",
                        deadline.elapsed_secs(),
                        sem.name(),
                    ),
                ))
            }
            Err(WaitError::GaveUp) if closed() => return Err(closed_error(sem.name())),
            Err(WaitError::GaveUp) => return Err(shared.died_error(what)),
            Err(WaitError::Sem(e)) => return Err(crate::protocol::completion::ipc_error(sem.name(), e)),
        }
    }
}

pub(super) fn closed_error(name: &str) -> Error {
    Error::new(ErrorKind::Closed, format!("the client of completion {name} was closed; free the completion"))
}
