//! The on-disk layout: the file header, block headers, checksums.
//!
//! Pure functions on byte slices; no I/O happens here. FORMAT.md documents the
//! same layout byte by byte and must change together with this file.
//!
//! A file is a 64-byte [`FileHeader`] followed by blocks that tile the rest of
//! the file exactly. Every block starts at a multiple of [`ALIGN`] with a
//! 48-byte [`BlockHeader`]; an entry block then holds the key, the metadata and
//! the value, and is padded to its `block_len`. A free block is a header of kind
//! [`Kind::Free`] followed by bytes nobody reads.

/// Declares a codec function of a type the walk hands out ([`FileHeader`],
/// [`BlockHeader`]): `pub(crate)`, and `pub` (hidden) only with the
/// `testing` feature, for the tests that craft files byte by byte. Writing
/// headers is the store's business, not part of the public API.
macro_rules! codec_fn {
    ($(#[$m:meta])* fn $name:ident $($rest:tt)*) => {
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        $(#[$m])*
        pub fn $name $($rest)*
        #[cfg(not(feature = "testing"))]
        $(#[$m])*
        pub(crate) fn $name $($rest)*
    };
}

/// The first eight bytes of every store file (PNG-style: a high byte, the name,
/// then CR LF, ^Z, LF so that text-mode transfers are detected).
pub const MAGIC: [u8; 8] = *b"\x89SFS\r\n\x1a\n";
/// The newest format version this build reads and writes (2: files that
/// hold atomic batches). It also reads and writes version 1; a new file is
/// created as version [`FIRST_FORMAT_VERSION`] and becomes version 2 when its
/// first batch is written (FORMAT.md, "Format versions").
pub const FORMAT_VERSION: u32 = 2;
/// The version a new file is created with, and the oldest this build opens.
pub const FIRST_FORMAT_VERSION: u32 = 1;
/// XORed into the check bits of a batch member's expiry word while its batch
/// is not settled (FORMAT.md, "Batches"): a reader that does not know of
/// batches (format version 1) sees the word's check fail.
pub const PENDING: u64 = 0xB47C;
/// Length of the file header; the first block starts here.
pub const FILE_HEADER_LEN: u64 = 64;
/// Length of a block header.
pub const BLOCK_HEADER_LEN: u64 = 48;
/// Every block starts at, and is sized in, multiples of this.
pub const ALIGN: u64 = 8;
/// The smallest block: a header alone (an entry with an empty key and value).
pub const MIN_BLOCK_LEN: u64 = BLOCK_HEADER_LEN;
/// The first four bytes of every block header.
pub const BLOCK_MAGIC: [u8; 4] = *b"sfsB";

/// Largest key, in bytes (the key length is a 16-bit field).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Largest metadata, in bytes (a 16-bit field).
pub const MAX_META_LEN: usize = u16::MAX as usize;
/// Largest value, in bytes (a 32-bit field).
pub const MAX_VALUE_LEN: usize = u32::MAX as usize;
/// Latest expiry that can be stored, in milliseconds since the UNIX epoch (a
/// 48-bit field: about the year 10889). Later expiries are stored as this.
pub const MAX_EXPIRY_MS: u64 = (1 << 48) - 1;
/// Offset of the expiry word inside a block header.
pub const EXPIRY_WORD_OFFSET: u64 = 32;

/// What a block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A key-value entry.
    Entry,
    /// Unused space.
    Free,
    /// The commit record of an atomic batch (format version 2).
    Commit,
}

impl Kind {
    const ENTRY: u8 = b'E';
    const FREE: u8 = b'F';
    const COMMIT: u8 = b'C';

    fn to_byte(self) -> u8 {
        match self {
            Kind::Entry => Self::ENTRY,
            Kind::Free => Self::FREE,
            Kind::Commit => Self::COMMIT,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            Self::ENTRY => Some(Kind::Entry),
            Self::FREE => Some(Kind::Free),
            Self::COMMIT => Some(Kind::Commit),
            _ => None,
        }
    }
}

/// Rounds `n` up to the next multiple of [`ALIGN`].
pub const fn align_up(n: u64) -> u64 {
    (n + (ALIGN - 1)) & !(ALIGN - 1)
}

/// The block length an entry with these field lengths needs.
pub fn entry_block_len(key_len: usize, meta_len: usize, value_len: usize) -> u64 {
    align_up(BLOCK_HEADER_LEN + key_len as u64 + meta_len as u64 + value_len as u64)
}

/// CRC-32 (IEEE 802.3, as `crc32fast` computes it) started from `seed`
/// instead of zero. Seeding with the file's salt means a copy of another
/// store's blocks stored as a value never passes for one of ours.
pub fn crc(seed: u32, parts: &[&[u8]]) -> u32 {
    let mut h = seeded(seed);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// [`crc`] for one seed (a store's salt), made once: a loop that checks
/// many blocks (a backup's round 1) clones this hasher for each checksum
/// instead of looking up the thread's cached one (see [`seeded`]).
#[derive(Clone)]
pub struct Crc {
    seed: u32,
    start: crc32fast::Hasher,
}

impl Crc {
    /// A checksummer started from `seed`.
    pub fn new(seed: u32) -> Crc {
        Crc {
            seed,
            start: seeded(seed),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// `crc(seed, &[bytes])`.
    pub fn of(&self, bytes: &[u8]) -> u32 {
        let mut h = self.start.clone();
        h.update(bytes);
        h.finalize()
    }
}

/// A CRC hasher started from `seed`. `crc32fast::Hasher::new_with_initial`
/// detects the CPU's features on every call (a good part of the cost of a
/// block header's 36-byte checksum); this thread clones the hasher it made
/// last, when for the same seed (a store's salt).
fn seeded(seed: u32) -> crc32fast::Hasher {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u32, crc32fast::Hasher)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((s, h)) if *s == seed => h.clone(),
        _ => {
            let h = crc32fast::Hasher::new_with_initial(seed);
            *last = Some((seed, h.clone()));
            h
        }
    })
}

/// The 64-byte header at the start of every store file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Format version (1).
    pub version: u32,
    /// Random value chosen when the file was created; seeds every block checksum.
    pub salt: u32,
    /// When the file was created, in milliseconds since the UNIX epoch.
    pub created_ms: u64,
}

/// Why a file header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The bytes do not start with the store magic (`89 53 46 53 0d 0a 1a 0a`):
    /// this is not a store file.
    NotAStore,
    /// The magic matches and the checksum too, but the version is not ours.
    UnsupportedVersion(u32),
    /// The magic matches but the header is damaged or cut short.
    Corrupt(String),
}

impl FileHeader {
    codec_fn! {
        /// Encodes the header.
        fn encode(&self) -> [u8; FILE_HEADER_LEN as usize] {
            let mut b = [0u8; FILE_HEADER_LEN as usize];
            b[0..8].copy_from_slice(&MAGIC);
            b[8..12].copy_from_slice(&self.version.to_le_bytes());
            b[12..16].copy_from_slice(&(FILE_HEADER_LEN as u32).to_le_bytes());
            b[16..20].copy_from_slice(&self.salt.to_le_bytes());
            // 20..24: flags, zero.
            b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
            // 32..60: reserved, zero.
            let c = crc(0, &[&b[0..60]]);
            b[60..64].copy_from_slice(&c.to_le_bytes());
            b
        }
    }

    codec_fn! {
        /// Decodes and checks a file header. `bytes` is the start of the file (all
        /// of it when the file is shorter than the header).
        fn decode(bytes: &[u8]) -> Result<FileHeader, HeaderError> {
            let n = bytes.len().min(MAGIC.len());
            if bytes[..n] != MAGIC[..n] || bytes.is_empty() {
                if magic_damaged(bytes) {
                    return Err(HeaderError::Corrupt(
                        "file header magic damaged (the header checksum matches the store's magic)"
                            .into(),
                    ));
                }
                return Err(HeaderError::NotAStore);
            }
            if bytes.len() < FILE_HEADER_LEN as usize {
                return Err(HeaderError::Corrupt(format!(
                    "file header cut short: {} of {} bytes",
                    bytes.len(),
                    FILE_HEADER_LEN
                )));
            }
            let b = &bytes[..FILE_HEADER_LEN as usize];
            let version = u32_at(b, 8);
            let stored = u32_at(b, 60);
            let computed = crc(0, &[&b[0..60]]);
            if stored != computed && upgrade_cut_short(b, stored) {
                // A crash between the two word writes of an upgrade to
                // version 2: no batch was written yet, it is version 1.
                return Ok(FileHeader {
                    version: FIRST_FORMAT_VERSION,
                    salt: u32_at(b, 16),
                    created_ms: u64_at(b, 24),
                });
            }
            if stored != computed {
                return Err(HeaderError::Corrupt(format!(
                    "file header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}; version field reads {version})"
                )));
            }
            if !(FIRST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
                return Err(HeaderError::UnsupportedVersion(version));
            }
            let header_len = u32_at(b, 12);
            if u64::from(header_len) != FILE_HEADER_LEN {
                return Err(HeaderError::Corrupt(format!(
                    "file header length field is {header_len}, expected {FILE_HEADER_LEN}"
                )));
            }
            Ok(FileHeader {
                version,
                salt: u32_at(b, 16),
                created_ms: u64_at(b, 24),
            })
        }
    }
}

/// Whether `file`, a whole file, is one whose creation a crash cut short: it
/// is exactly [`FILE_HEADER_LEN`] bytes long, its header does not decode, and
/// it holds zeros, or the start of a file header followed by zeros (the
/// checksum, when partly there, being the start of the right one).
///
/// A writer creates a file by extending it to the header's length (which
/// fills it with zeros) and then writing the header; a crash in between, or
/// in the middle of that one write, leaves such a file. It holds nothing, so
/// an open treats it as empty instead of refusing it for ever. A foreign file
/// or the damaged header of a real store is not taken for one (a store's
/// damaged header could only be if the damage zeroed the end of its checksum,
/// and a 64-byte store holds nothing either).
pub fn is_unfinished_file(file: &[u8]) -> bool {
    if file.len() as u64 != FILE_HEADER_LEN || FileHeader::decode(file).is_ok() {
        return false;
    }
    // Bytes a version-1 header always holds: magic, version, header length,
    // flags and the reserved area. Salt, creation time and checksum vary.
    let template = FileHeader {
        version: FIRST_FORMAT_VERSION,
        salt: 0,
        created_ms: 0,
    }
    .encode();
    let fixed = |i: usize| i < 16 || (20..24).contains(&i) || (32..60).contains(&i);
    // Everything from the first byte never written on is zero.
    let written = file.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let crc_so_far = crc(0, &[&file[0..60]]).to_le_bytes();
    (0..written).all(|i| match i {
        60.. => file[i] == crc_so_far[i - 60],
        _ => !fixed(i) || file[i] == template[i],
    })
}

/// Whether a header whose checksum fails is one an upgrade from version 1 to
/// version 2 left half done: its version field is 1 or 2 and its checksum
/// is that of the same header with the other of the two versions (the
/// upgrade rewrites the version and the checksum with two atomic 8-byte
/// stores, and a power loss may keep either without the other).
fn upgrade_cut_short(b: &[u8], stored: u32) -> bool {
    let version = u32_at(b, 8);
    if !(version == 1 || version == 2) || u32_at(b, 12) != FILE_HEADER_LEN as u32 {
        return false;
    }
    let mut other = [0u8; 60];
    other.copy_from_slice(&b[..60]);
    other[8..12].copy_from_slice(&(3 - version).to_le_bytes());
    crc(0, &[&other]) == stored
}

/// Whether `bytes` hold a store's file header whose magic is damaged: the
/// header checksum, which covers the magic, matches once the right magic is
/// put back. Then the file is a damaged store, not a foreign file.
fn magic_damaged(bytes: &[u8]) -> bool {
    if bytes.len() < FILE_HEADER_LEN as usize {
        return false;
    }
    let mut b = [0u8; 60];
    b.copy_from_slice(&bytes[..60]);
    b[..8].copy_from_slice(&MAGIC);
    crc(0, &[&b]) == u32_at(bytes, 60)
}

/// A decoded block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    /// Entry or free.
    pub kind: Kind,
    /// Length of the whole block, header included; a multiple of 8.
    pub block_len: u64,
    /// Key length (entries only).
    pub key_len: u16,
    /// Metadata length (entries only).
    pub meta_len: u16,
    /// Value length (entries only).
    pub value_len: u32,
    /// Write sequence number: the copy of a key with the highest one wins.
    pub seq: u64,
    /// Expiry in milliseconds since the UNIX epoch; 0 means never. At most
    /// 2⁴⁸ − 1.
    pub expiry_ms: u64,
    /// CRC of key ‖ metadata ‖ value, seeded with the salt.
    pub payload_crc: u32,
    /// A member of an atomic batch not yet settled: its expiry word's check
    /// bits are XORed with `PENDING` (`0xB47C`), and it is valid only through its
    /// batch's complete commit record (FORMAT.md, "Batches").
    pub pending: bool,
}

/// Why bytes at a block position are not a valid block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockHeaderError {
    /// Fewer than 48 bytes (a block header) remain in the file.
    Truncated,
    /// The first four bytes are not the block magic `sfsB`.
    BadMagic,
    /// The header checksum does not match.
    BadChecksum,
    /// The expiry word's check bits do not match its expiry.
    BadExpiry,
    /// The kind byte is neither entry nor free.
    BadKind,
    /// `block_len` is smaller than a header or not a multiple of 8.
    BadLength,
    /// `block_len` runs past the end of the file.
    PastEnd,
    /// Key, metadata and value do not fit in `block_len`.
    FieldsOverflow,
}

impl std::fmt::Display for BlockHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockHeaderError::Truncated => "block header cut short by the end of the file",
            BlockHeaderError::BadMagic => "no block magic",
            BlockHeaderError::BadChecksum => "block header checksum mismatch",
            BlockHeaderError::BadExpiry => "expiry word check mismatch",
            BlockHeaderError::BadKind => "unknown block kind",
            BlockHeaderError::BadLength => "impossible block length",
            BlockHeaderError::PastEnd => "block length runs past the end of the file",
            BlockHeaderError::FieldsOverflow => "key, metadata and value do not fit in the block",
        })
    }
}

impl BlockHeader {
    codec_fn! {
        /// A free block header of the given length.
        fn free(block_len: u64) -> BlockHeader {
            BlockHeader {
                kind: Kind::Free,
                block_len,
                key_len: 0,
                meta_len: 0,
                value_len: 0,
                seq: 0,
                expiry_ms: 0,
                payload_crc: 0,
                pending: false,
            }
        }
    }

    /// Offset of the key, relative to the block start.
    pub(crate) fn key_offset(&self) -> u64 {
        BLOCK_HEADER_LEN
    }

    /// Offset of the metadata, relative to the block start.
    pub(crate) fn meta_offset(&self) -> u64 {
        BLOCK_HEADER_LEN + u64::from(self.key_len)
    }

    /// Offset of the value, relative to the block start.
    pub(crate) fn value_offset(&self) -> u64 {
        self.meta_offset() + u64::from(self.meta_len)
    }

    /// Bytes of the block that are header and payload (the rest is padding).
    pub(crate) fn used_len(&self) -> u64 {
        self.value_offset() + u64::from(self.value_len)
    }

    /// Length of key ‖ metadata ‖ value.
    pub(crate) fn payload_len(&self) -> u64 {
        self.used_len() - BLOCK_HEADER_LEN
    }

    /// Whether the entry is expired at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        is_expired(self.expiry_ms, now_ms)
    }

    codec_fn! {
        /// Encodes the header, computing its checksum with `salt`.
        fn encode(&self, salt: u32) -> [u8; BLOCK_HEADER_LEN as usize] {
            let mut b = [0u8; BLOCK_HEADER_LEN as usize];
            b[0..4].copy_from_slice(&BLOCK_MAGIC);
            b[4] = self.kind.to_byte();
            // 5: flags, zero.
            b[6..8].copy_from_slice(&self.key_len.to_le_bytes());
            b[8..16].copy_from_slice(&self.block_len.to_le_bytes());
            b[16..20].copy_from_slice(&self.value_len.to_le_bytes());
            b[20..22].copy_from_slice(&self.meta_len.to_le_bytes());
            // 22..24: reserved, zero.
            b[24..32].copy_from_slice(&self.seq.to_le_bytes());
            let mut word = expiry_word(self.expiry_ms, salt, self.seq);
            if self.pending {
                word ^= PENDING << 48;
            }
            b[32..40].copy_from_slice(&word.to_le_bytes());
            b[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
            let c = header_crc(&b, salt);
            b[44..48].copy_from_slice(&c.to_le_bytes());
            b
        }
    }

    codec_fn! {
        /// Decodes a block header found at file offset `pos` in a file of
        /// `file_len` bytes, checking everything that can be checked without the
        /// payload. `bytes` must hold at least the header (fewer bytes is
        /// [`BlockHeaderError::Truncated`]).
        fn decode(
            bytes: &[u8],
            salt: u32,
            pos: u64,
            file_len: u64,
        ) -> Result<BlockHeader, BlockHeaderError> {
            BlockHeader::decode_with(bytes, &Crc::new(salt), pos, file_len)
        }
    }

    codec_fn! {
        /// [`decode`](Self::decode), with a checksummer made for the salt
        /// (for a loop over many headers).
        fn decode_with(
            bytes: &[u8],
            crc: &Crc,
            pos: u64,
            file_len: u64,
        ) -> Result<BlockHeader, BlockHeaderError> {
            let salt = crc.seed();
            if bytes.len() < BLOCK_HEADER_LEN as usize
                || file_len.saturating_sub(pos) < BLOCK_HEADER_LEN
            {
                return Err(BlockHeaderError::Truncated);
            }
            let b = &bytes[..BLOCK_HEADER_LEN as usize];
            if b[0..4] != BLOCK_MAGIC {
                return Err(BlockHeaderError::BadMagic);
            }
            if u32_at(b, 44) != crc.of(&header_crc_input(b)) {
                return Err(BlockHeaderError::BadChecksum);
            }
            let kind = Kind::from_byte(b[4]).ok_or(BlockHeaderError::BadKind)?;
            let (word, seq) = (u64_at(b, 32), u64_at(b, 24));
            let (expiry_ms, pending) = match decode_expiry_word(word, salt, seq) {
                Some(e) => (e, false),
                None if kind == Kind::Entry => (
                    decode_expiry_word(word ^ PENDING << 48, salt, seq)
                        .ok_or(BlockHeaderError::BadExpiry)?,
                    true,
                ),
                None => return Err(BlockHeaderError::BadExpiry),
            };
            let h = BlockHeader {
                kind,
                key_len: u16::from_le_bytes([b[6], b[7]]),
                block_len: u64_at(b, 8),
                value_len: u32_at(b, 16),
                meta_len: u16::from_le_bytes([b[20], b[21]]),
                seq: u64_at(b, 24),
                expiry_ms,
                payload_crc: u32_at(b, 40),
                pending,
            };
            if h.block_len < MIN_BLOCK_LEN || !h.block_len.is_multiple_of(ALIGN) {
                return Err(BlockHeaderError::BadLength);
            }
            if h.block_len > file_len - pos {
                return Err(BlockHeaderError::PastEnd);
            }
            if h.kind != Kind::Free && h.used_len() > h.block_len {
                return Err(BlockHeaderError::FieldsOverflow);
            }
            Ok(h)
        }
    }
}

/// The commit record of an atomic batch (a block of kind [`Kind::Commit`],
/// FORMAT.md "Batches"): its members are the entries with sequence numbers
/// `first_seq .. first_seq + members`, written pending; it makes them valid
/// when all are found and their checksums give `digest`. Its tombstones are
/// the keys the batch deletes, each with its own sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    /// The first member's sequence number (the block header's `seq`).
    pub first_seq: u64,
    /// How many members.
    pub members: u32,
    /// The member digest (FORMAT.md, "Batches") of the members in sequence order.
    pub digest: u32,
    /// The deleted keys, with their sequence numbers (after the members').
    pub tombstones: Vec<(u64, Vec<u8>)>,
}

/// Bytes of a commit record's payload before its tombstones.
pub const COMMIT_FIXED_LEN: usize = 16;

impl CommitRecord {
    /// The highest sequence number the batch used (`first_seq - 1` for a
    /// batch of nothing).
    pub fn last_seq(&self) -> u64 {
        let tomb = self.tombstones.iter().map(|t| t.0).max().unwrap_or(0);
        (self.first_seq + u64::from(self.members))
            .saturating_sub(1)
            .max(tomb)
    }

    /// Whether sequence number `seq` is one of the members'.
    pub fn has_member(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq - self.first_seq < u64::from(self.members)
    }

    codec_fn! {
        /// The payload: member count, tombstone count, digest, reserved
        /// (four `u32`), then each tombstone as sequence number (`u64`), key
        /// length (`u16`) and key.
        fn encode_payload(&self) -> Vec<u8> {
            let keys: usize = self.tombstones.iter().map(|t| 10 + t.1.len()).sum();
            let mut b = Vec::with_capacity(COMMIT_FIXED_LEN + keys);
            b.extend_from_slice(&self.members.to_le_bytes());
            b.extend_from_slice(&(self.tombstones.len() as u32).to_le_bytes());
            b.extend_from_slice(&self.digest.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            for (seq, key) in &self.tombstones {
                b.extend_from_slice(&seq.to_le_bytes());
                b.extend_from_slice(&(key.len() as u16).to_le_bytes());
                b.extend_from_slice(key);
            }
            b
        }
    }

    codec_fn! {
        /// The block header of a commit record with this payload.
        fn header(&self, salt: u32, payload: &[u8]) -> BlockHeader {
            BlockHeader {
                kind: Kind::Commit,
                block_len: align_up(BLOCK_HEADER_LEN + payload.len() as u64),
                key_len: 0,
                meta_len: 0,
                value_len: payload.len() as u32,
                seq: self.first_seq,
                expiry_ms: 0,
                payload_crc: crc(salt, &[payload]),
                pending: false,
            }
        }
    }

    /// Decodes a commit record's payload (already checked by its CRC); `None`
    /// if its counts do not fit its length.
    pub fn decode_payload(first_seq: u64, b: &[u8]) -> Option<CommitRecord> {
        let fixed = b.get(..COMMIT_FIXED_LEN)?;
        let members = u32_at(fixed, 0);
        let count = u32_at(fixed, 4) as usize;
        let digest = u32_at(fixed, 8);
        let mut tombstones = Vec::new();
        let mut at = COMMIT_FIXED_LEN;
        for _ in 0..count {
            let head = b.get(at..at + 10)?;
            let seq = u64_at(head, 0);
            let len = usize::from(u16::from_le_bytes([head[8], head[9]]));
            let key = b.get(at + 10..at + 10 + len)?;
            tombstones.push((seq, key.to_vec()));
            at += 10 + len;
        }
        (at == b.len()).then_some(CommitRecord {
            first_seq,
            members,
            digest,
            tombstones,
        })
    }
}

/// The digest a commit record holds: a CRC seeded with the salt over, for
/// each member in sequence order, its header CRC and payload CRC (each
/// little-endian). Both are independent of the expiry word, so a member
/// gives the same digest pending or settled.
pub fn member_digest(salt: u32, members: impl IntoIterator<Item = (u32, u32)>) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    for (hc, pc) in members {
        h.update(&hc.to_le_bytes());
        h.update(&pc.to_le_bytes());
    }
    h.finalize()
}

/// The header CRC stored in an encoded block header (bytes 44..48).
pub fn stored_header_crc(encoded: &[u8]) -> u32 {
    u32_at(encoded, 44)
}

/// The expiry word of a settled entry: what settling writes over a batch
/// member's pending word (see [`PENDING`]).
pub fn settled_word(expiry_ms: u64, salt: u32, seq: u64) -> u64 {
    expiry_word(expiry_ms, salt, seq)
}

/// The header checksum: bytes 0..32 and 40..44, that is every field but the
/// expiry word (which has its own check, so that it can be rewritten alone).
fn header_crc(b: &[u8], salt: u32) -> u32 {
    Crc::new(salt).of(&header_crc_input(b))
}

/// The bytes the header checksum covers, in one piece: one short checksum
/// instead of a 32-byte one continued by a 4-byte one (the latter goes
/// through crc32fast's table code).
fn header_crc_input(b: &[u8]) -> [u8; 36] {
    let mut x = [0u8; 36];
    x[..32].copy_from_slice(&b[0..32]);
    x[32..].copy_from_slice(&b[40..44]);
    x
}

/// The 8-byte expiry word of an entry with sequence number `seq`: the
/// expiry (48 bits, clamped to [`MAX_EXPIRY_MS`]) and 16 check bits that make
/// the XOR of the word's four 16-bit lanes equal the XOR of the 16-bit lanes
/// of the salt and of `seq`. Any damage confined to 16 consecutive bits (so
/// any damaged byte) breaks that equality, and a word written for another
/// entry (another sequence number) does not fit this one. Being one aligned
/// 8-byte word, it is rewritten with a single atomic store, so a crash leaves
/// the old word or the new one.
pub fn expiry_word(expiry_ms: u64, salt: u32, seq: u64) -> u64 {
    let e = expiry_ms.min(MAX_EXPIRY_MS);
    let fold = |x: u64| x ^ (x >> 16) ^ (x >> 32) ^ (x >> 48);
    let check = (fold(e) ^ fold(u64::from(salt)) ^ fold(seq)) & 0xFFFF;
    e | (check << 48)
}

/// The expiry held in the expiry word of the entry with sequence number
/// `seq`, or `None` if its check bits are wrong.
pub fn decode_expiry_word(word: u64, salt: u32, seq: u64) -> Option<u64> {
    let e = word & MAX_EXPIRY_MS;
    (expiry_word(e, salt, seq) == word).then_some(e)
}

/// Whether an expiry field (0 = never) is past at `now_ms`.
pub fn is_expired(expiry_ms: u64, now_ms: i64) -> bool {
    expiry_ms != 0 && (expiry_ms as i128) <= now_ms as i128
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A whole entry block (header, key, value, zero padding) with no metadata
/// and no expiry, as the store would write it: for the tests of the walkers.
#[cfg(test)]
pub(crate) fn test_entry_block(salt: u32, key: &[u8], value: &[u8], seq: u64) -> Vec<u8> {
    let h = BlockHeader {
        kind: Kind::Entry,
        block_len: entry_block_len(key.len(), 0, value.len()),
        key_len: key.len() as u16,
        meta_len: 0,
        value_len: value.len() as u32,
        seq,
        expiry_ms: 0,
        payload_crc: crc(salt, &[key, value]),
        pending: false,
    };
    let mut b = h.encode(salt).to_vec();
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    b.resize(h.block_len as usize, 0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hasher this thread keeps for its last seed must never lend one
    /// seed's start to another's checksum.
    #[test]
    fn checksums_with_seeds_in_turn_match_fresh_hashers() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        let fresh = |seed: u32, parts: &[&[u8]]| {
            let mut h = crc32fast::Hasher::new_with_initial(seed);
            parts.iter().for_each(|p| h.update(p));
            h.finalize()
        };
        assert_eq!(crc(0, &[b"123456789"]), 0xCBF4_3926);
        for seed in [0x1122_3344, 0x1122_3344, 7, 0, 0x1122_3344, u32::MAX, 7] {
            for (a, b) in [(0, 36), (10, 116), (0, 200)] {
                let parts: [&[u8]; 2] = [&data[a..b], &data[40..44]];
                assert_eq!(crc(seed, &parts), fresh(seed, &parts), "seed {seed:#x}");
                assert_eq!(crc(seed, &parts[..1]), fresh(seed, &parts[..1]));
                assert_eq!(Crc::new(seed).of(parts[0]), fresh(seed, &parts[..1]));
            }
        }
    }

    #[test]
    fn a_file_header_cut_short_at_creation_is_recognised() {
        let h = FileHeader {
            version: FIRST_FORMAT_VERSION,
            salt: 0xdead_beef,
            created_ms: 1_700_000_000_000,
        }
        .encode();
        for keep in 0..64 {
            let mut f = h[..keep].to_vec();
            f.resize(64, 0);
            assert!(is_unfinished_file(&f), "header torn after {keep} bytes");
        }
        // A complete header, damaged or not, is not an unfinished file.
        assert!(!is_unfinished_file(&h));
        for at in 0..64 {
            let mut f = h;
            f[at] ^= 0x10;
            assert!(!is_unfinished_file(&f), "damaged byte {at}");
        }
        // Nor is a file of another length, or foreign bytes.
        assert!(!is_unfinished_file(&[0u8; 63]));
        assert!(!is_unfinished_file(&[0u8; 65]));
        let mut foreign = [0u8; 64];
        foreign[..5].copy_from_slice(b"hello");
        assert!(!is_unfinished_file(&foreign));
        let mut other_version = h;
        other_version[8] = 2;
        other_version[60..].fill(0);
        assert!(!is_unfinished_file(&other_version));
    }

    fn entry(key: &[u8], meta: &[u8], value: &[u8], salt: u32) -> BlockHeader {
        BlockHeader {
            kind: Kind::Entry,
            block_len: entry_block_len(key.len(), meta.len(), value.len()),
            key_len: key.len() as u16,
            meta_len: meta.len() as u16,
            value_len: value.len() as u32,
            seq: 7,
            expiry_ms: 123,
            payload_crc: crc(salt, &[key, meta, value]),
            pending: false,
        }
    }

    #[test]
    fn a_damaged_magic_is_corrupt_not_foreign() {
        let h = FileHeader {
            version: FORMAT_VERSION,
            salt: 9,
            created_ms: 1,
        }
        .encode();
        for at in 0..8 {
            for flip in [0xFFu8, 0x01, 0x80] {
                let mut b = h;
                b[at] ^= flip;
                assert!(
                    matches!(FileHeader::decode(&b), Err(HeaderError::Corrupt(_))),
                    "byte {at} ^ {flip:#x}"
                );
            }
        }
        // Other bytes than a header stay foreign, however long.
        assert_eq!(
            FileHeader::decode(&[0x42; 100]),
            Err(HeaderError::NotAStore)
        );
        assert_eq!(FileHeader::decode(b"x"), Err(HeaderError::NotAStore));
    }

    #[test]
    fn file_header_round_trips() {
        let h = FileHeader {
            version: FORMAT_VERSION,
            salt: 0xdead_beef,
            created_ms: 99,
        };
        assert_eq!(FileHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn foreign_bytes_are_not_a_store() {
        assert_eq!(
            FileHeader::decode(b"hello world, this is a text file"),
            Err(HeaderError::NotAStore)
        );
        assert_eq!(FileHeader::decode(b"x"), Err(HeaderError::NotAStore));
        assert_eq!(FileHeader::decode(b""), Err(HeaderError::NotAStore));
    }

    #[test]
    fn cut_header_is_corrupt_not_foreign() {
        let h = FileHeader {
            version: 1,
            salt: 1,
            created_ms: 1,
        }
        .encode();
        assert!(matches!(
            FileHeader::decode(&h[..3]),
            Err(HeaderError::Corrupt(_))
        ));
        assert!(matches!(
            FileHeader::decode(&h[..40]),
            Err(HeaderError::Corrupt(_))
        ));
    }

    #[test]
    fn every_flipped_header_byte_is_detected() {
        let h = FileHeader {
            version: 1,
            salt: 5,
            created_ms: 1,
        }
        .encode();
        for i in 0..h.len() {
            let mut d = h;
            d[i] ^= 0x10;
            assert!(FileHeader::decode(&d).is_err(), "byte {i}");
            if i >= 8 {
                assert!(
                    matches!(FileHeader::decode(&d), Err(HeaderError::Corrupt(_))),
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn newer_version_with_valid_checksum_is_unsupported() {
        let mut b = FileHeader {
            version: 1,
            salt: 5,
            created_ms: 1,
        }
        .encode();
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        let c = crc(0, &[&b[0..60]]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            FileHeader::decode(&b),
            Err(HeaderError::UnsupportedVersion(3))
        );
    }

    #[test]
    fn block_header_round_trips() {
        let h = entry(b"key", b"m", b"value", 42);
        let b = h.encode(42);
        assert_eq!(BlockHeader::decode(&b, 42, 64, 64 + h.block_len), Ok(h));
    }

    #[test]
    fn block_header_with_other_salt_is_rejected() {
        let h = entry(b"key", b"", b"value", 42);
        let b = h.encode(42);
        assert_eq!(
            BlockHeader::decode(&b, 43, 64, 1 << 20),
            Err(BlockHeaderError::BadChecksum)
        );
    }

    #[test]
    fn every_flipped_block_header_byte_is_detected() {
        let h = entry(b"key", b"", b"value", 9);
        let b = h.encode(9);
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut d = b;
                d[i] ^= 1 << bit;
                assert!(
                    BlockHeader::decode(&d, 9, 64, 1 << 20).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        let mut h = BlockHeader::free(40);
        assert_eq!(
            BlockHeader::decode(&h.encode(0), 0, 64, 4096),
            Err(BlockHeaderError::BadLength)
        );
        h.block_len = 52;
        assert_eq!(
            BlockHeader::decode(&h.encode(0), 0, 64, 4096),
            Err(BlockHeaderError::BadLength)
        );
        h.block_len = 4096;
        assert_eq!(
            BlockHeader::decode(&h.encode(0), 0, 64, 4096),
            Err(BlockHeaderError::PastEnd)
        );
        let mut e = entry(b"k", b"", b"v", 0);
        e.value_len = 1000;
        assert_eq!(
            BlockHeader::decode(&e.encode(0), 0, 64, 4096),
            Err(BlockHeaderError::FieldsOverflow)
        );
        assert_eq!(
            BlockHeader::decode(&e.encode(0)[..20], 0, 64, 4096),
            Err(BlockHeaderError::Truncated)
        );
        assert_eq!(
            BlockHeader::decode(&e.encode(0), 0, 64, 100),
            Err(BlockHeaderError::Truncated)
        );
    }

    #[test]
    fn offsets_follow_the_layout() {
        let h = entry(b"abc", b"mm", b"vvvv", 0);
        assert_eq!(h.key_offset(), 48);
        assert_eq!(h.meta_offset(), 51);
        assert_eq!(h.value_offset(), 53);
        assert_eq!(h.used_len(), 57);
        assert_eq!(h.block_len, 64);
        assert_eq!(h.payload_len(), 9);
    }

    #[test]
    fn every_flipped_expiry_word_bit_is_detected() {
        for expiry in [0u64, 1, 1_700_000_000_000, MAX_EXPIRY_MS] {
            let w = expiry_word(expiry, 77, 5);
            assert_eq!(decode_expiry_word(w, 77, 5), Some(expiry));
            for bit in 0..64 {
                assert_eq!(
                    decode_expiry_word(w ^ (1 << bit), 77, 5),
                    None,
                    "expiry {expiry} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn every_damaged_byte_and_short_burst_in_the_expiry_word_is_detected() {
        for expiry in [0u64, 1, 0x1234_5678_9ABC, 1_700_000_000_000, MAX_EXPIRY_MS] {
            for salt in [0u32, 0xDEAD_BEEF] {
                let w = expiry_word(expiry, salt, 1234);
                for byte in 0..8 {
                    for flip in 1..=255u64 {
                        assert_eq!(
                            decode_expiry_word(w ^ (flip << (8 * byte)), salt, 1234),
                            None
                        );
                    }
                }
                for start in 0..64 {
                    for len in 1..=16u32 {
                        let burst = ((1u128 << len) - 1) << start;
                        let mask = (burst as u64) | 1 << start; // a burst starts and ends with a flipped bit
                        let mask = mask & (((1u128 << (start + len as usize).min(64)) - 1) as u64);
                        if mask != 0 {
                            assert_eq!(
                                decode_expiry_word(w ^ mask, salt, 1234),
                                None,
                                "burst at {start} of {len}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_expiry_word_does_not_fit_another_entry() {
        let h = entry(b"key", b"", b"value", 9);
        let mut b = h.encode(9);
        for other_seq in [h.seq + 1, h.seq + 2, h.seq + 1000, 0] {
            b[32..40].copy_from_slice(&expiry_word(555, 9, other_seq).to_le_bytes());
            assert_eq!(
                BlockHeader::decode(&b, 9, 64, 1 << 20),
                Err(BlockHeaderError::BadExpiry)
            );
        }
    }

    #[test]
    fn the_expiry_word_can_change_without_touching_the_header_checksum() {
        let h = entry(b"key", b"", b"value", 9);
        let mut b = h.encode(9);
        b[32..40].copy_from_slice(&expiry_word(555, 9, h.seq).to_le_bytes());
        let d = BlockHeader::decode(&b, 9, 64, 1 << 20).unwrap();
        assert_eq!(d.expiry_ms, 555);
        assert_eq!(d.seq, h.seq);
    }

    #[test]
    fn expiries_past_the_field_are_clamped() {
        let mut h = entry(b"k", b"", b"v", 0);
        h.expiry_ms = u64::MAX;
        let d = BlockHeader::decode(&h.encode(0), 0, 64, 1 << 20).unwrap();
        assert_eq!(d.expiry_ms, MAX_EXPIRY_MS);
    }

    #[test]
    fn expiry_zero_means_never() {
        assert!(!is_expired(0, i64::MAX));
        assert!(is_expired(10, 10));
        assert!(!is_expired(11, 10));
        assert!(!is_expired(5, -3));
    }

    #[test]
    fn a_pending_entry_decodes_as_pending_and_a_settled_word_settles_it() {
        let mut h = entry(b"key", b"", b"value", 9);
        h.pending = true;
        let mut b = h.encode(9);
        assert_eq!(BlockHeader::decode(&b, 9, 64, 1 << 20), Ok(h));
        let w = settled_word(h.expiry_ms, 9, h.seq);
        b[32..40].copy_from_slice(&w.to_le_bytes());
        let d = BlockHeader::decode(&b, 9, 64, 1 << 20).unwrap();
        assert!(!d.pending);
        assert_eq!(stored_header_crc(&b), stored_header_crc(&h.encode(9)));
        // A free or commit header never passes as pending.
        let mut f = BlockHeader::free(48);
        f.pending = true;
        assert_eq!(
            BlockHeader::decode(&f.encode(9), 9, 64, 1 << 20),
            Err(BlockHeaderError::BadExpiry)
        );
    }

    #[test]
    fn a_single_damaged_byte_never_makes_a_word_pending() {
        let w = expiry_word(1_700_000_000_000, 5, 77);
        for byte in 0..8 {
            for flip in 1..=255u64 {
                let d = w ^ (flip << (8 * byte));
                assert_eq!(decode_expiry_word(d ^ PENDING << 48, 5, 77), None);
            }
        }
    }

    #[test]
    fn an_upgrade_cut_short_reads_as_version_1() {
        let v1 = FileHeader {
            version: 1,
            salt: 0x1234,
            created_ms: 5,
        }
        .encode();
        let v2 = FileHeader {
            version: 2,
            ..FileHeader::decode(&v1).unwrap()
        }
        .encode();
        assert_eq!(FileHeader::decode(&v2).unwrap().version, 2);
        // Either word without the other.
        for (first, second) in [(8..16, 56..64), (56..64, 8..16)] {
            let mut b = v1;
            b[first.clone()].copy_from_slice(&v2[first]);
            let h = FileHeader::decode(&b).unwrap();
            assert_eq!((h.version, h.salt, h.created_ms), (1, 0x1234, 5));
            b[second.clone()].copy_from_slice(&v2[second]);
            assert_eq!(FileHeader::decode(&b).unwrap().version, 2);
        }
    }

    #[test]
    fn a_commit_record_round_trips() {
        let c = CommitRecord {
            first_seq: 10,
            members: 3,
            digest: 0xabcd,
            tombstones: vec![(13, b"gone".to_vec()), (14, Vec::new())],
        };
        let p = c.encode_payload();
        assert_eq!(CommitRecord::decode_payload(10, &p), Some(c.clone()));
        assert_eq!(c.last_seq(), 14);
        assert!(c.has_member(12) && !c.has_member(13) && !c.has_member(9));
        for cut in 0..p.len() {
            assert_eq!(CommitRecord::decode_payload(10, &p[..cut]), None);
        }
        let h = c.header(3, &p);
        let b = h.encode(3);
        assert_eq!(BlockHeader::decode(&b, 3, 64, 1 << 20), Ok(h));
    }

    #[test]
    fn seeded_crc_with_zero_seed_is_plain_crc32() {
        // The standard CRC-32 check value.
        assert_eq!(crc(0, &[b"123456789"]), 0xCBF4_3926);
    }
}
