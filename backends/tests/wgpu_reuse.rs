//! The wgpu backend records a program's next command buffer while the device runs the current
//! one. A run that submits those pre-recorded commands must still see its own inputs and any
//! weights uploaded since, whatever ran in between, with profiling on or off.

#![allow(clippy::unwrap_used)]

use weft_backends::{Backend, CpuBackend, HostData, ProgramId, WgpuBackend};
use weft_graph::{BufferId, DType, GraphBuilder, PlanOptions, plan};

const N: usize = 24;
const K: usize = 40;

fn backend() -> Option<WgpuBackend> {
    match WgpuBackend::new(&Default::default()) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("CI needs a wgpu adapter: {e}"),
    }
}

/// `silu(x · wᵀ) + x[.., :N]` for `rows` rows of x.
fn compile(be: &mut dyn Backend, w: BufferId, rows: usize) -> ProgramId {
    let mut b = GraphBuilder::new();
    let w = b.weight("w", &[N, K], DType::F32, w).unwrap();
    let x = b.input("x", &[rows, K], DType::F32).unwrap();
    let y = b.matmul(x, w).unwrap();
    let y = b.silu(y).unwrap();
    let head = b.slice(x, 1, 0, N).unwrap();
    let y = b.add(y, head).unwrap();
    b.output(y, "y").unwrap();
    be.compile(&plan(&b.finish(), PlanOptions::default()))
        .unwrap()
}

fn reference(w: &[f32], x: &[f32]) -> Vec<f32> {
    x.chunks(K)
        .flat_map(|row| {
            (0..N).map(move |i| {
                let d: f64 = (0..K).map(|j| row[j] as f64 * w[i * K + j] as f64).sum();
                (d / (1.0 + (-d).exp()) + row[i] as f64) as f32
            })
        })
        .collect()
}

fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 31 + seed * 17) % 97) as f32 - 48.0) / 64.0)
        .collect()
}

fn upload(be: &mut dyn Backend, buf: BufferId, w: &[f32]) {
    be.upload(buf, 0, bytemuck::cast_slice(w)).unwrap();
}

fn check(be: &mut dyn Backend, prog: ProgramId, w: &[f32], seed: usize, rows: usize) {
    let x = values(seed, rows * K);
    let out = be.run(prog, &[("x", HostData::F32(&x))]).unwrap();
    let got = out[0].to_f32();
    let want = reference(w, &x);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "run with seed {seed}, element {i}: {g} against {w}"
        );
    }
}

#[test]
fn pre_recorded_runs_see_new_inputs_and_uploads() {
    let Some(mut be) = backend() else {
        return;
    };
    let be: &mut dyn Backend = &mut be;
    let buf = be.alloc(N * K * 4).unwrap();
    let mut w = values(1, N * K);
    upload(be, buf, &w);
    let one = compile(be, buf, 1);
    let two = compile(be, buf, 2);
    let reused = |be: &dyn Backend| be.run_stats().unwrap().reused;

    check(be, one, &w, 2, 1);
    assert_eq!(reused(be), 0, "the first run records its own commands");
    check(be, one, &w, 3, 1);
    assert_eq!(
        reused(be),
        1,
        "the second run submits the commands recorded ahead"
    );
    // Another program in between keeps the first one's recorded commands valid.
    check(be, two, &w, 4, 2);
    check(be, one, &w, 5, 1);
    assert_eq!(reused(be), 2);
    // Weights uploaded after the commands were recorded are what the run reads.
    w = values(9, N * K);
    upload(be, buf, &w);
    check(be, one, &w, 6, 1);
    check(be, two, &w, 7, 2);
    assert_eq!(reused(be), 4);
    // Profiled runs record their own timed commands and leave nothing recorded ahead.
    be.set_profiling(true);
    check(be, one, &w, 8, 1);
    check(be, one, &w, 9, 1);
    assert_eq!(reused(be), 4);
    be.set_profiling(false);
    check(be, one, &w, 10, 1);
    check(be, one, &w, 11, 1);
    let stats = be.run_stats().unwrap();
    assert_eq!((stats.runs, stats.reused), (10, 5));
}

#[test]
fn the_cpu_backend_keeps_no_run_stats() {
    let mut be = CpuBackend::new();
    let buf = be.alloc(N * K * 4).unwrap();
    let w = values(1, N * K);
    upload(&mut be, buf, &w);
    let one = compile(&mut be, buf, 1);
    check(&mut be, one, &w, 2, 1);
    assert_eq!(be.run_stats(), None);
}
