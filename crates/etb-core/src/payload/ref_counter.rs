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
//!
//! Taking and giving back a slot costs O(1), never a scan of the 10,000 slots ([`Book`]): a file
//! hands out its never-used slots in order (a bump index), then the slots freed payloads gave back,
//! oldest first (a FIFO). A freed slot is re-checked when its turn comes: one that does not read 0
//! yet goes back to the tail. At most [`PROBE`] freed slots are re-checked per file and take;
//! when none of them reads 0 the next file is tried, then a new file is made. A live count says
//! when a file's last payload is freed.

use std::collections::VecDeque;
use std::ffi::CString;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{errno_text, last_errno, Error, ErrorKind, Result};

/// torch's `CUDA_IPC_REF_COUNTER_FILE_SIZE`: the header and 10,000 slots.
pub const FILE_SIZE: usize = HEADER + SLOTS * 8;
pub const HEADER: usize = 64;
pub const SLOTS: usize = 10_000;
/// How many freed slots one take re-checks in a file before it tries the next file.
pub const PROBE: usize = 8;

/// Which slots of one file this process may hand out. Each slot is in one of three states:
/// never used (`fresh..slots`), held by a live payload (counted in `live`), or freed (in `freed`,
/// oldest first). Not thread-safe by itself: each file's book is behind its mutex.
struct Book {
    slots: usize,
    /// Slots `fresh..slots` were never handed out.
    fresh: usize,
    /// Slots given back by freed payloads (or never used but not reading 0), oldest first.
    freed: VecDeque<u32>,
    /// How many slots live payloads hold.
    live: usize,
}

impl Book {
    fn new(slots: usize) -> Book {
        Book { slots, fresh: 0, freed: VecDeque::new(), live: 0 }
    }

    /// A slot that no live payload holds and that reads 0 (`read(index)` is its value), now
    /// counted as held; `None` when the never-used slots are gone and none of the first
    /// [`PROBE`] freed slots reads 0 (each of those goes back to the tail).
    fn take(&mut self, read: impl Fn(usize) -> i64) -> Option<usize> {
        if self.fresh < self.slots {
            let index = self.fresh;
            self.fresh += 1;
            if read(index) == 0 {
                self.live += 1;
                return Some(index);
            }
            // Written by someone else: re-checked later, like a freed slot.
            self.freed.push_back(index as u32);
        }
        for _ in 0..PROBE.min(self.freed.len()) {
            let index = self.freed.pop_front().expect("not empty") as usize;
            if read(index) == 0 {
                self.live += 1;
                return Some(index);
            }
            // The consumer still holds the memory: its turn comes again after the others.
            self.freed.push_back(index as u32);
        }
        None
    }

    /// Gives back a slot a live payload held; true when no live payload holds one any more.
    fn give_back(&mut self, index: usize) -> bool {
        debug_assert!(self.live > 0 && index < self.fresh, "slot {index} was not held");
        self.live -= 1;
        self.freed.push_back(index as u32);
        self.live == 0
    }
}

/// One mapped counter file.
struct File {
    name: CString,
    map: *mut u8,
    /// Which slots this process may hand out.
    book: Mutex<Book>,
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
        let file = File { name, map: map.cast(), book: Mutex::new(Book::new(SLOTS)) };
        // This process counts itself once, for good.
        file.header().fetch_add(1, Ordering::AcqRel);
        Ok(file)
    }

    /// Takes a slot of this file that no live payload holds and that reads 0 ([`Book::take`]),
    /// and sets it to 1.
    fn take(&self) -> Option<usize> {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let index = book.take(|i| self.slot(i).load(Ordering::Acquire))?;
        self.slot(index).store(1, Ordering::Release);
        Some(index)
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
    /// Takes a free slot (one no live payload holds, reading 0) and sets it to 1: from the first
    /// file that has one, else from a new file. Thread-safe (one pool lock); O(files).
    pub fn take() -> Result<Slot> {
        let pid = std::process::id();
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.pid != pid {
            // A forked child: the parent's files are the parent's; forget them.
            std::mem::forget(std::mem::take(&mut pool.files));
            pool.pid = pid;
        }
        for file in &pool.files {
            if let Some(index) = file.take() {
                return Ok(Slot { file: file.clone(), index, owner_pid: pid });
            }
        }
        let name = CString::new(format!("/etb_rc_{pid}_{}", pool.next)).expect("no NUL");
        pool.next += 1;
        let file = Arc::new(File::create(name)?);
        let index = file.take().expect("a new file has free slots");
        pool.files.push(file.clone());
        Ok(Slot { file, index, owner_pid: pid })
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
        let empty = self.file.book.lock().unwrap_or_else(|p| p.into_inner()).give_back(self.index);
        if empty {
            // The last payload of the file: drop the pool's reference too, which unlinks it.
            pool.files.retain(|f| !Arc::ptr_eq(f, &self.file));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A book over `n` slots whose values live in a vector, as the mapping's would: `take` sets
    /// the slot to 1 (what `File::take` stores), a consumer's release sets it to 0.
    struct Fake {
        book: Book,
        values: RefCell<Vec<i64>>,
    }

    impl Fake {
        fn new(n: usize) -> Fake {
            Fake { book: Book::new(n), values: RefCell::new(vec![0; n]) }
        }
        fn take(&mut self) -> Option<usize> {
            let values = &self.values;
            let index = self.book.take(|i| values.borrow()[i])?;
            values.borrow_mut()[index] = 1;
            Some(index)
        }
        fn release(&self, index: usize) {
            self.values.borrow_mut()[index] -= 1;
        }
    }

    #[test]
    fn never_used_slots_in_order_then_freed_ones_oldest_first() {
        let mut f = Fake::new(5);
        assert_eq!((f.take(), f.take(), f.take()), (Some(0), Some(1), Some(2)));
        for i in [2, 0] {
            f.release(i);
            assert!(!f.book.give_back(i));
        }
        // The never-used slots come first, though 2 and 0 read 0.
        assert_eq!((f.take(), f.take()), (Some(3), Some(4)));
        // Then the freed ones, in the order they were given back.
        assert_eq!((f.take(), f.take()), (Some(2), Some(0)));
        assert_eq!(f.take(), None, "every slot is held");
        assert_eq!(f.book.live, 5);
    }

    #[test]
    fn a_freed_slot_the_consumer_still_holds_waits_at_the_tail_until_it_reads_zero() {
        let mut f = Fake::new(3);
        let (a, b, c) = (f.take().unwrap(), f.take().unwrap(), f.take().unwrap());
        // `a` is freed while a consumer holds it (it reads 1), then `b` and `c` once released.
        assert!(!f.book.give_back(a));
        for i in [b, c] {
            f.release(i);
            f.book.give_back(i);
        }
        assert_eq!(f.take(), Some(b), "a reads 1: skipped, to the tail");
        assert_eq!(Vec::from(f.book.freed.clone()), vec![c as u32, a as u32]);
        assert_eq!(f.take(), Some(c));
        assert_eq!(f.take(), None, "a still reads 1");
        assert_eq!(Vec::from(f.book.freed.clone()), vec![a as u32], "and stays free, not lost");
        f.release(a);
        assert_eq!(f.take(), Some(a), "taken once it reads 0");
    }

    #[test]
    fn one_take_rechecks_at_most_probe_freed_slots() {
        let n = PROBE * 2 + 1;
        let mut f = Fake::new(n);
        let taken: Vec<usize> = (0..n).map(|_| f.take().unwrap()).collect();
        for &i in &taken {
            f.book.give_back(i); // all freed while held, but the last
        }
        f.release(taken[n - 1]);
        assert_eq!((f.take(), f.take()), (None, None), "{PROBE} held slots re-checked per take");
        assert_eq!(f.take(), Some(taken[n - 1]), "the third take reaches it");
    }

    #[test]
    fn the_last_give_back_says_the_file_is_empty() {
        let mut f = Fake::new(SLOTS);
        let held: Vec<usize> = (0..SLOTS).map(|_| f.take().unwrap()).collect();
        assert_eq!(held, (0..SLOTS).collect::<Vec<_>>());
        assert_eq!(f.take(), None, "10,000 live payloads fill a file");
        let (last, rest) = held.split_last().unwrap();
        assert!(rest.iter().all(|&i| !f.book.give_back(i)));
        assert!(f.book.give_back(*last));
    }

    /// Random takes, frees and consumer releases against a model of the three states: a take
    /// never hands out a held slot nor one that does not read 0; it finds a slot whenever a
    /// never-used one is left; the live count is the model's.
    #[test]
    fn random_sequences_keep_the_invariants() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20 {
            let n = 1 + (next() % 40) as usize;
            let mut f = Fake::new(n);
            let (mut held, mut freed_held): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
            for _ in 0..2_000 {
                match next() % 4 {
                    0 | 1 => {
                        let fresh_left = f.book.fresh < n;
                        match f.take() {
                            Some(i) => {
                                assert!(!held.contains(&i), "slot {i} handed out twice");
                                assert!(!freed_held.contains(&i), "slot {i} handed out while a consumer holds it");
                                held.push(i);
                            }
                            None => assert!(!fresh_left, "a never-used slot was left"),
                        }
                    }
                    2 if !held.is_empty() => {
                        // A payload freed: its consumer may still hold the memory.
                        let i = held.swap_remove((next() % held.len() as u64) as usize);
                        if next() % 2 == 0 {
                            f.release(i);
                        } else {
                            freed_held.push(i);
                        }
                        assert_eq!(f.book.give_back(i), held.is_empty());
                    }
                    3 if !freed_held.is_empty() => {
                        let i = freed_held.swap_remove((next() % freed_held.len() as u64) as usize);
                        f.release(i);
                    }
                    _ => {}
                }
                assert_eq!(f.book.live, held.len());
                assert_eq!(f.book.fresh - f.book.freed.len(), held.len(), "every slot in one state");
            }
        }
    }

    /// The process's pool, with real files: one test, as the pool is the process's.
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
        // 10,001 live payloads: a second file, every (file, slot) once; all freed: both unlinked.
        let many: Vec<Slot> = (0..=SLOTS).map(|_| Slot::take().unwrap()).collect();
        let mut seen: Vec<(&[u8], usize)> = many.iter().map(|s| (s.file_name(), s.index())).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), SLOTS + 1);
        let mut names: Vec<String> = many.iter().map(|s| String::from_utf8_lossy(s.file_name()).into_owned()).collect();
        names.dedup();
        assert_eq!(names.len(), 2, "the 10,001st payload opens a second file");
        assert!(many.iter().all(|s| s.value() == 1));
        drop(many);
        assert!(names.iter().all(|n| std::fs::metadata(format!("/dev/shm/{}", &n[1..])).is_err()));
    }
}
