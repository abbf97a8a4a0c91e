//! The C ABI. Every export is a plain `#[no_mangle] pub [unsafe] extern "C" fn` whose body is one
//! boundary macro (`status_boundary!` or `value_boundary!`, in `boundary`): it only checks its
//! pointers and converts arguments (`args`), calls the core, and reports through an `EtbStatus`
//! and the thread's last-error message; panics are caught at the boundary and become
//! `ETB_ERR_PANIC`. One file per handle or concept: `bootstrap` (the options and the entry
//! points), `client`, `commands`, `completion`, `info`, `payload`, `naming` (the callback),
//! `guard` (adopting pairs and batches), `ptrace`, `log`, `error` (status names, the last error),
//! `status` (the codes), `version`.
//!
//! Conventions that hold for every function (also in the header's preamble and the README, "API
//! conventions"):
//! - Out-pointers are written only on success.
//! - Strings returned as `const char *` are owned by the library; each function says how long
//!   they live. Strings passed in are borrowed for the call only.
//! - Handles (`EtbClient`, `EtbBootstrapInfo`, `EtbCompletion`, `EtbPayload`) are created by the library and
//!   released with their own `_close`/`_free` function, which accepts NULL; releasing one twice,
//!   or using it after release, is undefined behaviour.
//! - A function that may run on several threads at once on a handle takes it `const`.

#[macro_use]
mod boundary;
mod args;
pub mod bootstrap;
pub mod client;
pub mod commands;
pub mod completion;
pub mod error;
pub mod guard;
pub mod info;
pub mod log;
pub mod naming;
pub mod payload;
pub mod ptrace;
pub mod status;
pub mod version;

pub use bootstrap::*;
pub use client::*;
pub use commands::*;
pub use completion::*;
pub use error::*;
pub use guard::*;
pub use info::*;
pub use log::*;
pub use naming::*;
pub use payload::*;
pub use ptrace::*;
pub use status::*;
pub use version::*;
