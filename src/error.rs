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
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Damage that cannot be skipped safely (a broken file header), or a
    /// damaged entry met by a read. The failed call did not modify the file.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage is.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// Another handle, in this process or another, has the file open for
    /// writing (or, for a writer, open at all).
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A key, value or metadata over the limits. The store is unchanged.
    TooLarge {
        /// The store file.
        path: PathBuf,
        /// `"key"`, `"value"` or `"metadata"`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A write on a store opened read-only.
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The options make no sense; no file was created or opened.
    InvalidOptions {
        /// What is wrong with them.
        reason: String,
    },
    /// A typed store could not encode or decode a key or value.
    Codec {
        /// The store file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl Error {
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
            | Error::Locked { path }
            | Error::TooLarge { path, .. }
            | Error::ReadOnly { path }
            | Error::Codec { path, .. } => Some(path),
            Error::InvalidOptions { .. } => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io {
                path,
                action,
                source,
            } => {
                write!(f, "{}: I/O error while {action}: {source}", path.display())
            }
            Error::NotAStore { path } => write!(
                f,
                "{}: not an sfs store (the file does not start with the store's magic bytes); it was left untouched",
                path.display()
            ),
            Error::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{}: store format version {found} is not supported by this build (it reads version {supported}); the file was left untouched",
                path.display()
            ),
            Error::Corrupt {
                path,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "{}: corrupt at offset {offset}: {reason}",
                    path.display()
                )
            }
            Error::Locked { path } => write!(
                f,
                "{}: the store is locked by another handle (another process, or another open in this one)",
                path.display()
            ),
            Error::TooLarge {
                path,
                what,
                len,
                max,
            } => write!(
                f,
                "{}: {what} of {len} bytes is over the limit of {max} bytes; nothing was written",
                path.display()
            ),
            Error::ReadOnly { path } => {
                write!(f, "{}: the store was opened read-only", path.display())
            }
            Error::InvalidOptions { reason } => write!(f, "invalid options: {reason}"),
            Error::Codec { path, reason } => write!(f, "{}: {reason}", path.display()),
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
            Error::ReadOnly { .. } => io::ErrorKind::PermissionDenied,
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
            Error::Locked { path: p.into() },
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
}
