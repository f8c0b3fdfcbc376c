//! The recurrent-layer base every recurrent mixer uses: load the conv window and the SSM state
//! of the ubatch's sequences from the layer's state cache, and store the new ones back.
//!
//! A layer's cache holds one row per sequence slot: `conv [slots, (K−1)·C]` and
//! `ssm [slots, state_size]`. Rows are gathered by the ubatch's slot ids (`I32 [S]`), so a
//! forked sequence reads its own copy and nothing is shared by mistake.

use weft_graph::{GraphBuilder, Result, Tensor};

/// One layer's state cache and the slots of the ubatch's sequences.
#[derive(Clone, Copy, Debug)]
pub struct RecurrentState {
    pub conv: Tensor,
    pub ssm: Tensor,
    pub slots: Tensor,
}

impl RecurrentState {
    fn load(b: &mut GraphBuilder, cache: Tensor, slots: Tensor, dims: &[usize]) -> Result<Tensor> {
        let rows = b.get_rows(cache, slots)?;
        b.reshape(rows, dims)
    }

    fn store(b: &mut GraphBuilder, cache: Tensor, slots: Tensor, new: Tensor) -> Result<Tensor> {
        let s = new.dims()[0];
        let per = new.shape.numel() / s.max(1);
        let dense = b.contiguous(new)?;
        let rows = b.reshape(dense, &[s, per])?;
        b.store_rows(cache, rows, slots)
    }

    /// The conv windows `[S, K−1, C]`.
    pub fn load_conv(&self, b: &mut GraphBuilder, km1: usize, c: usize) -> Result<Tensor> {
        let s = self.slots.dims()[0];
        Self::load(b, self.conv, self.slots, &[s, km1, c])
    }

    /// The SSM states, shaped `dims` (leading dimension `S`).
    pub fn load_ssm(&self, b: &mut GraphBuilder, dims: &[usize]) -> Result<Tensor> {
        Self::load(b, self.ssm, self.slots, dims)
    }

    pub fn store_conv(&self, b: &mut GraphBuilder, new: Tensor) -> Result<Tensor> {
        Self::store(b, self.conv, self.slots, new)
    }

    pub fn store_ssm(&self, b: &mut GraphBuilder, new: Tensor) -> Result<Tensor> {
        Self::store(b, self.ssm, self.slots, new)
    }
}
