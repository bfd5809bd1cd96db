//! Test seams, behind the `testing` feature: not part of the stable API.
//!
//! The store does all its file I/O through [`Storage`]; tests open a store on
//! their own storage with `Options::open_on` to inject faults or simulate
//! crashes, and call `Store::check_invariants` after every step.

pub use crate::io::{FileStorage, MemStorage, Storage};
