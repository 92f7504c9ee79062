//! The `/v3` JSON gateway side by side with real etcd 3.4: spawns a fresh tern and a fresh
//! etcd on free loopback ports, sends both the same curl requests (etcd's documented
//! gateway examples: put, range, prefix range, txn, delete, lease grant/time-to-live/
//! revoke, status, malformed and invalid requests, and the streamed watch and lease
//! keep-alive, and the auth flow: user and role setup, enable, authenticate, and calls
//! with and without the token), and compares status codes and JSON bodies (line by line for streams) with
//! the member-specific ids (cluster, member, leader) blanked out.

mod common;
mod http_support;

use serde_json::Value;

use common::TernServer;

/// (path, body) sent to both; every answer is compared.
const REQUESTS: &[(&str, &str)] = &[
    ("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#),
    (
        "/v3/kv/put",
        r#"{"key": "Zm9vMg==", "value": "YmF6", "prev_kv": true}"#,
    ),
    (
        "/v3/kv/put",
        r#"{"key": "Zm9vMg==", "value": "cXV4", "prev_kv": true}"#,
    ),
    ("/v3/kv/range", r#"{"key": "Zm9v"}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "range_end": "Zm9w"}"#),
    (
        "/v3/kv/range",
        r#"{"key": "Zm9v", "range_end": "Zm9w", "keys_only": true, "limit": 1}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key": "Zm9v", "range_end": "Zm9w", "count_only": true}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key": "Zm9v", "range_end": "Zm9w", "sort_order": "DESCEND", "sort_target": "VALUE"}"#,
    ),
    ("/v3/kv/range", r#"{"key": "bm9uZQ=="}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "revision": 1}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "revision": 99}"#),
    ("/v3/kv/range", r#"{"key": ""}"#),
    ("/v3/kv/range", ""),
    ("/v3/kv/range", r#"{"key": "Zm9v", "unknown_field": 1}"#),
    ("/v3beta/kv/range", r#"{"key": "Zm9v"}"#),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"bmV3"}},{"requestRange":{"key":"Zm9v"}}],"failure":[{"requestRange":{"key":"Zm9vMg=="}}]}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"bm9wZQ==","result":"EQUAL"}],"success":[{"requestPut":{"key":"Zm9v","value":"bm9wZQ=="}}],"failure":[{"requestDeleteRange":{"key":"Zm9vMg==","prev_kv":true}}]}"#,
    ),
    (
        "/v3/kv/deleterange",
        r#"{"key": "Zm9v", "range_end": "Zm9w"}"#,
    ),
    ("/v3/kv/compaction", r#"{"revision": 3}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "revision": 2}"#),
    ("/v3/lease/grant", r#"{"TTL": 30, "ID": 7587}"#),
    ("/v3/lease/grant", r#"{"TTL": 30, "ID": 7587}"#),
    (
        "/v3/kv/put",
        r#"{"key": "bGVhc2Vk", "value": "dg==", "lease": 7587}"#,
    ),
    ("/v3/kv/lease/timetolive", r#"{"ID": 7587, "keys": true}"#),
    ("/v3/lease/leases", "{}"),
    ("/v3/kv/lease/revoke", r#"{"ID": 7587}"#),
    ("/v3/lease/revoke", r#"{"ID": 7587}"#),
    ("/v3/kv/range", r#"{"key": "bGVhc2Vk"}"#),
    ("/v3/maintenance/alarm", r#"{"action": "GET"}"#),
    ("/v3/kv/nothing", "{}"),
];

fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    post_as(port, path, body, None)
}

/// `post` with etcd's auth token in the `Authorization` header, when given.
fn post_as(port: u16, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let mut curl = std::process::Command::new("curl");
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: {token}")]);
    }
    let out = curl
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["--data-binary", body])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// Blanks what differs between two members by construction: ids and the leader.
fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                if ["cluster_id", "member_id", "leader"].contains(&name.as_str()) {
                    *field = Value::String("<id>".into());
                } else {
                    normalize(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

#[test]
fn gateway_answers_as_etcd_3_4_does() {
    let tern = TernServer::start();
    let etcd = http_support::Etcd::start();
    let mut differences = Vec::new();
    for (path, body) in REQUESTS {
        let (our_code, ours) = post(tern.client_port, path, body);
        let (their_code, theirs) = post(etcd.client_port, path, body);
        let parsed = |text: &str| {
            serde_json::from_str::<Value>(text).map(|mut v| {
                normalize(&mut v);
                v
            })
        };
        let same = match (parsed(&ours), parsed(&theirs)) {
            (Ok(a), Ok(b)) => a == b,
            // Not JSON (grpc-gateway's plain-text 404): compare as text.
            _ => ours == theirs,
        };
        if our_code != their_code || !same {
            differences.push(format!(
                "POST {path} {body}\n  tern {our_code} {ours}\n  etcd {their_code} {theirs}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

#[test]
fn malformed_json_and_wrong_methods_get_grpc_gateway_errors() {
    let tern = TernServer::start();
    let etcd = http_support::Etcd::start();
    // The texts are Go's and serde's JSON parser errors; the shape and code must agree.
    for body in [r#"{bad"#, r#"{"key": 5}"#, r#"[1,2]"#] {
        let (our_code, ours) = post(tern.client_port, "/v3/kv/range", body);
        let (their_code, theirs) = post(etcd.client_port, "/v3/kv/range", body);
        assert_eq!(our_code, their_code, "{body}: tern {ours}, etcd {theirs}");
        let ours: Value = serde_json::from_str(&ours).unwrap();
        let theirs: Value = serde_json::from_str(&theirs).unwrap();
        assert_eq!(ours["code"], theirs["code"], "{body}");
        assert_eq!(ours["error"], ours["message"]);
    }
    let get = |port: u16| {
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}/v3/kv/range"))
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(get(tern.client_port), get(etcd.client_port));
}

/// Every JSON line of a streamed answer, normalized.
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap_or(Value::String(l.to_string()));
            normalize(&mut v);
            v
        })
        .collect()
}

#[test]
fn streamed_watch_and_lease_keepalive_answer_as_etcd_3_4_does() {
    let tern = TernServer::start();
    let etcd = http_support::Etcd::start();
    for port in [tern.client_port, etcd.client_port] {
        assert_eq!(
            post(port, "/v3/lease/grant", r#"{"TTL": 60, "ID": 4242}"#).0,
            200
        );
    }
    // Keep-alive: one answer per request object in the body, then the stream ends.
    for body in [
        r#"{"ID": 4242}"#,
        r#"{"ID": 4242}{"ID": 4242}"#,
        r#"{"ID": 1}"#,
    ] {
        let (our_code, ours) = post(tern.client_port, "/v3/lease/keepalive", body);
        let (their_code, theirs) = post(etcd.client_port, "/v3/lease/keepalive", body);
        assert_eq!(our_code, their_code, "{body}");
        assert_eq!(lines(&ours), lines(&theirs), "{body}");
    }
    // Watch: the created answer, then each event, until the client hangs up.
    let watch = |port: u16| {
        std::process::Command::new("curl")
            .args(["-sN", "--max-time", "30", "-X", "POST", "--data-binary"])
            .arg(r#"{"create_request": {"key": "d2F0Y2hlZA==", "prev_kv": true}}"#)
            .arg(format!("http://127.0.0.1:{port}/v3/watch"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    use std::io::BufRead as _;
    let mut watchers = [watch(tern.client_port), watch(etcd.client_port)];
    // Each watch is created (its first line read) before the writes it must see.
    let mut readers: Vec<_> = watchers
        .iter_mut()
        .map(|child| std::io::BufReader::new(child.stdout.take().unwrap()))
        .collect();
    let mut created = Vec::new();
    for reader in &mut readers {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        created.push(line);
    }
    for port in [tern.client_port, etcd.client_port] {
        post(
            port,
            "/v3/kv/put",
            r#"{"key": "d2F0Y2hlZA==", "value": "MQ=="}"#,
        );
        post(
            port,
            "/v3/kv/put",
            r#"{"key": "d2F0Y2hlZA==", "value": "Mg=="}"#,
        );
        post(port, "/v3/kv/deleterange", r#"{"key": "d2F0Y2hlZA=="}"#);
    }
    let mut outputs = Vec::new();
    for ((mut reader, mut child), mut text) in readers.into_iter().zip(watchers).zip(created) {
        // The three events, then hang up (curl's --max-time bounds a missing one).
        for _ in 0..3 {
            reader.read_line(&mut text).unwrap();
        }
        let _ = child.kill();
        let _ = child.wait();
        outputs.push(text);
    }
    let (ours, theirs) = (outputs[0].clone(), outputs[1].clone());
    let (ours, theirs) = (lines(&ours), lines(&theirs));
    assert_eq!(ours.len(), 4, "{ours:#?}");
    assert_eq!(ours, theirs);
}

/// etcd's documented gateway auth example: set up root, enable auth, authenticate, then
/// call with the token in `Authorization` and without it; every answer as etcd's, with
/// the token itself blanked (it is random).
#[test]
fn auth_authenticate_and_token_answer_as_etcd_3_4_does() {
    let tern = TernServer::start();
    let etcd = http_support::Etcd::start();
    let token = |port: u16| {
        let (code, body) = post(
            port,
            "/v3/auth/authenticate",
            r#"{"name": "root", "password": "pass"}"#,
        );
        assert_eq!(code, 200, "{body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        value["token"].as_str().unwrap().to_owned()
    };
    let setup: &[(&str, &str)] = &[
        (
            "/v3/auth/user/add",
            r#"{"name": "root", "password": "pass"}"#,
        ),
        ("/v3/auth/role/add", r#"{"name": "root"}"#),
        ("/v3/auth/user/grant", r#"{"user": "root", "role": "root"}"#),
        ("/v3/auth/enable", "{}"),
    ];
    let calls: &[(&str, &str, bool)] = &[
        ("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#, true),
        ("/v3/kv/range", r#"{"key": "Zm9v"}"#, true),
        ("/v3/kv/range", r#"{"key": "Zm9v"}"#, false),
        ("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmF6"}"#, false),
        ("/v3/auth/user/list", "{}", true),
        (
            "/v3/auth/authenticate",
            r#"{"name": "root", "password": "bad"}"#,
            false,
        ),
    ];
    let answers = |port: u16| {
        let mut out = Vec::new();
        for (path, body) in setup {
            out.push(post(port, path, body));
        }
        let token = token(port);
        for (path, body, with_token) in calls {
            out.push(post_as(
                port,
                path,
                body,
                with_token.then_some(token.as_str()),
            ));
        }
        out.into_iter()
            .map(|(code, body)| {
                let mut value: Value =
                    serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
                normalize(&mut value);
                (code, value)
            })
            .collect::<Vec<_>>()
    };
    let (ours, theirs) = (answers(tern.client_port), answers(etcd.client_port));
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "answer {i}: tern {a:?}, etcd {b:?}");
    }
    // The token was needed: the token-less calls were refused by both.
    assert_ne!(
        theirs[setup.len() + 2].0,
        200,
        "{:?}",
        theirs[setup.len() + 2]
    );
}
