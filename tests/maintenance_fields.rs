//! Compares every Maintenance and Cluster response field by field with real etcd 3.4: an
//! independent client (Python grpcio, `tests/clients/maintenance_fields_python.py`) makes
//! the same calls on a fresh etcd and a fresh tern and decodes the raw response bytes by
//! hand; the fields present, the header's fields, the error codes and texts, and the
//! values that must agree (HashKV's hash and compact_revision, Status's raft indexes and
//! leader relation) are compared, ignoring what must differ (IDs, sizes, blobs). The 3.6
//! fields tern adds (HashKV `hash_revision`, Status `dbSizeQuota`) are checked on tern.

mod common;

use std::process::Command;

use common::TernServer;
use serde_json::Value;

fn probe(server: &TernServer) -> Vec<Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/maintenance_fields_python.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(server.client_port.to_string())
        .output()
        .expect("python3 (./test.sh installs grpcio)");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Fields added after etcd 3.4 that tern sends: (call, field number).
const NEWER_FIELDS: [(&str, u64); 3] = [("Status", 12), ("HashKV", 4), ("HashKV rev 5", 4)];

/// A response less what must differ between two servers, and less the newer fields.
fn comparable(call: &Value) -> Value {
    let name = call["call"].as_str().unwrap().to_string();
    let mut out = call.clone();
    let object = out.as_object_mut().unwrap();
    if let Some(fields) = object.get_mut("fields") {
        let kept: Vec<Value> = fields
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !NEWER_FIELDS.contains(&(name.as_str(), f.as_u64().unwrap())))
            .cloned()
            .collect();
        *fields = Value::Array(kept);
    }
    object.remove("header_values");
    let values = object.remove("values").unwrap_or(Value::Null);
    // Values both servers must agree on.
    let agreed = match name.as_str() {
        "HashKV" | "HashKV rev 5" => vec![values["2"].clone(), values["3"].clone()],
        "Status" => {
            let header = &call["header_values"];
            vec![
                Value::Bool(values["4"][0] == header["2"]), // leader == member_id
                Value::Bool(values["5"] == values["7"]),    // raftIndex == raftAppliedIndex
                Value::Bool(values["6"][0] == header["4"]), // raftTerm == header raft_term
                values["8"].clone(),                        // errors
            ]
        }
        "Alarm GET raised" | "Alarm ACTIVATE" => vec![values["2"]
            .clone()
            .as_array()
            .map_or(Value::Null, |alarms| Value::from(alarms.len()))],
        _ => Vec::new(),
    };
    object.insert("agreed".into(), Value::Array(agreed));
    out
}

#[test]
fn maintenance_and_cluster_responses_match_etcd_field_by_field() {
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let etcd = TernServer::start_etcd_listening(&url, &[]);
    let etcd_calls = probe(&etcd);
    let tern = TernServer::start_listening(&url, &[], None);
    let tern_calls = probe(&tern);
    assert_eq!(etcd_calls.len(), tern_calls.len());
    for (e, t) in etcd_calls.iter().zip(&tern_calls) {
        assert_eq!(
            comparable(t),
            comparable(e),
            "tern (left) vs etcd 3.4 (right)"
        );
    }
    // The 3.6 fields: the revision hashed, and the quota in force (the 2 GiB default).
    let by_name = |name: &str| tern_calls.iter().find(|c| c["call"] == name).unwrap();
    let current = by_name("HashKV")["header_values"]["3"].clone();
    assert_eq!(by_name("HashKV")["values"]["4"][0], current);
    assert_eq!(by_name("HashKV rev 5")["values"]["4"][0], 5);
    assert_eq!(by_name("Status")["values"]["12"][0], 2i64 << 30);
}
