//! # sfs: a persistent key-value map in one file
//!
//! `sfs` keeps a key-value map in a single data file. Every key lives in an
//! in-memory index that points into the file; values are read from the file
//! (through a memory map) when asked for. Space freed by deletes, overwrites
//! and expiry is recycled: a free list ordered by size hands out the best fit,
//! splits large blocks, merges neighbours and cuts free space off the end of
//! the file. Entries can expire at a wall-clock time, the store can cap its
//! number of entries by evicting the least recently used one, and every block
//! carries checksums so that damage is detected, skipped and never served.
//!
//! ```
//! use std::time::Duration;
//! use sfs::{Options, SyncPolicy};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("data.sfs");
//! let store = Options::new().max_entries(2).sync(SyncPolicy::Never).open(&path)?;
//! store.put(b"a", b"1")?;
//! store.put_with_ttl(b"b", b"2", Duration::from_secs(3600))?;
//! store.get(b"a")?;          // `a` is now the most recently used
//! store.put(b"c", b"3")?;    // over the cap: `b`, the least recently used, is evicted
//! assert!(store.contains(b"a") && !store.contains(b"b") && store.contains(b"c"));
//! store.close()?;
//!
//! let store = sfs::Store::open(&path)?;
//! assert_eq!(store.get(b"c")?.as_deref(), Some(&b"3"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The file format is documented byte by byte in `FORMAT.md`; the guarantees
//! (what survives a crash, what damage costs) in the README.
//!
//! # What the crate offers
//!
//! - At the top level, the store: [`Store`] (keys and values as bytes) and
//!   [`TypedStore`] (serde types, bincode-encoded), opened with [`Options`]
//!   ([`SyncPolicy`], [`AutoCompact`]); what they return ([`Entry`],
//!   [`ValueRef`], [`Iter`], [`Stats`], [`CompactStats`], [`TypedEntry`],
//!   [`TypedValueRef`], [`PutOptions`]); [`Error`] and [`Result`]; the
//!   [`Clock`] that judges expiry ([`SystemClock`], [`ManualClock`] for
//!   tests); what happened to keys, for whoever subscribes ([`Event`],
//!   [`Subscriber`]); and live backups ([`Store::backup`], [`BackupOptions`],
//!   [`IfBehind`], [`BackupCancel`], [`BackupProgress`], [`BackupPhase`],
//!   [`BackupReport`]).
//! - [`inspect`]: read-only access to a store file for tools that look
//!   inside one (the `sfs-dump` package is one): a [`inspect::Source`] to
//!   read from, the [`inspect::Walker`] over its blocks (the same parser the
//!   store opens files with), and the header types it hands out.
//! - [`inspect::report`]: what a file holds in the terms `sfs-dump` shows
//!   ([`inspect::report::Report`]: block states, summary figures, a map,
//!   the problems `--check` lists) and the lookup of one key
//!   ([`inspect::report::find_key`]).
//!
//! Nothing else is public. How `sfs-dump` prints all this (text, JSON,
//! command line) lives in that package. The modules `testing`, `fuzzing`
//! and `format` exist only with the hidden `testing` feature (fault-injecting
//! storage, fuzz target bodies, and the byte layout for tests that craft
//! files); they are not part of the API and may change in any release.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// Unsafe code is refused except where a site says why it is needed
// (`#[expect(unsafe_code, reason = ...)]`) and why it is sound (`// SAFETY:`).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Library code handles every failure; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod alloc;
mod clock;
mod error;
mod events;
mod filelock;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod format;
#[cfg(not(feature = "testing"))]
mod format;
mod index;
pub mod inspect;
mod io;
mod options;
mod recovery;
mod store;
mod typed;

#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, LockHolder, Result};
pub use events::{Event, Subscriber};
pub use options::{AutoCompact, Options, SyncPolicy};
pub use store::{
    BackupCancel, BackupOptions, BackupPhase, BackupProgress, BackupReport, Batch, CompactStats,
    Conflict, Entry, IfBehind, Iter, PutOptions, Stats, Store, ValueRef,
};
pub use typed::{TypedBatch, TypedConflict, TypedEntry, TypedStore, TypedValueRef};

/// The README's examples, run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
