//! Storage bindings smaller than the work. Weights larger than one binding run as several
//! dispatches over row ranges: a device whose bindings are capped far below the weight gives
//! the same matmul and row-gather results as one that binds the weight whole. A long prompt's
//! delta rule runs in chunks through a workspace past the plan's tensors in the arena; where
//! that workspace would not fit one binding, the prompt walks its tokens instead (one dispatch,
//! not two), with the same result.

#![allow(clippy::unwrap_used)]

use weft_backends::{Backend, HostData, WgpuBackend, WgpuOptions};
use weft_graph::testing::{Rng, random_blocks};
use weft_graph::{DType, DeltaForm, GraphBuilder, PlanOptions, plan};

fn backend(max_binding: Option<u32>) -> Option<WgpuBackend> {
    match WgpuBackend::new(&WgpuOptions {
        max_binding,
        ..Default::default()
    }) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("CI needs a wgpu adapter: {e}"),
    }
}

/// Logits-like `x · wᵀ` and embedding-like `w[ids]` of one weight on `be`.
fn run(be: &mut WgpuBackend, dtype: DType, bytes: &[u8], n: usize, k: usize) -> Vec<Vec<f32>> {
    let buf = be.alloc(bytes.len()).unwrap();
    be.upload(buf, 0, bytes).unwrap();
    let mut b = GraphBuilder::new();
    let w = b.weight("w", &[n, k], dtype, buf).unwrap();
    let x = b.input("x", &[3, k], DType::F32).unwrap();
    let ids = b.input("ids", &[5], DType::I32).unwrap();
    let y = b.matmul(x, w).unwrap();
    // one row: the decode kernel
    let x1 = b.slice(x, 0, 1, 1).unwrap();
    let y1 = b.matmul(x1, w).unwrap();
    let r = b.get_rows(w, ids).unwrap();
    b.output(y, "y").unwrap();
    b.output(r, "rows").unwrap();
    b.output(y1, "y1").unwrap();
    let prog = be
        .compile(&plan(&b.finish(), PlanOptions::default()))
        .unwrap();
    let xs: Vec<f32> = (0..3 * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let idv = [0, n as i32 - 1, 77, 3, n as i32 / 2];
    let out = be
        .run(
            prog,
            &[("x", HostData::F32(&xs)), ("ids", HostData::I32(&idv))],
        )
        .unwrap();
    out.into_iter().map(|o| o.to_f32()).collect()
}

#[test]
fn wgpu_weights_over_the_binding_limit_are_split_by_rows() {
    let Some(mut whole) = backend(None) else {
        return;
    };
    let cap = 64 << 10;
    let mut split = backend(Some(cap)).unwrap();
    assert_eq!(split.limits().max_storage_buffer_binding_size, cap as u64);
    let mut rng = Rng::new(5);
    for (dtype, k) in [(DType::F16, 256), (DType::Q8_0, 512), (DType::Q4K, 512)] {
        let n = 1201;
        let bytes = random_blocks(&mut rng, dtype, n * k / dtype.block_elems());
        assert!(
            bytes.len() > 3 * cap as usize,
            "{dtype}: the weight must need several ranges"
        );
        let want = run(&mut whole, dtype, &bytes, n, k);
        let got = run(&mut split, dtype, &bytes, n, k);
        assert_eq!(got.len(), 3);
        for (name, (g, w)) in ["matmul", "get_rows", "mat-vec"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_eq!(g.len(), w.len());
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-6, "{dtype} {name}: split differs by {worst:e}");
        }
    }
}

/// The delta rule over a 64-token prompt on `be`: its outputs (y, new state), the arena's
/// plan bytes and the number of dispatches that ran.
fn run_delta(be: &mut WgpuBackend) -> (Vec<Vec<f32>>, usize, usize) {
    let (t, h, d) = (64, 2, 32);
    let mut b = GraphBuilder::new();
    let st = b.input("state", &[1, h, d, d], DType::F32).unwrap();
    let q = b.input("q", &[1, t, h, d], DType::F32).unwrap();
    let k = b.input("k", &[1, t, h, d], DType::F32).unwrap();
    let v = b.input("v", &[1, t, h, d], DType::F32).unwrap();
    let g = b.input("g", &[1, t, h], DType::F32).unwrap();
    let beta = b.input("beta", &[1, t, h], DType::F32).unwrap();
    let (y, ns) = b
        .gated_delta_net(st, q, k, v, g, beta, DeltaForm::Chunked)
        .unwrap();
    b.output(y, "y").unwrap();
    b.output(ns, "state").unwrap();
    let p = plan(&b.finish(), PlanOptions::default());
    let wave = |n: usize, f: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * f).sin() * 0.5) / (d as f32).sqrt())
            .collect()
    };
    let rows = t * h * d;
    let inputs = [
        ("state", wave(h * d * d, 0.37)),
        ("q", wave(rows, 0.11)),
        ("k", wave(rows, 0.23)),
        ("v", wave(rows, 0.71).iter().map(|x| x * 8.0).collect()),
        ("g", wave(t * h, 1.3).iter().map(|x| -x.abs()).collect()),
        ("beta", wave(t * h, 0.9).iter().map(|x| x.abs()).collect()),
    ];
    let host: Vec<(&str, HostData)> = inputs.iter().map(|(n, v)| (*n, HostData::F32(v))).collect();
    be.set_profiling(true);
    let prog = be.compile(&p).unwrap();
    let out = be.run(prog, &host).unwrap();
    let dispatches = be.timings(prog).unwrap().len();
    (
        out.into_iter().map(|o| o.to_f32()).collect(),
        p.arena_bytes,
        dispatches,
    )
}

#[test]
fn wgpu_delta_chunks_over_the_binding_limit_walk_the_tokens() {
    let Some(mut whole) = backend(None) else {
        return;
    };
    let (want, tensors, n) = run_delta(&mut whole);
    assert_eq!(n, 2, "the chunked pair where the workspace fits");
    // the plan's tensors fit the cap, tensors and workspace (about as large again) do not
    let cap = 128 << 10;
    assert!(tensors < cap as usize && 2 * tensors > cap as usize);
    let mut capped = backend(Some(cap)).unwrap();
    let (got, _, n) = run_delta(&mut capped);
    assert_eq!(n, 1, "the token loop under the cap");
    for (name, (g, w)) in ["y", "state"].iter().zip(got.iter().zip(&want)) {
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: differs by {worst:e}");
    }
}
