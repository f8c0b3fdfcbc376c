//! CPU kernels: mat-vec for every weight dtype (decode's hot loop, reported as weight bytes/s),
//! a prompt-sized matmul (FLOP/s), the selective scan and the gated delta rule.
//!
//! `cargo bench -p weft-benches --bench cpu_kernels`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use weft_backends::{CpuBackend, HostData};
use weft_benches::{compile, random_weight, run_once};
use weft_graph::testing::Rng;
use weft_graph::{DType, DeltaForm, GraphBuilder};

fn matvec(c: &mut Criterion) {
    let (n, k) = (2048, 2048);
    let mut g = c.benchmark_group("cpu/matvec_2048x2048");
    g.sample_size(20);
    for dtype in [
        DType::F32,
        DType::F16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ] {
        let mut be = CpuBackend::new();
        let mut rng = Rng::new(1);
        let buf = random_weight(&mut be, &mut rng, dtype, n, k).expect("weight");
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, k], DType::F32).expect("x");
        let w = b.weight("w", &[n, k], dtype, buf).expect("w");
        let y = b.matmul(x, w).expect("matmul");
        b.output(y, "y").expect("out");
        let p = compile(&mut be, &b.finish()).expect("compile");
        let xv: Vec<f32> = (0..k).map(|_| rng.unit()).collect();
        g.throughput(Throughput::Bytes(dtype.bytes_for(n * k).unwrap_or(0) as u64));
        g.bench_function(dtype.name(), |bch| {
            bch.iter(|| black_box(run_once(&mut be, p, &[("x", HostData::F32(&xv))]).expect("run")))
        });
    }
    g.finish();
}

fn matmul_prompt(c: &mut Criterion) {
    let (m, n, k) = (64, 1024, 1024);
    let mut g = c.benchmark_group("cpu/matmul_64x1024x1024");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    let mut be = CpuBackend::new();
    let mut rng = Rng::new(2);
    let buf = random_weight(&mut be, &mut rng, DType::F16, n, k).expect("weight");
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[m, k], DType::F32).expect("x");
    let w = b.weight("w", &[n, k], DType::F16, buf).expect("w");
    let y = b.matmul(x, w).expect("matmul");
    b.output(y, "y").expect("out");
    let p = compile(&mut be, &b.finish()).expect("compile");
    let xv: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
    g.bench_function("F16 (FLOP/s)", |bch| {
        bch.iter(|| black_box(run_once(&mut be, p, &[("x", HostData::F32(&xv))]).expect("run")))
    });
    g.finish();
}

fn recurrent(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu/recurrent");
    g.sample_size(10);
    let mut rng = Rng::new(3);
    let mut rand =
        |n: usize, f: fn(f32) -> f32| (0..n).map(|_| f(rng.unit())).collect::<Vec<f32>>();
    // Mamba2-like scan: 1 sequence, 64 tokens, 32 heads × 64, state 128.
    let (s, t, h, p, n) = (1, 64, 32, 64, 128);
    let mut b = GraphBuilder::new();
    let st = b.input("st", &[s, h, p, n], DType::F32).expect("st");
    let x = b.input("x", &[s, t, h, p], DType::F32).expect("x");
    let dt = b.input("dt", &[s, t, h], DType::F32).expect("dt");
    let a = b.input("a", &[h, 1], DType::F32).expect("a");
    let bm = b.input("b", &[s, t, 1, n], DType::F32).expect("b");
    let (y, _) = b.ssm_scan(st, x, dt, a, bm, bm).expect("scan");
    b.output(y, "y").expect("out");
    let mut be = CpuBackend::new();
    let prog = compile(&mut be, &b.finish()).expect("compile");
    let data = [
        rand(s * h * p * n, |v| v),
        rand(s * t * h * p, |v| v),
        rand(s * t * h, |v| v.abs() * 0.1),
        rand(h, |v| -v.abs()),
        rand(s * t * n, |v| v),
    ];
    let names = ["st", "x", "dt", "a", "b"];
    let inputs: Vec<(&str, HostData)> = names
        .iter()
        .zip(&data)
        .map(|(k, v)| (*k, HostData::F32(v)))
        .collect();
    g.throughput(Throughput::Elements(t as u64));
    g.bench_function("ssm_scan mamba2 64 tokens (tokens/s)", |bch| {
        bch.iter(|| black_box(run_once(&mut be, prog, &inputs).expect("run")))
    });

    // Gated delta rule: 64 tokens, 16 heads, 128 × 128 state, both forms.
    let (t, hv, dk) = (64, 16, 128);
    for form in [DeltaForm::Recurrent, DeltaForm::Chunked { chunk: 64 }] {
        let mut b = GraphBuilder::new();
        let st = b.input("st", &[1, hv, dk, dk], DType::F32).expect("st");
        let q = b.input("q", &[1, t, hv, dk], DType::F32).expect("q");
        let gg = b.input("g", &[1, t, hv], DType::F32).expect("g");
        let (y, _) = b.gated_delta_net(st, q, q, q, gg, gg, form).expect("gdn");
        b.output(y, "y").expect("out");
        let mut be = CpuBackend::new();
        let prog = compile(&mut be, &b.finish()).expect("compile");
        let data = [
            rand(hv * dk * dk, |v| v * 0.1),
            rand(t * hv * dk, |v| v * 0.1),
            rand(t * hv, |v| -v.abs() * 0.1),
        ];
        let inputs: Vec<(&str, HostData)> = ["st", "q", "g"]
            .iter()
            .zip(&data)
            .map(|(k, v)| (*k, HostData::F32(v)))
            .collect();
        g.bench_function(
            format!("gated_delta_net {form:?} 64 tokens (tokens/s)"),
            |bch| bch.iter(|| black_box(run_once(&mut be, prog, &inputs).expect("run"))),
        );
    }
    g.finish();
}

criterion_group!(benches, matvec, matmul_prompt, recurrent);
criterion_main!(benches);
