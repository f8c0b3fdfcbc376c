//! Recurrent state slots: one per live sequence, holding that sequence's conv window and SSM
//! state in every recurrent layer's cache.

use super::SeqId;
use crate::error::{ModelError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecurrentSlots {
    /// Sequence in each slot and the number of tokens its state has absorbed.
    slots: Vec<Option<(SeqId, usize)>>,
}

impl RecurrentSlots {
    pub fn new(n: usize) -> RecurrentSlots {
        RecurrentSlots {
            slots: vec![None; n],
        }
    }

    pub fn slot_of(&self, s: SeqId) -> Option<usize> {
        self.slots
            .iter()
            .position(|x| x.is_some_and(|(q, _)| q == s))
    }

    /// Tokens absorbed by a sequence's state (0 for an unknown sequence).
    pub fn len_of(&self, s: SeqId) -> usize {
        self.slots
            .iter()
            .flatten()
            .find(|(q, _)| *q == s)
            .map_or(0, |(_, n)| *n)
    }

    pub fn used(&self) -> usize {
        self.slots.iter().filter(|x| x.is_some()).count()
    }

    /// Slots of the sequences (new ones get a free slot, returned in `fresh` to be zeroed).
    pub fn assign(&mut self, seqs: &[SeqId]) -> Result<(Vec<usize>, Vec<usize>)> {
        let mut next = self.clone();
        let mut out = Vec::with_capacity(seqs.len());
        let mut fresh = vec![];
        for &s in seqs {
            let slot = match next.slot_of(s) {
                Some(i) => i,
                None => {
                    let i = next.slots.iter().position(Option::is_none).ok_or(
                        ModelError::NoFreeSlot {
                            seq: s,
                            slots: self.slots.len(),
                        },
                    )?;
                    next.slots[i] = Some((s, 0));
                    fresh.push(i);
                    i
                }
            };
            out.push(slot);
        }
        *self = next;
        Ok((out, fresh))
    }

    pub fn advance(&mut self, s: SeqId, n: usize) {
        if let Some(Some((_, len))) = self
            .slots
            .iter_mut()
            .find(|x| x.is_some_and(|(q, _)| q == s))
        {
            *len += n;
        }
    }

    /// Every slot as (sequence, tokens absorbed), for state files.
    pub fn raw(&self) -> Vec<Option<(SeqId, usize)>> {
        self.slots.clone()
    }

    /// Slots from [`RecurrentSlots::raw`]; `None` when the count differs from `n` or a sequence
    /// id is out of range.
    pub fn from_raw(raw: &[Option<(SeqId, usize)>], n: usize) -> Option<RecurrentSlots> {
        let ok = raw.len() == n && raw.iter().flatten().all(|(s, _)| *s < n);
        ok.then(|| RecurrentSlots {
            slots: raw.to_vec(),
        })
    }

    /// Sets the tokens a sequence's state has absorbed (after restoring a checkpoint).
    pub fn set_len(&mut self, s: SeqId, n: usize) {
        if let Some(Some((_, len))) = self
            .slots
            .iter_mut()
            .find(|x| x.is_some_and(|(q, _)| q == s))
        {
            *len = n;
        }
    }

    /// Frees a sequence's slot.
    pub fn remove(&mut self, s: SeqId) {
        if let Some(i) = self.slot_of(s) {
            self.slots[i] = None;
        }
    }
}
