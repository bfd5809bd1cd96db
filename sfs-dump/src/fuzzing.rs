//! The body of the `inspect` fuzz target, behind the `testing` feature: the
//! library's half (`sfs::fuzzing::inspect`: the report, its rows, the check
//! against the store's own open), then every rendering of `sfs-dump` on the
//! same bytes. `fuzz/` drives it with cargo-fuzz; `tests/fuzz_corpus.rs`
//! replays the checked-in corpus through it on stable Rust. Not part of the
//! stable API.

use sfs::Error;

/// Fuzz target `inspect`: any bytes through the inspection report and every
/// `sfs-dump` rendering (summary, entries, map, check, key lookups; text and
/// JSON). Never a panic; the file is either refused as not a store (or a
/// newer version) or reported on; every JSON document parses; `--check`
/// reports damage exactly when the store's own read-only open finds some or
/// the file header is damaged.
pub fn inspect(data: &[u8]) {
    use crate::{Failure, Request, Status, run};

    sfs::fuzzing::inspect(data);

    const NOW: i64 = 1_700_000_000_000;
    let mut reqs = Vec::new();
    for json in [false, true] {
        let base = Request {
            json,
            width: 72,
            ..Request::new("fuzz.sfs", NOW)
        };
        reqs.push(base.clone());
        reqs.push(Request {
            entries: true,
            ..base.clone()
        });
        reqs.push(Request {
            map: true,
            color: true,
            ..base.clone()
        });
        reqs.push(Request {
            check: true,
            ..base.clone()
        });
        reqs.push(Request {
            entries: true,
            map: true,
            check: true,
            width: 1,
            ..base.clone()
        });
        // Filtered, limited, and with keys read as typed keys.
        for (key_format, prefix) in [
            (crate::KeyFormat::BincodeString, Some(b"a".to_vec())),
            (crate::KeyFormat::Auto, Some(Vec::new())),
            (crate::KeyFormat::BincodeU64, Some(b"1".to_vec())),
            (crate::KeyFormat::Hex, None),
        ] {
            reqs.push(Request {
                entries: true,
                check: key_format == crate::KeyFormat::Auto,
                key_format,
                prefix,
                states: vec![
                    sfs::inspect::report::State::Live,
                    sfs::inspect::report::State::Corrupt,
                ],
                limit: Some(3),
                ..base.clone()
            });
        }
        for key in [&b"k"[..], b"", b"a-rather-long-key-number-010"] {
            reqs.push(Request {
                key: Some(key.to_vec()),
                hex: json,
                ..base.clone()
            });
        }
    }
    let mut check_status = None;
    for req in &reqs {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        match run(data, req, &mut out, &mut err, None) {
            Ok(status) => {
                if req.json && req.key.is_none() {
                    let text = std::str::from_utf8(&out).expect("JSON output is UTF-8");
                    serde_json::from_str::<serde_json::Value>(text)
                        .unwrap_or_else(|e| panic!("{req:?}: invalid JSON ({e}): {text}"));
                }
                if req.check && !req.entries {
                    check_status = Some(status);
                }
            }
            Err(Failure::NotAStore { .. } | Failure::UnsupportedVersion { .. }) => return,
            Err(e) => panic!("{req:?}: a byte slice cannot fail to read: {e}"),
        }
    }
    // The store's own open agrees with the check: damage is found by both or
    // by neither (a damaged file header is refused by the store outright).
    let opened = sfs::fuzzing::open_bytes_read_only(data, NOW);
    match opened {
        Ok(store) => {
            let damaged = store.stats().corrupt_blocks > 0;
            if damaged {
                assert_eq!(
                    check_status,
                    Some(Status::Damaged),
                    "the store found damage the check did not"
                );
            }
        }
        Err(Error::Corrupt { .. }) => assert_eq!(
            check_status,
            Some(Status::Damaged),
            "a damaged file header is damage"
        ),
        Err(e) => panic!("the store refused what sfs-dump read: {e}"),
    }
}
