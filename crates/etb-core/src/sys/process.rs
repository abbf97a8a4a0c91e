//! Who the agent is: the process holding LMDB's shared `fcntl` lock on the state LMDB's lock
//! file (LMDB takes a read lock on byte 0 of `{path}-lock` for every environment a process has
//! open, to tell live processes from dead ones).
//!
//! Ask *before* this process opens its own environment on that file: closing any descriptor of
//! a file drops every `fcntl` lock the process holds on it. `lmdb::registry` guarantees that.

use std::fs::File;
use std::path::Path;

/// What probing the state's lock file found out.
#[derive(Debug)]
pub struct LockProbe {
    /// Whether the lock file exists and this process may write it (needed to take a reader slot).
    pub writable: bool,
    /// The lock file, opened before this process opened the environment. Keep it open until
    /// after the environment is closed: closing it drops this process's locks on the file;
    /// `F_GETLK` on it (`lock_holder`) never reports this process's own locks.
    pub file: Option<File>,
}

/// Opens `lock_path` for `F_GETLK` and tells whether it can be written.
pub fn probe_lock_file(lock_path: &Path) -> LockProbe {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            // Never follow a symlink, never block on a FIFO or a device.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(lock_path)
    };
    let (file, writable): (File, bool) = match open(true) {
        Ok(f) => (f, true),
        Err(_) => match open(false) {
            Ok(f) => (f, false),
            Err(_) => return LockProbe { writable: false, file: None },
        },
    };
    LockProbe { writable, file: Some(file) }
}

/// What `F_GETLK` says about LMDB's lock on byte 0 of a lock file (the read lock every process
/// with the environment open holds), asked through a descriptor of this process: its own locks
/// never show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAnswer {
    /// No other process holds it (`F_UNLCK`): nobody else has the environment open.
    Free,
    /// A process of this pid namespace holds it (one of them, when several do).
    Held(i32),
    /// A process in another pid namespace holds it (the kernel reports pid 0).
    HeldElsewhere,
    /// `F_GETLK` failed (the errno).
    Failed(i32),
}

/// The test seam of the other-pid-namespace path: with `ETB_TEST_AGENT_ELSEWHERE=1` in the
/// environment (read once per process), a holder of this namespace reads as one of another
/// (`HeldElsewhere`), as a worker in a container sees its agent. For tests only.
fn holders_read_as_elsewhere() -> bool {
    static SEAM: once_cell::sync::Lazy<bool> =
        once_cell::sync::Lazy::new(|| std::env::var_os("ETB_TEST_AGENT_ELSEWHERE").is_some_and(|v| v == "1"));
    *SEAM
}

/// `F_GETLK` for a write lock on byte 0 of `file`. Cheap (one system call).
pub fn lock_answer(file: &File) -> LockAnswer {
    match crate::sys::fs::lock_query(file, true, crate::sys::fs::Range { start: 0, len: 1 }) {
        Ok(None) => LockAnswer::Free,
        Ok(Some(pid)) if pid > 0 && !holders_read_as_elsewhere() => LockAnswer::Held(pid),
        Ok(Some(_)) => LockAnswer::HeldElsewhere,
        Err(errno) => LockAnswer::Failed(errno),
    }
}

/// Whether process `pid` exists (a zombie counts as existing).
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || crate::error::last_errno() == libc::EPERM }
}

/// What `/proc/locks` says about who holds LMDB's lock on a lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holders {
    /// `/proc/locks` could not be read: use the `F_GETLK` probe instead.
    Unavailable,
    /// The pids (other than ours) holding a lock that covers byte 0.
    Pids(Vec<i32>),
}

/// Pids of other processes holding a POSIX lock from byte 0 on the file `(dev, ino)`, from the
/// text of `/proc/locks`. Waiters (`->` lines) and pids 0 (another pid namespace) are skipped.
pub fn parse_proc_locks(text: &str, dev: u64, ino: u64, own_pid: i32) -> Vec<i32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    let mut pids = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: POSIX  ADVISORY  READ 1234 fd:01:5678 0 0"
        if f.len() < 8 || f[1] != "POSIX" || f.contains(&"->") {
            continue;
        }
        let (Ok(pid), file, start) = (f[4].parse::<i32>(), f[5], f[6]) else { continue };
        if file == want && start == "0" && pid > 0 && pid != own_pid && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Other processes holding LMDB's lock on `lock_path`.
pub fn lock_holders(lock_path: &Path) -> Holders {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(text)) = (std::fs::metadata(lock_path), std::fs::read_to_string("/proc/locks")) else {
        return Holders::Unavailable;
    };
    Holders::Pids(parse_proc_locks(&text, meta.dev(), meta.ino(), std::process::id() as i32))
}

/// Whether process `pid` has the file `(dev, ino)` open for writing (from /proc/PID/fd and
/// fdinfo; false when they cannot be read).
pub fn has_open_for_writing(pid: i32, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    entries.flatten().any(|e| {
        let same = std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
        same && std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
            .ok()
            .and_then(|info| {
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim().to_owned();
                i32::from_str_radix(&flags, 8).ok()
            })
            .is_some_and(|flags| flags & libc::O_ACCMODE != libc::O_RDONLY)
    })
}

/// The holders of the state LMDB's lock that have its data file open for writing (workers open
/// it read-only, and a sharing peer worker holds the same lock): the agent, when there is one.
/// `Err` when the data file cannot be looked at.
pub fn writers_among(holders: &[i32], data_path: &Path) -> Result<Vec<i32>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(data_path).map_err(|e| format!("{}: {e}", data_path.display()))?;
    Ok(holders.iter().copied().filter(|&p| has_open_for_writing(p, meta.dev(), meta.ino())).collect())
}

/// Whether process `pid` is alive: it exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|c| matches!(c, 'Z' | 'X')),
        Err(_) => process_exists(pid),
    }
}

/// The pid of process `pid` (a pid of this namespace) in its own, innermost pid namespace: the
/// last field of the `NSpid:` line of `/proc/PID/status` (the same as `pid` unless the process
/// runs in a namespace nested in ours, as in a container started from this one). Its main thread's
/// TID there is that number: what glibc writes as a mutex's owner. `None` when the file or the
/// line cannot be read (kernels before 4.1 have no `NSpid`).
pub fn pid_in_own_namespace(pid: i32) -> Option<i32> {
    parse_nspid(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The last field of the `NSpid:` line of a `/proc/PID/status` text.
pub fn parse_nspid(status: &str) -> Option<i32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse::<i32>().ok().filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_parsing() {
        assert_eq!(parse_nspid("Name:\tpython\nPid:\t20751\nNSpid:\t20751\n"), Some(20751));
        // A process of a namespace nested in ours: 20751 here, 2 in its own.
        assert_eq!(parse_nspid("Pid:\t20751\nNSpid:\t20751\t2\nNSpgid:\t1\n"), Some(2));
        assert_eq!(parse_nspid("Pid:\t7\nNSpid:\t7\t40\t1\n"), Some(1), "two levels deep");
        for bad in ["Pid:\t7\n", "NSpid:\n", "NSpid:\tx\n", "NSpid:\t0\n", "NSpid:\t-3\n"] {
            assert_eq!(parse_nspid(bad), None, "{bad:?}");
        }
        let me = std::process::id() as i32;
        assert_eq!(pid_in_own_namespace(me), parse_nspid(&std::fs::read_to_string("/proc/self/status").unwrap()));
        assert_eq!(pid_in_own_namespace(i32::MAX), None, "no such process");
    }

    #[test]
    fn proc_locks_parsing() {
        let dev = libc::makedev(0xfd, 0x01);
        let text = "\
1: POSIX  ADVISORY  READ 100 fd:01:77 0 0
2: POSIX  ADVISORY  READ 200 fd:01:77 0 0
2: -> POSIX  ADVISORY  WRITE 300 fd:01:77 0 0
3: POSIX  ADVISORY  WRITE 400 fd:01:77 4 4
4: POSIX  ADVISORY  READ 500 fd:01:78 0 0
5: FLOCK  ADVISORY  WRITE 600 fd:01:77 0 EOF
6: POSIX  ADVISORY  READ 0 fd:01:77 0 0
7: POSIX  ADVISORY  READ 100 fd:01:77 0 0
8: OFDLCK ADVISORY  READ -1 fd:01:77 0 0
";
        assert_eq!(parse_proc_locks(text, dev, 77, 999), vec![100, 200]);
        assert_eq!(parse_proc_locks(text, dev, 77, 100), vec![200]);
        assert_eq!(parse_proc_locks(text, libc::makedev(0xfd, 0x02), 77, 999), Vec::<i32>::new());
    }

    #[test]
    fn writers_are_verified() {
        assert!(writers_among(&[7], Path::new("/nonexistent")).is_err(), "no data file, nothing to verify");
        let path = std::env::temp_dir().join(format!("etb-lmdb-unit-writers-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let me = std::process::id() as i32;
        // i32::MAX: a pid that does not exist writes nothing.
        assert_eq!(writers_among(&[me, i32::MAX], &path).unwrap(), vec![me]);
        drop(f);
        assert_eq!(writers_among(&[me], &path).unwrap(), Vec::<i32>::new(), "closed: no longer a writer");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn own_writable_file_is_seen() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("etb-lmdb-unit-fdinfo-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let m = f.metadata().unwrap();
        let me = std::process::id() as i32;
        assert!(has_open_for_writing(me, m.dev(), m.ino()));
        drop(f);
        let r = std::fs::File::open(&path).unwrap();
        assert!(!has_open_for_writing(me, m.dev(), m.ino()));
        drop(r);
        std::fs::remove_file(&path).unwrap();
    }
}
