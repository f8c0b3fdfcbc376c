//! Qwen3-Next: like Qwen3.5 (gated DeltaNet and gated full-attention layers), with the shared
//! mixture-of-experts block (softmax router, top-k renormalised) plus a shared expert scaled by
//! `sigmoid(x · w_gate_shexp)`.
//!
//! The converter splits HF's grouped `in_proj_qkvz` into `attn_qkv` (all q, all k, all v) and
//! `attn_gate` (z) with value heads grouped by key head, and keeps `in_proj_ba` as `ssm_ba`
//! (per key head: `β` then `α` for its value heads).

use super::qwen35::{attention_layer, delta_layer, qwen_layers, qwen_params, recurrent_layers};
use super::{Architecture, HParams, embed, head};
use crate::blocks::attention::AttentionParams;
use crate::blocks::delta_net::{DeltaNetParams, HeadOrder};
use crate::blocks::moe::{ExpertAct, Gating, MoeParams, MoeWeights, SharedExpert, moe};
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::Tensor;

#[derive(Debug)]
pub struct Qwen3Next {
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    recurrent: Vec<bool>,
    attn: AttentionParams,
    delta: DeltaNetParams,
    moe: MoeParams,
}

impl Qwen3Next {
    pub(crate) fn new(h: &HParams) -> Result<Qwen3Next> {
        let n_layer = h.usize("block_count")?;
        let (attn, delta) = qwen_params(h, HeadOrder::Grouped)?;
        Ok(Qwen3Next {
            n_embd: h.usize("embedding_length")?,
            n_vocab: h.n_vocab()?,
            eps: delta.eps,
            recurrent: recurrent_layers(h, n_layer, 4)?,
            attn,
            delta,
            moe: MoeParams {
                n_expert_used: h.usize("expert_used_count")?,
                gating: Gating::Softmax,
                norm_weights: true,
                weights_scale: 1.0,
                act: ExpertAct::SwiGlu,
            },
        })
    }
}

impl Architecture for Qwen3Next {
    fn name(&self) -> &'static str {
        "qwen3next"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        qwen_layers(&self.recurrent, &self.attn, &self.delta)
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let mut x = embed(s)?;
        for (il, &rec) in self.recurrent.iter().enumerate() {
            let p = |n: &str| format!("blk.{il}.{n}.weight");
            let norm = s.w(&p("attn_norm"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let a = if rec {
                delta_layer(s, il, h, &self.delta, true)?
            } else {
                attention_layer(s, il, h, &self.attn, self.eps, true, true)?
            };
            x = s.b.add(x, a)?;
            let norm = s.w(&p("post_attention_norm"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let w = MoeWeights {
                router: s.w(&p("ffn_gate_inp"))?,
                selection_bias: None,
                gate: Some(s.w(&p("ffn_gate_exps"))?),
                up: s.w(&p("ffn_up_exps"))?,
                down: s.w(&p("ffn_down_exps"))?,
                shared: Some(SharedExpert {
                    gate: Some(s.w(&p("ffn_gate_shexp"))?),
                    up: s.w(&p("ffn_up_shexp"))?,
                    down: s.w(&p("ffn_down_shexp"))?,
                    gate_inp: Some(s.w(&p("ffn_gate_inp_shexp"))?),
                }),
            };
            let f = moe(&mut s.b, h, &w, &self.moe)?;
            x = s.b.add(x, f)?;
        }
        head(s, x, self.eps)
    }
}
