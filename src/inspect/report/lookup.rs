//! `--key`: the newest copy of one key, found in one walk, and its value
//! streamed.

use std::io;

use super::{CHUNK, HeaderStatus, State, live_or_expired, read_header};
use crate::format::{BlockHeader, HeaderError};
use crate::inspect::{BlockKind, Source, Walker};

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
/// It reads a file the store would refuse (a damaged file header) with the
/// salt found in it, and says so in [`KeyLookup::header`].
///
/// ```
/// use sfs::inspect::report::{State, find_key};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("k.sfs");
/// let store = sfs::Store::open(&path)?;
/// store.put(b"greeting", b"hello")?;
/// store.close()?;
///
/// let bytes = std::fs::read(&path)?;
/// let found = find_key(&bytes[..], b"greeting", 0)?.expect("a store file");
/// assert_eq!(found.newest.as_ref().map(|e| e.state), Some(State::Live));
/// let mut value = Vec::new();
/// let intact = found.read_value(&bytes[..], |piece| {
///     value.extend_from_slice(piece);
///     Ok(())
/// })?;
/// assert!(intact);
/// assert_eq!(value, b"hello");
/// assert!(find_key(&bytes[..], b"nobody", 0)?.expect("a store file").newest.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    // Every valid copy of the key: a pending one counts only through its
    // batch's complete commit record, decided after the walk.
    let mut copies: Vec<(u64, BlockHeader)> = Vec::new();
    let mut batches = super::batches::ReportBatches::default();
    let mut corrupt: Option<(u64, u64)> = None;
    while let Some(block) = walker.next_block()? {
        if let BlockKind::Entry(h) = &block.kind
            && h.pending
        {
            batches.pending(block.offset, block.len, h, now_ms);
        }
        match block.kind {
            BlockKind::Commit(_, c) => batches.commit(block.offset, c),
            BlockKind::Entry(h) if walker.key() == key => copies.push((block.offset, h)),
            BlockKind::CorruptEntry(h)
                if walker.key() == key && corrupt.is_none_or(|(_, s)| h.seq > s) =>
            {
                corrupt = Some((block.offset, h.seq));
            }
            _ => {}
        }
    }
    batches.resolve(walker.source(), fields)?;
    let mut best: Option<(u64, BlockHeader)> = None;
    for (offset, h) in copies {
        if !batches.uncommitted(offset) && best.is_none_or(|(_, b)| h.seq > b.seq) {
            best = Some((offset, h));
        }
    }
    // A complete batch's tombstone newer than every copy: deleted.
    let deleted = batches
        .tombstones()
        .iter()
        .any(|(_, seq, k)| k == key && best.is_some_and(|(_, b)| *seq > b.seq));
    if deleted {
        best = None;
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
