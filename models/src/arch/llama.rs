//! Llama-style decoder: pre-norm attention with rotary positions and grouped KV heads, then a
//! SwiGLU feed-forward, each added to the residual stream.

use super::{Architecture, HParams, embed, head};
use crate::blocks::attention::{AttentionParams, AttentionWeights, attention};
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::{RopeMode, RopeParams, Tensor};

#[derive(Debug)]
pub struct Llama {
    n_layer: usize,
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    attn: AttentionParams,
}

impl Llama {
    pub(crate) fn new(h: &HParams) -> Result<Llama> {
        let n_embd = h.usize("embedding_length")?;
        let n_head = h.usize("attention.head_count")?;
        let head_dim = h.usize_or("attention.key_length", n_embd / n_head.max(1))?;
        let n_dims = h.usize_or("rope.dimension_count", head_dim)?;
        let scale = h.f32_or("rope.scaling.factor", 1.0)?;
        Ok(Llama {
            n_layer: h.usize("block_count")?,
            n_embd,
            n_vocab: h.n_vocab()?,
            eps: h.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            attn: AttentionParams {
                n_head,
                n_head_kv: h.usize_or("attention.head_count_kv", n_head)?,
                head_dim,
                rope: Some(RopeParams {
                    n_dims,
                    mode: RopeMode::Normal,
                    freq_base: h.f32_or("rope.freq_base", 10000.0)?,
                    freq_scale: if scale > 0.0 { 1.0 / scale } else { 1.0 },
                }),
            },
        })
    }
}

impl Architecture for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        vec![
            LayerMemory::Attention {
                width: self.attn.n_head_kv * self.attn.head_dim
            };
            self.n_layer
        ]
    }
    fn key_rope(&self) -> Option<(weft_graph::RopeParams, usize)> {
        Some((self.attn.rope?, self.attn.head_dim))
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let mut x = embed(s)?;
        for il in 0..self.n_layer {
            let p = |n: &str| format!("blk.{il}.{n}.weight");
            let norm = s.w(&p("attn_norm"))?;
            let w = AttentionWeights {
                q: s.w(&p("attn_q"))?,
                k: s.w(&p("attn_k"))?,
                v: s.w(&p("attn_v"))?,
                o: s.w(&p("attn_output"))?,
            };
            let kv = s.kv(il)?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let a = attention(&mut s.b, h, &w, &self.attn, s.pos, kv)?;
            x = s.b.add(x, a)?;
            let norm = s.w(&p("ffn_norm"))?;
            x = super::swiglu_residual(s, il, x, norm, self.eps)?;
        }
        head(s, x, self.eps)
    }
}
