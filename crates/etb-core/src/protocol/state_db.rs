//! The agent's state LMDB (docs/protocol.md section 2): written by the agent, read by the worker.
//!
//! Opened read-only *with* the lock file when this process can write it, so that our read
//! transactions hold a reader slot and the agent never recycles pages we are reading (the
//! reference opens it with `MDB_NOLOCK`, a defect). Only when the lock file is missing or not
//! writable do we fall back to `MDB_NOLOCK`, with a warning.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use once_cell::sync::Lazy;

use crate::lmdb::file_check;
use crate::lmdb::lock_file::{Layout, LockView};
pub use crate::lmdb::lock_path;
use crate::lmdb::{Dbi, EnvOptions, Environment, LmdbError};
use crate::sys::process::{lock_answer, probe_lock_file, LockAnswer, LockProbe};
use crate::sys::registry::{FileId, Lease, Registry};
use crate::sys::trust::{check_file, Distrust, TrustPolicy};

pub const DB_NAME: &str = "pair_state";
pub const HEARTBEAT_KEY: &[u8] = b"agent:heartbeat";
/// A heartbeat younger than this is fresh (the reference's threshold).
/// The value the agent writes under a pair's match key once `InitPair` matched: msgspec's
/// MessagePack encoding of the string `"matched"`.
pub const MATCHED: &[u8] = b"\xa7matched";
/// MessagePack `true` and `false`: the values of a batch's transfer signal key.
pub const SIGNAL_TRUE: &[u8] = b"\xc3";
pub const SIGNAL_FALSE: &[u8] = b"\xc2";

/// The key the agent writes once `InitPair` for `pair_name` matched.
pub fn pair_match_key(pair_name: &str) -> String {
    format!("pair:{pair_name}/state:match")
}

/// The key the agent writes with a batch's transfer signal after a `QueryStatus`.
pub fn transfer_signal_key(batch_id: &str) -> String {
    format!("batch:{batch_id}/state:transfer_signal")
}

/// What a pair's match key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairMatch {
    Matched,
    Absent,
    /// Something else than [`MATCHED`].
    Other(Vec<u8>),
}

pub const HEARTBEAT_FRESH_SECS: f64 = 5.0;
/// The agent's map size for the state LMDB (we keep whatever the file says).
pub const AGENT_MAP_SIZE: usize = 256 << 20;

/// An open state environment and what was learnt when opening it.
pub struct StateEnv {
    pub env: Environment,
    /// Whether the environment uses the lock file (false: opened with `MDB_NOLOCK`).
    pub locking: bool,
    /// `pair_state`, opened once under the registry's lock (LMDB forbids concurrent opens).
    pub dbi: Dbi,
    /// The lock file, opened before `env` and closed after it (fields drop in order): for
    /// `F_GETLK`, without ever dropping this process's own locks.
    lock_file: Option<std::fs::File>,
}

static STATE_ENVS: Lazy<Registry<StateEnv>> = Lazy::new(Registry::new);

/// Why the state could not be read (yet).
#[derive(Debug, Clone, PartialEq)]
pub enum StateError {
    /// The state file does not exist.
    Missing(std::io::ErrorKind),
    /// LMDB refused to open or read it.
    Lmdb(LmdbError),
    /// The environment has no `pair_state` database yet.
    NoDatabase,
    /// There is no heartbeat key yet.
    NoHeartbeat,
    /// The heartbeat is not a number we can use.
    BadHeartbeat(String),
    /// The heartbeat is too old (or too far in the future): its age in seconds.
    Stale(f64),
    /// The file or its lock file is not a regular file, or not an LMDB file (yet).
    NotLmdb(String),
    /// Owner, mode or symlink: not trusted (permanent).
    Permission(String),
    /// The agent is gone, whatever its heartbeat says: no process but this one holds the state
    /// environment (or only processes that do not write it). The heartbeat's age. Decided by
    /// `connection::life`, from the lock.
    Gone(f64),
}

/// For messages and log lines, in words.
impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Missing(kind) => write!(f, "the state file cannot be found ({kind})"),
            StateError::Lmdb(e) => write!(f, "LMDB: {}", e.text()),
            StateError::NoDatabase => f.write_str("the state LMDB has no 'pair_state' database yet"),
            StateError::NoHeartbeat => f.write_str("the heartbeat is missing"),
            StateError::BadHeartbeat(v) => write!(f, "the heartbeat {v:?} is not a finite number of seconds"),
            StateError::Stale(age) if *age < 0.0 => write!(f, "the heartbeat lies {:.3}s in the future", -age),
            StateError::Stale(age) => write!(f, "the heartbeat is {age:.3}s old"),
            StateError::NotLmdb(why) => write!(f, "not a usable LMDB file: {why}"),
            StateError::Permission(why) => f.write_str(why),
            StateError::Gone(age) => write!(f, "the agent is gone (its heartbeat is {age:.3}s old, nobody writes it)"),
        }
    }
}

/// A worker's read-only handle on the state LMDB.
pub struct StateDb {
    env: Lease<StateEnv>,
}

/// Seconds since the Unix epoch, as Python's `time.time()`.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Parses the heartbeat value: ASCII decimal seconds, as Python's `str(time.time())` writes.
pub fn parse_heartbeat(value: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The age of a heartbeat written at `beat`, if fresh at `now`: younger than 5 s and no more
/// than 5 s in the future (clocks of one host agree; a beat far ahead is garbage).
pub fn fresh_age(beat: f64, now: f64) -> Result<f64, f64> {
    let age = now - beat;
    if age.is_finite() && age < HEARTBEAT_FRESH_SECS && age > -HEARTBEAT_FRESH_SECS {
        Ok(age)
    } else {
        Err(age)
    }
}

impl StateDb {
    /// Opens the state LMDB read-only, sharing one environment per file in this process.
    pub fn open(path: &Path, policy: TrustPolicy) -> Result<StateDb, StateError> {
        let st = check_file(path, "agent state LMDB", policy).map_err(|d| match d {
            Distrust::Missing => StateError::Missing(std::io::ErrorKind::NotFound),
            Distrust::NotRegular(m) => StateError::NotLmdb(m),
            Distrust::Permission(m) => StateError::Permission(m),
        })?;
        let id = FileId { dev: st.st_dev, ino: st.st_ino };
        let env = STATE_ENVS.get_or_open(id, || {
            file_check::check_data_file(path, Some((id.dev, id.ino))).map_err(StateError::NotLmdb)?;
            match check_file(&lock_path(path), "agent state LMDB lock file", policy) {
                Ok(_) | Err(Distrust::Missing) => {}
                Err(Distrust::NotRegular(m)) => return Err(StateError::NotLmdb(m)),
                Err(Distrust::Permission(m)) => return Err(StateError::Permission(m)),
            }
            // Open the lock file before LMDB does: see sys::process.
            let LockProbe { writable, file: lock_file } = probe_lock_file(&lock_path(path));
            if !writable {
                log::warn!(
                    "state LMDB lock file {} is missing or not writable by this process: reading {} \
                     without a reader slot (MDB_NOLOCK); reads may race with the agent's writes",
                    lock_path(path).display(),
                    path.display()
                );
            }
            let options = EnvOptions { read_only: true, no_lock: !writable, no_sync: false, map_size: 0, max_dbs: 2 };
            let env = Environment::open(path, &options).map_err(StateError::Lmdb)?;
            // The file may have been replaced between our stat and LMDB's open.
            let fd = env.fd().map_err(StateError::Lmdb)?;
            if FileId::of_fd(fd).ok() != Some(id) {
                return Err(StateError::Missing(std::io::ErrorKind::NotFound));
            }
            // An environment without its database yet is not registered: the next try reopens.
            let dbi = match env.open_db(DB_NAME) {
                Ok(dbi) => dbi,
                Err(e) if e.is_not_found() => return Err(StateError::NoDatabase),
                Err(e) => return Err(StateError::Lmdb(e)),
            };
            Ok(StateEnv { env, locking: writable, dbi, lock_file })
        })?;
        Ok(StateDb { env })
    }

    pub fn file_id(&self) -> FileId {
        self.env.id()
    }

    /// What `F_GETLK` says about LMDB's lock on the lock file, through the descriptor opened
    /// before the environment (never another one: closing any descriptor of the file would drop
    /// this process's locks on it); `None` when the lock file could not be opened.
    pub fn lock_answer(&self) -> Option<LockAnswer> {
        self.env.lock_file.as_ref().map(lock_answer)
    }

    pub fn locking(&self) -> bool {
        self.env.locking
    }

    /// A read-only view of the lock file's header (the writer mutex, the last committed
    /// transaction), mapped from the descriptor opened before the environment: never another
    /// descriptor of the file (closing one would drop this process's locks on it). `Err` says why
    /// there is none: no lock file, one replaced at its path since, or not the layout the view
    /// reads (`lmdb::lock_file`).
    pub fn lock_view(&self, path: &Path) -> Result<LockView, String> {
        let file = self.env.lock_file.as_ref().ok_or("the lock file could not be opened")?;
        let view = LockView::map(file, Layout::native())?;
        if !view.is_at(&lock_path(path)) {
            return Err(format!("{} was replaced since this process opened it", lock_path(path).display()));
        }
        Ok(view)
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LmdbError> {
        self.env.env.read(|t| t.get(self.env.dbi, key))?
    }

    /// The value under a pair's match key, if any (see [`pair_match`]).
    pub fn pair_match(&self, pair_name: &str) -> Result<PairMatch, LmdbError> {
        Ok(match self.get(pair_match_key(pair_name).as_bytes())? {
            None => PairMatch::Absent,
            Some(v) if v == MATCHED => PairMatch::Matched,
            Some(other) => PairMatch::Other(other),
        })
    }

    /// The transfer signal the agent recorded for a batch: absent reads as false, as the
    /// reference. `Ok(Err(bytes))`: the key holds something that is not a MessagePack bool.
    pub fn transfer_signal(&self, batch_id: &str) -> Result<Result<bool, Vec<u8>>, LmdbError> {
        Ok(match self.get(transfer_signal_key(batch_id).as_bytes())?.as_deref() {
            None => Ok(false),
            Some(v) if v == SIGNAL_TRUE => Ok(true),
            Some(v) if v == SIGNAL_FALSE => Ok(false),
            Some(other) => Err(other.to_vec()),
        })
    }

    /// The agent's last heartbeat, in seconds since the Unix epoch.
    pub fn heartbeat(&self) -> Result<f64, StateError> {
        let raw = self.get(HEARTBEAT_KEY).map_err(StateError::Lmdb)?.ok_or(StateError::NoHeartbeat)?;
        parse_heartbeat(&raw).ok_or_else(|| {
            StateError::BadHeartbeat(match String::from_utf8(raw) {
                Ok(text) => text,
                Err(e) => format!("{:?}", OsString::from_vec(e.into_bytes())),
            })
        })
    }

    /// The heartbeat's age in seconds, if the heartbeat is fresh now.
    pub fn fresh_heartbeat_age(&self) -> Result<f64, StateError> {
        fresh_age(self.heartbeat()?, unix_now()).map_err(StateError::Stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_parsing() {
        assert_eq!(parse_heartbeat(b"1795856314.2741683"), Some(1795856314.2741683));
        assert_eq!(parse_heartbeat(b"1795856314"), Some(1795856314.0));
        assert_eq!(parse_heartbeat(b" 1.5e9 "), Some(1.5e9));
        for bad in [&b""[..], b"abc", b"nan", b"NaN", b"inf", b"-inf", b"infinity", b"1e999", b"1,5", b"\xff", b"0x10"]
        {
            assert_eq!(parse_heartbeat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn freshness() {
        assert_eq!(fresh_age(100.0, 101.0), Ok(1.0));
        assert!(fresh_age(100.0, 105.0).is_err());
        assert!(fresh_age(100.0, 104.99).is_ok());
        assert!(fresh_age(110.0, 104.0).is_err(), "6 s in the future");
        assert!(fresh_age(102.0, 100.0).is_ok(), "small clock skew");
        assert!(fresh_age(-1.0, 100.0).is_err());
    }
}
