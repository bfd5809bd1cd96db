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
use crate::format::{
    ALIGN, BLOCK_HEADER_LEN, BLOCK_MAGIC, BlockHeader, BlockHeaderError, FILE_HEADER_LEN,
    FileHeader, HeaderError, Kind,
};

/// Pieces in which payloads and free space are read.
const CHUNK: u64 = 1 << 16;
/// How many bytes of a key a problem's reason quotes.
const KEY_QUOTE: usize = 48;

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
fn read_header(src: &mut impl Source) -> io::Result<Result<HeaderStatus, HeaderError>> {
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
}

impl Summary {
    /// Blocks and regions after the file header.
    pub fn blocks(&self) -> u64 {
        self.live_entries + self.expired_entries + self.free_blocks + self.corrupt_blocks
    }

    /// Share of free space outside the largest free block: 0 when all free
    /// space is one block (or there is none), near 1 when it is in crumbs.
    /// The same figure as [`Stats::fragmentation`](crate::Stats::fragmentation).
    pub fn fragmentation(&self) -> f64 {
        if self.free_bytes == 0 {
            0.0
        } else {
            1.0 - self.largest_free_block as f64 / self.free_bytes as f64
        }
    }

    fn add(&mut self, state: State, len: u64) {
        let (blocks, bytes) = match state {
            State::Live => (&mut self.live_entries, &mut self.live_bytes),
            State::Expired => (&mut self.expired_entries, &mut self.expired_bytes),
            State::Free => (&mut self.free_blocks, &mut self.free_bytes),
            State::Corrupt => (&mut self.corrupt_blocks, &mut self.corrupt_bytes),
        };
        *blocks += 1;
        *bytes += len;
        if state == State::Free {
            self.largest_free_block = self.largest_free_block.max(len);
        }
        self.largest_block = self.largest_block.max(len);
    }

    fn remove(&mut self, state: State, len: u64) {
        let (blocks, bytes) = match state {
            State::Live => (&mut self.live_entries, &mut self.live_bytes),
            State::Expired => (&mut self.expired_entries, &mut self.expired_bytes),
            State::Free => (&mut self.free_blocks, &mut self.free_bytes),
            State::Corrupt => (&mut self.corrupt_blocks, &mut self.corrupt_bytes),
        };
        // Saturating: a file that changes between two walks must not panic.
        *blocks = blocks.saturating_sub(1);
        *bytes = bytes.saturating_sub(len);
    }
}

/// What a cell of the [`Map`] mostly holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellState {
    /// The file header.
    Header,
    /// Live entries.
    Live,
    /// Expired entries.
    Expired,
    /// Free space.
    Free,
    /// Damage (a damaged file header included).
    Corrupt,
}

impl CellState {
    /// One letter per state (`H`, `L`, `E`, `F`, `C`), as in JSON output.
    pub fn letter(self) -> char {
        match self {
            CellState::Header => 'H',
            CellState::Live => 'L',
            CellState::Expired => 'E',
            CellState::Free => 'F',
            CellState::Corrupt => 'C',
        }
    }

    fn of(state: State) -> CellState {
        match state {
            State::Live => CellState::Live,
            State::Expired => CellState::Expired,
            State::Free => CellState::Free,
            State::Corrupt => CellState::Corrupt,
        }
    }
}

/// A picture of the file: the file cut into equal slices ("cells"), each
/// showing what most of its bytes hold. A cell with any corrupt byte shows as
/// corrupt, so that scaling never hides damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Map {
    cell_bytes: u64,
    /// Bytes per cell in the order Header, Live, Expired, Free, Corrupt.
    tally: Vec<[u64; 5]>,
}

impl Map {
    /// A map of a file of `file_len` bytes in at most `max_cells` cells of a
    /// multiple of 8 bytes each.
    fn new(file_len: u64, max_cells: usize) -> Map {
        let max_cells = max_cells.max(1) as u64;
        let cell_bytes = file_len
            .div_ceil(max_cells)
            .next_multiple_of(ALIGN)
            .max(ALIGN);
        let cells = file_len.div_ceil(cell_bytes) as usize;
        Map {
            cell_bytes,
            tally: vec![[0; 5]; cells],
        }
    }

    /// Bytes of the file per cell (the last cell may cover fewer).
    pub fn cell_bytes(&self) -> u64 {
        self.cell_bytes
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.tally.len()
    }

    /// Whether the map has no cells (an empty file).
    pub fn is_empty(&self) -> bool {
        self.tally.is_empty()
    }

    /// The cells in file order.
    pub fn cells(&self) -> impl Iterator<Item = CellState> + '_ {
        self.tally.iter().map(|t| {
            if t[4] > 0 {
                return CellState::Corrupt;
            }
            // Ties go to the first in this order.
            let order = [
                (CellState::Live, t[1]),
                (CellState::Expired, t[2]),
                (CellState::Header, t[0]),
                (CellState::Free, t[3]),
            ];
            let mut best = order[0];
            for c in &order[1..] {
                if c.1 > best.1 {
                    best = *c;
                }
            }
            best.0
        })
    }

    fn slot(c: CellState) -> usize {
        match c {
            CellState::Header => 0,
            CellState::Live => 1,
            CellState::Expired => 2,
            CellState::Free => 3,
            CellState::Corrupt => 4,
        }
    }

    /// Adds (or, with `remove`, takes away) `len` bytes at `offset`.
    fn tally(&mut self, offset: u64, len: u64, c: CellState, remove: bool) {
        let end = offset.saturating_add(len);
        let mut at = offset;
        while at < end {
            let cell = (at / self.cell_bytes) as usize;
            let Some(t) = self.tally.get_mut(cell) else {
                break;
            };
            let cell_end = (cell as u64 + 1) * self.cell_bytes;
            let n = end.min(cell_end) - at;
            let slot = &mut t[Map::slot(c)];
            *slot = if remove {
                slot.saturating_sub(n)
            } else {
                *slot + n
            };
            at += n;
        }
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
struct Newest {
    offset: u64,
    seq: u64,
    len: u64,
    expired: bool,
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
    fn newest_of(&self, key: &[u8]) -> Option<&Newest> {
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
                    hashes.push(report.copies.short_hash(walker.key()));
                    live_or_expired(h.is_expired(opts.now_ms))
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
        // Second walk, over the keys that may have several copies: the
        // newest copy wins, the others become free.
        let mut walker = Walker::with_header(&mut src, fields);
        while let Some(block) = walker.next_block()? {
            let BlockKind::Entry(h) = block.kind else {
                continue;
            };
            let short = report.copies.short_hash(walker.key());
            if !report.copies.repeated.contains(&short) {
                continue;
            }
            let this = Newest {
                offset: block.offset,
                seq: h.seq,
                len: block.len,
                expired: h.is_expired(opts.now_ms),
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
        Rows {
            report: self,
            walker: self.header.fields().map(|&h| Walker::with_header(src, h)),
            check,
            buf: Vec::new(),
        }
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

fn live_or_expired(expired: bool) -> State {
    if expired { State::Expired } else { State::Live }
}

/// What a [`Row`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// The newest copy of its key (live or expired, as the row's state says).
    Entry {
        /// Its header.
        header: BlockHeader,
        /// Its key.
        key: Vec<u8>,
    },
    /// A valid entry whose key has a newer copy: free.
    Superseded {
        /// Its header.
        header: BlockHeader,
        /// Its key.
        key: Vec<u8>,
        /// Where the newest copy is.
        newest_offset: u64,
        /// The newest copy's sequence number.
        newest_seq: u64,
    },
    /// A free block.
    Free,
    /// Zeros where a block should start, up to the next valid entry or the end
    /// of the file: space reserved but never written. Free.
    Unwritten,
    /// An entry whose header is valid but whose payload checksum is not.
    CorruptEntry {
        /// Its header (valid).
        header: BlockHeader,
        /// The bytes where its key should be: not to be trusted.
        key: Vec<u8>,
    },
    /// Bytes without a valid block header, up to the next valid entry header
    /// or the end of the file.
    Damaged(BlockHeaderError),
}

/// One block (or damaged region) of the file, as [`Report::rows`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Where it starts.
    pub offset: u64,
    /// How many bytes it covers.
    pub len: u64,
    /// Its state at the report's "now".
    pub state: State,
    /// What it is.
    pub kind: RowKind,
    /// Problems and notes about it (empty for a sound block).
    pub problems: Vec<Problem>,
}

impl Row {
    /// The block header, for entries (valid, superseded or corrupt).
    pub fn header(&self) -> Option<&BlockHeader> {
        match &self.kind {
            RowKind::Entry { header, .. }
            | RowKind::Superseded { header, .. }
            | RowKind::CorruptEntry { header, .. } => Some(header),
            _ => None,
        }
    }

    /// The key, for entries (for a corrupt entry, the bytes where it should be).
    pub fn key(&self) -> Option<&[u8]> {
        match &self.kind {
            RowKind::Entry { key, .. }
            | RowKind::Superseded { key, .. }
            | RowKind::CorruptEntry { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The second walk of a [`Report`]: see [`Report::rows`].
pub struct Rows<'r, S: Source> {
    report: &'r Report,
    walker: Option<Walker<S>>,
    check: bool,
    buf: Vec<u8>,
}

impl<S: Source> Rows<'_, S> {
    /// The next block, or `None` at the end of the file.
    pub fn next_row(&mut self) -> io::Result<Option<Row>> {
        let Some(walker) = self.walker.as_mut() else {
            return Ok(None);
        };
        let Some(block) = walker.next_block()? else {
            return Ok(None);
        };
        let now = self.report.now_ms;
        let (offset, len) = (block.offset, block.len);
        let mut problems = Vec::new();
        let (state, kind) = match block.kind {
            BlockKind::Entry(header) => {
                let key = walker.key().to_vec();
                match self.report.copies.newest_of(&key) {
                    Some(n) if n.offset != offset => {
                        problems.push(superseded_problem(offset, len, &header, &key, n));
                        let kind = RowKind::Superseded {
                            header,
                            key,
                            newest_offset: n.offset,
                            newest_seq: n.seq,
                        };
                        (State::Free, kind)
                    }
                    // The newest copy (or the file changed since the scan).
                    _ => (
                        live_or_expired(header.is_expired(now)),
                        RowKind::Entry { header, key },
                    ),
                }
            }
            BlockKind::Free => (State::Free, RowKind::Free),
            BlockKind::Unwritten => {
                problems.push(Problem {
                    offset,
                    len,
                    kind: ProblemKind::Unwritten,
                    reason: format!(
                        "{len} bytes of zeros where a block should start, {}: space reserved but never written (a write cut short); the store reclaims it at open",
                        up_to(offset + len, walker.file_len())
                    ),
                });
                (State::Free, RowKind::Unwritten)
            }
            BlockKind::CorruptEntry(header) => {
                let key = walker.key().to_vec();
                problems.push(Problem {
                    offset,
                    len,
                    kind: ProblemKind::Checksum,
                    reason: format!(
                        "payload checksum mismatch: the key, metadata or value of this entry (seq {}, key {} as read, {}-byte value) changed after it was written; the store skips it at open and the key keeps its older copy, if any",
                        header.seq,
                        quote_key(&key),
                        header.value_len
                    ),
                });
                (State::Corrupt, RowKind::CorruptEntry { header, key })
            }
            BlockKind::Damaged(e) => {
                let mut raw = [0u8; BLOCK_HEADER_LEN as usize];
                let n = (walker.file_len() - offset).min(BLOCK_HEADER_LEN) as usize;
                walker.source().read_at(offset, &mut raw[..n])?;
                problems.push(damage_problem(offset, len, e, &raw[..n], walker.file_len()));
                (State::Corrupt, RowKind::Damaged(e))
            }
        };
        if self.check && matches!(kind, RowKind::Free | RowKind::CorruptEntry { .. }) {
            self.find_hidden_headers(offset, len, &kind, &mut problems)?;
        }
        Ok(Some(Row {
            offset,
            len,
            state,
            kind,
            problems,
        }))
    }

    /// Looks at every 8-byte boundary inside the block for a valid entry
    /// header (the test the walk uses to resynchronise after damage).
    fn find_hidden_headers(
        &mut self,
        offset: u64,
        len: u64,
        kind: &RowKind,
        problems: &mut Vec<Problem>,
    ) -> io::Result<()> {
        let walker = self.walker.as_mut().expect("walking");
        let (salt, file_len) = (walker.header().salt, walker.file_len());
        let end = offset + len;
        let mut at = offset + ALIGN;
        while at < end {
            let chunk_end = end.min(at + CHUNK);
            let read_end = file_len.min(chunk_end + BLOCK_HEADER_LEN);
            self.buf.resize((read_end - at) as usize, 0);
            walker.source().read_at(at, &mut self.buf)?;
            let mut p = at;
            while p < chunk_end {
                let i = (p - at) as usize;
                let Some(b) = self.buf.get(i..i + BLOCK_HEADER_LEN as usize) else {
                    break;
                };
                if b[0..4] == BLOCK_MAGIC
                    && b[4] == b'E'
                    && let Ok(h) = BlockHeader::decode(b, salt, p, file_len)
                    && h.kind == Kind::Entry
                {
                    let mut key = vec![0u8; usize::from(h.key_len).min(KEY_QUOTE + 1)];
                    walker.source().read_at(p + BLOCK_HEADER_LEN, &mut key)?;
                    problems.push(overlap_problem(p, &h, &key, offset, len, kind));
                }
                p += ALIGN;
            }
            at = chunk_end;
        }
        Ok(())
    }
}

/// What kind of problem a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The file header is damaged or cut short.
    Header,
    /// A header or payload checksum does not match.
    Checksum,
    /// A block length is impossible, runs past the end of the file, or cannot
    /// hold the key, metadata and value.
    Size,
    /// No block starts where the previous one ends (no block magic, or a header
    /// cut short by the end of the file).
    Tiling,
    /// A block header with a valid checksum but an unknown kind.
    UnknownKind,
    /// A valid entry header inside another block: two blocks claim the same
    /// bytes.
    Overlap,
    /// Two copies of a key with the same sequence number.
    DuplicateKey,
    /// Note, not damage: an older copy of a key whose newer copy is elsewhere.
    Superseded,
    /// Note, not damage: zeros where a block should start.
    Unwritten,
}

impl ProblemKind {
    /// Whether it is damage (`--check` exits with 1) rather than a note about
    /// something a crash normally leaves behind.
    pub fn is_damage(self) -> bool {
        !matches!(self, ProblemKind::Superseded | ProblemKind::Unwritten)
    }

    /// A short snake_case name, as in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Header => "header",
            ProblemKind::Checksum => "checksum",
            ProblemKind::Size => "size",
            ProblemKind::Tiling => "tiling",
            ProblemKind::UnknownKind => "unknown_kind",
            ProblemKind::Overlap => "overlap",
            ProblemKind::DuplicateKey => "duplicate_key",
            ProblemKind::Superseded => "superseded",
            ProblemKind::Unwritten => "unwritten",
        }
    }
}

/// Something a check found, at an offset of the file, with a reason in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub offset: u64,
    /// How many bytes it concerns.
    pub len: u64,
    /// What kind it is.
    pub kind: ProblemKind,
    /// What is wrong, and what the store does about it.
    pub reason: String,
}

/// Problems (damage) and notes, in file order. Each list keeps its first
/// [`Findings::LIMIT`] items and counts the rest, so that memory stays small
/// whatever the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Damage, in file order (the first [`Findings::LIMIT`]).
    pub problems: Vec<Problem>,
    /// Notes (superseded copies, unwritten space), in file order (the first
    /// [`Findings::LIMIT`]).
    pub notes: Vec<Problem>,
    /// How many problems there are in all.
    pub problems_total: u64,
    /// How many notes there are in all.
    pub notes_total: u64,
}

impl Findings {
    /// How many problems, and how many notes, are kept.
    pub const LIMIT: usize = 100_000;

    /// Adds a problem or a note.
    pub fn push(&mut self, p: Problem) {
        let (list, total) = if p.kind.is_damage() {
            (&mut self.problems, &mut self.problems_total)
        } else {
            (&mut self.notes, &mut self.notes_total)
        };
        *total += 1;
        if list.len() < Findings::LIMIT {
            list.push(p);
        }
    }

    /// Whether any damage was found.
    pub fn is_damaged(&self) -> bool {
        self.problems_total > 0
    }
}

impl Extend<Problem> for Findings {
    fn extend<I: IntoIterator<Item = Problem>>(&mut self, iter: I) {
        for p in iter {
            self.push(p);
        }
    }
}

/// The value of one key, as [`find_key`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLookup {
    /// The file header the blocks were read with.
    pub header: HeaderStatus,
    /// The newest valid copy of the key, if any.
    pub newest: Option<FoundEntry>,
    /// The highest-sequence corrupt entry whose key bytes read as this key
    /// (offset, seq), when it is newer than `newest`: a later write of the key
    /// that was damaged, so the value found is not the last one written.
    pub newer_corrupt: Option<(u64, u64)>,
}

/// A valid entry found by [`find_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundEntry {
    /// Where its block starts.
    pub offset: u64,
    /// Its header.
    pub header: BlockHeader,
    /// Live or expired at the lookup's "now".
    pub state: State,
    /// Its metadata (at most 64 KiB).
    pub metadata: Vec<u8>,
}

/// Finds the newest valid copy of `key` in one walk, keeping nothing else.
/// `Ok(Err(..))` when `src` is not a store file or of another version.
pub fn find_key<S: Source>(
    mut src: S,
    key: &[u8],
    now_ms: i64,
) -> io::Result<Result<KeyLookup, HeaderError>> {
    let header = match read_header(&mut src)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let mut found = KeyLookup {
        header,
        newest: None,
        newer_corrupt: None,
    };
    let Some(&fields) = found.header.fields() else {
        return Ok(Ok(found));
    };
    let mut walker = Walker::with_header(src, fields);
    let mut best: Option<(u64, BlockHeader)> = None;
    let mut corrupt: Option<(u64, u64)> = None;
    while let Some(block) = walker.next_block()? {
        match block.kind {
            BlockKind::Entry(h)
                if walker.key() == key && best.is_none_or(|(_, b)| h.seq > b.seq) =>
            {
                best = Some((block.offset, h));
            }
            BlockKind::CorruptEntry(h)
                if walker.key() == key && corrupt.is_none_or(|(_, s)| h.seq > s) =>
            {
                corrupt = Some((block.offset, h.seq));
            }
            _ => {}
        }
    }
    found.newer_corrupt = corrupt.filter(|&(_, s)| best.is_none_or(|(_, b)| s > b.seq));
    if let Some((offset, h)) = best {
        let mut metadata = vec![0u8; usize::from(h.meta_len)];
        walker
            .source()
            .read_at(offset + h.meta_offset(), &mut metadata)?;
        found.newest = Some(FoundEntry {
            offset,
            header: h,
            state: live_or_expired(h.is_expired(now_ms)),
            metadata,
        });
    }
    Ok(Ok(found))
}

impl KeyLookup {
    /// Streams the value of the entry found to `sink` in pieces of at most
    /// 64 KiB, checking the payload checksum again on the way (the file may
    /// be in use by a store). Returns whether it still matched; when it did
    /// not, the bytes already given to `sink` are not to be trusted.
    pub fn read_value<S: Source>(
        &self,
        mut src: S,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        let (Some(e), Some(fields)) = (&self.newest, self.header.fields()) else {
            return Ok(false);
        };
        let h = &e.header;
        let mut hasher = crc32fast::Hasher::new_with_initial(fields.salt);
        let mut buf = Vec::new();
        let value_at = e.offset + h.value_offset();
        let mut at = e.offset + h.key_offset();
        let end = e.offset + h.used_len();
        while at < end {
            // Pieces end at the start of the value, so the sink sees only value bytes.
            let piece_end = if at < value_at {
                value_at.min(at + CHUNK)
            } else {
                end.min(at + CHUNK)
            };
            buf.resize((piece_end - at) as usize, 0);
            src.read_at(at, &mut buf)?;
            hasher.update(&buf);
            if at >= value_at {
                sink(&buf)?;
            }
            at = piece_end;
        }
        Ok(hasher.finalize() == h.payload_crc)
    }
}

// ---- reasons, in words ------------------------------------------------------

/// Bytes (a key) as text, reversibly: the UTF-8 string when the bytes are
/// valid UTF-8 without control characters and do not start with `0x`;
/// otherwise `0x` followed by lowercase hex.
///
/// ```
/// use sfs::inspect::report::key_text;
/// assert_eq!(key_text(b"user:42"), "user:42");
/// assert_eq!(key_text(b"\x00\xff"), "0x00ff");
/// assert_eq!(key_text(b"0x41"), "0x30783431"); // never ambiguous
/// ```
pub fn key_text(bytes: &[u8]) -> String {
    key_preview(bytes, usize::MAX)
}

/// Like [`key_text`], shortened to about `max` characters with a trailing `…`.
/// When more than `max` bytes are given, the key is taken as cut there (an
/// incomplete character at the cut is dropped, not held against the key).
pub fn key_preview(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let shown = &bytes[..bytes.len().min(max)];
    let text = match std::str::from_utf8(shown) {
        Ok(s) => Some(s),
        Err(e) if cut && e.error_len().is_none() => {
            Some(std::str::from_utf8(&shown[..e.valid_up_to()]).expect("valid prefix"))
        }
        Err(_) => None,
    };
    let more = if cut { "…" } else { "" };
    match text {
        Some(s) if !s.chars().any(char::is_control) && !s.starts_with("0x") => {
            format!("{s}{more}")
        }
        _ => {
            let n = if cut { max / 2 } else { shown.len() };
            let mut h = String::with_capacity(2 + 2 * n + 3);
            h.push_str("0x");
            for b in &shown[..n.min(shown.len())] {
                h.push(char::from_digit(u32::from(b >> 4), 16).expect("hex digit"));
                h.push(char::from_digit(u32::from(b & 15), 16).expect("hex digit"));
            }
            if n < bytes.len() {
                h.push('…');
            }
            h
        }
    }
}

/// A key for a reason: [`key_preview`], quoted when it is text.
fn quote_key(key: &[u8]) -> String {
    let p = key_preview(key, KEY_QUOTE);
    if p.starts_with("0x") {
        p
    } else {
        format!("\"{p}\"")
    }
}

fn up_to(end: u64, file_len: u64) -> String {
    if end >= file_len {
        "up to the end of the file".to_string()
    } else {
        format!("up to offset {end}")
    }
}

fn superseded_problem(offset: u64, len: u64, h: &BlockHeader, key: &[u8], n: &Newest) -> Problem {
    if n.seq == h.seq {
        return Problem {
            offset,
            len,
            kind: ProblemKind::DuplicateKey,
            reason: format!(
                "two copies of key {} carry the same sequence number {} (here and at offset {}): the store never writes that; it keeps the one at offset {} and frees this one",
                quote_key(key),
                h.seq,
                n.offset,
                n.offset
            ),
        };
    }
    Problem {
        offset,
        len,
        kind: ProblemKind::Superseded,
        reason: format!(
            "older copy of key {} (seq {}); the newest copy (seq {}{}) is at offset {}; left by a crash before the store freed it; the store frees it at open",
            quote_key(key),
            h.seq,
            n.seq,
            if n.expired { ", expired" } else { "" },
            n.offset
        ),
    }
}

fn damage_problem(
    offset: u64,
    len: u64,
    e: BlockHeaderError,
    raw: &[u8],
    file_len: u64,
) -> Problem {
    // The fields as they read, for the reason (the checksum vouches for them
    // only where the error says it held).
    let u64_at = |at: usize| {
        raw.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    };
    let u32_at = |at: usize| {
        raw.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    };
    let u16_at = |at: usize| {
        raw.get(at..at + 2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2")))
    };
    let block_len = u64_at(8).unwrap_or(0);
    let (kind, what) = match e {
        BlockHeaderError::Truncated => (
            ProblemKind::Tiling,
            format!(
                "only {} bytes remain where a block should start, too few for a block header ({BLOCK_HEADER_LEN} bytes): a write cut short at the end of the file",
                file_len - offset
            ),
        ),
        BlockHeaderError::BadMagic => (
            ProblemKind::Tiling,
            "no block starts here (no block magic \"sfsB\"): the previous block's length or these bytes were overwritten".to_string(),
        ),
        BlockHeaderError::BadChecksum => (
            ProblemKind::Checksum,
            "block header checksum mismatch: the header of the block here was damaged, so its length cannot be trusted".to_string(),
        ),
        BlockHeaderError::BadKind => (
            ProblemKind::UnknownKind,
            format!(
                "block header with a valid checksum but an unknown kind byte {:#04x} (a newer format?)",
                raw.get(4).copied().unwrap_or(0)
            ),
        ),
        BlockHeaderError::BadLength => (
            ProblemKind::Size,
            format!(
                "block length {block_len} is impossible (below {BLOCK_HEADER_LEN} or not a multiple of {ALIGN})"
            ),
        ),
        BlockHeaderError::PastEnd => (
            ProblemKind::Size,
            format!(
                "block length {block_len} runs past the end of the file (only {} bytes remain): a torn write or a cut file",
                file_len - offset
            ),
        ),
        BlockHeaderError::FieldsOverflow => (
            ProblemKind::Size,
            format!(
                "key ({}) + metadata ({}) + value ({}) bytes do not fit in the block length {block_len}",
                u16_at(6).unwrap_or(0),
                u16_at(20).unwrap_or(0),
                u32_at(16).unwrap_or(0)
            ),
        ),
    };
    let extent = if offset + len >= file_len {
        format!("{len} bytes up to the end of the file hold no valid block")
    } else {
        format!(
            "{len} bytes up to offset {} hold no valid block (the next valid entry header is there)",
            offset + len
        )
    };
    Problem {
        offset,
        len,
        kind,
        reason: format!("{what}; {extent}; the store skips them at open and reclaims the space"),
    }
}

fn overlap_problem(
    at: u64,
    h: &BlockHeader,
    key: &[u8],
    offset: u64,
    len: u64,
    inside: &RowKind,
) -> Problem {
    let inside = match inside {
        RowKind::Free => "the free block",
        _ => "the corrupt entry",
    };
    let key = quote_key(key);
    Problem {
        offset: at,
        len: h.block_len,
        kind: ProblemKind::Overlap,
        reason: format!(
            "a valid entry header (seq {}, key {key}, block length {}) lies inside {inside} at offset {offset} ({len} bytes): two blocks claim the same bytes; the store ignores this one, but a damaged header before it would make a scan take it for data",
            h.seq, h.block_len
        ),
    }
}
