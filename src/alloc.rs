//! The free list: best fit by (size, offset), splitting, merging with free
//! neighbours, and cutting free space off the end of the file.
//!
//! A pure data structure: it decides where blocks go and tells the caller which
//! free headers to write and where the file should end; it never does I/O.
//! Blocks that are allocated (live entries, writes in flight, blocks held by a
//! reader or waiting for a sync) are simply absent from it, which is how such
//! blocks are "skipped": they cannot be handed out, merged or truncated.
//!
//! A free block is normally at least [`MIN_BLOCK_LEN`] long. The one exception
//! is a *crumb*: a stretch shorter than a block header that the open-time scan
//! found between two entries (a power loss can leave one). No header fits in
//! it, so it has none; it is never handed out (every request is at least
//! `MIN_BLOCK_LEN`), and it gets a header as part of a larger block as soon as
//! a neighbour is freed and merges with it.

use std::collections::{BTreeMap, BTreeSet};

use crate::format::{ALIGN, MIN_BLOCK_LEN};

/// How many free blocks, in address order, a compaction move looks at for
/// the lowest one that fits before it settles for the best fit.
pub const FIRST_FIT_SCAN: usize = 1024;

/// Free space in the file, as blocks.
#[derive(Debug, Clone)]
pub struct FreeList {
    /// (length, offset): best fit is the first entry at or above a length.
    /// Holds every free block but the one that ends the file.
    by_len: BTreeSet<(u64, u64)>,
    /// offset → length: neighbours for merging. The same blocks.
    by_off: BTreeMap<u64, u64>,
    /// The free block that ends the file, kept apart: appends carve it from
    /// its start, and moving its start is then a bump of two integers
    /// instead of four B-tree updates.
    tail: Option<(u64, u64)>,
    free_bytes: u64,
    /// Where the file ends (the first byte after the last block).
    end: u64,
    /// Where the first block starts (the file header's length).
    start: u64,
    /// The bytes from here to the end are known to be zero (space reserved by
    /// growing the file and never written): a free block there needs no
    /// header, since a reader takes zeros for free space.
    zero_from: u64,
}

/// A block handed out by [`FreeList::allocate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Where the block starts.
    pub offset: u64,
    /// Its length (at least the request; more when a block was not split).
    pub len: u64,
    /// The free block split off behind it, whose header the caller must write
    /// before anyone can allocate it (that is, before releasing the lock that
    /// guards this free list).
    pub remainder: Option<(u64, u64)>,
    /// The file end this allocation needs, when it grows the file.
    pub grow_to: Option<u64>,
    /// The remainder lies in space that is still all zeros: it reads as free
    /// without a header.
    pub remainder_zeroed: bool,
    /// The block handed out starts in space that is still all zeros: no old
    /// header there claims a length.
    pub block_zeroed: bool,
    /// `zero_from` before this allocation (to undo a failed growth).
    zero_before: u64,
}

/// What freeing a block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    /// The free block after merging: the caller writes its header.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Set when the merged block was at the end of the file and was cut off
    /// instead: the caller truncates the file to this length and writes no
    /// header.
    pub truncate_to: Option<u64>,
}

impl FreeList {
    /// An empty free list for a file whose blocks start at `start` and end at
    /// `end`.
    pub fn new(start: u64, end: u64) -> FreeList {
        FreeList {
            by_len: BTreeSet::new(),
            by_off: BTreeMap::new(),
            tail: None,
            free_bytes: 0,
            end,
            start,
            zero_from: end,
        }
    }

    /// Where the file ends.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Number of free blocks.
    pub fn free_blocks(&self) -> usize {
        self.by_off.len() + usize::from(self.tail.is_some())
    }

    /// The largest free block's length (0 when there is none).
    pub fn largest(&self) -> u64 {
        let tree = self.by_len.last().map_or(0, |&(len, _)| len);
        tree.max(self.tail.map_or(0, |(_, l)| l))
    }

    /// Free blocks in file order.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_off.iter().map(|(&o, &l)| (o, l)).chain(self.tail)
    }

    /// Whether the free block `offset` of `len` is in the list.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        self.by_off.get(&offset) == Some(&len) || self.tail == Some((offset, len))
    }

    /// Forgets every free block and sets the file end (used by `clear`).
    pub fn reset(&mut self, end: u64) {
        self.by_len.clear();
        self.by_off.clear();
        self.tail = None;
        self.free_bytes = 0;
        self.end = end;
        self.zero_from = end;
    }

    /// Where the known-zero space at the end of the file begins.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub fn zero_from(&self) -> u64 {
        self.zero_from
    }

    fn insert(&mut self, offset: u64, len: u64) {
        debug_assert!(len >= ALIGN && len.is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN));
        if offset + len == self.end {
            debug_assert!(self.tail.is_none(), "two free blocks end the file");
            self.tail = Some((offset, len));
        } else {
            self.by_len.insert((len, offset));
            self.by_off.insert(offset, len);
        }
        self.free_bytes += len;
    }

    fn remove(&mut self, offset: u64, len: u64) {
        if self.tail == Some((offset, len)) {
            self.tail = None;
        } else {
            let a = self.by_len.remove(&(len, offset));
            let b = self.by_off.remove(&offset);
            debug_assert!(a && b == Some(len));
        }
        self.free_bytes -= len;
    }

    /// The free block that starts at `offset`, if any.
    fn block_at(&self, offset: u64) -> Option<u64> {
        match self.tail {
            Some((o, l)) if o == offset => Some(l),
            _ => self.by_off.get(&offset).copied(),
        }
    }

    /// The best fit for `need` among the blocks starting before `limit`:
    /// the smallest, and among equals the lowest offset.
    fn best_fit(&self, need: u64, limit: u64) -> Option<(u64, u64)> {
        let tree = self
            .by_len
            .range((need, 0)..)
            .copied()
            .find(|&(_, o)| o < limit);
        let tail = self
            .tail
            .filter(|&(o, l)| l >= need && o < limit)
            .map(|(o, l)| (l, o));
        match (tree, tail) {
            (Some(t), Some(e)) => Some(t.min(e)),
            (t, e) => t.or(e),
        }
    }

    /// Hands out a block of at least `need` bytes (a multiple of [`ALIGN`],
    /// at least [`MIN_BLOCK_LEN`]).
    ///
    /// Best fit: the smallest free block that is large enough, the lowest
    /// offset among equals. It is split when the request uses at most
    /// `fragmentation_factor` of it and the rest is at least a minimal block;
    /// otherwise the whole block is handed out. When no free block is large
    /// enough the block comes from the end of the file, starting inside a free
    /// block that ends the file if there is one; `grow_by` extra bytes are
    /// then reserved behind it as free space, so a run of appends does not
    /// grow the file one entry at a time.
    pub fn allocate(&mut self, need: u64, fragmentation_factor: f64, grow_by: u64) -> Allocation {
        debug_assert!(need >= MIN_BLOCK_LEN && need.is_multiple_of(ALIGN));
        debug_assert!(grow_by.is_multiple_of(ALIGN));
        if let Some((len, offset)) = self.best_fit(need, u64::MAX) {
            return self.take(offset, len, need, fragmentation_factor);
        }
        // Nothing fits: take from the end, absorbing a free block that ends the file.
        let offset = match self.tail_free() {
            Some((o, l)) => {
                self.remove(o, l);
                o
            }
            None => self.end,
        };
        let grow = if grow_by >= MIN_BLOCK_LEN { grow_by } else { 0 };
        let new_end = offset + need + grow;
        self.end = new_end;
        let remainder = (grow > 0).then(|| {
            self.insert(offset + need, grow);
            (offset + need, grow)
        });
        // Everything past the old end is new, zeroed space, and the block
        // handed out ends past the old end (nothing smaller fitted), so the
        // remainder is all zeros.
        let zero_before = self.zero_from;
        self.zero_from = offset + need;
        Allocation {
            offset,
            len: need,
            remainder,
            grow_to: Some(new_end),
            remainder_zeroed: true,
            block_zeroed: offset >= zero_before,
            zero_before,
        }
    }

    /// Like [`allocate`](Self::allocate), but only from free blocks that start
    /// before `limit`, and never growing the file (used to move entries
    /// towards the start of the file). `None` when no such block fits.
    ///
    /// Compaction wants the *lowest* block that fits, not the smallest: best
    /// fit would drop an entry from the end into an exact-size hole just
    /// before it, which shortens nothing. So the first [`FIRST_FIT_SCAN`]
    /// blocks in address order are tried first (the first that fits wins),
    /// and only then the best fit below `limit`.
    pub fn allocate_below(
        &mut self,
        need: u64,
        limit: u64,
        fragmentation_factor: f64,
    ) -> Option<Allocation> {
        let (len, offset) = self
            .first_fit(need, limit)
            .or_else(|| self.best_fit(need, limit))?;
        Some(self.take(offset, len, need, fragmentation_factor))
    }

    /// The lowest free block before `limit` that holds `need` bytes, among the
    /// first [`FIRST_FIT_SCAN`] blocks of the file (the bound keeps a file
    /// with many small holes at its start from making each move a long scan).
    fn first_fit(&self, need: u64, limit: u64) -> Option<(u64, u64)> {
        self.by_off
            .range(..limit)
            .take(FIRST_FIT_SCAN)
            .find(|&(_, &l)| l >= need)
            .map(|(&o, &l)| (l, o))
    }

    /// Whether any free block starts before `limit`.
    pub fn any_below(&self, limit: u64) -> bool {
        self.by_off.range(..limit).next().is_some() || self.tail.is_some_and(|(o, _)| o < limit)
    }

    /// Hands out `need` bytes of the free block `offset`/`len`, splitting it
    /// when the split rules allow.
    fn take(&mut self, offset: u64, len: u64, need: u64, fragmentation_factor: f64) -> Allocation {
        self.remove(offset, len);
        let zero_before = self.zero_from;
        let rest = len - need;
        if rest >= MIN_BLOCK_LEN && (need as f64) <= fragmentation_factor * len as f64 {
            self.insert(offset + need, rest);
            self.zero_from = self.zero_from.max(offset + need);
            return Allocation {
                offset,
                len: need,
                remainder: Some((offset + need, rest)),
                grow_to: None,
                remainder_zeroed: offset + need >= zero_before,
                block_zeroed: offset >= zero_before,
                zero_before,
            };
        }
        self.zero_from = self.zero_from.max(offset + len);
        Allocation {
            offset,
            len,
            remainder: None,
            grow_to: None,
            remainder_zeroed: false,
            block_zeroed: offset >= zero_before,
            zero_before,
        }
    }

    /// Undoes the last [`allocate`](Self::allocate) whose file growth failed:
    /// the file keeps its old end `old_end`.
    pub fn undo_growth(&mut self, a: &Allocation, old_end: u64) {
        if let Some((o, l)) = a.remainder {
            self.remove(o, l);
        }
        self.end = old_end;
        self.zero_from = a.zero_before.min(old_end);
        if a.offset < old_end {
            // The allocation had absorbed a free block that ended the file.
            self.insert(a.offset, old_end - a.offset);
        }
    }

    /// The free block that ends the file, if any.
    pub fn tail_free(&self) -> Option<(u64, u64)> {
        self.tail
    }

    /// Returns a block to the free list, merging it with free neighbours. A
    /// merged block that ends the file and is longer than `keep_tail` bytes is
    /// cut off (see [`Freed::truncate_to`]).
    pub fn free(&mut self, offset: u64, len: u64, keep_tail: u64) -> Freed {
        debug_assert!(
            offset >= self.start && offset + len <= self.end,
            "{offset}+{len} outside the file"
        );
        debug_assert!(self.block_at(offset).is_none(), "double free at {offset}");
        let (mut o, mut l) = (offset, len);
        if let Some((&po, &pl)) = self.by_off.range(..offset).next_back() {
            debug_assert!(po + pl <= offset, "free block {po}+{pl} overlaps {offset}");
            if po + pl == offset {
                self.remove(po, pl);
                o = po;
                l += pl;
            }
        }
        if let Some(nl) = self.block_at(offset + len) {
            self.remove(offset + len, nl);
            l += nl;
        }
        if o + l == self.end && l > keep_tail {
            self.end = o;
            self.zero_from = self.zero_from.min(o);
            return Freed {
                offset: o,
                len: l,
                truncate_to: Some(o),
            };
        }
        self.insert(o, l);
        Freed {
            offset: o,
            len: l,
            truncate_to: None,
        }
    }

    /// Takes `[offset, offset + len)` back out of the free block that holds
    /// it; what lies before and after it in that block stays free, as separate
    /// blocks. Undoes a [`free`](Self::free) whose merged header could not be
    /// written: the neighbours it merged with are free blocks again, as their
    /// headers on disk still say.
    pub fn withdraw(&mut self, offset: u64, len: u64) {
        let holder = match self.tail {
            Some((o, l)) if o <= offset => Some((o, l)),
            _ => self
                .by_off
                .range(..=offset)
                .next_back()
                .map(|(&o, &l)| (o, l)),
        };
        let Some((o, l)) = holder else {
            debug_assert!(false, "{offset}+{len} is not free");
            return;
        };
        debug_assert!(o + l >= offset + len, "{offset}+{len} is not free");
        self.remove(o, l);
        if o < offset {
            self.insert(o, offset - o);
        }
        if offset + len < o + l {
            self.insert(offset + len, o + l - offset - len);
        }
    }

    /// Undoes a cut that [`free`](Self::free) reported but the file could not
    /// make: the block stays, as a free block ending the file.
    pub fn undo_truncate(&mut self, offset: u64, len: u64) {
        debug_assert_eq!(self.end, offset);
        self.end = offset + len;
        self.zero_from = self.end; // what the block holds is not known
        self.insert(offset, len);
    }

    /// Cuts off a free block that ends the file, whatever its length. Returns
    /// the new end when something was cut.
    pub fn trim_tail(&mut self) -> Option<u64> {
        let (o, l) = self.tail_free()?;
        self.remove(o, l);
        self.end = o;
        self.zero_from = self.zero_from.min(o);
        Some(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 64;

    #[test]
    fn withdraw_undoes_a_merge() {
        let mut f = with_free(1000, &[(64, 96), (264, 136)]);
        let freed = f.free(160, 104, u64::MAX);
        assert_eq!((freed.offset, freed.len), (64, 336));
        f.withdraw(160, 104);
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![(64, 96), (264, 136)]);
        assert_eq!(f.free_bytes(), 232);
        // A block with no free neighbours: nothing stays.
        let mut f = with_free(1000, &[]);
        f.free(64, 96, u64::MAX);
        f.withdraw(64, 96);
        assert_eq!(f.free_blocks(), 0);
    }

    /// A free list over a file [H, end) with the given free blocks.
    fn with_free(end: u64, blocks: &[(u64, u64)]) -> FreeList {
        let mut f = FreeList::new(H, end);
        for &(o, l) in blocks {
            f.insert(o, l);
        }
        f
    }

    #[test]
    fn best_fit_takes_the_smallest_block_that_fits() {
        let mut f = with_free(10_000, &[(64, 400), (1000, 200), (2000, 120), (3000, 800)]);
        let a = f.allocate(112, 1.0, 0);
        assert_eq!(
            (a.offset, a.len),
            (2000, 120),
            "120 is the smallest block >= 112"
        );
        let a = f.allocate(160, 1.0, 0);
        assert_eq!(a.offset, 1000);
    }

    #[test]
    fn best_fit_breaks_ties_by_lowest_offset() {
        let mut f = with_free(10_000, &[(3000, 96), (1000, 96), (2000, 96)]);
        assert_eq!(f.allocate(96, 0.75, 0).offset, 1000);
        assert_eq!(f.allocate(96, 0.75, 0).offset, 2000);
    }

    #[test]
    fn splits_when_request_is_small_and_rest_is_a_block() {
        let mut f = with_free(10_000, &[(64, 400)]);
        let a = f.allocate(96, 0.75, 0);
        assert_eq!(
            (a.offset, a.len, a.remainder, a.grow_to),
            (64, 96, Some((160, 304)), None)
        );
        assert!(
            !a.remainder_zeroed,
            "the rest of an old free block holds old bytes"
        );
        assert!(f.contains(160, 304));
        assert_eq!(f.free_bytes(), 304);
    }

    #[test]
    fn no_split_when_request_uses_more_than_the_factor() {
        let mut f = with_free(10_000, &[(64, 400)]);
        let a = f.allocate(320, 0.75, 0); // 320/400 = 0.8
        assert_eq!((a.offset, a.len, a.remainder), (64, 400, None));
        assert_eq!(f.free_blocks(), 0);
        // With a factor that allows it, the same request splits.
        let mut f = with_free(10_000, &[(64, 400)]);
        let a = f.allocate(320, 0.9, 0);
        assert_eq!((a.len, a.remainder), (320, Some((384, 80))));
    }

    #[test]
    fn no_split_when_rest_is_below_a_minimal_block() {
        let mut f = with_free(10_000, &[(64, 136)]);
        let a = f.allocate(96, 1.0, 0); // rest 40 < 48
        assert_eq!((a.len, a.remainder), (136, None));
    }

    #[test]
    fn appends_at_the_end_when_nothing_fits() {
        let mut f = with_free(1000, &[(64, 96)]);
        let a = f.allocate(200, 0.75, 0);
        assert_eq!(
            (a.offset, a.len, a.remainder, a.grow_to),
            (1000, 200, None, Some(1200))
        );
        assert_eq!(f.end(), 1200);
        assert!(f.contains(64, 96), "the small hole stays");
    }

    #[test]
    fn append_absorbs_a_free_block_at_the_end_and_reserves_growth() {
        let mut f = with_free(1000, &[(904, 96)]);
        let a = f.allocate(200, 0.75, 800);
        assert_eq!(a.offset, 904);
        assert_eq!(a.grow_to, Some(904 + 200 + 800));
        assert_eq!(a.remainder, Some((1104, 800)));
        assert!(f.contains(1104, 800));
        f.undo_growth(&a, 1000);
        assert_eq!(f.end(), 1000);
        assert!(f.contains(904, 96));
        assert_eq!(f.free_blocks(), 1);
    }

    #[test]
    fn growth_space_is_known_to_be_zero_until_written() {
        let mut f = FreeList::new(H, H);
        let a = f.allocate(96, 0.75, 1024);
        assert_eq!((a.offset, a.remainder), (64, Some((160, 1024))));
        assert!(
            a.remainder_zeroed,
            "the reserve past the entry was never written"
        );
        assert_eq!(f.zero_from(), 160);
        // Carving the reserve from its start keeps its rest zeroed.
        let b = f.allocate(96, 0.75, 0);
        assert_eq!(
            (b.offset, b.remainder, b.remainder_zeroed),
            (160, Some((256, 928)), true)
        );
        assert_eq!(f.zero_from(), 256);
        // A block freed between live blocks holds old bytes: the rest of it,
        // once carved, needs a header.
        let x = f.allocate(96, 0.75, 0);
        assert_eq!(x.offset, 256);
        f.allocate(96, 0.75, 0);
        f.free(256, 96, u64::MAX);
        let c = f.allocate(48, 0.75, 0);
        assert_eq!(
            (c.offset, c.remainder, c.remainder_zeroed),
            (256, Some((304, 48)), false)
        );
        // Freed again, the two pieces merge back into one 96-byte hole, which
        // is the best fit for 96 bytes: no remainder.
        f.free(256, 48, u64::MAX);
        let d = f.allocate(96, 0.75, 0);
        assert_eq!((d.offset, d.remainder), (256, None));
        // Cutting the tail leaves nothing known to be zero.
        assert!(f.trim_tail().is_some());
        assert_eq!(f.zero_from(), f.end());
    }

    #[test]
    fn free_merges_with_the_previous_block() {
        let mut f = with_free(10_000, &[(64, 96)]);
        let r = f.free(160, 200, 0);
        assert_eq!(
            r,
            Freed {
                offset: 64,
                len: 296,
                truncate_to: None
            }
        );
        assert!(f.contains(64, 296));
        assert_eq!(f.free_blocks(), 1);
    }

    #[test]
    fn free_merges_with_the_next_block() {
        let mut f = with_free(10_000, &[(360, 96)]);
        let r = f.free(160, 200, 0);
        assert_eq!(
            r,
            Freed {
                offset: 160,
                len: 296,
                truncate_to: None
            }
        );
        assert!(f.contains(160, 296));
    }

    #[test]
    fn free_merges_with_both_neighbours() {
        let mut f = with_free(10_000, &[(64, 96), (360, 96)]);
        let r = f.free(160, 200, 0);
        assert_eq!(
            r,
            Freed {
                offset: 64,
                len: 392,
                truncate_to: None
            }
        );
        assert_eq!(f.free_blocks(), 1);
        assert_eq!(f.free_bytes(), 392);
    }

    #[test]
    fn free_does_not_merge_across_an_allocated_block() {
        let mut f = with_free(10_000, &[(64, 96)]);
        // [64,160) free, [160,256) allocated, [256, 352) freed now.
        let r = f.free(256, 96, 0);
        assert_eq!((r.offset, r.len), (256, 96));
        assert_eq!(f.free_blocks(), 2);
    }

    #[test]
    fn free_space_at_the_end_is_cut_off() {
        let mut f = with_free(1000, &[(64, 96)]);
        // The last block [800, 1000) is freed: it merges with nothing and ends the file.
        let r = f.free(800, 200, 0);
        assert_eq!(r.truncate_to, Some(800));
        assert_eq!(f.end(), 800);
        // Freeing the block before the remaining hole merges everything down to the header.
        let r = f.free(160, 640, 0);
        assert_eq!(
            r,
            Freed {
                offset: 64,
                len: 736,
                truncate_to: Some(64)
            }
        );
        assert_eq!(f.end(), 64);
        assert_eq!(f.free_blocks(), 0);
    }

    #[test]
    fn a_short_free_tail_is_kept_when_asked() {
        let mut f = with_free(1000, &[]);
        let r = f.free(800, 200, 512);
        assert_eq!(r.truncate_to, None);
        assert_eq!(f.end(), 1000);
        assert_eq!(f.trim_tail(), Some(800));
        assert_eq!(f.end(), 800);
    }

    #[test]
    fn allocate_below_only_uses_blocks_before_the_limit() {
        let mut f = with_free(10_000, &[(64, 96), (2000, 200), (5000, 104)]);
        // The best fit overall is at 5000, but it is past the limit.
        let a = f.allocate_below(104, 4000, 0.75).unwrap();
        assert_eq!(
            (a.offset, a.len, a.remainder),
            (2000, 104, Some((2104, 96)))
        );
        assert!(
            f.allocate_below(104, 1000, 0.75).is_none(),
            "the only block below 1000 is too small"
        );
        assert!(f.any_below(100));
        assert!(!f.any_below(64));
        assert_eq!(f.end(), 10_000, "never grows the file");
    }

    #[test]
    fn allocate_below_prefers_the_lowest_block_that_fits() {
        // Best fit would take the exact fit at 1000 (or 8000, just below the
        // entry); compaction wants the lowest block that fits: 400, stepping
        // over the too-small block at 64.
        let mut f = with_free(10_000, &[(64, 96), (400, 400), (1000, 104), (8000, 104)]);
        let a = f.allocate_below(104, 9000, 0.75).unwrap();
        assert_eq!(
            (a.offset, a.len, a.remainder),
            (400, 104, Some((504, 296))),
            "the lowest block that fits, split"
        );
        // The limit still bounds it: below 300 nothing fits.
        assert!(f.allocate_below(104, 300, 0.75).is_none());
    }

    #[test]
    fn allocate_below_falls_back_to_best_fit_past_the_scan_bound() {
        // More small holes at the start than a first-fit scan looks at, then
        // two blocks that fit: the best fit (the smaller) is taken.
        let mut holes: Vec<(u64, u64)> = (0..FIRST_FIT_SCAN as u64 + 10)
            .map(|i| (64 + i * 192, 96))
            .collect();
        let far = 64 + (FIRST_FIT_SCAN as u64 + 20) * 192;
        holes.push((far, 1024));
        holes.push((far + 2048, 512));
        let mut f = with_free(far + 8192, &holes);
        let a = f.allocate_below(512, far + 4096, 0.75).unwrap();
        assert_eq!((a.offset, a.len), (far + 2048, 512));
    }

    #[test]
    fn blocks_absent_from_the_list_are_never_handed_out_or_merged() {
        // A reader holds [160, 256): it is not in the list. Its neighbours are freed.
        let mut f = with_free(1000, &[]);
        f.free(64, 96, 0);
        f.free(256, 96, 0);
        assert_eq!(f.free_blocks(), 2, "the held block separates them");
        // A request that only the held block's span would satisfy goes to the end.
        let a = f.allocate(192, 1.0, 0);
        assert_eq!(a.offset, 1000);
        // Nothing handed out overlaps the held block.
        let b = f.allocate(96, 1.0, 0);
        assert!(b.offset + b.len <= 160 || b.offset >= 256);
    }
}
