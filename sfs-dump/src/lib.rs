//! What `sfs-dump` prints: the summary, the entry listing, the map, the check
//! and the value of one key, as text for people or as JSON for scripts.
//!
//! All reading goes through [`sfs::inspect::report`]; this
//! module only renders. [`run`] does one whole invocation on any [`Source`]
//! (a file or a byte slice) and returns the exit status, so tests and fuzzers
//! drive the tool as an ordinary function; the binary adds only argument
//! parsing. It never writes to the file it reads. The tool's interface
//! (modes, flags, exit statuses, JSON fields) is specified in the package's
//! `README.md`.
//!
//! ```
//! use sfs_dump::{Request, Status, run};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("d.sfs");
//! let store = sfs::Store::open(&path)?;
//! store.put(b"greeting", b"hello")?;
//! store.close()?;
//!
//! let bytes = std::fs::read(&path)?;
//! let mut out = Vec::new();
//! let req = Request { key: Some(b"greeting".to_vec()), ..Request::new("d.sfs", 0) };
//! let status = run(&bytes[..], &req, &mut out, &mut std::io::sink(), None)?;
//! assert_eq!((status, &out[..]), (Status::Ok, &b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io::{self, Write};

use sfs::inspect::Source;
use sfs::inspect::report::{Findings, Report, Row, ScanOptions, State, find_key};
use sfs::inspect::{FILE_HEADER_LEN, FIRST_FORMAT_VERSION, FORMAT_VERSION, HeaderError};

#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod key;
mod keys;
mod progress;
mod text;
mod units;

pub use keys::{Decoded, KeyFormat, decode_key, key_preview, key_text, matches_prefix, show_key};
pub use progress::ProgressBar;
pub use text::{write_check, write_map, write_summary};
pub use units::{human, iso8601, relative, size_both, thousands};

/// What to show, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// How to name the file in the output.
    pub name: String,
    /// One row per block.
    pub entries: bool,
    /// A picture of the layout.
    pub map: bool,
    /// Verify every block; list problems.
    pub check: bool,
    /// Print the value of this key instead (the other views are ignored):
    /// the bytes stored (see [`KeyFormat::encode`]).
    pub key: Option<Vec<u8>>,
    /// How keys are shown and matched; with `key`, [`KeyFormat::Auto`] also
    /// hints at a typed key when the raw one is absent.
    pub key_format: KeyFormat,
    /// With `entries`: list only blocks whose key starts with this. With
    /// [`KeyFormat::Utf8`] and [`KeyFormat::Hex`], the raw key does; with
    /// [`KeyFormat::BincodeString`], the decoded string; with
    /// [`KeyFormat::BincodeU64`], the number's decimal digits; with
    /// [`KeyFormat::Auto`], the raw key or the decoded string. Blocks without
    /// a key (free, damaged) never match.
    pub prefix: Option<Vec<u8>>,
    /// With `entries`: list only blocks in these states (empty: every state).
    pub states: Vec<State>,
    /// With `entries`: list at most this many blocks (of those that match).
    pub limit: Option<u64>,
    /// With `key`: print the value as hex.
    pub hex: bool,
    /// One JSON document instead of text.
    pub json: bool,
    /// "Now" for expiry, in milliseconds since the UNIX epoch.
    pub now_ms: i64,
    /// Width of the output in columns (for the map).
    pub width: usize,
    /// Use ANSI colours (for the map).
    pub color: bool,
}

impl Request {
    /// Whether the listing is filtered or limited.
    fn filtered(&self) -> bool {
        self.prefix.is_some() || !self.states.is_empty() || self.limit.is_some()
    }

    /// Whether the listing shows `row` (limit aside).
    fn lists(&self, row: &Row) -> bool {
        (self.states.is_empty() || self.states.contains(&row.state))
            && self.prefix.as_deref().is_none_or(|p| {
                row.key()
                    .is_some_and(|k| keys::matches_prefix(self.key_format, k, p))
            })
    }
}

impl Request {
    /// The summary of `name`, as text, 80 columns, no colour.
    pub fn new(name: impl Into<String>, now_ms: i64) -> Request {
        Request {
            name: name.into(),
            entries: false,
            map: false,
            check: false,
            key: None,
            key_format: KeyFormat::Auto,
            prefix: None,
            states: Vec::new(),
            limit: None,
            hex: false,
            json: false,
            now_ms,
            width: 80,
            color: false,
        }
    }
}

/// How a run ended, when it could read the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Read fine; no damage found by `--check`; `--key` found its key.
    Ok,
    /// `--check` found damage.
    Damaged,
    /// `--key` found no live copy of the key.
    KeyNotFound,
}

impl Status {
    /// The process exit status: 0 or 1.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Damaged | Status::KeyNotFound => 1,
        }
    }
}

/// Why a run could not report on the file (exit status 2).
#[derive(Debug)]
pub enum Failure {
    /// The file does not start with the store magic.
    NotAStore {
        /// The file's name.
        name: String,
        /// Its length.
        len: u64,
    },
    /// A store file of a format version this build does not read.
    UnsupportedVersion {
        /// The file's name.
        name: String,
        /// Its version.
        found: u32,
    },
    /// Writing the output failed.
    Output(io::Error),
    /// Reading failed (the file may have changed while being read).
    Io {
        /// The file's name.
        name: String,
        /// What failed.
        error: io::Error,
    },
}

impl Failure {
    /// The process exit status: 2.
    pub fn exit_code(&self) -> u8 {
        2
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotAStore { name, len: 0 } => write!(
                f,
                "{name} is empty: not a store file (a store writes its {FILE_HEADER_LEN}-byte header when it creates the file)"
            ),
            Failure::NotAStore { name, .. } => write!(
                f,
                "{name} is not a store file: it does not start with the sfs magic bytes 89 53 46 53 0d 0a 1a 0a"
            ),
            Failure::UnsupportedVersion { name, found } => write!(
                f,
                "{name} is a store file of format version {found}; this sfs-dump reads versions {FIRST_FORMAT_VERSION} to {FORMAT_VERSION}"
            ),
            Failure::Output(error) => write!(f, "writing the output: {error}"),
            Failure::Io { name, error } if error.kind() == io::ErrorKind::UnexpectedEof => write!(
                f,
                "{name} got shorter while it was being read (a store is using it?): {error}; try again, or dump a copy"
            ),
            Failure::Io { name, error } => write!(f, "reading {name}: {error}"),
        }
    }
}

impl std::error::Error for Failure {}

/// How far a run has got, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is being done ("reading", "listing", "checking").
    pub phase: &'static str,
    /// Bytes read so far, over all passes.
    pub done: u64,
    /// Bytes to read in all, over all passes.
    pub total: u64,
}

/// Does what `req` asks on `src`: text or JSON on `out`, warnings and
/// "key not found" explanations on `err`. `progress`, if given, is called as
/// the file is read.
pub fn run<S: Source>(
    src: S,
    req: &Request,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: Option<&mut dyn FnMut(Progress)>,
) -> Result<Status, Failure> {
    let len = src.len();
    let mut out = Output {
        inner: out,
        failed: false,
    };
    let out = &mut out;
    let failed = |out: &Output<'_>, error| {
        if out.failed {
            Failure::Output(error)
        } else {
            Failure::Io {
                name: req.name.clone(),
                error,
            }
        }
    };
    let refused = |e: HeaderError| match e {
        HeaderError::UnsupportedVersion(found) => Failure::UnsupportedVersion {
            name: req.name.clone(),
            found,
        },
        _ => Failure::NotAStore {
            name: req.name.clone(),
            len,
        },
    };
    let mut src = Tracked {
        src,
        progress,
        phase: "reading",
        pass: 0,
        done: 0,
        passes: if req.key.is_none() && (req.entries || req.check) {
            2
        } else {
            1
        },
    };
    if let Some(key) = &req.key {
        let found = find_key(&mut src, key, req.now_ms)
            .map_err(|e| failed(out, e))?
            .map_err(refused)?;
        src.end_pass();
        return key::show_key(&mut src, req, key, &found, out, err).map_err(|e| failed(out, e));
    }
    let cells = if req.map {
        text::map_columns(req.width) * text::MAP_ROWS
    } else {
        0
    };
    let opts = ScanOptions::at(req.now_ms).with_map(cells);
    let report = Report::scan(&mut src, opts)
        .map_err(|e| failed(out, e))?
        .map_err(refused)?;
    src.end_pass();
    let status = if req.json {
        json::json_report(&mut src, req, &report, out)
    } else {
        text::text_report(&mut src, req, &report, out)
    }
    .and_then(|status| out.flush().map(|()| status))
    .map_err(|e| failed(out, e))?;
    Ok(status)
}

/// What the listing showed, when filtered or limited.
#[derive(Clone, Copy, Debug, Default)]
struct Listed {
    /// Rows handed out.
    rows: u64,
    /// Whether more rows matched than `--limit` let through.
    cut: bool,
}

/// The second walk, when the listing or the check needs it: hands every row
/// the listing shows to `each` and gathers the problems (the header's
/// first). Without the check, it stops once the listing is complete.
fn walk_rows<S: Source>(
    src: &mut Tracked<'_, S>,
    req: &Request,
    report: &Report,
    mut each: impl FnMut(&Row) -> io::Result<()>,
) -> io::Result<(Findings, Listed)> {
    let mut findings = Findings::default();
    let mut listed = Listed::default();
    findings.extend(report.header_problem());
    src.next_pass(if req.check { "checking" } else { "listing" });
    let mut rows = report.rows(&mut *src, req.check);
    while let Some(row) = rows.next_row()? {
        if req.entries && !listed.cut && req.lists(&row) {
            if req.limit.is_some_and(|limit| listed.rows >= limit) {
                listed.cut = true;
                if !req.check {
                    break;
                }
            } else {
                each(&row)?;
                listed.rows += 1;
            }
        }
        findings.extend(row.problems);
    }
    drop(rows);
    src.end_pass();
    Ok((findings, listed))
}

/// The output, remembering whether a write to it failed (to tell a broken
/// pipe from a file that cannot be read).
struct Output<'a> {
    inner: &'a mut dyn Write,
    failed: bool,
}

impl Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.failed |= r.is_err();
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.failed |= r.is_err();
        r
    }
}

/// A source that reports how far it has been read.
struct Tracked<'p, S: Source> {
    src: S,
    progress: Option<&'p mut dyn FnMut(Progress)>,
    phase: &'static str,
    pass: u64,
    passes: u64,
    /// The furthest point reported: a scan that walks twice over keys with
    /// several copies holds the bar still rather than move it back.
    done: u64,
}

impl<S: Source> Tracked<'_, S> {
    /// The pass under way is over (its last block's padding is never read).
    fn end_pass(&mut self) {
        let len = self.src.len();
        self.report((self.pass + 1).min(self.passes) * len);
    }

    fn report(&mut self, done: u64) {
        self.done = self.done.max(done);
        if let Some(p) = self.progress.as_mut() {
            p(Progress {
                phase: self.phase,
                done: self.done,
                total: self.passes * self.src.len(),
            });
        }
    }

    fn next_pass(&mut self, phase: &'static str) {
        self.pass += 1;
        self.phase = phase;
    }
}

impl<S: Source> Source for Tracked<'_, S> {
    fn len(&self) -> u64 {
        self.src.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.read_at(offset, buf)?;
        if self.progress.is_some() {
            let len = self.src.len();
            let at = (offset + buf.len() as u64).min(len);
            self.report(self.pass.min(self.passes - 1) * len + at);
        }
        Ok(())
    }
}
