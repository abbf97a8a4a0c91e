//! The agent's command queue (docs/protocol.md section 3): a one-file LMDB ring written by the
//! worker and read by the agent, with POSIX named semaphores counting items and free slots.
//!
//! The worker is always a *follower*: it opens what the agent (the leader) created and never
//! creates the semaphores, never touches `/cq_ready_{stem}` (a worker killed between its wait
//! and its post would block every later opener), and never writes at attach time. The
//! existence of `/cq_{stem}` and `/cq_space_{stem}` means the leader finished initializing.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use once_cell::sync::Lazy;

use crate::lmdb::{lock_path, Dbi, EnvOptions, Environment, LmdbError};
use crate::protocol::naming::file_stem;
use crate::sys::registry::{FileId, Lease, Registry};
use crate::sys::semaphore::{NamedSemaphore, SemError, WaitError};
use crate::sys::trust::{check_file, check_semaphore, Distrust, TrustPolicy};
use crate::timeout::Deadline;

pub const DB_NAME: &str = "command_queue";
pub const HEAD_KEY: &[u8] = b"__head__";
pub const TAIL_KEY: &[u8] = b"__tail__";
/// Slots in the ring; not stored anywhere: both sides must agree.
pub const CAPACITY: u64 = 50_000;
/// The queue's map size on both sides.
pub const MAP_SIZE: usize = 1 << 30;

/// The three semaphore names of a queue, from its file's stem alone (so two queues with the
/// same file name in different folders share them: a defect of the protocol we must keep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// `/cq_{stem}`: items available.
    pub items: Vec<u8>,
    /// `/cq_space_{stem}`: free slots.
    pub space: Vec<u8>,
    /// `/cq_ready_{stem}`: the leader's "initialized" flag. Workers never use it.
    pub ready: Vec<u8>,
}

impl QueueNames {
    pub fn for_path(path: &Path) -> QueueNames {
        let stem = file_stem(path);
        let name = |prefix: &[u8]| [prefix, stem].concat();
        QueueNames { items: name(b"/cq_"), space: name(b"/cq_space_"), ready: name(b"/cq_ready_") }
    }
}

/// Encodes a logical position or slot as the protocol does: 8 bytes, native order.
pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_ne_bytes()
}

/// Decodes an 8-byte native-order integer.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// The slot key of logical position `p`.
pub fn slot_key(position: u64) -> [u8; 8] {
    encode_u64(position % CAPACITY)
}

/// An open queue environment with its database, opened once under the registry's lock.
pub struct QueueEnv {
    pub env: Environment,
    pub dbi: Dbi,
}

static QUEUE_ENVS: Lazy<Registry<QueueEnv>> = Lazy::new(Registry::new);

/// Why the queue could not be attached (yet).
#[derive(Debug, Clone, PartialEq)]
pub enum AttachError {
    /// The semaphores the leader creates are not there: the names missing.
    MissingSemaphores(Vec<String>),
    /// A semaphore exists but could not be opened.
    Semaphore(String, SemError),
    /// The queue's file does not exist.
    MissingFile,
    /// LMDB refused to open it, or it has no `command_queue` database.
    Lmdb(LmdbError),
    /// The queue path names the state LMDB's file.
    SameFileAsState,
    /// Not a regular file, or not an LMDB file (yet).
    NotLmdb(String),
    /// A file or semaphore not trusted (owner, mode, symlink): permanent.
    Permission(String),
}

/// Why an enqueue failed. Nothing was written in every case.
#[derive(Debug, Clone, PartialEq)]
pub enum EnqueueError {
    /// No free slot before the deadline.
    Full,
    /// `give_up` said so while waiting for a slot.
    GaveUp,
    /// The `admit` check refused the message (nothing was written).
    Refused(crate::error::Error),
    Lmdb(LmdbError),
    Sem(SemError),
}

/// A worker's handle on the agent's command queue.
pub struct CommandQueue {
    path: PathBuf,
    names: QueueNames,
    env: Lease<QueueEnv>,
    items: NamedSemaphore,
    space: NamedSemaphore,
}

fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl CommandQueue {
    /// Attaches to an existing queue as a follower. Nothing is created or written.
    /// `not_this`: the state LMDB's identity, which the queue must not share (a naming mistake).
    pub fn attach(path: &Path, not_this: Option<FileId>, policy: TrustPolicy) -> Result<CommandQueue, AttachError> {
        // A naming mistake first: it would never go away.
        let meta = std::fs::metadata(path).ok();
        let id = meta.as_ref().map(|m| FileId { dev: m.dev(), ino: m.ino() });
        if id.is_some() && id == not_this {
            return Err(AttachError::SameFileAsState);
        }
        let names = QueueNames::for_path(path);
        for name in [&names.items, &names.space, &names.ready] {
            match check_semaphore(name, policy) {
                Ok(()) | Err(Distrust::Missing) => {}
                Err(Distrust::Permission(m) | Distrust::NotRegular(m)) => return Err(AttachError::Permission(m)),
            }
        }
        let open = |name: &[u8]| match NamedSemaphore::open_existing(name) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(AttachError::Semaphore(display(name), e)),
        };
        let (items, space) = (open(&names.items)?, open(&names.space)?);
        // A semaphore missing at the check could have been made by someone else before the open.
        for name in [&names.items, &names.space] {
            if let Err(Distrust::Permission(m) | Distrust::NotRegular(m)) = check_semaphore(name, policy) {
                return Err(AttachError::Permission(m));
            }
        }
        let (items, space) = match (items, space) {
            (Some(i), Some(s)) => (i, s),
            (i, s) => {
                let mut missing = Vec::new();
                if i.is_none() {
                    missing.push(display(&names.items));
                }
                if s.is_none() {
                    missing.push(display(&names.space));
                }
                return Err(AttachError::MissingSemaphores(missing));
            }
        };
        // LMDB would create a missing data file (or lock file): look first. An empty file is an
        // agent halfway through creating it: LMDB would write its meta pages, so wait.
        let distrust = |d: Distrust| match d {
            Distrust::Missing => AttachError::MissingFile,
            Distrust::NotRegular(m) => AttachError::NotLmdb(m),
            Distrust::Permission(m) => AttachError::Permission(m),
        };
        let st = check_file(path, "agent command queue LMDB", policy).map_err(distrust)?;
        if st.st_mode & 0o044 != 0 && first_warning_for(path) {
            log::warn!(
                "the command queue {} is readable by {} (mode {:04o}): every command, CUDA IPC handles \
                 included, can be read there; start the agent under `umask 077` so that it creates its files \
                 with mode 0600 (said once per process and file)",
                path.display(),
                if st.st_mode & 0o004 != 0 { "every user" } else { "its group" },
                st.st_mode & 0o7777
            );
        }
        let (Some(meta), Some(id)) = (meta, id) else { return Err(AttachError::MissingFile) };
        if meta.len() == 0 {
            return Err(AttachError::MissingFile);
        }
        check_file(&lock_path(path), "agent command queue lock file", policy).map_err(distrust)?;
        let env = QUEUE_ENVS.get_or_open(id, || {
            crate::lmdb::file_check::check_data_file(path, Some((id.dev, id.ino))).map_err(AttachError::NotLmdb)?;
            let options =
                EnvOptions { read_only: false, no_lock: false, no_sync: true, map_size: MAP_SIZE, max_dbs: 2 };
            let env = Environment::open(path, &options).map_err(AttachError::Lmdb)?;
            if env.fd().ok().and_then(|fd| FileId::of_fd(fd).ok()) != Some(id) {
                return Err(AttachError::MissingFile);
            }
            let dbi = env.open_db(DB_NAME).map_err(AttachError::Lmdb)?;
            Ok(QueueEnv { env, dbi })
        })?;
        Ok(CommandQueue { path: path.to_owned(), names, env, items, space })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> &QueueNames {
        &self.names
    }

    pub fn file_id(&self) -> FileId {
        self.env.id()
    }

    /// (head, tail) as stored; absent keys read as 0.
    pub fn positions(&self) -> Result<(u64, u64), LmdbError> {
        self.env.env.read(|t| -> Result<(u64, u64), LmdbError> {
            let read = |key| Ok(t.get(self.env.dbi, key)?.as_deref().and_then(decode_u64).unwrap_or(0));
            Ok((read(HEAD_KEY)?, read(TAIL_KEY)?))
        })?
    }

    /// Enqueues one message (PROTOCOL section 3): waits for a free slot until `deadline`
    /// (giving up at once when `give_up` says so), then in one write transaction reads the
    /// tail, puts the message at its slot and the tail + 1, commits, and posts `/cq_{stem}`.
    /// Returns the message's logical position (the tail it was written at).
    ///
    /// Commits do not fsync (`MDB_NOSYNC` on our handle): the queue is transient IPC between two
    /// live processes, and deployments clear it whenever an agent starts (PROTOCOL section 6),
    /// so a command surviving a power cut would be discarded anyway. The agent's own commits
    /// keep whatever durability it chose.
    ///
    /// `admit` runs inside the write transaction, before anything is written: commands of all
    /// this process's threads are enqueued one at a time there (LMDB serializes write
    /// transactions), so what it decides and records follows the queue's order. An `Err` from it
    /// writes nothing and gives the slot back (`Refused`).
    pub fn enqueue(
        &self,
        message: &[u8],
        deadline: &Deadline,
        give_up: &dyn Fn() -> bool,
        admit: &mut dyn FnMut() -> crate::error::Result<()>,
    ) -> Result<u64, EnqueueError> {
        match self.space.wait(deadline, give_up) {
            Ok(()) => {}
            Err(WaitError::TimedOut) => return Err(EnqueueError::Full),
            Err(WaitError::GaveUp) => return Err(EnqueueError::GaveUp),
            Err(WaitError::Sem(e)) => return Err(EnqueueError::Sem(e)),
        }
        let dbi = self.env.dbi;
        let mut refused = None;
        let written = self.env.env.write(|t| {
            let head = t.get(dbi, HEAD_KEY)?.as_deref().and_then(decode_u64).unwrap_or(0);
            let tail = t.get(dbi, TAIL_KEY)?.as_deref().and_then(decode_u64).unwrap_or(0);
            // The semaphores can drift from the ring (an agent restarted over an uncleared
            // queue): never overwrite an unconsumed slot.
            if tail.wrapping_sub(head) >= CAPACITY {
                return Ok(None);
            }
            if let Err(e) = admit() {
                refused = Some(e);
                return Ok(None);
            }
            t.put(dbi, &slot_key(tail), message)?;
            t.put(dbi, TAIL_KEY, &encode_u64(tail.wrapping_add(1)))?;
            Ok(Some(tail))
        });
        let position = match written {
            Ok(Some(position)) => position,
            Ok(None) => {
                // The transaction wrote nothing (it is committed empty): give the slot back.
                let _ = self.space.post();
                return Err(refused.map_or(EnqueueError::Full, EnqueueError::Refused));
            }
            Err(e) => {
                let _ = self.space.post();
                return Err(EnqueueError::Lmdb(e));
            }
        };
        if let Err(e) = self.items.post() {
            // The command is committed: the agent will find it (it polls its queue every
            // millisecond), so this is not a failure of the call.
            log::warn!("command enqueued, but waking the agent failed: {}", e.text());
        }
        Ok(position)
    }

    /// The queue's head: the logical position of the next command the agent will dequeue.
    pub fn head(&self) -> Result<u64, LmdbError> {
        self.env.env.read(|t| Ok(t.get(self.env.dbi, HEAD_KEY)?.as_deref().and_then(decode_u64).unwrap_or(0)))?
    }

    /// The message stored at logical position `position`, if any (for diagnostics and tests).
    pub fn peek(&self, position: u64) -> Result<Option<Vec<u8>>, LmdbError> {
        self.env.env.read(|t| t.get(self.env.dbi, &slot_key(position)))?
    }

    /// The semaphore counts (items, free slots), for diagnostics.
    pub fn semaphore_values(&self) -> Result<(i32, i32), SemError> {
        Ok((self.items.value()?, self.space.value()?))
    }

    /// The path bytes, for messages.
    pub fn path_bytes(&self) -> &[u8] {
        self.path.as_os_str().as_bytes()
    }
}

/// Why [`read_positions`] could not read a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The data file or its lock file does not exist.
    Missing,
    /// Owner, mode or a symlink: not trusted, so not opened.
    Untrusted(String),
    /// Not a usable LMDB file (refused before LMDB saw it), or LMDB refused it.
    NotLmdb(String),
}

/// The queue's head and tail, read as any LMDB reader would (read-only, taking a reader slot in
/// its lock file), without its semaphores, after the same trust and pre-open checks as a
/// worker's attach: it never creates a file nor opens a write transaction. For a process that
/// does not have the queue open itself (a tool such as `etb status`): opening an environment a
/// second time in one process would drop that process's locks on it.
pub fn read_positions(path: &Path, policy: TrustPolicy) -> Result<(u64, u64), ReadError> {
    let distrust = |d: Distrust| match d {
        Distrust::Missing => ReadError::Missing,
        Distrust::NotRegular(m) => ReadError::NotLmdb(m),
        Distrust::Permission(m) => ReadError::Untrusted(m),
    };
    let st = check_file(path, "agent command queue LMDB", policy).map_err(distrust)?;
    // LMDB would create a missing lock file (even read-only): look first.
    check_file(&lock_path(path), "agent command queue lock file", policy).map_err(distrust)?;
    crate::lmdb::file_check::check_data_file(path, Some((st.st_dev, st.st_ino))).map_err(ReadError::NotLmdb)?;
    let options = EnvOptions { read_only: true, no_lock: false, no_sync: false, map_size: 0, max_dbs: 2 };
    let env = Environment::open(path, &options).map_err(|e| ReadError::NotLmdb(e.text()))?;
    let dbi = env.open_db(DB_NAME).map_err(|e| ReadError::NotLmdb(e.text()))?;
    let read = env
        .read(|t| -> Result<(u64, u64), LmdbError> {
            let get = |key| Ok(t.get(dbi, key)?.as_deref().and_then(decode_u64).unwrap_or(0));
            Ok((get(HEAD_KEY)?, get(TAIL_KEY)?))
        })
        .and_then(|r| r);
    read.map_err(|e| ReadError::NotLmdb(e.text()))
}

/// Whether the readable-queue warning has not been given yet for `path` in this process (and
/// records that it now is): py-lmdb creates the agent's files with mode 0644, so without this
/// every bootstrap, and every poll of a reconnect, would repeat it.
fn first_warning_for(path: &Path) -> bool {
    static WARNED: Lazy<Mutex<HashSet<PathBuf>>> = Lazy::new(|| Mutex::new(HashSet::new()));
    WARNED.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readable_queue_warning_is_given_once_per_path() {
        let a = Path::new("/nonexistent/etb-unit-warn-once/a_command.lmdb");
        let b = Path::new("/nonexistent/etb-unit-warn-once/b_command.lmdb");
        assert!(first_warning_for(a));
        assert!(!first_warning_for(a));
        assert!(first_warning_for(b));
    }

    #[test]
    fn names_come_from_the_stem() {
        let n = QueueNames::for_path(Path::new("/tmp/agent_rank0_command.lmdb"));
        assert_eq!(n.items, b"/cq_agent_rank0_command");
        assert_eq!(n.space, b"/cq_space_agent_rank0_command");
        assert_eq!(n.ready, b"/cq_ready_agent_rank0_command");
        assert_eq!(QueueNames::for_path(Path::new("/other/dir/agent_rank0_command.lmdb")), n);
    }

    #[test]
    fn slots_wrap() {
        assert_eq!(slot_key(0), 0u64.to_ne_bytes());
        assert_eq!(slot_key(CAPACITY + 3), 3u64.to_ne_bytes());
        assert_eq!(decode_u64(&encode_u64(u64::MAX)), Some(u64::MAX));
        assert_eq!(decode_u64(b"short"), None);
    }
}
