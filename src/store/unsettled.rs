//! Batches whose members are still pending on disk after `apply` returned:
//! every batch, until the next sync after its own settles it (`settle_ready`,
//! called by whichever thread leads that sync); under `SyncPolicy::Never`
//! and `Periodic`, a batch of puts skips its own sync, and is settled once
//! a later one has made it durable.
//!
//! A pending member is an entry only while its batch's commit record is
//! complete, i.e. while every member is there (FORMAT.md, "Batches"). So
//! none is freed (an overwrite's old copy, a delete, expiry, eviction,
//! compaction's move), renewed in place, or copied by a touch before its
//! batch is settled (each member's expiry word stored settled) and a sync
//! has made that durable: every free header passes through
//! [`Inner::settle_member`] (`FileIo::write_free_header`), and so do
//! renewals. `Store::sync` (and the flusher, `close`, compaction) settles
//! every listed batch (`settle_all`).
//!
//! Why settling waits for a sync at all: a settled member is an entry on
//! its own. Were its settled word durable before the batch's other members
//! and record, a power loss could keep it alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use super::Inner;
use crate::error::Result;
use crate::format::{EXPIRY_WORD_OFFSET, Kind, expiry_word};

/// The pending members a store lists before `apply` settles them all on
/// the spot (a sync) under `Never`.
pub(super) const MAX_UNSETTLED_MEMBERS: usize = 1 << 20;

/// Runs of members no longer than this on average are prefaulted whole
/// before settling (`Storage::prepare_words`).
const DENSE_BLOCK: u64 = 4 << 10;

/// The listed batches.
#[derive(Default)]
pub(super) struct Unsettled {
    batches: HashMap<u64, Pending>,
    /// The blocks of the listed batches, by where each run of them starts:
    /// (end, batch). A batch's members (and its record) are allocated
    /// together in runs of consecutive blocks, so a few runs stand for
    /// thousands of members: nothing is listed member by member.
    spans: BTreeMap<u64, (u64, u64)>,
    /// Members listed, over all batches.
    members: usize,
    next_id: u64,
}

struct Pending {
    /// The runs of blocks (offset, end) holding its pending members; its
    /// commit record may be in one (it is skipped when settling). Emptied
    /// once the members are settled and synced.
    spans: Vec<(u64, u64)>,
    members: usize,
    /// The commit record: (offset, length).
    record: (u64, u64),
    /// The record must outlive the session (a key the batch deleted may
    /// still have a copy the record's tombstone outranks): kept, not freed,
    /// once the members are settled.
    keep_record: bool,
    /// The write generation of the batch's members and record: a sync
    /// covers it before any member is settled.
    written_at: u64,
    /// The write generation of the stores that settled the members.
    settled_at: Option<u64>,
    /// Set when `apply` has published every key (write generation after
    /// the last free header of a deleted key). The record is freed only
    /// once the members are settled *and* the batch is published, after a
    /// sync covers both: its tombstones outrank the deleted keys' copies
    /// until their free headers are durable.
    published_at: Option<u64>,
}

impl Unsettled {
    /// The batch whose runs hold the block at `offset`.
    fn batch_at(&self, offset: u64) -> Option<u64> {
        self.spans
            .range(..=offset)
            .next_back()
            .filter(|(_, (end, _))| offset < *end)
            .map(|(_, &(_, id))| id)
    }
}

impl Inner {
    /// Lists a batch whose `members` members are pending on disk in the
    /// runs of blocks `spans` ((offset, end) each), with its commit record,
    /// written at write generation `written_at`. Before its members are
    /// published: a remover that finds one must find it listed. Returns its
    /// id for [`published`](Inner::published).
    pub(super) fn list_unsettled(
        &self,
        spans: Vec<(u64, u64)>,
        members: usize,
        (record, written_at): ((u64, u64), u64),
        keep: bool,
    ) -> u64 {
        let mut u = self.unsettled.lock();
        let id = u.next_id;
        u.next_id += 1;
        for &(start, end) in &spans {
            u.spans.insert(start, (end, id));
        }
        u.members += members;
        u.batches.insert(
            id,
            Pending {
                spans,
                members,
                record,
                keep_record: keep,
                written_at,
                settled_at: None,
                published_at: None,
            },
        );
        self.any_unsettled
            .store(!u.spans.is_empty(), Ordering::Release);
        id
    }

    /// `apply` has published every key of batch `id` (`generation`: a write
    /// generation after all its writes). Frees its record with the next
    /// sync if its members are settled already.
    pub(super) fn published(&self, id: u64, generation: u64) {
        let mut u = self.unsettled.lock();
        let Some(b) = u.batches.get_mut(&id) else {
            return;
        };
        let done = b.settled_at.is_some() && b.spans.is_empty() && !b.keep_record;
        if !done {
            b.published_at = Some(generation);
            return;
        }
        let record = b.record;
        u.batches.remove(&id);
        drop(u);
        self.blocks.hold_commit(record.0, record.1, generation);
    }

    /// Called by the leader of a sync before it reads what the sync will
    /// cover: stores the settled words of the listed batches that an
    /// earlier sync made durable (their stores are then covered by this
    /// one). Returns the batches this sync settles, for
    /// [`finish_settled`](Inner::finish_settled) once it succeeds.
    pub(super) fn settle_ready(&self, synced: u64) -> Vec<u64> {
        if !self.any_unsettled.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut u = self.unsettled.lock();
        let mut ids = Vec::new();
        let mut stored = false;
        for (&id, b) in u.batches.iter() {
            if b.spans.is_empty() || b.written_at > synced {
                continue;
            }
            if b.settled_at.is_none() {
                if self.settle_spans(&b.spans, b.members).is_err() {
                    // Left for a later sync, or for the one that needs it.
                    continue;
                }
                stored = true;
            }
            ids.push(id);
        }
        if stored {
            let g = self.note_write();
            for id in &ids {
                if let Some(b) = u.batches.get_mut(id) {
                    b.settled_at.get_or_insert(g);
                }
            }
            drop(u);
            self.storage.point("batch: settled late");
        }
        ids
    }

    /// The record of the listed batch with this record must outlive the
    /// session (see `Pending::keep_record`); listed with no member if the
    /// batch is not listed.
    pub(super) fn keep_record(&self, record: (u64, u64)) {
        let mut u = self.unsettled.lock();
        match u.batches.values_mut().find(|b| b.record == record) {
            Some(b) => b.keep_record = true,
            None => {
                drop(u);
                let now = self.writes.load(Ordering::Acquire);
                self.list_unsettled(Vec::new(), 0, (record, now), true);
            }
        }
    }

    /// How many members are listed pending.
    pub(super) fn unsettled_members(&self) -> usize {
        self.unsettled.lock().members
    }

    /// Stores the settled expiry word of every pending entry in `spans`
    /// (each member's, from its own header: nothing renews a pending
    /// member, so its header still holds its expiry).
    fn settle_spans(&self, spans: &[(u64, u64)], members: usize) -> std::io::Result<()> {
        // Small members: nearly every page of the runs holds a header, so
        // all of them are made writable at once (one page fault each
        // otherwise, and two when the header is read first). Large ones:
        // only their first pages are stored into.
        let bytes: u64 = spans.iter().map(|&(s, e)| e - s).sum();
        let dense = bytes <= (members as u64).saturating_mul(DENSE_BLOCK);
        for &(start, end) in spans {
            if dense {
                self.storage.prepare_words(start, end - start);
            }
            let mut at = start;
            while at < end {
                let h = self
                    .block_header_at(at)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                if h.kind == Kind::Entry && h.pending {
                    let word = expiry_word(h.expiry_ms, self.salt, h.seq);
                    self.storage.write_word(at + EXPIRY_WORD_OFFSET, word)?;
                }
                at += h.block_len.max(1);
            }
        }
        Ok(())
    }

    /// Called before the block at `offset` is freed or its expiry word
    /// stored again: if it is a pending member of a listed batch, settles
    /// the batch and syncs first. An error (a store or the sync failed)
    /// fails the caller's write, which every caller handles as a free
    /// header that could not be written: the block stays valid and held.
    pub(super) fn settle_member(&self, offset: u64) -> std::io::Result<()> {
        if !self.any_unsettled.load(Ordering::Acquire) {
            return Ok(());
        }
        let (id, written_at) = {
            let u = self.unsettled.lock();
            let Some(id) = u.batch_at(offset) else {
                return Ok(());
            };
            let Some(b) = u.batches.get(&id) else {
                return Ok(());
            };
            (id, b.written_at)
        };
        let io_err = |e: crate::error::Error| std::io::Error::other(e.to_string());
        // The members and record durable before any member is settled.
        self.sync_to(written_at).map_err(io_err)?;
        let generation = {
            let mut u = self.unsettled.lock();
            let Some(b) = u.batches.get_mut(&id) else {
                return Ok(()); // settled meanwhile
            };
            match b.settled_at {
                Some(g) => g,
                None => {
                    self.settle_spans(&b.spans, b.members)?;
                    let g = self.note_write();
                    b.settled_at = Some(g);
                    g
                }
            }
        };
        self.storage.point("batch: settled late");
        self.sync_to(generation).map_err(io_err)?;
        self.finish_settled(&[id]);
        Ok(())
    }

    /// Whether the block at `offset` is a listed pending member.
    pub(super) fn is_pending_member(&self, offset: u64) -> bool {
        self.any_unsettled.load(Ordering::Acquire)
            && self.unsettled.lock().batch_at(offset).is_some()
    }

    /// Settles every listed batch and syncs: what a sync does first.
    pub(super) fn settle_all(&self) -> Result<()> {
        if !self.any_unsettled.load(Ordering::Acquire) {
            return Ok(());
        }
        // The members and records durable before any member is settled.
        let written_at = {
            let u = self.unsettled.lock();
            u.batches
                .values()
                .filter(|b| !b.spans.is_empty())
                .map(|b| b.written_at)
                .max()
        };
        let Some(written_at) = written_at else {
            return Ok(());
        };
        self.sync_to(written_at)?;
        let (ids, generation) = {
            let mut u = self.unsettled.lock();
            // Only batches that sync covered (others may have been listed
            // since): their members' words, then one generation for all.
            let mut ready = Vec::new();
            for (&id, b) in u.batches.iter() {
                if !b.spans.is_empty() && b.written_at <= written_at {
                    if b.settled_at.is_none() {
                        self.settle_spans(&b.spans, b.members)
                            .map_err(self.io("settling a batch member"))?;
                    }
                    ready.push(id);
                }
            }
            let g = self.note_write();
            for id in &ready {
                if let Some(b) = u.batches.get_mut(id) {
                    b.settled_at.get_or_insert(g);
                }
            }
            (ready, g)
        };
        if ids.is_empty() {
            return Ok(());
        }
        self.storage.point("batch: settled late");
        self.sync_to(generation)?;
        self.finish_settled(&ids);
        Ok(())
    }

    /// After a sync covered their settling: the batches' members are plain
    /// entries now; their records are freed by the next sync once the
    /// batches are published (kept, if they must outlive the session).
    pub(super) fn finish_settled(&self, ids: &[u64]) {
        let synced = self.sync_state.lock().synced;
        let mut records = Vec::new();
        {
            let mut u = self.unsettled.lock();
            for id in ids {
                let Some(b) = u.batches.get_mut(id) else {
                    continue;
                };
                if b.settled_at.is_none_or(|g| g > synced) {
                    continue;
                }
                let spans = std::mem::take(&mut b.spans);
                let members = std::mem::take(&mut b.members);
                let (record, keep, published) = (b.record, b.keep_record, b.published_at);
                if let (false, Some(p)) = (keep, published) {
                    u.batches.remove(id);
                    records.push((record, p.max(synced)));
                }
                u.members -= members;
                for (start, _) in spans {
                    u.spans.remove(&start);
                }
            }
            self.any_unsettled
                .store(!u.spans.is_empty(), Ordering::Release);
        }
        // Not under `unsettled`: holding takes the block owner's lock, which
        // a free header (and so `settle_member`) may be written under.
        for ((offset, len), generation) in records {
            self.blocks.hold_commit(offset, len, generation);
        }
    }

    /// Forgets every listed batch: `clear` cut the file, their blocks with it.
    pub(super) fn forget_unsettled(&self) {
        *self.unsettled.lock() = Unsettled::default();
        self.any_unsettled.store(false, Ordering::Release);
    }

    /// For the invariant check: whether the block at `offset` is a pending
    /// member (`member`) or the commit record of a listed batch.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn is_unsettled(&self, offset: u64, member: bool) -> bool {
        let u = self.unsettled.lock();
        let record = u.batches.values().any(|b| b.record.0 == offset);
        match member {
            true => !record && u.batch_at(offset).is_some(),
            false => record,
        }
    }
}
