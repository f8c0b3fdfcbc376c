//! Granite-4.0-H and Bamba (`granitehybrid`): Mamba2 and attention layers interleaved, each
//! followed by a dense SwiGLU feed-forward or a mixture of experts plus a shared SwiGLU expert.
//!
//! A layer is Mamba2 when its entry of `attention.head_count_kv` (an array) is 0. Granite's
//! multipliers: the embeddings are scaled by `embedding_scale`, both sub-block outputs by
//! `residual_scale` before their residual adds, attention scores by `attention.scale` (instead
//! of `1/√head_dim`) and the logits are divided by `logit_scale`; each applies only when the
//! file sets it. Attention uses rotary positions (normal mode on the first
//! `rope.dimension_count` dims) only when `rope.scaling.finetuned` is set, like llama.cpp:
//! Bamba has them, Granite-4.0-H has none. The MoE router is a softmax with the top `k`
//! renormalised.

use super::jamba::{moe_weights, per_layer};
use super::{Architecture, HParams, embed, head, mamba2};
use crate::blocks::attention::{AttentionParams, AttentionWeights, attention_scaled};
use crate::blocks::ffn::swiglu;
use crate::blocks::mamba2::Mamba2Params;
use crate::blocks::moe::{ExpertAct, Gating, MoeParams, SharedExpert, moe};
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::{RopeMode, RopeParams, Tensor};

#[derive(Debug)]
pub struct GraniteHybrid {
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    /// KV heads per layer; 0 marks a Mamba2 layer.
    n_head_kv: Vec<usize>,
    n_head: usize,
    head_dim: usize,
    rope: Option<RopeParams>,
    ssm: Mamba2Params,
    moe: MoeParams,
    embedding_scale: f32,
    residual_scale: f32,
    attention_scale: f32,
    logit_scale: f32,
}

impl GraniteHybrid {
    pub(crate) fn new(h: &HParams) -> Result<GraniteHybrid> {
        let n_layer = h.usize("block_count")?;
        let n_embd = h.usize("embedding_length")?;
        let n_head = h.usize("attention.head_count")?;
        let head_dim = h.usize_or("attention.key_length", n_embd / n_head.max(1))?;
        let eps = h.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        let rope = if h.bool_or("rope.scaling.finetuned", false)? {
            let factor = h.f32_or("rope.scaling.factor", 1.0)?;
            Some(RopeParams {
                n_dims: h.usize_or("rope.dimension_count", head_dim)?,
                mode: RopeMode::Normal,
                freq_base: h.f32_or("rope.freq_base", 10000.0)?,
                freq_scale: if factor > 0.0 { 1.0 / factor } else { 1.0 },
            })
        } else {
            None
        };
        let attention_scale = match h.f32_or("attention.scale", 0.0)? {
            0.0 => 1.0 / (head_dim as f32).sqrt(),
            s => s,
        };
        Ok(GraniteHybrid {
            n_embd,
            n_vocab: h.n_vocab()?,
            eps,
            n_head_kv: per_layer(h, "attention.head_count_kv", n_layer, n_head)?,
            n_head,
            head_dim,
            rope,
            ssm: Mamba2Params {
                d_inner: h.usize("ssm.inner_size")?,
                d_state: h.usize("ssm.state_size")?,
                d_conv: h.usize("ssm.conv_kernel")?,
                n_head: h.usize("ssm.time_step_rank")?,
                n_group: h.usize_or("ssm.group_count", 1)?,
                eps,
            },
            moe: MoeParams {
                n_expert_used: h.usize_or("expert_used_count", 0)?,
                gating: Gating::Softmax,
                norm_weights: true,
                weights_scale: 1.0,
                act: ExpertAct::SwiGlu,
            },
            embedding_scale: h.f32_or("embedding_scale", 0.0)?,
            residual_scale: h.f32_or("residual_scale", 0.0)?,
            attention_scale,
            logit_scale: h.f32_or("logit_scale", 0.0)?,
        })
    }

    /// `x · residual_scale` when the file sets one.
    fn residual(&self, s: &mut Step, x: Tensor) -> Result<Tensor> {
        Ok(if self.residual_scale != 0.0 {
            s.b.scale(x, self.residual_scale)?
        } else {
            x
        })
    }

    /// The feed-forward of layer `il` on the normed `h`: MoE plus the shared expert when the
    /// layer has a router, the dense SwiGLU otherwise.
    fn ffn(&self, s: &mut Step, il: usize, h: Tensor) -> Result<Tensor> {
        let n = |k: &str| format!("blk.{il}.{k}.weight");
        if let Some(mut w) = moe_weights(s, il)? {
            if let Some(up) = s.w_opt(&n("ffn_up_shexp"))? {
                w.shared = Some(SharedExpert {
                    gate: Some(s.w(&n("ffn_gate_shexp"))?),
                    up,
                    down: s.w(&n("ffn_down_shexp"))?,
                    gate_inp: None,
                });
            }
            return Ok(moe(&mut s.b, h, &w, &self.moe)?);
        }
        let (gate, up, down) = (
            s.w(&n("ffn_gate"))?,
            s.w(&n("ffn_up"))?,
            s.w(&n("ffn_down"))?,
        );
        Ok(swiglu(&mut s.b, h, gate, up, down)?)
    }
}

impl Architecture for GraniteHybrid {
    fn name(&self) -> &'static str {
        "granitehybrid"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        self.n_head_kv
            .iter()
            .map(|&kv| match kv {
                0 => mamba2::memory(&self.ssm),
                kv => LayerMemory::Attention {
                    width: kv * self.head_dim,
                },
            })
            .collect()
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let (ns, t, d) = (s.view.n_seqs, s.view.seq_len, self.n_embd);
        let mut x = embed(s)?;
        if self.embedding_scale != 0.0 {
            x = s.b.scale(x, self.embedding_scale)?;
        }
        for il in 0..self.n_head_kv.len() {
            let norm = s.w(&format!("blk.{il}.attn_norm.weight"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let y = if self.n_head_kv[il] == 0 {
                let h3 = s.b.reshape(h, &[ns, t, d])?;
                let y = mamba2::mixer(s, il, h3, &self.ssm)?;
                s.b.reshape(y, &[ns * t, d])?
            } else {
                let p = |n: &str| format!("blk.{il}.{n}.weight");
                let w = AttentionWeights {
                    q: s.w(&p("attn_q"))?,
                    k: s.w(&p("attn_k"))?,
                    v: s.w(&p("attn_v"))?,
                    o: s.w(&p("attn_output"))?,
                };
                let ap = AttentionParams {
                    n_head: self.n_head,
                    n_head_kv: self.n_head_kv[il],
                    head_dim: self.head_dim,
                    rope: self.rope,
                };
                let kv = s.kv(il)?;
                attention_scaled(&mut s.b, h, &w, &ap, s.pos, kv, self.attention_scale)?
            };
            let y = self.residual(s, y)?;
            x = s.b.add(x, y)?;
            let norm = s.w(&format!("blk.{il}.ffn_norm.weight"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let f = self.ffn(s, il, h)?;
            let f = self.residual(s, f)?;
            x = s.b.add(x, f)?;
        }
        let logits = head(s, x, self.eps)?;
        Ok(if self.logit_scale != 0.0 {
            s.b.scale(logits, 1.0 / self.logit_scale)?
        } else {
            logits
        })
    }
}
