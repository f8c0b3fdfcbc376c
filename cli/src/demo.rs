//! `weft demo`.

use anyhow::{Context, Result, ensure};
use std::time::Instant;
use weft_backends::{Backend, CpuBackend, HostData};
use weft_graph::passes::PassOptions;
use weft_graph::{Graph, PlanOptions, plan};
use weft_models::demo::{self, V};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Prompt tokens per sequence.
    #[arg(short = 't', long, default_value_t = 8)]
    tokens: usize,
    /// Sequences decoded together (Mamba stack).
    #[arg(short = 's', long, default_value_t = 2)]
    sequences: usize,
}

fn kib(b: usize) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

/// Prints what the passes and the planner did to a graph.
fn describe(name: &str, g: &Graph) {
    let fused = plan(g, PlanOptions::default());
    let unfused = plan(
        g,
        PlanOptions {
            passes: PassOptions {
                fuse: false,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let saved = 100.0 * (1.0 - fused.arena_bytes as f64 / fused.naive_bytes.max(1) as f64);
    println!("{name}");
    println!(
        "  nodes: {} recorded → {} after passes; dispatches {} unfused → {} fused",
        g.len(),
        fused.graph.len(),
        unfused.dispatches(),
        fused.dispatches()
    );
    println!(
        "  arena: {} (every tensor on its own: {}, {saved:.0}% saved)",
        kib(fused.arena_bytes),
        kib(fused.naive_bytes)
    );
}

fn run_logits(be: &mut dyn Backend, g: &Graph, inputs: &[(&str, HostData)]) -> Result<Vec<f32>> {
    let p = plan(g, PlanOptions::default());
    let prog = be.compile(&p)?;
    let out = be.run(prog, inputs)?;
    be.release(prog)?;
    out.first()
        .map(|o| o.to_f32())
        .context("the graph has no output")
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    num / den.max(f32::MIN_POSITIVE)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    ensure!(args.tokens >= 1, "--tokens must be at least 1");
    ensure!(args.sequences >= 1, "--sequences must be at least 1");
    ensure!(
        args.tokens <= demo::CELLS,
        "--tokens must be at most {} (the demo KV cache)",
        demo::CELLS
    );
    let mut be = CpuBackend::new();
    println!(
        "weft demo: tiny random-weight stacks; the logits mean nothing (real models: see the README)"
    );
    println!("backend: {}\n", be.name());
    let (s, t) = (args.sequences, args.tokens);
    let toks: Vec<i32> = (0..s * t).map(|i| ((i * 7 + 3) % V) as i32).collect();

    // Mamba: all sequences in one ubatch, then token by token through the state caches.
    let w = demo::mamba_weights(&mut be, s)?;
    let slots: Vec<i32> = (0..s as i32).collect();
    let g = demo::mamba_graph(&w, s, t)?;
    describe(
        &format!(
            "2-layer Mamba (d_model {}, d_inner {}, d_state {}): {s} sequences × {t} tokens",
            demo::D,
            demo::MP.d_inner,
            demo::MP.d_state
        ),
        &g,
    );
    let start = Instant::now();
    let full = run_logits(
        &mut be,
        &g,
        &[
            ("tokens", HostData::I32(&toks)),
            ("slots", HostData::I32(&slots)),
        ],
    )?;
    let prefill = start.elapsed();
    w.zero_caches(&mut be)?;
    let step = demo::mamba_graph(&w, s, 1)?;
    let mut worst = 0.0f32;
    let start = Instant::now();
    for ti in 0..t {
        let tk: Vec<i32> = (0..s).map(|si| toks[si * t + ti]).collect();
        let got = run_logits(
            &mut be,
            &step,
            &[
                ("tokens", HostData::I32(&tk)),
                ("slots", HostData::I32(&slots)),
            ],
        )?;
        for si in 0..s {
            let want = &full[(si * t + ti) * V..(si * t + ti + 1) * V];
            worst = worst.max(max_rel(&got[si * V..(si + 1) * V], want));
        }
    }
    let decode = start.elapsed();
    println!(
        "  prefill {:.2} ms; decode {t} steps, {:.3} ms/step",
        prefill.as_secs_f64() * 1e3,
        decode.as_secs_f64() * 1e3 / t as f64
    );
    println!("  token-by-token decode vs one ubatch: worst relative error {worst:.1e}\n");
    ensure!(worst < 1e-4, "decode diverged from prefill ({worst:.1e})");

    // Attention: one sequence, prefill then decode through the KV cache.
    let w = demo::attn_weights(&mut be)?;
    let toks = &toks[..t];
    let pos: Vec<i32> = (0..t as i32).collect();
    let g = demo::attn_graph(&w, t, 0, true)?;
    describe(
        &format!(
            "2-layer attention + SwiGLU (d_model {}, {} heads, {} KV heads): 1 sequence × {t} tokens",
            demo::D,
            demo::AP.n_head,
            demo::AP.n_head_kv
        ),
        &g,
    );
    let mask = demo::causal_mask(t, 0);
    let full = run_logits(
        &mut be,
        &g,
        &[
            ("tokens", HostData::I32(toks)),
            ("pos", HostData::I32(&pos)),
            ("mask", HostData::F32(&mask)),
        ],
    )?;
    w.zero_caches(&mut be)?;
    let mut worst = 0.0f32;
    for i in 0..t {
        let g = demo::attn_graph(&w, 1, i, true)?;
        let m = demo::causal_mask(1, i);
        let got = run_logits(
            &mut be,
            &g,
            &[
                ("tokens", HostData::I32(&toks[i..i + 1])),
                ("pos", HostData::I32(&pos[i..i + 1])),
                ("mask", HostData::F32(&m)),
            ],
        )?;
        worst = worst.max(max_rel(&got, &full[i * V..(i + 1) * V]));
    }
    println!("  token-by-token decode vs one ubatch: worst relative error {worst:.1e}");
    ensure!(worst < 1e-4, "decode diverged from prefill ({worst:.1e})");
    Ok(())
}
