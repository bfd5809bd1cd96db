//! Introspection: `Stats`, and the invariant check the tests call after
//! every step.

use std::sync::atomic::Ordering;

use super::*;

impl Inner {
    pub(super) fn stats(&self) -> Stats {
        let index_bytes = self
            .shards
            .iter()
            .map(|c| {
                c.map.read().memory()
                    + if self.max_entries.is_some() {
                        c.lru.lock().memory()
                    } else {
                        0
                    }
            })
            .sum();
        // Reader locks before the free list, as the lock order says.
        let reader_locked_blocks = self.blocks.pinned_freed();
        let (background_errors, last_background_error) = {
            let b = self.background.lock();
            (b.errors, b.last.clone())
        };
        let (free_blocks, free_bytes, largest_free_block, held) = self
            .blocks
            .with_free(|f, held| (f.free_blocks(), f.free_bytes(), f.largest(), held));
        let events = self.hub.counts();
        let delays = self.expiry_delays.lock().summary();
        Stats {
            expiry_delay_p50: delays.map(|d| d.0),
            expiry_delay_max: delays.map(|d| d.1),
            events_delivered: events.delivered,
            events_dropped: events.dropped,
            subscribers: events.subscribers,
            entries: self.entries.load(Ordering::Relaxed),
            file_len: self.storage.len(),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            free_blocks,
            free_bytes,
            largest_free_block,
            pending_free_bytes: held,
            compactable_bytes: free_bytes + held,
            reader_locked_blocks,
            corrupt_blocks: self.corrupt_blocks,
            corrupt_bytes: self.corrupt_bytes,
            expired_purged: self.expired_purged.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            index_bytes,
            background_errors,
            last_background_error,
        }
    }

    #[cfg(any(test, feature = "testing"))]
    pub(super) fn check_invariants(&self) -> std::result::Result<(), String> {
        use crate::inspect::{BlockKind, Walker};
        use std::collections::HashMap;
        let _gate = self.gate.write();
        let shards: Vec<_> = self.shards.iter().map(|c| c.map.read()).collect();
        let (readers, sp) = self.blocks.lock_for_check();
        let len = self.storage.len();
        if sp.free.end() != len {
            return Err(format!(
                "free list says the file ends at {}, it is {len} bytes",
                sp.free.end()
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.storage
            .read_at(0, &mut bytes)
            .map_err(|e| e.to_string())?;
        // Blocks that are neither live nor in the free list, by offset.
        let mut held: HashMap<u64, u64> = sp.held().collect();
        for r in &readers {
            held.extend(r.iter().filter_map(|(&o, p)| p.freed.map(|l| (o, l))));
        }
        // A held block whose free header could not be written holds anything
        // (zeros, a torn entry, a shorter header): walk it as one block. But
        // a header there claiming more than the block is left for the walk
        // to trip over: the next open would believe it.
        for (&o, &l) in &held {
            let at = o as usize..(o + crate::format::BLOCK_HEADER_LEN) as usize;
            let claims = BlockHeader::decode(&bytes[at.clone()], self.salt, o, len)
                .map_or(0, |h| h.block_len);
            if claims < l {
                bytes[at].copy_from_slice(&BlockHeader::free(l).encode(self.salt));
            }
        }
        let mut w = Walker::new(&bytes[..])
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let mut indexed: HashMap<u64, Vec<u8>> = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            s.check_heap().map_err(|e| format!("shard {i}: {e}"))?;
            for (_, slot) in s.iter() {
                indexed.insert(slot.offset(), slot.key.as_bytes().to_vec());
            }
        }
        let mut disk_free: Vec<(u64, u64)> = Vec::new();
        let mut prev_free_end: Option<u64> = None;
        let mut live_seen = 0usize;
        let mut live_bytes = 0u64;
        while let Some(b) = w.next_block().map_err(|e| e.to_string())? {
            let in_list = sp.free.contains(b.offset, b.len);
            match &b.kind {
                BlockKind::Entry(h) => {
                    prev_free_end = None;
                    if h.pending && !self.read_only && !self.is_unsettled(b.offset, true) {
                        // Settled by the open, or listed until a sync
                        // settles it (see `unsettled`).
                        return Err(format!("batch member at {} still pending", b.offset));
                    }
                    if let Some(k) = indexed.get(&b.offset) {
                        if k.as_slice() != w.key() {
                            return Err(format!("index key at {} differs from the file", b.offset));
                        }
                        live_seen += 1;
                        live_bytes += b.len;
                    } else if held.get(&b.offset) != Some(&b.len) {
                        return Err(format!("entry at {} is neither indexed nor held", b.offset));
                    }
                }
                // A crumb: damage shorter than a header, free in memory only
                // (see the free list's module docs).
                BlockKind::Damaged(_) | BlockKind::Unwritten
                    if in_list && b.len < crate::format::MIN_BLOCK_LEN =>
                {
                    prev_free_end = Some(b.offset + b.len);
                    disk_free.push((b.offset, b.len));
                }
                BlockKind::Free | BlockKind::Unwritten => {
                    if matches!(b.kind, BlockKind::Unwritten)
                        && !(in_list && b.offset >= sp.free.zero_from())
                    {
                        return Err(format!(
                            "unwritten space at {} outside the known-zero tail",
                            b.offset
                        ));
                    }
                    if in_list {
                        if prev_free_end == Some(b.offset) {
                            return Err(format!("free blocks are adjacent at {}", b.offset));
                        }
                        prev_free_end = Some(b.offset + b.len);
                        disk_free.push((b.offset, b.len));
                    } else if held.get(&b.offset) == Some(&b.len) {
                        prev_free_end = None;
                    } else {
                        return Err(format!(
                            "free block {}+{} is not in the free list",
                            b.offset, b.len
                        ));
                    }
                }
                // A batch's commit record, held until a sync covers its
                // settling.
                BlockKind::Commit(..)
                    if held.get(&b.offset) == Some(&b.len)
                        || self.is_unsettled(b.offset, false) =>
                {
                    prev_free_end = None;
                }
                other => return Err(format!("unexpected block at {}: {other:?}", b.offset)),
            }
        }
        if live_bytes != self.live_bytes.load(Ordering::Relaxed) {
            return Err(format!(
                "live bytes counted {} but the indexed blocks hold {live_bytes}",
                self.live_bytes.load(Ordering::Relaxed)
            ));
        }
        if live_seen != indexed.len() {
            return Err(format!(
                "{} index entries, {live_seen} found in the file",
                indexed.len()
            ));
        }
        let list: Vec<(u64, u64)> = sp.free.iter().collect();
        if list != disk_free {
            return Err(format!(
                "free list {list:?} differs from the file's free blocks {disk_free:?}"
            ));
        }
        let n: usize = shards.iter().map(|s| s.len()).sum();
        if n != self.entries.load(Ordering::Relaxed) {
            return Err(format!(
                "entry count {} but {n} in the index",
                self.entries.load(Ordering::Relaxed)
            ));
        }
        Ok(())
    }
}
