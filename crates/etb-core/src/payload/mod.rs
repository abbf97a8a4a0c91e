//! Payloads a native worker makes itself (docs/torch-ipc.md): the bytes the agent's
//! `ForkingPickler.loads` turns into a CUDA tensor aliasing the worker's memory, a mesh shape or
//! DTensor placements. Every payload is a pickle of protocol 3.
//!
//! - [`pickle`]: the writer; [`dtype`]: the dtype table;
//! - [`torch`]: torch's format, in one place: `rebuild_cuda_tensor`'s arguments, the placement
//!   classes' module, and the torch versions it serves ([`torch::SUPPORTED_TORCH`]);
//! - [`layout`]: mesh shapes and placements (no GPU needed);
//! - [`cuda_tensor`]: a CUDA tensor from a device pointer, shape, strides and dtype;
//! - [`ref_counter`]: the shared-memory reference counter that tells when a consumer is done.

pub mod cuda_tensor;
pub mod dtype;
pub mod layout;
pub mod pickle;
pub mod ref_counter;
pub mod torch;

use crate::cuda::ipc::IpcEvent;
use crate::error::{Error, ErrorKind, Result};
use ref_counter::Slot;

/// An owned, immutable payload. A CUDA tensor payload also holds its reference-counter slot and
/// its event (when the consumer must wait on a stream): they live as long as the payload, which
/// outlives the client that made it.
pub struct Payload {
    bytes: Vec<u8>,
    slot: Option<Slot>,
    _event: Option<IpcEvent>,
}

impl Payload {
    /// A payload of plain bytes (mesh shapes, placements).
    pub fn plain(bytes: Vec<u8>) -> Payload {
        Payload { bytes, slot: None, _event: None }
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
