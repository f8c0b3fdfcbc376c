//! A long prompt's delta rule runs in chunks through a workspace past the plan's tensors in the
//! arena. Where that workspace would not fit one storage binding, the prompt walks its tokens
//! instead (one dispatch, not two), with the same result.

#![allow(clippy::unwrap_used)]

use weft_backends::{Backend, HostData, WgpuBackend, WgpuOptions};
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

/// The delta rule over a 64-token prompt on `be`: its outputs (y, new state), the arena's
/// plan bytes and the number of dispatches that ran.
fn run(be: &mut WgpuBackend) -> (Vec<Vec<f32>>, usize, usize) {
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
    let (want, tensors, n) = run(&mut whole);
    assert_eq!(n, 2, "the chunked pair where the workspace fits");
    // the plan's tensors fit the cap, tensors and workspace (about as large again) do not
    let cap = 128 << 10;
    assert!(tensors < cap as usize && 2 * tensors > cap as usize);
    let mut capped = backend(Some(cap)).unwrap();
    let (got, _, n) = run(&mut capped);
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
