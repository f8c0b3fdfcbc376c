//! Mamba2: a stack of Mamba2 mixers, each pre-normed and added to the residual.

use super::{Architecture, HParams, embed, head};
use crate::blocks::mamba2::{Mamba2Params, Mamba2Weights, mamba2};
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::Tensor;

#[derive(Debug)]
pub struct Mamba2 {
    n_layer: usize,
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    p: Mamba2Params,
}

impl Mamba2 {
    pub(crate) fn new(h: &HParams) -> Result<Mamba2> {
        let eps = h.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        Ok(Mamba2 {
            n_layer: h.usize("block_count")?,
            n_embd: h.usize("embedding_length")?,
            n_vocab: h.n_vocab()?,
            eps,
            p: Mamba2Params {
                d_inner: h.usize("ssm.inner_size")?,
                d_state: h.usize("ssm.state_size")?,
                d_conv: h.usize("ssm.conv_kernel")?,
                n_head: h.usize("ssm.time_step_rank")?,
                n_group: h.usize_or("ssm.group_count", 1)?,
                eps,
            },
        })
    }
}

/// The Mamba2 mixer of layer `il` (shared with the hybrid architectures).
pub(crate) fn mixer(s: &mut Step, il: usize, x: Tensor, p: &Mamba2Params) -> Result<Tensor> {
    let n = |k: &str| format!("blk.{il}.{k}");
    let w = Mamba2Weights {
        in_proj: s.w(&n("ssm_in.weight"))?,
        conv: s.w(&n("ssm_conv1d.weight"))?,
        conv_b: s.w(&n("ssm_conv1d.bias"))?,
        dt_b: s.w(&n("ssm_dt.bias"))?,
        a: s.w(&n("ssm_a"))?,
        d: s.w(&n("ssm_d"))?,
        norm: s.w_opt(&n("ssm_norm.weight"))?,
        out_proj: s.w(&n("ssm_out.weight"))?,
    };
    let state = s.state(il)?;
    Ok(mamba2(&mut s.b, x, &w, p, &state)?)
}

pub(crate) fn memory(p: &Mamba2Params) -> LayerMemory {
    LayerMemory::Recurrent {
        conv: (p.d_conv - 1) * p.conv_channels(),
        ssm: p.d_inner * p.d_state,
    }
}

impl Architecture for Mamba2 {
    fn name(&self) -> &'static str {
        "mamba2"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        vec![memory(&self.p); self.n_layer]
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let (ns, t) = (s.view.n_seqs, s.view.seq_len);
        let x = embed(s)?;
        let mut x = s.b.reshape(x, &[ns, t, self.n_embd])?;
        for il in 0..self.n_layer {
            let norm = s.w(&format!("blk.{il}.attn_norm.weight"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let y = mixer(s, il, h, &self.p)?;
            x = s.b.add(x, y)?;
        }
        let x = s.b.reshape(x, &[ns * t, self.n_embd])?;
        head(s, x, self.eps)
    }
}
