//! `sfs-raft-kv`: a replicated key-value service on sfs, one process per
//! node, talking JSON lines over TCP.
//!
//! ```text
//! sfs-raft-kv node ID DIR PEERS [--init]    run node ID with its data in DIR
//!     PEERS: 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//!     --init: make PEERS the cluster's first membership (once, on one node)
//! sfs-raft-kv client ADDRS COMMAND          ADDRS: 127.0.0.1:7001,127.0.0.1:7002
//!     put KEY VALUE [TTL_MS] | get KEY | read KEY (linearizable)
//!     delete KEY | cas KEY EXPECTED NEW ('-' for absent) | status
//! sfs-raft-kv demo [DIR] [WRITES]
//!     starts 3 nodes, writes while killing the leader with SIGKILL, then
//!     checks every acknowledged write on every node
//! ```

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, SnapshotPolicy};
use sfs_raft::net::{Client, ClientReply, ClientRequest, TcpNetwork, serve};
use sfs_raft::{LogStore, NodeId, Raft, StateMachine};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const USAGE: &str = "usage:
  sfs-raft-kv node ID DIR PEERS [--init]   (PEERS: 1=127.0.0.1:7001,2=...,3=...)
  sfs-raft-kv client ADDRS put KEY VALUE [TTL_MS] | get KEY | read KEY | delete KEY
                           | cas KEY EXPECTED NEW ('-': absent) | status
  sfs-raft-kv demo [DIR] [WRITES]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = match args.as_slice() {
        ["node", id, dir, peers, rest @ ..] => node(id, dir, peers, rest == ["--init"]).await,
        ["client", addrs, command @ ..] => client(addrs, command).await,
        ["demo", rest @ ..] => demo(rest.first().copied(), rest.get(1).copied()).await,
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

async fn node(id: &str, dir: &str, peers: &str, init: bool) -> Result<bool> {
    let id: NodeId = id.parse()?;
    let peers = parse_peers(peers)?;
    let addr = peers
        .get(&id)
        .ok_or(format!("node {id} is not among the peers"))?;
    let dir = Path::new(dir);
    let log = LogStore::open(dir.join("log.sfs"))?;
    let sm = StateMachine::open(dir.join("sm"), Arc::new(sfs::SystemClock))?;
    let config = Config {
        cluster_name: "sfs-raft-kv".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    let raft = Raft::new(
        id,
        Arc::new(config.validate()?),
        TcpNetwork,
        log,
        sm.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("node {id}: serving on {addr}, data in {}", dir.display());
    let server = tokio::spawn(serve(listener, raft.clone(), sm));
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

async fn demo(dir: Option<&str>, writes: Option<&str>) -> Result<bool> {
    let writes: usize = writes.map_or(Ok(300), str::parse)?;
    let dir = match dir {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("sfs-raft-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
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
        dir: dir.clone(),
        peers,
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
