//! The map: the file cut into equal cells, each showing what most of its
//! bytes hold.

use super::State;
use crate::format::ALIGN;

/// What a cell of the [`Map`] mostly holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellState {
    /// The file header.
    Header,
    /// Live entries.
    Live,
    /// Expired entries.
    Expired,
    /// Free space.
    Free,
    /// Damage (a damaged file header included).
    Corrupt,
}

impl CellState {
    /// One letter per state (`H`, `L`, `E`, `F`, `C`), as in JSON output.
    pub fn letter(self) -> char {
        match self {
            CellState::Header => 'H',
            CellState::Live => 'L',
            CellState::Expired => 'E',
            CellState::Free => 'F',
            CellState::Corrupt => 'C',
        }
    }

    pub(super) fn of(state: State) -> CellState {
        match state {
            State::Live => CellState::Live,
            State::Expired => CellState::Expired,
            State::Free => CellState::Free,
            State::Corrupt => CellState::Corrupt,
        }
    }
}

/// A picture of the file: the file cut into equal slices ("cells"), each
/// showing what most of its bytes hold. A cell with any corrupt byte shows as
/// corrupt, so that scaling never hides damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Map {
    cell_bytes: u64,
    /// Bytes per cell in the order Header, Live, Expired, Free, Corrupt.
    tally: Vec<[u64; 5]>,
}

impl Map {
    /// A map of a file of `file_len` bytes in at most `max_cells` cells of a
    /// multiple of 8 bytes each.
    pub(super) fn new(file_len: u64, max_cells: usize) -> Map {
        let max_cells = max_cells.max(1) as u64;
        let cell_bytes = file_len
            .div_ceil(max_cells)
            .next_multiple_of(ALIGN)
            .max(ALIGN);
        let cells = file_len.div_ceil(cell_bytes) as usize;
        Map {
            cell_bytes,
            tally: vec![[0; 5]; cells],
        }
    }

    /// Bytes of the file per cell (the last cell may cover fewer).
    pub fn cell_bytes(&self) -> u64 {
        self.cell_bytes
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.tally.len()
    }

    /// Whether the map has no cells (an empty file).
    pub fn is_empty(&self) -> bool {
        self.tally.is_empty()
    }

    /// The cells in file order.
    pub fn cells(&self) -> impl Iterator<Item = CellState> + '_ {
        self.tally.iter().map(|t| {
            if t[4] > 0 {
                return CellState::Corrupt;
            }
            // Ties go to the first in this order.
            let order = [
                (CellState::Live, t[1]),
                (CellState::Expired, t[2]),
                (CellState::Header, t[0]),
                (CellState::Free, t[3]),
            ];
            let mut best = order[0];
            for c in &order[1..] {
                if c.1 > best.1 {
                    best = *c;
                }
            }
            best.0
        })
    }

    fn slot(c: CellState) -> usize {
        match c {
            CellState::Header => 0,
            CellState::Live => 1,
            CellState::Expired => 2,
            CellState::Free => 3,
            CellState::Corrupt => 4,
        }
    }

    /// Adds (or, with `remove`, takes away) `len` bytes at `offset`.
    pub(super) fn tally(&mut self, offset: u64, len: u64, c: CellState, remove: bool) {
        let end = offset.saturating_add(len);
        let mut at = offset;
        while at < end {
            let cell = (at / self.cell_bytes) as usize;
            let Some(t) = self.tally.get_mut(cell) else {
                break;
            };
            let cell_end = (cell as u64 + 1) * self.cell_bytes;
            let n = end.min(cell_end) - at;
            let slot = &mut t[Map::slot(c)];
            *slot = if remove {
                slot.saturating_sub(n)
            } else {
                *slot + n
            };
            at += n;
        }
    }
}
