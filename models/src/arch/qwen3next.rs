//! Qwen3-Next: like Qwen3.5 (gated DeltaNet and gated full-attention layers), with a
//! mixture-of-experts feed-forward (softmax router, top-k renormalised) plus a shared expert
//! scaled by `sigmoid(x · w_gate_shexp)`.
//!
//! The converter splits HF's grouped `in_proj_qkvz` into `attn_qkv` (all q, all k, all v) and
//! `attn_gate` (z) with value heads grouped by key head, and keeps `in_proj_ba` as `ssm_ba`
//! (per key head: `β` then `α` for its value heads).

use super::qwen35::{attention_layer, delta_layer, qwen_layers, qwen_params, recurrent_layers};
use super::{Architecture, HParams, embed, head};
use crate::blocks::attention::AttentionParams;
use crate::blocks::delta_net::{DeltaNetParams, HeadOrder};
use crate::blocks::ffn::swiglu;
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::{GraphBuilder, ReduceOp, Tensor};

#[derive(Debug)]
pub struct Qwen3Next {
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    recurrent: Vec<bool>,
    attn: AttentionParams,
    delta: DeltaNetParams,
    n_expert_used: usize,
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
            n_expert_used: h.usize("expert_used_count")?,
        })
    }
}

/// Routed experts of `x [T, D]`: softmax router, the top `k` probabilities renormalised to sum
/// to one, SwiGLU experts (`gate`, `up [E, F, D]`, `down [E, D, F]`) weighted and summed.
// Local until the shared MoE block (`blocks/moe.rs`) exists; then this can call it.
fn moe(
    b: &mut GraphBuilder,
    x: Tensor,
    router: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    k: usize,
) -> weft_graph::Result<Tensor> {
    let [t, d] = [x.dims()[0], x.dims()[1]];
    let logits = b.matmul(x, router)?;
    let e = logits.dims()[1];
    let probs = b.softmax(logits, None, 1.0)?;
    let ids = b.top_k(probs, k)?;
    let p3 = b.reshape(probs, &[t, e, 1])?;
    let w = b.get_rows(p3, ids)?;
    let w = b.reshape(w, &[t, k])?;
    let sum = b.reduce(ReduceOp::Sum, w)?;
    let w = b.div(w, sum)?;
    let x3 = b.reshape(x, &[t, 1, d])?;
    let g = b.matmul_id(x3, gate, ids)?;
    let u = b.matmul_id(x3, up, ids)?;
    let g = b.silu(g)?;
    let hmid = b.mul(g, u)?;
    let y = b.matmul_id(hmid, down, ids)?;
    let w = b.reshape(w, &[t, k, 1])?;
    let y = b.mul(y, w)?;
    let y = b.permute(y, &[0, 2, 1])?;
    let y = b.contiguous(y)?;
    let y = b.reduce(ReduceOp::Sum, y)?;
    b.reshape(y, &[t, d])
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
            let (router, gate, up, down) = (
                s.w(&p("ffn_gate_inp"))?,
                s.w(&p("ffn_gate_exps"))?,
                s.w(&p("ffn_up_exps"))?,
                s.w(&p("ffn_down_exps"))?,
            );
            let routed = moe(&mut s.b, h, router, gate, up, down, self.n_expert_used)?;
            let (sg, su, sd, sgate) = (
                s.w(&p("ffn_gate_shexp"))?,
                s.w(&p("ffn_up_shexp"))?,
                s.w(&p("ffn_down_shexp"))?,
                s.w(&p("ffn_gate_inp_shexp"))?,
            );
            let shared = swiglu(&mut s.b, h, sg, su, sd)?;
            let sgate = s.b.matmul(h, sgate)?;
            let sgate = s.b.sigmoid(sgate)?;
            let shared = s.b.mul(shared, sgate)?;
            let f = s.b.add(routed, shared)?;
            x = s.b.add(x, f)?;
        }
        head(s, x, self.eps)
    }
}
