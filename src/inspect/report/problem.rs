//! What a check finds, and the reasons in words.

use super::{KEY_QUOTE, Newest, RowKind};
use crate::format::{ALIGN, BLOCK_HEADER_LEN, BlockHeader, BlockHeaderError};

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
    /// Note, not damage: a member of a batch that did not commit.
    Uncommitted,
}

impl ProblemKind {
    /// Whether it is damage (`--check` exits with 1) rather than a note about
    /// something a crash normally leaves behind.
    pub fn is_damage(self) -> bool {
        !matches!(
            self,
            ProblemKind::Superseded | ProblemKind::Unwritten | ProblemKind::Uncommitted
        )
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
            ProblemKind::Uncommitted => "uncommitted",
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

    /// Adds a problem or a note (outside the crate: through [`Extend`]).
    pub(crate) fn push(&mut self, p: Problem) {
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

// ---- reasons, in words ------------------------------------------------------

/// A key in a reason: the UTF-8 string when the bytes are valid UTF-8
/// without control characters and do not start with `0x`, otherwise `0x`
/// followed by lowercase hex; shortened to about `max` characters with a
/// trailing `…`. When more than `max` bytes are given, the key is taken as
/// cut there (an incomplete character at the cut is dropped, not held
/// against the key). `sfs-dump` shows keys the same way (its own copy,
/// with the decoding of typed keys).
pub(crate) fn key_preview(bytes: &[u8], max: usize) -> String {
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

pub(super) fn unwritten_problem(offset: u64, len: u64, file_len: u64) -> Problem {
    Problem {
        offset,
        len,
        kind: ProblemKind::Unwritten,
        reason: format!(
            "{len} bytes of zeros where a block should start, {}: space reserved but never written (a write cut short); the store reclaims it at open",
            up_to(offset + len, file_len)
        ),
    }
}

pub(super) fn corrupt_entry_problem(offset: u64, len: u64, h: &BlockHeader, key: &[u8]) -> Problem {
    Problem {
        offset,
        len,
        kind: ProblemKind::Checksum,
        reason: format!(
            "payload checksum mismatch: the key, metadata or value of this entry (seq {}, key {} as read, {}-byte value) changed after it was written; the store skips it at open and the key keeps its older copy, if any",
            h.seq,
            quote_key(key),
            h.value_len
        ),
    }
}

pub(super) fn superseded_problem(
    offset: u64,
    len: u64,
    h: &BlockHeader,
    key: &[u8],
    n: &Newest,
) -> Problem {
    if n.tombstone {
        return Problem {
            offset,
            len,
            kind: ProblemKind::Superseded,
            reason: format!(
                "older copy of key {} (seq {}), deleted by the batch whose commit record is at offset {} (seq {}); the store frees it at open",
                quote_key(key),
                h.seq,
                n.offset,
                n.seq
            ),
        };
    }
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
            "older copy of key {} (seq {}); the newest copy (seq {}{}) is at offset {}; kept until the newer copy was durable (a store in use, or a crash before its next sync); the store frees it at open",
            quote_key(key),
            h.seq,
            n.seq,
            if n.expired { ", expired" } else { "" },
            n.offset
        ),
    }
}

pub(super) fn damage_problem(
    offset: u64,
    len: u64,
    e: BlockHeaderError,
    raw: &[u8],
    key: Option<&[u8]>,
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
        BlockHeaderError::BadExpiry => (
            ProblemKind::Checksum,
            "expiry word check mismatch: the expiry stored in the block header here was damaged, so the entry cannot be trusted".to_string(),
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
    let lost = match key {
        Some(k) => format!(
            "; the header reads as an entry of key {} (unverified: probably the entry lost here)",
            quote_key(k)
        ),
        None => String::new(),
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
        reason: format!(
            "{what}{lost}; {extent}; the store skips them at open and reclaims the space"
        ),
    }
}

pub(super) fn overlap_problem(
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
