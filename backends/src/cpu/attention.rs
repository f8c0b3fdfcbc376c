//! Rotary embeddings and fused attention.

use super::matmul::{axpy_body, dot_body};
use super::rows::softmax_in_place;
use super::team;
use super::tensor::TensorRef;
use weft_graph::{RopeMode, RopeParams};

/// Rotates the first `n_dims` of every head of `x [T, H, D]` by the angles of `pos [T]`.
pub fn rope(x: &TensorRef, pos: &TensorRef, p: RopeParams, out: &mut [f32]) {
    let xv = x.f32();
    out.copy_from_slice(&xv);
    let pv = pos.i32();
    let [t, h, d] = [x.dims()[0], x.dims()[1], x.dims()[2]];
    let half = p.n_dims / 2;
    // theta_i = pos * freq_scale * base^(-2i / n_dims)
    let inv: Vec<f64> = (0..half)
        .map(|i| (p.freq_base as f64).powf(-(2.0 * i as f64) / p.n_dims as f64))
        .collect();
    for ti in 0..t {
        let pos = pv[ti] as f64 * p.freq_scale as f64;
        let cs: Vec<(f32, f32)> = inv
            .iter()
            .map(|f| {
                let a = pos * f;
                (a.cos() as f32, a.sin() as f32)
            })
            .collect();
        for hi in 0..h {
            let row = &mut out[(ti * h + hi) * d..(ti * h + hi + 1) * d];
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = match p.mode {
                    RopeMode::Normal => (2 * i, 2 * i + 1),
                    RopeMode::Neox => (i, i + half),
                };
                let (x0, x1) = (row[a], row[b]);
                row[a] = x0 * c - x1 * s;
                row[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// What every output row of one attention node reads.
struct Operands<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: Option<&'a [f32]>,
    gate: Option<&'a [f32]>,
    /// `[t, hq, d, tk, hkv, dv]`
    dims: [usize; 6],
    scale: f32,
    causal: bool,
}

/// `softmax(q·kᵀ·scale + mask) · v`, grouped-query heads, optional causal mask and gate.
pub fn attention(
    q: &TensorRef,
    k: &TensorRef,
    v: &TensorRef,
    mask: Option<&TensorRef>,
    gate: Option<&TensorRef>,
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    let (qv, kv, vv) = (q.f32(), k.f32(), v.f32());
    let mv = mask.map(|m| m.f32());
    let gv = gate.map(|g| g.f32());
    let ops = Operands {
        q: &qv,
        k: &kv,
        v: &vv,
        mask: mv.as_deref(),
        gate: gv.as_deref(),
        dims: [
            q.dims()[0],
            q.dims()[1],
            q.dims()[2],
            k.dims()[0],
            k.dims()[1],
            v.dims()[2],
        ],
        scale,
        causal,
    };
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    team::global().chunks_mut(out, ops.dims[5], |row, o| {
        let mut scores = vec![0.0f32; ops.dims[3]];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2, checked above.
            return unsafe { row_avx2(&ops, row, o, &mut scores) };
        }
        row_body(&ops, row, o, &mut scores)
    });
}

/// [`row_body`] compiled for AVX2, its dot products and sums inlined (the same arithmetic).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_avx2(ops: &Operands, row: usize, o: &mut [f32], scores: &mut [f32]) {
    row_body(ops, row, o, scores)
}

/// Output row `row` (query token × head).
#[inline(always)]
fn row_body(ops: &Operands, row: usize, o: &mut [f32], scores: &mut [f32]) {
    let [t, hq, d, tk, hkv, dv] = ops.dims;
    let (ti, hi) = (row / hq, row % hq);
    let kh = hi / (hq / hkv);
    let qr = &ops.q[row * d..(row + 1) * d];
    let limit = if ops.causal { ti + tk - t } else { tk - 1 };
    for j in 0..tk {
        let m = ops.mask.map_or(0.0, |m| m[ti * tk + j]);
        // keys the mask or causality hides cost no dot product
        scores[j] = if j > limit || m == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            dot_body(qr, &ops.k[(j * hkv + kh) * d..(j * hkv + kh + 1) * d]) * ops.scale + m
        };
    }
    softmax_in_place(scores);
    // Σ_j p_j·v_j, 32 output columns at a time so their sums stay in registers across keys
    // (each column still adds its terms in key order).
    for (c, oc) in o.chunks_mut(32).enumerate() {
        let v_at = |j: usize| &ops.v[(j * hkv + kh) * dv + c * 32..];
        if oc.len() == 32 {
            let mut acc = [0.0f32; 32];
            for (j, &p) in scores.iter().enumerate().filter(|(_, p)| **p != 0.0) {
                let vr = &v_at(j)[..32];
                for i in 0..32 {
                    acc[i] += p * vr[i];
                }
            }
            oc.copy_from_slice(&acc);
        } else {
            oc.fill(0.0);
            for (j, &p) in scores.iter().enumerate().filter(|(_, p)| **p != 0.0) {
                axpy_body(oc, p, &v_at(j)[..oc.len()]);
            }
        }
    }
    if let Some(g) = ops.gate {
        let gr = &g[row * dv..(row + 1) * dv];
        o.iter_mut()
            .zip(gr)
            .for_each(|(a, &b)| *a /= 1.0 + (-b).exp());
    }
}
