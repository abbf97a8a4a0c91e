//! LMDB, safely: the environment wrapper over lmdb-sys ([`env`], re-exported here) and the check
//! that a file is a plausible LMDB file before LMDB maps it ([`file_check`]), and a read-only
//! view of a lock file's header ([`lock_file`]: the writer mutex's owner and the last committed
//! transaction, for the survival signal). Open environments
//! are shared per process by file identity through `sys::registry`.

mod env;
pub mod file_check;
pub mod lock_file;

pub use env::*;
