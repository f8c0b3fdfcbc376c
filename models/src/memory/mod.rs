//! Hybrid memory: attention KV cells and recurrent state slots, per sequence.
//!
//! The memory is a long-lived store; [`Memory::prepare`] is the one method that changes it for a
//! ubatch (placing its tokens in cells, giving new sequences a zeroed state slot) and returns the
//! per-ubatch view the graph reads: positions, cells to write, the attention mask and slot ids.

mod checkpoint;
mod kv;
mod ops;
mod recurrent;
mod state;

pub use checkpoint::{Checkpoint, Checkpoints};
pub use kv::KvCells;
pub use ops::PosRange;
pub use recurrent::RecurrentSlots;
pub use state::STATE_VERSION;

use crate::error::{ModelError, Result};
use weft_backends::Backend;
use weft_graph::{BufferId, DType};

/// Granularity of the number of KV cells a ubatch's attention reads.
pub const KV_PAD: usize = 64;

/// A sequence id (0-based, below the session's sequence capacity).
pub type SeqId = usize;

/// What a layer keeps between ubatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMemory {
    /// KV rows of `width` = n_head_kv · head_dim (0 heads: nothing).
    Attention { width: usize },
    /// A conv window of `conv` floats and an SSM state of `ssm` floats per sequence.
    Recurrent { conv: usize, ssm: usize },
    /// Both (Falcon-H1's parallel layers).
    Both {
        width: usize,
        conv: usize,
        ssm: usize,
    },
    /// Nothing (an MoE- or FFN-only layer).
    None,
}

impl LayerMemory {
    pub fn kv_width(self) -> Option<usize> {
        match self {
            LayerMemory::Attention { width } | LayerMemory::Both { width, .. } if width > 0 => {
                Some(width)
            }
            _ => None,
        }
    }
    pub fn recurrent(self) -> Option<(usize, usize)> {
        match self {
            LayerMemory::Recurrent { conv, ssm } | LayerMemory::Both { conv, ssm, .. } => {
                Some((conv, ssm))
            }
            _ => None,
        }
    }
}

/// Sizes fixed when a session is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// KV cells (the context length across all sequences).
    pub cells: usize,
    /// Most sequences alive at once.
    pub sequences: usize,
    /// Storage type of the KV cache (F32 or F16).
    pub kv_dtype: DType,
    /// Snapshot recurrent states every this many tokens of a sequence (0 = never).
    pub checkpoint_every: usize,
    /// Most checkpoints kept per sequence (the oldest go first).
    pub max_checkpoints: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            cells: 512,
            sequences: 4,
            kv_dtype: DType::F32,
            checkpoint_every: 0,
            max_checkpoints: 8,
        }
    }
}

/// One layer's cache buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerBuffers {
    pub k: Option<BufferId>,
    pub v: Option<BufferId>,
    pub conv: Option<BufferId>,
    pub ssm: Option<BufferId>,
}

/// The tokens of one ubatch, sequence-major: `seqs[i]` has `tokens[i]` new tokens (all equal
/// when the model has recurrent layers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UBatch {
    pub seqs: Vec<SeqId>,
    pub tokens: Vec<Vec<i32>>,
}

impl UBatch {
    pub fn n_tokens(&self) -> usize {
        self.tokens.iter().map(Vec::len).sum()
    }
    /// Tokens per sequence when they are all equal.
    pub fn seq_len(&self) -> Option<usize> {
        let n = self.tokens.first()?.len();
        self.tokens.iter().all(|t| t.len() == n).then_some(n)
    }
}

/// What the graph of one ubatch reads from memory (host inputs).
#[derive(Clone, Debug, PartialEq)]
pub struct UBatchView {
    pub tokens: Vec<i32>,
    pub positions: Vec<i32>,
    /// KV cell written by each token.
    pub kv_write: Vec<i32>,
    /// Cells attention reads (`0..n_kv`).
    pub n_kv: usize,
    /// Additive mask `[n_tokens, n_kv]`.
    pub kv_mask: Vec<f32>,
    /// State slot of each sequence, in ubatch order.
    pub slots: Vec<i32>,
    pub n_seqs: usize,
    pub seq_len: usize,
}

/// KV cells plus recurrent slots, with the buffers of every layer.
#[derive(Debug)]
pub struct Memory {
    pub config: MemoryConfig,
    pub layers: Vec<LayerMemory>,
    pub buffers: Vec<LayerBuffers>,
    pub kv: KvCells,
    pub rec: RecurrentSlots,
    pub checkpoints: Checkpoints,
    /// Every token each sequence has absorbed, in order (what a rollback re-feeds).
    pub history: Vec<Vec<i32>>,
}

impl Memory {
    /// Allocates every layer's buffers on the backend.
    pub fn new(
        be: &mut dyn Backend,
        layers: Vec<LayerMemory>,
        config: MemoryConfig,
    ) -> Result<Memory> {
        if !matches!(config.kv_dtype, DType::F32 | DType::F16) {
            return Err(ModelError::Config(format!(
                "KV cache type must be F32 or F16, not {}",
                config.kv_dtype
            )));
        }
        if config.sequences == 0 || config.sequences > 64 || config.cells == 0 {
            return Err(ModelError::Config(format!(
                "a session needs 1 to 64 sequences and at least one cell (asked {} and {})",
                config.sequences, config.cells
            )));
        }
        let eb = config.kv_dtype.block_bytes();
        let mut buffers = Vec::with_capacity(layers.len());
        for l in &layers {
            let mut lb = LayerBuffers::default();
            if let Some(w) = l.kv_width() {
                lb.k = Some(be.alloc(config.cells * w * eb)?);
                lb.v = Some(be.alloc(config.cells * w * eb)?);
            }
            if let Some((conv, ssm)) = l.recurrent() {
                lb.conv = Some(be.alloc(config.sequences * conv * 4)?);
                lb.ssm = Some(be.alloc(config.sequences * ssm * 4)?);
            }
            buffers.push(lb);
        }
        Ok(Memory {
            kv: KvCells::new(config.cells),
            rec: RecurrentSlots::new(config.sequences),
            checkpoints: Checkpoints::new(config.sequences, config.max_checkpoints),
            history: vec![Vec::new(); config.sequences],
            config,
            layers,
            buffers,
        })
    }

    pub fn has_recurrent(&self) -> bool {
        self.layers.iter().any(|l| l.recurrent().is_some())
    }

    pub fn has_attention(&self) -> bool {
        self.layers.iter().any(|l| l.kv_width().is_some())
    }

    /// Next position of a sequence (its length so far).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.kv
            .seq_pos_max(seq)
            .map_or(0, |p| p as usize + 1)
            .max(self.rec.len_of(seq))
    }

    /// Places a ubatch: positions continue each sequence, cells are taken for attention layers,
    /// new sequences get a zeroed recurrent slot. On error nothing has changed.
    pub fn prepare(&mut self, be: &mut dyn Backend, u: &UBatch) -> Result<UBatchView> {
        for &s in &u.seqs {
            if s >= self.config.sequences {
                return Err(ModelError::UnknownSequence {
                    seq: s,
                    capacity: self.config.sequences,
                });
            }
        }
        let mut positions = Vec::with_capacity(u.n_tokens());
        let mut seq_of = Vec::with_capacity(u.n_tokens());
        for (s, toks) in u.seqs.iter().zip(&u.tokens) {
            let p0 = self.seq_len(*s);
            positions.extend((0..toks.len()).map(|i| (p0 + i) as i32));
            seq_of.extend(std::iter::repeat_n(*s, toks.len()));
        }
        // Work on copies so that a failure leaves the memory exactly as it was.
        let mut kv = self.kv.clone();
        let mut rec = self.rec.clone();
        let (kv_write, n_kv, kv_mask) = if self.has_attention() {
            let write = kv.place(&seq_of, &positions)?;
            // Attention reads a multiple of KV_PAD cells (masked past the used ones) so that
            // consecutive decode steps share one compiled program.
            let n_kv = kv
                .used_extent()
                .div_ceil(KV_PAD)
                .saturating_mul(KV_PAD)
                .min(self.config.cells);
            let mask = kv.mask(&seq_of, &positions, n_kv);
            (write, n_kv, mask)
        } else {
            (vec![0; positions.len()], 0, vec![])
        };
        let slots = if self.has_recurrent() {
            let (slots, fresh) = rec.assign(&u.seqs)?;
            for slot in fresh {
                self.zero_slot(be, slot)?;
            }
            for (s, t) in u.seqs.iter().zip(&u.tokens) {
                rec.advance(*s, t.len());
            }
            slots.into_iter().map(|s| s as i32).collect()
        } else {
            vec![]
        };
        self.kv = kv;
        self.rec = rec;
        for (s, t) in u.seqs.iter().zip(&u.tokens) {
            self.history[*s].extend_from_slice(t);
        }
        Ok(UBatchView {
            tokens: u.tokens.concat(),
            positions,
            kv_write: kv_write.into_iter().map(|c| c as i32).collect(),
            n_kv,
            kv_mask,
            slots,
            n_seqs: u.seqs.len(),
            seq_len: u.seq_len().unwrap_or(0),
        })
    }

    fn zero_slot(&self, be: &mut dyn Backend, slot: usize) -> Result<()> {
        for (l, b) in self.layers.iter().zip(&self.buffers) {
            if let (Some((conv, ssm)), Some(cb), Some(sb)) = (l.recurrent(), b.conv, b.ssm) {
                be.upload(cb, slot * conv * 4, &vec![0u8; conv * 4])?;
                be.upload(sb, slot * ssm * 4, &vec![0u8; ssm * 4])?;
            }
        }
        Ok(())
    }

    /// Forgets every sequence.
    pub fn clear(&mut self) {
        self.kv = KvCells::new(self.config.cells);
        self.rec = RecurrentSlots::new(self.config.sequences);
        self.checkpoints = Checkpoints::new(self.config.sequences, self.config.max_checkpoints);
        self.history = vec![Vec::new(); self.config.sequences];
    }

    /// Tokens a sequence may still take before its next checkpoint (unbounded without
    /// checkpoints or recurrent layers).
    pub fn until_checkpoint(&self, seq: SeqId) -> usize {
        let n = self.config.checkpoint_every;
        if n == 0 || !self.has_recurrent() {
            return usize::MAX;
        }
        n - self.seq_len(seq) % n
    }

    /// Snapshots `seq`'s recurrent state when its length sits on a checkpoint boundary.
    pub fn maybe_checkpoint(&mut self, be: &mut dyn Backend, seq: SeqId) -> Result<()> {
        let n = self.config.checkpoint_every;
        let len = self.seq_len(seq);
        if n == 0 || len == 0 || !len.is_multiple_of(n) || !self.has_recurrent() {
            return Ok(());
        }
        let Some(slot) = self.rec.slot_of(seq) else {
            return Ok(());
        };
        let mut rows = vec![];
        for (l, b) in self.layers.iter().zip(&self.buffers) {
            if let (Some((conv, ssm)), Some(cb), Some(sb)) = (l.recurrent(), b.conv, b.ssm) {
                for (buf, width) in [(cb, conv), (sb, ssm)] {
                    let mut row = vec![0u8; width * 4];
                    be.download(buf, slot * width * 4, &mut row)?;
                    rows.push(row);
                }
            }
        }
        self.checkpoints.add(seq, Checkpoint { pos: len, rows });
        Ok(())
    }

    /// Writes a checkpoint's rows back into `seq`'s slot.
    pub(crate) fn restore(
        &mut self,
        be: &mut dyn Backend,
        seq: SeqId,
        cp: &Checkpoint,
    ) -> Result<()> {
        let Some(slot) = self.rec.slot_of(seq) else {
            return Ok(());
        };
        let mut rows = cp.rows.iter();
        for (l, b) in self.layers.iter().zip(&self.buffers) {
            if let (Some((conv, ssm)), Some(cb), Some(sb)) = (l.recurrent(), b.conv, b.ssm) {
                for (buf, width) in [(cb, conv), (sb, ssm)] {
                    let row = rows.next().ok_or_else(|| {
                        ModelError::Config("checkpoint does not match the model".into())
                    })?;
                    be.upload(buf, slot * width * 4, row)?;
                }
            }
        }
        Ok(())
    }
}
