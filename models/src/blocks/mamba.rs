//! The Mamba (selective state space) mixer, Mamba1 form.
//!
//! `x, z = in_proj(h)`; `x = silu(conv(x) + conv_b)`; `dt, B, C = x_proj(x)`;
//! `dt = softplus(dt_proj(dt) + dt_b)`; `y = scan(x, dt, A, B, C) + D·x`; `out(y · silu(z))`.

use super::recurrent::RecurrentState;
use super::split_last;
use weft_graph::{GraphBuilder, Result, Tensor};

/// Shape of a Mamba1 mixer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MambaParams {
    pub d_inner: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub dt_rank: usize,
    /// RMS-normalise dt, B and C (without weights) with this epsilon (Falcon-Mamba).
    pub dt_b_c_rms: Option<f32>,
}

/// Mixer weights: projections `[out, in]`, `conv [d_inner, d_conv]`, `a [d_inner, d_state]`
/// (already `−exp(A_log)`), vectors `[d_inner]`.
#[derive(Clone, Copy, Debug)]
pub struct MambaWeights {
    pub in_proj: Tensor,
    pub conv: Tensor,
    pub conv_b: Tensor,
    pub x_proj: Tensor,
    pub dt_proj: Tensor,
    pub dt_b: Tensor,
    pub a: Tensor,
    pub d: Tensor,
    pub out_proj: Tensor,
}

/// Weights of RMS norms on dt `[dt_rank]`, B and C `[d_state]` (Jamba's `ssm_dt_norm`,
/// `ssm_b_norm`, `ssm_c_norm`), applied right after the `x_proj` split.
#[derive(Clone, Copy, Debug)]
pub struct DtBcNorms {
    pub dt: Tensor,
    pub b: Tensor,
    pub c: Tensor,
    pub eps: f32,
}

/// Runs the mixer on `x [S, T, D]` (every sequence with the same number of new tokens),
/// carrying each sequence's state through `state`. Returns `[S, T, D]`.
pub fn mamba(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &MambaWeights,
    p: &MambaParams,
    state: &RecurrentState,
) -> Result<Tensor> {
    mamba_with_norms(b, x, w, None, p, state)
}

/// [`mamba`] with weighted RMS norms on dt, B and C (they replace `p.dt_b_c_rms`).
pub fn mamba_with_norms(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &MambaWeights,
    norms: Option<&DtBcNorms>,
    p: &MambaParams,
    state: &RecurrentState,
) -> Result<Tensor> {
    let [s, t] = [x.dims()[0], x.dims()[1]];
    let (di, n, r) = (p.d_inner, p.d_state, p.dt_rank);
    let xz = b.matmul(x, w.in_proj)?;
    let xi = b.slice(xz, 2, 0, di)?;
    let z = b.slice(xz, 2, di, di)?;
    let conv_state = state.load_conv(b, p.d_conv - 1, di)?;
    let (xc, new_conv) = b.ssm_conv(conv_state, xi, w.conv)?;
    state.store_conv(b, new_conv)?;
    let xc = b.add(xc, w.conv_b)?;
    let xc = b.silu(xc)?;
    let dbc = b.matmul(xc, w.x_proj)?;
    let dt = split_last(b, dbc, 0, r, &[s, t, r])?;
    let bm = split_last(b, dbc, r, n, &[s, t, 1, n])?;
    let cm = split_last(b, dbc, r + n, n, &[s, t, 1, n])?;
    let (dt, bm, cm) = match (norms, p.dt_b_c_rms) {
        (Some(nw), _) => (
            super::rms_norm_weighted(b, dt, nw.dt, nw.eps)?,
            super::rms_norm_weighted(b, bm, nw.b, nw.eps)?,
            super::rms_norm_weighted(b, cm, nw.c, nw.eps)?,
        ),
        (None, Some(eps)) => (
            b.rms_norm(dt, eps)?,
            b.rms_norm(bm, eps)?,
            b.rms_norm(cm, eps)?,
        ),
        (None, None) => (dt, bm, cm),
    };
    let dt = b.matmul(dt, w.dt_proj)?;
    let dt = b.add(dt, w.dt_b)?;
    let dt = b.softplus(dt)?;
    let ssm_state = state.load_ssm(b, &[s, di, 1, n])?;
    let x4 = b.reshape(xc, &[s, t, di, 1])?;
    let (y, new_ssm) = b.ssm_scan(ssm_state, x4, dt, w.a, bm, cm)?;
    state.store_ssm(b, new_ssm)?;
    let y = b.reshape(y, &[s, t, di])?;
    let skip = b.mul(xc, w.d)?;
    let y = b.add(y, skip)?;
    let gate = b.silu(z)?;
    let y = b.mul(y, gate)?;
    b.matmul(y, w.out_proj)
}
