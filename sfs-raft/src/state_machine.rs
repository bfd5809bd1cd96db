//! The state machine on an sfs store, its snapshots, and the log clock.
//!
//! Keys of `sm.sfs`: `d/` followed by a user key (the data), `c/` followed
//! by a client id in 16 hex digits (the client's last request applied, its
//! response and log time, JSON: see [`RequestId`](crate::RequestId)), and
//! `m/applied`, `m/membership`, `m/time` (JSON), written in the same batch
//! as the effects of the entries they describe.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use sfs::{BackupOptions, Clock, Options, PutOptions, Store, SyncPolicy};
use tokio::io::AsyncWriteExt;

use crate::{
    Command, Node, NodeId, RequestId, Response, SESSION_SWEEP_MS, Session, TypeConfig,
    durable_batch, storage_error,
};

const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const TIME: &[u8] = b"m/time";
const DATA: &str = "d/";
const SESSIONS: &[u8] = b"c/";

const SM_FILE: &str = "sm.sfs";
const SNAPSHOT_FILE: &str = "snapshot.sfs";
/// Temporary files start so: `.sm.incoming`, `.snapshot.incoming`,
/// `.snapshot.building.N`, `.snapshot.receiving.N` (the last unlinked as
/// soon as created). Leftovers of a crash are removed at open.
const TEMP_PREFIXES: [&str; 2] = [".sm.", ".snapshot."];
const SM_INCOMING: &str = ".sm.incoming";
const SNAPSHOT_INCOMING: &str = ".snapshot.incoming";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The state machine's clock: the newest entry time applied (ms since the
/// UNIX epoch). It never goes back while entries are applied, and it is the
/// same on every replica after the same entry, so expiry inside the
/// replicated store is decided by the log, not by each machine's clock.
#[derive(Debug, Default)]
pub struct LogClock(AtomicI64);

impl LogClock {
    /// Moves the clock to `ms` if that is later.
    pub fn advance_to(&self, ms: i64) {
        self.0.fetch_max(ms, Ordering::SeqCst);
    }

    fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for LogClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn data_key(key: &str) -> String {
    format!("{DATA}{key}")
}

fn session_key(client: u64) -> Vec<u8> {
    format!("c/{client:016x}").into_bytes()
}

/// The clients' last requests applied, as the store has them.
fn load_sessions(store: &Store) -> Result<HashMap<u64, Session>> {
    let mut sessions = HashMap::new();
    for key in store.keys() {
        let Some(hex) = key.strip_prefix(SESSIONS) else {
            continue;
        };
        let client = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                let what = String::from_utf8_lossy(&key);
                sm_error(
                    ErrorVerb::Read,
                    "reading the clients",
                    format!("bad key {what}"),
                )
            })?;
        // Gone since listed (an expiry): nothing to remember.
        if let Some(session) = get_json::<Session>(store, &key)? {
            sessions.insert(client, session);
        }
    }
    Ok(sessions)
}

/// The clients' last requests applied (see [`RequestId`]), and when
/// (log time) the expired ones were last dropped.
#[derive(Default)]
struct Sessions {
    map: HashMap<u64, Session>,
    swept_ms: i64,
}

/// A write of an applied group, for the writer.
enum WriteOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: Option<i64>,
    },
    Delete(Vec<u8>),
}

/// An applied group of entries: its effects and its log id, numbered.
struct Group {
    seq: u64,
    ops: Vec<WriteOp>,
}

/// The groups applied and not yet in the store, and how the writing goes.
#[derive(Default)]
struct Queue {
    groups: VecDeque<Group>,
    /// The groups through this number are in the store.
    written: u64,
    /// Why a batch failed: no group after it is written (the store would
    /// miss its effects), every later call fails.
    failed: Option<String>,
    /// The state machine is gone: the writer stops.
    closed: bool,
    /// Someone waits for the groups to be written: no pause.
    urgent: bool,
}

/// Between [`StateMachine::apply`](RaftStateMachine::apply) and the writer
/// thread.
#[derive(Default)]
struct Writer {
    queue: Mutex<Queue>,
    /// Signalled when a group is queued, or the queue closed.
    more: Condvar,
    /// Signalled when groups are written (or failed).
    done: Condvar,
}

impl Writer {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self) -> Result<()> {
        match &self.queue().failed {
            Some(e) => Err(sm_error(ErrorVerb::Write, "applying entries", e)),
            None => Ok(()),
        }
    }
}

/// What the applied groups not yet written make of user keys: the group's
/// number, and the value and expiry (`None`: deleted).
type Overlay = HashMap<String, (u64, Option<(String, Option<i64>)>)>;

/// The store and the overlay, shared with the writer thread.
struct Data {
    store: RwLock<Arc<Store>>,
    /// Read before the store: what it does not have yet.
    overlay: Mutex<Overlay>,
}

struct Shared {
    dir: PathBuf,
    data: Arc<Data>,
    writer: Arc<Writer>,
    /// The writer thread, joined when the state machine is dropped (so that
    /// the store is closed when the last handle goes).
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The number of the last group applied.
    applied_seq: AtomicU64,
    clock: Arc<LogClock>,
    /// The reading node's clock, for hiding what expired since the last
    /// entry was applied.
    wall: Arc<dyn Clock>,
    /// The clients' last requests: kept here whole, and written to the
    /// store with the groups.
    sessions: Mutex<Sessions>,
    /// The meta of `snapshot.sfs`; held while the snapshot file is replaced.
    snapshot: Mutex<Option<SnapshotMeta<NodeId, Node>>>,
    /// Numbers temporary files.
    temp_files: AtomicU64,
}

/// openraft's state machine on an sfs store in a directory (`sm.sfs`, and
/// the latest snapshot, `snapshot.sfs`). Cloning shares it.
///
/// ```
/// use std::sync::Arc;
///
/// let dir = tempfile::tempdir()?;
/// let sm = sfs_raft::StateMachine::open(dir.path(), Arc::new(sfs::SystemClock))?;
/// assert_eq!(sm.last_applied()?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// Builds a snapshot of a [`StateMachine`]: a live backup of its store.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

fn sm_error(verb: ErrorVerb, what: &str, e: impl std::fmt::Display) -> StorageError<NodeId> {
    storage_error(ErrorSubject::StateMachine, verb, what, e)
}

fn snap_error(verb: ErrorVerb, what: &str, e: impl std::fmt::Display) -> StorageError<NodeId> {
    storage_error(ErrorSubject::Snapshot(None), verb, what, e)
}

fn get_json<T: serde::de::DeserializeOwned>(store: &Store, key: &[u8]) -> Result<Option<T>> {
    let what = String::from_utf8_lossy(key);
    match store
        .get(key)
        .map_err(|e| sm_error(ErrorVerb::Read, &format!("reading {what}"), e))?
    {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| sm_error(ErrorVerb::Read, &format!("decoding {what}"), e)),
    }
}

fn put_json<T: serde::Serialize>(ops: &mut Vec<WriteOp>, key: &[u8], value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| {
        let what = format!("encoding {}", String::from_utf8_lossy(key));
        sm_error(ErrorVerb::Write, &what, e)
    })?;
    ops.push(WriteOp::Put {
        key: key.to_vec(),
        value: bytes,
        expires_at_ms: None,
    });
    Ok(())
}

type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, Node>);

fn applied_state_of(store: &Store) -> Result<Applied> {
    let applied = get_json(store, APPLIED)?;
    let membership = get_json(store, MEMBERSHIP)?.unwrap_or_default();
    Ok((applied, membership))
}

/// A snapshot's id: its last log id, so that a snapshot built and the same
/// snapshot installed elsewhere carry the same id.
fn snapshot_id(last: Option<LogId<NodeId>>) -> String {
    match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".to_string(),
    }
}

/// The meta and log time recorded inside a snapshot file.
fn read_snapshot_file(path: &Path) -> Result<(SnapshotMeta<NodeId, Node>, i64)> {
    let store = Options::new()
        .read_only(true)
        .open(path)
        .map_err(|e| snap_error(ErrorVerb::Read, "opening a snapshot", e))?;
    let (last_log_id, last_membership) = applied_state_of(&store)?;
    let time = get_json::<i64>(&store, TIME)?.unwrap_or(0);
    store
        .close()
        .map_err(|e| snap_error(ErrorVerb::Read, "closing a snapshot", e))?;
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id: snapshot_id(last_log_id),
    };
    Ok((meta, time))
}

/// Copies `src` from its start to a new file at `path` and syncs it.
fn copy_synced(src: &mut File, path: &Path) -> io::Result<()> {
    src.rewind()?;
    let mut f = File::create(path)?;
    io::copy(src, &mut f)?;
    f.sync_all()
}

fn open_for_openraft(path: &Path) -> io::Result<Box<tokio::fs::File>> {
    Ok(Box::new(tokio::fs::File::from_std(File::open(path)?)))
}

/// Renames `from` to `to` (same directory) and syncs the directory.
fn rename_synced(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::rename(from, to)?;
    let dir = to.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl StateMachine {
    /// Opens (or creates) the state machine in `dir`. `wall` is this node's
    /// clock, used only to hide, on reads, keys whose expiry has passed
    /// since the last entry was applied (tests pass an
    /// [`sfs::ManualClock`]).
    pub fn open(dir: impl AsRef<Path>, wall: Arc<dyn Clock>) -> Result<StateMachine> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)
            .map_err(|e| sm_error(ErrorVerb::Write, "creating the directory", e))?;
        let listing = fs::read_dir(&dir)
            .map_err(|e| sm_error(ErrorVerb::Read, "listing the directory", e))?;
        for file in listing {
            let file = file.map_err(|e| sm_error(ErrorVerb::Read, "listing the directory", e))?;
            let name = file.file_name();
            if TEMP_PREFIXES
                .iter()
                .any(|p| name.to_string_lossy().starts_with(p))
            {
                fs::remove_file(file.path()).map_err(|e| {
                    sm_error(ErrorVerb::Delete, "removing an unfinished snapshot", e)
                })?;
            }
        }
        let clock = Arc::new(LogClock::default());
        let store = open_store(&dir.join(SM_FILE), &clock)?;
        let sessions = Sessions {
            map: load_sessions(&store)?,
            swept_ms: 0,
        };
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = if snapshot_path.exists() {
            Some(read_snapshot_file(&snapshot_path)?.0)
        } else {
            None
        };
        let writer = Arc::new(Writer::default());
        let data = Arc::new(Data {
            store: RwLock::new(Arc::new(store)),
            overlay: Mutex::new(Overlay::new()),
        });
        let thread = {
            let (writer, data) = (Arc::clone(&writer), Arc::clone(&data));
            std::thread::Builder::new()
                .name("sfs-raft-sm-writer".to_string())
                .spawn(move || write_loop(&writer, &data))
                .map_err(|e| sm_error(ErrorVerb::Write, "starting the writer thread", e))?
        };
        Ok(StateMachine {
            shared: Arc::new(Shared {
                dir,
                data,
                writer,
                thread: Mutex::new(Some(thread)),
                applied_seq: AtomicU64::new(0),
                clock,
                wall,
                sessions: Mutex::new(sessions),
                snapshot: Mutex::new(snapshot),
                temp_files: AtomicU64::new(0),
            }),
        })
    }

    fn store(&self) -> Arc<Store> {
        self.shared.store()
    }

    /// The value of `key`, or `None` if it is absent or expired (by log
    /// time, or by this node's clock). Served from this replica: for a
    /// linearizable read, call `Raft::ensure_linearizable` on the leader
    /// first.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let now = self.shared.wall.now_millis();
        if let Some((_, v)) = self.shared.overlay().get(key) {
            let log_now = self.shared.clock.now_millis();
            return Ok(v
                .as_ref()
                .filter(|(_, exp)| exp.is_none_or(|at| at > now && at > log_now))
                .map(|(v, _)| v.clone()));
        }
        let entry = self
            .store()
            .get_entry(data_key(key))
            .map_err(|e| sm_error(ErrorVerb::Read, "reading a key", e))?;
        Ok(entry.and_then(|e| {
            let expired = e.expires_at.is_some_and(|at| crate::millis(at) <= now);
            (!expired).then(|| String::from_utf8_lossy(&e.value).into_owned())
        }))
    }

    /// The log id of the last entry applied.
    pub fn last_applied(&self) -> Result<Option<LogId<NodeId>>> {
        self.shared.flush()?;
        get_json(&self.store(), APPLIED)
    }

    /// The state machine's time: the newest entry time applied.
    pub fn log_time(&self) -> i64 {
        self.shared.clock.now_millis()
    }

    /// Writes the groups applied, then syncs and closes the store for
    /// writing (see [`Store::shutdown`]).
    pub fn shutdown(&self) -> Result<()> {
        self.shared.flush()?;
        self.store()
            .shutdown()
            .map_err(|e| sm_error(ErrorVerb::Write, "closing the state machine", e))
    }
}

fn open_store(path: &Path, clock: &Arc<LogClock>) -> Result<Store> {
    // No entry cap: an eviction would make replicas differ. No sync per
    // put: every write is a batch, synced when applied (so, as for the
    // log, `frequent_syncs`).
    let store = Options::new()
        .sync(SyncPolicy::Never)
        .frequent_syncs(true)
        .clock(Arc::clone(clock) as Arc<dyn Clock>)
        .open(path)
        .map_err(|e| sm_error(ErrorVerb::Read, "opening the state machine's store", e))?;
    if let Some(t) = get_json::<i64>(&store, TIME)? {
        clock.set(t);
    }
    Ok(store)
}

/// The least time between two batches of the writer: under load, groups
/// wait for up to this long to share a batch (one `fdatasync` for them
/// all), sparing the disk for the log's syncs, which Raft waits for.
const WRITE_PAUSE: Duration = Duration::from_millis(10);

/// The writer thread: writes the groups queued, all those waiting as one
/// batch (one `fdatasync`), at most one batch per [`WRITE_PAUSE`] unless
/// someone waits for them, until the state machine is gone.
fn write_loop(writer: &Writer, data: &Data) {
    let mut last_write: Option<Instant> = None;
    loop {
        let mut queue = writer.queue();
        while queue.groups.is_empty() && !queue.closed {
            queue = writer.more.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(resume) = last_write.map(|t| t + WRITE_PAUSE) {
            while !queue.closed && !queue.urgent {
                let Some(left) = resume.checked_duration_since(Instant::now()) else {
                    break;
                };
                queue = writer
                    .more
                    .wait_timeout(queue, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if queue.closed {
            return;
        }
        queue.urgent = false;
        let groups: Vec<Group> = queue.groups.drain(..).collect();
        let failed = queue.failed.is_some();
        drop(queue);
        let result = if failed {
            Ok(())
        } else {
            data.write_groups(&groups)
        };
        last_write = Some(Instant::now());
        let mut queue = writer.queue();
        match result {
            Ok(()) if !failed => {
                queue.written = groups.last().map_or(queue.written, |g| g.seq);
            }
            Ok(()) => {}
            Err(e) => queue.failed = Some(e.to_string()),
        }
        writer.done.notify_all();
    }
}

impl Drop for Shared {
    /// Stops the writer (it finishes the batch it is writing) and writes the
    /// groups left; the store closes when this returns.
    fn drop(&mut self) {
        self.writer.queue().closed = true;
        self.writer.more.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            // Its panic was printed; the groups left are written below.
            eprintln!("sfs-raft: the state machine's writer thread panicked");
        }
        let mut queue = self.writer.queue();
        let groups: Vec<Group> = queue.groups.drain(..).collect();
        let failed = queue.failed.is_some();
        drop(queue);
        if !groups.is_empty()
            && !failed
            && let Err(e) = self.data.write_groups(&groups)
        {
            // Nothing to return it to. Nothing is lost either: the groups'
            // entries are in the log, which replays them from the applied
            // log id the store has.
            eprintln!("sfs-raft: writing the last applied entries at close: {e}");
        }
    }
}

impl Data {
    fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `groups` as one batch, then forgets them in the overlay. The
    /// batch is durable when written: after a power loss the store must
    /// hold a prefix of the applied groups (its applied log id with all
    /// the effects before it), which batches settled by a later sync would
    /// not promise.
    fn write_groups(&self, groups: &[Group]) -> Result<()> {
        let mut batch = durable_batch();
        for op in groups.iter().flat_map(|g| &g.ops) {
            match op {
                WriteOp::Put {
                    key,
                    value,
                    expires_at_ms: None,
                } => batch.put(key, value),
                WriteOp::Put {
                    key,
                    value,
                    expires_at_ms: Some(ms),
                } => batch.put_with(key, value, &PutOptions::new().expires_at(system_time(*ms))),
                WriteOp::Delete(key) => batch.delete(key),
            };
        }
        self.store()
            .apply(&batch)
            .map_err(|e| sm_error(ErrorVerb::Write, "applying entries", e))?;
        if let Some(last) = groups.last() {
            self.overlay().retain(|_, (seq, _)| *seq > last.seq);
        }
        Ok(())
    }
}

impl Shared {
    fn store(&self) -> Arc<Store> {
        self.data.store()
    }

    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.data.overlay()
    }

    /// Waits until every group applied so far is in the store.
    fn flush(&self) -> Result<()> {
        let target = self.applied_seq.load(Ordering::SeqCst);
        let mut queue = self.writer.queue();
        if queue.written < target {
            queue.urgent = true;
            self.writer.more.notify_all();
        }
        loop {
            if let Some(e) = &queue.failed {
                return Err(sm_error(ErrorVerb::Write, "applying entries", e));
            }
            if queue.written >= target {
                return Ok(());
            }
            queue = self
                .writer
                .done
                .wait(queue)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot_meta(&self) -> MutexGuard<'_, Option<SnapshotMeta<NodeId, Node>>> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>> {
        let meta = self.snapshot_meta();
        let Some(meta) = meta.as_ref() else {
            return Ok(None);
        };
        let file = open_for_openraft(&self.dir.join(SNAPSHOT_FILE))
            .map_err(|e| snap_error(ErrorVerb::Read, "opening the snapshot file", e))?;
        Ok(Some(Snapshot {
            meta: meta.clone(),
            snapshot: file,
        }))
    }

    fn temp_path(&self, prefix: &str) -> PathBuf {
        let n = self.temp_files.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{prefix}.{n}"))
    }

    /// A live backup of the store, streamed to a file that becomes
    /// `snapshot.sfs` (unless a newer snapshot is there already, which is
    /// returned instead).
    fn build(&self) -> Result<Snapshot<TypeConfig>> {
        self.flush()?;
        let store = self.store();
        let building = self.temp_path(".snapshot.building");
        let written = File::create(&building).and_then(|mut f| {
            store
                .backup_to(&mut f, &BackupOptions::new())
                .map_err(io::Error::other)?;
            f.sync_all()
        });
        let placed = written.and_then(|()| {
            let mut current = self.snapshot_meta();
            let (meta, _) = read_snapshot_file(&building).map_err(io::Error::other)?;
            if let Some(cur) = current.as_ref()
                && cur.last_log_id > meta.last_log_id
            {
                fs::remove_file(&building)?;
                return Ok(None);
            }
            rename_synced(&building, &self.dir.join(SNAPSHOT_FILE))?;
            *current = Some(meta.clone());
            Ok(Some(meta))
        });
        let meta = match placed {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                return self.current_snapshot()?.ok_or_else(|| {
                    snap_error(ErrorVerb::Read, "reading the newer snapshot", "it vanished")
                });
            }
            Err(e) => {
                if let Err(rm) = fs::remove_file(&building)
                    && rm.kind() != io::ErrorKind::NotFound
                {
                    return Err(snap_error(
                        ErrorVerb::Write,
                        "building a snapshot",
                        format!("{e} (and removing {}: {rm})", building.display()),
                    ));
                }
                return Err(snap_error(ErrorVerb::Write, "building a snapshot", e));
            }
        };
        let file = open_for_openraft(&self.dir.join(SNAPSHOT_FILE))
            .map_err(|e| snap_error(ErrorVerb::Read, "opening the snapshot file", e))?;
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }

    /// Replaces the store with the received snapshot: a copy in a
    /// temporary file, synced, renamed over `sm.sfs`, the directory synced,
    /// the store reopened.
    fn install(&self, meta: &SnapshotMeta<NodeId, Node>, received: &mut File) -> Result<()> {
        self.flush()?;
        let mut current = self.snapshot_meta();
        let incoming = self.dir.join(SNAPSHOT_INCOMING);
        copy_synced(received, &incoming)
            .map_err(|e| snap_error(ErrorVerb::Write, "writing the received snapshot", e))?;
        let (found, time) = read_snapshot_file(&incoming)?;
        if found.last_log_id != meta.last_log_id || found.last_membership != meta.last_membership {
            return Err(snap_error(
                ErrorVerb::Read,
                "checking the received snapshot",
                format!(
                    "its data is at {:?}, its meta says {:?}",
                    found.last_log_id, meta.last_log_id
                ),
            ));
        }
        let sm_incoming = self.dir.join(SM_INCOMING);
        File::open(&incoming)
            .and_then(|mut f| copy_synced(&mut f, &sm_incoming))
            .map_err(|e| sm_error(ErrorVerb::Write, "writing the new state machine", e))?;
        let mut slot = self.data.store.write().unwrap_or_else(|e| e.into_inner());
        slot.shutdown()
            .map_err(|e| sm_error(ErrorVerb::Write, "closing the replaced state machine", e))?;
        rename_synced(&sm_incoming, &self.dir.join(SM_FILE)).map_err(|e| {
            sm_error(
                ErrorVerb::Write,
                "putting the new state machine in place",
                e,
            )
        })?;
        self.clock.set(time);
        let store = open_store(&self.dir.join(SM_FILE), &self.clock)?;
        *self.sessions() = Sessions {
            map: load_sessions(&store)?,
            swept_ms: 0,
        };
        *slot = Arc::new(store);
        drop(slot);
        rename_synced(&incoming, &self.dir.join(SNAPSHOT_FILE))
            .map_err(|e| snap_error(ErrorVerb::Write, "putting the snapshot in place", e))?;
        *current = Some(found);
        Ok(())
    }
}

/// What the group being applied makes of each key so far (`None`:
/// deleted), with the expiry.
type Pending = HashMap<String, Option<(String, Option<i64>)>>;

/// The value a key has in the group being applied, in the groups applied
/// and not yet written, or in the store.
fn visible(
    store: &Store,
    overlay: &Overlay,
    pending: &Pending,
    key: &str,
    now: i64,
) -> Result<Option<String>> {
    if let Some(p) = pending
        .get(key)
        .or_else(|| overlay.get(key).map(|(_, v)| v))
    {
        return Ok(p
            .as_ref()
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v.clone()));
    }
    let v = store
        .get(data_key(key))
        .map_err(|e| sm_error(ErrorVerb::Read, "reading a key", e))?;
    Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn put(ops: &mut Vec<WriteOp>, key: &str, value: &str, expires_at_ms: Option<i64>) {
    ops.push(WriteOp::Put {
        key: data_key(key).into_bytes(),
        value: value.as_bytes().to_vec(),
        expires_at_ms,
    });
}

/// What the group being applied reads and writes.
struct Applying<'a> {
    store: &'a Store,
    overlay: &'a Overlay,
    /// What the group makes of each key so far.
    pending: Pending,
    /// The clients' last requests before the group.
    sessions: &'a HashMap<u64, Session>,
    /// Those the group applied.
    new_sessions: HashMap<u64, Session>,
    ops: Vec<WriteOp>,
}

/// Adds the effect of `op` to the group and returns its response.
fn apply_op(g: &mut Applying<'_>, op: Command, now: i64) -> Result<Response> {
    Ok(match op {
        Command::Put {
            key,
            value,
            expires_at_ms,
        } => {
            put(&mut g.ops, &key, &value, expires_at_ms);
            g.pending.insert(key, Some((value, expires_at_ms)));
            Response::Written
        }
        Command::Delete { key } => {
            let existed = visible(g.store, g.overlay, &g.pending, &key, now)?.is_some();
            g.ops.push(WriteOp::Delete(data_key(&key).into_bytes()));
            g.pending.insert(key, None);
            Response::Deleted { existed }
        }
        Command::CompareAndSwap {
            key,
            expected,
            new,
            expires_at_ms,
        } => {
            let current = visible(g.store, g.overlay, &g.pending, &key, now)?;
            let swapped = current == expected;
            if swapped {
                match &new {
                    Some(v) => put(&mut g.ops, &key, v, expires_at_ms),
                    None => g.ops.push(WriteOp::Delete(data_key(&key).into_bytes())),
                }
                g.pending.insert(key, new.map(|v| (v, expires_at_ms)));
            }
            Response::Swapped { swapped, current }
        }
        Command::Batch(ops) => Response::Batch(
            ops.into_iter()
                .map(|op| apply_op(g, op, now))
                .collect::<Result<_>>()?,
        ),
        Command::Once { id, op } => once(g, id, *op, now)?,
    })
}

/// Applies `op` unless request `id` was applied already (see
/// [`RequestId`]), and remembers it as its client's last request.
fn once(g: &mut Applying<'_>, id: RequestId, op: Command, now: i64) -> Result<Response> {
    let known = g
        .new_sessions
        .get(&id.client)
        .or_else(|| g.sessions.get(&id.client))
        .filter(|s| !s.expired(now));
    if let Some(answer) = known.and_then(|s| s.answer(id)) {
        return Ok(answer);
    }
    let response = apply_op(g, op, now)?;
    let session = Session {
        seq: id.seq,
        response: response.clone(),
        time_ms: now,
    };
    put_json(&mut g.ops, &session_key(id.client), &session)?;
    g.new_sessions.insert(id.client, session);
    Ok(response)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<Applied> {
        self.shared.flush()?;
        applied_state_of(&self.store())
    }

    /// Applies the entries as one group: their effects, the last applied
    /// log id, the membership and the log time, one batch in the store, all
    /// or none after a crash. The responses are returned once the group is
    /// in memory (reads see it); the writer thread writes it behind (see the
    /// crate's documentation).
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.shared.writer.failed()?;
        let store = self.store();
        let clock = &self.shared.clock;
        let mut overlay = self.shared.overlay();
        let mut sessions = self.shared.sessions();
        let mut g = Applying {
            store: &store,
            overlay: &overlay,
            pending: Pending::new(),
            sessions: &sessions.map,
            new_sessions: HashMap::new(),
            ops: Vec::new(),
        };
        let mut replies = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            last = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Response::None
                }
                EntryPayload::Normal(req) => {
                    clock.advance_to(req.time_ms);
                    let now = clock.now_millis();
                    apply_op(&mut g, req.op, now)?
                }
            };
            replies.push(reply);
        }
        let Some(last) = last else {
            return Ok(replies);
        };
        let Applying {
            pending,
            new_sessions,
            mut ops,
            ..
        } = g;
        sessions.map.extend(new_sessions);
        // Forgets the clients idle for longer than `SESSION_TTL` (log
        // time, so every replica forgets the same; a session found expired
        // before it is dropped counts as absent anyway).
        let now = clock.now_millis();
        if now >= sessions.swept_ms.saturating_add(SESSION_SWEEP_MS) {
            sessions.swept_ms = now;
            sessions.map.retain(|&client, s| {
                let keep = !s.expired(now);
                if !keep {
                    ops.push(WriteOp::Delete(session_key(client)));
                }
                keep
            });
        }
        drop(sessions);
        put_json(&mut ops, APPLIED, &last)?;
        if let Some(m) = &membership {
            put_json(&mut ops, MEMBERSHIP, m)?;
        }
        put_json(&mut ops, TIME, &clock.now_millis())?;
        // Numbered, shown to readers, then queued: the writer forgets a
        // group's keys in the overlay only after writing it.
        let seq = self.shared.applied_seq.load(Ordering::SeqCst) + 1;
        for (key, value) in pending {
            overlay.insert(key, (seq, value));
        }
        drop(overlay);
        self.shared.applied_seq.store(seq, Ordering::SeqCst);
        let writer = &self.shared.writer;
        writer.queue().groups.push_back(Group { seq, ops });
        writer.more.notify_one();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
        }
    }

    /// An unnamed temporary file in the directory (its name is removed as
    /// soon as it is created: nothing is left if the transfer stops).
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>> {
        let path = self.shared.temp_path(".snapshot.receiving");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| fs::remove_file(&path).map(|()| f))
            .map_err(|e| {
                snap_error(ErrorVerb::Write, "creating a file to receive a snapshot", e)
            })?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let meta = meta.clone();
        let mut file = *snapshot;
        // The writes openraft made through it are finished.
        file.flush()
            .await
            .map_err(|e| snap_error(ErrorVerb::Write, "writing the received snapshot", e))?;
        let mut file = file.into_std().await;
        tokio::task::spawn_blocking(move || shared.install(&meta, &mut file))
            .await
            .map_err(|e| snap_error(ErrorVerb::Write, "installing a snapshot", e))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        self.shared.current_snapshot()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// A live backup of the state machine's store ([`Store::backup_to`]),
    /// streamed to a file: writes go on while it is copied. Its meta (last log id, membership)
    /// is read from the copy itself, so it matches the data exactly.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.build())
            .await
            .map_err(|e| snap_error(ErrorVerb::Write, "building a snapshot", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    use crate::test_entry as entry;

    #[tokio::test]
    async fn groups_are_read_before_written_and_written_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut sm = StateMachine::open(dir.path(), Arc::new(sfs::SystemClock)).unwrap();
        for i in 1..=50u64 {
            let replies = sm
                .apply(vec![
                    entry(2 * i - 1, Request::put(format!("k{i}"), "a", None, now)),
                    entry(
                        2 * i,
                        Request::compare_and_swap(
                            format!("k{i}"),
                            Some("a".into()),
                            Some("b".into()),
                            None,
                            now,
                        ),
                    ),
                ])
                .await
                .unwrap();
            assert!(matches!(
                replies[1],
                Response::Swapped { swapped: true, .. }
            ));
            // Seen at once, written or not.
            assert_eq!(sm.get(&format!("k{i}")).unwrap().as_deref(), Some("b"));
            // A later group sees an earlier one, written or not.
            if i > 1 {
                let replies = sm
                    .apply(vec![entry(
                        1000 + i,
                        Request::delete(format!("k{}", i - 1), now),
                    )])
                    .await
                    .unwrap();
                assert_eq!(replies[0], Response::Deleted { existed: true });
            }
        }
        drop(sm);
        let mut sm = StateMachine::open(dir.path(), Arc::new(sfs::SystemClock)).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1050));
        assert_eq!(sm.get("k50").unwrap().as_deref(), Some("b"));
        assert_eq!(sm.get("k49").unwrap(), None);
    }
}

#[cfg(test)]
mod once_tests {
    use super::*;
    use crate::{Request, RequestId, SESSION_TTL};

    use crate::test_entry as entry;

    fn at(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    }

    fn id(client: u64, seq: u64) -> RequestId {
        RequestId { client, seq }
    }

    async fn apply_one(sm: &mut StateMachine, index: u64, req: Request) -> Response {
        let mut replies = sm.apply(vec![entry(index, req)]).await.unwrap();
        assert_eq!(replies.len(), 1);
        replies.remove(0)
    }

    const T: i64 = 1_700_000_000_000;

    /// Client 7's put of `k` (request 0), then another client's put of
    /// `k`: a second apply of request 0 would bring "first" back.
    fn first_put() -> Request {
        Request::put("k", "first", None, at(T)).with_id(id(7, 0))
    }

    /// Client 7's compare-and-swap of `n` from absent to "1" (request 1):
    /// applied twice, the second would answer `swapped: false`.
    fn first_cas() -> Request {
        Request::compare_and_swap("n", None, Some("1".into()), None, at(T)).with_id(id(7, 1))
    }

    fn swapped_from_none() -> Response {
        Response::Swapped {
            swapped: true,
            current: None,
        }
    }

    #[tokio::test]
    async fn a_request_applied_twice_takes_effect_once_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), Arc::new(sfs::SystemClock)).unwrap();
        assert_eq!(apply_one(&mut sm, 1, first_put()).await, Response::Written);
        let other = Request::put("k", "second", None, at(T)).with_id(id(8, 0));
        assert_eq!(apply_one(&mut sm, 2, other).await, Response::Written);
        // The same request again: its response, no effect.
        assert_eq!(apply_one(&mut sm, 3, first_put()).await, Response::Written);
        assert_eq!(sm.get("k").unwrap().as_deref(), Some("second"));
        // Twice in one group, as well.
        let replies = sm
            .apply(vec![entry(4, first_cas()), entry(5, first_cas())])
            .await
            .unwrap();
        assert_eq!(replies, vec![swapped_from_none(), swapped_from_none()]);
        // An older request than the last: not applied, not answered.
        assert_eq!(
            apply_one(&mut sm, 6, first_put()).await,
            Response::Stale { last_seq: 1 }
        );
        assert_eq!(sm.get("k").unwrap().as_deref(), Some("second"));

        // Written and reopened: the table is in the store.
        drop(sm);
        let mut sm = StateMachine::open(dir.path(), Arc::new(sfs::SystemClock)).unwrap();
        let reset = Request::put("n", "2", None, at(T));
        assert_eq!(apply_one(&mut sm, 7, reset).await, Response::Written);
        assert_eq!(
            apply_one(&mut sm, 8, first_cas()).await,
            swapped_from_none()
        );
        assert_eq!(sm.get("n").unwrap().as_deref(), Some("2"));
        // A new request of the client is applied.
        let next = Request::put("k", "third", None, at(T)).with_id(id(7, 2));
        assert_eq!(apply_one(&mut sm, 9, next).await, Response::Written);
        assert_eq!(sm.get("k").unwrap().as_deref(), Some("third"));
    }

    #[tokio::test]
    async fn the_clients_last_requests_travel_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path().join("a"), Arc::new(sfs::SystemClock)).unwrap();
        assert_eq!(
            apply_one(&mut sm, 1, first_cas()).await,
            swapped_from_none()
        );
        let mut other =
            StateMachine::open(dir.path().join("b"), Arc::new(sfs::SystemClock)).unwrap();
        // The receiver had applied nothing of it: it must learn the
        // client's request from the snapshot, not from its own history.
        crate::send_snapshot(&mut sm, &mut other).await;
        let reset = Request::put("n", "2", None, at(T));
        assert_eq!(apply_one(&mut other, 2, reset).await, Response::Written);
        assert_eq!(
            apply_one(&mut other, 3, first_cas()).await,
            swapped_from_none()
        );
        assert_eq!(other.get("n").unwrap().as_deref(), Some("2"));
    }

    #[tokio::test]
    async fn a_client_idle_for_the_session_ttl_is_forgotten_by_log_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), Arc::new(sfs::SystemClock)).unwrap();
        assert_eq!(
            apply_one(&mut sm, 1, first_cas()).await,
            swapped_from_none()
        );
        let ttl = SESSION_TTL.as_millis() as i64;
        // Just before the TTL (log time): still remembered.
        let before = Request::put("n", "2", None, at(T + ttl - 1));
        apply_one(&mut sm, 2, before).await;
        assert_eq!(
            apply_one(&mut sm, 3, first_cas()).await,
            swapped_from_none()
        );
        assert_eq!(sm.get("n").unwrap().as_deref(), Some("2"));
        // Past the TTL, at the next sweep (every `SESSION_SWEEP_MS` of log
        // time): dropped from the table and from the store.
        let after = Request::put("other", "x", None, at(T + ttl + SESSION_SWEEP_MS));
        apply_one(&mut sm, 4, after).await;
        assert!(sm.shared.sessions().map.is_empty());
        sm.shared.flush().unwrap();
        assert_eq!(sm.store().get(session_key(7)).unwrap(), None);
        // A retry that late counts as a new request.
        assert_eq!(
            apply_one(&mut sm, 5, first_cas()).await,
            Response::Swapped {
                swapped: false,
                current: Some("2".into())
            }
        );
    }
}
