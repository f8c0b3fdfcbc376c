//! Choosing a backend from the command line.

use anyhow::{Result, bail};
use weft_backends::{Backend, CpuBackend, WgpuBackend, WgpuOptions};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The GPU when wgpu finds one, else the CPU.
    Auto,
    Wgpu,
    Cpu,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Where to run: auto picks the GPU when wgpu finds one.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// GPU adapter by index or name substring (see WEFT_ADAPTER).
    #[arg(long)]
    pub adapter: Option<String>,
}

/// Opens the chosen backend; `auto` falls back to the CPU and says why on stderr.
pub fn open(args: &BackendArgs) -> Result<Box<dyn Backend>> {
    let opts = WgpuOptions {
        adapter: args.adapter.clone(),
    };
    let be: Box<dyn Backend> = match args.backend {
        BackendKind::Cpu => Box::new(CpuBackend::new()),
        BackendKind::Wgpu => match WgpuBackend::new(&opts) {
            Ok(b) => Box::new(b),
            Err(e) => bail!("{e} (use --backend cpu to run on the CPU)"),
        },
        BackendKind::Auto => match WgpuBackend::new(&opts) {
            Ok(b) => Box::new(b),
            Err(e) => {
                tracing::warn!("no GPU ({e}); using the CPU backend");
                Box::new(CpuBackend::new())
            }
        },
    };
    tracing::info!("backend: {}", be.name());
    Ok(be)
}
