//! An in-process 3-node cluster on sfs storage, over an in-memory network:
//! leader failover, restart from the data directory, catch-up by snapshot
//! after a log purge, full-cluster restart, expiry decided by the log, and
//! retried writes applied once.
//!
//! Election timeouts are short (150-300 ms) so that each test takes about a
//! second.

#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, SnapshotPolicy};
use sfs::{Clock, ManualClock};
use sfs_raft::{LogStore, NodeId, Raft, Request, RequestId, Response, StateMachine, TypeConfig};

const WAIT: Duration = Duration::from_secs(10);

/// The live nodes, by id: a message to a node not here is unreachable.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<HashMap<NodeId, Raft>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Option<Raft> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }
}

struct Conn {
    router: Router,
    target: NodeId,
}

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, BasicNode, E> {
    let e = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("node {target} is down"),
    );
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
        Conn {
            router: self.clone(),
            target,
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let raft = self
            .router
            .get(self.target)
            .ok_or_else(|| unreachable(self.target))?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let raft = self
            .router
            .get(self.target)
            .ok_or_else(|| unreachable(self.target))?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let raft = self
            .router
            .get(self.target)
            .ok_or_else(|| unreachable(self.target))?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

struct Node {
    raft: Raft,
    sm: StateMachine,
}

struct Cluster {
    _base: tempfile::TempDir,
    dirs: BTreeMap<NodeId, PathBuf>,
    router: Router,
    nodes: BTreeMap<NodeId, Node>,
    config: Arc<Config>,
    clock: Arc<ManualClock>,
}

fn config(snapshot_every: u64) -> Arc<Config> {
    let c = Config {
        cluster_name: "test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(c.validate().unwrap())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Cluster {
    /// Three nodes, 1 to 3, node 1 initializing the membership.
    async fn new(snapshot_every: u64) -> Cluster {
        let base = tempfile::tempdir().unwrap();
        let dirs = (1..=3)
            .map(|id| (id, base.path().join(format!("n{id}"))))
            .collect();
        let mut c = Cluster {
            _base: base,
            dirs,
            router: Router::default(),
            nodes: BTreeMap::new(),
            config: config(snapshot_every),
            clock: Arc::new(ManualClock::new(now_ms())),
        };
        for id in 1..=3 {
            c.start(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("n{id}"))))
            .collect();
        c.nodes[&1].raft.initialize(members).await.unwrap();
        c
    }

    async fn start(&mut self, id: NodeId) {
        let dir = self.dirs[&id].clone();
        // A task of the node's previous run (a snapshot being built) may
        // still hold its stores for a moment after `shutdown`: in one
        // process the file lock says so, and the open is tried again.
        let deadline = tokio::time::Instant::now() + WAIT;
        let (log, sm) = loop {
            let opened = LogStore::open(dir.join("log.sfs")).and_then(|log| {
                let sm = StateMachine::open(dir.join("sm"), self.clock.clone())?;
                Ok((log, sm))
            });
            match opened {
                Ok(stores) => break stores,
                Err(e) if e.to_string().contains("locked") => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let raft = Raft::new(
            id,
            self.config.clone(),
            self.router.clone(),
            log,
            sm.clone(),
        )
        .await
        .unwrap();
        self.router.nodes.lock().unwrap().insert(id, raft.clone());
        self.nodes.insert(id, Node { raft, sm });
    }

    /// Shuts the node down and lets go of its stores.
    async fn kill(&mut self, id: NodeId) {
        self.router.nodes.lock().unwrap().remove(&id);
        let node = self.nodes.remove(&id).unwrap();
        node.raft.shutdown().await.unwrap();
        drop(node);
    }

    /// The leader the live nodes agree on.
    async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for node in self.nodes.values() {
                let m = node.raft.metrics().borrow().clone();
                if let Some(l) = m.current_leader
                    && self.nodes.contains_key(&l)
                    && self.nodes[&l].raft.ensure_linearizable().await.is_ok()
                {
                    return l;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.clock.now_millis() as u64)
    }

    async fn write(&self, req: Request) -> (u64, Response) {
        let leader = self.leader().await;
        let r = self.nodes[&leader].raft.client_write(req).await.unwrap();
        (r.log_id.index, r.data)
    }

    async fn put(&self, key: &str, value: &str) -> u64 {
        self.write(Request::put(key, value, None, self.time()))
            .await
            .0
    }

    /// A linearizable read on the leader.
    async fn read(&self, key: &str) -> Option<String> {
        let leader = self.leader().await;
        let node = &self.nodes[&leader];
        node.raft.ensure_linearizable().await.unwrap();
        node.sm.get(key).unwrap()
    }

    async fn wait_applied(&self, id: NodeId, index: u64) {
        self.nodes[&id]
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "catch up")
            .await
            .unwrap();
    }

    async fn shutdown(mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_the_leader() {
    let mut c = Cluster::new(1000).await;
    for i in 0..20 {
        c.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    let old = c.leader().await;
    c.kill(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    for i in 0..20 {
        assert_eq!(
            c.read(&format!("k{i}")).await,
            Some(format!("v{i}")),
            "k{i}"
        );
    }
    // The two survivors still make a quorum: writes go on.
    c.put("after", "failover").await;
    assert_eq!(c.read("after").await.as_deref(), Some("failover"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_from_the_log() {
    let mut c = Cluster::new(1000).await;
    c.put("before", "1").await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.kill(follower).await;
    let mut last = 0;
    for i in 0..20 {
        last = c.put(&format!("k{i}"), "x").await;
    }
    c.start(follower).await;
    c.wait_applied(follower, last).await;
    let sm = &c.nodes[&follower].sm;
    assert_eq!(sm.get("before").unwrap().as_deref(), Some("1"));
    for i in 0..20 {
        assert_eq!(sm.get(&format!("k{i}")).unwrap().as_deref(), Some("x"));
    }
    // It caught up from the log: no snapshot was ever made.
    let m = c.nodes[&follower].raft.metrics().borrow().clone();
    assert_eq!(m.snapshot, None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_a_purge_installs_a_snapshot() {
    // A snapshot every 10 entries, the log purged right behind it.
    let mut c = Cluster::new(10).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.kill(follower).await;
    let mut last = 0;
    for i in 0..40 {
        last = c.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    c.nodes[&leader]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= 20),
            "the leader purges its log",
        )
        .await
        .unwrap();
    c.start(follower).await;
    c.wait_applied(follower, last).await;
    let m = c.nodes[&follower].raft.metrics().borrow().clone();
    assert!(m.snapshot.is_some_and(|s| s.index >= 20), "{m:?}");
    let sm = &c.nodes[&follower].sm;
    for i in 0..40 {
        assert_eq!(
            sm.get(&format!("k{i}")).unwrap(),
            Some(format!("v{i}")),
            "k{i}"
        );
    }
    // It keeps up afterwards, and its installed store survives a restart.
    let after = c.put("after", "snapshot").await;
    c.wait_applied(follower, after).await;
    c.kill(follower).await;
    c.start(follower).await;
    c.wait_applied(follower, after).await;
    let sm = &c.nodes[&follower].sm;
    assert_eq!(sm.get("k0").unwrap().as_deref(), Some("v0"));
    assert_eq!(sm.get("after").unwrap().as_deref(), Some("snapshot"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_keeps_every_acknowledged_write() {
    let mut c = Cluster::new(15).await;
    for i in 0..30 {
        c.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    let (_, deleted) = c.write(Request::delete("k3", c.time())).await;
    assert_eq!(deleted, Response::Deleted { existed: true });
    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        c.start(id).await;
    }
    for i in 0..30 {
        let want = (i != 3).then(|| format!("v{i}"));
        assert_eq!(c.read(&format!("k{i}")).await, want, "k{i}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_is_decided_once_for_every_replica() {
    let c = Cluster::new(1000).await;
    c.put("k", "a").await;
    let t = c.time();
    let cas = |exp: Option<&str>, new: Option<&str>| {
        Request::compare_and_swap("k", exp.map(Into::into), new.map(Into::into), None, t)
    };
    let (_, r) = c.write(cas(Some("b"), Some("c"))).await;
    assert_eq!(
        r,
        Response::Swapped {
            swapped: false,
            current: Some("a".into())
        }
    );
    let (last, r) = c.write(cas(Some("a"), Some("c"))).await;
    assert_eq!(
        r,
        Response::Swapped {
            swapped: true,
            current: Some("a".into())
        }
    );
    for id in 1..=3 {
        c.wait_applied(id, last).await;
        assert_eq!(c.nodes[&id].sm.get("k").unwrap().as_deref(), Some("c"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_writes_is_one_entry_applied_in_order() {
    let c = Cluster::new(1000).await;
    c.put("gone", "x").await;
    let t = c.time();
    let batch = Request::batch(vec![
        Request::put("k", "a", None, t),
        Request::compare_and_swap("k", Some("a".into()), Some("b".into()), None, t),
        Request::delete("gone", t),
        Request::compare_and_swap("gone", Some("x".into()), Some("y".into()), None, t),
    ]);
    let (index, r) = c.write(batch).await;
    assert_eq!(
        r,
        Response::Batch(vec![
            Response::Written,
            Response::Swapped {
                swapped: true,
                current: Some("a".into())
            },
            Response::Deleted { existed: true },
            Response::Swapped {
                swapped: false,
                current: None
            },
        ])
    );
    for id in 1..=3 {
        c.wait_applied(id, index).await;
        let sm = &c.nodes[&id].sm;
        assert_eq!(sm.get("k").unwrap().as_deref(), Some("b"));
        assert_eq!(sm.get("gone").unwrap(), None);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_expires_on_every_node_at_the_time_the_log_says() {
    let c = Cluster::new(1000).await;
    let start = c.time();
    let ttl = Duration::from_secs(10);
    let (index, _) = c
        .write(Request::put("session", "token", Some(ttl), start))
        .await;
    for id in 1..=3 {
        c.wait_applied(id, index).await;
        assert_eq!(
            c.nodes[&id].sm.get("session").unwrap().as_deref(),
            Some("token")
        );
    }
    // Every node's clock passes the expiry: the key is gone everywhere
    // (reads hide it, whatever was applied since).
    c.clock.advance(Duration::from_secs(11));
    for id in 1..=3 {
        assert_eq!(c.nodes[&id].sm.get("session").unwrap(), None, "node {id}");
    }
    // A write proposed after the expiry moves the log's time past it; from
    // then on the key is gone from every replica's data, even read by a
    // clock that is behind.
    let (index, _) = c.write(Request::put("other", "x", None, c.time())).await;
    c.clock
        .set(start.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64);
    for id in 1..=3 {
        c.wait_applied(id, index).await;
        let sm = &c.nodes[&id].sm;
        assert_eq!(sm.get("session").unwrap(), None, "node {id}");
        assert!(sm.log_time() >= sfs_raft::millis(start + ttl));
    }
    // A compare-and-swap that expects the expired value fails on every
    // replica alike: the comparison happened at log time.
    let (_, r) = c
        .write(Request::compare_and_swap(
            "session",
            Some("token".into()),
            Some("renewed".into()),
            None,
            c.time(),
        ))
        .await;
    assert_eq!(
        r,
        Response::Swapped {
            swapped: false,
            current: None
        }
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once_even_across_a_leader_change() {
    let mut c = Cluster::new(1000).await;
    let t = c.time();
    let id = |seq| RequestId { client: 42, seq };
    // Client 42's compare-and-swap of "n" from absent to "1", proposed
    // twice in a row (a retry whose first reply was lost): applied twice,
    // the second would find "1" and answer `swapped: false`.
    let cas = Request::compare_and_swap("n", None, Some("1".into()), None, t).with_id(id(0));
    let first = Response::Swapped {
        swapped: true,
        current: None,
    };
    assert_eq!(c.write(cas.clone()).await.1, first);
    assert_eq!(c.write(cas.clone()).await.1, first);
    // Its put of "k", then another client's: applied again, the put would
    // bring "mine" back.
    let put = Request::put("k", "mine", None, t).with_id(id(1));
    assert_eq!(c.write(put.clone()).await.1, Response::Written);
    c.put("k", "theirs").await;
    c.write(Request::delete("n", c.time())).await;

    // The leader goes; the retries reach the new one.
    let old = c.leader().await;
    c.kill(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    assert_eq!(c.write(put.clone()).await.1, Response::Written);
    // Older than the client's last request: not applied either.
    assert_eq!(c.write(cas).await.1, Response::Stale { last_seq: 1 });
    let (last, _) = c.write(put).await;
    for id in c.nodes.keys().copied().collect::<Vec<_>>() {
        c.wait_applied(id, last).await;
        let sm = &c.nodes[&id].sm;
        assert_eq!(sm.get("k").unwrap().as_deref(), Some("theirs"), "node {id}");
        assert_eq!(sm.get("n").unwrap(), None, "node {id}");
    }
    // The old leader, restarted from its directory, agrees.
    c.start(old).await;
    c.wait_applied(old, last).await;
    assert_eq!(
        c.nodes[&old].sm.get("k").unwrap().as_deref(),
        Some("theirs")
    );
    c.shutdown().await;
}
