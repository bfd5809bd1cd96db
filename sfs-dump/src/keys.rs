//! Keys as people read them: raw bytes as text or hex, and the keys that
//! `sfs::TypedStore` writes (bincode 2, standard configuration: a varint
//! length then the UTF-8 bytes for a string, a varint for an integer),
//! decoded and marked as such. Also `--prefix`, matched in the same terms.

/// How keys are shown, looked up (`--key`) and matched (`--prefix`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyFormat {
    /// Show a key that decodes as a bincode string (non-empty, printable) or,
    /// when it is not printable text, as a bincode `u64`, decoded and marked;
    /// any other key as [`KeyFormat::Utf8`] does. `--key` takes the key as
    /// given (raw bytes) and, when it is absent but its bincode encoding is
    /// there, says how to ask for it.
    #[default]
    Auto,
    /// Raw bytes: UTF-8 text when printable, else `0x` and hex (the tool's
    /// behaviour before `--key-format`).
    Utf8,
    /// Raw bytes, always in hex; `--key` and `--prefix` are given in hex.
    Hex,
    /// Keys of a `TypedStore<String, _>`: decoded as bincode strings;
    /// `--key` and `--prefix` are given as the string.
    BincodeString,
    /// Keys of a `TypedStore<u64, _>`: decoded as bincode varints; `--key`
    /// is given as a decimal number, `--prefix` as leading decimal digits.
    BincodeU64,
}

impl KeyFormat {
    /// The name on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyFormat::Auto => "auto",
            KeyFormat::Utf8 => "utf8",
            KeyFormat::Hex => "hex",
            KeyFormat::BincodeString => "bincode-string",
            KeyFormat::BincodeU64 => "bincode-u64",
        }
    }

    /// The bytes stored for a key given on the command line in this format.
    ///
    /// ```
    /// use sfs_dump::KeyFormat;
    /// assert_eq!(KeyFormat::Auto.encode(b"sid-1").unwrap(), b"sid-1");
    /// assert_eq!(KeyFormat::BincodeString.encode(b"sid-1").unwrap(), b"\x05sid-1");
    /// assert_eq!(KeyFormat::BincodeU64.encode(b"300").unwrap(), b"\xfb\x2c\x01");
    /// assert_eq!(KeyFormat::Hex.encode(b"0x00ff").unwrap(), b"\x00\xff");
    /// assert!(KeyFormat::BincodeU64.encode(b"-1").is_err());
    /// ```
    pub fn encode(self, given: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            KeyFormat::Auto | KeyFormat::Utf8 => Ok(given.to_vec()),
            KeyFormat::Hex => parse_hex(given),
            KeyFormat::BincodeString => Ok(encode_bincode_str(given)),
            KeyFormat::BincodeU64 => std::str::from_utf8(given)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .map(encode_bincode_u64)
                .ok_or_else(|| {
                    format!(
                        "{:?} is not a number from 0 to {} (--key-format bincode-u64)",
                        String::from_utf8_lossy(given),
                        u64::MAX
                    )
                }),
        }
    }
}

/// A key decoded from its bincode encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A string (`String`, `&str`).
    String(String),
    /// An unsigned integer (`u64`, `u32`, `u16`, `usize`).
    U64(u64),
}

impl Decoded {
    /// The `--key-format` it was decoded with.
    pub fn format(&self) -> KeyFormat {
        match self {
            Decoded::String(_) => KeyFormat::BincodeString,
            Decoded::U64(_) => KeyFormat::BincodeU64,
        }
    }

    /// How the listing shows it: `"sid-demo-2" (bincode string)`, `42
    /// (bincode u64)`; a string longer than `max` characters is cut with `…`.
    pub fn shown(&self, max: usize) -> String {
        match self {
            Decoded::String(s) => {
                let cut: String = s.chars().take(max).collect();
                let more = if cut.len() < s.len() { "…" } else { "" };
                format!("{cut:?}{more} (bincode string)")
            }
            Decoded::U64(n) => format!("{n} (bincode u64)"),
        }
    }
}

/// How `format` decodes `raw` for display, if it does (`None`: show the raw
/// bytes).
///
/// ```
/// use sfs_dump::{Decoded, KeyFormat, decode_key};
/// let s = |t: &str| Some(Decoded::String(t.to_string()));
/// assert_eq!(decode_key(KeyFormat::Auto, b"\x0asid-demo-2"), s("sid-demo-2"));
/// assert_eq!(decode_key(KeyFormat::Auto, b"user:42"), None); // plain text stays raw
/// assert_eq!(decode_key(KeyFormat::Auto, b"\x05"), Some(Decoded::U64(5)));
/// assert_eq!(decode_key(KeyFormat::Auto, b"\xfb\x2c\x01"), Some(Decoded::U64(300)));
/// // One printable byte is text to `auto`; `bincode-u64` reads it as 42.
/// assert_eq!(decode_key(KeyFormat::Auto, b"*"), None);
/// assert_eq!(decode_key(KeyFormat::BincodeU64, b"*"), Some(Decoded::U64(42)));
/// assert_eq!(decode_key(KeyFormat::Auto, b"\x00\xff"), None);
/// assert_eq!(decode_key(KeyFormat::Utf8, b"\x0asid-demo-2"), None);
/// assert_eq!(decode_key(KeyFormat::BincodeString, b"\x00"), s(""));
/// ```
pub fn decode_key(format: KeyFormat, raw: &[u8]) -> Option<Decoded> {
    match format {
        KeyFormat::Utf8 | KeyFormat::Hex => None,
        KeyFormat::BincodeString => decode_bincode_str(raw).map(Decoded::String),
        KeyFormat::BincodeU64 => decode_bincode_u64(raw).map(Decoded::U64),
        KeyFormat::Auto => {
            if let Some(s) = decode_bincode_str(raw)
                && !s.is_empty()
                && !s.chars().any(char::is_control)
            {
                return Some(Decoded::String(s));
            }
            if is_plain_text(raw) {
                return None;
            }
            decode_bincode_u64(raw).map(Decoded::U64)
        }
    }
}

/// A key for the entry listing, at most about `max` characters: decoded and
/// marked when `format` decodes it, else raw as text or hex.
pub fn show_key(format: KeyFormat, raw: &[u8], max: usize) -> String {
    if let Some(d) = decode_key(format, raw) {
        return d.shown(max);
    }
    if raw.is_empty() {
        return "\"\" (empty key)".to_string();
    }
    if format == KeyFormat::Hex {
        return hex_preview(raw, max);
    }
    key_preview(raw, max)
}

/// Whether `raw` matches `prefix` (see [`crate::Request::prefix`]).
pub fn matches_prefix(format: KeyFormat, raw: &[u8], prefix: &[u8]) -> bool {
    match format {
        KeyFormat::Utf8 | KeyFormat::Hex => raw.starts_with(prefix),
        KeyFormat::Auto => {
            raw.starts_with(prefix)
                || decode_bincode_str(raw).is_some_and(|s| s.as_bytes().starts_with(prefix))
        }
        KeyFormat::BincodeString => {
            decode_bincode_str(raw).is_some_and(|s| s.as_bytes().starts_with(prefix))
        }
        KeyFormat::BincodeU64 => {
            decode_bincode_u64(raw).is_some_and(|n| n.to_string().as_bytes().starts_with(prefix))
        }
    }
}

fn is_plain_text(raw: &[u8]) -> bool {
    std::str::from_utf8(raw).is_ok_and(|s| !s.is_empty() && !s.chars().any(char::is_control))
}

/// A bincode 2 varint (standard configuration) at the start of `b`: the
/// value and the bytes it took. Only the shortest encoding is accepted, the
/// one bincode writes.
fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = b.split_first()?;
    let wide = |n: usize| rest.get(..n);
    let (v, len, min) = match first {
        0..=250 => return Some((u64::from(first), 1)),
        251 => (
            u64::from(u16::from_le_bytes(wide(2)?.try_into().ok()?)),
            3,
            251,
        ),
        252 => (
            u64::from(u32::from_le_bytes(wide(4)?.try_into().ok()?)),
            5,
            1 << 16,
        ),
        253 => (u64::from_le_bytes(wide(8)?.try_into().ok()?), 9, 1 << 32),
        _ => return None,
    };
    (v >= min).then_some((v, len))
}

fn write_varint(n: u64, out: &mut Vec<u8>) {
    if n < 251 {
        out.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(251);
        out.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(252);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn decode_bincode_u64(raw: &[u8]) -> Option<u64> {
    read_varint(raw).and_then(|(n, len)| (len == raw.len()).then_some(n))
}

fn decode_bincode_str(raw: &[u8]) -> Option<String> {
    let (n, len) = read_varint(raw)?;
    let rest = &raw[len..];
    if u64::try_from(rest.len()).ok()? != n {
        return None;
    }
    std::str::from_utf8(rest).ok().map(str::to_string)
}

fn encode_bincode_u64(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    write_varint(n, &mut out);
    out
}

/// `s` as `TypedStore<String, _>` stores it: its length, then its bytes.
fn encode_bincode_str(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 9);
    write_varint(s.len() as u64, &mut out);
    out.extend_from_slice(s);
    out
}

/// The other ways a key given as text may have been stored: as
/// `TypedStore<String, _>` and, when it is a number, as `TypedStore<u64, _>`
/// store it. For the hint when a key is absent.
pub(crate) fn typed_alternatives(given: &[u8]) -> Vec<(KeyFormat, Vec<u8>)> {
    [KeyFormat::BincodeString, KeyFormat::BincodeU64]
        .into_iter()
        .filter_map(|f| f.encode(given).ok().map(|raw| (f, raw)))
        .collect()
}

/// Parses hex digits (a leading `0x` is allowed).
pub(crate) fn parse_hex(k: &[u8]) -> Result<Vec<u8>, String> {
    let k = k.strip_prefix(b"0x").unwrap_or(k);
    if !k.len().is_multiple_of(2) {
        return Err("a hex key needs an even number of digits".into());
    }
    k.chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{:?} is not a hex byte", String::from_utf8_lossy(pair)))
        })
        .collect()
}

/// Bytes (a key) as text, reversibly: the UTF-8 string when the bytes are
/// valid UTF-8 without control characters and do not start with `0x`;
/// otherwise `0x` followed by lowercase hex.
///
/// ```
/// use sfs_dump::key_text;
/// assert_eq!(key_text(b"user:42"), "user:42");
/// assert_eq!(key_text(b"\x00\xff"), "0x00ff");
/// assert_eq!(key_text(b"0x41"), "0x30783431"); // never ambiguous
/// ```
pub fn key_text(bytes: &[u8]) -> String {
    key_preview(bytes, usize::MAX)
}

/// Like [`key_text`], shortened to about `max` characters with a trailing `…`.
/// When more than `max` bytes are given, the key is taken as cut there (an
/// incomplete character at the cut is dropped, not held against the key).
pub fn key_preview(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let shown = &bytes[..bytes.len().min(max)];
    let text = match std::str::from_utf8(shown) {
        Ok(s) => Some(s),
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&shown[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    let more = if cut { "…" } else { "" };
    match text {
        Some(s) if !s.chars().any(char::is_control) && !s.starts_with("0x") => {
            format!("{s}{more}")
        }
        _ => hex_preview(bytes, max),
    }
}

/// `0x` and hex, cut to about `max` characters with a trailing `…`.
fn hex_preview(bytes: &[u8], max: usize) -> String {
    let n = if bytes.len() > max {
        max / 2
    } else {
        bytes.len()
    };
    let mut h = format!("0x{}", hex(&bytes[..n]));
    if n < bytes.len() {
        h.push('…');
    }
    h
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex, without `0x`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut h = String::with_capacity(2 * bytes.len());
    for b in bytes {
        h.push(HEX[usize::from(b >> 4)] as char);
        h.push(HEX[usize::from(b & 15)] as char);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for n in [
            0,
            1,
            250,
            251,
            65_535,
            65_536,
            u64::from(u32::MAX),
            1 << 32,
            u64::MAX,
        ] {
            let b = encode_bincode_u64(n);
            assert_eq!(decode_bincode_u64(&b), Some(n), "{n}");
        }
        // Not the shortest encoding: bincode never writes it.
        assert_eq!(decode_bincode_u64(b"\xfb\x05\x00"), None);
        assert_eq!(decode_bincode_u64(b"\xfe"), None);
        assert_eq!(decode_bincode_u64(b"\x05\x00"), None);
    }

    #[test]
    fn strings_round_trip_and_lengths_must_match() {
        let long = "x".repeat(300);
        for s in ["", "a", "sid-demo-2", &long] {
            let b = encode_bincode_str(s.as_bytes());
            assert_eq!(decode_bincode_str(&b).as_deref(), Some(s));
        }
        assert_eq!(decode_bincode_str(b"\x03ab"), None);
        assert_eq!(decode_bincode_str(b"\x02\xff\xfe"), None);
    }

    /// Moved here with the functions from the library's `tests/dump_report.rs`.
    #[test]
    fn keys_are_text_when_printable_and_hex_otherwise_reversibly() {
        assert_eq!(key_text(b"user:1"), "user:1");
        assert_eq!(key_text("clé".as_bytes()), "clé");
        assert_eq!(key_text(b""), "");
        assert_eq!(key_text(b"a\nb"), "0x610a62");
        assert_eq!(key_text(b"\xff"), "0xff");
        assert_eq!(
            key_text(b"0xff"),
            "0x30786666",
            "text that looks like hex is hex"
        );
        assert_eq!(key_preview(b"abcdefghij", 4), "abcd…");
        assert_eq!(
            key_preview("ééé".as_bytes(), 3),
            "é…",
            "a cut character is dropped"
        );
        assert_eq!(key_preview(&[0u8; 10], 4), "0x0000…");
        assert_eq!(key_preview("é".as_bytes(), 1), "…");
    }
}
