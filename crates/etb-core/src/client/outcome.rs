//! The survival proof (docs/protocol.md section 5), in one place: what a posted completion must
//! be followed by before the command counts as done.
//!
//! The agent posts a command's completion also when the command failed, then ends; so a post
//! alone proves nothing. After a command it survived, the agent writes one heartbeat before it
//! dequeues the next command, and nothing after a command that raised. So a command is done once
//! its completion was posted *and* then the agent's loop was seen going on: first, the state
//! env's writer mutex held by the agent's main thread (its next transaction began:
//! `agent_writer`), else a state commit since the post (the lock file's txnid), the heartbeat
//! changed (against a value read after the agent dequeued the command), or the agent dequeued a
//! later command; it failed when the agent is seen dead (its process exited, or its files are
//! gone). Success means the agent's handler returned and its loop went on.
//!
//! [`Pending`] is one command on its way there. Its non-blocking step, [`Pending::poll`], is the
//! one place that decides; [`Pending::wait`] drives it with blocking waits on the semaphore and
//! short sleeps, within one deadline. Blocking calls (issue, then wait on the same deadline) and
//! [`Completion`](super::Completion)'s `wait` and `poll` all go through it.

use std::time::{Duration, Instant};

use super::link::{Link, Proof};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::completion::{ipc_error, CompletionSemaphore};
use crate::protocol::state_db::{pair_match_key, PairMatch};
use crate::sys::semaphore::WaitError;
use crate::timeout::Deadline;

/// How long the survival proof first spins (yielding the CPU between looks) after the post: the
/// real agent begins its next transaction a median 12 µs after the post of a command it survived
/// (p90 146 µs), and on tmpfs the whole transaction takes 5-10 µs, so a sleep (20 µs plus the
/// timer's slack, about 60-90 µs here) would often look only after it. Then it sleeps between
/// checks from [`PROOF_FIRST_PAUSE`], doubling up to [`PROOF_MAX_PAUSE`]. Measured (2026-12-02,
/// bench/README.md "The spin before the proof's first sleep": the library rebuilt with 0, 50 and
/// 200 µs, round trips on disk): without a spin one run in three had a check median of 94.6 µs
/// (it slept past the agent's transaction), with 50 µs every run stayed at 1.7-1.9 µs, and 200 µs
/// bought nothing more.
const PROOF_SPIN: Duration = Duration::from_micros(PROOF_SPIN_US);
const PROOF_SPIN_US: u64 = 50;
const PROOF_FIRST_PAUSE: Duration = Duration::from_micros(20);
const PROOF_MAX_PAUSE: Duration = Duration::from_millis(1);

/// How long the wait for a post first spins (yielding the CPU between looks) on the queue's head
/// and the semaphore: long enough to see a quick command dequeued before it is posted, so that
/// the heartbeat the agent writes after it proves it at once. Then timed waits in slices from
/// [`POST_FIRST_SLICE`], doubling up to [`POST_MAX_SLICE`], look again between slices.
const POST_SPIN: Duration = Duration::from_micros(300);
const POST_FIRST_SLICE: Duration = Duration::from_micros(50);
const POST_MAX_SLICE: Duration = Duration::from_millis(10);

/// What a command promises beyond the agent's survival, checked once survival is proven.
pub(super) enum Finish {
    /// Nothing more.
    Nothing,
    /// `InitPair`: the agent recorded this pair as matched.
    PairMatched(String),
}

impl Finish {
    fn check(&self, link: &Link) -> Result<()> {
        let Finish::PairMatched(pair_name) = self else { return Ok(()) };
        match link.state.pair_match(pair_name).map_err(|e| e.at(&link.paths.state))? {
            PairMatch::Matched => Ok(()),
            found => {
                // Known now not to be a pair: RegisterTensors naming it would kill the agent.
                link.guard.forget_pair(pair_name);
                Err(Error::new(
                    ErrorKind::PairNotMatched,
                    format!(
                        "InitPair {pair_name:?} completed but {} is {}: the agent did not match the pair \
                     (check the peers' names and world size)",
                        pair_match_key(pair_name),
                        match found {
                            PairMatch::Other(v) => format!("{v:02x?}"),
                            _ => "absent".to_string(),
                        }
                    ),
                ))
            }
        }
    }
}

/// One command on its way to a proven outcome: its completion semaphore, its position in the
/// queue, and the heartbeat values that a later change of proves the agent survived it.
///
/// After the agent dequeues our command its next heartbeat is written only once it handled the
/// command without raising. So a heartbeat that differs from one read *after* the command was
/// dequeued proves survival: `during`, read while waiting, once the queue's head passed our
/// position (before the post, when the command takes a while), and `after`, read right after
/// the post was seen (for a quick command; when the agent beat before we read, the proof waits
/// for its next loop turn or its next dequeue).
pub(super) struct Pending {
    sem: CompletionSemaphore,
    /// The command's logical position in the queue.
    position: u64,
    /// The heartbeat read once the head had passed our position, before the post was seen.
    during: Option<Option<Vec<u8>>>,
    /// The heartbeat read right after the post was seen; `None` until then (the post consumes
    /// the semaphore: the proof goes on from there).
    after: Option<Option<Vec<u8>>>,
    /// The state lock file's txnid read right after the post was seen (never before: InitPair's
    /// match write and QueryStatus's signal write commit before the post).
    txnid_after: Option<u64>,
    /// The command's type, for messages.
    what: &'static str,
    /// What the agent is most likely doing when the completion does not come.
    hint: String,
    finish: Finish,
    /// Proven: every later look answers done at once.
    done: bool,
}

impl Pending {
    pub(super) fn new(
        sem: CompletionSemaphore,
        position: u64,
        what: &'static str,
        hint: String,
        finish: Finish,
    ) -> Self {
        Pending { sem, position, during: None, after: None, txnid_after: None, what, hint, finish, done: false }
    }

    pub(super) fn semaphore_name(&self) -> &str {
        self.sem.name()
    }

    pub(super) fn what(&self) -> &'static str {
        self.what
    }

    /// The command's logical position in the queue.
    pub(super) fn position(&self) -> u64 {
        self.position
    }

    /// The one non-blocking step: true once the agent posted the completion, was seen to
    /// survive the command and the command's [`Finish`] holds; `AgentDied` when the agent is
    /// seen dead first (also after posting: it posts failed commands too, then ends).
    pub(super) fn poll(&mut self, link: &Link) -> Result<bool> {
        if self.done {
            return Ok(true);
        }
        if self.after.is_none() && !self.look_for_post(link)? {
            if link.agent_dead() {
                return Err(link.shared.died_error(self.what));
            }
            return Ok(false);
        }
        Ok(self.settle(link)?.is_some())
    }

    /// Drives [`Pending::poll`] to the outcome, at most until `deadline`: a blocking wait on the
    /// semaphore for the post, then short sleeps until survival is shown. `closed` ends the
    /// wait early with `Closed`. `spin`: first spin on the queue's head and the semaphore (a
    /// caller's wait); the client's watcher, which comes back every slice, does not.
    pub(super) fn wait(
        &mut self,
        link: &Link,
        deadline: &Deadline,
        closed: &dyn Fn() -> bool,
        spin: bool,
    ) -> Result<()> {
        if self.done {
            return Ok(());
        }
        if self.after.is_none() {
            self.wait_posted(link, deadline, closed, spin)?;
        }
        let mut pause = PROOF_FIRST_PAUSE;
        let started = Instant::now();
        let spin_until = started + PROOF_SPIN;
        loop {
            if let Some(how) = self.settle(link)? {
                // bench/run.py reads these lines for the cost of the survival check.
                log::debug!(
                    "{}: survival proven {:.1} us after the post (by {})",
                    self.what,
                    started.elapsed().as_secs_f64() * 1e6,
                    how.describe()
                );
                return Ok(());
            }
            if closed() {
                return Err(closed_error(self.sem.name()));
            }
            if Instant::now() < spin_until && !deadline.expired() {
                std::thread::yield_now();
                continue;
            }
            if !deadline.sleep_step(pause) {
                return Err(unproven_error(self.what, deadline));
            }
            pause = (pause * 2).min(PROOF_MAX_PAUSE);
        }
    }

    /// While the post is awaited: once the agent dequeued our command, remembers the heartbeat
    /// of that moment (head first, then the heartbeat, so the value is one read after the dequeue).
    fn observe_dequeue(&mut self, link: &Link) {
        if self.during.is_none() && link.queue.head().is_ok_and(|head| head > self.position) {
            self.during = Some(link.heartbeat_value());
        }
    }

    /// Records what the state says right after the post was seen.
    fn observe_post(&mut self, link: &Link) {
        self.txnid_after = link.writer.as_ref().map(|w| w.txnid());
        self.after = Some(link.heartbeat_value());
    }

    /// One look for the post, without blocking: notes the dequeue, then takes the post if it came.
    fn look_for_post(&mut self, link: &Link) -> Result<bool> {
        self.observe_dequeue(link);
        match self.sem.semaphore().try_wait() {
            Ok(true) => {
                self.observe_post(link);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(ipc_error(self.sem.name(), e)),
        }
    }

    /// After the post, one non-blocking look at whether the agent survived the command, cheapest
    /// signal first: it did when its main thread holds the state env's writer mutex (its next
    /// transaction began), a state commit happened since the post, its heartbeat changed (it
    /// beats once before its next dequeue, and writes nothing after a command that raised), or it
    /// dequeued a command after ours (the queue's head reached our position + 2); it did not when
    /// it is seen dead (its process exited, or its files are gone); `None` while neither is known.
    /// Once survival is seen, the [`Finish`] is checked and the proof counted.
    fn settle(&mut self, link: &Link) -> Result<Option<Proof>> {
        let proof = if link.writer.as_ref().is_some_and(|w| w.held_by_agent(|| link.agent_dead())) {
            Proof::WriterLock
        } else if link.writer.as_ref().zip(self.txnid_after).is_some_and(|(w, base)| w.txnid() > base) {
            Proof::Commit
        } else if self.heartbeat_changed(link) {
            Proof::Heartbeat
        } else if link.queue.head().is_ok_and(|head| head >= self.position.saturating_add(2)) {
            Proof::LaterDequeue
        } else if link.agent_dead() || link.files_gone() {
            return Err(link.shared.died_error(&format!("{} was acknowledged, but", self.what)));
        } else {
            return Ok(None);
        };
        self.finish.check(link)?;
        self.done = true;
        link.proven_by(proof);
        Ok(Some(proof))
    }

    /// Whether the heartbeat differs from one read after the post (or after the dequeue).
    fn heartbeat_changed(&self, link: &Link) -> bool {
        let now = link.heartbeat_value();
        self.after.as_ref().is_some_and(|after| *after != now) || self.during.as_ref().is_some_and(|d| *d != now)
    }

    /// Waits until the agent posts the completion (which alone proves nothing: the agent posts
    /// also when the command failed, then ends), noting what the proof needs: first spinning on
    /// [`Pending::look_for_post`], then in timed waits on the semaphore.
    fn wait_posted(&mut self, link: &Link, deadline: &Deadline, closed: &dyn Fn() -> bool, spin: bool) -> Result<()> {
        let shared = &link.shared;
        let spin_until = Instant::now() + if spin { POST_SPIN } else { Duration::ZERO };
        while self.during.is_none() && Instant::now() < spin_until && !deadline.expired() {
            if self.look_for_post(link)? {
                return Ok(());
            }
            std::thread::yield_now();
        }
        let mut slice = POST_FIRST_SLICE;
        loop {
            let step = if self.during.is_some() { *deadline } else { deadline.capped(slice) };
            match self.sem.semaphore().wait(&step, &|| closed() || link.agent_dead()) {
                Ok(()) => {
                    self.observe_post(link);
                    return Ok(());
                }
                Err(WaitError::TimedOut) if !deadline.expired() => {
                    self.observe_dequeue(link);
                    slice = (slice * 2).min(POST_MAX_SLICE);
                }
                Err(WaitError::TimedOut) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "{}: no completion from the agent within {:.3}s (semaphore {}); {}",
                            self.what,
                            deadline.elapsed_secs(),
                            self.sem.name(),
                            self.hint
                        ),
                    ))
                }
                Err(WaitError::GaveUp) if closed() => return Err(closed_error(self.sem.name())),
                Err(WaitError::GaveUp) => return Err(shared.died_error(self.what)),
                Err(WaitError::Sem(e)) => return Err(ipc_error(self.sem.name(), e)),
            }
        }
    }
}

/// The deadline passed after the agent posted but before its survival was shown.
fn unproven_error(what: &str, deadline: &Deadline) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "{what}: the agent acknowledged the command, but in the {:.3}s allowed it neither began a state \
             transaction since, nor wrote its heartbeat, nor dequeued a later command, and it is not seen dead: \
             whether the command succeeded is unknown (the agent posts also for a command that failed, then ends)",
            deadline.elapsed_secs()
        ),
    )
}

/// The client a completion belongs to was closed.
pub(super) fn closed_error(name: &str) -> Error {
    Error::new(ErrorKind::Closed, format!("the client of completion {name} was closed; free the completion"))
}
