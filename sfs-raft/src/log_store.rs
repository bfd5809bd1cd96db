//! The Raft log on an sfs store.
//!
//! Keys: `vote`, `committed`, `purged` (each a JSON value) and `l` followed
//! by an entry's index as 8 big-endian bytes. An entry's value is a zero
//! byte then the entry in bincode (2.x, standard configuration, through
//! serde); logs written before that hold entries as JSON (the first byte
//! `{`), which are still read. The store has no order, so the range of
//! indexes present is kept in memory, found by one scan of the keys when
//! the store opens.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};
use sfs::{Options, Store, SyncPolicy};

use crate::{NodeId, TypeConfig, durable_batch, storage_error};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";
/// Deletes per batch in purge and truncation (each batch is one sync).
const CHUNK: u64 = 4096;

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The first byte of an entry encoded with bincode (see the module docs).
const BINCODE: u8 = 0;

fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>> {
    let mut bytes = vec![BINCODE];
    bincode::serde::encode_into_std_write(entry, &mut bytes, bincode::config::standard()).map_err(
        |e| {
            storage_error(
                ErrorSubject::Log(entry.log_id),
                ErrorVerb::Write,
                "encoding a log entry",
                e,
            )
        },
    )?;
    Ok(bytes)
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>> {
    let subject = ErrorSubject::LogIndex(index);
    match bytes {
        [BINCODE, rest @ ..] => {
            match bincode::serde::decode_from_slice(rest, bincode::config::standard()) {
                Ok((entry, used)) if used == rest.len() => Ok(entry),
                Ok(_) => Err(storage_error(
                    subject,
                    ErrorVerb::Read,
                    "decoding a log entry",
                    "bytes left over after the entry",
                )),
                Err(e) => Err(storage_error(
                    subject,
                    ErrorVerb::Read,
                    "decoding a log entry",
                    e,
                )),
            }
        }
        // Written before entries went to bincode.
        _ => serde_json::from_slice(bytes)
            .map_err(|e| storage_error(subject, ErrorVerb::Read, "decoding a log entry", e)),
    }
}

fn entry_index(key: &[u8]) -> Option<u64> {
    match key {
        [b'l', rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// What of the log is present.
#[derive(Debug, Default)]
struct Range {
    last_purged: Option<LogId<NodeId>>,
    /// The first and last entries present (`None`: no entry).
    first: Option<u64>,
    last: Option<LogId<NodeId>>,
}

struct Inner {
    store: Store,
    range: Mutex<Range>,
}

/// openraft's log storage on one sfs store (see the crate's documentation
/// for what is synced when). Cloning shares the store: the clone is also
/// the log reader openraft's replication tasks use.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let log = sfs_raft::LogStore::open(dir.path().join("log.sfs"))?;
/// # drop(log);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.store.path())
            .finish_non_exhaustive()
    }
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

impl LogStore {
    /// Opens (or creates) the log at `path`, an sfs store file, and finds
    /// the range of entries in it. Entries left at or below the purged
    /// index by an interrupted purge are removed now.
    pub fn open(path: impl AsRef<Path>) -> Result<LogStore> {
        let path = path.as_ref();
        // No entry cap (an evicted entry would be a lost one), no sync per
        // put: the writes that must be durable sync themselves (a vote
        // explicitly, appends and removals as batches). Synced that often,
        // the file grows by writing zeros (see `Options::frequent_syncs`).
        let store = Options::new()
            .sync(SyncPolicy::Never)
            .frequent_syncs(true)
            .open(path)
            .map_err(|e| {
                storage_error(
                    ErrorSubject::Store,
                    ErrorVerb::Read,
                    "opening the log store",
                    e,
                )
            })?;
        let log = LogStore {
            inner: Arc::new(Inner {
                store,
                range: Mutex::new(Range::default()),
            }),
        };
        log.load_range()?;
        Ok(log)
    }

    fn range(&self) -> MutexGuard<'_, Range> {
        // A panic while it was held left it as it was before or after one
        // update; the numbers stay usable.
        self.inner.range.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_range(&self) -> Result<()> {
        let store = &self.inner.store;
        let last_purged: Option<LogId<NodeId>> = self.read_json(PURGED, ErrorSubject::Logs)?;
        let floor = last_purged.map_or(0, |p| p.index + 1);
        let mut stale = Vec::new();
        let (mut first, mut last) = (None::<u64>, None::<u64>);
        for key in store.keys() {
            let Some(i) = entry_index(&key) else { continue };
            if i < floor {
                stale.push(i);
                continue;
            }
            first = Some(first.map_or(i, |f| f.min(i)));
            last = Some(last.map_or(i, |l| l.max(i)));
        }
        for chunk in stale.chunks(CHUNK as usize) {
            let mut batch = durable_batch();
            for &i in chunk {
                batch.delete(entry_key(i));
            }
            store.apply(&batch).map_err(|e| {
                storage_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Delete,
                    "removing entries below the purged index",
                    e,
                )
            })?;
        }
        let last = match last {
            Some(i) => Some(self.read_entry(i)?.map(|e| e.log_id).ok_or_else(|| {
                storage_error(
                    ErrorSubject::LogIndex(i),
                    ErrorVerb::Read,
                    "reading the last entry",
                    "missing",
                )
            })?),
            None => None,
        };
        *self.range() = Range {
            last_purged,
            first,
            last,
        };
        Ok(())
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>> {
        let what = String::from_utf8_lossy(key);
        let bytes = self.inner.store.get(key).map_err(|e| {
            storage_error(
                subject.clone(),
                ErrorVerb::Read,
                &format!("reading {what}"),
                e,
            )
        })?;
        match bytes {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                storage_error(subject, ErrorVerb::Read, &format!("decoding {what}"), e)
            }),
        }
    }

    fn write_json<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<()> {
        let what = String::from_utf8_lossy(key);
        let bytes = serde_json::to_vec(value).map_err(|e| {
            storage_error(
                subject.clone(),
                ErrorVerb::Write,
                &format!("encoding {what}"),
                e,
            )
        })?;
        self.inner
            .store
            .put(key, bytes)
            .map_err(|e| storage_error(subject, ErrorVerb::Write, &format!("writing {what}"), e))
    }

    fn read_entry(&self, index: u64) -> Result<Option<Entry<TypeConfig>>> {
        let subject = ErrorSubject::LogIndex(index);
        let bytes = self
            .inner
            .store
            .get(entry_key(index))
            .map_err(|e| storage_error(subject, ErrorVerb::Read, "reading a log entry", e))?;
        bytes.map(|b| decode_entry(index, &b)).transpose()
    }

    /// Deletes the entries `from..=to`, highest first, a chunk per batch:
    /// a crash in between leaves a contiguous log.
    fn delete_down(&self, from: u64, to: u64) -> Result<()> {
        let mut hi = to;
        loop {
            let lo = hi.saturating_sub(CHUNK - 1).max(from);
            let mut batch = durable_batch();
            for i in lo..=hi {
                batch.delete(entry_key(i));
            }
            self.inner.store.apply(&batch).map_err(|e| {
                storage_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Delete,
                    "deleting log entries",
                    e,
                )
            })?;
            if lo == from {
                return Ok(());
            }
            hi = lo - 1;
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let (first, last) = {
            let r = self.range();
            match (r.first, r.last) {
                (Some(f), Some(l)) => (f, l.index),
                _ => return Ok(Vec::new()),
            }
        };
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&i) => i - 1,
            Bound::Unbounded => u64::MAX,
        }
        .min(last);
        let mut entries = Vec::new();
        if start > end {
            return Ok(entries);
        }
        for i in start..=end {
            // A missing entry is allowed (purged or truncated meanwhile).
            if let Some(e) = self.read_entry(i)? {
                entries.push(e);
            }
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let r = self.range();
        Ok(LogState {
            last_purged_log_id: r.last_purged,
            last_log_id: r.last.or(r.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    /// Durable before it returns: the put, then an `fdatasync`.
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.write_json(VOTE, vote, ErrorSubject::Vote)?;
        self.inner
            .store
            .sync()
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, "syncing the vote", e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_json(VOTE, ErrorSubject::Vote)
    }

    /// Not synced: the committed log id only spares work after a restart.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.write_json(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .read_json::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    /// The entries are written as one batch, which is synced before
    /// `apply` returns; only then is `callback` told.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = durable_batch();
        let (mut first, mut last) = (None, None);
        for entry in entries {
            batch.put(entry_key(entry.log_id.index), encode_entry(&entry)?);
            first.get_or_insert(entry.log_id.index);
            last = Some(entry.log_id);
        }
        if let Err(e) = self.inner.store.apply(&batch) {
            let message = format!("appending log entries: {e}");
            callback.log_io_completed(Err(std::io::Error::other(message.clone())));
            return Err(storage_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                "appending log entries",
                e,
            ));
        }
        if let (Some(f), Some(l)) = (first, last) {
            let mut r = self.range();
            r.first = Some(r.first.map_or(f, |x| x.min(f)));
            r.last = Some(l);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Removes the entries from `log_id` on (synced).
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let (first, last) = {
            let r = self.range();
            (r.first, r.last)
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(());
        };
        let from = log_id.index.max(first);
        if from > last.index {
            return Ok(());
        }
        self.delete_down(from, last.index)?;
        let new_last = if from > first {
            self.read_entry(from - 1)?.map(|e| e.log_id)
        } else {
            None
        };
        let mut r = self.range();
        r.last = new_last;
        if new_last.is_none() {
            r.first = None;
        }
        Ok(())
    }

    /// Records `log_id` as purged and removes the entries up to it, the
    /// record in the same batch as the first chunk of removals (synced).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let (first, last) = {
            let r = self.range();
            (r.first, r.last)
        };
        let record = serde_json::to_vec(&log_id).map_err(|e| {
            storage_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                "encoding the purged log id",
                e,
            )
        })?;
        let mut batch = durable_batch();
        batch.put(PURGED, record);
        let upto = match (first, last) {
            (Some(_), Some(l)) => log_id.index.min(l.index),
            _ => 0,
        };
        let mut next = first.filter(|&f| f <= upto);
        // The record, with the lowest chunk; then the rest, lowest first:
        // entries left by a crash are below the record, removed at open.
        loop {
            if let Some(lo) = next {
                let hi = lo.saturating_add(CHUNK - 1).min(upto);
                for i in lo..=hi {
                    batch.delete(entry_key(i));
                }
                next = (hi < upto).then_some(hi + 1);
            }
            self.inner.store.apply(&batch).map_err(|e| {
                storage_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Delete,
                    "purging log entries",
                    e,
                )
            })?;
            if next.is_none() {
                break;
            }
            batch = durable_batch();
        }
        let mut r = self.range();
        r.last_purged = Some(log_id);
        match r.last {
            Some(l) if l.index > log_id.index => r.first = Some(log_id.index + 1),
            _ => {
                r.first = None;
                r.last = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, test_entry};
    use openraft::storage::RaftLogStorageExt;

    #[tokio::test]
    async fn entries_go_in_bincode_and_entries_written_as_json_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sfs");
        let now = std::time::SystemTime::now();
        let old = test_entry(1, Request::put("a", "written as JSON", None, now));
        // A log of the earlier format: the entry as JSON.
        {
            let store = Options::new().open(&path).unwrap();
            store
                .put(entry_key(1), serde_json::to_vec(&old).unwrap())
                .unwrap();
        }
        let mut log = LogStore::open(&path).unwrap();
        let new = test_entry(2, Request::put("b", "written now", None, now));
        log.blocking_append([new.clone()]).await.unwrap();
        let raw = log.inner.store.get(entry_key(2)).unwrap().unwrap();
        assert_eq!(raw[0], BINCODE, "a new entry is tagged bincode");
        assert!(raw.len() < serde_json::to_vec(&new).unwrap().len());
        let got = log.try_get_log_entries(1..=2).await.unwrap();
        let ids: Vec<_> = got.iter().map(|e| e.log_id).collect();
        assert_eq!(ids, [old.log_id, new.log_id]);
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::to_value([&old, &new]).unwrap(),
            "both read back whole"
        );
        // Damage is an error, not a panic or a wrong entry.
        assert!(decode_entry(3, &[BINCODE, 0xff, 0xff]).is_err());
        assert!(decode_entry(3, b"{not json").is_err());
        let mut extra = raw.to_vec();
        extra.push(0);
        assert!(decode_entry(2, &extra).is_err(), "bytes left over");
    }
}
