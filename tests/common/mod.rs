//! Shared test support: temporary stores, a reference model, helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sfs::{ManualClock, Options, Store, SyncPolicy};

/// A temporary directory holding one store file.
pub struct TempStore {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempStore {
    pub fn new() -> TempStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.sfs");
        TempStore { dir, path }
    }

    /// Options for fast tests: no fdatasync, a manual clock, and no active
    /// expiry (tests count what `purge_expired` removes; a background sweep
    /// following the manual clock would race them: `tests/expiry.rs` tests it).
    pub fn options(&self, clock: &Arc<ManualClock>) -> Options {
        Options::new()
            .sync(SyncPolicy::Never)
            .clock(clock.clone())
            .active_expiry(None)
    }

    pub fn open(&self, clock: &Arc<ManualClock>) -> Store {
        self.options(clock).open(&self.path).expect("open")
    }
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000))
}

/// The reference model lives in the library so the fuzz targets share it.
#[allow(unused_imports)]
pub use sfs::fuzzing::Model;

/// The sorted live keys of a store.
pub fn sorted_keys(store: &Store) -> Vec<Vec<u8>> {
    let mut k = store.keys();
    k.sort();
    k
}

// ---- crafted files and sfs-dump runs (tests/dump_*.rs) ----------------------

use sfs::format::{BlockHeader, FIRST_FORMAT_VERSION, FileHeader, Kind, crc, entry_block_len};

/// The salt of files made by [`FileBuilder`].
pub const SALT: u32 = 0x5eed_1234;

/// Builds a store file byte by byte, valid or not, for tests of the reader.
pub struct FileBuilder {
    pub bytes: Vec<u8>,
}

impl FileBuilder {
    /// A file holding only a valid header (salt [`SALT`], created at 1,000 ms).
    pub fn new() -> FileBuilder {
        let h = FileHeader {
            version: FIRST_FORMAT_VERSION,
            salt: SALT,
            created_ms: 1_000,
        };
        FileBuilder {
            bytes: h.encode().to_vec(),
        }
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Appends an entry without metadata or expiry; returns its offset.
    pub fn entry(&mut self, key: &[u8], value: &[u8], seq: u64) -> u64 {
        self.entry_with(key, b"", value, seq, 0, 0)
    }

    /// Appends an entry with everything chosen, `pad` extra bytes of padding.
    pub fn entry_with(
        &mut self,
        key: &[u8],
        meta: &[u8],
        value: &[u8],
        seq: u64,
        expiry_ms: u64,
        pad: u64,
    ) -> u64 {
        let at = self.len();
        let h = BlockHeader {
            kind: Kind::Entry,
            block_len: entry_block_len(key.len(), meta.len(), value.len()) + pad,
            key_len: key.len() as u16,
            meta_len: meta.len() as u16,
            value_len: value.len() as u32,
            seq,
            expiry_ms,
            payload_crc: crc(SALT, &[key, meta, value]),
            pending: false,
        };
        self.bytes.extend_from_slice(&h.encode(SALT));
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(meta);
        self.bytes.extend_from_slice(value);
        self.bytes.resize((at + h.block_len) as usize, 0);
        at
    }

    /// Appends a free block of `len` bytes (its body filled with 0xAB).
    pub fn free(&mut self, len: u64) -> u64 {
        let at = self.len();
        self.bytes
            .extend_from_slice(&BlockHeader::free(len).encode(SALT));
        self.bytes.resize((at + len) as usize, 0xAB);
        at
    }

    /// Appends `len` zero bytes.
    pub fn zeros(&mut self, len: u64) -> u64 {
        let at = self.len();
        self.bytes.resize((at + len) as usize, 0);
        at
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, b: &[u8]) -> u64 {
        let at = self.len();
        self.bytes.extend_from_slice(b);
        at
    }

    /// The block header at `offset`, decoded without checks of its fields.
    pub fn header_at(&self, offset: u64) -> BlockHeader {
        BlockHeader::decode(&self.bytes[offset as usize..], SALT, offset, self.len())
            .expect("a valid header")
    }

    /// Writes `h` at `offset` with a valid header checksum (whatever its fields say).
    pub fn put_header(&mut self, offset: u64, h: &BlockHeader) {
        let o = offset as usize;
        self.bytes[o..o + 48].copy_from_slice(&h.encode(SALT));
    }

    /// Recomputes the header checksum at `offset` after raw edits of bytes 0..44.
    pub fn reseal_header(&mut self, offset: u64) {
        let o = offset as usize;
        // The header CRC covers every field but the expiry word (32..40).
        let c = crc(SALT, &[&self.bytes[o..o + 32], &self.bytes[o + 40..o + 44]]);
        self.bytes[o + 44..o + 48].copy_from_slice(&c.to_le_bytes());
    }

    /// Recomputes the file header checksum after raw edits of bytes 0..60.
    pub fn reseal_file_header(&mut self) {
        let c = crc(0, &[&self.bytes[0..60]]);
        self.bytes[60..64].copy_from_slice(&c.to_le_bytes());
    }
}

/// The bytes of a real store made by `sfs::Store` on a manual clock at
/// 1,000,000 ms: 60 `user:N` entries (every fourth deleted, so free space;
/// `user:1` overwritten), eight sessions with metadata of which four expire
/// after 1 s and four after an hour, `doc` with metadata, a binary key
/// `00 ff "bin"`, and `big`, a 20,000-byte value.
pub fn real_store_bytes(clock: &Arc<ManualClock>) -> Vec<u8> {
    store_bytes(clock, 60, 20_000)
}

/// [`real_store_bytes`] with `users` user entries and a `big` value of
/// `big_len` bytes.
pub fn store_bytes(clock: &Arc<ManualClock>, users: u32, big_len: usize) -> Vec<u8> {
    let t = TempStore::new();
    let store = t.open(clock);
    for i in 0..users {
        let value = vec![b'a' + (i % 26) as u8; (i as usize * 53) % 700];
        store.put(format!("user:{i}"), value).unwrap();
    }
    for i in 0..8u32 {
        let ttl = if i % 2 == 0 { 1_000 } else { 3_600_000 };
        let opts = sfs::PutOptions::new()
            .ttl(std::time::Duration::from_millis(ttl))
            .metadata(b"m");
        store
            .put_with(format!("session:{i}"), b"token", &opts)
            .unwrap();
    }
    let opts = sfs::PutOptions::new().metadata(b"etag=7");
    store.put_with(b"doc", b"{\"a\":1}", &opts).unwrap();
    store.put(b"\x00\xffbin", b"\x01\x02").unwrap();
    for i in (0..users).step_by(4) {
        store.delete(format!("user:{i}")).unwrap();
    }
    store.put(b"user:1", b"overwritten").unwrap();
    store.put(b"big", vec![7u8; big_len]).unwrap();
    store.close().unwrap();
    std::fs::read(&t.path).unwrap()
}

/// "Now" for [`real_store_bytes`] files: the clock's start + 2 s, when the
/// short-lived sessions have expired and the others have not.
pub const REAL_NOW: i64 = 1_002_000;

// ---- crash images (tests/crash_every_write.rs, tests/interleavings) ---------

/// Opens the file image `bytes` read-only with `opts`, runs `look` on the
/// store, and checks that the open wrote nothing (a read-only open never
/// does, whatever it finds).
pub fn look_read_only<T>(
    opts: &Options,
    bytes: &[u8],
    look: impl FnOnce(&Store) -> Result<T, String>,
) -> Result<T, String> {
    use sfs::testing::{MemStorage, Storage};
    let mem = Arc::new(MemStorage::with_bytes(bytes.to_vec()));
    let store = opts
        .clone()
        .read_only(true)
        .open_on("crash.sfs", mem.clone() as Arc<dyn Storage>)
        .map_err(|e| format!("read-only open failed: {e}"))?;
    let seen = look(&store)?;
    drop(store);
    if mem.bytes() != bytes {
        return Err("a read-only open wrote".into());
    }
    Ok(seen)
}
