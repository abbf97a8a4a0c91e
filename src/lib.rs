//! # etha-tensor-bus
//!
//! The worker side of the Etha tensor bus, as a Rust library with a C ABI.
//!
//! The crate has two layers:
//! - a pure-Rust core (every module but `ffi`): environment and naming resolution, LMDB, the
//!   command queue, semaphores, ptrace; ordinary `Result`s, no raw pointers in its API;
//! - `ffi`, the C ABI: it checks pointers, converts types, catches panics, records the last
//!   error and returns an `EtbStatus`. The header `include/etha_tensor_bus.h` is generated from
//!   it by cbindgen.
//!
//! Rust users call [`bootstrap::bootstrap_client`] directly.

pub mod agent_process;
pub mod agent_watch;
pub mod bootstrap;
pub mod client;
pub mod command_queue;
pub mod commands;
pub mod completion;
pub mod cuda;
pub mod error;
pub mod ffi;
pub mod lmdb;
pub mod lmdb_file;
pub mod lmdb_registry;
pub mod logging;
pub mod naming;
pub mod ptrace;
pub mod rank;
pub mod semaphore;
pub mod state_db;
pub mod timeout;
pub mod worker_lock;
pub mod trust;

pub use bootstrap::{bootstrap_client, BootstrapInfo, BootstrapOptions};
pub use client::Client;
pub use error::{Error, ErrorKind, Result};
