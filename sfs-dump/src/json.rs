//! One JSON document for scripts, with the field names of the tool's
//! reference (`sfs-dump/README.md`, "JSON"); entry rows stream.

use std::io::{self, Write};

use serde_json::{Value, json};

use crate::keys::{Decoded, KeyFormat, decode_key, key_text};
use crate::text::map_columns;
use crate::{Request, Status, Tracked, walk_rows};
use sfs::inspect::FILE_HEADER_LEN;
use sfs::inspect::Source;
use sfs::inspect::report::{CellState, Findings, Map, Problem, Report, Row, RowKind};

/// Writes one JSON object field by field, so that arrays can stream.
pub(super) struct JsonObject<'w> {
    pub(super) out: &'w mut dyn Write,
    fields: usize,
    items: usize,
}

impl<'w> JsonObject<'w> {
    pub(super) fn begin(out: &'w mut dyn Write) -> io::Result<JsonObject<'w>> {
        out.write_all(b"{")?;
        Ok(JsonObject {
            out,
            fields: 0,
            items: 0,
        })
    }

    pub(super) fn name(&mut self, name: &str) -> io::Result<()> {
        if self.fields > 0 {
            self.out.write_all(b",")?;
        }
        self.fields += 1;
        write!(self.out, "\n  {}: ", Value::from(name))
    }

    pub(super) fn field(&mut self, name: &str, value: &Value) -> io::Result<()> {
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

    pub(super) fn end(self) -> io::Result<()> {
        self.out.write_all(b"\n}\n")
    }
}

pub(super) fn json_report<S: Source>(
    src: &mut Tracked<'_, S>,
    req: &Request,
    report: &Report,
    out: &mut dyn Write,
) -> io::Result<Status> {
    let s = &report.summary;
    let mut doc = JsonObject::begin(out)?;
    let fields: [(&str, Value); 24] = [
        ("file", json!(req.name)),
        ("file_len", json!(s.file_len)),
        ("format_version", json!(s.format_version)),
        ("header_ok", json!(report.header.is_valid())),
        (
            "header_problem",
            json!(report.header_problem().map(|p| p.reason)),
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
    // Batches exist from format version 2 on: the fields are absent for a
    // version-1 file (its output is unchanged).
    if s.format_version >= 2 {
        for (name, value) in [
            ("commit_records", json!(s.commit_records)),
            ("unsettled_batches", json!(s.unsettled_batches)),
            ("pending_entries", json!(s.pending_entries)),
            ("uncommitted_entries", json!(s.uncommitted_entries)),
        ] {
            doc.field(name, &value)?;
        }
    }
    if req.map
        && let Some(map) = &report.map
    {
        doc.field("map", &map_json(map, req.width))?;
    }
    let mut findings = Findings::default();
    if req.entries || req.check {
        if req.entries {
            doc.begin_array("entries")?;
        }
        let mut buf = Vec::new();
        let listed;
        (findings, listed) = walk_rows(src, req, report, |row| {
            if req.entries {
                row_json(row, req.key_format, &mut buf);
                doc.item(&buf)?;
            }
            Ok(())
        })?;
        if req.entries {
            doc.end_array()?;
            if req.filtered() {
                doc.field("entries_listed", &json!(listed.rows))?;
                doc.field("entries_truncated", &json!(listed.cut))?;
                doc.field(
                    "entries_filter",
                    &json!({
                        "key_format": req.key_format.as_str(),
                        "prefix": req.prefix.as_deref().map(|p| match req.key_format {
                            KeyFormat::Hex => format!("0x{}", crate::keys::hex(p)),
                            _ => String::from_utf8_lossy(p).into_owned(),
                        }),
                        "states": req.states.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                        "limit": req.limit,
                    }),
                )?;
            }
        }
    }
    let mut status = Status::Ok;
    if req.check {
        let mut buf = Vec::new();
        for (name, list, total) in [
            ("problems", &findings.problems, findings.problems_total),
            ("notes", &findings.notes, findings.notes_total),
        ] {
            doc.begin_array(name)?;
            for p in list {
                problem_json(p, &mut buf);
                doc.item(&buf)?;
            }
            doc.end_array()?;
            doc.field(&format!("{name}_total"), &json!(total))?;
        }
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
fn row_json(row: &Row, key_format: KeyFormat, buf: &mut Vec<u8>) {
    let h = row.header();
    let kind = match row.kind {
        RowKind::Entry { .. } => "entry",
        RowKind::Superseded { .. } => "superseded",
        RowKind::Uncommitted { .. } => "uncommitted",
        RowKind::Commit { .. } => "commit",
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
    // Batches (format version 2): a member not yet settled is "pending"; a
    // commit record says how many members and deleted keys it has, and
    // whether it is complete. Absent from rows of other blocks.
    let batch = match &row.kind {
        RowKind::Commit {
            record, complete, ..
        } => format!(
            ",\"batch_members\":{},\"batch_deletes\":{},\"batch_complete\":{complete}",
            record.members,
            record.tombstones.len()
        ),
        _ if h.is_some_and(|h| h.pending) => ",\"pending\":true".to_string(),
        _ => String::new(),
    };
    let text =
        |t: Option<&str>| t.map_or_else(|| "null".to_string(), |t| Value::from(t).to_string());
    buf.clear();
    let _ = write!(
        buf,
        "{{\"offset\":{},\"size\":{},\"state\":\"{}\",\"kind\":\"{kind}\",\"seq\":{},\"key_len\":{},\"meta_len\":{},\"value_len\":{},\"expiry_ms\":{},\"key\":{}{},\"superseded\":{},\"newest_offset\":{},\"reason\":{}{batch}}}",
        row.offset,
        row.len,
        row.state.as_str(),
        num(h.map(|h| h.seq)),
        num(h.map(|h| u64::from(h.key_len))),
        num(h.map(|h| u64::from(h.meta_len))),
        num(h.map(|h| u64::from(h.value_len))),
        num(h.map(|h| h.expiry_ms).filter(|&e| e != 0)),
        text(row.key().map(key_text).as_deref()),
        decoded_fields(row.key().and_then(|k| decode_key(key_format, k)).as_ref()),
        newest_offset.is_some(),
        num(newest_offset),
        text(row.problems.first().map(|p| p.reason.as_str())),
    );
}

/// `,"key_format":…,"key_decoded":…` after `key` when the key decodes as a
/// typed key (a string, or a number); nothing otherwise, so that the rows of
/// raw keys read as they always did.
pub(crate) fn decoded_fields(d: Option<&Decoded>) -> String {
    match d {
        None => String::new(),
        Some(d) => {
            let value = decoded_value(d);
            format!(
                ",\"key_format\":\"{}\",\"key_decoded\":{value}",
                d.format().as_str()
            )
        }
    }
}

/// A decoded key as a JSON value: a string, or a number.
pub(crate) fn decoded_value(d: &Decoded) -> Value {
    match d {
        Decoded::String(s) => Value::from(s.as_str()),
        Decoded::U64(n) => Value::from(*n),
    }
}

/// One problem or note as a JSON object, fields in a fixed order.
fn problem_json(p: &Problem, buf: &mut Vec<u8>) {
    buf.clear();
    let _ = write!(
        buf,
        "{{\"offset\":{},\"len\":{},\"kind\":\"{}\",\"damage\":{},\"reason\":{}}}",
        p.offset,
        p.len,
        p.kind.as_str(),
        p.kind.is_damage(),
        Value::from(p.reason.as_str())
    );
}
