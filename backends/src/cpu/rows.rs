//! Row-wise ops: softmax, reductions, top-k.

use super::tensor::TensorRef;
use weft_graph::{ReduceOp, math};

/// `softmax(x * scale + mask)` per row; a row with every entry `-inf` becomes zeros.
pub fn softmax(x: &TensorRef, mask: Option<&TensorRef>, scale: f32, out: &mut [f32]) {
    let xv = x.f32();
    out.copy_from_slice(&xv);
    let d = x.layout.shape.last();
    let m = mask.map(|m| {
        let l = m
            .layout
            .broadcast_to(x.layout.shape)
            .expect("mask broadcast checked when built");
        m.gather_f32(l)
    });
    for (r, row) in out.chunks_mut(d).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = *v * scale + m.as_ref().map_or(0.0, |m| m[r * d + j]);
        }
        softmax_in_place(row);
    }
}

pub fn softmax_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked above.
        return unsafe { softmax_avx2(row) };
    }
    softmax_body(row)
}

/// [`softmax_body`] compiled for AVX2 and FMA (its `exp` vectorized, the same arithmetic).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(row: &mut [f32]) {
    softmax_body(row)
}

/// Masked entries (`-inf`, most of a causal row) come out 0 from `exp` like any other far
/// below the maximum; the sum runs in eight lanes so the loop vectorizes.
#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (v, l) in c.iter_mut().zip(&mut lanes) {
            *v = math::exp(*v - max);
            *l += *v;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for v in chunks.into_remainder() {
        *v = math::exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

pub fn reduce(op: ReduceOp, x: &TensorRef, out: &mut [u8]) {
    let xv = x.f32();
    let d = x.layout.shape.last();
    match op {
        ReduceOp::Argmax => {
            let o: &mut [i32] = bytemuck::cast_slice_mut(out);
            for (row, o) in xv.chunks(d).zip(o.iter_mut()) {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                *o = best as i32;
            }
        }
        ReduceOp::Sum | ReduceOp::Mean => {
            let o: &mut [f32] = bytemuck::cast_slice_mut(out);
            for (row, o) in xv.chunks(d).zip(o.iter_mut()) {
                let s: f64 = row.iter().map(|&v| v as f64).sum();
                *o = if op == ReduceOp::Mean {
                    (s / d as f64) as f32
                } else {
                    s as f32
                };
            }
        }
    }
}

/// Indices of the `k` largest values per row, largest first (lower index first on ties).
pub fn top_k(x: &TensorRef, k: usize, out: &mut [i32]) {
    let xv = x.f32();
    let d = x.layout.shape.last();
    let mut idx: Vec<usize> = Vec::with_capacity(d);
    for (row, o) in xv.chunks(d).zip(out.chunks_mut(k)) {
        idx.clear();
        idx.extend(0..d);
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for (o, &i) in o.iter_mut().zip(&idx) {
            *o = i as i32;
        }
    }
}
