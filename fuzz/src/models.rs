//! Reference models written independently of the library, shared by the property tests
//! (tests/properties.rs includes this file) and the fuzz targets (through this crate).

use etb_core::protocol::commands::{Command, TransferKind};
use etb_core::protocol::rank::{self, parse_integer, Method};
use rmpv::Value;

pub const WS: &[u8] = b" \t\n\x0b\x0c\r";

/// The strict integer grammar, written independently of `rank::parse_integer`: ASCII
/// whitespace, an optional sign, one or more ASCII digits, ASCII whitespace; fits in i64.
pub fn parse_integer_model(text: &[u8]) -> Option<i64> {
    let is_ws = |b: &u8| WS.contains(b);
    let start = text.iter().position(|b| !is_ws(b)).unwrap_or(text.len());
    let end = text.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    let body = &text[start..end];
    let (sign, digits) = match body.split_first() {
        Some((b'-', rest)) => (-1i128, rest),
        Some((b'+', rest)) => (1, rest),
        _ => (1, body),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &digits[digits.iter().position(|&d| d != b'0').unwrap_or(digits.len())..];
    if significant.len() > 19 {
        return None;
    }
    let magnitude: i128 = significant.iter().fold(0, |acc, &d| acc * 10 + i128::from(d - b'0'));
    i64::try_from(sign * magnitude).ok()
}

/// `rank::parse_integer` agrees with the model, and what it parses prints back to itself.
pub fn check_parse_integer(text: &[u8]) {
    let got = parse_integer(text);
    assert_eq!(got, parse_integer_model(text), "{:?}", String::from_utf8_lossy(text));
    if let Some(v) = got {
        assert_eq!(parse_integer(v.to_string().as_bytes()), Some(v));
    }
}

pub const VARS: [&str; 4] = [rank::AGENT_RANK, rank::RANK, rank::AGENT_RANK_OFFSET, rank::LOCAL_RANK];

pub type Resolved = (i64, i64, Option<i64>, i32, Method);

/// The outcome `rank::resolve` must have: `Ok` with its fields, or `Err` with the variables at
/// fault (the message names one of them, whichever the order of the checks finds first).
pub fn resolve_model(vars: &[Option<Vec<u8>>; 4]) -> Result<Resolved, Vec<&'static str>> {
    let [agent, rank, offset, local] = vars;
    let parsed = |v: &Option<Vec<u8>>| v.as_ref().map(|b| parse_integer_model(b));
    let mut culprits = Vec::new();
    let agent_rank = match parsed(agent) {
        Some(None) => {
            culprits.push(rank::AGENT_RANK);
            None
        }
        Some(Some(a)) if a < 0 => {
            culprits.push(rank::AGENT_RANK);
            None
        }
        v => v.flatten(),
    };
    let global = match parsed(rank) {
        Some(Some(r)) => Some(r),
        _ => {
            culprits.push(rank::RANK);
            None
        }
    };
    let local_rank = match parsed(local) {
        None => Some(0),
        Some(Some(l)) if (0..=i64::from(i32::MAX)).contains(&l) => Some(l as i32),
        Some(_) => {
            culprits.push(rank::LOCAL_RANK);
            None
        }
    };
    let by_offset = if agent.is_none() {
        match parsed(offset) {
            Some(None) => {
                culprits.push(rank::AGENT_RANK_OFFSET);
                None
            }
            off => {
                let off = off.flatten().unwrap_or(0);
                match global.map(|g| g.checked_add(off)) {
                    Some(Some(sum)) if sum >= 0 => Some((sum, off)),
                    Some(_) => {
                        culprits.extend([rank::RANK, rank::AGENT_RANK_OFFSET]);
                        None
                    }
                    None => None,
                }
            }
        }
    } else {
        None
    };
    if !culprits.is_empty() {
        return Err(culprits);
    }
    let (global, local_rank) = (global.unwrap(), local_rank.unwrap());
    Ok(match agent_rank {
        Some(a) => (a, global, None, local_rank, Method::Direct),
        None => {
            let (sum, off) = by_offset.unwrap();
            (sum, global, Some(off), local_rank, Method::Offset)
        }
    })
}

/// Whether `message` names `var` as a whole word (RANK inside AGENT_RANK does not count).
pub fn names_variable(message: &str, var: &str) -> bool {
    message.match_indices(var).any(|(i, _)| {
        let before = message[..i].chars().next_back();
        let after = message[i + var.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// A command with owned fields, built by `arbitrary`.
#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum OwnedCommand {
    Transfer {
        batch_id: String,
        send: bool,
    },
    RegisterTensors {
        batch_id: String,
        tensors: Vec<(String, Vec<u8>)>,
        bucket_size: Option<i64>,
    },
    InitPair {
        pair_name: String,
        local_name: String,
        expected_world_size: i64,
        remote_name: String,
        mesh_shape_payload: Option<Vec<u8>>,
        placements_payload: Option<Vec<u8>>,
    },
    QueryStatus {
        batch_id: String,
        state_name: String,
    },
    CleanupBatch {
        batch_id: String,
    },
}

impl OwnedCommand {
    pub fn borrow(&self) -> Command<'_> {
        match self {
            OwnedCommand::Transfer { batch_id, send } => Command::Transfer {
                batch_id,
                transfer_type: if *send { TransferKind::Send } else { TransferKind::Recv },
            },
            OwnedCommand::RegisterTensors { batch_id, tensors, bucket_size } => Command::RegisterTensors {
                batch_id,
                tensors: tensors.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect(),
                bucket_size: *bucket_size,
            },
            OwnedCommand::InitPair {
                pair_name,
                local_name,
                expected_world_size,
                remote_name,
                mesh_shape_payload,
                placements_payload,
            } => Command::InitPair {
                pair_name,
                local_name,
                expected_world_size: *expected_world_size,
                remote_name,
                mesh_shape_payload: mesh_shape_payload.as_deref(),
                placements_payload: placements_payload.as_deref(),
            },
            OwnedCommand::QueryStatus { batch_id, state_name } => Command::QueryStatus { batch_id, state_name },
            OwnedCommand::CleanupBatch { batch_id } => Command::CleanupBatch { batch_id },
        }
    }

    /// "type" and the command's own fields in declaration order (docs/protocol.md section 4).
    pub fn expected_fields(&self) -> Vec<(&'static str, Expected)> {
        use Expected::*;
        let s = |v: &str| Str(v.to_string());
        let bin = |v: &Option<Vec<u8>>| v.clone().map_or(Nil, Bin);
        match self {
            OwnedCommand::Transfer { batch_id, send } => vec![
                ("type", s("Transfer")),
                ("batch_id", s(batch_id)),
                ("transfer_type", s(if *send { "send" } else { "recv" })),
            ],
            OwnedCommand::RegisterTensors { batch_id, tensors, bucket_size } => vec![
                ("type", s("RegisterTensors")),
                ("batch_id", s(batch_id)),
                ("tensors", Tensors(tensors.clone())),
                ("bucket_size", bucket_size.map_or(Nil, Int)),
            ],
            OwnedCommand::InitPair {
                pair_name,
                local_name,
                expected_world_size,
                remote_name,
                mesh_shape_payload,
                placements_payload,
            } => vec![
                ("type", s("InitPair")),
                ("pair_name", s(pair_name)),
                ("local_name", s(local_name)),
                ("expected_world_size", Int(*expected_world_size)),
                ("remote_name", s(remote_name)),
                ("mesh_shape_payload", bin(mesh_shape_payload)),
                ("placements_payload", bin(placements_payload)),
            ],
            OwnedCommand::QueryStatus { batch_id, state_name } => {
                vec![("type", s("QueryStatus")), ("batch_id", s(batch_id)), ("state_name", s(state_name))]
            }
            OwnedCommand::CleanupBatch { batch_id } => vec![("type", s("CleanupBatch")), ("batch_id", s(batch_id))],
        }
    }
}

/// What one map value must decode to.
#[derive(Debug, Clone)]
pub enum Expected {
    Str(String),
    Bin(Vec<u8>),
    Nil,
    Int(i64),
    F64(f64),
    Tensors(Vec<(String, Vec<u8>)>),
}

/// Whether `value` is exactly `want` (floats bit for bit, so NaNs and -0.0 count).
pub fn value_is(value: &Value, want: &Expected) -> bool {
    match (want, value) {
        (Expected::Str(s), Value::String(v)) => v.as_str() == Some(s.as_str()),
        (Expected::Bin(b), Value::Binary(v)) => v == b,
        (Expected::Nil, Value::Nil) => true,
        (Expected::Int(i), Value::Integer(v)) => v.as_i64() == Some(*i),
        (Expected::F64(f), Value::F64(v)) => v.to_bits() == f.to_bits(),
        (Expected::Tensors(ts), Value::Array(items)) => {
            items.len() == ts.len()
                && items.iter().zip(ts).all(|(item, (name, payload))| match item {
                    Value::Array(pair) => {
                        pair.len() == 2
                            && value_is(&pair[0], &Expected::Str(name.clone()))
                            && value_is(&pair[1], &Expected::Bin(payload.clone()))
                    }
                    _ => false,
                })
        }
        _ => false,
    }
}
