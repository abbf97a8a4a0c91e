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
// SAFETY: as for Send: sem_wait, sem_post and sem_getvalue may run on several threads at once.
unsafe impl Sync for NamedSemaphore {}

type SemClockwait = unsafe extern "C" fn(*mut libc::sem_t, libc::clockid_t, *const libc::timespec) -> libc::c_int;

/// glibc's `sem_clockwait` (2.30+), looked up at run time so the library still loads on an
/// older glibc.
static SEM_CLOCKWAIT: once_cell::sync::Lazy<Option<SemClockwait>> = once_cell::sync::Lazy::new(|| {
    // SAFETY: dlsym with a NUL-terminated name; a non-NULL result is glibc's sem_clockwait, whose
    // C signature SemClockwait matches.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"sem_clockwait".as_ptr()) };
    // SAFETY: a non-NULL dlsym result for sem_clockwait is that function, whose C signature SemClockwait matches.
    (!f.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, SemClockwait>(f) })
});

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

    /// Waits at most `slice`: `Ok(false)` when it ran out. Uses `sem_clockwait` on
    /// CLOCK_MONOTONIC where glibc has it (2.30+), so a wall-clock step cannot stretch a wait;
    /// else `sem_timedwait`, whose deadline is CLOCK_REALTIME.
    fn timed_wait(&self, slice: Duration) -> Result<bool, SemError> {
        let clockwait = *SEM_CLOCKWAIT;
        let clock = if clockwait.is_some() { libc::CLOCK_MONOTONIC } else { libc::CLOCK_REALTIME };
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: out-pointer to a local.
        unsafe { libc::clock_gettime(clock, &mut now) };
        // tv_nsec is a c_long: i64 here, i32 on 32-bit targets.
        #[allow(clippy::unnecessary_cast)]
        let total = now.tv_nsec as i64 + slice.subsec_nanos() as i64;
        let abs = libc::timespec {
            tv_sec: now.tv_sec + slice.as_secs() as libc::time_t + (total / 1_000_000_000) as libc::time_t,
            tv_nsec: (total % 1_000_000_000) as _,
        };
        loop {
            // SAFETY: open handle, valid timespec; the function pointer has sem_clockwait's type.
            let rc = unsafe {
                match clockwait {
                    Some(f) => f(self.sem, libc::CLOCK_MONOTONIC, &abs),
                    None => libc::sem_timedwait(self.sem, &abs),
                }
            };
            if rc == 0 {
                return Ok(true);
            }
            match last_errno() {
                libc::ETIMEDOUT => return Ok(false),
                libc::EINTR => continue,
                errno => return Err(SemError { errno, op: "sem_clockwait" }),
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
    use crate::timeout::Timeout;
    use std::time::Instant;

    #[test]
    fn waits_end_at_the_deadline_at_a_post_or_when_told_to_give_up() {
        let name = format!("/etb_unit_wait_{}", std::process::id());
        let _ = NamedSemaphore::unlink(name.as_bytes());
        let s = NamedSemaphore::create(name.as_bytes(), 0o600, 0, true).unwrap();
        NamedSemaphore::unlink(name.as_bytes()).unwrap();
        let t = Instant::now();
        let d = Timeout::After(Duration::from_millis(35)).start();
        assert_eq!(s.wait(&d, &|| false), Err(WaitError::TimedOut));
        assert!(t.elapsed() >= Duration::from_millis(35));
        let t = Instant::now();
        assert_eq!(s.wait(&Timeout::After(Duration::ZERO).start(), &|| false), Err(WaitError::TimedOut));
        assert!(t.elapsed() < Duration::from_millis(5), "timeout 0 must not sleep");
        let t = Instant::now();
        assert_eq!(
            s.wait(&Timeout::Never.start(), &|| t.elapsed() > Duration::from_millis(30)),
            Err(WaitError::GaveUp)
        );
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                s.post().unwrap();
            });
            assert_eq!(s.wait(&Timeout::Never.start(), &|| false), Ok(()));
        });
    }

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
        assert!(SEM_CLOCKWAIT.is_some(), "glibc >= 2.30 has sem_clockwait: monotonic waits");
        assert_eq!(NamedSemaphore::open_existing(long.as_bytes()).unwrap_err().errno, libc::ENAMETOOLONG);
    }
}
