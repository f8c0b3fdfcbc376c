//! Rotary embeddings and fused attention.

use super::matmul::{axpy, dot};
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
    let [t, hq, d] = [q.dims()[0], q.dims()[1], q.dims()[2]];
    let [tk, hkv] = [k.dims()[0], k.dims()[1]];
    let dv = v.dims()[2];
    let group = hq / hkv;
    team::global().chunks_mut(out, dv, |row, o| {
        let mut scores = vec![0.0f32; tk];
        let scores = &mut scores[..];
        {
            let (ti, hi) = (row / hq, row % hq);
            let kh = hi / group;
            let qr = &qv[row * d..(row + 1) * d];
            let limit = if causal { ti + tk - t } else { tk - 1 };
            for j in 0..tk {
                let m = mv.as_ref().map_or(0.0, |m| m[ti * tk + j]);
                // keys the mask or causality hides cost no dot product
                scores[j] = if j > limit || m == f32::NEG_INFINITY {
                    f32::NEG_INFINITY
                } else {
                    dot(qr, &kv[(j * hkv + kh) * d..(j * hkv + kh + 1) * d]) * scale + m
                };
            }
            softmax_in_place(scores);
            o.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                if p != 0.0 {
                    let vr = &vv[(j * hkv + kh) * dv..(j * hkv + kh + 1) * dv];
                    axpy(o, p, vr);
                }
            }
            if let Some(g) = &gv {
                let gr = &g[row * dv..(row + 1) * dv];
                o.iter_mut()
                    .zip(gr)
                    .for_each(|(a, &b)| *a /= 1.0 + (-b).exp());
            }
        }
    });
}
