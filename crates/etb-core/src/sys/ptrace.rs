//! Letting the agent trace this worker (docs/protocol.md section 1): the agent takes file
//! descriptors out of the worker with `pidfd_getfd`, which under Yama `ptrace_scope=1` needs the
//! worker's consent, given with `prctl(PR_SET_PTRACER, ...)`.
//!
//! `PR_SET_PTRACER_ANY` (the reference's prototype shortcut) lets every process of the same user
//! trace the worker; `PR_SET_PTRACER, pid` lets only that process and its descendants. Without
//! Yama the kernel has no such consent and answers `EINVAL`: nothing is needed then.

use std::path::Path;
use std::sync::Mutex;

use crate::sys::process::process_alive;

use crate::error::{errno_text, last_errno, Error, ErrorKind, Result};

/// Where the kernel shows Yama's settings, when Yama is built in.
pub const YAMA_DIR: &str = "/proc/sys/kernel/yama";

/// Whom to authorize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracer {
    /// Every process (`PR_SET_PTRACER_ANY`).
    Any,
    /// One process and its descendants.
    Pid(i32),
}

/// For messages: "PR_SET_PTRACER_ANY" or "pid 1234".
impl std::fmt::Display for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tracer::Any => f.write_str("PR_SET_PTRACER_ANY"),
            Tracer::Pid(pid) => write!(f, "pid {pid}"),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Authorized,
    /// The kernel has no Yama: ptrace consent does not exist, nothing to do.
    NoYama,
}

/// What this process has authorized so far (the kernel keeps one tracer per process), and which
/// process that is: a forked child inherits this static but not the kernel's setting.
static GRANTED: Mutex<(u32, Option<Tracer>)> = Mutex::new((0, None));

fn granted() -> std::sync::MutexGuard<'static, (u32, Option<Tracer>)> {
    let mut g = GRANTED.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::process::id();
    if g.0 != me {
        *g = (me, None);
    }
    g
}

/// What this process has authorized (for tests and diagnostics).
pub fn current_grant() -> Option<Tracer> {
    granted().1
}

/// Authorizes `tracer` without taking back what this process granted before: `PR_SET_PTRACER`
/// holds one value per process, so authorizing a second agent's pid would silently revoke the
/// first. The rule, for one process that serves several agents (one client per local GPU):
/// the first pid is authorized alone; a second, different pid while the first process lives
/// widens to ANY, with one warning naming both (a first pid that is gone is simply replaced);
/// ANY is never narrowed again in this process (a later pid keeps ANY, silently).
pub fn grant(tracer: Tracer, yama_dir: &Path) -> Result<Outcome> {
    let mut granted = granted();
    let effective = match (granted.1, tracer) {
        (Some(Tracer::Any), _) => Tracer::Any,
        (Some(Tracer::Pid(old)), Tracer::Pid(new)) if old != new && process_alive(old) => {
            log::warn!(
                "this process already lets agent pid {old} ptrace it and now needs pid {new} too (one process \
                 serving several agents); the kernel keeps one tracer per process, so every process of this user \
                 may now ptrace it (PR_SET_PTRACER_ANY), for as long as it runs. To keep exactly one tracer, run \
                 one worker process per agent; to say that this is intended (and silence this warning), choose the \
                 ptrace mode any"
            );
            Tracer::Any
        }
        (_, wanted) => wanted,
    };
    if granted.1 == Some(effective) {
        // Already in force in this process: the kernel keeps it until changed.
        return Ok(Outcome::Authorized);
    }
    let outcome = authorize(effective, yama_dir)?;
    granted.1 = Some(effective);
    Ok(outcome)
}

/// Sets exactly `tracer`, replacing what this process granted before (an explicit choice).
pub fn set(tracer: Tracer, yama_dir: &Path) -> Result<Outcome> {
    let mut granted = granted();
    let outcome = authorize(tracer, yama_dir)?;
    granted.1 = Some(tracer);
    Ok(outcome)
}

/// Yama's `ptrace_scope` (0..=3), when Yama is present.
pub fn yama_scope(yama_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(yama_dir.join("ptrace_scope")).ok()?.trim().parse().ok()
}

/// Authorizes `tracer`, replacing whatever the process set before (prefer `grant`).
/// `yama_dir` is where Yama's settings would be (a seam for tests). Under `ptrace_scope` 2 or 3
/// no consent of the worker helps: the error says what the administrator must change.
pub fn authorize(tracer: Tracer, yama_dir: &Path) -> Result<Outcome> {
    match yama_scope(yama_dir) {
        Some(2) => {
            return Err(Error::new(
                ErrorKind::Ptrace,
                "Yama ptrace_scope is 2 (only processes with CAP_SYS_PTRACE may attach): the agent cannot take \
                 CUDA memory out of this worker unless an administrator grants the agent CAP_SYS_PTRACE \
                 (or sets kernel.yama.ptrace_scope=1)",
            ))
        }
        Some(3) => {
            return Err(Error::new(
                ErrorKind::Ptrace,
                "Yama ptrace_scope is 3 (no process may attach): the agent cannot take CUDA memory out of this \
                 worker; an administrator must set kernel.yama.ptrace_scope to 1 (3 cannot be lowered without a reboot)",
            ))
        }
        _ => {}
    }
    let arg: libc::c_ulong = match tracer {
        Tracer::Any => libc::PR_SET_PTRACER_ANY as libc::c_ulong,
        Tracer::Pid(pid) if pid > 0 => pid as libc::c_ulong,
        Tracer::Pid(pid) => {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("tracer pid {pid} is not a process id")))
        }
    };
    // SAFETY: prctl with integer arguments only.
    let rc =
        unsafe { libc::prctl(libc::PR_SET_PTRACER, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc == 0 {
        log::debug!("prctl(PR_SET_PTRACER, {tracer}) done");
        return Ok(Outcome::Authorized);
    }
    let errno = last_errno();
    if errno == libc::EINVAL && !yama_dir.exists() {
        log::debug!(
            "prctl(PR_SET_PTRACER) answered EINVAL and {} does not exist: no Yama, no consent needed",
            yama_dir.display()
        );
        return Ok(Outcome::NoYama);
    }
    Err(Error::new(
        ErrorKind::Ptrace,
        format!("prctl(PR_SET_PTRACER, {tracer}) failed: {} (errno {errno})", errno_text(errno)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_pid_is_rejected() {
        assert_eq!(authorize(Tracer::Pid(0), Path::new(YAMA_DIR)).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(authorize(Tracer::Pid(-5), Path::new(YAMA_DIR)).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn any_succeeds_or_reports_no_yama() {
        let out = authorize(Tracer::Any, Path::new(YAMA_DIR)).unwrap();
        assert_eq!(out == Outcome::NoYama, !Path::new(YAMA_DIR).exists());
    }

    #[test]
    fn grants_never_narrow_or_revoke() {
        let dir = Path::new(YAMA_DIR);
        *GRANTED.lock().unwrap() = (std::process::id(), None);
        let me = std::process::id() as i32;
        grant(Tracer::Pid(me), dir).unwrap();
        assert_eq!(current_grant(), Some(Tracer::Pid(me)));
        grant(Tracer::Pid(me), dir).unwrap();
        assert_eq!(current_grant(), Some(Tracer::Pid(me)), "same pid again: unchanged");
        grant(Tracer::Pid(1), dir).unwrap();
        assert_eq!(current_grant(), Some(Tracer::Any), "a second live agent widens to ANY");
        grant(Tracer::Pid(me), dir).unwrap();
        assert_eq!(current_grant(), Some(Tracer::Any), "ANY is never narrowed");
        *GRANTED.lock().unwrap() = (std::process::id(), Some(Tracer::Pid(i32::MAX)));
        grant(Tracer::Pid(me), dir).unwrap();
        assert_eq!(current_grant(), Some(Tracer::Pid(me)), "a dead earlier agent is replaced");
        // A forked child starts with nothing granted, whatever the parent did.
        *GRANTED.lock().unwrap() = (1, Some(Tracer::Any));
        assert_eq!(current_grant(), None);
        *GRANTED.lock().unwrap() = (std::process::id(), None);
    }

    #[test]
    fn yama_scopes_two_and_three_say_what_to_change() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-yama-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (scope, words) in [("2", "CAP_SYS_PTRACE"), ("3", "reboot")] {
            std::fs::write(dir.join("ptrace_scope"), format!("{scope}\n")).unwrap();
            let e = authorize(Tracer::Any, &dir).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Ptrace);
            assert!(e.message().contains(words), "{e}");
        }
        std::fs::write(dir.join("ptrace_scope"), "1\n").unwrap();
        assert_eq!(yama_scope(&dir), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn einval_with_yama_present_is_an_error() {
        if Path::new(YAMA_DIR).exists() {
            return; // Yama answers 0 here, so EINVAL cannot be provoked this way.
        }
        // Pretend Yama exists (the seam): EINVAL must then be a real error.
        let e = authorize(Tracer::Any, Path::new("/")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Ptrace);
        assert!(e.message().contains("errno 22"), "{e}");
    }
}
