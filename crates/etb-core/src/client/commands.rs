//! The five commands of the reference client (docs/protocol.md sections 4-5), as methods of
//! [`Client`]. Every command goes one way: its arguments are checked, it is enqueued (with a
//! fresh completion semaphore, unless detached), and then a blocking call waits on the same
//! deadline through [`Pending::wait`] while an async one hands the same [`Pending`] to a
//! [`Completion`]. So a blocking call and a completion give one outcome, proven once (`outcome`).

use std::sync::Arc;

use super::completion::Completion;
use super::link::Link;
use super::outcome::{Finish, Pending};
use super::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::command_queue::EnqueueError;
use crate::protocol::commands::{Command, TransferKind, TRANSFER_SIGNAL};
use crate::protocol::completion::CompletionSemaphore;
use crate::protocol::payload_check::{check_pickle, warn_if_not_shared};
use crate::protocol::state_db::{transfer_signal_key, unix_now};
use crate::timeout::{Deadline, Timeout};

impl Client {
    /// `InitPair`: succeeds only if the agent survives it and records the pair as matched. The
    /// payloads, when given, must look like pickles (`InvalidArgument` otherwise, nothing enqueued).
    #[allow(clippy::too_many_arguments)]
    pub fn init_pair(
        &self,
        pair_name: &str,
        local_name: &str,
        remote_name: &str,
        expected_world_size: i64,
        mesh_shape_payload: Option<&[u8]>,
        placements_payload: Option<&[u8]>,
        timeout: Timeout,
    ) -> Result<()> {
        let command = init_pair_command(
            pair_name,
            local_name,
            remote_name,
            expected_world_size,
            mesh_shape_payload,
            placements_payload,
        )?;
        self.call(&command, timeout, Finish::PairMatched(pair_name.to_string()))
    }

    /// `InitPair` without waiting: `timeout` bounds only the wait for queue space. The completion
    /// reports done only once the agent survived the command and recorded the pair as matched
    /// (`PairNotMatched` when it survived without matching).
    #[allow(clippy::too_many_arguments)]
    pub fn init_pair_async(
        &self,
        pair_name: &str,
        local_name: &str,
        remote_name: &str,
        expected_world_size: i64,
        mesh_shape_payload: Option<&[u8]>,
        placements_payload: Option<&[u8]>,
        timeout: Timeout,
    ) -> Result<Completion> {
        let command = init_pair_command(
            pair_name,
            local_name,
            remote_name,
            expected_world_size,
            mesh_shape_payload,
            placements_payload,
        )?;
        self.call_async(&command, timeout, Finish::PairMatched(pair_name.to_string()))
    }

    /// `RegisterTensors`, always blocking. `tensors` are `(pair_name, payload)`; every payload must
    /// look like a pickle (`InvalidArgument` otherwise, nothing enqueued).
    pub fn register_tensors(
        &self,
        batch_id: &str,
        tensors: &[(&str, &[u8])],
        bucket_size: Option<i64>,
        timeout: Timeout,
    ) -> Result<()> {
        for (i, (pair, bytes)) in tensors.iter().enumerate() {
            check_pickle(&format!("RegisterTensors payload {i} (pair {pair:?})"), bytes)?;
        }
        for (i, (pair, bytes)) in tensors.iter().enumerate() {
            warn_if_not_shared(&format!("RegisterTensors payload {i} (pair {pair:?})"), bytes);
        }
        let command = Command::RegisterTensors { batch_id, tensors: tensors.to_vec(), bucket_size };
        self.call(&command, timeout, Finish::Nothing)
    }

    /// `Transfer`, blocking until the agent acknowledges it.
    pub fn transfer(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<()> {
        self.call(&Command::Transfer { batch_id, transfer_type: kind }, timeout, Finish::Nothing)
    }

    /// `Transfer` without waiting: `timeout` bounds only the wait for queue space.
    pub fn transfer_async(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<Completion> {
        self.call_async(&Command::Transfer { batch_id, transfer_type: kind }, timeout, Finish::Nothing)
    }

    /// `Transfer` with no completion semaphore (`semaphore_name` nil): nothing to wait on.
    pub fn transfer_detached(&self, batch_id: &str, kind: TransferKind, timeout: Timeout) -> Result<()> {
        let deadline = timeout.start();
        let command = Command::Transfer { batch_id, transfer_type: kind };
        let link = self.live_link(&command)?;
        link.guard.admit(&command, false)?;
        self.enqueue(&link, &command, &deadline, None).map(|_| ())
    }

    /// `QueryStatus` for the transfer signal; absent reads as false, as the reference.
    pub fn query_transfer_signal(&self, batch_id: &str, timeout: Timeout) -> Result<bool> {
        self.call(&Command::QueryStatus { batch_id, state_name: TRANSFER_SIGNAL }, timeout, Finish::Nothing)?;
        self.read_transfer_signal(batch_id)
    }

    /// `QueryStatus` for the transfer signal, without waiting: the agent records the signal
    /// later; [`Client::read_transfer_signal`] reads what the state holds at any time.
    pub fn query_transfer_signal_async(&self, batch_id: &str, timeout: Timeout) -> Result<Completion> {
        self.call_async(&Command::QueryStatus { batch_id, state_name: TRANSFER_SIGNAL }, timeout, Finish::Nothing)
    }

    /// The transfer signal the state holds now for `batch_id` (absent reads as false, as the
    /// reference's non-blocking query returns): no command is sent.
    pub fn read_transfer_signal(&self, batch_id: &str) -> Result<bool> {
        self.check_not_forked()?;
        match self.link().state.transfer_signal(batch_id).map_err(|e| e.at(&self.paths.state))? {
            Ok(signal) => Ok(signal),
            Err(other) => Err(Error::new(
                ErrorKind::Lmdb,
                format!("{} holds {other:02x?}, not a MessagePack bool", transfer_signal_key(batch_id)),
            )),
        }
    }

    /// Lets commands address a pair that an earlier process of this worker matched with this
    /// agent (the agent keeps pairs for its whole life): `RegisterTensors` may name it. A no-op
    /// when the guard is off (agent sharing). Nothing is sent.
    pub fn adopt_pair(&self, pair_name: &str) -> Result<()> {
        self.check_not_forked()?;
        self.link().guard.adopt_pair(pair_name);
        Ok(())
    }

    /// Lets commands address a batch that an earlier process of this worker registered with this
    /// agent: `Transfer` and `QueryStatus` may name it. Nothing is sent.
    pub fn adopt_batch(&self, batch_id: &str) -> Result<()> {
        self.check_not_forked()?;
        self.link().guard.adopt_batch(batch_id);
        Ok(())
    }

    /// Whether commands may address `batch_id`: this client registered or adopted it (and did not
    /// clean it up since), or the guard is off (agent sharing).
    pub fn batch_known(&self, batch_id: &str) -> Result<bool> {
        self.check_not_forked()?;
        Ok(self.link().guard.batch_known(batch_id))
    }

    /// Whether `RegisterTensors` may name `pair_name`: this client matched or adopted it, or the
    /// guard is off (agent sharing).
    pub fn pair_known(&self, pair_name: &str) -> Result<bool> {
        self.check_not_forked()?;
        Ok(self.link().guard.pair_known(pair_name))
    }

    /// `CleanupBatch`.
    pub fn cleanup_batch(&self, batch_id: &str, timeout: Timeout) -> Result<()> {
        self.call(&Command::CleanupBatch { batch_id }, timeout, Finish::Nothing)
    }

    /// `CleanupBatch` with no completion semaphore: for a clean-up nobody waits for (a dropped
    /// batch handler), which leaves the agent no semaphore to look for.
    pub fn cleanup_batch_detached(&self, batch_id: &str, timeout: Timeout) -> Result<()> {
        let deadline = timeout.start();
        let command = Command::CleanupBatch { batch_id };
        let link = self.live_link(&command)?;
        self.enqueue(&link, &command, &deadline, None).map(|_| ())
    }

    /// `CleanupBatch` without waiting: `timeout` bounds only the wait for queue space.
    pub fn cleanup_batch_async(&self, batch_id: &str, timeout: Timeout) -> Result<Completion> {
        self.call_async(&Command::CleanupBatch { batch_id }, timeout, Finish::Nothing)
    }

    /// Issues `command`, then waits, on the same deadline, for its completion and for proof that
    /// the agent survived it (and for what `finish` promises).
    fn call(&self, command: &Command<'_>, timeout: Timeout, finish: Finish) -> Result<()> {
        let deadline = timeout.start();
        let (mut pending, link) = self.issue(command, &deadline, finish)?;
        pending.wait(&link, &deadline, &|| false, true)
    }

    /// Issues `command` with a completion to wait on or poll later; `timeout` bounds only the
    /// wait for queue space.
    fn call_async(&self, command: &Command<'_>, timeout: Timeout, finish: Finish) -> Result<Completion> {
        let deadline = timeout.start();
        let (pending, link) = self.issue(command, &deadline, finish)?;
        Ok(Completion::new(pending, &link, &self.hub))
    }

    /// Enqueues `command` with a fresh completion semaphore: the command on its way to an outcome.
    fn issue(&self, command: &Command<'_>, deadline: &Deadline, finish: Finish) -> Result<(Pending, Arc<Link>)> {
        let link = self.live_link(command)?;
        // Refused before anything is made or waited for (and again, authoritatively, in the
        // queue's write transaction).
        link.guard.admit(command, false)?;
        let (kind, context) = command.completion_label();
        let sem = CompletionSemaphore::create(kind, &context)?;
        let position = self.enqueue(&link, command, deadline, Some(&sem))?;
        Ok((Pending::new(sem, position, command.type_name(), busy_hint(command), finish), link))
    }

    /// The link a command goes to, checked first: not in a forked child (`Forked`), and not to an
    /// agent already seen dead (one `poll` of its pidfd), so that nothing is enqueued into a
    /// queue nobody will read.
    fn live_link(&self, command: &Command<'_>) -> Result<Arc<Link>> {
        let link = self.link();
        link.shared.check_not_forked()?;
        if link.agent_dead() {
            return Err(link.shared.died_error(command.type_name()));
        }
        Ok(link)
    }

    /// Enqueues `command` on `link`, naming `sem` as its completion semaphore (`None`: detached).
    /// Returns its logical position in the queue.
    fn enqueue(
        &self,
        link: &Link,
        command: &Command<'_>,
        deadline: &Deadline,
        sem: Option<&CompletionSemaphore>,
    ) -> Result<u64> {
        let what = command.type_name();
        let message = command.encode(Some(unix_now()), sem.map(CompletionSemaphore::name));
        let shared = &link.shared;
        match link.queue.enqueue(&message, deadline, &|| link.agent_dead(), &mut || link.guard.admit(command, true)) {
            Ok(position) => Ok(position),
            Err(EnqueueError::Refused(e)) => Err(e),
            Err(EnqueueError::Full) => {
                let (head, tail) = link.queue.positions().unwrap_or((0, 0));
                Err(Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "{what}: the agent's command queue {} stayed full for {:.3}s (head {head}, tail {tail}): \
                         the agent is not consuming; nothing was enqueued",
                        self.paths.command_queue.display(),
                        deadline.elapsed_secs()
                    ),
                ))
            }
            Err(EnqueueError::GaveUp) => Err(shared.died_error(what)),
            Err(EnqueueError::Lmdb(e)) => Err(e.at(&self.paths.command_queue)),
            Err(EnqueueError::Sem(e)) => {
                Err(Error::new(ErrorKind::Ipc, format!("{what}: command queue semaphore: {}", e.text())))
            }
        }
    }
}

/// Checks `InitPair`'s arguments and builds the command.
fn init_pair_command<'a>(
    pair_name: &'a str,
    local_name: &'a str,
    remote_name: &'a str,
    expected_world_size: i64,
    mesh_shape_payload: Option<&'a [u8]>,
    placements_payload: Option<&'a [u8]>,
) -> Result<Command<'a>> {
    if expected_world_size < 1 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("expected_world_size is {expected_world_size}; it must be >= 1"),
        ));
    }
    for (name, payload) in [("mesh_shape_payload", mesh_shape_payload), ("placements_payload", placements_payload)] {
        if let Some(bytes) = payload {
            check_pickle(&format!("InitPair {name}"), bytes)?;
        }
    }
    Ok(Command::InitPair {
        pair_name,
        local_name,
        expected_world_size,
        remote_name,
        mesh_shape_payload,
        placements_payload,
    })
}

/// What the agent is most likely doing when a command's completion does not come.
fn busy_hint(command: &Command<'_>) -> String {
    match command {
        Command::InitPair { pair_name, local_name, remote_name, expected_world_size, .. } => format!(
            "the agent is waiting for the peers of pair {pair_name:?} (local {local_name:?}, remote {remote_name:?}, \
             expected world size {expected_world_size}): the other job must call init_pair with the same pair name"
        ),
        _ => "the agent may be busy with an earlier command (it does not beat its heartbeat meanwhile)".to_string(),
    }
}
