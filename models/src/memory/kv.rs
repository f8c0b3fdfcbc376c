//! KV cells: each holds a position and the set of sequences that share it.

use super::SeqId;
use crate::error::{ModelError, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cell {
    /// Position, or -1 when free.
    pos: i32,
    /// Bit `s` set when sequence `s` uses the cell.
    seqs: u64,
}

/// The cells of the attention cache (shared by every attention layer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCells {
    cells: Vec<Cell>,
}

impl KvCells {
    pub fn new(n: usize) -> KvCells {
        KvCells {
            cells: vec![Cell { pos: -1, seqs: 0 }; n],
        }
    }

    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    pub fn used(&self) -> usize {
        self.cells.iter().filter(|c| c.seqs != 0).count()
    }

    /// One past the highest used cell.
    pub fn used_extent(&self) -> usize {
        self.cells
            .iter()
            .rposition(|c| c.seqs != 0)
            .map_or(0, |i| i + 1)
    }

    pub fn seq_pos_max(&self, s: SeqId) -> Option<i32> {
        self.cells
            .iter()
            .filter(|c| c.seqs >> s & 1 == 1)
            .map(|c| c.pos)
            .max()
    }

    /// Cells of a sequence, with their positions.
    pub fn cells_of(&self, s: SeqId) -> impl Iterator<Item = (usize, i32)> + '_ {
        self.cells
            .iter()
            .enumerate()
            .filter(move |(_, c)| c.seqs >> s & 1 == 1)
            .map(|(i, c)| (i, c.pos))
    }

    /// Takes a free cell for each token; fails (changing nothing) when the cache is full.
    pub fn place(&mut self, seq_of: &[SeqId], pos: &[i32]) -> Result<Vec<usize>> {
        let free: Vec<usize> = self
            .cells
            .iter()
            .enumerate()
            .filter(|(_, c)| c.seqs == 0)
            .map(|(i, _)| i)
            .take(seq_of.len())
            .collect();
        if free.len() < seq_of.len() {
            return Err(ModelError::ContextFull {
                need: seq_of.len(),
                free: free.len(),
                cells: self.cells.len(),
            });
        }
        for ((&cell, &s), &p) in free.iter().zip(seq_of).zip(pos) {
            self.cells[cell] = Cell {
                pos: p,
                seqs: 1 << s,
            };
        }
        Ok(free)
    }

    /// Additive mask `[tokens, n_kv]`: a token sees the cells of its own sequence at positions up
    /// to its own.
    pub fn mask(&self, seq_of: &[SeqId], pos: &[i32], n_kv: usize) -> Vec<f32> {
        let mut m = vec![f32::NEG_INFINITY; seq_of.len() * n_kv];
        for (i, (&s, &p)) in seq_of.iter().zip(pos).enumerate() {
            for (j, c) in self.cells[..n_kv].iter().enumerate() {
                if c.seqs >> s & 1 == 1 && c.pos <= p {
                    m[i * n_kv + j] = 0.0;
                }
            }
        }
        m
    }

    /// Every cell as (position, sequence bits), for state files.
    pub fn raw(&self) -> Vec<(i32, u64)> {
        self.cells.iter().map(|c| (c.pos, c.seqs)).collect()
    }

    /// Cells from [`KvCells::raw`]; `None` when the count differs from `n`.
    pub fn from_raw(raw: &[(i32, u64)], n: usize) -> Option<KvCells> {
        (raw.len() == n).then(|| KvCells {
            cells: raw.iter().map(|&(pos, seqs)| Cell { pos, seqs }).collect(),
        })
    }

    /// Adds `delta` to the positions of `s`'s cells in `p0..p1`; cells moved below 0 are freed.
    /// Returns the cells that moved and stayed.
    pub fn shift(&mut self, s: SeqId, p0: i32, p1: i32, delta: i32) -> Vec<usize> {
        let mut moved = vec![];
        for (i, c) in self.cells.iter_mut().enumerate() {
            if c.seqs >> s & 1 == 1 && c.pos >= p0 && c.pos < p1 {
                c.pos += delta;
                if c.pos < 0 {
                    *c = Cell { pos: -1, seqs: 0 };
                } else {
                    moved.push(i);
                }
            }
        }
        moved
    }

    /// Adds `dst` to every cell of `src`.
    pub fn share(&mut self, src: SeqId, dst: SeqId) {
        for c in &mut self.cells {
            if c.seqs >> src & 1 == 1 {
                c.seqs |= 1 << dst;
            }
        }
    }

    /// Drops sequence `s` from every cell at positions in `p0..p1`.
    pub fn remove(&mut self, s: SeqId, p0: i32, p1: i32) {
        for c in &mut self.cells {
            if c.seqs >> s & 1 == 1 && c.pos >= p0 && c.pos < p1 {
                c.seqs &= !(1 << s);
                if c.seqs == 0 {
                    c.pos = -1;
                }
            }
        }
    }
}
