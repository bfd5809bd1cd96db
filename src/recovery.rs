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
use crate::index::{KeyHasher, LruList, SHARDS, Shard, shard_of};
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
    let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
    // Per shard, per slot id: (seq, block_len) of the copy in the index.
    let mut meta: Vec<Vec<(u64, u64)>> = vec![Vec::new(); SHARDS];
    let mut reclaims: Vec<Reclaim> = Vec::new();
    let mut max_seq = 0u64;
    let (mut corrupt_blocks, mut corrupt_bytes, mut expired_freed) = (0u64, 0u64, 0u64);
    let mut entries = 0usize;
    let mut live_bytes = 0u64;

    while let Some(block) = walker.next_block()? {
        let (offset, len) = (block.offset, block.len);
        match block.kind {
            BlockKind::Entry(h) => {
                max_seq = max_seq.max(h.seq);
                // Expired entries take part in choosing the newest copy (an
                // expired newest copy must not let an older one come back);
                // they are dropped once the walk is over.
                let key = walker.key();
                let hash = hasher.hash_one(key);
                let s = shard_of(hash);
                match shards[s].find(hash, key) {
                    None => {
                        let id = shards[s].insert(hasher, hash, key, offset, h.expiry_ms) as usize;
                        if meta[s].len() <= id {
                            meta[s].resize(id + 1, (0, 0));
                        }
                        meta[s][id] = (h.seq, len);
                        entries += 1;
                        live_bytes += len;
                    }
                    Some(id) => {
                        let (old_seq, old_len) = meta[s][id as usize];
                        let old_off = shards[s].slot(id).offset;
                        // Higher sequence number wins; on a tie, the lower offset.
                        if (h.seq, std::cmp::Reverse(offset))
                            > (old_seq, std::cmp::Reverse(old_off))
                        {
                            shards[s].update(id, offset, h.expiry_ms);
                            meta[s][id as usize] = (h.seq, len);
                            live_bytes = live_bytes - old_len + len;
                            reclaims.push(Reclaim {
                                offset: old_off,
                                len: old_len,
                                entry: true,
                                free: false,
                            });
                        } else {
                            reclaims.push(Reclaim {
                                offset,
                                len,
                                entry: true,
                                free: false,
                            });
                        }
                    }
                }
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

    for (s, shard) in shards.iter_mut().enumerate() {
        for id in shard.expired(now_ms, usize::MAX) {
            let slot = shard.slot(id);
            let (offset, len) = (slot.offset, meta[s][id as usize].1);
            let hash = hasher.hash_one(slot.key.as_bytes());
            shard.remove(hash, id);
            reclaims.push(Reclaim {
                offset,
                len,
                entry: true,
                free: false,
            });
            entries -= 1;
            live_bytes -= len;
            expired_freed += 1;
        }
    }

    // LRU order after a reopen is the order of writes (sequence numbers).
    let mut evicted = 0u64;
    let mut next_stamp = 1u64;
    let lru = match max_entries {
        None => None,
        Some(cap) => {
            let mut order: Vec<(u64, u32, u32)> = Vec::with_capacity(entries);
            for (s, shard) in shards.iter().enumerate() {
                for (id, _) in shard.iter() {
                    order.push((meta[s][id as usize].0, s as u32, id));
                }
            }
            order.sort_unstable();
            let excess = order.len().saturating_sub(cap);
            for &(_, s, id) in &order[..excess] {
                let s = s as usize;
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
