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

use std::hash::BuildHasher;
use std::io;

use crate::alloc::FreeList;
use crate::format::{BlockHeader, FILE_HEADER_LEN, FileHeader, MIN_BLOCK_LEN};
use crate::index::{CompactKey, KeyHasher, LruList, SHARDS, Shard, shard_of};
use crate::inspect::{BlockKind, Source, Walker};
use crate::io::Storage;

/// A [`Storage`] read as a [`Source`].
pub(crate) struct StorageSource<'a>(pub &'a dyn Storage);

impl Source for StorageSource<'_> {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }

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
    let mut walker = match Walker::new(StorageSource(storage))? {
        Ok(w) => w,
        Err(e) => {
            return Err(io::Error::other(format!(
                "file header changed during open: {e:?}"
            )));
        }
    };
    // The walk: every entry goes to its shard's list (in file order); the
    // shards' tables are built afterwards, each at its exact size, in
    // parallel (see `build_shard`).
    let mut found: Vec<Vec<Found>> = (0..SHARDS).map(|_| Vec::new()).collect();
    let mut reclaims: Vec<Reclaim> = Vec::new();
    let mut max_seq = 0u64;
    let (mut corrupt_blocks, mut corrupt_bytes) = (0u64, 0u64);

    while let Some(block) = walker.next_block()? {
        let (offset, len) = (block.offset, block.len);
        match block.kind {
            BlockKind::Entry(h) => {
                max_seq = max_seq.max(h.seq);
                let hash = hasher.hash_one(walker.key());
                found[shard_of(hash)].push(Found {
                    key: CompactKey::new(walker.key()),
                    hash,
                    offset,
                    len,
                    seq: h.seq,
                    expiry: h.expiry_ms,
                });
            }
            BlockKind::Free => reclaims.push(Reclaim {
                offset,
                len,
                entry: false,
                free: true,
            }),
            BlockKind::Unwritten => reclaims.push(Reclaim {
                offset,
                len,
                entry: false,
                free: false,
            }),
            BlockKind::CorruptEntry(h) => {
                max_seq = max_seq.max(h.seq);
                corrupt_blocks += 1;
                corrupt_bytes += len;
                reclaims.push(Reclaim {
                    offset,
                    len,
                    entry: true,
                    free: false,
                });
            }
            BlockKind::Damaged(_) => {
                corrupt_blocks += 1;
                corrupt_bytes += len;
                reclaims.push(Reclaim {
                    offset,
                    len,
                    entry: false,
                    free: false,
                });
            }
        }
    }
    let file_len = walker.file_len();
    drop(walker);

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
        let (offset, len) = (slot.offset, meta[s][id as usize].1);
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

    // Merge reclaimed space into runs; write their headers; cut the tail.
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
    let tail = runs.last().copied().filter(|&(o, l, _)| o + l == file_len);
    let mut wrote = false;
    if write {
        for r in &reclaims {
            // Entry headers inside free space are overwritten so that no later
            // scan can take them for live data.
            let in_tail = tail.is_some_and(|(o, _, _)| r.offset >= o);
            if r.entry && !in_tail {
                storage.write_at(r.offset, &[&BlockHeader::free(r.len).encode(salt)])?;
                wrote = true;
            }
        }
        for &(o, l, single) in &runs {
            if tail.is_some_and(|(t, _, _)| t == o) {
                continue;
            }
            // A run shorter than a header (a crumb: damage between two
            // entries) cannot hold one; writing one would overwrite the next
            // entry's header. It is free in memory only, and zeroed on disk,
            // so that later walks read it as unwritten space, not damage.
            if l < MIN_BLOCK_LEN {
                let mut crumb = vec![0u8; l as usize];
                storage.read_at(o, &mut crumb)?;
                if crumb.iter().any(|&b| b != 0) {
                    storage.write_at(o, &[&vec![0u8; l as usize]])?;
                    wrote = true;
                }
            } else if !single {
                storage.write_at(o, &[&BlockHeader::free(l).encode(salt)])?;
                wrote = true;
            }
        }
        if let Some((t, _, _)) = tail {
            storage.set_len(t)?;
            wrote = true;
        }
        if wrote {
            storage.sync()?;
        }
    }
    // The tail run (possibly of any length, for a file cut mid-block) is not
    // free space: it is cut off (or, read-only, ignored).
    let mut free = FreeList::new(FILE_HEADER_LEN, tail.map_or(file_len, |(t, _, _)| t));
    for &(o, l, _) in &runs {
        if tail.is_none_or(|(t, _, _)| o != t) {
            free.free(o, l, u64::MAX);
        }
    }
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
                let old_off = shard.slot(id).offset;
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
