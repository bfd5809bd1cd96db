//! A read-only walk over any file, block by block: the one parser of the
//! format, used both by the store when it opens a file and by `sfs-dump`.
//!
//! The walk never trusts a length it has not checked: a block header is
//! believed only when its magic, checksum and lengths are valid and the block
//! fits in the file. After an invalid header the walk resynchronises: it looks
//! at every later 8-byte boundary for a valid *entry* header (free headers are
//! not trusted there, since stale ones may lie inside free space) and reports
//! the bytes in between as one damaged region. Memory stays bounded whatever
//! the file claims: payloads are checksummed in 64 KiB pieces.
//!
//! This module never writes. The [`report`] submodule builds on the walk what
//! `sfs-dump` shows: block states, summary figures and `--check` problems.
//!
//! This is the whole of what the `sfs-dump` package (and any other tool that
//! looks inside store files) gets from the library: a [`Source`] to read
//! from ([`FileSource`], or any byte slice), the [`Walker`] over its blocks,
//! and the [`report`] built on it. How `sfs-dump` prints all this (its text,
//! JSON and command line) lives in that package, not here.

pub mod report;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::format::{ALIGN, BLOCK_HEADER_LEN, BLOCK_MAGIC};
// The headers the walk reads (the file header and block header of
// FORMAT.md, as plain data), and why it refuses one. Writing them is the
// store's business: their codecs are not public.
pub use crate::format::{
    BlockHeader, BlockHeaderError, CommitRecord, FILE_HEADER_LEN, FIRST_FORMAT_VERSION,
    FORMAT_VERSION, FileHeader, HeaderError, Kind,
};

/// Random access to the bytes of a file: a [`FileSource`], or any byte
/// slice (`&[u8]`), or a `&mut` to either.
pub trait Source {
    /// The length of the file.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `buf.len()` bytes at `offset` (inside the file).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The bytes at `offset..offset + len` without copying, when the source
    /// holds them in memory (a slice or a memory map); `None` otherwise.
    fn view(&mut self, _offset: u64, _len: u64) -> Option<&[u8]> {
        None
    }
}

impl Source for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).ok();
        let src = start.and_then(|s| self.get(s..s.checked_add(buf.len())?));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            )),
        }
    }

    fn view(&mut self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

/// A file read through a read-ahead buffer: sequential walks cost one system
/// call per megabyte. The length is taken once, when it is opened. It never
/// writes or locks, so it may read a file a store has open.
///
/// ```
/// use sfs::inspect::{FileSource, Source};
/// use sfs::inspect::report::{Report, ScanOptions};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("f.sfs");
/// sfs::Store::open(&path)?.close()?;
///
/// let mut src = FileSource::new(std::fs::File::open(&path)?)?;
/// assert_eq!(src.len(), sfs::inspect::FILE_HEADER_LEN); // only the file header
/// let report = Report::scan(&mut src, ScanOptions::at(0))?.expect("a store file");
/// assert_eq!(report.summary.blocks(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FileSource {
    file: File,
    len: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

const READ_AHEAD: usize = 1 << 20;

impl FileSource {
    /// Wraps an open file.
    pub fn new(file: File) -> io::Result<FileSource> {
        let len = file.metadata()?.len();
        Ok(FileSource {
            file,
            len,
            buf: Vec::new(),
            buf_at: 0,
        })
    }
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        };
        if out.len() > READ_AHEAD / 2 {
            return self.file.read_exact_at(out, offset);
        }
        let cached = offset >= self.buf_at && end <= self.buf_at + self.buf.len() as u64;
        if !cached {
            let n = (self.len - offset).min(READ_AHEAD as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.buf_at = offset;
        }
        let s = (offset - self.buf_at) as usize;
        out.copy_from_slice(&self.buf[s..s + out.len()]);
        Ok(())
    }
}

/// Reads and checks the file header of `src`.
pub(crate) fn read_file_header(
    src: &mut impl Source,
) -> io::Result<Result<FileHeader, HeaderError>> {
    let n = src.len().min(FILE_HEADER_LEN) as usize;
    let mut b = [0u8; FILE_HEADER_LEN as usize];
    src.read_at(0, &mut b[..n])?;
    Ok(FileHeader::decode(&b[..n]))
}

/// What a block of the file holds, as the walk found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// An entry whose header and payload checksums are both valid.
    Entry(BlockHeader),
    /// A free block with a valid header.
    Free,
    /// Zero bytes where a block should start, up to the next valid entry or
    /// the end of the file: space that was reserved but never written. Free.
    Unwritten,
    /// The commit record of an atomic batch (format version 2), with a valid
    /// payload. Whether it is *complete* (all its members found, their
    /// digest matching) is decided over the whole file: see
    /// `report::Report` and FORMAT.md, "Batches".
    Commit(BlockHeader, CommitRecord),
    /// An entry (or commit record) whose header is valid but whose payload
    /// checksum is not: its extent is known, its contents are not to be
    /// trusted.
    CorruptEntry(BlockHeader),
    /// Bytes without a valid block header, up to the next valid entry header
    /// or the end of the file.
    Damaged(BlockHeaderError),
}

/// One block (or damaged region) of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Where it starts.
    pub offset: u64,
    /// How many bytes it covers.
    pub len: u64,
    /// What it holds.
    pub kind: BlockKind,
}

impl Block {
    /// Whether the bytes are damage (a corrupt entry or a damaged region).
    pub fn is_damage(&self) -> bool {
        matches!(
            self.kind,
            BlockKind::CorruptEntry(_) | BlockKind::Damaged(_)
        )
    }
}

/// Walks the blocks of a file after its header, in file order.
///
/// ```
/// use sfs::inspect::{BlockKind, Walker};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("w.sfs");
/// let store = sfs::Store::open(&path)?;
/// store.put(b"k", b"v")?;
/// store.close()?;
///
/// let bytes = std::fs::read(&path)?;
/// let mut walker = Walker::new(&bytes[..])?.expect("a store file");
/// let block = walker.next_block()?.expect("one block");
/// assert!(matches!(block.kind, BlockKind::Entry(_)));
/// assert_eq!(walker.key(), b"k");
/// // Then the space the file grew by ahead of later writes, never written.
/// let reserve = walker.next_block()?.expect("the growth reserve");
/// assert!(matches!(reserve.kind, BlockKind::Unwritten));
/// assert!(walker.next_block()?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Walker<S: Source> {
    src: S,
    header: FileHeader,
    pos: u64,
    len: u64,
    key: Vec<u8>,
    buf: Vec<u8>,
}

const CHUNK: usize = 1 << 16;

impl<S: Source> Walker<S> {
    /// Checks the file header and positions the walk at the first block.
    /// `Ok(Err(..))` says why the file header was refused.
    pub fn new(mut src: S) -> io::Result<Result<Walker<S>, HeaderError>> {
        let header = match read_file_header(&mut src)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(Walker::with_header(src, header)))
    }

    /// Positions a walk at the first block using `header` as given, without
    /// reading the file's own header: for salvaging the blocks of a file whose
    /// header is damaged, with the salt read from its bytes. Blocks are
    /// classified exactly as by [`Walker::new`]; a wrong salt makes every
    /// block header fail its checksum.
    pub(crate) fn with_header(src: S, header: FileHeader) -> Walker<S> {
        let len = src.len();
        Walker {
            src,
            header,
            pos: FILE_HEADER_LEN,
            len,
            key: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// The file header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// The length of the file being walked.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Where the next block starts.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the walk to `pos`, which must be where a block starts (a valid
    /// entry header found by [`Self::next_entry_header`] is one). Used to walk the
    /// two halves of a large file on two threads.
    pub(crate) fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The first 8-byte boundary in `from..to` that holds a valid entry
    /// header, the same rule the walk uses to resynchronise after damage.
    pub(crate) fn next_entry_header(&mut self, from: u64, to: u64) -> io::Result<Option<u64>> {
        let mut at = from
            .next_multiple_of(crate::format::ALIGN)
            .max(FILE_HEADER_LEN);
        while at < self.len.min(to) {
            if let Ok(h) = self.header_at(at)?
                && h.kind == Kind::Entry
            {
                return Ok(Some(at));
            }
            at += crate::format::ALIGN;
        }
        Ok(None)
    }

    /// The key of the last block returned, when it was an entry (for a
    /// corrupt entry, the bytes where its key should be).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The underlying source, to read values of blocks already walked.
    pub(crate) fn source(&mut self) -> &mut S {
        &mut self.src
    }

    /// The next block, or `None` at the end of the file.
    pub fn next_block(&mut self) -> io::Result<Option<Block>> {
        self.key.clear();
        if self.pos >= self.len {
            return Ok(None);
        }
        let pos = self.pos;
        let header = self.header_at(pos)?;
        let block = match header {
            Ok(h) if h.kind == Kind::Free => Block {
                offset: pos,
                len: h.block_len,
                kind: BlockKind::Free,
            },
            Ok(h) if h.kind == Kind::Commit => {
                let kind = match self.commit_payload(pos, &h)? {
                    Some(c) => BlockKind::Commit(h, c),
                    None => BlockKind::CorruptEntry(h),
                };
                Block {
                    offset: pos,
                    len: h.block_len,
                    kind,
                }
            }
            Ok(h) => {
                let ok = self.check_payload(pos, &h)?;
                let kind = if ok {
                    BlockKind::Entry(h)
                } else {
                    BlockKind::CorruptEntry(h)
                };
                Block {
                    offset: pos,
                    len: h.block_len,
                    kind,
                }
            }
            Err(e) => {
                let (end, zero) = self.resync(pos)?;
                let kind = if zero {
                    BlockKind::Unwritten
                } else {
                    BlockKind::Damaged(e)
                };
                Block {
                    offset: pos,
                    len: end - pos,
                    kind,
                }
            }
        };
        self.pos = pos + block.len;
        Ok(Some(block))
    }

    fn header_at(&mut self, pos: u64) -> io::Result<Result<BlockHeader, BlockHeaderError>> {
        if self.len - pos < BLOCK_HEADER_LEN {
            return Ok(Err(BlockHeaderError::Truncated));
        }
        let mut b = [0u8; BLOCK_HEADER_LEN as usize];
        self.src.read_at(pos, &mut b)?;
        Ok(BlockHeader::decode(&b, self.header.salt, pos, self.len))
    }

    /// Reads the key into `self.key` and checks the payload checksum.
    /// The record of a commit block, `None` when its payload checksum or its
    /// counts are wrong. Its payload is read whole (the deleted keys of one
    /// batch; the header's checksum and length were checked first, so the
    /// read is within the file).
    fn commit_payload(&mut self, pos: u64, h: &BlockHeader) -> io::Result<Option<CommitRecord>> {
        let mut payload = vec![0u8; h.payload_len() as usize];
        self.src.read_at(pos + BLOCK_HEADER_LEN, &mut payload)?;
        if crate::format::crc(self.header.salt, &[&payload]) != h.payload_crc {
            return Ok(None);
        }
        Ok(CommitRecord::decode_payload(h.seq, &payload))
    }

    fn check_payload(&mut self, pos: u64, h: &BlockHeader) -> io::Result<bool> {
        let salt = self.header.salt;
        let mut crc = crc32fast::Hasher::new_with_initial(salt);
        let key_len = usize::from(h.key_len);
        if let Some(payload) = self.src.view(pos + h.key_offset(), h.payload_len()) {
            self.key.clear();
            self.key.extend_from_slice(&payload[..key_len]);
            crc.update(payload);
            return Ok(crc.finalize() == h.payload_crc);
        }
        self.key.resize(key_len, 0);
        self.src.read_at(pos + h.key_offset(), &mut self.key)?;
        crc.update(&self.key);
        let mut at = pos + h.meta_offset();
        let end = pos + h.used_len();
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            self.buf.resize(n, 0);
            self.src.read_at(at, &mut self.buf)?;
            crc.update(&self.buf);
            at += n as u64;
        }
        Ok(crc.finalize() == h.payload_crc)
    }

    /// Finds the end of a damaged region that starts at `start`: the next
    /// 8-byte boundary holding a valid entry header, or the end of the file.
    /// Also says whether every byte of the region is zero.
    fn resync(&mut self, start: u64) -> io::Result<(u64, bool)> {
        let mut zero = true;
        let mut at = start; // bytes before `at` have been zero-checked
        let mut candidate = start + ALIGN;
        while candidate < self.len {
            // Load a chunk starting at `at` that also holds headers at its tail.
            let n = ((self.len - at) as usize).min(CHUNK + BLOCK_HEADER_LEN as usize);
            self.buf.resize(n, 0);
            self.src.read_at(at, &mut self.buf)?;
            let chunk_end = at + n as u64;
            while candidate < chunk_end {
                let i = (candidate - at) as usize;
                let hdr = &self.buf[i..n.min(i + BLOCK_HEADER_LEN as usize)];
                if hdr.len() == BLOCK_HEADER_LEN as usize
                    && hdr[0..4] == BLOCK_MAGIC
                    && (hdr[4] == b'E' || hdr[4] == b'C')
                    && matches!(BlockHeader::decode(hdr, self.header.salt, candidate, self.len), Ok(h) if h.kind != Kind::Free)
                {
                    zero = zero && self.buf[..i].iter().all(|&b| b == 0);
                    return Ok((candidate, zero));
                }
                if hdr.len() < BLOCK_HEADER_LEN as usize && chunk_end < self.len {
                    break; // read the next chunk from here
                }
                candidate += ALIGN;
            }
            let checked = (candidate.min(chunk_end) - at) as usize;
            zero = zero && self.buf[..checked].iter().all(|&b| b == 0);
            at += checked as u64;
            if checked == 0 {
                break;
            }
        }
        // No valid entry header before the end: the region runs to the end.
        if zero && at < self.len {
            let mut b = vec![0u8; CHUNK];
            while at < self.len {
                let n = ((self.len - at) as usize).min(CHUNK);
                self.src.read_at(at, &mut b[..n])?;
                zero = zero && b[..n].iter().all(|&x| x == 0);
                at += n as u64;
            }
        }
        Ok((self.len, zero))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FORMAT_VERSION;

    const SALT: u32 = 0x5eed;

    struct FileBuilder {
        bytes: Vec<u8>,
    }

    impl FileBuilder {
        fn new() -> FileBuilder {
            let h = FileHeader {
                version: FORMAT_VERSION,
                salt: SALT,
                created_ms: 0,
            };
            FileBuilder {
                bytes: h.encode().to_vec(),
            }
        }

        fn entry(&mut self, key: &[u8], value: &[u8], seq: u64) -> u64 {
            let at = self.bytes.len() as u64;
            self.bytes
                .extend_from_slice(&crate::format::test_entry_block(SALT, key, value, seq));
            at
        }

        fn free(&mut self, len: u64) -> u64 {
            let at = self.bytes.len() as u64;
            self.bytes
                .extend_from_slice(&BlockHeader::free(len).encode(SALT));
            self.bytes.resize((at + len) as usize, 0xAB);
            at
        }
    }

    fn walk(bytes: &[u8]) -> Vec<(Block, Vec<u8>)> {
        let mut w = Walker::new(bytes).unwrap().unwrap();
        let mut out = Vec::new();
        while let Some(b) = w.next_block().unwrap() {
            out.push((b, w.key().to_vec()));
        }
        let total: u64 = out.iter().map(|(b, _)| b.len).sum();
        assert_eq!(
            total + FILE_HEADER_LEN,
            bytes.len() as u64,
            "blocks tile the file"
        );
        out
    }

    #[test]
    fn walks_entries_and_free_blocks() {
        let mut f = FileBuilder::new();
        f.entry(b"a", b"one", 1);
        f.free(96);
        f.entry(b"b", b"two", 2);
        let blocks = walk(&f.bytes);
        assert_eq!(blocks.len(), 3);
        assert!(matches!(blocks[0].0.kind, BlockKind::Entry(h) if h.seq == 1));
        assert_eq!(blocks[0].1, b"a");
        assert_eq!(blocks[1].0.kind, BlockKind::Free);
        assert_eq!(blocks[2].1, b"b");
    }

    #[test]
    fn a_flipped_value_byte_makes_a_corrupt_entry_of_known_extent() {
        let mut f = FileBuilder::new();
        let a = f.entry(b"a", b"value-a", 1);
        f.entry(b"b", b"value-b", 2);
        f.bytes[a as usize + 50] ^= 1;
        let blocks = walk(&f.bytes);
        assert!(matches!(blocks[0].0.kind, BlockKind::CorruptEntry(_)));
        assert!(matches!(blocks[1].0.kind, BlockKind::Entry(_)));
    }

    #[test]
    fn a_flipped_header_byte_loses_only_that_block() {
        let mut f = FileBuilder::new();
        f.entry(b"a", &[1; 300], 1);
        let b = f.entry(b"b", &[2; 300], 2);
        f.entry(b"c", &[3; 300], 3);
        f.bytes[b as usize + 9] ^= 0x40; // block_len
        let blocks = walk(&f.bytes);
        assert_eq!(blocks.len(), 3);
        assert!(matches!(
            blocks[1].0.kind,
            BlockKind::Damaged(BlockHeaderError::BadChecksum)
        ));
        assert_eq!(blocks[1].0.offset, b);
        assert_eq!(blocks[2].1, b"c");
    }

    #[test]
    fn stale_free_headers_are_not_resync_points() {
        let mut f = FileBuilder::new();
        let a = f.entry(b"a", &[1; 200], 1);
        // A stale free header inside a's value claiming to cover the next entry.
        let stale = BlockHeader::free(2000).encode(SALT);
        f.bytes[a as usize + 64..a as usize + 112].copy_from_slice(&stale);
        f.entry(b"b", &[2; 2000], 2);
        f.bytes[a as usize] ^= 1; // damage a's magic
        let blocks = walk(&f.bytes);
        assert!(matches!(
            blocks[0].0.kind,
            BlockKind::Damaged(BlockHeaderError::BadMagic)
        ));
        assert_eq!(
            blocks[1].1, b"b",
            "b is found, not swallowed by the stale free header"
        );
    }

    #[test]
    fn a_torn_tail_is_one_damaged_region_to_the_end() {
        let mut f = FileBuilder::new();
        f.entry(b"a", b"1", 1);
        let b = f.entry(b"b", &[9; 500], 2);
        f.bytes.truncate(b as usize + 100);
        let blocks = walk(&f.bytes);
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            blocks[1].0.kind,
            BlockKind::Damaged(BlockHeaderError::PastEnd)
        );
        // Cut inside the header.
        f.bytes.truncate(b as usize + 20);
        let blocks = walk(&f.bytes);
        assert_eq!(
            blocks[1].0.kind,
            BlockKind::Damaged(BlockHeaderError::Truncated)
        );
    }

    #[test]
    fn zeros_are_unwritten_space() {
        let mut f = FileBuilder::new();
        f.entry(b"a", b"1", 1);
        let z = f.bytes.len();
        f.bytes.resize(z + 4096, 0);
        f.entry(b"b", b"2", 2);
        f.bytes.resize(f.bytes.len() + 200_000, 0);
        let blocks = walk(&f.bytes);
        assert_eq!(blocks[1].0.kind, BlockKind::Unwritten);
        assert_eq!(blocks[1].0.len, 4096);
        assert_eq!(blocks[2].1, b"b");
        assert_eq!(blocks[3].0.kind, BlockKind::Unwritten);
        assert_eq!(blocks[3].0.len, 200_000);
    }

    #[test]
    fn damage_spanning_many_chunks_resyncs() {
        let mut f = FileBuilder::new();
        let a = f.entry(b"a", &vec![0x55; 300_000], 1);
        f.entry(b"b", b"2", 2);
        f.bytes[a as usize + 4] = b'X';
        let blocks = walk(&f.bytes);
        assert!(matches!(blocks[0].0.kind, BlockKind::Damaged(_)));
        assert_eq!(blocks[1].1, b"b");
    }

    #[test]
    fn lengths_claiming_gigabytes_do_not_allocate() {
        let mut f = FileBuilder::new();
        let a = f.entry(b"a", b"1", 1);
        // A valid-checksum header whose value length is 4 GiB: impossible in this file.
        let mut h = BlockHeader::decode(
            &f.bytes[a as usize..a as usize + 48],
            SALT,
            a,
            f.bytes.len() as u64,
        )
        .unwrap();
        h.value_len = u32::MAX;
        h.block_len = 1 << 40;
        f.bytes[a as usize..a as usize + 48].copy_from_slice(&h.encode(SALT));
        let blocks = walk(&f.bytes);
        assert_eq!(
            blocks[0].0.kind,
            BlockKind::Damaged(BlockHeaderError::PastEnd)
        );
    }

    #[test]
    fn file_source_reads_like_a_slice() {
        let mut f = FileBuilder::new();
        for i in 0..2000u32 {
            f.entry(
                &i.to_le_bytes(),
                &vec![i as u8; (i % 700) as usize],
                u64::from(i),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &f.bytes).unwrap();
        let mut w = Walker::new(FileSource::new(File::open(&p).unwrap()).unwrap())
            .unwrap()
            .unwrap();
        let mut n = 0;
        while let Some(b) = w.next_block().unwrap() {
            assert!(matches!(b.kind, BlockKind::Entry(_)));
            assert_eq!(w.key(), (n as u32).to_le_bytes());
            n += 1;
        }
        assert_eq!(n, 2000);
    }
}
