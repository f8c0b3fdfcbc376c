//! `weft view`: the egui viewer on a model generating live.

use crate::backend::{self, BackendArgs};
use anyhow::{Result, anyhow};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ViewArgs {
    /// The model (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// Prompt token ids, comma-separated (a prompt in one ubatch, then greedy decoding).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    tokens: Vec<i32>,
    /// Tokens to generate while the window is open.
    #[arg(short = 'n', long, default_value_t = 256)]
    n_predict: usize,
    /// Context length (KV cells).
    #[arg(short = 'c', long, default_value_t = 1024)]
    ctx: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(args: &ViewArgs) -> Result<()> {
    if !args.model.exists() {
        return Err(anyhow!(
            "cannot read the model {}: no such file",
            args.model.display()
        ));
    }
    let be = args.backend.clone();
    let cfg = weft_viewer::LiveConfig {
        model: args.model.clone(),
        backend: Box::new(move || backend::open(&be).map_err(|e| format!("{e:#}"))),
        prompt: args.tokens.clone(),
        max_tokens: args.n_predict,
        ctx: args.ctx,
    };
    weft_viewer::run(cfg).map_err(|e| {
        anyhow!("the viewer could not open a window: {e} (it needs a display: X11 or Wayland)")
    })
}
