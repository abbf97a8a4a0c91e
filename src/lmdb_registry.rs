//! One open environment per file per process, shared by reference count.
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
        // SAFETY: fstat on a descriptor we were given; the struct is plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileId { dev: st.st_dev, ino: st.st_ino })
    }
}

/// A table of shared values (open environments and what was learnt when opening them).
pub struct Registry<T: 'static> {
    entries: Mutex<HashMap<FileId, Arc<T>>>,
}

impl<T: 'static> Registry<T> {
    pub fn new() -> Self {
        Registry { entries: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<FileId, Arc<T>>> {
        // A panic elsewhere must not make every later bootstrap fail: the map stays consistent.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The shared value for `id`, or a new one from `open` (called under the registry's lock,
    /// so that nothing else in this process opens or closes this file meanwhile).
    pub fn get_or_open<E>(
        &'static self,
        id: FileId,
        open: impl FnOnce() -> Result<T, E>,
    ) -> Result<Lease<T>, E> {
        let mut map = self.lock();
        if let Some(existing) = map.get(&id) {
            return Ok(Lease { registry: self, id, value: Some(existing.clone()) });
        }
        let value = Arc::new(open()?);
        map.insert(id, value.clone());
        Ok(Lease { registry: self, id, value: Some(value) })
    }

    /// Whether a value for `id` is open in this process.
    pub fn contains(&self, id: FileId) -> bool {
        self.lock().contains_key(&id)
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
        let mut map = self.registry.lock();
        if let Some(value) = self.value.take() {
            // The map holds one reference and this lease another: this was the last lease.
            if Arc::strong_count(&value) == 2 {
                map.remove(&self.id);
            }
            // Dropped (and, if last, closed) while the registry is locked.
            drop(value);
        }
        drop(map);
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
        let a = REG.get_or_open::<()>(id, || { opened += 1; Ok(Probe) }).unwrap();
        let b = REG.get_or_open::<()>(id, || { opened += 1; Ok(Probe) }).unwrap();
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
}
