//! A small safe wrapper over the bundled LMDB 0.9.21 (`lmdb-sys`): environments, named
//! databases, read and write transactions. Only what the protocol needs.
//!
//! Every environment is opened with `MDB_NOSUBDIR` (a one-file environment, lock file
//! `{path}-lock`, as py-lmdb's `subdir=False`) and `MDB_NOTLS` (read transactions are not tied to
//! threads, so a client may be used from any thread).

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{RwLock, RwLockReadGuard};

use lmdb_sys as ffi;

use crate::error::{Error, ErrorKind, Result};

/// `{path}-lock`: LMDB's lock file of a one-file environment.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-lock");
    PathBuf::from(s)
}

/// An LMDB return code with the operation that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmdbError {
    pub code: i32,
    pub op: &'static str,
}

impl LmdbError {
    pub fn text(&self) -> String {
        // SAFETY: mdb_strerror returns a pointer to a static string (or strerror's buffer).
        let s = unsafe { CStr::from_ptr(ffi::mdb_strerror(self.code)) };
        format!("{}: {} (code {})", self.op, s.to_string_lossy(), self.code)
    }

    pub fn is_not_found(&self) -> bool {
        self.code == ffi::MDB_NOTFOUND
    }

    /// Errors that waiting cannot cure (permissions, names, an incompatible LMDB): a poll loop
    /// reports them at once instead of at its deadline. `MDB_INVALID` is not among them: an
    /// agent halfway through creating its file looks like that.
    pub fn is_permanent(&self) -> bool {
        matches!(self.code, libc::EACCES | libc::EPERM | libc::ENAMETOOLONG | libc::ENOTDIR | libc::ELOOP)
            || self.code == ffi::MDB_VERSION_MISMATCH
            || self.code == ffi::MDB_INCOMPATIBLE
    }

    /// Converts into a core error, naming the environment's path.
    pub fn at(self, path: &Path) -> Error {
        Error::new(ErrorKind::Lmdb, format!("LMDB environment {}: {}", path.display(), self.text()))
    }
}

fn check(code: i32, op: &'static str) -> Result<(), LmdbError> {
    if code == 0 {
        Ok(())
    } else {
        Err(LmdbError { code, op })
    }
}

/// How to open an environment.
#[derive(Debug, Clone, Copy)]
pub struct EnvOptions {
    pub read_only: bool,
    /// `MDB_NOLOCK`: take no reader slot and no writer lock. Only for read-only access to an
    /// environment whose lock file we cannot write.
    pub no_lock: bool,
    /// `MDB_NOSYNC`: commits do not fsync.
    pub no_sync: bool,
    /// 0: keep the size stored in the file.
    pub map_size: usize,
    pub max_dbs: u32,
}

/// An open LMDB environment. Dropping it closes it (and with it every `fcntl` lock this process
/// holds on its lock file: never open the same file twice in one process, see `lmdb::registry`).
#[derive(Debug)]
pub struct Environment {
    env: *mut ffi::MDB_env,
    path: PathBuf,
    /// Held shared by every transaction of ours, exclusively to adopt a map grown by another
    /// process (`mdb_env_set_mapsize(env, 0)` remaps the file: no transaction of any thread of
    /// ours may be reading the old mapping then).
    remap: RwLock<()>,
}

// SAFETY: an MDB_env may be used from any thread; transactions are opened with MDB_NOTLS and
// each transaction object stays on the thread that made it (it never leaves a method here).
unsafe impl Send for Environment {}
// SAFETY: as for Send: every method takes &self, and LMDB's environment calls are thread-safe.
unsafe impl Sync for Environment {}

/// A named database handle, valid for the environment that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dbi(ffi::MDB_dbi);

impl Environment {
    pub fn open(path: &Path, options: &EnvOptions) -> Result<Environment, LmdbError> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| LmdbError { code: libc::EINVAL, op: "mdb_env_open (path has a NUL byte)" })?;
        let mut env = ptr::null_mut();
        // SAFETY: plain LMDB calls on a handle we own; closed on every error path.
        unsafe {
            check(ffi::mdb_env_create(&mut env), "mdb_env_create")?;
            let this = Environment { env, path: path.to_owned(), remap: RwLock::new(()) };
            if options.map_size > 0 {
                check(ffi::mdb_env_set_mapsize(env, options.map_size), "mdb_env_set_mapsize")?;
            }
            check(ffi::mdb_env_set_maxdbs(env, options.max_dbs), "mdb_env_set_maxdbs")?;
            let mut flags = ffi::MDB_NOSUBDIR | ffi::MDB_NOTLS;
            if options.read_only {
                flags |= ffi::MDB_RDONLY;
            }
            if options.no_lock {
                flags |= ffi::MDB_NOLOCK;
            }
            if options.no_sync {
                flags |= ffi::MDB_NOSYNC;
            }
            check(ffi::mdb_env_open(env, c_path.as_ptr(), flags, 0o600), "mdb_env_open")?;
            Ok(this)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data file's descriptor, owned by LMDB.
    pub fn fd(&self) -> Result<i32, LmdbError> {
        let mut fd = -1;
        // SAFETY: valid env, out-pointer to a local.
        check(unsafe { ffi::mdb_env_get_fd(self.env, &mut fd) }, "mdb_env_get_fd")?;
        Ok(fd)
    }

    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.remap.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins a transaction while holding `remap` shared (the guard must outlive the txn).
    fn begin<'a>(&'a self, read_only: bool) -> Result<(*mut ffi::MDB_txn, RwLockReadGuard<'a, ()>), LmdbError> {
        let flags = if read_only { ffi::MDB_RDONLY } else { 0 };
        let mut txn = ptr::null_mut();
        let guard = self.shared();
        // SAFETY: valid env; out-pointer to a local.
        let rc = unsafe { ffi::mdb_txn_begin(self.env, ptr::null_mut(), flags, &mut txn) };
        if rc != ffi::MDB_MAP_RESIZED {
            check(rc, "mdb_txn_begin")?;
            return Ok((txn, guard));
        }
        // Another process grew the map: adopt the new size with no transaction of ours open.
        drop(guard);
        {
            let _exclusive = self.remap.write().unwrap_or_else(|p| p.into_inner());
            // SAFETY: the exclusive guard means no transaction of this environment is open.
            check(unsafe { ffi::mdb_env_set_mapsize(self.env, 0) }, "mdb_env_set_mapsize")?;
        }
        let guard = self.shared();
        // SAFETY: as above.
        check(unsafe { ffi::mdb_txn_begin(self.env, ptr::null_mut(), flags, &mut txn) }, "mdb_txn_begin")?;
        Ok((txn, guard))
    }

    /// Opens an existing named database (never creates it). `MDB_NOTFOUND` if absent. LMDB
    /// forbids two threads opening the same database at once: call it only where nothing else
    /// can (the registries open it under their lock, once per environment).
    pub fn open_db(&self, name: &str) -> Result<Dbi, LmdbError> {
        self.dbi(name, false)
    }

    /// Opens a named database, creating it if needed (agent side).
    pub fn create_db(&self, name: &str) -> Result<Dbi, LmdbError> {
        self.dbi(name, true)
    }

    fn dbi(&self, name: &str, create: bool) -> Result<Dbi, LmdbError> {
        let c_name = CString::new(name).map_err(|_| LmdbError { code: libc::EINVAL, op: "mdb_dbi_open" })?;
        let (txn, _guard) = self.begin(!create)?;
        let mut dbi = 0;
        let flags = if create { ffi::MDB_CREATE } else { 0 };
        // SAFETY: txn is live; committing it makes the handle usable by later transactions.
        unsafe {
            let rc = ffi::mdb_dbi_open(txn, c_name.as_ptr(), flags, &mut dbi);
            if rc != 0 {
                ffi::mdb_txn_abort(txn);
                return check(rc, "mdb_dbi_open").map(|_| Dbi(0));
            }
            check(ffi::mdb_txn_commit(txn), "mdb_txn_commit")?;
        }
        Ok(Dbi(dbi))
    }

    /// Runs `f` inside a read transaction, with the value of each key it asks for copied out.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTxn<'_>) -> T) -> Result<T, LmdbError> {
        let (txn, _shared) = self.begin(true)?;
        let txn = ReadTxn { txn, _env: self };
        let out = f(&txn);
        drop(txn);
        Ok(out)
    }

    /// Runs `f` inside a write transaction and commits it if `f` succeeds; aborts otherwise.
    pub fn write<T>(&self, f: impl FnOnce(&WriteTxn<'_>) -> Result<T, LmdbError>) -> Result<T, LmdbError> {
        let (txn, _shared) = self.begin(false)?;
        let mut guard = WriteTxn { txn, _env: self, done: false };
        let out = f(&guard)?;
        guard.done = true;
        // SAFETY: live write txn; commit frees it whatever the result.
        check(unsafe { ffi::mdb_txn_commit(txn) }, "mdb_txn_commit")?;
        Ok(out)
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        // SAFETY: we own env, and no transaction outlives a method call.
        unsafe { ffi::mdb_env_close(self.env) }
    }
}

fn val(bytes: &[u8]) -> ffi::MDB_val {
    ffi::MDB_val { mv_size: bytes.len(), mv_data: bytes.as_ptr() as *mut _ }
}

fn get(txn: *mut ffi::MDB_txn, dbi: Dbi, key: &[u8]) -> Result<Option<Vec<u8>>, LmdbError> {
    let mut k = val(key);
    let mut v = ffi::MDB_val { mv_size: 0, mv_data: ptr::null_mut() };
    // SAFETY: live txn; LMDB does not write through the key pointer.
    let rc = unsafe { ffi::mdb_get(txn, dbi.0, &mut k, &mut v) };
    if rc == ffi::MDB_NOTFOUND {
        return Ok(None);
    }
    check(rc, "mdb_get")?;
    // SAFETY: v points into the map and stays valid until the transaction ends; we copy now.
    Ok(Some(unsafe { std::slice::from_raw_parts(v.mv_data as *const u8, v.mv_size) }.to_vec()))
}

/// A read transaction, alive for the closure given to `Environment::read`.
pub struct ReadTxn<'e> {
    txn: *mut ffi::MDB_txn,
    _env: &'e Environment,
}

impl ReadTxn<'_> {
    pub fn get(&self, dbi: Dbi, key: &[u8]) -> Result<Option<Vec<u8>>, LmdbError> {
        get(self.txn, dbi, key)
    }
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        // SAFETY: live read txn, ended exactly once.
        unsafe { ffi::mdb_txn_abort(self.txn) }
    }
}

/// A write transaction, alive for the closure given to `Environment::write`.
pub struct WriteTxn<'e> {
    txn: *mut ffi::MDB_txn,
    _env: &'e Environment,
    done: bool,
}

impl WriteTxn<'_> {
    pub fn get(&self, dbi: Dbi, key: &[u8]) -> Result<Option<Vec<u8>>, LmdbError> {
        get(self.txn, dbi, key)
    }

    pub fn put(&self, dbi: Dbi, key: &[u8], value: &[u8]) -> Result<(), LmdbError> {
        let (mut k, mut v) = (val(key), val(value));
        // SAFETY: live write txn; LMDB copies the value.
        check(unsafe { ffi::mdb_put(self.txn, dbi.0, &mut k, &mut v, 0) }, "mdb_put")
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: live write txn that was not committed.
            unsafe { ffi::mdb_txn_abort(self.txn) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_a_one_file_environment() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lmdb");
        let opts = EnvOptions { read_only: false, no_lock: false, no_sync: true, map_size: 1 << 20, max_dbs: 2 };
        {
            let env = Environment::open(&path, &opts).unwrap();
            assert!(env.open_db("d").unwrap_err().is_not_found());
            let db = env.create_db("d").unwrap();
            env.write(|t| t.put(db, b"k", b"v")).unwrap();
            assert_eq!(env.read(|t| t.get(db, b"k")).unwrap().unwrap().as_deref(), Some(&b"v"[..]));
            assert_eq!(env.read(|t| t.get(db, b"nope")).unwrap().unwrap(), None);
            assert!(env.fd().unwrap() >= 0);
        }
        assert!(path.exists() && lock_path(&path) == dir.join("x.lmdb-lock") && lock_path(&path).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
