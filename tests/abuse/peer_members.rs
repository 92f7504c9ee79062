//! The peer port without peer TLS (part of the abuse suite, `tests/abuse.rs`): a peer
//! that names the cluster and this member correctly but is not a member itself is closed
//! right after its hello, before any raft message of its is read.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::common::stdout;
use super::{etcdctl_get_succeeds, server_with_foo, LIVENESS};

#[test]
fn a_peer_that_is_not_a_member_is_refused_after_its_hello() {
    let (server, _) = server_with_foo();
    let out = server.etcdctl(&["member", "list", "-w", "json"]);
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let cluster_id = list["header"]["cluster_id"].as_u64().unwrap();
    let member_id = list["header"]["member_id"].as_u64().unwrap();
    // hello: cluster id, from (a made-up member), to (this member), then a frame of
    // kind 1 (a raft message) that a member would be allowed to send.
    let mut bytes = 25u32.to_be_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&cluster_id.to_be_bytes());
    bytes.extend_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
    bytes.extend_from_slice(&member_id.to_be_bytes());
    bytes.extend_from_slice(&3u32.to_be_bytes());
    bytes.extend_from_slice(&[1, 0x08, 0x08]); // MsgHeartbeat, nothing else
    let mut sock = TcpStream::connect(("127.0.0.1", server.peer_port)).unwrap();
    sock.write_all(&bytes).unwrap();
    sock.set_read_timeout(Some(LIVENESS)).unwrap();
    let mut buf = [0u8; 64];
    match sock.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a non-member's peer connection was not closed ({other:?})"),
    }
    etcdctl_get_succeeds(&server);
}
