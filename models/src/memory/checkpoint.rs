//! Recurrent checkpoints: snapshots of a sequence's states (every recurrent layer's conv and SSM
//! rows) taken every N tokens, so that a sequence can roll back to a cut without reprocessing
//! its whole prompt. Snapshots live in host memory; their bytes are counted.

use super::SeqId;

/// One snapshot: the tokens absorbed when it was taken and each layer's state rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub pos: usize,
    /// Per recurrent layer, its conv row then its SSM row (raw f32 bytes).
    pub rows: Vec<Vec<u8>>,
}

impl Checkpoint {
    pub fn bytes(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }
}

/// Checkpoints of every sequence, oldest first, at most `max` each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoints {
    per_seq: Vec<Vec<Checkpoint>>,
    max: usize,
}

impl Checkpoints {
    pub fn new(sequences: usize, max: usize) -> Checkpoints {
        Checkpoints {
            per_seq: vec![Vec::new(); sequences],
            max,
        }
    }

    pub fn add(&mut self, seq: SeqId, cp: Checkpoint) {
        if self.max == 0 {
            return;
        }
        if let Some(list) = self.per_seq.get_mut(seq) {
            list.retain(|c| c.pos != cp.pos);
            list.push(cp);
            if list.len() > self.max {
                list.remove(0);
            }
        }
    }

    /// The latest checkpoint at or before `pos`.
    pub fn at_or_before(&self, seq: SeqId, pos: usize) -> Option<&Checkpoint> {
        self.per_seq
            .get(seq)?
            .iter()
            .filter(|c| c.pos <= pos)
            .max_by_key(|c| c.pos)
    }

    /// Drops checkpoints of `seq` after `pos` (all of them with `None`).
    pub fn truncate(&mut self, seq: SeqId, pos: Option<usize>) {
        if let Some(list) = self.per_seq.get_mut(seq) {
            list.retain(|c| pos.is_some_and(|p| c.pos <= p));
        }
    }

    pub fn copy(&mut self, src: SeqId, dst: SeqId) {
        if let Some(list) = self.per_seq.get(src).cloned()
            && let Some(d) = self.per_seq.get_mut(dst)
        {
            *d = list;
        }
    }

    pub fn of(&self, seq: SeqId) -> &[Checkpoint] {
        self.per_seq.get(seq).map_or(&[], |v| v.as_slice())
    }

    /// Host bytes held by every checkpoint.
    pub fn bytes(&self) -> usize {
        self.per_seq.iter().flatten().map(Checkpoint::bytes).sum()
    }
}
