//! sfs as the storage of a Raft cluster, with [openraft] 0.9.
//!
//! A node keeps two sfs stores in its data directory:
//!
//! - [`LogStore`] (`log.sfs`), openraft's [`RaftLogStorage`]: the vote, the
//!   log entries (keyed by their big-endian index), the committed log id and
//!   the last purged log id. Raft requires a vote and appended entries to be
//!   on disk before they are acknowledged: a vote is `fdatasync`ed before
//!   [`save_vote`](openraft::storage::RaftLogStorage::save_vote) returns, and appended entries
//!   are written as one [`sfs::Batch`] (one `fdatasync`) before openraft's
//!   callback is called. The committed log id is written without a sync (it
//!   is a hint: Raft recomputes it).
//! - [`StateMachine`] (`sm.sfs` and the snapshot `snapshot.sfs`), openraft's
//!   [`RaftStateMachine`]: the key-value data, plus the applied log id, the
//!   membership and the log-defined time, written in the same
//!   [`sfs::Batch`] as the entries' effects, so that after a crash the data
//!   and the applied log id always agree. A group of entries openraft hands
//!   it is applied in memory first (reads see it at once, through a map of
//!   the keys it wrote) and openraft is answered; a writer thread then
//!   writes the groups waiting, all of them as one batch (one `fdatasync`),
//!   and only then forgets them in that map. A group not yet written when
//!   the machine stops is lost from the store, never half: the log, where
//!   the entries are durable, replays it from the applied log id the store
//!   has (logs are purged only up to a snapshot, whose applied log id is
//!   read from the store itself). A snapshot, an install, a shutdown and
//!   `applied_state` wait for the writer first. A snapshot is a live
//!   backup ([`sfs::Store::backup_to`]) of the state machine's store,
//!   streamed to a file while writes go on;
//!   installing one copies the received file to a temporary file, syncs it,
//!   renames it over `sm.sfs`, syncs the directory and reopens the store.
//!
//! Both stores run under [`sfs::SyncPolicy::Never`], since every write that
//! must be durable is a batch that syncs itself, with
//! [`sfs::Options::frequent_syncs`]: their files grow by writing zeros, so
//! that an append's `fdatasync` has no unwritten extent to convert.
//!
//! # Time and expiry
//! A write with a TTL is turned into an absolute expiry by the node that
//! proposes it (the leader), and every entry carries the proposer's time.
//! The state machine's store runs on a [`LogClock`]: its time is the
//! largest entry time applied so far, so every replica holds exactly the
//! same keys after the same entry, whatever its own clock says (a sweep of
//! expired keys on one replica removes only what is expired by log time on
//! every replica). Reads additionally hide entries whose expiry has passed
//! by the reading node's own clock, so a key disappears when its time comes
//! even if no write follows.
//!
//! # Retries
//! A client that sends a write again (its reply was lost, the leader
//! changed) must not have it applied twice: a write can carry a
//! [`RequestId`] ([`Command::Once`], [`Request::with_id`]), the client's id
//! and the write's number. The state machine keeps, per client, the number
//! of its last write applied and that write's response, in the same batch
//! as the write's effect and the applied log id, so in snapshots too; a
//! write seen again gets the stored response and is not applied. A client
//! idle for [`SESSION_TTL`] of log time is forgotten, which bounds the
//! table. [`net::Client`] numbers its writes so and retries with the same
//! id.
//!
//! # Example
//! ```
//! use sfs_raft::{LogStore, StateMachine};
//! use std::sync::Arc;
//!
//! let dir = tempfile::tempdir()?;
//! let log = LogStore::open(dir.path().join("log.sfs"))?;
//! let sm = StateMachine::open(dir.path(), Arc::new(sfs::SystemClock))?;
//! // Hand both to `openraft::Raft::new(id, config, network, log, sm)`.
//! assert_eq!(sm.get("missing")?, None);
//! # drop(log);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`RaftLogStorage`]: openraft::storage::RaftLogStorage
//! [`RaftStateMachine`]: openraft::storage::RaftStateMachine

// openraft's traits fix the error type, `StorageError` (224 bytes): boxing
// it in our own functions would only move the copy to the trait methods.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};

mod log_store;
pub mod memory;
pub mod net;
mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{LogClock, SnapshotBuilder, StateMachine};

/// A node's id.
pub type NodeId = u64;

/// A node's address, as openraft's `BasicNode` (`addr`: `host:port`).
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// The openraft types of an sfs cluster: [`Request`] in, [`Response`]
    /// out, `u64` node ids, snapshots as files (an sfs store file each, never
    /// held in memory whole).
    pub TypeConfig:
        D = Request,
        R = Response,
        SnapshotData = tokio::fs::File,
);

/// The Raft handle of an sfs node.
pub type Raft = openraft::Raft<TypeConfig>;

/// A write, as stored in the log: the proposer's time and the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// When the proposer accepted the write (milliseconds since the UNIX
    /// epoch, by its clock). The state machine's time never goes back: an
    /// entry with an older time is applied at the newest time seen.
    pub time_ms: i64,
    /// What to do.
    pub op: Command,
}

/// An operation on the replicated key-value data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets `key` to `value`, expiring at `expires_at_ms` if given (an
    /// absolute time, decided by the proposer).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// When it expires (ms since the UNIX epoch), if ever.
        expires_at_ms: Option<i64>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` (`None`: deletes it) if its current value is
    /// `expected` (`None`: absent or expired).
    CompareAndSwap {
        /// The key.
        key: String,
        /// The value it must have now.
        expected: Option<String>,
        /// The value it gets.
        new: Option<String>,
        /// When the new value expires (ms since the UNIX epoch), if ever.
        expires_at_ms: Option<i64>,
    },
    /// Several operations in one log entry, applied in order, each as if
    /// it were an entry of its own (a compare-and-swap sees the effect of
    /// the operations before it). [`net::serve`] groups the writes of
    /// concurrent clients so: the leader's log then syncs once for all of
    /// them (see [`Request::batch`]).
    Batch(Vec<Command>),
    /// `op` applied at most once for its request id: the state machine
    /// keeps, per client, the sequence number of the last request it
    /// applied and its response; the same request again (a retry whose
    /// reply was lost) gets that response without applying anything, an
    /// older one gets [`Response::Stale`] (see [`RequestId`]).
    Once {
        /// Who sent it, and its number among that client's requests.
        id: RequestId,
        /// What to do, once.
        op: Box<Command>,
    },
}

/// A client's write's identity, so that a retry of it is not applied
/// twice ([`Command::Once`]). A client picks a random `client` id and
/// numbers its writes `seq` 0, 1, 2, ... in the order it sends them,
/// one at a time, and sends a retry with the same id.
///
/// The state machine keeps one entry per client: the last sequence number
/// applied, its response, and the log time it was applied at, written in
/// the same atomic batch as the write's effect and the applied log id,
/// part of snapshots. An entry not used for [`SESSION_TTL`] of log time
/// (the time the leader put in the entries, the same on every replica) is
/// forgotten: the table holds at most the clients active in the last
/// [`SESSION_TTL`]. A retry later than that is applied again, as a new
/// request; clients retry for seconds, not minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The client's id (random, 64 bits).
    pub client: u64,
    /// The request's number among the client's requests.
    pub seq: u64,
}

/// How long, in log time, the state machine remembers a client's last
/// request after applying it (see [`RequestId`]).
pub const SESSION_TTL: Duration = Duration::from_secs(600);

/// What the state machine remembers of a client: its last request applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The sequence number of the client's last request applied.
    pub(crate) seq: u64,
    /// What it did.
    pub(crate) response: Response,
    /// The log time it was applied at (ms since the UNIX epoch).
    pub(crate) time_ms: i64,
}

impl Session {
    /// Whether it is forgotten at log time `now`.
    pub(crate) fn expired(&self, now: i64) -> bool {
        let ttl = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
        self.time_ms.saturating_add(ttl) <= now
    }

    /// The answer to request `id` of this session's client, if it is not
    /// to be applied: the stored response for a retry of the last request,
    /// [`Response::Stale`] for an older one.
    pub(crate) fn answer(&self, id: RequestId) -> Option<Response> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match id.seq.cmp(&self.seq) {
            Equal => Some(self.response.clone()),
            Less => Some(Response::Stale { last_seq: self.seq }),
            Greater => None,
        }
    }
}

/// How often, in log time, the state machines drop the sessions expired.
pub(crate) const SESSION_SWEEP_MS: i64 = 10_000;

impl Request {
    /// A put proposed at `now`: a TTL becomes an absolute expiry here, once,
    /// so that every replica expires the key at the same log time.
    pub fn put(
        key: impl Into<String>,
        value: impl Into<String>,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Request {
        let time_ms = millis(now);
        Request {
            time_ms,
            op: Command::Put {
                key: key.into(),
                value: value.into(),
                expires_at_ms: ttl.map(|t| expiry_after(time_ms, t)),
            },
        }
    }

    /// A delete proposed at `now`.
    pub fn delete(key: impl Into<String>, now: SystemTime) -> Request {
        Request {
            time_ms: millis(now),
            op: Command::Delete { key: key.into() },
        }
    }

    /// A compare-and-swap proposed at `now` (see [`Command::CompareAndSwap`]).
    pub fn compare_and_swap(
        key: impl Into<String>,
        expected: Option<String>,
        new: Option<String>,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Request {
        let time_ms = millis(now);
        Request {
            time_ms,
            op: Command::CompareAndSwap {
                key: key.into(),
                expected,
                new,
                expires_at_ms: ttl.map(|t| expiry_after(time_ms, t)),
            },
        }
    }
}

impl Request {
    /// This request, applied at most once for `id` (see [`Command::Once`]).
    pub fn with_id(self, id: RequestId) -> Request {
        Request {
            time_ms: self.time_ms,
            op: Command::Once {
                id,
                op: Box::new(self.op),
            },
        }
    }

    /// Several requests as one entry: their operations in order, at the
    /// newest of their times (each keeps the absolute expiry its proposer
    /// decided). One request is returned as it is.
    pub fn batch(mut requests: Vec<Request>) -> Request {
        if requests.len() == 1
            && let Some(one) = requests.pop()
        {
            return one;
        }
        let time_ms = requests.iter().map(|r| r.time_ms).max().unwrap_or(0);
        Request {
            time_ms,
            op: Command::Batch(requests.into_iter().map(|r| r.op).collect()),
        }
    }
}

/// What applying an entry did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry: nothing for a client.
    #[default]
    None,
    /// A put was applied.
    Written,
    /// A delete was applied; whether the key was there.
    Deleted {
        /// The key was present (and not expired).
        existed: bool,
    },
    /// A compare-and-swap was applied.
    Swapped {
        /// Whether the comparison held (and the new value was written).
        swapped: bool,
        /// The key's value before the operation.
        current: Option<String>,
    },
    /// What each operation of a [`Command::Batch`] did, in order.
    Batch(Vec<Response>),
    /// A [`Command::Once`] older than its client's last request applied:
    /// not applied, and its response is no longer kept.
    Stale {
        /// The sequence number of the client's last request applied.
        last_seq: u64,
    },
}

/// Milliseconds since the UNIX epoch (negative before it).
pub fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn expiry_after(time_ms: i64, ttl: Duration) -> i64 {
    time_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// A batch that is on disk when `apply` returns (one `fdatasync`), though
/// the log's and the state machine's stores run under `SyncPolicy::Never`:
/// see `sfs::Batch::durable`.
pub(crate) fn durable_batch() -> sfs::Batch {
    let mut batch = sfs::Batch::new();
    batch.durable();
    batch
}

/// An openraft storage error: `what` failed, because of `source`.
pub(crate) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    what: &str,
    source: impl std::fmt::Display,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(format!("{what}: {source}"))).into()
}

/// Builds a snapshot of `from` and installs it in `to`, the bytes passed
/// as the network would pass them: for the state machines' tests.
#[cfg(test)]
pub(crate) async fn send_snapshot<S>(from: &mut S, to: &mut S)
where
    S: openraft::storage::RaftStateMachine<TypeConfig>,
{
    use openraft::RaftSnapshotBuilder;
    let snap = from
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut incoming = to.begin_receiving_snapshot().await.unwrap();
    let mut sent = snap.snapshot.into_std().await;
    std::io::Seek::rewind(&mut sent).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut sent, &mut bytes).unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *incoming, &bytes)
        .await
        .unwrap();
    to.install_snapshot(&snap.meta, incoming).await.unwrap();
}

/// A normal log entry at `index` (term 1, node 1), for the state machines'
/// tests.
#[cfg(test)]
pub(crate) fn test_entry(index: u64, req: Request) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: openraft::EntryPayload::Normal(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_answers_its_last_request_and_expires_at_the_ttl() {
        let session = Session {
            seq: 5,
            response: Response::Written,
            time_ms: 1_000,
        };
        let id = |seq| RequestId { client: 1, seq };
        assert_eq!(session.answer(id(5)), Some(Response::Written));
        assert_eq!(session.answer(id(4)), Some(Response::Stale { last_seq: 5 }));
        assert_eq!(session.answer(id(6)), None);
        let ttl = SESSION_TTL.as_millis() as i64;
        assert!(!session.expired(1_000 + ttl - 1));
        assert!(session.expired(1_000 + ttl));
    }

    #[test]
    fn a_batch_of_one_request_is_that_request() {
        let now = SystemTime::now();
        let put = Request::put("k", "v", None, now);
        assert_eq!(Request::batch(vec![put.clone()]), put);
    }

    #[test]
    fn a_batch_keeps_the_order_and_takes_the_newest_time() {
        let t = UNIX_EPOCH + Duration::from_secs(100);
        let later = t + Duration::from_secs(1);
        let batch = Request::batch(vec![
            Request::put("a", "1", Some(Duration::from_secs(5)), later),
            Request::delete("b", t),
        ]);
        assert_eq!(batch.time_ms, 101_000);
        assert_eq!(
            batch.op,
            Command::Batch(vec![
                Command::Put {
                    key: "a".into(),
                    value: "1".into(),
                    expires_at_ms: Some(106_000),
                },
                Command::Delete { key: "b".into() },
            ])
        );
    }
}
