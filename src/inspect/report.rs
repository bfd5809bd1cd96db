//! What a file holds, block by block, in the terms `sfs-dump` shows: every
//! block's [`State`] (live, expired, free, corrupt), the [`Summary`] figures, a
//! [`Map`] of the layout, and the [`Problem`]s a check finds, each with its
//! offset and a reason a person can act on.
//!
//! Everything here is built on the [`Walker`], so the tool and the store read a
//! file the same way. A file is read in two steps:
//!
//! 1. [`Report::scan`] walks once, keeping a 64-bit keyed hash of every key
//!    (8 bytes per entry), and gives the summary and the map. Keys with more
//!    than one copy (left by a crash; none in a cleanly closed file) are
//!    resolved by a second walk over those keys only, which keeps where the
//!    newest copy of each lies.
//! 2. [`Report::rows`] walks again and hands out one [`Row`] per block in file
//!    order, now knowing for every copy of a key whether it is the newest; rows
//!    are not kept, so a listing of a file of many GB streams.
//!
//! Rules, the same as the store's open (FORMAT.md, "Reading a file"): of the
//! valid copies of a key, the one with the highest sequence number is the key's
//! entry (the lower offset on a tie); it is live, or expired when its expiry is
//! at or before "now" (a parameter, never the clock). Older copies are a normal
//! leftover of a crash before the store freed them: they are shown as free,
//! *superseded*, and a check reports them as notes, not damage. Zero bytes where
//! a block should start are free space never written (a note, too). Entries
//! whose payload checksum fails and regions without a valid block header are
//! corrupt: damage.
//!
//! Nothing is allocated from a length field that has not been checked against
//! the file; a length that points past the end is reported as damage.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io;

use super::{BlockKind, Source, Walker, read_file_header};
use crate::format::{FILE_HEADER_LEN, FileHeader, HeaderError};

mod batches;
mod lookup;
mod map;
mod problem;
mod rows;

pub use lookup::{FoundEntry, KeyLookup, find_key};
pub use map::{CellState, Map};
pub use problem::{Findings, Problem, ProblemKind};
pub use rows::{Row, RowKind, Rows};

/// Pieces in which payloads and free space are read.
pub(super) const CHUNK: u64 = 1 << 16;
/// How many bytes of a key a problem's reason quotes.
pub(super) const KEY_QUOTE: usize = 48;

/// The state of a block as the store sees it at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// The newest copy of its key, not expired: the store serves it.
    Live,
    /// The newest copy of its key, past its expiry: the store frees it.
    Expired,
    /// Space that holds no entry: a free block, zeros never written, or an
    /// older copy of a key that has a newer one.
    Free,
    /// Damage: an entry whose payload checksum fails, or bytes without a
    /// valid block header.
    Corrupt,
}

impl State {
    /// The lowercase name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Expired => "expired",
            State::Free => "free",
            State::Corrupt => "corrupt",
        }
    }
}

/// The file header as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderStatus {
    /// A valid header.
    Valid(FileHeader),
    /// The magic matches but the header is damaged or cut short. When the file
    /// is long enough to hold a header, `fields` are its fields as they read
    /// (unchecked), and the blocks are read with the salt found there: if it
    /// survived, the entries still verify.
    Damaged {
        /// What is wrong, in words.
        reason: String,
        /// The header's fields as they read, when all 64 bytes are there.
        fields: Option<FileHeader>,
    },
}

impl HeaderStatus {
    /// The header the blocks are read with, if any.
    pub fn fields(&self) -> Option<&FileHeader> {
        match self {
            HeaderStatus::Valid(h) => Some(h),
            HeaderStatus::Damaged { fields, .. } => fields.as_ref(),
        }
    }

    /// Whether the header is valid.
    pub fn is_valid(&self) -> bool {
        matches!(self, HeaderStatus::Valid(_))
    }
}

/// Reads the file header; refuses only files that are not store files at all
/// or are of another format version.
pub(super) fn read_header(src: &mut impl Source) -> io::Result<Result<HeaderStatus, HeaderError>> {
    Ok(match read_file_header(src)? {
        Ok(h) => Ok(HeaderStatus::Valid(h)),
        Err(HeaderError::Corrupt(reason)) => {
            let fields = if src.len() >= FILE_HEADER_LEN {
                let mut b = [0u8; FILE_HEADER_LEN as usize];
                src.read_at(0, &mut b)?;
                Some(FileHeader {
                    version: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
                    salt: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
                    created_ms: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
                })
            } else {
                None
            };
            Ok(HeaderStatus::Damaged { reason, fields })
        }
        Err(e) => Err(e),
    })
}

/// Figures for the whole file. Every byte after the file header is in exactly
/// one of the live, expired, free and corrupt counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Length of the file in bytes.
    pub file_len: u64,
    /// The format version field of the file header (as read, if damaged).
    pub format_version: u32,
    /// When the file was created (ms since the UNIX epoch; as read, if damaged).
    pub created_ms: u64,
    /// Live entries.
    pub live_entries: u64,
    /// Bytes in live entries' blocks.
    pub live_bytes: u64,
    /// Expired entries (the newest copy of their key, past its expiry).
    pub expired_entries: u64,
    /// Bytes in expired entries' blocks.
    pub expired_bytes: u64,
    /// Free blocks, superseded copies and unwritten regions included.
    pub free_blocks: u64,
    /// Bytes in those.
    pub free_bytes: u64,
    /// Corrupt blocks: entries with a bad payload checksum, and regions without
    /// a valid block header.
    pub corrupt_blocks: u64,
    /// Bytes in those.
    pub corrupt_bytes: u64,
    /// The largest single free block (adjacent free blocks are not added up).
    pub largest_free_block: u64,
    /// Older copies of keys that have a newer one (counted as free).
    pub superseded_blocks: u64,
    /// Bytes in those.
    pub superseded_bytes: u64,
    /// Regions of zeros where a block should start (counted as free).
    pub unwritten_blocks: u64,
    /// Bytes in those.
    pub unwritten_bytes: u64,
    /// The highest sequence number in a valid block header (0 if none).
    pub max_seq: u64,
    /// The longest block or region (for laying out columns).
    pub largest_block: u64,
    /// Commit records of atomic batches (counted as free: an open frees
    /// them once their batch is settled).
    pub commit_records: u64,
    /// Of those, the complete ones: batches that committed and are not yet
    /// settled (their pending members count as entries).
    pub unsettled_batches: u64,
    /// Batch members still pending (their expiry word not yet settled).
    pub pending_entries: u64,
    /// Of those, the members of batches that did not commit (counted as
    /// free).
    pub uncommitted_entries: u64,
}

impl Summary {
    /// Blocks and regions after the file header.
    pub fn blocks(&self) -> u64 {
        self.live_entries + self.expired_entries + self.free_blocks + self.corrupt_blocks
    }

    /// Share of free space outside the largest free block: 0 when all free
    /// space is one block (or there is none), near 1 when it is in crumbs.
    /// The same figure as [`Stats::fragmentation`](crate::Stats::fragmentation).
    /// It says little when free space is a small share of the file
    /// (`free_bytes` against `file_len`): `sfs-dump` calls it negligible
    /// under 5 %.
    ///
    /// ```
    /// use sfs::inspect::report::Summary;
    ///
    /// let s = Summary { free_bytes: 1000, largest_free_block: 250, ..Summary::default() };
    /// assert_eq!(s.fragmentation(), 0.75);
    /// assert_eq!(Summary::default().fragmentation(), 0.0);
    /// ```
    pub fn fragmentation(&self) -> f64 {
        if self.free_bytes == 0 {
            0.0
        } else {
            1.0 - self.largest_free_block as f64 / self.free_bytes as f64
        }
    }

    /// The block and byte counts of a state.
    fn counts(&mut self, state: State) -> (&mut u64, &mut u64) {
        match state {
            State::Live => (&mut self.live_entries, &mut self.live_bytes),
            State::Expired => (&mut self.expired_entries, &mut self.expired_bytes),
            State::Free => (&mut self.free_blocks, &mut self.free_bytes),
            State::Corrupt => (&mut self.corrupt_blocks, &mut self.corrupt_bytes),
        }
    }

    fn add(&mut self, state: State, len: u64) {
        let (blocks, bytes) = self.counts(state);
        *blocks += 1;
        *bytes += len;
        if state == State::Free {
            self.largest_free_block = self.largest_free_block.max(len);
        }
        self.largest_block = self.largest_block.max(len);
    }

    fn remove(&mut self, state: State, len: u64) {
        let (blocks, bytes) = self.counts(state);
        // Saturating: a file that changes between two walks must not panic.
        *blocks = blocks.saturating_sub(1);
        *bytes = bytes.saturating_sub(len);
    }
}

/// Options for [`Report::scan`].
#[derive(Clone, Copy, Debug)]
pub struct ScanOptions {
    /// "Now", in milliseconds since the UNIX epoch: entries expiring at or
    /// before it are expired.
    pub now_ms: i64,
    /// Build a [`Map`] of at most this many cells (0: no map).
    pub map_cells: usize,
}

impl ScanOptions {
    /// A scan at `now_ms`, without a map.
    pub fn at(now_ms: i64) -> ScanOptions {
        ScanOptions {
            now_ms,
            map_cells: 0,
        }
    }

    /// Also builds a map of at most `cells` cells.
    pub fn with_map(mut self, cells: usize) -> ScanOptions {
        self.map_cells = cells;
        self
    }
}

/// Where the newest copy of a key lies.
#[derive(Clone, Copy, Debug)]
pub(super) struct Newest {
    pub(super) offset: u64,
    pub(super) seq: u64,
    pub(super) len: u64,
    pub(super) expired: bool,
    /// A tombstone of a complete, unsettled batch (at `offset`, its commit
    /// record): the key is deleted, unless a later copy exists.
    pub(super) tombstone: bool,
}

/// Which keys have more than one copy, and where the newest copy of each of
/// those lies. Keys are told apart by keyed hashes (SipHash-1-3 with random
/// keys): 64 bits to find the keys that may repeat, 128 bits to resolve them,
/// so that a false match between two different keys needs a 128-bit
/// coincidence. No key bytes are kept.
struct Copies {
    hashers: (RandomState, RandomState),
    /// 64-bit hashes seen on more than one valid entry.
    repeated: HashSet<u64>,
    /// The newest copy of each key whose 64-bit hash is repeated.
    newest: HashMap<u128, Newest>,
}

impl Copies {
    fn new() -> Copies {
        Copies {
            hashers: (RandomState::new(), RandomState::new()),
            repeated: HashSet::new(),
            newest: HashMap::new(),
        }
    }

    fn short_hash(&self, key: &[u8]) -> u64 {
        self.hashers.0.hash_one(key)
    }

    fn long_hash(&self, short: u64, key: &[u8]) -> u128 {
        u128::from(short) << 64 | u128::from(self.hashers.1.hash_one(key))
    }

    /// The newest copy of `key` when it has several; `None` when this is its
    /// only copy.
    pub(super) fn newest_of(&self, key: &[u8]) -> Option<&Newest> {
        let short = self.short_hash(key);
        if !self.repeated.contains(&short) {
            return None;
        }
        self.newest.get(&self.long_hash(short, key))
    }
}

/// What [`Report::scan`] found: the file header, the summary figures, the map,
/// and (inside) which keys have several copies and where the newest is, which
/// [`Report::rows`] uses.
///
/// ```
/// use sfs::inspect::report::{Report, ScanOptions, State};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("r.sfs");
/// let store = sfs::Store::open(&path)?;
/// store.put(b"k", b"v")?;
/// store.close()?;
///
/// let bytes = std::fs::read(&path)?;
/// let report = Report::scan(&bytes[..], ScanOptions::at(0))?.expect("a store file");
/// assert_eq!(report.summary.live_entries, 1);
/// let mut rows = report.rows(&bytes[..], true);
/// let row = rows.next_row()?.expect("one block");
/// assert_eq!((row.state, row.key()), (State::Live, Some(&b"k"[..])));
/// assert!(row.problems.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Report {
    /// The file header.
    pub header: HeaderStatus,
    /// Figures for the whole file.
    pub summary: Summary,
    /// The map, when asked for.
    pub map: Option<Map>,
    now_ms: i64,
    copies: Copies,
    batches: batches::ReportBatches,
}

impl Report {
    /// Walks `src`: once, and a second time only over the keys that have
    /// several copies, if any. `Ok(Err(..))` when it is not a store file
    /// ([`HeaderError::NotAStore`]) or of another format version; a damaged
    /// file header is reported (see [`HeaderStatus`]), not refused.
    ///
    /// Memory: 8 bytes per valid entry during the first walk, then about 60
    /// bytes per key that has several copies; nothing per block otherwise.
    pub fn scan<S: Source>(
        mut src: S,
        opts: ScanOptions,
    ) -> io::Result<Result<Report, HeaderError>> {
        let header = match read_header(&mut src)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let file_len = src.len();
        let mut report = Report {
            summary: Summary {
                file_len,
                format_version: header.fields().map_or(0, |h| h.version),
                created_ms: header.fields().map_or(0, |h| h.created_ms),
                ..Summary::default()
            },
            map: (opts.map_cells > 0).then(|| Map::new(file_len, opts.map_cells)),
            now_ms: opts.now_ms,
            copies: Copies::new(),
            batches: batches::ReportBatches::default(),
            header,
        };
        if let Some(map) = &mut report.map {
            let c = if report.header.is_valid() {
                CellState::Header
            } else {
                CellState::Corrupt
            };
            map.tally(0, file_len.min(FILE_HEADER_LEN), c, false);
        }
        let Some(&fields) = report.header.fields() else {
            return Ok(Ok(report));
        };
        // First walk: every block counted as if each entry were its key's
        // only copy; a 64-bit hash of every key kept.
        let mut hashes: Vec<u64> = Vec::new();
        let mut walker = Walker::with_header(&mut src, fields);
        while let Some(block) = walker.next_block()? {
            let (offset, len) = (block.offset, block.len);
            let state = match block.kind {
                BlockKind::Entry(h) => {
                    report.summary.max_seq = report.summary.max_seq.max(h.seq);
                    if h.pending {
                        report.summary.pending_entries += 1;
                        report.batches.pending(offset, len, &h, opts.now_ms);
                    }
                    hashes.push(report.copies.short_hash(walker.key()));
                    live_or_expired(h.is_expired(opts.now_ms))
                }
                BlockKind::Commit(_, ref c) => {
                    report.summary.max_seq = report.summary.max_seq.max(c.last_seq());
                    report.summary.commit_records += 1;
                    report.batches.commit(offset, c.clone());
                    State::Free
                }
                BlockKind::Free => State::Free,
                BlockKind::Unwritten => {
                    report.summary.unwritten_blocks += 1;
                    report.summary.unwritten_bytes += len;
                    State::Free
                }
                BlockKind::CorruptEntry(h) => {
                    report.summary.max_seq = report.summary.max_seq.max(h.seq);
                    State::Corrupt
                }
                BlockKind::Damaged(_) => State::Corrupt,
            };
            report.summary.add(state, len);
            if let Some(map) = &mut report.map {
                map.tally(offset, len, CellState::of(state), false);
            }
        }
        // Batches: which commit records are complete; the pending members of
        // the others are not entries but free space.
        for (offset, len, was) in report.batches.resolve(&mut src, fields)? {
            report.summary.remove(was, len);
            report.summary.add(State::Free, len);
            report.summary.uncommitted_entries += 1;
            if let Some(map) = &mut report.map {
                map.tally(offset, len, CellState::of(was), true);
                map.tally(offset, len, CellState::Free, false);
            }
        }
        report.summary.unsettled_batches = report.batches.complete_count();
        // A complete batch's tombstone is a copy of its key too: the newest
        // when no later copy exists (the key is deleted).
        let tombstones = report.batches.tombstones();
        for (_, _, key) in &tombstones {
            hashes.push(report.copies.short_hash(key));
        }
        hashes.sort_unstable();
        report.copies.repeated = hashes
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        drop(hashes);
        if report.copies.repeated.is_empty() {
            return Ok(Ok(report));
        }
        for (offset, seq, key) in tombstones {
            let short = report.copies.short_hash(&key);
            if report.copies.repeated.contains(&short) {
                let hash = report.copies.long_hash(short, &key);
                let t = Newest {
                    offset,
                    seq,
                    len: 0,
                    expired: false,
                    tombstone: true,
                };
                report.copies.newest.insert(hash, t);
            }
        }
        // Second walk, over the keys that may have several copies: the
        // newest copy wins, the others become free.
        let mut walker = Walker::with_header(&mut src, fields);
        while let Some(block) = walker.next_block()? {
            let BlockKind::Entry(h) = block.kind else {
                continue;
            };
            if report.batches.uncommitted(block.offset) {
                continue;
            }
            let short = report.copies.short_hash(walker.key());
            if !report.copies.repeated.contains(&short) {
                continue;
            }
            let this = Newest {
                offset: block.offset,
                seq: h.seq,
                len: block.len,
                expired: h.is_expired(opts.now_ms),
                tombstone: false,
            };
            let hash = report.copies.long_hash(short, walker.key());
            let older = match report.copies.newest.entry(hash) {
                MapEntry::Vacant(v) => {
                    v.insert(this);
                    continue;
                }
                // The higher sequence number wins; on a tie, the lower
                // offset, which is the one already there.
                MapEntry::Occupied(mut o) if h.seq > o.get().seq => {
                    std::mem::replace(o.get_mut(), this)
                }
                MapEntry::Occupied(_) => this,
            };
            report.supersede(older);
        }
        Ok(Ok(report))
    }

    /// A copy counted as live or expired turns out to be older than another:
    /// it becomes free.
    fn supersede(&mut self, old: Newest) {
        if old.tombstone {
            // A tombstone outranked by a later copy: no block of its own.
            return;
        }
        let was = live_or_expired(old.expired);
        self.summary.remove(was, old.len);
        self.summary.add(State::Free, old.len);
        self.summary.superseded_blocks += 1;
        self.summary.superseded_bytes += old.len;
        if let Some(map) = &mut self.map {
            map.tally(old.offset, old.len, CellState::of(was), true);
            map.tally(old.offset, old.len, CellState::Free, false);
        }
    }

    /// "Now" for expiry, as given to [`Report::scan`].
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// The problem with the file header, if it is damaged.
    pub fn header_problem(&self) -> Option<Problem> {
        let HeaderStatus::Damaged { reason, fields } = &self.header else {
            return None;
        };
        let s = &self.summary;
        let blocks = if fields.is_none() {
            "there are no blocks to read".to_string()
        } else if s.live_entries + s.expired_entries + s.superseded_blocks > 0 {
            format!(
                "{} entries still verify with the salt in the damaged header: their data is intact",
                s.live_entries + s.expired_entries + s.superseded_blocks
            )
        } else {
            "no entry verifies with the salt in the damaged header".to_string()
        };
        Some(Problem {
            offset: 0,
            len: s.file_len.min(FILE_HEADER_LEN),
            kind: ProblemKind::Header,
            reason: format!(
                "file header damaged: {reason}; the store refuses to open the file; {blocks}"
            ),
        })
    }

    /// A second walk, block by block in file order, with each block's state.
    /// With `check`, free blocks and corrupt entries are also searched for
    /// entry headers inside them ([`ProblemKind::Overlap`]), which reads every
    /// byte of the file. Rows are made on demand and not kept.
    pub fn rows<S: Source>(&self, src: S, check: bool) -> Rows<'_, S> {
        let walker = self.header.fields().map(|&h| Walker::with_header(src, h));
        Rows::new(self, walker, check)
    }

    /// All problems and notes: the header's, then every block's in file order.
    pub fn check<S: Source>(&self, src: S) -> io::Result<Findings> {
        let mut findings = Findings::default();
        findings.extend(self.header_problem());
        let mut rows = self.rows(src, true);
        while let Some(row) = rows.next_row()? {
            findings.extend(row.problems);
        }
        Ok(findings)
    }
}

pub(super) fn live_or_expired(expired: bool) -> State {
    if expired { State::Expired } else { State::Live }
}
