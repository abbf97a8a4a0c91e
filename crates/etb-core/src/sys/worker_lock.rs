//! One worker per agent. Two workers attached to one agent is the classic symptom of a wrong
//! `AGENT_RANK_OFFSET`: at bootstrap a worker takes a POSIX record lock (`fcntl`, not `flock`: a
//! child forked without exec must not inherit it, or a data-loader child would keep it after its
//! parent died) on `.{state file name}.worker` in the state file's folder, held until its client
//! closes. The agent's start-up clean-up of `{state_path}*` does not match that name, and the
//! file is never removed (removing lock files races).
//!
//! Record locks do not conflict within one process, and closing any descriptor of the file drops
//! them: so the library keeps one descriptor per lock file per process (a fork-aware registry
//! entry) and refuses a second client of the same agent in the same process itself. Workers that
//! allow sharing take a shared lock, and all of them must allow it.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use once_cell::sync::Lazy;

use crate::error::{errno_text, Error, ErrorKind, Result};
use crate::sys::fs::{try_lock, Range};
use crate::sys::registry::{FileId, Lease, Registry};
use crate::sys::trust::{check_file, Distrust, TrustPolicy};

/// The lock file of the agent whose state LMDB is `state`.
pub fn lock_file_path(state: &Path) -> PathBuf {
    let name = state.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    state.with_file_name(format!(".{name}.worker"))
}

/// The open lock file and the kind of lock this process holds on it.
pub struct Held {
    _file: File,
    shared: bool,
}

static HELD: Lazy<Registry<Held>> = Lazy::new(Registry::new);

/// This client's share of the worker lock; the last one dropped in the process releases it.
pub struct WorkerLock {
    _lease: Lease<Held>,
}

/// The error of a second worker of one agent (`who` names the first).
pub fn busy(state: &Path, who: &str) -> Error {
    Error::new(
        ErrorKind::AgentBusy,
        format!(
            "another worker ({who}) is attached to the agent of {}: one worker per agent. Check \
             AGENT_RANK / AGENT_RANK_OFFSET (two workers resolving to one agent is the usual cause), or \
             allow sharing in the bootstrap options if several workers are intended",
            state.display()
        ),
    )
}

/// The pid holding a conflicting lock on `file`, if any.
fn holder(file: &File, shared: bool) -> Option<i32> {
    crate::sys::fs::conflicting_lock_holder(file, !shared, Range::WHOLE).ok().flatten()
}

/// The pid of a worker holding the worker lock of the agent whose state LMDB is `state` (any
/// lock on the file), for inspection by a process that holds none itself. Never creates the
/// file; `None` when it is missing, unreadable, or unlocked.
pub fn holder_of(state: &Path) -> Option<i32> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(lock_file_path(state))
        .ok()?;
    crate::sys::fs::conflicting_lock_holder(&file, true, Range::WHOLE).ok().flatten()
}

/// Serializes acquisitions, so that a descriptor of a lock file is only ever opened where it is
/// kept (opening and closing a second one would drop this process's lock).
static ACQUIRE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the worker lock of the agent whose state LMDB is `state`.
pub fn acquire(state: &Path, shared: bool, policy: TrustPolicy) -> Result<WorkerLock> {
    let path = lock_file_path(state);
    let _serial = ACQUIRE.lock().unwrap_or_else(|p| p.into_inner());
    let options = |create: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY);
        if create {
            o.create_new(true).mode(0o600);
        }
        o
    };
    let permission = |m: String| Error::new(ErrorKind::Permission, m);
    let st = match check_file(&path, "worker lock file", policy) {
        Ok(st) => st,
        Err(Distrust::Missing) => {
            // A file that did not exist cannot carry a lock of ours: creating and closing it is safe.
            match options(true).open(&path) {
                Ok(f) => drop(f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(permission(format!("worker lock file {}: {e}", path.display()))),
            }
            check_file(&path, "worker lock file", policy)
                .map_err(|d| permission(d.into_error().message().to_owned()))?
        }
        Err(d) => {
            return Err(permission(format!(
                "{}; it may have been left by another user's job: that user or root must remove it",
                d.into_error().message()
            )))
        }
    };
    let id = FileId { dev: st.st_dev, ino: st.st_ino };
    let mut created = false;
    let lease = HELD.get_or_open(id, || {
        created = true;
        let file =
            options(false).open(&path).map_err(|e| permission(format!("worker lock file {}: {e}", path.display())))?;
        if FileId::of_fd(file.as_raw_fd()).ok() != Some(id) {
            return Err(permission(format!("worker lock file {} was replaced while opening it", path.display())));
        }
        if let Err(errno) = try_lock(&file, !shared, Range::WHOLE) {
            if errno == libc::EAGAIN || errno == libc::EACCES {
                let who = holder(&file, shared).map_or("pid unknown".to_string(), |p| format!("pid {p}"));
                return Err(busy(state, &who));
            }
            return Err(Error::new(ErrorKind::Ipc, format!("locking {}: {}", path.display(), errno_text(errno))));
        }
        Ok(Held { _file: file, shared })
    })?;
    // A lease this call did not create is another client's in this process: only two shared
    // locks may coexist.
    if !(created || lease.shared && shared) {
        return Err(busy(state, &format!("another client in this process, pid {}", std::process::id())));
    }
    Ok(WorkerLock { _lease: lease })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_name() {
        assert_eq!(
            lock_file_path(Path::new("/tmp/agent_rank3_state.lmdb")),
            Path::new("/tmp/.agent_rank3_state.lmdb.worker")
        );
    }

    #[test]
    fn exclusive_and_shared_within_a_process() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-wlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("s_state.lmdb");
        let p = TrustPolicy::default();
        let a = acquire(&state, false, p).unwrap();
        let e = acquire(&state, false, p).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::AgentBusy);
        assert!(e.message().contains("another client in this process"), "{e}");
        assert_eq!(acquire(&state, true, p).err().unwrap().kind(), ErrorKind::AgentBusy);
        drop(a);
        let s1 = acquire(&state, true, p).unwrap();
        let s2 = acquire(&state, true, p).unwrap();
        assert_eq!(acquire(&state, false, p).err().unwrap().kind(), ErrorKind::AgentBusy);
        drop((s1, s2));
        drop(acquire(&state, false, p).unwrap());
        assert!(lock_file_path(&state).exists(), "the lock file is never removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
