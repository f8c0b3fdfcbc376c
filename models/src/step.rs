//! The graph of one ubatch under construction, with its inputs and its views of memory.

use crate::blocks::attention::KvSource;
use crate::blocks::recurrent::RecurrentState;
use crate::error::{ModelError, Result};
use crate::memory::{Memory, UBatchView};
use crate::weights::WeightStore;
use weft_graph::{Access, DType, Graph, GraphBuilder, Tensor};

/// What an architecture's `build` works with. Inputs are named `tokens`, `pos`, `kv_write`,
/// `kv_mask` and `slots`; the session fills them from the [`UBatchView`].
#[derive(Debug)]
pub struct Step<'a> {
    pub b: GraphBuilder,
    pub view: &'a UBatchView,
    weights: &'a WeightStore,
    memory: &'a Memory,
    /// Token ids `[T]`, sequence-major.
    pub tokens: Tensor,
    /// Positions `[T]`.
    pub pos: Tensor,
    kv_write: Option<Tensor>,
    kv_mask: Option<Tensor>,
    slots: Option<Tensor>,
    /// Rows whose logits are wanted (`out_rows`, `[R]`); all rows when absent.
    out_rows: Option<Tensor>,
}

impl<'a> Step<'a> {
    /// `out_rows`: how many rows (chosen by the `out_rows` input) the logits keep; `None` keeps
    /// every token's.
    pub fn new(
        view: &'a UBatchView,
        weights: &'a WeightStore,
        memory: &'a Memory,
        out_rows: Option<usize>,
    ) -> Result<Step<'a>> {
        let mut b = GraphBuilder::new();
        let t = view.tokens.len();
        let tokens = b.input("tokens", &[t], DType::I32)?;
        let pos = b.input("pos", &[t], DType::I32)?;
        let (kv_write, kv_mask) = if memory.has_attention() {
            (
                Some(b.input("kv_write", &[t], DType::I32)?),
                Some(b.input("kv_mask", &[t, view.n_kv], DType::F32)?),
            )
        } else {
            (None, None)
        };
        let slots = if memory.has_recurrent() {
            Some(b.input("slots", &[view.n_seqs], DType::I32)?)
        } else {
            None
        };
        let out_rows = match out_rows {
            Some(r) => Some(b.input("out_rows", &[r], DType::I32)?),
            None => None,
        };
        Ok(Step {
            b,
            view,
            weights,
            memory,
            tokens,
            pos,
            kv_write,
            kv_mask,
            slots,
            out_rows,
        })
    }

    /// The rows of the final hidden state `x [T, D]` whose logits are wanted: before the head,
    /// so the LM head (often the largest matmul) runs only for them.
    pub fn select_outputs(&mut self, x: Tensor) -> Result<Tensor> {
        match self.out_rows {
            Some(rows) => Ok(self.b.get_rows(x, rows)?),
            None => Ok(x),
        }
    }

    pub fn n_tokens(&self) -> usize {
        self.view.tokens.len()
    }

    /// Binds a weight by name.
    pub fn w(&mut self, name: &str) -> Result<Tensor> {
        self.weights.bind(&mut self.b, name)
    }

    /// Binds a weight if the file has it.
    pub fn w_opt(&mut self, name: &str) -> Result<Option<Tensor>> {
        self.weights.bind_opt(&mut self.b, name)
    }

    pub fn weights(&self) -> &WeightStore {
        self.weights
    }

    /// The KV cache of attention layer `il`.
    pub fn kv(&mut self, il: usize) -> Result<KvSource> {
        let buf = self.memory.buffers.get(il).copied().unwrap_or_default();
        let width = self.memory.layers.get(il).and_then(|l| l.kv_width());
        let (Some(kb), Some(vb), Some(width), Some(write), Some(mask)) =
            (buf.k, buf.v, width, self.kv_write, self.kv_mask)
        else {
            return Err(ModelError::Config(format!("layer {il} has no KV cache")));
        };
        let cells = self.memory.config.cells;
        let dt = self.memory.config.kv_dtype;
        let k = self.b.external(
            &format!("cache_k.{il}"),
            &[cells, width],
            dt,
            kb,
            Access::ReadWrite,
        )?;
        let v = self.b.external(
            &format!("cache_v.{il}"),
            &[cells, width],
            dt,
            vb,
            Access::ReadWrite,
        )?;
        Ok(KvSource::Cache {
            k,
            v,
            write,
            n_kv: self.view.n_kv,
            mask,
        })
    }

    /// The recurrent state cache of layer `il`.
    pub fn state(&mut self, il: usize) -> Result<RecurrentState> {
        let buf = self.memory.buffers.get(il).copied().unwrap_or_default();
        let sizes = self.memory.layers.get(il).and_then(|l| l.recurrent());
        let (Some(cb), Some(sb), Some((conv, ssm)), Some(slots)) =
            (buf.conv, buf.ssm, sizes, self.slots)
        else {
            return Err(ModelError::Config(format!(
                "layer {il} has no recurrent state"
            )));
        };
        let n = self.memory.config.sequences;
        let conv = self.b.external(
            &format!("cache_conv.{il}"),
            &[n, conv],
            DType::F32,
            cb,
            Access::ReadWrite,
        )?;
        let ssm = self.b.external(
            &format!("cache_ssm.{il}"),
            &[n, ssm],
            DType::F32,
            sb,
            Access::ReadWrite,
        )?;
        Ok(RecurrentState { conv, ssm, slots })
    }

    /// Ends building with `logits [T, V]` (or `[R, V]` with chosen rows) as the output.
    pub fn finish(mut self, logits: Tensor) -> Result<Graph> {
        self.b.output(logits, "logits")?;
        Ok(self.b.finish())
    }
}
