//! Writes: put, touch, delete, eviction, purge, clear, and the allocation and
//! freeing of blocks they do. The order of each step is what keeps an
//! acknowledged write through a crash (see the module docs of `store`).

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use super::blocks::{AllocError, Moving};
use super::*;
use crate::events::Event;

/// What [`Inner::publish`] did with a written block.
pub(super) enum Published {
    /// The key was not in the index.
    New,
    /// The block replaced the key's older copy.
    Replaced,
    /// The index holds a copy with a later sequence number; nothing changed.
    Outranked,
    /// A conditional write's block was freed by a remover of its key.
    Removed,
}

/// The metadata and expiry of a write: given, or kept from the key's entry
/// (none for a new key).
#[derive(Clone, Copy)]
pub(super) enum Fields<'a> {
    Given(&'a [u8], Expiry),
    Kept,
}

/// Room for one new key under the entry cap, held until the insert is done
/// (see [`Inner::make_room`]).
pub(super) struct Room<'a> {
    inner: &'a Inner,
    /// The key, when this insert holds (or shares) room.
    key: Option<Vec<u8>>,
}

/// Room under the entry cap for one new key, counted once in `claimed`
/// however many inserts of that key share it.
pub(super) struct RoomSlot {
    key: Vec<u8>,
    holders: usize,
    /// The key went in as a new entry: the room is its place now.
    used: bool,
}

/// The rooms made for a batch's new keys, by key.
pub(super) type BatchRooms<'a> = Vec<(Vec<u8>, Room<'a>)>;

/// The inserts in flight under an entry cap (`Inner::inserting`).
#[derive(Default)]
pub(super) struct Inserting {
    /// Room held for new keys, one slot per key.
    rooms: Vec<RoomSlot>,
    /// The keys of the batches in flight: evicted by nobody until their
    /// batch is done (a batch counts on its keys, the one it deletes among
    /// them to make room for its new ones).
    pinned: Vec<Vec<u8>>,
    /// For each key of `pinned`, the ticket of the batch that pinned it.
    pinned_by: Vec<u64>,
    /// The next batch's ticket: batches are ordered by age, so that two
    /// batches short of room only because of each other's keys do not wait
    /// for each other (see `BatchRoom::Blocked`).
    next_ticket: u64,
}

impl Inserting {
    /// Whether an insert holds room it has not used yet.
    fn rooms_in_flight(&self) -> bool {
        self.rooms.iter().any(|s| !s.used)
    }
}

/// A batch's keys kept from eviction until it drops (see
/// [`Inserting::pinned`]).
pub(super) struct Pins<'a> {
    inner: &'a Inner,
    keys: Vec<Vec<u8>>,
    ticket: u64,
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        let mut ins = self.inner.inserting.lock();
        for k in &self.keys {
            if let Some(i) = (0..ins.pinned.len())
                .find(|&i| ins.pinned_by[i] == self.ticket && ins.pinned[i] == *k)
            {
                ins.pinned.swap_remove(i);
                ins.pinned_by.swap_remove(i);
            }
        }
        self.inner.room_changed.notify_all();
    }
}

/// What [`Inner::make_batch_room`] found.
pub(super) enum BatchRoom<'a> {
    /// The room is made.
    Made(BatchRooms<'a>),
    /// Short only because inserts in flight hold room: give back every room,
    /// wait for them ([`Inner::wait_for_inserts`]) and ask again.
    WaitForInserts,
    /// Short only because the keys of other batches in flight are kept from
    /// eviction, all of them younger than this one (these tickets): give back
    /// every room, wait for one of them to be done (`Inner::wait_for_pins`) and ask
    /// again, keeping this batch's own keys (those batches do not wait for
    /// it: see `Restart`).
    WaitForYounger(Vec<u64>),
    /// Short because of the keys of an older batch in flight (with these
    /// tickets), which may itself be waiting for this batch's keys: let go
    /// of everything (rooms, keys, key locks), wait until those batches are
    /// done (`Inner::wait_for_batches`), and start again. Waits between
    /// batches then always go from older to younger: no cycle.
    Restart(Vec<u64>),
}

impl Room<'_> {
    fn holds(&self) -> bool {
        self.key.is_some()
    }

    /// The key went in as a new entry: its room is taken for good.
    fn used(&self) {
        if let Some(k) = &self.key
            && let Some(slot) = self
                .inner
                .inserting
                .lock()
                .rooms
                .iter_mut()
                .find(|s| &s.key == k)
        {
            slot.used = true;
            self.inner.room_changed.notify_all();
        }
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        let Some(k) = &self.key else {
            return;
        };
        let mut ins = self.inner.inserting.lock();
        let Some(i) = ins.rooms.iter().position(|s| &s.key == k) else {
            return;
        };
        ins.rooms[i].holders -= 1;
        if ins.rooms[i].holders == 0 && !ins.rooms.swap_remove(i).used {
            self.inner.claimed.fetch_sub(1, Ordering::AcqRel);
            self.inner.room_changed.notify_all();
        }
    }
}

impl Inner {
    pub(super) fn put(&self, key: &[u8], value: &[u8], meta: &[u8], expiry: Expiry) -> Result<()> {
        // Unconditional: no comparison to fail.
        self.put_cond(key, value, Fields::Given(meta, expiry), None)
            .map(|_| ())
    }

    /// Writes `key` (see [`Store::put`]), or, when `expect` is given, only
    /// if the key's visible value is `expect` (`None`: absent or expired);
    /// otherwise it writes nothing and returns the current value.
    ///
    /// How a conditional write stays linearizable: it holds its key's write
    /// lock (`key_lock`) from its comparison to its publication, and every
    /// other write of the key (put, delete, touch) takes that lock, so none
    /// comes between. What remains are removals not asked for by key:
    /// eviction and purge of expired entries (clear waits for the gate).
    /// - Expecting a value: the comparison is made again, and the block
    ///   written and registered with the block owner (as a compaction copy
    ///   is), under the shard's read lock, which every remover takes to
    ///   write. A remover that comes later frees the new block with the
    ///   key's other copies (durably, as it frees them); the write then
    ///   takes effect just after that removal, finds the key absent, and
    ///   fails. (Taking effect before it would not do: the removal chose the
    ///   key by its place in the least-recently-used order, or by its
    ///   expiry, which the write would have changed.)
    /// - Expecting absence: a removal meanwhile leaves the key absent, so the
    ///   comparison still holds and the write is published as new.
    pub(super) fn put_cond(
        &self,
        key: &[u8],
        value: &[u8],
        fields: Fields<'_>,
        expect: Option<Option<&[u8]>>,
    ) -> Result<std::result::Result<(), Option<Vec<u8>>>> {
        self.check_writable()?;
        let meta_len = match fields {
            Fields::Given(meta, _) => meta.len(),
            Fields::Kept => 0,
        };
        self.check_sizes(key.len(), value.len(), meta_len)?;
        if let Fields::Given(_, expiry) = fields {
            let expiry_ms = self.expiry_ms(expiry);
            if !matches!(expiry, Expiry::Never)
                && (expiry_ms == 0 || is_expired(expiry_ms, self.clock.now_millis()))
            {
                // Already past: the entry would be invisible from the start.
                return Ok(self.delete_cond(key, expect)?.map(|_| ()));
            }
        }
        // Before the gate: its events are handed over after the gate is let go.
        let mut notes = Notes::new(&self.hub);
        let _gate = self.gate.read();
        let hash = self.hasher.hash_one(key);
        let _key = self.key_lock(hash);
        let (hash, cell) = self.locate(key);
        let mut kept_meta = Vec::new();
        let (meta, expiry_ms) = match fields {
            Fields::Given(meta, expiry) => (meta, self.expiry_ms(expiry)),
            Fields::Kept => {
                // Stable until this put publishes: every write of the key
                // holds its lock; a removal makes it a new key, which keeps
                // nothing either way.
                let shard = cell.map.read();
                let expiry = match self.lookup(&shard, hash, key)? {
                    Some((_, offset, h)) => {
                        kept_meta = self.meta_at(key, offset, &h)?;
                        h.expiry_ms
                    }
                    None => 0,
                };
                (kept_meta.as_slice(), expiry)
            }
        };
        self.check_sizes(key.len(), value.len(), meta.len())?;
        if let Some(e) = expect {
            let current = self.visible_value(&cell.map.read(), hash, key)?;
            if current.as_deref() != e {
                return Ok(Err(current));
            }
        }
        let payload_crc = crc(self.salt, &[key, meta, value]);
        let room = match self.max_entries {
            // Room first: were the new entry written before the eviction, a
            // crash in between would leave one entry too many, and an open
            // evicts by write order, not by use.
            Some(cap) if !self.indexed(key) => {
                self.storage.point("put: room");
                Some(self.make_room(cap, key, &mut notes)?)
            }
            _ => None,
        };
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
            pending: false,
        };
        let parts: [&[u8]; 4] = [&header.encode(self.salt), key, meta, value];
        // A claim on the new block that a remover of the key can take (see
        // above): the sequence number, with the top bit set.
        let claim = matches!(expect, Some(Some(_))).then_some(seq | 1 << 63);
        let written = match (expect, claim) {
            (Some(e), Some(token)) => {
                let shard = cell.map.read();
                let current = self.visible_value(&shard, hash, key);
                match current {
                    Ok(c) if c.as_deref() == e => {
                        let w = self.storage.write_at(offset, &parts);
                        if w.is_ok() {
                            self.blocks.register_move(Moving {
                                key: key.to_vec(),
                                key_hash: hash,
                                old_offset: token,
                                new_offset: offset,
                                new_len: len,
                            });
                        }
                        w
                    }
                    other => {
                        // Removed since the first look (an eviction, a
                        // purge): nothing written.
                        drop(shard);
                        self.release(offset, len, hash);
                        return other.map(Err);
                    }
                }
            }
            _ => self.storage.write_at(offset, &parts),
        };
        if let Err(e) = written {
            self.release(offset, len, hash);
            return Err(Error::io(&self.path, "writing an entry", e));
        }
        let mut generation = self.note_write();
        self.storage.point("put: written");
        let mut header = header;
        loop {
            if self.policy == SyncPolicy::Always
                && let Err(e) = self.sync_to(generation)
            {
                if let Some(token) = claim
                    && !self.take_claim(cell, token, offset)
                {
                    // Freed by a remover of the key: nothing left to undo.
                    return Err(e);
                }
                // Not durable: take it back so memory and file agree. Should
                // even that write fail, the copy stays valid on disk with the
                // newest sequence number: it is published, so that memory
                // still matches the file (the error leaves it open whether
                // the put happened).
                if self.mark_free(offset, len).is_ok() {
                    self.return_space(offset, len);
                } else {
                    let p =
                        self.publish(key, (offset, len), header.seq, expiry_ms, generation, None)?;
                    if let Published::New = p {
                        self.admit(key, room.as_ref(), true, &mut notes)?;
                    }
                }
                return Err(e);
            }
            match self.publish(key, (offset, len), header.seq, expiry_ms, generation, claim)? {
                Published::New => {
                    self.admit(key, room.as_ref(), true, &mut notes)?;
                    break;
                }
                Published::Replaced => break,
                // Its remover freed the block, and synced under `Always`:
                // this write comes after that removal, and fails.
                Published::Removed => return Ok(Err(None)),
                Published::Outranked => {}
            }
            // A write of this key that took its sequence number after ours
            // (a `touch` of a held entry) was published first. This put was
            // acknowledged to nobody yet: it takes effect after that write,
            // with a newer sequence number, so that file and memory agree.
            header.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.storage.write_at(offset, &[&header.encode(self.salt)]) {
                // The block may hold the old header or a torn one: free it.
                if claim.is_none_or(|token| self.take_claim(cell, token, offset)) {
                    self.release(offset, len, hash);
                }
                return Err(Error::io(&self.path, "writing an entry", e));
            }
            generation = self.note_write();
        }
        if expiry_ms != 0 {
            // Published: the background thread must know of it even if a
            // sync below fails.
            self.note_expiry(expiry_ms);
        }
        if self.policy == SyncPolicy::Always
            && let Some(g) = self.unsettled(hash)
        {
            // A copy of this key was freed (by a remover running beside this
            // put) with a write not yet synced; that copy may carry a later
            // sequence number than this put's (a renewal of a held entry):
            // until its free header is durable, a power loss could bring it
            // back over this acknowledged put.
            self.sync_to(g)?;
        }
        self.maybe_sync_for_space()?;
        Ok(Ok(()))
    }

    /// `Error::TooLarge` for a key, value or metadata beyond the format's
    /// limits.
    pub(super) fn check_sizes(&self, key: usize, value: usize, meta: usize) -> Result<()> {
        for (what, len, max) in [
            ("key", key, MAX_KEY_LEN),
            ("value", value, MAX_VALUE_LEN),
            ("metadata", meta, MAX_META_LEN),
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
        Ok(())
    }

    /// Takes back the claim of a conditional write on its new block, under
    /// the shard's write lock; false when a remover of the key freed it.
    fn take_claim(&self, cell: &ShardCell, token: u64, offset: u64) -> bool {
        let _shard = cell.map.write();
        self.blocks.take_move(token, offset)
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
        let _key = self.key_lock(hash);
        let mut shard = cell.map.write();
        let Some(id) = shard.find(hash, key) else {
            return Ok(false);
        };
        let slot = shard.slot(id);
        let offset = slot.offset();
        if is_expired(slot.expiry(), now) {
            return Ok(false);
        }
        let h = self.header_at(offset)?;
        // A pending member of a batch (see `unsettled`): renewed, in place or
        // by a copy, only once its batch is settled and synced.
        if h.pending {
            self.settle_member(offset)
                .map_err(self.io("settling a batch member"))?;
        }
        if !self.blocks.is_pinned(offset) {
            // In place: one atomic word; readers are kept out by the shard lock.
            let word = expiry_word(expiry_ms, self.salt, h.seq);
            self.storage
                .write_word(offset + EXPIRY_WORD_OFFSET, word)
                .map_err(self.io("renewing an expiry"))?;
            let generation = self.note_write();
            shard.update(hash, id, offset, expiry_ms);
            self.backups.note(key);
            self.touch_lru(cell, id);
            drop(shard);
            self.note_expiry(expiry_ms);
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
            // A copy is an entry of its own (its batch, if it was a pending
            // member, was settled above).
            pending: false,
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
        let synced = match self.policy {
            SyncPolicy::Always => self.sync_to(generation),
            _ => Ok(()),
        };
        if synced.is_err() && self.mark_free(new_offset, new_len).is_ok() {
            // Not durable: taken back, so memory and file agree.
            self.return_space(new_offset, new_len);
            return synced.map(|()| true);
        }
        // Published when durable, and also when it could not even be taken
        // back: then the copy stays valid on disk with the newest sequence
        // number, and memory must say what a fresh open would find (the
        // error leaves it open whether the renewal happened).
        shard.update(hash, id, new_offset, expiry_ms);
        self.backups.note(key);
        self.touch_lru(cell, id);
        self.retire(offset, h.block_len, hash, generation);
        drop(shard);
        self.live_bytes.fetch_add(new_len, Ordering::Relaxed);
        self.live_bytes.fetch_sub(h.block_len, Ordering::Relaxed);
        self.supersede(offset);
        self.note_expiry(expiry_ms);
        synced.map(|()| true)
    }

    /// Puts a written block in the index.
    pub(super) fn publish(
        &self,
        key: &[u8],
        (offset, len): (u64, u64),
        seq: u64,
        expiry_ms: u64,
        generation: u64,
        claim: Option<u64>,
    ) -> Result<Published> {
        let (hash, cell) = self.locate(key);
        let mut shard = cell.map.write();
        if let Some(token) = claim
            && !self.blocks.has_move(token, offset)
        {
            return Ok(Published::Removed);
        }
        // From here on a claimed block is the key's, or released.
        let unclaim = || {
            if let Some(token) = claim {
                self.blocks.take_move(token, offset);
            }
        };
        match shard.find(hash, key) {
            Some(id) => {
                let old_offset = shard.slot(id).offset();
                let old = self.header_at(old_offset);
                if let Ok(h) = &old
                    && h.seq > seq
                {
                    // A concurrent write of this key with a later sequence
                    // number got here first: on disk it would win. The
                    // caller writes a newer sequence number and tries again.
                    return Ok(Published::Outranked);
                }
                unclaim();
                shard.update(hash, id, offset, expiry_ms);
                self.backups.note(key);
                self.touch_lru(cell, id);
                if let Ok(h) = &old {
                    self.retire(old_offset, h.block_len, hash, generation);
                }
                drop(shard);
                match old {
                    Ok(h) => {
                        self.live_bytes.fetch_add(len, Ordering::Relaxed);
                        self.live_bytes.fetch_sub(h.block_len, Ordering::Relaxed);
                        self.supersede(old_offset);
                    }
                    // The old copy is damaged: leave it for the next open to reclaim.
                    Err(_) => {
                        self.live_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                }
                Ok(Published::Replaced)
            }
            None if shard.len() >= crate::index::MAX_SHARD_ENTRIES => {
                unclaim();
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
                unclaim();
                let id = shard.insert(&self.hasher, hash, key, offset, expiry_ms);
                self.backups.note(key);
                self.touch_lru(cell, id);
                self.entries.fetch_add(1, Ordering::AcqRel);
                self.live_bytes.fetch_add(len, Ordering::Relaxed);
                Ok(Published::New)
            }
        }
    }

    /// Hands a copy that has just stopped being its key's indexed copy,
    /// still valid on disk, to the block owner (see `Blocks::retire`).
    /// Called before the shard lock that unindexed it is released: a writer
    /// that removes the key next finds it and frees it first, so that a crash
    /// cannot bring it back.
    pub(super) fn retire(&self, offset: u64, len: u64, key_hash: u64, generation: u64) {
        self.blocks.retire(offset, len, key_hash, generation);
    }

    /// After [`retire`](Self::retire), with no lock held: under
    /// `SyncPolicy::Always` the new copy is durable, so the old one is freed
    /// now; otherwise it waits for the next sync.
    pub(super) fn supersede(&self, offset: u64) {
        if self.policy == SyncPolicy::Always {
            self.blocks.free_held(offset, false, &self.bio());
        }
    }

    /// Syncs on its own when old copies waiting for a sync hold too much space.
    pub(super) fn maybe_sync_for_space(&self) -> Result<()> {
        let (pending, end) = self.blocks.held_and_end();
        if pending > (1 << 20).max(end / 8) {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Takes a block of at least `need` bytes from the free list, growing the
    /// file when nothing fits.
    pub(super) fn allocate(&self, need: u64) -> Result<(u64, u64)> {
        self.blocks
            .allocate(need, &self.bio())
            .map_err(|e| match e {
                AllocError::TooLarge(new_end) => Error::TooLarge {
                    path: self.path.clone(),
                    what: "file",
                    len: new_end as usize,
                    max: crate::index::MAX_FILE_LEN as usize,
                },
                AllocError::Io(action, e) => Error::io(&self.path, action, e),
            })
    }

    /// Frees a block nobody indexes (see `Blocks::release`). Returns whether
    /// its free header was written.
    pub(super) fn release(&self, offset: u64, len: u64, key_hash: u64) -> bool {
        self.blocks
            .release(offset, len, key_hash, false, &self.bio())
    }

    /// Writes a free header over the block at `offset`.
    pub(super) fn mark_free(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.bio().write_free_header(offset, len, false)
    }

    /// Returns a block whose header says free (see `Blocks::return_space`).
    pub(super) fn return_space(&self, offset: u64, len: u64) {
        self.blocks.return_space(offset, len, false, &self.bio());
    }

    pub(super) fn delete(&self, key: &[u8]) -> Result<bool> {
        let deleted = self.delete_cond(key, None)?;
        // Unconditional: no comparison to fail.
        Ok(deleted.unwrap_or(false))
    }

    /// Deletes `key` (see [`Store::delete`]), or, when `expect` is given,
    /// only if its visible value is `expect`; otherwise it changes nothing
    /// and returns the current value. The comparison and the removal are
    /// made under the shard's write lock.
    pub(super) fn delete_cond(
        &self,
        key: &[u8],
        expect: Option<Option<&[u8]>>,
    ) -> Result<std::result::Result<bool, Option<Vec<u8>>>> {
        self.check_writable()?;
        let mut notes = Notes::new(&self.hub);
        let _gate = self.gate.read();
        let (hash, cell) = self.locate(key);
        let _key = self.key_lock(hash);
        let mut shard = loop {
            self.settle_old_copies(hash)?;
            let shard = cell.map.write();
            if self.unsettled(hash).is_none() {
                break shard;
            }
        };
        if let Some(e) = expect {
            let current = self.visible_value(&shard, hash, key)?;
            if current.as_deref() != e {
                return Ok(Err(current));
            }
        }
        let Some(id) = shard.find(hash, key) else {
            return Ok(Ok(false));
        };
        let slot = shard.slot(id);
        let (offset, expiry) = (slot.offset(), slot.expiry());
        let visible = expiry == 0 || !is_expired(expiry, self.clock.now_millis());
        let freed = self.unindex(&mut shard, cell, hash, id, offset)?;
        drop(shard);
        removed_by_key(&mut notes, key, visible, expiry);
        if let Some(len) = freed {
            self.return_space(offset, len);
        }
        if self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(Ok(visible))
    }

    /// The write generation a sync must reach before the newest copy of the
    /// key with this hash may be freed (see `Blocks::unsettled`).
    pub(super) fn unsettled(&self, hash: u64) -> Option<u64> {
        self.blocks.unsettled(hash)
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
        self.unindex_newest(shard, cell, hash, id, offset)
    }

    /// The second half of [`unindex`](Self::unindex): frees the key's
    /// indexed copy and takes it out of the index, its older copies being
    /// freed already (or outranked by a batch's tombstone).
    pub(super) fn unindex_newest(
        &self,
        shard: &mut Shard,
        cell: &ShardCell,
        hash: u64,
        id: u32,
        offset: u64,
    ) -> Result<Option<u64>> {
        let len = match self.header_at(offset) {
            Ok(h) => {
                self.mark_free(offset, h.block_len)
                    .map_err(self.io("freeing an entry"))?;
                self.blocks
                    .freed_unsynced(hash, self.writes.load(Ordering::Acquire));
                Some(h.block_len)
            }
            Err(_) => None,
        };
        self.drop_slot(shard, cell, hash, id, len);
        Ok(len)
    }

    /// Takes slot `id` out of the index and its counts (its block, of
    /// length `len` when known, being freed or held by the caller).
    pub(super) fn drop_slot(
        &self,
        shard: &mut Shard,
        cell: &ShardCell,
        hash: u64,
        id: u32,
        len: Option<u64>,
    ) {
        self.backups.note(shard.slot(id).key.as_bytes());
        shard.remove(hash, id);
        if self.max_entries.is_some() {
            let mut lru = cell.lru.lock();
            lru.remove(id);
            self.publish_oldest(cell, &lru);
        }
        self.entries.fetch_sub(1, Ordering::AcqRel);
        self.claimed.fetch_sub(1, Ordering::AcqRel);
        if let Some(l) = len {
            self.live_bytes.fetch_sub(l, Ordering::Relaxed);
        }
    }

    /// Frees old copies of a key that has just left the index: with the key
    /// gone they protect nothing, and left valid on disk they would bring an
    /// old value back after a crash.
    /// Fails, keeping the copies it could not free, when a free header cannot
    /// be written: the caller must then not free the newest copy.
    ///
    /// Their free headers are synced before it returns when it wrote any (or
    /// found one written by another thread and not yet synced): were the
    /// newest copy's free header to survive a power loss without theirs, an
    /// older value would come back.
    pub(super) fn release_superseded_copies(&self, hash: u64, key: &[u8]) -> Result<()> {
        let freed = self
            .blocks
            .release_copies_of(hash, key, &self.bio())
            .map_err(|(action, e)| Error::io(&self.path, action, e))?;
        if freed || self.unsettled(hash).is_some() {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Whether `key` is in the index (expired or not).
    pub(super) fn indexed(&self, key: &[u8]) -> bool {
        let (hash, cell) = self.locate(key);
        cell.map.read().find(hash, key).is_some()
    }

    /// The block offset of `key`'s indexed copy.
    pub(super) fn offset_of(&self, key: &[u8]) -> Option<u64> {
        let (hash, cell) = self.locate(key);
        let shard = cell.map.read();
        shard.find(hash, key).map(|id| shard.slot(id).offset())
    }

    /// Makes room for one new key under the entry cap: while the entries
    /// plus the inserts in flight fill the cap, expired entries go first (all
    /// of them: they count for nothing), then the least recently used. The
    /// room is held for this key until the returned guard drops, after the
    /// entry is in the index, so that concurrent inserts never count the same
    /// room twice. Under `SyncPolicy::Always` the removals are durable when it
    /// returns. Call it with the gate read-locked.
    pub(super) fn make_room(
        &self,
        cap: usize,
        key: &[u8],
        notes: &mut Notes<'_>,
    ) -> Result<Room<'_>> {
        let mut inserting = self.inserting.lock();
        let full = || self.claimed.load(Ordering::Acquire) >= cap;
        let mut removed = false;
        let mut purged = false;
        loop {
            if let Some(slot) = inserting.rooms.iter_mut().find(|s| s.key == key) {
                // Another insert of this key holds room: one entry, one room.
                slot.holders += 1;
                drop(inserting);
                return self.room_made(Some(key), removed);
            }
            if self.indexed(key) {
                // Put back by an insert that began while the key was still
                // in the index (so held no room) and counted it when it
                // published: a second room would count the key twice.
                drop(inserting);
                return self.room_made(None, removed);
            }
            if !full() {
                break;
            }
            if !purged {
                purged = true;
                removed |= self.purge_held(self.clock.now_millis(), notes)? > 0;
                continue;
            }
            if self.evict_one(notes, &[], &inserting.pinned)? {
                removed = true;
                continue;
            }
            if !inserting.rooms_in_flight() && inserting.pinned.is_empty() {
                // Nothing to evict and no insert in flight: the cap is
                // filled by entries that cannot go (cap 0). Over the cap.
                break;
            }
            // The cap is filled by the rooms of inserts still in flight
            // (their entries are not in the index yet) and the keys of
            // batches in flight: nothing can be evicted now. Were this
            // insert to count itself over the cap, the store would end with
            // more entries than it allows. Wait for one of them to put its
            // entry in (it is then the one evicted, as in the serial order
            // where it came first), to give its room back, or for the batch
            // to end. They need none of the locks held here: their own
            // keys' locks, shard locks and `inserting` only.
            self.room_changed.wait(&mut inserting);
        }
        self.claimed.fetch_add(1, Ordering::AcqRel);
        inserting.rooms.push(RoomSlot {
            key: key.to_vec(),
            holders: 1,
            used: false,
        });
        drop(inserting);
        self.room_made(Some(key), removed)
    }

    /// The guard of a room `make_room` made (or shares, or, without a key,
    /// needed none of): the removals that made it are durable first under
    /// `SyncPolicy::Always`.
    fn room_made(&self, key: Option<&[u8]>, removed: bool) -> Result<Room<'_>> {
        let room = Room {
            inner: self,
            key: key.map(<[u8]>::to_vec),
        };
        if removed && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(room)
    }

    /// Room under the entry cap for a batch's `new` keys (see
    /// [`make_room`](Self::make_room)), counting that the batch will delete
    /// the present keys among `deleted`: only the excess is evicted, and
    /// never a key the batch names (`named`, marked used by the caller, so
    /// the others go first). A batch that would need to evict one of its own
    /// keys is refused before anything is removed. Expired entries are
    /// purged first (which may make a member's key new: the caller asks
    /// again for those).
    ///
    /// Short of room only because inserts in flight hold rooms (their
    /// entries, once in, can be evicted) or other batches in flight keep
    /// their keys, it says what to wait for ([`BatchRoom`]); `ticket` is the
    /// batch's age. No cycle of waits: a batch waits holding no room, for
    /// rooms, or (keeping its keys pinned) for younger batches only; a batch
    /// in the way of an older one lets go of its keys and waits holding
    /// nothing; whoever holds room waits for nothing (an insert waits before
    /// it holds room, for rooms and pins).
    pub(super) fn make_batch_room(
        &self,
        cap: usize,
        new: &[&[u8]],
        (named, ticket): (&[&[u8]], u64),
        deleted: &[&[u8]],
        notes: &mut Notes<'_>,
    ) -> Result<BatchRoom<'_>> {
        let mut inserting = self.inserting.lock();
        let mut rooms = Vec::new();
        let mut claim = Vec::new();
        for &k in new {
            if let Some(slot) = inserting.rooms.iter_mut().find(|s| s.key == k) {
                slot.holders += 1;
                let room = Room {
                    inner: self,
                    key: Some(k.to_vec()),
                };
                rooms.push((k.to_vec(), room));
            } else if !self.indexed(k) {
                claim.push(k);
            }
        }
        let excess = || {
            let frees = deleted.iter().filter(|k| self.indexed(k)).count();
            (self.claimed.load(Ordering::Acquire) + claim.len()).saturating_sub(cap + frees)
        };
        let mut removed = false;
        if excess() > 0 {
            removed |= self.purge_held(self.clock.now_millis(), notes)? > 0;
        }
        // What may be evicted: neither this batch's keys nor another
        // batch's.
        let own = named.iter().filter(|k| self.indexed(k)).count();
        let blockers: Vec<u64> = (0..inserting.pinned.len())
            .filter(|&i| {
                let p = inserting.pinned[i].as_slice();
                inserting.pinned_by[i] != ticket && !named.contains(&p) && self.indexed(p)
            })
            .map(|i| inserting.pinned_by[i])
            .collect();
        let entries = self.entries.load(Ordering::Acquire);
        let others = entries.saturating_sub(own + blockers.len());
        if excess() > others {
            let in_flight = inserting.rooms_in_flight();
            // The rooms shared above go back (under `inserting`, which
            // their guards take).
            drop(inserting);
            drop(rooms);
            if removed && self.policy == SyncPolicy::Always {
                self.sync_to(self.writes.load(Ordering::Acquire))?;
            }
            if excess() <= entries.saturating_sub(own) {
                // Enough once the other batches are done (in a serial
                // order, they come first and their keys are evictable).
                let mut blockers = blockers;
                blockers.sort_unstable();
                blockers.dedup();
                return Ok(match blockers.first() {
                    Some(&t) if t < ticket => {
                        blockers.retain(|&t| t < ticket);
                        BatchRoom::Restart(blockers)
                    }
                    _ => BatchRoom::WaitForYounger(blockers),
                });
            }
            if in_flight {
                return Ok(BatchRoom::WaitForInserts);
            }
            // The entries the batch would hold at once: its present keys
            // it keeps and its new ones.
            let frees = deleted.iter().filter(|k| self.indexed(k)).count();
            return Err(Error::TooLarge {
                path: self.path.clone(),
                what: "batch (entries it would hold at once, beside nothing it may evict: the entry cap)",
                len: (own + claim.len()).saturating_sub(frees),
                max: cap,
            });
        }
        while excess() > 0 {
            // Never one of the batch's keys (pinned), even if a write since
            // they were marked used made one of them the least recently used.
            if !self.evict_one(notes, named, &inserting.pinned)? {
                break;
            }
            removed = true;
        }
        for k in claim {
            self.claimed.fetch_add(1, Ordering::AcqRel);
            inserting.rooms.push(RoomSlot {
                key: k.to_vec(),
                holders: 1,
                used: false,
            });
            let room = Room {
                inner: self,
                key: Some(k.to_vec()),
            };
            rooms.push((k.to_vec(), room));
        }
        drop(inserting);
        if removed && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(BatchRoom::Made(rooms))
    }

    /// Waits until one of the batches with these tickets no longer keeps
    /// its keys from eviction. For a batch that holds no room: see
    /// [`BatchRoom::WaitForYounger`].
    pub(super) fn wait_for_pins(&self, tickets: &[u64]) {
        let mut inserting = self.inserting.lock();
        while tickets.iter().all(|t| inserting.pinned_by.contains(t)) {
            self.room_changed.wait(&mut inserting);
        }
    }

    /// Waits until none of the batches with these tickets keeps a key from
    /// eviction. For a batch that holds nothing: see
    /// [`BatchRoom::Restart`].
    pub(super) fn wait_for_batches(&self, tickets: &[u64]) {
        let mut inserting = self.inserting.lock();
        while inserting.pinned_by.iter().any(|t| tickets.contains(t)) {
            self.room_changed.wait(&mut inserting);
        }
    }

    /// A new batch's ticket (its age; see [`Inserting::next_ticket`]).
    pub(super) fn batch_ticket(&self) -> u64 {
        let mut inserting = self.inserting.lock();
        inserting.next_ticket += 1;
        inserting.next_ticket
    }

    /// Waits until an insert in flight puts its entry in or gives its room
    /// back (returns at once when none holds room). For a caller that holds
    /// no room itself: see [`make_batch_room`](Self::make_batch_room).
    pub(super) fn wait_for_inserts(&self) {
        let mut inserting = self.inserting.lock();
        if inserting.rooms_in_flight() {
            self.room_changed.wait(&mut inserting);
        }
    }

    /// Marks the keys of `keys` that are in the index used, in that order.
    pub(super) fn mark_used(&self, keys: &[&[u8]]) {
        for key in keys {
            let (hash, cell) = self.locate(key);
            let shard = cell.map.read();
            if let Some(id) = shard.find(hash, key) {
                self.touch_lru(cell, id);
            }
        }
    }

    /// Keeps a batch's keys from eviction by other writes until the guard
    /// drops (after the batch is published or given up). Call it holding
    /// the keys' write locks.
    pub(super) fn pin(&self, keys: &[&[u8]], ticket: u64) -> Pins<'_> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let mut inserting = self.inserting.lock();
        inserting.pinned.extend(keys.iter().cloned());
        inserting
            .pinned_by
            .extend(std::iter::repeat_n(ticket, keys.len()));
        Pins {
            inner: self,
            keys,
            ticket,
        }
    }

    /// Counts a key that `publish` has just put in the index as new. With
    /// room held for it (`make_room`), the room is its place now. Without (it
    /// was in the index when its put began, and was removed meanwhile), it
    /// takes the room another insert of the key holds, if one does, and is
    /// otherwise counted anew, evicting down to the cap if need be; with
    /// `may_wait` (a put, which holds no room and keeps no key from
    /// eviction), waiting as `make_room` does when only inserts and batches
    /// in flight fill the cap.
    pub(super) fn admit(
        &self,
        key: &[u8],
        room: Option<&Room<'_>>,
        may_wait: bool,
        notes: &mut Notes<'_>,
    ) -> Result<()> {
        if let Some(r) = room.filter(|r| r.holds()) {
            r.used();
            return Ok(());
        }
        let mut inserting = self.inserting.lock();
        if let Some(slot) = inserting.rooms.iter_mut().find(|s| s.key == key) {
            slot.used = true;
            self.room_changed.notify_all();
            return Ok(());
        }
        self.claimed.fetch_add(1, Ordering::AcqRel);
        match self.max_entries {
            Some(cap) => self.evict_down_to(cap, &mut inserting, may_wait, notes),
            None => Ok(()),
        }
    }

    /// Evicts least recently used entries (never a key a batch in flight
    /// keeps) until at most `n` remain (inserts holding room included).
    /// Under the same lock as `make_room`, so that two threads never both
    /// act on one look at the count. Under `SyncPolicy::Always` the
    /// evictions are durable when it returns.
    fn evict_down_to(
        &self,
        n: usize,
        inserting: &mut parking_lot::MutexGuard<'_, Inserting>,
        may_wait: bool,
        notes: &mut Notes<'_>,
    ) -> Result<()> {
        let mut evicted = false;
        while self.claimed.load(Ordering::Acquire) > n {
            if self.evict_one(notes, &[], &inserting.pinned)? {
                evicted = true;
                continue;
            }
            if !(may_wait && (inserting.rooms_in_flight() || !inserting.pinned.is_empty())) {
                break;
            }
            self.room_changed.wait(inserting);
        }
        if evicted && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Evicts the least recently used entry of the whole store. `own` are
    /// the keys of the batch making room (none for a put): one of them found
    /// least recently used means writes since the batch marked its keys used
    /// came first; they are marked used again (in their order, as the batch
    /// does) and the next entry looked at. `pinned` are the keys of every
    /// batch in flight: found least recently used, one of another batch
    /// stops the eviction (the caller waits for that batch). Returns false
    /// when nothing can be evicted now.
    fn evict_one(&self, notes: &mut Notes<'_>, own: &[&[u8]], pinned: &[Vec<u8>]) -> Result<bool> {
        let mut marked = false;
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
            if own.contains(&slot.key.as_bytes()) {
                if marked {
                    return Ok(false); // only the batch's own keys are left
                }
                marked = true;
                drop(shard);
                self.mark_used(own);
                continue;
            }
            if pinned.iter().any(|k| k.as_slice() == slot.key.as_bytes()) {
                return Ok(false);
            }
            let offset = slot.offset();
            let hash = self.hasher.hash_one(slot.key.as_bytes());
            if let Some(g) = self.unsettled(hash) {
                drop(shard);
                self.sync_to(g)?;
                continue;
            }
            let key = notes.on().then(|| slot.key.as_bytes().to_vec());
            let freed = self.unindex(&mut shard, cell, hash, id, offset)?;
            drop(shard);
            if let Some(len) = freed {
                self.return_space(offset, len);
            }
            if let Some(key) = key {
                notes.add(|| Event::Evicted { key });
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
    }

    pub(super) fn clear(&self) -> Result<()> {
        self.check_writable()?;
        let mut notes = Notes::new(&self.hub);
        let _gate = self.gate.write();
        // No writer runs now: settle every old copy before freeing entries.
        if let Some(g) = self.blocks.any_unsettled() {
            self.sync_to(g)?;
        }
        let mut shards: Vec<_> = self.shards.iter().map(|c| c.map.write()).collect();
        if self.blocks.no_readers() {
            // Nothing is borrowed: cut the file back to its header.
            self.blocks
                .reset(FILE_HEADER_LEN, || self.bio().set_len(FILE_HEADER_LEN))
                .map_err(self.io("truncating the file"))?;
            self.forget_unsettled();
            self.backups.note_cleared();
            for (shard, cell) in shards.iter_mut().zip(self.shards.iter()) {
                shard.clear();
                let mut lru = cell.lru.lock();
                lru.clear();
                self.publish_oldest(cell, &lru);
            }
            self.entries.store(0, Ordering::Release);
            // No insert holds room: they hold the gate, which `clear` has.
            self.claimed.store(0, Ordering::Release);
            self.live_bytes.store(0, Ordering::Release);
        } else {
            // Readers hold some blocks: free entry by entry; held blocks are
            // returned when their readers drop.
            let mut freed = Vec::new();
            for (shard, cell) in shards.iter_mut().zip(self.shards.iter()) {
                let live: Vec<(u32, u64)> = shard.iter().map(|(id, s)| (id, s.offset())).collect();
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
            self.blocks.release_all_held(&self.bio());
        }
        notes.add(|| Event::Cleared);
        // Under every policy, before the gate lets any write reuse the space:
        // were a power loss to drop the cut of the file and keep a later
        // write over a key's newest copy, an older copy of it further on
        // would come back (older than the last sync).
        self.sync_to(self.writes.load(Ordering::Acquire))
    }
}

/// The event of a removal asked for by key (a delete, a batch's delete): the
/// entry was visible, or had expired (`expiry`) and is reported as such.
pub(super) fn removed_by_key(notes: &mut Notes<'_>, key: &[u8], visible: bool, expiry: u64) {
    notes.add(|| match visible {
        true => Event::Deleted { key: key.to_vec() },
        false => Event::Expired {
            key: key.to_vec(),
            expired_at: millis_to_system_time(expiry),
        },
    });
}
