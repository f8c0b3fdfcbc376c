//! The gated DeltaNet mixer (Qwen3-Next and Qwen3.5 linear-attention layers).
//!
//! `qkv = in_qkv(h)`, `z = in_z(h)`, `b, a = in_ba(h)`;
//! `qkv = silu(conv(qkv))`; `q, k, v = split(qkv)`; `q = l2_norm(q) / sqrt(d_k)`,
//! `k = l2_norm(k)`; `g = −exp(A_log) · softplus(a + dt_bias)`, `β = sigmoid(b)`;
//! `y = gated_delta_rule(q, k, v, g, β)`; `y = rms_norm(y) · norm · silu(z)` per value head;
//! `out(y)`.
//!
//! `l2_norm(x) = x / sqrt(Σx² + eps)`, as in the reference.
//!
//! Key heads are shared by `H_v / H_k` value heads. The files order value heads either grouped
//! by key head (value head `h` reads key head `h / (H_v/H_k)`, the op's own convention; Qwen3-Next
//! GGUFs, as in transformers) or tiled (`h` reads key head `h % H_k`, what ggml's broadcasting
//! does; Qwen3.5 GGUFs, whose value heads the converter reorders); [`HeadOrder`] says which.

use super::recurrent::RecurrentState;
use super::split_last;
use weft_graph::{DeltaForm, GraphBuilder, Result, Tensor};

/// Which key head a value head reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadOrder {
    /// Value head `h` reads key head `h / (H_v / H_k)`.
    Grouped,
    /// Value head `h` reads key head `h % H_k`.
    Tiled,
}

/// Shape of a gated DeltaNet mixer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeltaNetParams {
    /// Key (and query) heads.
    pub n_k_heads: usize,
    /// Value heads (a multiple of the key heads).
    pub n_v_heads: usize,
    pub head_k_dim: usize,
    pub head_v_dim: usize,
    /// Width of the causal conv over q, k and v.
    pub d_conv: usize,
    /// Epsilon of the gated RMS norm and of the q/k L2 norms.
    pub eps: f32,
    pub order: HeadOrder,
}

impl DeltaNetParams {
    /// Channels of the conv input: q, k and v.
    pub fn conv_channels(&self) -> usize {
        2 * self.n_k_heads * self.head_k_dim + self.n_v_heads * self.head_v_dim
    }
    /// Floats of one sequence's delta-rule state.
    pub fn state_size(&self) -> usize {
        self.n_v_heads * self.head_v_dim * self.head_k_dim
    }
}

/// The projection giving `β` (before the sigmoid) and `α` (before the softplus).
#[derive(Clone, Copy, Debug)]
pub enum BetaAlpha {
    /// Two projections `[H_v, D]` (Qwen3.5).
    Separate { beta: Tensor, alpha: Tensor },
    /// One projection `[2·H_v, D]` laid out per key head as `[β × H_v/H_k, α × H_v/H_k]`
    /// (Qwen3-Next).
    Grouped(Tensor),
}

/// Mixer weights: `qkv [2·H_k·D_k + H_v·D_v, D]`, `z [H_v·D_v, D]`, `conv [channels, K]`,
/// `dt_b` and `a` per value head (`a` already `−exp(A_log)`), `norm [D_v]`,
/// `out [D, H_v·D_v]`.
#[derive(Clone, Copy, Debug)]
pub struct DeltaNetWeights {
    pub qkv: Tensor,
    pub z: Tensor,
    pub ba: BetaAlpha,
    pub conv: Tensor,
    pub dt_b: Tensor,
    pub a: Tensor,
    pub norm: Tensor,
    pub out: Tensor,
}

/// `x / sqrt(Σx² + eps)` over the innermost dimension: the L2 norm of the reference
/// (`x · rsqrt(Σx² + eps)`), which differs from [`GraphBuilder::l2_norm`]'s
/// `x / max(‖x‖, eps)` enough to move the fixture logits by 6e-5 (q and k rows are small).
/// Computed as `rms_norm(x, eps / d) / sqrt(d)`, the same function, which fuses into one
/// kernel with the scale (and whatever scales follow) instead of four.
fn l2_normalize(b: &mut GraphBuilder, x: Tensor, eps: f32) -> Result<Tensor> {
    let d = x.dims()[x.shape.rank() - 1] as f32;
    let n = b.rms_norm(x, eps / d)?;
    b.scale(n, 1.0 / d.sqrt())
}

/// Key heads repeated to one per value head in tiled order (`h` → `h % H_k`).
fn tile_heads(b: &mut GraphBuilder, x: Tensor, hv: usize) -> Result<Tensor> {
    let [s, t, hk, d] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let x = b.reshape(x, &[s * t, 1, hk, d])?;
    let x = b.broadcast_to(x, &[s * t, hv / hk, hk, d])?;
    let x = b.contiguous(x)?;
    b.reshape(x, &[s, t, hv, d])
}

/// Runs the mixer on `x [S, T, D]`; returns `[S, T, D]`.
pub fn delta_net(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &DeltaNetWeights,
    p: &DeltaNetParams,
    state: &RecurrentState,
) -> Result<Tensor> {
    let [s, t] = [x.dims()[0], x.dims()[1]];
    let (hk, hv, dk, dv) = (p.n_k_heads, p.n_v_heads, p.head_k_dim, p.head_v_dim);
    let ch = p.conv_channels();

    let qkv = b.matmul(x, w.qkv)?;
    let z = b.matmul(x, w.z)?;
    // β and α per value head: [S, T, Hv], or for the grouped projection the two strided
    // halves [S, T, Hk, Hv/Hk] of each key head's group, gated before they are made dense (an
    // elementwise op reads strided views, a reshape of one would need a copy)
    let (beta, alpha) = match w.ba {
        BetaAlpha::Separate { beta, alpha } => (b.matmul(x, beta)?, b.matmul(x, alpha)?),
        BetaAlpha::Grouped(ba) => {
            let r = hv / hk;
            let ba = b.matmul(x, ba)?;
            let ba = b.reshape(ba, &[s, t, hk, 2 * r])?;
            (b.slice(ba, 3, 0, r)?, b.slice(ba, 3, r, r)?)
        }
    };
    let heads = beta.dims()[2..].to_vec();
    let dt_b = b.reshape(w.dt_b, &heads)?;
    let a = b.reshape(w.a, &heads)?;

    let conv_state = state.load_conv(b, p.d_conv - 1, ch)?;
    let (qkv, new_conv) = b.ssm_conv(conv_state, qkv, w.conv)?;
    state.store_conv(b, new_conv)?;
    let qkv = b.silu(qkv)?;
    let q = split_last(b, qkv, 0, hk * dk, &[s, t, hk, dk])?;
    let k = split_last(b, qkv, hk * dk, hk * dk, &[s, t, hk, dk])?;
    let v = split_last(b, qkv, 2 * hk * dk, hv * dv, &[s, t, hv, dv])?;
    let q = l2_normalize(b, q, p.eps)?;
    let q = b.scale(q, 1.0 / (dk as f32).sqrt())?;
    let k = l2_normalize(b, k, p.eps)?;
    let (q, k) = match p.order {
        HeadOrder::Tiled if hv != hk => (tile_heads(b, q, hv)?, tile_heads(b, k, hv)?),
        _ => (q, k),
    };

    let beta = b.sigmoid(beta)?;
    let beta = b.reshape(beta, &[s, t, hv])?;
    let g = b.add(alpha, dt_b)?;
    let g = b.softplus(g)?;
    let g = b.mul(g, a)?;
    let g = b.reshape(g, &[s, t, hv])?;

    let form = if t > 1 {
        DeltaForm::Chunked
    } else {
        DeltaForm::Recurrent
    };
    let st = state.load_ssm(b, &[s, hv, dv, dk])?;
    let (y, new_st) = b.gated_delta_net(st, q, k, v, g, beta, form)?;
    state.store_ssm(b, new_st)?;

    let y = b.rms_norm(y, p.eps)?;
    let y = b.mul(y, w.norm)?;
    let z = b.reshape(z, &[s, t, hv, dv])?;
    let z = b.silu(z)?;
    let y = b.mul(y, z)?;
    let y = b.reshape(y, &[s, t, hv * dv])?;
    b.matmul(y, w.out)
}
