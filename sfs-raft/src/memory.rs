//! **The benchmark's ceiling, not for production**: openraft's storage in
//! memory, for `sfs-raft-kv bench` to measure what the same nodes, the same
//! network and the same commands do when storage costs (almost) nothing.
//!
//! [`MemLog`] keeps the vote and the log in a `BTreeMap`, [`MemStateMachine`]
//! applies the same [`Command`]s as [`StateMachine`](crate::StateMachine) to
//! a `HashMap`, with the same expiry rules (log time for writes, the wall
//! clock for reads). Nothing is durable: a node that stops loses everything,
//! so a cluster of these acknowledges writes that a crash of two nodes
//! would lose. Snapshots are JSON in memory; because the cluster's
//! [`TypeConfig`] carries snapshots as files, they are handed to openraft
//! through an unlinked file in the node's directory.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::fs;
use std::io::{Read, Seek, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::{
    Command, Node, NodeId, RequestId, Response, SESSION_SWEEP_MS, Session, TypeConfig,
    storage_error,
};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Log {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The ceiling's log: entries in a `BTreeMap`, the vote in memory (not
/// durable; benchmark only).
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    log: Arc<Mutex<Log>>,
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        Ok(lock(&self.log)
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let log = lock(&self.log);
        let last = log.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last.or(log.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        lock(&self.log).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(lock(&self.log).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        lock(&self.log).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(lock(&self.log).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut log = lock(&self.log);
            for entry in entries {
                log.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let mut log = lock(&self.log);
        log.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let mut log = lock(&self.log);
        let kept = log.entries.split_off(&log_id.index.saturating_add(1));
        log.entries = kept;
        log.last_purged = Some(log_id);
        Ok(())
    }
}

/// The ceiling state machine's contents, also its snapshot format.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Data {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    /// The log time: the largest entry time applied.
    time_ms: i64,
    /// Key to value and expiry (ms since the UNIX epoch).
    kv: HashMap<String, (String, Option<i64>)>,
    /// The clients' last requests applied (see [`RequestId`]).
    #[serde(default)]
    sessions: HashMap<u64, Session>,
    /// When (log time) the expired sessions were last dropped.
    #[serde(skip)]
    swept_ms: i64,
}

impl Data {
    fn visible(&self, key: &str, now: i64) -> Option<&String> {
        self.kv
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v)
    }

    fn set(&mut self, key: String, value: Option<String>, expires_at_ms: Option<i64>) {
        match value {
            Some(v) => self.kv.insert(key, (v, expires_at_ms)),
            None => self.kv.remove(&key),
        };
    }

    /// Applies one operation at log time `now`.
    fn apply(&mut self, op: Command, now: i64) -> Response {
        match op {
            Command::Put {
                key,
                value,
                expires_at_ms,
            } => {
                self.set(key, Some(value), expires_at_ms);
                Response::Written
            }
            Command::Delete { key } => {
                let existed = self.visible(&key, now).is_some();
                self.set(key, None, None);
                Response::Deleted { existed }
            }
            Command::CompareAndSwap {
                key,
                expected,
                new,
                expires_at_ms,
            } => {
                let current = self.visible(&key, now).cloned();
                let swapped = current == expected;
                if swapped {
                    self.set(key, new, expires_at_ms);
                }
                Response::Swapped { swapped, current }
            }
            Command::Batch(ops) => {
                Response::Batch(ops.into_iter().map(|op| self.apply(op, now)).collect())
            }
            Command::Once { id, op } => self.once(id, *op, now),
        }
    }

    /// Applies `op` unless request `id` was applied already.
    fn once(&mut self, id: RequestId, op: Command, now: i64) -> Response {
        let known = self.sessions.get(&id.client).filter(|s| !s.expired(now));
        if let Some(answer) = known.and_then(|s| s.answer(id)) {
            return answer;
        }
        let response = self.apply(op, now);
        let session = Session {
            seq: id.seq,
            response: response.clone(),
            time_ms: now,
        };
        self.sessions.insert(id.client, session);
        response
    }

    /// Forgets the sessions expired at log time `now`, every
    /// [`SESSION_SWEEP_MS`].
    fn sweep_sessions(&mut self, now: i64) {
        if now >= self.swept_ms.saturating_add(SESSION_SWEEP_MS) {
            self.swept_ms = now;
            self.sessions.retain(|_, s| !s.expired(now));
        }
    }
}

/// The last snapshot built or installed: its meta and its bytes.
type Stored = (SnapshotMeta<NodeId, Node>, Arc<Vec<u8>>);

struct Shared {
    dir: PathBuf,
    data: Mutex<Data>,
    snapshot: Mutex<Option<Stored>>,
    temp_files: AtomicU64,
}

/// The ceiling's state machine: the same commands applied to a `HashMap`
/// (not durable; benchmark only).
#[derive(Clone)]
pub struct MemStateMachine {
    shared: Arc<Shared>,
}

impl Debug for MemStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStateMachine").finish_non_exhaustive()
    }
}

/// Builds the ceiling's snapshots.
#[derive(Debug)]
pub struct MemSnapshotBuilder {
    sm: MemStateMachine,
}

fn snap_error(verb: ErrorVerb, what: &str, e: impl std::fmt::Display) -> StorageError<NodeId> {
    storage_error(ErrorSubject::Snapshot(None), verb, what, e)
}

impl MemStateMachine {
    /// An empty state machine; `dir` only holds the unlinked files through
    /// which snapshots are handed to openraft.
    pub fn new(dir: impl AsRef<Path>) -> Result<MemStateMachine> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)
            .map_err(|e| snap_error(ErrorVerb::Write, "creating the directory", e))?;
        Ok(MemStateMachine {
            shared: Arc::new(Shared {
                dir,
                data: Mutex::default(),
                snapshot: Mutex::default(),
                temp_files: AtomicU64::new(0),
            }),
        })
    }

    /// The value of `key` as applied here, hidden once its expiry passes
    /// by the wall clock.
    pub fn get(&self, key: &str) -> Option<String> {
        let now = crate::millis(std::time::SystemTime::now());
        lock(&self.shared.data).visible(key, now).cloned()
    }

    /// An unlinked read-write file in the node's directory.
    fn unlinked_file(&self) -> std::io::Result<fs::File> {
        let n = self.shared.temp_files.fetch_add(1, Ordering::Relaxed);
        let path = self.shared.dir.join(format!(".memory-snapshot.{n}"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        fs::remove_file(&path)?;
        Ok(file)
    }

    fn snapshot_file(&self, bytes: &[u8]) -> Result<Box<tokio::fs::File>> {
        let file = self
            .unlinked_file()
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.rewind()?;
                Ok(f)
            })
            .map_err(|e| snap_error(ErrorVerb::Write, "handing a snapshot over", e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    fn current(&self) -> Result<Option<Snapshot<TypeConfig>>> {
        let current = lock(&self.shared.snapshot).clone();
        match current {
            None => Ok(None),
            Some((meta, bytes)) => Ok(Some(Snapshot {
                meta,
                snapshot: self.snapshot_file(&bytes)?,
            })),
        }
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = MemSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        let data = lock(&self.shared.data);
        Ok((data.applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut data = lock(&self.shared.data);
        let mut replies = Vec::new();
        let mut applied_any = false;
        for entry in entries {
            applied_any = true;
            data.applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Membership(m) => {
                    data.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
                EntryPayload::Normal(req) => {
                    data.time_ms = data.time_ms.max(req.time_ms);
                    let now = data.time_ms;
                    data.apply(req.op, now)
                }
            };
            replies.push(reply);
        }
        if applied_any {
            let now = data.time_ms;
            data.sweep_sessions(now);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> MemSnapshotBuilder {
        MemSnapshotBuilder { sm: self.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>> {
        let file = self.unlinked_file().map_err(|e| {
            snap_error(ErrorVerb::Write, "creating a file to receive a snapshot", e)
        })?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<()> {
        let mut file = *snapshot;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| snap_error(ErrorVerb::Write, "writing the received snapshot", e))?;
        let mut file = file.into_std().await;
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|()| file.read_to_end(&mut bytes))
            .map_err(|e| snap_error(ErrorVerb::Read, "reading the received snapshot", e))?;
        let data: Data = serde_json::from_slice(&bytes)
            .map_err(|e| snap_error(ErrorVerb::Read, "decoding the received snapshot", e))?;
        *lock(&self.shared.data) = data;
        *lock(&self.shared.snapshot) = Some((meta.clone(), Arc::new(bytes)));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        self.current()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (bytes, applied, membership) = {
            let data = lock(&self.sm.shared.data);
            let bytes = serde_json::to_vec(&*data)
                .map_err(|e| snap_error(ErrorVerb::Write, "encoding a snapshot", e))?;
            (bytes, data.applied, data.membership.clone())
        };
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let file = self.sm.snapshot_file(&bytes)?;
        *lock(&self.sm.shared.snapshot) = Some((meta.clone(), Arc::new(bytes)));
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::BTreeSet;
    use std::time::{Duration, SystemTime};

    use crate::test_entry as entry;

    #[tokio::test]
    async fn applies_like_the_sfs_state_machine_and_snapshots_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = MemStateMachine::new(dir.path().join("a")).unwrap();
        let now = SystemTime::now();
        let members = Membership::new(vec![BTreeSet::from([1])], None);
        let replies = sm
            .apply(vec![
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
                    payload: EntryPayload::Membership(members),
                },
                entry(2, Request::put("k", "v", None, now)),
                entry(
                    3,
                    Request::compare_and_swap("k", None, Some("w".into()), None, now),
                ),
                entry(4, Request::delete("k", now)),
                entry(
                    5,
                    Request::put("t", "x", Some(Duration::from_secs(60)), now),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(replies[1], Response::Written);
        assert_eq!(
            replies[2],
            Response::Swapped {
                swapped: false,
                current: Some("v".into())
            }
        );
        assert_eq!(replies[3], Response::Deleted { existed: true });
        assert_eq!(sm.get("k"), None);
        assert_eq!(sm.get("t"), Some("x".into()));

        let mut other = MemStateMachine::new(dir.path().join("b")).unwrap();
        crate::send_snapshot(&mut sm, &mut other).await;
        assert_eq!(other.get("t"), Some("x".into()));
        let (applied, membership) = other.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(5));
        assert_eq!(membership.log_id().map(|l| l.index), Some(1));
        assert!(other.get_current_snapshot().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_request_is_applied_once_here_too_and_snapshots_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = MemStateMachine::new(dir.path().join("a")).unwrap();
        let now = SystemTime::now();
        let id = crate::RequestId { client: 3, seq: 9 };
        let put = Request::put("k", "first", None, now).with_id(id);
        let replies = sm
            .apply(vec![
                entry(1, put.clone()),
                entry(2, Request::put("k", "second", None, now)),
                entry(3, put.clone()),
            ])
            .await
            .unwrap();
        assert_eq!(replies, vec![Response::Written; 3]);
        assert_eq!(sm.get("k"), Some("second".into()));

        let mut other = MemStateMachine::new(dir.path().join("b")).unwrap();
        crate::send_snapshot(&mut sm, &mut other).await;
        other.apply(vec![entry(4, put)]).await.unwrap();
        assert_eq!(other.get("k"), Some("second".into()));
    }

    #[tokio::test]
    async fn the_log_truncates_and_purges() {
        let mut log = MemLog::default();
        {
            let mut l = lock(&log.log);
            for i in 1..=5 {
                l.entries
                    .insert(i, entry(i, Request::delete("k", SystemTime::now())));
            }
        }
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        let left = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(left.len(), 1);
    }
}
