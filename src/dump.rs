//! What `sfs-dump` prints: the summary, the entry listing, the map, the check
//! and the value of one key, as text for people or as JSON for scripts.
//!
//! All reading goes through [`inspect::report`](crate::inspect::report); this
//! module only renders. [`run`] does one whole invocation on any [`Source`]
//! (a file or a byte slice) and returns the exit status, so tests and fuzzers
//! drive the tool as an ordinary function; the binary adds only argument
//! parsing. It never writes to the file it reads.
//!
//! ```
//! use sfs::dump::{Request, Status, run};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("d.sfs");
//! let store = sfs::Store::open(&path)?;
//! store.put(b"greeting", b"hello")?;
//! store.close()?;
//!
//! let bytes = std::fs::read(&path)?;
//! let mut out = Vec::new();
//! let req = Request { key: Some(b"greeting".to_vec()), ..Request::new("d.sfs", 0) };
//! let status = run(&bytes[..], &req, &mut out, &mut std::io::sink(), None)?;
//! assert_eq!((status, &out[..]), (Status::Ok, &b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::format::{FILE_HEADER_LEN, FORMAT_VERSION, HeaderError};
use crate::inspect::Source;
use crate::inspect::report::{
    CellState, Findings, HeaderStatus, KeyLookup, Map, Problem, Report, Row, RowKind, ScanOptions,
    State, Summary, find_key, key_preview, key_text,
};

/// The most lines a map has.
const MAP_ROWS: usize = 16;
/// Characters of a key shown in the entry listing.
const KEY_COLUMN: usize = 40;

/// What to show, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// How to name the file in the output.
    pub name: String,
    /// One row per block.
    pub entries: bool,
    /// A picture of the layout.
    pub map: bool,
    /// Verify every block; list problems.
    pub check: bool,
    /// Print the value of this key instead (the other views are ignored).
    pub key: Option<Vec<u8>>,
    /// With `key`: print the value as hex.
    pub hex: bool,
    /// One JSON document instead of text.
    pub json: bool,
    /// "Now" for expiry, in milliseconds since the UNIX epoch.
    pub now_ms: i64,
    /// Width of the output in columns (for the map).
    pub width: usize,
    /// Use ANSI colours (for the map).
    pub color: bool,
}

impl Request {
    /// The summary of `name`, as text, 80 columns, no colour.
    pub fn new(name: impl Into<String>, now_ms: i64) -> Request {
        Request {
            name: name.into(),
            entries: false,
            map: false,
            check: false,
            key: None,
            hex: false,
            json: false,
            now_ms,
            width: 80,
            color: false,
        }
    }
}

/// How a run ended, when it could read the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Read fine; no damage found by `--check`; `--key` found its key.
    Ok,
    /// `--check` found damage.
    Damaged,
    /// `--key` found no live copy of the key.
    KeyNotFound,
}

impl Status {
    /// The process exit status: 0 or 1.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Damaged | Status::KeyNotFound => 1,
        }
    }
}

/// Why a run could not report on the file (exit status 2).
#[derive(Debug)]
pub enum Failure {
    /// The file does not start with the store magic.
    NotAStore {
        /// The file's name.
        name: String,
        /// Its length.
        len: u64,
    },
    /// A store file of a format version this build does not read.
    UnsupportedVersion {
        /// The file's name.
        name: String,
        /// Its version.
        found: u32,
    },
    /// Writing the output failed.
    Output(io::Error),
    /// Reading failed (the file may have changed while being read).
    Io {
        /// The file's name.
        name: String,
        /// What failed.
        error: io::Error,
    },
}

impl Failure {
    /// The process exit status: 2.
    pub fn exit_code(&self) -> u8 {
        2
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotAStore { name, len: 0 } => write!(
                f,
                "{name} is empty: not a store file (a store writes its {FILE_HEADER_LEN}-byte header when it creates the file)"
            ),
            Failure::NotAStore { name, .. } => write!(
                f,
                "{name} is not a store file: it does not start with the sfs magic bytes 89 53 46 53 0d 0a 1a 0a"
            ),
            Failure::UnsupportedVersion { name, found } => write!(
                f,
                "{name} is a store file of format version {found}; this sfs-dump reads version {FORMAT_VERSION}"
            ),
            Failure::Output(error) => write!(f, "writing the output: {error}"),
            Failure::Io { name, error } if error.kind() == io::ErrorKind::UnexpectedEof => write!(
                f,
                "{name} got shorter while it was being read (a store is using it?): {error}; try again, or dump a copy"
            ),
            Failure::Io { name, error } => write!(f, "reading {name}: {error}"),
        }
    }
}

impl std::error::Error for Failure {}

/// How far a run has got, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is being done ("reading", "listing", "checking").
    pub phase: &'static str,
    /// Bytes read so far, over all passes.
    pub done: u64,
    /// Bytes to read in all, over all passes.
    pub total: u64,
}

/// Does what `req` asks on `src`: text or JSON on `out`, warnings and
/// "key not found" explanations on `err`. `progress`, if given, is called as
/// the file is read.
pub fn run<S: Source>(
    src: S,
    req: &Request,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: Option<&mut dyn FnMut(Progress)>,
) -> Result<Status, Failure> {
    let len = src.len();
    let mut out = Output {
        inner: out,
        failed: false,
    };
    let out = &mut out;
    let failed = |out: &Output<'_>, error| {
        if out.failed {
            Failure::Output(error)
        } else {
            Failure::Io {
                name: req.name.clone(),
                error,
            }
        }
    };
    let refused = |e: HeaderError| match e {
        HeaderError::UnsupportedVersion(found) => Failure::UnsupportedVersion {
            name: req.name.clone(),
            found,
        },
        _ => Failure::NotAStore {
            name: req.name.clone(),
            len,
        },
    };
    let mut src = Tracked {
        src,
        progress,
        phase: "reading",
        pass: 0,
        done: 0,
        passes: if req.key.is_none() && (req.entries || req.check) {
            2
        } else {
            1
        },
    };
    if let Some(key) = &req.key {
        let found = find_key(&mut src, key, req.now_ms)
            .map_err(|e| failed(out, e))?
            .map_err(refused)?;
        src.end_pass();
        return show_key(&mut src, req, key, &found, out, err).map_err(|e| failed(out, e));
    }
    let cells = if req.map {
        map_columns(req.width) * MAP_ROWS
    } else {
        0
    };
    let opts = ScanOptions::at(req.now_ms).with_map(cells);
    let report = Report::scan(&mut src, opts)
        .map_err(|e| failed(out, e))?
        .map_err(refused)?;
    src.end_pass();
    let status = if req.json {
        json_report(&mut src, req, &report, out)
    } else {
        text_report(&mut src, req, &report, out)
    }
    .and_then(|status| out.flush().map(|()| status))
    .map_err(|e| failed(out, e))?;
    Ok(status)
}

/// The output, remembering whether a write to it failed (to tell a broken
/// pipe from a file that cannot be read).
struct Output<'a> {
    inner: &'a mut dyn Write,
    failed: bool,
}

impl Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.failed |= r.is_err();
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.failed |= r.is_err();
        r
    }
}

/// A source that reports how far it has been read.
struct Tracked<'p, S: Source> {
    src: S,
    progress: Option<&'p mut dyn FnMut(Progress)>,
    phase: &'static str,
    pass: u64,
    passes: u64,
    /// The furthest point reported: a scan that walks twice over keys with
    /// several copies holds the bar still rather than move it back.
    done: u64,
}

impl<S: Source> Tracked<'_, S> {
    /// The pass under way is over (its last block's padding is never read).
    fn end_pass(&mut self) {
        let len = self.src.len();
        self.report((self.pass + 1).min(self.passes) * len);
    }

    fn report(&mut self, done: u64) {
        self.done = self.done.max(done);
        if let Some(p) = self.progress.as_mut() {
            p(Progress {
                phase: self.phase,
                done: self.done,
                total: self.passes * self.src.len(),
            });
        }
    }

    fn next_pass(&mut self, phase: &'static str) {
        self.pass += 1;
        self.phase = phase;
    }
}

impl<S: Source> Source for Tracked<'_, S> {
    fn len(&self) -> u64 {
        self.src.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.read_at(offset, buf)?;
        if self.progress.is_some() {
            let len = self.src.len();
            let at = (offset + buf.len() as u64).min(len);
            self.report(self.pass.min(self.passes - 1) * len + at);
        }
        Ok(())
    }
}

// ---- text --------------------------------------------------------------------

fn text_report<S: Source>(
    src: &mut Tracked<'_, S>,
    req: &Request,
    report: &Report,
    out: &mut dyn Write,
) -> io::Result<Status> {
    let mut sections = 0;
    let mut gap = |out: &mut dyn Write| {
        sections += 1;
        if sections > 1 { writeln!(out) } else { Ok(()) }
    };
    if !(req.entries || req.map || req.check) {
        gap(out)?;
        write_summary(out, &req.name, report)?;
    }
    if req.map {
        gap(out)?;
        write_map(out, &req.name, report, req.width, req.color)?;
    }
    let mut findings = Findings::default();
    if req.entries || req.check {
        findings.extend(report.header_problem());
        src.next_pass(if req.check { "checking" } else { "listing" });
        let table = req.entries.then(|| EntryTable::new(report));
        if let Some(table) = &table {
            gap(out)?;
            table.write_head(out, &req.name, report)?;
        }
        let mut rows = report.rows(&mut *src, req.check);
        while let Some(row) = rows.next_row()? {
            if let Some(table) = &table {
                table.write_row(out, &row, report.now_ms())?;
            }
            findings.extend(row.problems);
        }
        drop(rows);
        src.end_pass();
        if let Some(table) = &table {
            table.write_foot(out, &report.summary)?;
        }
    }
    if req.check {
        gap(out)?;
        write_check(out, &req.name, report, &findings)?;
        if findings.is_damaged() {
            return Ok(Status::Damaged);
        }
    }
    Ok(Status::Ok)
}

/// The summary: header, size, blocks and bytes per state, free space.
pub fn write_summary(out: &mut dyn Write, name: &str, report: &Report) -> io::Result<()> {
    let s = &report.summary;
    let now = report.now_ms();
    writeln!(out, "{:<14}{name}", "file")?;
    match &report.header {
        HeaderStatus::Valid(h) => writeln!(
            out,
            "{:<14}version {}, created {} ({})",
            "format",
            h.version,
            iso8601(h.created_ms as i128),
            relative(h.created_ms as i128, now)
        )?,
        HeaderStatus::Damaged { reason, fields } => {
            writeln!(out, "{:<14}FILE HEADER DAMAGED: {reason}", "format")?;
            if let Some(h) = fields {
                writeln!(
                    out,
                    "{:<14}its fields read: version {}, salt {:#010x}, created {}; blocks below were read with that salt",
                    "",
                    h.version,
                    h.salt,
                    iso8601(h.created_ms as i128)
                )?;
            }
        }
    }
    writeln!(out, "{:<14}{}", "size", size_both(s.file_len))?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<10}{:>8}  {:>10}  {:>15}  {:>7}",
        "state", "blocks", "size", "bytes", "share"
    )?;
    let header_len = s.file_len.min(FILE_HEADER_LEN);
    let rows = [
        ("live", s.live_entries, s.live_bytes),
        ("expired", s.expired_entries, s.expired_bytes),
        ("free", s.free_blocks, s.free_bytes),
        ("corrupt", s.corrupt_blocks, s.corrupt_bytes),
    ];
    for (label, blocks, bytes) in rows {
        writeln!(
            out,
            "{label:<10}{:>8}  {:>10}  {:>15}  {:>7}",
            thousands(blocks),
            human(bytes),
            thousands(bytes),
            percent(bytes, s.file_len)
        )?;
    }
    writeln!(
        out,
        "{:<10}{:>8}  {:>10}  {:>15}  {:>7}",
        "header",
        "",
        human(header_len),
        thousands(header_len),
        percent(header_len, s.file_len)
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<20}{}",
        "largest free block",
        size_both(s.largest_free_block)
    )?;
    writeln!(
        out,
        "{:<20}{} (share of free space outside the largest free block)",
        "fragmentation",
        fraction(s.fragmentation())
    )?;
    write_free_notes(out, s)?;
    if let Some(p) = report.header_problem() {
        writeln!(out, "DAMAGE: {}", p.reason)?;
    }
    if s.corrupt_blocks > 0 {
        writeln!(
            out,
            "DAMAGE: {} corrupt block{}, {}; `sfs-dump {name} --check` lists them with offsets and reasons",
            thousands(s.corrupt_blocks),
            plural(s.corrupt_blocks),
            size_both(s.corrupt_bytes)
        )?;
    }
    Ok(())
}

fn write_free_notes(out: &mut dyn Write, s: &Summary) -> io::Result<()> {
    if s.superseded_blocks > 0 {
        writeln!(
            out,
            "free space includes {} older cop{} of keys with a newer copy ({}), left by a crash; the store frees them at open",
            thousands(s.superseded_blocks),
            if s.superseded_blocks == 1 { "y" } else { "ies" },
            size_both(s.superseded_bytes)
        )?;
    }
    if s.unwritten_blocks > 0 {
        writeln!(
            out,
            "free space includes {} region{} of zeros never written ({})",
            thousands(s.unwritten_blocks),
            plural(s.unwritten_blocks),
            size_both(s.unwritten_bytes)
        )?;
    }
    Ok(())
}

/// Cells per map line for a width.
fn map_columns(width: usize) -> usize {
    width.saturating_sub(MAP_PREFIX + 1).max(8)
}

/// Width of the offset before each map line, and the space after it.
const MAP_PREFIX: usize = 12;

fn glyph(c: CellState) -> (char, &'static str) {
    match c {
        CellState::Header => ('H', "\x1b[34m"),
        CellState::Live => ('█', "\x1b[32m"),
        CellState::Expired => ('▒', "\x1b[33m"),
        CellState::Free => ('·', "\x1b[2m"),
        CellState::Corrupt => ('X', "\x1b[1;31m"),
    }
}

const RESET: &str = "\x1b[0m";

/// The map: one cell per slice of the file, a legend, the free-space figures.
/// `report` must have been scanned with a map.
pub fn write_map(
    out: &mut dyn Write,
    name: &str,
    report: &Report,
    width: usize,
    color: bool,
) -> io::Result<()> {
    let s = &report.summary;
    let Some(map) = &report.map else {
        return writeln!(out, "(no map was built)");
    };
    let cols = map_columns(width);
    writeln!(
        out,
        "map of {name}: {}; one cell = {}",
        size_both(s.file_len),
        size_both(map.cell_bytes())
    )?;
    let cells: Vec<CellState> = map.cells().collect();
    for (i, line) in cells.chunks(cols).enumerate() {
        let at = i as u64 * cols as u64 * map.cell_bytes();
        let mut text = format!("{:>w$}  ", human(at), w = MAP_PREFIX - 2);
        let mut current: Option<CellState> = None;
        for &c in line {
            let (g, code) = glyph(c);
            if color && current != Some(c) {
                text.push_str(code);
                current = Some(c);
            }
            text.push(g);
        }
        if color {
            text.push_str(RESET);
        }
        writeln!(out, "{text}")?;
    }
    let mut legend = String::from("legend: ");
    for (c, label) in [
        (CellState::Header, "file header"),
        (CellState::Live, "live"),
        (CellState::Expired, "expired"),
        (CellState::Free, "free"),
        (CellState::Corrupt, "corrupt"),
    ] {
        let (g, code) = glyph(c);
        if color {
            let _ = write!(legend, "{code}{g}{RESET} {label}   ");
        } else {
            let _ = write!(legend, "{g} {label}   ");
        }
    }
    writeln!(out, "{}", legend.trim_end())?;
    writeln!(
        out,
        "        a cell shows what most of its bytes hold; {} if any byte in it is corrupt",
        glyph(CellState::Corrupt).0
    )?;
    writeln!(
        out,
        "live {} ({}, {})   expired {} ({})   free {} ({}, {})   corrupt {} ({})",
        thousands(s.live_entries),
        human(s.live_bytes),
        percent(s.live_bytes, s.file_len),
        thousands(s.expired_entries),
        human(s.expired_bytes),
        thousands(s.free_blocks),
        human(s.free_bytes),
        percent(s.free_bytes, s.file_len),
        thousands(s.corrupt_blocks),
        human(s.corrupt_bytes)
    )?;
    writeln!(
        out,
        "fragmentation {}: the largest free block is {} of {} free",
        fraction(s.fragmentation()),
        human(s.largest_free_block),
        human(s.free_bytes)
    )?;
    write_free_notes(out, s)
}

/// Column widths of the entry listing, fixed from the scan so rows stream.
struct EntryTable {
    offset: usize,
    size: usize,
    seq: usize,
    value: usize,
}

impl EntryTable {
    fn new(report: &Report) -> EntryTable {
        let s = &report.summary;
        EntryTable {
            offset: s.file_len.to_string().len().max(6),
            size: size_cell(s.largest_block).chars().count().max(4),
            seq: s.max_seq.to_string().len().max(3),
            value: thousands(s.file_len).len().max(9),
        }
    }

    fn write_head(&self, out: &mut dyn Write, name: &str, report: &Report) -> io::Result<()> {
        let now = report.now_ms();
        writeln!(
            out,
            "blocks of {name} in file order (expiry relative to {}):",
            iso8601(i128::from(now))
        )?;
        writeln!(
            out,
            "{:>o$}  {:>z$}  {:<7}  {:>q$}  {:>7}  {:>8}  {:>v$}  {:<41}  key / note",
            "offset",
            "size",
            "state",
            "seq",
            "key_len",
            "meta_len",
            "value_len",
            "expiry",
            o = self.offset,
            z = self.size,
            q = self.seq,
            v = self.value,
        )
    }

    fn write_row(&self, out: &mut dyn Write, row: &Row, now: i64) -> io::Result<()> {
        let (seq, key_len, meta_len, value_len, expiry) = match row.header() {
            Some(h) => (
                h.seq.to_string(),
                h.key_len.to_string(),
                h.meta_len.to_string(),
                thousands(u64::from(h.value_len)),
                expiry_text(h.expiry_ms, now),
            ),
            None => Default::default(),
        };
        let key = row.key().map(|k| {
            if k.is_empty() {
                "\"\" (empty key)".to_string()
            } else {
                key_preview(k, KEY_COLUMN)
            }
        });
        let note = match (&row.kind, key) {
            (RowKind::Entry { .. }, Some(k)) => k,
            (
                RowKind::Superseded {
                    newest_offset,
                    newest_seq,
                    header,
                    ..
                },
                Some(k),
            ) => {
                let why = if *newest_seq == header.seq {
                    "DUPLICATE: same seq as"
                } else {
                    "older copy; newest is"
                };
                format!("{k}  ({why} seq {newest_seq} at offset {newest_offset})")
            }
            (RowKind::CorruptEntry { .. }, Some(k)) => {
                format!("{k}?  (payload checksum mismatch: contents untrusted)")
            }
            (RowKind::Unwritten, _) => "(zeros: space never written)".to_string(),
            (RowKind::Damaged(e), _) => format!(
                "({e}: no valid block in these {} bytes)",
                thousands(row.len)
            ),
            _ => String::new(),
        };
        let line = format!(
            "{:>o$}  {:>z$}  {:<7}  {:>q$}  {:>7}  {:>8}  {:>v$}  {:<41}  {note}",
            row.offset,
            size_cell(row.len),
            row.state.as_str(),
            seq,
            key_len,
            meta_len,
            value_len,
            expiry,
            o = self.offset,
            z = self.size,
            q = self.seq,
            v = self.value,
        );
        writeln!(out, "{}", line.trim_end())
    }

    fn write_foot(&self, out: &mut dyn Write, s: &Summary) -> io::Result<()> {
        writeln!(
            out,
            "{} blocks: {} live, {} expired, {} free, {} corrupt",
            thousands(s.blocks()),
            thousands(s.live_entries),
            thousands(s.expired_entries),
            thousands(s.free_blocks),
            thousands(s.corrupt_blocks)
        )
    }
}

/// A block size in a table cell: exact, and human when 1 KiB or more.
fn size_cell(n: u64) -> String {
    if n < 1024 {
        thousands(n)
    } else {
        format!("{} ({})", thousands(n), human(n))
    }
}

fn expiry_text(expiry_ms: u64, now: i64) -> String {
    if expiry_ms == 0 {
        return "never".to_string();
    }
    let at = i128::from(expiry_ms);
    let rel = if at <= i128::from(now) {
        format!("expired {}", relative(at, now))
    } else {
        relative(at, now)
    };
    format!("{} ({rel})", iso8601(at))
}

/// The check: one line per problem and note, in file order, then a verdict.
pub fn write_check(
    out: &mut dyn Write,
    name: &str,
    report: &Report,
    findings: &Findings,
) -> io::Result<()> {
    let s = &report.summary;
    writeln!(
        out,
        "check of {name}: {}, format version {}, {} blocks",
        size_both(s.file_len),
        s.format_version,
        thousands(s.blocks())
    )?;
    // Problems and notes, merged back into file order.
    let (mut p, mut n) = (
        findings.problems.iter().peekable(),
        findings.notes.iter().peekable(),
    );
    loop {
        let take_problem = match (p.peek(), n.peek()) {
            (Some(a), Some(b)) => a.offset <= b.offset,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let (word, item) = if take_problem {
            ("problem", p.next().expect("peeked"))
        } else {
            ("note", n.next().expect("peeked"))
        };
        write_finding(out, word, item)?;
    }
    for (word, listed, total) in [
        ("problems", findings.problems.len(), findings.problems_total),
        ("notes", findings.notes.len(), findings.notes_total),
    ] {
        if (listed as u64) < total {
            writeln!(
                out,
                "... and {} more {word} not listed (the first {} are)",
                thousands(total - listed as u64),
                thousands(listed as u64)
            )?;
        }
    }
    let notes = match findings.notes_total {
        0 => String::new(),
        n => format!("; {} note{} (not damage)", thousands(n), plural(n)),
    };
    if findings.is_damaged() {
        writeln!(
            out,
            "DAMAGE: {} problem{}{notes}; corrupt blocks: {}, {}. The store skips damaged blocks at open and serves everything else; a read-write open reclaims their space.",
            thousands(findings.problems_total),
            plural(findings.problems_total),
            thousands(s.corrupt_blocks),
            size_both(s.corrupt_bytes)
        )
    } else {
        writeln!(out, "no damage found{notes}")
    }
}

fn write_finding(out: &mut dyn Write, word: &str, p: &Problem) -> io::Result<()> {
    writeln!(
        out,
        "{word} at offset {} ({:#x}), {} [{}]: {}",
        p.offset,
        p.offset,
        size_both(p.len),
        p.kind.as_str(),
        p.reason
    )
}

// ---- JSON --------------------------------------------------------------------

/// Writes one JSON object field by field, so that arrays can stream.
struct JsonObject<'w> {
    out: &'w mut dyn Write,
    fields: usize,
    items: usize,
}

impl<'w> JsonObject<'w> {
    fn begin(out: &'w mut dyn Write) -> io::Result<JsonObject<'w>> {
        out.write_all(b"{")?;
        Ok(JsonObject {
            out,
            fields: 0,
            items: 0,
        })
    }

    fn name(&mut self, name: &str) -> io::Result<()> {
        if self.fields > 0 {
            self.out.write_all(b",")?;
        }
        self.fields += 1;
        write!(self.out, "\n  {}: ", Value::from(name))
    }

    fn field(&mut self, name: &str, value: &Value) -> io::Result<()> {
        self.name(name)?;
        serde_json::to_writer(&mut *self.out, value).map_err(io::Error::other)
    }

    fn begin_array(&mut self, name: &str) -> io::Result<()> {
        self.name(name)?;
        self.items = 0;
        self.out.write_all(b"[")
    }

    /// An array item, already serialised.
    fn item(&mut self, json: &[u8]) -> io::Result<()> {
        let sep: &[u8] = if self.items == 0 {
            b"\n    "
        } else {
            b",\n    "
        };
        self.out.write_all(sep)?;
        self.items += 1;
        self.out.write_all(json)
    }

    fn end_array(&mut self) -> io::Result<()> {
        self.out
            .write_all(if self.items == 0 { b"]" } else { b"\n  ]" })
    }

    fn end(self) -> io::Result<()> {
        self.out.write_all(b"\n}\n")
    }
}

fn json_report<S: Source>(
    src: &mut Tracked<'_, S>,
    req: &Request,
    report: &Report,
    out: &mut dyn Write,
) -> io::Result<Status> {
    let s = &report.summary;
    let mut doc = JsonObject::begin(out)?;
    let header_problem = report.header_problem();
    let fields: [(&str, Value); 24] = [
        ("file", json!(req.name)),
        ("file_len", json!(s.file_len)),
        ("format_version", json!(s.format_version)),
        ("header_ok", json!(report.header.is_valid())),
        (
            "header_problem",
            json!(header_problem.as_ref().map(|p| &p.reason)),
        ),
        ("created_ms", json!(s.created_ms)),
        ("now_ms", json!(report.now_ms())),
        ("blocks", json!(s.blocks())),
        ("live_entries", json!(s.live_entries)),
        ("live_bytes", json!(s.live_bytes)),
        ("expired_entries", json!(s.expired_entries)),
        ("expired_bytes", json!(s.expired_bytes)),
        ("free_blocks", json!(s.free_blocks)),
        ("free_bytes", json!(s.free_bytes)),
        ("corrupt_blocks", json!(s.corrupt_blocks)),
        ("corrupt_bytes", json!(s.corrupt_bytes)),
        ("largest_free_block", json!(s.largest_free_block)),
        ("fragmentation", json!(s.fragmentation())),
        ("superseded_blocks", json!(s.superseded_blocks)),
        ("superseded_bytes", json!(s.superseded_bytes)),
        ("unwritten_blocks", json!(s.unwritten_blocks)),
        ("unwritten_bytes", json!(s.unwritten_bytes)),
        ("max_seq", json!(s.max_seq)),
        ("header_bytes", json!(s.file_len.min(FILE_HEADER_LEN))),
    ];
    for (name, value) in &fields {
        doc.field(name, value)?;
    }
    if req.map
        && let Some(map) = &report.map
    {
        doc.field("map", &map_json(map, req.width))?;
    }
    let mut findings = Findings::default();
    if req.entries || req.check {
        findings.extend(header_problem);
        src.next_pass(if req.check { "checking" } else { "listing" });
        let mut rows = report.rows(&mut *src, req.check);
        if req.entries {
            doc.begin_array("entries")?;
        }
        let mut buf = Vec::new();
        while let Some(row) = rows.next_row()? {
            if req.entries {
                row_json(&row, &mut buf);
                doc.item(&buf)?;
            }
            findings.extend(row.problems);
        }
        drop(rows);
        src.end_pass();
        if req.entries {
            doc.end_array()?;
        }
    }
    let mut status = Status::Ok;
    if req.check {
        let list = |v: &[Problem]| Value::Array(v.iter().map(problem_json).collect());
        doc.field("problems", &list(&findings.problems))?;
        doc.field("problems_total", &json!(findings.problems_total))?;
        doc.field("notes", &list(&findings.notes))?;
        doc.field("notes_total", &json!(findings.notes_total))?;
        doc.field("damaged", &json!(findings.is_damaged()))?;
        if findings.is_damaged() {
            status = Status::Damaged;
        }
    }
    doc.end()?;
    Ok(status)
}

fn map_json(map: &Map, width: usize) -> Value {
    json!({
        "cell_bytes": map.cell_bytes(),
        "columns": map_columns(width),
        "cells": map.cells().map(CellState::letter).collect::<String>(),
        "legend": {"H": "file header", "L": "live", "E": "expired", "F": "free", "C": "corrupt"},
    })
}

/// One entry row as a JSON object, written straight into `buf` (a listing
/// may have millions of rows): fields in a fixed, readable order.
fn row_json(row: &Row, buf: &mut Vec<u8>) {
    let h = row.header();
    let kind = match row.kind {
        RowKind::Entry { .. } => "entry",
        RowKind::Superseded { .. } => "superseded",
        RowKind::Free => "free",
        RowKind::Unwritten => "unwritten",
        RowKind::CorruptEntry { .. } => "corrupt_entry",
        RowKind::Damaged(_) => "damaged",
    };
    let newest_offset = match row.kind {
        RowKind::Superseded { newest_offset, .. } => Some(newest_offset),
        _ => None,
    };
    let num = |n: Option<u64>| n.map_or_else(|| "null".to_string(), |n| n.to_string());
    let text =
        |t: Option<&str>| t.map_or_else(|| "null".to_string(), |t| Value::from(t).to_string());
    buf.clear();
    let _ = write!(
        buf,
        "{{\"offset\":{},\"size\":{},\"state\":\"{}\",\"kind\":\"{kind}\",\"seq\":{},\"key_len\":{},\"meta_len\":{},\"value_len\":{},\"expiry_ms\":{},\"key\":{},\"superseded\":{},\"newest_offset\":{},\"reason\":{}}}",
        row.offset,
        row.len,
        row.state.as_str(),
        num(h.map(|h| h.seq)),
        num(h.map(|h| u64::from(h.key_len))),
        num(h.map(|h| u64::from(h.meta_len))),
        num(h.map(|h| u64::from(h.value_len))),
        num(h.map(|h| h.expiry_ms).filter(|&e| e != 0)),
        text(row.key().map(key_text).as_deref()),
        newest_offset.is_some(),
        num(newest_offset),
        text(row.problems.first().map(|p| p.reason.as_str())),
    );
}

fn problem_json(p: &Problem) -> Value {
    json!({
        "offset": p.offset,
        "len": p.len,
        "kind": p.kind.as_str(),
        "damage": p.kind.is_damage(),
        "reason": p.reason,
    })
}

// ---- one key -----------------------------------------------------------------

fn show_key<S: Source>(
    src: &mut Tracked<'_, S>,
    req: &Request,
    key: &[u8],
    found: &KeyLookup,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Status> {
    let name = &req.name;
    let shown = key_text(key);
    if let HeaderStatus::Damaged { reason, .. } = &found.header {
        writeln!(
            err,
            "sfs-dump: warning: the file header of {name} is damaged ({reason}); the store will not open the file; entries were read with the salt found in it"
        )?;
    }
    if let (Some(e), Some((offset, seq))) = (&found.newest, found.newer_corrupt) {
        writeln!(
            err,
            "sfs-dump: warning: a newer copy of key {shown} (seq {seq}, at offset {offset}) is corrupt; this is the older value (seq {}, at offset {})",
            e.header.seq, e.offset
        )?;
    }
    let live = found.newest.as_ref().filter(|e| e.state == State::Live);
    let Some(e) = live else {
        let why = match (&found.newest, found.newer_corrupt) {
            (Some(e), _) => format!(
                "its newest copy (seq {}, at offset {}) expired at {} ({})",
                e.header.seq,
                e.offset,
                iso8601(i128::from(e.header.expiry_ms)),
                relative(i128::from(e.header.expiry_ms), req.now_ms)
            ),
            (None, Some((offset, seq))) => format!(
                "its only copy (seq {seq}, at offset {offset}) is corrupt: payload checksum mismatch"
            ),
            (None, None) => "no entry has this key".to_string(),
        };
        if req.json {
            let mut doc = JsonObject::begin(out)?;
            doc.field("file", &json!(name))?;
            doc.field("key", &json!(shown))?;
            doc.field("found", &json!(false))?;
            doc.field(
                "state",
                &json!(
                    found
                        .newest
                        .as_ref()
                        .map(|e| e.state.as_str())
                        .or(found.newer_corrupt.map(|_| "corrupt"))
                ),
            )?;
            doc.field("reason", &json!(why))?;
            doc.end()?;
        }
        writeln!(err, "sfs-dump: no live key {shown} in {name}: {why}")?;
        return Ok(Status::KeyNotFound);
    };
    let h = &e.header;
    let intact = if req.json {
        let mut doc = JsonObject::begin(out)?;
        for (name, value) in [
            ("file", json!(name)),
            ("key", json!(shown)),
            ("found", json!(true)),
            ("state", json!(e.state.as_str())),
            ("offset", json!(e.offset)),
            ("size", json!(h.block_len)),
            ("seq", json!(h.seq)),
            ("key_len", json!(h.key_len)),
            ("meta_len", json!(h.meta_len)),
            ("value_len", json!(h.value_len)),
            ("expiry_ms", json!(Some(h.expiry_ms).filter(|&x| x != 0))),
            ("metadata", json!(key_text(&e.metadata))),
        ] {
            doc.field(name, &value)?;
        }
        // Text when the value is UTF-8 (and not --hex), else hex: find out
        // first, streaming, then stream it out.
        let mut utf8 = Utf8Check::default();
        if !req.hex {
            found.read_value(&mut *src, |piece| utf8.feed(piece, |_| Ok(())))?;
        }
        let as_text = !req.hex && utf8.is_valid();
        doc.field(
            "value_encoding",
            &json!(if as_text { "utf8" } else { "hex" }),
        )?;
        doc.name("value")?;
        let intact = if as_text {
            write_json_text_value(&mut *src, found, doc.out)?
        } else {
            doc.out.write_all(b"\"")?;
            let intact = found.read_value(&mut *src, |piece| write_hex(doc.out, piece))?;
            doc.out.write_all(b"\"")?;
            intact
        };
        doc.end()?;
        intact
    } else if req.hex {
        let intact = found.read_value(&mut *src, |piece| write_hex(out, piece))?;
        writeln!(out)?;
        intact
    } else {
        found.read_value(&mut *src, |piece| out.write_all(piece))?
    };
    out.flush()?;
    if !intact {
        return Err(io::Error::other(format!(
            "the entry of key {shown} at offset {} changed while it was being read: the value printed is not to be trusted",
            e.offset
        )));
    }
    Ok(Status::Ok)
}

/// Checks that pieces of bytes form valid UTF-8 (a character may be split
/// between pieces).
#[derive(Default)]
struct Utf8Check {
    carry: Vec<u8>,
    bad: bool,
}

impl Utf8Check {
    /// Feeds the next piece and hands the text completed so far to `emit`.
    fn feed(
        &mut self,
        piece: &[u8],
        mut emit: impl FnMut(&str) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.bad {
            return Ok(());
        }
        let joined;
        let bytes: &[u8] = if self.carry.is_empty() {
            piece
        } else {
            let mut j = std::mem::take(&mut self.carry);
            j.extend_from_slice(piece);
            joined = j;
            &joined
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => emit(s),
            Err(e) if e.error_len().is_none() => {
                let (ok, rest) = bytes.split_at(e.valid_up_to());
                self.carry = rest.to_vec();
                emit(std::str::from_utf8(ok).expect("valid prefix"))
            }
            Err(_) => {
                self.bad = true;
                Ok(())
            }
        }
    }

    fn is_valid(&self) -> bool {
        !self.bad && self.carry.is_empty()
    }
}

fn write_json_text_value<S: Source>(
    src: &mut S,
    found: &KeyLookup,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let mut utf8 = Utf8Check::default();
    out.write_all(b"\"")?;
    let intact = found.read_value(src, |piece| {
        utf8.feed(piece, |text| {
            let quoted = serde_json::to_string(text).map_err(io::Error::other)?;
            out.write_all(&quoted.as_bytes()[1..quoted.len() - 1])
        })
    })?;
    out.write_all(b"\"")?;
    Ok(intact && utf8.is_valid())
}

fn write_hex(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        buf.push(DIGITS[usize::from(b >> 4)]);
        buf.push(DIGITS[usize::from(b & 15)]);
    }
    out.write_all(&buf)
}

// ---- numbers and times for people -------------------------------------------

/// `n` with thousands separators: `1,234,567`.
///
/// ```
/// assert_eq!(sfs::dump::thousands(1234567), "1,234,567");
/// assert_eq!(sfs::dump::thousands(12), "12");
/// ```
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// A size in binary units with one decimal: `512 B`, `1.5 KiB`, `3.0 GiB`.
///
/// ```
/// assert_eq!(sfs::dump::human(512), "512 B");
/// assert_eq!(sfs::dump::human(1536), "1.5 KiB");
/// assert_eq!(sfs::dump::human(3 << 30), "3.0 GiB");
/// ```
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scale = 1024u128;
    while unit + 1 < UNITS.len() && u128::from(n) >= scale * 1024 {
        unit += 1;
        scale *= 1024;
    }
    // One decimal, rounded, in integers: no float formatting surprises.
    let tenths = (u128::from(n) * 10 + scale / 2) / scale;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// A size both ways: `1.2 MiB (1,234,567 bytes)`, or `512 bytes` when small.
pub fn size_both(n: u64) -> String {
    if n < 1024 {
        format!("{} byte{}", n, plural(n))
    } else {
        format!("{} ({} bytes)", human(n), thousands(n))
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    fraction(part as f64 / whole as f64)
}

fn fraction(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

/// Milliseconds since the UNIX epoch as an ISO 8601 UTC time to the second,
/// for any value (years past 9999 get a sign, as ISO 8601 allows).
///
/// ```
/// assert_eq!(sfs::dump::iso8601(0), "1970-01-01T00:00:00Z");
/// assert_eq!(sfs::dump::iso8601(1_700_000_000_000), "2023-11-14T22:13:20Z");
/// assert_eq!(sfs::dump::iso8601(-1), "1969-12-31T23:59:59Z");
/// ```
pub fn iso8601(ms: i128) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else {
        format!("{y:+05}")
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day number (0 = 1970-01-01), after
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i128::from(m <= 2);
    (y, m, d)
}

/// How far `at` is from `now` (both in ms), in the largest whole unit:
/// `in 3 min`, `2 h ago`.
///
/// ```
/// assert_eq!(sfs::dump::relative(180_000, 0), "in 3 min");
/// assert_eq!(sfs::dump::relative(0, 7_200_000), "2 h ago");
/// ```
pub fn relative(at: i128, now: i64) -> String {
    let d = at - i128::from(now);
    let s = d.unsigned_abs() / 1000;
    let span = match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..172_800 => format!("{} h", s / 3600),
        172_800..63_072_000 => format!("{} d", s / 86_400),
        _ => format!("{} y", s / 31_557_600),
    };
    if d > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

// ---- progress ----------------------------------------------------------------

/// A progress bar for stderr: silent for the first second, then one line
/// redrawn at most ten times a second, erased for good by
/// [`ProgressBar::finish`].
pub struct ProgressBar {
    start: Instant,
    last: Option<Instant>,
    calls: u32,
    finished: bool,
}

impl Default for ProgressBar {
    fn default() -> Self {
        ProgressBar::new()
    }
}

impl ProgressBar {
    /// A bar whose second starts now.
    pub fn new() -> ProgressBar {
        ProgressBar {
            start: Instant::now(),
            last: None,
            calls: 0,
            finished: false,
        }
    }

    /// Draws `p` if the run has taken over a second and the last drawing is
    /// older than a tenth of one.
    pub fn update(&mut self, out: &mut dyn Write, p: Progress) {
        if self.finished {
            return;
        }
        self.calls = self.calls.wrapping_add(1);
        if !self.calls.is_multiple_of(64) && self.last.is_some() {
            return;
        }
        let now = Instant::now();
        if now - self.start < Duration::from_secs(1)
            || self
                .last
                .is_some_and(|l| now - l < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        let share = if p.total == 0 {
            1.0
        } else {
            p.done as f64 / p.total as f64
        };
        const WIDTH: usize = 30;
        let filled = ((share * WIDTH as f64) as usize).min(WIDTH);
        let _ = write!(
            out,
            "\r\x1b[K{} [{}{}] {:>5.1} %  {} / {}",
            p.phase,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            share * 100.0,
            human(p.done),
            human(p.total)
        );
        let _ = out.flush();
    }

    /// Erases the bar, if it was drawn, and draws it no more (call it before
    /// anything else is written to the same terminal).
    pub fn finish(&mut self, out: &mut dyn Write) {
        if self.last.take().is_some() {
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
        }
        self.finished = true;
    }
}
