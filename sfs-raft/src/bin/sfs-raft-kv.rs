//! `sfs-raft-kv`: a replicated key-value service on sfs, one process per
//! node, talking JSON lines over TCP.
//!
//! ```text
//! sfs-raft-kv node ID DIR PEERS [--init] [--memory]
//!     run node ID with its data in DIR
//!     PEERS: 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//!     --init: make PEERS the cluster's first membership (once, on one node)
//!     --memory: the benchmark's ceiling, openraft's storage in memory
//!       (sfs_raft::memory): nothing durable, not for production
//! sfs-raft-kv client ADDRS COMMAND          ADDRS: 127.0.0.1:7001,127.0.0.1:7002
//!     put KEY VALUE [TTL_MS] | get KEY | read KEY (linearizable)
//!     delete KEY | cas KEY EXPECTED NEW ('-' for absent) | status
//! sfs-raft-kv demo [DIR] [WRITES]
//!     starts 3 nodes, writes while killing the leader with SIGKILL, then
//!     checks every acknowledged write on every node
//! sfs-raft-kv bench [DIR] [SECONDS]
//!     durable writes per second on a 3-node cluster (1 and 16 clients)
//!     against the same cluster on in-memory storage (the ceiling) and
//!     against one sfs store's durable puts (1 and 16 threads)
//! ```

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, SnapshotPolicy};
use sfs_raft::memory::{MemLog, MemStateMachine};
use sfs_raft::net::{Client, ClientReply, ClientRequest, TcpNetwork, serve};
use sfs_raft::{LogStore, NodeId, Raft, StateMachine};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const USAGE: &str = "usage:
  sfs-raft-kv node ID DIR PEERS [--init] [--memory]   (PEERS: 1=127.0.0.1:7001,2=...,3=...)
  sfs-raft-kv client ADDRS put KEY VALUE [TTL_MS] | get KEY | read KEY | delete KEY
                           | cas KEY EXPECTED NEW ('-': absent) | status
  sfs-raft-kv demo [DIR] [WRITES]
  sfs-raft-kv bench [DIR] [SECONDS]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = match args.as_slice() {
        ["node", id, dir, peers, flags @ ..]
            if flags.iter().all(|f| ["--init", "--memory"].contains(f)) =>
        {
            node(
                id,
                dir,
                peers,
                flags.contains(&"--init"),
                flags.contains(&"--memory"),
            )
            .await
        }
        ["client", addrs, command @ ..] => client(addrs, command).await,
        ["demo", rest @ ..] => demo(rest.first().copied(), rest.get(1).copied()).await,
        ["bench", rest @ ..] => bench(rest.first().copied(), rest.get(1).copied()).await,
        _ => Err(USAGE.into()),
    };
    match run {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sfs-raft-kv: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_peers(peers: &str) -> Result<BTreeMap<NodeId, String>> {
    peers
        .split(',')
        .map(|p| {
            let (id, addr) = p.split_once('=').ok_or(format!("not ID=ADDR: {p}"))?;
            Ok((id.parse()?, addr.to_string()))
        })
        .collect()
}

async fn node(id: &str, dir: &str, peers: &str, init: bool, memory: bool) -> Result<bool> {
    let id: NodeId = id.parse()?;
    let peers = parse_peers(peers)?;
    let addr = peers
        .get(&id)
        .ok_or(format!("node {id} is not among the peers"))?;
    let dir = Path::new(dir);
    let config = Config {
        cluster_name: "sfs-raft-kv".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    let config = Arc::new(config.validate()?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (raft, server) = if memory {
        // The benchmark's ceiling: nothing durable.
        let sm = MemStateMachine::new(dir)?;
        let raft = Raft::new(id, config, TcpNetwork, MemLog::default(), sm.clone()).await?;
        eprintln!("node {id}: serving on {addr}, IN MEMORY (benchmark ceiling, not durable)");
        (raft.clone(), tokio::spawn(serve(listener, raft, sm)))
    } else {
        let log = LogStore::open(dir.join("log.sfs"))?;
        let sm = StateMachine::open(dir.join("sm"), Arc::new(sfs::SystemClock))?;
        let raft = Raft::new(id, config, TcpNetwork, log, sm.clone()).await?;
        eprintln!("node {id}: serving on {addr}, data in {}", dir.display());
        (raft.clone(), tokio::spawn(serve(listener, raft, sm)))
    };
    if init && !raft.is_initialized().await? {
        let members: BTreeMap<NodeId, BasicNode> =
            peers.iter().map(|(&i, a)| (i, BasicNode::new(a))).collect();
        raft.initialize(members).await?;
    }
    server.await??;
    Ok(true)
}

fn opt(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_string())
}

async fn client(addrs: &str, command: &[&str]) -> Result<bool> {
    let req = match command {
        ["put", key, value] => ClientRequest::Put {
            key: key.to_string(),
            value: value.to_string(),
            ttl_ms: None,
        },
        ["put", key, value, ttl] => ClientRequest::Put {
            key: key.to_string(),
            value: value.to_string(),
            ttl_ms: Some(ttl.parse()?),
        },
        ["get", key] | ["read", key] => ClientRequest::Get {
            key: key.to_string(),
            linearizable: command[0] == "read",
        },
        ["delete", key] => ClientRequest::Delete {
            key: key.to_string(),
        },
        ["cas", key, expected, new] => ClientRequest::CompareAndSwap {
            key: key.to_string(),
            expected: opt(expected),
            new: opt(new),
            ttl_ms: None,
        },
        ["status"] => ClientRequest::Status,
        _ => return Err(USAGE.into()),
    };
    let mut client = Client::new(addrs.split(',').map(String::from).collect());
    let reply = client.request(&req).await?;
    println!("{}", serde_json::to_string(&reply)?);
    Ok(!matches!(reply, ClientReply::Failed { .. }))
}

/// The demo's node processes, killed when dropped.
struct Nodes {
    exe: PathBuf,
    dir: PathBuf,
    peers: String,
    /// Nodes on in-memory storage (the benchmark's ceiling).
    memory: bool,
    children: BTreeMap<NodeId, Child>,
}

impl Nodes {
    fn start(&mut self, id: NodeId, init: bool) -> Result<()> {
        let data = self.dir.join(format!("node{id}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{id}.log")))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("node")
            .arg(id.to_string())
            .arg(&data)
            .arg(&self.peers)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if init {
            cmd.arg("--init");
        }
        if self.memory {
            cmd.arg("--memory");
        }
        self.children.insert(id, cmd.spawn()?);
        Ok(())
    }

    /// SIGKILL: no chance to sync or close anything.
    fn kill(&mut self, id: NodeId) -> Result<()> {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (id, child) in &mut self.children {
            if let Err(e) = child.kill().and_then(|()| child.wait().map(drop)) {
                eprintln!("stopping node {id}: {e}");
            }
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn status(addr: &str) -> Option<(Option<NodeId>, Option<u64>)> {
    match Client::request_node(addr, &ClientRequest::Status).await {
        Ok(ClientReply::Status {
            leader,
            last_applied,
            ..
        }) => Some((leader, last_applied)),
        _ => None,
    }
}

async fn leader(addrs: &BTreeMap<NodeId, String>, deadline: Duration) -> Result<NodeId> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        for addr in addrs.values() {
            if let Some((Some(l), _)) = status(addr).await
                && addrs.contains_key(&l)
            {
                return Ok(l);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("no leader elected".into())
}

/// Three node processes on free localhost ports, node 1 initializing; on
/// in-memory storage if `memory`.
fn start_cluster(dir: &Path, memory: bool) -> Result<(Nodes, BTreeMap<NodeId, String>)> {
    std::fs::create_dir_all(dir)?;
    let mut addrs = BTreeMap::new();
    for id in 1..=3 {
        addrs.insert(id, format!("127.0.0.1:{}", free_port()?));
    }
    let peers = addrs
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Nodes {
        exe: std::env::current_exe()?,
        dir: dir.to_path_buf(),
        peers,
        memory,
        children: BTreeMap::new(),
    };
    println!(
        "starting 3 nodes ({}), data and logs in {}",
        nodes.peers,
        dir.display()
    );
    for id in 1..=3 {
        nodes.start(id, id == 1)?;
    }
    Ok((nodes, addrs))
}

async fn demo(dir: Option<&str>, writes: Option<&str>) -> Result<bool> {
    let writes: usize = writes.map_or(Ok(300), str::parse)?;
    let dir = match dir {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("sfs-raft-demo-{}", std::process::id())),
    };
    let (mut nodes, addrs) = start_cluster(&dir, false)?;
    let first = leader(&addrs, Duration::from_secs(20)).await?;
    println!("node {first} is the leader");

    // One client writes w0, w1, ... and records what was acknowledged.
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let writer = {
        let acked = Arc::clone(&acked);
        let mut client = Client::new(addrs.values().cloned().collect());
        client.patience = Duration::from_secs(30);
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for i in 0..writes {
                let put = ClientRequest::Put {
                    key: format!("w{i}"),
                    value: i.to_string(),
                    ttl_ms: None,
                };
                let t = Instant::now();
                match client.request(&put).await {
                    Ok(ClientReply::Applied { index, .. }) => {
                        acked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, index));
                    }
                    Ok(other) => eprintln!("w{i}: not acknowledged: {other:?}"),
                    Err(e) => eprintln!("w{i}: not acknowledged: {e}"),
                }
                slowest = slowest.max(t.elapsed());
            }
            slowest
        })
    };
    while acked.lock().unwrap_or_else(|e| e.into_inner()).len() < writes / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = leader(&addrs, Duration::from_secs(20)).await?;
    nodes.kill(killed)?;
    let at = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    println!(
        "kill -9 of the leader, node {killed}, after {at} acknowledged writes; the client keeps writing"
    );
    let slowest = writer.await?;
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut alive = addrs.clone();
    alive.remove(&killed);
    let second = leader(&alive, Duration::from_secs(20)).await?;
    println!(
        "{} of {writes} writes acknowledged; node {second} leads now; the longest write took {slowest:?} (the failover)",
        acked.len()
    );

    // Every acknowledged write, read linearizably through the new leader.
    let mut ok = true;
    let mut client = Client::new(alive.values().cloned().collect());
    let mut lost = 0;
    for &(i, _) in &acked {
        let read = ClientRequest::Get {
            key: format!("w{i}"),
            linearizable: true,
        };
        if client.request(&read).await?
            != (ClientReply::Value {
                value: Some(i.to_string()),
            })
        {
            lost += 1;
        }
    }
    println!("linearizable reads: {lost} acknowledged writes lost");
    ok &= lost == 0;

    // And on every node, the killed one restarted from its directory.
    nodes.start(killed, false)?;
    println!("node {killed} restarted from its data directory");
    let last = acked.iter().map(|&(_, index)| index).max().unwrap_or(0);
    for (&id, addr) in &addrs {
        let start = Instant::now();
        while status(addr).await.is_none_or(|(_, a)| a < Some(last)) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("node {id} did not catch up to index {last}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut lost = 0;
        for &(i, _) in &acked {
            let read = ClientRequest::Get {
                key: format!("w{i}"),
                linearizable: false,
            };
            let want = ClientReply::Value {
                value: Some(i.to_string()),
            };
            if Client::request_node(addr, &read).await? != want {
                lost += 1;
            }
        }
        println!("node {id}: applied through index {last}, {lost} acknowledged writes missing");
        ok &= lost == 0;
    }
    drop(nodes);
    println!(
        "{}",
        if ok {
            "no acknowledged write lost"
        } else {
            "ACKNOWLEDGED WRITES LOST"
        }
    );
    Ok(ok)
}

/// Durable writes per second for `secs` seconds from `clients` concurrent
/// clients, each waiting for its write to be acknowledged.
async fn replicated_rate(addrs: &[String], clients: usize, secs: f64) -> Result<f64> {
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = Client::new(addrs.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < deadline {
                let put = ClientRequest::Put {
                    key: format!("bench-{c}-{n}"),
                    value: "x".repeat(100),
                    ttl_ms: None,
                };
                if let Ok(ClientReply::Applied { .. }) = client.request(&put).await {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Durable puts per second into one sfs store (`SyncPolicy::Always`) from
/// `threads` threads.
fn single_store_rate(dir: &Path, threads: usize, secs: f64) -> Result<f64> {
    let path = dir.join(format!("single-{threads}.sfs"));
    let store = Arc::new(sfs::Store::open(&path)?);
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || -> sfs::Result<u64> {
                let mut n = 0u64;
                while start.elapsed() < deadline {
                    store.put(format!("bench-{t}-{n}"), "x".repeat(100))?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "a writer thread panicked")??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(store);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

async fn bench(dir: Option<&str>, secs: Option<&str>) -> Result<bool> {
    let secs: f64 = secs.map_or(Ok(3.0), str::parse)?;
    let dir = match dir {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("sfs-raft-bench-{}", std::process::id())),
    };
    // The sfs cluster, then the same cluster on in-memory storage (the
    // ceiling), one at a time, so that they do not share the CPU.
    let mut replicated = BTreeMap::new();
    for (name, memory) in [("sfs", false), ("memory", true)] {
        let (nodes, addrs) = start_cluster(&dir.join(name), memory)?;
        leader(&addrs, Duration::from_secs(20)).await?;
        let list: Vec<String> = addrs.values().cloned().collect();
        for clients in [1, 16] {
            let rate = replicated_rate(&list, clients, secs).await?;
            replicated.insert((memory, clients), rate);
        }
        drop(nodes);
    }
    println!(
        "writes per second, {secs} s each, 100-byte values, data in {}",
        dir.display()
    );
    for clients in [1, 16] {
        let d = dir.clone();
        let single =
            tokio::task::spawn_blocking(move || single_store_rate(&d, clients, secs)).await??;
        let sfs = replicated.get(&(false, clients)).copied().unwrap_or(0.0);
        let memory = replicated.get(&(true, clients)).copied().unwrap_or(0.0);
        println!(
            "{clients:>2} client(s): sfs cluster {sfs:>7.0}/s, in-memory cluster (ceiling) {memory:>7.0}/s, ratio {:.2}{}; one sfs store {single:>7.0}/s, ratio {:.3}",
            sfs / memory,
            if clients == 16 { " (goal >= 0.5)" } else { "" },
            sfs / single
        );
    }
    Ok(true)
}
