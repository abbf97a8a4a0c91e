//! Every case of command-vectors.json (tests/data/command-vectors.json: the exact bytes the reference writes, docs/protocol.md section 4) encodes
//! to exactly the bytes the reference's msgspec wrote.

use etb_core::protocol::commands::{Command, TransferKind};
use rmpv::Value;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

use serde_json::Value as J;

fn payload(j: &J) -> Option<Vec<u8>> {
    match j {
        J::Null => None,
        other => Some(unhex(other["bytes_hex"].as_str().unwrap())),
    }
}

#[test]
fn every_vector_encodes_byte_for_byte() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/command-vectors.json")).unwrap();
    let doc: J = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let f = &case["fields"];
        let kind = |s: &str| if s == "send" { TransferKind::Send } else { TransferKind::Recv };
        let (mesh, placements) = match case["type"].as_str().unwrap() {
            "InitPair" => (payload(&f["mesh_shape_payload"]), payload(&f["placements_payload"])),
            _ => (None, None),
        };
        let tensors: Vec<(String, Vec<u8>)> = match case["type"].as_str().unwrap() {
            "RegisterTensors" => f["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t[0].as_str().unwrap().to_owned(), payload(&t[1]).unwrap()))
                .collect(),
            _ => vec![],
        };
        let cmd = match case["type"].as_str().unwrap() {
            "Transfer" => Command::Transfer {
                batch_id: f["batch_id"].as_str().unwrap(),
                transfer_type: kind(f["transfer_type"].as_str().unwrap()),
            },
            "QueryStatus" => Command::QueryStatus {
                batch_id: f["batch_id"].as_str().unwrap(),
                state_name: f["state_name"].as_str().unwrap(),
            },
            "CleanupBatch" => Command::CleanupBatch { batch_id: f["batch_id"].as_str().unwrap() },
            "InitPair" => Command::InitPair {
                pair_name: f["pair_name"].as_str().unwrap(),
                local_name: f["local_name"].as_str().unwrap(),
                expected_world_size: f["expected_world_size"].as_f64().unwrap() as i64,
                remote_name: f["remote_name"].as_str().unwrap(),
                mesh_shape_payload: mesh.as_deref(),
                placements_payload: placements.as_deref(),
            },
            "RegisterTensors" => Command::RegisterTensors {
                batch_id: f["batch_id"].as_str().unwrap(),
                tensors: tensors.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect(),
                bucket_size: match &f["bucket_size"] {
                    J::Null => None,
                    n => Some(n.as_i64().unwrap()),
                },
            },
            other => panic!("unknown type {other}"),
        };
        let timestamp = match &f["timestamp"] {
            J::Null => None,
            n => Some(n.as_f64().unwrap()),
        };
        let bytes = cmd.encode(timestamp, f["semaphore_name"].as_str());
        assert_eq!(hex(&bytes), case["msgpack_hex"].as_str().unwrap(), "case {}", case["name"].as_str().unwrap());
        // And it decodes as a map whose first key is "type".
        let v = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let Value::Map(m) = v else { panic!("not a map") };
        assert_eq!(m[0].0.as_str(), Some("type"));
    }
}

#[test]
fn integers_use_the_smallest_encoding() {
    for (v, want) in
        [(0i64, "00"), (127, "7f"), (128, "cc80"), (65536, "ce00010000"), (-1, "ff"), (-33, "d0df"), (-129, "d1ff7f")]
    {
        let b = Command::RegisterTensors { batch_id: "", tensors: vec![], bucket_size: Some(v) }.encode(None, None);
        let h = hex(&b);
        assert!(h.contains(&format!("ab6275636b65745f73697a65{want}a9")), "{v}: {h}");
    }
}
