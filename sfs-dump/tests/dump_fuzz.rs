//! Every mode of sfs-dump on thousands of random mutations of a real store
//! file: never a panic, a hang or an error on bytes it can read; rows tile
//! the file and agree with the summary; JSON always parses; the exit status
//! of `--check` says damage exactly when there is some; and the store's own
//! open agrees with the report about what is live and what is corrupt.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use sfs::format::{BLOCK_HEADER_LEN, BlockHeader, FILE_HEADER_LEN, Kind, crc};
use sfs::inspect::report::{HeaderStatus, ProblemKind, Report, ScanOptions, State};
use sfs::testing::MemStorage;
use sfs::{ManualClock, Options};
use sfs_dump::{Request, Status};
use support::dump_bytes;

const NOW: i64 = 1_002_000;
const MUTATIONS: u64 = 10_000;

/// SplitMix64: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A small real store (see `support::store_bytes`): live, expiring and
/// expired entries, metadata, a binary key, free space, an overwrite, a
/// larger value.
fn base_file() -> Vec<u8> {
    support::store_bytes(&support::clock(), 16, 1_500)
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len() as u64;
        let at = rng.below(len.max(1)) as usize;
        let aligned = |rng: &mut Rng| {
            (FILE_HEADER_LEN + rng.below(len.saturating_sub(FILE_HEADER_LEN) / 8 + 1) * 8) as usize
        };
        match rng.below(9) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    if !b.is_empty() {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => {
                let n = (1 + rng.below(64)) as usize;
                let junk = rng.bytes(n);
                for (i, x) in junk.into_iter().enumerate() {
                    if let Some(y) = b.get_mut(at + i) {
                        *y = x;
                    }
                }
            }
            2 => {
                let n = (1 + rng.below(512)) as usize;
                let end = (at + n).min(b.len());
                b[at..end].fill(0);
            }
            3 => b.truncate(rng.below(len + 1) as usize),
            4 => {
                let n = (1 + rng.below(300)) as usize;
                if rng.below(2) == 0 {
                    let extra = rng.bytes(n);
                    b.extend_from_slice(&extra);
                } else {
                    b.resize(b.len() + n, 0);
                }
            }
            5 => {
                // Copy an aligned stretch (whole blocks, often) elsewhere.
                let (from, to) = (aligned(rng), aligned(rng));
                let n = (8 * (1 + rng.below(40))) as usize;
                if from < b.len() && to < b.len() {
                    let piece: Vec<u8> = b[from..(from + n).min(b.len())].to_vec();
                    let end = (to + piece.len()).min(b.len());
                    b[to..end].copy_from_slice(&piece[..end - to]);
                }
            }
            6 => {
                // A block header with a valid checksum and arbitrary fields.
                let to = aligned(rng);
                if b.len() >= 64 && to + BLOCK_HEADER_LEN as usize <= b.len() {
                    let salt = u32::from_le_bytes(b[16..20].try_into().unwrap());
                    let block_len = match rng.below(4) {
                        0 => rng.next(),
                        1 => 48 + rng.below(64) * 8,
                        2 => rng.below(200),
                        _ => (b.len() - to) as u64,
                    };
                    let key_max = if rng.below(2) == 0 { 10 } else { 65_536 };
                    let meta_max = if rng.below(2) == 0 { 4 } else { 65_536 };
                    let h = BlockHeader {
                        kind: if rng.below(3) == 0 {
                            Kind::Free
                        } else {
                            Kind::Entry
                        },
                        block_len,
                        key_len: rng.below(key_max) as u16,
                        meta_len: rng.below(meta_max) as u16,
                        value_len: if rng.below(2) == 0 {
                            rng.below(100) as u32
                        } else {
                            rng.next() as u32
                        },
                        seq: rng.below(100),
                        expiry_ms: if rng.below(2) == 0 {
                            0
                        } else {
                            rng.below(2_000_000)
                        },
                        payload_crc: if rng.below(4) == 0 {
                            crc(salt, &[])
                        } else {
                            rng.next() as u32
                        },
                        pending: rng.below(8) == 0,
                    };
                    b[to..to + 48].copy_from_slice(&h.encode(salt));
                }
            }
            7 => {
                // The file header: a flipped bit, sometimes with a valid checksum again.
                if b.len() >= 64 {
                    b[rng.below(60) as usize] ^= 1 << rng.below(8);
                    if rng.below(2) == 0 {
                        let c = crc(0, &[&b[0..60]]);
                        b[60..64].copy_from_slice(&c.to_le_bytes());
                    }
                }
            }
            _ => {
                // A huge length field in a real entry header, resealed.
                let to = aligned(rng);
                if b.len() >= 64 && to + 48 <= b.len() && b[to..to + 4] == *b"sfsB" {
                    let salt = u32::from_le_bytes(b[16..20].try_into().unwrap());
                    let field = [8usize, 16, 6, 20][rng.below(4) as usize];
                    let w = if field == 8 {
                        8
                    } else if field == 16 {
                        4
                    } else {
                        2
                    };
                    for i in 0..w {
                        b[to + field + i] = 0xff;
                    }
                    let c = crc(salt, &[&b[to..to + 44]]);
                    b[to + 44..to + 48].copy_from_slice(&c.to_le_bytes());
                }
            }
        }
    }
    b
}

/// Everything the report layer promises, on one file; also whether the
/// store's own open was compared with the report.
fn check_report(bytes: &[u8], i: u64) -> Option<(Report, bool)> {
    let report =
        match Report::scan(bytes, ScanOptions::at(NOW).with_map(200)).expect("a slice reads") {
            Ok(r) => r,
            Err(_) => return None, // not a store file, or another version: refused
        };
    let s = &report.summary;
    assert_eq!(s.file_len, bytes.len() as u64);
    let map = report.map.as_ref().unwrap();
    assert!(
        map.len() <= 200 && map.cell_bytes() * map.len() as u64 >= s.file_len,
        "#{i}"
    );
    let findings = report.check(bytes).unwrap();
    let mut rows = report.rows(bytes, false);
    let (mut at, mut counts) = (FILE_HEADER_LEN, [0u64; 4]);
    let mut live_keys = Vec::new();
    while let Some(r) = rows.next_row().unwrap() {
        assert_eq!(r.offset, at, "#{i}: rows tile the file");
        assert!(r.len > 0, "#{i}");
        at += r.len;
        let slot = match r.state {
            State::Live => 0,
            State::Expired => 1,
            State::Free => 2,
            State::Corrupt => 3,
        };
        counts[slot] += r.len;
        if r.state == State::Corrupt {
            assert!(
                r.problems.iter().any(|p| p.kind.is_damage()),
                "#{i}: corrupt rows say why"
            );
        }
        if r.state == State::Live {
            live_keys.push(r.key().unwrap().to_vec());
        }
    }
    if let Some(_fields) = report.header.fields() {
        assert_eq!(at, s.file_len, "#{i}: rows reach the end");
        assert_eq!(
            counts,
            [s.live_bytes, s.expired_bytes, s.free_bytes, s.corrupt_bytes],
            "#{i}"
        );
        assert_eq!(live_keys.len() as u64, s.live_entries, "#{i}");
    }
    let damaged = s.corrupt_blocks > 0 || !report.header.is_valid();
    assert!(
        !damaged || findings.is_damaged(),
        "#{i}: damage is a problem"
    );
    for p in &findings.problems {
        assert!(p.offset < s.file_len.max(1), "#{i}: {p:?}");
        assert!(!p.reason.is_empty());
        if !damaged {
            assert!(
                matches!(p.kind, ProblemKind::Overlap | ProblemKind::DuplicateKey),
                "#{i}: {p:?}"
            );
        }
    }
    // The store's own open agrees: same live keys, same damage.
    let compared = report.header.is_valid();
    if compared {
        let clock = Arc::new(ManualClock::new(NOW));
        let store = Options::new()
            .read_only(true)
            .clock(clock)
            .open_on("m.sfs", Arc::new(MemStorage::with_bytes(bytes.to_vec())))
            .unwrap_or_else(|e| panic!("#{i}: a file with a valid header opens: {e}"));
        assert_eq!(store.len() as u64, s.live_entries, "#{i}: live entries");
        assert_eq!(
            store.stats().corrupt_blocks,
            s.corrupt_blocks,
            "#{i}: corrupt blocks"
        );
        for k in &live_keys {
            assert!(store.contains(k), "#{i}: {k:?} live for the store too");
        }
    } else if let HeaderStatus::Damaged { .. } = report.header {
        let opened = Options::new()
            .read_only(true)
            .open_on("m.sfs", Arc::new(MemStorage::with_bytes(bytes.to_vec())));
        assert!(opened.is_err(), "#{i}: the store refuses a damaged header");
    }
    Some((report, compared))
}

fn requests() -> Vec<Request> {
    let r = |f: &dyn Fn(&mut Request)| {
        let mut r = Request::new("fuzz.sfs", NOW);
        f(&mut r);
        r
    };
    vec![
        r(&|_| {}),
        r(&|q| q.json = true),
        r(&|q| q.entries = true),
        r(&|q| {
            q.map = true;
            q.color = true;
            q.width = 37;
        }),
        r(&|q| q.check = true),
        r(&|q| {
            q.entries = true;
            q.map = true;
            q.check = true;
            q.json = true;
        }),
        r(&|q| q.key = Some(b"user:3".to_vec())),
        r(&|q| {
            q.key = Some(b"big".to_vec());
            q.json = true;
        }),
        r(&|q| {
            q.key = Some(b"\x00\xffbin".to_vec());
            q.hex = true;
        }),
    ]
}

#[test]
fn every_mode_survives_thousands_of_mutations_of_a_real_store() {
    let base = base_file();
    assert!(
        base.len() > 3_000,
        "a store worth mutating: {} bytes",
        base.len()
    );
    let (base_report, compared) = check_report(&base, 0).unwrap();
    assert!(compared);
    assert!(base_report.summary.live_entries > 15);
    let requests = requests();
    let start = Instant::now();
    let mut rng = Rng(0x5fd_d0e5);
    let (mut refused, mut damaged, mut sound, mut compared) = (0, 0, 0, 0);
    for i in 0..MUTATIONS {
        let bytes = mutate(&mut rng, &base);
        let checked = check_report(&bytes, i);
        compared += u64::from(checked.as_ref().is_some_and(|c| c.1));
        let report = checked.map(|c| c.0);
        for req in &requests {
            let r = dump_bytes(&bytes, req);
            match (&report, r.result) {
                (None, Err(e)) => assert_eq!(e.exit_code(), 2),
                (None, Ok(s)) => panic!("#{i}: a refused file gave {s:?}"),
                (Some(_), Err(e)) => panic!("#{i}: {req:?} failed: {e}"),
                (Some(report), Ok(status)) => {
                    if req.json {
                        let v: serde_json::Value = serde_json::from_str(&r.out)
                            .unwrap_or_else(|e| panic!("#{i}: {e}\n{}", r.out));
                        if req.key.is_none() {
                            assert_eq!(v["file_len"], bytes.len() as u64);
                        }
                    } else if req.key.is_none() {
                        assert!(!r.out.is_empty(), "#{i}");
                    }
                    if req.check {
                        let findings = report.check(&bytes[..]).unwrap();
                        assert_eq!(status == Status::Damaged, findings.is_damaged(), "#{i}");
                    } else if req.key.is_none() {
                        assert_eq!(status, Status::Ok);
                    }
                }
            }
        }
        match &report {
            None => refused += 1,
            Some(r) if r.summary.corrupt_blocks > 0 || !r.header.is_valid() => damaged += 1,
            Some(_) => sound += 1,
        }
    }
    let took = start.elapsed();
    eprintln!(
        "{MUTATIONS} mutations of a {}-byte store in {took:?}: {refused} refused, {damaged} damaged, {sound} read without damage; {compared} compared with the store's open",
        base.len()
    );
    assert!(
        damaged > MUTATIONS / 3,
        "most mutations damage something: {damaged}"
    );
    assert!(refused > 0 && sound > 0);
    assert!(
        compared > MUTATIONS / 4,
        "the store's open compared often enough: {compared}"
    );
}

#[test]
fn the_binary_survives_mutations_too() {
    let base = base_file();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sfs");
    let mut rng = Rng(0xb1_0b);
    for i in 0..100 {
        let bytes = mutate(&mut rng, &base);
        std::fs::write(&path, &bytes).unwrap();
        for args in [
            &["--check"][..],
            &["--entries", "--map", "--check", "--json"],
            &["--key", "user:3"],
        ] {
            let o = Command::new(env!("CARGO_BIN_EXE_sfs-dump"))
                .arg(&path)
                .args(args)
                .args(["--now", "1002000"])
                .output()
                .unwrap();
            let code = o.status.code().expect("exited, not killed by a signal");
            assert!((0..=2).contains(&code), "#{i} {args:?}: {code}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "#{i} {args:?}: {err}");
            if code == 2 {
                assert!(err.starts_with("sfs-dump: "), "#{i}: {err}");
            }
            if args.contains(&"--json") && code != 2 {
                serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
            }
        }
    }
}
