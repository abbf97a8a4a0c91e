//! The read-only payloads of this process, known by their bytes: a DLPack producer's
//! `DLPACK_FLAG_BITMASK_READ_ONLY` forbids writes, and a `Transfer(recv)` writes into the
//! batch's tensors. The direction is known only at the `Transfer`, so the client's guard asks,
//! when a batch is registered, whether any of its payloads is read-only
//! ([`holds_any`]), and refuses a later receive (docs/protocol.md section 5).
//!
//! A payload's bytes name its reference-counter slot, so two live CUDA tensor payloads never
//! have the same bytes; a count per bytes keeps it right for those that could (no elements).

use std::collections::HashMap;
use std::sync::Mutex;

use once_cell::sync::Lazy;

static LIVE: Lazy<Mutex<HashMap<Vec<u8>, usize>>> = Lazy::new(|| Mutex::new(HashMap::new()));

fn live() -> std::sync::MutexGuard<'static, HashMap<Vec<u8>, usize>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A read-only payload of these bytes was made.
pub(super) fn mark(bytes: &[u8]) {
    *live().entry(bytes.to_vec()).or_insert(0) += 1;
}

/// A read-only payload of these bytes was freed.
pub(super) fn unmark(bytes: &[u8]) {
    let mut live = live();
    if let Some(n) = live.get_mut(bytes) {
        *n -= 1;
        if *n == 0 {
            live.remove(bytes);
        }
    }
}

/// Whether any of `payloads` is the bytes of a live read-only payload. One lock, no copies;
/// nothing to look up (and no lock) while this process has made none.
pub fn holds_any<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let live = live();
    !live.is_empty() && payloads.into_iter().any(|b| live.contains_key(b))
}

/// [`mark`] for the client's tests.
#[cfg(test)]
pub(crate) fn mark_for_tests(bytes: &[u8]) {
    mark(bytes)
}

/// [`unmark`] for the client's tests.
#[cfg(test)]
pub(crate) fn unmark_for_tests(bytes: &[u8]) {
    unmark(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_by_bytes() {
        let (a, b): (&[u8], &[u8]) = (b"\x80\x03read-only-test-a.", b"\x80\x03read-only-test-b.");
        mark(a);
        mark(a);
        assert!(holds_any([b, a]) && !holds_any([b]));
        unmark(a);
        assert!(holds_any([a]), "one left");
        unmark(a);
        unmark(b);
        assert!(!holds_any([a, b]));
    }
}
