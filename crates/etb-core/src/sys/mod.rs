//! OS primitives, each in one module: the only home of the raw `libc` calls the core needs.
//!
//! - [`fs`]: `stat`/`fstat`/`lstat` and `fcntl` record-lock probes;
//! - [`semaphore`]: POSIX named semaphores with monotonic, interruptible waits;
//! - [`process`]: who holds a lock, who has a file open, whether a pid is alive;
//! - [`process_watch`]: a pidfd that tells when the agent exits;
//! - [`ptrace`]: Yama's `PR_SET_PTRACER` authorization;
//! - [`trust`]: ownership and mode checks of the agent's files and process;
//! - [`registry`]: one shared value per file per process (open LMDB environments, the worker
//!   lock), keyed by file identity, forgotten across fork;
//! - [`worker_lock`]: one worker per agent, by an `fcntl` lock on a file beside the state.

pub mod fs;
pub mod process;
pub mod process_watch;
pub mod ptrace;
pub mod registry;
pub mod semaphore;
pub mod trust;
pub mod worker_lock;
