//! The shared MoE block (`blocks::moe`) against a plain Rust reference in f64, on random small
//! weights: softmax and sigmoid routing, with and without renormalisation, routed scaling and
//! a selection bias, SwiGLU and squared-ReLU experts, with and without a shared expert (plain
//! or behind a sigmoid gate), `k` of 1 to 3; on the CPU and the wgpu backends.

#![allow(clippy::unwrap_used)]

mod common;

use weft_backends::{Backend, CpuBackend, HostData};
use weft_graph::passes::PassOptions;
use weft_graph::{DType, GraphBuilder, PlanOptions, Tensor, plan};
use weft_models::blocks::moe::{ExpertAct, Gating, MoeParams, MoeWeights, SharedExpert, moe};

const T: usize = 7;
const D: usize = 12;
const F: usize = 10;
const FS: usize = 9;
const E: usize = 5;

/// xorshift64*, uniform in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    k: usize,
    gating: Gating,
    norm: bool,
    scale: f32,
    act: ExpertAct,
    bias: bool,
    shared: bool,
    shared_gate: bool,
}

/// Every weight of one test layer, row-major like the graph binds them.
struct Weights {
    router: Vec<f32>,
    bias: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    sh_gate: Vec<f32>,
    sh_up: Vec<f32>,
    sh_down: Vec<f32>,
    sh_gate_inp: Vec<f32>,
}

impl Weights {
    fn new(rng: &mut Rng) -> Weights {
        Weights {
            router: rng.vec(E * D, 0.8),
            bias: rng.vec(E, 0.6),
            gate: rng.vec(E * F * D, 0.5),
            up: rng.vec(E * F * D, 0.5),
            down: rng.vec(E * D * F, 0.5),
            sh_gate: rng.vec(FS * D, 0.5),
            sh_up: rng.vec(FS * D, 0.5),
            sh_down: rng.vec(D * FS, 0.5),
            sh_gate_inp: rng.vec(D, 0.5),
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `w [n, k] · x [k]`.
fn matvec(w: &[f32], x: &[f32], n: usize) -> Vec<f64> {
    let k = x.len();
    (0..n).map(|i| dot(&w[i * k..(i + 1) * k], x)).collect()
}

fn act(a: ExpertAct, gate: Option<&[f64]>, up: &[f64]) -> Vec<f32> {
    match a {
        ExpertAct::SwiGlu => gate
            .unwrap()
            .iter()
            .zip(up)
            .map(|(&g, &u)| (g / (1.0 + (-g).exp()) * u) as f32)
            .collect(),
        ExpertAct::SqrRelu => up
            .iter()
            .map(|&u| (u.max(0.0) * u.max(0.0)) as f32)
            .collect(),
    }
}

/// The chosen experts of one token (best first) and their weights.
fn route_ref(c: &Case, w: &Weights, x: &[f32], use_bias: bool) -> (Vec<usize>, Vec<f64>) {
    let logits = matvec(&w.router, x, E);
    let probs: Vec<f64> = match c.gating {
        Gating::Softmax => {
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        }
        Gating::Sigmoid => logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect(),
    };
    let sel: Vec<f64> = (0..E)
        .map(|e| probs[e] + if use_bias { w.bias[e] as f64 } else { 0.0 })
        .collect();
    let mut order: Vec<usize> = (0..E).collect();
    order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]));
    order.truncate(c.k);
    let mut ws: Vec<f64> = order.iter().map(|&e| probs[e]).collect();
    if c.norm {
        let s: f64 = ws.iter().sum::<f64>().max(6.103_515_6e-5);
        ws.iter_mut().for_each(|v| *v /= s);
    }
    ws.iter_mut().for_each(|v| *v *= c.scale as f64);
    (order, ws)
}

fn reference(c: &Case, w: &Weights, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; T * D];
    for t in 0..T {
        let xt = &x[t * D..(t + 1) * D];
        let (ids, ws) = route_ref(c, w, xt, c.bias);
        let mut y = [0f64; D];
        for (&e, &we) in ids.iter().zip(&ws) {
            let up = matvec(&w.up[e * F * D..(e + 1) * F * D], xt, F);
            let gate = matvec(&w.gate[e * F * D..(e + 1) * F * D], xt, F);
            let h = act(c.act, Some(&gate), &up);
            let d = matvec(&w.down[e * D * F..(e + 1) * D * F], &h, D);
            for i in 0..D {
                y[i] += we * d[i];
            }
        }
        if c.shared {
            let up = matvec(&w.sh_up, xt, FS);
            let gate = matvec(&w.sh_gate, xt, FS);
            let h = act(c.act, Some(&gate), &up);
            let d = matvec(&w.sh_down, &h, D);
            let g = if c.shared_gate {
                1.0 / (1.0 + (-dot(&w.sh_gate_inp, xt)).exp())
            } else {
                1.0
            };
            for i in 0..D {
                y[i] += g * d[i];
            }
        }
        for i in 0..D {
            out[t * D + i] = y[i] as f32;
        }
    }
    out
}

fn bind(
    b: &mut GraphBuilder,
    be: &mut dyn Backend,
    name: &str,
    dims: &[usize],
    v: &[f32],
) -> Tensor {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let buf = be.alloc(bytes.len()).unwrap();
    be.upload(buf, 0, &bytes).unwrap();
    b.weight(name, dims, DType::F32, buf).unwrap()
}

fn run_case(c: &Case, be: &mut dyn Backend, seed: u64) {
    let mut rng = Rng(seed);
    let w = Weights::new(&mut rng);
    let x = rng.vec(T * D, 1.0);
    if c.bias {
        // The bias must change some token's choice, or this case would not test it.
        let moved = (0..T).any(|t| {
            let xt = &x[t * D..(t + 1) * D];
            route_ref(c, &w, xt, true).0 != route_ref(c, &w, xt, false).0
        });
        assert!(moved, "{c:?}: the selection bias changes no choice");
    }
    let want = reference(c, &w, &x);

    let mut b = GraphBuilder::new();
    let xi = b.input("x", &[T, D], DType::F32).unwrap();
    let swiglu = c.act == ExpertAct::SwiGlu;
    let shared = c.shared.then(|| SharedExpert {
        gate: swiglu.then(|| bind(&mut b, be, "sh_gate", &[FS, D], &w.sh_gate)),
        up: bind(&mut b, be, "sh_up", &[FS, D], &w.sh_up),
        down: bind(&mut b, be, "sh_down", &[D, FS], &w.sh_down),
        gate_inp: c
            .shared_gate
            .then(|| bind(&mut b, be, "sh_gate_inp", &[D], &w.sh_gate_inp)),
    });
    let mw = MoeWeights {
        router: bind(&mut b, be, "router", &[E, D], &w.router),
        selection_bias: c.bias.then(|| bind(&mut b, be, "bias", &[E], &w.bias)),
        gate: swiglu.then(|| bind(&mut b, be, "gate", &[E, F, D], &w.gate)),
        up: bind(&mut b, be, "up", &[E, F, D], &w.up),
        down: bind(&mut b, be, "down", &[E, D, F], &w.down),
        shared,
    };
    let p = MoeParams {
        n_expert_used: c.k,
        gating: c.gating,
        norm_weights: c.norm,
        weights_scale: c.scale,
        act: c.act,
    };
    let y = moe(&mut b, xi, &mw, &p).unwrap();
    assert_eq!(y.dims(), [T, D]);
    b.output(y, "y").unwrap();
    let g = b.finish();
    for opts in [
        PlanOptions::default(),
        PlanOptions {
            passes: PassOptions {
                fuse: false,
                ..Default::default()
            },
            reuse: false,
            in_place: false,
        },
    ] {
        let pl = plan(&g, opts);
        pl.check_invariants().unwrap();
        let prog = be.compile(&pl).unwrap();
        let got = be.run(prog, &[("x", HostData::F32(&x))]).unwrap()[0].to_f32();
        be.release(prog).unwrap();
        let num: f32 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        let den: f32 = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            num <= 1e-5 * den,
            "{c:?} on {} ({opts:?}): relative error {}",
            be.name(),
            num / den
        );
    }
}

fn cases() -> Vec<Case> {
    let base = Case {
        k: 2,
        gating: Gating::Softmax,
        norm: false,
        scale: 1.0,
        act: ExpertAct::SwiGlu,
        bias: false,
        shared: false,
        shared_gate: false,
    };
    vec![
        // Jamba: softmax, no renormalisation, no shared expert.
        base,
        // Granite-4.0-H: softmax renormalised, shared SwiGLU expert.
        Case {
            norm: true,
            shared: true,
            ..base
        },
        // Qwen3-Next: softmax renormalised, shared expert behind a sigmoid gate.
        Case {
            k: 3,
            norm: true,
            shared: true,
            shared_gate: true,
            ..base
        },
        // Softmax renormalised, then scaled (the chosen logits' softmax, times 1.5).
        Case {
            norm: true,
            scale: 1.5,
            ..base
        },
        // Nemotron-H: sigmoid with a selection bias, renormalised, scaled, squared ReLU.
        Case {
            gating: Gating::Sigmoid,
            norm: true,
            scale: 2.5,
            act: ExpertAct::SqrRelu,
            bias: true,
            shared: true,
            ..base
        },
        // Sigmoid without renormalisation or shared expert; a single expert per token.
        Case {
            k: 1,
            gating: Gating::Sigmoid,
            scale: 0.7,
            ..base
        },
        // Softmax with squared ReLU, k = 1, shared expert.
        Case {
            k: 1,
            act: ExpertAct::SqrRelu,
            shared: true,
            ..base
        },
    ]
}

#[test]
fn moe_block_matches_reference_on_cpu() {
    let mut be = CpuBackend::new();
    for (i, c) in cases().iter().enumerate() {
        run_case(c, &mut be, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
    }
}

#[test]
fn moe_block_matches_reference_on_wgpu() {
    let Some(mut be) = common::wgpu() else { return };
    for (i, c) in cases().iter().enumerate() {
        run_case(c, be.as_mut(), 0x9e37_79b9_7f4a_7c15 ^ i as u64);
    }
}

#[test]
fn swiglu_experts_without_gate_weights_are_an_error() {
    let mut be = CpuBackend::new();
    let mut rng = Rng(7);
    let w = Weights::new(&mut rng);
    let mut b = GraphBuilder::new();
    let xi = b.input("x", &[T, D], DType::F32).unwrap();
    let mw = MoeWeights {
        router: bind(&mut b, &mut be, "router", &[E, D], &w.router),
        selection_bias: None,
        gate: None,
        up: bind(&mut b, &mut be, "up", &[E, F, D], &w.up),
        down: bind(&mut b, &mut be, "down", &[E, D, F], &w.down),
        shared: None,
    };
    let p = MoeParams {
        n_expert_used: 2,
        gating: Gating::Softmax,
        norm_weights: false,
        weights_scale: 1.0,
        act: ExpertAct::SwiGlu,
    };
    let e = moe(&mut b, xi, &mw, &p).unwrap_err().to_string();
    assert!(e.contains("gate"), "{e}");
}
