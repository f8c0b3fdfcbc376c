//! The wgpu backend: graphs compile to WGSL compute pipelines run through Vulkan, Metal or
//! DX12. Weights and caches live in their own buffers; activations live in one arena buffer
//! placed by the planner; each run writes the inputs, records every dispatch in one compute
//! pass of one command encoder, copies the outputs to a staging buffer and submits once.
//!
//! Recording a step's commands costs the host about a microsecond per dispatch, which a decode
//! step of a few hundred dispatches would add to every token. So once a run is submitted, the
//! same program's next command buffer is recorded while the device works, and the next run
//! of that program only writes its inputs (queued writes land before the commands of the next
//! submission) and submits it.

mod device;
mod lower;
mod split;

pub use device::{WgpuOptions, list_adapters};
pub use wgpu::{AdapterInfo, DeviceType};

use crate::{
    Backend, BackendError, HostData, NodeTiming, Output, OutputData, ProgramId, Result, RunStats,
};
use lower::{LowerOptions, Lowered, MAX_PARAMS, lower};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use weft_graph::passes::PassOptions;
use weft_graph::{BufferId, DType, Layout, NodeId, Op, Plan};
use weft_shaders::Kernel;

const PARAM_BYTES: u64 = (MAX_PARAMS * 4) as u64;

struct GpuBuffer {
    buffer: wgpu::Buffer,
    /// Size the caller asked for (the wgpu buffer is rounded up to 4 bytes).
    size: usize,
}

struct Dispatch {
    node: NodeId,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// Where an output is read from: a buffer, the byte range copied, and the layout relative to
/// the start of that range.
struct OutputCopy {
    buffer: OutBuf,
    start: u64,
    bytes: u64,
    staging_at: u64,
    layout: Layout,
    dtype: DType,
}

enum OutBuf {
    Arena,
    External(BufferId),
}

struct GpuProgram {
    plan: Plan,
    arena: wgpu::Buffer,
    _params: wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    outputs: Vec<OutputCopy>,
    staging: Option<wgpu::Buffer>,
    timings: Option<Vec<NodeTiming>>,
    /// The next run's commands, recorded during the last run's device time.
    ready: Option<wgpu::CommandBuffer>,
}

/// Executes plans on a GPU through wgpu.
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    buffers: HashMap<u32, GpuBuffer>,
    next_buffer: u32,
    programs: HashMap<u32, GpuProgram>,
    next_program: u32,
    pipelines: HashMap<String, Arc<wgpu::ComputePipeline>>,
    layouts: HashMap<(u32, u32), (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    errors: Arc<Mutex<Vec<String>>>,
    profiling: bool,
    stats: RunStats,
    /// The runtime checks naga builds into the kernels (see `build_pipeline`).
    checks: wgpu::ShaderRuntimeChecks,
    /// `WEFT_ATTENTION_CHUNK`: the split attention's smallest chunk of keys, 0 for no split
    /// (`LowerOptions::attention_chunk`).
    attention_chunk: usize,
    /// `WEFT_ATTENTION_ROWS=0`: prompts' attention a workgroup per query
    /// (`LowerOptions::attention_rows`).
    attention_rows: bool,
    /// `WEFT_MATVEC_BLOCKS=0`: mat-vecs read every weight dtype by quads (`Spec::matvec_blocks`).
    matvec_blocks: bool,
    /// `WEFT_X_STAGED=0`: mat-vecs that normalise or compute their row read it again from
    /// memory for every output row instead of staging it (`XNormSpec::staged`,
    /// `XProgSpec::staged`).
    x_staged: bool,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.info.name)
            .field("buffers", &self.buffers.len())
            .finish()
    }
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

impl WgpuBackend {
    /// Opens a GPU (see [`WgpuOptions`] for how it is chosen).
    pub fn new(opts: &WgpuOptions) -> Result<Self> {
        let (adapter, device, queue) = device::open(opts)?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut v) = lost.lock() {
                v.push(format!("device lost ({reason:?}): {msg}"));
            }
        });
        Ok(WgpuBackend {
            limits: device.limits(),
            info: adapter.get_info(),
            device,
            queue,
            buffers: HashMap::new(),
            next_buffer: 0,
            programs: HashMap::new(),
            next_program: 0,
            pipelines: HashMap::new(),
            layouts: HashMap::new(),
            errors,
            profiling: false,
            stats: RunStats::default(),
            checks: wgpu::ShaderRuntimeChecks {
                force_loop_bounding: false,
                bounds_checks: !crate::env_flag("WEFT_UNCHECKED"),
                ..wgpu::ShaderRuntimeChecks::checked()
            },
            attention_chunk: std::env::var("WEFT_ATTENTION_CHUNK")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .map(|c| if c == 0 { 0 } else { c.clamp(16, 64) })
                .unwrap_or(lower::ATTENTION_CHUNK),
            attention_rows: std::env::var("WEFT_ATTENTION_ROWS").as_deref() != Ok("0"),
            matvec_blocks: !opts.matvec_quads
                && std::env::var("WEFT_MATVEC_BLOCKS").as_deref() != Ok("0"),
            x_staged: !opts.unstaged_rows && std::env::var("WEFT_X_STAGED").as_deref() != Ok("0"),
        })
    }

    /// Destroys the device, as a driver reset would lose it: later calls return errors. Used by
    /// the tests of the device-lost path.
    #[doc(hidden)]
    pub fn destroy_device(&self) {
        self.device.destroy();
    }

    /// The graph passes its plans run ([`Backend::pass_options`]), known without a device
    /// (for showing the graph a GPU would run).
    pub fn passes() -> PassOptions {
        PassOptions {
            inline_top_k: false,
            ..PassOptions::default()
        }
    }

    /// The device's limits (storage binding size, workgroups per dimension, …).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether prompt matmuls run on cooperative matrices (`WgpuOptions::cooperative_matrices`
    /// asked for them and the adapter has them).
    pub fn uses_cooperative_matrices(&self) -> bool {
        (self.device.features()).contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    }

    /// Errors wgpu reported outside any error scope since the last call, as one error.
    fn take_errors(&self) -> Result<()> {
        let mut v = self
            .errors
            .lock()
            .map_err(|_| BackendError::Device("error log poisoned".into()))?;
        if v.is_empty() {
            return Ok(());
        }
        let msg = v.join("; ");
        v.clear();
        Err(BackendError::Device(msg))
    }

    fn buffer(&self, id: BufferId) -> Result<&GpuBuffer> {
        self.buffers
            .get(&id.0)
            .ok_or(BackendError::UnknownBuffer(id.0))
    }

    fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let max = self.limits.max_storage_buffer_binding_size;
        if bytes > max {
            return Err(BackendError::TooLarge {
                what: what.to_string(),
                bytes: bytes as usize,
                limit: max as usize,
                adapter: self.info.name.clone(),
            });
        }
        Ok(())
    }

    fn layout(
        &mut self,
        externals: u32,
        writable: u32,
    ) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let device = &self.device;
        self.layouts
            .entry((externals, writable))
            .or_insert_with(|| {
                let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                };
                let mut entries = vec![
                    wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: wgpu::BufferSize::new(PARAM_BYTES),
                        },
                        count: None,
                    },
                    storage(1, false),
                ];
                for b in 0..externals {
                    entries.push(storage(2 + b, writable & (1 << b) == 0));
                }
                let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("weft"),
                    entries: &entries,
                });
                let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("weft"),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
                (bgl, pl)
            })
    }

    /// Lanes of a subgroup the kernels may sum with shuffles: the adapter's smallest subgroup
    /// size when the device has subgroup operations, else 1.
    fn subgroup(&self) -> u32 {
        if self.device.features().contains(wgpu::Features::SUBGROUP) {
            self.info.subgroup_min_size.max(1)
        } else {
            1
        }
    }

    fn pipeline(&mut self, low: &Lowered) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut spec = low.spec.clone();
        spec.subgroup = self.subgroup();
        spec.matvec_blocks = self.matvec_blocks;
        // prompts on tensor cores where the device was opened with them (same parameters,
        // tiles and workgroup count as `matmul_rows`)
        if spec.kernel == Kernel::MatMulRows && self.uses_cooperative_matrices() {
            spec.kernel = Kernel::MatMulCoop;
        }
        let name = spec.kernel.name();
        let src = weft_shaders::generate(&spec).map_err(|e| BackendError::Shader {
            kernel: name,
            message: e.to_string(),
        })?;
        if let Some(p) = self.pipelines.get(&src) {
            return Ok(p.clone());
        }
        let layout = self.layout(spec.externals, spec.writable()).1.clone();
        let pipeline = self.build_pipeline(name, &src, Some(&layout))?;
        let p = Arc::new(pipeline);
        self.pipelines.insert(src, p.clone());
        Ok(p)
    }

    fn build_pipeline(
        &self,
        name: &'static str,
        src: &str,
        layout: Option<&wgpu::PipelineLayout>,
    ) -> Result<wgpu::ComputePipeline> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // SAFETY: the kernels are weft's own, not a user's: every loop in them ends (its
        // bounds are the plan's sizes), so naga's loop bounding, a counter in every loop that
        // made prompt matmuls 3.4-5.6x slower on an H200, is left out. Bounds checks stay
        // (each index clamped to its binding) unless WEFT_UNCHECKED=1 asks for kernels without
        // them, an experiment for measuring what they cost (the op suite passes without them,
        // but an index past a binding is then undefined behaviour instead of a clamped read).
        let module = unsafe { self.device.create_shader_module_trusted(desc, self.checks) };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(BackendError::Shader {
                kernel: name,
                message: e.to_string(),
            }),
            None => Ok(pipeline),
        }
    }

    /// Compiles WGSL written against the standard bindings (parameters, arena, no externals)
    /// into a pipeline and discards it: how tests see a shader failure reported.
    pub fn check_wgsl(&mut self, kernel: &'static str, src: &str) -> Result<()> {
        let layout = self.layout(0, 0).1.clone();
        self.build_pipeline(kernel, src, Some(&layout)).map(|_| ())
    }

    /// Records one run's commands of `program` and drops them unsubmitted; returns the number
    /// of dispatches. For measuring what recording costs the host (`benches`).
    pub fn record(&self, program: ProgramId) -> Result<usize> {
        let prog = self
            .programs
            .get(&program.0)
            .ok_or(BackendError::UnknownProgram(program.0))?;
        drop(self.encode(prog)?);
        Ok(prog.dispatches.len())
    }

    /// The commands of one run of `prog`: every dispatch in one compute pass, then the copies
    /// of the outputs to the staging buffer.
    fn encode(&self, prog: &GpuProgram) -> Result<wgpu::CommandBuffer> {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("weft run"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("weft"),
                timestamp_writes: None,
            });
            for d in &prog.dispatches {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
            }
        }
        self.copy_outputs(&mut enc, prog)?;
        Ok(enc.finish())
    }

    /// Like [`Self::encode`], with one pass per dispatch bracketed by GPU timestamps, resolved
    /// into the returned readable buffer (two `u64` per dispatch).
    fn encode_stamped(
        &self,
        prog: &GpuProgram,
    ) -> Result<(
        wgpu::CommandBuffer,
        (wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer),
    )> {
        let n = prog.dispatches.len() as u32;
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("weft run (timed)"),
            });
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("weft timings"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * n,
        });
        let mk = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("weft timings"),
                size: 16 * n as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolve = mk(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let read = mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        for (i, d) in prog.dispatches.iter().enumerate() {
            let writes = wgpu::ComputePassTimestampWrites {
                query_set: &set,
                beginning_of_pass_write_index: Some(2 * i as u32),
                end_of_pass_write_index: Some(2 * i as u32 + 1),
            };
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(writes),
            });
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
        }
        enc.resolve_query_set(&set, 0..2 * n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16 * n as u64);
        self.copy_outputs(&mut enc, prog)?;
        Ok((enc.finish(), (set, resolve, read)))
    }

    fn copy_outputs(&self, enc: &mut wgpu::CommandEncoder, prog: &GpuProgram) -> Result<()> {
        if let Some(staging) = &prog.staging {
            for o in &prog.outputs {
                let src = match o.buffer {
                    OutBuf::Arena => &prog.arena,
                    OutBuf::External(b) => &self.buffer(b)?.buffer,
                };
                if o.bytes > 0 {
                    enc.copy_buffer_to_buffer(src, o.start, staging, o.staging_at, o.bytes);
                }
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` of a buffer (aligned internally to 4 bytes).
    fn read_range(&self, buffer: &wgpu::Buffer, offset: u64, len: u64) -> Result<Vec<u8>> {
        let start = offset / 4 * 4;
        let end = align_up(offset + len, 4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weft download"),
            size: (end - start).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        if end > start {
            enc.copy_buffer_to_buffer(buffer, start, &staging, 0, end - start);
        }
        self.queue.submit([enc.finish()]);
        let bytes = self.map_read(&staging, end - start)?;
        Ok(bytes[(offset - start) as usize..(offset - start + len) as usize].to_vec())
    }

    fn map_read(&self, staging: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        self.map_read_with(staging, len, <[u8]>::to_vec)
    }

    /// Waits for the device, maps the first `len` bytes of `staging` and returns `f` of them.
    fn map_read_with<T>(
        &self,
        staging: &wgpu::Buffer,
        len: u64,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        if len == 0 {
            return Ok(f(&[]));
        }
        let slice = staging.slice(0..len);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| BackendError::Device(format!("{}: {e}", self.info.name)))?;
        let mapped = rx
            .recv()
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = mapped {
            // Say why: a lost device is recorded by its callback.
            let why = self
                .errors
                .lock()
                .map(|mut v| std::mem::take(&mut *v).join("; "))
                .unwrap_or_default();
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            return Err(BackendError::Device(format!(
                "{}: reading results back failed: {e}{why}",
                self.info.name
            )));
        }
        let data = f(&slice
            .get_mapped_range()
            .map_err(|e| BackendError::Device(format!("reading results back: {e}")))?);
        staging.unmap();
        self.take_errors()?;
        Ok(data)
    }
}

/// Dense values of `layout` read from `bytes` (which start at the layout's element 0).
fn gather(bytes: &[u8], layout: Layout, dtype: DType) -> OutputData {
    match dtype {
        DType::I32 => {
            let v: Vec<i32> = bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut out = vec![0; layout.shape.numel()];
            layout.for_each_offset(|i, o| out[i] = v[o]);
            OutputData::I32(out)
        }
        // (logits: read once, straight into the output)
        DType::F32 if layout.offset == 0 && layout.is_contiguous() => OutputData::F32(
            bytes[..4 * layout.shape.numel()]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        _ => {
            let mut vals = vec![0f32; bytes.len() / dtype_bytes(dtype)];
            weft_graph::quant::dequantize(
                dtype,
                &bytes[..vals.len() * dtype_bytes(dtype)],
                &mut vals,
            );
            let mut out = vec![0.0; layout.shape.numel()];
            layout.for_each_offset(|i, o| out[i] = vals[o]);
            OutputData::F32(out)
        }
    }
}

fn dtype_bytes(d: DType) -> usize {
    d.block_bytes() / d.block_elems()
}

impl Backend for WgpuBackend {
    fn name(&self) -> String {
        let coop = if self.uses_cooperative_matrices() {
            ", cooperative matrices"
        } else {
            ""
        };
        format!("wgpu ({}, {:?}{coop})", self.info.name, self.info.backend)
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufferId> {
        let size = align_up(bytes.max(4) as u64, 4);
        if size > self.limits.max_buffer_size {
            return Err(BackendError::TooLarge {
                what: "buffer".into(),
                bytes,
                limit: self.limits.max_buffer_size as usize,
                adapter: self.info.name.clone(),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weft buffer"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(BackendError::OutOfMemory {
                bytes,
                detail: e.to_string(),
            });
        }
        let id = self.next_buffer;
        self.next_buffer += 1;
        self.buffers.insert(
            id,
            GpuBuffer {
                buffer,
                size: bytes,
            },
        );
        Ok(BufferId(id))
    }

    fn upload(&mut self, buf: BufferId, offset: usize, data: &[u8]) -> Result<()> {
        let b = self.buffer(buf)?;
        if offset.checked_add(data.len()).is_none_or(|e| e > b.size) {
            return Err(BackendError::OutOfBounds {
                buffer: buf.0,
                start: offset,
                end: offset.saturating_add(data.len()),
                size: b.size,
            });
        }
        // wgpu copies whole 4-byte words: merge partial words at either end with what is there.
        let start = offset / 4 * 4;
        let end = (offset + data.len()).div_ceil(4) * 4;
        let mut words = vec![0u8; end - start];
        if start != offset || end != offset + data.len() {
            let head = self.read_range(&b.buffer, start as u64, (end - start) as u64)?;
            words.copy_from_slice(&head);
        }
        words[offset - start..offset - start + data.len()].copy_from_slice(data);
        self.queue.write_buffer(&b.buffer, start as u64, &words);
        self.take_errors()
    }

    fn download(&mut self, buf: BufferId, offset: usize, out: &mut [u8]) -> Result<()> {
        let b = self.buffer(buf)?;
        if offset.checked_add(out.len()).is_none_or(|e| e > b.size) {
            return Err(BackendError::OutOfBounds {
                buffer: buf.0,
                start: offset,
                end: offset.saturating_add(out.len()),
                size: b.size,
            });
        }
        let bytes = self.read_range(&b.buffer, offset as u64, out.len() as u64)?;
        out.copy_from_slice(&bytes);
        Ok(())
    }

    fn buffer_size(&self, buf: BufferId) -> Result<usize> {
        Ok(self.buffer(buf)?.size)
    }

    fn free(&mut self, buf: BufferId) -> Result<()> {
        let b = self
            .buffers
            .remove(&buf.0)
            .ok_or(BackendError::UnknownBuffer(buf.0))?;
        b.buffer.destroy();
        Ok(())
    }

    /// A mixture's choice of experts stays a top_k dispatch: inlined, every thread of the
    /// softmax and the experts' products walks the logits row k times serially before its
    /// first load, which cost qwen3next-1b's router softmax 35 us a layer on an H200 (inlined,
    /// its 128 generated tokens ran at 406 tok/s there, 467 as a dispatch).
    fn pass_options(&self) -> PassOptions {
        WgpuBackend::passes()
    }

    fn compile(&mut self, plan: &Plan) -> Result<ProgramId> {
        let g = &plan.graph;
        crate::checks::check_externals(plan, |b| self.buffer(b).map(|x| x.size))?;
        let (attention_chunk, attention_rows) = (self.attention_chunk, self.attention_rows);
        // (no row staged with `WEFT_X_STAGED=0`)
        let workgroup_memory = if self.x_staged {
            self.device.limits().max_compute_workgroup_storage_size
        } else {
            0
        };
        // (`workspaces` false: neither the delta rule's chunks nor the attention's split)
        let lower_all = |workspaces: bool| -> Result<Vec<(NodeId, Lowered)>> {
            Ok(plan
                .schedule
                .iter()
                .map(|&id| {
                    let opts = LowerOptions {
                        delta_chunks: workspaces,
                        attention_chunk: if workspaces { attention_chunk } else { 0 },
                        attention_rows,
                        workgroup_memory,
                    };
                    lower(g, plan, id, opts).map(|l| l.into_iter().map(move |l| (id, l)))
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect())
        };
        // the plan's tensors, then the workspace the largest user needs
        let tensors = align_up(plan.arena_bytes.max(4) as u64, 4);
        let arena_size = |lowered: &[(NodeId, Lowered)]| {
            let workspace = lowered.iter().map(|(_, l)| l.workspace).max().unwrap_or(0);
            // (whole 16-byte words: the shaders bind it as an array of vec4<u32>)
            align_up(tensors.max(lower::workspace_at(plan) + workspace), 16)
        };
        let mut lowered = lower_all(true)?;
        let mut arena_bytes = arena_size(&lowered);
        // a prompt whose delta-rule chunks or attention split would not fit one binding goes
        // without (walks its tokens, one pass over its keys)
        if arena_bytes > self.limits.max_storage_buffer_binding_size {
            lowered = lower_all(false)?;
            arena_bytes = arena_size(&lowered);
        }
        self.check_binding("the activation arena", arena_bytes)?;
        let arena = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weft arena"),
            size: arena_bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        // Each node's dispatches: one, or one per row range of a weight too large to bind.
        let max = self.limits.max_storage_buffer_binding_size;
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        let mut parts = vec![];
        for (id, low) in &lowered {
            let sizes: Vec<u64> = low
                .externals
                .iter()
                .map(|b| Ok(align_up(self.buffer(*b)?.size as u64, 4)))
                .collect::<Result<_>>()?;
            let split = split::parts(g, *id, low, &sizes, max, align).map_err(|why| {
                let b = sizes.iter().position(|&s| s > max).unwrap_or(0);
                let name = g.ids().find_map(|e| match &g.node(e).op {
                    Op::External { name, buffer, .. } if low.externals.get(b) == Some(buffer) => {
                        Some(name.as_str())
                    }
                    _ => None,
                });
                BackendError::TooLarge {
                    what: format!(
                        "external {:?} of node {} ({why})",
                        name.unwrap_or("?"),
                        g.node(*id).name
                    ),
                    bytes: sizes.get(b).copied().unwrap_or(0) as usize,
                    limit: max as usize,
                    adapter: self.info.name.clone(),
                }
            })?;
            parts.extend(split.into_iter().map(|p| (*id, low, p)));
        }
        let stride = align_up(
            PARAM_BYTES,
            self.limits.min_uniform_buffer_offset_alignment as u64,
        );
        let params = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weft params"),
            size: stride * parts.len().max(1) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut dispatches = Vec::with_capacity(parts.len());
        for (i, (id, low, part)) in parts.iter().enumerate() {
            if part.groups == 0 {
                continue;
            }
            let mut words = part.params.clone();
            words.resize(MAX_PARAMS, 0);
            self.queue
                .write_buffer(&params, i as u64 * stride, bytemuck::cast_slice(&words));
            let pipeline = self.pipeline(low)?;
            let bgl = self
                .layout(low.spec.externals, low.spec.writable())
                .0
                .clone();
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: i as u64 * stride,
                        size: wgpu::BufferSize::new(PARAM_BYTES),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: arena.as_entire_binding(),
                },
            ];
            for (b, ext) in low.externals.iter().enumerate() {
                let buffer = &self.buffer(*ext)?.buffer;
                let resource = match part.range {
                    Some((rb, offset, size)) if rb == b => {
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer,
                            offset,
                            size: wgpu::BufferSize::new(size),
                        })
                    }
                    _ => buffer.as_entire_binding(),
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: 2 + b as u32,
                    resource,
                });
            }
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &bgl,
                entries: &entries,
            });
            let x = part
                .groups
                .min(self.limits.max_compute_workgroups_per_dimension);
            let y = part.groups.div_ceil(x);
            if y > self.limits.max_compute_workgroups_per_dimension {
                return Err(BackendError::TooLarge {
                    what: format!(
                        "dispatch of {} workgroups for {}",
                        part.groups,
                        g.node(*id).name
                    ),
                    bytes: 0,
                    limit: (x as usize) * (x as usize),
                    adapter: self.info.name.clone(),
                });
            }
            dispatches.push(Dispatch {
                node: *id,
                pipeline,
                bind_group,
                groups: (x, y),
            });
        }
        // Output copies: the byte range each output's layout touches in its storage.
        let mut outputs = Vec::new();
        let mut at = 0u64;
        for (_, id) in &g.outputs {
            let n = g.node(*id);
            let base = g.storage_of(*id);
            let (buffer, base_off) = match &g.node(base).op {
                Op::External { buffer, .. } => (OutBuf::External(*buffer), 0u64),
                _ => (
                    OutBuf::Arena,
                    plan.slots[base.index()].map_or(0, |s| s.offset) as u64,
                ),
            };
            let eb = dtype_bytes(n.dtype) as u64;
            let first = n.layout.offset as u64 * eb;
            let end = n.layout.extent() as u64 * eb;
            let start = (base_off + first) / 4 * 4;
            let stop = align_up(base_off + end, 4);
            // The copied range starts `base_off + first - start` bytes before element `offset`.
            let mut layout = n.layout;
            layout.offset = ((base_off + first - start) / eb) as usize;
            outputs.push(OutputCopy {
                buffer,
                start,
                bytes: stop - start,
                staging_at: at,
                layout,
                dtype: n.dtype,
            });
            at = align_up(at + stop - start, 4);
        }
        let staging = (at > 0).then(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("weft outputs"),
                size: at,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.take_errors()?;
        let id = self.next_program;
        self.next_program += 1;
        self.programs.insert(
            id,
            GpuProgram {
                plan: plan.clone(),
                arena,
                _params: params,
                dispatches,
                outputs,
                staging,
                timings: None,
                ready: None,
            },
        );
        Ok(ProgramId(id))
    }

    fn run(&mut self, program: ProgramId, inputs: &[(&str, HostData<'_>)]) -> Result<Vec<Output>> {
        let profiling = self.profiling;
        // (a profiled run records its own timed commands)
        let ready = self
            .programs
            .get_mut(&program.0)
            .ok_or(BackendError::UnknownProgram(program.0))?
            .ready
            .take()
            .filter(|_| !profiling);
        let prog = self
            .programs
            .get(&program.0)
            .ok_or(BackendError::UnknownProgram(program.0))?;
        for (_, off, data) in crate::checks::inputs(&prog.plan, inputs)? {
            if !data.is_empty() {
                self.queue
                    .write_buffer(&prog.arena, off as u64, data.bytes());
            }
        }
        let n = prog.dispatches.len() as u32;
        let stamped = profiling
            && self
                .device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
            && n > 0
            && 2 * n <= wgpu::QUERY_SET_MAX_QUERIES;
        let t_encode = std::time::Instant::now();
        let reused = ready.is_some();
        let (commands, stamps) = match ready {
            Some(cb) => (cb, None),
            None if stamped => {
                let (cb, stamps) = self.encode_stamped(prog)?;
                (cb, Some(stamps))
            }
            None => (self.encode(prog)?, None),
        };
        let encoded = t_encode.elapsed();
        let start = std::time::Instant::now();
        self.queue.submit([commands]);
        let submitted = start.elapsed();
        // While the device works, record the next run of this program.
        let t_next = std::time::Instant::now();
        let next = (!profiling).then(|| self.encode(prog)).transpose()?;
        let encoded_next = t_next.elapsed();
        let t_wait = std::time::Instant::now();
        let total = prog.outputs.last().map_or(0, |o| o.staging_at + o.bytes);
        // each output gathered straight from the mapped staging buffer
        let gather_all = |bytes: &[u8]| -> Vec<OutputData> {
            prog.outputs
                .iter()
                .map(|o| {
                    let chunk = &bytes[o.staging_at as usize..(o.staging_at + o.bytes) as usize];
                    gather(chunk, o.layout, o.dtype)
                })
                .collect()
        };
        let data = match &prog.staging {
            Some(s) => self.map_read_with(s, total, gather_all)?,
            None => {
                self.device
                    .poll(wgpu::PollType::Wait {
                        submission_index: None,
                        timeout: None,
                    })
                    .map_err(|e| BackendError::Device(e.to_string()))?;
                self.take_errors()?;
                gather_all(&[])
            }
        };
        let waited = t_wait.elapsed();
        let elapsed = start.elapsed();
        self.stats.runs += 1;
        self.stats.encode += encoded;
        self.stats.encode_ahead += encoded_next;
        self.stats.reused += reused as u64;
        self.stats.submit += submitted;
        self.stats.wait += waited;
        let gpu_ns: Option<Vec<u64>> = match &stamps {
            Some((_, _, read)) => {
                let raw = self.map_read(read, 16 * n as u64)?;
                let period = self.queue.get_timestamp_period() as f64;
                let t: Vec<u64> = raw
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                Some(
                    t.chunks_exact(2)
                        .map(|p| (p[1].saturating_sub(p[0]) as f64 * period) as u64)
                        .collect(),
                )
            }
            None => None,
        };
        let prog = self
            .programs
            .get_mut(&program.0)
            .ok_or(BackendError::UnknownProgram(program.0))?;
        prog.ready = next;
        if profiling {
            // GPU timestamps when the adapter has them; otherwise the run's wall time spread
            // evenly over the dispatches (coarse, but the table keeps its shape).
            let per = elapsed / prog.dispatches.len().max(1) as u32;
            let g = &prog.plan.graph;
            prog.timings = Some(
                prog.dispatches
                    .iter()
                    .enumerate()
                    .map(|(i, d)| NodeTiming {
                        node: d.node,
                        name: g.node(d.node).name.clone(),
                        op: g.node(d.node).op.name(),
                        time: gpu_ns
                            .as_ref()
                            .map_or(per, |t| std::time::Duration::from_nanos(t[i])),
                    })
                    .collect(),
            );
        }
        let g = &prog.plan.graph;
        Ok(prog
            .outputs
            .iter()
            .zip(&g.outputs)
            .zip(data)
            .map(|((o, (name, _)), data)| Output {
                name: name.clone(),
                shape: o.layout.shape,
                data,
            })
            .collect())
    }

    fn release(&mut self, program: ProgramId) -> Result<()> {
        let p = self
            .programs
            .remove(&program.0)
            .ok_or(BackendError::UnknownProgram(program.0))?;
        p.arena.destroy();
        Ok(())
    }

    fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    fn timings(&self, program: ProgramId) -> Option<Vec<NodeTiming>> {
        self.programs.get(&program.0)?.timings.clone()
    }

    fn run_stats(&self) -> Option<RunStats> {
        Some(self.stats)
    }

    fn bandwidth_method(&self) -> &'static str {
        "a shader copying 16-byte words, read + write"
    }

    fn bandwidth_bytes(&self, bytes: usize) -> usize {
        // within one storage binding, a whole number of 16-byte words
        let cap = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        ((bytes.max(16) as u64).min(cap) / 16 * 16) as usize
    }

    fn memory_bandwidth(&mut self, bytes: usize) -> Result<f64> {
        let size = self.bandwidth_bytes(bytes) as u64;
        let mk = |label| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (a, b) = (mk("weft bandwidth src"), mk("weft bandwidth dst"));
        // (its own two bindings: the layout comes from the shader)
        let pipeline = self.build_pipeline("bandwidth", weft_shaders::BANDWIDTH_WGSL, None)?;
        let bind = |from: &wgpu::Buffer, to: &wgpu::Buffer| {
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: from.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: to.as_entire_binding(),
                    },
                ],
            })
        };
        let groups = [bind(&a, &b), bind(&b, &a)];
        let workgroups = (size / 16).div_ceil(256) as u32;
        let max = self.limits.max_compute_workgroups_per_dimension;
        let (x, y) = (workgroups.min(max), workgroups.div_ceil(max));
        // one submission of `COPIES` copies back and forth, timed from submit to done
        const COPIES: usize = 4;
        let copies = || -> Result<f64> {
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                for i in 0..COPIES {
                    pass.set_bind_group(0, &groups[i % 2], &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
            let t = std::time::Instant::now();
            self.queue.submit([enc.finish()]);
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: None,
                    timeout: None,
                })
                .map_err(|e| BackendError::Device(e.to_string()))?;
            Ok(t.elapsed().as_secs_f64())
        };
        // GPUs idle at low clocks and raise them under load within tens of milliseconds: copy
        // for a while untimed first, then take the best of five
        let warm = std::time::Instant::now();
        while warm.elapsed() < std::time::Duration::from_millis(200) {
            copies()?;
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            best = best.min(copies()?);
        }
        a.destroy();
        b.destroy();
        self.take_errors()?;
        Ok((2 * COPIES) as f64 * size as f64 / best.max(1e-9))
    }
}
