//! The agent's side of the state LMDB: creation and the heartbeat, written from the main thread
//! as the agent does or (`--beat-from-thread`) from a helper thread.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use etb_core::lmdb::{Dbi, EnvOptions, Environment};
use etb_core::protocol::state_db::{lock_path, unix_now, AGENT_MAP_SIZE, DB_NAME, HEARTBEAT_KEY};

pub struct StateWriter {
    path: PathBuf,
    env: Environment,
    dbi: Dbi,
    /// How long each heartbeat's write transaction stays open (`--beat-hold`).
    pub beat_hold: Option<std::time::Duration>,
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
        Ok(StateWriter { path: path.to_owned(), env, dbi, beat_hold: None })
    }

    /// Writes `agent:heartbeat` = now - offset, and returns the value written.
    pub fn beat(&self, offset: f64) -> Result<String, String> {
        let value = python_float(unix_now() - offset);
        self.env
            .write(|t| {
                t.put(self.dbi, HEARTBEAT_KEY, value.as_bytes())?;
                if let Some(hold) = self.beat_hold {
                    std::thread::sleep(hold);
                }
                Ok(())
            })
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

/// Writes the heartbeats: on the calling (main) thread, as the agent does, or handing each beat to
/// a helper thread and waiting for it, so that the beats keep their place in the loop (after a
/// command's post, before the next dequeue) but the writer mutex is owned by another thread.
pub struct Beater {
    state: Arc<StateWriter>,
    helper: Option<Helper>,
}

/// The heartbeat thread: where beats are asked (an offset), where their results come back.
struct Helper {
    ask: mpsc::SyncSender<f64>,
    answers: mpsc::Receiver<Result<String, String>>,
    thread: std::thread::JoinHandle<()>,
}

impl Beater {
    pub fn new(state: Arc<StateWriter>, from_thread: bool) -> Beater {
        let helper = from_thread.then(|| {
            let (ask, asked) = mpsc::sync_channel::<f64>(0);
            let (answer, answers) = mpsc::sync_channel(1);
            let writer = Arc::clone(&state);
            let thread = std::thread::spawn(move || {
                for offset in asked {
                    if answer.send(writer.beat(offset)).is_err() {
                        break;
                    }
                }
            });
            Helper { ask, answers, thread }
        });
        Beater { state, helper }
    }

    /// Writes one heartbeat now - offset and returns the value written.
    pub fn beat(&self, offset: f64) -> Result<String, String> {
        match &self.helper {
            None => self.state.beat(offset),
            Some(Helper { ask, answers, .. }) => {
                ask.send(offset).map_err(|_| "the heartbeat thread ended".to_string())?;
                answers.recv().map_err(|_| "the heartbeat thread ended".to_string())?
            }
        }
    }

    /// Ends the helper thread, if any, and gives the state back.
    pub fn stop(self) -> Option<StateWriter> {
        if let Some(Helper { ask, answers, thread }) = self.helper {
            drop(ask);
            drop(answers);
            let _ = thread.join();
        }
        Arc::try_unwrap(self.state).ok()
    }
}
