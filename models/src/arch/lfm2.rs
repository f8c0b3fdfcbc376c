//! LFM2: gated short-convolution layers and attention layers (per-head q/k RMS norms, NeoX
//! rope), each pre-normed and added to the residual, then a SwiGLU feed-forward. The final
//! norm is `token_embd_norm` and the LM head is tied to the embeddings.
//!
//! A layer is attention when `attention.head_count_kv` (an array, one entry per layer) is
//! non-zero for it.

use super::qwen35::attention_layer;
use super::{Architecture, HParams, embed};
use crate::blocks::attention::AttentionParams;
use crate::blocks::rms_norm_weighted;
use crate::blocks::short_conv::{ShortConvWeights, short_conv};
use crate::error::{ModelError, Result};
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::{RopeMode, RopeParams, Tensor};

#[derive(Debug)]
pub struct Lfm2 {
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    /// KV heads per layer (0: a short-conv layer).
    n_head_kv: Vec<usize>,
    /// Taps of the short convolution.
    l_cache: usize,
    attn: AttentionParams,
}

impl Lfm2 {
    pub(crate) fn new(h: &HParams) -> Result<Lfm2> {
        let n_layer = h.usize("block_count")?;
        let n_embd = h.usize("embedding_length")?;
        let n_head = h.usize("attention.head_count")?;
        let head_dim = h.usize_or("attention.key_length", n_embd / n_head.max(1))?;
        let key = format!("{}.attention.head_count_kv", h.arch);
        let n_head_kv = match h.gguf.get_array_opt(&key) {
            Ok(Some(a)) => a
                .to_i64s()
                .ok_or_else(|| ModelError::Config(format!("{key} must hold integers")))?
                .into_iter()
                .map(|x| x.max(0) as usize)
                .collect(),
            _ => vec![h.usize_or("attention.head_count_kv", n_head)?; n_layer],
        };
        if n_head_kv.len() != n_layer {
            return Err(ModelError::Config(format!(
                "{key} has {} entries for {n_layer} layers",
                n_head_kv.len()
            )));
        }
        let l_cache = h.usize("shortconv.l_cache")?;
        if l_cache < 2 {
            return Err(ModelError::Config(format!(
                "shortconv.l_cache = {l_cache} must be at least 2"
            )));
        }
        Ok(Lfm2 {
            n_embd,
            n_vocab: h.n_vocab()?,
            eps: h.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            n_head_kv,
            l_cache,
            attn: AttentionParams {
                n_head,
                n_head_kv: 0,
                head_dim,
                rope: Some(RopeParams {
                    n_dims: h.usize_or("rope.dimension_count", head_dim)?,
                    mode: RopeMode::Neox,
                    freq_base: h.f32_or("rope.freq_base", 10000.0)?,
                    freq_scale: 1.0,
                }),
            },
        })
    }
}

impl Architecture for Lfm2 {
    fn name(&self) -> &'static str {
        "lfm2"
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
            .map(|&kv| {
                if kv > 0 {
                    LayerMemory::Attention {
                        width: kv * self.attn.head_dim,
                    }
                } else {
                    LayerMemory::Recurrent {
                        conv: (self.l_cache - 1) * self.n_embd,
                        ssm: 0,
                    }
                }
            })
            .collect()
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let (ns, t) = (s.view.n_seqs, s.view.seq_len);
        let d = self.n_embd;
        let mut x = embed(s)?;
        for (il, &kv) in self.n_head_kv.iter().enumerate() {
            let p = |n: &str| format!("blk.{il}.{n}.weight");
            let norm = s.w(&p("attn_norm"))?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let y = if kv > 0 {
                let ap = AttentionParams {
                    n_head_kv: kv,
                    ..self.attn
                };
                attention_layer(s, il, h, &ap, self.eps, true, false)?
            } else {
                let w = ShortConvWeights {
                    in_proj: s.w(&p("shortconv.in_proj"))?,
                    conv: s.w(&p("shortconv.conv"))?,
                    conv_b: s.w_opt(&format!("blk.{il}.shortconv.conv.bias"))?,
                    out_proj: s.w(&p("shortconv.out_proj"))?,
                };
                let state = s.state(il)?;
                let h3 = s.b.reshape(h, &[ns, t, d])?;
                let y = short_conv(&mut s.b, h3, &w, &state)?;
                s.b.reshape(y, &[ns * t, d])?
            };
            x = s.b.add(x, y)?;
            let norm = s.w(&p("ffn_norm"))?;
            x = super::swiglu_residual(s, il, x, norm, self.eps)?;
        }
        let x = s.select_outputs(x)?;
        let nw = s.w("token_embd_norm.weight")?;
        let h = rms_norm_weighted(&mut s.b, x, nw, self.eps)?;
        let out = match s.w_opt("output.weight")? {
            Some(w) => w,
            None => s.w("token_embd.weight")?,
        };
        Ok(s.b.matmul(h, out)?)
    }
}
