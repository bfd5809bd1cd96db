//! Batches in a report: which commit records are complete, by the rule the
//! store's open follows (FORMAT.md, "Batches"). Memory: a few words per
//! pending member and per commit record; none per settled entry.

use std::collections::{HashMap, HashSet};
use std::io;

use super::State;
use crate::format::{
    BLOCK_HEADER_LEN, BlockHeader, CommitRecord, FileHeader, member_digest, stored_header_crc,
};
use crate::inspect::{BlockKind, Source, Walker};

/// A pending member as the first walk found it.
struct PendingMember {
    offset: u64,
    len: u64,
    seq: u64,
    payload_crc: u32,
    expired: bool,
}

/// What the report knows of batches.
#[derive(Default)]
pub(super) struct ReportBatches {
    pending: Vec<PendingMember>,
    commits: Vec<(u64, CommitRecord)>,
    /// Offsets of complete commit records.
    complete: HashSet<u64>,
    /// Offsets of pending members that are not entries.
    uncommitted: HashSet<u64>,
}

impl ReportBatches {
    pub(super) fn pending(&mut self, offset: u64, len: u64, h: &BlockHeader, now_ms: i64) {
        self.pending.push(PendingMember {
            offset,
            len,
            seq: h.seq,
            payload_crc: h.payload_crc,
            expired: h.is_expired(now_ms),
        });
    }

    pub(super) fn commit(&mut self, offset: u64, c: CommitRecord) {
        self.commits.push((offset, c));
    }

    /// Whether the pending member at `offset` is not an entry.
    pub(super) fn uncommitted(&self, offset: u64) -> bool {
        self.uncommitted.contains(&offset)
    }

    /// Whether the commit record at `offset` is complete.
    pub(super) fn is_complete(&self, offset: u64) -> bool {
        self.complete.contains(&offset)
    }

    /// The tombstones of complete batches: (commit record offset, sequence
    /// number, key).
    pub(super) fn tombstones(&self) -> Vec<(u64, u64, Vec<u8>)> {
        self.commits
            .iter()
            .filter(|(o, _)| self.complete.contains(o))
            .flat_map(|(o, c)| c.tombstones.iter().map(move |(s, k)| (*o, *s, k.clone())))
            .collect()
    }

    pub(super) fn complete_count(&self) -> u64 {
        self.complete.len() as u64
    }

    /// Decides every commit record; returns the pending members that are
    /// not entries, with the state the first walk counted them in. Reads the
    /// headers of the members (and walks the file again only when a commit
    /// record claims a member that is no longer pending).
    pub(super) fn resolve<S: Source>(
        &mut self,
        src: &mut S,
        fields: FileHeader,
    ) -> io::Result<Vec<(u64, u64, State)>> {
        let salt = fields.salt;
        let claimed = |seq: u64| self.commits.iter().any(|(_, c)| c.has_member(seq));
        let mut by_seq: HashMap<u64, (u32, u32, Option<u64>)> = HashMap::new();
        let mut hb = [0u8; BLOCK_HEADER_LEN as usize];
        for p in &self.pending {
            if claimed(p.seq) {
                src.read_at(p.offset, &mut hb)?;
                by_seq.insert(
                    p.seq,
                    (stored_header_crc(&hb), p.payload_crc, Some(p.offset)),
                );
            }
        }
        let missing = self.commits.iter().any(|(_, c)| {
            (0..u64::from(c.members)).any(|i| !by_seq.contains_key(&(c.first_seq + i)))
        });
        if missing {
            let mut w = Walker::with_header(&mut *src, fields);
            let mut settled = Vec::new();
            while let Some(b) = w.next_block()? {
                if let BlockKind::Entry(h) = b.kind
                    && !h.pending
                    && claimed(h.seq)
                {
                    settled.push((b.offset, h));
                }
            }
            for (o, h) in settled {
                by_seq.entry(h.seq).or_insert((
                    stored_header_crc(&h.encode(salt)),
                    h.payload_crc,
                    Some(o),
                ));
            }
        }
        let mut valid = HashSet::new();
        for (offset, c) in &self.commits {
            let members: Option<Vec<_>> = (0..u64::from(c.members))
                .map(|i| by_seq.get(&(c.first_seq + i)).copied())
                .collect();
            let Some(m) = members else { continue };
            if member_digest(salt, m.iter().map(|&(h, p, _)| (h, p))) == c.digest {
                self.complete.insert(*offset);
                valid.extend(m.iter().filter_map(|x| x.2));
            }
        }
        let mut out = Vec::new();
        for p in &self.pending {
            if !valid.contains(&p.offset) {
                self.uncommitted.insert(p.offset);
                out.push((p.offset, p.len, super::live_or_expired(p.expired)));
            }
        }
        Ok(out)
    }
}
