//! The agent's side of the command queue after start-up: dequeue (PROTOCOL section 3), decode
//! (section 4), perform each command's visible effect and acknowledge it (section 5), with the
//! fault injection the tests need.
//!
//! As strict as the real agent by default (docs/protocol.md section 5, "What each handler of the
//! real agent rejects", every row it can check without torch): it keeps the pairs it matched and
//! the batches it registered, and dies (posts the completion, then its launch script's clean-up,
//! exit 3) on a `Transfer` for a batch it does not hold, a `RegisterTensors` with no tensors or
//! naming a pair it never matched, and a payload that is not a pickle; it survives a `QueryStatus`
//! for an unknown batch or of another state than the transfer signal (writing nothing) and a
//! `CleanupBatch` for an unknown batch (a warning). `--lenient`
//! (for tests of the stand-in itself) accepts everything, as earlier stand-ins did.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use etb_core::protocol::command_queue::{decode_u64, encode_u64, slot_key, QueueNames, HEAD_KEY, TAIL_KEY};
use etb_core::protocol::commands::TRANSFER_SIGNAL;
use etb_core::protocol::payload_check::looks_like_pickle;
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
    /// The pairs it matched and the batches it registered, for its whole life.
    pairs: HashSet<String>,
    batches: HashSet<String>,
    /// How many warnings of a `CleanupBatch` for an unknown batch were printed (the first few are;
    /// the agent logs each one, a test's output need not).
    unknown_cleanups: u64,
}

/// Why the real agent would raise on a command (its exception's text), if it would.
fn rejection(ty: &str, map: &[(Value, Value)], pairs: &HashSet<String>, batches: &HashSet<String>) -> Option<String> {
    let text = |k: &str| field(map, k).and_then(Value::as_str).unwrap_or("").to_owned();
    let not_pickle = |v: &Value| match v {
        Value::Binary(b) => !looks_like_pickle(b),
        Value::Nil => false,
        _ => true,
    };
    match ty {
        "Transfer" if !batches.contains(&text("batch_id")) => {
            Some(format!("ValueError: Transfer for unknown batch {:?}", text("batch_id")))
        }
        "RegisterTensors" => {
            let tensors = match field(map, "tensors") {
                Some(Value::Array(list)) => list.as_slice(),
                _ => &[],
            };
            if tensors.is_empty() {
                return Some("IndexError: list index out of range (RegisterTensors with no tensors)".into());
            }
            for entry in tensors {
                let (pair, payload) = match entry {
                    Value::Array(pair_payload) if pair_payload.len() == 2 => (&pair_payload[0], &pair_payload[1]),
                    _ => return Some("ValueError: a RegisterTensors entry is not [pair_name, payload]".into()),
                };
                let pair = pair.as_str().unwrap_or("");
                if !pairs.contains(pair) {
                    return Some(format!("ValueError: RegisterTensors for unknown pair {pair:?}"));
                }
                if not_pickle(payload) {
                    return Some("UnpicklingError: a RegisterTensors payload is not a pickle".into());
                }
            }
            None
        }
        "InitPair" => ["mesh_shape_payload", "placements_payload"]
            .iter()
            .find(|k| field(map, k).is_some_and(not_pickle))
            .map(|k| format!("UnpicklingError: InitPair's {k} is not a pickle")),
        _ => None,
    }
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
            pairs: HashSet::new(),
            batches: HashSet::new(),
            unknown_cleanups: 0,
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
        let rejected = if self.faults.lenient { None } else { rejection(&ty, map, &self.pairs, &self.batches) };
        match ty.as_str() {
            _ if rejected.is_some() => {}
            "InitPair" if !self.faults.unmatched => {
                state.put(pair_match_key(&subject).as_bytes(), MATCHED)?;
                self.pairs.insert(subject.clone());
            }
            "RegisterTensors" => {
                self.batches.insert(subject.clone());
            }
            "Transfer" => {
                self.signals.insert(subject.clone(), text("transfer_type") == "send");
            }
            "QueryStatus"
                if self.faults.lenient
                    || (self.batches.contains(&subject) && text("state_name") == TRANSFER_SIGNAL) =>
            {
                let signal = self.signals.get(&subject).copied().unwrap_or(false);
                state.put(transfer_signal_key(&subject).as_bytes(), if signal { SIGNAL_TRUE } else { SIGNAL_FALSE })?;
            }
            "QueryStatus" => eprintln!(
                "etb-dev-agent: QueryStatus {:?} for batch {subject:?} (unknown, or not the transfer signal): nothing written",
                text("state_name")
            ),
            "CleanupBatch" => {
                if !self.batches.remove(&subject) && !self.faults.lenient {
                    self.unknown_cleanups += 1;
                    if self.unknown_cleanups <= 3 {
                        eprintln!(
                            "etb-dev-agent: warning: CleanupBatch for unknown batch {subject:?}{}",
                            if self.unknown_cleanups == 3 { " (later ones are not printed)" } else { "" }
                        );
                    }
                }
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
        if let Some(why) = rejected {
            // The agent posts the completion of a command that raised, then re-raises and ends.
            eprintln!("etb-dev-agent: {ty} raised {why}: dying as the agent does");
            return Ok(Outcome::Fail);
        }
        if self.faults.fail_on.as_deref() == Some(ty.as_str()) {
            // The agent acknowledges a failed command, then re-raises and ends.
            return Ok(Outcome::Fail);
        }
        Ok(Outcome::Continue)
    }
}
