//! A read-only view of an LMDB lock file's header: the word of the last committed write
//! transaction (`mtb_txnid`) and the writer mutex's lock and owner words, read with loads only,
//! for the survival signal (docs/protocol.md section 5): after a command's completion was posted,
//! the agent's writer mutex owned by its main thread means its loop began its next transaction.
//!
//! The layout is LMDB's (lock format 1, `MDB_LOCK_FORMAT` 0x10001: py-lmdb's LMDB 0.9.3x and
//! lmdb-sys 0.8's 0.9.21 alike) with glibc's `pthread_mutex_t`, whose size differs by platform
//! (40 bytes on x86_64, 48 on aarch64): every offset comes from that size, never from constants
//! that assume one. `MDB_txbody` is magic (u32, 0), format (u32, 4), the reader mutex (8), then
//! `mtb_txnid` (u64) and `mtb_numreaders` (u32), padded to a cache line (64); the writer mutex
//! follows. Of glibc's mutex: `__lock` (the owner's TID and futex bits, for a robust mutex) at 0,
//! `__owner` (the owner's TID) at 8, `__kind` at 16. Only on glibc (`target_env = "gnu"`); the view
//! refuses a file whose magic, format or writer-mutex kind (robust 144 or plain 128, both
//! process-shared) is not this layout's.

use std::fs::File;

/// LMDB's lock file magic (`MDB_MAGIC`).
pub const MAGIC: u32 = 0xBEEF_C0DE;
/// Lock format 1 with process-id locks (`MDB_LOCK_FORMAT` of LMDB 0.9.x).
pub const FORMAT: u32 = 0x0001_0001;
/// glibc's kind of a process-shared mutex (`PTHREAD_MUTEX_PSHARED_BIT`), and of a robust one.
pub const KIND_SHARED: i32 = 128;
pub const KIND_ROBUST_SHARED: i32 = 144;
/// The bits of a robust mutex's lock word that hold the owner's TID (`FUTEX_TID_MASK`).
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
const CACHE_LINE: usize = 64;

/// Where the words are, for a `pthread_mutex_t` of `mutex_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub txnid: usize,
    pub writer_mutex: usize,
    pub mutex_size: usize,
}

impl Layout {
    pub fn for_mutex_size(mutex_size: usize) -> Layout {
        let txnid = 8 + mutex_size;
        let body_end = txnid + 8 + 4;
        let writer_mutex = body_end.div_ceil(CACHE_LINE) * CACHE_LINE;
        Layout { txnid, writer_mutex, mutex_size }
    }

    /// This platform's.
    pub fn native() -> Layout {
        Layout::for_mutex_size(std::mem::size_of::<libc::pthread_mutex_t>())
    }

    /// The bytes the view maps: through the writer mutex.
    fn len(&self) -> usize {
        self.writer_mutex + self.mutex_size
    }
}

/// What the writer mutex's words say now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    /// `__lock`: 0 when free; for a robust mutex the owner's TID (with futex flags).
    pub lock: u32,
    /// `__owner`: the owner's TID while held, else 0.
    pub owner: i32,
}

/// A read-only mapping of a lock file's header.
pub struct LockView {
    map: *const u8,
    layout: Layout,
    /// Whether the writer mutex is robust (its lock word holds the owner's TID).
    pub robust: bool,
    /// The mapped file's identity (device, inode), to tell it from a file replaced at its path.
    pub file_id: (u64, u64),
}

// SAFETY: the mapping is read-only shared memory, read only with aligned single loads; nothing
// in this process writes it, and the pointer stays valid until Drop.
unsafe impl Send for LockView {}
// SAFETY: as for Send: every method only loads.
unsafe impl Sync for LockView {}

impl LockView {
    /// Maps the header of the lock file open as `file` (never opening another descriptor of it:
    /// closing one would drop this process's locks on it), checks the magic, the format and the
    /// writer mutex's kind; `Err` says why the view is refused.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub fn map(file: &File, layout: Layout) -> Result<LockView, String> {
        use std::os::fd::AsRawFd;
        let st = crate::sys::fs::fstat(file.as_raw_fd()).map_err(crate::error::errno_text)?;
        if (st.st_size as u64) < layout.len() as u64 {
            return Err(format!("the lock file has {} bytes, fewer than its header's {}", st.st_size, layout.len()));
        }
        // SAFETY: maps `layout.len()` bytes of an open file read-only and shared; the mapping
        // does not depend on the descriptor staying open.
        let map = unsafe {
            libc::mmap(std::ptr::null_mut(), layout.len(), libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if map == libc::MAP_FAILED {
            return Err(format!(
                "mmap of the lock file failed: {}",
                crate::error::errno_text(crate::error::last_errno())
            ));
        }
        // Made at once, so that every refusal below unmaps it (Drop).
        let mut view = LockView { map: map.cast(), layout, robust: false, file_id: (st.st_dev, st.st_ino) };
        let (magic, format, kind) =
            (view.load_u32(0), view.load_u32(4), view.load_u32(layout.writer_mutex + 16) as i32);
        if magic != MAGIC {
            return Err(format!("the lock file's magic is 0x{magic:08x}, not LMDB's 0x{MAGIC:08x}"));
        }
        if format != FORMAT {
            return Err(format!("the lock file's format is 0x{format:x}, not LMDB 0.9's 0x{FORMAT:x}"));
        }
        match kind {
            KIND_ROBUST_SHARED => {
                // Never `LockView { robust: true, ..view }`: that copies the pointer and drops
                // (unmaps) `view`.
                view.robust = true;
                Ok(view)
            }
            KIND_SHARED => Ok(view),
            other => Err(format!(
                "the writer mutex's kind is {other}, neither a robust ({KIND_ROBUST_SHARED}) nor a plain \
                 ({KIND_SHARED}) process-shared glibc mutex of {} bytes",
                layout.mutex_size
            )),
        }
    }

    /// Not glibc: no view (the survival proof goes without this signal).
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub fn map(_file: &File, _layout: Layout) -> Result<LockView, String> {
        Err("the writer-lock signal needs glibc's pthread_mutex_t layout".to_string())
    }

    /// An aligned 4-byte load at `offset`: a single load instruction (single-copy atomic on the
    /// targets this builds for), volatile so that every call reads memory, ordered after what
    /// came before it by an acquire fence.
    fn load_u32(&self, offset: usize) -> u32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= self.layout.len());
        // SAFETY: inside the mapping, 4-aligned (the mapping is page-aligned and every offset
        // read is a multiple of 4); the memory stays mapped until Drop.
        let v = unsafe { std::ptr::read_volatile(self.map.add(offset).cast::<u32>()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        v
    }

    fn load_u64(&self, offset: usize) -> u64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= self.layout.len());
        // SAFETY: as in `load_u32`, 8-aligned.
        let v = unsafe { std::ptr::read_volatile(self.map.add(offset).cast::<u64>()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        v
    }

    /// Whether the file at `path` is the mapped one (same device and inode): false once it was
    /// removed or replaced (an agent restarted under the same name). One `stat`.
    pub fn is_at(&self, path: &std::path::Path) -> bool {
        crate::sys::fs::stat(path).is_ok_and(|st| (st.st_dev, st.st_ino) == self.file_id)
    }

    /// The last committed write transaction's id (`mtb_txnid`).
    pub fn txnid(&self) -> u64 {
        self.load_u64(self.layout.txnid)
    }

    /// The writer mutex's lock and owner words now.
    pub fn writer(&self) -> Writer {
        let m = self.layout.writer_mutex;
        Writer { lock: self.load_u32(m), owner: self.load_u32(m + 8) as i32 }
    }

    /// Whether thread `tid` holds the writer mutex now: its owner word names it and, for a robust
    /// mutex, its lock word agrees.
    pub fn held_by(&self, tid: i32) -> bool {
        let w = self.writer();
        tid > 0 && w.owner == tid && (!self.robust || w.lock & FUTEX_TID_MASK == tid as u32)
    }
}

impl Drop for LockView {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.map as *mut libc::c_void, self.layout.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn layouts_of_both_platforms() {
        let x86 = Layout::for_mutex_size(40);
        assert_eq!((x86.txnid, x86.writer_mutex), (48, 64), "docs/protocol.md section 5, x86_64");
        let arm = Layout::for_mutex_size(48);
        assert_eq!((arm.txnid, arm.writer_mutex), (56, 128), "aarch64");
        assert_eq!(Layout::native().mutex_size, std::mem::size_of::<libc::pthread_mutex_t>());
    }

    /// A header written by hand: the magic, the format, a txnid, the writer mutex's words.
    fn header(path: &std::path::Path, magic: u32, format: u32, kind: i32, lock: u32, owner: i32) -> File {
        let l = Layout::native();
        let mut bytes = vec![0u8; 8192];
        bytes[0..4].copy_from_slice(&magic.to_ne_bytes());
        bytes[4..8].copy_from_slice(&format.to_ne_bytes());
        bytes[l.txnid..l.txnid + 8].copy_from_slice(&41u64.to_ne_bytes());
        bytes[l.writer_mutex..l.writer_mutex + 4].copy_from_slice(&lock.to_ne_bytes());
        bytes[l.writer_mutex + 8..l.writer_mutex + 12].copy_from_slice(&owner.to_ne_bytes());
        bytes[l.writer_mutex + 16..l.writer_mutex + 20].copy_from_slice(&kind.to_ne_bytes());
        std::fs::File::create(path).unwrap().write_all(&bytes).unwrap();
        File::open(path).unwrap()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_view_is_refused_for_another_magic_format_or_kind() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-lockview-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x-lock");
        let l = Layout::native();
        let ok = LockView::map(&header(&p, MAGIC, FORMAT, KIND_ROBUST_SHARED, 7 | 0x8000_0000, 7), l).unwrap();
        assert!(ok.robust && ok.held_by(7), "the robust owner, with the waiters bit in the lock word");
        assert!(!ok.held_by(8) && !ok.held_by(0), "another thread does not hold it");
        assert_eq!(ok.txnid(), 41);
        let e = LockView::map(&header(&p, 0x1234_5678, FORMAT, KIND_ROBUST_SHARED, 0, 0), l).err().unwrap();
        assert!(e.contains("magic"), "{e}");
        let e = LockView::map(&header(&p, MAGIC, 0x2, KIND_ROBUST_SHARED, 0, 0), l).err().unwrap();
        assert!(e.contains("format"), "{e}");
        let e = LockView::map(&header(&p, MAGIC, FORMAT, 0, 0, 0), l).err().unwrap();
        assert!(e.contains("kind is 0"), "{e}");
        // A plain shared mutex: its lock word is 1 or 2, its owner word the TID.
        let plain = LockView::map(&header(&p, MAGIC, FORMAT, KIND_SHARED, 1, 9), l).unwrap();
        assert!(!plain.robust && plain.held_by(9));
        // A robust mutex whose lock word names another thread than its owner word: not held by it.
        let torn = LockView::map(&header(&p, MAGIC, FORMAT, KIND_ROBUST_SHARED, 5, 9), l).unwrap();
        assert!(!torn.held_by(9));
        // Too short a file.
        std::fs::write(&p, [0u8; 16]).unwrap();
        assert!(LockView::map(&File::open(&p).unwrap(), l).err().unwrap().contains("fewer than"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
