//! `weft info` and `weft graph`: what is inside a model and what it compiles to. Both run on
//! the null backend, so nothing is uploaded or computed.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use weft_backends::{NullBackend, WgpuBackend};
use weft_graph::passes::PassOptions;
use weft_graph::{Graph, Op, PlanOptions, export, plan};
use weft_models::gguf::GgufFile;
use weft_models::memory::LayerMemory;
use weft_models::{MemoryConfig, Session};

fn mib(b: usize) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

fn open(model: &PathBuf) -> Result<GgufFile> {
    GgufFile::open(model).with_context(|| format!("cannot read the model {}", model.display()))
}

fn session(gguf: &GgufFile, ctx: usize, sequences: usize) -> Result<Session> {
    let config = MemoryConfig {
        cells: ctx,
        sequences,
        ..Default::default()
    };
    Ok(Session::new(
        gguf,
        Box::new(NullBackend::new()),
        config,
        |_, _| {},
    )?)
}

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// The model (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// Context (KV cells) for the memory estimate.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Sequences decoded at once, for the memory estimate.
    #[arg(long, default_value_t = 1)]
    sequences: usize,
}

pub fn info(args: &InfoArgs) -> Result<()> {
    let gguf = open(&args.model)?;
    let size = std::fs::metadata(&args.model)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    println!(
        "file          {} ({}, GGUF v{}, {} tensors)",
        args.model.display(),
        mib(size),
        gguf.version(),
        gguf.tensors().len()
    );
    let arch = gguf.architecture()?.to_string();
    println!("architecture  {arch}");
    if let Some(name) = gguf.get("general.name").and_then(|v| v.as_str()) {
        println!("name          {name}");
    }
    println!("hyperparameters");
    for (k, v) in gguf.metadata() {
        if let Some(rest) = k.strip_prefix(&format!("{arch}.")) {
            println!("  {rest:<40} {}", v.summary(8));
        }
    }
    let mut by_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in gguf.tensors() {
        let e = by_type.entry(t.dtype.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.bytes;
    }
    println!("tensors by type");
    for (ty, (n, b)) in &by_type {
        println!("  {ty:<6} {n:>5} tensors  {}", mib(*b));
    }
    let mut s = session(&gguf, args.ctx, args.sequences)?;
    println!("layers");
    for (i, l) in s.arch().layers().iter().enumerate() {
        let mixer = match l {
            LayerMemory::Attention { width } => format!("attention (KV width {width})"),
            LayerMemory::Recurrent { conv, ssm } => {
                format!("recurrent (conv {conv}, state {ssm} floats)")
            }
            LayerMemory::Both { width, .. } => format!("attention + recurrent (KV width {width})"),
            LayerMemory::None => "none".to_string(),
        };
        let has = |n: &str| gguf.tensor(&format!("blk.{i}.{n}")).is_some();
        let ffn = if has("ffn_gate_inp.weight") {
            "MoE"
        } else if has("ffn_down.weight") || has("ffn_up.weight") {
            "dense FFN"
        } else {
            "no FFN"
        };
        println!("  {i:>3}  {mixer:<45} {ffn}");
    }
    let (kv, rec) = s.arch().layers().iter().fold((0, 0), |(kv, rec), l| {
        (
            kv + l.kv_width().map_or(0, |w| 2 * w * 4 * args.ctx),
            rec + l
                .recurrent()
                .map_or(0, |(c, s)| (c + s) * 4 * args.sequences),
        )
    });
    let (_, decode) = s.graph_for(1)?;
    s.clear();
    let (_, prompt) = s.graph_for(args.ctx.min(512))?;
    println!(
        "memory for a context of {} cells and {} sequence(s)",
        args.ctx, args.sequences
    );
    println!(
        "  weights           {}",
        mib(gguf.tensors().iter().map(|t| t.bytes).sum())
    );
    println!("  KV cache (F32)    {}", mib(kv));
    println!("  recurrent state   {}", mib(rec));
    println!("  arena, decode     {}", mib(decode.arena_bytes));
    println!(
        "  arena, {:>4} tok   {}",
        args.ctx.min(512),
        mib(prompt.arena_bytes)
    );
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Summary,
    Dot,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// The model (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// Tokens in the ubatch (1 = a decode step).
    #[arg(long, default_value_t = 1)]
    tokens: usize,
    /// Show the graph before fusion.
    #[arg(long)]
    unfused: bool,
    /// Plan as the GPU backend (wgpu) does: its passes differ (a mixture's top k stays a
    /// dispatch of its own there).
    #[arg(long)]
    gpu: bool,
    #[arg(long, value_enum, default_value_t = Format::Summary)]
    format: Format,
}

fn histogram(g: &Graph) -> BTreeMap<&'static str, usize> {
    let mut h = BTreeMap::new();
    for n in &g.nodes {
        if !matches!(n.op, Op::View | Op::Input { .. } | Op::External { .. }) {
            *h.entry(n.op.name()).or_default() += 1;
        }
    }
    h
}

pub fn graph(args: &GraphArgs) -> Result<()> {
    if args.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    let gguf = open(&args.model)?;
    let mut s = session(&gguf, args.tokens.max(64), 1)?;
    let (g, _) = s.graph_for(args.tokens)?;
    let passes = if args.gpu {
        WgpuBackend::passes()
    } else {
        PassOptions::default()
    };
    let fused = plan(
        &g,
        PlanOptions {
            passes,
            ..PlanOptions::default()
        },
    );
    let unfused = plan(
        &g,
        PlanOptions {
            passes: PassOptions {
                fuse: false,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let shown = if args.unfused { &unfused } else { &fused };
    match args.format {
        Format::Dot => print!("{}", export::to_dot(&shown.graph, Some(shown))),
        Format::Json => print!("{}", export::to_json(&shown.graph, Some(shown))),
        Format::Summary => {
            println!(
                "{} ({}), ubatch of {} token(s)",
                args.model.display(),
                s.arch().name(),
                args.tokens
            );
            println!(
                "nodes        {} recorded, {} after passes (unfused {})",
                g.len(),
                fused.graph.len(),
                unfused.graph.len()
            );
            println!(
                "dispatches   {} fused, {} unfused",
                fused.dispatches(),
                unfused.dispatches()
            );
            println!(
                "arena        {} (every tensor on its own: {})",
                mib(fused.arena_bytes),
                mib(fused.naive_bytes)
            );
            println!("kernels");
            for (op, n) in histogram(&shown.graph) {
                println!("  {op:<16} {n}");
            }
        }
    }
    Ok(())
}
