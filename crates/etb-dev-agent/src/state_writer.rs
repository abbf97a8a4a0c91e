//! The agent's side of the state LMDB: creation and the heartbeat.

use std::path::{Path, PathBuf};

use etb_core::lmdb::{Dbi, EnvOptions, Environment};
use etb_core::protocol::state_db::{lock_path, unix_now, AGENT_MAP_SIZE, DB_NAME, HEARTBEAT_KEY};

pub struct StateWriter {
    path: PathBuf,
    env: Environment,
    dbi: Dbi,
}

/// Formats seconds as Python's `str(float)` does for such values (always with a '.').
fn python_float(v: f64) -> String {
    let s = format!("{v}");
    if s.contains(['.', 'e', 'E', 'n', 'i']) {
        s
    } else {
        s + ".0"
    }
}

impl StateWriter {
    pub fn create(path: &Path) -> Result<StateWriter, String> {
        // The agent's own commits may skip fsync: the heartbeat is rewritten every millisecond.
        let options =
            EnvOptions { read_only: false, no_lock: false, no_sync: true, map_size: AGENT_MAP_SIZE, max_dbs: 2 };
        let env = Environment::open(path, &options).map_err(|e| e.at(path).to_string())?;
        let dbi = env.create_db(DB_NAME).map_err(|e| e.at(path).to_string())?;
        Ok(StateWriter { path: path.to_owned(), env, dbi })
    }

    /// Writes `agent:heartbeat` = now - offset, and returns the value written.
    pub fn beat(&self, offset: f64) -> Result<String, String> {
        let value = python_float(unix_now() - offset);
        self.env
            .write(|t| t.put(self.dbi, HEARTBEAT_KEY, value.as_bytes()))
            .map_err(|e| e.at(&self.path).to_string())?;
        Ok(value)
    }

    /// Writes one key of `pair_state`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.env.write(|t| t.put(self.dbi, key, value)).map_err(|e| e.at(&self.path).to_string())
    }

    /// The agent's clean exit: the state file (and its lock file) deleted.
    pub fn destroy(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(lock_path(&path));
    }
}
