//! The life of a block: the one owner of every block that is not in the
//! index. No other code writes a free header or touches the free list.
//!
//! ```text
//!               allocate / allocate_below
//!      Free ─────────────────────────────────▶ (the caller's: being written)
//!       ▲  ▲                                     │ published: the index's
//!       │  │ return_space (merge, cut the tail)  │ unpublished: release
//!       │  │                                     ▼
//!       │  └── Pinned{freed} ◀── a reader ── Indexed ── overwritten, touched,
//!       │        (unpin)          holds it      │       moved: retire
//!       │                                       ▼
//!       ├──── free_retired ◀──── Held(Superseded(generation))
//!       │    (via Held(Freeing))     │ header write fails
//!       │                            ▼
//!       └──── after a sync ◀──── Held(Unfreed)
//!
//!      compaction: register_move ─▶ Moving ─▶ take_move (publish or retire)
//!                                      └───▶ freed by the remover of its key
//! ```
//!
//! A *held* block is neither indexed nor free: still valid on disk, it is
//! listed so that a writer that removes its key frees it first
//! ([`Blocks::release_copies_of`]); were the key's newest copy freed first, a
//! crash would bring an older value back. The states are named in [`Held`];
//! each transition is a method. The file is reached through [`BlockIo`], so
//! the owner is unit-tested with a fake file (below).
//!
//! Locks: `space` (the free list and the held blocks) is taken after the
//! reader locks and never held across a call out of this module but
//! [`BlockIo`]'s.

use std::collections::HashMap;
use std::io;

use parking_lot::{Condvar, Mutex};

use super::readers::ReaderLocks;
use crate::alloc::{Allocation, FreeList};

/// What the owner needs from the file.
pub(super) trait BlockIo {
    /// Writes a free-block header for `len` bytes at `offset` (with `pwrite`
    /// when `before_sync`: see `Storage::write_at_before_sync`).
    fn write_free_header(&self, offset: u64, len: u64, before_sync: bool) -> io::Result<()>;
    /// Changes the file's length.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reads the key of the entry block at `offset` into `buf`.
    fn read_key(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The generation of the newest write so far.
    fn generation(&self) -> u64;
}

/// Why a block is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// An old copy of its key, freed once a sync covers the write of this
    /// generation (the new copy).
    Superseded(u64),
    /// A thread is writing its free header and will then return its space;
    /// a remover of its key waits for it.
    Freeing,
    /// Its free header could not be written: retried after every sync, and
    /// freed before its key's newest copy.
    Unfreed,
    /// A batch's commit record, freed once a sync covers the write of this
    /// generation (the batch's settling: its members' settled expiry words
    /// and the free headers of the keys it deleted). It belongs to no key.
    Commit(u64),
}

#[derive(Debug)]
struct HeldBlock {
    offset: u64,
    len: u64,
    key_hash: u64,
    why: Held,
}

/// A copy of an entry that compaction wrote into a lower free block and has
/// not yet published: valid on disk, with the entry's sequence number. Also
/// the new block of a conditional write that expects a value (see
/// `Inner::put_cond`), written and not yet published: a remover of its key
/// frees it with the key's other copies.
#[derive(Debug)]
pub(super) struct Moving {
    pub(super) key: Vec<u8>,
    pub(super) key_hash: u64,
    /// The block copied from: pinned until the move is finished, so that no
    /// other move in flight has the same (old, new) pair. For a conditional
    /// write, its sequence number with the top bit set (no offset has it).
    pub(super) old_offset: u64,
    pub(super) new_offset: u64,
    pub(super) new_len: u64,
}

/// Free space and the blocks held on their way to it.
pub(super) struct Space {
    pub(super) free: FreeList,
    /// By offset: a sync frees thousands at once under `SyncPolicy::Never`.
    held: HashMap<u64, HeldBlock>,
    held_bytes: u64,
    /// Key hash → the newest write generation of a free header written for
    /// one of its copies, until a sync covers it. Such a key's newest copy is
    /// not freed before that sync, or a power loss could keep the newest
    /// copy's free header and not the old copy's, and the old value would
    /// come back. A map, not a list: under `SyncPolicy::Never` it holds every
    /// removal since the last sync, and a mass expiry looks up each key.
    unsynced_frees: HashMap<u64, u64>,
    moves: Vec<Moving>,
}

#[cfg(any(test, feature = "testing"))]
impl Space {
    /// Held blocks and compaction's unpublished copies: (offset, length).
    pub(super) fn held(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.held
            .values()
            .map(|h| (h.offset, h.len))
            .chain(self.moves.iter().map(|m| (m.new_offset, m.new_len)))
    }
}

/// Why an allocation failed.
pub(super) enum AllocError {
    /// The file would grow to this length, past what the index can address.
    TooLarge(u64),
    /// The file could not grow, or a header could not be written.
    Io(&'static str, io::Error),
}

/// An I/O error with what was being done.
pub(super) type IoFailure = (&'static str, io::Error);

/// Free space kept at the end of a growing file, so that appends do not
/// extend it one entry at a time: none below 1 MiB, then 1/16 of the file up
/// to `cap` ([`RESERVE_CAP`], or [`ZEROED_RESERVE_CAP`] when the file grows
/// by writing zeros).
pub(super) fn growth_reserve(file_end: u64, cap: u64) -> u64 {
    if file_end < (1 << 20) {
        0
    } else {
        crate::format::align_up((file_end / 16).min(cap))
    }
}

/// The largest growth reserve.
pub(super) const RESERVE_CAP: u64 = 8 << 20;

/// The largest growth reserve of a file that grows by writing zeros
/// (`SyncPolicy::Always`, `Options::frequent_syncs`: see `FileStorage`):
/// the sync after a growth writes them all.
pub(super) const ZEROED_RESERVE_CAP: u64 = 1 << 20;

/// The smallest growth reserve of a file that grows by writing zeros,
/// below 1 MiB too. Every write that extends the file changes its size,
/// and the `fdatasync` after it must then write the inode as well (on ext4
/// on a 2-core VM, a third of a durable put's time: BENCHMARKS.md "Durable
/// puts into a small file"). 16 KiB is ~100 puts of 100 bytes.
/// Free space at the end of a small file is still cut off at once (the
/// reserve only applies when the file grows).
pub(super) const ZEROED_RESERVE_MIN: u64 = 16 << 10;

/// How a file grows: the reserve it takes ahead of later appends, by how it
/// is grown (`fallocate`, or zeros written when writes are synced often:
/// `SyncPolicy::Always`, `Options::frequent_syncs`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Growth {
    min: u64,
    cap: u64,
}

impl Growth {
    /// Space reserved with `fallocate`: no reserve below 1 MiB.
    pub(super) const FALLOCATED: Growth = Growth {
        min: 0,
        cap: RESERVE_CAP,
    };
    /// Space written as zeros: see [`ZEROED_RESERVE_CAP`] and
    /// [`ZEROED_RESERVE_MIN`].
    pub(super) const ZEROED: Growth = Growth {
        min: ZEROED_RESERVE_MIN,
        cap: ZEROED_RESERVE_CAP,
    };

    /// What a growth of a file that ends at `end` adds beyond the request.
    fn reserve(self, end: u64) -> u64 {
        growth_reserve(end, self.cap).max(self.min)
    }

    /// The free space at the end of a file that ends at `end` that
    /// truncation leaves (none below 1 MiB).
    fn kept_tail(self, end: u64) -> u64 {
        2 * growth_reserve(end, self.cap)
    }
}

/// The owner of every block outside the index.
pub(super) struct Blocks {
    space: Mutex<Space>,
    /// Signalled when a block leaves `Held::Freeing`.
    freed: Condvar,
    readers: ReaderLocks,
    /// The fragmentation factor: when to split a free block.
    frag: f64,
    /// The longest file the index can address.
    max_len: u64,
    /// How the file grows.
    growth: Growth,
}

impl Blocks {
    pub(super) fn new(free: FreeList, frag: f64, max_len: u64, growth: Growth) -> Blocks {
        Blocks {
            space: Mutex::new(Space {
                free,
                held: HashMap::new(),
                held_bytes: 0,
                unsynced_frees: HashMap::new(),
                moves: Vec::new(),
            }),
            freed: Condvar::new(),
            readers: ReaderLocks::new(),
            frag,
            max_len,
            growth,
        }
    }

    // ---- Free -> the caller's ---------------------------------------------

    /// Takes a block of at least `need` bytes from the free list, growing the
    /// file when nothing fits. Returns (offset, length).
    pub(super) fn allocate(&self, need: u64, io: &dyn BlockIo) -> Result<(u64, u64), AllocError> {
        let mut sp = self.space.lock();
        let old_end = sp.free.end();
        let reserve = self.growth.reserve(old_end);
        let mut a = sp.free.allocate(need, self.frag, reserve);
        if reserve > 0 && a.grow_to.is_some_and(|e| e > self.max_len) {
            // The longest file may still hold the block without the reserve.
            sp.free.undo_growth(&a, old_end);
            a = sp.free.allocate(need, self.frag, 0);
        }
        if let Some(new_end) = a.grow_to {
            if new_end > self.max_len {
                sp.free.undo_growth(&a, old_end);
                return Err(AllocError::TooLarge(new_end));
            }
            let mut grown = io.set_len(new_end);
            if grown.is_err() && reserve > 0 {
                // The disk may have room for the entry without the reserve.
                sp.free.undo_growth(&a, old_end);
                a = sp.free.allocate(need, self.frag, 0);
                grown = io.set_len(a.grow_to.unwrap_or(old_end));
            }
            if let Err(e) = grown {
                sp.free.undo_growth(&a, old_end);
                return Err(AllocError::Io("extending the file", e));
            }
        }
        if let Err(e) = write_split_headers(&a, false, io) {
            if a.grow_to.is_some() {
                sp.free.undo_growth(&a, old_end);
                // Back to the old length; should even that fail, the grown
                // space is zeros past the free list's end, which the next
                // open reads as free: nothing to undo.
                io.set_len(old_end).ok();
            } else {
                sp.free.free(a.offset, a.len, u64::MAX);
            }
            return Err(AllocError::Io("writing a free block header", e));
        }
        Ok((a.offset, a.len))
    }

    /// For compaction: the lowest free block before `before` that holds
    /// `need` bytes (split as [`allocate`](Self::allocate) does), if any.
    pub(super) fn allocate_below(
        &self,
        need: u64,
        before: u64,
        io: &dyn BlockIo,
    ) -> Result<Option<(u64, u64)>, IoFailure> {
        let mut sp = self.space.lock();
        let Some(a) = sp.free.allocate_below(need, before, self.frag) else {
            return Ok(None);
        };
        if let Err(e) = write_split_headers(&a, true, io) {
            sp.free.free(a.offset, a.len, u64::MAX);
            return Err(("writing a free block header", e));
        }
        Ok(Some((a.offset, a.len)))
    }

    /// Whether any free block starts before `limit`.
    pub(super) fn any_free_below(&self, limit: u64) -> bool {
        self.space.lock().free.any_below(limit)
    }

    // ---- the caller's -> Free ---------------------------------------------

    /// Frees a block nobody indexes (a copy never published, or one whose
    /// key is gone): writes its free header, then returns its space. If the
    /// header cannot be written the block may still hold a valid copy, so it
    /// is held as [`Held::Unfreed`]. Returns whether the header was written.
    pub(super) fn release(
        &self,
        offset: u64,
        len: u64,
        key_hash: u64,
        before_sync: bool,
        io: &dyn BlockIo,
    ) -> bool {
        if io.write_free_header(offset, len, before_sync).is_ok() {
            self.return_space(offset, len, before_sync, io);
            true
        } else {
            self.hold(offset, len, key_hash, Held::Unfreed);
            false
        }
    }

    /// Puts a block whose header already says free back in the free list,
    /// unless a reader holds it (then its last reader does); merges with its
    /// neighbours; cuts free space off the end of the file.
    pub(super) fn return_space(&self, offset: u64, len: u64, before_sync: bool, io: &dyn BlockIo) {
        if !self.readers.defer_if_pinned(offset, len) {
            self.return_unpinned(offset, len, before_sync, io);
        }
    }

    fn return_unpinned(&self, offset: u64, len: u64, before_sync: bool, io: &dyn BlockIo) {
        let mut sp = self.space.lock();
        let end = sp.free.end();
        let f = sp.free.free(offset, len, self.growth.kept_tail(end));
        if let Some(t) = f.truncate_to {
            if io.set_len(t).is_ok() {
                return;
            }
            sp.free.undo_truncate(f.offset, f.len);
        }
        if (f.offset, f.len) != (offset, len)
            && io.write_free_header(f.offset, f.len, before_sync).is_err()
        {
            // The merged header did not make it: on disk the neighbours are
            // still free blocks of their own. Memory says the same: they stay
            // free as they were, and this block, free on disk, is held to be
            // merged again after the next sync.
            sp.free.withdraw(offset, len);
            push_held(&mut sp, offset, len, 0, Held::Unfreed);
        }
    }

    // ---- reader pins --------------------------------------------------------

    /// A reader borrows the block at `offset`.
    pub(super) fn pin(&self, offset: u64) {
        self.readers.pin(offset);
    }

    /// A reader lets go; the last reader of a block freed meanwhile returns
    /// its space, still holding its reader lock, so that nobody finds the
    /// block neither pinned nor returned.
    pub(super) fn unpin(&self, offset: u64, io: &dyn BlockIo) {
        self.readers
            .unpin(offset, |len| self.return_unpinned(offset, len, false, io));
    }

    pub(super) fn is_pinned(&self, offset: u64) -> bool {
        self.readers.is_pinned(offset)
    }

    /// Whether no reader holds any block.
    pub(super) fn no_readers(&self) -> bool {
        self.readers.is_empty()
    }

    /// Blocks freed while a reader holds them.
    pub(super) fn pinned_freed(&self) -> usize {
        self.readers.count()
    }

    // ---- Indexed -> Held -> Free --------------------------------------------

    /// Holds a copy that has just stopped being its key's indexed copy,
    /// still valid on disk, until a sync covers the write of `generation`.
    /// Called before the shard lock that unindexed it is released.
    pub(super) fn retire(&self, offset: u64, len: u64, key_hash: u64, generation: u64) {
        self.hold(offset, len, key_hash, Held::Superseded(generation));
    }

    /// Holds a batch's commit record until a sync covers `generation`.
    pub(super) fn hold_commit(&self, offset: u64, len: u64, generation: u64) {
        self.hold(offset, len, 0, Held::Commit(generation));
    }

    /// Holds a block whose free header could not be written
    /// ([`Held::Unfreed`]): retried after every sync, freed before its
    /// key's newest copy.
    pub(super) fn hold_unfreed(&self, offset: u64, len: u64, key_hash: u64) {
        self.hold(offset, len, key_hash, Held::Unfreed);
    }

    fn hold(&self, offset: u64, len: u64, key_hash: u64, why: Held) {
        push_held(&mut self.space.lock(), offset, len, key_hash, why);
    }

    /// Frees a held block: writes its free header while it is still listed
    /// (as [`Held::Freeing`], so that nobody else frees it and a remover of
    /// its key waits), then takes it out and returns its space. False when
    /// it is gone (freed by a remover of its key, by a sync, by `clear`) or
    /// being freed by another thread, or when its header cannot be written:
    /// it is then [`Held::Unfreed`].
    pub(super) fn free_held(&self, offset: u64, before_sync: bool, io: &dyn BlockIo) -> bool {
        let (len, key_hash) = {
            let mut sp = self.space.lock();
            let Some(h) = sp.held.get_mut(&offset).filter(|h| h.why != Held::Freeing) else {
                return false;
            };
            h.why = Held::Freeing;
            (h.len, h.key_hash)
        };
        let written = io.write_free_header(offset, len, before_sync).is_ok();
        {
            let mut sp = self.space.lock();
            self.freed.notify_all();
            let Some(h) = sp.held.get_mut(&offset) else {
                return false;
            };
            if !written {
                h.why = Held::Unfreed;
                return false;
            }
            let len = h.len;
            sp.held.remove(&offset);
            sp.held_bytes -= len;
            note_unsynced(&mut sp.unsynced_frees, key_hash, io.generation());
        }
        self.return_space(offset, len, before_sync, io);
        true
    }

    /// After a sync up to `synced`: forgets the free headers it made
    /// durable, and frees the held blocks it made safe to reuse (old copies
    /// it covered, and those whose header failed before).
    pub(super) fn after_sync(&self, synced: u64, io: &dyn BlockIo) {
        let ready: Vec<u64> = {
            let mut sp = self.space.lock();
            sp.unsynced_frees.retain(|_, g| *g > synced);
            sp.held
                .values()
                .filter(|h| match h.why {
                    Held::Superseded(g) | Held::Commit(g) => g <= synced,
                    Held::Unfreed => true,
                    Held::Freeing => false,
                })
                .map(|h| h.offset)
                .collect()
        };
        for offset in ready {
            self.free_held(offset, false, io);
        }
    }

    /// The write generation a sync must reach before the newest copy of the
    /// key with this hash may be freed (see `Space::unsynced_frees`).
    pub(super) fn unsettled(&self, hash: u64) -> Option<u64> {
        self.space.lock().unsynced_frees.get(&hash).copied()
    }

    /// Records that a copy of the key with this hash was freed by a write
    /// of `generation` not yet synced (a remover freeing the key's newest
    /// copy): a later remover of the key syncs before freeing a newer copy,
    /// and under `SyncPolicy::Always` a put of the key does not return
    /// before a sync covers it (the freed copy may outrank the put's).
    pub(super) fn freed_unsynced(&self, hash: u64, generation: u64) {
        note_unsynced(&mut self.space.lock().unsynced_frees, hash, generation);
    }

    /// The newest such generation of any key.
    pub(super) fn any_unsettled(&self) -> Option<u64> {
        self.space.lock().unsynced_frees.values().copied().max()
    }

    /// Frees every held copy and compaction copy of `key`, which is leaving
    /// the index (called with its shard's write lock held). Waits for a copy
    /// another thread is freeing. Returns whether there was any. Fails,
    /// keeping the copies it could not free, when a free header cannot be
    /// written: the caller must then not free the key's newest copy.
    pub(super) fn release_copies_of(
        &self,
        hash: u64,
        key: &[u8],
        io: &dyn BlockIo,
    ) -> Result<bool, IoFailure> {
        let (held, moves) = {
            let mut sp = self.space.lock();
            while sp
                .held
                .values()
                .any(|h| h.why == Held::Freeing && h.key_hash == hash)
            {
                self.freed.wait(&mut sp);
            }
            let mut kb = vec![0u8; key.len()];
            let mine: Vec<u64> = sp
                .held
                .values()
                .filter(|h| {
                    h.key_hash == hash
                        && !matches!(h.why, Held::Commit(_))
                        && io.read_key(h.offset, &mut kb).is_ok()
                        && kb == key
                })
                .map(|h| h.offset)
                .collect();
            let mut held = Vec::new();
            for offset in mine {
                if let Some(h) = sp.held.remove(&offset) {
                    sp.held_bytes -= h.len;
                    held.push(h);
                }
            }
            let mut moves = Vec::new();
            let mut i = 0;
            while i < sp.moves.len() {
                if sp.moves[i].key_hash == hash && sp.moves[i].key == key {
                    moves.push(sp.moves.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            (held, moves)
        };
        let any = !held.is_empty() || !moves.is_empty();
        let mut moves = moves.into_iter();
        while let Some(m) = moves.next() {
            if let Err(e) = io.write_free_header(m.new_offset, m.new_len, false) {
                // Still valid on disk: compaction gives them back later, and
                // the held ones stay held.
                let mut sp = self.space.lock();
                sp.moves.extend(std::iter::once(m).chain(moves));
                for h in held {
                    push_held(&mut sp, h.offset, h.len, h.key_hash, h.why);
                }
                return Err(("freeing a moved copy of an entry", e));
            }
            self.return_space(m.new_offset, m.new_len, false, io);
        }
        let mut held = held.into_iter();
        while let Some(h) = held.next() {
            if let Err(e) = io.write_free_header(h.offset, h.len, false) {
                let mut sp = self.space.lock();
                for h in std::iter::once(h).chain(held) {
                    push_held(&mut sp, h.offset, h.len, h.key_hash, h.why);
                }
                return Err(("freeing an old copy of an entry", e));
            }
            self.return_space(h.offset, h.len, false, io);
        }
        Ok(any)
    }

    // ---- compaction's moves ---------------------------------------------------

    /// Lists a copy compaction has written (called with its key's shard lock
    /// held, the copy written, the old block pinned).
    pub(super) fn register_move(&self, m: Moving) {
        self.space.lock().moves.push(m);
    }

    /// Whether a copy is still among the moves (see [`take_move`](Self::take_move)).
    pub(super) fn has_move(&self, old_offset: u64, new_offset: u64) -> bool {
        let sp = self.space.lock();
        sp.moves
            .iter()
            .any(|m| m.new_offset == new_offset && m.old_offset == old_offset)
    }

    /// Takes a copy out of the moves; false when a remover of its key has
    /// freed it. (The copy's block alone does not name the move: once freed,
    /// another move may have been given it.)
    pub(super) fn take_move(&self, old_offset: u64, new_offset: u64) -> bool {
        let mut sp = self.space.lock();
        let same = |m: &Moving| m.new_offset == new_offset && m.old_offset == old_offset;
        match sp.moves.iter().position(same) {
            Some(i) => {
                sp.moves.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Cuts all free space off the end of the file (the growth reserve too).
    pub(super) fn trim_tail(&self, io: &dyn BlockIo) -> io::Result<()> {
        let mut sp = self.space.lock();
        let end = sp.free.end();
        if let Some(t) = sp.free.trim_tail()
            && let Err(e) = io.set_len(t)
        {
            sp.free.undo_truncate(t, end - t);
            return Err(e);
        }
        Ok(())
    }

    // ---- clear ----------------------------------------------------------------

    /// `clear` with no reader: the file is cut back to `end` by `cut`, and
    /// nothing is held or free any more.
    pub(super) fn reset(&self, end: u64, cut: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut sp = self.space.lock();
        cut()?;
        sp.free.reset(end);
        sp.held.clear();
        sp.held_bytes = 0;
        Ok(())
    }

    /// `clear` with readers: every held block is freed now.
    pub(super) fn release_all_held(&self, io: &dyn BlockIo) {
        let held: Vec<HeldBlock> = {
            let mut sp = self.space.lock();
            sp.held_bytes = 0;
            sp.held.drain().map(|(_, h)| h).collect()
        };
        for h in held {
            self.release(h.offset, h.len, h.key_hash, false, io);
        }
    }

    // ---- numbers and checks ------------------------------------------------------

    /// (held bytes, the file's end as the free list knows it).
    pub(super) fn held_and_end(&self) -> (u64, u64) {
        let sp = self.space.lock();
        (sp.held_bytes, sp.free.end())
    }

    /// Runs `f` on the free list and the held bytes.
    pub(super) fn with_free<T>(&self, f: impl FnOnce(&FreeList, u64) -> T) -> T {
        let sp = self.space.lock();
        f(&sp.free, sp.held_bytes)
    }

    /// Everything locked, for the invariant check: the reader locks, then
    /// the space.
    #[cfg(any(test, feature = "testing"))]
    #[allow(clippy::type_complexity)]
    pub(super) fn lock_for_check(
        &self,
    ) -> (
        Vec<parking_lot::MutexGuard<'_, super::readers::PinMap>>,
        parking_lot::MutexGuard<'_, Space>,
    ) {
        let readers = self.readers.lock_all();
        (readers, self.space.lock())
    }
}

fn push_held(sp: &mut Space, offset: u64, len: u64, key_hash: u64, why: Held) {
    let before = sp.held.insert(
        offset,
        HeldBlock {
            offset,
            len,
            key_hash,
            why,
        },
    );
    debug_assert!(before.is_none(), "block {offset} held twice");
    sp.held_bytes += len;
}

/// Writes the headers a split block needs, with the free list's lock held,
/// before anyone can allocate the remainder. On failure the caller gives the
/// block back: on disk it is still free, as its header says.
///
/// The remainder gets its free header: free space without one would make
/// memory and file disagree (whatever stale bytes lie there would be read as
/// the block's header). Space that is still all zeros reads as free without a
/// header, and needs none.
///
/// The block handed out gets a free header with its true length: its old
/// header still gives the length of the whole free block, the remainder
/// included, until the caller's entry is written over it. Were a crash (or a
/// failed write) to come first, once the remainder holds entries, the next
/// open would skip them as free space. (A block carved from all-zero space
/// has no header to go stale.)
fn write_split_headers(a: &Allocation, before_sync: bool, io: &dyn BlockIo) -> io::Result<()> {
    let Some((o, l)) = a.remainder else {
        return Ok(());
    };
    if !a.remainder_zeroed {
        io.write_free_header(o, l, before_sync)?;
    }
    if a.grow_to.is_none() && !a.block_zeroed {
        io.write_free_header(a.offset, a.len, before_sync)?;
    }
    Ok(())
}

/// Records a free header written by `generation` for a copy of the key
/// with this hash (keeping the newest generation per key).
fn note_unsynced(map: &mut std::collections::HashMap<u64, u64>, hash: u64, generation: u64) {
    let g = map.entry(hash).or_insert(generation);
    *g = (*g).max(generation);
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    /// A file that records free headers and lengths, and fails on request.
    #[derive(Default)]
    struct FakeIo {
        headers: RefCell<BTreeMap<u64, u64>>,
        len: RefCell<u64>,
        fail_headers: RefCell<bool>,
        keys: BTreeMap<u64, Vec<u8>>,
        generation: u64,
    }

    impl BlockIo for FakeIo {
        fn write_free_header(&self, offset: u64, len: u64, _: bool) -> io::Result<()> {
            if *self.fail_headers.borrow() {
                return Err(io::Error::other("injected"));
            }
            self.headers.borrow_mut().insert(offset, len);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            *self.len.borrow_mut() = len;
            Ok(())
        }
        fn read_key(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let k = self.keys.get(&offset).ok_or(io::ErrorKind::NotFound)?;
            if k.len() != buf.len() {
                return Err(io::ErrorKind::InvalidData.into());
            }
            buf.copy_from_slice(k);
            Ok(())
        }
        fn generation(&self) -> u64 {
            self.generation
        }
    }

    fn blocks(start: u64, end: u64) -> Blocks {
        Blocks::new(
            FreeList::new(start, end),
            0.75,
            u64::MAX,
            Growth::FALLOCATED,
        )
    }

    #[test]
    fn a_growth_past_the_longest_file_drops_the_reserve_before_it_fails() {
        // A file that may grow to 4 KiB, growing with a 16 KiB reserve.
        let b = Blocks::new(FreeList::new(64, 64), 0.75, 4096, Growth::ZEROED);
        let io = FakeIo::default();
        let (o, l) = b
            .allocate(1000, &io)
            .unwrap_or_else(|_| panic!("fits without the reserve"));
        assert_eq!((o, l), (64, 1000));
        assert_eq!(*io.len.borrow(), 1064, "grown by the block alone");
        let (o2, _) = b
            .allocate(3032, &io)
            .unwrap_or_else(|_| panic!("ends exactly at the limit"));
        assert_eq!(o2, 1064);
        assert_eq!(*io.len.borrow(), 4096);
        assert!(matches!(
            b.allocate(104, &io),
            Err(AllocError::TooLarge(4200))
        ));
        assert_eq!(*io.len.borrow(), 4096, "a failed growth leaves the length");
        assert_eq!(b.held_and_end().1, 4096, "and the free list's end");
    }

    #[test]
    fn a_split_writes_the_remainders_header_and_the_blocks_own() {
        let b = blocks(64, 64);
        let io = FakeIo::default();
        // A free block [64, 1064) with a stale header, from a first entry
        // freed in the middle of the file.
        let (o, l) = b.allocate(1000, &io).unwrap_or_else(|_| panic!("grow"));
        let (o2, _) = b.allocate(104, &io).unwrap_or_else(|_| panic!("grow"));
        assert!(b.release(o, l, 1, false, &io));
        io.headers.borrow_mut().clear();
        let (a, al) = b.allocate(200, &io).unwrap_or_else(|_| panic!("split"));
        assert_eq!(a, o);
        let h = io.headers.borrow();
        assert_eq!(h.get(&(a + al)), Some(&(l - al)), "remainder's header");
        assert_eq!(
            h.get(&a),
            Some(&al),
            "the block's own header, its true length"
        );
        assert!(o2 > a);
    }

    #[test]
    fn a_failed_split_header_gives_the_block_back() {
        let b = blocks(64, 64);
        let io = FakeIo::default();
        let (o, l) = b.allocate(1000, &io).unwrap_or_else(|_| panic!("grow"));
        b.allocate(104, &io).unwrap_or_else(|_| panic!("grow"));
        assert!(b.release(o, l, 1, false, &io));
        *io.fail_headers.borrow_mut() = true;
        assert!(matches!(b.allocate(200, &io), Err(AllocError::Io(..))));
        assert!(b.with_free(|f, _| f.contains(o, l)), "whole again");
    }

    #[test]
    fn a_retired_copy_waits_for_its_sync_then_goes_free() {
        let b = blocks(64, 64);
        let mut io = FakeIo::default();
        let (o, l) = b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        b.retire(o, l, 7, 5);
        assert_eq!(b.held_and_end().0, l);
        b.after_sync(4, &io);
        assert_eq!(b.held_and_end().0, l, "not yet covered");
        io.generation = 9;
        b.after_sync(5, &io);
        assert_eq!(b.held_and_end().0, 0);
        assert_eq!(io.headers.borrow().get(&o), Some(&l));
        assert!(b.with_free(|f, _| f.contains(o, l)));
        assert_eq!(b.unsettled(7), Some(9), "its header waits for a sync");
        b.after_sync(9, &io);
        assert_eq!(b.unsettled(7), None);
    }

    #[test]
    fn a_copy_whose_header_fails_stays_held_and_is_retried_after_a_sync() {
        let b = blocks(64, 64);
        let io = FakeIo::default();
        let (o, l) = b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        b.retire(o, l, 7, 1);
        *io.fail_headers.borrow_mut() = true;
        assert!(!b.free_held(o, false, &io));
        assert_eq!(b.held_and_end().0, l, "still held, still valid");
        *io.fail_headers.borrow_mut() = false;
        b.after_sync(0, &io);
        assert_eq!(b.held_and_end().0, 0, "retried after any sync");
        assert!(b.with_free(|f, _| f.contains(o, l)));
    }

    #[test]
    fn the_remover_of_a_key_frees_its_held_and_moving_copies_only() {
        let b = blocks(64, 64);
        let mut io = FakeIo::default();
        let mine = b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        let other = b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        let copy = b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        io.keys.insert(mine.0, b"k".to_vec());
        io.keys.insert(other.0, b"x".to_vec()); // same hash, another key
        b.retire(mine.0, mine.1, 1, 100);
        b.retire(other.0, other.1, 1, 100);
        b.register_move(Moving {
            key: b"k".to_vec(),
            key_hash: 1,
            old_offset: 9999,
            new_offset: copy.0,
            new_len: copy.1,
        });
        assert_eq!(b.release_copies_of(1, b"k", &io).map_err(|e| e.0), Ok(true));
        let h = io.headers.borrow();
        assert!(h.contains_key(&mine.0) && h.contains_key(&copy.0));
        assert!(!h.contains_key(&other.0));
        assert_eq!(b.held_and_end().0, other.1);
        assert!(!b.take_move(9999, copy.0), "compaction finds it gone");
        assert_eq!(
            b.release_copies_of(1, b"k", &io).map_err(|e| e.0),
            Ok(false)
        );
    }

    #[test]
    fn a_move_is_named_by_its_old_and_new_blocks() {
        let b = blocks(64, 64);
        let m = |old, new| Moving {
            key: b"k".to_vec(),
            key_hash: 1,
            old_offset: old,
            new_offset: new,
            new_len: 64,
        };
        b.register_move(m(1000, 64));
        assert!(
            !b.take_move(2000, 64),
            "another move's copy at the same block"
        );
        assert!(b.take_move(1000, 64));
        assert!(!b.take_move(1000, 64));
    }

    #[test]
    fn a_block_freed_under_a_reader_returns_when_the_reader_leaves() {
        let b = blocks(64, 64);
        let io = FakeIo::default();
        let (o, l) = b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        b.pin(o);
        assert!(b.release(o, l, 1, false, &io));
        assert!(!b.with_free(|f, _| f.contains(o, l)), "not while read");
        assert_eq!(b.pinned_freed(), 1);
        b.unpin(o, &io);
        assert!(b.with_free(|f, _| f.contains(o, l)));
        assert!(b.no_readers());
    }

    #[test]
    fn freeing_the_last_block_cuts_the_file() {
        let b = blocks(64, 64);
        let io = FakeIo::default();
        let (o, l) = b.allocate(200, &io).unwrap_or_else(|_| panic!("grow"));
        assert_eq!(*io.len.borrow(), o + l);
        assert!(b.release(o, l, 1, false, &io));
        assert_eq!(*io.len.borrow(), 64);
        assert_eq!(b.held_and_end().1, 64);
    }
}
