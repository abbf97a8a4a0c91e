//! Completion semaphores (docs/protocol.md section 5): one fresh POSIX named semaphore per command
//! the worker may wait on. The agent opens it by name, posts it, closes it, and tries to unlink
//! it; posix_ipc 1.3.2 makes that unlink fail, so *we* always unlink what we created, whether
//! the wait succeeded, failed or timed out (on drop).
//!
//! Names: `/command_{kind}_{context}_{pid}_{32 hex random}`, `/` and `:` in the context
//! replaced by `_`, as the reference does; a context too long for the 251-byte limit is cut (on
//! a character boundary) and followed by `~` and a 64-bit hash of the whole context, so names
//! stay unique and at most 251 bytes (the leading `/` included) whatever the batch id. The
//! agent treats the name as opaque.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::semaphore::{NamedSemaphore, SemError, MAX_NAME_LEN};

/// FNV-1a, 64 bits: a stable hash for cut contexts.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// 128 random bits (getrandom), mixed with a per-process counter so that even a failing
/// getrandom never repeats a name within this process.
fn unique() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut buf = [0u8; 16];
    // SAFETY: writes at most 16 bytes into buf.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    let mut r = u128::from_ne_bytes(buf);
    if got != 16 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        r ^= t;
    }
    r ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A completion semaphore's name for a command of `kind` about `context`.
pub fn completion_name(kind: &str, context: &str, pid: u32, unique: u128) -> String {
    let context: String = context.chars().map(|c| if c == '/' || c == ':' { '_' } else { c }).collect();
    let head = format!("/command_{kind}_");
    let tail = format!("_{pid}_{unique:032x}");
    // At most MAX_NAME_LEN (251) bytes in all, the leading '/' included: glibc would take one
    // more, but 251 is the limit the protocol's users know.
    let budget = MAX_NAME_LEN.saturating_sub(head.len() + tail.len());
    if context.len() <= budget {
        return format!("{head}{context}{tail}");
    }
    let mut cut = budget.saturating_sub(17);
    while !context.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{head}{}~{:016x}{tail}", &context[..cut], fnv1a(context.as_bytes()))
}

/// A completion semaphore this process created; unlinked (and closed) on drop, except in a
/// forked child, which must not remove its parent's semaphore.
pub struct CompletionSemaphore {
    sem: Option<NamedSemaphore>,
    name: String,
    owner_pid: u32,
}

impl CompletionSemaphore {
    /// Creates a fresh semaphore (`O_CREAT|O_EXCL`, mode 0600, value 0).
    pub fn create(kind: &str, context: &str) -> Result<CompletionSemaphore> {
        let pid = std::process::id();
        for _ in 0..8 {
            let name = completion_name(kind, context, pid, unique());
            match NamedSemaphore::create(name.as_bytes(), 0o600, 0, true) {
                Ok(sem) => return Ok(CompletionSemaphore { sem: Some(sem), name, owner_pid: pid }),
                Err(e) if e.errno == libc::EEXIST => continue,
                Err(e) => return Err(ipc_error(&name, e)),
            }
        }
        Err(Error::new(ErrorKind::Ipc, "could not find a free completion semaphore name after 8 tries"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn semaphore(&self) -> &NamedSemaphore {
        self.sem.as_ref().expect("present until drop")
    }
}

pub(crate) fn ipc_error(name: &str, e: SemError) -> Error {
    let hint = if e.errno == libc::EMFILE
        || e.errno == libc::ENFILE
        || e.errno == libc::ENOSPC
        || e.errno == libc::ENOMEM
    {
        " (each pending completion holds a semaphore in /dev/shm and a memory mapping: free completions you no longer need)"
    } else {
        ""
    };
    Error::new(ErrorKind::Ipc, format!("completion semaphore {name}: {}{hint}", e.text()))
}

impl Drop for CompletionSemaphore {
    fn drop(&mut self) {
        if std::process::id() != self.owner_pid {
            // A forked child: the semaphore is the parent's.
            std::mem::forget(self.sem.take());
            return;
        }
        // Remove the name first (the agent's own unlink may never happen), then close.
        let _ = NamedSemaphore::unlink(self.name.as_bytes());
        drop(self.sem.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference_and_fit() {
        let n = completion_name("query", "batch_weights/step:7", 42, 0xff);
        assert_eq!(n, format!("/command_query_batch_weights_step_7_42_{:032x}", 0xff));
        for len in [0, 10, 150, 300, 1000] {
            for ch in ["x", "é", "批"] {
                let ctx = format!("batch_{}", ch.repeat(len));
                let n = completion_name("register_tensors", &ctx, u32::MAX, u128::MAX);
                assert!(n.len() <= MAX_NAME_LEN, "{} bytes", n.len());
                assert!(n.starts_with("/command_register_tensors_batch_"));
                assert_eq!(n.matches('/').count(), 1);
            }
        }
        let a = completion_name("transfer", &"a".repeat(300), 1, 1);
        let b = completion_name("transfer", &format!("{}b", "a".repeat(299)), 1, 1);
        assert_ne!(a, b, "cut contexts keep a hash of the whole context");
    }

    #[test]
    fn created_then_removed() {
        let c = CompletionSemaphore::create("unit", &"z".repeat(400)).unwrap();
        let path = format!("/dev/shm/sem.{}", &c.name()[1..]);
        assert!(std::path::Path::new(&path).exists());
        let st = std::fs::metadata(&path).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&st.permissions()) & 0o777, 0o600);
        c.semaphore().post().unwrap();
        drop(c);
        assert!(!std::path::Path::new(&path).exists());
    }
}
