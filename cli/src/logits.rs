//! `weft logits`: the conformance entry point. Every `--tokens` list is one sequence; all are
//! processed together in one batch, then optionally decoded greedily, one batch per step.

use crate::backend::{self, BackendArgs};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use weft_models::gguf::GgufFile;
use weft_models::{MemoryConfig, Session, npy};

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    /// The model (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// Token ids of one sequence, comma-separated; repeat for more sequences.
    #[arg(long = "tokens", required = true, value_delimiter = ',', num_args = 1, action = clap::ArgAction::Append)]
    tokens: Vec<String>,
    /// Rows of greedy decoding to write per sequence (row 0 is the last prompt position).
    #[arg(long)]
    generate: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Directory for seq{i}_logits.npy, seq{i}_gen_logits.npy and ids.json.
    #[arg(long)]
    out: PathBuf,
}

/// Splits clap's flat values back into lists: clap gives every comma value separately, so the
/// raw arguments are re-read to keep each `--tokens` list apart.
fn token_lists() -> Result<Vec<Vec<i32>>> {
    let args: Vec<String> = std::env::args().collect();
    let mut lists = vec![];
    let mut i = 0;
    while i < args.len() {
        let value = if args[i] == "--tokens" {
            i += 1;
            args.get(i).cloned()
        } else {
            args[i].strip_prefix("--tokens=").map(str::to_string)
        };
        if let Some(v) = value {
            let list: Vec<i32> = v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse::<i32>()
                        .with_context(|| format!("--tokens {v}: {s:?} is not a token id"))
                })
                .collect::<Result<_>>()?;
            if list.is_empty() {
                bail!("--tokens {v:?} is empty: give at least one token id");
            }
            lists.push(list);
        }
        i += 1;
    }
    Ok(lists)
}

fn argmax(row: &[f32]) -> i32 {
    let mut b = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[b] {
            b = i;
        }
    }
    b as i32
}

pub fn run(args: &LogitsArgs) -> Result<()> {
    let lists = token_lists()?;
    if lists.is_empty() || args.tokens.is_empty() {
        bail!("give at least one --tokens list");
    }
    let generate = args.generate.unwrap_or(0);
    let gguf = GgufFile::open(&args.model)
        .with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let be = backend::open(&args.backend)?;
    let cells = lists.iter().map(Vec::len).sum::<usize>() + lists.len() * generate.max(1);
    let config = MemoryConfig {
        cells,
        sequences: lists.len(),
        ..Default::default()
    };
    let mut s = Session::new(&gguf, be, config, |_, _| {})?;
    let v = s.n_vocab();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let batch: Vec<(usize, &[i32])> = lists
        .iter()
        .enumerate()
        .map(|(i, l)| (i, l.as_slice()))
        .collect();
    let out = s.decode(&batch)?;
    for (i, rows) in out.iter().enumerate() {
        npy::write_f32(
            args.out.join(format!("seq{i}_logits.npy")),
            &[lists[i].len(), v],
            rows,
        )?;
    }
    if generate > 0 {
        let mut rows: Vec<Vec<f32>> = out.iter().map(|r| r[r.len() - v..].to_vec()).collect();
        let mut gen_rows: Vec<Vec<f32>> = rows.clone();
        let mut ids: Vec<Vec<i32>> = rows.iter().map(|r| vec![argmax(r)]).collect();
        for _ in 1..generate {
            let next: Vec<[i32; 1]> = ids.iter().map(|l| [*l.last().unwrap_or(&0)]).collect();
            let batch: Vec<(usize, &[i32])> =
                next.iter().enumerate().map(|(i, t)| (i, &t[..])).collect();
            rows = s.decode(&batch)?;
            for (i, r) in rows.iter().enumerate() {
                gen_rows[i].extend_from_slice(r);
                ids[i].push(argmax(r));
            }
        }
        for (i, g) in gen_rows.iter().enumerate() {
            npy::write_f32(
                args.out.join(format!("seq{i}_gen_logits.npy")),
                &[generate, v],
                g,
            )?;
        }
        let json: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "\"seq{i}\": [{}]",
                    l.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        std::fs::write(
            args.out.join("ids.json"),
            format!("{{{}}}\n", json.join(", ")),
        )?;
    }
    eprintln!(
        "wrote {} sequence(s) to {} ({})",
        lists.len(),
        args.out.display(),
        s.backend_name()
    );
    Ok(())
}
