//! # etha-tensor-bus
//!
//! The worker side of the Etha tensor bus, as a Rust library with a C ABI.
//!
//! - For C and C++ (and ctypes): the `ffi` module is the C ABI; the header
//!   `include/etha_tensor_bus.h` is generated from it by cbindgen.
//! - For Rust: the items re-exported here are the deliberate API. [`bootstrap_client`] finds this
//!   worker's agent and returns a [`Client`] and its [`BootstrapInfo`]; the client's commands
//!   return `Result<_, Error>` and [`Completion`]s.
//!
//! The logic lives in the `etb-core` crate of this workspace (protocol, LMDB, OS primitives,
//! CUDA binding, client and bootstrap); this crate adds the C boundary and nothing else.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod ffi;

pub use etb_core::bootstrap::{
    bootstrap_client, BootstrapInfo, BootstrapOptions, PathNaming, DEFAULT_CONNECTION_TIMEOUT_SECS,
};
pub use etb_core::client::{Client, Completion};
pub use etb_core::connection::PtraceMode;
pub use etb_core::cuda::{CudaMode, CudaReport, DeviceIdentity};
pub use etb_core::error::{Error, ErrorKind, Result};
pub use etb_core::protocol::commands::TransferKind;
pub use etb_core::protocol::naming::AgentPaths;
pub use etb_core::protocol::rank::{EnvSource, Method, ProcessEnv};
pub use etb_core::sys::trust::TrustPolicy;
pub use etb_core::timeout::Timeout;
