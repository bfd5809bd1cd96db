//! Reads: `get`, `get_ref`, `peek`, `contains`, `keys`. A read holds its
//! shard's read lock while it touches the block, so the block cannot be freed
//! under it.

use std::sync::atomic::Ordering;

use super::*;

impl Inner {
    /// Finds `key` and hands its header, metadata and value to `f` while the
    /// block is read-locked. `use_` says whether the read counts as a use for
    /// the LRU order.
    pub(super) fn read<T>(
        &self,
        key: &[u8],
        use_: bool,
        f: impl FnOnce(&BlockHeader, &[u8], &[u8]) -> T,
    ) -> Result<Option<T>> {
        let (hash, cell) = self.locate(key);
        let shard = cell.map.read();
        let Some((id, offset, h)) = self.lookup(&shard, hash, key)? else {
            return Ok(None);
        };
        let start = offset + h.key_offset();
        let len = h.payload_len();
        let (k, m) = (usize::from(h.key_len), usize::from(h.meta_len));
        #[expect(unsafe_code, reason = "zero-copy read of a payload from the mapping")]
        // SAFETY: the shard's read lock is held for as long as `payload` is
        // used, and a block is written over or cut off only after its key has
        // left the index under the write lock (see the module docs).
        let result = match unsafe { self.storage.view(start, len) } {
            Some(payload) => {
                self.check_entry(offset, &h, key, payload)?;
                f(&h, &payload[k..k + m], &payload[k + m..])
            }
            None => {
                let mut payload = vec![0u8; len as usize];
                self.storage
                    .read_at(start, &mut payload)
                    .map_err(self.io("reading an entry"))?;
                self.check_entry(offset, &h, key, &payload)?;
                f(&h, &payload[k..k + m], &payload[k + m..])
            }
        };
        if use_ {
            self.touch_lru(cell, id);
        }
        Ok(Some(result))
    }

    /// Finds `key` for a read: its slot id, block offset and checked header,
    /// or `None` if it is absent or expired. The key is compared in the
    /// block (which the read touches anyway), not in the slot. The caller
    /// holds the shard's read lock.
    pub(super) fn lookup(
        &self,
        shard: &Shard,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<(u32, u64, BlockHeader)>> {
        let Some((id, offset)) = shard.find_located(hash, |offset| self.holds_key(offset, key))
        else {
            return Ok(None);
        };
        let h = self.header_at(offset)?;
        if h.expiry_ms != 0 && is_expired(h.expiry_ms, self.clock.now_millis()) {
            return Ok(None);
        }
        Ok(Some((id, offset, h)))
    }

    /// Whether the entry block at `offset` holds `key` (header not checked:
    /// a damaged header reads as another key). The caller holds the shard
    /// lock of an entry that points there.
    #[expect(unsafe_code, reason = "the key is compared in place in the mapping")]
    pub(super) fn holds_key(&self, offset: u64, key: &[u8]) -> bool {
        let n = crate::format::BLOCK_HEADER_LEN as usize + key.len();
        let holds = |b: &[u8]| {
            usize::from(u16::from_le_bytes([b[6], b[7]])) == key.len() && &b[n - key.len()..] == key
        };
        // SAFETY: the shard lock keeps the block from being freed (and so
        // from being written over or cut off) while the slice is used.
        match unsafe { self.storage.view(offset, n as u64) } {
            Some(b) => holds(b),
            None => {
                let mut b = vec![0u8; n];
                self.storage.read_at(offset, &mut b).is_ok() && holds(&b)
            }
        }
    }

    /// The visible value of `key` (`None`: absent or expired), read while
    /// the caller holds the shard's lock.
    pub(super) fn visible_value(
        &self,
        shard: &Shard,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let Some((_, offset, h)) = self.lookup(shard, hash, key)? else {
            return Ok(None);
        };
        let mut payload = vec![0u8; h.payload_len() as usize];
        self.storage
            .read_at(offset + h.key_offset(), &mut payload)
            .map_err(self.io("reading an entry"))?;
        self.check_entry(offset, &h, key, &payload)?;
        payload.drain(..usize::from(h.key_len) + usize::from(h.meta_len));
        Ok(Some(payload))
    }

    /// The metadata of `key`'s entry at `offset` (header `h`), checked
    /// like a read (so that a damaged entry's bytes are never written again
    /// under a fresh checksum); the caller holds its shard's lock.
    pub(super) fn meta_at(&self, key: &[u8], offset: u64, h: &BlockHeader) -> Result<Vec<u8>> {
        let mut payload = vec![0u8; h.payload_len() as usize];
        self.storage
            .read_at(offset + h.key_offset(), &mut payload)
            .map_err(self.io("reading an entry"))?;
        self.check_entry(offset, h, key, &payload)?;
        let k = usize::from(h.key_len);
        Ok(payload[k..k + usize::from(h.meta_len)].to_vec())
    }

    pub(super) fn get_ref(&self, key: &[u8]) -> Result<Option<ValueRef<'_>>> {
        let (hash, cell) = self.locate(key);
        let shard = cell.map.read();
        let Some((id, offset, h)) = self.lookup(&shard, hash, key)? else {
            return Ok(None);
        };
        let start = offset + h.key_offset();
        let len = h.payload_len();
        let vstart = usize::from(h.key_len) + usize::from(h.meta_len);
        #[expect(unsafe_code, reason = "a `ValueRef` borrows the map")]
        // SAFETY: as in `read` while the shard lock is held; after that the
        // block is pinned in `readers`, which keeps it out of the free list
        // (so it is neither reused nor cut off the file) until the ValueRef is
        // dropped. Freeing it may rewrite its header, which the value slice
        // does not cover.
        let bytes = match unsafe { self.storage.view(start, len) } {
            Some(payload) => {
                self.check_entry(offset, &h, key, payload)?;
                self.blocks.pin(offset);
                ValueBytes::Mapped(&payload[vstart..], offset)
            }
            None => {
                let mut payload = vec![0u8; len as usize];
                self.storage
                    .read_at(start, &mut payload)
                    .map_err(self.io("reading an entry"))?;
                self.check_entry(offset, &h, key, &payload)?;
                payload.drain(..vstart);
                ValueBytes::Owned(payload)
            }
        };
        self.touch_lru(cell, id);
        Ok(Some(ValueRef { inner: self, bytes }))
    }

    pub(super) fn contains(&self, key: &[u8]) -> bool {
        let (hash, cell) = self.locate(key);
        let shard = cell.map.read();
        match shard.find(hash, key) {
            None => false,
            Some(id) => {
                let e = shard.slot(id).expiry();
                e == 0 || !is_expired(e, self.clock.now_millis())
            }
        }
    }

    pub(super) fn keys(&self) -> Vec<Vec<u8>> {
        let now = self.clock.now_millis();
        let mut out = Vec::with_capacity(self.entries.load(Ordering::Relaxed));
        for cell in self.shards.iter() {
            let shard = cell.map.read();
            out.extend(
                shard
                    .iter()
                    .filter(|(_, s)| !is_expired(s.expiry(), now))
                    .map(|(_, s)| s.key.as_bytes().to_vec()),
            );
        }
        out
    }

    /// Entries present and not expired now.
    pub(super) fn live_len(&self) -> usize {
        let now = self.clock.now_millis();
        let expired: usize = self
            .shards
            .iter()
            .map(|c| c.map.read().count_expired(now))
            .sum();
        self.entries.load(Ordering::Acquire).saturating_sub(expired)
    }
}
