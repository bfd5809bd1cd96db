//! Fuzz target bodies and the reference model, behind the `testing` feature.
//!
//! Each target is an ordinary function that panics when the store breaks a
//! promise. `fuzz/` drives them with cargo-fuzz; `tests/fuzz_corpus.rs`
//! replays the checked-in corpus through them on stable Rust; and the
//! property tests (`tests/model.rs`) drive [`run`] with random scenarios.
//! Not part of the stable API.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::format::{
    BlockHeader, FILE_HEADER_LEN, FORMAT_VERSION, FileHeader, Kind, MAX_EXPIRY_MS, crc,
    decode_expiry_word, entry_block_len, expiry_word,
};
use crate::inspect::{BlockKind, Walker};
use crate::io::{MemStorage, Storage};
use crate::{Clock, Error, ManualClock, Options, Store, SyncPolicy};

/// What the store should hold: key → (value, expiry ms or 0), with the LRU
/// order of uses and of writes.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Key → (value, expiry in ms since the epoch, 0 for never).
    pub map: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// Last use per key (higher is more recent).
    pub used: HashMap<Vec<u8>, u64>,
    /// Last write per key: the LRU order after a reopen.
    pub written: HashMap<Vec<u8>, u64>,
    tick: u64,
    /// The entry cap.
    pub cap: Option<usize>,
}

impl Model {
    /// An empty model with an optional entry cap.
    pub fn new(cap: Option<usize>) -> Model {
        Model {
            cap,
            ..Model::default()
        }
    }

    fn mark_used(&mut self, k: &[u8]) {
        self.tick += 1;
        self.used.insert(k.to_vec(), self.tick);
    }

    /// Evicts the least recently used entry; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .used
            .iter()
            .min_by_key(|&(_, &t)| t)
            .map(|(k, _)| k.clone());
        oldest.is_some_and(|k| self.delete(&k))
    }

    /// The value of `k` if present and not expired at `now`.
    pub fn visible(&self, k: &[u8], now: i64) -> Option<&Vec<u8>> {
        self.map
            .get(k)
            .filter(|(_, e)| *e == 0 || (*e as i64) > now)
            .map(|(v, _)| v)
    }

    /// A put with an expiry (0 for never); an expiry already past deletes.
    pub fn put(&mut self, k: &[u8], v: &[u8], expiry: u64, now: i64) {
        if expiry != 0 && expiry as i64 <= now {
            self.delete(k);
            return;
        }
        let new = !self.map.contains_key(k);
        if new && self.cap.is_some_and(|c| self.map.len() >= c) {
            // Expired entries count for nothing: they go before a live
            // entry is evicted.
            self.purge(now);
        }
        self.map.insert(k.to_vec(), (v.to_vec(), expiry));
        self.mark_used(k);
        self.written.insert(k.to_vec(), self.tick);
        if new && let Some(cap) = self.cap {
            while self.map.len() > cap && self.evict_oldest() {}
        }
    }

    /// A get: counts as a use when the key is visible.
    pub fn get(&mut self, k: &[u8], now: i64) -> Option<Vec<u8>> {
        let v = self.visible(k, now).cloned();
        if v.is_some() {
            self.mark_used(k);
        }
        v
    }

    /// An atomic batch (`Store::apply`) of `ops`, folded per key in order and
    /// applied key by key in the order each key first appears, after room
    /// is made under the cap for its new keys (as the store does).
    /// Returns false for a batch the store refuses: one whose new keys
    /// need more room than the cap leaves beside its other keys (expired
    /// entries may have been purged by then, as in the store).
    pub fn apply_batch(&mut self, ops: &[BatchOp], now: i64) -> bool {
        self.batch(ops, now, None)
    }

    /// The first step of [`apply_batch`](Self::apply_batch) alone: the room
    /// made under the cap (purges, evictions), as a crash after it and
    /// before the batch is written leaves the store. Returns false where the
    /// batch would be refused.
    pub fn batch_room(&mut self, ops: &[BatchOp], now: i64) -> bool {
        self.batch(ops, now, Some(usize::MAX))
    }

    /// Part of that first step: its purge and no more than `evictions`
    /// evictions, each a write of its own that a crash may come after.
    pub fn batch_room_part(&mut self, ops: &[BatchOp], now: i64, evictions: usize) -> bool {
        self.batch(ops, now, Some(evictions))
    }

    /// The first step of a put of a new key `k` alone: the room made under
    /// the cap, as a crash after it and before the entry is written leaves
    /// the store (a key already there needs none).
    pub fn room_for(&mut self, k: &[u8], now: i64) {
        let Some(cap) = self.cap else {
            return;
        };
        if self.map.contains_key(k) || self.map.len() < cap {
            return;
        }
        self.purge(now);
        while self.map.len() >= cap && self.evict_oldest() {}
    }

    /// `room_only`: the room alone, with at most this many evictions.
    fn batch(&mut self, ops: &[BatchOp], now: i64, room_only: Option<usize>) -> bool {
        let mut budget = room_only.unwrap_or(usize::MAX);
        enum A {
            Put(Vec<u8>, u64),
            Delete,
            Touch(i64),
            Expire,
        }
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut acts: HashMap<Vec<u8>, A> = HashMap::new();
        for op in ops {
            let (k, next) = match op {
                BatchOp::Put(k, _, e) if *e != 0 && *e as i64 <= now => (k, A::Delete),
                BatchOp::Put(k, v, e) => (k, A::Put(v.clone(), *e)),
                BatchOp::Delete(k) => (k, A::Delete),
                BatchOp::Touch(k, e) => {
                    let past = *e <= now;
                    let next = match acts.get(k) {
                        Some(A::Put(_, _)) if past => A::Delete,
                        Some(A::Put(v, _)) => A::Put(v.clone(), *e as u64),
                        Some(A::Delete) => A::Delete,
                        Some(A::Expire) => A::Expire,
                        Some(A::Touch(_)) | None if past => A::Expire,
                        Some(A::Touch(_)) | None => A::Touch(*e),
                    };
                    (k, next)
                }
            };
            if !acts.contains_key(k) {
                order.push(k.clone());
            }
            acts.insert(k.clone(), next);
        }
        let mut reserved: Vec<Vec<u8>> = Vec::new();
        if let Some(cap) = self.cap {
            // As the store does: the batch's present keys are marked used;
            // room is made for its new keys, counting the keys it deletes,
            // by evicting other keys only (or the batch is refused).
            for k in &order {
                if self.map.contains_key(k) {
                    self.mark_used(k);
                }
            }
            loop {
                let new: Vec<Vec<u8>> = order
                    .iter()
                    .filter(|k| {
                        matches!(acts[*k], A::Put(..) | A::Touch(_))
                            && !self.map.contains_key(*k)
                            && !reserved.contains(k)
                    })
                    .cloned()
                    .collect();
                // A touch of a key that is not there writes nothing.
                let new: Vec<Vec<u8>> = new
                    .into_iter()
                    .filter(|k| matches!(acts[k], A::Put(..)))
                    .collect();
                if new.is_empty() {
                    break;
                }
                let frees = |m: &Model| {
                    order
                        .iter()
                        .filter(|k| match acts[*k] {
                            A::Delete => m.map.contains_key(*k),
                            A::Expire => m.visible(k, now).is_some(),
                            _ => false,
                        })
                        .count()
                };
                let excess = |m: &Model| {
                    (m.map.len() + reserved.len() + new.len()).saturating_sub(cap + frees(m))
                };
                if excess(self) > 0 {
                    self.purge(now);
                }
                let present = order.iter().filter(|k| self.map.contains_key(*k)).count();
                if excess(self) > self.map.len() - present {
                    return false;
                }
                while excess(self) > 0 {
                    if budget == 0 {
                        return true;
                    }
                    if !self.evict_oldest() {
                        break;
                    }
                    budget -= 1;
                }
                reserved.extend(new);
            }
        }
        if room_only.is_some() {
            return true;
        }
        for k in &order {
            match &acts[k] {
                // Its room is made: no eviction now (the batch's deletes,
                // later in it, bring the count back under the cap).
                A::Put(v, e) if reserved.contains(k) && !(*e != 0 && *e as i64 <= now) => {
                    self.map.insert(k.clone(), (v.clone(), *e));
                    self.mark_used(k);
                    self.written.insert(k.clone(), self.tick);
                }
                A::Put(v, e) => self.put(k, v, *e, now),
                A::Delete => {
                    self.delete(k);
                }
                A::Touch(e) => {
                    if self.touch(k, *e, now) {
                        // A new copy: a write, for the order after a reopen.
                        self.written.insert(k.clone(), self.tick);
                    }
                }
                A::Expire => {
                    if self.visible(k, now).is_some() {
                        self.delete(k);
                    }
                }
            }
        }
        true
    }

    /// Renews a visible key's expiry (at or before `now`: it expires now).
    /// Returns whether the key was visible.
    pub fn touch(&mut self, k: &[u8], expiry: i64, now: i64) -> bool {
        if self.visible(k, now).is_none() {
            return false;
        }
        if expiry <= now {
            self.delete(k);
        } else {
            self.map.get_mut(k).expect("visible").1 = expiry as u64;
            self.mark_used(k);
        }
        true
    }

    /// Removes `k`; returns whether it was in the map (expired or not).
    pub fn delete(&mut self, k: &[u8]) -> bool {
        self.used.remove(k);
        self.written.remove(k);
        self.map.remove(k).is_some()
    }

    /// How many entries are visible at `now` (what `Store::len` says).
    pub fn live_len(&self, now: i64) -> usize {
        self.map
            .keys()
            .filter(|k| self.visible(k, now).is_some())
            .count()
    }

    /// Removes expired entries; returns how many.
    pub fn purge(&mut self, now: i64) -> usize {
        let dead: Vec<Vec<u8>> = self
            .map
            .iter()
            .filter(|(_, (_, e))| *e != 0 && (*e as i64) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.delete(k);
        }
        dead.len()
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.map.clear();
        self.used.clear();
        self.written.clear();
    }

    /// A reopen: expired entries are dropped and the LRU order becomes the
    /// order of writes (the file does not record reads).
    pub fn reopen(&mut self, now: i64) {
        self.purge(now);
        self.used = self.written.clone();
    }

    /// The visible keys, sorted.
    pub fn live_keys(&self, now: i64) -> Vec<Vec<u8>> {
        let mut v: Vec<_> = self
            .map
            .keys()
            .filter(|k| self.visible(k, now).is_some())
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// One operation of a batch, for [`Model::apply_batch`]: keys, values and
/// expiries (ms since the epoch) as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// A put (expiry 0: never).
    Put(Vec<u8>, Vec<u8>, u64),
    /// A delete.
    Delete(Vec<u8>),
    /// A touch to this expiry.
    Touch(Vec<u8>, i64),
}

/// One step of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `put(key(k), value of n bytes)`.
    Put(u8, u16),
    /// `put_with_ttl(key(k), value of n bytes, ttl ms)`.
    PutTtl(u8, u16, u16),
    /// `get(key(k))`.
    Get(u8),
    /// `get_ref(key(k))`.
    GetRef(u8),
    /// `delete(key(k))`.
    Delete(u8),
    /// `clear()`.
    Clear,
    /// `purge_expired()` (at odd steps: one pass of active expiry's sweep,
    /// `Store::sweep_expired_now`).
    Purge,
    /// Moves the clock forward by this many ms.
    Advance(u16),
    /// Close and open again.
    Reopen,
    /// `sync()`.
    Sync,
    /// `touch(key(k), ttl ms)`.
    Touch(u8, u16),
    /// `compact()`.
    Compact,
    /// The process dies (nothing more is written) and the store is opened
    /// again from the file as it was.
    Crash,
    /// `compare_and_swap(key(k), expected, value of n bytes)`, expecting
    /// the key's value (`true`: it succeeds) or another one (it fails).
    Cas(u8, u16, bool),
    /// `put_if_absent(key(k), value of n bytes)`.
    PutIfAbsent(u8, u16),
    /// `update(key(k), append a byte)`.
    Update(u8),
    /// `compare_and_swap(key(k), its value, None)`.
    CasDelete(u8),
    /// `apply` of a batch of these (opcode 17).
    Batch(Vec<BatchItem>),
}

/// One operation of a scenario's batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchItem {
    /// `put(key(k), value of n bytes)`.
    Put(u8, u16),
    /// `delete(key(k))`.
    Delete(u8),
    /// `touch(key(k), ttl ms)`.
    Touch(u8, u16),
}

const OPCODES: u8 = 17;

/// A store configuration and the operations to run on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The entry cap.
    pub cap: Option<usize>,
    /// The fragmentation factor.
    pub frag: f64,
    /// `SyncPolicy::Always` instead of `Never`.
    pub always: bool,
    /// `Options::frequent_syncs(true)` (under `Never`: growth by a reserve
    /// written as zeros; on anyway under `Always`).
    pub frequent: bool,
    /// The operations.
    pub ops: Vec<Op>,
}

impl Scenario {
    /// Decodes any bytes into a scenario (the fuzzer's input format): one
    /// configuration byte, then per operation an opcode byte and its
    /// arguments (missing bytes read as zero).
    pub fn from_bytes(data: &[u8]) -> Scenario {
        let mut it = data.iter().copied();
        let mut byte = move || it.next();
        let conf = byte().unwrap_or(0);
        let cap = (conf & 7 != 0).then_some(usize::from(conf & 7));
        let frag = [0.5, 0.75, 1.0][usize::from(((conf >> 3) & 3) % 3)];
        let always = conf & 0x40 != 0;
        let frequent = conf & 0x80 != 0;
        let mut ops = Vec::new();
        while let Some(code) = byte() {
            let mut arg8 = || byte().unwrap_or(0);
            if code == OPCODES {
                let n = arg8() % 8;
                let items = (0..n)
                    .map(|_| {
                        let (kind, k) = (arg8() % 3, arg8() % 16);
                        let n = u16::from_le_bytes([arg8(), arg8()]);
                        match kind {
                            0 => BatchItem::Put(k, n % 5001),
                            1 => BatchItem::Delete(k),
                            _ => BatchItem::Touch(k, n % 3000),
                        }
                    })
                    .collect();
                ops.push(Op::Batch(items));
                continue;
            }
            let op = match code % OPCODES {
                0 => Op::Put(arg8() % 16, u16::from_le_bytes([arg8(), arg8()]) % 5001),
                1 => Op::PutTtl(
                    arg8() % 16,
                    u16::from_le_bytes([arg8(), arg8()]) % 5001,
                    u16::from_le_bytes([arg8(), arg8()]) % 3000 + 1,
                ),
                2 => Op::Get(arg8() % 16),
                3 => Op::GetRef(arg8() % 16),
                4 => Op::Delete(arg8() % 16),
                5 => Op::Clear,
                6 => Op::Purge,
                7 => Op::Advance(u16::from_le_bytes([arg8(), arg8()]) % 2000),
                8 => Op::Reopen,
                9 => Op::Sync,
                10 => Op::Touch(arg8() % 16, u16::from_le_bytes([arg8(), arg8()]) % 3000),
                11 => Op::Compact,
                12 => Op::Crash,
                13 => Op::Cas(
                    arg8() % 16,
                    u16::from_le_bytes([arg8(), arg8()]) % 5001,
                    arg8() % 4 != 0,
                ),
                14 => Op::PutIfAbsent(arg8() % 16, u16::from_le_bytes([arg8(), arg8()]) % 5001),
                15 => Op::Update(arg8() % 16),
                _ => Op::CasDelete(arg8() % 16),
            };
            ops.push(op);
        }
        Scenario {
            cap,
            frag,
            always,
            frequent,
            ops,
        }
    }

    /// Encodes a scenario so that [`from_bytes`](Self::from_bytes) gives it
    /// back (used to write seed corpora).
    pub fn to_bytes(&self) -> Vec<u8> {
        let frag = [0.5, 0.75, 1.0]
            .iter()
            .position(|&f| f == self.frag)
            .unwrap_or(1) as u8;
        let mut out = vec![
            self.cap.map_or(0, |c| c.clamp(1, 7) as u8)
                | frag << 3
                | u8::from(self.always) << 6
                | u8::from(self.frequent) << 7,
        ];
        for op in &self.ops {
            let le = |v: u16| v.to_le_bytes();
            match *op {
                Op::Put(k, n) => out.extend([0, k, le(n)[0], le(n)[1]]),
                Op::PutTtl(k, n, t) => {
                    out.extend([1, k, le(n)[0], le(n)[1], le(t - 1)[0], le(t - 1)[1]])
                }
                Op::Get(k) => out.extend([2, k]),
                Op::GetRef(k) => out.extend([3, k]),
                Op::Delete(k) => out.extend([4, k]),
                Op::Clear => out.push(5),
                Op::Purge => out.push(6),
                Op::Advance(ms) => out.extend([7, le(ms)[0], le(ms)[1]]),
                Op::Reopen => out.push(8),
                Op::Sync => out.push(9),
                Op::Touch(k, t) => out.extend([10, k, le(t)[0], le(t)[1]]),
                Op::Compact => out.push(11),
                Op::Crash => out.push(12),
                Op::Cas(k, n, right) => out.extend([13, k, le(n)[0], le(n)[1], u8::from(right)]),
                Op::PutIfAbsent(k, n) => out.extend([14, k, le(n)[0], le(n)[1]]),
                Op::Update(k) => out.extend([15, k]),
                Op::CasDelete(k) => out.extend([16, k]),
                Op::Batch(ref items) => {
                    out.extend([OPCODES, items.len() as u8]);
                    for item in items {
                        let (kind, k, n) = match *item {
                            BatchItem::Put(k, n) => (0, k, n),
                            BatchItem::Delete(k) => (1, k, 0),
                            BatchItem::Touch(k, t) => (2, k, t),
                        };
                        out.extend([kind, k, le(n)[0], le(n)[1]]);
                    }
                }
            }
        }
        out
    }
}

/// Key `k` of a scenario: keys 8..16 are longer than the index keeps inline.
pub fn key(k: u8) -> Vec<u8> {
    if k < 8 {
        vec![b'k', k]
    } else {
        format!("a-rather-long-key-number-{k:03}").into_bytes()
    }
}

/// A value that says which key and which write it belongs to.
pub fn value(k: u8, version: u32, len: u16) -> Vec<u8> {
    let mut v = format!("{k}:{version}:").into_bytes();
    v.resize(usize::from(len), (version % 251) as u8);
    v.truncate(usize::from(len));
    v
}

/// Where a scenario's store lives.
#[derive(Clone, Debug)]
pub enum Backing {
    /// A real file at this path (memory-mapped).
    File(PathBuf),
    /// An in-memory storage.
    Mem,
}

struct Bed {
    backing: Backing,
    mem: Arc<MemStorage>,
    opts: Options,
}

impl Bed {
    fn open(&self) -> Store {
        match &self.backing {
            Backing::File(p) => self.opts.open(p).expect("open"),
            Backing::Mem => self
                .opts
                .open_on("scenario.sfs", self.mem.clone() as Arc<dyn Storage>)
                .expect("open"),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.backing {
            Backing::File(p) => std::fs::read(p).expect("read the store file"),
            Backing::Mem => self.mem.bytes(),
        }
    }

    /// Replaces the store with one opened from the bytes as they are now,
    /// as if the process had died: the old handle's own closing writes are
    /// thrown away.
    fn crash(&mut self, store: Store) -> Store {
        let bytes = self.bytes();
        match &self.backing {
            Backing::File(p) => {
                drop(store);
                std::fs::write(p, &bytes).expect("restore the crashed file");
            }
            Backing::Mem => {
                self.mem = Arc::new(MemStorage::with_bytes(bytes));
                drop(store);
            }
        }
        self.open()
    }
}

const START_MS: i64 = 1_000_000;

/// Runs a scenario against the model. After every step it checks the
/// store's invariants, every key against the model, and that a fresh open of
/// the bytes as they are now (what a crash would leave) holds the same.
/// Panics on the first difference.
pub fn run(s: &Scenario, backing: Backing) {
    let clock = Arc::new(ManualClock::new(START_MS));
    let policy = if s.always {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    };
    let mut opts = Options::new()
        .sync(policy)
        .clock(clock.clone())
        .fragmentation_factor(s.frag)
        .auto_compact(None)
        // The steps remove expired entries themselves (`Purge`, which
        // alternates `purge_expired` and a pass of the sweep): a background
        // sweep would race the model.
        .active_expiry(None);
    if s.frequent {
        opts = opts.frequent_syncs(true);
    }
    if let Some(n) = s.cap {
        opts = opts.max_entries(n);
    }
    let mut bed = Bed {
        backing,
        mem: Arc::new(MemStorage::new()),
        opts,
    };
    let mut store = bed.open();
    let mut model = Model::new(s.cap);
    let mut version = 0u32;
    for (step, op) in s.ops.iter().enumerate() {
        let now = clock.now_millis();
        let when = format!("step {step} ({op:?})");
        match *op {
            Op::Put(k, n) => {
                version += 1;
                let v = value(k, version, n);
                store.put(key(k), &v).expect("put");
                model.put(&key(k), &v, 0, now);
            }
            Op::PutTtl(k, n, ttl) => {
                version += 1;
                let v = value(k, version, n);
                store
                    .put_with_ttl(key(k), &v, Duration::from_millis(u64::from(ttl)))
                    .expect("put_with_ttl");
                model.put(&key(k), &v, (now + i64::from(ttl)) as u64, now);
            }
            Op::Get(k) => assert_eq!(
                store.get(key(k)).expect("get"),
                model.get(&key(k), now),
                "{when}"
            ),
            Op::GetRef(k) => {
                let r = store.get_ref(key(k)).expect("get_ref").map(|r| r.to_vec());
                assert_eq!(r, model.get(&key(k), now), "{when}");
            }
            Op::Delete(k) => {
                let visible = model.visible(&key(k), now).is_some();
                model.delete(&key(k));
                assert_eq!(store.delete(key(k)).expect("delete"), visible, "{when}");
            }
            Op::Clear => {
                store.clear().expect("clear");
                model.clear();
                assert_eq!(store.stats().file_len, FILE_HEADER_LEN, "{when}");
            }
            Op::Purge => {
                let n = model.purge(now);
                let purged = if step % 2 == 0 {
                    store.purge_expired().expect("purge")
                } else {
                    store.sweep_expired_now().expect("sweep")
                };
                assert_eq!(purged, n, "{when}");
            }
            Op::Advance(ms) => clock.advance(Duration::from_millis(u64::from(ms))),
            Op::Reopen | Op::Crash => {
                store = if *op == Op::Crash {
                    bed.crash(store)
                } else {
                    drop(store);
                    bed.open()
                };
                model.reopen(now);
                assert_eq!(
                    store.len(),
                    model.map.len(),
                    "{when}: expired entries are dropped at open"
                );
            }
            Op::Sync => store.sync().expect("sync"),
            Op::Touch(k, ttl) => {
                let renewed = store
                    .touch(key(k), Duration::from_millis(u64::from(ttl)))
                    .expect("touch");
                assert_eq!(
                    renewed,
                    model.touch(&key(k), now + i64::from(ttl), now),
                    "{when}"
                );
            }
            Op::Cas(k, n, right) => {
                version += 1;
                let v = value(k, version, n);
                let current = model.visible(&key(k), now).cloned();
                let expected = match (&current, right) {
                    (c, true) => c.clone(),
                    (Some(_), false) => None,
                    (None, false) => Some(b"not there".to_vec()),
                };
                let r = store
                    .compare_and_swap(key(k), expected.as_deref(), Some(&v))
                    .expect("compare_and_swap");
                if right {
                    assert_eq!(r, Ok(()), "{when}");
                    model.put(&key(k), &v, 0, now);
                } else {
                    assert_eq!(r.map_err(|c| c.current), Err(current), "{when}");
                }
            }
            Op::PutIfAbsent(k, n) => {
                version += 1;
                let v = value(k, version, n);
                let r = store.put_if_absent(key(k), &v).expect("put_if_absent");
                match model.visible(&key(k), now).cloned() {
                    None => {
                        assert_eq!(r, Ok(()), "{when}");
                        model.put(&key(k), &v, 0, now);
                    }
                    current => assert_eq!(r.map_err(|c| c.current), Err(current), "{when}"),
                }
            }
            Op::Update(k) => {
                let new = store
                    .update(key(k), |v| Some([v.unwrap_or(b""), b"+"].concat()))
                    .expect("update");
                let (mut expected, expiry) = match model.visible(&key(k), now) {
                    Some(v) => (v.clone(), model.map[&key(k)].1),
                    None => (Vec::new(), 0),
                };
                expected.push(b'+');
                assert_eq!(new.as_ref(), Some(&expected), "{when}");
                model.put(&key(k), &expected, expiry, now);
            }
            Op::CasDelete(k) => {
                let current = model.visible(&key(k), now).cloned();
                let r = store
                    .compare_and_swap(key(k), current.as_deref(), None)
                    .expect("compare_and_swap");
                assert_eq!(r, Ok(()), "{when}");
                model.delete(&key(k));
            }
            Op::Batch(ref items) => {
                let mut b = crate::Batch::new();
                let mut ops = Vec::new();
                for item in items {
                    match *item {
                        BatchItem::Put(k, n) => {
                            version += 1;
                            let v = value(k, version, n);
                            b.put(key(k), &v);
                            ops.push(BatchOp::Put(key(k), v, 0));
                        }
                        BatchItem::Delete(k) => {
                            b.delete(key(k));
                            ops.push(BatchOp::Delete(key(k)));
                        }
                        BatchItem::Touch(k, t) => {
                            b.touch(key(k), Duration::from_millis(u64::from(t)));
                            ops.push(BatchOp::Touch(key(k), now + i64::from(t)));
                        }
                    }
                }
                let r = store.apply(&b);
                if model.apply_batch(&ops, now) {
                    r.unwrap_or_else(|e| panic!("{when}: {e}"));
                } else {
                    assert!(matches!(r, Err(Error::TooLarge { .. })), "{when}: {r:?}");
                }
            }
            Op::Compact => {
                let before = store.stats().file_len;
                let c = store.compact().expect("compact");
                assert_eq!(c.file_len_before, before, "{when}");
                let st = store.stats();
                assert_eq!(st.file_len, c.file_len_after, "{when}");
                assert_eq!(
                    st.free_bytes + st.live_bytes + FILE_HEADER_LEN,
                    st.file_len,
                    "{when}: all held space freed"
                );
            }
        }
        let now = clock.now_millis();
        store
            .check_invariants()
            .unwrap_or_else(|e| panic!("{when}: {e}"));
        assert_eq!(store.len(), model.live_len(now), "{when}: live entry count");
        assert_eq!(
            store.stats().entries,
            model.map.len(),
            "{when}: entry count"
        );
        check_against_model(&store, &model, now, &when);
        let fresh = Options::new()
            .read_only(true)
            .clock(clock.clone())
            .open_on(
                "snapshot.sfs",
                Arc::new(MemStorage::with_bytes(bed.bytes())) as Arc<dyn Storage>,
            )
            .expect("a fresh open of the bytes");
        assert_eq!(
            fresh.stats().corrupt_blocks,
            0,
            "{when}: the file has no damage"
        );
        check_against_model(&fresh, &model, now, &format!("{when}, fresh open"));
    }
    drop(store);
    let store = bed.open();
    model.reopen(clock.now_millis());
    store
        .check_invariants()
        .unwrap_or_else(|e| panic!("final reopen: {e}"));
    check_against_model(&store, &model, clock.now_millis(), "final reopen");
}

fn check_against_model(s: &Store, model: &Model, now: i64, when: &str) {
    let mut keys = s.keys();
    keys.sort();
    assert_eq!(keys, model.live_keys(now), "{when}: live keys");
    for k in 0..16u8 {
        assert_eq!(
            s.peek(key(k)).expect("peek").as_ref(),
            model.visible(&key(k), now),
            "{when}: key {k}"
        );
    }
}

/// Fuzz target `ops`: any bytes as a scenario, on in-memory storage.
pub fn ops(data: &[u8]) {
    let s = Scenario::from_bytes(data);
    if s.ops.len() <= 400 {
        run(&s, Backing::Mem);
    }
}

/// Fuzz target `open`: any bytes as a store file. Opening either fails
/// without touching the bytes, or gives a store whose every key reads back,
/// which passes its invariant checks, accepts writes, and reopens to the same
/// state.
pub fn open(data: &[u8]) {
    let mem = Arc::new(MemStorage::with_bytes(data.to_vec()));
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let opts = Options::new()
        .sync(SyncPolicy::Never)
        .clock(clock)
        .auto_compact(None)
        .active_expiry(None);
    let store = match opts.open_on("fuzz.sfs", mem.clone() as Arc<dyn Storage>) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::NotAStore { .. }
                        | Error::UnsupportedVersion { .. }
                        | Error::Corrupt { offset: 0, .. }
                ),
                "unexpected error: {e}"
            );
            assert_eq!(mem.bytes(), data, "a refused file is left as it was");
            return;
        }
    };
    store
        .check_invariants()
        .unwrap_or_else(|e| panic!("after open: {e}"));
    let mut contents = BTreeMap::new();
    for k in store.keys() {
        let v = store.get(&k).expect("a key found at open reads back");
        contents.insert(k, v.expect("listed keys are present"));
    }
    assert_eq!(contents.len(), store.len(), "every entry is listed");
    store
        .put(b"fuzz-new-key", b"new value")
        .expect("writes work");
    contents.insert(b"fuzz-new-key".to_vec(), b"new value".to_vec());
    if let Some(k) = contents.keys().next().cloned() {
        assert!(store.delete(&k).expect("delete"));
        contents.remove(&k);
    }
    store
        .check_invariants()
        .unwrap_or_else(|e| panic!("after writes: {e}"));
    drop(store);
    let store = opts
        .open_on("fuzz.sfs", mem.clone() as Arc<dyn Storage>)
        .expect("reopen");
    assert_eq!(
        store.stats().corrupt_blocks,
        0,
        "the first open repaired the file"
    );
    let again: BTreeMap<_, _> = store
        .keys()
        .into_iter()
        .map(|k| {
            (
                k.clone(),
                store
                    .get(&k)
                    .expect("a listed key reads")
                    .expect("a listed key is there"),
            )
        })
        .collect();
    assert_eq!(again, contents, "reopens to the same state");
}

/// Fuzz target `entry`: any bytes as block headers never panic, and entries
/// built from the bytes encode and decode to themselves; a damaged byte in
/// an entry never passes for another entry.
pub fn entry(data: &[u8]) {
    let salt = u32::from_le_bytes(std::array::from_fn(|i| data.get(i).copied().unwrap_or(0)));
    // Arbitrary bytes: decoding never panics, whatever the lengths claim.
    for at in [0usize, 4, 17] {
        let b = data.get(at..).unwrap_or(&[]);
        let _ = BlockHeader::decode(b, salt, FILE_HEADER_LEN, FILE_HEADER_LEN + b.len() as u64);
        let _ = BlockHeader::decode(b, salt, FILE_HEADER_LEN, u64::MAX);
        let _ = FileHeader::decode(b);
    }
    // An entry made of the bytes round-trips through encode, decode and a walk.
    let take = |from: usize, n: usize| data.get(from..).map_or(&[][..], |d| &d[..n.min(d.len())]);
    let (klen, mlen) = (
        usize::from(data.get(4).copied().unwrap_or(0)),
        usize::from(data.get(5).copied().unwrap_or(0)) % 8,
    );
    let key = take(8, klen);
    let meta = take(8 + key.len(), mlen);
    let value = take(8 + key.len() + meta.len(), usize::MAX);
    let expiry = u64::from_le_bytes(std::array::from_fn(|i| data.get(i).copied().unwrap_or(0)))
        % (MAX_EXPIRY_MS + 1);
    assert_eq!(
        decode_expiry_word(
            expiry_word(expiry, salt, u64::from(salt)),
            salt,
            u64::from(salt)
        ),
        Some(expiry)
    );
    let h = BlockHeader {
        kind: Kind::Entry,
        block_len: entry_block_len(key.len(), meta.len(), value.len()),
        key_len: key.len() as u16,
        meta_len: meta.len() as u16,
        value_len: value.len() as u32,
        seq: u64::from(salt),
        expiry_ms: expiry,
        payload_crc: crc(salt, &[key, meta, value]),
        pending: false,
    };
    let mut file = FileHeader {
        version: FORMAT_VERSION,
        salt,
        created_ms: 0,
    }
    .encode()
    .to_vec();
    file.extend_from_slice(&h.encode(salt));
    file.extend_from_slice(key);
    file.extend_from_slice(meta);
    file.extend_from_slice(value);
    file.resize(FILE_HEADER_LEN as usize + h.block_len as usize, 0);
    assert_eq!(
        BlockHeader::decode(&file[64..], salt, 64, file.len() as u64),
        Ok(h)
    );
    let mut w = Walker::new(&file[..]).expect("slice").expect("our header");
    let b = w.next_block().expect("slice").expect("one block");
    assert_eq!(b.kind, BlockKind::Entry(h));
    assert_eq!(w.key(), key);
    // Damage one byte after the file header: the walk never yields a valid
    // entry whose bytes differ from the original.
    if data.len() > 6 && file.len() > 64 {
        let at = 64
            + usize::from(u16::from_le_bytes([data[6], data[7 % data.len()]])) % (file.len() - 64);
        let mut damaged = file.clone();
        damaged[at] ^= data[data.len() - 1] | 1;
        let mut w = Walker::new(&damaged[..])
            .expect("slice")
            .expect("our header");
        while let Some(b) = w.next_block().expect("slice") {
            if let BlockKind::Entry(dh) = b.kind {
                let used = (b.offset + dh.used_len()) as usize;
                assert!(
                    at >= used
                        || at < b.offset as usize
                        || (dh == h
                            && damaged[b.offset as usize..used] == file[b.offset as usize..used]),
                    "a damaged entry passed for valid"
                );
            }
        }
    }
}

/// A read-only store over a copy of `data` (a file image), its clock at
/// `now_ms`: what the store itself makes of the bytes.
pub fn open_bytes_read_only(data: &[u8], now_ms: i64) -> crate::Result<Store> {
    Options::new()
        .read_only(true)
        .clock(Arc::new(ManualClock::new(now_ms)))
        .open_on(
            "fuzz.sfs",
            Arc::new(MemStorage::with_bytes(data.to_vec())) as Arc<dyn Storage>,
        )
}

/// Fuzz target `inspect`: any bytes through the inspection report, the
/// library's half of `sfs-dump` (the tool's rendering of the same bytes is
/// `sfs_dump::fuzzing::inspect`, which the fuzz target runs after this).
/// Never a panic; the file is either refused as not a store (or a newer
/// version) or reported on; the rows tile the file; the check finds damage
/// exactly when the store's own read-only open finds some or the file header
/// is damaged; key lookups agree with the store.
pub fn inspect(data: &[u8]) {
    use crate::inspect::report::{Report, ScanOptions, State, find_key};

    const NOW: i64 = 1_700_000_000_000;
    let report = match Report::scan(data, ScanOptions::at(NOW).with_map(72)) {
        Ok(Ok(report)) => report,
        Ok(Err(_)) => return,
        Err(e) => panic!("a byte slice cannot fail to read: {e}"),
    };
    let mut rows = report.rows(data, true);
    let mut at = FILE_HEADER_LEN;
    let mut damaged = report.header_problem().is_some_and(|p| p.kind.is_damage());
    while let Some(row) = rows.next_row().expect("slice") {
        assert_eq!(row.offset, at, "rows tile the file");
        assert!(row.len > 0, "every row covers bytes");
        at += row.len;
        damaged |= row.problems.iter().any(|p| p.kind.is_damage());
    }
    if report.header.is_valid() {
        assert_eq!(at, data.len() as u64, "the rows reach the end of the file");
    }
    assert_eq!(
        damaged,
        report.check(data).expect("slice").is_damaged(),
        "the rows and the check find the same damage"
    );
    let opened = open_bytes_read_only(data, NOW);
    match opened {
        Ok(store) => {
            if store.stats().corrupt_blocks > 0 {
                assert!(damaged, "the store found damage the check did not");
            }
            for key in [&b"k"[..], b"", b"a-rather-long-key-number-010"] {
                let found = find_key(data, key, NOW)
                    .expect("slice")
                    .expect("read before");
                let live = found
                    .newest
                    .as_ref()
                    .is_some_and(|e| e.state == State::Live);
                if live && found.newer_corrupt.is_none() {
                    assert!(store.contains(key), "the report's live key is in the store");
                }
            }
        }
        Err(Error::Corrupt { .. }) => assert!(damaged, "a damaged file header is damage"),
        Err(e) => panic!("the store refused what the report read: {e}"),
    }
}
