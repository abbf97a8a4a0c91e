//! LMDB, safely: the environment wrapper over lmdb-sys ([`env`], re-exported here) and the check
//! that a file is a plausible LMDB file before LMDB maps it ([`file_check`]). Open environments
//! are shared per process by file identity through `sys::registry`.

mod env;
pub mod file_check;

pub use env::*;
