//! Unary, binary and fused elementwise ops (one interpreter for all three), copies and concat.

use super::team;
use super::tensor::TensorRef;
use std::borrow::Cow;
use weft_graph::{FusedProgram, Layout, NormKind, Shape};

const PAR_MIN: usize = 1 << 14;
/// Elements a fused program runs over per instruction ([`FusedProgram::eval_block`]).
const LANES: usize = 256;

/// Runs `prog` over the output's elements; sources broadcast to `shape`.
pub fn fused(prog: &FusedProgram, shape: Shape, srcs: &[TensorRef], out: &mut [f32]) {
    let mut vals: Vec<Cow<[f32]>> = srcs
        .iter()
        .map(|s| {
            if s.layout.shape == shape {
                s.f32()
            } else {
                let l = s
                    .layout
                    .broadcast_to(shape)
                    .expect("broadcast checked when built");
                Cow::Owned(s.gather_f32(l))
            }
        })
        .collect();
    if let Some(kind) = prog.head {
        let mut x = vals[0].to_vec();
        normalize_rows(kind, shape.last(), &mut x);
        vals[0] = Cow::Owned(x);
    }
    let run = |(base, chunk): (usize, &mut [f32])| {
        let mut regs = Vec::new();
        for (bi, block) in chunk.chunks_mut(LANES).enumerate() {
            let start = base + bi * LANES;
            prog.eval_block(&mut regs, block, |src, into| {
                into.copy_from_slice(&vals[src][start..start + into.len()])
            });
        }
    };
    if out.len() >= PAR_MIN {
        team::global().chunks_mut(out, 4096, |c, ch| run((c * 4096, ch)));
    } else {
        run((0, out));
    }
}

/// Normalises each row of `x` in place.
pub fn normalize_rows(kind: NormKind, d: usize, x: &mut [f32]) {
    let each = |row: &mut [f32]| {
        let squares = || row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        let f = match kind {
            NormKind::Rms { eps } => 1.0 / ((squares() / d as f64) as f32 + eps).sqrt(),
            NormKind::L2 { eps } => 1.0 / (squares().sqrt() as f32).max(eps),
            NormKind::Sum { min, max } => {
                1.0 / (row.iter().map(|&v| v as f64).sum::<f64>() as f32).clamp(min, max)
            }
        };
        row.iter_mut().for_each(|v| *v *= f);
    };
    if x.len() >= PAR_MIN {
        let rows = (4096 / d.max(1)).max(1);
        team::global().chunks_mut(x, rows * d, |_, ch| ch.chunks_mut(d).for_each(each));
    } else {
        x.chunks_mut(d).for_each(each);
    }
}

/// Dense copy of any layout (F16/BF16 become F32; I32 stays I32).
pub fn contiguous(src: &TensorRef, out: &mut [u8]) {
    if src.dtype == weft_graph::DType::I32 {
        let v = src.i32();
        out.copy_from_slice(bytemuck::cast_slice(&v));
    } else {
        let v = src.gather_f32(src.layout);
        out.copy_from_slice(bytemuck::cast_slice(&v));
    }
}

/// Joins two dense tensors along `dim`.
pub fn concat(a: &TensorRef, b: &TensorRef, dim: usize, out: &mut [f32]) {
    let (av, bv) = (a.f32(), b.f32());
    let inner = |d: &[usize]| d[dim..].iter().product::<usize>();
    let (ia, ib) = (inner(a.dims()), inner(b.dims()));
    let outer: usize = a.dims()[..dim].iter().product();
    for o in 0..outer {
        let dst = &mut out[o * (ia + ib)..(o + 1) * (ia + ib)];
        dst[..ia].copy_from_slice(&av[o * ia..(o + 1) * ia]);
        dst[ia..].copy_from_slice(&bv[o * ib..(o + 1) * ib]);
    }
}

/// Dense values of an output node (whose layout may be a view) for reading back.
pub fn read_layout_f32(src: &TensorRef, layout: Layout) -> Vec<f32> {
    src.gather_f32(layout)
}
