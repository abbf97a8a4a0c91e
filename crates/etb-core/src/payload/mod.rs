//! Payloads a native worker makes itself (docs/torch-ipc.md): the bytes the agent's
//! `ForkingPickler.loads` turns into a CUDA tensor aliasing the worker's memory, a mesh shape or
//! DTensor placements. Every payload is a pickle of protocol 3.
//!
//! - [`pickle`]: the writer; [`dtype`]: the dtype table;
//! - [`torch`]: torch's format, in one place: `rebuild_cuda_tensor`'s arguments, the placement
//!   classes' module, and the torch versions it serves ([`torch::SUPPORTED_TORCH`]);
//! - [`layout`]: mesh shapes and placements (no GPU needed);
//! - [`cuda_tensor`]: a CUDA tensor from a device pointer, shape, strides and dtype;
//! - [`ref_counter`]: the shared-memory reference counter that tells when a consumer is done;
//! - [`dlpack`]: a CUDA tensor payload from a DLPack managed tensor, which it then owns;
//!   [`reaper`]: the thread that runs the deleters of those freed while in use;
//!   [`read_only`]: the read-only payloads, known by their bytes (for the guard).

pub mod cuda_tensor;
pub mod dlpack;
pub mod dtype;
pub mod layout;
pub mod pickle;
pub mod read_only;
pub mod reaper;
pub mod ref_counter;
pub mod torch;

use crate::cuda::ipc::IpcEvent;
use crate::error::{Error, ErrorKind, Result};
use ref_counter::Slot;

/// An owned, immutable payload. A CUDA tensor payload also holds its reference-counter slot and
/// its event (when the consumer must wait on a stream): they live as long as the payload, which
/// outlives the client that made it. A DLPack payload also owns its producer's managed tensor,
/// whose deleter runs once it is dropped and its slot reads 0 ([`reaper`]).
pub struct Payload {
    bytes: Vec<u8>,
    slot: Option<Slot>,
    _event: Option<IpcEvent>,
    managed: Option<dlpack::Managed>,
    read_only: bool,
}

impl Payload {
    /// A payload of plain bytes (mesh shapes, placements).
    pub fn plain(bytes: Vec<u8>) -> Payload {
        Payload { bytes, slot: None, _event: None, managed: None, read_only: false }
    }

    /// A CUDA tensor payload's parts (`cuda_tensor::make`).
    pub(super) fn cuda(bytes: Vec<u8>, slot: Slot, event: Option<IpcEvent>) -> Payload {
        Payload { bytes, slot: Some(slot), _event: event, managed: None, read_only: false }
    }

    /// Makes this payload the owner of a DLPack managed tensor (its deleter runs once the
    /// payload is dropped and its slot reads 0), read-only when the producer said so.
    pub fn own_dlpack(mut self, managed: dlpack::Managed, read_only: bool) -> Payload {
        if read_only {
            read_only::mark(&self.bytes);
        }
        self.managed = Some(managed);
        self.read_only = read_only;
        self
    }

    /// Whether the producer marked the memory read-only (DLPack's flag).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// For a CUDA tensor payload, whether a consumer still holds the memory (its slot is not 0
    /// yet); false for every other payload. `Forked` in a process forked after it was made.
    pub fn in_use(&self) -> Result<bool> {
        match &self.slot {
            None => Ok(false),
            Some(slot) if slot.forked() => Err(Error::new(
                ErrorKind::Forked,
                "this payload was made in another process (before fork()): its reference counter is the parent's",
            )),
            Some(slot) => Ok(slot.value() != 0),
        }
    }

    /// The reference-counter file and slot, for tests and diagnostics.
    pub fn ref_counter(&self) -> Option<(&[u8], usize)> {
        self.slot.as_ref().map(|s| (s.file_name(), s.index()))
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if self.read_only {
            read_only::unmark(&self.bytes);
        }
        let Some(managed) = self.managed.take() else { return };
        match self.slot.take() {
            // In a process forked after it was made the tensor is the parent's: only forget it
            // (the slot's drop only forgets too).
            Some(slot) if slot.forked() => drop(slot),
            Some(slot) => reaper::release(reaper::Remains { managed, slot, event: self._event.take() }),
            // No elements: no consumer can hold the memory.
            None => managed.delete(),
        }
    }
}
