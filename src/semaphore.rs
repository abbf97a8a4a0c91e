//! POSIX named semaphores (`sem_open` & co), as posix_ipc uses them on the agent's side.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use std::time::Duration;

use crate::error::{errno_text, last_errno};
use crate::timeout::Deadline;

/// The longest name glibc accepts after the leading '/': NAME_MAX minus the "sem." prefix of
/// the file it creates in /dev/shm.
pub const MAX_NAME_LEN: usize = 251;

/// An open named semaphore. Dropping it closes this process's handle (`sem_close`); it never
/// unlinks the name.
#[derive(Debug)]
pub struct NamedSemaphore {
    sem: *mut libc::sem_t,
    name: CString,
}

// SAFETY: sem_t operations are thread-safe; the handle is only closed in Drop.
unsafe impl Send for NamedSemaphore {}
unsafe impl Sync for NamedSemaphore {}

/// The longest a semaphore wait sleeps before asking whether to give up.
pub const WAIT_SLICE: Duration = Duration::from_millis(10);

/// Why a wait ended without the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    TimedOut,
    /// `give_up` said so.
    GaveUp,
    Sem(SemError),
}

/// A failed semaphore operation: the errno and the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemError {
    pub errno: i32,
    pub op: &'static str,
}

impl SemError {
    pub fn text(&self) -> String {
        format!("{}: {}", self.op, errno_text(self.errno))
    }
}

fn c_name(name: &[u8]) -> Result<CString, SemError> {
    if name.len() > MAX_NAME_LEN + 1 {
        return Err(SemError { errno: libc::ENAMETOOLONG, op: "sem_open" });
    }
    CString::new(name).map_err(|_| SemError { errno: libc::EINVAL, op: "sem_open (name has a NUL byte)" })
}

impl NamedSemaphore {
    /// Opens an existing semaphore; never creates one. `ENOENT` when it does not exist.
    pub fn open_existing(name: &[u8]) -> Result<NamedSemaphore, SemError> {
        let c = c_name(name)?;
        // SAFETY: valid C string; no O_CREAT, so no variadic arguments are read.
        let sem = unsafe { libc::sem_open(c.as_ptr(), 0) };
        if sem == libc::SEM_FAILED {
            return Err(SemError { errno: last_errno(), op: "sem_open" });
        }
        Ok(NamedSemaphore { sem, name: c })
    }

    /// Creates a semaphore (`O_CREAT`, plus `O_EXCL` when `exclusive`) with `mode` and `value`.
    pub fn create(name: &[u8], mode: u32, value: u32, exclusive: bool) -> Result<NamedSemaphore, SemError> {
        let c = c_name(name)?;
        let flags = libc::O_CREAT | if exclusive { libc::O_EXCL } else { 0 };
        // SAFETY: valid C string; O_CREAT takes mode_t and unsigned int, passed as C ints.
        let sem = unsafe { libc::sem_open(c.as_ptr(), flags, mode as libc::c_uint, value as libc::c_uint) };
        if sem == libc::SEM_FAILED {
            return Err(SemError { errno: last_errno(), op: "sem_open(O_CREAT)" });
        }
        Ok(NamedSemaphore { sem, name: c })
    }

    pub fn name(&self) -> &OsStr {
        OsStr::from_bytes(self.name.as_bytes())
    }

    pub fn post(&self) -> Result<(), SemError> {
        // SAFETY: open handle.
        if unsafe { libc::sem_post(self.sem) } != 0 {
            return Err(SemError { errno: last_errno(), op: "sem_post" });
        }
        Ok(())
    }

    /// Takes one unit if available without blocking: `Ok(false)` when the count is zero.
    pub fn try_wait(&self) -> Result<bool, SemError> {
        loop {
            // SAFETY: open handle.
            if unsafe { libc::sem_trywait(self.sem) } == 0 {
                return Ok(true);
            }
            match last_errno() {
                libc::EAGAIN => return Ok(false),
                libc::EINTR => continue,
                errno => return Err(SemError { errno, op: "sem_trywait" }),
            }
        }
    }

    /// Takes one unit, waiting until `deadline`. Waits in slices of at most `WAIT_SLICE` and
    /// asks `give_up` between them (an agent's death), so it returns within a slice of that.
    /// A deadline already passed (a timeout of 0) makes one non-blocking attempt and no sleep.
    pub fn wait(&self, deadline: &Deadline, give_up: &dyn Fn() -> bool) -> Result<(), WaitError> {
        loop {
            if self.try_wait().map_err(WaitError::Sem)? {
                return Ok(());
            }
            if give_up() {
                return Err(WaitError::GaveUp);
            }
            let slice = match deadline.remaining() {
                Some(left) if left.is_zero() => return Err(WaitError::TimedOut),
                Some(left) => left.min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            match self.timed_wait(slice) {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(e) => return Err(WaitError::Sem(e)),
            }
        }
    }

    /// `sem_timedwait` for `slice` (absolute CLOCK_REALTIME, as POSIX wants): `Ok(false)` when
    /// the slice ran out.
    fn timed_wait(&self, slice: Duration) -> Result<bool, SemError> {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: out-pointer to a local.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        let total = now.tv_nsec as i64 + slice.subsec_nanos() as i64;
        let abs = libc::timespec {
            tv_sec: now.tv_sec + slice.as_secs() as libc::time_t + (total / 1_000_000_000) as libc::time_t,
            tv_nsec: (total % 1_000_000_000) as _,
        };
        loop {
            // SAFETY: open handle, valid timespec.
            if unsafe { libc::sem_timedwait(self.sem, &abs) } == 0 {
                return Ok(true);
            }
            match last_errno() {
                libc::ETIMEDOUT => return Ok(false),
                libc::EINTR => continue,
                errno => return Err(SemError { errno, op: "sem_timedwait" }),
            }
        }
    }

    pub fn value(&self) -> Result<i32, SemError> {
        let mut v = 0;
        // SAFETY: open handle, out-pointer to a local.
        if unsafe { libc::sem_getvalue(self.sem, &mut v) } != 0 {
            return Err(SemError { errno: last_errno(), op: "sem_getvalue" });
        }
        Ok(v)
    }

    /// Removes a name from the system (`sem_unlink`); `ENOENT` when it is not there.
    pub fn unlink(name: &[u8]) -> Result<(), SemError> {
        let c = c_name(name)?;
        // SAFETY: valid C string.
        if unsafe { libc::sem_unlink(c.as_ptr()) } != 0 {
            return Err(SemError { errno: last_errno(), op: "sem_unlink" });
        }
        Ok(())
    }
}

impl Drop for NamedSemaphore {
    fn drop(&mut self) {
        // SAFETY: open handle, closed exactly once.
        unsafe { libc::sem_close(self.sem) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_post_wait_unlink() {
        let name = format!("/etb_unit_sem_{}", std::process::id());
        let _ = NamedSemaphore::unlink(name.as_bytes());
        assert_eq!(NamedSemaphore::open_existing(name.as_bytes()).unwrap_err().errno, libc::ENOENT);
        let a = NamedSemaphore::create(name.as_bytes(), 0o600, 1, true).unwrap();
        assert_eq!(NamedSemaphore::create(name.as_bytes(), 0o600, 0, true).unwrap_err().errno, libc::EEXIST);
        let b = NamedSemaphore::open_existing(name.as_bytes()).unwrap();
        assert!(b.try_wait().unwrap());
        assert!(!b.try_wait().unwrap());
        a.post().unwrap();
        assert_eq!(b.value().unwrap(), 1);
        NamedSemaphore::unlink(name.as_bytes()).unwrap();
        assert_eq!(NamedSemaphore::unlink(name.as_bytes()).unwrap_err().errno, libc::ENOENT);
        let long = format!("/{}", "x".repeat(MAX_NAME_LEN + 1));
        assert_eq!(NamedSemaphore::open_existing(long.as_bytes()).unwrap_err().errno, libc::ENAMETOOLONG);
    }
}
