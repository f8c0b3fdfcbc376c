//! Every hot kernel on the CPU backend and, where wgpu finds an adapter, on the wgpu backend:
//! mat-vec per weight dtype (decode's hot loop, as weight bytes/s), a prompt-sized matmul
//! (FLOP/s), attention at decode and prefill, the short convolution, the Mamba1 and Mamba2
//! selective scans (64 tokens, and one as decode runs them), the gated delta rule in both
//! forms, and the MoE expert matmul; then two decode steps the fusion passes turn into one
//! kernel each (a llama FFN's norm + gate/up + SiLU, and attention with its rope and KV cache
//! writes). Each iteration runs the compiled
//! graph and reads its output back, which waits for the device. Last, what recording a step's
//! commands costs the host on wgpu.
//!
//! `cargo bench -p weft-benches --bench kernels` (a filter such as `-- wgpu/matvec` narrows it).
//!
//! With `WEFT_BENCH_DEVICE_TIME=1` an iteration counts the backend's own per-node times instead
//! of the wall clock (GPU timestamps on wgpu where the adapter has them): the kernels' time
//! alone, without the host's upload, submission and readback, which on a fast GPU are most of
//! a small kernel's wall time. `matvec_8192x8192` reads weights larger than a big GPU's L2
//! cache (the 2048 × 2048 ones fit in it).

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use weft_backends::{Backend, CpuBackend, HostData, WgpuBackend, WgpuOptions};
use weft_benches::{compile, random_weight, run_once};
use weft_graph::testing::Rng;
use weft_graph::{Access, DType, DeltaForm, Graph, GraphBuilder, RopeMode, RopeParams, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
/// Named host inputs of one dtype.
type Named<T> = Vec<(String, Vec<T>)>;

/// A one-op graph with its host inputs.
struct Case {
    b: GraphBuilder,
    f32s: Named<f32>,
    i32s: Named<i32>,
    rng: Rng,
}

impl Case {
    fn new(seed: u64) -> Case {
        Case {
            b: GraphBuilder::new(),
            f32s: vec![],
            i32s: vec![],
            rng: Rng::new(seed),
        }
    }

    /// An F32 input of `dims` with values `f(u)`, `u` uniform in [-1, 1).
    fn input(&mut self, name: &str, dims: &[usize], f: fn(f32) -> f32) -> Result<Tensor> {
        let n = dims.iter().product();
        let v = (0..n).map(|_| f(self.rng.unit())).collect();
        self.f32s.push((name.into(), v));
        Ok(self.b.input(name, dims, DType::F32)?)
    }

    fn ids(&mut self, name: &str, dims: &[usize], v: Vec<i32>) -> Result<Tensor> {
        self.i32s.push((name.into(), v));
        Ok(self.b.input(name, dims, DType::I32)?)
    }

    fn weight(&mut self, be: &mut dyn Backend, dims: &[usize], dtype: DType) -> Result<Tensor> {
        self.external(be, "w", dims, dtype, Access::ReadOnly)
    }

    /// A buffer of random values of `dtype`: a weight, or a cache the graph may write.
    fn external(
        &mut self,
        be: &mut dyn Backend,
        name: &str,
        dims: &[usize],
        dtype: DType,
        access: Access,
    ) -> Result<Tensor> {
        let cols = dims[dims.len() - 1];
        let rows = dims.iter().product::<usize>() / cols;
        let buf = random_weight(be, &mut self.rng, dtype, rows, cols)?;
        Ok(self.b.external(name, dims, dtype, buf, access)?)
    }

    fn finish(self, y: Tensor) -> Result<(Graph, Named<f32>, Named<i32>)> {
        let mut b = self.b;
        b.output(y, "y")?;
        Ok((b.finish(), self.f32s, self.i32s))
    }
}

type Build = dyn Fn(&mut dyn Backend) -> Result<(Case, Tensor)>;

/// Compiles the case on `be` and times one run per iteration.
fn bench(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    be: &mut dyn Backend,
    name: &str,
    build: &Build,
) {
    let prepared = build(be).and_then(|(case, y)| case.finish(y));
    let (graph, f32s, i32s) = match prepared {
        Ok(p) => p,
        Err(e) => return eprintln!("{name}: {e}"),
    };
    let prog = match compile(be, &graph) {
        Ok(p) => p,
        Err(e) => return eprintln!("{name}: {e}"),
    };
    let mut inputs: Vec<(&str, HostData)> = f32s
        .iter()
        .map(|(n, v)| (n.as_str(), HostData::F32(v)))
        .collect();
    inputs.extend(i32s.iter().map(|(n, v)| (n.as_str(), HostData::I32(v))));
    if weft_backends::env_flag("WEFT_BENCH_DEVICE_TIME") {
        be.set_profiling(true);
        g.bench_function(name, |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    black_box(run_once(be, prog, &inputs).expect("run"));
                    let wall = start.elapsed();
                    total += be
                        .timings(prog)
                        .map_or(wall, |t| t.iter().map(|n| n.time).sum());
                }
                total
            })
        });
        be.set_profiling(false);
    } else {
        g.bench_function(name, |bch| {
            bch.iter(|| black_box(run_once(be, prog, &inputs).expect("run")))
        });
    }
    let _ = be.release(prog);
}

/// The backends to measure: the CPU, and the wgpu adapter when there is one.
/// With `WEFT_BENCH_EARLIER=1`, also `wgpu-earlier`: the same adapter with the kernels' earlier
/// forms (`WgpuOptions::matvec_quads`, `unstaged_rows`), so that one run times both (say
/// `-- 'wgpu(-earlier)?/(matvec|fused)'`).
fn backends() -> Vec<(&'static str, Box<dyn Backend>)> {
    let mut v: Vec<(&'static str, Box<dyn Backend>)> = vec![("cpu", Box::new(CpuBackend::new()))];
    match WgpuBackend::new(&WgpuOptions::default()) {
        Ok(be) => {
            eprintln!("wgpu adapter: {}", be.adapter_info().name);
            v.push(("wgpu", Box::new(be)));
        }
        Err(e) => eprintln!("wgpu benchmarks skipped: {e}"),
    }
    if weft_backends::env_flag("WEFT_BENCH_EARLIER") {
        let opts = WgpuOptions {
            matvec_quads: true,
            unstaged_rows: true,
            ..WgpuOptions::default()
        };
        match WgpuBackend::new(&opts) {
            Ok(be) => v.push(("wgpu-earlier", Box::new(be))),
            Err(e) => eprintln!("wgpu-earlier benchmarks skipped: {e}"),
        }
    }
    v
}

/// Runs `cases` (name, throughput, graph) as group `group` on every backend.
fn suite(c: &mut Criterion, group: &str, cases: &[(String, Throughput, Box<Build>)]) {
    for (backend, mut be) in backends() {
        let mut g = c.benchmark_group(format!("{backend}/{group}"));
        g.sample_size(10);
        for (name, tp, build) in cases {
            g.throughput(tp.clone());
            bench(&mut g, be.as_mut(), name, build.as_ref());
        }
        g.finish();
    }
}

fn matvec(c: &mut Criterion) {
    let dtypes = DType::ALL.into_iter().filter(|d| d.is_float());
    suite(
        c,
        "matvec_2048x2048 (weight bytes/s)",
        &matvec_cases(2048, 2048, dtypes),
    );
    suite(
        c,
        "matvec_8192x8192 (weight bytes/s)",
        &matvec_cases(
            8192,
            8192,
            [DType::F16, DType::Q8_0, DType::Q4K].into_iter(),
        ),
    );
}

/// One mat-vec of an `n` × `k` weight per dtype.
fn matvec_cases(
    n: usize,
    k: usize,
    dtypes: impl Iterator<Item = DType>,
) -> Vec<(String, Throughput, Box<Build>)> {
    dtypes
        .map(|dtype| {
            let bytes = dtype.bytes_for(n * k).unwrap_or(0) as u64;
            let build: Box<Build> = Box::new(move |be: &mut dyn Backend| {
                let mut case = Case::new(1);
                let x = case.input("x", &[1, k], |v| v)?;
                let w = case.weight(be, &[n, k], dtype)?;
                let y = case.b.matmul(x, w)?;
                Ok((case, y))
            });
            (dtype.name().to_string(), Throughput::Bytes(bytes), build)
        })
        .collect()
}

fn matmul(c: &mut Criterion) {
    let (m, n, k) = (64, 2048, 2048);
    // (BF16: many models' own format; Q4_1: the demo model's; Q6_K: part of every Q4_K_M file)
    let cases: Vec<(String, Throughput, Box<Build>)> = [
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q6K,
    ]
    .into_iter()
    .map(|dtype| {
        let build: Box<Build> = Box::new(move |be: &mut dyn Backend| {
            let mut case = Case::new(2);
            let x = case.input("x", &[m, k], |v| v)?;
            let w = case.weight(be, &[n, k], dtype)?;
            let y = case.b.matmul(x, w)?;
            Ok((case, y))
        });
        let flops = Throughput::Elements((2 * m * n * k) as u64);
        (dtype.name().to_string(), flops, build)
    })
    .collect();
    suite(c, "matmul_64x2048x2048 (FLOP/s)", &cases);
}

fn attention(c: &mut Criterion) {
    // TinyLlama's heads: 32 query heads, 4 KV heads of 64.
    let (hq, hkv, d) = (32, 4, 64);
    // a prompt's, every operand an input
    let prefill = |t: usize| -> (String, Throughput, Box<Build>) {
        let build: Box<Build> = Box::new(move |_: &mut dyn Backend| {
            let mut case = Case::new(3);
            let q = case.input("q", &[t, hq, d], |v| v)?;
            let k = case.input("k", &[t, hkv, d], |v| v)?;
            let v = case.input("v", &[t, hkv, d], |v| v)?;
            let y = case.b.attention(q, k, v, None, None, 0.125, true)?;
            Ok((case, y))
        });
        let flops = (4 * t * t * hq * d) as u64;
        let name = format!("prefill {t} tokens, causal");
        (name, Throughput::Elements(flops), build)
    };
    // a decode step's over caches that stay on the device (only the query is uploaded)
    let decode = |tk: usize, kv: DType| -> (String, Throughput, Box<Build>) {
        let build: Box<Build> = Box::new(move |be: &mut dyn Backend| {
            let mut case = Case::new(3);
            let q = case.input("q", &[1, hq, d], |v| v)?;
            let k = case.external(be, "k", &[tk, hkv, d], kv, Access::ReadOnly)?;
            let v = case.external(be, "v", &[tk, hkv, d], kv, Access::ReadOnly)?;
            let y = case.b.attention(q, k, v, None, None, 0.125, false)?;
            Ok((case, y))
        });
        let flops = (4 * tk * hq * d) as u64;
        let name = format!("decode, {tk} cached keys {}", kv.name());
        (name, Throughput::Elements(flops), build)
    };
    suite(
        c,
        "attention (FLOP/s)",
        &[
            decode(2048, DType::F32),
            decode(2048, DType::F16),
            prefill(256),
        ],
    );
}

fn recurrent(c: &mut Criterion) {
    let t = 64;
    // mamba-130m: 1536 channels, kernel 4, state 16 per channel
    let conv: Box<Build> = Box::new(move |_: &mut dyn Backend| {
        let mut case = Case::new(4);
        let xc = case.input("xc", &[1, t + 3, 1536], |v| v)?;
        let w = case.input("w", &[1536, 4], |v| v)?;
        let y = case.b.ssm_conv_raw(xc, w)?;
        Ok((case, y))
    });
    let scan = |t: usize, h: usize, p: usize, n: usize, a_cols: usize| -> Box<Build> {
        Box::new(move |_: &mut dyn Backend| {
            let mut case = Case::new(5);
            let st = case.input("st", &[1, h, p, n], |v| v)?;
            let x = case.input("x", &[1, t, h, p], |v| v)?;
            let dt = case.input("dt", &[1, t, h], |v| v.abs() * 0.1)?;
            let a = case.input("a", &[h, a_cols], |v| -v.abs())?;
            let b = case.input("b", &[1, t, 1, n], |v| v)?;
            let cc = case.input("c", &[1, t, 1, n], |v| v)?;
            let (y, _) = case.b.ssm_scan(st, x, dt, a, b, cc)?;
            Ok((case, y))
        })
    };
    let delta = |form: DeltaForm| -> Box<Build> {
        // Qwen3-Next's linear attention: 16 heads with 128 × 128 states
        Box::new(move |_: &mut dyn Backend| {
            let (hv, dk) = (16, 128);
            let mut case = Case::new(6);
            let st = case.input("st", &[1, hv, dk, dk], |v| v * 0.1)?;
            let q = case.input("q", &[1, t, hv, dk], |v| v * 0.1)?;
            let g = case.input("g", &[1, t, hv], |v| -v.abs() * 0.1)?;
            let (y, _) = case.b.gated_delta_net(st, q, q, q, g, g, form)?;
            Ok((case, y))
        })
    };
    let tokens = Throughput::Elements(t as u64);
    let cases: Vec<(String, Throughput, Box<Build>)> = vec![
        ("ssm_conv mamba 1536 channels".into(), tokens.clone(), conv),
        (
            "ssm_scan mamba1 1536 x 16".into(),
            tokens.clone(),
            scan(t, 1536, 1, 16, 16),
        ),
        (
            "ssm_scan mamba2 32 heads x 64 x 128".into(),
            tokens.clone(),
            scan(t, 32, 64, 128, 1),
        ),
        (
            "gated_delta_net recurrent".into(),
            tokens.clone(),
            delta(DeltaForm::Recurrent),
        ),
        (
            "gated_delta_net chunked".into(),
            tokens,
            delta(DeltaForm::Chunked),
        ),
    ];
    suite(c, "recurrent 64 tokens (tokens/s)", &cases);
    // decode: one token's scan, the form a generated token takes
    let one = Throughput::Elements(1);
    let cases: Vec<(String, Throughput, Box<Build>)> = vec![
        (
            "ssm_scan mamba1 1536 x 16".into(),
            one.clone(),
            scan(1, 1536, 1, 16, 16),
        ),
        (
            "ssm_scan mamba2 32 heads x 64 x 128".into(),
            one,
            scan(1, 32, 64, 128, 1),
        ),
    ];
    suite(c, "recurrent 1 token (tokens/s)", &cases);
}

fn moe(c: &mut Criterion) {
    // 8 experts of 1024 × 1024, top-2, for one decode token and prompts of 32 and 256 tokens
    // (8 and 64 rows an expert: the GPU tiles the second)
    let (e, n, k, top) = (8, 1024, 1024, 2);
    let case = |t: usize, dtype: DType| -> (String, Throughput, Box<Build>) {
        let build: Box<Build> = Box::new(move |be: &mut dyn Backend| {
            let mut case = Case::new(7);
            let x = case.input("x", &[t, 1, k], |v| v)?;
            let w = case.weight(be, &[e, n, k], dtype)?;
            let ids: Vec<i32> = (0..t * top)
                .map(|i| ((i * 5 + i / top) % e) as i32)
                .collect();
            let ids = case.ids("ids", &[t, top], ids)?;
            let y = case.b.matmul_id(x, w, ids)?;
            Ok((case, y))
        });
        let flops = Throughput::Elements((2 * t * top * n * k) as u64);
        (format!("{dtype} {t} tokens"), flops, build)
    };
    // the experts' gate and up of one decode token meeting in `matmul_id_pair` (SiLU · up)
    let pair: Box<Build> = Box::new(move |be: &mut dyn Backend| {
        let mut case = Case::new(11);
        let x = case.input("x", &[1, 1, k], |v| v)?;
        let wg = case.external(be, "gate", &[e, n, k], DType::Q4K, Access::ReadOnly)?;
        let wu = case.external(be, "up", &[e, n, k], DType::Q4K, Access::ReadOnly)?;
        let ids = case.ids("ids", &[1, top], vec![3, 6])?;
        let g = case.b.matmul_id(x, wg, ids)?;
        let u = case.b.matmul_id(x, wu, ids)?;
        let g = case.b.silu(g)?;
        let y = case.b.mul(g, u)?;
        Ok((case, y))
    });
    let pair_flops = Throughput::Elements((2 * 2 * top * n * k) as u64);
    suite(
        c,
        "matmul_id 8 experts top-2 (FLOP/s)",
        &[
            case(1, DType::Q4K),
            case(32, DType::Q4K),
            case(32, DType::F16),
            case(256, DType::F16),
            ("Q4K gate/up pair + SiLU, 1 token".into(), pair_flops, pair),
        ],
    );
}

fn fused_decode(c: &mut Criterion) {
    // TinyLlama's FFN: rms norm, gate and up (5632 × 2048 f16 each), SiLU · up: one
    // `matmul_pair` reading the norm's row itself
    let (d, ff) = (2048, 5632);
    let ffn: Box<Build> = Box::new(move |be: &mut dyn Backend| {
        let mut case = Case::new(8);
        let x = case.input("x", &[1, d], |v| v)?;
        let nw = case.input("norm", &[d], |v| 1.0 + 0.1 * v)?;
        let wg = case.external(be, "gate", &[ff, d], DType::F16, Access::ReadOnly)?;
        let wu = case.external(be, "up", &[ff, d], DType::F16, Access::ReadOnly)?;
        let h = case.b.rms_norm(x, 1e-5)?;
        let h = case.b.mul(h, nw)?;
        let g = case.b.matmul(h, wg)?;
        let u = case.b.matmul(h, wu)?;
        let g = case.b.silu(g)?;
        let y = case.b.mul(g, u)?;
        Ok((case, y))
    });
    let ffn_bytes = Throughput::Bytes(DType::F16.bytes_for(2 * ff * d).unwrap_or(0) as u64);
    // its attention at decode: q and the new key rotated, k and v stored into f16 caches of
    // 1024 cells, attention over all of them: one kernel
    let (hq, hkv, hd, cells) = (32, 4, 64, 1024);
    let attn: Box<Build> = Box::new(move |be: &mut dyn Backend| {
        let mut case = Case::new(9);
        let qk = case.input("qk", &[1, hq + hkv, hd], |v| v)?;
        let v = case.input("v", &[1, hkv * hd], |v| v)?;
        let mask = case.input("mask", &[1, cells], |_| 0.0)?;
        let pos = case.ids("pos", &[1], vec![cells as i32 - 1])?;
        let idx = case.ids("idx", &[1], vec![cells as i32 - 1])?;
        let kc = case.external(be, "k", &[cells, hkv * hd], DType::F16, Access::ReadWrite)?;
        let vc = case.external(be, "v", &[cells, hkv * hd], DType::F16, Access::ReadWrite)?;
        let rope = RopeParams {
            n_dims: hd,
            mode: RopeMode::Normal,
            freq_base: 10000.0,
            freq_scale: 1.0,
        };
        let r = case.b.rope(qk, pos, rope)?;
        let q = case.b.slice(r, 1, 0, hq)?;
        let k = case.b.slice(r, 1, hq, hkv)?;
        let k = case.b.reshape(k, &[1, hkv * hd])?;
        let kc = case.b.store_rows(kc, k, idx)?;
        let vc = case.b.store_rows(vc, v, idx)?;
        let ks = case.b.reshape(kc, &[cells, hkv, hd])?;
        let vs = case.b.reshape(vc, &[cells, hkv, hd])?;
        let y = case
            .b
            .attention(q, ks, vs, Some(mask), None, 0.125, false)?;
        Ok((case, y))
    });
    let attn_flops = Throughput::Elements((4 * cells * hq * hd) as u64);
    suite(
        c,
        "fused decode",
        &[
            (
                "llama FFN, norm + gate/up + SiLU (weight bytes/s)".into(),
                ffn_bytes,
                ffn,
            ),
            (
                "llama attention + rope + KV store, 1024 cells (FLOP/s)".into(),
                attn_flops,
                attn,
            ),
        ],
    );
}

/// The host's cost of recording a decode-sized step on wgpu: 96 layers of a small mat-vec and
/// a residual add (each layer one dispatch after fusion, as many bindings as a real one), as
/// dispatches recorded per second. Nothing is submitted.
fn host(c: &mut Criterion) {
    let Ok(mut be) = WgpuBackend::new(&WgpuOptions::default()) else {
        return eprintln!("wgpu host benchmark skipped: no adapter");
    };
    let mut build = || -> Result<_> {
        let mut case = Case::new(10);
        let mut x = case.input("x", &[1, 64], |v| v)?;
        for _ in 0..96 {
            let w = case.weight(&mut be, &[64, 64], DType::F16)?;
            let y = case.b.matmul(x, w)?;
            x = case.b.add(y, x)?;
        }
        let (graph, _, _) = case.finish(x)?;
        Ok(compile(&mut be, &graph)?)
    };
    let prog = match build() {
        Ok(p) => p,
        Err(e) => return eprintln!("wgpu host benchmark: {e}"),
    };
    let n = be.record(prog).expect("record");
    let mut g = c.benchmark_group("wgpu/host");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("record {n} dispatches (dispatches/s)"), |bch| {
        bch.iter(|| black_box(be.record(prog).expect("record")))
    });
    g.finish();
}

criterion_group!(
    benches,
    matvec,
    matmul,
    attention,
    recurrent,
    moe,
    fused_decode,
    host
);
criterion_main!(benches);
