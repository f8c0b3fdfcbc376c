//! Layer blocks shared by the architectures. Each takes the weight tensors it needs (already
//! bound as graph externals) and the views of memory the ubatch uses, and records its nodes.

pub mod attention;
pub mod delta_net;
pub mod ffn;
pub mod mamba;
pub mod mamba2;
pub mod moe;
pub mod recurrent;
pub mod short_conv;

use weft_graph::{GraphBuilder, Result, Tensor};

/// `len` entries of the innermost dimension starting at `start`, as a dense tensor of `dims`.
pub fn split_last(
    b: &mut GraphBuilder,
    t: Tensor,
    start: usize,
    len: usize,
    dims: &[usize],
) -> Result<Tensor> {
    let s = b.slice(t, t.rank() - 1, start, len)?;
    let c = b.contiguous(s)?;
    b.reshape(c, dims)
}

/// `rms_norm(x) * w`.
pub fn rms_norm_weighted(b: &mut GraphBuilder, x: Tensor, w: Tensor, eps: f32) -> Result<Tensor> {
    let n = b.rms_norm(x, eps)?;
    b.mul(n, w)
}
