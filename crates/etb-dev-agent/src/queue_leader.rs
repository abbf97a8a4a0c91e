//! The agent's side of the command queue: stale clean-up, leader creation, destruction.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use etb_core::lmdb::{Dbi, EnvOptions, Environment};
use etb_core::protocol::command_queue::{
    decode_u64, encode_u64, QueueNames, CAPACITY, DB_NAME, HEAD_KEY, MAP_SIZE, TAIL_KEY,
};
use etb_core::sys::semaphore::NamedSemaphore;

/// As the deployed launch scripts do before starting an agent: delete every file whose name
/// starts with the queue's or the state's file name, and unlink the queue's three semaphores.
pub fn clean_stale(queue: &Path, state: &Path) {
    for path in [queue, state] {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { continue };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().as_bytes().starts_with(name.as_bytes()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    let names = QueueNames::for_path(queue);
    for name in [&names.items, &names.space, &names.ready] {
        let _ = NamedSemaphore::unlink(name);
    }
}

/// The queue as its leader made it.
pub struct QueueLeader {
    path: std::path::PathBuf,
    names: QueueNames,
    pub env: Environment,
    pub dbi: Dbi,
    _sems: [NamedSemaphore; 3],
}

fn lmdb(e: etb_core::lmdb::LmdbError, path: &Path) -> String {
    e.at(path).to_string()
}

impl QueueLeader {
    /// Creates `/cq_ready_{stem}` exclusively (the leader election), initializes head and tail,
    /// creates `/cq_{stem}` and `/cq_space_{stem}` with the current counts, then posts ready.
    pub fn create(path: &Path) -> Result<QueueLeader, String> {
        let names = QueueNames::for_path(path);
        let sem_err = |e: etb_core::sys::semaphore::SemError| e.text();
        let ready = NamedSemaphore::create(&names.ready, 0o600, 0, true)
            .map_err(|e| format!("leader election on {}: {}", String::from_utf8_lossy(&names.ready), e.text()))?;
        let options = EnvOptions { read_only: false, no_lock: false, no_sync: true, map_size: MAP_SIZE, max_dbs: 2 };
        let env = Environment::open(path, &options).map_err(|e| lmdb(e, path))?;
        let dbi = env.create_db(DB_NAME).map_err(|e| lmdb(e, path))?;
        let length = env
            .write(|t| {
                let mut pos = [0u64; 2];
                for (i, key) in [HEAD_KEY, TAIL_KEY].into_iter().enumerate() {
                    match t.get(dbi, key)?.as_deref().and_then(decode_u64) {
                        Some(v) => pos[i] = v,
                        None => t.put(dbi, key, &encode_u64(0))?,
                    }
                }
                Ok(pos[1].saturating_sub(pos[0]))
            })
            .map_err(|e| lmdb(e, path))?;
        let items = NamedSemaphore::create(&names.items, 0o600, length as u32, false).map_err(sem_err)?;
        let space = NamedSemaphore::create(&names.space, 0o600, (CAPACITY - length.min(CAPACITY)) as u32, false)
            .map_err(sem_err)?;
        ready.post().map_err(sem_err)?;
        Ok(QueueLeader { path: path.to_owned(), names, env, dbi, _sems: [ready, items, space] })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The agent's clean exit (`close(destroy=True)`): semaphores unlinked, files deleted.
    pub fn destroy(self) {
        for name in [&self.names.items, &self.names.space, &self.names.ready] {
            let _ = NamedSemaphore::unlink(name);
        }
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(etb_core::protocol::state_db::lock_path(&path));
    }
}
