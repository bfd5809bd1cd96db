//! Atomic batches: [`Batch`], the builder, and `Inner::apply`, which writes
//! a batch's members pending, its commit record, syncs once, then settles
//! and publishes (FORMAT.md, "Batches"; README, "Guarantees").
//!
//! # The steps of `apply`, and why each is safe through a crash
//! 1. The file is upgraded to format version 2 if it is not yet (once per
//!    file: two atomic word writes and a sync; see `ensure_version_2`).
//! 2. Every member (a put, or a touch's new copy) is written as an ordinary
//!    entry whose expiry word is *pending*: no reader takes it for an entry
//!    unless the batch's commit record is complete. A crash now leaves
//!    nothing of the batch.
//! 3. The commit record is written; then one sync. A crash before the sync
//!    completes leaves the batch wholly there (all members and the record
//!    made it) or wholly absent (the record is missing or incomplete).
//!
//!    Steps 2 and 3 write consecutive blocks, allocated together in runs of
//!    up to 1 MiB (the record last), one write per run (`write_batch`): one
//!    allocation and one `pwrite` per member cost more than the sync itself
//!    for small members. Readers do not rely on where the blocks are.
//! 4. Publishing: the batch is listed as unsettled (`unsettled`), then the
//!    keys are published one by one, in the order they first appear in
//!    the batch; each deleted key's copies are freed (no sync needed: the
//!    record's tombstone outranks them while the record lives).
//! 5. Settling, by the next sync (whoever makes it: `settle_ready` in
//!    `sync_to`): each member's expiry word is rewritten settled (one
//!    atomic 8-byte store each), covered by that sync; then the commit
//!    record is freed by the next (`Blocks::after_sync`). Until the batch
//!    is settled, a write that would free, renew or copy a member settles
//!    it first (a member freed while others are still pending on disk
//!    would make the record incomplete). Settling in `apply` itself cost a
//!    write fault on every page the batch's sync had just written back.
//!
//! Under `SyncPolicy::Never` and `Periodic`, a batch with no key to delete
//! (and not [`Batch::durable`]) also skips the sync of step 3: it is
//! settled once a later sync has made it durable.
//!
//! The batch holds the write locks of all its keys (sorted, so two batches
//! never deadlock) from its first look to its last publication: a batch is
//! linearizable against every other write of its keys, and two batches
//! never interleave their effects.
//!
//! A reader that reads several keys while a batch is published may see
//! some keys new and some old: keys switch one at a time, in the order they
//! first appear in the batch. So once a reader sees a key's new state, it
//! sees the new state of every key that appears earlier in the batch.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::write::{BatchRoom, Published, removed_by_key};
use super::{Inner, KEY_LOCKS};
use crate::error::{Error, Result};
use crate::events::Notes;
use crate::format::{
    BlockHeader, CommitRecord, FILE_HEADER_LEN, FORMAT_VERSION, Kind, MAX_VALUE_LEN, crc,
    entry_block_len, is_expired, member_digest, stored_header_crc,
};
use crate::options::SyncPolicy;
use crate::store::values::{Expiry, PutOptions};

/// The most bytes of members a batch allocates and writes at once (a
/// member larger than this is a run of its own): a very large batch is not
/// copied whole into one buffer, nor does it need one free block for all.
const RUN_BYTES: u64 = 1 << 20;

/// A block of the file: (offset, length).
type Block = (u64, u64);

/// Several puts, deletes and touches, applied together by
/// [`Store::apply`](crate::Store::apply): after a crash, all of them or
/// none; each key switches from its old state to its new one in a single
/// step for readers.
///
/// Operations on the same key apply in the order given, as if one after
/// another: the key ends in the state the last one leaves (a put then a
/// touch is the put with the touch's expiry; a put then a delete deletes;
/// a touch of a key the batch deleted, or of an absent or expired key,
/// does nothing; a touch into the past deletes the key if it is there).
/// The keys are written, and switch for readers, in the order each first
/// appears in the batch.
///
/// ```
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let store = sfs::Store::open(dir.path().join("b.sfs"))?;
/// store.put("pending/7", "job")?;
/// let mut batch = sfs::Batch::new();
/// batch
///     .delete("pending/7")
///     .put_with_ttl("taken/7", "worker-1", Duration::from_secs(30));
/// store.apply(&batch)?; // one fdatasync under SyncPolicy::Always
/// assert!(!store.contains("pending/7"));
/// assert_eq!(store.get("taken/7")?.as_deref(), Some(b"worker-1".as_slice()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    durable: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        meta: Vec<u8>,
        expiry: Expiry,
    },
    Delete(Vec<u8>),
    Touch(Vec<u8>, Expiry),
}

impl Op {
    fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete(key) | Op::Touch(key, _) => key,
        }
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Puts `key` (no expiry, no metadata).
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Batch {
        self.put_with(key, value, &PutOptions::new())
    }

    /// Puts `key`, expiring `ttl` after the batch is applied.
    pub fn put_with_ttl(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> &mut Batch {
        self.put_with(key, value, &PutOptions::new().ttl(ttl))
    }

    /// Puts `key` with the expiry and metadata of `opts`.
    pub fn put_with(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: &PutOptions<'_>,
    ) -> &mut Batch {
        self.ops.push(Op::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            meta: opts.metadata.to_vec(),
            expiry: opts.expiry,
        });
        self
    }

    /// Deletes `key` (nothing if it is absent).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Batch {
        self.ops.push(Op::Delete(key.as_ref().to_vec()));
        self
    }

    /// Renews the expiry of `key` to `ttl` after the batch is applied, if
    /// it is present then (see [`Store::touch`](crate::Store::touch)); a
    /// zero `ttl` deletes it.
    pub fn touch(&mut self, key: impl AsRef<[u8]>, ttl: Duration) -> &mut Batch {
        self.ops
            .push(Op::Touch(key.as_ref().to_vec(), Expiry::After(ttl)));
        self
    }

    /// Renews the expiry of `key` to `at`, if it is present; a time already
    /// past deletes it.
    pub fn touch_until(&mut self, key: impl AsRef<[u8]>, at: SystemTime) -> &mut Batch {
        self.ops
            .push(Op::Touch(key.as_ref().to_vec(), Expiry::At(at)));
        self
    }

    /// Makes the batch durable when [`Store::apply`](crate::Store::apply)
    /// returns (one `fdatasync`), whatever the store's
    /// [`SyncPolicy`]. Under `Always` every batch is; under `Never` and
    /// `Periodic` a batch of puts and touches is otherwise made durable by
    /// the next sync (still all or nothing until then). For a log whose
    /// appends must be on disk before they are acknowledged, in a store
    /// whose other writes need not be.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let log = sfs::Options::new()
    ///     .sync(sfs::SyncPolicy::Never)
    ///     .open(dir.path().join("log.sfs"))?;
    /// let mut append = sfs::Batch::new();
    /// append.put("entry/1", "a").put("entry/2", "b").durable();
    /// log.apply(&append)?; // on disk now
    /// log.put("hint", "may be lost in a power loss")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn durable(&mut self) -> &mut Batch {
        self.durable = true;
        self
    }

    /// How many operations were added (several on one key count each).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Removes every operation, keeping the allocation (and whether it is
    /// [`durable`](Batch::durable)).
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

/// What a batch does to one key, after folding its operations in order.
enum Action<'b> {
    Put {
        value: &'b [u8],
        meta: &'b [u8],
        expiry_ms: u64,
    },
    Delete,
    /// Renew the key if it is present when the batch applies.
    Touch(u64),
    /// Delete the key if it is present (a touch into the past).
    Expire,
}

/// A member to write: a put, or a touch's new copy.
struct Member<'b> {
    key: &'b [u8],
    hash: u64,
    meta: std::borrow::Cow<'b, [u8]>,
    value: std::borrow::Cow<'b, [u8]>,
    expiry_ms: u64,
}

/// Blocks (offset, length) as runs (offset, end) of consecutive ones.
fn runs(blocks: impl Iterator<Item = Block>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (offset, len) in blocks {
        match runs.last_mut() {
            Some(r) if r.1 == offset => r.1 += len,
            _ => runs.push((offset, offset + len)),
        }
    }
    runs
}

/// How `apply_locked` ended.
enum Applied {
    Done,
    /// It let go of everything to start again once these older batches are
    /// done (see `BatchRoom::Restart`).
    Restart(Vec<u64>),
}

/// One key's step, in the order of publication.
enum Step {
    /// Publish member `i`.
    Member(usize),
    /// Remove the key (the `i`th tombstone).
    Delete(usize),
}

impl Inner {
    /// Applies `batch` (see [`Store::apply`](crate::Store::apply)).
    pub(super) fn apply(&self, batch: &Batch) -> Result<()> {
        self.check_writable()?;
        for op in &batch.ops {
            let (v, m) = match op {
                Op::Put { value, meta, .. } => (value.len(), meta.len()),
                _ => (0, 0),
            };
            self.check_sizes(op.key().len(), v, m)?;
        }
        let actions = self.fold(batch);
        if actions.is_empty() {
            return Ok(());
        }
        let mut notes = Notes::new(&self.hub);
        // Its age, under a cap: see `BatchRoom::Restart`.
        let ticket = match self.max_entries {
            Some(_) => self.batch_ticket(),
            None => 0,
        };
        loop {
            match self.apply_locked(&actions, ticket, batch.durable, &mut notes)? {
                Applied::Done => return Ok(()),
                // Nothing written, nothing held: wait for the older
                // batches in the way, then begin again.
                Applied::Restart(older) => self.wait_for_batches(&older),
            }
        }
    }

    /// `apply` with the batch's key locks, from its first look at its keys
    /// to its last publication.
    fn apply_locked(
        &self,
        actions: &[(&[u8], Action<'_>)],
        ticket: u64,
        durable: bool,
        notes: &mut Notes<'_>,
    ) -> Result<Applied> {
        let _gate = self.gate.read();
        let mut stripes: Vec<usize> = actions
            .iter()
            .map(|(k, _)| (self.hasher.hash_one(k) as usize) & (KEY_LOCKS - 1))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _keys: Vec<_> = stripes.iter().map(|&i| self.key_locks[i].lock()).collect();

        // What each key becomes, now that no other write of them can run.
        let mut members: Vec<Member<'_>> = Vec::new();
        let mut tombstones: Vec<&[u8]> = Vec::new();
        let mut steps = Vec::new();
        for (key, action) in actions {
            let hash = self.hasher.hash_one(key);
            match *action {
                Action::Put {
                    value,
                    meta,
                    expiry_ms,
                } => {
                    steps.push(Step::Member(members.len()));
                    members.push(Member {
                        key,
                        hash,
                        meta: meta.into(),
                        value: value.into(),
                        expiry_ms,
                    });
                }
                Action::Touch(expiry_ms) => {
                    // A copy of a pending member would carry its batch's
                    // value without its record: settled first.
                    if let Some(offset) = self.offset_of(key) {
                        self.settle_member(offset)
                            .map_err(self.io("settling a batch member"))?;
                    }
                    let current = self.read(key, false, |_, m, v| (m.to_vec(), v.to_vec()))?;
                    if let Some((meta, value)) = current {
                        steps.push(Step::Member(members.len()));
                        members.push(Member {
                            key,
                            hash,
                            meta: meta.into(),
                            value: value.into(),
                            expiry_ms,
                        });
                    }
                }
                Action::Expire => {
                    if self.contains(key) {
                        steps.push(Step::Delete(tombstones.len()));
                        tombstones.push(key);
                    }
                }
                Action::Delete => {
                    if self.indexed(key) {
                        steps.push(Step::Delete(tombstones.len()));
                        tombstones.push(key);
                    }
                }
            }
        }
        if steps.is_empty() {
            return Ok(Applied::Done);
        }
        let tomb_bytes: usize = tombstones.iter().map(|k| 10 + k.len()).sum();
        if tomb_bytes > MAX_VALUE_LEN - crate::format::COMMIT_FIXED_LEN
            || members.len() > u32::MAX as usize
        {
            return Err(Error::TooLarge {
                path: self.path.clone(),
                what: "batch (its commit record)",
                len: tomb_bytes,
                max: MAX_VALUE_LEN,
            });
        }
        // Room under the entry cap for the new keys, before anything is
        // written (as a put makes it). The batch's present keys are marked
        // used first, so that the room is never made by evicting one of
        // them (its eviction would be durable before the batch is).
        let mut rooms = HashMap::new();
        let named: Vec<&[u8]> = match self.max_entries {
            Some(_) => actions.iter().map(|(k, _)| *k).collect(),
            None => Vec::new(),
        };
        // No other write evicts them until the batch is done (other writes
        // of them wait for their locks): the room counted below stays.
        let _pins = self.max_entries.is_some().then(|| self.pin(&named, ticket));
        if let Some(cap) = self.max_entries {
            self.mark_used(&named);
            // Until no member is left without room: making room purges
            // expired entries, which may take a member's key out of the
            // index (it is then a new key too).
            loop {
                let new: Vec<&[u8]> = members
                    .iter()
                    .map(|m| m.key)
                    .filter(|k| !rooms.contains_key(*k) && !self.indexed(k))
                    .collect();
                if new.is_empty() {
                    break;
                }
                self.storage.point("batch: room");
                let asked = (&named[..], ticket);
                match self.make_batch_room(cap, &new, asked, &tombstones, notes)? {
                    BatchRoom::Made(made) => rooms.extend(made),
                    BatchRoom::WaitForInserts => {
                        // Short of room only while other inserts are in
                        // flight: wait for one, holding no room, and ask
                        // again (as in the serial order where it came
                        // first, its entry is then evictable).
                        rooms.clear();
                        self.wait_for_inserts();
                    }
                    BatchRoom::WaitForYounger(younger) => {
                        // Short only because younger batches keep their
                        // keys: they do not wait for this one's.
                        rooms.clear();
                        self.wait_for_pins(&younger);
                    }
                    // Nothing is written yet: rooms, pins and key locks go
                    // back as this returns.
                    BatchRoom::Restart(older) => return Ok(Applied::Restart(older)),
                }
            }
        }
        self.ensure_version_2()?;

        let count = (members.len() + tombstones.len()) as u64;
        let first_seq = self.next_seq.fetch_add(count, Ordering::Relaxed);
        let n = members.len() as u64;
        let record = CommitRecord {
            first_seq,
            members: members.len() as u32,
            digest: 0,
            tombstones: tombstones
                .iter()
                .enumerate()
                .map(|(j, k)| (first_seq + n + j as u64, k.to_vec()))
                .collect(),
        };
        let (written, commit) = self.write_batch(&members, record)?;
        let generation = self.note_write();
        self.storage.point("batch: written");
        // One sync, then settling, which must wait for it; or, for a batch
        // of puts and touches under `Never` or `Periodic`, no sync: the
        // members stay pending until the next one, as a put's write is
        // durable only then (see `unsettled`).
        let late = !durable && self.settles_late(members.len(), tombstones.len());
        let synced = match late {
            false => self.sync_to(generation),
            true => Ok(()),
        };
        match &synced {
            Ok(()) => self.storage.point("batch: durable"),
            Err(_) if self.take_back(&members, &written, Some(commit)) => {
                return synced.map(|()| Applied::Done);
            }
            // Could not even be taken back: the batch may be on disk; it is
            // published so that memory says what an open would find, and
            // the sync's error returned.
            Err(_) => {}
        }
        self.settle_and_publish(
            &members,
            &written,
            &tombstones,
            &steps,
            (first_seq, commit),
            generation,
            &rooms,
            notes,
        )?;
        synced?;
        if self.unsettled_members() > super::unsettled::MAX_UNSETTLED_MEMBERS {
            self.settle_all()?;
        }
        self.maybe_sync_for_space().map(|()| Applied::Done)
    }

    /// Whether a batch of `members` members and `tombstones` deleted keys
    /// skips its sync and is settled by the next one (see `unsettled`).
    /// Not one that deletes: a deleted key's copy is freed as the batch is
    /// published, and only the record, durable first, makes those frees
    /// all or nothing.
    fn settles_late(&self, members: usize, tombstones: usize) -> bool {
        self.policy != SyncPolicy::Always && members > 0 && tombstones == 0
    }

    /// Folds the operations of a batch into one action per key, in the
    /// order the keys first appear.
    fn fold<'b>(&self, batch: &'b Batch) -> Vec<(&'b [u8], Action<'b>)> {
        let now = self.clock.now_millis();
        let past = |expiry: Expiry, ms: u64| {
            !matches!(expiry, Expiry::Never) && (ms == 0 || is_expired(ms, now))
        };
        // Where each key's action is (foldhash, sized once: a load of
        // 10,000-entry batches spent a tenth of its time in SipHash and
        // rehashing here).
        let mut at: HashMap<&[u8], usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(batch.ops.len(), Default::default());
        let mut actions: Vec<(&[u8], Action<'b>)> = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            let key = op.key();
            let next = match op {
                Op::Put {
                    value,
                    meta,
                    expiry,
                    ..
                } => {
                    let ms = self.expiry_ms(*expiry);
                    if past(*expiry, ms) {
                        Action::Delete
                    } else {
                        Action::Put {
                            value,
                            meta,
                            expiry_ms: ms,
                        }
                    }
                }
                Op::Delete(_) => Action::Delete,
                Op::Touch(_, expiry) => {
                    let ms = self.expiry_ms(*expiry);
                    let before = at.get(key).map(|&i| &actions[i].1);
                    match before {
                        Some(Action::Put { .. }) if past(*expiry, ms) => Action::Delete,
                        Some(Action::Put { value, meta, .. }) => Action::Put {
                            value,
                            meta,
                            expiry_ms: ms,
                        },
                        Some(Action::Delete) => Action::Delete,
                        // Renewed, then expired: deleted if it was there.
                        Some(Action::Expire) => Action::Expire,
                        Some(Action::Touch(_)) | None if past(*expiry, ms) => Action::Expire,
                        Some(Action::Touch(_)) | None => Action::Touch(ms),
                    }
                }
            };
            match at.get(key) {
                Some(&i) => actions[i].1 = next,
                None => {
                    at.insert(key, actions.len());
                    actions.push((key, next));
                }
            }
        }
        actions
    }

    /// Writes the members, pending, then the commit record (`record`, whose
    /// digest this fills in): consecutive blocks, allocated together in runs
    /// of up to `RUN_BYTES` (the record at the end of the last run), each run
    /// written with one write. A batch of 100 small puts is then one
    /// allocation (one growth of the file, at most) and one write, where one
    /// per member cost more than the batch's sync. Returns the members'
    /// blocks and the record's. On failure nothing of the batch is left
    /// valid: every block is freed (the record first).
    fn write_batch(
        &self,
        members: &[Member<'_>],
        mut record: CommitRecord,
    ) -> Result<(Vec<Block>, Block)> {
        let first_seq = record.first_seq;
        // The payload's length does not depend on the digest.
        let record_need = record.header(self.salt, &record.encode_payload()).block_len;
        let needs: Vec<u64> = members
            .iter()
            .map(|m| entry_block_len(m.key.len(), m.meta.len(), m.value.len()))
            .collect();
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut start, mut sum) = (0, 0u64);
        for (i, &need) in needs.iter().enumerate() {
            if i > start && sum + need > RUN_BYTES {
                runs.push(start..i);
                (start, sum) = (i, 0);
            }
            sum += need;
        }
        runs.push(start..members.len());

        // Allocate every run first: a failure then only gives space back.
        let mut blocks: Vec<Block> = Vec::with_capacity(members.len());
        let mut commit = (0, 0);
        let mut spans: Vec<Block> = Vec::with_capacity(runs.len());
        for (r, run) in runs.iter().enumerate() {
            let last = r + 1 == runs.len();
            let total: u64 =
                needs[run.clone()].iter().sum::<u64>() + if last { record_need } else { 0 };
            let (offset, len) = match self.allocate(total) {
                Ok(a) => a,
                Err(e) => {
                    for &(o, l) in &spans {
                        self.release(o, l, 0);
                    }
                    return Err(e);
                }
            };
            spans.push((offset, len));
            let mut at = offset;
            for &need in &needs[run.clone()] {
                blocks.push((at, need));
                at += need;
            }
            // The last block of the run takes what the allocation gave
            // beyond the request (a free block handed out whole).
            let extra = len - total;
            if last {
                commit = (at, record_need + extra);
            } else if let Some(b) = blocks.last_mut() {
                b.1 += extra;
            }
        }

        let mut headers = Vec::with_capacity(members.len());
        let mut crcs = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let header = BlockHeader {
                kind: Kind::Entry,
                block_len: blocks[i].1,
                key_len: m.key.len() as u16,
                meta_len: m.meta.len() as u16,
                value_len: m.value.len() as u32,
                seq: first_seq + i as u64,
                expiry_ms: m.expiry_ms,
                payload_crc: crc(self.salt, &[m.key, &m.meta, &m.value]),
                pending: true,
            };
            let encoded = header.encode(self.salt);
            crcs.push((stored_header_crc(&encoded), header.payload_crc));
            headers.push(encoded);
        }
        record.digest = member_digest(self.salt, crcs);
        let payload = record.encode_payload();
        let mut header = record.header(self.salt, &payload);
        header.block_len = commit.1;
        let commit_header = header.encode(self.salt);

        const ZEROS: [u8; 8] = [0; 8];
        for (r, run) in runs.iter().enumerate() {
            let last = r + 1 == runs.len();
            let mut parts: Vec<&[u8]> = Vec::with_capacity(5 * run.len() + 2);
            for i in run.clone() {
                let m = &members[i];
                parts.extend([&headers[i][..], m.key, &m.meta, &m.value]);
                // Blocks follow each other: the padding up to the next one
                // (at most 7 bytes) is written too; not after the run's last.
                if last || i + 1 < run.end {
                    let raw = headers[i].len() + m.key.len() + m.meta.len() + m.value.len();
                    parts.push(&ZEROS[..(needs[i] as usize - raw)]);
                }
            }
            if last {
                parts.extend([&commit_header[..], &payload]);
            }
            // With `pwrite` whatever the policy: a run is fresh space, often
            // many pages, which a write through the map would fault in one
            // by one (reading the file system's unwritten extents first).
            if let Err(e) = self.storage.write_at_before_sync(spans[r].0, &parts) {
                if last {
                    self.release(commit.0, commit.1, 0);
                }
                for (m, &(o, l)) in members.iter().zip(&blocks) {
                    self.release(o, l, m.hash);
                }
                let what = if last {
                    "writing a batch's members and commit record"
                } else {
                    "writing a batch's members"
                };
                return Err(Error::io(&self.path, what, e));
            }
        }
        Ok((blocks, commit))
    }

    /// Frees the blocks of a batch that did not happen: the commit record
    /// first (without it no member is valid), then the members. False when
    /// the record's free header could not be written: the batch may then
    /// be on disk.
    fn take_back(
        &self,
        members: &[Member<'_>],
        written: &[(u64, u64)],
        commit: Option<(u64, u64)>,
    ) -> bool {
        if let Some((o, l)) = commit {
            if self.mark_free(o, l).is_err() {
                return false;
            }
            self.return_space(o, l);
        }
        for (m, &(o, l)) in members.iter().zip(written) {
            self.release(o, l, m.hash);
        }
        true
    }

    /// Steps 4 and 5 of `apply` (see the module docs).
    #[expect(clippy::too_many_arguments, reason = "the parts of one batch")]
    fn settle_and_publish(
        &self,
        members: &[Member<'_>],
        written: &[(u64, u64)],
        tombstones: &[&[u8]],
        steps: &[Step],
        (first_seq, commit): (u64, (u64, u64)),
        generation: u64,
        rooms: &HashMap<Vec<u8>, super::write::Room<'_>>,
        notes: &mut Notes<'_>,
    ) -> Result<()> {
        let mut failed = None;
        // Settled by a later sync (the next whose leader finds the batch's
        // write durable; see `unsettled`), not here: the settling stores
        // would fault every page the batch's sync just wrote back. Listed
        // before any key is published, so that a remover finds it listed.
        let listed = (!written.is_empty()).then(|| {
            let blocks = written.iter().copied().chain([commit]);
            self.list_unsettled(runs(blocks), written.len(), (commit, generation), false)
        });
        let words = generation;
        // Every key is published even when one step fails: the batch is on
        // disk, whole, so memory must say so too. The first error is
        // returned, and the record is then kept for the next open.
        for step in steps {
            let done = match *step {
                Step::Member(i) => self.publish_member(
                    &members[i],
                    written[i],
                    first_seq + i as u64,
                    (generation, words),
                    rooms,
                    notes,
                ),
                Step::Delete(j) => self.remove_in_batch(tombstones[j], notes),
            };
            if let Err(e) = done {
                failed.get_or_insert(e);
            }
        }
        let settled = self.note_write();
        match (failed, listed) {
            // A deleted key's copy not freed: the record must outlive this
            // session (the next open settles the batch). It is left as it
            // is, listed.
            (Some(e), _) => {
                self.keep_record(commit);
                Err(e)
            }
            // Freed once a sync has settled the members.
            (None, Some(id)) => {
                self.published(id, settled);
                Ok(())
            }
            // No member: freed by the next sync that covers all of the
            // above.
            (None, None) => {
                self.blocks.hold_commit(commit.0, commit.1, settled);
                Ok(())
            }
        }
    }

    /// Puts member `m`, written at `block` with sequence number `seq`, in
    /// the index (`generation`: the batch's write; `words`: its settling).
    fn publish_member(
        &self,
        m: &Member<'_>,
        (offset, len): (u64, u64),
        seq: u64,
        (generation, words): (u64, u64),
        rooms: &HashMap<Vec<u8>, super::write::Room<'_>>,
        notes: &mut Notes<'_>,
    ) -> Result<()> {
        let p = self.publish(m.key, (offset, len), seq, m.expiry_ms, generation, None)?;
        if m.expiry_ms != 0 {
            self.note_expiry(m.expiry_ms);
        }
        match p {
            Published::New => self.admit(m.key, rooms.get(m.key), false, notes)?,
            Published::Replaced | Published::Removed => {}
            // Cannot happen under the key's lock; should it, the member
            // loses on disk too: held, then freed.
            Published::Outranked => self.retire(offset, len, m.hash, words),
        }
        Ok(())
    }

    /// Removes a key a batch deletes: its copies are freed without a sync
    /// (the batch's tombstone outranks them until the record goes). When a
    /// free header cannot be written the key still leaves the index (the
    /// tombstone deletes it on disk, and the caller keeps the record for
    /// the next open), its copy held until the header can be written, and
    /// the error is returned.
    fn remove_in_batch(&self, key: &[u8], notes: &mut Notes<'_>) -> Result<()> {
        let (hash, cell) = self.locate(key);
        let mut shard = cell.map.write();
        let Some(id) = shard.find(hash, key) else {
            return Ok(());
        };
        let slot = shard.slot(id);
        let (offset, expiry) = (slot.offset(), slot.expiry());
        let visible = expiry == 0 || !is_expired(expiry, self.clock.now_millis());
        let mut failed = self
            .blocks
            .release_copies_of(hash, key, &self.bio())
            .map_err(|(action, e)| Error::io(&self.path, action, e))
            .err();
        let len = self.header_at(offset).ok().map(|h| h.block_len);
        let mut freed = None;
        if let Some(l) = len {
            match self.mark_free(offset, l) {
                Ok(()) => {
                    self.blocks
                        .freed_unsynced(hash, self.writes.load(Ordering::Acquire));
                    freed = Some(l);
                }
                Err(e) => {
                    self.blocks.hold_unfreed(offset, l, hash);
                    failed.get_or_insert(Error::io(&self.path, "freeing an entry", e));
                }
            }
        }
        self.drop_slot(&mut shard, cell, hash, id, len);
        drop(shard);
        removed_by_key(notes, key, visible, expiry);
        if let Some(l) = freed {
            self.return_space(offset, l);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Makes the file format version 2 before its first batch: the version
    /// field and the header checksum are each rewritten with one atomic
    /// 8-byte store (bytes 8..16 and 56..64), then synced. A crash between
    /// the two leaves a header an open reads as version 1 (FORMAT.md,
    /// "Format versions"), and no batch is written before the sync.
    fn ensure_version_2(&self) -> Result<()> {
        let mut header = self.file_header.lock();
        if header.version >= FORMAT_VERSION {
            return Ok(());
        }
        let new = crate::format::FileHeader {
            version: FORMAT_VERSION,
            ..*header
        };
        let b = new.encode();
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        debug_assert_eq!(FILE_HEADER_LEN, 64);
        for at in [8, 56] {
            self.storage
                .write_word(at as u64, word(at))
                .map_err(self.io("upgrading the file header to format version 2"))?;
        }
        let g = self.note_write();
        self.storage.point("batch: upgraded");
        self.sync_to(g)?;
        *header = new;
        Ok(())
    }
}
