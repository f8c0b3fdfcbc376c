//! Qwen3.5 (dense): gated DeltaNet layers and gated full-attention layers, each pre-normed and
//! added to the residual, then a SwiGLU feed-forward.
//!
//! The full-attention layers project queries together with a per-head output gate
//! (`[q, gate]` per head), RMS-normalise q and k per head, rotate a part of each head
//! (M-RoPE; for text every position component is the token's position, so it is NeoX rope on
//! the first `rope.dimension_count` dims) and multiply the attention output by `sigmoid(gate)`.
//! Norm weights in the file already hold the `1 + w` of the zero-centred norms.

use super::{Architecture, HParams, embed, head};
use crate::blocks::attention::{AttentionParams, KvSource};
use crate::blocks::delta_net::{BetaAlpha, DeltaNetParams, DeltaNetWeights, HeadOrder, delta_net};
use crate::blocks::rms_norm_weighted;
use crate::error::{ModelError, Result};
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::{RopeMode, RopeParams, Tensor};

#[derive(Debug)]
pub struct Qwen35 {
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    /// Per layer: a DeltaNet layer (true) or full attention (false).
    recurrent: Vec<bool>,
    attn: AttentionParams,
    delta: DeltaNetParams,
}

/// Which layers are recurrent: `attention.recurrent_layers`, else every layer but each
/// `full_attention_interval`-th.
pub(crate) fn recurrent_layers(h: &HParams, n_layer: usize, interval: usize) -> Result<Vec<bool>> {
    let key = format!("{}.attention.recurrent_layers", h.arch);
    if let Some(a) = h.gguf.get_array_opt(&key)? {
        let v: Vec<bool> = match a {
            crate::gguf::Array::Bool(v) => v.clone(),
            other => other
                .to_i64s()
                .ok_or_else(|| ModelError::Config(format!("{key} must be bools")))?
                .into_iter()
                .map(|x| x != 0)
                .collect(),
        };
        if v.len() != n_layer {
            return Err(ModelError::Config(format!(
                "{key} has {} entries for {n_layer} layers",
                v.len()
            )));
        }
        return Ok(v);
    }
    let n = h.usize_or("full_attention_interval", interval)?.max(1);
    Ok((0..n_layer).map(|i| (i + 1) % n != 0).collect())
}

/// Attention and DeltaNet shapes shared by Qwen3.5 and Qwen3-Next.
pub(crate) fn qwen_params(
    h: &HParams,
    order: HeadOrder,
) -> Result<(AttentionParams, DeltaNetParams)> {
    let n_embd = h.usize("embedding_length")?;
    let n_head = h.usize("attention.head_count")?;
    let head_dim = h.usize_or("attention.key_length", n_embd / n_head.max(1))?;
    let n_v_heads = h.usize("ssm.time_step_rank")?;
    let eps = h.f32_or("attention.layer_norm_rms_epsilon", 1e-6)?;
    let attn = AttentionParams {
        n_head,
        n_head_kv: h.usize_or("attention.head_count_kv", n_head)?,
        head_dim,
        rope: Some(RopeParams {
            n_dims: h.usize_or("rope.dimension_count", head_dim)?,
            mode: RopeMode::Neox,
            freq_base: h.f32_or("rope.freq_base", 10000.0)?,
            freq_scale: 1.0,
        }),
    };
    let delta = DeltaNetParams {
        n_k_heads: h.usize("ssm.group_count")?,
        n_v_heads,
        head_k_dim: h.usize("ssm.state_size")?,
        head_v_dim: h.usize("ssm.inner_size")? / n_v_heads.max(1),
        d_conv: h.usize("ssm.conv_kernel")?,
        eps,
        order,
    };
    if delta.n_k_heads == 0 || n_v_heads % delta.n_k_heads != 0 {
        return Err(ModelError::Config(format!(
            "{} value heads are not a multiple of {} key heads",
            n_v_heads, delta.n_k_heads
        )));
    }
    Ok((attn, delta))
}

/// Per-layer memory of a Qwen hybrid.
pub(crate) fn qwen_layers(
    recurrent: &[bool],
    attn: &AttentionParams,
    delta: &DeltaNetParams,
) -> Vec<LayerMemory> {
    recurrent
        .iter()
        .map(|&r| {
            if r {
                LayerMemory::Recurrent {
                    conv: (delta.d_conv - 1) * delta.conv_channels(),
                    ssm: delta.state_size(),
                }
            } else {
                LayerMemory::Attention {
                    width: attn.n_head_kv * attn.head_dim,
                }
            }
        })
        .collect()
}

/// Attention of layer `il` over `x [T, D]` through its KV cache, with per-head RMS norms of q
/// and k (`attn_q_norm`, `attn_k_norm`, when `qk_norm`) and, when `gated`, a per-head output
/// gate projected with the queries (`attn_q` rows `[q, gate]` per head).
pub(crate) fn attention_layer(
    s: &mut Step,
    il: usize,
    x: Tensor,
    p: &AttentionParams,
    eps: f32,
    qk_norm: bool,
    gated: bool,
) -> Result<Tensor> {
    let n = |k: &str| format!("blk.{il}.{k}.weight");
    let (wq, wk, wv, wo) = (
        s.w(&n("attn_q"))?,
        s.w(&n("attn_k"))?,
        s.w(&n("attn_v"))?,
        s.w(&n("attn_output"))?,
    );
    let norms = if qk_norm {
        Some((s.w(&n("attn_q_norm"))?, s.w(&n("attn_k_norm"))?))
    } else {
        None
    };
    let kv = s.kv(il)?;
    let b = &mut s.b;
    let t = x.dims()[0];
    let (h, hkv, d) = (p.n_head, p.n_head_kv, p.head_dim);
    let qf = b.matmul(x, wq)?;
    let (mut q, gate) = if gated {
        // (strided views of each head's halves: the q norm reads its rows in place; whatever
        // needs them dense gets a copy from legalization)
        let qf = b.reshape(qf, &[t, h, 2 * d])?;
        (b.slice(qf, 2, 0, d)?, Some(b.slice(qf, 2, d, d)?))
    } else {
        (b.reshape(qf, &[t, h, d])?, None)
    };
    let k = b.matmul(x, wk)?;
    let v = b.matmul(x, wv)?;
    let mut k = b.reshape(k, &[t, hkv, d])?;
    if let Some((qn, kn)) = norms {
        q = rms_norm_weighted(b, q, qn, eps)?;
        k = rms_norm_weighted(b, k, kn, eps)?;
    }
    if let Some(r) = p.rope {
        q = b.rope(q, s.pos, r)?;
        k = b.rope(k, s.pos, r)?;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let out = match kv {
        KvSource::Local => {
            let v = b.reshape(v, &[t, hkv, d])?;
            b.attention(q, k, v, None, gate, scale, true)?
        }
        KvSource::Cache {
            k: kc,
            v: vc,
            write,
            n_kv,
            mask,
        } => {
            let k2 = b.reshape(k, &[t, hkv * d])?;
            let kc = b.store_rows(kc, k2, write)?;
            let vc = b.store_rows(vc, v, write)?;
            let ks = b.slice(kc, 0, 0, n_kv)?;
            let vs = b.slice(vc, 0, 0, n_kv)?;
            let ks = b.reshape(ks, &[n_kv, hkv, d])?;
            let vs = b.reshape(vs, &[n_kv, hkv, d])?;
            b.attention(q, ks, vs, Some(mask), gate, scale, false)?
        }
    };
    let out = b.reshape(out, &[t, h * d])?;
    Ok(b.matmul(out, wo)?)
}

/// The DeltaNet mixer of layer `il` on `x [T, D]` (reshaped per sequence inside).
pub(crate) fn delta_layer(
    s: &mut Step,
    il: usize,
    x: Tensor,
    p: &DeltaNetParams,
    grouped_ba: bool,
) -> Result<Tensor> {
    let n = |k: &str| format!("blk.{il}.{k}");
    let ba = if grouped_ba {
        BetaAlpha::Grouped(s.w(&n("ssm_ba.weight"))?)
    } else {
        BetaAlpha::Separate {
            beta: s.w(&n("ssm_beta.weight"))?,
            alpha: s.w(&n("ssm_alpha.weight"))?,
        }
    };
    let w = DeltaNetWeights {
        qkv: s.w(&n("attn_qkv.weight"))?,
        z: s.w(&n("attn_gate.weight"))?,
        ba,
        conv: s.w(&n("ssm_conv1d.weight"))?,
        dt_b: s.w(&n("ssm_dt.bias"))?,
        a: s.w(&n("ssm_a"))?,
        norm: s.w(&n("ssm_norm.weight"))?,
        out: s.w(&n("ssm_out.weight"))?,
    };
    let state = s.state(il)?;
    let (ns, t) = (s.view.n_seqs, s.view.seq_len);
    let d = x.dims()[1];
    let x3 = s.b.reshape(x, &[ns, t, d])?;
    let y = delta_net(&mut s.b, x3, &w, p, &state)?;
    Ok(s.b.reshape(y, &[ns * t, d])?)
}

impl Qwen35 {
    pub(crate) fn new(h: &HParams) -> Result<Qwen35> {
        let n_layer = h.usize("block_count")?;
        let (attn, delta) = qwen_params(h, HeadOrder::Tiled)?;
        Ok(Qwen35 {
            n_embd: h.usize("embedding_length")?,
            n_vocab: h.n_vocab()?,
            eps: delta.eps,
            recurrent: recurrent_layers(h, n_layer, 4)?,
            attn,
            delta,
        })
    }
}

impl Architecture for Qwen35 {
    fn name(&self) -> &'static str {
        "qwen35"
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
                delta_layer(s, il, h, &self.delta, false)?
            } else {
                attention_layer(s, il, h, &self.attn, self.eps, true, true)?
            };
            x = s.b.add(x, a)?;
            let norm = s.w(&p("post_attention_norm"))?;
            x = super::swiglu_residual(s, il, x, norm, self.eps)?;
        }
        head(s, x, self.eps)
    }
}
