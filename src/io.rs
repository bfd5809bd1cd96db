//! The file: reads, writes, growth, truncation and `fdatasync`, behind the
//! small [`Storage`] trait so that tests can put a fault-injecting file in its
//! place.
//!
//! [`FileStorage`] maps the file into memory with `memmap2` and reads and writes
//! through the map: a read is a copy from the page cache and a write a copy into
//! it, with no system call. The map is made larger than the file (pages past
//! the end are never touched) and is replaced by a larger one when the file
//! outgrows it; old maps stay mapped until the storage is dropped, so a slice
//! borrowed from one stays valid. Growth reserves disk space first, with
//! `fallocate` or by writing zeros, so a full disk is an error from the call
//! that grows the file, never a `SIGBUS` from a write into the map.
//!
//! This module never decides what to write: the store's locks guarantee that
//! no range is read while it is written and that no range in use is truncated.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::{Mutex, RwLock};

/// What the store needs from its file.
///
/// Offsets and lengths are in bytes. Implementations must be safe to call from
/// many threads at once on disjoint ranges.
pub trait Storage: Send + Sync {
    /// The current length of the file.
    fn len(&self) -> u64;

    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes the concatenation of `parts` at `offset`, inside the file's
    /// current length. One call is one write: a crash may leave a prefix of it.
    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()>;

    /// Like [`write_at`](Self::write_at), for writes that a sync follows
    /// soon (compaction's copies and the headers that free their old
    /// blocks). A storage with a memory map writes them with `pwrite`: the
    /// sync then finds no dirty mapped page to write-protect, and each one it
    /// found would cost every other core running the process a TLB flush,
    /// readers included.
    fn write_at_before_sync(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        self.write_at(offset, parts)
    }

    /// Writes one 8-byte word at an 8-aligned `offset`, atomically: a crash
    /// leaves the old word or the new one, never a mix (used to renew an
    /// entry's expiry in place).
    fn write_word(&self, offset: u64, word: u64) -> io::Result<()> {
        self.write_at(offset, &[&word.to_le_bytes()])
    }

    /// A hint before many [`write_word`](Self::write_word)s into
    /// `[offset, offset + len)` (settling a batch's members): a storage with
    /// a memory map makes the range's pages writable in the map in one
    /// call, instead of one page fault (or two: read, then write) per page.
    /// It may dirty every page of the range, so callers give only ranges
    /// whose pages they will all store into. Failure is not an error: the
    /// stores then fault the pages in one by one.
    fn prepare_words(&self, _offset: u64, _len: u64) {}

    /// Changes the length of the file. Growing reserves the disk space, so
    /// writes inside the new length cannot fail for lack of space.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes everything written so far durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;

    /// A slice of the file's bytes, borrowed from a memory map, when the
    /// storage has one.
    ///
    /// # Safety
    /// The caller must ensure that, for as long as the slice lives, nobody
    /// writes to the range and the file is not truncated below its end. (The
    /// store guarantees this with its reader locks.)
    #[expect(
        unsafe_code,
        reason = "`Storage::view` hands out a slice of a mapping: only the caller can promise that nothing writes or truncates it meanwhile"
    )]
    unsafe fn view(&self, _offset: u64, _len: u64) -> Option<&[u8]> {
        None
    }

    /// A named place between two storage calls where a race with another
    /// thread is possible; the store calls it as it passes. Real storage
    /// does nothing. A test's storage may stop the calling thread here, to
    /// force another thread through that window (the interleaving explorer).
    fn point(&self, _name: &'static str) {}
}

/// One mapping of the file: a window of `len` bytes from offset 0.
struct Window {
    ptr: *mut u8,
    len: u64,
}

/// A store file on disk, read and written through a memory map.
pub struct FileStorage {
    file: File,
    writable: bool,
    /// Writes go through `pwrite` instead of the map.
    pwrite: bool,
    len: AtomicU64,
    /// The current window; it covers at least `len` bytes.
    window: AtomicPtr<Window>,
    /// Every window ever made, with its map: kept until drop.
    maps: Mutex<Vec<(Box<Window>, MmapRaw)>>,
}

#[expect(
    unsafe_code,
    reason = "`FileStorage` holds raw pointers into its own mappings, which the compiler cannot see are safe to send"
)]
// SAFETY: the raw pointers in `Window` point into mappings owned by `maps`,
// which live as long as the `FileStorage`; all mutation of shared state goes
// through atomics and a mutex, and the bytes behind the pointers are accessed
// only under the store's locking rules (see `Storage::view`).
unsafe impl Send for FileStorage {}
#[expect(
    unsafe_code,
    reason = "`FileStorage` holds raw pointers into its own mappings, which the compiler cannot see are safe to share"
)]
// SAFETY: as above.
unsafe impl Sync for FileStorage {}

/// The smallest window mapped, so that small stores never remap.
const MIN_WINDOW: u64 = 1 << 30;

impl FileStorage {
    /// Wraps an open file. `writable` says whether it was opened for writing.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub fn new(file: File, writable: bool) -> io::Result<FileStorage> {
        FileStorage::with_pwrite(file, writable, false)
    }

    /// Like [`new`](Self::new); with `pwrite`, writes go through `pwrite`
    /// instead of the map (reads still use the map: both see the same page
    /// cache). That is cheaper when every write is followed by `fdatasync`:
    /// the sync write-protects the mapped pages it cleans, so the next write
    /// through the map would take a page fault first.
    ///
    /// Such a file also grows by writing zeros (up to [`ZERO_GROWTH_MAX`]
    /// at a time) rather than with `fallocate`: `fallocate` reserves
    /// *unwritten* extents, and every `fdatasync` that follows a write into
    /// one must also convert it and write the inode's extent tree; space
    /// written once is overwritten in place. On ext4 a sync of a 16 KiB
    /// append took ~100 µs more into unwritten space (BENCHMARKS.md,
    /// "Third pass").
    pub fn with_pwrite(file: File, writable: bool, pwrite: bool) -> io::Result<FileStorage> {
        let len = file.metadata()?.len();
        let s = FileStorage {
            file,
            writable,
            pwrite,
            len: AtomicU64::new(len),
            window: AtomicPtr::new(ptr::null_mut()),
            maps: Mutex::new(Vec::new()),
        };
        s.ensure_window(len)?;
        Ok(s)
    }

    /// Makes sure the current window covers `len` bytes.
    fn ensure_window(&self, len: u64) -> io::Result<()> {
        let mut maps = self.maps.lock();
        if let Some((w, _)) = maps.last()
            && w.len >= len
        {
            return Ok(());
        }
        let want = len.saturating_mul(2).max(MIN_WINDOW);
        let map = self.map(want).or_else(|_| self.map(len.max(1)))?;
        let mut w = Box::new(Window {
            ptr: map.as_mut_ptr(),
            len: map.len() as u64,
        });
        let wp: *mut Window = &mut *w;
        maps.push((w, map));
        self.window.store(wp, Ordering::Release);
        Ok(())
    }

    fn map(&self, len: u64) -> io::Result<MmapRaw> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
        let mut o = MmapOptions::new();
        o.len(len);
        if self.writable {
            o.map_raw(&self.file)
        } else {
            o.map_raw_read_only(&self.file)
        }
    }

    #[expect(
        unsafe_code,
        reason = "the current window is published through an `AtomicPtr` and read without a lock"
    )]
    fn window(&self) -> &Window {
        // SAFETY: the pointer was set from a boxed `Window` in `maps`, which
        // is never dropped before `self`.
        unsafe { &*self.window.load(Ordering::Acquire) }
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len.load(Ordering::Acquire) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {offset}+{len} is past the end of the file"),
            )),
        }
    }

    /// Writes the concatenation of `parts` at `offset`, with `pwrite` or
    /// through the map.
    fn write(&self, offset: u64, parts: &[&[u8]], pwrite: bool) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.check_range(offset, total)?;
        if pwrite {
            return match parts {
                [one] => self.file.write_all_at(one, offset),
                _ => self.file.write_all_at(&parts.concat(), offset),
            };
        }
        let w = self.window();
        let mut at = offset as usize;
        for p in parts {
            #[expect(
                unsafe_code,
                reason = "writes go straight into the shared writable mapping"
            )]
            // SAFETY: the range is inside the file (checked), whose disk space
            // was reserved when it grew, and inside the writable window; the
            // store hands each block to one writer at a time and lets no reader
            // at a block while it is written.
            unsafe {
                ptr::copy_nonoverlapping(p.as_ptr(), w.ptr.add(at), p.len())
            };
            at += p.len();
        }
        Ok(())
    }

    /// Reserves disk blocks for `[from, to)` and extends the file to `to`.
    fn allocate_space(&self, from: u64, to: u64) -> io::Result<()> {
        if self.pwrite && to - from <= ZERO_GROWTH_MAX {
            return self.write_zeros(from, to);
        }
        let fd = self.file.as_raw_fd();
        let (off, len) = (from as libc::off_t, (to - from) as libc::off_t);
        #[expect(
            unsafe_code,
            reason = "`fallocate` reserves disk space, and std has no wrapper for it"
        )]
        // SAFETY: fallocate only reads its integer arguments; `fd` is open for
        // the life of `self`.
        let r = unsafe { libc::fallocate(fd, 0, off, len) };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // The file system cannot reserve space: extend, then write zeros so
            // the blocks exist before anyone writes into the map.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => self.write_zeros(from, to),
            _ => {
                // Give back anything reserved past the old end (the
                // reservation's error is the one to report).
                self.file.set_len(from).ok();
                Err(err)
            }
        }
    }
}

impl FileStorage {
    /// Extends the file from `from` (its end) to `to` by writing zeros, so
    /// the blocks exist (and are written) before anyone writes into the
    /// map. On failure the file is cut back to `from`.
    fn write_zeros(&self, from: u64, to: u64) -> io::Result<()> {
        let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            if let Err(e) = self.file.write_all_at(&zeros[..n], at) {
                // The write's error is the one to report; should cutting
                // back fail too, the zeros past `from` read as free space.
                self.file.set_len(from).ok();
                return Err(e);
            }
            at += n as u64;
        }
        Ok(())
    }
}

/// The largest growth written as zeros (see [`FileStorage::with_pwrite`]);
/// beyond it, `fallocate` (a very large value is not written twice).
pub const ZERO_GROWTH_MAX: u64 = 4 << 20;

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let w = self.window();
        #[expect(unsafe_code, reason = "reads copy straight out of the mapping")]
        // SAFETY: the range is inside the file (checked) and so inside the
        // window, which covers the whole file; the store never reads a range
        // while another thread writes it or truncates it.
        unsafe {
            ptr::copy_nonoverlapping(w.ptr.add(offset as usize), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        self.write(offset, parts, self.pwrite)
    }

    fn write_at_before_sync(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        self.write(offset, parts, true)
    }

    fn write_word(&self, offset: u64, word: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        if !offset.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unaligned word write",
            ));
        }
        self.check_range(offset, 8)?;
        let w = self.window();
        #[expect(
            unsafe_code,
            reason = "`touch` stores one aligned 8-byte word atomically in place in the mapping"
        )]
        // SAFETY: the word is inside the file and the writable window, and
        // 8-aligned (the map starts on a page boundary); an aligned 8-byte
        // atomic store is one instruction, so the page cache (and a crash)
        // sees the old word or the new one. The store lets no other thread
        // read or write this word meanwhile (it holds the entry's shard lock).
        let word_ref = unsafe { AtomicU64::from_ptr(w.ptr.add(offset as usize).cast::<u64>()) };
        word_ref.store(word.to_le(), Ordering::Release);
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn prepare_words(&self, offset: u64, len: u64) {
        if !self.writable || self.check_range(offset, len).is_err() {
            return;
        }
        // The map starts at offset 0, on a page boundary. (Where pages are
        // larger, the start may not be aligned: madvise refuses, and the
        // hint is lost.)
        let page = 4096u64;
        let start = offset / page * page;
        let end = (offset + len).min(self.len.load(Ordering::Acquire));
        let w = self.window();
        #[expect(
            unsafe_code,
            reason = "`madvise(MADV_POPULATE_WRITE)` prefaults pages of the map; std has no wrapper"
        )]
        // SAFETY: `[start, end)` lies inside the file (checked) and so
        // inside the current window, which stays mapped until `self` is
        // dropped; MADV_POPULATE_WRITE only maps the file's pages writable
        // (as a write fault would) and changes no byte.
        //
        // A hint, its result unused: on a kernel without it (before 5.14)
        // or when it fails, the stores that follow fault the pages in.
        unsafe {
            libc::madvise(
                w.ptr.add(start as usize).cast(),
                (end - start) as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let old = self.len.load(Ordering::Acquire);
        if len > old {
            self.ensure_window(len)?;
            self.allocate_space(old, len)?;
        } else if len < old {
            self.file.set_len(len)?;
        }
        self.len.store(len, Ordering::Release);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    #[expect(unsafe_code, reason = "zero-copy reads: a slice of the mapping itself")]
    unsafe fn view(&self, offset: u64, len: u64) -> Option<&[u8]> {
        self.check_range(offset, len).ok()?;
        let w = self.window();
        // SAFETY: the range is inside the file and the window; the caller
        // guarantees it is neither written nor truncated while borrowed, and
        // the window outlives `self`'s borrow.
        Some(unsafe { std::slice::from_raw_parts(w.ptr.add(offset as usize), len as usize) })
    }
}

/// A file held in memory: the storage under the test seams, and a plain
/// in-memory store for experiments.
#[derive(Default)]
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
pub struct MemStorage {
    bytes: RwLock<Vec<u8>>,
}

#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
impl MemStorage {
    /// An empty file.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A file with these contents.
    pub fn with_bytes(bytes: Vec<u8>) -> MemStorage {
        MemStorage {
            bytes: RwLock::new(bytes),
        }
    }

    /// A copy of the contents.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }
}

#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
fn eof(offset: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("range {offset}+{len} is past the end of the file"),
    )
}

impl Storage for MemStorage {
    fn len(&self) -> u64 {
        self.bytes.read().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let b = self.bytes.read();
        let start = usize::try_from(offset).map_err(|_| eof(offset, buf.len()))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| b.get(start..end))
            .ok_or_else(|| eof(offset, buf.len()))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        let mut b = self.bytes.write();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let start = usize::try_from(offset).map_err(|_| eof(offset, total))?;
        if start.checked_add(total).is_none_or(|end| end > b.len()) {
            return Err(eof(offset, total));
        }
        let mut at = start;
        for p in parts {
            b[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("too large"))?;
        self.bytes.write().resize(len, 0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    /// A fresh file; with `pwrite`, written with `pwrite` instead of the map.
    fn file_storage_with(pwrite: bool) -> (tempfile::TempDir, FileStorage) {
        let dir = tempfile::tempdir().unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, FileStorage::with_pwrite(f, true, pwrite).unwrap())
    }

    fn file_storage() -> (tempfile::TempDir, FileStorage) {
        file_storage_with(false)
    }

    fn exercise(s: &dyn Storage) {
        assert_eq!(s.len(), 0);
        s.set_len(100).unwrap();
        assert_eq!(s.len(), 100);
        s.write_at(10, &[b"hello", b" ", b"world"]).unwrap();
        s.write_word(24, 0x0102_0304_0506_0708).unwrap();
        let mut w = [0u8; 8];
        s.read_at(24, &mut w).unwrap();
        assert_eq!(u64::from_le_bytes(w), 0x0102_0304_0506_0708);
        s.write_word(24, 0).unwrap();
        let mut buf = [0u8; 11];
        s.read_at(10, &mut buf).unwrap();
        assert_eq!(&buf, b"hello world");
        s.write_at_before_sync(40, &[b"before", b" sync"]).unwrap();
        s.read_at(40, &mut buf).unwrap();
        assert_eq!(&buf, b"before sync", "a pwrite reads back through the map");
        assert!(s.write_at_before_sync(95, &[b"toolong"]).is_err());
        let mut z = [1u8; 10];
        s.read_at(0, &mut z).unwrap();
        assert_eq!(z, [0u8; 10], "grown space reads as zeros");
        assert!(s.write_at(95, &[b"toolong"]).is_err());
        assert!(s.read_at(95, &mut [0u8; 6]).is_err());
        assert!(s.read_at(u64::MAX, &mut [0u8; 2]).is_err());
        s.set_len(12).unwrap();
        assert_eq!(s.len(), 12);
        assert!(s.read_at(10, &mut [0u8; 3]).is_err());
        s.sync().unwrap();
    }

    #[test]
    fn mem_storage_behaves_like_a_file() {
        exercise(&MemStorage::new());
    }

    #[test]
    fn file_storage_behaves_like_a_file() {
        let (_d, s) = file_storage();
        exercise(&s);
    }

    #[test]
    fn file_storage_writing_with_pwrite_reads_the_same_through_the_map() {
        let (_d, s) = file_storage_with(true);
        exercise(&s);
        s.set_len(64).unwrap();
        s.write_at(8, &[b"ab", b"cd"]).unwrap();
        #[expect(unsafe_code, reason = "the test reads through the zero-copy view")]
        // SAFETY: nothing writes [8, 12) or truncates the file while `v` lives.
        let v = unsafe { s.view(8, 4) }.unwrap();
        assert_eq!(v, b"abcd");
    }

    /// Where the data starts at or after `from` (`SEEK_DATA`): space
    /// reserved with `fallocate` and never written counts as a hole (on
    /// ext4, XFS, btrfs), zeros written as data.
    fn data_from(s: &FileStorage, from: u64) -> Option<u64> {
        #[expect(unsafe_code, reason = "lseek has no std wrapper for SEEK_DATA")]
        // SAFETY: lseek only reads its integer arguments; the fd is open.
        let r = unsafe { libc::lseek(s.file.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
        u64::try_from(r).ok()
    }

    #[test]
    fn a_file_written_with_pwrite_grows_by_writing_zeros_up_to_the_limit() {
        let (_d, s) = file_storage_with(true);
        s.set_len(4096).unwrap();
        s.set_len(4096 + (256 << 10)).unwrap();
        let mut z = vec![1u8; 256 << 10];
        s.read_at(4096, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0), "grown space reads as zeros");
        assert_eq!(
            data_from(&s, 4096),
            Some(4096),
            "the grown space was written (zeros), not only reserved"
        );
        // Past the limit, or when writes go through the map: reserved
        // with `fallocate`, which is not data where the file system tells
        // the two apart (ext4, XFS, btrfs; tmpfs does not).
        let (_d2, big) = file_storage_with(true);
        big.set_len(ZERO_GROWTH_MAX + 4096).unwrap();
        let (_d3, mapped) = file_storage_with(false);
        mapped.set_len(256 << 10).unwrap();
        if data_from(&mapped, 0).is_none() {
            assert_eq!(data_from(&big, 0), None, "past the limit: fallocate");
        }
    }

    #[test]
    fn file_storage_remaps_past_the_first_window_and_old_views_stay_valid() {
        let (_d, s) = file_storage();
        s.set_len(4096).unwrap();
        s.write_at(0, &[b"first"]).unwrap();
        #[expect(unsafe_code, reason = "old views must stay valid after a remap")]
        // SAFETY: nothing writes [0, 5) or truncates the file while `v` lives.
        let v = unsafe { s.view(0, 5) }.unwrap();
        let before = s.maps.lock().len();
        // Grow past the window without writing the space (fallocate is cheap).
        s.set_len(MIN_WINDOW + 4096).unwrap();
        assert!(s.maps.lock().len() > before, "a new window was mapped");
        s.write_at(MIN_WINDOW, &[b"far"]).unwrap();
        let mut buf = [0u8; 3];
        s.read_at(MIN_WINDOW, &mut buf).unwrap();
        assert_eq!(&buf, b"far");
        assert_eq!(v, b"first");
        s.set_len(4096).unwrap();
    }
}
