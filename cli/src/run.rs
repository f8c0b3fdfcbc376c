//! `weft run`: tokenize a prompt, prefill it, stream generated text, print timings.

use crate::backend::{self, BackendArgs};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_models::gguf::GgufFile;
use weft_models::sampling::{Sampler, SamplerConfig};
use weft_models::tokenizer::{EncodeOptions, Tokenizer};
use weft_models::{MemoryConfig, Session};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The model (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// The prompt.
    #[arg(short, long, default_value = "")]
    prompt: String,
    /// Tokens to generate (stops earlier at an end-of-generation token).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to p (1 = all).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty for repeating one of the last 64 tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Sampling seed (the same seed and settings give the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Context length (KV cells).
    #[arg(short = 'c', long, default_value_t = 2048)]
    ctx: usize,
    /// Prompt tokens per ubatch during prefill.
    #[arg(long, default_value_t = 512)]
    ubatch: usize,
    /// Chat turn by turn on stdin, keeping the session between turns.
    #[arg(short, long)]
    interactive: bool,
    /// Print only the generated text (no timings).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Streams token bytes as UTF-8, holding back an incomplete character until it completes.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // invalid bytes: emit them lossily rather than stall
            Err(_) => self.pending.len(),
        };
        let out = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        out
    }
}

struct Timing {
    prompt_tokens: usize,
    prompt: Duration,
    gen_tokens: usize,
    generation: Duration,
}

/// Feeds the prompt in ubatches, then samples and streams up to `n` tokens.
fn generate(
    s: &mut Session,
    tok: &Tokenizer,
    sampler: &mut Sampler,
    prompt: &[i32],
    args: &RunArgs,
    out: &mut impl Write,
) -> Result<(Timing, Vec<i32>)> {
    if prompt.is_empty() {
        bail!("the prompt is empty: pass --prompt TEXT");
    }
    let used = s.memory().kv.used();
    if used + prompt.len() + args.n_predict > args.ctx {
        bail!(
            "prompt of {} tokens + {} to generate exceeds the context of {} ({} already used): raise --ctx or lower -n",
            prompt.len(),
            args.n_predict,
            args.ctx,
            used
        );
    }
    let t0 = Instant::now();
    let mut last = vec![];
    for chunk in prompt.chunks(args.ubatch.max(1)) {
        last = s.decode_last(&[(0, chunk)])?.remove(0);
    }
    for &t in prompt {
        sampler.accept(t);
    }
    let prompt_time = t0.elapsed();
    let nv = s.n_vocab();
    let mut row = last[last.len() - nv..].to_vec();
    let mut stream = Utf8Stream::default();
    let mut generated = vec![];
    let t1 = Instant::now();
    for _ in 0..args.n_predict {
        let next = sampler.sample(&row);
        sampler.accept(next);
        if tok.is_eog(next as u32) {
            break;
        }
        generated.push(next);
        write!(out, "{}", stream.push(&tok.token_to_piece(next as u32)))?;
        out.flush()?;
        row = s.decode_last(&[(0, &[next])])?.remove(0);
    }
    write!(out, "{}", stream.push(&[]))?;
    Ok((
        Timing {
            prompt_tokens: prompt.len(),
            prompt: prompt_time,
            gen_tokens: generated.len(),
            generation: t1.elapsed(),
        },
        generated,
    ))
}

fn report(t: &Timing, load: Duration) {
    let rate = |n: usize, d: Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    eprintln!();
    eprintln!("load time    = {:>9.2} ms", load.as_secs_f64() * 1e3);
    eprintln!(
        "prompt eval  = {:>9.2} ms / {:>5} tokens ({:>8.2} tokens per second)",
        t.prompt.as_secs_f64() * 1e3,
        t.prompt_tokens,
        rate(t.prompt_tokens, t.prompt)
    );
    eprintln!(
        "eval         = {:>9.2} ms / {:>5} tokens ({:>8.2} tokens per second)",
        t.generation.as_secs_f64() * 1e3,
        t.gen_tokens,
        rate(t.gen_tokens, t.generation)
    );
}

pub fn run(args: &RunArgs) -> Result<()> {
    let start = Instant::now();
    let gguf = GgufFile::open(&args.model)
        .with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let tok = Tokenizer::from_gguf(&gguf)?;
    if !args.interactive {
        // Check the request before loading anything.
        let n = tok
            .encode_with(
                &args.prompt,
                EncodeOptions {
                    add_special: true,
                    parse_special: true,
                },
            )
            .len();
        if n == 0 {
            bail!("the prompt is empty: pass --prompt TEXT");
        }
        if n + args.n_predict > args.ctx {
            bail!(
                "prompt of {n} tokens + {} to generate exceeds the context of {}: raise --ctx or lower -n",
                args.n_predict,
                args.ctx
            );
        }
    }
    let be = backend::open(&args.backend)?;
    if !args.quiet {
        eprintln!("backend: {}", be.name());
        let params: usize = gguf.tensors().iter().map(|t| t.numel()).sum();
        if params < 1_000_000 {
            eprintln!(
                "note: this model has only {params} parameters: a test fixture with random weights, so its text means nothing (see the README for a real model)"
            );
        }
    }
    let total: usize = gguf.tensors().iter().map(|t| t.bytes).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if args.quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut s = Session::new(
        &gguf,
        be,
        MemoryConfig {
            cells: args.ctx,
            sequences: 1,
            kv_dtype: args.backend.cache_type.dtype(),
            ..Default::default()
        },
        |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    let load = start.elapsed();
    let cfg = SamplerConfig {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: 64,
        seed: args.seed,
    };
    let mut sampler = Sampler::new(cfg);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let encode = |text: &str, first: bool| -> Vec<i32> {
        tok.encode_with(
            text,
            EncodeOptions {
                add_special: first,
                parse_special: true,
            },
        )
        .into_iter()
        .map(|t| t as i32)
        .collect::<Vec<i32>>()
    };
    if !args.interactive {
        tracing::info!("prompt tokens: {:?}", encode(&args.prompt, true));
        write!(out, "{}", args.prompt)?;
        let (t, _) = generate(
            &mut s,
            &tok,
            &mut sampler,
            &encode(&args.prompt, true),
            args,
            &mut out,
        )?;
        writeln!(out)?;
        if !args.quiet {
            report(&t, load);
        }
        return Ok(());
    }
    eprintln!("interactive: type a line and press enter; an empty line or end of input quits");
    let mut first = true;
    let mut prompt = args.prompt.clone();
    let stdin = std::io::stdin();
    loop {
        if prompt.is_empty() {
            write!(out, "> ")?;
            out.flush()?;
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            prompt = line;
        }
        let (t, _) = generate(
            &mut s,
            &tok,
            &mut sampler,
            &encode(&prompt, first),
            args,
            &mut out,
        )?;
        writeln!(out)?;
        if !args.quiet {
            report(&t, load);
        }
        first = false;
        prompt.clear();
    }
    Ok(())
}
