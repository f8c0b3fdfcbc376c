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

/// `len` entries of the innermost dimension starting at `start`, shaped `dims`. When `dims`
/// keeps `t`'s outer dimensions and splits the `len` entries into the rest, it is a view of `t`
/// in place (each row's entries stay contiguous; the ops that read such a view take its strides,
/// or legalization copies it); otherwise a dense copy.
pub fn split_last(
    b: &mut GraphBuilder,
    t: Tensor,
    start: usize,
    len: usize,
    dims: &[usize],
) -> Result<Tensor> {
    let outer = &t.dims()[..t.rank() - 1];
    let inner = dims.get(outer.len()..).unwrap_or(&[]);
    if dims.starts_with(outer) && inner.iter().product::<usize>() == len && !inner.is_empty() {
        let row = t.dims()[t.rank() - 1];
        // outer dimensions step over whole rows of `t`, inner ones within the entries
        let mut strides = vec![0; dims.len()];
        let mut step = row;
        for i in (0..outer.len()).rev() {
            strides[i] = step;
            step *= outer[i];
        }
        let mut step = 1;
        for i in (outer.len()..dims.len()).rev() {
            strides[i] = step;
            step *= dims[i];
        }
        if let Ok(v) = b.view(t, dims, &strides, start) {
            return Ok(v);
        }
    }
    let s = b.slice(t, t.rank() - 1, start, len)?;
    let c = b.contiguous(s)?;
    b.reshape(c, dims)
}

/// `rms_norm(x) * w`.
pub fn rms_norm_weighted(b: &mut GraphBuilder, x: Tensor, w: Tensor, eps: f32) -> Result<Tensor> {
    let n = b.rms_norm(x, eps)?;
    b.mul(n, w)
}
