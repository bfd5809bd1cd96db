//! The open-time scan: one sequential pass over the file that rebuilds the
//! index and the free list.
//!
//! Rules (FORMAT.md, "Reading a file"): the copy of a key with the highest
//! sequence number wins (the lower offset on a tie) and the others are freed;
//! damaged blocks are counted and their space reclaimed; expired entries are
//! freed; with an entry cap, the entries with the lowest sequence numbers
//! beyond the cap are evicted; adjacent free space is merged into one block,
//! and free space at the end is cut off. On a read-only open nothing is
//! written: the same decisions are made in memory only.
//!
//! Decisions and writes are apart: the walk and the index build decide which
//! copy wins; expiry and the cap decide what else goes; [`plan_space`] turns
//! the reclaimed stretches into a [`SpacePlan`] (headers to write, crumbs to
//! zero, where to cut, the free list), a pure function unit-tested without a
//! file; [`SpacePlan::apply`] writes it on a read-write open.

use std::hash::BuildHasher;
use std::io;

use crate::alloc::FreeList;
use crate::format::{BlockHeader, FILE_HEADER_LEN, FileHeader, MIN_BLOCK_LEN};
use crate::index::{CompactKey, KeyHasher, LruList, SHARDS, Shard, shard_of};
use crate::inspect::{Block, BlockKind, Source, Walker};
use crate::io::Storage;

mod batches;

use batches::Batches;

/// A [`Storage`] read as a [`Source`].
pub(crate) struct StorageSource<'a>(pub &'a dyn Storage);

impl Source for StorageSource<'_> {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }

    #[expect(unsafe_code, reason = "the open walks blocks in place in the mapping")]
    fn view(&mut self, offset: u64, len: u64) -> Option<&[u8]> {
        // SAFETY: a `StorageSource` reads a store's file while it is being
        // opened, before any other thread can reach the storage, and the
        // walker drops each slice before its next call: nothing writes or
        // truncates the file while a slice lives.
        unsafe { self.0.view(offset, len) }
    }
}

/// What the scan found, ready to become a store.
pub(crate) struct Recovered {
    pub shards: Vec<Shard>,
    pub lru: Option<Vec<LruList>>,
    pub free: FreeList,
    pub entries: usize,
    pub live_bytes: u64,
    pub next_seq: u64,
    pub next_stamp: u64,
    pub corrupt_blocks: u64,
    pub corrupt_bytes: u64,
    pub expired_freed: u64,
    pub evicted: u64,
}

impl Recovered {
    /// The state of an empty file opened read-only (nothing to scan).
    pub fn empty(lru: bool) -> Recovered {
        Recovered {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            lru: lru.then(|| (0..SHARDS).map(|_| LruList::default()).collect()),
            free: FreeList::new(FILE_HEADER_LEN, 0),
            entries: 0,
            live_bytes: 0,
            next_seq: 1,
            next_stamp: 1,
            corrupt_blocks: 0,
            corrupt_bytes: 0,
            expired_freed: 0,
            evicted: 0,
        }
    }
}

/// A stretch of the file that becomes free space.
#[derive(Clone, Copy)]
struct Reclaim {
    offset: u64,
    len: u64,
    /// It holds an entry header that must be overwritten.
    entry: bool,
    /// It is already a valid free block of exactly this length.
    free: bool,
}

/// Scans the file after its header and rebuilds the store's state.
/// With `write` set, repairs are written to `storage`.
pub(crate) fn recover(
    storage: &dyn Storage,
    header: FileHeader,
    hasher: &KeyHasher,
    now_ms: i64,
    max_entries: Option<usize>,
    write: bool,
) -> io::Result<Recovered> {
    let salt = header.salt;
    let file_len = storage.len();
    // The walk: every entry goes to its shard's list (in file order); the
    // shards' tables are built afterwards, each at its exact size, in
    // parallel (see `build_shard`). A large file is walked in two halves on
    // two threads (see `walk`).
    let Walked {
        mut found,
        mut reclaims,
        max_seq,
        corrupt_blocks,
        corrupt_bytes,
        batches,
    } = walk(storage, header, hasher, SPLIT_WALK_BYTES)?;
    // Batches: the members of complete ones join the entries, the rest of
    // the pending entries and the incomplete commit records are free space.
    let settled = batches.resolve(&mut found, &mut reclaims, salt, |o, b| {
        storage.read_at(o, b)
    })?;
    let built = build_shards(hasher, found)?;
    let mut shards: Vec<Shard> = Vec::with_capacity(SHARDS);
    // Per shard, per slot id: (seq, block_len) of the copy in the index.
    let mut meta: Vec<Vec<(u64, u64)>> = Vec::with_capacity(SHARDS);
    let (mut entries, mut live_bytes, mut expired_freed) = (0usize, 0u64, 0u64);
    for b in built {
        entries += b.shard.len();
        live_bytes += b.live_bytes;
        reclaims.extend(b.losers);
        shards.push(b.shard);
        meta.push(b.meta);
    }

    // Takes an entry out of the index; its block becomes free space.
    let mut drop_entry = |shards: &mut [Shard], s: usize, id: u32| {
        let slot = shards[s].slot(id);
        let (offset, len) = (slot.offset(), meta[s][id as usize].1);
        let hash = hasher.hash_one(slot.key.as_bytes());
        shards[s].remove(hash, id);
        reclaims.push(Reclaim {
            offset,
            len,
            entry: true,
            free: false,
        });
        entries -= 1;
        live_bytes -= len;
    };
    // A key whose newest copy is older than a complete batch's tombstone of
    // it is absent.
    for (seq, key) in &settled.tombstones {
        let hash = hasher.hash_one(key);
        let s = shard_of(hash);
        if let Some(id) = shards[s].find(hash, key)
            && meta[s][id as usize].0 < *seq
        {
            drop_entry(&mut shards, s, id);
        }
    }
    for s in 0..shards.len() {
        for id in shards[s].expired(now_ms, usize::MAX) {
            drop_entry(&mut shards, s, id);
            expired_freed += 1;
        }
    }

    // LRU order after a reopen is the order of writes (sequence numbers).
    let mut evicted = 0u64;
    let mut next_stamp = 1u64;
    let lru = match max_entries {
        None => None,
        Some(cap) => {
            let mut order: Vec<(u64, u32, u32)> =
                Vec::with_capacity(shards.iter().map(Shard::len).sum());
            for (s, shard) in shards.iter().enumerate() {
                for (id, _) in shard.iter() {
                    order.push((meta[s][id as usize].0, s as u32, id));
                }
            }
            order.sort_unstable();
            let excess = order.len().saturating_sub(cap);
            for &(_, s, id) in &order[..excess] {
                drop_entry(&mut shards, s as usize, id);
                evicted += 1;
            }
            let mut lists: Vec<LruList> = (0..SHARDS).map(|_| LruList::default()).collect();
            for &(_, s, id) in &order[excess..] {
                lists[s as usize].touch(id, next_stamp);
                next_stamp += 1;
            }
            Some(lists)
        }
    };

    if !write {
        // In memory only: a complete batch's commit record is free space.
        reclaims.extend(settled.commits.iter().map(|&(offset, len)| Reclaim {
            offset,
            len,
            entry: true,
            free: false,
        }));
    }
    let mut plan = plan_space(reclaims, file_len);
    if write {
        // Settling (FORMAT.md, "Batches"): the members' words and the
        // tombstoned copies' free headers are made durable before the
        // commit records go.
        settled.write_words(storage)?;
        plan.apply(storage, salt, !settled.commits.is_empty())?;
        settled.free_commits(storage, salt, &mut plan.free)?;
    }
    let free = plan.free;
    debug_assert!(!write || free.end() == storage.len());

    Ok(Recovered {
        shards,
        lru,
        free,
        entries,
        live_bytes,
        next_seq: max_seq + 1,
        next_stamp,
        corrupt_blocks,
        corrupt_bytes,
        expired_freed,
        evicted,
    })
}

/// What an open does with the space it reclaims: decided by
/// [`plan_space`] from the reclaimed stretches alone, written by
/// [`SpacePlan::apply`] (on a read-write open only).
#[derive(Debug)]
struct SpacePlan {
    /// Entry headers inside free space, overwritten with a free header of
    /// the stretch's length so that no later scan takes them for live data.
    entry_headers: Vec<(u64, u64)>,
    /// Merged runs that need one free header of their whole length.
    run_headers: Vec<(u64, u64)>,
    /// Runs shorter than a header (damage between two entries): free in
    /// memory only, zeroed on disk so that later walks read them as
    /// unwritten space rather than damage.
    crumbs: Vec<(u64, u64)>,
    /// Free space reaching the end of the file is cut off here.
    cut_to: Option<u64>,
    /// The free list that results.
    free: FreeList,
}

/// Merges the reclaimed stretches into runs and decides what the file needs:
/// a free header for each run made of several stretches (one that is
/// already a single valid free block needs none), zeros for a crumb, and
/// the end of the file cut where free space reaches it (the tail run, of any
/// length, is not free space: it goes).
fn plan_space(mut reclaims: Vec<Reclaim>, file_len: u64) -> SpacePlan {
    reclaims.sort_unstable_by_key(|r| r.offset);
    let mut runs: Vec<(u64, u64, bool)> = Vec::new(); // (offset, len, already one valid free block)
    for r in &reclaims {
        match runs.last_mut() {
            Some((o, l, single)) if *o + *l == r.offset => {
                *l += r.len;
                *single = false;
            }
            _ => runs.push((r.offset, r.len, r.free)),
        }
    }
    let cut_to = runs
        .last()
        .filter(|&&(o, l, _)| o + l == file_len)
        .map(|&(o, _, _)| o);
    let in_tail = |offset: u64| cut_to.is_some_and(|t| offset >= t);
    let entry_headers = reclaims
        .iter()
        .filter(|r| r.entry && !in_tail(r.offset))
        .map(|r| (r.offset, r.len))
        .collect();
    let mut run_headers = Vec::new();
    let mut crumbs = Vec::new();
    let mut free = FreeList::new(FILE_HEADER_LEN, cut_to.unwrap_or(file_len));
    for &(o, l, single) in runs.iter().filter(|r| !in_tail(r.0)) {
        if l < MIN_BLOCK_LEN {
            crumbs.push((o, l));
        } else if !single {
            run_headers.push((o, l));
        }
        free.free(o, l, u64::MAX);
    }
    SpacePlan {
        entry_headers,
        run_headers,
        crumbs,
        cut_to,
        free,
    }
}

impl SpacePlan {
    /// Writes the plan: entry headers first, then the runs' headers (which
    /// may cover them), crumbs zeroed, the tail cut; one sync if anything
    /// was written (or `sync` asks for one: other writes came before).
    fn apply(&self, storage: &dyn Storage, salt: u32, sync: bool) -> io::Result<()> {
        let mut wrote = sync;
        for &(o, l) in self.entry_headers.iter().chain(&self.run_headers) {
            storage.write_at(o, &[&BlockHeader::free(l).encode(salt)])?;
            wrote = true;
        }
        for &(o, l) in &self.crumbs {
            // Zeroed once; a crumb already all zeros is left as it is.
            let mut crumb = vec![0u8; l as usize];
            storage.read_at(o, &mut crumb)?;
            if crumb.iter().any(|&b| b != 0) {
                storage.write_at(o, &[&vec![0u8; l as usize]])?;
                wrote = true;
            }
        }
        if let Some(t) = self.cut_to {
            storage.set_len(t)?;
            wrote = true;
        }
        if wrote {
            storage.sync()?;
        }
        Ok(())
    }
}

/// What a walk over (part of) the file found.
#[derive(Default)]
struct Walked {
    /// Per shard, the entries in file order.
    found: Vec<Vec<Found>>,
    reclaims: Vec<Reclaim>,
    max_seq: u64,
    corrupt_blocks: u64,
    corrupt_bytes: u64,
    /// Pending batch members and commit records (format version 2).
    batches: Batches,
}

impl Walked {
    fn new() -> Walked {
        Walked {
            found: (0..SHARDS).map(|_| Vec::new()).collect(),
            ..Walked::default()
        }
    }

    /// Takes in one block.
    fn add(&mut self, block: &Block, key: &[u8], hasher: &KeyHasher) {
        let (offset, len) = (block.offset, block.len);
        let reclaim = |entry, free| Reclaim {
            offset,
            len,
            entry,
            free,
        };
        match block.kind {
            BlockKind::Commit(_, ref c) => {
                self.max_seq = self.max_seq.max(c.last_seq());
                self.batches.commit(offset, len, c.clone());
            }
            BlockKind::Entry(h) if h.pending => {
                self.max_seq = self.max_seq.max(h.seq);
                let hash = hasher.hash_one(key);
                self.batches.pending(
                    Found {
                        key: CompactKey::new(key),
                        hash,
                        offset,
                        len,
                        seq: h.seq,
                        expiry: h.expiry_ms,
                    },
                    &h,
                );
            }
            BlockKind::Entry(h) => {
                self.max_seq = self.max_seq.max(h.seq);
                let hash = hasher.hash_one(key);
                self.found[shard_of(hash)].push(Found {
                    key: CompactKey::new(key),
                    hash,
                    offset,
                    len,
                    seq: h.seq,
                    expiry: h.expiry_ms,
                });
            }
            BlockKind::Free => self.reclaims.push(reclaim(false, true)),
            BlockKind::Unwritten => self.reclaims.push(reclaim(false, false)),
            BlockKind::CorruptEntry(h) => {
                self.max_seq = self.max_seq.max(h.seq);
                self.corrupt_blocks += 1;
                self.corrupt_bytes += len;
                self.reclaims.push(reclaim(true, false));
            }
            BlockKind::Damaged(_) => {
                self.corrupt_blocks += 1;
                self.corrupt_bytes += len;
                self.reclaims.push(reclaim(false, false));
            }
        }
    }

    /// Appends what a walk of the next part of the file found.
    fn append(&mut self, later: Walked) {
        for (mine, theirs) in self.found.iter_mut().zip(later.found) {
            mine.extend(theirs);
        }
        self.reclaims.extend(later.reclaims);
        self.batches.append(later.batches);
        self.max_seq = self.max_seq.max(later.max_seq);
        self.corrupt_blocks += later.corrupt_blocks;
        self.corrupt_bytes += later.corrupt_bytes;
    }
}

/// Files smaller than this are walked on one thread.
const SPLIT_WALK_BYTES: u64 = 32 << 20;

/// Walks the blocks after the file header. A large file is walked in two
/// halves at once: the second walk starts at the first valid entry header
/// after the middle of the file (the rule the walk uses to resynchronise
/// after damage), and the first walk must then end exactly there, which
/// proves the second started on a block boundary. If it does not (a value
/// holding something that passes for an entry header of this file), the
/// second half's results are dropped and the first walk carries on to the
/// end of the file.
fn walk(
    storage: &dyn Storage,
    header: FileHeader,
    hasher: &KeyHasher,
    split_from: u64,
) -> io::Result<Walked> {
    let file_len = storage.len();
    let mut first = Walker::with_header(StorageSource(storage), header);
    let split = if file_len >= split_from
        && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
    {
        let mid = file_len / 2;
        first.next_entry_header(mid, mid + (8 << 20))?
    } else {
        None
    };
    let mut walked = Walked::new();
    let Some(split) = split else {
        while let Some(b) = first.next_block()? {
            walked.add(&b, first.key(), hasher);
        }
        return Ok(walked);
    };
    let second = std::thread::scope(|scope| {
        let second = scope.spawn(|| -> io::Result<Walked> {
            let mut w = Walker::with_header(StorageSource(storage), header);
            w.seek(split);
            let mut walked = Walked::new();
            while let Some(b) = w.next_block()? {
                walked.add(&b, w.key(), hasher);
            }
            Ok(walked)
        });
        while first.position() < split {
            let Some(b) = first.next_block()? else { break };
            walked.add(&b, first.key(), hasher);
        }
        second.join().expect("the second walk panicked")
    })?;
    if first.position() == split {
        walked.append(second);
    } else {
        // The second walk did not start on a block boundary: finish alone.
        while let Some(b) = first.next_block()? {
            walked.add(&b, first.key(), hasher);
        }
    }
    Ok(walked)
}

/// An entry found by the walk, waiting for its shard to be built. It keeps
/// its key (inline when short), so the build need not touch the file again.
struct Found {
    key: CompactKey,
    hash: u64,
    offset: u64,
    len: u64,
    seq: u64,
    expiry: u64,
}

/// A shard built from the entries the walk found for it.
struct Built {
    shard: Shard,
    /// Per slot id: (seq, block_len).
    meta: Vec<(u64, u64)>,
    /// Copies that lost to a newer copy of their key.
    losers: Vec<Reclaim>,
    live_bytes: u64,
}

/// Builds every shard's table from the walk's lists, on as many threads as
/// there are cores (up to 8): each table is made at its exact size and filled
/// in file order, so it stays in cache while it is built and never grows.
fn build_shards(hasher: &KeyHasher, found: Vec<Vec<Found>>) -> io::Result<Vec<Built>> {
    let total: usize = found.iter().map(Vec::len).sum();
    let threads = if total < 50_000 {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
    };
    let mut lists: Vec<(usize, Vec<Found>)> = found.into_iter().enumerate().collect();
    let mut groups: Vec<Vec<(usize, Vec<Found>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in lists.drain(..).enumerate() {
        groups[i % threads].push(item);
    }
    let mut out: Vec<Option<Built>> = (0..SHARDS).map(|_| None).collect();
    let results: Vec<io::Result<Vec<(usize, Built)>>> = if threads == 1 {
        groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|(s, f)| Ok((s, build_shard(hasher, f)?)))
                    .collect()
            })
            .collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| {
                    scope.spawn(move || {
                        g.into_iter()
                            .map(|(s, f)| Ok((s, build_shard(hasher, f)?)))
                            .collect::<io::Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a shard builder panicked"))
                .collect()
        })
    };
    for r in results {
        for (s, b) in r? {
            out[s] = Some(b);
        }
    }
    Ok(out
        .into_iter()
        .map(|b| b.expect("every shard built"))
        .collect())
}

/// Builds one shard: the newest copy of each key wins (the higher sequence
/// number; on a tie, the lower offset); the others are losers to free.
fn build_shard(hasher: &KeyHasher, found: Vec<Found>) -> io::Result<Built> {
    if found.len() > crate::index::MAX_SHARD_ENTRIES {
        return Err(io::Error::other(format!(
            "{} entries in one index shard, more than the {} it can hold",
            found.len(),
            crate::index::MAX_SHARD_ENTRIES
        )));
    }
    let mut shard = Shard::default();
    shard.reserve(hasher, found.len());
    let mut meta: Vec<(u64, u64)> = Vec::with_capacity(found.len());
    let mut losers = Vec::new();
    let mut live_bytes = 0u64;
    for f in found {
        match shard.find_or_insert(hasher, f.hash, f.key, f.offset, f.expiry) {
            Err(id) => {
                debug_assert_eq!(id as usize, meta.len());
                meta.push((f.seq, f.len));
                live_bytes += f.len;
            }
            Ok(id) => {
                let (old_seq, old_len) = meta[id as usize];
                let old_off = shard.slot(id).offset();
                if (f.seq, std::cmp::Reverse(f.offset)) > (old_seq, std::cmp::Reverse(old_off)) {
                    shard.update(f.hash, id, f.offset, f.expiry);
                    meta[id as usize] = (f.seq, f.len);
                    live_bytes = live_bytes - old_len + f.len;
                    losers.push(Reclaim {
                        offset: old_off,
                        len: old_len,
                        entry: true,
                        free: false,
                    });
                } else {
                    losers.push(Reclaim {
                        offset: f.offset,
                        len: f.len,
                        entry: true,
                        free: false,
                    });
                }
            }
        }
    }
    Ok(Built {
        shard,
        meta,
        losers,
        live_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{FORMAT_VERSION, entry_block_len};
    use crate::io::MemStorage;

    const SALT: u32 = 0xabcd;

    fn reclaim(offset: u64, len: u64, entry: bool, free: bool) -> Reclaim {
        Reclaim {
            offset,
            len,
            entry,
            free,
        }
    }

    #[test]
    fn the_plan_merges_neighbours_under_one_header_and_overwrites_entry_headers() {
        // An old copy (entry) next to a free block, then a live entry, then
        // a valid free block on its own.
        let p = plan_space(
            vec![
                reclaim(64, 200, true, false),
                reclaim(264, 104, false, true),
                reclaim(600, 120, false, true),
            ],
            1000,
        );
        assert_eq!(p.entry_headers, vec![(64, 200)]);
        assert_eq!(
            p.run_headers,
            vec![(64, 304)],
            "one header for the merged run"
        );
        assert!(p.crumbs.is_empty());
        assert_eq!(p.cut_to, None);
        assert!(p.free.contains(64, 304) && p.free.contains(600, 120));
        assert_eq!(p.free.end(), 1000);
    }

    #[test]
    fn the_plan_cuts_free_space_at_the_end_and_writes_nothing_there() {
        let p = plan_space(
            vec![
                reclaim(800, 96, true, false),
                reclaim(896, 104, false, false),
            ],
            1000,
        );
        assert_eq!(p.cut_to, Some(800));
        assert!(p.entry_headers.is_empty() && p.run_headers.is_empty());
        assert_eq!(p.free.end(), 800);
        assert_eq!(p.free.free_bytes(), 0);
    }

    #[test]
    fn the_plan_zeroes_crumbs_instead_of_writing_a_header_over_the_next_entry() {
        let p = plan_space(vec![reclaim(200, 16, false, false)], 1000);
        assert_eq!(p.crumbs, vec![(200, 16)]);
        assert!(p.run_headers.is_empty());
        assert!(p.free.contains(200, 16), "free in memory");
    }

    #[test]
    fn applying_the_plan_writes_what_it_says_and_nothing_else() {
        let mem = MemStorage::with_bytes(vec![0xee; 1000]);
        let p = plan_space(
            vec![
                reclaim(64, 200, true, false),
                reclaim(264, 104, false, true),
                reclaim(400, 16, false, false),
                reclaim(896, 104, true, false),
            ],
            1000,
        );
        p.apply(&mem, SALT, false).unwrap();
        let b = mem.bytes();
        assert_eq!(b.len(), 896, "tail cut");
        let h = BlockHeader::decode(&b[64..112], SALT, 64, 896).unwrap();
        assert_eq!((h.kind, h.block_len), (crate::format::Kind::Free, 304));
        assert!(b[400..416].iter().all(|&x| x == 0), "crumb zeroed");
        assert!(
            b[112..264].iter().all(|&x| x == 0xee),
            "nothing else written"
        );
    }

    fn entry(key: &[u8], value: &[u8], seq: u64) -> Vec<u8> {
        crate::format::test_entry_block(SALT, key, value, seq)
    }

    /// Per shard (offset, len, seq) of each entry found.
    type FoundSummary = Vec<Vec<(u64, u64, u64)>>;

    fn summary(w: &Walked) -> (FoundSummary, Vec<(u64, u64, bool)>, u64, u64) {
        let found = w
            .found
            .iter()
            .map(|l| l.iter().map(|f| (f.offset, f.len, f.seq)).collect())
            .collect();
        let reclaims = w
            .reclaims
            .iter()
            .map(|r| (r.offset, r.len, r.entry))
            .collect();
        (found, reclaims, w.max_seq, w.corrupt_blocks)
    }

    fn walks_agree(file: Vec<u8>) -> bool {
        let header = FileHeader::decode(&file[..64]).unwrap();
        let storage = MemStorage::with_bytes(file);
        let hasher = KeyHasher::default();
        let one = walk(&storage, header, &hasher, u64::MAX).unwrap();
        let two = walk(&storage, header, &hasher, 0).unwrap();
        assert_eq!(summary(&one), summary(&two));
        !one.found.iter().all(Vec::is_empty)
    }

    fn file_with(blocks: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
        let mut f = FileHeader {
            version: FORMAT_VERSION,
            salt: SALT,
            created_ms: 0,
        }
        .encode()
        .to_vec();
        for b in blocks {
            f.extend(b);
        }
        f
    }

    #[test]
    fn a_walk_in_two_halves_finds_what_one_walk_finds() {
        let mut blocks: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                entry(
                    &i.to_le_bytes(),
                    &vec![i as u8; (i % 300) as usize],
                    u64::from(i),
                )
            })
            .collect();
        blocks[700] = BlockHeader::free(blocks[700].len() as u64)
            .encode(SALT)
            .to_vec();
        blocks[700].resize(entry_block_len(4, 0, 700 % 300) as usize, 0xEE);
        blocks[1500][50] ^= 0x40; // a corrupt payload (its key) in the second half
        assert!(walks_agree(file_with(blocks)));
    }

    #[test]
    fn a_second_walk_started_inside_a_value_is_dropped() {
        // The middle of the file falls inside a large value that holds a
        // block of this very file (with its salt): the second walk starts
        // there, the first walk steps over it, and the result is still the
        // single walk's.
        let fake = entry(b"fake", b"not really an entry", 999);
        let mut value = vec![0x11u8; 64 * 1024];
        // Where the value starts in the file: after the header, block "a"
        // and the big entry's own header and key. The fake goes on an 8-byte
        // boundary just after the middle.
        let value_at = 64 + entry(b"a", b"1", 1).len() + 48 + 3;
        let at = (32 * 1024 + value_at).next_multiple_of(8) - value_at;
        value[at..at + fake.len()].copy_from_slice(&fake);
        let blocks = vec![
            entry(b"a", b"1", 1),
            entry(b"big", &value, 2),
            entry(b"z", b"2", 3),
        ];
        let file = file_with(blocks);
        let header = FileHeader::decode(&file[..64]).unwrap();
        let storage = MemStorage::with_bytes(file.clone());
        let mut w = Walker::with_header(StorageSource(&storage), header);
        let mid = file.len() as u64 / 2;
        let split = w.next_entry_header(mid, u64::MAX).unwrap().unwrap();
        assert!(
            split > 64 + 64 && split < file.len() as u64 - 64,
            "the scan finds the fake header in the value"
        );
        assert!(walks_agree(file));
    }
}
