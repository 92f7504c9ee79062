//! Peer transport: raft messages between members over TCP, in tern's own framed protocol
//! (specified in docs/peer-protocol.md; this module implements that document).
//!
//! Each member listens on `--listen-peer-urls` and dials every other member's advertised
//! peer URL. One outbound connection per peer carries that peer's messages, pipelined:
//! every message queued while the previous write was in flight goes out in the next write.
//!
//! Invariants:
//! - every queue is bounded: `PEER_QUEUE_MAX` messages per peer outbound, `INBOX_MAX`
//!   inbound; beyond them messages are dropped, which raft tolerates (it resends), and the
//!   peer is reported unreachable so raft probes it instead of streaming (backpressure);
//! - a frame larger than `FRAME_BYTES_MAX` or than its kind allows
//!   (`frame_payload_bytes_max`, checked on the frame's head), an unknown frame kind, or a
//!   message that does not decode closes that connection only: corrupt bytes never panic,
//!   and a frame's buffer grows with the bytes received, not with the length announced;
//! - a connection first carries a hello naming the cluster; a peer of another cluster is
//!   refused (etcd checks `X-Etcd-Cluster-ID` the same way).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::sync::Arc;

use crate::net::stream::PeerStream;
use crate::net::tls::PeerTls;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use tern_storage::btree::{Export, PAGE_BYTES};

use crate::raft::{codec, snapshot};
use crate::runtime::Wakeup;
use crate::state::envelope::{LeaseForward, LeaseForwardResponse};

/// Messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_MAX: usize = 8192;
/// Messages received and not yet stepped into raft before new ones are dropped.
pub const INBOX_MAX: usize = 65536;
/// Largest frame accepted. Raft messages stay far below it (`max_size_per_msg` is 1 MiB
/// plus one entry of at most `--max-request-bytes`); snapshots travel in chunks.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Bytes of database image per snapshot chunk frame: also what a sender or receiver holds
/// in memory for a snapshot at a time (one chunk being read or written, one on the wire).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(
    SNAPSHOT_CHUNK_BYTES.is_multiple_of(PAGE_BYTES) && SNAPSHOT_CHUNK_BYTES < FRAME_BYTES_MAX
);
/// Largest database image a member accepts (the head declares its size before any chunk).
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;
/// Snapshots a member receives at once; more are refused (the leader retries).
pub const SNAPSHOT_RECEIVES_MAX: usize = 1;
/// How long either side of a snapshot stream waits for the other to make progress (one
/// chunk, or the receiver's fsync and answer) before giving up; raft then retries.
const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between dial attempts to an unreachable peer.
const REDIAL_DELAY: Duration = Duration::from_millis(100);

const FRAME_HELLO: u8 = 0;
const FRAME_RAFT: u8 = 1;
const FRAME_MEMBERS_REQUEST: u8 = 2;
const FRAME_MEMBERS_RESPONSE: u8 = 3;
const FRAME_SNAPSHOT_HEAD: u8 = 4;
const FRAME_SNAPSHOT_CHUNK: u8 = 5;
const FRAME_LEASE_REQUEST: u8 = 6;
const FRAME_LEASE_RESPONSE: u8 = 7;
const FRAME_SNAPSHOT_END: u8 = 8;
const FRAME_SNAPSHOT_STATUS: u8 = 9;
/// Bound on forwarded lease requests waiting for the node to take them.
pub const LEASE_REQUESTS_MAX: usize = 16 * 1024;
/// How long a follower waits for the leader's answer to a forwarded lease request.
const LEASE_FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// A forwarded lease request and where its answer goes.
pub type LeaseRequest = (LeaseForward, oneshot::Sender<LeaseForwardResponse>);
type LeaseRequests = Rc<RefCell<Vec<LeaseRequest>>>;
/// Pins the database image a MsgSnapshot carries (`StateMachine::export_db`).
pub type ImageSource = Rc<dyn Fn() -> Result<Export, String>>;
const HELLO_BYTES: usize = 24;

/// What happened to messages, for the node to tell raft.
pub enum Report {
    Unreachable(u64),
    Snapshot { to: u64, ok: bool },
}

struct PeerLink {
    id: u64,
    urls: RefCell<Vec<String>>,
    queue: RefCell<VecDeque<Message>>,
    wake: Wakeup,
    closed: Cell<bool>,
}

/// A member's answer to a joining member (frame kind 3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MembersResponse {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<crate::membership::cluster::MemberRecord>,
}

pub struct Transport {
    /// The encoded `MembersResponse` this member gives joiners (kept current by the node).
    pub members_answer: Rc<RefCell<Vec<u8>>>,
    member_id: u64,
    cluster_id: Rc<Cell<u64>>,
    peers: HashMap<u64, Rc<PeerLink>>,
    inbox: Rc<RefCell<VecDeque<Message>>>,
    reports: Rc<RefCell<Vec<Report>>>,
    node_wake: Rc<Wakeup>,
    lease_requests: LeaseRequests,
    /// Where received database images go (`member/snap`); unset, snapshots are refused.
    snapshot_dir: Option<std::path::PathBuf>,
    /// Snapshots being received now (bounded by `SNAPSHOT_RECEIVES_MAX`).
    receiving: Rc<Cell<usize>>,
    image_source: Option<ImageSource>,
    /// The peer listening sockets `serve` accepts on, for `stop_listening`.
    listener_fds: Vec<std::os::fd::OwnedFd>,
    /// Set by `stop_listening`: accept errors after it end the accept loops.
    stopped_listening: Rc<Cell<bool>>,
    /// Peer TLS: every accepted connection handshakes; https:// peer URLs are dialled
    /// with it.
    tls: Option<Arc<PeerTls>>,
    /// The members whose connections are accepted, with the addresses their peer URLs
    /// name (see [`Admitted`]).
    admitted: Rc<RefCell<HashMap<u64, Admitted>>>,
}

/// Where a member's peer connections may come from, when peer TLS is off (with TLS the
/// certificate says who dials): the IP addresses its advertised peer URLs name, or None
/// when one of them names a host (not resolved here: the member id is still checked).
type Admitted = Option<Vec<IpAddr>>;

/// The addresses `urls` name, without resolving anything (see [`Admitted`]).
fn admitted_addresses(urls: &[String]) -> Admitted {
    let mut ips = Vec::new();
    for url in urls {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let host_port = rest.split('/').next().unwrap_or("");
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            ips.push(addr.ip());
            continue;
        }
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        if host.eq_ignore_ascii_case("localhost") {
            ips.push(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            ips.push(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
            continue;
        }
        return None;
    }
    Some(ips)
}

/// `http://host:port` → a socket address.
pub fn resolve(url: &str) -> Option<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next()?;
    host_port.to_socket_addrs().ok()?.next()
}

/// A peer URL etcd would accept: `http://` or `https://`, then `host:port` and no path.
pub fn resolve_checked(url: &str) -> Option<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    if rest.contains('/') && !rest.ends_with('/') {
        return None;
    }
    resolve(url)
}

/// Bytes before a frame's payload: its length (u32 BE) and kind.
const FRAME_HEAD_BYTES: u64 = 5;

fn frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Payload bytes a frame of `kind` may carry (docs/peer-protocol.md); None for an unknown
/// kind. The cap is checked on the frame's head, before any of its payload is read, so
/// a peer that announces a frame larger than its kind ever needs is cut off at once.
fn frame_payload_bytes_max(kind: u8) -> Option<usize> {
    Some(match kind {
        FRAME_HELLO => HELLO_BYTES,
        FRAME_RAFT => FRAME_BYTES_MAX - 1,
        FRAME_SNAPSHOT_CHUNK => SNAPSHOT_CHUNK_BYTES,
        FRAME_MEMBERS_RESPONSE | FRAME_SNAPSHOT_HEAD => SMALL_FRAME_BYTES_MAX,
        FRAME_MEMBERS_REQUEST
        | FRAME_LEASE_REQUEST
        | FRAME_LEASE_RESPONSE
        | FRAME_SNAPSHOT_END
        | FRAME_SNAPSHOT_STATUS => CONTROL_FRAME_BYTES_MAX,
        _ => return None,
    })
}

/// Member tables and snapshot heads (a MsgSnapshot whose data is the small membership
/// record, and the image length): far below this even for large clusters.
const SMALL_FRAME_BYTES_MAX: usize = 1 << 20;
/// Members requests, lease requests and responses, snapshot end and status: one small
/// prost message or a few integers.
const CONTROL_FRAME_BYTES_MAX: usize = 64 << 10;
/// A frame's payload is read in steps of at most this, its buffer growing as bytes
/// arrive: memory follows what the peer has actually sent, not what it announced.
const FRAME_READ_STEP_BYTES: usize = 256 << 10;

/// The host of a peer URL (`https://host:port` → `host`), for TLS server-name checks.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Connects to the first resolvable URL of `urls`: plain TCP for http://, TLS with the
/// peer client config for https:// (refused when peer TLS is not configured, never sent in
/// the clear). `tune` runs on the TCP socket before any handshake.
async fn dial(
    urls: &[String],
    tls: Option<&PeerTls>,
    tune: impl FnOnce(&TcpStream),
) -> Result<PeerStream, String> {
    let (url, addr) = urls
        .iter()
        .find_map(|u| resolve(u).map(|a| (u, a)))
        .ok_or("no resolvable peer URL")?;
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    tune(&stream);
    if !url.starts_with("https://") {
        return Ok(PeerStream::Tcp(stream));
    }
    let tls = tls.ok_or_else(|| format!("{url}: https:// peer URL without peer TLS configured"))?;
    let name = rustls::pki_types::ServerName::try_from(url_host(url).to_owned())
        .map_err(|e| format!("{url}: {e}"))?;
    // The current config: rotated certificates apply from the next dial on.
    futures_rustls::TlsConnector::from(tls.client.current())
        .connect(name, stream)
        .await
        .map(|s| PeerStream::Dialled(Box::new(s)))
        .map_err(|e| format!("{url}: tls: {e}"))
}

async fn read_frame<S: futures_lite::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    stream
        .read_exact(&mut head[..4])
        .await
        .map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        return Err(format!("frame length {len} out of range"));
    }
    stream
        .read_exact(&mut head[4..])
        .await
        .map_err(|e| e.to_string())?;
    let kind = head[4];
    let payload_len = len - 1;
    match frame_payload_bytes_max(kind) {
        None => return Err(format!("unknown frame kind {kind}")),
        Some(max) if payload_len > max => {
            return Err(format!(
                "frame of kind {kind} carries {payload_len} bytes, more than its {max}"
            ))
        }
        Some(_) => {}
    }
    let mut body = Vec::with_capacity(payload_len.min(FRAME_READ_STEP_BYTES));
    while body.len() < payload_len {
        let filled = body.len();
        let step = (payload_len - filled).min(FRAME_READ_STEP_BYTES);
        body.resize(filled + step, 0);
        stream
            .read_exact(&mut body[filled..])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((kind, body))
}

impl Transport {
    pub fn new(
        member_id: u64,
        cluster_id: u64,
        node_wake: Rc<Wakeup>,
        tls: Option<Arc<PeerTls>>,
    ) -> Transport {
        Transport {
            members_answer: Rc::new(RefCell::new(Vec::new())),
            member_id,
            cluster_id: Rc::new(Cell::new(cluster_id)),
            peers: HashMap::new(),
            inbox: Rc::new(RefCell::new(VecDeque::new())),
            reports: Rc::new(RefCell::new(Vec::new())),
            node_wake,
            lease_requests: Rc::new(RefCell::new(Vec::new())),
            snapshot_dir: None,
            receiving: Rc::new(Cell::new(0)),
            image_source: None,
            listener_fds: Vec::new(),
            stopped_listening: Rc::new(Cell::new(false)),
            tls,
            admitted: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    /// Where received snapshot database images are written (before `serve`).
    pub fn set_snapshot_dir(&mut self, dir: std::path::PathBuf) {
        self.snapshot_dir = Some(dir);
    }

    /// What a MsgSnapshot sends: a pinned image of the database.
    pub fn set_image_source(&mut self, source: ImageSource) {
        self.image_source = Some(source);
    }

    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.cluster_id.set(cluster_id);
    }

    /// Starts accepting peer connections on `listeners`.
    pub fn serve(&mut self, listeners: Vec<std::net::TcpListener>) -> Result<(), String> {
        use std::os::fd::{FromRawFd as _, IntoRawFd as _};
        for listener in listeners {
            let kept = listener
                .try_clone()
                .map_err(|e| format!("cannot keep the peer listener: {e}"))?;
            self.listener_fds.push(kept.into());
            // Safety: the fd comes from a bound, listening std listener whose ownership
            // `into_raw_fd` gives up, so the glommio listener is its only owner.
            let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
            let stopped = self.stopped_listening.clone();
            let inbox = self.inbox.clone();
            let wake = self.node_wake.clone();
            let cluster_id = self.cluster_id.clone();
            let me = self.member_id;
            let answer = self.members_answer.clone();
            let leases = self.lease_requests.clone();
            let snapshot_dir = self.snapshot_dir.clone();
            let receiving = self.receiving.clone();
            let tls = self.tls.clone();
            let admitted = self.admitted.clone();
            glommio::spawn_local(async move {
                // Peer connections end with the process; handshakes end by their timeout.
                let never = crate::http2::ShutdownSignal::new();
                loop {
                    let stream = match listener.accept().await {
                        Ok(stream) => stream,
                        // `stop_listening` shut the socket down: every accept fails now.
                        Err(_) if stopped.get() => break,
                        Err(_) => continue,
                    };
                    let inbox = inbox.clone();
                    let wake = wake.clone();
                    let cluster_id = cluster_id.clone();
                    let answer = answer.clone();
                    let leases = leases.clone();
                    let snapshot_dir = snapshot_dir.clone();
                    let receiving = receiving.clone();
                    let tls = tls.clone();
                    let never = never.clone();
                    // Without TLS, only members are served (see `Admitted`).
                    let admitted = tls.is_none().then(|| admitted.clone());
                    glommio::spawn_local(async move {
                        let _ = stream.set_nodelay(true);
                        let remote = stream.peer_addr().ok().map(|a| a.ip());
                        let stream = match tls {
                            None => PeerStream::Tcp(stream),
                            Some(tls) => {
                                let remote_addr = stream.peer_addr().ok();
                                let remote = remote_addr.map(|a| a.to_string()).unwrap_or_default();
                                let handshake = crate::net::listener::handshake(
                                    stream,
                                    &tls.server,
                                    &remote,
                                    &never,
                                );
                                let Some(stream) = handshake.await else {
                                    return;
                                };
                                if !tls.skip_client_san_verify
                                    && !crate::net::listener::san_allows(&stream, remote_addr).await
                                {
                                    return;
                                }
                                PeerStream::Accepted(stream)
                            }
                        };
                        let shared = Inbound {
                            inbox,
                            wake,
                            answer,
                            leases,
                            snapshot_dir,
                            receiving,
                            admitted,
                            remote,
                        };
                        if let Err(e) = inbound(stream, me, cluster_id, shared).await {
                            crate::debug!("peer connection closed", "reason" => e);
                        }
                    })
                    .detach();
                }
            })
            .detach();
        }
        Ok(())
    }

    /// Takes the peer listeners out of LISTEN now, as the process stops, so that a member
    /// restarted at once can bind the port (SO_REUSEADDR allows that beside a socket that
    /// no longer listens, not beside a listening one). Closing the fd is not enough: the
    /// accept pending in io_uring holds the socket open until the ring is torn down, which
    /// the kernel finishes only some time after the process has exited. shutdown(2) acts on
    /// the socket itself and fails that accept.
    pub fn stop_listening(&self) {
        self.stopped_listening.set(true);
        use std::os::fd::AsRawFd as _;
        for fd in &self.listener_fds {
            // Safety: shutdown(2) on a socket fd we own (a dup of the listener's).
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Adds a peer (or updates its URLs) and starts dialling it.
    pub fn set_peer(&mut self, id: u64, urls: Vec<String>) {
        if id == self.member_id {
            return;
        }
        self.admitted
            .borrow_mut()
            .insert(id, admitted_addresses(&urls));
        if let Some(link) = self.peers.get(&id) {
            *link.urls.borrow_mut() = urls;
            return;
        }
        let link = Rc::new(PeerLink {
            id,
            urls: RefCell::new(urls),
            queue: RefCell::new(VecDeque::new()),
            wake: Wakeup::default(),
            closed: Cell::new(false),
        });
        self.peers.insert(id, link.clone());
        let hello = self.hello(id);
        let reports = self.reports.clone();
        let node_wake = self.node_wake.clone();
        glommio::spawn_local(outbound(link, hello, reports, node_wake, self.tls.clone())).detach();
    }

    pub fn remove_peer(&mut self, id: u64) {
        self.admitted.borrow_mut().remove(&id);
        if let Some(link) = self.peers.remove(&id) {
            link.closed.set(true);
            link.wake.wake();
        }
    }

    fn hello(&self, to: u64) -> Vec<u8> {
        let mut payload = Vec::with_capacity(HELLO_BYTES);
        payload.extend_from_slice(&self.cluster_id.get().to_be_bytes());
        payload.extend_from_slice(&self.member_id.to_be_bytes());
        payload.extend_from_slice(&to.to_be_bytes());
        let mut out = Vec::new();
        frame(FRAME_HELLO, &payload, &mut out);
        out
    }

    /// Queues messages for their peers (never blocks).
    pub fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            let Some(link) = self.peers.get(&m.to) else {
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // A snapshot streams on a connection of its own, in chunks, so that the
                // peer's message stream (heartbeats, appends) is not stuck behind it.
                let hello = self.hello(m.to);
                let urls = link.urls.borrow().clone();
                let tls = self.tls.clone();
                let reports = self.reports.clone();
                let node_wake = self.node_wake.clone();
                // Pinned now, so the image holds at least what the local snapshot does.
                let image = match &self.image_source {
                    Some(source) => source(),
                    None => Err("this member cannot export its database".to_string()),
                };
                glommio::spawn_local(async move {
                    let to = m.to;
                    let started = std::time::Instant::now();
                    let ok = match image {
                        Err(e) => {
                            crate::warn!("cannot send snapshot", "remote-peer-id" => format!("{to:x}"), "error" => e);
                            false
                        }
                        Ok(image) => match stream_snapshot(urls, tls, hello, m, image).await {
                            Ok(()) => {
                                crate::metrics::observe_seconds(
                                    &crate::metrics::STATE.backend_snapshot,
                                    &crate::metrics::SNAPSHOT_SECONDS_BUCKETS,
                                    started.elapsed(),
                                );
                                true
                            }
                            Err(e) => {
                                crate::warn!("cannot send snapshot", "remote-peer-id" => format!("{to:x}"), "error" => e);
                                false
                            }
                        },
                    };
                    reports.borrow_mut().push(Report::Snapshot { to, ok });
                    node_wake.wake();
                })
                .detach();
                continue;
            }
            let mut queue = link.queue.borrow_mut();
            if queue.len() >= PEER_QUEUE_MAX {
                let to = m.to;
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.reports
                        .borrow_mut()
                        .push(Report::Snapshot { to, ok: false });
                }
                self.reports.borrow_mut().push(Report::Unreachable(to));
                continue;
            }
            queue.push_back(m);
            drop(queue);
            link.wake.wake();
        }
    }

    /// Messages received from peers since the last call.
    pub fn take_inbox(&self) -> Vec<Message> {
        self.inbox.borrow_mut().drain(..).collect()
    }

    /// Puts messages taken from the inbox back at its front, in order (the node defers
    /// them to a later ready).
    pub fn return_to_inbox(&self, messages: Vec<Message>) {
        let mut inbox = self.inbox.borrow_mut();
        for m in messages.into_iter().rev() {
            inbox.push_front(m);
        }
    }

    /// Lease requests followers forwarded since the last call (the node answers them).
    pub fn take_lease_requests(&self) -> Vec<LeaseRequest> {
        std::mem::take(&mut *self.lease_requests.borrow_mut())
    }

    pub fn take_reports(&self) -> Vec<Report> {
        std::mem::take(&mut *self.reports.borrow_mut())
    }
}

/// What an accepted connection hands to the node.
struct Inbound {
    inbox: Rc<RefCell<VecDeque<Message>>>,
    wake: Rc<Wakeup>,
    answer: Rc<RefCell<Vec<u8>>>,
    leases: LeaseRequests,
    snapshot_dir: Option<std::path::PathBuf>,
    receiving: Rc<Cell<usize>>,
    /// The members admitted (None with peer TLS), and where this connection comes from.
    admitted: Option<Rc<RefCell<HashMap<u64, Admitted>>>>,
    remote: Option<IpAddr>,
}

async fn inbound(
    mut stream: PeerStream,
    me: u64,
    cluster_id: Rc<Cell<u64>>,
    shared: Inbound,
) -> Result<(), String> {
    let Inbound {
        inbox,
        wake,
        answer,
        leases,
        snapshot_dir,
        receiving,
        admitted,
        remote,
    } = shared;
    let (kind, hello) = read_frame(&mut stream).await?;
    if kind != FRAME_HELLO || hello.len() != HELLO_BYTES {
        return Err("connection does not start with a hello".into());
    }
    let their_cluster = u64::from_be_bytes(hello[0..8].try_into().expect("8 bytes"));
    if their_cluster == 0 {
        // A joining member that does not know the cluster yet may only ask who is in it.
        let (kind, _) = read_frame(&mut stream).await?;
        if kind != FRAME_MEMBERS_REQUEST {
            return Err("a joining member sent something other than a members request".into());
        }
        let mut out = Vec::new();
        let payload = answer.borrow().clone();
        frame(FRAME_MEMBERS_RESPONSE, &payload, &mut out);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let from = u64::from_be_bytes(hello[8..16].try_into().expect("8 bytes"));
    let to = u64::from_be_bytes(hello[16..24].try_into().expect("8 bytes"));
    if their_cluster != cluster_id.get() && cluster_id.get() != 0 {
        return Err(format!(
            "peer of cluster {their_cluster:x} refused (local cluster {:x})",
            cluster_id.get()
        ));
    }
    if to != me {
        return Err(format!("peer dialled member {to:x}, this is {me:x}"));
    }
    if let Some(admitted) = admitted {
        match admitted.borrow().get(&from) {
            None => return Err(format!("{from:x} is not a member of this cluster")),
            Some(Some(ips)) if !remote.is_some_and(|ip| ips.contains(&ip)) => {
                return Err(format!(
                    "member {from:x} connected from {remote:?}, not from its peer URLs"
                ))
            }
            Some(_) => {}
        }
    }
    loop {
        let (kind, payload) = read_frame(&mut stream).await?;
        crate::metrics::peer(from)
            .received_bytes
            .add(payload.len() as u64 + FRAME_HEAD_BYTES, false);
        let m = match kind {
            FRAME_RAFT => {
                let m = codec::decode_message(&payload)
                    .map_err(|e| format!("bad raft message: {e}"))?;
                if m.get_msg_type() == MessageType::MsgHeartbeatResponse {
                    crate::metrics::peer(from).heartbeat_answered();
                }
                m
            }
            FRAME_LEASE_REQUEST => {
                // A follower's forwarded Renew/TimeToLive: one request, one response, per
                // connection (docs/peer-protocol.md, "Lease forwarding").
                use prost::Message as _;
                let request = LeaseForward::decode(&payload[..])
                    .map_err(|e| format!("bad lease request: {e}"))?;
                let (tx, rx) = oneshot::channel();
                {
                    let mut queue = leases.borrow_mut();
                    if queue.len() >= LEASE_REQUESTS_MAX {
                        return Err("too many forwarded lease requests".into());
                    }
                    queue.push((request, tx));
                }
                wake.wake();
                let response = rx.await.map_err(|_| "lease request dropped".to_string())?;
                let mut out = Vec::new();
                frame(FRAME_LEASE_RESPONSE, &response.encode_to_vec(), &mut out);
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
                stream.flush().await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            FRAME_SNAPSHOT_HEAD => {
                // A snapshot connection carries one snapshot, answered by one status
                // frame: empty once the image is durable here (then raft gets the
                // message), else why it was refused.
                let Some(dir) = &snapshot_dir else {
                    return Err("this member cannot receive snapshots".into());
                };
                let result = if receiving.get() >= SNAPSHOT_RECEIVES_MAX {
                    Err("another snapshot is being received".to_string())
                } else {
                    receiving.set(receiving.get() + 1);
                    let result = receive_snapshot(&mut stream, &payload, dir).await;
                    receiving.set(receiving.get() - 1);
                    result
                };
                let status = match &result {
                    Ok(_) => String::new(),
                    Err(e) => {
                        crate::warn!("rejected a snapshot", "error" => e.as_str());
                        e.clone()
                    }
                };
                let mut out = Vec::new();
                frame(FRAME_SNAPSHOT_STATUS, status.as_bytes(), &mut out);
                let _ = stream.write_all(&out).await;
                let _ = stream.flush().await;
                let m = result?;
                inbox.borrow_mut().push_back(m);
                wake.wake();
                return Ok(());
            }
            _ => return Err(format!("unknown frame kind {kind}")),
        };
        let mut q = inbox.borrow_mut();
        if q.len() < INBOX_MAX {
            q.push_back(m);
        }
        drop(q);
        wake.wake();
    }
}

async fn outbound(
    link: Rc<PeerLink>,
    hello: Vec<u8>,
    reports: Rc<RefCell<Vec<Report>>>,
    node_wake: Rc<Wakeup>,
    tls: Option<Arc<PeerTls>>,
) {
    let mut failures = 0u32;
    while !link.closed.get() {
        let urls = link.urls.borrow().clone();
        let dialled = glommio::timer::timeout(Duration::from_secs(1), async {
            Ok(dial(&urls, tls.as_deref(), |_| {}).await)
        })
        .await;
        let stream = match dialled {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                if failures == 0 {
                    crate::debug!("cannot dial peer", "remote-peer-id" => format!("{:x}", link.id), "error" => e);
                }
                None
            }
            Err(_) => None,
        };
        let Some(mut stream) = stream else {
            // Raft learns the peer is down (it stops pipelining to it); queued messages
            // are dropped, raft resends what matters.
            failures += 1;
            if failures == 1 || failures.is_multiple_of(50) {
                crate::debug!("cannot reach peer", "remote-peer-id" => format!("{:x}", link.id));
            }
            let dropped: Vec<Message> = link.queue.borrow_mut().drain(..).collect();
            {
                let mut r = reports.borrow_mut();
                r.push(Report::Unreachable(link.id));
                for m in dropped {
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        r.push(Report::Snapshot {
                            to: link.id,
                            ok: false,
                        });
                    }
                }
            }
            node_wake.wake();
            glommio::timer::sleep(REDIAL_DELAY).await;
            continue;
        };
        failures = 0;
        if stream.write_all(&hello).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        loop {
            while link.queue.borrow().is_empty() && !link.closed.get() {
                link.wake.wait().await;
            }
            if link.closed.get() {
                return;
            }
            buf.clear();
            let batch: Vec<Message> = link.queue.borrow_mut().drain(..).collect();
            let mut snapshots = 0;
            for m in &batch {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    snapshots += 1;
                }
                match m.write_to_bytes() {
                    Ok(bytes) => frame(FRAME_RAFT, &bytes, &mut buf),
                    Err(e) => {
                        crate::error!("cannot encode a raft message", "error" => e.to_string())
                    }
                }
            }
            let ok = stream.write_all(&buf).await.is_ok() && stream.flush().await.is_ok();
            let counted = crate::metrics::peer(link.id);
            if ok {
                counted.sent_bytes.add(buf.len() as u64, false);
                if batch
                    .iter()
                    .any(|m| m.get_msg_type() == MessageType::MsgHeartbeat)
                {
                    counted.heartbeat_sent();
                }
            } else {
                counted.sent_failures.add(1, false);
            }
            if snapshots > 0 {
                let mut r = reports.borrow_mut();
                for _ in 0..snapshots {
                    r.push(Report::Snapshot { to: link.id, ok });
                }
                node_wake.wake();
            }
            if !ok {
                reports.borrow_mut().push(Report::Unreachable(link.id));
                break;
            }
        }
    }
}

/// `--initial-cluster-state existing`: asks the members at `peer_urls` who is in the
/// cluster (etcd's `GetClusterFromRemotePeers`). The first member that answers wins.
pub async fn fetch_members(
    peer_urls: &[String],
    tls: Option<&PeerTls>,
) -> Result<MembersResponse, String> {
    use prost::Message as _;
    let mut errors = Vec::new();
    for url in peer_urls {
        if resolve(url).is_none() {
            continue;
        }
        let attempt = async {
            let mut stream = dial(std::slice::from_ref(url), tls, |_| {}).await?;
            let mut out = Vec::new();
            frame(FRAME_HELLO, &[0u8; HELLO_BYTES], &mut out);
            frame(FRAME_MEMBERS_REQUEST, &[], &mut out);
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            // A TLS stream may hold ciphertext until flushed.
            stream.flush().await.map_err(|e| e.to_string())?;
            let (kind, payload) = read_frame(&mut stream).await?;
            if kind != FRAME_MEMBERS_RESPONSE {
                return Err(format!("unexpected frame kind {kind}"));
            }
            MembersResponse::decode(&payload[..]).map_err(|e| e.to_string())
        };
        match glommio::timer::timeout(Duration::from_secs(2), async {
            Ok(attempt.await.map_err(std::io::Error::other))
        })
        .await
        {
            Ok(Ok(answer)) if answer.cluster_id != 0 => return Ok(answer),
            Ok(Ok(_)) => errors.push(format!("{url}: member has no cluster yet")),
            Ok(Err(e)) => errors.push(format!("{url}: {e}")),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(format!(
        "could not retrieve cluster information from the given URLs ({})",
        errors.join("; ")
    ))
}

/// Forwards one lease request to the leader at `urls` on a connection of its own; `hello`
/// is (cluster id, this member, the leader).
pub async fn forward_lease(
    urls: &[String],
    hello: (u64, u64, u64),
    request: &LeaseForward,
    tls: Option<&PeerTls>,
) -> Result<LeaseForwardResponse, String> {
    use prost::Message as _;
    if !urls.iter().any(|u| resolve(u).is_some()) {
        return Err("the leader has no resolvable peer URL".into());
    }
    let mut out = Vec::new();
    let mut payload = Vec::with_capacity(HELLO_BYTES);
    payload.extend_from_slice(&hello.0.to_be_bytes());
    payload.extend_from_slice(&hello.1.to_be_bytes());
    payload.extend_from_slice(&hello.2.to_be_bytes());
    frame(FRAME_HELLO, &payload, &mut out);
    frame(FRAME_LEASE_REQUEST, &request.encode_to_vec(), &mut out);
    let attempt = async {
        let mut stream = dial(urls, tls, |_| {}).await?;
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let (kind, payload) = read_frame(&mut stream).await?;
        if kind != FRAME_LEASE_RESPONSE {
            return Err(format!("unexpected frame kind {kind}"));
        }
        LeaseForwardResponse::decode(&payload[..]).map_err(|e| e.to_string())
    };
    match glommio::timer::timeout(LEASE_FORWARD_TIMEOUT, async {
        Ok(attempt.await.map_err(std::io::Error::other))
    })
    .await
    {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends one MsgSnapshot (docs/peer-protocol.md, "Snapshot streaming"): a head frame (the
/// message, whose snapshot data is the small membership record, then the image's length as
/// u64 BE), the database image in chunk frames read off the executor one at a time, an end
/// frame with the image's CRC-32C; then waits for the receiver's status frame, so that "sent"
/// means "durable on the follower" when raft is told.
async fn stream_snapshot(
    urls: Vec<String>,
    tls: Option<Arc<PeerTls>>,
    hello: Vec<u8>,
    m: Message,
    image: Export,
) -> Result<(), String> {
    let image_bytes = image.image_bytes();
    let mut stream = dial(&urls, tls.as_deref(), |tcp| {
        let _ = tcp.set_write_timeout(Some(SNAPSHOT_STALL_TIMEOUT));
        let _ = tcp.set_read_timeout(Some(SNAPSHOT_STALL_TIMEOUT));
    })
    .await?;
    let mut head = m.write_to_bytes().map_err(|e| e.to_string())?;
    head.extend_from_slice(&image_bytes.to_be_bytes());
    let mut out = hello;
    frame(FRAME_SNAPSHOT_HEAD, &head, &mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut crc = 0u32;
    let mut sent = 0u64;
    let mut image = Some(image);
    loop {
        let mut export = image.take().expect("returned by the last read");
        let (export, chunk) = snapshot::blocking(move || {
            let chunk = export.read_chunk((SNAPSHOT_CHUNK_BYTES / PAGE_BYTES) as u64);
            (export, chunk)
        })
        .await;
        image = Some(export);
        let Some(chunk) = chunk.map_err(|e| format!("cannot read the database image: {e}"))? else {
            break;
        };
        crc = crc32c::crc32c_append(crc, &chunk);
        sent += chunk.len() as u64;
        let mut header = ((chunk.len() + 1) as u32).to_be_bytes().to_vec();
        header.push(FRAME_SNAPSHOT_CHUNK);
        stream.write_all(&header).await.map_err(|e| e.to_string())?;
        stream.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    if sent != image_bytes {
        return Err(format!("the image had {sent} bytes, not {image_bytes}"));
    }
    out.clear();
    frame(FRAME_SNAPSHOT_END, &crc.to_be_bytes(), &mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let (kind, status) = read_frame(&mut stream).await?;
    if kind != FRAME_SNAPSHOT_STATUS {
        return Err(format!("unexpected frame kind {kind} after a snapshot"));
    }
    if !status.is_empty() {
        return Err(format!(
            "the follower refused it: {}",
            String::from_utf8_lossy(&status)
        ));
    }
    Ok(())
}

/// Receives a streamed snapshot after its head frame: the database image goes to a
/// temporary file in `dir` chunk by chunk (written on the blocking pool), is checked against
/// the declared length and CRC, fsynced and renamed to `<index>.snap.db`; only then is the
/// MsgSnapshot returned for raft. Anything wrong removes the temporary file.
async fn receive_snapshot(
    stream: &mut PeerStream,
    head: &[u8],
    dir: &std::path::Path,
) -> Result<Message, String> {
    if head.len() < 8 {
        return Err("snapshot head too short".into());
    }
    let (message, len) = head.split_at(head.len() - 8);
    let total = u64::from_be_bytes(len.try_into().expect("8 bytes"));
    if total > SNAPSHOT_BYTES_MAX || !total.is_multiple_of(PAGE_BYTES as u64) || total == 0 {
        return Err(format!(
            "snapshot image of {total} bytes is not a whole number of pages up to {SNAPSHOT_BYTES_MAX}"
        ));
    }
    let m = codec::decode_message(message).map_err(|e| format!("bad snapshot head: {e}"))?;
    if m.get_msg_type() != MessageType::MsgSnapshot {
        return Err("snapshot head does not carry a MsgSnapshot".into());
    }
    let raft_index = m.get_snapshot().get_metadata().index;
    let _ = stream.tcp().set_read_timeout(Some(SNAPSHOT_STALL_TIMEOUT));
    let _ = stream.tcp().set_write_timeout(Some(SNAPSHOT_STALL_TIMEOUT));
    let final_path = snapshot::db_image_path(dir, raft_index);
    let temp = final_path.with_extension(format!("db.{}.tmp", std::process::id()));
    let file = {
        let temp = temp.clone();
        snapshot::blocking(move || {
            std::fs::File::create(&temp)
                .map_err(|e| format!("cannot create {}: {e}", temp.display()))
        })
        .await?
    };
    let result = receive_image(stream, file, total).await;
    let result = match result {
        Ok(file) => {
            let (temp, final_path) = (temp.clone(), final_path.clone());
            let dir = dir.to_path_buf();
            snapshot::blocking(move || -> std::io::Result<()> {
                file.sync_all()?;
                std::fs::rename(&temp, &final_path)?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
            .map_err(|e| format!("cannot save the snapshot image: {e}"))
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        let temp = temp.clone();
        snapshot::blocking(move || std::fs::remove_file(temp))
            .await
            .ok();
        return Err(e);
    }
    Ok(m)
}

/// Reads chunk frames until `total` bytes, then the end frame; writes each chunk to `file`
/// before reading the next (so at most one chunk is held) and checks the CRC. Each chunk's
/// writeback starts as it is written, with a bounded amount in flight
/// (`tern_storage::writeback`): left to the final fsync, a 40 MB image went to the device in
/// one burst that held this disk's WAL writes (and the leader's, on a shared disk) for
/// a quarter of a second.
async fn receive_image(
    stream: &mut PeerStream,
    file: std::fs::File,
    total: u64,
) -> Result<std::fs::File, String> {
    use std::os::unix::fs::FileExt as _;
    let mut file = Some((file, tern_storage::writeback::WritebackPacer::new()));
    let mut received = 0u64;
    let mut crc = 0u32;
    while received < total {
        let (kind, chunk) = read_frame(stream).await?;
        if kind != FRAME_SNAPSHOT_CHUNK
            || chunk.is_empty()
            || chunk.len() > SNAPSHOT_CHUNK_BYTES
            || received + chunk.len() as u64 > total
        {
            return Err(format!(
                "bad snapshot chunk (kind {kind}, {} bytes at {received} of {total})",
                chunk.len()
            ));
        }
        crc = crc32c::crc32c_append(crc, &chunk);
        let at = received;
        received += chunk.len() as u64;
        let (f, mut pacer) = file.take().expect("returned by the last write");
        let (f, pacer, written) = snapshot::blocking(move || {
            let end = at + chunk.len() as u64;
            let written = f
                .write_all_at(&chunk, at)
                .and_then(|()| pacer.note_written(&f, at, end));
            (f, pacer, written)
        })
        .await;
        written.map_err(|e| format!("cannot write the snapshot image: {e}"))?;
        file = Some((f, pacer));
    }
    let (kind, end) = read_frame(stream).await?;
    if kind != FRAME_SNAPSHOT_END || end.len() != 4 {
        return Err(format!("expected the snapshot end frame, got kind {kind}"));
    }
    let declared = u32::from_be_bytes(end[..4].try_into().expect("4 bytes"));
    if declared != crc {
        return Err(format!(
            "snapshot image CRC mismatch (declared {declared:08x}, received {crc:08x})"
        ));
    }
    // The caller's sync_all makes the image durable; pacing made nothing durable.
    Ok(file.expect("returned by the last write").0)
}
