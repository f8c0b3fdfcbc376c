//! Jamba: Mamba (v1) and attention layers interleaved, each followed by a dense SwiGLU
//! feed-forward or a mixture of experts.
//!
//! A layer is Mamba when its entry of `jamba.attention.head_count_kv` (an array) is 0, attention
//! otherwise; attention has no positional encoding at all. The Mamba mixer RMS-normalises dt,
//! B and C with weights (`ssm_dt_norm`, `ssm_b_norm`, `ssm_c_norm`). A layer is MoE when the
//! file has its router (`ffn_gate_inp`): softmax over the experts, the top `k` probabilities
//! used as they are (no renormalisation).

use super::{Architecture, HParams, embed, head, swiglu_residual};
use crate::blocks::attention::{AttentionParams, AttentionWeights, attention};
use crate::blocks::mamba::{DtBcNorms, MambaParams, MambaWeights, mamba_with_norms};
use crate::blocks::moe::{ExpertAct, Gating, MoeParams, MoeWeights, moe};
use crate::blocks::rms_norm_weighted;
use crate::error::{ModelError, Result};
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::Tensor;

#[derive(Debug)]
pub struct Jamba {
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    /// KV heads per layer; 0 marks a Mamba layer.
    n_head_kv: Vec<usize>,
    n_head: usize,
    head_dim: usize,
    ssm: MambaParams,
    moe: MoeParams,
}

/// A per-layer hyperparameter: `{arch}.{key}` as an array of `n_layer` integers, or one
/// integer (or `default`) for every layer.
pub(crate) fn per_layer(
    h: &HParams,
    key: &str,
    n_layer: usize,
    default: usize,
) -> Result<Vec<usize>> {
    let full = format!("{}.{key}", h.arch);
    if let Ok(Some(a)) = h.gguf.get_array_opt(&full) {
        let v = a
            .to_i64s()
            .ok_or_else(|| ModelError::Config(format!("{full} must hold integers")))?;
        if v.len() != n_layer {
            return Err(ModelError::Config(format!(
                "{full} has {} entries for {n_layer} layers",
                v.len()
            )));
        }
        return Ok(v.into_iter().map(|x| x.max(0) as usize).collect());
    }
    Ok(vec![h.usize_or(key, default)?; n_layer])
}

impl Jamba {
    pub(crate) fn new(h: &HParams) -> Result<Jamba> {
        let n_layer = h.usize("block_count")?;
        let n_embd = h.usize("embedding_length")?;
        let n_head = h.usize("attention.head_count")?;
        let eps = h.f32_or("attention.layer_norm_rms_epsilon", 1e-6)?;
        let scale = h.f32_or("expert_weights_scale", 0.0)?;
        Ok(Jamba {
            n_embd,
            n_vocab: h.n_vocab()?,
            eps,
            n_head_kv: per_layer(h, "attention.head_count_kv", n_layer, n_head)?,
            n_head,
            head_dim: h.usize_or("attention.key_length", n_embd / n_head.max(1))?,
            ssm: MambaParams {
                d_inner: h.usize("ssm.inner_size")?,
                d_state: h.usize("ssm.state_size")?,
                d_conv: h.usize("ssm.conv_kernel")?,
                dt_rank: h.usize("ssm.time_step_rank")?,
                dt_b_c_rms: None,
            },
            moe: MoeParams {
                n_expert_used: h.usize_or("expert_used_count", 0)?,
                gating: Gating::Softmax,
                norm_weights: h.bool_or("expert_weights_norm", false)?,
                weights_scale: if scale == 0.0 { 1.0 } else { scale },
                act: ExpertAct::SwiGlu,
            },
        })
    }

    fn attn(&self, il: usize) -> AttentionParams {
        AttentionParams {
            n_head: self.n_head,
            n_head_kv: self.n_head_kv[il],
            head_dim: self.head_dim,
            rope: None,
        }
    }

    fn mixer(&self, s: &mut Step, il: usize, h: Tensor) -> Result<Tensor> {
        let n = |k: &str| format!("blk.{il}.{k}");
        let w = MambaWeights {
            in_proj: s.w(&n("ssm_in.weight"))?,
            conv: s.w(&n("ssm_conv1d.weight"))?,
            conv_b: s.w(&n("ssm_conv1d.bias"))?,
            x_proj: s.w(&n("ssm_x.weight"))?,
            dt_proj: s.w(&n("ssm_dt.weight"))?,
            dt_b: s.w(&n("ssm_dt.bias"))?,
            a: s.w(&n("ssm_a"))?,
            d: s.w(&n("ssm_d"))?,
            out_proj: s.w(&n("ssm_out.weight"))?,
        };
        let norms = match (
            s.w_opt(&n("ssm_dt_norm.weight"))?,
            s.w_opt(&n("ssm_b_norm.weight"))?,
            s.w_opt(&n("ssm_c_norm.weight"))?,
        ) {
            (Some(dt), Some(b), Some(c)) => Some(DtBcNorms {
                dt,
                b,
                c,
                eps: self.eps,
            }),
            _ => None,
        };
        let (ns, t) = (s.view.n_seqs, s.view.seq_len);
        let h3 = s.b.reshape(h, &[ns, t, self.n_embd])?;
        let state = s.state(il)?;
        let y = mamba_with_norms(&mut s.b, h3, &w, norms.as_ref(), &self.ssm, &state)?;
        Ok(s.b.reshape(y, &[ns * t, self.n_embd])?)
    }
}

/// Layer `il`'s routed experts (SwiGLU), bound by their GGUF names, if it has a router.
pub(crate) fn moe_weights(s: &mut Step, il: usize) -> Result<Option<MoeWeights>> {
    let n = |k: &str| format!("blk.{il}.{k}.weight");
    let Some(router) = s.w_opt(&n("ffn_gate_inp"))? else {
        return Ok(None);
    };
    let selection_bias = match s.w_opt(&format!("blk.{il}.exp_probs_b.bias"))? {
        Some(b) => Some(b),
        None => s.w_opt(&format!("blk.{il}.exp_probs_b"))?,
    };
    Ok(Some(MoeWeights {
        router,
        selection_bias,
        gate: s.w_opt(&n("ffn_gate_exps"))?,
        up: s.w(&n("ffn_up_exps"))?,
        down: s.w(&n("ffn_down_exps"))?,
        shared: None,
    }))
}

impl Architecture for Jamba {
    fn name(&self) -> &'static str {
        "jamba"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        let p = self.ssm;
        self.n_head_kv
            .iter()
            .map(|&kv| match kv {
                0 => LayerMemory::Recurrent {
                    conv: (p.d_conv - 1) * p.d_inner,
                    ssm: p.d_inner * p.d_state,
                },
                kv => LayerMemory::Attention {
                    width: kv * self.head_dim,
                },
            })
            .collect()
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let mut x = embed(s)?;
        for il in 0..self.n_head_kv.len() {
            let norm = s.w(&format!("blk.{il}.attn_norm.weight"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let y = if self.n_head_kv[il] == 0 {
                self.mixer(s, il, h)?
            } else {
                let p = |n: &str| format!("blk.{il}.{n}.weight");
                let w = AttentionWeights {
                    q: s.w(&p("attn_q"))?,
                    k: s.w(&p("attn_k"))?,
                    v: s.w(&p("attn_v"))?,
                    o: s.w(&p("attn_output"))?,
                };
                let kv = s.kv(il)?;
                attention(&mut s.b, h, &w, &self.attn(il), s.pos, kv)?
            };
            x = s.b.add(x, y)?;
            let norm = s.w(&format!("blk.{il}.ffn_norm.weight"))?;
            x = match moe_weights(s, il)? {
                Some(w) => {
                    let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
                    let f = moe(&mut s.b, h, &w, &self.moe)?;
                    s.b.add(x, f)?
                }
                None => swiglu_residual(s, il, x, norm, self.eps)?,
            };
        }
        head(s, x, self.eps)
    }
}
