//! Text for people: the summary, the map, the entry listing and the check.

use std::fmt::Write as _;
use std::io::{self, Write};

use crate::keys::{KeyFormat, show_key};
use crate::units::{fraction, human, iso8601, percent, plural, relative, size_both, thousands};
use crate::{Listed, Request, Status, Tracked, walk_rows};
use sfs::inspect::FILE_HEADER_LEN;
use sfs::inspect::Source;
use sfs::inspect::report::{
    CellState, Findings, HeaderStatus, Problem, Report, Row, RowKind, Summary,
};

/// The most lines a map has.
pub(super) const MAP_ROWS: usize = 16;
/// Characters of a key shown in the entry listing.
const KEY_COLUMN: usize = 40;

pub(super) fn text_report<S: Source>(
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
        let table = req.entries.then(|| EntryTable::new(report, req.key_format));
        if let Some(table) = &table {
            gap(out)?;
            table.write_head(out, &req.name, report)?;
        }
        let listed;
        (findings, listed) = walk_rows(src, req, report, |row| match &table {
            Some(table) => table.write_row(out, row, report.now_ms()),
            None => Ok(()),
        })?;
        if let Some(table) = &table {
            if req.filtered() {
                write_listed(out, req, listed)?;
            }
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
            iso8601(i128::from(h.created_ms)),
            relative(i128::from(h.created_ms), now)
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
                    iso8601(i128::from(h.created_ms))
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
    if negligible_free(s) {
        writeln!(
            out,
            "{:<20}negligible: only {} free, under 5 % of the file",
            "fragmentation",
            size_both(s.free_bytes)
        )?;
    } else {
        writeln!(
            out,
            "{:<20}{} (share of free space outside the largest free block)",
            "fragmentation",
            fraction(s.fragmentation())
        )?;
    }
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
            "free space includes {} older cop{} of keys with a newer copy ({}), kept until the newer copy was durable; the store frees them at open",
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
    if s.commit_records > 0 || s.pending_entries > 0 {
        writeln!(
            out,
            "batches: {} commit record{} ({} complete, not yet settled: the store settles them at open); {} pending member{}, {} of batches that did not commit (free)",
            thousands(s.commit_records),
            plural(s.commit_records),
            thousands(s.unsettled_batches),
            thousands(s.pending_entries),
            plural(s.pending_entries),
            thousands(s.uncommitted_entries)
        )?;
    }
    Ok(())
}

/// Cells per map line for a width (any width: a `COLUMNS` of a billion must
/// not size the map).
pub(super) fn map_columns(width: usize) -> usize {
    width.clamp(MAP_PREFIX + 9, 1000) - MAP_PREFIX - 1
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
    if negligible_free(s) {
        writeln!(
            out,
            "fragmentation negligible: only {} free, under 5 % of the file",
            human(s.free_bytes)
        )?;
    } else {
        writeln!(
            out,
            "fragmentation {}: the largest free block is {} of {} free",
            fraction(s.fragmentation()),
            human(s.largest_free_block),
            human(s.free_bytes)
        )?;
    }
    write_free_notes(out, s)
}

/// Whether there is free space, but so little (under 5 % of the file) that
/// how it is split says nothing: a compaction could win back at most that
/// much. Right after `compact()`, a few holes the compaction left read as
/// "90 % fragmented" otherwise.
pub(crate) fn negligible_free(s: &Summary) -> bool {
    s.free_bytes > 0 && u128::from(s.free_bytes) * 20 < u128::from(s.file_len)
}

/// Under a filtered or limited listing: how many rows it shows, of what, and
/// whether `--limit` cut it.
fn write_listed(out: &mut dyn Write, req: &Request, listed: Listed) -> io::Result<()> {
    let what = filter_words(req);
    let rows = format!(
        "{} block{} listed",
        thousands(listed.rows),
        plural(listed.rows)
    );
    if listed.cut {
        writeln!(
            out,
            "{rows} ({what}): cut at --limit {}, more blocks match",
            thousands(req.limit.unwrap_or(0))
        )
    } else {
        writeln!(out, "{rows} ({what}): every block that matches")
    }
}

/// The filter of a listing in words: `key prefix "sid-", state live or
/// expired, --limit 20`.
fn filter_words(req: &Request) -> String {
    let mut words = Vec::new();
    if let Some(p) = &req.prefix {
        let p = match req.key_format {
            KeyFormat::Hex => format!("0x{}", crate::keys::hex(p)),
            _ => format!("{:?}", String::from_utf8_lossy(p)),
        };
        words.push(format!("key prefix {p}"));
    }
    if !req.states.is_empty() {
        let states: Vec<&str> = req.states.iter().map(|s| s.as_str()).collect();
        words.push(format!("state {}", states.join(" or ")));
    }
    if let Some(n) = req.limit {
        words.push(format!("--limit {}", thousands(n)));
    }
    words.join(", ")
}

/// Column widths of the entry listing, fixed from the scan so rows stream.
struct EntryTable {
    key_format: KeyFormat,
    offset: usize,
    size: usize,
    seq: usize,
    value: usize,
}

impl EntryTable {
    fn new(report: &Report, key_format: KeyFormat) -> EntryTable {
        let s = &report.summary;
        EntryTable {
            key_format,
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
        let key = row.key().map(|k| show_key(self.key_format, k, KEY_COLUMN));
        let note = match (&row.kind, key) {
            (RowKind::Entry { header, .. }, Some(k)) if header.pending => {
                format!("{k}  (batch member, pending)")
            }
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
            (RowKind::Uncommitted { .. }, Some(k)) => {
                format!("{k}  (member of a batch that did not commit)")
            }
            (
                RowKind::Commit {
                    record, complete, ..
                },
                _,
            ) => format!(
                "(commit record: {} members, {} deletes, {})",
                record.members,
                record.tombstones.len(),
                if *complete {
                    "complete: the next open settles it"
                } else {
                    "incomplete: the batch did not commit"
                }
            ),
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
        let what_next = if report.header.is_valid() {
            "The store skips damaged blocks at open and serves everything else; a read-write open reclaims their space.".to_string()
        } else {
            format!(
                "The file header is damaged, so the store refuses to open this file (Error::Corrupt) and serves none of it; what the lines above say the store does at open holds only for a file whose header is intact. `sfs-dump {name} --key KEY` still reads the value of any entry that verifies."
            )
        };
        writeln!(
            out,
            "DAMAGE: {} problem{}{notes}; corrupt blocks: {}, {}. {what_next}",
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
