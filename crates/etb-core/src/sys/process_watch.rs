//! Seeing the agent die at once, so that waits on its queue or its completions end with
//! `AgentDied` instead of running out their timeout. A stale heartbeat is not death (the agent
//! does not beat while it executes a command); a process that no longer exists is.
//!
//! A pidfd (`pidfd_open`, Linux 5.3) polls readable when the process exits, zombie included
//! (which `kill(pid, 0)` would still call alive). Where pidfds are missing, /proc/PID/stat's
//! state and `kill(pid, 0)` stand in.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Watches one agent process; `None` pid: unknown agent, never reported dead.
#[derive(Debug)]
pub struct AgentWatch {
    pid: Option<i32>,
    pidfd: Option<OwnedFd>,
}

impl AgentWatch {
    pub fn new(pid: Option<i32>) -> AgentWatch {
        let pidfd = pid.and_then(|p| {
            // SAFETY: pidfd_open(pid, flags) has no memory arguments.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) } as i32;
            if fd < 0 {
                log::debug!(
                    "pidfd_open({p}) failed: {}; watching the agent through /proc",
                    std::io::Error::last_os_error()
                );
                None
            } else {
                // SAFETY: a fresh descriptor we own; O_CLOEXEC is implied for pidfds.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        });
        if pid.is_none() {
            log::debug!("agent process unknown: a dead agent will only be noticed at timeouts");
        }
        AgentWatch { pid, pidfd }
    }

    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Whether the agent has exited. Cheap: one `poll` with a zero timeout.
    pub fn is_dead(&self) -> bool {
        let Some(pid) = self.pid else { return false };
        if let Some(fd) = &self.pidfd {
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            return n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // "pid (comm) S ..." — the state follows the last ')'.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|s| matches!(s, 'Z' | 'X')),
            Err(_) => !crate::sys::process::process_exists(pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_child_exit_even_as_a_zombie() {
        let mut child = std::process::Command::new("sleep").arg("0.05").spawn().unwrap();
        let watch = AgentWatch::new(Some(child.id() as i32));
        assert!(!watch.is_dead());
        let t = std::time::Instant::now();
        while !watch.is_dead() {
            assert!(t.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Not reaped yet: a zombie, which kill(pid, 0) would call alive.
        assert!(crate::sys::process::process_exists(child.id() as i32));
        child.wait().unwrap();
        assert!(!AgentWatch::new(None).is_dead());
    }
}
