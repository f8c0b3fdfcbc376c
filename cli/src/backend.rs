//! Choosing a backend from the command line.

use anyhow::{Result, bail};
use weft_backends::{Backend, CpuBackend, WgpuBackend, WgpuOptions};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The GPU when wgpu finds a hardware one, else the CPU.
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
    /// Prompt matmuls on the GPU's cooperative matrices (tensor cores) where it has them
    /// (16x16 f16, 32-lane subgroups; also WEFT_COOP=1). Experimental: f16 operands.
    #[arg(long)]
    pub coop: bool,
    /// CPU backend: compute from the model file's mapped pages instead of a copy of the
    /// weights: half the memory and a faster start, but generation was about 10% slower on
    /// the machine the README's figures come from.
    #[arg(long)]
    pub mmap: bool,
    /// Storage type of the KV cache (keys and values; llama.cpp's -ctk and -ctv): f16 halves
    /// its memory and the bytes attention reads per token on a long context.
    #[arg(long, value_enum, default_value_t = CacheType::F32)]
    pub cache_type: CacheType,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheType {
    F32,
    F16,
}

impl CacheType {
    pub fn dtype(self) -> weft_graph::DType {
        match self {
            CacheType::F32 => weft_graph::DType::F32,
            CacheType::F16 => weft_graph::DType::F16,
        }
    }
}

/// Opens the chosen backend; `auto` falls back to the CPU and says why on stderr.
pub fn open(args: &BackendArgs) -> Result<Box<dyn Backend>> {
    let opts = WgpuOptions {
        adapter: args.adapter.clone(),
        cooperative_matrices: args.coop,
        ..Default::default()
    };
    let cpu = || Box::new(CpuBackend::new().map_weights(args.mmap));
    let be: Box<dyn Backend> = match args.backend {
        BackendKind::Cpu => cpu(),
        BackendKind::Wgpu => match WgpuBackend::new(&opts) {
            Ok(b) => gpu(args, b),
            Err(e) => bail!("{e} (use --backend cpu to run on the CPU)"),
        },
        BackendKind::Auto => match WgpuBackend::new(&opts) {
            // A software rasterizer (lavapipe, WARP) is slower than the CPU backend.
            Ok(b)
                if b.adapter_info().device_type == weft_backends::wgpu::DeviceType::Cpu
                    && args.adapter.is_none() =>
            {
                tracing::info!(
                    "only a software GPU ({}); using the CPU backend",
                    b.adapter_info().name
                );
                cpu()
            }
            Ok(b) => gpu(args, b),
            Err(e) => {
                tracing::warn!("no GPU ({e}); using the CPU backend");
                cpu()
            }
        },
    };
    tracing::info!("backend: {}", be.name());
    Ok(be)
}

/// The GPU backend, saying so when `--coop` asked for cooperative matrices it lacks.
fn gpu(args: &BackendArgs, b: WgpuBackend) -> Box<dyn Backend> {
    let env = weft_backends::env_flag("WEFT_COOP");
    if (args.coop || env) && !b.uses_cooperative_matrices() {
        tracing::warn!(
            "{} has no cooperative matrices weft can use (16x16 f16 with f32 sums, 32-lane \
             subgroups); prompt matmuls run without them",
            b.adapter_info().name
        );
    }
    Box::new(b)
}
