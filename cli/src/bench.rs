//! `weft bench`: prompt-processing and generation throughput like llama-bench, plus for
//! generation the bytes of weights read per second (what one token reads: one embedding row,
//! the routed share of MoE experts; see `GgufFile::bytes_per_token`) and that as a fraction of
//! the device's measured memory bandwidth (the roofline of decode: on the CPU every thread
//! reading, on a GPU a shader copying 16-byte words). Those columns count weights only: at depth (`-d`) a
//! token also reads the KV cache.

use crate::backend::{self, BackendArgs};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use weft_backends::RunStats;
use weft_graph::testing::Rng;
use weft_models::gguf::GgufFile;
use weft_models::{MemoryConfig, Session};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The model (GGUF); not needed with --bandwidth.
    #[arg(short, long, required_unless_present = "bandwidth")]
    model: Option<PathBuf>,
    /// Prompt tokens per prompt-processing test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens per generation test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Tokens already in the context when each test starts (llama-bench's `-d`): a prompt of
    /// that many random tokens runs, untimed, before every repetition, so the timed prompt or
    /// generation reads a KV cache that deep (recurrent layers' states are the same size at
    /// any depth).
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    n_depth: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Print one JSON array in llama-bench's `-o json` shape.
    #[arg(long)]
    json: bool,
    /// Only measure and print the device's memory bandwidth (on the CPU every thread reading a
    /// buffer, on a GPU a shader copying 16-byte words, read + write).
    #[arg(long)]
    bandwidth: bool,
    /// After the tests, time every node of one prompt and of a few generation steps and print
    /// where the time goes, per op and for the slowest nodes by name (GPU timestamps where the
    /// adapter has them).
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Clears `s` and runs `depth` through it (the untimed `-d` prompt), in ubatches.
fn fill(s: &mut Session, depth: &[i32]) -> Result<()> {
    s.clear();
    for chunk in depth.chunks(DEPTH_UBATCH) {
        s.decode_last(&[(0, chunk)])?;
    }
    Ok(())
}

/// Tokens per ubatch of the untimed `-d` prompt (as `weft run` and llama-bench feed prompts).
const DEPTH_UBATCH: usize = 512;

/// Bytes moved when measuring bandwidth (well past any CPU's last-level cache).
const BANDWIDTH_BYTES: usize = 256 << 20;

fn stats(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

struct Test {
    n_prompt: usize,
    n_gen: usize,
    /// Seconds per repetition.
    secs: Vec<f64>,
    /// The backend's host times over the timed runs, where it keeps them.
    host: Option<RunStats>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let mut be = backend::open(&args.backend)?;
    let backend_name = be.name();
    if args.bandwidth {
        let bw = be.memory_bandwidth(BANDWIDTH_BYTES)?;
        println!(
            "{backend_name}: memory bandwidth {:.1} GB/s over {} MiB ({})",
            bw / 1e9,
            be.bandwidth_bytes(BANDWIDTH_BYTES) >> 20,
            be.bandwidth_method()
        );
        return Ok(());
    }
    let Some(path) = &args.model else {
        bail!("--model is needed (except with --bandwidth)");
    };
    let bandwidth = be.memory_bandwidth(BANDWIDTH_BYTES).ok();
    let bandwidth_method = be.bandwidth_method();
    let gguf = GgufFile::open(path)
        .with_context(|| format!("cannot read the model {}", path.display()))?;
    let weight_bytes: usize = gguf.tensors().iter().map(|t| t.bytes).sum();
    let n_params: usize = gguf.tensors().iter().map(|t| t.numel()).sum();
    let profile_steps = if args.profile { PROFILE_STEPS + 1 } else { 0 };
    let cells = (args.n_depth + args.n_prompt.max(args.n_gen + 1).max(profile_steps)).max(64);
    let bar = ProgressBar::new(weight_bytes as u64);
    bar.set_style(
        ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut s = Session::new(
        &gguf,
        be,
        MemoryConfig {
            cells,
            sequences: 1,
            kv_dtype: args.backend.cache_type.dtype(),
            ..Default::default()
        },
        |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    let nv = s.n_vocab() as u64;
    let mut rng = Rng::new(42);
    let mut random_tokens =
        |n: usize| -> Vec<i32> { (0..n).map(|_| (rng.next_u64() % nv) as i32).collect() };
    let depth = random_tokens(args.n_depth);
    // the cache's type as llama-bench's `type_k` / `type_v` name it
    let cache_type = args.backend.cache_type.dtype().name().to_ascii_lowercase();
    let mut tests = vec![];
    let total = (args.n_prompt > 0) as u64 * args.repetitions as u64
        + (args.n_gen > 0) as u64 * args.repetitions as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("bench {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if args.n_prompt > 0 {
        let prompt = random_tokens(args.n_prompt);
        fill(&mut s, &depth)?;
        s.decode_last(&[(0, &prompt)])?; // warm-up: compiles the program
        let mut t = Test {
            n_prompt: args.n_prompt,
            n_gen: 0,
            secs: vec![],
            host: None,
        };
        for _ in 0..args.repetitions {
            fill(&mut s, &depth)?;
            bar.set_message(format!("pp{}", args.n_prompt));
            let start = Instant::now();
            s.decode_last(&[(0, &prompt)])?;
            t.secs.push(start.elapsed().as_secs_f64());
            bar.inc(1);
        }
        tests.push(t);
    }
    if args.n_gen > 0 {
        let toks = random_tokens(args.n_gen + 1);
        let mut t = Test {
            n_prompt: 0,
            n_gen: args.n_gen,
            secs: vec![],
            host: None,
        };
        for _ in 0..args.repetitions {
            fill(&mut s, &depth)?;
            s.decode_last(&[(0, &toks[..1])])?; // warm-up token (and compile)
            bar.set_message(format!("tg{}", args.n_gen));
            let before = s.run_stats();
            let start = Instant::now();
            for &tok in &toks[1..] {
                s.decode_last(&[(0, &[tok])])?;
            }
            t.secs.push(start.elapsed().as_secs_f64());
            if let (Some(a), Some(b)) = (before, s.run_stats()) {
                *t.host.get_or_insert_with(RunStats::default) += b.since(&a);
            }
            bar.inc(1);
        }
        tests.push(t);
    }
    bar.finish_and_clear();
    if args.profile {
        profile(
            &mut s,
            args.n_prompt,
            &random_tokens(PROFILE_STEPS + 1),
            &depth,
        )?;
    }
    let model = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut rows = vec![];
    for t in &tests {
        let n = (t.n_prompt + t.n_gen) as f64;
        let ts: Vec<f64> = t.secs.iter().map(|s| n / s).collect();
        let ns: Vec<u64> = t.secs.iter().map(|s| (s * 1e9) as u64).collect();
        let (avg_ts, sd_ts) = stats(&ts);
        let (avg_ns, sd_ns) = stats(&ns.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let mut row = serde_json::json!({
            "model_filename": path.display().to_string(),
            "model_type": format!("{} {}", s.arch().name(), model),
            "model_size": weight_bytes,
            "model_n_params": n_params,
            "backends": if backend_name.starts_with("cpu") { "CPU" } else { "wgpu" },
            "adapter": backend_name,
            "n_prompt": t.n_prompt,
            "n_gen": t.n_gen,
            "n_depth": args.n_depth,
            "type_k": cache_type,
            "type_v": cache_type,
            "avg_ns": avg_ns as u64,
            "stddev_ns": sd_ns as u64,
            "avg_ts": avg_ts,
            "stddev_ts": sd_ts,
            "samples_ns": ns,
            "samples_ts": ts,
        });
        if t.n_gen > 0 {
            let bps = gguf.bytes_per_token() as f64 * avg_ts;
            row["weights_bytes_per_s"] = serde_json::json!(bps);
            row["bandwidth_fraction"] = serde_json::json!(bandwidth.map(|b| bps / b));
            row["device_bandwidth_bytes_per_s"] = serde_json::json!(bandwidth);
        }
        if let Some(h) = &t.host {
            row["host_us_per_run"] = host_json(h, t.secs.iter().sum::<f64>());
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("| model | size | backend | test | t/s | weights GB/s | of bandwidth |");
    println!("|---|---|---|---|---|---|---|");
    for (t, r) in tests.iter().zip(&rows) {
        let mut test = if t.n_gen > 0 {
            format!("tg{}", t.n_gen)
        } else {
            format!("pp{}", t.n_prompt)
        };
        if args.n_depth > 0 {
            test += &format!(" @ d{}", args.n_depth);
        }
        let gbs = r["weights_bytes_per_s"]
            .as_f64()
            .map_or(String::new(), |b| format!("{:.2}", b / 1e9));
        let frac = r["bandwidth_fraction"]
            .as_f64()
            .map_or(String::new(), |f| format!("{:.1}%", 100.0 * f));
        println!(
            "| {model} | {:.1} MiB | {backend_name} | {test} | {:.2} ± {:.2} | {gbs} | {frac} |",
            weight_bytes as f64 / 1048576.0,
            r["avg_ts"].as_f64().unwrap_or(0.0),
            r["stddev_ts"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(b) = bandwidth {
        println!(
            "device memory bandwidth: {:.1} GB/s ({})",
            b / 1e9,
            bandwidth_method
        );
    }
    for (t, r) in tests.iter().zip(&rows).filter(|(t, _)| t.n_gen > 0) {
        if let Some(h) = &t.host {
            let j = &r["host_us_per_run"];
            let us = |k: &str| j[k].as_f64().unwrap_or(0.0);
            println!(
                "host per generated token: recording commands {:.0} µs before submitting \
                 ({} of {} runs had theirs recorded during the previous run) and {:.0} µs \
                 for the next run while the device works, submitting {:.0} µs, waiting for \
                 the device and reading back {:.0} µs, other host work {:.0} µs",
                us("encode"),
                h.reused,
                h.runs,
                us("encode_ahead"),
                us("submit"),
                us("wait"),
                us("other"),
            );
        }
    }
    Ok(())
}

/// Host microseconds per run: `other` is the wall time `secs` less what the backend counted
/// (graph inputs, memory bookkeeping, reading the logits out).
fn host_json(h: &RunStats, secs: f64) -> serde_json::Value {
    let per = |d: std::time::Duration| 1e6 * d.as_secs_f64() / h.runs.max(1) as f64;
    let counted = per(h.encode) + per(h.encode_ahead) + per(h.submit) + per(h.wait);
    serde_json::json!({
        "runs": h.runs,
        "reused": h.reused,
        "encode": per(h.encode),
        "encode_ahead": per(h.encode_ahead),
        "submit": per(h.submit),
        "wait": per(h.wait),
        "other": (1e6 * secs / h.runs.max(1) as f64 - counted).max(0.0),
    })
}

/// Generation steps timed node by node by `--profile`.
const PROFILE_STEPS: usize = 16;

/// Prints, per op kind and largest first, where the time of a prompt of `n_prompt` tokens (when
/// not 0) and of a generated token goes, each on a context of `depth` tokens.
fn profile(s: &mut Session, n_prompt: usize, toks: &[i32], depth: &[i32]) -> Result<()> {
    // untimed: the depth's tokens
    let refill = |s: &mut Session| -> Result<()> {
        s.set_profiling(false);
        fill(s, depth)?;
        s.set_profiling(true);
        Ok(())
    };
    if n_prompt > 0 {
        refill(s)?;
        let prompt: Vec<i32> = toks.iter().copied().cycle().take(n_prompt).collect();
        s.decode_last(&[(0, &prompt)])?; // compiled before it is timed
        refill(s)?;
        let start = Instant::now();
        s.decode_last(&[(0, &prompt)])?;
        let wall = start.elapsed().as_secs_f64();
        let runs = [s.last_timings().unwrap_or_default()];
        OpTable::from(&runs).print(&format!("prompt of {n_prompt} tokens"), wall, 1.0);
        print_slowest_nodes(&runs, 1.0);
    }
    refill(s)?;
    s.decode_last(&[(0, &toks[..1])])?;
    let mut steps = vec![];
    let mut wall = 0.0;
    for &tok in &toks[1..] {
        let start = Instant::now();
        s.decode_last(&[(0, &[tok])])?;
        wall += start.elapsed().as_secs_f64();
        steps.push(s.last_timings().unwrap_or_default());
    }
    s.set_profiling(false);
    let n = steps.len() as f64;
    OpTable::from(&steps).print(&format!("{n} generation steps, per token"), wall, n);
    print_slowest_nodes(&steps, n);
    Ok(())
}

/// Nodes listed after the per-op tables of `--profile`.
const SLOWEST_NODES: usize = 12;

/// The [`SLOWEST_NODES`] nodes that took longest, summed over `runs` and divided by `per`:
/// which matrix or layer a per-op total comes from.
fn print_slowest_nodes(runs: &[Vec<weft_backends::NodeTiming>], per: f64) {
    let mut per_node: std::collections::HashMap<&str, (&'static str, f64)> = Default::default();
    for t in runs.iter().flatten() {
        let e = per_node.entry(&t.name).or_insert((t.op, 0.0));
        e.1 += t.time.as_secs_f64();
    }
    let mut rows: Vec<_> = per_node.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1).then(a.0.cmp(b.0)));
    println!("| slowest nodes | op | ms |");
    println!("|---|---|---|");
    for (name, (op, secs)) in rows.into_iter().take(SLOWEST_NODES) {
        println!("| {name} | {op} | {:.3} |", 1e3 * secs / per);
    }
}

/// Node count and seconds per op kind, summed over several runs.
struct OpTable(Vec<(&'static str, usize, f64)>);

impl OpTable {
    fn from(runs: &[Vec<weft_backends::NodeTiming>]) -> OpTable {
        let mut per_op: std::collections::BTreeMap<&'static str, (usize, f64)> = Default::default();
        for t in runs.iter().flatten() {
            let e = per_op.entry(t.op).or_default();
            e.0 += 1;
            e.1 += t.time.as_secs_f64();
        }
        let mut rows: Vec<_> = per_op.into_iter().map(|(op, (n, s))| (op, n, s)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        OpTable(rows)
    }

    /// One markdown table; `wall` seconds over `per` runs.
    fn print(&self, title: &str, wall: f64, per: f64) {
        let timed: f64 = self.0.iter().map(|r| r.2).sum();
        println!("profile: {title}: {:.3} ms", 1e3 * wall / per);
        println!("| op | nodes | ms | of timed |");
        println!("|---|---|---|---|");
        for (op, n, secs) in &self.0 {
            println!(
                "| {op} | {} | {:.3} | {:.1}% |",
                *n as f64 / per,
                1e3 * secs / per,
                100.0 * secs / timed.max(f64::MIN_POSITIVE)
            );
        }
        println!(
            "| (outside nodes) | | {:.3} | |",
            1e3 * (wall - timed).max(0.0) / per
        );
    }
}
