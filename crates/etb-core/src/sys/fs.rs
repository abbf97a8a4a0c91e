//! Raw file probes: `stat`, `fstat`, `lstat` and `fcntl` record locks. The only place in the core
//! that calls them; every caller gets plain data or an errno back.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;

use crate::error::last_errno;

/// `stat(2)` of `path`, following symbolic links. `Err` is the errno (`EINVAL` for a path with a
/// NUL byte).
pub fn stat(path: &Path) -> Result<libc::stat, i32> {
    stat_with(path, libc::stat)
}

/// `lstat(2)` of `path`: a symbolic link is reported as itself. `Err` is the errno.
pub fn lstat(path: &Path) -> Result<libc::stat, i32> {
    stat_with(path, libc::lstat)
}

fn stat_with(
    path: &Path,
    f: unsafe extern "C" fn(*const libc::c_char, *mut libc::stat) -> i32,
) -> Result<libc::stat, i32> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: `libc::stat` is plain data, so all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `st` is a writable stat.
    if unsafe { f(c.as_ptr(), &mut st) } != 0 {
        return Err(last_errno());
    }
    Ok(st)
}

/// `fstat(2)` of an open descriptor. `Err` is the errno.
pub fn fstat(fd: RawFd) -> Result<libc::stat, i32> {
    // SAFETY: `libc::stat` is plain data, so all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes the stat struct we own; a bad descriptor is reported as EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(last_errno());
    }
    Ok(st)
}

/// A byte range of a file for record locks; `len` 0 means "to the end of the file".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: i64,
    pub len: i64,
}

impl Range {
    /// The whole file.
    pub const WHOLE: Range = Range { start: 0, len: 0 };
}

fn flock(kind: i32, range: Range) -> libc::flock {
    // SAFETY: `libc::flock` is plain data, so all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = range.start as libc::off_t;
    fl.l_len = range.len as libc::off_t;
    fl
}

/// `F_GETLK`: the pid of another process holding a lock on `range` that conflicts with a lock
/// of this kind (`exclusive`: a write lock, else a read lock), as the kernel reports it: `Ok(None)`
/// when none does, `Ok(Some(0))` for a holder in another pid namespace. `Err` is the errno.
pub fn lock_query(file: &File, exclusive: bool, range: Range) -> Result<Option<i32>, i32> {
    let mut fl = flock(if exclusive { libc::F_WRLCK } else { libc::F_RDLCK }, range);
    // SAFETY: F_GETLK reads and writes only the flock struct we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        return Err(last_errno());
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(fl.l_pid.max(0)))
}

/// As [`lock_query`], with a holder in another pid namespace (pid 0) returned as `None` too.
pub fn conflicting_lock_holder(file: &File, exclusive: bool, range: Range) -> Result<Option<i32>, i32> {
    Ok(lock_query(file, exclusive, range)?.filter(|&pid| pid > 0))
}

/// `F_SETLK`: takes a lock on `range` without waiting (`exclusive`: a write lock, else a read
/// lock). `Err` is the errno (`EAGAIN` or `EACCES`: another process holds a conflicting lock).
/// The lock lasts until this process closes *any* descriptor of the file.
pub fn try_lock(file: &File, exclusive: bool, range: Range) -> Result<(), i32> {
    let fl = flock(if exclusive { libc::F_WRLCK } else { libc::F_RDLCK }, range);
    // SAFETY: F_SETLK only reads the flock struct we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } != 0 {
        return Err(last_errno());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lstat_and_fstat_agree_on_a_file_and_differ_on_a_link() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.join("l");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let a = stat(&file).unwrap();
        let f = File::open(&file).unwrap();
        assert_eq!(fstat(f.as_raw_fd()).unwrap().st_ino, a.st_ino);
        assert_eq!(stat(&link).unwrap().st_ino, a.st_ino);
        assert_eq!(lstat(&link).unwrap().st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(lstat(&dir.join("missing")).err(), Some(libc::ENOENT));
        assert_eq!(stat(Path::new("a\0b")).err(), Some(libc::EINVAL));
        // Our own lock is never reported as a conflict.
        let rw = std::fs::OpenOptions::new().read(true).write(true).open(&file).unwrap();
        try_lock(&rw, true, Range::WHOLE).unwrap();
        assert_eq!(conflicting_lock_holder(&rw, true, Range::WHOLE), Ok(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
