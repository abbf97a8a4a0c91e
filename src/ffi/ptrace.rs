//! Ptrace consent: who may ptrace this worker (the agent takes CUDA memory out of it with
//! `pidfd_getfd`, which Yama `ptrace_scope=1` allows only to an authorized tracer).

use std::path::Path;

use super::status::EtbStatus;
use etb_core::sys::ptrace::{grant, set, Tracer, YAMA_DIR};

/// Lets every process of this user ptrace the calling process (`PR_SET_PTRACER_ANY`), as the
/// reference `setup_ptrace()` does, so that the agent can take file descriptors out of this
/// worker (`pidfd_getfd`) under Yama `ptrace_scope=1`. Prefer what `etb_bootstrap_client`
/// already does: authorize only the agent's process.
///
/// Later bootstraps keep this (they never narrow ANY to one pid).
///
/// Returns `ETB_OK` when done, and also when the kernel has no Yama (no consent exists; logged
/// at debug level); `ETB_ERR_PTRACE` with the errno otherwise. Affects the whole process;
/// thread-safe; does not block.
/// Takes no pointer argument (nothing can be NULL).
#[no_mangle]
pub extern "C" fn etb_setup_ptrace() -> EtbStatus {
    status_boundary!({
        grant(Tracer::Any, Path::new(YAMA_DIR))?;
        Ok(())
    })
}

/// Lets exactly one process (and its descendants) ptrace the calling process
/// (`PR_SET_PTRACER`, `tracer_pid`), replacing any earlier authorization of this process: the
/// least-privilege form of `etb_setup_ptrace`. `ETB_ERR_INVALID_ARGUMENT` for a pid <= 0;
/// `ETB_OK` also where the kernel has no Yama; under Yama `ptrace_scope` 2 or 3,
/// `ETB_ERR_PTRACE` with what the administrator must change. Affects the whole process;
/// thread-safe; does not block.
/// Takes no pointer argument (nothing can be NULL).
#[no_mangle]
pub extern "C" fn etb_setup_ptrace_pid(tracer_pid: i32) -> EtbStatus {
    status_boundary!({
        set(Tracer::Pid(tracer_pid), Path::new(YAMA_DIR))?;
        Ok(())
    })
}
