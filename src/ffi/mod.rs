//! The C ABI. Every exported function here only checks its pointers, converts between C and
//! Rust types, calls the core, and reports through an `EtbStatus` and the thread's last-error
//! message; panics are caught at the boundary (`boundary`) and become `ETB_ERR_PANIC`.
//!
//! Conventions that hold for every function (also in the README, "API conventions"):
//! - Out-pointers are written only on success.
//! - Strings returned as `const char *` are owned by the library; each function says how long
//!   they live. Strings passed in are borrowed for the call only.
//! - Handles (`EtbClient`, `EtbBootstrapInfo`) are created by the library and released with
//!   their own `_close`/`_free` function, which accepts NULL; releasing one twice, or using it
//!   after release, is undefined behaviour.

#[macro_use]
mod boundary;
pub mod bootstrap;
pub mod commands;
pub mod convert;
pub mod info;
pub mod misc;
pub mod status;

pub use bootstrap::*;
pub use commands::*;
pub use convert::{EtbTransferKind, ETB_TRANSFER_RECV, ETB_TRANSFER_SEND};
pub use info::*;
pub use misc::*;
pub use status::*;
