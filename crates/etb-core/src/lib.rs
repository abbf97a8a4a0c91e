//! # etb-core
//!
//! The pure-Rust core of etha-tensor-bus: everything but the C ABI. It has no `extern "C"`
//! exports and no raw pointers in its API; failures are ordinary [`Error`]s. The C ABI lives in
//! the `etha-tensor-bus` crate (`src/ffi/`), which also re-exports the deliberate Rust API
//! (`bootstrap_client`, `BootstrapOptions`, `BootstrapInfo`, `Client`, `Completion`, `Error`,
//! `ErrorKind`). The items here are `pub` for the workspace's crates and tests; this crate is not
//! a stable API of its own.
//!
//! Layers, bottom up (a module imports only from its own layer or those below it; `tests/layers.rs`
//! at the workspace root checks it on every `crate::` path, and finds import cycles):
//! - [`error`], [`timeout`], [`logging`]: vocabulary every layer uses;
//! - [`sys`]: OS primitives: POSIX semaphores, file and lock probes, process identity and watch,
//!   ptrace authorization, trust checks, the per-file registry, the worker lock;
//! - [`lmdb`]: the safe LMDB wrapper, the pre-open file check;
//! - [`cuda`]: the run-time-loaded CUDA driver binding;
//! - [`protocol`]: the agent's protocol: rank and naming, command messages, the command queue,
//!   the state DB, completion semaphores;
//! - [`payload`]: payloads a native worker makes (CUDA tensors, mesh shapes, placements);
//! - [`connection`]: finding and validating a live agent and authorizing it, and the one list of
//!   bootstrap steps;
//! - [`client`] and [`bootstrap`] on top.

pub mod error;
pub mod logging;
pub mod timeout;

pub mod sys;

pub mod lmdb;

pub mod cuda;

pub mod protocol;

pub mod payload;

pub mod connection;

pub mod client;

pub mod bootstrap;

pub use bootstrap::{bootstrap_client, BootstrapInfo, BootstrapOptions};
pub use client::{Client, Completion};
pub use error::{Error, ErrorKind, Result};
