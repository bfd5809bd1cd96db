//! Writes: put, touch, delete, eviction, purge, clear, and the allocation and
//! freeing of blocks they do. The order of each step is what keeps an
//! acknowledged write through a crash (see the module docs of `store`).

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use super::*;

impl Inner {
    pub(super) fn put(&self, key: &[u8], value: &[u8], meta: &[u8], expiry: Expiry) -> Result<()> {
        self.check_writable()?;
        for (what, len, max) in [
            ("key", key.len(), MAX_KEY_LEN),
            ("value", value.len(), MAX_VALUE_LEN),
            ("metadata", meta.len(), MAX_META_LEN),
        ] {
            if len > max {
                return Err(Error::TooLarge {
                    path: self.path.clone(),
                    what,
                    len,
                    max,
                });
            }
        }
        let expiry_ms = self.expiry_ms(expiry);
        if !matches!(expiry, Expiry::Never)
            && (expiry_ms == 0 || is_expired(expiry_ms, self.clock.now_millis()))
        {
            // Already past: the entry would be invisible from the start.
            self.delete(key)?;
            return Ok(());
        }
        let payload_crc = crc(self.salt, &[key, meta, value]);
        let _gate = self.gate.read();
        if let Some(cap) = self.max_entries
            && !self.indexed(key)
        {
            // Room first: were the new entry written before the eviction, a
            // crash in between would leave one entry too many, and an open
            // evicts by write order, not by use.
            self.evict_down_to(cap - 1)?;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let need = entry_block_len(key.len(), meta.len(), value.len());
        let (offset, len) = self.allocate(need)?;
        let header = BlockHeader {
            kind: Kind::Entry,
            block_len: len,
            key_len: key.len() as u16,
            meta_len: meta.len() as u16,
            value_len: value.len() as u32,
            seq,
            expiry_ms,
            payload_crc,
        };
        if let Err(e) = self
            .storage
            .write_at(offset, &[&header.encode(self.salt), key, meta, value])
        {
            self.release(offset, len, self.hasher.hash_one(key));
            return Err(Error::io(&self.path, "writing an entry", e));
        }
        let generation = self.note_write();
        if self.policy == SyncPolicy::Always
            && let Err(e) = self.sync_to(generation)
        {
            // Not durable: take it back so memory and file agree. Should even
            // that write fail, the copy stays valid on disk with the newest
            // sequence number: it is published, so that memory still matches
            // the file (the error leaves it open whether the put happened).
            if self.mark_free(offset, len).is_ok() {
                self.return_space(offset, len);
            } else {
                self.publish(key, offset, len, seq, expiry_ms, generation)?;
            }
            return Err(e);
        }
        let inserted = self.publish(key, offset, len, seq, expiry_ms, generation)?;
        if inserted && let Some(cap) = self.max_entries {
            // Concurrent inserts may still have gone past the cap.
            self.evict_down_to(cap)?;
        }
        self.maybe_sync_for_space()?;
        Ok(())
    }

    /// An expiry in milliseconds since the epoch (0 = never), clamped to
    /// what the format can store.
    pub(super) fn expiry_ms(&self, expiry: Expiry) -> u64 {
        let ms = match expiry {
            Expiry::Never => return 0,
            Expiry::After(ttl) => {
                let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                self.clock.now_millis().saturating_add(ttl).max(0) as u64
            }
            Expiry::At(at) => system_time_to_millis(at).max(0) as u64,
        };
        ms.min(MAX_EXPIRY_MS)
    }

    pub(super) fn touch(&self, key: &[u8], expiry: Expiry) -> Result<bool> {
        self.check_writable()?;
        let now = self.clock.now_millis();
        let expiry_ms = self.expiry_ms(expiry);
        if expiry_ms == 0 || is_expired(expiry_ms, now) {
            // Renewed into the past: the entry expires now (if it is there).
            return if self.contains(key) {
                self.delete(key)
            } else {
                Ok(false)
            };
        }
        let _gate = self.gate.read();
        let (hash, cell) = self.locate(key);
        let mut shard = cell.map.write();
        let Some(id) = shard.find(hash, key) else {
            return Ok(false);
        };
        let slot = shard.slot(id);
        let offset = slot.offset;
        if is_expired(slot.expiry, now) {
            return Ok(false);
        }
        let h = self.header_at(offset)?;
        if !self.readers.is_pinned(offset) {
            // In place: one atomic word; readers are kept out by the shard lock.
            let word = expiry_word(expiry_ms, self.salt, h.seq);
            self.storage
                .write_word(offset + EXPIRY_WORD_OFFSET, word)
                .map_err(self.io("renewing an expiry"))?;
            let generation = self.note_write();
            shard.update(hash, id, offset, expiry_ms);
            self.touch_lru(cell, id);
            drop(shard);
            if self.policy == SyncPolicy::Always {
                self.sync_to(generation)?;
            }
            return Ok(true);
        }
        // A reader holds the block (possibly a compaction copying it, whose
        // copy has the same sequence number): write a new copy with a new
        // sequence number, under the shard lock so no other write of the key
        // comes between the read and the write.
        let mut payload = vec![0u8; h.payload_len() as usize];
        self.storage
            .read_at(offset + h.key_offset(), &mut payload)
            .map_err(self.io("reading an entry"))?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let need = entry_block_len(
            usize::from(h.key_len),
            usize::from(h.meta_len),
            h.value_len as usize,
        );
        let (new_offset, new_len) = self.allocate(need)?;
        let header = BlockHeader {
            block_len: new_len,
            seq,
            expiry_ms,
            ..h
        };
        if let Err(e) = self
            .storage
            .write_at(new_offset, &[&header.encode(self.salt), &payload])
        {
            self.release(new_offset, new_len, hash);
            return Err(Error::io(&self.path, "writing an entry", e));
        }
        let generation = self.note_write();
        if self.policy == SyncPolicy::Always
            && let Err(e) = self.sync_to(generation)
        {
            self.release(new_offset, new_len, hash);
            return Err(e);
        }
        shard.update(hash, id, new_offset, expiry_ms);
        self.touch_lru(cell, id);
        drop(shard);
        self.live_bytes.fetch_add(new_len, Ordering::Relaxed);
        self.live_bytes.fetch_sub(h.block_len, Ordering::Relaxed);
        self.supersede(offset, h.block_len, generation, hash);
        Ok(true)
    }

    /// Puts a written block in the index. Returns whether the key is new.
    pub(super) fn publish(
        &self,
        key: &[u8],
        offset: u64,
        len: u64,
        seq: u64,
        expiry_ms: u64,
        generation: u64,
    ) -> Result<bool> {
        let (hash, cell) = self.locate(key);
        let mut shard = cell.map.write();
        match shard.find(hash, key) {
            Some(id) => {
                let old_offset = shard.slot(id).offset;
                let old = self.header_at(old_offset);
                if let Ok(h) = &old
                    && h.seq > seq
                {
                    // A concurrent write of this key with a later sequence
                    // number got here first; it wins, here and on disk.
                    drop(shard);
                    self.release(offset, len, hash);
                    return Ok(false);
                }
                shard.update(hash, id, offset, expiry_ms);
                self.touch_lru(cell, id);
                drop(shard);
                match old {
                    Ok(h) => {
                        self.live_bytes.fetch_add(len, Ordering::Relaxed);
                        self.live_bytes.fetch_sub(h.block_len, Ordering::Relaxed);
                        self.supersede(old_offset, h.block_len, generation, hash);
                    }
                    // The old copy is damaged: leave it for the next open to reclaim.
                    Err(_) => {
                        self.live_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                }
                Ok(false)
            }
            None if shard.len() >= crate::index::MAX_SHARD_ENTRIES => {
                drop(shard);
                self.release(offset, len, hash);
                Err(Error::TooLarge {
                    path: self.path.clone(),
                    what: "number of entries (one of the index's 64 shards is full)",
                    len: crate::index::MAX_SHARD_ENTRIES + 1,
                    max: crate::index::MAX_SHARD_ENTRIES,
                })
            }
            None => {
                let id = shard.insert(&self.hasher, hash, key, offset, expiry_ms);
                self.touch_lru(cell, id);
                self.entries.fetch_add(1, Ordering::AcqRel);
                self.live_bytes.fetch_add(len, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    /// The old copy of an overwritten key: freed now if the new copy is
    /// durable, else after the next sync.
    pub(super) fn supersede(&self, offset: u64, len: u64, generation: u64, key_hash: u64) {
        if self.policy == SyncPolicy::Always {
            if !self.release(offset, len, key_hash) {
                return; // it waits, still valid, in pending
            }
            let generation = self.writes.load(Ordering::Acquire);
            self.space
                .lock()
                .unsynced_frees
                .push((key_hash, generation));
        } else {
            let mut sp = self.space.lock();
            sp.pending.push(Superseded {
                generation,
                offset,
                len,
                key_hash,
            });
            sp.pending_bytes += len;
        }
    }

    /// Syncs on its own when old copies waiting for a sync hold too much space.
    pub(super) fn maybe_sync_for_space(&self) -> Result<()> {
        let (pending, end) = {
            let sp = self.space.lock();
            (sp.pending_bytes, sp.free.end())
        };
        if pending > (1 << 20).max(end / 8) {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Takes a block of at least `need` bytes from the free list, growing the
    /// file when nothing fits.
    pub(super) fn allocate(&self, need: u64) -> Result<(u64, u64)> {
        let mut sp = self.space.lock();
        let old_end = sp.free.end();
        let reserve = growth_reserve(old_end);
        let mut a = sp.free.allocate(need, self.frag, reserve);
        if let Some(new_end) = a.grow_to {
            if new_end > crate::index::MAX_FILE_LEN {
                sp.free.undo_growth(&a, old_end);
                return Err(Error::TooLarge {
                    path: self.path.clone(),
                    what: "file",
                    len: new_end as usize,
                    max: crate::index::MAX_FILE_LEN as usize,
                });
            }
            let mut grown = self.storage.set_len(new_end);
            if grown.is_err() && reserve > 0 {
                // The disk may have room for the entry without the reserve.
                sp.free.undo_growth(&a, old_end);
                a = sp.free.allocate(need, self.frag, 0);
                grown = self.storage.set_len(a.grow_to.unwrap_or(old_end));
            }
            if let Err(e) = grown {
                sp.free.undo_growth(&a, old_end);
                return Err(Error::io(&self.path, "extending the file", e));
            }
            self.note_write();
        }
        if let Some((o, l)) = a.remainder {
            // Before anyone can allocate it, the remainder gets its header.
            // Free space without one would make memory and file disagree (and
            // whatever stale bytes lie there would be read as the block's
            // header), so a failure undoes the allocation: the block is free
            // again, as its header says. Space that is still all zeros reads
            // as free without a header, and needs none.
            if !a.remainder_zeroed {
                let written = self
                    .storage
                    .write_at(o, &[&BlockHeader::free(l).encode(self.salt)]);
                if let Err(e) = written {
                    if a.grow_to.is_some() {
                        sp.free.undo_growth(&a, old_end);
                        if self.storage.set_len(old_end).is_ok() {
                            self.note_write();
                        }
                    } else {
                        sp.free.free(a.offset, a.len, u64::MAX);
                    }
                    return Err(Error::io(&self.path, "writing a free block header", e));
                }
                self.note_write();
            }
            if a.grow_to.is_none() && !a.block_zeroed {
                // The split block's own header still gives the length of the
                // whole free block, the remainder included. Were the entry's
                // write to fail and the free header meant to take its place
                // too, that stale header would stay and, once the remainder
                // holds entries, the next open would skip them as free space.
                // So it gets its true length now. (A block carved from
                // all-zero space has no header to go stale.)
                let written = self
                    .storage
                    .write_at(a.offset, &[&BlockHeader::free(a.len).encode(self.salt)]);
                if let Err(e) = written {
                    sp.free.free(a.offset, a.len, u64::MAX);
                    return Err(Error::io(&self.path, "writing a free block header", e));
                }
                self.note_write();
            }
        }
        Ok((a.offset, a.len))
    }

    /// Frees a block nobody indexes any more (an old copy of the key with
    /// this hash, or a copy never published): overwrites its header, then
    /// returns its space. If the header cannot be written the block may still
    /// hold a valid copy, so it waits with the old copies (see `Space`).
    /// Returns whether the free header was written.
    pub(super) fn release(&self, offset: u64, len: u64, key_hash: u64) -> bool {
        self.release_with(offset, len, key_hash, false)
    }

    /// [`release`](Self::release); with `before_sync`, the free header is
    /// written with [`Storage::write_at_before_sync`](crate::io::Storage::write_at_before_sync).
    pub(super) fn release_with(
        &self,
        offset: u64,
        len: u64,
        key_hash: u64,
        before_sync: bool,
    ) -> bool {
        if self.mark_free_with(offset, len, before_sync).is_ok() {
            if !self.readers.defer_if_pinned(offset, len) {
                self.return_unpinned_with(offset, len, before_sync);
            }
            true
        } else {
            let mut sp = self.space.lock();
            sp.pending.push(Superseded {
                generation: 0,
                offset,
                len,
                key_hash,
            });
            sp.pending_bytes += len;
            false
        }
    }

    pub(super) fn mark_free(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.mark_free_with(offset, len, false)
    }

    fn mark_free_with(&self, offset: u64, len: u64, before_sync: bool) -> std::io::Result<()> {
        let header = BlockHeader::free(len).encode(self.salt);
        if before_sync {
            self.storage.write_at_before_sync(offset, &[&header])?;
        } else {
            self.storage.write_at(offset, &[&header])?;
        }
        self.note_write();
        Ok(())
    }

    /// Puts a block (whose header already says free) back in the free list,
    /// unless a reader holds it; merges; cuts the end of the file.
    pub(super) fn return_space(&self, offset: u64, len: u64) {
        if !self.readers.defer_if_pinned(offset, len) {
            self.return_unpinned_space(offset, len);
        }
    }

    /// `return_space` for a block known not to be pinned.
    pub(super) fn return_unpinned_space(&self, offset: u64, len: u64) {
        self.return_unpinned_with(offset, len, false);
    }

    /// [`return_unpinned_space`](Self::return_unpinned_space); with
    /// `before_sync`, a merged free header is written as in
    /// [`release_with`](Self::release_with).
    fn return_unpinned_with(&self, offset: u64, len: u64, before_sync: bool) {
        let mut sp = self.space.lock();
        let end = sp.free.end();
        let f = sp.free.free(offset, len, 2 * growth_reserve(end));
        if let Some(t) = f.truncate_to {
            if self.storage.set_len(t).is_ok() {
                self.note_write();
                return;
            }
            sp.free.undo_truncate(f.offset, f.len);
        }
        if (f.offset, f.len) != (offset, len)
            && self.mark_free_with(f.offset, f.len, before_sync).is_err()
        {
            // The merged header did not make it: on disk the neighbours are
            // still free blocks of their own. Memory says the same: they stay
            // free as they were, and this block, free on disk, waits with the
            // old copies to be merged again after the next sync.
            sp.free.withdraw(offset, len);
            sp.pending.push(Superseded {
                generation: 0,
                offset,
                len,
                key_hash: 0,
            });
            sp.pending_bytes += len;
        }
    }

    pub(super) fn delete(&self, key: &[u8]) -> Result<bool> {
        self.check_writable()?;
        let _gate = self.gate.read();
        let (hash, cell) = self.locate(key);
        let mut shard = loop {
            self.settle_old_copies(hash)?;
            let shard = cell.map.write();
            if self.unsettled(hash).is_none() {
                break shard;
            }
        };
        let Some(id) = shard.find(hash, key) else {
            return Ok(false);
        };
        let slot = shard.slot(id);
        let (offset, expiry) = (slot.offset, slot.expiry);
        let visible = expiry == 0 || !is_expired(expiry, self.clock.now_millis());
        let freed = self.unindex(&mut shard, cell, hash, id, offset)?;
        drop(shard);
        if let Some(len) = freed {
            self.return_space(offset, len);
        }
        if self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(visible)
    }

    /// The write generation a sync must reach before the newest copy of the
    /// key with this hash may be freed (see `Space::unsynced_frees`).
    pub(super) fn unsettled(&self, hash: u64) -> Option<u64> {
        let sp = self.space.lock();
        sp.unsynced_frees
            .iter()
            .filter(|f| f.0 == hash)
            .map(|f| f.1)
            .max()
    }

    /// Syncs, if needed, so that the newest copy of the key with this hash
    /// may be freed. Call it with no shard lock held.
    pub(super) fn settle_old_copies(&self, hash: u64) -> Result<()> {
        match self.unsettled(hash) {
            Some(g) => self.sync_to(g),
            None => Ok(()),
        }
    }

    /// Removes slot `id` from the index after marking its block free on disk
    /// (so the removal is on disk before it is in memory). Returns the block
    /// length to return to the free list (`None` if the block is damaged and
    /// is left for the next open).
    pub(super) fn unindex(
        &self,
        shard: &mut Shard,
        cell: &ShardCell,
        hash: u64,
        id: u32,
        offset: u64,
    ) -> Result<Option<u64>> {
        // Older copies first: were the newest freed first, a crash in between
        // would bring an older value back.
        let key = shard.slot(id).key.clone();
        self.release_superseded_copies(hash, key.as_bytes())?;
        let len = match self.header_at(offset) {
            Ok(h) => {
                self.mark_free(offset, h.block_len)
                    .map_err(self.io("freeing an entry"))?;
                Some(h.block_len)
            }
            Err(_) => None,
        };
        shard.remove(hash, id);
        if self.max_entries.is_some() {
            let mut lru = cell.lru.lock();
            lru.remove(id);
            self.publish_oldest(cell, &lru);
        }
        self.entries.fetch_sub(1, Ordering::AcqRel);
        if let Some(l) = len {
            self.live_bytes.fetch_sub(l, Ordering::Relaxed);
        }
        Ok(len)
    }

    /// Frees old copies of a key that has just left the index: with the key
    /// gone they protect nothing, and left valid on disk they would bring an
    /// old value back after a crash.
    /// Fails, keeping the copies it could not free, when a free header cannot
    /// be written: the caller must then not free the newest copy.
    pub(super) fn release_superseded_copies(&self, hash: u64, key: &[u8]) -> Result<()> {
        let mine: Vec<Superseded> = {
            let mut sp = self.space.lock();
            if sp.pending.is_empty() {
                return Ok(());
            }
            let mut mine = Vec::new();
            let mut kb = vec![0u8; key.len()];
            let mut i = 0;
            while i < sp.pending.len() {
                let p = &sp.pending[i];
                let same = p.key_hash == hash
                    && self
                        .storage
                        .read_at(p.offset + crate::format::BLOCK_HEADER_LEN, &mut kb)
                        .is_ok()
                    && kb == key;
                if same {
                    mine.push(sp.pending.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            sp.pending_bytes -= mine.iter().map(|m| m.len).sum::<u64>();
            mine
        };
        let mut left = mine.into_iter();
        while let Some(p) = left.next() {
            if let Err(e) = self.mark_free(p.offset, p.len) {
                // Still valid on disk: keep them waiting, as before.
                let mut sp = self.space.lock();
                for p in std::iter::once(p).chain(left) {
                    sp.pending_bytes += p.len;
                    sp.pending.push(p);
                }
                return Err(Error::io(&self.path, "freeing an old copy of an entry", e));
            }
            self.return_space(p.offset, p.len);
        }
        Ok(())
    }

    /// Whether `key` is in the index (expired or not).
    pub(super) fn indexed(&self, key: &[u8]) -> bool {
        let (hash, cell) = self.locate(key);
        cell.map.read().find(hash, key).is_some()
    }

    /// Evicts least recently used entries until at most `n` remain. Under
    /// `SyncPolicy::Always` the evictions are durable when it returns.
    pub(super) fn evict_down_to(&self, n: usize) -> Result<()> {
        let mut evicted = false;
        while self.entries.load(Ordering::Acquire) > n {
            if !self.evict_one()? {
                break;
            }
            evicted = true;
        }
        if evicted && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Evicts the least recently used entry of the whole store. Returns false
    /// when there is none.
    pub(super) fn evict_one(&self) -> Result<bool> {
        loop {
            let (s, stamp) = self
                .lru_oldest
                .iter()
                .map(|a| a.load(Ordering::Acquire))
                .enumerate()
                .min_by_key(|&(_, st)| st)
                .expect("shards");
            if stamp == u64::MAX {
                return Ok(false);
            }
            let cell = &self.shards[s];
            let mut shard = cell.map.write();
            let Some((id, now_oldest)) = cell.lru.lock().oldest() else {
                continue; // emptied meanwhile: look again
            };
            if now_oldest != stamp {
                continue; // used or removed meanwhile: look again
            }
            let slot = shard.slot(id);
            let offset = slot.offset;
            let hash = self.hasher.hash_one(slot.key.as_bytes());
            if let Some(g) = self.unsettled(hash) {
                drop(shard);
                self.sync_to(g)?;
                continue;
            }
            let freed = self.unindex(&mut shard, cell, hash, id, offset)?;
            drop(shard);
            if let Some(len) = freed {
                self.return_space(offset, len);
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
    }

    pub(super) fn purge(&self) -> Result<usize> {
        self.check_writable()?;
        let _gate = self.gate.read();
        let now = self.clock.now_millis();
        let mut purged = 0usize;
        for cell in self.shards.iter() {
            if cell
                .map
                .read()
                .earliest_expiry()
                .is_none_or(|e| !is_expired(e, now))
            {
                continue;
            }
            // Entries whose old copies' free headers need a sync first are
            // left for another pass after that sync.
            let mut wait = Some(0);
            while let Some(g) = wait.take() {
                let mut result = if g > 0 { self.sync_to(g) } else { Ok(()) };
                let mut shard = cell.map.write();
                let mut freed = Vec::new();
                for id in shard.expired(now, usize::MAX) {
                    if result.is_err() {
                        break;
                    }
                    let slot = shard.slot(id);
                    let offset = slot.offset;
                    let hash = self.hasher.hash_one(slot.key.as_bytes());
                    if let Some(g) = self.unsettled(hash) {
                        wait = Some(wait.unwrap_or(0).max(g));
                        continue;
                    }
                    match self.unindex(&mut shard, cell, hash, id, offset) {
                        Ok(len) => {
                            purged += 1;
                            if let Some(l) = len {
                                freed.push((offset, l));
                            }
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                drop(shard);
                for (o, l) in freed {
                    self.return_space(o, l);
                }
                if let Err(e) = result {
                    self.expired_purged
                        .fetch_add(purged as u64, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.expired_purged
            .fetch_add(purged as u64, Ordering::Relaxed);
        if purged > 0 && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(purged)
    }

    pub(super) fn clear(&self) -> Result<()> {
        self.check_writable()?;
        let _gate = self.gate.write();
        // No writer runs now: settle every old copy before freeing entries.
        let unsettled = self.space.lock().unsynced_frees.iter().map(|f| f.1).max();
        if let Some(g) = unsettled {
            self.sync_to(g)?;
        }
        let mut shards: Vec<_> = self.shards.iter().map(|c| c.map.write()).collect();
        if self.readers.is_empty() {
            // Nothing is borrowed: cut the file back to its header.
            let mut sp = self.space.lock();
            self.storage
                .set_len(FILE_HEADER_LEN)
                .map_err(self.io("truncating the file"))?;
            self.note_write();
            sp.free.reset(FILE_HEADER_LEN);
            sp.pending.clear();
            sp.pending_bytes = 0;
            drop(sp);
            for (shard, cell) in shards.iter_mut().zip(self.shards.iter()) {
                shard.clear();
                let mut lru = cell.lru.lock();
                lru.clear();
                self.publish_oldest(cell, &lru);
            }
            self.entries.store(0, Ordering::Release);
            self.live_bytes.store(0, Ordering::Release);
        } else {
            // Readers hold some blocks: free entry by entry; held blocks are
            // returned when their readers drop.
            let mut freed = Vec::new();
            for (shard, cell) in shards.iter_mut().zip(self.shards.iter()) {
                let live: Vec<(u32, u64)> = shard.iter().map(|(id, s)| (id, s.offset)).collect();
                for (id, offset) in live {
                    let hash = self.hasher.hash_one(shard.slot(id).key.as_bytes());
                    if let Some(l) = self.unindex(shard, cell, hash, id, offset)? {
                        freed.push((offset, l));
                    }
                }
            }
            drop(shards);
            for (o, l) in freed {
                self.return_space(o, l);
            }
            let pending: Vec<_> = {
                let mut sp = self.space.lock();
                sp.pending_bytes = 0;
                sp.pending.drain(..).collect()
            };
            for p in pending {
                self.release(p.offset, p.len, p.key_hash);
            }
        }
        if self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }
}
