//! Adapter choice and device creation.

use crate::{BackendError, Result};

/// How to pick the GPU: `adapter` is an index into the adapter list or a case-insensitive
/// substring of the adapter's name. Without it, `WEFT_ADAPTER` is read; without that, a
/// discrete GPU is preferred over an integrated, virtual or software one.
///
/// `max_binding` lowers the largest storage binding below what the adapter offers, to see how a
/// smaller GPU would run (weights over it are bound by row ranges). `no_subgroups` keeps the
/// kernels off subgroup operations even where the adapter has them (their reductions then go
/// through workgroup memory alone), to test that path.
///
/// `cooperative_matrices` (or `WEFT_COOP=1`) runs prompt matmuls on the adapter's cooperative
/// matrices (tensor cores) where it has them: wgpu's experimental feature, 16 × 16 × 16 f16
/// products with f32 sums and subgroups of 32 lanes (NVIDIA). Off by default: its operands are
/// rounded to f16 (results within 1e-3 of f32 products rather than 1e-5), and it is young: the
/// op suite's cases passed on an NVIDIA H200, the only adapter it has met that offers it.
///
/// `matvec_quads` and `unstaged_rows` bring back forms the kernels had before, to measure the
/// current ones against (the kernel benches' `wgpu-earlier` backend; `WEFT_MATVEC_BLOCKS=0` and
/// `WEFT_X_STAGED=0` do the same from the environment): mat-vecs reading every weight by quads
/// of 4, and reading the row they normalise or compute again for every output row.
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    pub adapter: Option<String>,
    pub max_binding: Option<u32>,
    pub no_subgroups: bool,
    pub cooperative_matrices: bool,
    pub matvec_quads: bool,
    pub unstaged_rows: bool,
}

/// Whether `adapter` can run `matmul_coop`: the features, a 16 × 16 × 16 f16 → f32
/// configuration, subgroups of exactly 32 lanes (the kernel's four per workgroup) and its 24
/// KiB of workgroup memory.
fn cooperative_matrices_usable(adapter: &wgpu::Adapter) -> bool {
    let needed = wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    let info = adapter.get_info();
    adapter.features().contains(needed)
        && adapter.limits().max_compute_workgroup_storage_size >= 24 * 1024
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
}

const TRIED: &str = "Vulkan, Metal, DX12";

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Every adapter wgpu finds, as (name, type, backend) lines, for messages and `--help`.
pub fn list_adapters() -> Vec<String> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = a.get_info();
            format!(
                "{i}: {} ({:?}, {:?})",
                info.name, info.device_type, info.backend
            )
        })
        .collect()
}

/// Opens the chosen adapter's device with the limits the adapter offers.
pub fn open(opts: &WgpuOptions) -> Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue)> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    if adapters.is_empty() {
        return Err(BackendError::NoAdapter(format!(
            "no GPU adapter found (tried {TRIED}); install a Vulkan driver (on Debian: mesa-vulkan-drivers) or use the CPU backend"
        )));
    }
    let wanted = opts
        .adapter
        .clone()
        .or_else(|| std::env::var("WEFT_ADAPTER").ok());
    let index = match wanted {
        Some(w) => {
            let by_index = w.parse::<usize>().ok().filter(|&i| i < adapters.len());
            let by_name = adapters
                .iter()
                .position(|a| a.get_info().name.to_lowercase().contains(&w.to_lowercase()));
            by_index.or(by_name).ok_or_else(|| {
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                BackendError::NoAdapter(format!(
                    "no adapter matches {w:?}; available: {}",
                    names.join(", ")
                ))
            })?
        }
        None => (0..adapters.len())
            .min_by_key(|&i| rank(adapters[i].get_info().device_type))
            .unwrap_or(0),
    };
    let adapter = adapters.swap_remove(index);
    let info = adapter.get_info();
    let down = adapter.get_downlevel_capabilities();
    if !down.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        || !down.flags.contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32)
    {
        return Err(BackendError::NoAdapter(format!(
            "adapter {} lacks compute shaders or f16 packing in shaders, which weft needs",
            info.name
        )));
    }
    let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
    if !opts.no_subgroups {
        wanted |= wgpu::Features::SUBGROUP;
    }
    let coop = (opts.cooperative_matrices || crate::env_flag("WEFT_COOP"))
        && !opts.no_subgroups
        && cooperative_matrices_usable(&adapter);
    if coop {
        wanted |= wgpu::Features::SHADER_F16 | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    }
    let features = adapter.features() & wanted;
    let desc = wgpu::DeviceDescriptor {
        label: Some("weft"),
        required_features: features,
        required_limits: {
            let mut l = adapter.limits();
            if let Some(cap) = opts.max_binding {
                l.max_storage_buffer_binding_size =
                    l.max_storage_buffer_binding_size.min(cap as u64);
            }
            l
        },
        experimental_features: if coop {
            // SAFETY: asked for by the user (`cooperative_matrices`, `WEFT_COOP`); wgpu's
            // experimental features may hold bugs of wgpu's own, which is why they are off by
            // default.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        },
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc))
        .map_err(|e| BackendError::Device(format!("{}: {e}", info.name)))?;
    Ok((adapter, device, queue))
}
