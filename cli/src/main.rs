//! `weft`: the command-line front of the engine.

#![allow(clippy::print_stdout)]

mod alloc;
mod backend;
mod bench;
mod demo;
mod inspect;
mod logits;
mod perplexity;
mod run;
mod view;

use clap::{Parser, Subcommand};

/// weft: a GPU-first compute-graph engine for recurrent and hybrid language models.
#[derive(Parser, Debug)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build, plan and run two tiny random-weight stacks (Mamba; attention + SwiGLU) on the
    /// CPU backend: shows the graph compiler at work (fusion, arena planning) and checks that
    /// a prompt decoded token by token through the caches matches one ubatch. The weights are
    /// random, so the logits mean nothing.
    Demo(demo::DemoArgs),
    /// Generate text: tokenize the prompt (BOS per the model's metadata), prefill, stream the
    /// continuation and print llama.cpp-style timings. -i keeps a session across turns.
    Run(run::RunArgs),
    /// Write the logits of token sequences run together in one batch (and of greedy decoding)
    /// as .npy files: the conformance entry point.
    Logits(logits::LogitsArgs),
    /// What is inside a model: architecture, hyperparameters, per-layer kind, tensors by type,
    /// and the memory a session would need.
    Info(inspect::InfoArgs),
    /// The compiled graph of one ubatch: a summary (nodes, dispatches before and after fusion,
    /// arena against the naive total), Graphviz DOT or JSON.
    Graph(inspect::GraphArgs),
    /// Prompt-processing and generation throughput (like llama-bench), with the weights read
    /// per second and that as a fraction of the device's measured memory bandwidth.
    Bench(bench::BenchArgs),
    /// Open the viewer: the compiled graph, the arena allocator, per-node timings and the
    /// caches, updated live while the model generates.
    View(view::ViewArgs),
    /// Chunked perplexity of a text file, computed as llama.cpp's llama-perplexity does, with
    /// --parallel chunks decoded together as sequences of one batch.
    Perplexity(perplexity::PerplexityArgs),
}

fn main() {
    alloc::keep_freed_memory();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Logits(args) => logits::run(&args),
        Command::Info(args) => inspect::info(&args),
        Command::Graph(args) => inspect::graph(&args),
        Command::Bench(args) => bench::run(&args),
        Command::View(args) => view::run(&args),
        Command::Perplexity(args) => perplexity::run(&args),
    };
    if let Err(e) = result {
        // One line: the error and its causes, without a backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
