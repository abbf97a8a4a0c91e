//! What a command's payload must look like before it is enqueued. The agent unpickles every
//! payload of `RegisterTensors` and `InitPair` (docs/protocol.md section 4) and dies when one is
//! not a pickle, after posting the completion (section 5): so the client refuses such bytes
//! itself, with cheap checks only (no unpickling).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, ErrorKind, Result};

/// The module whose `rebuild_*` functions a `ForkingPickler.dumps(tensor)` pickle names.
pub const TORCH_REDUCTIONS: &[u8] = b"torch.multiprocessing.reductions";

/// Whether `bytes` look like a pickle: the PROTO opcode `0x80` with a protocol 2..=5, and STOP
/// (`.`) at the end.
pub fn looks_like_pickle(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) && bytes[bytes.len() - 1] == b'.'
}

/// `Ok` when `bytes` look like a pickle; else `InvalidArgument` saying what a payload must be.
/// `what` names the payload ("RegisterTensors payload 2 (pair \"w\")", "InitPair mesh_shape_payload").
pub fn check_pickle(what: &str, bytes: &[u8]) -> Result<()> {
    if looks_like_pickle(bytes) {
        return Ok(());
    }
    let found = match bytes {
        [] => "it is empty".to_string(),
        [first, ..] if *first != 0x80 => format!("it starts with byte 0x{first:02x}"),
        [_, proto, ..] if !(2..=5).contains(proto) => format!("its protocol byte is {proto}"),
        [_] | [_, _] => format!("it is only {} bytes long", bytes.len()),
        _ => format!("it ends with byte 0x{:02x}, not STOP", bytes[bytes.len() - 1]),
    };
    Err(Error::new(
        ErrorKind::InvalidArgument,
        format!(
            "{what} is not a pickle ({found}; a pickle of protocol 2 to 5 starts with 0x80 and its protocol \
             and ends with STOP '.'): pass ForkingPickler.dumps(tensor) or a payload this library made. \
             The agent would have died unpickling it; nothing was enqueued"
        ),
    ))
}

/// Logs once per process when a `RegisterTensors` payload is a pickle that does not come from
/// `ForkingPickler.dumps(tensor)` (it names no `torch.multiprocessing.reductions`): a plain
/// `pickle.dumps(tensor)` sends a copy of the data, not the shared memory, so the receiver's
/// tensor would never change.
pub fn warn_if_not_shared(what: &str, bytes: &[u8]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if bytes.windows(TORCH_REDUCTIONS.len()).any(|w| w == TORCH_REDUCTIONS) {
        return;
    }
    if !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "{what} is a pickle that does not name torch.multiprocessing.reductions: a pickle.dumps(tensor) sends \
             a copy of the data, not its shared memory, so the receiver's tensor would never change; pickle \
             tensors with multiprocessing.reduction.ForkingPickler.dumps (said once per process)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickle_shapes() {
        assert!(looks_like_pickle(b"\x80\x04N."));
        assert!(looks_like_pickle(b"\x80\x02K\x01."));
        assert!(looks_like_pickle(b"\x80\x05."));
        for (bad, says) in [
            (&b""[..], "it is empty"),
            (b"\x01\x02\x03.", "starts with byte 0x01"),
            (b"\x80\x06N.", "protocol byte is 6"),
            (b"\x80\x01N.", "protocol byte is 1"),
            (b"\x80\x04", "only 2 bytes"),
            (b"\x80\x04N", "ends with byte 0x4e"),
        ] {
            assert!(!looks_like_pickle(bad), "{bad:?}");
            let e = check_pickle("RegisterTensors payload 0", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.message().contains(says), "{bad:?}: {e}");
            assert!(
                e.message().contains("ForkingPickler.dumps(tensor)") && e.message().contains("nothing was enqueued")
            );
        }
    }
}
