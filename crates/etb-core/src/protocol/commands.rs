//! The agent's command messages (docs/protocol.md section 4), encoded as `msgspec` writes tagged
//! structs: a MessagePack map with `"type"` first, the command's own fields in declaration
//! order, then `timestamp` and `semaphore_name`. Strings are str, payloads bin, absent
//! optionals nil, floats float64, integers in their smallest encoding.

use rmp::encode;

/// Which side of a transfer this worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    Send,
    Recv,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Send => "send",
            TransferKind::Recv => "recv",
        }
    }
}

/// One command, borrowing its fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<'a> {
    Transfer {
        batch_id: &'a str,
        transfer_type: TransferKind,
    },
    RegisterTensors {
        batch_id: &'a str,
        tensors: Vec<(&'a str, &'a [u8])>,
        bucket_size: Option<i64>,
    },
    InitPair {
        pair_name: &'a str,
        local_name: &'a str,
        expected_world_size: i64,
        remote_name: &'a str,
        mesh_shape_payload: Option<&'a [u8]>,
        placements_payload: Option<&'a [u8]>,
    },
    QueryStatus {
        batch_id: &'a str,
        state_name: &'a str,
    },
    CleanupBatch {
        batch_id: &'a str,
    },
}

/// `state_name` of the only query the agent understands.
pub const TRANSFER_SIGNAL: &str = "transfer_signal";

impl Command<'_> {
    /// The msgspec tag: the class name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::Transfer { .. } => "Transfer",
            Command::RegisterTensors { .. } => "RegisterTensors",
            Command::InitPair { .. } => "InitPair",
            Command::QueryStatus { .. } => "QueryStatus",
            Command::CleanupBatch { .. } => "CleanupBatch",
        }
    }

    /// The completion semaphore's kind and context, as the reference names them
    /// (`/command_{kind}_{context}_...`).
    pub fn completion_label(&self) -> (&'static str, String) {
        match self {
            Command::InitPair { pair_name, .. } => ("register", pair_name.to_string()),
            Command::RegisterTensors { batch_id, .. } => ("register_tensors", format!("batch_{batch_id}")),
            Command::Transfer { batch_id, transfer_type } => {
                ("transfer", format!("batch_{batch_id}_{}", transfer_type.as_str()))
            }
            Command::QueryStatus { batch_id, .. } => ("query", format!("batch_{batch_id}")),
            Command::CleanupBatch { batch_id } => ("cleanup_batch", format!("batch_{batch_id}")),
        }
    }

    /// Encodes the command with its two common fields.
    pub fn encode(&self, timestamp: Option<f64>, semaphore_name: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        // Writes into a Vec cannot fail: the results are Ok by construction.
        let w = &mut out;
        let own_fields = match self {
            Command::Transfer { .. } => 2,
            Command::RegisterTensors { .. } => 3,
            Command::InitPair { .. } => 6,
            Command::QueryStatus { .. } => 2,
            Command::CleanupBatch { .. } => 1,
        };
        let _ = encode::write_map_len(w, 1 + own_fields + 2);
        str_field(w, "type", self.type_name());
        match self {
            Command::Transfer { batch_id, transfer_type } => {
                str_field(w, "batch_id", batch_id);
                str_field(w, "transfer_type", transfer_type.as_str());
            }
            Command::RegisterTensors { batch_id, tensors, bucket_size } => {
                str_field(w, "batch_id", batch_id);
                key(w, "tensors");
                let _ = encode::write_array_len(w, tensors.len() as u32);
                for (pair_name, payload) in tensors {
                    let _ = encode::write_array_len(w, 2);
                    let _ = encode::write_str(w, pair_name);
                    let _ = encode::write_bin(w, payload);
                }
                key(w, "bucket_size");
                match bucket_size {
                    Some(v) => int(w, *v),
                    None => nil(w),
                }
            }
            Command::InitPair {
                pair_name,
                local_name,
                expected_world_size,
                remote_name,
                mesh_shape_payload,
                placements_payload,
            } => {
                str_field(w, "pair_name", pair_name);
                str_field(w, "local_name", local_name);
                key(w, "expected_world_size");
                int(w, *expected_world_size);
                str_field(w, "remote_name", remote_name);
                bin_field(w, "mesh_shape_payload", *mesh_shape_payload);
                bin_field(w, "placements_payload", *placements_payload);
            }
            Command::QueryStatus { batch_id, state_name } => {
                str_field(w, "batch_id", batch_id);
                str_field(w, "state_name", state_name);
            }
            Command::CleanupBatch { batch_id } => str_field(w, "batch_id", batch_id),
        }
        key(w, "timestamp");
        match timestamp {
            Some(t) => {
                let _ = encode::write_f64(w, t);
            }
            None => nil(w),
        }
        key(w, "semaphore_name");
        match semaphore_name {
            Some(s) => {
                let _ = encode::write_str(w, s);
            }
            None => nil(w),
        }
        out
    }
}

fn key(w: &mut Vec<u8>, k: &str) {
    let _ = encode::write_str(w, k);
}

fn nil(w: &mut Vec<u8>) {
    let _ = encode::write_nil(w);
}

/// msgspec writes Python ints in their smallest form: positive fixint, uint8..64 for
/// non-negative values, negative fixint, int8..64 for negative ones.
fn int(w: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        let _ = encode::write_uint(w, v as u64);
    } else {
        let _ = encode::write_sint(w, v);
    }
}

fn str_field(w: &mut Vec<u8>, k: &str, v: &str) {
    key(w, k);
    let _ = encode::write_str(w, v);
}

fn bin_field(w: &mut Vec<u8>, k: &str, v: Option<&[u8]>) {
    key(w, k);
    match v {
        Some(bytes) => {
            let _ = encode::write_bin(w, bytes);
        }
        None => nil(w),
    }
}
