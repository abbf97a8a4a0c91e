//! The deleters of DLPack payloads freed while a consumer still held their memory
//! (docs/torch-ipc.md section 7). A DLPack payload owns its producer's managed tensor; the
//! deleter may run only once the payload is freed *and* its reference-counter slot reads 0 (the
//! agent's torch released the memory). Freed with the slot at 0, the deleter runs at once, on the
//! freeing thread ([`release`]); otherwise the payload's remains go to one process-wide thread,
//! `etb-dlpack`, started on the first such free, which looks at every deferred slot each 10 ms
//! and runs the deleter of those that read 0, then gives their slots back. It sleeps on a
//! condition variable while nothing is deferred. A slot that never reads 0 never runs its
//! deleter (the memory must outlive the agent's use); a client's close changes nothing.
//!
//! After `fork()` the child has no reaper (threads do not survive a fork): the first deferral in
//! the child starts its own.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use once_cell::sync::Lazy;

use super::dlpack::Managed;
use super::ref_counter::Slot;
use crate::cuda::ipc::IpcEvent;

/// The reaper's beat.
pub const POLL: Duration = Duration::from_millis(10);
/// The reaper thread's name.
pub const THREAD_NAME: &str = "etb-dlpack";

/// What a freed DLPack payload leaves until its deleter runs.
pub(super) struct Remains {
    pub managed: Managed,
    pub slot: Slot,
    pub event: Option<IpcEvent>,
}

impl Remains {
    fn finish(self) {
        self.managed.delete();
        // Then the slot goes back (it reads 0) and the event is destroyed.
        drop((self.slot, self.event));
    }
}

#[derive(Default)]
struct Deferred {
    items: Vec<Remains>,
    /// The pid whose reaper thread runs (0: none yet).
    reaper_pid: u32,
}

static DEFERRED: Lazy<(Mutex<Deferred>, Condvar)> = Lazy::new(|| (Mutex::new(Deferred::default()), Condvar::new()));

fn deferred() -> std::sync::MutexGuard<'static, Deferred> {
    DEFERRED.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// A DLPack payload was freed: runs the deleter now when the slot reads 0, else defers it to
/// the reaper.
pub(super) fn release(remains: Remains) {
    if remains.slot.value() == 0 {
        remains.finish();
        return;
    }
    let mut d = deferred();
    d.items.push(remains);
    let pid = std::process::id();
    if d.reaper_pid != pid {
        let spawned = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(reap);
        match spawned {
            Ok(_) => d.reaper_pid = pid,
            Err(e) => log::error!(
                "cannot start the {THREAD_NAME} thread ({e}): deferred DLPack deleters wait for the next free"
            ),
        }
    }
    DEFERRED.1.notify_one();
}

/// How many deleters wait for their slot to read 0 (tests and diagnostics).
pub fn pending() -> usize {
    deferred().items.len()
}

fn reap() {
    loop {
        let ready: Vec<Remains> = {
            let mut d = deferred();
            while d.items.is_empty() {
                d = DEFERRED.1.wait(d).unwrap_or_else(|p| p.into_inner());
            }
            let (ready, waiting): (Vec<Remains>, Vec<Remains>) =
                std::mem::take(&mut d.items).into_iter().partition(|r| r.slot.value() == 0);
            d.items = waiting;
            ready
        };
        // Outside the lock: a deleter may take its time (or free another payload).
        for r in ready {
            r.finish();
        }
        std::thread::sleep(POLL);
    }
}
