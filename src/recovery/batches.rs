//! Batches at open time (format version 2, FORMAT.md "Batches"): which
//! commit records are complete, so which pending members count as entries
//! and which tombstones take part in "which copy wins"; and, on a
//! read-write open, settling what was found (the members' expiry words
//! rewritten, then the commit records freed, each step synced).
//!
//! The decision ([`Batches::resolve`]) reads nothing but the 48-byte headers
//! of already settled members (for their checksums); the writes are
//! [`Settled::write_words`] and [`Settled::free_commits`].

use std::collections::HashMap;
use std::io;

use super::{Found, Reclaim};
use crate::alloc::FreeList;
use crate::format::{
    BLOCK_HEADER_LEN, BlockHeader, CommitRecord, EXPIRY_WORD_OFFSET, member_digest, settled_word,
    stored_header_crc,
};
use crate::index::shard_of;
use crate::io::Storage;

/// A pending member: its entry and the checksums the digest covers.
struct Pending {
    found: Found,
    header_crc: u32,
    payload_crc: u32,
}

/// What the walk found of batches.
#[derive(Default)]
pub(super) struct Batches {
    pending: Vec<Pending>,
    /// (offset, length, record) of each valid commit record.
    commits: Vec<(u64, u64, CommitRecord)>,
}

/// What the open does about the batches it found.
#[derive(Default)]
pub(super) struct Settled {
    /// Complete batches' tombstones: (sequence number, key).
    pub tombstones: Vec<(u64, Vec<u8>)>,
    /// Complete batches' commit records: (offset, length), freed last.
    pub commits: Vec<(u64, u64)>,
    /// The pending members of complete batches: (offset, settled expiry word).
    words: Vec<(u64, u64)>,
}

impl Batches {
    /// A pending member (its header CRC is read if a commit record claims it).
    pub(super) fn pending(&mut self, found: Found, h: &BlockHeader) {
        self.pending.push(Pending {
            found,
            header_crc: 0,
            payload_crc: h.payload_crc,
        });
    }

    /// A commit record with a valid payload.
    pub(super) fn commit(&mut self, offset: u64, len: u64, c: CommitRecord) {
        self.commits.push((offset, len, c));
    }

    /// Appends what a walk of the next part of the file found.
    pub(super) fn append(&mut self, later: Batches) {
        self.pending.extend(later.pending);
        self.commits.extend(later.commits);
    }

    /// Decides every batch: a commit record is complete when, for each of
    /// its members' sequence numbers, an entry is found (pending, or settled
    /// and among `found`) and the members' checksums give its digest. The
    /// pending members of complete batches go into `found`; every other
    /// pending entry, and every incomplete commit record, into `reclaims`.
    /// `read` reads the file (for the 48-byte headers of members).
    pub(super) fn resolve(
        self,
        found: &mut [Vec<Found>],
        reclaims: &mut Vec<Reclaim>,
        salt: u32,
        mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<Settled> {
        let mut settled = Settled::default();
        let Batches {
            mut pending,
            mut commits,
        } = self;
        let reclaim = |offset, len| Reclaim {
            offset,
            len,
            entry: true,
            free: false,
        };
        if commits.is_empty() {
            reclaims.extend(pending.iter().map(|p| reclaim(p.found.offset, p.found.len)));
            return Ok(settled);
        }
        // The checksums of every entry whose sequence number a commit
        // record claims: seq -> (offset, header CRC, payload CRC, pending
        // index). A pending copy is preferred (it is the batch's own; a
        // settled one may be a compaction's copy, after the batch settled).
        commits.sort_by_key(|c| c.2.first_seq);
        let claimed = |seq: u64| {
            let i = commits.partition_point(|c| c.2.first_seq <= seq);
            i > 0 && commits[i - 1].2.has_member(seq)
        };
        let mut by_seq: HashMap<u64, (u32, u32, Option<usize>)> = HashMap::new();
        let mut hb = [0u8; BLOCK_HEADER_LEN as usize];
        for (i, p) in pending.iter_mut().enumerate() {
            if claimed(p.found.seq) {
                read(p.found.offset, &mut hb)?;
                p.header_crc = stored_header_crc(&hb);
                by_seq.insert(p.found.seq, (p.header_crc, p.payload_crc, Some(i)));
            }
        }
        for list in found.iter() {
            for f in list {
                if claimed(f.seq) && !by_seq.contains_key(&f.seq) {
                    read(f.offset, &mut hb)?;
                    let pcrc = u32::from_le_bytes([hb[40], hb[41], hb[42], hb[43]]);
                    by_seq.insert(f.seq, (stored_header_crc(&hb), pcrc, None));
                }
            }
        }
        let mut valid = vec![false; pending.len()];
        for (offset, len, c) in commits {
            let members: Option<Vec<_>> = (0..u64::from(c.members))
                .map(|i| by_seq.get(&(c.first_seq + i)).copied())
                .collect();
            let complete = members.as_ref().is_some_and(|m| {
                member_digest(salt, m.iter().map(|&(h, p, _)| (h, p))) == c.digest
            });
            if !complete {
                reclaims.push(reclaim(offset, len));
                continue;
            }
            for &(_, _, i) in members.iter().flatten() {
                if let Some(i) = i {
                    valid[i] = true;
                }
            }
            settled.tombstones.extend(c.tombstones);
            settled.commits.push((offset, len));
        }
        for (p, ok) in pending.into_iter().zip(valid) {
            if ok {
                let f = p.found;
                settled.words.push((
                    f.offset + EXPIRY_WORD_OFFSET,
                    settled_word(f.expiry, salt, f.seq),
                ));
                found[shard_of(f.hash)].push(f);
            } else {
                reclaims.push(reclaim(p.found.offset, p.found.len));
            }
        }
        Ok(settled)
    }
}

impl Settled {
    /// Settles the members of complete batches: each pending expiry word
    /// becomes a settled one (one atomic 8-byte write each). The sync that
    /// makes them durable is the space plan's.
    pub(super) fn write_words(&self, storage: &dyn Storage) -> io::Result<()> {
        for &(at, word) in &self.words {
            storage.write_word(at, word)?;
        }
        Ok(())
    }

    /// Frees the commit records of complete batches, once their members'
    /// words and their tombstoned copies' free headers are durable (the
    /// caller synced): a free header each (merged with free neighbours,
    /// or the end of the file cut), then one sync.
    pub(super) fn free_commits(
        &self,
        storage: &dyn Storage,
        salt: u32,
        free: &mut FreeList,
    ) -> io::Result<()> {
        if self.commits.is_empty() {
            return Ok(());
        }
        let mut commits = self.commits.clone();
        commits.sort_unstable();
        for &(o, l) in &commits {
            storage.write_at(o, &[&BlockHeader::free(l).encode(salt)])?;
            let f = free.free(o, l, 0);
            match f.truncate_to {
                Some(t) => storage.set_len(t)?,
                None if (f.offset, f.len) != (o, l) => {
                    storage.write_at(f.offset, &[&BlockHeader::free(f.len).encode(salt)])?;
                }
                None => {}
            }
        }
        storage.sync()
    }
}
