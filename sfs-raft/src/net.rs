//! A small TCP protocol for a cluster of sfs nodes on one or several
//! machines: a request is one JSON line in, its reply one JSON line out;
//! a connection carries one exchange after the other, and [`call`] keeps
//! the connections it opened in a small per-address pool to reuse them.
//! The same port serves Raft's messages between nodes ([`TcpNetwork`]) and
//! clients' requests ([`Client`]). Writes of concurrent clients are grouped
//! into one log entry ([`Request::batch`]) while the node's previous groups
//! are in Raft, so that they share the log's `fdatasync`s.
//!
//! A node: open its stores, start openraft with [`TcpNetwork`], then
//! [`serve`] on its address (the address other nodes know it by, in its
//! `BasicNode`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use sfs_raft::net::{Client, ClientRequest, TcpNetwork, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let log = sfs_raft::LogStore::open("data/log.sfs")?;
//! let sm = sfs_raft::StateMachine::open("data/sm", Arc::new(sfs::SystemClock))?;
//! let config = Arc::new(openraft::Config::default().validate()?);
//! let raft = sfs_raft::Raft::new(1, config, TcpNetwork, log, sm.clone()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7001").await?;
//! tokio::spawn(serve(listener, raft, sm));
//!
//! // A client, from anywhere: it finds the leader by itself.
//! let mut client = Client::new(vec!["127.0.0.1:7001".into()]);
//! let reply = client
//!     .request(&ClientRequest::Put { key: "k".into(), value: "v".into(), ttl_ms: None })
//!     .await?;
//! println!("{reply:?}");
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{NodeId, Raft, Request, RequestId, Response, StateMachine, TypeConfig};

/// Where [`serve`] reads keys for clients: a node's state machine.
pub trait ReadKeys: Clone + Send + Sync + 'static {
    /// The value of `key` as this node has applied it (`None`: absent or
    /// expired), or why it could not be read.
    fn read_key(&self, key: &str) -> Result<Option<String>, String>;
}

impl ReadKeys for StateMachine {
    fn read_key(&self, key: &str) -> Result<Option<String>, String> {
        self.get(key).map_err(|e| e.to_string())
    }
}

impl ReadKeys for crate::memory::MemStateMachine {
    fn read_key(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.get(key))
    }
}

/// What goes over a connection, from a node or a client.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// Raft: replicate entries (or heartbeat).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: a chunk of a snapshot.
    InstallSnapshot(SnapshotChunk),
    /// Raft: ask for a vote.
    Vote(VoteRequest<NodeId>),
    /// A client's request.
    Client(ClientRequest),
}

/// openraft's snapshot chunk as sent: the same fields, the bytes in
/// base64 (serde would write them as a JSON array of numbers, 3.6 times
/// their size on average, against 4/3).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    vote: openraft::Vote<NodeId>,
    meta: openraft::SnapshotMeta<NodeId, BasicNode>,
    offset: u64,
    done: bool,
    /// The chunk's bytes, base64 (standard alphabet, padded).
    data: String,
}

impl From<InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(r: InstallSnapshotRequest<TypeConfig>) -> SnapshotChunk {
        SnapshotChunk {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            done: r.done,
            data: base64::encode(&r.data),
        }
    }
}

impl TryFrom<SnapshotChunk> for InstallSnapshotRequest<TypeConfig> {
    type Error = io::Error;

    fn try_from(c: SnapshotChunk) -> io::Result<InstallSnapshotRequest<TypeConfig>> {
        let data = base64::decode(&c.data).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a snapshot chunk's data is not base64",
            )
        })?;
        Ok(InstallSnapshotRequest {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data,
            done: c.done,
        })
    }
}

/// Base64, standard alphabet, padded (RFC 4648).
mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }

    /// The bytes of `text`, or `None` if it is not padded base64.
    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        let last = text.len() / 4;
        for (i, quad) in text.chunks(4).enumerate() {
            let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && i + 1 != last) {
                return None;
            }
            let mut n = 0u32;
            for &c in &quad[..4 - pad] {
                n = n << 6 | value(c)?;
            }
            n <<= 6 * pad as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Some(out)
    }
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Sets `key`; a TTL becomes an absolute expiry on the leader.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Time to live in milliseconds, if any.
        ttl_ms: Option<u64>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` (`None`: deletes it) if it is `expected`.
    CompareAndSwap {
        /// The key.
        key: String,
        /// Its value now (`None`: absent).
        expected: Option<String>,
        /// Its new value (`None`: delete).
        new: Option<String>,
        /// Time to live of the new value in milliseconds, if any.
        ttl_ms: Option<u64>,
    },
    /// Reads `key`. Linearizable: on the leader, after confirming with a
    /// quorum that it still leads (openraft's read index). Otherwise from
    /// whichever node answers, as far as it has applied.
    Get {
        /// The key.
        key: String,
        /// Whether the read must see every write acknowledged before it.
        linearizable: bool,
    },
    /// The node's view of the cluster.
    Status,
    /// A write (`Put`, `Delete` or `CompareAndSwap`) applied at most once
    /// for `id`, however often it is sent: a retry gets the first one's
    /// response (see [`RequestId`]). [`Client`] sends its writes so.
    Once {
        /// The client's id and the write's sequence number.
        id: RequestId,
        /// The write.
        request: Box<ClientRequest>,
    },
}

impl ClientRequest {
    fn is_write(&self) -> bool {
        matches!(
            self,
            ClientRequest::Put { .. }
                | ClientRequest::Delete { .. }
                | ClientRequest::CompareAndSwap { .. }
        )
    }
}

/// A node's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// The write is committed and applied on the leader, at `index`.
    Applied {
        /// Its log index (writes grouped into one entry share it).
        index: u64,
        /// What it did.
        response: Response,
    },
    /// A read's value.
    Value {
        /// The value, if the key is present.
        value: Option<String>,
    },
    /// The node's view.
    Status {
        /// The node's id.
        id: NodeId,
        /// The leader it knows of.
        leader: Option<NodeId>,
        /// The last log index it applied.
        last_applied: Option<u64>,
    },
    /// This node is not the leader; ask `addr` (if known).
    NotLeader {
        /// The leader's address, if known.
        addr: Option<String>,
    },
    /// The request failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// How many idle connections [`call`] keeps per address.
const IDLE_PER_ADDR: usize = 64;

type Stream = BufReader<TcpStream>;

/// Idle connections by address: taken by [`call`], put back after a
/// complete exchange, dropped on any error (and on a timeout, with the
/// future that held them).
fn pool() -> &'static Mutex<HashMap<String, Vec<Stream>>> {
    static POOL: OnceLock<Mutex<HashMap<String, Vec<Stream>>>> = OnceLock::new();
    POOL.get_or_init(Mutex::default)
}

fn take_idle(addr: &str) -> Option<Stream> {
    let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
    pool.get_mut(addr).and_then(Vec::pop)
}

fn put_back(addr: &str, stream: Stream) {
    let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
    let idle = pool.entry(addr.to_string()).or_default();
    if idle.len() < IDLE_PER_ADDR {
        idle.push(stream);
    }
}

async fn connect(addr: &str) -> io::Result<Stream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// One exchange on `stream`: `line` out, the reply line in.
async fn exchange(stream: &mut Stream, addr: &str, line: &[u8]) -> io::Result<Vec<u8>> {
    stream.get_mut().write_all(line).await?;
    let mut reply = Vec::new();
    stream.read_until(b'\n', &mut reply).await?;
    if !reply.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{addr} closed the connection without a reply"),
        ));
    }
    Ok(reply)
}

/// Sends one message to `addr` and reads one reply, within `timeout`, on
/// an idle pooled connection if there is one (and, should that one turn out
/// closed or broken, once more on a new connection), else on a new one.
/// A message resent that way may reach the node twice, as with any retry:
/// Raft's messages are idempotent, and [`Client`]'s writes carry a request
/// id, so that the state machine applies each once.
pub async fn call<T: DeserializeOwned>(
    addr: &str,
    msg: &Message,
    timeout: Duration,
) -> io::Result<T> {
    let exchange = async {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        let mut reply = None;
        if let Some(mut stream) = take_idle(addr)
            && let Ok(r) = exchange(&mut stream, addr, &line).await
        {
            put_back(addr, stream);
            reply = Some(r);
        }
        let reply = match reply {
            Some(r) => r,
            None => {
                let mut stream = connect(addr).await?;
                let r = exchange(&mut stream, addr, &line).await?;
                put_back(addr, stream);
                r
            }
        };
        Ok(serde_json::from_slice(&reply)?)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{addr}: no reply in {timeout:?}"),
        )
    })?
}

/// How many groups of client writes a node has in Raft at once. While
/// they are, new writes wait and are grouped: openraft 0.9's leader syncs
/// its log once per entry, one entry after the other, so one entry per
/// write would make every write wait for a log `fdatasync` of its own.
/// Measured with 16 clients, one group at a time did as well as two or
/// better (and four worse); openraft still overlaps a group's apply with
/// the next group's append. With 16 clients all in one group, more slots
/// are not even used (the clients wait for the same round); splitting them
/// into 2 or 3 groups of at most a half or a third, so that the leader's
/// flush of one group overlaps the followers' flush of the other, did
/// worse again (BENCHMARKS.md: openraft 0.9's core, blocked in the
/// leader's flush, presumably cannot take the followers' replies then).
const GROUPS_IN_FLIGHT: usize = 1;

/// The most client writes in one entry.
const MAX_GROUP: usize = 512;

/// How long a group waits for the writes of clients that are on their way
/// back (see [`Proposer::start`]).
const LINGER: Duration = Duration::from_micros(500);

/// How long the most writes seen waiting at once is remembered.
const PEAK_WINDOW: Duration = Duration::from_millis(100);

/// A client's write and where its reply goes.
type Waiting = (Request, oneshot::Sender<ClientReply>);

/// Proposes the clients' writes to Raft, concurrent writes grouped into one
/// entry ([`Request::batch`]).
#[derive(Clone)]
struct Proposer {
    tx: mpsc::UnboundedSender<Waiting>,
    /// Writes sent to the proposer and not answered yet.
    waiting: Arc<AtomicUsize>,
    /// The most of them seen at once lately.
    peak: Arc<AtomicUsize>,
}

impl Proposer {
    /// The proposer of `raft`'s node: a task that takes the writes waiting,
    /// all of them, as one group when fewer than [`GROUPS_IN_FLIGHT`] groups
    /// are in Raft, and proposes it. A group smaller than the most writes
    /// seen waiting at once lately (clients answered a moment ago are
    /// sending their next write) waits up to [`LINGER`] for them: otherwise
    /// the clients split into groups that take turns, each waiting for the
    /// other's round.
    fn start(raft: Raft) -> Proposer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiting>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (in_flight, seen) = (Arc::new(AtomicUsize::new(0)), Arc::clone(&peak));
        let counted = Arc::clone(&waiting);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
            let mut window = tokio::time::Instant::now();
            // The semaphore is never closed.
            while let Ok(slot) = Arc::clone(&slots).acquire_owned().await {
                let Some(first) = rx.recv().await else {
                    return;
                };
                let now = tokio::time::Instant::now();
                if now.duration_since(window) > PEAK_WINDOW {
                    window = now;
                    seen.store(counted.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                let mut group = vec![first];
                let target = seen
                    .load(Ordering::Relaxed)
                    .saturating_sub(in_flight.load(Ordering::Relaxed))
                    .min(MAX_GROUP);
                let deadline = now + LINGER;
                loop {
                    while group.len() < MAX_GROUP
                        && let Ok(w) = rx.try_recv()
                    {
                        group.push(w);
                    }
                    if group.len() >= target {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(w)) => group.push(w),
                        Ok(None) | Err(_) => break,
                    }
                }
                let raft = raft.clone();
                let in_flight = Arc::clone(&in_flight);
                in_flight.fetch_add(group.len(), Ordering::Relaxed);
                tokio::spawn(async move {
                    let n = group.len();
                    propose(&raft, group).await;
                    in_flight.fetch_sub(n, Ordering::Relaxed);
                    drop(slot);
                });
            }
        });
        Proposer { tx, waiting, peak }
    }

    /// Proposes `write` (with others) and waits for its reply.
    async fn write(&self, write: Request) -> ClientReply {
        let (tx, rx) = oneshot::channel();
        // Counted until answered, or until the connection drops this future.
        let _counted = Counted::new(&self.waiting);
        self.peak
            .fetch_max(self.waiting.load(Ordering::Relaxed), Ordering::Relaxed);
        if self.tx.send((write, tx)).is_err() {
            ClientReply::Failed {
                error: "the node's proposer has stopped".to_string(),
            }
        } else {
            rx.await.unwrap_or_else(|_| ClientReply::Failed {
                error: "the node's proposer dropped the write".to_string(),
            })
        }
    }
}

/// One more in a counter while it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Counted<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Proposes a group of writes as one entry and tells each its reply: the
/// entry's index and its own response.
async fn propose(raft: &Raft, group: Vec<Waiting>) {
    let n = group.len();
    let (writes, waiting): (Vec<Request>, Vec<_>) = group.into_iter().unzip();
    let replies = match raft.client_write(Request::batch(writes)).await {
        Ok(r) => {
            let index = r.log_id.index;
            match r.data {
                Response::Batch(responses) if n > 1 && responses.len() == n => responses
                    .into_iter()
                    .map(|response| ClientReply::Applied { index, response })
                    .collect(),
                response if n == 1 => vec![ClientReply::Applied { index, response }],
                other => vec![
                    ClientReply::Failed {
                        error: format!("a group of {n} writes was answered {other:?}"),
                    };
                    n
                ],
            }
        }
        Err(e) => vec![not_leader(&e, || e.to_string()); n],
    };
    for (tx, reply) in waiting.into_iter().zip(replies) {
        if tx.send(reply).is_err() {
            // Its client's connection closed: nobody to tell.
        }
    }
}

/// Serves Raft's messages and clients' requests on `listener` until it
/// fails, reading keys from `sm`. Concurrent clients' writes are grouped
/// into one log entry each time (see [`Request::batch`]).
pub async fn serve<S: ReadKeys>(listener: TcpListener, raft: Raft, sm: S) -> io::Result<()> {
    let proposer = Proposer::start(raft.clone());
    loop {
        let (socket, _) = listener.accept().await?;
        let (raft, sm, proposer) = (raft.clone(), sm.clone(), proposer.clone());
        tokio::spawn(async move {
            // A connection that fails only fails its caller, who retries.
            if let Err(e) = handle(socket, &raft, &sm, &proposer).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

/// Serves one connection: request line, reply line, until the peer closes
/// it.
async fn handle<S: ReadKeys>(
    socket: TcpStream,
    raft: &Raft,
    sm: &S,
    proposer: &Proposer,
) -> io::Result<()> {
    socket.set_nodelay(true)?;
    let mut socket = BufReader::new(socket);
    let mut line = Vec::new();
    loop {
        line.clear();
        socket.read_until(b'\n', &mut line).await?;
        if line.is_empty() {
            return Ok(());
        }
        let msg: Message = serde_json::from_slice(&line)?;
        let mut reply = match msg {
            Message::AppendEntries(rpc) => serde_json::to_vec(&raft.append_entries(rpc).await)?,
            Message::InstallSnapshot(chunk) => {
                let rpc = InstallSnapshotRequest::try_from(chunk)?;
                serde_json::to_vec(&raft.install_snapshot(rpc).await)?
            }
            Message::Vote(rpc) => serde_json::to_vec(&raft.vote(rpc).await)?,
            Message::Client(req) => {
                serde_json::to_vec(&client_request(raft, sm, proposer, req).await)?
            }
        };
        reply.push(b'\n');
        socket.get_mut().write_all(&reply).await?;
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

fn not_leader<E>(e: &RaftError<NodeId, E>, other: impl FnOnce() -> String) -> ClientReply
where
    E: std::fmt::Debug + openraft::TryAsRef<openraft::error::ForwardToLeader<NodeId, BasicNode>>,
{
    match e.forward_to_leader::<BasicNode>() {
        Some(f) => ClientReply::NotLeader {
            addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
        },
        None => ClientReply::Failed { error: other() },
    }
}

async fn client_request<S: ReadKeys>(
    raft: &Raft,
    sm: &S,
    proposer: &Proposer,
    req: ClientRequest,
) -> ClientReply {
    let (id, req) = match req {
        ClientRequest::Once { id, request } if request.is_write() => (Some(id), *request),
        ClientRequest::Once { request, .. } => {
            return ClientReply::Failed {
                error: format!("only a write takes a request id, not {request:?}"),
            };
        }
        req => (None, req),
    };
    // The proposer's clock decides the time of the entry, and so when a
    // TTL ends: a follower never proposes (openraft refuses the write).
    let now = SystemTime::now();
    let write = match req {
        ClientRequest::Put { key, value, ttl_ms } => Request::put(key, value, ttl(ttl_ms), now),
        ClientRequest::Delete { key } => Request::delete(key, now),
        ClientRequest::CompareAndSwap {
            key,
            expected,
            new,
            ttl_ms,
        } => Request::compare_and_swap(key, expected, new, ttl(ttl_ms), now),
        ClientRequest::Get { key, linearizable } => {
            if linearizable && let Err(e) = raft.ensure_linearizable().await {
                return not_leader(&e, || e.to_string());
            }
            return match sm.read_key(&key) {
                Ok(value) => ClientReply::Value { value },
                Err(error) => ClientReply::Failed { error },
            };
        }
        ClientRequest::Status => {
            let m = raft.metrics().borrow().clone();
            return ClientReply::Status {
                id: m.id,
                leader: m.current_leader,
                last_applied: m.last_applied.map(|l| l.index),
            };
        }
        ClientRequest::Once { .. } => {
            return ClientReply::Failed {
                error: "a request id on a request id".to_string(),
            };
        }
    };
    let write = match id {
        Some(id) => write.with_id(id),
        None => write,
    };
    proposer.write(write).await
}

/// openraft's network over this module's protocol: a node's `BasicNode`
/// address is where its [`serve`] listens.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpNetwork;

/// A connection to one node (messages go through [`call`]'s pool of TCP
/// connections).
#[derive(Debug)]
pub struct TcpConnection {
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> TcpConnection {
        TcpConnection {
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl TcpConnection {
    async fn send<T, E>(&self, msg: Message, option: &RPCOption) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<T, RaftError<NodeId, E>> = call(&self.addr, &msg, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for TcpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.send(Message::AppendEntries(rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.send(Message::InstallSnapshot(rpc.into()), &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.send(Message::Vote(rpc), &option).await
    }
}

/// A client of a cluster: it sends each request to the leader it knows,
/// follows `NotLeader` redirections, and tries the other nodes when one
/// does not answer, for up to `patience` (10 s unless set).
///
/// Each write goes with a request id ([`ClientRequest::Once`]): the
/// client's random id and the write's number, the same on every retry, so
/// that a write retried after a lost reply or a leader change is applied
/// once, and the retry answered with the first one's response. A clone
/// of a client is a new client, with an id of its own.
#[derive(Debug)]
pub struct Client {
    addrs: Vec<String>,
    leader: Option<String>,
    /// How long [`request`](Self::request) keeps trying.
    pub patience: Duration,
    /// This client's id.
    id: u64,
    /// The number of its next write.
    next_seq: u64,
}

impl Clone for Client {
    fn clone(&self) -> Client {
        Client {
            addrs: self.addrs.clone(),
            leader: self.leader.clone(),
            patience: self.patience,
            id: random_client_id(),
            next_seq: 0,
        }
    }
}

/// A client id: random (the standard library's per-process random hash
/// keys, over the time and a counter), so that two clients, in one
/// process or not, do not share one.
fn random_client_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Client {
    /// A client of the nodes at `addrs`.
    pub fn new(addrs: Vec<String>) -> Client {
        Client {
            addrs,
            leader: None,
            patience: Duration::from_secs(10),
            id: random_client_id(),
            next_seq: 0,
        }
    }

    /// This client's id, in the request ids of its writes.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends `req` to the leader (reads that are not linearizable and
    /// `Status` go to the first node that answers) and returns its reply.
    /// A write goes with the next request id of this client, and every
    /// retry of it with the same.
    pub async fn request(&mut self, req: &ClientRequest) -> io::Result<ClientReply> {
        if self.addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a client needs the address of at least one node",
            ));
        }
        let req = if req.is_write() {
            let id = RequestId {
                client: self.id,
                seq: self.next_seq,
            };
            self.next_seq += 1;
            ClientRequest::Once {
                id,
                request: Box::new(req.clone()),
            }
        } else {
            req.clone()
        };
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut next = 0usize;
        let mut last_error = None;
        while tokio::time::Instant::now() < deadline {
            let addr = match self.leader.clone() {
                Some(a) => a,
                None => {
                    let a = self.addrs[next % self.addrs.len()].clone();
                    next += 1;
                    a
                }
            };
            let msg = Message::Client(req.clone());
            match call::<ClientReply>(&addr, &msg, Duration::from_secs(2)).await {
                Ok(ClientReply::NotLeader { addr: Some(a) }) if a != addr => {
                    self.leader = Some(a);
                    continue;
                }
                Ok(ClientReply::NotLeader { .. }) => {
                    // An election is under way.
                    self.leader = None;
                    last_error = Some(io::Error::other(format!("{addr}: no leader yet")));
                }
                Ok(reply) => {
                    self.leader = Some(addr);
                    return Ok(reply);
                }
                Err(e) => {
                    self.leader = None;
                    last_error = Some(e);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no node to ask")))
    }

    /// Sends `req` to the node at `addr` only.
    pub async fn request_node(addr: &str, req: &ClientRequest) -> io::Result<ClientReply> {
        call(addr, &Message::Client(req.clone()), Duration::from_secs(2)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_without_nodes_says_so() {
        let mut client = Client::new(Vec::new());
        let e = client.request(&ClientRequest::Status).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn calls_reuse_a_connection() {
        // A node that accepts one connection only and answers every line.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut socket = BufReader::new(socket);
            let mut line = Vec::new();
            while socket.read_until(b'\n', &mut line).await.unwrap() > 0 {
                let reply = ClientReply::Value { value: None };
                let mut out = serde_json::to_vec(&reply).unwrap();
                out.push(b'\n');
                socket.get_mut().write_all(&out).await.unwrap();
                line.clear();
            }
        });
        for _ in 0..3 {
            let reply = Client::request_node(&addr, &ClientRequest::Status).await;
            assert_eq!(reply.unwrap(), ClientReply::Value { value: None });
        }
    }

    #[tokio::test]
    async fn a_client_retries_a_write_with_the_same_request_id() {
        // A node that drops its first connection without a reply (a lost
        // reply: the write may have been applied) and answers the others,
        // recording every request.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<ClientRequest>>> = Arc::default();
        let recorded = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let mut socket = BufReader::new(socket);
                let mut line = Vec::new();
                while socket.read_until(b'\n', &mut line).await.unwrap() > 0 {
                    let Message::Client(req) = serde_json::from_slice(&line).unwrap() else {
                        panic!("not a client's request");
                    };
                    recorded.lock().unwrap().push(req);
                    line.clear();
                    if first {
                        first = false;
                        break;
                    }
                    let reply = ClientReply::Applied {
                        index: 1,
                        response: Response::Written,
                    };
                    let mut out = serde_json::to_vec(&reply).unwrap();
                    out.push(b'\n');
                    socket.get_mut().write_all(&out).await.unwrap();
                }
            }
        });
        let mut client = Client::new(vec![addr]);
        let put = |value: &str| ClientRequest::Put {
            key: "k".into(),
            value: value.into(),
            ttl_ms: None,
        };
        let read = ClientRequest::Get {
            key: "k".into(),
            linearizable: false,
        };
        for req in [put("a"), read.clone(), put("b")] {
            let reply = client.request(&req).await.unwrap();
            assert!(matches!(reply, ClientReply::Applied { .. }), "{reply:?}");
        }
        let once = |seq, value| ClientRequest::Once {
            id: RequestId {
                client: client.id(),
                seq,
            },
            request: Box::new(put(value)),
        };
        // The first write twice (sent, then retried), with the same id; a
        // read without one; the next write with the next number.
        assert_eq!(
            *seen.lock().unwrap(),
            vec![once(0, "a"), once(0, "a"), read, once(1, "b")]
        );
        // Another client has another id.
        assert_ne!(Client::new(Vec::new()).id(), client.id());
    }

    #[test]
    fn base64_round_trips_and_refuses_what_is_not_base64() {
        // RFC 4648's test vectors.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64::encode(plain.as_bytes()), coded);
            assert_eq!(base64::decode(coded).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(base64::decode(&base64::encode(&all)), Some(all));
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "Zm9v\n"] {
            assert_eq!(base64::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_snapshot_chunk_goes_as_base64_and_comes_back_whole() {
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new(3, 1),
            meta: openraft::SnapshotMeta::default(),
            offset: 4096,
            data: (0..=255u8).cycle().take(3000).collect(),
            done: true,
        };
        let line = serde_json::to_vec(&Message::InstallSnapshot(rpc.clone().into())).unwrap();
        // A JSON array of the numbers would take ~3.6 bytes a byte.
        assert!(line.len() < 3000 * 4 / 3 + 300, "{}", line.len());
        let Message::InstallSnapshot(chunk) = serde_json::from_slice(&line).unwrap() else {
            panic!("not a snapshot chunk");
        };
        assert_eq!(InstallSnapshotRequest::try_from(chunk).unwrap(), rpc);
        // Corrupt data: an error, not a panic.
        let bad = String::from_utf8(line).unwrap().replace("AAEC", "AA*C");
        let Message::InstallSnapshot(chunk) = serde_json::from_slice(bad.as_bytes()).unwrap()
        else {
            panic!("not a snapshot chunk");
        };
        let e = InstallSnapshotRequest::try_from(chunk).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_client_gives_up_on_a_node_that_is_down() {
        // A port nothing listens on (bound, then released).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut client = Client::new(vec![addr]);
        client.patience = Duration::from_millis(200);
        assert!(client.request(&ClientRequest::Status).await.is_err());
    }
}
