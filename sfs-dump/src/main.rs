//! `sfs-dump`: see inside any sfs store file. Argument parsing only; the
//! reading is `sfs::inspect`, the rendering this package's library. Its
//! modes, flags, exit statuses and JSON fields are specified in
//! `sfs-dump/README.md`. It never modifies, locks or creates the file.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use sfs::inspect::FileSource;
use sfs::inspect::report::State;
use sfs_dump::{self as dump, KeyFormat, ProgressBar, Request};

const EXAMPLES: &str = "\
Examples:
  sfs-dump data.sfs                       summary: sizes, live/expired/free/corrupt, fragmentation
  sfs-dump data.sfs --map                 a picture of the file's layout
  sfs-dump data.sfs --entries             every block in file order
  sfs-dump data.sfs --check               verify every block; exit 1 if anything is damaged
  sfs-dump data.sfs --check --json | jq '.problems[] | .offset'
  sfs-dump data.sfs --key user:42         print the value of one key (raw bytes)
  sfs-dump data.sfs --hex-key 00ff --hex  the key given in hex, the value printed in hex
  sfs-dump data.sfs --key sid-1 --key-format bincode-string
                                          a key written by TypedStore<String, _>
  sfs-dump data.sfs --entries --prefix sid- --state live --limit 20
                                          the first 20 live blocks whose key starts with sid-
  sfs-dump data.sfs --entries --now 1700000000000
                                          expiry judged at a given time (ms since 1970)

Exit status: 0 read fine (--check: no damage; --key: found), 1 --check found damage or
--key found no live key, 2 usage error, unreadable file or not a store file.";

/// See inside an sfs store file: its blocks, free space, damage and values.
///
/// sfs-dump only reads: it never modifies, locks or creates the file, so it is
/// safe on a store in use by another process and on a damaged copy.
#[derive(Parser)]
#[command(name = "sfs-dump", version, after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("lookup").multiple(true).conflicts_with_all(["entries", "map", "check"])))]
struct Args {
    /// The store file.
    file: PathBuf,
    /// One row per block in file order: offset, size, state, sequence number,
    /// key/metadata/value lengths, expiry, key.
    #[arg(long)]
    entries: bool,
    /// A picture of the file's layout, scaled to the width in $COLUMNS (default 80).
    #[arg(long)]
    map: bool,
    /// Verify every block (checksums, sizes, tiling, overlaps, duplicate keys);
    /// one line per problem; exit status 1 if any damage is found.
    #[arg(long)]
    check: bool,
    /// Print the value of this key (raw bytes; exit status 1 if it has no live entry).
    #[arg(long, value_name = "KEY", group = "lookup")]
    key: Option<OsString>,
    /// The key in hex: `--hex-key 00ff`, or `--key 00ff --hex-key` (a leading 0x is allowed).
    #[arg(long, value_name = "HEX", num_args = 0..=1, default_missing_value = "", group = "lookup")]
    hex_key: Option<OsString>,
    /// Print the value in hex.
    #[arg(long, requires = "lookup")]
    hex: bool,
    /// How keys are shown, and how --key and --prefix are given: `auto`
    /// shows keys written by TypedStore (bincode strings and integers)
    /// decoded and marked, other keys as `utf8` does (text when printable,
    /// else hex).
    #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "hex_key")]
    key_format: Option<KeyFormatArg>,
    /// With --entries: only blocks whose key starts with PREFIX (given in
    /// the --key-format; with `auto`, the raw key or a decoded string key).
    #[arg(long, value_name = "PREFIX", requires = "entries")]
    prefix: Option<OsString>,
    /// With --entries: only blocks in these states (repeat it, or give a
    /// comma-separated list).
    #[arg(
        long,
        value_enum,
        value_name = "STATE",
        value_delimiter = ',',
        requires = "entries"
    )]
    state: Vec<StateArg>,
    /// With --entries: list at most N blocks (the output says when it cut the list).
    #[arg(long, value_name = "N", requires = "entries")]
    limit: Option<u64>,
    /// One JSON document on stdout instead of text (with any of the above).
    #[arg(long)]
    json: bool,
    /// Judge expiry at this time, in milliseconds since the UNIX epoch
    /// (default: the system clock).
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    now: Option<i64>,
}

/// `--key-format`.
#[derive(Clone, Copy, ValueEnum)]
enum KeyFormatArg {
    Auto,
    Utf8,
    Hex,
    BincodeString,
    BincodeU64,
}

/// `--state`.
#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Live,
    Expired,
    Free,
    Corrupt,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let name = args.file.display().to_string();
    let key_format = match args.key_format {
        None | Some(KeyFormatArg::Auto) => KeyFormat::Auto,
        Some(KeyFormatArg::Utf8) => KeyFormat::Utf8,
        Some(KeyFormatArg::Hex) => KeyFormat::Hex,
        Some(KeyFormatArg::BincodeString) => KeyFormat::BincodeString,
        Some(KeyFormatArg::BincodeU64) => KeyFormat::BincodeU64,
    };
    let states = args
        .state
        .iter()
        .map(|s| match s {
            StateArg::Live => State::Live,
            StateArg::Expired => State::Expired,
            StateArg::Free => State::Free,
            StateArg::Corrupt => State::Corrupt,
        })
        .collect();
    let prefix = match (&args.prefix, key_format) {
        (None, _) => None,
        (Some(p), KeyFormat::Hex) => match dump::KeyFormat::Hex.encode(p.as_bytes()) {
            Ok(p) => Some(p),
            Err(e) => return fail(2, &format!("--prefix: {e}")),
        },
        (Some(p), _) => Some(p.as_bytes().to_vec()),
    };
    let key = match (args.key.as_deref(), args.hex_key.as_deref()) {
        (None, None) => None,
        (Some(k), None) => match key_format.encode(k.as_bytes()) {
            Ok(k) => Some(k),
            Err(e) => return fail(2, &format!("--key: {e}")),
        },
        (Some(_), Some(h)) if !h.is_empty() => {
            return fail(2, "give the key once: --key KEY, or --hex-key HEX");
        }
        (None, Some(h)) if h.is_empty() => {
            return fail(
                2,
                "--hex-key needs a key: --hex-key HEX, or --key HEX --hex-key",
            );
        }
        (Some(h), Some(_)) | (None, Some(h)) => match KeyFormat::Hex.encode(h.as_bytes()) {
            Ok(k) => Some(k),
            Err(e) => return fail(2, &format!("--hex-key: {e}")),
        },
    };
    let now_ms = args.now.unwrap_or_else(|| {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    });
    // Look before opening: opening a FIFO would block, a directory is no file.
    match std::fs::metadata(&args.file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return fail(2, &format!("{name} is not a regular file")),
        Err(e) => return fail(2, &format!("cannot read {name}: {e}")),
    }
    let src = match std::fs::File::open(&args.file).and_then(FileSource::new) {
        Ok(s) => s,
        Err(e) => return fail(2, &format!("cannot read {name}: {e}")),
    };
    let req = Request {
        entries: args.entries,
        map: args.map,
        check: args.check,
        key,
        key_format,
        prefix,
        states,
        limit: args.limit,
        hex: args.hex,
        json: args.json,
        width: std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(80),
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        ..Request::new(name, now_ms)
    };
    let bar = RefCell::new(ProgressBar::new());
    let mut draw = |p| bar.borrow_mut().update(&mut std::io::stderr(), p);
    let progress: Option<&mut dyn FnMut(dump::Progress)> = if std::io::stderr().is_terminal() {
        Some(&mut draw)
    } else {
        None
    };
    // Buffered: a listing of millions of rows is not a write per line. When
    // stdout is the terminal the bar is on, the bar goes before output does.
    let stdout = std::io::stdout();
    let shares_terminal = stdout.is_terminal();
    let mut out = std::io::BufWriter::with_capacity(
        1 << 16,
        EndsBar {
            inner: stdout.lock(),
            bar: shares_terminal.then_some(&bar),
        },
    );
    let mut err = EndsBar {
        inner: std::io::stderr(),
        bar: Some(&bar),
    };
    let result = dump::run(src, &req, &mut out, &mut err, progress);
    let flushed = out.flush();
    drop(out);
    bar.borrow_mut().finish(&mut std::io::stderr());
    let result = result.and_then(|status| flushed.map(|()| status).map_err(dump::Failure::Output));
    match result {
        Ok(status) => ExitCode::from(status.exit_code()),
        // Output closed early (`| head`): not an error worth a message.
        Err(dump::Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(0)
        }
        Err(e) => fail(e.exit_code(), &e.to_string()),
    }
}

/// An output that erases the progress bar before the first byte it writes
/// reaches the terminal the bar is on.
struct EndsBar<'a, W: Write> {
    inner: W,
    bar: Option<&'a RefCell<ProgressBar>>,
}

impl<W: Write> Write for EndsBar<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(bar) = self.bar.take() {
            bar.borrow_mut().finish(&mut std::io::stderr());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "sfs-dump: {message}");
    ExitCode::from(code)
}
