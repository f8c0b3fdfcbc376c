//! LFM2's gated short convolution.
//!
//! `B, C, x = in_proj(h)`; `y = C · conv(B · x)` (causal depthwise, `L` taps, the last `L − 1`
//! inputs of each sequence kept as its conv state); `out_proj(y)`.

use super::recurrent::RecurrentState;
use weft_graph::{GraphBuilder, Result, Tensor};

/// Mixer weights: `in_proj [3·D, D]`, `conv [D, L]` (optional bias `[D]`), `out_proj [D, D]`.
#[derive(Clone, Copy, Debug)]
pub struct ShortConvWeights {
    pub in_proj: Tensor,
    pub conv: Tensor,
    pub conv_b: Option<Tensor>,
    pub out_proj: Tensor,
}

/// Runs the mixer on `x [S, T, D]`; returns `[S, T, D]`. The state keeps `L − 1` columns of
/// `D` channels per sequence.
pub fn short_conv(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &ShortConvWeights,
    state: &RecurrentState,
) -> Result<Tensor> {
    let d = w.conv.dims()[0];
    let taps = w.conv.dims()[1];
    let bcx = b.matmul(x, w.in_proj)?;
    let bg = b.slice(bcx, 2, 0, d)?;
    let cg = b.slice(bcx, 2, d, d)?;
    let xs = b.slice(bcx, 2, 2 * d, d)?;
    let bx = b.mul(bg, xs)?;
    let conv_state = state.load_conv(b, taps - 1, d)?;
    let (y, new_conv) = b.ssm_conv(conv_state, bx, w.conv)?;
    state.store_conv(b, new_conv)?;
    let y = match w.conv_b {
        Some(cb) => b.add(y, cb)?,
        None => y,
    };
    let y = b.mul(cg, y)?;
    b.matmul(y, w.out_proj)
}
