//! Nemotron-H MoE (`nemotron_h_moe`): every layer is one pre-normed sub-block added to the
//! residual, either a Mamba2 mixer, attention (no positional encoding) or a feed-forward.
//!
//! The per-layer arrays `attention.head_count_kv` and `feed_forward_length` say which: both 0
//! is Mamba2, KV heads without a feed-forward is attention, a feed-forward length marks an FFN
//! layer. An FFN layer with a router is a mixture of squared-ReLU experts (sigmoid router, the
//! top `k` chosen on `probs + exp_probs_b`, weights renormalised when `expert_weights_norm`,
//! scaled by `expert_weights_scale`) plus a shared squared-ReLU expert; without a router it is
//! a dense `down(relu(up(x))²)`.

use super::jamba::{moe_weights, per_layer};
use super::{Architecture, HParams, embed, head, mamba2};
use crate::blocks::attention::{AttentionParams, AttentionWeights, attention};
use crate::blocks::mamba2::Mamba2Params;
use crate::blocks::moe::{ExpertAct, Gating, MoeParams, SharedExpert, moe};
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::{Tensor, UnaryOp};

/// What one layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mamba2,
    Attention { n_head_kv: usize },
    Ffn,
}

#[derive(Debug)]
pub struct NemotronH {
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    kinds: Vec<Kind>,
    n_head: usize,
    head_dim: usize,
    ssm: Mamba2Params,
    moe: MoeParams,
}

impl NemotronH {
    pub(crate) fn new(h: &HParams) -> Result<NemotronH> {
        let n_layer = h.usize("block_count")?;
        let n_embd = h.usize("embedding_length")?;
        let n_head = h.usize("attention.head_count")?;
        let eps = match h.f32_or("attention.layer_norm_rms_epsilon", 0.0)? {
            0.0 => h.f32_or("attention.layer_norm_epsilon", 1e-5)?,
            e => e,
        };
        let kv = per_layer(h, "attention.head_count_kv", n_layer, 0)?;
        let ff = per_layer(h, "feed_forward_length", n_layer, 0)?;
        let kinds = kv
            .iter()
            .zip(&ff)
            .map(|(&kv, &ff)| match (kv, ff) {
                (0, 0) => Kind::Mamba2,
                (kv, 0) => Kind::Attention { n_head_kv: kv },
                _ => Kind::Ffn,
            })
            .collect();
        let scale = h.f32_or("expert_weights_scale", 0.0)?;
        Ok(NemotronH {
            n_embd,
            n_vocab: h.n_vocab()?,
            eps,
            kinds,
            n_head,
            head_dim: h.usize_or("attention.key_length", n_embd / n_head.max(1))?,
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
                gating: Gating::Sigmoid,
                norm_weights: h.bool_or("expert_weights_norm", false)?,
                weights_scale: if scale == 0.0 { 1.0 } else { scale },
                act: ExpertAct::SqrRelu,
            },
        })
    }

    fn ffn(&self, s: &mut Step, il: usize, h: Tensor) -> Result<Tensor> {
        let n = |k: &str| format!("blk.{il}.{k}.weight");
        if let Some(mut w) = moe_weights(s, il)? {
            if let Some(up) = s.w_opt(&n("ffn_up_shexp"))? {
                w.shared = Some(SharedExpert {
                    gate: None,
                    up,
                    down: s.w(&n("ffn_down_shexp"))?,
                    gate_inp: None,
                });
            }
            return Ok(moe(&mut s.b, h, &w, &self.moe)?);
        }
        let up = s.w(&n("ffn_up"))?;
        let down = s.w(&n("ffn_down"))?;
        let u = s.b.matmul(h, up)?;
        let u = s.b.unary(UnaryOp::SqrRelu, u)?;
        Ok(s.b.matmul(u, down)?)
    }
}

impl Architecture for NemotronH {
    fn name(&self) -> &'static str {
        "nemotron_h_moe"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        self.kinds
            .iter()
            .map(|k| match *k {
                Kind::Mamba2 => mamba2::memory(&self.ssm),
                Kind::Attention { n_head_kv } => LayerMemory::Attention {
                    width: n_head_kv * self.head_dim,
                },
                Kind::Ffn => LayerMemory::None,
            })
            .collect()
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let (ns, t, d) = (s.view.n_seqs, s.view.seq_len, self.n_embd);
        let mut x = embed(s)?;
        for (il, kind) in self.kinds.iter().enumerate() {
            let norm = s.w(&format!("blk.{il}.attn_norm.weight"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let y = match *kind {
                Kind::Mamba2 => {
                    let h3 = s.b.reshape(h, &[ns, t, d])?;
                    let y = mamba2::mixer(s, il, h3, &self.ssm)?;
                    s.b.reshape(y, &[ns * t, d])?
                }
                Kind::Attention { n_head_kv } => {
                    let p = |n: &str| format!("blk.{il}.{n}.weight");
                    let w = AttentionWeights {
                        q: s.w(&p("attn_q"))?,
                        k: s.w(&p("attn_k"))?,
                        v: s.w(&p("attn_v"))?,
                        o: s.w(&p("attn_output"))?,
                    };
                    let ap = AttentionParams {
                        n_head: self.n_head,
                        n_head_kv,
                        head_dim: self.head_dim,
                        rope: None,
                    };
                    let kv = s.kv(il)?;
                    attention(&mut s.b, h, &w, &ap, s.pos, kv)?
                }
                Kind::Ffn => self.ffn(s, il, h)?,
            };
            x = s.b.add(x, y)?;
        }
        head(s, x, self.eps)
    }
}
