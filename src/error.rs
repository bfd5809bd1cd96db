//! `Error`: everything that can go wrong, in words a user can act on.
//!
//! Every variant that concerns a file names it; damage names the offset.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
///
/// Every variant that concerns a file carries its path, and the `Display`
/// text names it, so a message in a log says which store failed and why.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an operation (permissions, disk full, not
    /// a regular file, ...). The file is unchanged, or holds only what was
    /// fully written.
    Io {
        /// The store file.
        path: PathBuf,
        /// What the store was doing ("opening", "extending the file", ...).
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The file exists, is not empty and does not start with the store's
    /// magic bytes. It was not modified.
    NotAStore {
        /// The file.
        path: PathBuf,
    },
    /// The file is a store of a format version this build cannot read. It was
    /// not modified.
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The newest version this build reads and writes (it reads every
        /// version from 1 up to this one).
        supported: u32,
    },
    /// Damage that cannot be skipped safely (a broken file header), or a
    /// damaged entry met by a read. The failed call did not modify the file.
    ///
    /// From a read, the message names the key, says what the key reads as
    /// after the next open (absent, or an older copy still in the file), and
    /// points to `sfs-dump FILE --check`.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage is.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// Another handle, in this process or another, has the file open for
    /// writing (or, for a writer, open at all). A file has one writer at a
    /// time: within a process, open it once and share that handle between
    /// threads as an `Arc<Store>`.
    Locked {
        /// The file.
        path: PathBuf,
        /// Who holds the file, as far as this process can tell.
        holder: LockHolder,
        /// Whether the refused open was read-only.
        read_only: bool,
    },
    /// A key, value or metadata over the limits. The store is unchanged.
    TooLarge {
        /// The store file.
        path: PathBuf,
        /// `"key"`, `"value"` or `"metadata"`; from a
        /// [`TypedStore`](crate::TypedStore), `"encoded key"` or `"encoded
        /// value"`: there the limit applies to the bincode encoding.
        what: &'static str,
        /// Its length in bytes (for a typed key or value, of its encoding);
        /// a count of entries where `what` says "entries" (a batch's keys
        /// under the entry cap, a full index shard).
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A write on a store opened read-only.
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The options (or the path) make no sense; no file was created or
    /// opened.
    InvalidOptions {
        /// What is wrong with them.
        reason: String,
    },
    /// A write after [`Store::shutdown`](crate::Store::shutdown): the store
    /// takes reads only.
    Closed {
        /// The file.
        path: PathBuf,
    },
    /// Work the store does in the background (periodic sync, automatic
    /// compaction) failed or panicked. Reported once, by the next
    /// [`sync`](crate::Store::sync), [`compact`](crate::Store::compact),
    /// [`shutdown`](crate::Store::shutdown) or
    /// [`close`](crate::Store::close), and counted in
    /// [`Stats::background_errors`](crate::Stats::background_errors).
    Background {
        /// The file.
        path: PathBuf,
        /// The task that failed, e.g. "syncing the file".
        task: &'static str,
        /// What went wrong (the error's message, or the panic's).
        reason: String,
    },
    /// A typed store could not encode or decode a key or value.
    Codec {
        /// The store file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A backup was cancelled through its
    /// [`BackupCancel`](crate::BackupCancel) token. The store is unchanged
    /// and nothing was left under the destination's name.
    BackupCancelled {
        /// The store file.
        path: PathBuf,
        /// The backup's destination (`None` for a writer).
        destination: Option<PathBuf>,
    },
    /// A backup could not keep up with the writers: after its rounds, what
    /// changed since the last one would still have paused them for longer
    /// than allowed (see [`IfBehind`](crate::IfBehind)). The store is
    /// unchanged and nothing was left under the destination's name.
    BackupBehind {
        /// The store file.
        path: PathBuf,
        /// The backup's destination (`None` for a writer).
        destination: Option<PathBuf>,
        /// Rounds run.
        rounds: u32,
        /// Entries changed and not yet copied again.
        pending_entries: u64,
        /// How long copying them was expected to pause the writers.
        expected_pause: std::time::Duration,
        /// The longest pause allowed.
        allowed_pause: std::time::Duration,
    },
}

/// A backup's destination as a message shows it.
fn shown_destination(d: &Option<PathBuf>) -> String {
    match d {
        Some(p) => format!("to {}", ShownPath(p)),
        None => "to a writer".into(),
    }
}

/// Who holds the lock on a store file that an open found locked (see
/// [`Error::Locked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockHolder {
    /// Another handle of this process has the file open for writing.
    WriterInThisProcess,
    /// Read-only handles of this process have the file open, and a writer
    /// needs the file to itself.
    ReadersInThisProcess,
    /// Another process has the file open: for writing, or (when the refused
    /// open wanted to write) read-only.
    OtherProcess,
}

/// At most this many bytes of a key are shown in a message.
const KEY_SHOWN: usize = 48;

/// A key as a message shows it: quoted when it is printable ASCII, as the
/// string it encodes when it is a bincode-encoded printable string (the keys
/// of a `TypedStore<String, _>`), in hex otherwise; long keys are cut.
pub(crate) fn describe_key(key: &[u8]) -> String {
    fn printable(b: &[u8]) -> bool {
        b.iter().all(|&c| (0x20..0x7f).contains(&c))
    }
    fn quoted(b: &[u8]) -> String {
        let shown = &b[..b.len().min(KEY_SHOWN)];
        let text: String = shown.iter().map(|&c| c as char).collect();
        if shown.len() < b.len() {
            format!("{text:?}... ({} bytes)", b.len())
        } else {
            format!("{text:?}")
        }
    }
    if printable(key) {
        return quoted(key);
    }
    let config = bincode::config::standard();
    if let Ok((s, n)) = bincode::serde::decode_from_slice::<String, _>(key, config)
        && n == key.len()
        && printable(s.as_bytes())
    {
        return format!("{} (bincode-encoded)", quoted(s.as_bytes()));
    }
    let shown = &key[..key.len().min(KEY_SHOWN)];
    let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
    if shown.len() < key.len() {
        format!("0x{hex}... ({} bytes, hex)", key.len())
    } else {
        format!("0x{hex} (hex)")
    }
}

impl Error {
    /// Adds to a [`Error::Corrupt`] met while reading `key` what the user
    /// needs: the key, what it reads as after a reopen, and what to run.
    /// Other errors pass through.
    pub(crate) fn reading_key(self, key: &[u8]) -> Error {
        match self {
            Error::Corrupt {
                path,
                offset,
                reason,
            } => {
                let reason = format!(
                    "{reason} (entry of key {}). The entry is damaged and is never served; \
                     the next open skips it, so the key then reads as absent (or as an older \
                     copy of it, if one is still in the file); deleting or overwriting the key \
                     drops it now. `sfs-dump {} --check` lists all damage in the file",
                    describe_key(key),
                    path.display()
                );
                Error::Corrupt {
                    path,
                    offset,
                    reason,
                }
            }
            e => e,
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    /// The file the error concerns, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::NotAStore { path }
            | Error::UnsupportedVersion { path, .. }
            | Error::Corrupt { path, .. }
            | Error::Locked { path, .. }
            | Error::TooLarge { path, .. }
            | Error::ReadOnly { path }
            | Error::Closed { path }
            | Error::Background { path, .. }
            | Error::Codec { path, .. }
            | Error::BackupCancelled { path, .. }
            | Error::BackupBehind { path, .. } => Some(path),
            Error::InvalidOptions { .. } => None,
        }
    }
}

/// A path as a message shows it: an empty one is named as such, so that no
/// message starts with a bare colon.
struct ShownPath<'a>(&'a Path);

impl fmt::Display for ShownPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.as_os_str().is_empty() {
            f.write_str("(empty path)")
        } else {
            write!(f, "{}", self.0.display())
        }
    }
}

fn locked_message(holder: LockHolder, read_only: bool) -> &'static str {
    match (holder, read_only) {
        (LockHolder::WriterInThisProcess, false) => {
            "locked: another handle in this process already has the file open for writing. \
             A file has one writer at a time: open it once and share that handle between \
             threads as an `Arc<Store>`"
        }
        (LockHolder::WriterInThisProcess, true) => {
            "locked: a read-only open waits for the writer, and another handle in this \
             process has the file open for writing. Read through that handle (share it as \
             an `Arc<Store>`), or open read-only once it is closed"
        }
        (LockHolder::ReadersInThisProcess, _) => {
            "locked: read-only handles in this process have the file open, and a writer \
             needs the file to itself. Close them first, or open one writer and share it \
             as an `Arc<Store>` for reads too"
        }
        (_, false) => {
            "locked by another process, which has the file open (a writer, or read-only \
             opens: a writer needs the file to itself). Wait for it to close the store; \
             `sfs-dump` can look inside meanwhile, as it takes no lock"
        }
        (_, true) => {
            "locked by another process, which has the file open for writing, and a \
             read-only open waits for the writer. Wait for it to close the store; \
             `sfs-dump` can look inside meanwhile, as it takes no lock"
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = self.path() {
            write!(f, "{}: ", ShownPath(path))?;
        }
        match self {
            Error::Io { action, source, .. } => write!(f, "I/O error while {action}: {source}"),
            Error::NotAStore { .. } => f.write_str(
                "not an sfs store (the file does not start with the store's magic bytes); it was left untouched",
            ),
            Error::UnsupportedVersion {
                found, supported, ..
            } => write!(
                f,
                "store format version {found} is not supported by this build (it reads versions 1 to {supported}); the file was left untouched"
            ),
            Error::Corrupt { offset, reason, .. } => {
                write!(f, "corrupt at offset {offset}: {reason}")
            }
            Error::Locked {
                holder, read_only, ..
            } => f.write_str(locked_message(*holder, *read_only)),
            Error::TooLarge { what, len, max, .. } => {
                // Most limits are lengths; the entry cap and a shard's
                // size count entries.
                let unit = match what.contains("entries") {
                    true => "entries",
                    false => "bytes",
                };
                write!(
                    f,
                    "{what} of {len} {unit} is over the limit of {max} {unit}; nothing was written"
                )
            }
            Error::ReadOnly { .. } => f.write_str("the store was opened read-only"),
            Error::Closed { .. } => f.write_str(
                "the store was shut down (Store::shutdown); it serves reads, and writes need a new open",
            ),
            Error::Background { task, reason, .. } => write!(
                f,
                "the background thread failed while {task}: {reason}; writes acknowledged since the \
                 last successful sync may not be durable: call sync() to retry"
            ),
            Error::InvalidOptions { reason } => write!(f, "invalid options: {reason}"),
            Error::Codec { reason, .. } => f.write_str(reason),
            Error::BackupCancelled { destination, .. } => write!(
                f,
                "backup {} cancelled; the store is unchanged and nothing was left under that name",
                shown_destination(destination)
            ),
            Error::BackupBehind {
                destination,
                rounds,
                pending_entries,
                expected_pause,
                allowed_pause,
                ..
            } => write!(
                f,
                "backup {} could not keep up with the writers: after {rounds} rounds, \
                 {pending_entries} entries changed since the last one would pause the writers \
                 for about {expected_pause:?}, over the {allowed_pause:?} allowed; the store is \
                 unchanged and nothing was left under that name. Allow a longer pause \
                 (IfBehind::PauseUpTo) or more rounds, or back up when fewer writes come in",
                shown_destination(destination)
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            Error::NotAStore { .. } | Error::UnsupportedVersion { .. } | Error::Corrupt { .. } => {
                io::ErrorKind::InvalidData
            }
            Error::Locked { .. } => io::ErrorKind::WouldBlock,
            Error::TooLarge { .. } | Error::InvalidOptions { .. } | Error::Codec { .. } => {
                io::ErrorKind::InvalidInput
            }
            Error::ReadOnly { .. } | Error::Closed { .. } => io::ErrorKind::PermissionDenied,
            Error::Background { .. } | Error::BackupCancelled { .. } => io::ErrorKind::Other,
            Error::BackupBehind { .. } => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file() {
        let p = Path::new("/data/x.sfs");
        let errors = [
            Error::io(
                p,
                "opening",
                io::Error::from(io::ErrorKind::PermissionDenied),
            ),
            Error::NotAStore { path: p.into() },
            Error::UnsupportedVersion {
                path: p.into(),
                found: 9,
                supported: 1,
            },
            Error::Corrupt {
                path: p.into(),
                offset: 64,
                reason: "bad".into(),
            },
            Error::Locked {
                path: p.into(),
                holder: LockHolder::OtherProcess,
                read_only: false,
            },
            Error::TooLarge {
                path: p.into(),
                what: "key",
                len: 70000,
                max: 65535,
            },
            Error::ReadOnly { path: p.into() },
            Error::Codec {
                path: p.into(),
                reason: "x".into(),
            },
        ];
        for e in errors {
            assert!(e.to_string().contains("/data/x.sfs"), "{e}");
            assert_eq!(e.path(), Some(p));
        }
        let e = Error::Corrupt {
            path: p.into(),
            offset: 4242,
            reason: "bad".into(),
        };
        assert!(e.to_string().contains("4242"));
    }

    #[test]
    fn locked_says_who_holds_the_file_and_what_to_do() {
        let p = Path::new("/data/x.sfs");
        let text = |holder, read_only| {
            Error::Locked {
                path: p.into(),
                holder,
                read_only,
            }
            .to_string()
        };
        let same = text(LockHolder::WriterInThisProcess, false);
        assert!(
            same.starts_with("/data/x.sfs: locked: another handle in this process"),
            "{same}"
        );
        assert!(same.contains("Arc<Store>"), "{same}");
        let reader = text(LockHolder::WriterInThisProcess, true);
        assert!(
            reader.contains("a read-only open waits for the writer"),
            "{reader}"
        );
        let readers = text(LockHolder::ReadersInThisProcess, false);
        assert!(
            readers.contains("read-only handles in this process"),
            "{readers}"
        );
        let other = text(LockHolder::OtherProcess, false);
        assert!(other.contains("locked by another process"), "{other}");
        assert!(other.contains("sfs-dump"), "{other}");
        let other_ro = text(LockHolder::OtherProcess, true);
        assert!(
            other_ro.contains("has the file open for writing"),
            "{other_ro}"
        );
    }

    #[test]
    fn corrupt_from_a_read_names_the_key_the_reopen_and_the_check() {
        let e = Error::Corrupt {
            path: "/data/x.sfs".into(),
            offset: 1056,
            reason: "entry checksum mismatch".into(),
        }
        .reading_key(b"cache:2");
        let text = e.to_string();
        for part in [
            "/data/x.sfs: corrupt at offset 1056: entry checksum mismatch (entry of key \"cache:2\")",
            "the key then reads as absent",
            "`sfs-dump /data/x.sfs --check`",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        // Other errors pass through unchanged.
        let e = Error::ReadOnly {
            path: "/data/x.sfs".into(),
        };
        assert!(matches!(e.reading_key(b"k"), Error::ReadOnly { .. }));
    }

    #[test]
    fn keys_in_messages_are_quoted_decoded_or_hex_and_cut() {
        assert_eq!(describe_key(b"user:42"), "\"user:42\"");
        assert_eq!(describe_key(b""), "\"\"");
        assert_eq!(describe_key(b"\x05sid-1"), "\"sid-1\" (bincode-encoded)");
        assert_eq!(describe_key(&[0, 0xff]), "0x00ff (hex)");
        let long = describe_key(&[b'a'; 100]);
        assert!(
            long.ends_with("... (100 bytes)") && long.len() < 70,
            "{long}"
        );
        let long = describe_key(&[0u8; 100]);
        assert!(long.ends_with("... (100 bytes, hex)"), "{long}");
    }

    #[test]
    fn an_empty_path_never_starts_a_message_with_a_colon() {
        let e = Error::io(
            Path::new(""),
            "opening the file",
            io::ErrorKind::NotFound.into(),
        );
        assert!(
            e.to_string()
                .starts_with("(empty path): I/O error while opening"),
            "{e}"
        );
    }
}
