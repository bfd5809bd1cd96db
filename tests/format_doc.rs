//! FORMAT.md's examples are what the encoder produces, and a file made by the
//! store follows the documented layout.

use sfs::format::{
    BlockHeader, CommitRecord, FileHeader, Kind, crc, entry_block_len, member_digest,
    stored_header_crc,
};

const SALT: u32 = 0x1122_3344;

/// The bytes of the ```hex NAME block of FORMAT.md.
fn example(name: &str) -> Vec<u8> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/FORMAT.md")).unwrap();
    let start = doc
        .find(&format!("```hex {name}\n"))
        .unwrap_or_else(|| panic!("no ```hex {name} block"));
    let body = &doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect::<Vec<_>>();
    body.iter()
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|h| u8::from_str_radix(h, 16).unwrap())
        })
        .collect()
}

#[test]
fn file_header_example_matches_the_encoder() {
    let h = FileHeader {
        version: 1,
        salt: SALT,
        created_ms: 1_700_000_000_000,
    };
    assert_eq!(example("file-header"), h.encode().to_vec());
}

#[test]
fn entry_example_matches_the_encoder() {
    let (k, v) = (&b"user:1"[..], &b"alice"[..]);
    let h = BlockHeader {
        kind: Kind::Entry,
        block_len: entry_block_len(k.len(), 0, v.len()),
        key_len: 6,
        meta_len: 0,
        value_len: 5,
        seq: 1,
        expiry_ms: 0,
        payload_crc: crc(SALT, &[k, b"", v]),
        pending: false,
    };
    let mut b = h.encode(SALT).to_vec();
    b.extend_from_slice(k);
    b.extend_from_slice(v);
    b.resize(h.block_len as usize, 0);
    assert_eq!(example("entry"), b);
}

/// The `user:1` entry of the examples, pending (a batch member).
fn pending_entry() -> Vec<u8> {
    let (k, v) = (&b"user:1"[..], &b"alice"[..]);
    let h = BlockHeader {
        kind: Kind::Entry,
        block_len: entry_block_len(k.len(), 0, v.len()),
        key_len: 6,
        meta_len: 0,
        value_len: 5,
        seq: 1,
        expiry_ms: 0,
        payload_crc: crc(SALT, &[k, b"", v]),
        pending: true,
    };
    let mut b = h.encode(SALT).to_vec();
    b.extend_from_slice(k);
    b.extend_from_slice(v);
    b.resize(h.block_len as usize, 0);
    b
}

/// The commit record of a batch of that one member and a delete of
/// `user:0`.
fn commit_record() -> Vec<u8> {
    let member = pending_entry();
    let pcrc = u32::from_le_bytes(member[40..44].try_into().unwrap());
    let c = CommitRecord {
        first_seq: 1,
        members: 1,
        digest: member_digest(SALT, [(stored_header_crc(&member), pcrc)]),
        tombstones: vec![(2, b"user:0".to_vec())],
    };
    let payload = c.encode_payload();
    let h = c.header(SALT, &payload);
    let mut b = h.encode(SALT).to_vec();
    b.extend_from_slice(&payload);
    b.resize(h.block_len as usize, 0);
    b
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let bytes: Vec<String> = c.iter().map(|x| format!("{x:02x}")).collect();
            format!("{:04x}  {}\n", i * 16, bytes.join(" "))
        })
        .collect()
}

#[test]
fn pending_entry_example_matches_the_encoder() {
    let b = pending_entry();
    assert_eq!(example("pending-entry"), b, "\n{}", hex(&b));
}

#[test]
fn commit_record_example_matches_the_encoder() {
    let b = commit_record();
    assert_eq!(example("commit"), b, "\n{}", hex(&b));
}

#[test]
fn free_example_matches_the_encoder() {
    assert_eq!(example("free"), BlockHeader::free(48).encode(SALT).to_vec());
}

#[test]
fn a_store_file_follows_the_documented_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.sfs");
    let s = sfs::Options::new()
        .sync(sfs::SyncPolicy::Never)
        .open(&path)
        .unwrap();
    s.put(b"user:1", b"alice").unwrap();
    s.put_with(b"k2", b"v2", &sfs::PutOptions::new().metadata(b"mm"))
        .unwrap();
    s.close().unwrap();
    let b = std::fs::read(&path).unwrap();
    assert_eq!(&b[0..8], b"\x89SFS\r\n\x1a\n");
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 64);
    let salt = u32::from_le_bytes(b[16..20].try_into().unwrap());
    assert_eq!(
        u32::from_le_bytes(b[60..64].try_into().unwrap()),
        crc32fast::hash(&b[0..60])
    );
    // First block at 64: an entry for user:1.
    let e = &b[64..];
    assert_eq!(&e[0..4], b"sfsB");
    assert_eq!(e[4], b'E');
    assert_eq!(u16::from_le_bytes([e[6], e[7]]), 6);
    let len = u64::from_le_bytes(e[8..16].try_into().unwrap());
    assert_eq!(len, 64);
    assert_eq!(
        u32::from_le_bytes(e[44..48].try_into().unwrap()),
        crc(salt, &[&e[0..32], &e[40..44]]),
        "the header CRC covers every field but the expiry word"
    );
    let word = u64::from_le_bytes(e[32..40].try_into().unwrap());
    assert_eq!(word & ((1 << 48) - 1), 0, "no expiry");
    let seq = u64::from_le_bytes(e[24..32].try_into().unwrap());
    let fold = |x: u64| x ^ (x >> 16) ^ (x >> 32) ^ (x >> 48);
    let check = (fold(u64::from(salt)) ^ fold(seq)) & 0xFFFF;
    assert_eq!(
        word >> 48,
        check,
        "check bits: the lanes XOR to the folded salt and sequence number"
    );
    assert_eq!(&e[48..54], b"user:1");
    assert_eq!(&e[54..59], b"alice");
    // Second block: metadata sits between key and value.
    let e2 = &b[128..];
    assert_eq!(u16::from_le_bytes([e2[20], e2[21]]), 2);
    assert_eq!(&e2[48..54], b"k2mmv2");
    assert!(
        u64::from_le_bytes(e2[24..32].try_into().unwrap()) > 1,
        "later writes have higher sequence numbers"
    );
    assert_eq!(b.len(), 128 + 56);
}
