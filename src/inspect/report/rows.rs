//! The second walk: one row per block, in file order, with its state and
//! its problems.

use std::io;

use super::problem::{
    corrupt_entry_problem, damage_problem, overlap_problem, superseded_problem, unwritten_problem,
};
use super::{CHUNK, KEY_QUOTE, Problem, Report, State, live_or_expired};
use crate::format::{ALIGN, BLOCK_HEADER_LEN, BLOCK_MAGIC, BlockHeader, BlockHeaderError, Kind};
use crate::inspect::{BlockKind, Source, Walker};

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
    /// A pending member of an atomic batch whose commit record is missing or
    /// incomplete: not an entry (the batch did not commit). Free.
    Uncommitted {
        /// Its header (pending).
        header: BlockHeader,
        /// Its key.
        key: Vec<u8>,
    },
    /// The commit record of an atomic batch (FORMAT.md, "Batches"): space
    /// the next open frees, after settling the batch if it is complete.
    Commit {
        /// Its header.
        header: BlockHeader,
        /// What it holds.
        record: crate::format::CommitRecord,
        /// Whether all its members are there with a matching digest.
        complete: bool,
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
            | RowKind::Uncommitted { header, .. }
            | RowKind::Commit { header, .. }
            | RowKind::CorruptEntry { header, .. } => Some(header),
            _ => None,
        }
    }

    /// The key, for entries (for a corrupt entry, the bytes where it should be).
    pub fn key(&self) -> Option<&[u8]> {
        match &self.kind {
            RowKind::Entry { key, .. }
            | RowKind::Superseded { key, .. }
            | RowKind::Uncommitted { key, .. }
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

impl<'r, S: Source> Rows<'r, S> {
    pub(super) fn new(report: &'r Report, walker: Option<Walker<S>>, check: bool) -> Rows<'r, S> {
        Rows {
            report,
            walker,
            check,
            buf: Vec::new(),
        }
    }

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
            BlockKind::Entry(header) if self.report.batches.uncommitted(offset) => {
                let key = walker.key().to_vec();
                problems.push(uncommitted_problem(offset, len, &header));
                (State::Free, RowKind::Uncommitted { header, key })
            }
            BlockKind::Commit(header, record) => {
                let complete = self.report.batches.is_complete(offset);
                (
                    State::Free,
                    RowKind::Commit {
                        header,
                        record,
                        complete,
                    },
                )
            }
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
                problems.push(unwritten_problem(offset, len, walker.file_len()));
                (State::Free, RowKind::Unwritten)
            }
            BlockKind::CorruptEntry(header) => {
                let key = walker.key().to_vec();
                problems.push(corrupt_entry_problem(offset, len, &header, &key));
                (State::Corrupt, RowKind::CorruptEntry { header, key })
            }
            BlockKind::Damaged(e) => {
                let mut raw = [0u8; BLOCK_HEADER_LEN as usize];
                let n = (walker.file_len() - offset).min(BLOCK_HEADER_LEN) as usize;
                walker.source().read_at(offset, &mut raw[..n])?;
                let key = lost_key(walker, offset, len, &raw[..n])?;
                problems.push(damage_problem(
                    offset,
                    len,
                    e,
                    &raw[..n],
                    key.as_deref(),
                    walker.file_len(),
                ));
                (State::Corrupt, RowKind::Damaged(e))
            }
        };
        if self.check && matches!(kind, RowKind::Free | RowKind::CorruptEntry { .. }) {
            find_hidden_headers(walker, &mut self.buf, offset, len, &kind, &mut problems)?;
        }
        Ok(Some(Row {
            offset,
            len,
            state,
            kind,
            problems,
        }))
    }
}

/// A note: a pending batch member that the next open frees (its batch did
/// not commit: a crash during the batch's write).
fn uncommitted_problem(offset: u64, len: u64, h: &BlockHeader) -> Problem {
    Problem {
        offset,
        len,
        kind: super::ProblemKind::Uncommitted,
        reason: format!(
            "member (sequence number {}) of a batch that did not commit (its commit record is missing or incomplete): not an entry; the next open frees it",
            h.seq
        ),
    }
}

/// When the bytes of a damaged region start like an entry header, the key
/// they claim to hold (at most [`KEY_QUOTE`] + 1 bytes, inside the region):
/// one damaged bit in a header leaves the key readable, and a person wants to
/// know which entry was lost. Not verified by any checksum.
fn lost_key<S: Source>(
    walker: &mut Walker<S>,
    offset: u64,
    len: u64,
    raw: &[u8],
) -> io::Result<Option<Vec<u8>>> {
    if raw.len() < BLOCK_HEADER_LEN as usize || raw[0..4] != BLOCK_MAGIC || raw[4] != b'E' {
        return Ok(None);
    }
    let key_len = u64::from(u16::from_le_bytes([raw[6], raw[7]]));
    if key_len == 0 || BLOCK_HEADER_LEN + key_len > len {
        return Ok(None);
    }
    let mut key = vec![0u8; key_len.min(KEY_QUOTE as u64 + 1) as usize];
    walker
        .source()
        .read_at(offset + BLOCK_HEADER_LEN, &mut key)?;
    Ok(Some(key))
}

/// Looks at every 8-byte boundary inside a block for a valid entry header
/// (the test the walk uses to resynchronise after damage).
fn find_hidden_headers<S: Source>(
    walker: &mut Walker<S>,
    buf: &mut Vec<u8>,
    offset: u64,
    len: u64,
    kind: &RowKind,
    problems: &mut Vec<Problem>,
) -> io::Result<()> {
    let (salt, file_len) = (walker.header().salt, walker.file_len());
    let end = offset + len;
    let mut at = offset + ALIGN;
    while at < end {
        let chunk_end = end.min(at + CHUNK);
        let read_end = file_len.min(chunk_end + BLOCK_HEADER_LEN);
        buf.resize((read_end - at) as usize, 0);
        walker.source().read_at(at, buf)?;
        let mut p = at;
        while p < chunk_end {
            let i = (p - at) as usize;
            let Some(b) = buf.get(i..i + BLOCK_HEADER_LEN as usize) else {
                break;
            };
            if b[0..4] == BLOCK_MAGIC
                && b[4] == b'E'
                && let Ok(h) = BlockHeader::decode(b, salt, p, file_len)
                && h.kind == Kind::Entry
            {
                // The key lies inside the block the header claims, so in the file.
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
