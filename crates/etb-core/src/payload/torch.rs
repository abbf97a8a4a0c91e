//! torch's payload format, in one place: the function a CUDA tensor payload calls
//! (`torch.multiprocessing.reductions.rebuild_cuda_tensor`) with its arguments in torch's order,
//! and the module of the DTensor placement classes, for the torch versions that
//! [`SUPPORTED_TORCH`] names (docs/torch-ipc.md sections 1 and 5).
//!
//! Nothing in the protocol tells a worker the agent's torch version, so there is one format,
//! [`FORMAT`]. When a torch version unpickles differently, a second `Format` goes beside it,
//! with its own range, chosen by an explicit option of the worker; there is no such option
//! until a second format exists.

use super::pickle::Pickle;

/// A range of torch versions (`major.minor`, both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorchRange {
    pub first: &'static str,
    pub last: &'static str,
}

/// The torch versions whose unpickling [`FORMAT`] matches: the bytes it writes become the same
/// objects on each of them. The docs quote this range (README, header, docs/torch-ipc.md,
/// docs/contributing.md): a test checks that each quote is this one.
pub const SUPPORTED_TORCH: TorchRange = TorchRange { first: "2.10", last: "2.15" };

/// How one range of torch versions unpickles the payloads.
#[derive(Debug)]
pub struct Format {
    /// The versions it serves.
    pub torch: TorchRange,
    /// The module and name of the function a CUDA tensor payload calls.
    pub rebuild_cuda_tensor: (&'static str, &'static str),
    /// The module of the placement classes `Shard`, `Replicate` and `Partial`.
    pub placement_module: &'static str,
}

/// The format of [`SUPPORTED_TORCH`].
pub const FORMAT: Format = Format {
    torch: SUPPORTED_TORCH,
    rebuild_cuda_tensor: ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"),
    placement_module: "torch.distributed.tensor.placement_types",
};

/// A CUDA tensor as `rebuild_cuda_tensor` receives it.
#[derive(Debug, Clone, Copy)]
pub struct CudaTensorArgs<'a> {
    pub shape: &'a [i64],
    /// In elements.
    pub strides: &'a [i64],
    /// torch's name of the dtype (`GLOBAL torch <name>`).
    pub dtype_name: &'a str,
    /// The CUDA ordinal of the storage's device.
    pub device: i32,
    /// `None` for a tensor with no elements: no handle, no counter, no event.
    pub storage: Option<SharedStorage<'a>>,
}

/// The shared storage of a CUDA tensor with elements.
#[derive(Debug, Clone, Copy)]
pub struct SharedStorage<'a> {
    /// The allocation's IPC handle.
    pub handle: &'a [u8],
    pub size_bytes: u64,
    /// Where the storage starts in the allocation.
    pub offset_bytes: u64,
    /// The reference-counter file (a POSIX shared-memory name) and the payload's slot in it.
    pub ref_counter: (&'a [u8], usize),
    /// The interprocess event the consumer waits on, when it must wait on a stream.
    pub event_handle: Option<&'a [u8]>,
}

impl Format {
    /// The pickle of `rebuild_cuda_tensor(tensor_cls, tensor_size, tensor_stride, tensor_offset,
    /// storage_cls, dtype, storage_device, storage_handle, storage_size_bytes,
    /// storage_offset_bytes, requires_grad, ref_counter_handle, ref_counter_offset, event_handle,
    /// event_sync_required)`: its 15 arguments, in this order (docs/torch-ipc.md section 1).
    pub fn cuda_tensor(&self, t: &CudaTensorArgs<'_>) -> Vec<u8> {
        let mut p = Pickle::new();
        let (module, name) = self.rebuild_cuda_tensor;
        p.global(module, name).mark();
        p.global("torch", "Tensor");
        p.global("torch", "Size").mark().int_tuple(t.shape).tuple().reduce();
        p.int_tuple(t.strides).int(0);
        p.global("torch.storage", "TypedStorage").global("torch", t.dtype_name).int(i64::from(t.device));
        match &t.storage {
            // An empty storage: no handle, no counter, no event.
            None => p.none().int(0).int(0).bool(false).bytes(b"").int(0).bytes(&[0; 64]).bool(false),
            Some(s) => {
                p.bytes(s.handle).int(s.size_bytes as i64).int(s.offset_bytes as i64).bool(false);
                p.bytes(s.ref_counter.0).int(s.ref_counter.1 as i64);
                match s.event_handle {
                    Some(event) => p.bytes(event).bool(true),
                    None => p.bytes(&[0; 64]).bool(false),
                }
            }
        };
        p.tuple().reduce();
        p.finish()
    }

    /// Writes the placement class `class` (`Shard`, `Replicate`, `Partial`) as a GLOBAL, for a
    /// constructor call.
    pub fn placement_class<'p>(&self, p: &'p mut Pickle, class: &str) -> &'p mut Pickle {
        p.global(self.placement_module, class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every "torch X through Y" (or "X to Y") of the text.
    fn quoted_ranges(text: &str) -> Vec<(String, String)> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let number = |w: &str| w.trim_matches(|c: char| !c.is_ascii_digit()).to_string();
        words
            .windows(4)
            .filter(|w| w[0].ends_with("torch") && (w[2] == "through" || w[2] == "to") && w[1].starts_with("2."))
            .map(|w| (number(w[1]), number(w[3])))
            .collect()
    }

    #[test]
    fn the_docs_quote_the_supported_range() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let want = (SUPPORTED_TORCH.first.to_string(), SUPPORTED_TORCH.last.to_string());
        for (file, at_least) in [
            ("README.md", 1),
            ("include/etha_tensor_bus.h", 1),
            ("docs/torch-ipc.md", 1),
            ("docs/contributing.md", 1),
            ("src/ffi/payload.rs", 1),
            ("crates/etb-core/src/payload/layout.rs", 1),
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let found = quoted_ranges(&text);
            assert!(found.len() >= at_least, "{file} does not quote the supported torch range {want:?}");
            for range in found {
                assert_eq!(range, want, "{file} quotes torch {range:?}; SUPPORTED_TORCH is {want:?}");
            }
        }
        assert_eq!(quoted_ranges("on\n/// torch 2.10 through 2.15."), vec![("2.10".into(), "2.15".into())]);
        assert_eq!(quoted_ranges("torch 2.9 to 2.12;"), vec![("2.9".into(), "2.12".into())]);
    }

    #[test]
    fn the_empty_tensor_has_no_storage() {
        let t = CudaTensorArgs { shape: &[4, 0], strides: &[1, 1], dtype_name: "int64", device: 1, storage: None };
        let b = FORMAT.cuda_tensor(&t);
        assert!(b.starts_with(b"\x80\x03ctorch.multiprocessing.reductions\nrebuild_cuda_tensor\n(ctorch\nTensor\n"));
        assert!(b.ends_with(b"\x89tR."), "event_sync_required False, then the call");
        assert!(b.windows(3).any(|w| w == [b'N', b'K', 0]), "no handle, size 0");
    }
}
