//! The op cases, each a function of a backend. Sizes are odd on purpose; views, broadcasts and
//! several sequences appear wherever the op allows them.

use super::harness::*;
use super::reference::{self as r, Nd, indices};
use weft_backends::{Backend, HostData, Output, OutputData};
use weft_graph::{
    Access, BinaryOp, DType, DeltaForm, ReduceOp, RopeMode, RopeParams, Tensor, UnaryOp, plan,
};

const TOL: f64 = 1e-5;

/// The tolerance of the cases that run prompt matmuls on `be`: with cooperative matrices those
/// multiply f16 roundings of both operands (as tensor cores take them, summing in f32), so each
/// product carries up to two f16 roundings, 2 × 2⁻¹¹ ≈ 9.8e-4 of its size.
fn matmul_tol(be: &dyn Backend) -> f64 {
    if be.name().contains("cooperative matrices") {
        1e-3
    } else {
        TOL
    }
}

/// The activations a matmul with `dtype` weights on `be` really multiplies: the CPU backend
/// rounds them to 8 bits per weight block for quantized weights and to bf16 for bf16 weights (as
/// llama.cpp's CPU backend does), GPU kernels read them as floats.
fn seen_activations(be: &dyn Backend, dtype: DType, x: &Nd) -> Nd {
    if !be.name().starts_with("cpu") {
        return x.clone();
    }
    match dtype.block_elems() {
        _ if dtype == DType::BF16 => r::round_to_bf16(x),
        1 => x.clone(),
        block => r::round_activations(x, block),
    }
}

pub fn unary(be: &mut dyn Backend) {
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Relu,
        UnaryOp::SqrRelu,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::Softplus,
        UnaryOp::Scale(-1.75),
        UnaryOp::Offset(0.5),
        UnaryOp::Clamp {
            min: -0.3,
            max: 0.4,
        },
    ];
    let mut rg = rng(1);
    let dims = [3, 7, 13];
    for op in ops {
        let mut c = Case::new();
        let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt);
        let v: Vec<f32> = randn(&mut rg, 273)
            .iter()
            .map(|x| if positive { x.abs() + 0.01 } else { x * 4.0 })
            .collect();
        let (x, xn) = c.input_values("x", &dims, v);
        // also through a permuted (non-contiguous) view
        let xp = c.b.permute(x, &[2, 0, 1]).expect("permute");
        let y = c.b.unary(op, x).expect("unary");
        let yp = c.b.unary(op, xp).expect("unary view");
        c.output(y, "y");
        c.output(yp, "yp");
        let out = c.run(be);
        let p = match op {
            UnaryOp::Scale(s) | UnaryOp::Offset(s) => (s as f64, 0.0),
            UnaryOp::Clamp { min, max } => (min as f64, max as f64),
            _ => (0.0, 0.0),
        };
        let want = Nd::new(
            &dims,
            xn.data.iter().map(|&v| r::unary(op.name(), v, p)).collect(),
        );
        assert_close(op.name(), &out[0], &want, TOL);
        let mut wp = Nd::zeros(&[13, 3, 7]);
        for i in indices(&[13, 3, 7]) {
            wp.set(&i, want.at(&[i[1], i[2], i[0]]));
        }
        assert_close(op.name(), &out[1], &wp, TOL);
    }
}

pub fn binary_broadcast(be: &mut dyn Backend) {
    let mut rg = rng(2);
    let shapes: [(&[usize], &[usize]); 4] = [
        (&[2, 3, 5], &[3, 1]),
        (&[5], &[2, 3, 5]),
        (&[4, 1, 3], &[1, 6, 1]),
        (&[7, 9], &[7, 9]),
    ];
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        for (da, db) in shapes {
            let mut c = Case::new();
            let (a, an) = c.input(&mut rg, "a", da);
            let bv: Vec<f32> = randn(&mut rg, db.iter().product())
                .iter()
                .map(|x| x + 2.0f32.copysign(*x))
                .collect();
            let (b, bn) = c.input_values("b", db, bv);
            let y = c.b.binary(op, a, b).expect("binary");
            c.output(y, "y");
            let out = c.run(be);
            let od = out[0].shape.dims().to_vec();
            let mut want = Nd::zeros(&od);
            for i in indices(&od) {
                want.set(
                    &i,
                    r::binary(op.name(), an.at_broadcast(&i), bn.at_broadcast(&i)),
                );
            }
            assert_close(op.name(), &out[0], &want, TOL);
        }
    }
}

pub fn views_and_contiguous(be: &mut dyn Backend) {
    let mut rg = rng(3);
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[4, 6, 5]);
    let s = c.b.slice(x, 1, 2, 3).expect("slice"); // [4, 3, 5]
    let p = c.b.permute(s, &[2, 0, 1]).expect("permute"); // [5, 4, 3]
    let cont = c.b.contiguous(p).expect("contiguous");
    let rs = c.b.reshape(cont, &[20, 3]).expect("reshape");
    // overlapping windows: rows of 4 starting every 2 elements of a flat view
    let flat = c.b.reshape(x, &[120]).expect("flat");
    let win = c.b.view(flat, &[5, 4], &[2, 1], 3).expect("windows");
    let wc = c.b.contiguous(win).expect("contiguous windows");
    let bc = c.b.slice(x, 0, 1, 1).expect("row");
    let bc = c.b.broadcast_to(bc, &[3, 6, 5]).expect("broadcast");
    let bcc = c.b.contiguous(bc).expect("contiguous broadcast");
    // contiguous of a dense slice at an offset, then views of that copy
    let tail = c.b.slice(x, 0, 2, 2).expect("dense slice"); // [2, 6, 5] at offset 60
    let tc = c.b.contiguous(tail).expect("contiguous of dense");
    let tr = c.b.reshape(tc, &[12, 5]).expect("reshape");
    let tr = c.b.slice(tr, 0, 1, 10).expect("slice of copy");
    c.output(rs, "rs");
    c.output(wc, "win");
    c.output(bcc, "bc");
    c.output(tr, "tail");
    let out = c.run(be);
    assert_close(
        "views of a folded copy",
        &out[3],
        &Nd::new(&[10, 5], xn.data[65..115].to_vec()),
        0.0,
    );
    let mut want = Nd::zeros(&[5, 4, 3]);
    for i in indices(&[5, 4, 3]) {
        want.set(&i, xn.at(&[i[1], i[2] + 2, i[0]]));
    }
    assert_close("slice+permute", &out[0], &Nd::new(&[20, 3], want.data), 0.0);
    let mut w = Nd::zeros(&[5, 4]);
    for i in indices(&[5, 4]) {
        w.set(&i, xn.data[3 + 2 * i[0] + i[1]]);
    }
    assert_close("windows", &out[1], &w, 0.0);
    let mut b = Nd::zeros(&[3, 6, 5]);
    for i in indices(&[3, 6, 5]) {
        b.set(&i, xn.at(&[1, i[1], i[2]]));
    }
    assert_close("broadcast", &out[2], &b, 0.0);
}

pub fn contiguous_casts(be: &mut dyn Backend) {
    let mut rg = rng(4);
    for dt in [DType::F16, DType::BF16] {
        let mut c = Case::new();
        let v = randn(&mut rg, 35);
        let (w, wn) = c.external(be, "w", &[5, 7], dt, &v, Access::ReadOnly);
        let t = c.b.permute(w, &[1, 0]).expect("permute");
        let y = c.b.contiguous(t).expect("contiguous");
        c.output(y, "y");
        let out = c.run(be);
        let mut want = Nd::zeros(&[7, 5]);
        for i in indices(&[7, 5]) {
            want.set(&i, wn.at(&[i[1], i[0]]));
        }
        assert_close("cast", &out[0], &want, 0.0);
    }
}

fn matmul_with(be: &mut dyn Backend, dtype: DType, k: usize, seed: u64) {
    let mut rg = rng(seed);
    for (xd, wd) in [
        (vec![1, k], vec![9, k]),
        (vec![2, 3, k], vec![5, k]),
        (vec![2, 3, k], vec![2, 7, k]),
        (vec![2, 1, k], vec![2, 7, k]),
        // several blocks of 64 rows of x (as GPU workgroups take them) and a ragged last
        // one, and several tiles of 64 weight rows with a ragged last one, batched too
        (vec![2, 19, k], vec![5, k]),
        (vec![11, k], vec![45, k]),
        (vec![131, k], vec![150, k]),
        (vec![2, 70, k], vec![2, 67, k]),
    ] {
        if dtype.is_quantized() && wd.len() == 3 {
            continue;
        }
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &xd);
        let (w, wn) = weight(be, &mut c, &mut rg, "w", &wd, dtype);
        let y = c.b.matmul(x, w).expect("matmul");
        c.output(y, "y");
        let out = c.run(be);
        assert_close(
            &format!("matmul {dtype} {xd:?}x{wd:?}"),
            &out[0],
            &r::matmul(&seen_activations(be, dtype, &xn), &wn),
            matmul_tol(be),
        );
    }
}

pub fn matmul_float(be: &mut dyn Backend) {
    matmul_with(be, DType::F32, 37, 5);
    matmul_with(be, DType::F16, 37, 6);
    matmul_with(be, DType::BF16, 37, 7);
    // rows that start on a chunk boundary (the GPU mat-vec reads them a chunk at a time)
    for (i, d) in [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .enumerate()
    {
        matmul_with(be, d, 64, 20 + i as u64);
    }
    // rows longer than a block of the CPU's packed panels (256 columns), not a whole number of
    // blocks
    for (i, d) in [DType::F16, DType::BF16].into_iter().enumerate() {
        matmul_with(be, d, 300, 30 + i as u64);
    }
}

pub fn matmul_q8_0(be: &mut dyn Backend) {
    matmul_with(be, DType::Q8_0, 96, 8);
}
pub fn matmul_q4_0(be: &mut dyn Backend) {
    matmul_with(be, DType::Q4_0, 64, 9);
}
pub fn matmul_q4_1(be: &mut dyn Backend) {
    matmul_with(be, DType::Q4_1, 64, 10);
}
pub fn matmul_q5_0(be: &mut dyn Backend) {
    matmul_with(be, DType::Q5_0, 96, 14);
}
pub fn matmul_q5_1(be: &mut dyn Backend) {
    matmul_with(be, DType::Q5_1, 64, 15);
}
pub fn matmul_q4_k(be: &mut dyn Backend) {
    matmul_with(be, DType::Q4K, 512, 11);
}
pub fn matmul_q5_k(be: &mut dyn Backend) {
    matmul_with(be, DType::Q5K, 256, 12);
}
pub fn matmul_q6_k(be: &mut dyn Backend) {
    matmul_with(be, DType::Q6K, 256, 13);
}

/// Mat-vecs whose rows are long enough for the GPU's threads to take four chunks per step
/// (32 threads a row, chunks of 4 to 64 elements) and then a ragged rest: 8704 elements are
/// 136 Q4_K/Q5_K chunks, 272 of the 32-element formats and Q6_K, 1088 of F16, 2176 of
/// F32/BF16.
pub fn matvec_long_rows(be: &mut dyn Backend) {
    let k = 8704;
    let mut rg = rng(40);
    for dtype in DType::ALL.into_iter().filter(|d| d.is_float()) {
        for rows in [1, 2] {
            let mut c = Case::new();
            let (x, xn) = c.input(&mut rg, "x", &[rows, k]);
            let (w, wn) = weight(be, &mut c, &mut rg, "w", &[3, k], dtype);
            let y = c.b.matmul(x, w).expect("matmul");
            c.output(y, "y");
            let out = c.run(be);
            assert_close(
                &format!("matmul {dtype} [{rows}, {k}]x[3, {k}]"),
                &out[0],
                &r::matmul(&seen_activations(be, dtype, &xn), &wn),
                TOL,
            );
        }
    }
}

/// A weight of `dtype` with random values (random valid blocks when quantized), and what it
/// holds.
fn weight(
    be: &mut dyn Backend,
    c: &mut Case,
    rg: &mut rand::rngs::StdRng,
    name: &str,
    dims: &[usize],
    dtype: DType,
) -> (Tensor, Nd) {
    if dtype.is_quantized() {
        c.quantized(be, rg, name, dims, dtype)
    } else {
        let v = randn(rg, dims.iter().product());
        c.external(be, name, dims, dtype, &v, Access::ReadOnly)
    }
}

/// The ops a graph's plan schedules, with `fuse` on or off.
fn scheduled(g: &weft_graph::Graph, fuse: bool) -> Vec<&'static str> {
    let opts = weft_graph::PlanOptions {
        passes: weft_graph::passes::PassOptions {
            fuse,
            ..Default::default()
        },
        ..Default::default()
    };
    let pl = plan(g, opts);
    pl.schedule
        .iter()
        .map(|&i| pl.graph.node(i).op.name())
        .collect()
}

/// Mat-vecs of one activation row by several weights (q/k/v-like, mixed dtypes, more than one
/// product takes) become `mul_mat_cat` products whose column views match the reference.
pub fn matmul_cat(be: &mut dyn Backend) {
    let mut rg = rng(37);
    let k = 256;
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[1, k]);
    let mut want = vec![];
    let weights = [
        (DType::F32, 33),
        (DType::Q4K, 40),
        (DType::Q6K, 24),
        (DType::F16, 8),
        (DType::Q8_0, 5),
    ];
    for (i, (dtype, n)) in weights.into_iter().enumerate() {
        let (w, wn) = weight(be, &mut c, &mut rg, &format!("w{i}"), &[n, k], dtype);
        let y = c.b.matmul(x, w).unwrap();
        let mut wy = r::matmul(&seen_activations(be, dtype, &xn), &wn);
        // a view of a product that is not the first (its offset moves with it)
        let y = if i == 1 {
            wy.dims = vec![5, 8];
            c.b.reshape(y, &[5, 8]).unwrap()
        } else {
            y
        };
        c.output(y, &format!("y{i}"));
        want.push((dtype, wy));
    }
    // four weights in one product, the fifth on its own
    assert_eq!(scheduled(c.b.graph(), true), ["mul_mat_cat", "mul_mat"]);
    let out = c.run(be);
    for (o, (dtype, w)) in out.iter().zip(&want) {
        assert_close(&format!("mul_mat_cat {dtype}"), o, w, TOL);
    }
}

/// A residual added to a matmul's output folds into the matmul (`matmul_add`): the fused
/// plan has no `add` left, and every plan setting matches the reference.
/// A matmul reads x as the first columns of a wider row (a projection's), through its row
/// stride, with no copy: several rows in batches (`matmul_rows`) and one row (`matmul`), F16,
/// Q8_0 and Q4_K weights; the Q4_K rows start off a 4-element boundary (x read element by
/// element, not as vectors of 4).
pub fn matmul_strided(be: &mut dyn Backend) {
    let mut rg = rng(73);
    for (dims, dtype, k, off) in [
        ([2, 5], DType::F16, 64, 16),
        ([1, 70], DType::Q8_0, 64, 16),
        ([1, 1], DType::F16, 64, 16),
        ([1, 1], DType::Q4K, 512, 18),
    ] {
        let n = 24;
        let mut c = Case::new();
        let (wide, widen) = c.input(&mut rg, "wide", &[dims[0], dims[1], k + off]);
        let (w, wn) = weight(be, &mut c, &mut rg, "w", &[n, k], dtype);
        let x = c.b.slice(wide, 2, off, k).unwrap();
        let y = c.b.matmul(x, w).unwrap();
        c.output(y, "y");
        let ops = scheduled(c.b.graph(), true);
        assert_eq!(ops, ["mul_mat"], "{dims:?}");
        let rows = dims[0] * dims[1];
        let v = (0..rows)
            .flat_map(|r| widen.data[r * (k + off) + off..(r + 1) * (k + off)].to_vec())
            .collect();
        let xn = Nd::new(&[dims[0], dims[1], k], v);
        let want = r::matmul(&seen_activations(be, dtype, &xn), &wn);
        let out = c.run(be);
        assert_close(
            &format!("strided x {dims:?} {dtype:?}"),
            &out[0],
            &want,
            matmul_tol(be),
        );
    }
}

pub fn matmul_residual(be: &mut dyn Backend) {
    let mut rg = rng(36);
    for (dtype, m, n, k) in [(DType::F16, 1, 45, 64), (DType::Q4K, 19, 40, 256)] {
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[m, k]);
        let (w, wn) = weight(be, &mut c, &mut rg, "w", &[n, k], dtype);
        let (res, rn) = c.input(&mut rg, "r", &[m, n]);
        let y = c.b.matmul(x, w).unwrap();
        let y = c.b.add(y, res).unwrap();
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["mul_mat"], "{dtype}");
        let out = c.run(be);
        let mut want = r::matmul(&seen_activations(be, dtype, &xn), &wn);
        want.data
            .iter_mut()
            .zip(&rn.data)
            .for_each(|(a, b)| *a += b);
        assert_close(
            &format!("matmul + residual {dtype} M={m}"),
            &out[0],
            &want,
            matmul_tol(be),
        );
    }
}

pub fn matmul_activations(be: &mut dyn Backend) {
    // both operands computed, the second through a transposing view (made dense by legalization)
    let mut rg = rng(14);
    let mut c = Case::new();
    let (a, an) = c.input(&mut rg, "a", &[3, 4, 6]);
    let (b, bn) = c.input(&mut rg, "b", &[3, 6, 5]);
    let bt = c.b.permute(b, &[0, 2, 1]).expect("transpose");
    let y = c.b.matmul(a, bt).expect("matmul");
    c.output(y, "y");
    let out = c.run(be);
    let mut bt_n = Nd::zeros(&[3, 5, 6]);
    for i in indices(&[3, 5, 6]) {
        bt_n.set(&i, bn.at(&[i[0], i[2], i[1]]));
    }
    assert_close(
        "matmul activations",
        &out[0],
        &r::matmul(&an, &bt_n),
        matmul_tol(be),
    );
}

pub fn matmul_id(be: &mut dyn Backend) {
    let mut rg = rng(15);
    // (f16 with 4 or 5 rows per expert: the CPU's register tiles; 40 columns, a partial
    // vector at the end; bf16 with 2 or 3 rows per expert (rounded activations through the f32
    // paths) and with 4 or 5 and 24 columns (the vdpbf16ps tiles where the CPU has them, one
    // masked step); 24 tokens: 6 to 18 rows per expert, the CPU's integer tiles; 150 tokens:
    // 75 rows per expert, which the GPU takes in two tiles of rows and the CPU in packed panels
    // where it has AVX-512)
    for (dtype, k, t) in [
        (DType::F32, 24, 5),
        (DType::F16, 40, 9),
        (DType::BF16, 40, 5),
        (DType::BF16, 24, 9),
        (DType::Q8_0, 64, 5),
        (DType::Q4K, 256, 5),
        (DType::Q8_0, 64, 24),
        (DType::Q4K, 256, 24),
        (DType::F16, 40, 150),
        (DType::BF16, 40, 150),
    ] {
        for xu in [1usize, 2] {
            let (u, e, n) = (2, 4, 6);
            let mut c = Case::new();
            let (x, xn) = c.input(&mut rg, "x", &[t, xu, k]);
            let (w, wn) = if dtype.is_quantized() {
                c.quantized(be, &mut rg, "w", &[e, n, k], dtype)
            } else {
                let v = randn(&mut rg, e * n * k);
                c.external(be, "w", &[e, n, k], dtype, &v, Access::ReadOnly)
            };
            let ids: Vec<i32> = (0..t * u).map(|i| ((i * 3 + 1) % e) as i32).collect();
            let it = c.ids("ids", &[t, u], ids.clone());
            let y = c.b.matmul_id(x, w, it).expect("matmul_id");
            // with one row per expert, each output scaled by its routing weight (an epilogue)
            let (y, rwn) = if xu == 2 {
                let (rw, rwn) = c.input(&mut rg, "route", &[t, u, 1]);
                (c.b.mul(y, rw).unwrap(), Some(rwn))
            } else {
                (y, None)
            };
            c.output(y, "y");
            assert_eq!(scheduled(c.b.graph(), true), ["mul_mat_id"]);
            let out = c.run(be);
            let xn = seen_activations(be, dtype, &xn);
            let mut want = Nd::zeros(&[t, u, n]);
            for i in indices(&[t, u, n]) {
                let ex = ids[i[0] * u + i[1]] as usize;
                let xr = if xu == 1 { 0 } else { i[1] };
                let s: f64 = (0..k)
                    .map(|kk| xn.at(&[i[0], xr, kk]) * wn.at(&[ex, i[2], kk]))
                    .sum();
                let scale = rwn.as_ref().map_or(1.0, |r| r.at(&[i[0], i[1], 0]));
                want.set(&i, s * scale);
            }
            assert_close(&format!("matmul_id {dtype} xu={xu}"), &out[0], &want, TOL);
        }
    }
}

pub fn get_rows(be: &mut dyn Backend) {
    let mut rg = rng(16);
    for dtype in [
        DType::F32,
        DType::F16,
        DType::Q8_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q6K,
    ] {
        let d = if dtype.is_quantized() {
            dtype.block_elems() * 2
        } else {
            11
        };
        let mut c = Case::new();
        let (tab, tn) = if dtype.is_quantized() {
            c.quantized(be, &mut rg, "tab", &[7, d], dtype)
        } else {
            let v = randn(&mut rg, 7 * d);
            c.external(be, "tab", &[7, d], dtype, &v, Access::ReadOnly)
        };
        let ids = vec![6, 0, 3, 3];
        let it = c.ids("ids", &[4], ids.clone());
        let y = c.b.get_rows(tab, it).expect("get_rows");
        c.output(y, "y");
        let out = c.run(be);
        let want = Nd::new(
            &[4, d],
            ids.iter()
                .flat_map(|&i| (0..d).map(move |j| (i as usize, j)))
                .map(|(i, j)| tn.at(&[i, j]))
                .collect(),
        );
        assert_close(&format!("get_rows {dtype}"), &out[0], &want, 0.0);
    }
    // batched: pick per-row entries (as MoE routing weights are gathered)
    let mut c = Case::new();
    let (p, pn) = c.input(&mut rg, "p", &[3, 5]);
    let p3 = c.b.reshape(p, &[3, 5, 1]).expect("reshape");
    let it = c.ids("ids", &[3, 2], vec![4, 1, 0, 2, 3, 3]);
    let y = c.b.get_rows(p3, it).expect("batched get_rows");
    c.output(y, "y");
    let out = c.run(be);
    let want = Nd::new(
        &[3, 2, 1],
        vec![
            pn.at(&[0, 4]),
            pn.at(&[0, 1]),
            pn.at(&[1, 0]),
            pn.at(&[1, 2]),
            pn.at(&[2, 3]),
            pn.at(&[2, 3]),
        ],
    );
    assert_close("batched get_rows", &out[0], &want, 0.0);
}

pub fn norms(be: &mut dyn Backend) {
    let mut rg = rng(17);
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[3, 5, 24]);
    let (w, wn) = c.input(&mut rg, "w", &[24]);
    let rn = c.b.rms_norm(x, 1e-6).expect("rms");
    let rw = c.b.mul(rn, w).expect("norm x weight");
    let l2 = c.b.l2_norm(x, 1e-6).expect("l2");
    let grp = c.b.group_rms_norm(x, 4, 1e-5).expect("group");
    c.output(rw, "rms");
    c.output(l2, "l2");
    c.output(grp, "group");
    let out = c.run(be);
    let rms = r::rms_norm(&xn, 1e-6);
    let mut rmsw = rms.clone();
    for i in indices(&[3, 5, 24]) {
        rmsw.set(&i, rms.at(&i) * wn.at(&[i[2]]));
    }
    assert_close("rms_norm*w", &out[0], &rmsw, TOL);
    assert_close("l2_norm", &out[1], &r::l2_norm(&xn, 1e-6), TOL);
    let g = r::rms_norm(&Nd::new(&[3, 5, 4, 6], xn.data.clone()), 1e-5);
    assert_close(
        "group_rms_norm",
        &out[2],
        &Nd::new(&[3, 5, 24], g.data),
        TOL,
    );
}

/// Row norms read strided rows in place (a head's half of an interleaved projection, as
/// Qwen3.5's gated attention splits q from its gate): no copy is scheduled before them.
pub fn norms_strided(be: &mut dyn Backend) {
    let mut rg = rng(50);
    let (t, h, d) = (3, 4, 40);
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[t, h, 2 * d]);
    let (w, wn) = c.input(&mut rg, "w", &[d]);
    let q = c.b.slice(x, 2, d, d).unwrap();
    let rn = c.b.rms_norm(q, 1e-6).unwrap();
    let rw = c.b.mul(rn, w).unwrap();
    let l2 = c.b.l2_norm(q, 1e-6).unwrap();
    c.output(rw, "rms");
    c.output(l2, "l2");
    let kernels = scheduled(c.b.graph(), true);
    assert!(!kernels.contains(&"contiguous"), "{kernels:?}");
    let out = c.run(be);
    let mut qn = Nd::zeros(&[t, h, d]);
    for i in indices(&[t, h, d]) {
        qn.set(&i, xn.at(&[i[0], i[1], d + i[2]]));
    }
    let rms = r::rms_norm(&qn, 1e-6);
    let mut rmsw = rms.clone();
    for i in indices(&[t, h, d]) {
        rmsw.set(&i, rms.at(&i) * wn.at(&[i[2]]));
    }
    assert_close("strided rms_norm*w", &out[0], &rmsw, TOL);
    assert_close("strided l2_norm", &out[1], &r::l2_norm(&qn, 1e-6), TOL);
}

pub fn softmax(be: &mut dyn Backend) {
    let mut rg = rng(18);
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[2, 3, 9]);
    let mv: Vec<f32> = (0..27)
        .map(|i| {
            if i % 4 == 3 {
                f32::NEG_INFINITY
            } else {
                (i as f32) * 0.01
            }
        })
        .collect();
    let (m, mn) = c.input_values("m", &[3, 9], mv);
    let y = c.b.softmax(x, Some(m), 0.7).expect("softmax");
    let y2 = c.b.softmax(x, None, 1.0).expect("softmax");
    c.output(y, "y");
    c.output(y2, "y2");
    let out = c.run(be);
    let mut s = xn.clone();
    for i in indices(&[2, 3, 9]) {
        s.set(&i, xn.at(&i) * 0.7 + mn.at(&[i[1], i[2]]));
    }
    assert_close(
        "softmax masked",
        &out[0],
        &r::row_map(&s, r::softmax_row),
        TOL,
    );
    assert_close("softmax", &out[1], &r::row_map(&xn, r::softmax_row), TOL);
}

pub fn rope(be: &mut dyn Backend) {
    let mut rg = rng(19);
    for (mode, n_dims) in [
        (RopeMode::Normal, 16),
        (RopeMode::Neox, 16),
        (RopeMode::Neox, 8),
        (RopeMode::Normal, 6),
    ] {
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[5, 3, 16]);
        let pos = vec![0, 1, 7, 300, 4095];
        let pt = c.ids("pos", &[5], pos.clone());
        let p = RopeParams {
            n_dims,
            mode,
            freq_base: 10000.0,
            freq_scale: 0.5,
        };
        let y = c.b.rope(x, pt, p).expect("rope");
        c.output(y, "y");
        let out = c.run(be);
        let want = r::rope(&xn, &pos, n_dims, mode == RopeMode::Neox, 10000.0, 0.5);
        assert_close(&format!("rope {mode:?} {n_dims}"), &out[0], &want, TOL);
    }
}

/// q and k of one token, projected together (`mul_mat_cat`) and then roped, take one rope
/// (`rope_pair`); a view of the second rope's output moves with it. Every plan setting
/// matches the reference.
pub fn rope_pair(be: &mut dyn Backend) {
    let mut rg = rng(38);
    let (k, hq, hk, d) = (32, 4, 2, 16);
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[1, k]);
    let (wq, wqn) = weight(be, &mut c, &mut rg, "wq", &[hq * d, k], DType::F32);
    let (wk, wkn) = weight(be, &mut c, &mut rg, "wk", &[hk * d, k], DType::F32);
    let pt = c.ids("pos", &[1], vec![37]);
    let p = RopeParams {
        n_dims: d,
        mode: RopeMode::Neox,
        freq_base: 10000.0,
        freq_scale: 1.0,
    };
    let q = c.b.matmul(x, wq).unwrap();
    let q = c.b.reshape(q, &[1, hq, d]).unwrap();
    let q = c.b.rope(q, pt, p).unwrap();
    let kk = c.b.matmul(x, wk).unwrap();
    let kk = c.b.reshape(kk, &[1, hk, d]).unwrap();
    let kk = c.b.rope(kk, pt, p).unwrap();
    let kk = c.b.reshape(kk, &[1, hk * d]).unwrap();
    c.output(q, "q");
    c.output(kk, "k");
    assert_eq!(scheduled(c.b.graph(), true), ["mul_mat_cat", "rope"]);
    let out = c.run(be);
    let rope_of = |w: &Nd, h: usize| {
        let mut y = r::matmul(&xn, w);
        y.dims = vec![1, h, d];
        r::rope(&y, &[37], d, true, 10000.0, 1.0)
    };
    let wq = rope_of(&wqn, hq);
    let mut wk = rope_of(&wkn, hk);
    wk.dims = vec![1, hk * d];
    assert_close("paired rope q", &out[0], &wq, TOL);
    assert_close("paired rope k", &out[1], &wk, TOL);
}

pub fn attention(be: &mut dyn Backend) {
    let mut rg = rng(20);
    // (the last shape: head sizes past the CPU's 16-wide key loop and 32-column value blocks,
    // with leftovers, and a cached prefix before the causal rows)
    let small = (3, 7, 6, 2, 8, 5);
    for (kv_dtype, causal, masked, gated, (t, tk, hq, hkv, d, dv)) in [
        (DType::F32, true, false, false, small),
        (DType::F32, false, true, true, small),
        (DType::F16, true, true, false, small),
        (DType::F32, true, false, false, (5, 37, 4, 2, 75, 40)),
        (DType::F16, false, true, false, (5, 37, 4, 2, 75, 40)),
        // (one query head per key head; eight, as in grouped-query models)
        (DType::F32, true, true, true, (4, 9, 3, 3, 16, 32)),
        (DType::F16, true, false, false, (6, 13, 8, 1, 24, 64)),
        // (a long row of keys, masked: 150 of them)
        (DType::F32, true, true, false, (3, 150, 6, 2, 16, 40)),
        // (prompts, which the GPU runs by blocks of 16 queries (8 past 128 dims), tiles of 32
        // keys: 100 causal queries over 150 keys, the first blocks' limits leaving whole tiles
        // out; 128-dim heads, not causal; a grouped-query prompt after a cached prefix; heads
        // of 75 and 40 dims (K staged in chunks of 32 dims, the last one partial; value
        // threads left over); the largest heads it takes, and heads whose values are wider
        // than their keys)
        // (at least 256 (query, head) rows: fewer split their keys instead)
        (DType::F16, true, true, true, (100, 150, 4, 1, 16, 24)),
        (DType::F32, false, false, false, (19, 19, 16, 4, 128, 128)),
        (DType::F16, true, false, true, (33, 40, 8, 2, 64, 64)),
        (DType::F32, true, true, false, (32, 45, 8, 4, 75, 40)),
        (DType::F16, true, false, true, (40, 40, 8, 2, 256, 256)),
        (DType::F32, false, true, false, (24, 30, 12, 4, 40, 200)),
    ] {
        let mut c = Case::new();
        let (q, qn) = c.input(&mut rg, "q", &[t, hq, d]);
        let kvals = randn(&mut rg, tk * hkv * d);
        let vvals = randn(&mut rg, tk * hkv * dv);
        let (k, kn) = c.external(be, "k", &[tk, hkv, d], kv_dtype, &kvals, Access::ReadOnly);
        let (v, vn) = c.external(be, "v", &[tk, hkv, dv], kv_dtype, &vvals, Access::ReadOnly);
        let (mask, mn) = if masked {
            // (with five query rows, row 3 is hidden whole: its output is zeros)
            let mv: Vec<f32> = (0..t * tk)
                .map(|i| {
                    if i % 5 == 2 || (t == 5 && i / tk == 3) {
                        f32::NEG_INFINITY
                    } else {
                        0.1 * (i % 3) as f32
                    }
                })
                .collect();
            let (m, mn) = c.input_values("mask", &[t, tk], mv);
            (Some(m), Some(mn))
        } else {
            (None, None)
        };
        // (the gate is each head's second half of a wider tensor, read strided in place)
        let (gate, gn) = if gated {
            let (g2, g2n) = c.input(&mut rg, "gate", &[t, hq, 2 * dv]);
            let g = c.b.slice(g2, 2, dv, dv).unwrap();
            let mut gn = Nd::zeros(&[t, hq, dv]);
            for i in indices(&[t, hq, dv]) {
                gn.set(&i, g2n.at(&[i[0], i[1], dv + i[2]]));
            }
            (Some(g), Some(gn))
        } else {
            (None, None)
        };
        let y =
            c.b.attention(q, k, v, mask, gate, 0.35, causal)
                .expect("attention");
        assert!(!scheduled(c.b.graph(), true).contains(&"contiguous"));
        c.output(y, "y");
        let out = c.run(be);
        let want = r::attention(&qn, &kn, &vn, mn.as_ref(), gn.as_ref(), 0.35, causal);
        assert_close(
            &format!("attention {kv_dtype} causal={causal} mask={masked} gate={gated}"),
            &out[0],
            &want,
            TOL,
        );
    }
}

pub fn concat(be: &mut dyn Backend) {
    let mut rg = rng(21);
    for dim in 0..3 {
        let mut c = Case::new();
        let mut db = vec![2, 3, 4];
        db[dim] = 5;
        let (a, an) = c.input(&mut rg, "a", &[2, 3, 4]);
        let (b, bn) = c.input(&mut rg, "b", &db);
        let y = c.b.concat(a, b, dim).expect("concat");
        c.output(y, "y");
        let out = c.run(be);
        let od = out[0].shape.dims().to_vec();
        let mut want = Nd::zeros(&od);
        for i in indices(&od) {
            let v = if i[dim] < an.dims[dim] {
                an.at(&i)
            } else {
                let mut j = i.clone();
                j[dim] -= an.dims[dim];
                bn.at(&j)
            };
            want.set(&i, v);
        }
        assert_close(&format!("concat dim {dim}"), &out[0], &want, 0.0);
    }
}

/// The reference conv step: `y [S, T, C]` and the new window `[S, K−1, C]`.
fn conv_reference(stn: &Nd, xn: &Nd, wn: &Nd) -> (Nd, Nd) {
    let [s, km1, ch] = [stn.dims[0], stn.dims[1], stn.dims[2]];
    let (k, t) = (km1 + 1, xn.dims[1]);
    let xc = |si: usize, l: usize, ci: usize| {
        if l < k - 1 {
            stn.at(&[si, l, ci])
        } else {
            xn.at(&[si, l - (k - 1), ci])
        }
    };
    let mut want = Nd::zeros(&[s, t, ch]);
    for i in indices(&[s, t, ch]) {
        want.set(
            &i,
            (0..k)
                .map(|kk| xc(i[0], i[1] + kk, i[2]) * wn.at(&[i[2], kk]))
                .sum(),
        );
    }
    let mut ns = Nd::zeros(&[s, k - 1, ch]);
    for i in indices(&[s, k - 1, ch]) {
        ns.set(&i, xc(i[0], t + i[1], i[2]));
    }
    (want, ns)
}

/// The conv step with its window kept in the cache, for one and two sequences, fewer and more
/// new tokens than the window holds; the last three read x as the first columns of a wider
/// row (a projection's), through its strides. Windows of 4 (Mamba's, which the GPU keeps in
/// registers) and of 3 and 6 (the general form); prompts long enough to run in blocks of
/// tokens on the GPU.
pub fn ssm_conv_in_place(be: &mut dyn Backend) {
    // (the last: a prompt large enough for the CPU to spread its tokens over threads)
    for (s, t, strided, ch, k) in [
        (1, 1, false, 6, 4),
        (1, 5, false, 6, 4),
        (2, 2, false, 6, 4),
        (2, 5, false, 6, 4),
        (1, 5, true, 6, 4),
        (2, 3, true, 6, 4),
        (2, 3, false, 6, 3),
        (1, 2, true, 5, 6),
        (1, 37, true, 520, 4),
        // (prompts the GPU splits into blocks of tokens: 2, 4 and 16 of them, the last ones
        // empty in the third)
        (1, 9, false, 6, 4),
        (2, 19, true, 6, 3),
        (2, 70, false, 10, 6),
    ] {
        let slots = [2, 0];
        let slots = &slots[..s];
        let mut rg = rng(33 + (s * 10 + t) as u64);
        let mut c = Case::new();
        let (cache, buf, init, cache_n, ids) =
            state_cache(be, &mut c, &mut rg, 3, (k - 1) * ch, slots);
        let (x, xn) = if strided {
            let (xz, xzn) = c.input(&mut rg, "xz", &[s, t, 2 * ch]);
            let x = c.b.slice(xz, 2, 0, ch).unwrap();
            let v = (0..s * t)
                .flat_map(|r| xzn.data[r * 2 * ch..r * 2 * ch + ch].to_vec())
                .collect();
            (x, Nd::new(&[s, t, ch], v))
        } else {
            c.input(&mut rg, "x", &[s, t, ch])
        };
        let (w, wn) = c.input(&mut rg, "w", &[ch, k]);
        let state = load_state(&mut c, cache, ids, &[s, k - 1, ch]);
        let (y, ns) = c.b.ssm_conv(state, x, w).unwrap();
        store_state(&mut c, cache, ns, ids);
        c.output(y, "y");
        let ops = scheduled(c.b.graph(), true);
        assert!(!ops.contains(&"contiguous"), "{ops:?}");
        let stn = gather_state(&cache_n, slots, &[s, k - 1, ch]);
        let (wy, ws) = conv_reference(&stn, &xn, &wn);
        let want = scatter_state(&cache_n, slots, &ws);
        check_state_in_place(be, c, "ssm_conv", buf, &init, &wy, &want);
    }
}

pub fn ssm_conv(be: &mut dyn Backend) {
    let mut rg = rng(22);
    let (s, k, t, ch) = (2, 4, 5, 6);
    let mut c = Case::new();
    let (st, stn) = c.input(&mut rg, "state", &[s, k - 1, ch]);
    let (x, xn) = c.input(&mut rg, "x", &[s, t, ch]);
    let (w, wn) = c.input(&mut rg, "w", &[ch, k]);
    let (y, new_state) = c.b.ssm_conv(st, x, w).expect("ssm_conv");
    c.output(y, "y");
    c.output(new_state, "state");
    let out = c.run(be);
    let (want, ns) = conv_reference(&stn, &xn, &wn);
    assert_close("ssm_conv y", &out[0], &want, TOL);
    assert_close("ssm_conv state", &out[1], &ns, 0.0);
}

/// A scan's step sizes `dt` (positive, as softplus leaves them), an input of `dims`.
fn scan_dt(c: &mut Case, rg: &mut rand::rngs::StdRng, dims: &[usize]) -> (Tensor, Nd) {
    let v = randn(rg, dims.iter().product());
    c.input_values("dt", dims, v.iter().map(|v| v.abs() * 0.5 + 0.01).collect())
}

/// A scan's decay rates `A` (negative, as `−exp(A_log)` leaves them), an input of `dims`.
fn scan_a(c: &mut Case, rg: &mut rand::rngs::StdRng, dims: &[usize]) -> (Tensor, Nd) {
    scan_a_times(c, rg, dims, 1.0)
}
/// [`scan_a`] times `scale`.
fn scan_a_times(
    c: &mut Case,
    rg: &mut rand::rngs::StdRng,
    dims: &[usize],
    scale: f32,
) -> (Tensor, Nd) {
    let v = randn(rg, dims.iter().product());
    c.input_values(
        "a",
        dims,
        v.iter().map(|v| (-v.abs() - 0.1) * scale).collect(),
    )
}
fn ssm_scan_case(
    be: &mut dyn Backend,
    s: usize,
    t: usize,
    h: usize,
    p: usize,
    n: usize,
    g: usize,
    a_per_state: bool,
    seed: u64,
) {
    ssm_scan_decaying(be, [s, t, h, p, n, g], a_per_state, 1.0, seed)
}
/// [`ssm_scan_case`] of dims `[S, T, H, P, N, G]` with `A` times `a_scale`.
fn ssm_scan_decaying(
    be: &mut dyn Backend,
    [s, t, h, p, n, g]: [usize; 6],
    a_per_state: bool,
    a_scale: f32,
    seed: u64,
) {
    let mut rg = rng(seed);
    let mut c = Case::new();
    let (st, stn) = c.input(&mut rg, "state", &[s, h, p, n]);
    let (x, xn) = c.input(&mut rg, "x", &[s, t, h, p]);
    let (dt, dtn) = scan_dt(&mut c, &mut rg, &[s, t, h]);
    let (a, an) = scan_a_times(
        &mut c,
        &mut rg,
        &[h, if a_per_state { n } else { 1 }],
        a_scale,
    );
    let (b, bn) = c.input(&mut rg, "b", &[s, t, g, n]);
    let (cc, cn) = c.input(&mut rg, "c", &[s, t, g, n]);
    let (y, ns) = c.b.ssm_scan(st, x, dt, a, b, cc).expect("ssm_scan");
    c.output(y, "y");
    c.output(ns, "state");
    let out = c.run(be);
    let (wy, ws) = r::ssm_scan(&stn, &xn, &dtn, &an, &bn, &cn);
    assert_close("ssm_scan y", &out[0], &wy, TOL);
    assert_close("ssm_scan state", &out[1], &ws, TOL);
}

pub fn ssm_scan_mamba1(be: &mut dyn Backend) {
    ssm_scan_case(be, 2, 5, 12, 1, 16, 1, true, 23);
    // prompts long enough that the GPU scans them in 16 chunks side by side: a length the
    // chunks split unevenly, over rows that leave part of a workgroup idle; and a length that
    // leaves the last chunks empty, with 8 states
    ssm_scan_case(be, 2, 77, 13, 1, 16, 1, true, 36);
    ssm_scan_case(be, 1, 33, 5, 2, 8, 1, false, 37);
    // a decay per state with 8, 24 and 32 states: every width of the CPU's rows kept in
    // registers
    ssm_scan_case(be, 1, 9, 3, 1, 8, 1, true, 42);
    ssm_scan_case(be, 1, 9, 3, 1, 24, 1, true, 43);
    ssm_scan_case(be, 2, 9, 3, 2, 32, 1, true, 44);
    // one token (a decode step) with each of those widths, two sequences, heads in groups
    ssm_scan_case(be, 2, 1, 40, 1, 16, 2, true, 45);
    ssm_scan_case(be, 1, 1, 9, 1, 8, 1, true, 46);
    ssm_scan_case(be, 2, 1, 12, 1, 24, 3, true, 47);
    ssm_scan_case(be, 1, 1, 6, 1, 32, 1, true, 48);
    // enough heads for whole blocks of eight (the CPU's lanes), blocks that a group of heads
    // ends early (25 heads a group), and states not a multiple of 8
    ssm_scan_case(be, 1, 9, 100, 1, 16, 4, true, 49);
    ssm_scan_case(be, 2, 1, 100, 1, 12, 1, true, 50);
}

pub fn ssm_scan_mamba2(be: &mut dyn Backend) {
    ssm_scan_case(be, 3, 4, 4, 8, 16, 2, false, 24);
    // states over 32 (the GPU's 16 lanes a row hold up to 8 each), and over 128 (a workgroup
    // a row)
    ssm_scan_case(be, 2, 3, 2, 4, 96, 1, false, 34);
    ssm_scan_case(be, 1, 2, 3, 1, 40, 1, true, 35);
    ssm_scan_case(be, 1, 3, 2, 2, 128, 1, false, 56);
    ssm_scan_case(be, 1, 3, 2, 2, 200, 1, false, 55);
    // prompts long enough that the GPU scans them in 16 chunks side by side (states up to
    // 128): uneven chunks over grouped B and C, empty last chunks with states that leave lanes
    // idle, and the largest state
    ssm_scan_case(be, 2, 77, 4, 3, 64, 2, false, 38);
    ssm_scan_case(be, 1, 33, 2, 3, 40, 1, true, 39);
    ssm_scan_case(be, 1, 40, 2, 2, 128, 1, false, 40);
    // chunks of 10 and 9 tokens: y's parts summed in two batches of 8 (the second partial),
    // per head and per state A
    ssm_scan_case(be, 1, 150, 2, 2, 64, 1, false, 53);
    ssm_scan_case(be, 1, 140, 2, 2, 40, 1, true, 54);
    // the CPU's four rows at a time, with rows left over and states past the last 8
    ssm_scan_case(be, 2, 6, 2, 6, 20, 1, false, 41);
    // decays strong enough that the CPU's rows, kept divided by the decays' running product,
    // take it back within a few tokens, and a token's decay alone below that bound
    ssm_scan_decaying(be, [1, 80, 3, 8, 16, 1], false, 6.0, 51);
    ssm_scan_decaying(be, [1, 6, 2, 4, 16, 1], false, 200.0, 52);
    // prompts the CPU scans in AVX-512 tiles (16 tokens or more) of 32 rows by 8 states, or
    // 16 by 16 where rows come in 16s: tiles of states over grouped B and C, and the running
    // product of decays taken back within the tile's tokens, in both shapes
    ssm_scan_case(be, 2, 37, 4, 32, 48, 2, false, 57);
    ssm_scan_case(be, 1, 21, 2, 48, 32, 1, false, 60);
    ssm_scan_decaying(be, [1, 80, 2, 32, 16, 1], false, 6.0, 58);
    ssm_scan_decaying(be, [1, 20, 2, 16, 32, 1], false, 200.0, 59);
}

/// The scan reads x, B and C as strided views of one projection row per token (Mamba2's
/// `xBC`, Mamba1's `x_dbl`), with no copies: two sequences over the per-thread, chunked,
/// workgroup and wide chunked kernels.
pub fn ssm_scan_strided(be: &mut dyn Backend) {
    let mut rg = rng(71);
    for (t, h, p, n, g) in [
        (5, 6, 1, 16, 1),
        (40, 6, 1, 16, 1),
        (5, 2, 4, 64, 2),
        (40, 2, 4, 64, 2),
    ] {
        let s = 2;
        let row = h * p + 2 * g * n;
        let mut c = Case::new();
        let (st, stn) = c.input(&mut rg, "state", &[s, h, p, n]);
        let (xbc, xbcn) = c.input(&mut rg, "xbc", &[s, t, row]);
        let (dt, dtn) = scan_dt(&mut c, &mut rg, &[s, t, h]);
        let (a, an) = scan_a(&mut c, &mut rg, &[h, 1]);
        let x =
            c.b.view(xbc, &[s, t, h, p], &[t * row, row, p, 1], 0)
                .unwrap();
        let bc = [h * p, h * p + g * n].map(|at| {
            c.b.view(xbc, &[s, t, g, n], &[t * row, row, n, 1], at)
                .unwrap()
        });
        let (y, ns) = c.b.ssm_scan(st, x, dt, a, bc[0], bc[1]).expect("ssm_scan");
        c.output(y, "y");
        c.output(ns, "state");
        let ops = scheduled(c.b.graph(), true);
        assert!(!ops.contains(&"contiguous"), "{ops:?}");
        let part = |at: usize, dims: &[usize]| {
            let len: usize = dims[2..].iter().product();
            let v = (0..s * t)
                .flat_map(|r| xbcn.data[r * row + at..r * row + at + len].to_vec())
                .collect();
            Nd::new(dims, v)
        };
        let xn = part(0, &[s, t, h, p]);
        let (bn, cn) = (
            part(h * p, &[s, t, g, n]),
            part(h * p + g * n, &[s, t, g, n]),
        );
        let out = c.run(be);
        let (wy, ws) = r::ssm_scan(&stn, &xn, &dtn, &an, &bn, &cn);
        assert_close(
            &format!("strided ssm_scan y T={t} N={n}"),
            &out[0],
            &wy,
            TOL,
        );
        assert_close(
            &format!("strided ssm_scan state T={t} N={n}"),
            &out[1],
            &ws,
            TOL,
        );
    }
}

/// A cache of `rows` rows of `d` random values for a state kept in place, its buffer and
/// reference, and the slot ids input.
fn state_cache(
    be: &mut dyn Backend,
    c: &mut Case,
    rg: &mut rand::rngs::StdRng,
    rows: usize,
    d: usize,
    slots: &[i32],
) -> (Tensor, weft_graph::BufferId, Vec<f32>, Nd, Tensor) {
    let init = randn(rg, rows * d);
    let (cache, cache_n) = c.external(
        be,
        "cache",
        &[rows, d],
        DType::F32,
        &init,
        Access::ReadWrite,
    );
    let buf = match c.b.graph().node(c.b.graph().storage_of(cache.id)).op {
        weft_graph::Op::External { buffer, .. } => buffer,
        _ => unreachable!("an external"),
    };
    let ids = c.ids("slots", &[slots.len()], slots.to_vec());
    (cache, buf, init, cache_n, ids)
}

/// The cache rows of the slots `ids`, shaped `dims` (what a recurrent layer loads).
fn load_state(c: &mut Case, cache: Tensor, ids: Tensor, dims: &[usize]) -> Tensor {
    let rows = c.b.get_rows(cache, ids).unwrap();
    c.b.reshape(rows, dims).unwrap()
}

/// Stores a new state back into the cache rows of the slots `ids` (what a recurrent layer
/// does after its step).
fn store_state(c: &mut Case, cache: Tensor, new: Tensor, ids: Tensor) {
    let s = new.dims()[0];
    let dense = c.b.contiguous(new).unwrap();
    let rows = c.b.reshape(dense, &[s, new.shape.numel() / s]).unwrap();
    c.b.store_rows(cache, rows, ids).unwrap();
}

/// The sequences' rows of a cache reference, shaped `dims` (leading dimension the sequences).
fn gather_state(cache: &Nd, slots: &[i32], dims: &[usize]) -> Nd {
    let per: usize = dims[1..].iter().product();
    let mut st = Nd::zeros(dims);
    for (i, v) in st.data.iter_mut().enumerate() {
        *v = cache.at(&[slots[i / per] as usize, i % per]);
    }
    st
}

/// The cache reference after the sequences' new states `ns` are written to their rows.
fn scatter_state(cache: &Nd, slots: &[i32], ns: &Nd) -> Nd {
    let per = ns.data.len() / slots.len();
    let mut out = cache.clone();
    for (i, &v) in ns.data.iter().enumerate() {
        out.set(&[slots[i / per] as usize, i % per], v);
    }
    out
}

/// Runs a case whose graph gathers a state from `cache`, runs `op` and stores the new state
/// back, fused (the state kept in its cache, no gather or store left) and unfused; each run
/// starts from `init` and must give `wy` and leave the cache equal to `want_cache`.
#[allow(clippy::too_many_arguments)]
fn check_state_in_place(
    be: &mut dyn Backend,
    c: Case,
    op: &str,
    buf: weft_graph::BufferId,
    init: &[f32],
    wy: &Nd,
    want_cache: &Nd,
) {
    let (g, f32s, i32s) = c.into_parts();
    let mut inputs: Vec<(&str, HostData)> = f32s
        .iter()
        .map(|(k, v)| (k.as_str(), HostData::F32(v)))
        .collect();
    inputs.extend(i32s.iter().map(|(k, v)| (k.as_str(), HostData::I32(v))));
    for fuse in [true, false] {
        let opts = weft_graph::PlanOptions {
            passes: weft_graph::passes::PassOptions {
                fuse,
                ..Default::default()
            },
            ..Default::default()
        };
        let pl = plan(&g, opts);
        let ops = scheduled(&g, fuse);
        assert_eq!(ops.contains(&"store_rows"), !fuse, "{op}: {ops:?}");
        assert_eq!(ops.contains(&"get_rows"), !fuse, "{op}: {ops:?}");
        be.upload(buf, 0, bytemuck::cast_slice(init)).unwrap();
        let prog = be.compile(&pl).expect("compile");
        let out = be.run(prog, &inputs).expect("run");
        be.release(prog).unwrap();
        let mut bytes = vec![0u8; init.len() * 4];
        be.download(buf, 0, &mut bytes).unwrap();
        let got = Output {
            name: "cache".into(),
            shape: weft_graph::Shape::new(&want_cache.dims).unwrap(),
            data: OutputData::F32(bytemuck::cast_slice(&bytes).to_vec()),
        };
        assert_close(&format!("{op} in place y (fuse {fuse})"), &out[0], wy, TOL);
        assert_close(
            &format!("{op} in place cache (fuse {fuse})"),
            &got,
            want_cache,
            TOL,
        );
    }
}

/// The recurrent layer's pattern — gather the state rows of the slots, scan, store the new
/// state back — fused into a scan that works on the cache rows in place equals the three ops
/// run one by one, and both equal the reference.
pub fn ssm_scan_in_place(be: &mut dyn Backend) {
    // (a prompt of 47 tokens runs in chunks on the GPU, each reading the state before the last
    // chunk writes it)
    // (and Mamba2's states: a decode step and a short prompt over 16 lanes a row, a long one
    // chunked)
    for (t, n) in [(3, 16), (47, 16), (1, 128), (3, 64), (40, 128)] {
        ssm_scan_in_place_case(be, t, n);
    }
}

fn ssm_scan_in_place_case(be: &mut dyn Backend, t: usize, n: usize) {
    let (s, h, p) = (2, 4, 2);
    let slots = [3, 1];
    let mut rg = rng(31 + t as u64);
    let mut c = Case::new();
    let (cache, buf, init, cache_n, ids) = state_cache(be, &mut c, &mut rg, 5, h * p * n, &slots);
    let (x, xn) = c.input(&mut rg, "x", &[s, t, h, p]);
    let (dt, dtn) = scan_dt(&mut c, &mut rg, &[s, t, h]);
    let (a, an) = scan_a(&mut c, &mut rg, &[h, 1]);
    let (bm, bn) = c.input(&mut rg, "b", &[s, t, 1, n]);
    let (cm, cn) = c.input(&mut rg, "c", &[s, t, 1, n]);
    let state = load_state(&mut c, cache, ids, &[s, h, p, n]);
    let (y, ns) = c.b.ssm_scan(state, x, dt, a, bm, cm).unwrap();
    store_state(&mut c, cache, ns, ids);
    c.output(y, "y");
    let stn = gather_state(&cache_n, &slots, &[s, h, p, n]);
    let (wy, ws) = r::ssm_scan(&stn, &xn, &dtn, &an, &bn, &cn);
    let want = scatter_state(&cache_n, &slots, &ws);
    check_state_in_place(be, c, "ssm_scan", buf, &init, &wy, &want);
}

/// The same for the gated delta rule, in both of its forms.
/// The third variant normalises q and k first (rms norm, q scaled too), which the
/// `delta_qk_norm` pass moves into the delta rule itself.
pub fn gated_delta_net_in_place(be: &mut dyn Backend) {
    for (form, t, normed, dk) in [
        (DeltaForm::Recurrent, 1, false, 8),
        (DeltaForm::Chunked, 6, false, 8),
        (DeltaForm::Recurrent, 2, true, 8),
        // rows normalised over more than the 64 partial sums of the norm
        (DeltaForm::Recurrent, 2, true, 136),
        // long enough for the GPU's chunks
        (DeltaForm::Chunked, 33, false, 8),
        (DeltaForm::Chunked, 40, true, 136),
    ] {
        let (s, hk, hv, dv) = (2, 1, 2, 4);
        let slots = [0, 2];
        let mut rg = rng(32);
        let mut c = Case::new();
        let (cache, buf, init, cache_n, ids) =
            state_cache(be, &mut c, &mut rg, 3, hv * dv * dk, &slots);
        let (mut q, mut qn) = c.input(&mut rg, "q", &[s, t, hk, dk]);
        let (mut k, mut kn) = c.input(&mut rg, "k", &[s, t, hk, dk]);
        if normed {
            q = c.b.rms_norm(q, 1e-6).unwrap();
            q = c.b.scale(q, 0.35).unwrap();
            k = c.b.rms_norm(k, 1e-6).unwrap();
            qn = r::rms_norm(&qn, 1e-6);
            qn.data.iter_mut().for_each(|x| *x *= 0.35);
            kn = r::rms_norm(&kn, 1e-6);
        }
        // (the normed cases read v as the first columns of wider rows, through its strides)
        let (v, vn) = if normed {
            let row = hv * dv + 3;
            let (vw, vwn) = c.input(&mut rg, "vw", &[s, t, row]);
            let v =
                c.b.view(vw, &[s, t, hv, dv], &[t * row, row, dv, 1], 0)
                    .unwrap();
            let vals = (0..s * t)
                .flat_map(|i| vwn.data[i * row..i * row + hv * dv].to_vec())
                .collect();
            (v, Nd::new(&[s, t, hv, dv], vals))
        } else {
            c.input(&mut rg, "v", &[s, t, hv, dv])
        };
        let ((gt, gn), (beta, bn)) = delta_gates(&mut c, &mut rg, [s, t, hv]);
        let state = load_state(&mut c, cache, ids, &[s, hv, dv, dk]);
        let (y, ns) = c.b.gated_delta_net(state, q, k, v, gt, beta, form).unwrap();
        store_state(&mut c, cache, ns, ids);
        c.output(y, "y");
        if normed {
            assert_eq!(scheduled(c.b.graph(), true), ["gated_delta_net"]);
        }
        let stn = gather_state(&cache_n, &slots, &[s, hv, dv, dk]);
        let (wy, ws) = r::gated_delta_net(&stn, &qn, &kn, &vn, &gn, &bn);
        let want = scatter_state(&cache_n, &slots, &ws);
        check_state_in_place(be, c, "gated_delta_net", buf, &init, &wy, &want);
    }
}

/// Qwen3-Next's gates computed inside the delta rule (`delta_gates`): `g = softplus(a + bias) ·
/// A` read through a reshape from per-group heads, `beta = sigmoid(b)`, on a state in a cache
/// and on a plain one; one kernel each, against the reference.
pub fn gated_delta_net_gates(be: &mut dyn Backend) {
    // (a prompt long enough for the GPU's chunks last)
    for (in_cache, t) in [(false, 3), (true, 3), (false, 36), (true, 36)] {
        let (s, hk, hv, dk, dv) = (2, 2, 4, 8, 4);
        let slots = [2, 0];
        let mut rg = rng(47);
        let mut c = Case::new();
        let (q, qn) = c.input(&mut rg, "q", &[s, t, hk, dk]);
        let (k, kn) = c.input(&mut rg, "k", &[s, t, hk, dk]);
        let (v, vn) = c.input(&mut rg, "v", &[s, t, hv, dv]);
        let (a, an) = c.input(&mut rg, "a", &[s, t, hk, hv / hk]);
        let (bias, biasn) = c.input(&mut rg, "dt_bias", &[hk, hv / hk]);
        let av: Vec<f32> = randn(&mut rg, hv).iter().map(|x| -x.abs()).collect();
        let (aneg, anegn) = c.input_values("A", &[hk, hv / hk], av);
        let (b, bn) = c.input(&mut rg, "b", &[s, t, hv]);
        let gx = c.b.add(a, bias).unwrap();
        let gx = c.b.softplus(gx).unwrap();
        let gx = c.b.mul(gx, aneg).unwrap();
        let gt = c.b.reshape(gx, &[s, t, hv]).unwrap();
        let beta = c.b.sigmoid(b).unwrap();
        let mut gn = Nd::zeros(&[s, t, hv]);
        let mut betan = Nd::zeros(&[s, t, hv]);
        for i in indices(&[s, t, hv]) {
            let (grp, j) = (i[2] / (hv / hk), i[2] % (hv / hk));
            let x = an.at(&[i[0], i[1], grp, j]) + biasn.at(&[grp, j]);
            gn.set(&i, (1.0 + x.exp()).ln() * anegn.at(&[grp, j]));
            betan.set(&i, 1.0 / (1.0 + (-bn.at(&i)).exp()));
        }
        let form = if t < 32 {
            DeltaForm::Recurrent
        } else {
            DeltaForm::Chunked
        };
        if in_cache {
            let (cache, buf, init, cache_n, ids) =
                state_cache(be, &mut c, &mut rg, 3, hv * dv * dk, &slots);
            let state = load_state(&mut c, cache, ids, &[s, hv, dv, dk]);
            let (y, ns) = c.b.gated_delta_net(state, q, k, v, gt, beta, form).unwrap();
            store_state(&mut c, cache, ns, ids);
            c.output(y, "y");
            assert_eq!(scheduled(c.b.graph(), true), ["gated_delta_net"]);
            let stn = gather_state(&cache_n, &slots, &[s, hv, dv, dk]);
            let (wy, ws) = r::gated_delta_net(&stn, &qn, &kn, &vn, &gn, &betan);
            let want = scatter_state(&cache_n, &slots, &ws);
            check_state_in_place(be, c, "gated_delta_net gates", buf, &init, &wy, &want);
        } else {
            let (st, stn) = c.input(&mut rg, "state", &[s, hv, dv, dk]);
            let (y, ns) = c.b.gated_delta_net(st, q, k, v, gt, beta, form).unwrap();
            c.output(y, "y");
            c.output(ns, "state");
            assert_eq!(scheduled(c.b.graph(), true), ["gated_delta_net"]);
            let out = c.run(be);
            let (wy, ws) = r::gated_delta_net(&stn, &qn, &kn, &vn, &gn, &betan);
            assert_close("gated_delta_net gates y", &out[0], &wy, TOL);
            assert_close("gated_delta_net gates state", &out[1], &ws, TOL);
        }
    }
}

/// The delta rule's per-token gates: log-decays `g ≤ 0` and write strengths `beta ≥ 0`, both
/// `[S, T, Hv]`.
fn delta_gates(
    c: &mut Case,
    rg: &mut rand::rngs::StdRng,
    [s, t, hv]: [usize; 3],
) -> ((Tensor, Nd), (Tensor, Nd)) {
    let gv: Vec<f32> = randn(rg, s * t * hv)
        .iter()
        .map(|x| -x.abs() * 0.5)
        .collect();
    let bv: Vec<f32> = randn(rg, s * t * hv).iter().map(|x| x.abs()).collect();
    (
        c.input_values("g", &[s, t, hv], gv),
        c.input_values("beta", &[s, t, hv], bv),
    )
}

/// The delta rule on heads of `[s, hk, hv, dk, dv]`.
fn delta_case(be: &mut dyn Backend, form: DeltaForm, t: usize, seed: u64, dims: [usize; 5]) {
    let mut rg = rng(seed);
    let [s, hk, hv, dk, dv] = dims;
    let mut c = Case::new();
    let sv: Vec<f32> = randn(&mut rg, s * hv * dv * dk)
        .iter()
        .map(|v| v * 0.3)
        .collect();
    let (st, stn) = c.input_values("state", &[s, hv, dv, dk], sv);
    let unit = |rg: &mut rand::rngs::StdRng, n: usize| -> Vec<f32> {
        let v = randn(rg, n * dk);
        v.chunks(dk)
            .flat_map(|r| {
                let l = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter().map(move |x| x / l).collect::<Vec<_>>()
            })
            .collect()
    };
    let (q, qn) = {
        let v = unit(&mut rg, s * t * hk);
        c.input_values("q", &[s, t, hk, dk], v)
    };
    let (k, kn) = {
        let v = unit(&mut rg, s * t * hk);
        c.input_values("k", &[s, t, hk, dk], v)
    };
    let (v, vn) = c.input(&mut rg, "v", &[s, t, hv, dv]);
    let ((g, gn), (beta, bn)) = delta_gates(&mut c, &mut rg, [s, t, hv]);
    let (y, ns) =
        c.b.gated_delta_net(st, q, k, v, g, beta, form)
            .expect("gdn");
    c.output(y, "y");
    c.output(ns, "state");
    let out = c.run(be);
    let (wy, ws) = r::gated_delta_net(&stn, &qn, &kn, &vn, &gn, &bn);
    assert_close(&format!("gated_delta_net {form:?} y"), &out[0], &wy, TOL);
    assert_close(
        &format!("gated_delta_net {form:?} state"),
        &out[1],
        &ws,
        TOL,
    );
}

/// Small heads, then key heads wider than a GPU row's 32 lanes hold one at a time (136 dims:
/// five per lane, the last partly) and a value head count of rows that is no multiple of 4.
pub fn gated_delta_net_recurrent(be: &mut dyn Backend) {
    delta_case(be, DeltaForm::Recurrent, 1, 25, [2, 2, 4, 8, 6]);
    delta_case(be, DeltaForm::Recurrent, 9, 26, [2, 2, 4, 8, 6]);
    delta_case(be, DeltaForm::Recurrent, 3, 33, [1, 1, 2, 136, 7]);
    // keys past the CPU's last 8 lanes, value rows past its last block of four
    delta_case(be, DeltaForm::Recurrent, 5, 53, [1, 1, 2, 20, 9]);
}

/// Short prompts (a token loop on the GPU), then prompts long enough for the GPU's chunked
/// kernels: exactly one chunk of 32; two chunks and part of a third; wide keys over three
/// chunks with the last one partial; the widest keys (256) over two whole chunks.
pub fn gated_delta_net_chunked(be: &mut dyn Backend) {
    delta_case(be, DeltaForm::Chunked, 11, 27, [2, 2, 4, 8, 6]);
    delta_case(be, DeltaForm::Chunked, 7, 28, [2, 2, 4, 8, 6]);
    delta_case(be, DeltaForm::Chunked, 32, 36, [2, 2, 4, 8, 6]);
    delta_case(be, DeltaForm::Chunked, 64, 37, [1, 1, 2, 256, 5]);
    delta_case(be, DeltaForm::Chunked, 75, 34, [2, 2, 4, 8, 6]);
    delta_case(be, DeltaForm::Chunked, 70, 35, [1, 1, 2, 136, 7]);
}

pub fn reductions_and_top_k(be: &mut dyn Backend) {
    let mut rg = rng(29);
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[4, 11]);
    let sum = c.b.reduce(ReduceOp::Sum, x).expect("sum");
    let mean = c.b.reduce(ReduceOp::Mean, x).expect("mean");
    let am = c.b.reduce(ReduceOp::Argmax, x).expect("argmax");
    let tk = c.b.top_k(x, 3).expect("top_k");
    c.output(sum, "sum");
    c.output(mean, "mean");
    c.output(am, "argmax");
    c.output(tk, "topk");
    let out = c.run(be);
    let rows: Vec<&[f64]> = xn.data.chunks(11).collect();
    assert_close(
        "sum",
        &out[0],
        &Nd::new(&[4, 1], rows.iter().map(|r| r.iter().sum()).collect()),
        TOL,
    );
    assert_close(
        "mean",
        &out[1],
        &Nd::new(
            &[4, 1],
            rows.iter().map(|r| r.iter().sum::<f64>() / 11.0).collect(),
        ),
        TOL,
    );
    let order = |r: &[f64]| {
        let mut i: Vec<usize> = (0..r.len()).collect();
        i.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
        i
    };
    let am_want: Vec<i32> = rows.iter().map(|r| order(r)[0] as i32).collect();
    assert_eq!(out[2].i32().expect("i32"), &am_want[..]);
    let tk_want: Vec<i32> = rows
        .iter()
        .flat_map(|r| order(r)[..3].iter().map(|&i| i as i32).collect::<Vec<_>>())
        .collect();
    assert_eq!(out[3].i32().expect("i32"), &tk_want[..]);
}

pub fn store_rows(be: &mut dyn Backend) {
    let mut rg = rng(30);
    for dtype in [DType::F32, DType::F16] {
        let mut c = Case::new();
        let init = randn(&mut rg, 6 * 4);
        let (cache, cn) = c.external(be, "cache", &[6, 4], dtype, &init, Access::ReadWrite);
        let (src, sn) = c.input(&mut rg, "src", &[2, 4]);
        let idx = c.ids("idx", &[2], vec![4, 1]);
        let after = c.b.store_rows(cache, src, idx).expect("store");
        // read the written rows back in the same run, through the write
        let rd = c.ids("rd", &[3], vec![1, 4, 0]);
        let got = c.b.get_rows(after, rd).expect("get_rows");
        c.output(got, "got");
        let out = c.run(be);
        let round = |v: f64| {
            if dtype == DType::F16 {
                half::f16::from_f64(v).to_f64()
            } else {
                v
            }
        };
        let mut want = Nd::zeros(&[3, 4]);
        for j in 0..4 {
            want.set(&[0, j], round(sn.at(&[1, j])));
            want.set(&[1, j], round(sn.at(&[0, j])));
            want.set(&[2, j], cn.at(&[0, j]));
        }
        assert_close(&format!("store_rows {dtype}"), &out[0], &want, 0.0);
    }
}

/// Random graphs give the same results fused, unfused and without memory reuse (the harness
/// compares the three), and match an unoptimized plan run on a fresh backend.
pub fn random_graphs(be: &mut dyn Backend) {
    for seed in 0..40 {
        let (g, inputs) = weft_graph::testing::random_graph(seed, 6 + seed as usize % 30);
        let host: Vec<(&str, weft_backends::HostData)> = inputs
            .iter()
            .map(|(n, v)| (n.as_str(), weft_backends::HostData::F32(v)))
            .collect();
        let naive = weft_graph::PlanOptions {
            passes: weft_graph::passes::PassOptions {
                fuse: false,
                ..Default::default()
            },
            reuse: false,
            in_place: false,
        };
        let want = run_graph(be, &g, naive, &host);
        let got = run_graph(be, &g, weft_graph::PlanOptions::default(), &host);
        for (a, b) in got.iter().zip(&want) {
            let (x, y) = (a.to_f32(), b.to_f32());
            assert_eq!(x.len(), y.len());
            for (p, q) in x.iter().zip(&y) {
                assert!(
                    (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                    "seed {seed}: {} {p} vs {q}",
                    a.name
                );
            }
        }
    }
}

/// Fusion cuts the dispatches the backend really records (counted by its per-node timings),
/// and the fused run equals the unfused one.
pub fn fusion_cuts_dispatches(be: &mut dyn Backend) {
    let mut rg = rng(31);
    let mut c = Case::new();
    let (x, _) = c.input(&mut rg, "x", &[3, 8]);
    let (w, _) = c.input(&mut rg, "w", &[8]);
    let (wg, _) = c.input(&mut rg, "wg", &[16, 8]);
    let (wu, _) = c.input(&mut rg, "wu", &[16, 8]);
    let n = c.b.rms_norm(x, 1e-5).unwrap();
    let h = c.b.mul(n, w).unwrap();
    let g = c.b.matmul(h, wg).unwrap();
    let u = c.b.matmul(h, wu).unwrap();
    let sg = c.b.silu(g).unwrap();
    let a = c.b.mul(sg, u).unwrap();
    let s = c.b.sigmoid(a).unwrap();
    let y = c.b.add(s, a).unwrap();
    c.output(y, "y");
    let (g, inputs) = c.finish();
    let host: Vec<(&str, weft_backends::HostData)> = inputs
        .iter()
        .map(|(n, v)| (n.as_str(), weft_backends::HostData::F32(v)))
        .collect();
    be.set_profiling(true);
    let mut counts = vec![];
    let mut outs = vec![];
    for fuse in [false, true] {
        let p = weft_graph::plan(
            &g,
            weft_graph::PlanOptions {
                passes: weft_graph::passes::PassOptions {
                    fuse,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let prog = be.compile(&p).unwrap();
        outs.push(be.run(prog, &host).unwrap()[0].to_f32());
        let t = be.timings(prog).expect("profiling was on");
        assert_eq!(t.len(), p.dispatches(), "one timing per dispatch");
        counts.push(t.len());
        be.release(prog).unwrap();
    }
    be.set_profiling(false);
    assert!(
        counts[1] < counts[0],
        "fused {} vs unfused {} dispatches",
        counts[1],
        counts[0]
    );
    for (a, b) in outs[0].iter().zip(&outs[1]) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()));
    }
}

/// Wrong inputs, buffers and programs are errors that name what is at fault.
pub fn bad_inputs_are_errors(be: &mut dyn Backend) {
    use weft_backends::{BackendError, HostData};
    let mut b = weft_graph::GraphBuilder::new();
    let x = b.input("x", &[2, 3], DType::F32).unwrap();
    let y = b.silu(x).unwrap();
    b.output(y, "y").unwrap();
    let p = weft_graph::plan(&b.finish(), weft_graph::PlanOptions::default());
    let prog = be.compile(&p).unwrap();
    let e = be.run(prog, &[]).unwrap_err();
    assert!(
        matches!(&e, BackendError::MissingInput(n) if n == "x"),
        "{e}"
    );
    let e = be
        .run(prog, &[("x", HostData::F32(&[1.0; 5]))])
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::BadInput { name, .. } if name == "x"),
        "{e}"
    );
    let e = be.run(prog, &[("x", HostData::I32(&[1; 6]))]).unwrap_err();
    assert!(matches!(e, BackendError::BadInput { .. }), "{e}");
    assert!(be.run(prog, &[("x", HostData::F32(&[0.5; 6]))]).is_ok());
    be.release(prog).unwrap();
    assert!(matches!(
        be.run(prog, &[]).unwrap_err(),
        BackendError::UnknownProgram(_)
    ));
    let buf = be.alloc(10).unwrap();
    assert!(matches!(
        be.upload(buf, 8, &[0; 4]).unwrap_err(),
        BackendError::OutOfBounds { .. }
    ));
    let mut out = [0u8; 4];
    assert!(matches!(
        be.download(buf, 7, &mut out).unwrap_err(),
        BackendError::OutOfBounds { .. }
    ));
    // odd offsets and lengths round-trip
    be.upload(buf, 3, &[1, 2, 3, 4, 5]).unwrap();
    let mut all = [0u8; 10];
    be.download(buf, 0, &mut all).unwrap();
    assert_eq!(all, [0, 0, 0, 1, 2, 3, 4, 5, 0, 0]);
    // a weight bound to a buffer smaller than its tensor
    let mut b = weft_graph::GraphBuilder::new();
    let w = b.weight("w", &[4, 4], DType::F32, buf).unwrap();
    let x = b.input("x", &[1, 4], DType::F32).unwrap();
    let y = b.matmul(x, w).unwrap();
    b.output(y, "y").unwrap();
    let e = be
        .compile(&weft_graph::plan(
            &b.finish(),
            weft_graph::PlanOptions::default(),
        ))
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::ExternalTooSmall { name, .. } if name == "w"),
        "{e}"
    );
    be.free(buf).unwrap();
    assert!(matches!(
        be.free(buf).unwrap_err(),
        BackendError::UnknownBuffer(_)
    ));
}

fn silu(x: f64) -> f64 {
    x * r::sigmoid(x)
}

/// `f(a, b)` element by element, `b` broadcast to `a`'s shape.
fn zip_broadcast(a: &Nd, b: &Nd, f: impl Fn(f64, f64) -> f64) -> Nd {
    let mut out = a.clone();
    for i in indices(&a.dims) {
        out.set(&i, f(a.at(&i), b.at_broadcast(&i)));
    }
    out
}

/// Elementwise work right after a matmul, a conv or a scan on its cache runs as that op writes
/// (`epilogue`): the fused plan schedules the op alone, and matches the reference. Covers the
/// decode mat-vec and the prompt tiles, a reshaping view between op and activation, the conv
/// with and without its cache, and both scan kernels (states of 16 and of 96).
pub fn epilogues(be: &mut dyn Backend) {
    let mut rg = rng(41);
    // projection + bias + softplus (Mamba's dt), decode and prompt rows, the second read
    // through a reshape with a broadcast operand
    for (dtype, m, n, k) in [(DType::F16, 1, 36, 64), (DType::Q4K, 7, 40, 256)] {
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[m, k]);
        let (w, wn) = weight(be, &mut c, &mut rg, "w", &[n, k], dtype);
        let (bias, bn) = c.input(&mut rg, "bias", &[n / 4, 4]);
        let y = c.b.matmul(x, w).unwrap();
        let y = c.b.reshape(y, &[m, n / 4, 4]).unwrap();
        let y = c.b.add(y, bias).unwrap();
        let y = c.b.softplus(y).unwrap();
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["mul_mat"], "{dtype}");
        let out = c.run(be);
        let mut want = r::matmul(&seen_activations(be, dtype, &xn), &wn);
        want.dims = vec![m, n / 4, 4];
        let want = zip_broadcast(&want, &bn, |a, b| r::unary("softplus", a + b, (0.0, 0.0)));
        assert_close(
            &format!("mul_mat + softplus {dtype} M={m}"),
            &out[0],
            &want,
            matmul_tol(be),
        );
    }
    // the last columns of a mat-vec (Mamba2's dt) take their bias and softplus as the mat-vec
    // writes them, the other columns left as they are
    {
        let (k, n, tail) = (64, 40, 12);
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[1, k]);
        let (bias, bn) = c.input(&mut rg, "bias", &[tail]);
        let (w, wn) = weight(be, &mut c, &mut rg, "w", &[n, k], DType::Q8_0);
        let y = c.b.matmul(x, w).unwrap();
        let head = c.b.slice(y, 1, 0, n - tail).unwrap();
        let dt = c.b.slice(y, 1, n - tail, tail).unwrap();
        let dt = c.b.add(dt, bias).unwrap();
        let dt = c.b.softplus(dt).unwrap();
        c.output(head, "head");
        c.output(dt, "dt");
        assert_eq!(scheduled(c.b.graph(), true), ["mul_mat"]);
        let out = c.run(be);
        let full = r::matmul(&seen_activations(be, DType::Q8_0, &xn), &wn);
        let want_head = Nd::new(&[1, n - tail], full.data[..n - tail].to_vec());
        let mut want_dt = Nd::new(&[1, tail], full.data[n - tail..].to_vec());
        for (j, o) in want_dt.data.iter_mut().enumerate() {
            *o = r::unary("softplus", *o + bn.data[j], (0.0, 0.0));
        }
        assert_close(
            "mul_mat, untouched columns",
            &out[0],
            &want_head,
            matmul_tol(be),
        );
        assert_close(
            "mul_mat + ranged softplus",
            &out[1],
            &want_dt,
            matmul_tol(be),
        );
    }
    // elementwise sources of an epilogue run inside it: a gate's sigmoid, and a sum of two
    // expert rows read through a reshape (a shared expert's down projection in a mixture)
    {
        let (k, n) = (64, 12);
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[1, k]);
        let (w, wn) = weight(be, &mut c, &mut rg, "w", &[n, k], DType::F16);
        let (r, rn) = c.input(&mut rg, "r", &[1, n]);
        let (e, en) = c.input(&mut rg, "e", &[1, 2, n]);
        let (gi, gn) = c.input(&mut rg, "g", &[1, 1]);
        let e0 = c.b.slice(e, 1, 0, 1).unwrap();
        let e1 = c.b.slice(e, 1, 1, 1).unwrap();
        let sum = c.b.add(e0, e1).unwrap();
        let sum = c.b.reshape(sum, &[1, n]).unwrap();
        let gate = c.b.sigmoid(gi).unwrap();
        let y = c.b.matmul(x, w).unwrap();
        let y = c.b.mul(y, gate).unwrap();
        let y = c.b.add(y, sum).unwrap();
        let y = c.b.add(y, r).unwrap();
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["mul_mat"]);
        let out = c.run(be);
        let mut want = r::matmul(&xn, &wn);
        let g = r::sigmoid(gn.data[0]);
        for (j, o) in want.data.iter_mut().enumerate() {
            *o = *o * g + en.data[j] + en.data[n + j] + rn.data[j];
        }
        assert_close("mul_mat + inlined sources", &out[0], &want, matmul_tol(be));
    }
    // conv + bias + silu, the window given and the window in its cache
    {
        let (s, k, t, ch) = (2, 4, 3, 6);
        let mut c = Case::new();
        let (st, stn) = c.input(&mut rg, "state", &[s, k - 1, ch]);
        let (x, xn) = c.input(&mut rg, "x", &[s, t, ch]);
        let (w, wn) = c.input(&mut rg, "w", &[ch, k]);
        let (bias, bn) = c.input(&mut rg, "bias", &[ch]);
        let (y, _) = c.b.ssm_conv(st, x, w).unwrap();
        let y = c.b.add(y, bias).unwrap();
        let y = c.b.silu(y).unwrap();
        c.output(y, "y");
        assert!(!scheduled(c.b.graph(), true).contains(&"fused"));
        let out = c.run(be);
        let (want, _) = conv_reference(&stn, &xn, &wn);
        let want = zip_broadcast(&want, &bn, |a, b| silu(a + b));
        assert_close("ssm_conv + silu", &out[0], &want, matmul_tol(be));
    }
    {
        let (s, t, k, ch) = (2, 2, 4, 6);
        let slots = [1, 0];
        let mut c = Case::new();
        let (cache, buf, init, cache_n, ids) =
            state_cache(be, &mut c, &mut rg, 3, (k - 1) * ch, &slots);
        let (x, xn) = c.input(&mut rg, "x", &[s, t, ch]);
        let (w, wn) = c.input(&mut rg, "w", &[ch, k]);
        let (bias, bn) = c.input(&mut rg, "bias", &[ch]);
        let state = load_state(&mut c, cache, ids, &[s, k - 1, ch]);
        let (y, ns) = c.b.ssm_conv(state, x, w).unwrap();
        store_state(&mut c, cache, ns, ids);
        let y = c.b.add(y, bias).unwrap();
        let y = c.b.silu(y).unwrap();
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["ssm_conv"]);
        let stn = gather_state(&cache_n, &slots, &[s, k - 1, ch]);
        let (wy, ws) = conv_reference(&stn, &xn, &wn);
        let wy = zip_broadcast(&wy, &bn, |a, b| silu(a + b));
        let want = scatter_state(&cache_n, &slots, &ws);
        check_state_in_place(be, c, "ssm_conv + silu", buf, &init, &wy, &want);
    }
    // scan on its cache + skip (y + x·D) + gate (· silu(z)), Mamba1's and a large state; the
    // second gates through a reshape (Mamba2's), so two programs compose after the scan
    // (and Mamba1's over a prompt long enough to run in chunks on the GPU)
    for (h, p, n, reshaped, t) in [
        (12, 1, 16, false, 3),
        (12, 1, 16, false, 47),
        (2, 4, 96, true, 3),
        (2, 4, 96, true, 47),
    ] {
        let s = 2;
        let slots = [2, 0];
        let mut c = Case::new();
        let (cache, buf, init, cache_n, ids) =
            state_cache(be, &mut c, &mut rg, 3, h * p * n, &slots);
        let (x, xn) = c.input(&mut rg, "x", &[s, t, h, p]);
        let (dt, dtn) = scan_dt(&mut c, &mut rg, &[s, t, h]);
        let (a, an) = scan_a(&mut c, &mut rg, &[h, n]);
        let (bm, bn) = c.input(&mut rg, "b", &[s, t, 1, n]);
        let (cm, cn) = c.input(&mut rg, "c", &[s, t, 1, n]);
        // (Mamba2's skip is per head, broadcast over the head's channels)
        let (d, dn) = c.input(&mut rg, "d", &[h, if reshaped { 1 } else { p }]);
        let zdims = if reshaped {
            vec![s, t, h * p]
        } else {
            vec![s, t, h, p]
        };
        let (z, mut zn) = c.input(&mut rg, "z", &zdims);
        let state = load_state(&mut c, cache, ids, &[s, h, p, n]);
        let (y, ns) = c.b.ssm_scan(state, x, dt, a, bm, cm).unwrap();
        store_state(&mut c, cache, ns, ids);
        let xd = c.b.mul(x, d).unwrap();
        let y = c.b.add(y, xd).unwrap();
        let y = if reshaped {
            c.b.reshape(y, &zdims).unwrap()
        } else {
            y
        };
        let zs = c.b.silu(z).unwrap();
        let y = c.b.mul(y, zs).unwrap();
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["ssm_scan"], "N={n}");
        let stn = gather_state(&cache_n, &slots, &[s, h, p, n]);
        let (wy, ws) = r::ssm_scan(&stn, &xn, &dtn, &an, &bn, &cn);
        let skip = zip_broadcast(&xn, &dn, |x, d| x * d);
        let wy = zip_broadcast(&wy, &skip, |y, s| y + s);
        zn.dims = wy.dims.clone();
        let mut wy = zip_broadcast(&wy, &zn, |y, z| y * silu(z));
        wy.dims = zdims.clone();
        let want = scatter_state(&cache_n, &slots, &ws);
        check_state_in_place(
            be,
            c,
            &format!("ssm_scan + gate N={n} T={t}"),
            buf,
            &init,
            &wy,
            &want,
        );
    }
}

/// Mamba1's step with `dt = softplus(x_dbl[.., :K]·Wᵀ + bias)` computed by the scan as it reads
/// it (`scan_dt`), the scan on its cache with its skip and gate: one dispatch for a decode step.
/// F16 and Q8_0 weights; one sequence of one token, and two of two (dt's columns, B and C read
/// through their strides out of `x_dbl`); and Jamba's, whose dt columns, B and C are normalised (each times a
/// weight) first, the scan normalising B and C as it reads them (`scan_bc_norm`).
pub fn ssm_scan_dt(be: &mut dyn Backend) {
    let mut rg = rng(61);
    for (s, t, k, dtype, norm) in [
        (1, 1, 12, DType::F16, false),
        (2, 2, 32, DType::Q8_0, false),
        (1, 1, 16, DType::F16, true),
        (2, 2, 32, DType::F16, true),
    ] {
        let (h, n, row) = (24, 16, k + 32);
        let slots = [2, 0];
        let mut c = Case::new();
        let (cache, buf, init, cache_n, ids) =
            state_cache(be, &mut c, &mut rg, 3, h * n, &slots[..s]);
        let (x, xn) = c.input(&mut rg, "x", &[s, t, h, 1]);
        let (xdbl, xdn) = c.input(&mut rg, "x_dbl", &[s, t, row]);
        let (w, wn) = weight(be, &mut c, &mut rg, "dt_w", &[h, k], dtype);
        let (bias, biasn) = c.input(&mut rg, "dt_b", &[h]);
        let (a, an) = scan_a(&mut c, &mut rg, &[h, n]);
        let (d, dn) = c.input(&mut rg, "d", &[h, 1]);
        let (z, zn) = c.input(&mut rg, "z", &[s, t, h, 1]);
        let (nw, nwn) = c.input(&mut rg, "dt_norm", &[k]);
        let mut xr = c.b.slice(xdbl, 2, 0, k).unwrap();
        if norm {
            xr = c.b.rms_norm(xr, 1e-6).unwrap();
            xr = c.b.mul(xr, nw).unwrap();
        }
        let dt = c.b.matmul(xr, w).unwrap();
        let dt = c.b.add(dt, bias).unwrap();
        let dt = c.b.softplus(dt).unwrap();
        let strides = [t * row, row, n, 1];
        let mut bm = c.b.view(xdbl, &[s, t, 1, n], &strides, k).unwrap();
        let mut cm = c.b.view(xdbl, &[s, t, 1, n], &strides, k + n).unwrap();
        let (bw, bwn) = c.input(&mut rg, "b_norm", &[n]);
        let (cw, cwn) = c.input(&mut rg, "c_norm", &[n]);
        if norm {
            for (x, w) in [(&mut bm, bw), (&mut cm, cw)] {
                *x = c.b.rms_norm(*x, 1e-6).unwrap();
                *x = c.b.mul(*x, w).unwrap();
            }
        }
        let state = load_state(&mut c, cache, ids, &[s, h, 1, n]);
        let (y, ns) = c.b.ssm_scan(state, x, dt, a, bm, cm).unwrap();
        store_state(&mut c, cache, ns, ids);
        let xd = c.b.mul(x, d).unwrap();
        let y = c.b.add(y, xd).unwrap();
        let zs = c.b.silu(z).unwrap();
        let y = c.b.mul(y, zs).unwrap();
        c.output(y, "y");
        // (several rows of dt's columns are normalised apart, only one inside the scan; the
        // columns, B and C are read in place)
        let ops = scheduled(c.b.graph(), true);
        let want: &[&str] = if norm && s * t > 1 {
            &["fused", "ssm_scan"]
        } else {
            &["ssm_scan"]
        };
        assert_eq!(ops, want);
        // the reference, from x_dbl's columns
        let part = |at: usize, len: usize, dims: &[usize]| {
            let v = (0..s * t)
                .flat_map(|r| xdn.data[r * row + at..r * row + at + len].to_vec())
                .collect();
            Nd::new(dims, v)
        };
        let mut xrn = part(0, k, &[s, t, k]);
        if norm {
            xrn = zip_broadcast(&r::rms_norm(&xrn, 1e-6), &nwn, |x, w| x * w);
        }
        let xrn = seen_activations(be, dtype, &xrn);
        let dtn = zip_broadcast(&r::matmul(&xrn, &wn), &biasn, |p, b| {
            r::unary("softplus", p + b, (0.0, 0.0))
        });
        let (mut bn, mut cn) = (part(k, n, &[s, t, 1, n]), part(k + n, n, &[s, t, 1, n]));
        if norm {
            bn = zip_broadcast(&r::rms_norm(&bn, 1e-6), &bwn, |x, w| x * w);
            cn = zip_broadcast(&r::rms_norm(&cn, 1e-6), &cwn, |x, w| x * w);
        }
        let stn = gather_state(&cache_n, &slots[..s], &[s, h, 1, n]);
        let (wy, ws) = r::ssm_scan(&stn, &xn, &dtn, &an, &bn, &cn);
        let skip = zip_broadcast(&xn, &dn, |x, d| x * d);
        let wy = zip_broadcast(&wy, &skip, |y, s| y + s);
        let wy = zip_broadcast(&wy, &zn, |y, z| y * silu(z));
        let want = scatter_state(&cache_n, &slots[..s], &ws);
        let what = format!("ssm_scan + dt {dtype:?} S={s} T={t} norm {norm}");
        check_state_in_place(be, c, &what, buf, &init, &wy, &want);
    }
}

/// A mat-vec whose row is an elementwise program read by it alone computes the row as it reads
/// it (`matvec_input`): a gated group norm (each head's `rms_norm(o)·w·silu(z)`, Qwen3-Next's)
/// before a projection with a residual, and a gated unit's `silu(gate)·up` (a shared expert's)
/// before its down projection. F16, Q8_0 and (the gated unit) Q4_K weights. (Rows up to 3072
/// long, 6144 where the adapter has 26 KiB of workgroup memory, are computed into workgroup
/// memory on the GPU, longer ones as they are read: all three.)
pub fn matvec_input(be: &mut dyn Backend) {
    let mut rg = rng(67);
    for dtype in [DType::F16, DType::Q8_0, DType::Q4K] {
        if dtype != DType::Q4K {
            // the gated group norm: 4 heads of 32 (a row shorter than Q4_K's blocks)
            let (heads, d, n) = (4, 32, 24);
            let mut c = Case::new();
            let (o, on) = c.input(&mut rg, "o", &[1, 1, heads, d]);
            let (z, zn) = c.input(&mut rg, "z", &[1, 1, heads, d]);
            let (nw, nwn) = c.input(&mut rg, "norm", &[d]);
            let (res, resn) = c.input(&mut rg, "res", &[1, n]);
            let (w, wn) = weight(be, &mut c, &mut rg, "w", &[n, heads * d], dtype);
            let h = c.b.rms_norm(o, 1e-6).unwrap();
            let h = c.b.mul(h, nw).unwrap();
            let zs = c.b.silu(z).unwrap();
            let h = c.b.mul(h, zs).unwrap();
            let h = c.b.reshape(h, &[1, heads * d]).unwrap();
            let y = c.b.matmul(h, w).unwrap();
            let y = c.b.add(y, res).unwrap();
            c.output(y, "y");
            assert_eq!(scheduled(c.b.graph(), true), ["mul_mat"]);
            let hn = zip_broadcast(&r::rms_norm(&on, 1e-6), &nwn, |x, w| x * w);
            let mut hn = zip_broadcast(&hn, &zn, |x, z| x * silu(z));
            hn.dims = vec![1, heads * d];
            let want = r::matmul(&seen_activations(be, dtype, &hn), &wn);
            let want = zip_broadcast(&want, &resn, |y, r| y + r);
            let out = c.run(be);
            assert_close(
                &format!("gated norm → mul_mat {dtype:?}"),
                &out[0],
                &want,
                TOL,
            );
        }

        // the gated unit: gate and up side by side in one row
        let ks = if dtype == DType::Q4K {
            [256, 3328, 6400]
        } else {
            [64, 3328, 6400]
        };
        for k in ks {
            let n = 16;
            let mut c = Case::new();
            let (gu, gun) = c.input(&mut rg, "gate_up", &[1, 2 * k]);
            let (w, wn) = weight(be, &mut c, &mut rg, "w", &[n, k], dtype);
            let gate = c.b.slice(gu, 1, 0, k).unwrap();
            let up = c.b.slice(gu, 1, k, k).unwrap();
            let a = c.b.silu(gate).unwrap();
            let h = c.b.mul(a, up).unwrap();
            let y = c.b.matmul(h, w).unwrap();
            c.output(y, "y");
            assert_eq!(scheduled(c.b.graph(), true), ["mul_mat"]);
            let hn: Vec<f64> = (0..k)
                .map(|i| silu(gun.data[i]) * gun.data[k + i])
                .collect();
            let hn = Nd::new(&[1, k], hn);
            let want = r::matmul(&seen_activations(be, dtype, &hn), &wn);
            let out = c.run(be);
            assert_close(
                &format!("silu(gate)·up → mul_mat {dtype:?} k={k}"),
                &out[0],
                &want,
                TOL,
            );
        }
    }
}

/// `v` as a cache of `dtype` holds it.
fn rounded(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// How the attention case gets its query and new key: as given, rotated by one rope over both
/// (q's and k's heads side by side, as after `rope_pair`), or by a rope each.
#[derive(Clone, Copy, Debug, PartialEq)]
enum QkRope {
    None,
    Merged(RopeMode),
    Separate(RopeMode),
}

/// A decode step's attention layer — the new key and value stored into row `idx` of their
/// caches, then attention over the caches' windows — runs as one attention that writes the
/// caches (`attention_store`), and that rotates q and the new key itself when a rope makes them
/// (`rope_attention`). Fused and unfused plans match the reference, and leave the same caches
/// behind, for F32, F16 and BF16 caches, with and without an output gate, normal and NeoX
/// ropes over part of each head; the last over 140 keys, the new one at 100 (the GPU then
/// splits the keys in chunks of 64: the chunk that writes the caches is not the new row's).
pub fn attention_kv_store(be: &mut dyn Backend) {
    let mut rg = rng(43);
    let small = (9, 6, 4);
    for (kv_dtype, gated, qk, (cells, n_kv, row)) in [
        (DType::F32, false, QkRope::None, small),
        (DType::F16, true, QkRope::Merged(RopeMode::Normal), small),
        (DType::BF16, false, QkRope::Separate(RopeMode::Neox), small),
        (DType::F32, false, QkRope::Merged(RopeMode::Neox), small),
        (
            DType::F16,
            true,
            QkRope::Merged(RopeMode::Normal),
            (150, 140, 100),
        ),
    ] {
        let (hq, hkv, d, dv) = (4, 2, 8, 6);
        let mut c = Case::new();
        let (q, qn, kn_new, knn) = qk_case(&mut c, &mut rg, qk, [hq, hkv, d]);
        let (vn_new, vnn) = c.input(&mut rg, "v_new", &[1, hkv * dv]);
        let kinit = randn(&mut rg, cells * hkv * d);
        let vinit = randn(&mut rg, cells * hkv * dv);
        let (kc, kcn) = c.external(
            be,
            "k",
            &[cells, hkv * d],
            kv_dtype,
            &kinit,
            Access::ReadWrite,
        );
        let (vc, vcn) = c.external(
            be,
            "v",
            &[cells, hkv * dv],
            kv_dtype,
            &vinit,
            Access::ReadWrite,
        );
        let idx = c.ids("idx", &[1], vec![row as i32]);
        let mv: Vec<f32> = (0..n_kv)
            .map(|j| {
                if j == 1 {
                    f32::NEG_INFINITY
                } else {
                    0.1 * j as f32
                }
            })
            .collect();
        let (mask, mn) = c.input_values("mask", &[1, n_kv], mv);
        let (gate, gn) = if gated {
            let (g, gn) = c.input(&mut rg, "gate", &[1, hq, dv]);
            (Some(g), Some(gn))
        } else {
            (None, None)
        };
        let kc2 = c.b.store_rows(kc, kn_new, idx).unwrap();
        let vc2 = c.b.store_rows(vc, vn_new, idx).unwrap();
        let ks = c.b.slice(kc2, 0, 0, n_kv).unwrap();
        let vs = c.b.slice(vc2, 0, 0, n_kv).unwrap();
        let ks = c.b.reshape(ks, &[n_kv, hkv, d]).unwrap();
        let vs = c.b.reshape(vs, &[n_kv, hkv, dv]).unwrap();
        let y =
            c.b.attention(q, ks, vs, Some(mask), gate, 0.3, false)
                .unwrap();
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["attention"], "{kv_dtype}");
        let bufs = [kc, vc].map(|t| match c.b.graph().node(t.id).op {
            weft_graph::Op::External { buffer, .. } => buffer,
            _ => unreachable!("an external"),
        });
        // the reference caches after the writes, and their windows
        let mut want_k = kcn.clone();
        let mut want_v = vcn.clone();
        for e in 0..hkv * d {
            want_k.set(&[row, e], rounded(kv_dtype, knn.data[e] as f32) as f64);
        }
        for e in 0..hkv * dv {
            want_v.set(&[row, e], rounded(kv_dtype, vnn.data[e] as f32) as f64);
        }
        let window =
            |cache: &Nd, w: usize| Nd::new(&[n_kv, hkv, w], cache.data[..n_kv * hkv * w].to_vec());
        let want = r::attention(
            &qn,
            &window(&want_k, d),
            &window(&want_v, dv),
            Some(&mn),
            gn.as_ref(),
            0.3,
            false,
        );
        // each plan from the initial caches: fused (the attention writes them) and unfused
        let (g, f32s, i32s) = c.into_parts();
        let mut inputs: Vec<(&str, HostData)> = f32s
            .iter()
            .map(|(k, v)| (k.as_str(), HostData::F32(v)))
            .collect();
        inputs.extend(i32s.iter().map(|(k, v)| (k.as_str(), HostData::I32(v))));
        for fuse in [true, false] {
            for (buf, init) in [(bufs[0], &kinit), (bufs[1], &vinit)] {
                let stored: Vec<f32> = init.iter().map(|&x| rounded(kv_dtype, x)).collect();
                let bytes: Vec<u8> = match kv_dtype {
                    DType::F32 => bytemuck::cast_slice(&stored).to_vec(),
                    DType::F16 => stored
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                    _ => stored
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                };
                be.upload(buf, 0, &bytes).unwrap();
            }
            let opts = weft_graph::PlanOptions {
                passes: weft_graph::passes::PassOptions {
                    fuse,
                    ..Default::default()
                },
                ..Default::default()
            };
            let out = run_graph(be, &g, opts, &inputs);
            let what = format!("attention + kv store {kv_dtype} (fuse {fuse})");
            assert_close(&what, &out[0], &want, TOL);
            // (a rotated key is computed, so it matches to rounding; a copied one exactly)
            let tol = match (qk, kv_dtype) {
                (QkRope::None, _) => 0.0,
                (_, DType::F32) => TOL,
                _ => 1e-3,
            };
            let caches = [(bufs[0], &want_k), (bufs[1], &want_v)];
            check_caches(be, kv_dtype, caches, tol, &what);
        }
    }
}

/// Downloads each cache and compares it with its reference (within `tol`).
fn check_caches(
    be: &mut dyn Backend,
    kv_dtype: DType,
    caches: [(weft_graph::BufferId, &Nd); 2],
    tol: f64,
    what: &str,
) {
    for (buf, want) in caches {
        let n = want.data.len();
        let mut bytes = vec![0u8; kv_dtype.bytes_for(n).unwrap()];
        be.download(buf, 0, &mut bytes).unwrap();
        let got: Vec<f32> = match kv_dtype {
            DType::F32 => bytemuck::cast_slice(&bytes).to_vec(),
            DType::F16 => bytemuck::cast_slice::<u8, half::f16>(&bytes)
                .iter()
                .map(|h| h.to_f32())
                .collect(),
            _ => bytemuck::cast_slice::<u8, half::bf16>(&bytes)
                .iter()
                .map(|h| h.to_f32())
                .collect(),
        };
        let got = Output {
            name: "cache".into(),
            shape: weft_graph::Shape::new(&want.dims).unwrap(),
            data: OutputData::F32(got),
        };
        assert_close(&format!("{what}: cache"), &got, want, tol);
    }
}

/// A gated unit's gate and up mat-vecs (one `mul_mat_cat` of two weights) meet column by
/// column in `matmul_pair`, whose epilogue is the activation: SwiGLU with mixed dtypes, and
/// GEGLU with one more broadcast source, against the reference.
pub fn matmul_pair(be: &mut dyn Backend) {
    let mut rg = rng(44);
    let k = 256;
    for (gd, ud, n, scaled) in [
        (DType::F16, DType::F16, 37, false),
        (DType::Q4K, DType::Q8_0, 20, true),
    ] {
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[1, k]);
        let (wg, wgn) = weight(be, &mut c, &mut rg, "gate", &[n, k], gd);
        let (wu, wun) = weight(be, &mut c, &mut rg, "up", &[n, k], ud);
        let (sc, scn) = c.input(&mut rg, "scale", &[n]);
        let g = c.b.matmul(x, wg).unwrap();
        let u = c.b.matmul(x, wu).unwrap();
        let y = if scaled {
            let a = c.b.unary(UnaryOp::Gelu, g).unwrap();
            let y = c.b.mul(u, a).unwrap();
            c.b.mul(y, sc).unwrap()
        } else {
            let a = c.b.silu(g).unwrap();
            c.b.mul(a, u).unwrap()
        };
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["mul_mat_cat"], "{gd} {ud}");
        let out = c.run(be);
        let gw = r::matmul(&seen_activations(be, gd, &xn), &wgn);
        let uw = r::matmul(&seen_activations(be, ud, &xn), &wun);
        let mut want = gw.clone();
        for (i, o) in want.data.iter_mut().enumerate() {
            *o = if scaled {
                uw.data[i] * r::unary("gelu", gw.data[i], (0.0, 0.0)) * scn.data[i]
            } else {
                silu(gw.data[i]) * uw.data[i]
            };
        }
        assert_close(&format!("matmul pair {gd} {ud}"), &out[0], &want, TOL);
    }
}

/// Experts' gate and up products of one activation and routing, read only by their activation,
/// meet in one `matmul_id_pair` kernel: SwiGLU with one activation row for all experts, and
/// GEGLU times a routing weight with one row per expert, with mixed dtypes, against the
/// reference; for decode-sized and prompt-sized batches (80 rows: the GPU tiles them, 16 an
/// expert, over 67 columns: a second tile of 3).
pub fn matmul_id_pair(be: &mut dyn Backend) {
    let mut rg = rng(46);
    let k = 256;
    let (u, e) = (2, 5);
    for (gd, ud, xu, t, n) in [
        (DType::F16, DType::F16, 1, 3, 7),
        (DType::Q4K, DType::Q8_0, 2, 3, 7),
        (DType::F16, DType::Q8_0, 1, 40, 67),
        (DType::Q4K, DType::F16, 2, 40, 67),
    ] {
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[t, xu, k]);
        let (wg, wgn) = weight(be, &mut c, &mut rg, "gate", &[e, n, k], gd);
        let (wu, wun) = weight(be, &mut c, &mut rg, "up", &[e, n, k], ud);
        let ids: Vec<i32> = (0..t * u).map(|i| ((i * 2 + 1) % e) as i32).collect();
        let it = c.ids("ids", &[t, u], ids.clone());
        let (rw, rwn) = c.input(&mut rg, "route", &[t, u, 1]);
        let g = c.b.matmul_id(x, wg, it).unwrap();
        let up = c.b.matmul_id(x, wu, it).unwrap();
        let y = if xu == 1 {
            let a = c.b.silu(g).unwrap();
            c.b.mul(a, up).unwrap()
        } else {
            let a = c.b.unary(UnaryOp::Gelu, g).unwrap();
            let y = c.b.mul(up, a).unwrap();
            c.b.mul(y, rw).unwrap()
        };
        c.output(y, "y");
        assert_eq!(scheduled(c.b.graph(), true), ["mul_mat_id"], "{gd} {ud}");
        let out = c.run(be);
        let (xg, xu_) = (seen_activations(be, gd, &xn), seen_activations(be, ud, &xn));
        let mut want = Nd::zeros(&[t, u, n]);
        for i in indices(&[t, u, n]) {
            let ex = ids[i[0] * u + i[1]] as usize;
            let xr = if xu == 1 { 0 } else { i[1] };
            let dot = |x: &Nd, w: &Nd| -> f64 {
                (0..k)
                    .map(|kk| x.at(&[i[0], xr, kk]) * w.at(&[ex, i[2], kk]))
                    .sum()
            };
            let (gv, uv) = (dot(&xg, &wgn), dot(&xu_, &wun));
            let v = if xu == 1 {
                silu(gv) * uv
            } else {
                uv * r::unary("gelu", gv, (0.0, 0.0)) * rwn.at(&[i[0], i[1], 0])
            };
            want.set(&i, v);
        }
        assert_close(&format!("matmul_id pair {gd} {ud}"), &out[0], &want, TOL);
    }
}

/// The norm before a layer's projections runs inside the mat-vecs (`norm_input`): a single
/// projection, three sharing the row (`mul_mat_cat`), and a gated unit's pair, with an rms norm
/// and its weight, and an l2 norm without one. Each plan is one kernel and matches the
/// reference. Rows up to 3072 long (6144 where the adapter has 26 KiB of workgroup memory) are
/// normalised into workgroup memory on the GPU, longer ones as they are read: all three, and a
/// row whose length is not a multiple of 4.
pub fn norm_matvec(be: &mut dyn Backend) {
    let mut rg = rng(45);
    for (k, weights, rms) in [
        (256, 1, true),
        (256, 3, true),
        (256, 2, false),
        (2048, 2, true),
        (4352, 3, true),
        (6400, 2, false),
        (90, 1, true),
    ] {
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[1, k]);
        let (nw, nwn) = c.input(&mut rg, "norm", &[k]);
        let h = if rms {
            let h = c.b.rms_norm(x, 1e-5).unwrap();
            c.b.mul(h, nw).unwrap()
        } else {
            c.b.l2_norm(x, 1e-6).unwrap()
        };
        let hn = if rms {
            let mut h = r::rms_norm(&xn, 1e-5);
            h.data.iter_mut().zip(&nwn.data).for_each(|(a, b)| *a *= b);
            h
        } else {
            r::l2_norm(&xn, 1e-6)
        };
        let dtypes = [DType::F16, DType::Q4K, DType::Q8_0];
        let mut products = vec![];
        for (i, &dtype) in dtypes[..weights].iter().enumerate() {
            let n = 24 + 8 * i;
            let n = if weights == 2 { 24 } else { n };
            let (w, wn) = weight(be, &mut c, &mut rg, &format!("w{i}"), &[n, k], dtype);
            let y = c.b.matmul(h, w).unwrap();
            products.push((y, r::matmul(&seen_activations(be, dtype, &hn), &wn)));
        }
        let mut want = vec![];
        if weights == 2 {
            let (g, gw) = &products[0];
            let (u, uw) = &products[1];
            let a = c.b.silu(*g).unwrap();
            let y = c.b.mul(a, *u).unwrap();
            c.output(y, "y");
            let mut w = gw.clone();
            w.data
                .iter_mut()
                .zip(&uw.data)
                .for_each(|(g, u)| *g = silu(*g) * u);
            want.push(w);
        } else {
            for (i, (y, w)) in products.into_iter().enumerate() {
                c.output(y, &format!("y{i}"));
                want.push(w);
            }
        }
        let kernel = if weights == 1 {
            "mul_mat"
        } else {
            "mul_mat_cat"
        };
        assert_eq!(scheduled(c.b.graph(), true), [kernel], "{weights} weights");
        let out = c.run(be);
        for (o, w) in out.iter().zip(&want) {
            assert_close(&format!("norm + {weights} mat-vecs: {}", o.name), o, w, TOL);
        }
    }
}

/// The norm before a mixture feeds its router and its experts' gate and up (through a
/// reshape): each of the two kernels normalises the row itself, no norm kernel is left, and both
/// match the reference.
pub fn norm_moe(be: &mut dyn Backend) {
    let mut rg = rng(48);
    let (k, e, n, top) = (256, 4, 12, 2);
    let mut c = Case::new();
    let (x, xn) = c.input(&mut rg, "x", &[1, k]);
    let (nw, nwn) = c.input(&mut rg, "norm", &[k]);
    let h = c.b.rms_norm(x, 1e-5).unwrap();
    let h = c.b.mul(h, nw).unwrap();
    let mut hn = r::rms_norm(&xn, 1e-5);
    hn.data.iter_mut().zip(&nwn.data).for_each(|(a, b)| *a *= b);
    let (wr, wrn) = weight(be, &mut c, &mut rg, "router", &[e, k], DType::F16);
    let (wg, wgn) = weight(be, &mut c, &mut rg, "gate", &[e, n, k], DType::Q4K);
    let (wu, wun) = weight(be, &mut c, &mut rg, "up", &[e, n, k], DType::Q8_0);
    let ids = vec![3, 1];
    let it = c.ids("ids", &[1, top], ids.clone());
    let logits = c.b.matmul(h, wr).unwrap();
    let h3 = c.b.reshape(h, &[1, 1, k]).unwrap();
    let g = c.b.matmul_id(h3, wg, it).unwrap();
    let u = c.b.matmul_id(h3, wu, it).unwrap();
    let g = c.b.silu(g).unwrap();
    let y = c.b.mul(g, u).unwrap();
    c.output(logits, "logits");
    c.output(y, "y");
    assert_eq!(
        scheduled(c.b.graph(), true),
        ["mul_mat", "mul_mat_id"],
        "the norm runs inside both"
    );
    let out = c.run(be);
    let want_logits = r::matmul(&seen_activations(be, DType::F16, &hn), &wrn);
    let (hg, hu) = (
        seen_activations(be, DType::Q4K, &hn),
        seen_activations(be, DType::Q8_0, &hn),
    );
    let mut want = Nd::zeros(&[1, top, n]);
    for i in indices(&[1, top, n]) {
        let ex = ids[i[1]] as usize;
        let dot = |x: &Nd, w: &Nd| -> f64 {
            (0..k)
                .map(|kk| x.at(&[0, kk]) * w.at(&[ex, i[2], kk]))
                .sum()
        };
        want.set(&i, silu(dot(&hg, &wgn)) * dot(&hu, &wun));
    }
    assert_close("norm + router", &out[0], &want_logits, TOL);
    assert_close("norm + experts' pair", &out[1], &want, TOL);
}

/// The softmax of a mixture's chosen logits reads them through the chosen indices itself
/// (`softmax_gather`): the logits of three rows as a plain tensor, and of one row (decode) as
/// columns of a wider one (the router concatenated with other projections: the table starts
/// at an offset), scaled, against the reference.
pub fn softmax_gather(be: &mut dyn Backend) {
    let mut rg = rng(49);
    let (e, k) = (6, 2);
    for wide in [false, true] {
        let rows = if wide { 1 } else { 3 };
        let mut c = Case::new();
        let (x, xn) = c.input(&mut rg, "x", &[rows, e + 4]);
        let logits = if wide {
            c.b.slice(x, 1, 3, e).unwrap()
        } else {
            c.b.slice(x, 1, 0, e).unwrap()
        };
        let logits = c.b.contiguous(logits).unwrap();
        let ids = [5, 1, 0, 3, 2, 4][..rows * k].to_vec();
        let it = c.ids("ids", &[rows, k], ids.clone());
        let l3 = if wide {
            let x3 = c.b.reshape(x, &[rows, e + 4, 1]).unwrap();
            c.b.slice(x3, 1, 3, e).unwrap()
        } else {
            c.b.reshape(logits, &[rows, e, 1]).unwrap()
        };
        let chosen = c.b.get_rows(l3, it).unwrap();
        let chosen = c.b.reshape(chosen, &[rows, k]).unwrap();
        let w = c.b.softmax(chosen, None, 0.7).unwrap();
        c.output(w, "w");
        let kernels = scheduled(c.b.graph(), true);
        let want_kernels: &[&str] = if wide {
            &["soft_max"]
        } else {
            &["contiguous", "soft_max"]
        };
        assert_eq!(kernels, want_kernels);
        let out = c.run(be);
        let off = if wide { 3 } else { 0 };
        let mut want = Nd::zeros(&[rows, k]);
        for r in 0..rows {
            let v: Vec<f64> = (0..k)
                .map(|j| 0.7 * xn.at(&[r, off + ids[r * k + j] as usize]))
                .collect();
            let m = v.iter().copied().fold(f64::MIN, f64::max);
            let sum: f64 = v.iter().map(|x| (x - m).exp()).sum();
            for j in 0..k {
                want.set(&[r, j], (v[j] - m).exp() / sum);
            }
        }
        assert_close(
            &format!("softmax of chosen values (wide {wide})"),
            &out[0],
            &want,
            TOL,
        );
    }
}

/// A mixture's chosen weights renormalised to sum to one (`w / clamp(sum_rows(w))`) run as one
/// row-normalising kernel (`sum_norm`), rows whose sum the clamp raises included.
pub fn sum_norm(be: &mut dyn Backend) {
    let mut rg = rng(46);
    let (rows, k) = (5, 6);
    let mut v: Vec<f32> = randn(&mut rg, rows * k).iter().map(|x| x.abs()).collect();
    // the last row sums below the clamp's floor
    v[(rows - 1) * k..].iter_mut().for_each(|x| *x *= 1e-3);
    let mut c = Case::new();
    let (w, wn) = c.input_values("w", &[rows, k], v);
    let s = c.b.reduce(ReduceOp::Sum, w).unwrap();
    let s =
        c.b.unary(
            UnaryOp::Clamp {
                min: 0.01,
                max: f32::MAX,
            },
            s,
        )
        .unwrap();
    let y = c.b.div(w, s).unwrap();
    c.output(y, "y");
    assert_eq!(scheduled(c.b.graph(), true), ["fused"]);
    let out = c.run(be);
    let mut want = wn.clone();
    for r in 0..rows {
        let sum: f64 = (0..k).map(|j| wn.at(&[r, j])).sum();
        for j in 0..k {
            want.set(&[r, j], wn.at(&[r, j]) / sum.max(0.01));
        }
    }
    assert_close("sum_norm", &out[0], &want, TOL);
}

/// The query `[1, Hq, D]` and new key `[1, Hkv·D]` of an attention case, built as `qk` says
/// (rotating 6 of the 8 dims of each head at position 5), with the values they take.
fn qk_case(
    c: &mut Case,
    rg: &mut rand::rngs::StdRng,
    qk: QkRope,
    [hq, hkv, d]: [usize; 3],
) -> (Tensor, Nd, Tensor, Nd) {
    let p = |mode| RopeParams {
        n_dims: 6,
        mode,
        freq_base: 500.0,
        freq_scale: 0.5,
    };
    let rotate = |x: &Nd, mode| r::rope(x, &[5], 6, mode == RopeMode::Neox, 500.0, 0.5);
    let flat = |mut k: Nd| {
        k.dims = vec![1, hkv * d];
        k
    };
    match qk {
        QkRope::None => {
            let (q, qn) = c.input(rg, "q", &[1, hq, d]);
            let (k, kn) = c.input(rg, "k_new", &[1, hkv * d]);
            (q, qn, k, kn)
        }
        QkRope::Merged(mode) => {
            let (x, xn) = c.input(rg, "qk", &[1, hq + hkv, d]);
            let pos = c.ids("pos", &[1], vec![5]);
            let r = c.b.rope(x, pos, p(mode)).unwrap();
            let q = c.b.slice(r, 1, 0, hq).unwrap();
            let k = c.b.slice(r, 1, hq, hkv).unwrap();
            let k = c.b.reshape(k, &[1, hkv * d]).unwrap();
            let rn = rotate(&xn, mode);
            let qn = Nd::new(&[1, hq, d], rn.data[..hq * d].to_vec());
            let kn = Nd::new(&[1, hkv * d], rn.data[hq * d..].to_vec());
            (q, qn, k, kn)
        }
        QkRope::Separate(mode) => {
            let (q, qn) = c.input(rg, "q", &[1, hq, d]);
            let (k, kn) = c.input(rg, "k", &[1, hkv, d]);
            let pos = c.ids("pos", &[1], vec![5]);
            let q = c.b.rope(q, pos, p(mode)).unwrap();
            let k = c.b.rope(k, pos, p(mode)).unwrap();
            let k = c.b.reshape(k, &[1, hkv * d]).unwrap();
            (q, rotate(&qn, mode), k, flat(rotate(&kn, mode)))
        }
    }
}

/// A mixture's choice made by the ops that read it (`top_k_inline`): the experts' gated pair
/// and their down product (its SiLU through a flattening reshape, an epilogue of another
/// shape), rows picked from a table, and the softmax of the chosen logits each select the top k
/// of every logits row themselves (ties to the lower index), from whole rows and from columns
/// of wider ones (copied dense by `legalize` first). No top_k kernel runs.
pub fn top_k_inline(be: &mut dyn Backend) {
    let mut rg = rng(53);
    let (t, e, k, kk, n) = (3, 6, 2, 32, 5);
    for wide in [false, true] {
        let cols = if wide { e + 4 } else { e };
        let off = if wide { 3 } else { 0 };
        // rows with ties: row 0 ties its two largest, row 1 its second and third
        let mut v = randn(&mut rg, t * cols);
        let tied = [
            [0.1, 2.5, -0.3, 0.7, 2.5, -1.0],
            [3.0, -0.5, 1.5, 0.2, -2.0, 1.5],
        ];
        for (r, row) in tied.iter().enumerate() {
            v[r * cols + off..r * cols + off + e].copy_from_slice(row);
        }
        let mut c = Case::new();
        let (z, zn) = c.input_values("z", &[t, cols], v);
        let logits = c.b.slice(z, 1, off, e).unwrap();
        let ids = c.b.top_k(logits, k).unwrap();
        let (x, xn) = c.input(&mut rg, "x", &[t, 1, kk]);
        let (wg, wgn) = weight(be, &mut c, &mut rg, "gate", &[e, n, kk], DType::F32);
        let (wu, wun) = weight(be, &mut c, &mut rg, "up", &[e, n, kk], DType::F16);
        let (wd, wdn) = weight(be, &mut c, &mut rg, "down", &[e, 4, n], DType::F32);
        let g = c.b.matmul_id(x, wg, ids).unwrap();
        let up = c.b.matmul_id(x, wu, ids).unwrap();
        let a = c.b.silu(g).unwrap();
        let h = c.b.mul(a, up).unwrap();
        let y = c.b.matmul_id(h, wd, ids).unwrap();
        let (tab, tabn) = c.input(&mut rg, "table", &[t, e, 3]);
        let rows = c.b.get_rows(tab, ids).unwrap();
        let z3 = c.b.reshape(z, &[t, cols, 1]).unwrap();
        let l3 = c.b.slice(z3, 1, off, e).unwrap();
        let chosen = c.b.get_rows(l3, ids).unwrap();
        let chosen = c.b.reshape(chosen, &[t, k]).unwrap();
        let w = c.b.softmax(chosen, None, 1.0).unwrap();
        let flat = c.b.reshape(y, &[t * k * 4]).unwrap();
        let y = c.b.silu(flat).unwrap();
        c.output(y, "y");
        c.output(rows, "rows");
        c.output(w, "w");
        let kernels = scheduled(c.b.graph(), true);
        assert!(!kernels.contains(&"top_k"), "wide={wide}: {kernels:?}");
        let out = c.run(be);
        // the reference choice: largest first, the lower index first on ties
        let choice: Vec<Vec<usize>> = (0..t)
            .map(|r| {
                let mut i: Vec<usize> = (0..e).collect();
                i.sort_by(|&a, &b| zn.at(&[r, off + b]).total_cmp(&zn.at(&[r, off + a])));
                i.truncate(k);
                i
            })
            .collect();
        assert_eq!((choice[0][0], choice[0][1], choice[1][1]), (1, 4, 2));
        let mut hw = Nd::zeros(&[t, k, n]);
        for i in indices(&[t, k, n]) {
            let ex = choice[i[0]][i[1]];
            let dot = |w: &Nd| -> f64 {
                (0..kk)
                    .map(|j| xn.at(&[i[0], 0, j]) * w.at(&[ex, i[2], j]))
                    .sum()
            };
            hw.set(&i, silu(dot(&wgn)) * dot(&wun));
        }
        let mut want_y = Nd::zeros(&[t * k * 4]);
        for i in indices(&[t, k, 4]) {
            let ex = choice[i[0]][i[1]];
            let s: f64 = (0..n)
                .map(|j| hw.at(&[i[0], i[1], j]) * wdn.at(&[ex, i[2], j]))
                .sum();
            want_y.set(&[(i[0] * k + i[1]) * 4 + i[2]], silu(s));
        }
        assert_close(
            &format!("top_k_inline y wide={wide}"),
            &out[0],
            &want_y,
            TOL,
        );
        let mut want_rows = Nd::zeros(&[t, k, 3]);
        for i in indices(&[t, k, 3]) {
            want_rows.set(&i, tabn.at(&[i[0], choice[i[0]][i[1]], i[2]]));
        }
        assert_close(
            &format!("top_k_inline rows wide={wide}"),
            &out[1],
            &want_rows,
            TOL,
        );
        let mut want_w = Nd::zeros(&[t, k]);
        for r in 0..t {
            let v: Vec<f64> = choice[r].iter().map(|&j| zn.at(&[r, off + j])).collect();
            let m = v.iter().copied().fold(f64::MIN, f64::max);
            let sum: f64 = v.iter().map(|x| (x - m).exp()).sum();
            for (j, x) in v.iter().enumerate() {
                want_w.set(&[r, j], (x - m).exp() / sum);
            }
        }
        assert_close(
            &format!("top_k_inline w wide={wide}"),
            &out[2],
            &want_w,
            TOL,
        );
    }
}
