//! Sequence operations: remove a range of a sequence, fork one sequence into another, keep only
//! one sequence. Recurrent states cannot be trimmed in the middle or rolled back without a
//! checkpoint; such requests are typed errors and leave the memory exactly as it was.

use super::{Memory, SeqId};
use crate::error::{ModelError, Result};
use weft_backends::Backend;

/// A position range `[p0, p1)` of a sequence; `None` bounds mean "from the start" / "to the end".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PosRange {
    pub p0: Option<usize>,
    pub p1: Option<usize>,
}

impl PosRange {
    pub const ALL: PosRange = PosRange { p0: None, p1: None };

    fn bounds(self) -> (i32, i32) {
        (
            self.p0.map_or(0, |p| p as i32),
            self.p1
                .map_or(i32::MAX, |p| p.min(i32::MAX as usize) as i32),
        )
    }
}

impl Memory {
    fn check_seq(&self, seq: SeqId) -> Result<()> {
        if seq >= self.config.sequences {
            return Err(ModelError::UnknownSequence {
                seq,
                capacity: self.config.sequences,
            });
        }
        Ok(())
    }

    /// Removes positions `range` of `seq` and returns the tokens the caller must feed again.
    ///
    /// Attention-only memory drops any range. With recurrent layers a state cannot forget some
    /// of what it absorbed: the whole sequence can go, and a tail can go when a checkpoint at or
    /// before the cut exists; the state then returns to that checkpoint and the tokens between
    /// it and the cut are returned for re-feeding. Anything else is a `RecurrentTrim` error and
    /// changes nothing.
    pub fn seq_rm(
        &mut self,
        be: &mut dyn Backend,
        seq: SeqId,
        range: PosRange,
    ) -> Result<Vec<i32>> {
        self.check_seq(seq)?;
        let len = self.seq_len(seq);
        let (p0, p1) = range.bounds();
        let whole = p0 <= 0 && p1 as usize >= len;
        let nothing = p0 as usize >= len || p0 >= p1;
        let tail = !whole && !nothing && p1 as usize >= len;
        if self.has_recurrent() && !whole && !nothing {
            let cp = match (tail, self.checkpoints.at_or_before(seq, p0 as usize)) {
                (true, Some(cp)) => cp.clone(),
                (is_tail, _) => {
                    return Err(ModelError::RecurrentTrim {
                        seq,
                        p0: p0 as usize,
                        p1: range.p1,
                        len,
                        detail: if is_tail {
                            "rolling a recurrent state back needs a checkpoint at or before the cut"
                                .into()
                        } else {
                            "a recurrent state cannot drop tokens from the middle".into()
                        },
                    });
                }
            };
            self.restore(be, seq, &cp)?;
            self.rec.set_len(seq, cp.pos);
            self.kv.remove(seq, cp.pos as i32, i32::MAX);
            let refeed = self.history[seq][cp.pos..p0 as usize].to_vec();
            self.history[seq].truncate(cp.pos);
            self.checkpoints.truncate(seq, Some(cp.pos));
            return Ok(refeed);
        }
        if whole {
            self.rec.remove(seq);
            self.checkpoints.truncate(seq, None);
        }
        self.kv.remove(seq, p0, p1);
        let h = &mut self.history[seq];
        let (a, b) = (
            (p0.max(0) as usize).min(h.len()),
            (p1.max(0) as usize).min(h.len()),
        );
        h.drain(a..b.max(a));
        Ok(vec![])
    }

    /// Makes `dst` a copy of `src` (`dst` is cleared first): KV cells are shared by adding `dst`
    /// to their sequence sets; recurrent states are copied into a slot of `dst`'s own.
    pub fn seq_cp(&mut self, be: &mut dyn Backend, src: SeqId, dst: SeqId) -> Result<()> {
        self.check_seq(src)?;
        self.check_seq(dst)?;
        if src == dst {
            return Ok(());
        }
        let mut rec = self.rec.clone();
        let mut slots = None;
        if self.has_recurrent() {
            rec.remove(dst);
            if let Some(from) = rec.slot_of(src) {
                let (to, _) = rec.assign(&[dst])?;
                rec.advance(dst, rec.len_of(src));
                slots = Some((from, to[0]));
            }
        }
        if let Some((from, to)) = slots {
            self.copy_slot(be, from, to)?;
        }
        self.rec = rec;
        self.kv.remove(dst, 0, i32::MAX);
        self.kv.share(src, dst);
        self.history[dst] = self.history[src].clone();
        self.checkpoints.copy(src, dst);
        Ok(())
    }

    /// Shifts positions `range` of `seq` by `delta` (attention only: a recurrent state has no
    /// positions to move). Cells pushed below position 0 are dropped. Returns the cells whose
    /// cached keys must be re-rotated by `delta`.
    pub fn seq_add(&mut self, seq: SeqId, range: PosRange, delta: i32) -> Result<Vec<usize>> {
        self.check_seq(seq)?;
        if self.has_recurrent() {
            return Err(ModelError::Config(format!(
                "sequence {seq}: positions cannot be shifted in a model with recurrent layers"
            )));
        }
        let (p0, p1) = range.bounds();
        // the tokens absorbed stay the same; only their positions move
        Ok(self.kv.shift(seq, p0, p1, delta))
    }

    /// Removes every sequence but `seq`.
    pub fn seq_keep(&mut self, seq: SeqId) -> Result<()> {
        self.check_seq(seq)?;
        for s in 0..self.config.sequences {
            if s != seq {
                self.kv.remove(s, 0, i32::MAX);
                self.rec.remove(s);
                self.history[s].clear();
                self.checkpoints.truncate(s, None);
            }
        }
        Ok(())
    }

    /// Copies one state slot to another in every recurrent layer.
    fn copy_slot(&self, be: &mut dyn Backend, from: usize, to: usize) -> Result<()> {
        for (l, b) in self.layers.iter().zip(&self.buffers) {
            if let (Some((conv, ssm)), Some(cb), Some(sb)) = (l.recurrent(), b.conv, b.ssm) {
                for (buf, width) in [(cb, conv), (sb, ssm)] {
                    let mut row = vec![0u8; width * 4];
                    be.download(buf, from * width * 4, &mut row)?;
                    be.upload(buf, to * width * 4, &row)?;
                }
            }
        }
        Ok(())
    }
}
