//! Reference models and checks shared by the fuzz targets (the same properties as
//! tests/properties.rs, which keeps its own copy: the two crates are independent).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use arbitrary::Arbitrary;

use etb_core::protocol::rank::{self, Method};
use etha_tensor_bus::ErrorKind;
use rmpv::Value;

pub mod models;
pub use models::*;

/// `rank::resolve` on these four values (AGENT_RANK, RANK, AGENT_RANK_OFFSET, LOCAL_RANK;
/// `None` = unset) agrees with the model.
pub fn check_resolve(vars: &[Option<Vec<u8>>; 4]) {
    let env = |name: &str| VARS.iter().position(|n| *n == name).and_then(|i| vars[i].clone()).map(OsString::from_vec);
    match (rank::resolve(&env), resolve_model(vars)) {
        (Ok(info), Ok(want)) => {
            assert!(info.agent_rank >= 0 && info.local_rank >= 0, "{info:?}");
            assert_eq!(info.device(), format!("cuda:{}", info.local_rank));
            assert_eq!(info.method, if vars[0].is_some() { Method::Direct } else { Method::Offset });
            assert_eq!((info.agent_rank, info.global_rank, info.rank_offset, info.local_rank, info.method), want);
        }
        (Err(e), Err(culprits)) => {
            assert_eq!(e.kind(), ErrorKind::Env, "{e}");
            assert!(culprits.iter().any(|v| names_variable(e.message(), v)), "names none of {culprits:?}: {e}");
        }
        (got, want) => panic!("resolve gave {got:?}, the model {want:?} for {vars:?}"),
    }
}

/// `ffi::naming::path_from_buffer`: Ok iff the first NUL is at an index > 0; the path is what
/// precedes it.
pub fn check_path_from_buffer(buffer: &[u8], what: &str) {
    match (etha_tensor_bus::ffi::naming::path_from_buffer(buffer, what), buffer.iter().position(|&b| b == 0)) {
        (Ok(path), Some(len)) if len > 0 => assert_eq!(path.as_os_str().as_bytes(), &buffer[..len]),
        (Err(e), first_nul) => {
            assert!(!matches!(first_nul, Some(i) if i > 0), "rejected {buffer:?}: {e}");
            assert_eq!(e.kind(), ErrorKind::Naming);
            assert!(e.message().contains(what), "{e}");
        }
        (Ok(path), _) => panic!("accepted {buffer:?} as {path:?}"),
    }
}

/// `state_db::parse_heartbeat` gives only finite values.
pub fn check_parse_heartbeat(raw: &[u8]) {
    if let Some(v) = etb_core::protocol::state_db::parse_heartbeat(raw) {
        assert!(v.is_finite(), "{:?} -> {v}", String::from_utf8_lossy(raw));
    }
}

/// Every finite float, printed by Rust in any of its forms, parses back bit for bit.
pub fn check_heartbeat_round_trip(v: f64) {
    if !v.is_finite() {
        return;
    }
    for text in [format!("{v}"), format!("{v:e}"), format!("{v:E}"), format!("{v:?}"), format!(" {v}\n")] {
        let got = etb_core::protocol::state_db::parse_heartbeat(text.as_bytes());
        assert_eq!(got.map(f64::to_bits), Some(v.to_bits()), "{text:?} -> {got:?}");
    }
}

/// One encoded command and its two common fields.
#[derive(Debug, Clone, Arbitrary)]
pub struct Encoded {
    pub command: OwnedCommand,
    pub timestamp: Option<f64>,
    pub semaphore_name: Option<String>,
}

/// Encodes, decodes with rmpv, and compares keys (in order) and values with what was encoded.
pub fn check_command_roundtrip(input: &Encoded) {
    let bytes = input.command.borrow().encode(input.timestamp, input.semaphore_name.as_deref());
    let mut rest = bytes.as_slice();
    let value = rmpv::decode::read_value(&mut rest).expect("the encoding decodes");
    assert!(rest.is_empty(), "{} bytes after the map", rest.len());
    let entries = match value {
        Value::Map(entries) => entries,
        other => panic!("not a map: {other:?}"),
    };
    let mut want = input.command.expected_fields();
    want.push(("timestamp", input.timestamp.map_or(Expected::Nil, Expected::F64)));
    want.push(("semaphore_name", input.semaphore_name.clone().map_or(Expected::Nil, Expected::Str)));
    let keys: Vec<Option<&str>> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<Option<&str>> = want.iter().map(|(k, _)| Some(*k)).collect();
    assert_eq!(keys, want_keys);
    for ((key, value), (_, expected)) in entries.iter().zip(&want) {
        assert!(value_is(value, expected), "{key}: decoded {value:?}, encoded {expected:?}");
    }
}
