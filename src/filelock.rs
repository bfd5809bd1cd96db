//! The store file's lock: one writer or many readers per file, across
//! processes (`flock`) and, with a process-wide registry, a message that says
//! who holds it.
//!
//! `flock` locks belong to an open file description, so two opens of one file
//! in one process exclude each other just as two processes do. When a lock is
//! refused, the registry (files this process has locked, by device and inode,
//! so that other paths to the same file count) tells whether the holder is in
//! this process; if not, it is another one.
//!
//! Releasing unlocks explicitly (`LOCK_UN`) before closing: a child process
//! forked by another thread at that moment shares the descriptor until it
//! execs, and without the explicit unlock it would keep the lock alive, so
//! that an open right after a close could fail with a spurious `Locked`.
//!
//! This module never reads or writes the file's bytes.

use std::fs::{File, Metadata, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use parking_lot::Mutex;

use crate::error::{Error, LockHolder, Result};

/// A locked file in this process: (device, inode), writers, readers.
struct Held {
    id: (u64, u64),
    writers: usize,
    readers: usize,
}

/// The files this process holds locks on. A lock is taken and released under
/// this mutex, so the registry and the locks never disagree for another
/// thread of this process.
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

/// The lock on one store file, held until dropped.
pub(crate) struct FileLock {
    /// A duplicate of the store's descriptor: the same open file description,
    /// so the same lock. Kept to unlock explicitly on drop.
    file: File,
    id: (u64, u64),
    write: bool,
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLock")
            .field("id", &self.id)
            .field("write", &self.write)
            .finish()
    }
}

impl FileLock {
    /// Locks `file` (opened at `path`, with metadata `meta`): exclusively
    /// for a writer, shared for a read-only open. A refusal is
    /// [`Error::Locked`] saying who holds the file.
    pub(crate) fn acquire(
        file: &File,
        meta: &Metadata,
        path: &Path,
        read_only: bool,
    ) -> Result<FileLock> {
        let id = (meta.dev(), meta.ino());
        let dup = file
            .try_clone()
            .map_err(|e| Error::io(path, "locking the file", e))?;
        let mut held = HELD.lock();
        let locked = if read_only {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let here = held.iter().find(|h| h.id == id);
                let holder = match here {
                    Some(h) if h.writers > 0 => LockHolder::WriterInThisProcess,
                    Some(h) if h.readers > 0 && !read_only => LockHolder::ReadersInThisProcess,
                    _ => LockHolder::OtherProcess,
                };
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    holder,
                    read_only,
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(path, "locking the file", e)),
        }
        let entry = match held.iter_mut().position(|h| h.id == id) {
            Some(i) => &mut held[i],
            None => {
                held.push(Held {
                    id,
                    writers: 0,
                    readers: 0,
                });
                held.last_mut().expect("just pushed")
            }
        };
        if read_only {
            entry.readers += 1;
        } else {
            entry.writers += 1;
        }
        Ok(FileLock {
            file: dup,
            id,
            write: !read_only,
        })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let mut held = HELD.lock();
        // Unlocks the open file description for every descriptor of it,
        // a forked child's included. An error leaves the lock to the close.
        let _ = self.file.unlock();
        if let Some(i) = held.iter().position(|h| h.id == self.id) {
            let h = &mut held[i];
            if self.write {
                h.writers = h.writers.saturating_sub(1);
            } else {
                h.readers = h.readers.saturating_sub(1);
            }
            if h.writers == 0 && h.readers == 0 {
                held.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> (File, Metadata) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        let m = f.metadata().unwrap();
        (f, m)
    }

    fn holder(e: Error) -> (LockHolder, bool) {
        match e {
            Error::Locked {
                holder, read_only, ..
            } => (holder, read_only),
            e => panic!("not Locked: {e}"),
        }
    }

    #[test]
    fn a_refusal_names_the_holder_in_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let (a, am) = open(&p);
        let w = FileLock::acquire(&a, &am, &p, false).unwrap();
        let (b, bm) = open(&p);
        let e = FileLock::acquire(&b, &bm, &p, false).unwrap_err();
        assert_eq!(holder(e), (LockHolder::WriterInThisProcess, false));
        let e = FileLock::acquire(&b, &bm, &p, true).unwrap_err();
        assert_eq!(holder(e), (LockHolder::WriterInThisProcess, true));
        drop(w);
        let r = FileLock::acquire(&b, &bm, &p, true).unwrap();
        let e = FileLock::acquire(&a, &am, &p, false).unwrap_err();
        assert_eq!(holder(e), (LockHolder::ReadersInThisProcess, false));
        drop(r);
        // Released for good: the registry forgot the file, the lock is free.
        FileLock::acquire(&a, &am, &p, false).unwrap();
        assert!(HELD.lock().iter().all(|h| h.id != (am.dev(), am.ino())));
    }

    #[test]
    fn a_hard_link_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let q = dir.path().join("link");
        let (a, am) = open(&p);
        std::fs::hard_link(&p, &q).unwrap();
        let _w = FileLock::acquire(&a, &am, &p, false).unwrap();
        let (b, bm) = open(&q);
        let e = FileLock::acquire(&b, &bm, &q, false).unwrap_err();
        assert_eq!(holder(e), (LockHolder::WriterInThisProcess, false));
    }
}
