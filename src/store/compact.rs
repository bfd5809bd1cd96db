//! Online compaction: live entries move from the end of the file into free
//! space nearer its start (the lowest free block that fits), then the free
//! end is cut off. Readers and writers carry on meanwhile.
//!
//! One move: under the entry's shard read lock, check that the index still
//! points at the block and pin it (a reader lock, so it is neither reused nor
//! cut while copied); take a free block that starts before it; write the copy
//! (same sequence number, same expiry) with no lock held. Once a batch of
//! copies is durable, each is published under the shard write lock, but only
//! if the index still points at the old block and its header is unchanged (a
//! concurrent overwrite, delete or `touch` wins: the copy is discarded); then
//! the old block is freed. A crash at any point leaves the old copy, the new
//! one, or both with equal sequence numbers, and on a tie the lower offset
//! (the new copy) wins: nothing is lost or duplicated.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use super::blocks::Moving;
use super::{Inner, is_expired};
use crate::error::{Error, Result};
use crate::format::{BlockHeader, Kind, entry_block_len};

/// What [`Store::compact`](crate::Store::compact) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactStats {
    /// Entries moved towards the start of the file.
    pub moved_entries: usize,
    /// Bytes of the blocks they moved into.
    pub moved_bytes: u64,
    /// How much shorter the file is.
    pub bytes_reclaimed: u64,
    /// The file's length before.
    pub file_len_before: u64,
    /// The file's length after.
    pub file_len_after: u64,
}

/// A copy written but not yet published.
struct Move {
    shard: usize,
    id: u32,
    old_offset: u64,
    old_len: u64,
    new_offset: u64,
    new_len: u64,
    seq: u64,
    expiry: u64,
    key_hash: u64,
}

/// Copies made durable together by one sync.
const BATCH_BYTES: u64 = 8 << 20;
/// Entries made durable together by one sync (`Options::compact_batch`
/// changes it for tests).
pub(crate) const BATCH_ENTRIES: usize = 512;

impl Inner {
    /// `Store::compact`: reports a failure of the background thread first.
    pub(super) fn compact(&self) -> Result<CompactStats> {
        self.check_writable()?;
        self.take_background_error()?;
        self.compact_now()
    }

    /// A compaction (the caller's, or the background thread's).
    pub(super) fn compact_now(&self) -> Result<CompactStats> {
        self.check_writable()?;
        let _one_at_a_time = self.compaction.lock();
        let before = self.storage.len();
        // Old copies waiting for a sync hold space: release them first.
        self.sync_everything()?;
        // Live blocks, last in the file first.
        let mut live: Vec<(u64, usize, u32)> =
            Vec::with_capacity(self.entries.load(Ordering::Relaxed));
        for (s, cell) in self.shards.iter().enumerate() {
            live.extend(
                cell.map
                    .read()
                    .iter()
                    .map(|(id, slot)| (slot.offset(), s, id)),
            );
        }
        live.sort_unstable_by_key(|&(offset, _, _)| std::cmp::Reverse(offset));
        let mut stats = CompactStats {
            file_len_before: before,
            ..CompactStats::default()
        };
        let mut next = live.into_iter().peekable();
        while next.peek().is_some() {
            if *self.stop.lock() {
                // The store is closing: stop between batches (what moved so
                // far stays moved; the rest waits for the next compaction).
                break;
            }
            let _gate = self.gate.read();
            let mut batch: Vec<Move> = Vec::new();
            let mut bytes = 0u64;
            while batch.len() < self.compact_batch && bytes < BATCH_BYTES {
                let Some((offset, shard, id)) = next.next() else {
                    break;
                };
                if !self.blocks.any_free_below(offset) {
                    // No free space before this block, nor before any other left.
                    next = Vec::new().into_iter().peekable();
                    break;
                }
                match self.copy_down(offset, shard, id) {
                    Ok(Some(m)) => {
                        bytes += m.new_len;
                        batch.push(m);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.abandon(batch);
                        return Err(e);
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            // The copies are durable before any old copy is freed.
            if let Err(e) = self.sync_to(self.writes.load(Ordering::Acquire)) {
                self.abandon(batch);
                return Err(e);
            }
            for m in batch {
                if self.finish_move(&m) {
                    stats.moved_entries += 1;
                    stats.moved_bytes += m.new_len;
                }
            }
        }
        drop(next);
        // Under the gate, as every write: a `clear` must not come between
        // the sync and the old copies it frees.
        let _gate = self.gate.read();
        self.trim_tail()?;
        self.sync_to(self.writes.load(Ordering::Acquire))?;
        stats.file_len_after = self.storage.len();
        stats.bytes_reclaimed = before.saturating_sub(stats.file_len_after);
        Ok(stats)
    }

    /// Copies the entry at `offset` (slot `id` of shard `shard`) into a free
    /// block before it. `None` when the entry moved, went away, expired, or no
    /// free block before it fits.
    ///
    /// The shard's read lock is held until the copy is written and listed
    /// with the block owner (`Blocks::register_move`): a writer that then
    /// removes the key (delete, eviction, purge, `clear`) finds the copy
    /// there and frees it before the key's block, so a removed key never
    /// comes back through its copy.
    fn copy_down(&self, offset: u64, shard: usize, id: u32) -> Result<Option<Move>> {
        let cell = &self.shards[shard];
        let map = cell.map.read();
        // The id may be gone: a `clear` between two batches empties the shards.
        let Some(slot) = map.get(id) else {
            return Ok(None);
        };
        if slot.offset() != offset || is_expired(slot.expiry(), self.clock.now_millis()) {
            return Ok(None);
        }
        let Ok(h) = self.header_at(offset) else {
            return Ok(None); // damaged: leave it for the next open
        };
        if h.pending {
            // A member of a batch applied since compaction's first sync,
            // valid only with its commit record: left until a sync settles
            // it (a settled copy could outlive the record in a power loss).
            return Ok(None);
        }
        let (expiry, key) = (slot.expiry(), slot.key.as_bytes().to_vec());
        let key_hash = self.hasher.hash_one(&key);
        let need = entry_block_len(
            usize::from(h.key_len),
            usize::from(h.meta_len),
            h.value_len as usize,
        );
        let target = self
            .blocks
            .allocate_below(need, offset, &self.bio())
            .map_err(|(action, e)| Error::io(&self.path, action, e))?;
        let Some((target_offset, target_len)) = target else {
            return Ok(None);
        };
        let written = (|| {
            let mut payload = vec![0u8; h.payload_len() as usize];
            self.storage
                .read_at(offset + h.key_offset(), &mut payload)?;
            let header = BlockHeader {
                kind: Kind::Entry,
                block_len: target_len,
                ..h
            };
            // With pwrite where there is a map: the batch's sync then has no
            // mapped page to write-protect (see `write_at_before_sync`).
            self.storage
                .write_at_before_sync(target_offset, &[&header.encode(self.salt), &payload])
        })();
        if let Err(e) = written {
            self.release(target_offset, target_len, key_hash);
            return Err(Error::io(&self.path, "moving an entry", e));
        }
        self.note_write();
        // Pinned so that the old block is neither reused nor cut off while
        // the copy waits to be published.
        self.blocks.pin(offset);
        self.blocks.register_move(Moving {
            key,
            key_hash,
            old_offset: offset,
            new_offset: target_offset,
            new_len: target_len,
        });
        drop(map);
        Ok(Some(Move {
            shard,
            id,
            old_offset: offset,
            old_len: h.block_len,
            new_offset: target_offset,
            new_len: target_len,
            seq: h.seq,
            expiry,
            key_hash,
        }))
    }

    /// Takes the move out of the block owner's list; false when a writer
    /// that removed its key has already freed the copy.
    fn take_move(&self, m: &Move) -> bool {
        self.blocks.take_move(m.old_offset, m.new_offset)
    }

    /// Publishes a durable copy if the entry is unchanged, then frees the
    /// block that lost. Returns whether the entry moved.
    fn finish_move(&self, m: &Move) -> bool {
        let cell = &self.shards[m.shard];
        let moved = {
            let mut map = cell.map.write();
            if !self.take_move(m) {
                // The key left the index and its remover freed the copy.
                drop(map);
                self.unpin(m.old_offset);
                return false;
            }
            let unchanged = map
                .get(m.id)
                .is_some_and(|slot| slot.offset() == m.old_offset && slot.expiry() == m.expiry)
                && self
                    .header_at(m.old_offset)
                    .is_ok_and(|h| h.seq == m.seq && h.expiry_ms == m.expiry);
            // The block that lost is retired before the lock goes: a writer
            // that removes the key next frees it first.
            if unchanged {
                map.update(m.key_hash, m.id, m.new_offset, m.expiry);
                self.retire(m.old_offset, m.old_len, m.key_hash, 0);
            } else {
                self.retire(m.new_offset, m.new_len, m.key_hash, 0);
            }
            unchanged
        };
        // Our own reader lock on the old block goes first, so that freeing it
        // below is not deferred to the unpin (which would write the free
        // header through the map; see `write_at_before_sync`).
        self.unpin(m.old_offset);
        let lost = if moved {
            self.live_bytes.fetch_add(m.new_len, Ordering::Relaxed);
            self.live_bytes.fetch_sub(m.old_len, Ordering::Relaxed);
            m.old_offset
        } else {
            m.new_offset
        };
        self.blocks.free_held(lost, true, &self.bio());
        moved
    }

    /// Gives back copies that will not be published.
    fn abandon(&self, batch: Vec<Move>) {
        for m in batch {
            // Under the key's shard lock, so that no writer that removes the
            // key finds the copy gone from the moves and not yet freed.
            let map = self.shards[m.shard].map.write();
            if self.take_move(&m) {
                self.release(m.new_offset, m.new_len, m.key_hash);
            }
            drop(map);
            self.unpin(m.old_offset);
        }
    }

    /// Drops a reader lock; frees the block if it was freed while held.
    pub(super) fn unpin(&self, offset: u64) {
        self.blocks.unpin(offset, &self.bio());
    }

    /// Cuts off all free space at the end of the file (the growth reserve too).
    fn trim_tail(&self) -> Result<()> {
        self.blocks
            .trim_tail(&self.bio())
            .map_err(|e| Error::io(&self.path, "truncating the file", e))
    }
}
