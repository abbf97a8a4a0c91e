//! The agent's side of the command queue after start-up: dequeue (PROTOCOL section 3), decode
//! (section 4), perform each command's visible effect and acknowledge it (section 5), with the
//! fault injection the tests need.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use etb_core::protocol::command_queue::{decode_u64, encode_u64, slot_key, QueueNames, HEAD_KEY, TAIL_KEY};
use etb_core::protocol::state_db::{pair_match_key, transfer_signal_key, MATCHED, SIGNAL_FALSE, SIGNAL_TRUE};
use etb_core::sys::semaphore::NamedSemaphore;
use etb_core::timeout::Timeout;
use rmpv::Value;

use crate::options::Faults;
use crate::queue_leader::QueueLeader;
use crate::state_writer::StateWriter;

/// What to do about one command.
pub enum Outcome {
    Continue,
    /// Exit now, as a crash would (no clean-up).
    Crash,
    /// The command failed after its completion was posted: die as the agent does (no heartbeat,
    /// then the launch script's clean-up, then exit).
    Fail,
}

pub struct Consumer<'a> {
    queue: &'a QueueLeader,
    items: NamedSemaphore,
    space: NamedSemaphore,
    faults: &'a Faults,
    record: Option<std::fs::File>,
    /// Transfer signals per batch, as the agents' shared store keeps them.
    signals: HashMap<String, bool>,
}

fn field<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

impl<'a> Consumer<'a> {
    /// Consumes the queue its leader made, through the leader's own environment (LMDB forbids a
    /// second one in the same process).
    pub fn new(queue: &'a QueueLeader, faults: &'a Faults) -> Result<Consumer<'a>, String> {
        let names = QueueNames::for_path(queue.path());
        let open = |n: &[u8]| NamedSemaphore::open_existing(n).map_err(|e| e.text());
        let record = match &faults.record {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(Consumer {
            items: open(&names.items)?,
            space: open(&names.space)?,
            queue,
            faults,
            record,
            signals: HashMap::new(),
        })
    }

    /// Waits up to `wait` for one command and handles it.
    pub fn step(&mut self, wait: Duration, state: &StateWriter) -> Result<Outcome, String> {
        let deadline = Timeout::After(wait).start();
        if self.items.wait(&deadline, &|| false).is_err() {
            return Ok(Outcome::Continue);
        }
        let dbi = self.queue.dbi;
        let message = self
            .queue
            .env
            .write(|t| {
                let head = t.get(dbi, HEAD_KEY)?.as_deref().and_then(decode_u64).unwrap_or(0);
                let tail = t.get(dbi, TAIL_KEY)?.as_deref().and_then(decode_u64).unwrap_or(0);
                if tail <= head {
                    return Ok(None);
                }
                let m = t.get(dbi, &slot_key(head))?;
                t.put(dbi, HEAD_KEY, &encode_u64(head + 1))?;
                Ok(m)
            })
            .map_err(|e| e.text())?;
        let Some(message) = message else { return Ok(Outcome::Continue) };
        // The reference leaks the slot of an undecodable message (a defect): we give it back.
        let _ = self.space.post();
        let Ok(Value::Map(map)) = rmpv::decode::read_value(&mut &message[..]) else {
            eprintln!("etb-dev-agent: undecodable message of {} bytes", message.len());
            return Ok(Outcome::Continue);
        };
        self.handle(&map, state)
    }

    fn handle(&mut self, map: &[(Value, Value)], state: &StateWriter) -> Result<Outcome, String> {
        let ty = field(map, "type").and_then(Value::as_str).unwrap_or("?").to_owned();
        let text = |k: &str| field(map, k).and_then(Value::as_str).unwrap_or("").to_owned();
        let sem = field(map, "semaphore_name").and_then(Value::as_str).map(str::to_owned);
        let subject = match ty.as_str() {
            "InitPair" => text("pair_name"),
            _ => text("batch_id"),
        };
        if let Some(f) = &mut self.record {
            let extra = match ty.as_str() {
                "Transfer" => text("transfer_type"),
                _ => String::new(),
            };
            let _ = writeln!(f, "{ty}\t{subject}\t{extra}\t{}", sem.as_deref().unwrap_or("-"));
        }
        if self.faults.exit_on.as_deref() == Some(ty.as_str()) {
            return Ok(Outcome::Crash);
        }
        if let Some(delay) = self.faults.ack_delay {
            if self.faults.ack_delay_on.as_deref().is_none_or(|t| t == ty) {
                std::thread::sleep(delay);
            }
        }
        match ty.as_str() {
            "InitPair" if !self.faults.unmatched => {
                state.put(pair_match_key(&subject).as_bytes(), MATCHED)?;
            }
            "Transfer" => {
                self.signals.insert(subject.clone(), text("transfer_type") == "send");
            }
            "QueryStatus" => {
                let signal = self.signals.get(&subject).copied().unwrap_or(false);
                state.put(transfer_signal_key(&subject).as_bytes(), if signal { SIGNAL_TRUE } else { SIGNAL_FALSE })?;
            }
            "CleanupBatch" => {
                self.signals.remove(&subject);
            }
            _ => {}
        }
        let acknowledge = self.faults.never_ack.as_deref() != Some(ty.as_str());
        if let (Some(name), true) = (&sem, acknowledge) {
            // As the agent does: open by name, post, close, then unlink (which posix_ipc 1.3.2
            // refuses after the close: --never-unlink plays that defect).
            if let Ok(s) = NamedSemaphore::open_existing(name.as_bytes()) {
                let _ = s.post();
                drop(s);
                if !self.faults.never_unlink {
                    let _ = NamedSemaphore::unlink(name.as_bytes());
                }
            }
        }
        if self.faults.fail_on.as_deref() == Some(ty.as_str()) {
            // The agent acknowledges a failed command, then re-raises and ends.
            return Ok(Outcome::Fail);
        }
        Ok(Outcome::Continue)
    }
}
