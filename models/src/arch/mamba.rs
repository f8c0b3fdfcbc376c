//! Mamba (v1): a stack of selective-SSM mixers, each pre-normed and added to the residual.

use super::{Architecture, HParams, embed, head};
use crate::blocks::mamba::{MambaParams, MambaWeights, mamba};
use crate::blocks::rms_norm_weighted;
use crate::error::Result;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::Tensor;

#[derive(Debug)]
pub struct Mamba {
    n_layer: usize,
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    p: MambaParams,
}

impl Mamba {
    pub(crate) fn new(h: &HParams) -> Result<Mamba> {
        let eps = h.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        Ok(Mamba {
            n_layer: h.usize("block_count")?,
            n_embd: h.usize("embedding_length")?,
            n_vocab: h.n_vocab()?,
            eps,
            p: MambaParams {
                d_inner: h.usize("ssm.inner_size")?,
                d_state: h.usize("ssm.state_size")?,
                d_conv: h.usize("ssm.conv_kernel")?,
                dt_rank: h.usize("ssm.time_step_rank")?,
                dt_b_c_rms: if h.bool_or("ssm.dt_b_c_rms", false)? {
                    Some(eps)
                } else {
                    None
                },
            },
        })
    }
}

impl Architecture for Mamba {
    fn name(&self) -> &'static str {
        "mamba"
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn layers(&self) -> Vec<LayerMemory> {
        let p = self.p;
        vec![
            LayerMemory::Recurrent {
                conv: (p.d_conv - 1) * p.d_inner,
                ssm: p.d_inner * p.d_state
            };
            self.n_layer
        ]
    }
    fn build(&self, s: &mut Step) -> Result<Tensor> {
        let (ns, t) = (s.view.n_seqs, s.view.seq_len);
        let x = embed(s)?;
        let mut x = s.b.reshape(x, &[ns, t, self.n_embd])?;
        for il in 0..self.n_layer {
            let p = |n: &str| format!("blk.{il}.{n}");
            let w = MambaWeights {
                in_proj: s.w(&p("ssm_in.weight"))?,
                conv: s.w(&p("ssm_conv1d.weight"))?,
                conv_b: s.w(&p("ssm_conv1d.bias"))?,
                x_proj: s.w(&p("ssm_x.weight"))?,
                dt_proj: s.w(&p("ssm_dt.weight"))?,
                dt_b: s.w(&p("ssm_dt.bias"))?,
                a: s.w(&p("ssm_a"))?,
                d: s.w(&p("ssm_d"))?,
                out_proj: s.w(&p("ssm_out.weight"))?,
            };
            let norm = s.w(&p("attn_norm.weight"))?;
            let state = s.state(il)?;
            let h = rms_norm_weighted(&mut s.b, x, norm, self.eps)?;
            let y = mamba(&mut s.b, h, &w, &self.p, &state)?;
            x = s.b.add(x, y)?;
        }
        let x = s.b.reshape(x, &[ns * t, self.n_embd])?;
        head(s, x, self.eps)
    }
}
