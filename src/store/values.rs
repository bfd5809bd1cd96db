//! The store's public value types: `Stats`, `PutOptions`, `Entry`,
//! `ValueRef` (a zero-copy read holding a reader lock) and `Iter`.

use std::time::{Duration, SystemTime};

use super::*;

/// Numbers that describe a store at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries in the index (expired ones count until they are removed:
    /// by active expiry, `purge_expired` or an open).
    pub entries: usize,
    /// Length of the file in bytes.
    pub file_len: u64,
    /// Bytes of the file in live entries' blocks.
    pub live_bytes: u64,
    /// Number of free blocks.
    pub free_blocks: usize,
    /// Bytes in free blocks.
    pub free_bytes: u64,
    /// Length of the largest free block.
    pub largest_free_block: u64,
    /// Bytes held by old copies of overwritten keys, freed at the next sync.
    pub pending_free_bytes: u64,
    /// Blocks held by readers ([`ValueRef`]s) after their entry was removed.
    pub reader_locked_blocks: usize,
    /// Damaged blocks found when the store was opened (their space was
    /// reclaimed on a read-write open).
    pub corrupt_blocks: u64,
    /// Bytes in those damaged blocks.
    pub corrupt_bytes: u64,
    /// Expired entries removed since open: by active expiry,
    /// `purge_expired`, inserts at the entry cap, and by the open itself
    /// (`delete`s of expired keys are not counted).
    pub expired_purged: u64,
    /// The median delay between the expiry of an entry and its removal, over
    /// the latest 256 removals of expired entries (`None` before the first).
    pub expiry_delay_p50: Option<Duration>,
    /// The largest such delay over the same removals.
    pub expiry_delay_max: Option<Duration>,
    /// Events queued for subscribers since open (see [`Store::subscribe`]).
    pub events_delivered: u64,
    /// Events dropped since open because a subscriber's queue was full.
    pub events_dropped: u64,
    /// Subscribers alive now.
    pub subscribers: usize,
    /// Entries evicted by the entry cap since open (by writes and by open).
    pub evictions: u64,
    /// `fdatasync`s completed since open. Concurrent durable writers share
    /// them (group commit): writes ÷ syncs is the sharing achieved.
    pub syncs: u64,
    /// Approximate bytes of memory used by the index.
    pub index_bytes: usize,
    /// Bytes [`Store::compact`] could give back at best: all free space,
    /// including old copies waiting for a sync.
    pub compactable_bytes: u64,
    /// Failures (errors or panics) of the background thread since open:
    /// periodic syncs and automatic compactions. Each is also reported once
    /// as [`Error::Background`](crate::Error::Background).
    pub background_errors: u64,
    /// The last of them: the task and what went wrong.
    pub last_background_error: Option<String>,
}

impl Stats {
    /// Share of free space outside the largest free block: 0 when all free
    /// space is one block (or there is none), near 1 when it is in crumbs.
    pub fn fragmentation(&self) -> f64 {
        if self.free_bytes == 0 {
            0.0
        } else {
            1.0 - self.largest_free_block as f64 / self.free_bytes as f64
        }
    }
}

/// A conditional write that did not happen: the key's value was not the
/// one expected (see [`Store::compare_and_swap`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The key's value when the write looked (`None`: absent or expired).
    pub current: Option<Vec<u8>>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.current {
            None => write!(f, "the key is absent, which was not expected"),
            Some(v) => write!(
                f,
                "the key holds another value than expected ({} bytes)",
                v.len()
            ),
        }
    }
}

impl std::error::Error for Conflict {}

/// How to write one entry: expiry and metadata.
///
/// ```
/// use std::time::Duration;
/// use sfs::PutOptions;
///
/// let dir = tempfile::tempdir()?;
/// let store = sfs::Store::open(dir.path().join("m.sfs"))?;
/// store.put_with(b"k", b"v", &PutOptions::new().ttl(Duration::from_secs(30)).metadata(b"content-type: text/plain"))?;
/// let e = store.get_entry(b"k")?.unwrap();
/// assert_eq!(e.metadata, b"content-type: text/plain");
/// assert!(e.expires_at.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct PutOptions<'a> {
    pub(super) expiry: Expiry,
    pub(super) metadata: &'a [u8],
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) enum Expiry {
    #[default]
    Never,
    After(Duration),
    At(SystemTime),
}

impl<'a> PutOptions<'a> {
    /// No expiry, no metadata.
    pub fn new() -> PutOptions<'a> {
        PutOptions::default()
    }

    /// The entry expires `ttl` from now (by the store's clock).
    pub fn ttl(mut self, ttl: Duration) -> PutOptions<'a> {
        self.expiry = Expiry::After(ttl);
        self
    }

    /// The entry expires at `at`.
    pub fn expires_at(mut self, at: SystemTime) -> PutOptions<'a> {
        self.expiry = Expiry::At(at);
        self
    }

    /// Bytes stored beside the value (up to 65,535).
    pub fn metadata(mut self, metadata: &'a [u8]) -> PutOptions<'a> {
        self.metadata = metadata;
        self
    }
}

/// An entry read with its metadata and expiry, from [`Store::get_entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// The metadata (empty when none was written).
    pub metadata: Vec<u8>,
    /// When the entry expires, if it does.
    pub expires_at: Option<SystemTime>,
}

/// A value borrowed from the store without copying, from [`Store::get_ref`].
///
/// It dereferences to the value's bytes. While it lives, its block is
/// reader-locked: a concurrent overwrite, delete, purge or `clear` removes the
/// key, but the bytes stay in place, untouched, until the `ValueRef` is dropped.
pub struct ValueRef<'a> {
    pub(super) inner: &'a Inner,
    pub(super) bytes: ValueBytes<'a>,
}

pub(super) enum ValueBytes<'a> {
    /// Borrowed from the memory map; the block at this offset is pinned.
    Mapped(&'a [u8], u64),
    /// Copied (for storages without a map).
    Owned(Vec<u8>),
}

impl std::ops::Deref for ValueRef<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.bytes {
            ValueBytes::Mapped(b, _) => b,
            ValueBytes::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for ValueRef<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ValueRef").field(&&**self).finish()
    }
}

impl Drop for ValueRef<'_> {
    fn drop(&mut self) {
        if let ValueBytes::Mapped(_, offset) = self.bytes {
            self.inner.blocks.unpin(offset, &self.inner.bio());
        }
    }
}

/// An iterator over a snapshot of the keys, reading each value when reached;
/// from [`Store::iter`]. Keys removed after the snapshot are skipped. No lock is
/// held between items, so the loop body may use the store.
pub struct Iter<'a> {
    pub(super) store: &'a Store,
    pub(super) keys: std::vec::IntoIter<Vec<u8>>,
}

impl Iterator for Iter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        for key in self.keys.by_ref() {
            match self.store.get(&key) {
                Ok(Some(v)) => return Some(Ok((key, v))),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.keys.len()))
    }
}
