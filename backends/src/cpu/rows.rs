//! Row-wise ops: softmax, reductions, top-k.

use super::tensor::TensorRef;
use weft_graph::ReduceOp;

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
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        // masked entries (most of a causal row) need no exp
        *v = if *v == f32::NEG_INFINITY {
            0.0
        } else {
            (*v - max).exp()
        };
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
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
