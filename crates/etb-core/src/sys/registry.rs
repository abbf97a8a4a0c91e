//! One shared value per file per process, by reference count: the open LMDB environments of the
//! agent's files (`protocol::state_db`, `protocol::command_queue`) and the worker lock
//! (`sys::worker_lock`), keyed by the file's device and inode ([`FileId`]).
//!
//! LMDB forbids opening the same environment twice in one process: the second `mdb_env_open`
//! would take its own reader slots, and closing either one closes a descriptor of the lock
//! file, which drops every `fcntl` lock this process holds on it (those LMDB uses to tell live
//! processes from dead ones). So clients of the same agent in one process share one
//! environment per file, keyed by the data file's device and inode, and the last one to go
//! closes it while holding the registry's lock, so no other thread can open the file anew in
//! between.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of_path(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId { dev: m.dev(), ino: m.ino() })
    }

    pub fn of_fd(fd: i32) -> std::io::Result<FileId> {
        let st = crate::sys::fs::fstat(fd).map_err(std::io::Error::from_raw_os_error)?;
        Ok(FileId { dev: st.st_dev, ino: st.st_ino })
    }
}

/// The entries of one process: a forked child must not reuse (nor close) its parent's.
struct Entries<T> {
    pid: u32,
    map: HashMap<FileId, Arc<T>>,
}

/// A table of shared values (open environments and what was learnt when opening them).
pub struct Registry<T: 'static> {
    entries: Mutex<Entries<T>>,
}

impl<T: 'static> Registry<T> {
    pub fn new() -> Self {
        Registry { entries: Mutex::new(Entries { pid: std::process::id(), map: HashMap::new() }) }
    }

    /// The map of this process. In a forked child the inherited entries are the parent's
    /// environments (LMDB forbids using them across fork, and closing them would drop the
    /// parent's state in LMDB 0.9.21): they are forgotten, never closed, and the child starts
    /// empty.
    fn lock(&self) -> MutexGuard<'_, Entries<T>> {
        // A panic elsewhere must not make every later bootstrap fail: the map stays consistent.
        let mut guard = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let me = std::process::id();
        if guard.pid != me {
            std::mem::forget(std::mem::take(&mut guard.map));
            guard.pid = me;
        }
        guard
    }

    /// The shared value for `id`, or a new one from `open` (called under the registry's lock,
    /// so that nothing else in this process opens or closes this file meanwhile).
    pub fn get_or_open<E>(&'static self, id: FileId, open: impl FnOnce() -> Result<T, E>) -> Result<Lease<T>, E> {
        let mut entries = self.lock();
        if let Some(existing) = entries.map.get(&id) {
            return Ok(Lease { registry: self, id, value: Some(existing.clone()) });
        }
        let value = Arc::new(open()?);
        entries.map.insert(id, value.clone());
        Ok(Lease { registry: self, id, value: Some(value) })
    }

    /// Whether a value for `id` is open in this process.
    pub fn contains(&self, id: FileId) -> bool {
        self.lock().map.contains_key(&id)
    }
}

impl<T: 'static> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A counted share of a registry entry; the last lease dropped closes the value.
pub struct Lease<T: 'static> {
    registry: &'static Registry<T>,
    id: FileId,
    value: Option<Arc<T>>,
}

impl<T: 'static> Lease<T> {
    pub fn id(&self) -> FileId {
        self.id
    }
}

impl<T: 'static> std::ops::Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_ref().expect("a lease holds its value until dropped")
    }
}

impl<T: 'static> Drop for Lease<T> {
    fn drop(&mut self) {
        let mut entries = self.registry.lock();
        if let Some(value) = self.value.take() {
            // The map holds one reference and this lease another: this was the last lease.
            if Arc::strong_count(&value) == 2 {
                entries.map.remove(&self.id);
            }
            // Dropped (and, if last, closed) while the registry is locked.
            drop(value);
        }
        drop(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use once_cell::sync::Lazy;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Probe;
    impl Drop for Probe {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    static REG: Lazy<Registry<Probe>> = Lazy::new(Registry::new);

    #[test]
    fn shared_until_the_last_lease() {
        let id = FileId { dev: 1, ino: 2 };
        let mut opened = 0;
        let a = REG
            .get_or_open::<()>(id, || {
                opened += 1;
                Ok(Probe)
            })
            .unwrap();
        let b = REG
            .get_or_open::<()>(id, || {
                opened += 1;
                Ok(Probe)
            })
            .unwrap();
        assert_eq!(opened, 1);
        assert!(REG.contains(id));
        drop(a);
        assert_eq!(DROPS.load(Ordering::SeqCst), 0);
        assert!(REG.contains(id));
        drop(b);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
        assert!(!REG.contains(id));
        assert!(REG.get_or_open::<&str>(id, || Err("no")).is_err());
        assert!(!REG.contains(id));
    }

    static FORK_DROPS: AtomicUsize = AtomicUsize::new(0);
    struct ForkProbe;
    impl Drop for ForkProbe {
        fn drop(&mut self) {
            FORK_DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    static FORK_REG: Lazy<Registry<ForkProbe>> = Lazy::new(Registry::new);

    /// In a forked child the parent's entries are neither reused nor closed.
    #[test]
    fn a_forked_child_starts_empty_and_never_closes_the_parents() {
        let id = FileId { dev: 7, ino: 8 };
        let parent = FORK_REG.get_or_open::<()>(id, || Ok(ForkProbe)).unwrap();
        // Pretend this process is a child of the one that opened the entry.
        FORK_REG.entries.lock().unwrap().pid = 1;
        let mut opened = false;
        let child = FORK_REG
            .get_or_open::<()>(id, || {
                opened = true;
                Ok(ForkProbe)
            })
            .unwrap();
        assert!(opened, "the child must open its own, not reuse the parent's");
        assert_eq!(FORK_DROPS.load(Ordering::SeqCst), 0, "the parent's entry must not be closed");
        drop(child);
        assert_eq!(FORK_DROPS.load(Ordering::SeqCst), 1, "the child's own entry closes normally");
        std::mem::forget(parent); // the parent's lease belongs to the (pretend) parent process
    }
}
