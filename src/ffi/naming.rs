//! The C path naming callback and its buffer rules: the library hands the callback two
//! zero-filled buffers and reads each path as the bytes before the first NUL.

use std::ffi::{c_void, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use etb_core::error::{Error, ErrorKind, Result};
use etb_core::protocol::naming::{AgentPaths, PATH_MAX};

/// A path naming callback: writes the agent's command-queue LMDB path and state LMDB path for
/// `agent_rank` as NUL-terminated bytes (any bytes but NUL; UTF-8 not required) into the two
/// buffers, which the library zero-fills and which hold `*_capacity` bytes each (at least 4096).
/// Returns 0 on success; any other value fails the bootstrap with `ETB_ERR_NAMING`, quoting the
/// value. An empty path, or one that fills its buffer without a NUL, is `ETB_ERR_NAMING` too.
/// `user_data` is the pointer given to `etb_bootstrap_client`. The callback is called at most
/// once per bootstrap, on the calling thread, and must not unwind (throw) into the library.
pub type EtbPathNamingFn = Option<
    unsafe extern "C" fn(
        agent_rank: i64,
        command_queue_path: *mut libc::c_char,
        command_queue_path_capacity: usize,
        state_path: *mut libc::c_char,
        state_path_capacity: usize,
        user_data: *mut c_void,
    ) -> i32,
>;

/// The capacity of each path buffer handed to a naming callback: a path shorter than `PATH_MAX`
/// plus its NUL always fits. (Not in the header: the callback gets the capacity as an argument.)
///
/// cbindgen:ignore
pub const PATH_BUFFER_CAPACITY: usize = PATH_MAX;

fn naming_error(message: String) -> Error {
    Error::new(ErrorKind::Naming, message)
}

/// Reads one path out of a zero-filled buffer that a naming callback wrote: the bytes before the
/// first NUL. A buffer with no NUL (filled to the brim) or an empty path is an error.
pub fn path_from_buffer(buffer: &[u8], what: &str) -> Result<PathBuf> {
    let Some(len) = buffer.iter().position(|&b| b == 0) else {
        return Err(naming_error(format!(
            "the naming callback filled the whole {}-byte {what} buffer without a terminating NUL",
            buffer.len()
        )));
    };
    if len == 0 {
        return Err(naming_error(format!("the naming callback returned an empty {what}")));
    }
    Ok(PathBuf::from(OsStr::from_bytes(&buffer[..len])))
}

/// Calls a naming callback for `agent_rank` and reads what it wrote.
pub(crate) fn call_naming_fn(
    f: unsafe extern "C" fn(i64, *mut libc::c_char, usize, *mut libc::c_char, usize, *mut c_void) -> i32,
    user_data: *mut c_void,
    agent_rank: i64,
) -> Result<AgentPaths> {
    let mut command_queue = vec![0u8; PATH_BUFFER_CAPACITY];
    let mut state = vec![0u8; PATH_BUFFER_CAPACITY];
    // SAFETY: two live, zero-filled buffers of the capacities we pass; `user_data` is the
    // caller's, passed through untouched; the callback's own contract (documented above) is the
    // caller's to keep.
    let rc = unsafe {
        f(
            agent_rank,
            command_queue.as_mut_ptr().cast(),
            command_queue.len(),
            state.as_mut_ptr().cast(),
            state.len(),
            user_data,
        )
    };
    if rc != 0 {
        return Err(naming_error(format!(
            "the path naming callback returned {rc} for agent rank {agent_rank} (0 means success)"
        )));
    }
    Ok(AgentPaths {
        command_queue: path_from_buffer(&command_queue, "command queue path")?,
        state: path_from_buffer(&state, "state path")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers() {
        let mut buf = vec![0u8; 16];
        buf[..5].copy_from_slice(b"/a/b\xff");
        assert_eq!(path_from_buffer(&buf, "state path").unwrap().as_os_str().as_bytes(), b"/a/b\xff");
        let e = path_from_buffer(&[0u8; 8], "state path").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Naming);
        assert!(e.message().contains("empty state path"), "{e}");
        let e = path_from_buffer(&[b'a'; 8], "command queue path").unwrap_err();
        assert!(e.message().contains("without a terminating NUL"), "{e}");
    }
}
