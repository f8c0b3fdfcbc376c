//! The Mamba2 mixer (state space duality form): one projection gives z, the conv input
//! (x, B, C) and dt; A is a scalar per head, B and C are shared by groups of heads, and the
//! output goes through a gated, grouped RMS norm.
//!
//! `z, xBC, dt = in_proj(h)`; `xBC = silu(conv(xBC) + conv_b)`; `x, B, C = split(xBC)`;
//! `dt = softplus(dt + dt_b)`; `y = scan(x, dt, A, B, C) + D·x`;
//! `y = group_rms_norm(y · silu(z)) · norm`; `out(y)`.

use super::recurrent::RecurrentState;
use super::split_last;
use weft_graph::{GraphBuilder, Result, Tensor};

/// Shape of a Mamba2 mixer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mamba2Params {
    pub d_inner: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub n_head: usize,
    pub n_group: usize,
    pub eps: f32,
}

impl Mamba2Params {
    /// Channels of the conv input: x, B and C.
    pub fn conv_channels(&self) -> usize {
        self.d_inner + 2 * self.n_group * self.d_state
    }
    pub fn head_dim(&self) -> usize {
        self.d_inner / self.n_head
    }
}

/// Mixer weights: `in_proj [2·d_inner + 2·G·N + H, D]`, `conv [channels, K]`, `a`, `d` and
/// `dt_b` per head (`a` already `−exp(A_log)`), `norm [G, d_inner/G]` (optional),
/// `out_proj [D, d_inner]`.
#[derive(Clone, Copy, Debug)]
pub struct Mamba2Weights {
    pub in_proj: Tensor,
    pub conv: Tensor,
    pub conv_b: Tensor,
    pub dt_b: Tensor,
    pub a: Tensor,
    pub d: Tensor,
    pub norm: Option<Tensor>,
    pub out_proj: Tensor,
}

/// Runs the mixer on `x [S, T, D]`; returns `[S, T, D]`.
pub fn mamba2(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &Mamba2Weights,
    p: &Mamba2Params,
    state: &RecurrentState,
) -> Result<Tensor> {
    let [s, t] = [x.dims()[0], x.dims()[1]];
    let (di, n, h, g) = (p.d_inner, p.d_state, p.n_head, p.n_group);
    let ch = p.conv_channels();
    let proj = b.matmul(x, w.in_proj)?;
    let z = b.slice(proj, 2, 0, di)?;
    let xbc = b.slice(proj, 2, di, ch)?;
    let dt = split_last(b, proj, di + ch, h, &[s, t, h])?;
    let conv_state = state.load_conv(b, p.d_conv - 1, ch)?;
    let (xbc, new_conv) = b.ssm_conv(conv_state, xbc, w.conv)?;
    state.store_conv(b, new_conv)?;
    let xbc = b.add(xbc, w.conv_b)?;
    let xbc = b.silu(xbc)?;
    let xs = split_last(b, xbc, 0, di, &[s, t, h, p.head_dim()])?;
    let bm = split_last(b, xbc, di, g * n, &[s, t, g, n])?;
    let cm = split_last(b, xbc, di + g * n, g * n, &[s, t, g, n])?;
    let dt = b.add(dt, w.dt_b)?;
    let dt = b.softplus(dt)?;
    let a = b.reshape(w.a, &[h, 1])?;
    let ssm_state = state.load_ssm(b, &[s, h, p.head_dim(), n])?;
    let (y, new_ssm) = b.ssm_scan(ssm_state, xs, dt, a, bm, cm)?;
    state.store_ssm(b, new_ssm)?;
    let d = b.reshape(w.d, &[h, 1])?;
    let skip = b.mul(xs, d)?;
    let y = b.add(y, skip)?;
    let y = b.reshape(y, &[s, t, di])?;
    let gate = b.silu(z)?;
    let mut y = b.mul(y, gate)?;
    if let Some(norm) = w.norm {
        let yg = b.reshape(y, &[s, t, g, di / g])?;
        let yn = b.rms_norm(yg, p.eps)?;
        let yn = b.mul(yn, norm)?;
        y = b.reshape(yn, &[s, t, di])?;
    }
    b.matmul(y, w.out_proj)
}
