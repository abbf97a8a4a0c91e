//! The reference counter of CUDA tensor payloads, laid out as torch expects (docs/torch-ipc.md
//! section 2): POSIX shared-memory files of 80,064 bytes, a 64-byte header whose bytes 0-3 count
//! the processes mapping the file, then 10,000 int64 slots. Each payload holds one slot, set to 1
//! when it is made; the consumer's torch decrements it when its storage dies.
//!
//! One pool of files per process (`/etb_rc_{pid}_{n}`, mode 0600), each for up to 10,000 live
//! payloads; a new file for the next 10,000. This process counts itself in each file's header
//! once and never gives that count back, so a consumer's release never unlinks the file under us
//! (with a header of 0, torch's release deletes it). A freed payload gives its slot back; a slot
//! is reused only once it reads 0 (the consumer may still hold the memory otherwise). When the
//! last payload of a file is freed, the file's name is unlinked (a consumer that releases later
//! finds no file: torch tolerates that).

use std::ffi::CString;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{errno_text, last_errno, Error, ErrorKind, Result};

/// torch's `CUDA_IPC_REF_COUNTER_FILE_SIZE`: the header and 10,000 slots.
pub const FILE_SIZE: usize = HEADER + SLOTS * 8;
pub const HEADER: usize = 64;
pub const SLOTS: usize = 10_000;

/// One mapped counter file.
struct File {
    name: CString,
    map: *mut u8,
    /// Which slots a live payload of this process holds.
    live: Mutex<Vec<bool>>,
}

// SAFETY: the mapping is shared memory accessed only through atomics at aligned offsets; the
// bookkeeping is behind a Mutex.
unsafe impl Send for File {}
// SAFETY: as for Send.
unsafe impl Sync for File {}

impl File {
    fn slot(&self, index: usize) -> &AtomicI64 {
        assert!(index < SLOTS, "slot {index} out of range");
        // SAFETY: the mapping is FILE_SIZE bytes, page-aligned, alive as long as `self`; the slot
        // lies inside it, 8-aligned; every access to it in this process is atomic.
        unsafe { AtomicI64::from_ptr(self.map.add(HEADER + index * 8).cast()) }
    }

    fn header(&self) -> &AtomicI32 {
        // SAFETY: as in `slot`: bytes 0-3 of the mapping, 4-aligned, accessed atomically.
        unsafe { AtomicI32::from_ptr(self.map.cast()) }
    }

    fn create(name: CString) -> Result<File> {
        let ipc = |what: &str, errno: i32| {
            Error::new(
                ErrorKind::Ipc,
                format!("reference-counter file {}: {what} failed: {}", name.to_string_lossy(), errno_text(errno)),
            )
        };
        // SAFETY: a NUL-terminated name; creating a new shared-memory object, mode 0600.
        let fd = unsafe { libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
        if fd < 0 {
            return Err(ipc("shm_open", last_errno()));
        }
        // SAFETY: the descriptor just opened.
        let sized = unsafe { libc::ftruncate(fd, FILE_SIZE as libc::off_t) } == 0;
        let errno = last_errno();
        let map = if sized {
            // SAFETY: maps FILE_SIZE bytes of the object just sized, read-write, shared.
            unsafe {
                libc::mmap(std::ptr::null_mut(), FILE_SIZE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
            }
        } else {
            libc::MAP_FAILED
        };
        let map_errno = last_errno();
        // SAFETY: the descriptor is not needed once mapped.
        unsafe { libc::close(fd) };
        if map == libc::MAP_FAILED {
            // SAFETY: removes the name this call created.
            unsafe { libc::shm_unlink(name.as_ptr()) };
            return Err(if sized { ipc("mmap", map_errno) } else { ipc("ftruncate", errno) });
        }
        let file = File { name, map: map.cast(), live: Mutex::new(vec![false; SLOTS]) };
        // This process counts itself once, for good.
        file.header().fetch_add(1, Ordering::AcqRel);
        Ok(file)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: the name this process created; the mapping made in `create`, unmapped once.
        unsafe {
            libc::shm_unlink(self.name.as_ptr());
            libc::munmap(self.map.cast(), FILE_SIZE);
        }
    }
}

/// This process's files.
struct Pool {
    pid: u32,
    files: Vec<Arc<File>>,
    next: u64,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { pid: 0, files: Vec::new(), next: 0 });

/// One payload's slot: set to 1 when taken, given back when dropped.
pub struct Slot {
    file: Arc<File>,
    index: usize,
    owner_pid: u32,
}

impl Slot {
    /// Takes a free slot (one no live payload holds, reading 0) and sets it to 1.
    pub fn take() -> Result<Slot> {
        let pid = std::process::id();
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.pid != pid {
            // A forked child: the parent's files are the parent's; forget them.
            std::mem::forget(std::mem::take(&mut pool.files));
            pool.pid = pid;
        }
        for file in &pool.files {
            let mut live = file.live.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(index) = (0..SLOTS).find(|&i| !live[i] && file.slot(i).load(Ordering::Acquire) == 0) {
                live[index] = true;
                file.slot(index).store(1, Ordering::Release);
                return Ok(Slot { file: file.clone(), index, owner_pid: pid });
            }
        }
        let name = CString::new(format!("/etb_rc_{pid}_{}", pool.next)).expect("no NUL");
        pool.next += 1;
        let file = Arc::new(File::create(name)?);
        file.live.lock().unwrap_or_else(|p| p.into_inner())[0] = true;
        file.slot(0).store(1, Ordering::Release);
        pool.files.push(file.clone());
        Ok(Slot { file, index: 0, owner_pid: pid })
    }

    /// The file's name, as the payload carries it.
    pub fn file_name(&self) -> &[u8] {
        self.file.name.as_bytes()
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The slot's value: 0 once the consumer released the memory.
    pub fn value(&self) -> i64 {
        self.file.slot(self.index).load(Ordering::Acquire)
    }

    /// Whether this slot belongs to another process (this one was forked after it was made).
    pub fn forked(&self) -> bool {
        std::process::id() != self.owner_pid
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.forked() {
            // Only forget: the file and its mapping are the parent's.
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        let empty = {
            let mut live = self.file.live.lock().unwrap_or_else(|p| p.into_inner());
            live[self.index] = false;
            !live.iter().any(|&l| l)
        };
        if empty {
            // The last payload of the file: drop the pool's reference too, which unlinks it.
            pool.files.retain(|f| !Arc::ptr_eq(f, &self.file));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_set_and_released() {
        let a = Slot::take().unwrap();
        let b = Slot::take().unwrap();
        assert_eq!((a.value(), b.value()), (1, 1));
        assert_ne!(a.index(), b.index());
        let name = String::from_utf8(a.file_name().to_vec()).unwrap();
        assert!(name.starts_with(&format!("/etb_rc_{}_", std::process::id())), "{name}");
        let path = format!("/dev/shm/{}", &name[1..]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_SIZE as u64);
        assert_eq!(a.file.header().load(Ordering::Acquire), 1, "this process counts itself once");
        // The consumer's release: the slot reads 0, and a new payload may take it only then.
        a.file.slot(a.index()).fetch_sub(1, Ordering::AcqRel);
        assert_eq!(a.value(), 0);
        drop((a, b));
        assert!(std::fs::metadata(&path).is_err(), "the last payload's free unlinks the file");
    }
}
