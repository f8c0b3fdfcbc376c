//! `weft perplexity`: chunked perplexity as llama.cpp's `llama-perplexity` computes it. The
//! whole text is tokenized once (BOS as the model's metadata says), cut into chunks of `--ctx`
//! tokens; when the model adds BOS the first token of every chunk becomes BOS; the second half
//! of each chunk is scored (token j+1 given the logits at j); `--parallel` chunks are decoded as
//! sequences of one batch.

use crate::backend::{self, BackendArgs};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use weft_models::gguf::GgufFile;
use weft_models::tokenizer::{EncodeOptions, Tokenizer};
use weft_models::{MemoryConfig, Session};

#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    /// The model (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// The text to score.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx: usize,
    /// Chunks decoded together as sequences of one batch.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Score at most this many chunks (0 = all).
    #[arg(long, default_value_t = 0)]
    chunks: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

/// `−log p(token)` from one row of logits, in f64 as llama.cpp computes it.
pub fn nll(row: &[f32], token: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    -(row[token] as f64 - max - sum.ln())
}

/// Perplexity and its standard error from the summed `nll`, `nll²` and token count.
pub fn estimate(nll_sum: f64, nll2_sum: f64, count: usize) -> (f64, f64) {
    let n = count as f64;
    let mean = nll_sum / n;
    let ppl = mean.exp();
    let var = nll2_sum / n - mean * mean;
    let err = if var > 0.0 && count > 1 {
        (var / (n - 1.0)).sqrt() * ppl
    } else {
        0.0
    };
    (ppl, err)
}

pub fn run(args: &PerplexityArgs) -> Result<()> {
    if args.ctx < 4 || args.parallel == 0 {
        bail!("--ctx must be at least 4 and --parallel at least 1");
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let gguf = GgufFile::open(&args.model)
        .with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let tok = Tokenizer::from_gguf(&gguf)?;
    let tokens: Vec<i32> = tok
        .encode_with(
            &text,
            EncodeOptions {
                add_special: true,
                parse_special: false,
            },
        )
        .into_iter()
        .map(|t| t as i32)
        .collect();
    let add_bos = tok
        .encode_with(
            "",
            EncodeOptions {
                add_special: true,
                parse_special: false,
            },
        )
        .first()
        .copied()
        == tok.bos();
    let mut n_chunks = tokens.len() / args.ctx;
    if args.chunks > 0 {
        n_chunks = n_chunks.min(args.chunks);
    }
    if n_chunks == 0 {
        bail!(
            "{} tokens are fewer than one chunk of --ctx {}: use a longer text or a smaller --ctx",
            tokens.len(),
            args.ctx
        );
    }
    let be = backend::open(&args.backend)?;
    let config = MemoryConfig {
        cells: args.ctx * args.parallel,
        sequences: args.parallel,
        ..Default::default()
    };
    let mut s = Session::new(&gguf, be, config, |_, _| {})?;
    let v = s.n_vocab();
    eprintln!(
        "{} tokens, {n_chunks} chunks of {}, {} in parallel, {}",
        tokens.len(),
        args.ctx,
        args.parallel,
        s.backend_name()
    );
    let bar = ProgressBar::new(n_chunks as u64);
    bar.set_style(
        ProgressStyle::with_template("perplexity {bar:30} {pos}/{len} chunks  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let first = args.ctx / 2;
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut i = 0;
    while i < n_chunks {
        let group: Vec<Vec<i32>> = (i..(i + args.parallel).min(n_chunks))
            .map(|c| {
                let mut chunk = tokens[c * args.ctx..(c + 1) * args.ctx].to_vec();
                if add_bos && let Some(b) = tok.bos() {
                    chunk[0] = b as i32;
                }
                chunk
            })
            .collect();
        s.clear();
        let batch: Vec<(usize, &[i32])> = group
            .iter()
            .enumerate()
            .map(|(q, c)| (q, c.as_slice()))
            .collect();
        let out = s.decode(&batch)?;
        for (q, logits) in out.iter().enumerate() {
            let start = (i + q) * args.ctx;
            for j in first..args.ctx - 1 {
                let x = nll(&logits[j * v..(j + 1) * v], tokens[start + j + 1] as usize);
                sum += x;
                sum2 += x * x;
                count += 1;
            }
        }
        i += group.len();
        bar.set_position(i as u64);
        bar.set_message(format!("PPL {:.4}", estimate(sum, sum2, count).0));
    }
    bar.finish_and_clear();
    let (ppl, err) = estimate(sum, sum2, count);
    println!("PPL = {ppl:.4} +/- {err:.5}");
    Ok(())
}
