//! `--key`: the value of one key, raw, in hex or in JSON, streamed.

use std::io::{self, Write};

use serde_json::json;

use crate::json::JsonObject;
use crate::keys::{KeyFormat, decode_key, key_text, typed_alternatives};
use crate::units::{iso8601, relative};
use crate::{Request, Status, Tracked};
use sfs::inspect::Source;
use sfs::inspect::report::{HeaderStatus, KeyLookup, State, find_key};

pub(super) fn show_key<S: Source>(
    src: &mut Tracked<'_, S>,
    req: &Request,
    key: &[u8],
    found: &KeyLookup,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Status> {
    let name = &req.name;
    let decoded = decode_key(req.key_format, key);
    // In messages, a typed key as its type reads; in JSON, `key` is the raw
    // key as always, the decoded one beside it.
    let shown = match &decoded {
        Some(d) => d.shown(usize::MAX),
        None => key_text(key),
    };
    let raw_text = key_text(key);
    let key_fields = |doc: &mut JsonObject<'_>| -> io::Result<()> {
        doc.field("key", &json!(raw_text))?;
        if let Some(d) = &decoded {
            doc.field("key_format", &json!(d.format().as_str()))?;
            doc.field("key_decoded", &crate::json::decoded_value(d))?;
        }
        Ok(())
    };
    if let HeaderStatus::Damaged { reason, .. } = &found.header {
        writeln!(
            err,
            "sfs-dump: warning: the file header of {name} is damaged ({reason}); the store will not open the file; entries were read with the salt found in it"
        )?;
    }
    if let (Some(e), Some((offset, seq))) = (&found.newest, found.newer_corrupt) {
        writeln!(
            err,
            "sfs-dump: warning: a newer copy of key {shown} (seq {seq}, at offset {offset}) is corrupt; this is the older value (seq {}, at offset {})",
            e.header.seq, e.offset
        )?;
    }
    let live = found.newest.as_ref().filter(|e| e.state == State::Live);
    let Some(e) = live else {
        let why = match (&found.newest, found.newer_corrupt) {
            (Some(e), _) => format!(
                "its newest copy (seq {}, at offset {}) expired at {} ({})",
                e.header.seq,
                e.offset,
                iso8601(i128::from(e.header.expiry_ms)),
                relative(i128::from(e.header.expiry_ms), req.now_ms)
            ),
            (None, Some((offset, seq))) => format!(
                "its only copy (seq {seq}, at offset {offset}) is corrupt: payload checksum mismatch"
            ),
            (None, None) => "no entry has this key".to_string(),
        };
        let hint = if found.newest.is_none() && found.newer_corrupt.is_none() {
            typed_hint(src, req, key)?
        } else {
            None
        };
        if req.json {
            let mut doc = JsonObject::begin(out)?;
            doc.field("file", &json!(name))?;
            key_fields(&mut doc)?;
            doc.field("found", &json!(false))?;
            doc.field(
                "state",
                &json!(
                    found
                        .newest
                        .as_ref()
                        .map(|e| e.state.as_str())
                        .or(found.newer_corrupt.map(|_| "corrupt"))
                ),
            )?;
            doc.field("reason", &json!(why))?;
            if let Some(hint) = &hint {
                doc.field("hint", &json!(hint))?;
            }
            doc.end()?;
        }
        writeln!(err, "sfs-dump: no live key {shown} in {name}: {why}")?;
        if let Some(hint) = &hint {
            writeln!(err, "sfs-dump: hint: {hint}")?;
        }
        return Ok(Status::KeyNotFound);
    };
    let h = &e.header;
    let intact = if req.json {
        let mut doc = JsonObject::begin(out)?;
        doc.field("file", &json!(name))?;
        key_fields(&mut doc)?;
        for (field, value) in [
            ("found", json!(true)),
            ("state", json!(e.state.as_str())),
            ("offset", json!(e.offset)),
            ("size", json!(h.block_len)),
            ("seq", json!(h.seq)),
            ("key_len", json!(h.key_len)),
            ("meta_len", json!(h.meta_len)),
            ("value_len", json!(h.value_len)),
            ("expiry_ms", json!(Some(h.expiry_ms).filter(|&x| x != 0))),
            ("metadata", json!(key_text(&e.metadata))),
        ] {
            doc.field(field, &value)?;
        }
        // Text when the value is UTF-8 (and not --hex), else hex: find out
        // first, streaming, then stream it out.
        let mut utf8 = Utf8Check::default();
        if !req.hex {
            found.read_value(&mut *src, |piece| utf8.feed(piece, |_| Ok(())))?;
        }
        let as_text = !req.hex && utf8.is_valid();
        doc.field(
            "value_encoding",
            &json!(if as_text { "utf8" } else { "hex" }),
        )?;
        doc.name("value")?;
        let intact = if as_text {
            write_json_text_value(&mut *src, found, doc.out)?
        } else {
            doc.out.write_all(b"\"")?;
            let intact = found.read_value(&mut *src, |piece| write_hex(doc.out, piece))?;
            doc.out.write_all(b"\"")?;
            intact
        };
        doc.end()?;
        intact
    } else if req.hex {
        let intact = found.read_value(&mut *src, |piece| write_hex(out, piece))?;
        writeln!(out)?;
        intact
    } else {
        found.read_value(&mut *src, |piece| out.write_all(piece))?
    };
    out.flush()?;
    if !intact {
        return Err(io::Error::other(format!(
            "the entry of key {shown} at offset {} changed while it was being read: the value printed is not to be trusted",
            e.offset
        )));
    }
    Ok(Status::Ok)
}

/// When a key given as text is absent, whether a `TypedStore` key of that
/// text (a `String`, or a `u64` when it is a number) is in the file, and how
/// to ask for it. Walks the file once more per form tried.
fn typed_hint<S: Source>(
    src: &mut Tracked<'_, S>,
    req: &Request,
    key: &[u8],
) -> io::Result<Option<String>> {
    if !matches!(req.key_format, KeyFormat::Auto | KeyFormat::Utf8) {
        return Ok(None);
    }
    for (format, raw) in typed_alternatives(key) {
        let Ok(found) = find_key(&mut *src, &raw, req.now_ms)? else {
            return Ok(None);
        };
        let Some(e) = &found.newest else { continue };
        let what = match format {
            KeyFormat::BincodeString => "a String key",
            _ => "a u64 key",
        };
        let given = String::from_utf8_lossy(key);
        return Ok(Some(format!(
            "{} has no key {} as raw bytes, but has {what} {} as a TypedStore writes it (bincode-encoded, {} at offset {}); ask for it with: sfs-dump {} --key {} --key-format {}",
            req.name,
            key_text(key),
            decode_key(format, &raw).map_or_else(|| key_text(&raw), |d| d.shown(usize::MAX)),
            e.state.as_str(),
            e.offset,
            shell_word(&req.name),
            shell_word(&given),
            format.as_str()
        )));
    }
    Ok(None)
}

/// `s` as one word for a POSIX shell: as it is when that is safe, else in
/// single quotes.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Checks that pieces of bytes form valid UTF-8 (a character may be split
/// between pieces).
#[derive(Default)]
struct Utf8Check {
    carry: Vec<u8>,
    bad: bool,
}

impl Utf8Check {
    /// Feeds the next piece and hands the text completed so far to `emit`.
    fn feed(
        &mut self,
        piece: &[u8],
        mut emit: impl FnMut(&str) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.bad {
            return Ok(());
        }
        let joined;
        let bytes: &[u8] = if self.carry.is_empty() {
            piece
        } else {
            let mut j = std::mem::take(&mut self.carry);
            j.extend_from_slice(piece);
            joined = j;
            &joined
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => emit(s),
            Err(e) if e.error_len().is_none() => {
                let (ok, rest) = bytes.split_at(e.valid_up_to());
                self.carry = rest.to_vec();
                emit(std::str::from_utf8(ok).expect("valid prefix"))
            }
            Err(_) => {
                self.bad = true;
                Ok(())
            }
        }
    }

    fn is_valid(&self) -> bool {
        !self.bad && self.carry.is_empty()
    }
}

fn write_json_text_value<S: Source>(
    src: &mut S,
    found: &KeyLookup,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let mut utf8 = Utf8Check::default();
    out.write_all(b"\"")?;
    let intact = found.read_value(src, |piece| {
        utf8.feed(piece, |text| {
            let quoted = serde_json::to_string(text).map_err(io::Error::other)?;
            out.write_all(&quoted.as_bytes()[1..quoted.len() - 1])
        })
    })?;
    out.write_all(b"\"")?;
    Ok(intact && utf8.is_valid())
}

fn write_hex(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        buf.push(DIGITS[usize::from(b >> 4)]);
        buf.push(DIGITS[usize::from(b & 15)]);
    }
    out.write_all(&buf)
}
