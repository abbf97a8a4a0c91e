//! Property tests of the parsers and encoders that take outside input: environment parsing
//! (`rank`), naming results (`naming`), the heartbeat (`state_db`), command encoding
//! (`commands`: decode what we encode and compare) and completion semaphore names.
//!
//! Deterministic and quick: a fixed seed and 2000 cases per property, unless PROPTEST_CASES
//! or PROPTEST_RNG_SEED say otherwise (for longer runs: `PROPTEST_CASES=100000 cargo test
//! --release --test properties`). Nothing is written to disk (no failure persistence).
//! The same properties are fuzzed with libFuzzer by `scripts/fuzz.sh` (fuzz/).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use etb_core::protocol::completion::completion_name;
use etb_core::protocol::naming::AgentPaths;
use etb_core::protocol::rank::{self, parse_integer, Method};
use etb_core::protocol::state_db::parse_heartbeat;
use etha_tensor_bus::ffi::naming::{path_from_buffer, PATH_BUFFER_CAPACITY};
use etha_tensor_bus::ErrorKind;
use proptest::prelude::*;

// The reference models, shared with the fuzz targets.
#[path = "../fuzz/src/models.rs"]
#[allow(dead_code)] // the fuzz targets use the rest
mod models;
use models::{names_variable, parse_integer_model, resolve_model, value_is, Expected, OwnedCommand, WS};
use proptest::test_runner::RngSeed;
use rmpv::Value;

fn config() -> ProptestConfig {
    let d = ProptestConfig::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    ProptestConfig {
        cases: if set("PROPTEST_CASES") { d.cases } else { 2000 },
        rng_seed: if set("PROPTEST_RNG_SEED") { d.rng_seed } else { RngSeed::Fixed(0x4554_4221) },
        failure_persistence: None,
        ..d
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// Bytes drawn mostly from the characters that matter to the integer parser.
fn integerish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = b" \t\n\x0b\x0c\r+-0123456789_.xe\0\xa0\xff".to_vec();
    prop_oneof![prop::collection::vec(prop::sample::select(alphabet), 0..32), prop::collection::vec(any::<u8>(), 0..32),]
}

fn whitespace(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(WS.to_vec()), 0..=max)
}

/// An i64 biased to the edges (0, +-1, the extremes, 32-bit limits) half the time.
fn edgy_i64() -> impl Strategy<Value = i64> {
    let edges = vec![
        0,
        1,
        -1,
        i64::MAX,
        i64::MIN,
        i64::MAX - 1,
        i64::MIN + 1,
        i64::from(i32::MAX),
        i64::from(i32::MAX) + 1,
        i64::from(i32::MIN),
        -2147483649,
    ];
    prop_oneof![any::<i64>(), -50i64..50, prop::sample::select(edges)]
}

/// `v` as text with optional whitespace, an optional `+`, and leading zeros.
fn integer_text() -> impl Strategy<Value = (i64, Vec<u8>)> {
    (edgy_i64(), whitespace(3), whitespace(3), any::<bool>(), 0usize..4).prop_map(|(v, pre, post, plus, zeros)| {
        let mut text = pre;
        if v < 0 {
            text.push(b'-');
        } else if plus {
            text.push(b'+');
        }
        text.extend(std::iter::repeat_n(b'0', zeros));
        text.extend_from_slice(i128::from(v).unsigned_abs().to_string().as_bytes());
        text.extend_from_slice(&post);
        (v, text)
    })
}

/// An environment value: unset, a well-formed integer, or anything at all.
fn env_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        2 => Just(None),
        4 => integer_text().prop_map(|(_, t)| Some(t)),
        2 => integerish_bytes().prop_map(Some),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Some),
    ]
}

/// A string, sometimes long enough for the str16 / str32 encodings.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        2 => "[a-z_/:.]{0,300}",
        1 => (prop::sample::select(vec![31usize, 32, 255, 256, 65535, 65536]), any::<char>())
            .prop_map(|(n, c)| c.to_string().repeat(n / c.len_utf8() + 1)),
    ]
}

/// Payload bytes, sometimes long enough for the bin16 / bin32 encodings.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (prop::sample::select(vec![255usize, 256, 65535, 65536]), any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

/// A float of any class, NaNs with any payload included.
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>(), any::<u64>().prop_map(f64::from_bits)]
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        prop::sample::select(vec![
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            5e-324,
            -5e-324,
            1795856314.2741683
        ]),
        (0.0f64..4e9),
    ]
    .prop_filter("finite", |v| v.is_finite())
}

fn owned_command() -> impl Strategy<Value = OwnedCommand> {
    prop_oneof![
        (text(), any::<bool>()).prop_map(|(batch_id, send)| OwnedCommand::Transfer { batch_id, send }),
        (text(), prop::collection::vec((text(), payload()), 0..6), prop::option::of(edgy_i64())).prop_map(
            |(batch_id, tensors, bucket_size)| OwnedCommand::RegisterTensors { batch_id, tensors, bucket_size }
        ),
        (text(), text(), edgy_i64(), text(), prop::option::of(payload()), prop::option::of(payload())).prop_map(
            |(pair_name, local_name, expected_world_size, remote_name, mesh_shape_payload, placements_payload)| {
                OwnedCommand::InitPair {
                    pair_name,
                    local_name,
                    expected_world_size,
                    remote_name,
                    mesh_shape_payload,
                    placements_payload,
                }
            }
        ),
        (text(), text()).prop_map(|(batch_id, state_name)| OwnedCommand::QueryStatus { batch_id, state_name }),
        text().prop_map(|batch_id| OwnedCommand::CleanupBatch { batch_id }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_integer_agrees_with_the_model(text in integerish_bytes()) {
        prop_assert_eq!(parse_integer(&text), parse_integer_model(&text), "{:?}", String::from_utf8_lossy(&text));
    }

    #[test]
    fn parse_integer_takes_any_bytes(text in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(parse_integer(&text), parse_integer_model(&text));
    }

    #[test]
    fn parse_integer_round_trips((value, text) in integer_text()) {
        prop_assert_eq!(parse_integer(&text), Some(value), "{:?}", String::from_utf8_lossy(&text));
    }

    #[test]
    fn resolve_agrees_with_the_model(vars in [env_value(), env_value(), env_value(), env_value()]) {
        let names = [rank::AGENT_RANK, rank::RANK, rank::AGENT_RANK_OFFSET, rank::LOCAL_RANK];
        let env = |name: &str| {
            names.iter().position(|n| *n == name).and_then(|i| vars[i].clone()).map(OsString::from_vec)
        };
        let got = rank::resolve(&env);
        match (got, resolve_model(&vars)) {
            (Ok(info), Ok((agent_rank, global_rank, rank_offset, local_rank, method))) => {
                prop_assert!(info.agent_rank >= 0);
                prop_assert!(info.local_rank >= 0);
                prop_assert_eq!(info.device(), format!("cuda:{local_rank}"));
                prop_assert_eq!(info.method, if vars[0].is_some() { Method::Direct } else { Method::Offset });
                prop_assert_eq!(
                    (info.agent_rank, info.global_rank, info.rank_offset, info.local_rank, info.method),
                    (agent_rank, global_rank, rank_offset, local_rank, method)
                );
            }
            (Err(e), Err(culprits)) => {
                prop_assert_eq!(e.kind(), ErrorKind::Env);
                prop_assert!(
                    culprits.iter().any(|v| names_variable(e.message(), v)),
                    "message names none of {:?}: {}", culprits, e
                );
            }
            (got, want) => prop_assert!(false, "resolve gave {:?}, the model {:?}", got, want),
        }
    }

    #[test]
    fn path_from_buffer_takes_the_bytes_before_the_first_nul(
        buffer in prop_oneof![
            prop::collection::vec(prop::sample::select(b"\0\0/a\xff".to_vec()), 0..24),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        what in prop::sample::select(vec!["command queue path", "state path"]),
    ) {
        match (path_from_buffer(&buffer, what), buffer.iter().position(|&b| b == 0)) {
            (Ok(path), Some(len)) if len > 0 => prop_assert_eq!(path.as_os_str().as_bytes(), &buffer[..len]),
            (Err(e), first_nul) => {
                prop_assert!(!matches!(first_nul, Some(i) if i > 0), "rejected {:?}: {}", buffer, e);
                prop_assert_eq!(e.kind(), ErrorKind::Naming);
                prop_assert!(e.message().contains(what), "{}", e);
            }
            (Ok(path), _) => prop_assert!(false, "accepted {:?} as {:?}", buffer, path),
        }
    }

    #[test]
    fn validate_accepts_exactly_the_usable_pairs(
        [command_queue, state] in prop::array::uniform2(prop_oneof![
            8 => prop::collection::vec(prop::sample::select(b"/a.\0".to_vec()), 0..6),
            1 => (PATH_BUFFER_CAPACITY - 2..PATH_BUFFER_CAPACITY + 2).prop_map(|n| vec![b'a'; n]),
            1 => prop::collection::vec(any::<u8>(), 0..32),
        ])
    ) {
        let usable = |p: &[u8]| !p.is_empty() && !p.contains(&0) && p.len() < PATH_BUFFER_CAPACITY;
        let want_ok = usable(&command_queue)
            && usable(&state)
            && Path::new(std::ffi::OsStr::from_bytes(&command_queue)) != Path::new(std::ffi::OsStr::from_bytes(&state));
        let paths = AgentPaths {
            command_queue: PathBuf::from(OsString::from_vec(command_queue.clone())),
            state: PathBuf::from(OsString::from_vec(state.clone())),
        };
        match paths.clone().validate() {
            Ok(same) => {
                prop_assert!(want_ok, "accepted {:?}", paths);
                prop_assert_eq!(same, paths);
            }
            Err(e) => {
                prop_assert!(!want_ok, "rejected {:?}: {}", paths, e);
                prop_assert_eq!(e.kind(), ErrorKind::Naming);
            }
        }
    }

    #[test]
    fn parse_heartbeat_gives_only_finite_values(
        raw in prop_oneof![
            prop::collection::vec(prop::sample::select(b"0123456789.-+eE \t\ninfNaIy_,\xff".to_vec()), 0..32),
            prop::collection::vec(any::<u8>(), 0..32),
        ]
    ) {
        if let Some(v) = parse_heartbeat(&raw) {
            prop_assert!(v.is_finite(), "{:?} -> {}", String::from_utf8_lossy(&raw), v);
        }
    }

    #[test]
    fn parse_heartbeat_round_trips_every_finite_float(v in finite_f64(), pre in whitespace(2), post in whitespace(2)) {
        for text in [format!("{v}"), format!("{v:e}"), format!("{v:E}"), format!("{v:?}")] {
            let mut raw = pre.clone();
            raw.extend_from_slice(text.as_bytes());
            raw.extend_from_slice(&post);
            let got = parse_heartbeat(&raw);
            prop_assert_eq!(got.map(f64::to_bits), Some(v.to_bits()), "{:?} -> {:?}", text, got);
        }
    }

    #[test]
    fn commands_decode_to_what_was_encoded(
        command in owned_command(),
        timestamp in prop::option::of(any_f64()),
        semaphore_name in prop::option::of(text()),
    ) {
        let bytes = command.borrow().encode(timestamp, semaphore_name.as_deref());
        let mut rest = bytes.as_slice();
        let value = rmpv::decode::read_value(&mut rest);
        prop_assert!(value.is_ok(), "{:?}", value);
        prop_assert!(rest.is_empty(), "{} bytes after the map", rest.len());
        let entries = match value {
            Ok(Value::Map(entries)) => entries,
            other => return Err(TestCaseError::fail(format!("not a map: {other:?}"))),
        };
        let mut want = command.expected_fields();
        want.push(("timestamp", timestamp.map_or(Expected::Nil, Expected::F64)));
        want.push(("semaphore_name", semaphore_name.map_or(Expected::Nil, Expected::Str)));
        let keys: Vec<Option<&str>> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let want_keys: Vec<Option<&str>> = want.iter().map(|(k, _)| Some(*k)).collect();
        prop_assert_eq!(keys, want_keys);
        for ((key, value), (_, expected)) in entries.iter().zip(&want) {
            prop_assert!(value_is(value, expected), "{}: decoded {:?}, encoded {:?}", key, value, expected);
        }
    }

    #[test]
    fn completion_names_fit_and_keep_contexts_apart(
        kind in prop::sample::select(vec!["register", "register_tensors", "transfer", "query", "cleanup_batch"]),
        context in prop_oneof![
            text(),
            (200usize..400, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        ],
        extra in any::<char>(),
        pid in any::<u32>(),
        unique in any::<u128>(),
    ) {
        let name = completion_name(kind, &context, pid, unique);
        let head = format!("/command_{kind}_");
        let tail = format!("_{pid}_{unique:032x}");
        prop_assert!(name.len() <= 251, "{} bytes: {}", name.len(), name);
        prop_assert!(name.starts_with(&head), "{}", name);
        prop_assert!(name.ends_with(&tail), "{}", name);
        prop_assert_eq!(name.matches('/').count(), 1, "{}", name);
        prop_assert!(std::str::from_utf8(name.as_bytes()).is_ok());
        let sanitized: String = context.chars().map(|c| if c == '/' || c == ':' { '_' } else { c }).collect();
        if head.len() + sanitized.len() + tail.len() <= 251 {
            prop_assert_eq!(&name, &format!("{head}{sanitized}{tail}"));
        }
        // Two contexts that differ (after '/' and ':' become '_') give two names, even when
        // both are cut to the same prefix: one more char at the end, or the last one changed.
        let sanitize = |c: char| if c == '/' || c == ':' { '_' } else { c };
        let longer = format!("{context}{extra}");
        prop_assert_ne!(&name, &completion_name(kind, &longer, pid, unique), "{:?}", longer);
        if let Some(last) = context.chars().next_back() {
            if sanitize(last) != sanitize(extra) {
                let changed = format!("{}{extra}", &context[..context.len() - last.len_utf8()]);
                prop_assert_ne!(&name, &completion_name(kind, &changed, pid, unique), "{:?}", changed);
            }
        }
    }
}
