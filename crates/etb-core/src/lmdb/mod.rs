//! LMDB, safely: the environment wrapper over lmdb-sys ([`env`], re-exported here), the check
//! that a file is a plausible LMDB file before LMDB maps it ([`file_check`]), and the
//! per-process registry of open environments by file identity ([`registry`]).

mod env;
pub mod file_check;
pub mod registry;

pub use env::*;
