//! Who the agent is: the process holding LMDB's shared `fcntl` lock on the state LMDB's lock
//! file (LMDB takes a read lock on byte 0 of `{path}-lock` for every environment a process has
//! open, to tell live processes from dead ones).
//!
//! Ask *before* this process opens its own environment on that file: closing any descriptor of
//! a file drops every `fcntl` lock the process holds on it. `lmdb_registry` guarantees that.

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// What probing the state's lock file found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockProbe {
    /// Whether the lock file exists and this process may write it (needed to take a reader slot).
    pub writable: bool,
    /// The pid of a process holding LMDB's lock on it; `None` when none does, or when the
    /// holder lives in another pid namespace (the kernel reports pid 0 then).
    pub holder_pid: Option<i32>,
}

/// Probes `lock_path`: whether it can be written, and who holds LMDB's lock on it.
pub fn probe_lock_file(lock_path: &std::path::Path) -> LockProbe {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(lock_path)
    };
    let (file, writable): (File, bool) = match open(true) {
        Ok(f) => (f, true),
        Err(_) => match open(false) {
            Ok(f) => (f, false),
            Err(_) => return LockProbe { writable: false, holder_pid: None },
        },
    };
    LockProbe { writable, holder_pid: lock_holder(&file) }
}

/// `F_GETLK` for a write lock on byte 0: the pid of a process whose lock conflicts with it.
fn lock_holder(file: &File) -> Option<i32> {
    // SAFETY: flock is plain data; F_GETLK only reads and writes it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        log::debug!("F_GETLK failed: {}", std::io::Error::last_os_error());
        return None;
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short || fl.l_pid <= 0 {
        return None;
    }
    Some(fl.l_pid)
}

/// Whether process `pid` exists (a zombie counts as existing).
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || crate::error::last_errno() == libc::EPERM }
}
