//! The layout payloads of `InitPair`: the mesh shape and the DTensor placements, as pickles that
//! the agent's torch unpickles to what the reference sends (docs/torch-ipc.md section 5).

use super::pickle::Pickle;
use super::torch::FORMAT;
use crate::error::{Error, ErrorKind, Result};

/// A DTensor placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `Shard(dim)`; torch accepts negative dims.
    Shard(i64),
    /// `Replicate()`.
    Replicate,
    /// `Partial(reduce_op)`.
    Partial(String),
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// `tuple(device_mesh.mesh.shape)`, as the reference sends it: a tuple of ints, each >= 1.
pub fn mesh_shape(dims: &[i64]) -> Result<Vec<u8>> {
    if dims.is_empty() {
        return Err(invalid("a mesh shape needs at least one dimension".into()));
    }
    if let Some((i, d)) = dims.iter().enumerate().find(|(_, &d)| d < 1) {
        return Err(invalid(format!("mesh dimension {i} is {d}; every dimension must be >= 1")));
    }
    let mut p = Pickle::new();
    p.int_tuple(dims);
    Ok(p.finish())
}

/// A tuple of placements, each written as a constructor call (`Shard(0)`, `Replicate()`,
/// `Partial("avg")`), not as one torch version's internal state, so that the same bytes unpickle
/// on torch 2.10 through 2.15. An empty list gives the empty tuple.
pub fn placements(items: &[Placement]) -> Result<Vec<u8>> {
    let mut p = Pickle::new();
    p.mark();
    for item in items {
        match item {
            Placement::Shard(dim) => {
                FORMAT.placement_class(&mut p, "Shard").mark().int(*dim).tuple().reduce();
            }
            Placement::Replicate => {
                FORMAT.placement_class(&mut p, "Replicate").mark().tuple().reduce();
            }
            Placement::Partial(op) => {
                if op.is_empty() {
                    return Err(invalid("a Partial placement's reduce_op is empty".into()));
                }
                FORMAT.placement_class(&mut p, "Partial").mark().text(op).tuple().reduce();
            }
        }
    }
    p.tuple();
    Ok(p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_placements() {
        assert_eq!(mesh_shape(&[2, 4]).unwrap(), b"\x80\x03(K\x02K\x04t.");
        assert!(mesh_shape(&[]).is_err());
        assert!(mesh_shape(&[2, 0]).unwrap_err().message().contains("dimension 1 is 0"));
        assert_eq!(placements(&[]).unwrap(), b"\x80\x03(t.");
        let p = placements(&[Placement::Shard(-1), Placement::Replicate, Placement::Partial("avg".into())]).unwrap();
        assert!(p.starts_with(b"\x80\x03(ctorch.distributed.tensor.placement_types\nShard\n(J\xff\xff\xff\xfftR"));
        assert!(p.ends_with(b"Partial\n(X\x03\x00\x00\x00avgtRt."));
        assert!(placements(&[Placement::Partial(String::new())]).is_err());
    }
}
