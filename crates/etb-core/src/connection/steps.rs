//! The steps of a bootstrap, in one list: bootstrap runs them in this order (and records each one
//! it passed in a [`Trail`]), `etb doctor` reports them in this order (one row per step, by
//! matching on every [`Step`]). A step added here must be handled by both: the doctor's match is
//! exhaustive, and `tests/bootstrap.rs` fails unless a bootstrap's trail and the doctor's rows are
//! both exactly [`STEPS`].

use std::time::Instant;

/// One step of a bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The agent rank from `AGENT_RANK`, or `RANK + AGENT_RANK_OFFSET`, and `LOCAL_RANK`.
    Environment,
    /// The two LMDB paths: the default names or the naming function's.
    Paths,
    /// The state LMDB exists (waited for).
    StateFile,
    /// The agent's files and semaphores belong to this user (or root) and are not writable by
    /// others, and none is a symbolic link.
    Trust,
    /// The state LMDB opens and holds a fresh heartbeat (waited for).
    Heartbeat,
    /// The command queue is attached as a follower (waited for), and the agent's process is
    /// identified.
    Queue,
    /// No other worker holds this agent (the worker lock).
    WorkerLock,
    /// The agent is authorized to ptrace this worker (informational in the doctor).
    Ptrace,
    /// The worker is bound to its GPU, as the CUDA mode says (informational in the doctor).
    Cuda,
}

/// Every step, in the order bootstrap runs them.
pub const STEPS: [Step; 9] = [
    Step::Environment,
    Step::Paths,
    Step::StateFile,
    Step::Trust,
    Step::Heartbeat,
    Step::Queue,
    Step::WorkerLock,
    Step::Ptrace,
    Step::Cuda,
];

impl Step {
    /// The step's name, as `etb doctor` prints it (a stable interface: its `--json` keys).
    pub fn name(self) -> &'static str {
        match self {
            Step::Environment => "environment",
            Step::Paths => "paths",
            Step::StateFile => "state_file",
            Step::Trust => "trust",
            Step::Heartbeat => "heartbeat",
            Step::Queue => "queue",
            Step::WorkerLock => "worker_lock",
            Step::Ptrace => "ptrace",
            Step::Cuda => "cuda",
        }
    }

    /// Whether a failure of the step leaves the bootstrap going (ptrace failures are logged; the
    /// default CUDA mode goes on unbound): the doctor reports such steps without failing.
    pub fn informational(self) -> bool {
        matches!(self, Step::Ptrace | Step::Cuda)
    }

    fn index(self) -> usize {
        STEPS.iter().position(|&s| s == self).unwrap_or(STEPS.len())
    }
}

/// The steps one bootstrap (or reconnect) passed, in order, with the time each took.
#[derive(Debug, Clone)]
pub struct Trail {
    started: Instant,
    next: usize,
    passed: Vec<Step>,
}

impl Trail {
    /// A trail that starts with the first step (`Environment`).
    pub fn new() -> Trail {
        Trail::starting_at(STEPS[0])
    }

    /// A trail that starts at `step` (a reconnect starts at `StateFile`: its rank and paths are
    /// known).
    pub fn starting_at(step: Step) -> Trail {
        Trail { started: Instant::now(), next: step.index(), passed: Vec::new() }
    }

    /// Records that `step` passed. Steps are passed in [`STEPS`]' order, none skipped: a step
    /// passed out of order is a bug of this library (caught by the tests' debug builds; logged,
    /// never a panic, in a release build).
    pub fn pass(&mut self, step: Step) {
        let expected = STEPS.get(self.next).copied();
        debug_assert_eq!(Some(step), expected, "bootstrap steps out of order");
        if Some(step) != expected {
            log::error!("bootstrap step {} passed where {expected:?} was next: please report it", step.name());
        }
        self.next = step.index() + 1;
        self.passed.push(step);
        log::debug!("bootstrap step {} ok after {:.3} ms", step.name(), self.started.elapsed().as_secs_f64() * 1e3);
    }

    /// The steps passed so far, in order.
    pub fn passed(&self) -> &[Step] {
        &self.passed
    }
}

impl Default for Trail {
    fn default() -> Self {
        Trail::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_in_order() {
        let names: Vec<&str> = STEPS.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            ["environment", "paths", "state_file", "trust", "heartbeat", "queue", "worker_lock", "ptrace", "cuda"]
        );
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        let mut trail = Trail::starting_at(Step::StateFile);
        for s in &STEPS[2..6] {
            trail.pass(*s);
        }
        assert_eq!(trail.passed(), &STEPS[2..6]);
    }
}
