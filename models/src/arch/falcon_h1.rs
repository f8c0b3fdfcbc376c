//! Falcon-H1: in every layer attention and a Mamba2 mixer run in parallel on the same normed
//! input and their sum is added to the residual, then a SwiGLU feed-forward.
//!
//! The converter folds every Falcon-H1 multiplier into the weights (embedding, attention
//! in/out and key, the five SSM in-projection parts, SSM in/out, MLP gate/down, LM head), so
//! the graph is the plain one. RoPE is NeoX over the whole head. The Mamba2 mixer has no
//! gated norm (`mamba_rms_norm = false`): its output is `y · silu(z)`.

use super::{Architecture, HParams, embed, head, mamba2};
use crate::blocks::attention::{AttentionParams, AttentionWeights, attention};
use crate::blocks::mamba2::Mamba2Params;
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::{RopeMode, RopeParams, Tensor};

#[derive(Debug)]
pub struct FalconH1 {
    n_layer: usize,
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    attn: AttentionParams,
    ssm: Mamba2Params,
}

impl FalconH1 {
    pub(crate) fn new(h: &HParams) -> Result<FalconH1> {
        let n_embd = h.usize("embedding_length")?;
        let n_head = h.usize("attention.head_count")?;
        let head_dim = h.usize_or("attention.key_length", n_embd / n_head.max(1))?;
        let eps = h.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        Ok(FalconH1 {
            n_layer: h.usize("block_count")?,
            n_embd,
            n_vocab: h.n_vocab()?,
            eps,
            attn: AttentionParams {
                n_head,
                n_head_kv: h.usize_or("attention.head_count_kv", n_head)?,
                head_dim,
                rope: Some(RopeParams {
                    n_dims: h.usize_or("rope.dimension_count", head_dim)?,
                    mode: RopeMode::Neox,
                    freq_base: h.f32_or("rope.freq_base", 10000.0)?,
                    freq_scale: 1.0,
                }),
            },
            ssm: Mamba2Params {
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

impl Architecture for FalconH1 {
    fn name(&self) -> &'static str {
        "falcon-h1"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        vec![
            LayerMemory::Both {
                width: self.attn.n_head_kv * self.attn.head_dim,
                conv: (self.ssm.d_conv - 1) * self.ssm.conv_channels(),
                ssm: self.ssm.d_inner * self.ssm.d_state,
            };
            self.n_layer
        ]
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let (ns, t) = (s.view.n_seqs, s.view.seq_len);
        let d = self.n_embd;
        let mut x = embed(s)?;
        for il in 0..self.n_layer {
            let p = |n: &str| format!("blk.{il}.{n}.weight");
            let norm = s.w(&p("attn_norm"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let h3 = s.b.reshape(h, &[ns, t, d])?;
            let m = mamba2::mixer(s, il, h3, &self.ssm)?;
            let m = s.b.reshape(m, &[ns * t, d])?;
            let w = AttentionWeights {
                q: s.w(&p("attn_q"))?,
                k: s.w(&p("attn_k"))?,
                v: s.w(&p("attn_v"))?,
                o: s.w(&p("attn_output"))?,
            };
            let kv = s.kv(il)?;
            let a = attention(&mut s.b, h, &w, &self.attn, s.pos, kv)?;
            let y = s.b.add(a, m)?;
            x = s.b.add(x, y)?;
            // The converter writes this norm without the `.weight` suffix.
            let norm = match s.w_opt(&format!("blk.{il}.ffn_norm"))? {
                Some(n) => n,
                None => s.w(&p("ffn_norm"))?,
            };
            x = super::swiglu_residual(s, il, x, norm, self.eps)?;
        }
        head(s, x, self.eps)
    }
}
