//! The in-memory index: key → block offset (and expiry), split into shards
//! by key hash, with least-recently-used order for the entry cap.
//!
//! Each shard is a slab of [`Slot`]s (key, offset, expiry: 40 bytes, keys up to
//! 22 bytes stored inline) and a `hashbrown` table of 8-byte entries, each a
//! slot id and the block's offset, so an entry costs about 55 bytes plus its
//! key when the key is longer than 22 bytes. A read finds the offset in the
//! table and checks the key in the block it reads anyway, without touching
//! the slot: one dependent cache miss fewer. The entries that have an expiry
//! are also in a per-shard binary heap of slot ids ordered by expiry (4 bytes
//! each; the slot keeps its heap position in spare bits), so the expired ones
//! are found without a scan. This module holds no locks of its own and does no I/O: the store
//! wraps each shard in a `RwLock` and each LRU list in a `Mutex`.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// Keys up to this length are stored inside the slot.
const INLINE_KEY: usize = 22;

/// Bits of a table entry that hold the slot id; the others hold offset / 8.
const ID_BITS: u32 = 24;
/// Most entries one shard holds (slot ids are kept in 24 bits).
pub const MAX_SHARD_ENTRIES: usize = (1 << ID_BITS) - CHUNK;
/// Largest file the index can point into: offsets are kept in 40 bits, in
/// units of 8 bytes (8 TiB).
pub const MAX_FILE_LEN: u64 = 1 << (40 + 3);

/// A table entry: slot id and block offset in one word.
fn pack(id: u32, offset: u64) -> u64 {
    debug_assert!(id < (1 << ID_BITS) && offset < MAX_FILE_LEN && offset.is_multiple_of(8));
    ((offset >> 3) << ID_BITS) | u64::from(id)
}

fn id_of(entry: u64) -> u32 {
    (entry & ((1 << ID_BITS) - 1)) as u32
}

fn offset_of(entry: u64) -> u64 {
    (entry >> ID_BITS) << 3
}

/// A key, inline when short.
#[derive(Clone)]
pub enum CompactKey {
    /// Up to [`INLINE_KEY`] bytes, with their length.
    Inline(u8, [u8; INLINE_KEY]),
    /// A longer key.
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<CompactKey>() == 24);

impl CompactKey {
    /// Stores `key`.
    pub fn new(key: &[u8]) -> CompactKey {
        if key.len() <= INLINE_KEY {
            let mut b = [0u8; INLINE_KEY];
            b[..key.len()].copy_from_slice(key);
            CompactKey::Inline(key.len() as u8, b)
        } else {
            CompactKey::Heap(key.into())
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CompactKey::Inline(n, b) => &b[..*n as usize],
            CompactKey::Heap(b) => b,
        }
    }

    /// Heap bytes used beyond the slot.
    fn heap_len(&self) -> usize {
        match self {
            CompactKey::Inline(..) => 0,
            CompactKey::Heap(b) => b.len(),
        }
    }
}

/// One index entry: its key, its block's offset, its expiry, and its place
/// in the shard's expiry heap, in 40 bytes.
///
/// The offset (below 2^43) and the expiry (below 2^48, the format's limit)
/// each take the low 48 bits of a word; the heap position (24 bits) is split
/// over the two words' top 16 bits, so that the expiry order costs no
/// bytes in the slot.
pub struct Slot {
    /// The key.
    pub key: CompactKey,
    /// Offset (low 48 bits; [`VACANT`] for an unused slot), heap position's
    /// low 16 bits (top 16).
    off: u64,
    /// Expiry (low 48 bits; 0 for never), heap position's high 8 bits
    /// (bits 48..56).
    exp: u64,
}

/// `Slot::offset` of an unused slot.
pub const VACANT: u64 = LOW48;

const LOW48: u64 = (1 << 48) - 1;
/// Heap position of a slot that is not in the heap (no expiry, or vacant).
const NO_POS: u32 = (1 << 24) - 1;

impl Slot {
    fn new(key: CompactKey, offset: u64, expiry: u64) -> Slot {
        let mut s = Slot {
            key,
            off: 0,
            exp: 0,
        };
        s.set(offset, expiry);
        s.set_pos(NO_POS);
        s
    }

    /// Offset of the entry's block; [`VACANT`] for an unused slot.
    pub fn offset(&self) -> u64 {
        self.off & LOW48
    }

    /// Expiry in milliseconds since the epoch, 0 for never.
    pub fn expiry(&self) -> u64 {
        self.exp & LOW48
    }

    fn set(&mut self, offset: u64, expiry: u64) {
        debug_assert!(offset <= LOW48 && expiry <= LOW48);
        self.off = (self.off & !LOW48) | (offset & LOW48);
        self.exp = (self.exp & !LOW48) | expiry.min(LOW48);
    }

    fn pos(&self) -> u32 {
        ((self.off >> 48) | ((self.exp >> 48) << 16)) as u32
    }

    fn set_pos(&mut self, pos: u32) {
        let pos = u64::from(pos);
        self.off = (self.off & LOW48) | ((pos & 0xffff) << 48);
        self.exp = (self.exp & LOW48) | ((pos >> 16) << 48);
    }
}

const _: () = assert!(std::mem::size_of::<Slot>() == 40);
const _: () = assert!(MAX_FILE_LEN < VACANT);

const CHUNK: usize = 1024;
/// "No slot" in the LRU links.
pub const NIL: u32 = u32::MAX;

/// A shard: a hash table of (slot id, offset) entries over a slab of slots.
#[derive(Default)]
pub struct Shard {
    table: HashTable<u64>,
    /// The slab, in chunks of [`CHUNK`] so that growing never copies it.
    chunks: Vec<Vec<Slot>>,
    vacant: Vec<u32>,
    /// The ids of the entries that have an expiry, as a binary min-heap by
    /// expiry; each slot knows its position (see [`Slot`]), so an entry's
    /// expiry moves or leaves in O(log n) and the order costs 4 bytes per
    /// entry with an expiry.
    heap: Vec<u32>,
    heap_key_bytes: usize,
    /// Bumped by every change to the entries (insert, update, remove,
    /// clear): a reader that saw the same value under an earlier read lock
    /// knows every slot still holds what it held then (a backup copies by
    /// this without reading each slot again).
    version: u64,
}

impl Shard {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Changes to the entries so far (see the field).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The slot with this id.
    pub fn slot(&self, id: u32) -> &Slot {
        &self.chunks[id as usize / CHUNK][id as usize % CHUNK]
    }

    /// The slot with this id, if the shard has one (ids taken before a
    /// `clear` may be gone).
    pub fn get(&self, id: u32) -> Option<&Slot> {
        self.chunks
            .get(id as usize / CHUNK)?
            .get(id as usize % CHUNK)
            .filter(|s| s.offset() != VACANT)
    }

    fn slot_mut(&mut self, id: u32) -> &mut Slot {
        &mut self.chunks[id as usize / CHUNK][id as usize % CHUNK]
    }

    /// The id of `key`'s slot.
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let chunks = &self.chunks;
        self.table
            .find(hash, |&e| slot_in(chunks, id_of(e)).key.as_bytes() == key)
            .map(|&e| id_of(e))
    }

    /// The slot id and block offset of the entry for which `is_it(offset)`
    /// holds, among those whose hash is `hash`: a read checks the key in the
    /// block at `offset` (which it reads anyway) instead of in the slot.
    pub fn find_located(
        &self,
        hash: u64,
        mut is_it: impl FnMut(u64) -> bool,
    ) -> Option<(u32, u64)> {
        self.table
            .find(hash, |&e| is_it(offset_of(e)))
            .map(|&e| (id_of(e), offset_of(e)))
    }

    /// Adds a key that is not in the shard; returns its slot id.
    pub fn insert(
        &mut self,
        hasher: &impl BuildHasher,
        hash: u64,
        key: &[u8],
        offset: u64,
        expiry: u64,
    ) -> u32 {
        debug_assert!(self.find(hash, key).is_none());
        self.version += 1;
        let id = self.new_slot(CompactKey::new(key), offset, expiry);
        let chunks = &self.chunks;
        self.table.insert_unique(hash, pack(id, offset), |&e| {
            hasher.hash_one(slot_in(chunks, id_of(e)).key.as_bytes())
        });
        id
    }

    /// The id of `key`'s slot if it is there (`Ok`), or of a new slot made for
    /// it (`Err`), with one probe of the table.
    pub fn find_or_insert(
        &mut self,
        hasher: &impl BuildHasher,
        hash: u64,
        key: CompactKey,
        offset: u64,
        expiry: u64,
    ) -> Result<u32, u32> {
        self.version += 1;
        let chunks = &self.chunks;
        let entry = self.table.entry(
            hash,
            |&e| slot_in(chunks, id_of(e)).key.as_bytes() == key.as_bytes(),
            |&e| hasher.hash_one(slot_in(chunks, id_of(e)).key.as_bytes()),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(e) => Ok(id_of(*e.get())),
            hashbrown::hash_table::Entry::Vacant(v) => {
                // The table has room (the entry API grew it if needed); the
                // new slot goes in the slab, then its entry in the table.
                let id = Self::next_id(&self.vacant, &self.chunks);
                v.insert(pack(id, offset));
                let made = self.new_slot(key, offset, expiry);
                debug_assert_eq!(made, id);
                Err(id)
            }
        }
    }

    /// The id the next `new_slot` will return.
    fn next_id(vacant: &[u32], chunks: &[Vec<Slot>]) -> u32 {
        match vacant.last() {
            Some(&id) => id,
            None => match chunks.last() {
                Some(c) if c.len() < CHUNK => ((chunks.len() - 1) * CHUNK + c.len()) as u32,
                _ => (chunks.len() * CHUNK) as u32,
            },
        }
    }

    /// Puts a slot in the slab (not in the table); returns its id.
    fn new_slot(&mut self, key: CompactKey, offset: u64, expiry: u64) -> u32 {
        let slot = Slot::new(key, offset, expiry);
        self.heap_key_bytes += slot.key.heap_len();
        let id = match self.vacant.pop() {
            Some(id) => {
                *self.slot_mut(id) = slot;
                id
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let id = ((self.chunks.len() - 1) * CHUNK + self.chunks.last().map_or(0, Vec::len))
                    as u32;
                self.chunks.last_mut().expect("a chunk").push(slot);
                id
            }
        };
        if expiry != 0 {
            self.heap_push(id);
        }
        id
    }

    /// Makes room for `n` more entries without growing the table.
    pub fn reserve(&mut self, hasher: &impl BuildHasher, n: usize) {
        let chunks = &self.chunks;
        self.table.reserve(n, |&e| {
            hasher.hash_one(slot_in(chunks, id_of(e)).key.as_bytes())
        });
    }

    /// Points slot `id` at a new block and expiry; returns the old offset.
    pub fn update(&mut self, hash: u64, id: u32, offset: u64, expiry: u64) -> u64 {
        self.version += 1;
        if let Some(e) = self.table.find_mut(hash, |&e| id_of(e) == id) {
            *e = pack(id, offset);
        } else {
            debug_assert!(false, "slot {id} is in the table");
        }
        let slot = self.slot_mut(id);
        let (old_off, old_exp) = (slot.offset(), slot.expiry());
        slot.set(offset, expiry);
        match (old_exp, expiry) {
            (a, b) if a == b => {}
            (0, _) => self.heap_push(id),
            (_, 0) => self.heap_remove(id),
            _ => self.heap_fix(id),
        }
        old_off
    }

    /// Removes slot `id` (whose key hashes to `hash`); returns its offset.
    pub fn remove(&mut self, hash: u64, id: u32) -> u64 {
        self.version += 1;
        let found = self.table.find_entry(hash, |&e| id_of(e) == id);
        let entry = found.unwrap_or_else(|_| unreachable!("slot {id} is in the table"));
        entry.remove();
        if self.slot(id).expiry() != 0 {
            self.heap_remove(id);
        }
        let slot = self.slot_mut(id);
        let offset = slot.offset();
        let key = std::mem::replace(&mut slot.key, CompactKey::Inline(0, [0; INLINE_KEY]));
        slot.set(VACANT, 0);
        self.heap_key_bytes -= key.heap_len();
        self.vacant.push(id);
        offset
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        let version = self.version + 1;
        *self = Shard {
            version,
            ..Shard::default()
        };
    }

    /// Every occupied slot, as (id, slot).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Slot)> + '_ {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, s)| s.offset() != VACANT)
            .map(|(i, s)| (i as u32, s))
    }

    /// Slot ids of up to `limit` entries whose expiry is at or before
    /// `now_ms`, in no particular order. Visits only those entries (and the
    /// heap nodes right below them): the cost is proportional to the
    /// entries that expired, not to the shard.
    pub fn expired(&self, now_ms: i64, limit: usize) -> Vec<u32> {
        let mut out = Vec::new();
        self.walk_expired(now_ms, |id| {
            out.push(id);
            out.len() < limit
        });
        out
    }

    /// How many entries have expired at `now_ms`.
    pub fn count_expired(&self, now_ms: i64) -> usize {
        let mut n = 0;
        self.walk_expired(now_ms, |_| {
            n += 1;
            true
        });
        n
    }

    /// Calls `f` with each entry expired at `now_ms` until it returns false.
    fn walk_expired(&self, now_ms: i64, mut f: impl FnMut(u32) -> bool) {
        if now_ms <= 0 {
            return;
        }
        let now = now_ms as u64;
        // The heap property: below a node that has not expired, none has.
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            let Some(&id) = self.heap.get(i) else {
                continue;
            };
            if self.slot(id).expiry() > now {
                continue;
            }
            if !f(id) {
                return;
            }
            stack.push(2 * i + 2);
            stack.push(2 * i + 1);
        }
    }

    /// The earliest expiry in the shard.
    pub fn earliest_expiry(&self) -> Option<u64> {
        self.heap.first().map(|&id| self.slot(id).expiry())
    }

    /// Adds slot `id` (which has an expiry) to the heap.
    fn heap_push(&mut self, id: u32) {
        let i = self.heap.len();
        self.heap.push(id);
        self.slot_mut(id).set_pos(i as u32);
        self.sift_up(i);
    }

    /// Takes slot `id` out of the heap.
    fn heap_remove(&mut self, id: u32) {
        let i = self.slot(id).pos() as usize;
        debug_assert_eq!(self.heap.get(i), Some(&id), "slot {id} is in the heap");
        if self.heap.get(i) != Some(&id) {
            return;
        }
        self.slot_mut(id).set_pos(NO_POS);
        let last = self.heap.pop().unwrap_or(id);
        if i < self.heap.len() {
            self.place(i, last);
            self.sift_down(i);
            self.sift_up(i);
        }
        // Give memory back when the heap shrank a lot (after a mass expiry).
        if self.heap.capacity() > 64 && self.heap.capacity() > 4 * self.heap.len() {
            self.heap.shrink_to(2 * self.heap.len());
        }
    }

    /// Restores the heap order after slot `id`'s expiry changed.
    fn heap_fix(&mut self, id: u32) {
        let i = self.slot(id).pos() as usize;
        debug_assert_eq!(self.heap.get(i), Some(&id), "slot {id} is in the heap");
        let i = self.sift_up(i);
        self.sift_down(i);
    }

    fn place(&mut self, i: usize, id: u32) {
        self.heap[i] = id;
        self.slot_mut(id).set_pos(i as u32);
    }

    fn key_at(&self, i: usize) -> u64 {
        self.slot(self.heap[i]).expiry()
    }

    /// Moves the node at `i` up to its place; returns where it went.
    fn sift_up(&mut self, mut i: usize) -> usize {
        let id = self.heap[i];
        let k = self.slot(id).expiry();
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.key_at(parent) <= k {
                break;
            }
            let p = self.heap[parent];
            self.place(i, p);
            i = parent;
        }
        self.place(i, id);
        i
    }

    /// Moves the node at `i` down to its place.
    fn sift_down(&mut self, mut i: usize) {
        let id = self.heap[i];
        let k = self.slot(id).expiry();
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.key_at(r) < self.key_at(l) {
                r
            } else {
                l
            };
            if self.key_at(c) >= k {
                break;
            }
            let cid = self.heap[c];
            self.place(i, cid);
            i = c;
        }
        self.place(i, id);
    }

    /// Checks the heap: every entry with an expiry is in it once, at the
    /// position its slot records, and no parent expires after its children.
    #[cfg(any(test, feature = "testing"))]
    pub fn check_heap(&self) -> Result<(), String> {
        for (i, &id) in self.heap.iter().enumerate() {
            let slot = self
                .get(id)
                .ok_or(format!("heap node {i}: slot {id} is vacant"))?;
            if slot.pos() as usize != i {
                return Err(format!(
                    "slot {id} says heap position {}, is at {i}",
                    slot.pos()
                ));
            }
            if slot.expiry() == 0 {
                return Err(format!("slot {id} has no expiry but is in the heap"));
            }
            if i > 0 && self.key_at((i - 1) / 2) > slot.expiry() {
                return Err(format!("heap node {i} expires before its parent"));
            }
        }
        let with_expiry = self.iter().filter(|(_, s)| s.expiry() != 0).count();
        if with_expiry != self.heap.len() {
            return Err(format!(
                "{with_expiry} entries have an expiry, the heap holds {}",
                self.heap.len()
            ));
        }
        Ok(())
    }

    /// Bytes of memory the shard uses (an estimate of its heap footprint).
    pub fn memory(&self) -> usize {
        let table = self.table.capacity() * (std::mem::size_of::<u64>() + 1);
        let slots = self.chunks.len() * CHUNK * std::mem::size_of::<Slot>();
        let vacant = self.vacant.capacity() * 4;
        let expiries = self.heap.capacity() * 4;
        table + slots + vacant + expiries + self.heap_key_bytes
    }
}

fn slot_in(chunks: &[Vec<Slot>], id: u32) -> &Slot {
    &chunks[id as usize / CHUNK][id as usize % CHUNK]
}

/// The LRU order of one shard's entries: a doubly linked list through slot ids,
/// most recent at the head, each link stamped with a store-wide use counter so
/// that the least recent entry of the whole store is the shard tail with the
/// smallest stamp.
#[derive(Default)]
pub struct LruList {
    links: Vec<Link>,
    head: Option<u32>,
    tail: Option<u32>,
}

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    stamp: u64,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
    stamp: 0,
};

impl LruList {
    fn unlink(&mut self, id: u32) {
        let Link { prev, next, .. } = self.links[id as usize];
        match prev {
            NIL => self.head = (next != NIL).then_some(next),
            p => self.links[p as usize].next = next,
        }
        match next {
            NIL => self.tail = (prev != NIL).then_some(prev),
            n => self.links[n as usize].prev = prev,
        }
        self.links[id as usize] = UNLINKED;
    }

    fn push_front(&mut self, id: u32, stamp: u64) {
        if self.links.len() <= id as usize {
            self.links.resize(id as usize + 1, UNLINKED);
        }
        let old = self.head;
        self.links[id as usize] = Link {
            prev: NIL,
            next: old.unwrap_or(NIL),
            stamp,
        };
        match old {
            Some(h) => self.links[h as usize].prev = id,
            None => self.tail = Some(id),
        }
        self.head = Some(id);
    }

    fn is_linked(&self, id: u32) -> bool {
        self.head == Some(id) || self.links.get(id as usize).is_some_and(|l| l.prev != NIL)
    }

    /// Marks `id` as just used (inserting it if new).
    pub fn touch(&mut self, id: u32, stamp: u64) {
        if self.is_linked(id) {
            self.unlink(id);
        }
        self.push_front(id, stamp);
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: u32) {
        if self.is_linked(id) {
            self.unlink(id);
        }
    }

    /// The least recently used slot and its stamp.
    pub fn oldest(&self) -> Option<(u32, u64)> {
        self.tail.map(|t| (t, self.links[t as usize].stamp))
    }

    /// Empties the list.
    pub fn clear(&mut self) {
        *self = LruList::default();
    }

    /// Slot ids from least to most recent.
    #[cfg(test)]
    pub fn ids_oldest_first(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = self.tail;
        while let Some(id) = at {
            out.push(id);
            let p = self.links[id as usize].prev;
            at = (p != NIL).then_some(p);
        }
        out
    }

    /// Bytes of memory used.
    pub fn memory(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
    }
}

/// The hasher keys are hashed with (random per store).
pub type KeyHasher = foldhash::fast::SeedableRandomState;

/// Which shard a key hash belongs to. Uses bits that `hashbrown` uses for
/// neither the bucket index (low bits) nor the control byte (top 7 bits).
pub fn shard_of(hash: u64) -> usize {
    ((hash >> 40) as usize) & (SHARDS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_and_long_ones_on_the_heap() {
        assert!(matches!(CompactKey::new(b""), CompactKey::Inline(0, _)));
        assert!(matches!(
            CompactKey::new(&[7u8; 22]),
            CompactKey::Inline(22, _)
        ));
        assert!(matches!(CompactKey::new(&[7u8; 23]), CompactKey::Heap(_)));
        for n in [0usize, 1, 21, 22, 23, 100] {
            let k: Vec<u8> = (0..n as u8).collect();
            assert_eq!(CompactKey::new(&k).as_bytes(), &k[..]);
        }
    }

    #[test]
    fn shard_insert_find_update_remove() {
        let h = KeyHasher::default();
        let mut s = Shard::default();
        let keys: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| format!("key-{i}-{}", "x".repeat(i as usize % 40)).into_bytes())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            let id = s.insert(
                &h,
                h.hash_one(k),
                k,
                i as u64 * 8,
                if i % 3 == 0 { 100 + i as u64 } else { 0 },
            );
            assert_eq!(s.slot(id).key.as_bytes(), &k[..]);
        }
        assert_eq!(s.len(), 3000);
        for (i, k) in keys.iter().enumerate() {
            let id = s.find(h.hash_one(k), k).unwrap();
            assert_eq!(s.slot(id).offset(), i as u64 * 8);
        }
        assert!(s.find(h.hash_one(b"nope"), b"nope").is_none());
        // Expiry bookkeeping.
        assert_eq!(
            s.expired(102, 100).len(),
            1,
            "only key 0 (expiry 100) is <= 102"
        );
        let id0 = s.find(h.hash_one(&keys[0]), &keys[0]).unwrap();
        assert_eq!(s.update(h.hash_one(&keys[0]), id0, 4096, 0), 0);
        assert!(s.expired(102, 100).is_empty());
        assert_eq!(s.earliest_expiry(), Some(103));
        // Remove half; the rest stays findable and ids are reused.
        for k in keys.iter().step_by(2) {
            let id = s.find(h.hash_one(k), k).unwrap();
            s.remove(h.hash_one(k), id);
        }
        assert_eq!(s.len(), 1500);
        assert_eq!(s.iter().count(), 1500);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.find(h.hash_one(k), k).is_some(), i % 2 == 1);
        }
        let id = s.insert(&h, h.hash_one(b"new"), b"new", 8, 0);
        assert!((id as usize) < 3000, "a vacant slot was reused");
    }

    #[test]
    fn the_expiry_heap_follows_inserts_renewals_and_removals() {
        let h = KeyHasher::default();
        let mut s = Shard::default();
        let mut rng = 0x9e37_79b9_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for step in 0..20_000u64 {
            let r = next();
            match r % 4 {
                0 | 1 => {
                    let k = format!("k{step}").into_bytes();
                    let exp = if r % 8 < 6 { 1 + next() % 1000 } else { 0 };
                    s.insert(&h, h.hash_one(&k), &k, step * 8, exp);
                    keys.push(k);
                }
                2 if !keys.is_empty() => {
                    let k = &keys[(next() % keys.len() as u64) as usize];
                    let id = s.find(h.hash_one(k), k).unwrap();
                    let exp = if r % 16 < 12 { 1 + next() % 1000 } else { 0 };
                    s.update(h.hash_one(k), id, step * 8, exp);
                }
                _ if !keys.is_empty() => {
                    let k = keys.swap_remove((next() % keys.len() as u64) as usize);
                    let id = s.find(h.hash_one(&k), &k).unwrap();
                    s.remove(h.hash_one(&k), id);
                }
                _ => {}
            }
            if step % 997 == 0 {
                s.check_heap().unwrap();
                let now = (next() % 1000) as i64;
                let mut got = s.expired(now, usize::MAX);
                got.sort_unstable();
                let mut want: Vec<u32> = s
                    .iter()
                    .filter(|(_, sl)| sl.expiry() != 0 && sl.expiry() <= now as u64)
                    .map(|(id, _)| id)
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "expired at {now}");
                assert_eq!(s.count_expired(now), want.len());
                let min = s
                    .iter()
                    .map(|(_, sl)| sl.expiry())
                    .filter(|&e| e != 0)
                    .min();
                assert_eq!(s.earliest_expiry(), min);
            }
        }
        s.check_heap().unwrap();
    }

    #[test]
    fn lru_orders_by_use() {
        let mut l = LruList::default();
        for id in 0..5 {
            l.touch(id, id as u64);
        }
        assert_eq!(l.oldest(), Some((0, 0)));
        l.touch(0, 10);
        assert_eq!(l.oldest(), Some((1, 1)));
        l.remove(1);
        assert_eq!(l.oldest(), Some((2, 2)));
        assert_eq!(l.ids_oldest_first(), vec![2, 3, 4, 0]);
        l.remove(4);
        l.remove(4);
        assert_eq!(l.ids_oldest_first(), vec![2, 3, 0]);
        for id in [2, 3, 0] {
            l.remove(id);
        }
        assert_eq!(l.oldest(), None);
        l.touch(7, 1);
        assert_eq!(l.ids_oldest_first(), vec![7]);
    }

    #[test]
    fn shards_spread_keys() {
        let h = KeyHasher::default();
        let mut counts = [0usize; SHARDS];
        for i in 0..64_000u32 {
            counts[shard_of(h.hash_one(i.to_le_bytes()))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700 && c < 1300), "{counts:?}");
    }
}
