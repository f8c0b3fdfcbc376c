//! Unary, binary and fused elementwise ops (one interpreter for all three), copies and concat.

use super::team;
use super::tensor::TensorRef;
use std::borrow::Cow;
use weft_graph::{DType, FusedProgram, Layout, NormKind, Shape};

const PAR_MIN: usize = 1 << 14;
/// Elements a fused program runs over per instruction ([`FusedProgram::eval_block`]).
const LANES: usize = 256;

/// Runs `prog` over the output's elements; sources broadcast to `shape`.
pub fn fused(prog: &FusedProgram, shape: Shape, srcs: &[TensorRef], out: &mut [f32]) {
    let vals = srcs
        .iter()
        .map(|s| {
            let l = if s.layout.shape == shape {
                s.layout
            } else {
                s.layout
                    .broadcast_to(shape)
                    .expect("broadcast checked when built")
            };
            repeating_values(s, l)
        })
        .collect();
    fused_values(prog, shape, vals, out);
}

/// The values of `s` read through `l` (its own layout, or a broadcast of it) in element order,
/// as [`fused_values`] takes them: where `l` repeats one dense run of f32 (a bias over every
/// row: [`Layout::period`]), that run alone, borrowed; else every element.
pub fn repeating_values<'a>(s: &TensorRef<'a>, l: Layout) -> Cow<'a, [f32]> {
    match l.period() {
        Some(p) if p > 0 && s.dtype == DType::F32 => {
            Cow::Borrowed(&bytemuck::cast_slice(s.bytes)[l.offset..l.offset + p])
        }
        _ => Cow::Owned(s.gather_f32(l)),
    }
}

/// Runs `prog` over the `shape.numel()` output elements, source `n`'s element `i` being
/// `vals[n][i % vals[n].len()]` (a source's values, or the run they repeat).
pub fn fused_values(prog: &FusedProgram, shape: Shape, mut vals: Vec<Cow<[f32]>>, out: &mut [f32]) {
    let numel = shape.numel();
    if let Some(kind) = prog.head {
        let mut x = vec![0.0; numel];
        repeat_into(&vals[0], 0, &mut x);
        normalize_rows(kind, shape.last(), &mut x);
        vals[0] = Cow::Owned(x);
    }
    let run = |(base, chunk): (usize, &mut [f32])| {
        let mut regs = Vec::new();
        for (bi, block) in chunk.chunks_mut(LANES).enumerate() {
            let start = base + bi * LANES;
            prog.eval_block(&mut regs, block, |src, into| {
                repeat_into(&vals[src], start, into)
            });
        }
    };
    if out.len() >= PAR_MIN {
        team::global().chunks_mut(out, 4096, |c, ch| run((c * 4096, ch)));
    } else {
        run((0, out));
    }
}

/// `into[j] = v[(start + j) % v.len()]`, a run at a time.
fn repeat_into(v: &[f32], start: usize, into: &mut [f32]) {
    let mut at = start % v.len();
    let mut rest = into;
    while !rest.is_empty() {
        let k = (v.len() - at).min(rest.len());
        let (part, more) = rest.split_at_mut(k);
        part.copy_from_slice(&v[at..at + k]);
        rest = more;
        at = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use weft_graph::{BinaryOp, Instr};

    #[test]
    fn repeated_runs_fill_every_place() {
        let v: Vec<f32> = (0..7).map(|i| i as f32).collect();
        for start in [0, 3, 6, 7, 12, 700] {
            for len in [0, 1, 4, 7, 8, 15, 300] {
                let mut got = vec![-1.0; len];
                repeat_into(&v, start, &mut got);
                let want: Vec<f32> = (0..len).map(|j| v[(start + j) % 7]).collect();
                assert_eq!(got, want, "start {start}, len {len}");
            }
        }
    }

    /// A bias of 7 broadcast over 300 rows (more than one block of the interpreter, blocks
    /// starting mid-run) reads its own 7 values, not a copy per row.
    #[test]
    fn a_broadcast_bias_is_read_as_its_run() {
        let (rows, d) = (300, 7);
        let x: Vec<f32> = (0..rows * d).map(|i| (i % 11) as f32).collect();
        let bias: Vec<f32> = (0..d).map(|i| 0.5 * i as f32).collect();
        let shape = Shape::new(&[rows, d]).unwrap();
        let b_ref = TensorRef::dense(&bias, Shape::new(&[d]).unwrap());
        let l = b_ref.layout.broadcast_to(shape).unwrap();
        assert!(matches!(repeating_values(&b_ref, l), Cow::Borrowed(v) if v.len() == d));
        let prog = FusedProgram {
            head: None,
            code: vec![
                Instr::Load(0),
                Instr::Load(1),
                Instr::Binary(BinaryOp::Add, 0, 1),
            ],
        };
        let mut out = vec![0.0; rows * d];
        fused(
            &prog,
            shape,
            &[TensorRef::dense(&x, shape), b_ref],
            &mut out,
        );
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, x[i] + bias[i % d], "element {i}");
        }
    }
}
