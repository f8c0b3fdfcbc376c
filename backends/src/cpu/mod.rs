//! The CPU backend: every op with f32 accumulation, rows spread over a team of spinning threads
//! ([`team`]). Quantized weights meet 8-bit activations in integer dot products ([`qdot`], as
//! llama.cpp's CPU backend computes them); other weights are decoded row by row.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_int8;
mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_zmm;
mod buffer;
mod delta;
mod elementwise;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod panel;
mod qdot;
mod rows;
#[cfg(target_arch = "x86_64")]
mod scan_lanes;
#[cfg(target_arch = "x86_64")]
mod scan_zmm;
#[cfg(target_arch = "x86_64")]
mod spare;
mod ssm;
mod state;
mod team;
mod tensor;
mod tile;
mod tile_bf16;
#[cfg(target_arch = "x86_64")]
mod vmath;

use crate::{
    Backend, BackendError, HostBytes, HostData, NodeTiming, Output, OutputData, ProgramId, Result,
};
use buffer::{AlignedBytes, Buffer};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;
use tensor::TensorRef;
use weft_graph::{BufferId, DType, Graph, Layout, NodeId, Op, Plan};

struct Program {
    plan: Plan,
    arena: AlignedBytes,
    timings: Option<Vec<NodeTiming>>,
}

/// Executes plans on the host.
#[derive(Default)]
pub struct CpuBackend {
    buffers: HashMap<u32, Buffer>,
    next_buffer: u32,
    programs: HashMap<u32, Program>,
    next_program: u32,
    profiling: bool,
    scratch: AlignedBytes,
    /// Whether [`Backend::map_host`] reads host bytes in place (see [`CpuBackend::map_weights`]).
    map_host: bool,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("buffers", &self.buffers.len())
            .field("programs", &self.programs.len())
            .finish()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether [`Backend::map_host`] takes host bytes (a mapped model file's weights) in place,
    /// instead of the caller copying them into buffers of the backend's own: half the memory
    /// and no copy at load. Off by default: on the development machine generation read weights
    /// from a file's mapped pages about 10% slower than from a copy.
    pub fn map_weights(mut self, on: bool) -> Self {
        self.map_host = on;
        self
    }

    fn buffer(&self, id: BufferId) -> Result<&Buffer> {
        self.buffers
            .get(&id.0)
            .ok_or(BackendError::UnknownBuffer(id.0))
    }
}

fn range_check(
    buf: BufferId,
    size: usize,
    offset: usize,
    len: usize,
) -> Result<std::ops::Range<usize>> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(offset..end),
        _ => Err(BackendError::OutOfBounds {
            buffer: buf.0,
            start: offset,
            end: offset.saturating_add(len),
            size,
        }),
    }
}

/// Where a node's storage is: the arena (at a byte offset) or an external buffer.
#[derive(Clone, Copy)]
enum Home {
    Arena(usize),
    External(BufferId),
}

/// The vector instructions the kernels use on this CPU (they are picked at run time), for
/// the backend's name: figures taken on one machine say which kernels made them.
fn vector_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if qdot::gemm::Isa::Avx512Vnni.available() {
            return "AVX-512 VNNI";
        }
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        if avx2 && std::arch::is_x86_feature_detected!("avxvnni") {
            return "AVX2, AVX-VNNI";
        }
        if avx2 {
            return "AVX2";
        }
    }
    "portable"
}

fn home(g: &Graph, plan: &Plan, id: NodeId) -> Home {
    let base = g.storage_of(id);
    match &g.node(base).op {
        Op::External { buffer, .. } => Home::External(*buffer),
        _ => Home::Arena(plan.slots[base.index()].map_or(0, |s| s.offset)),
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            team::global().threads(),
            vector_kernels()
        )
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufferId> {
        let id = self.next_buffer;
        self.next_buffer += 1;
        self.buffers
            .insert(id, Buffer::Owned(AlignedBytes::zeroed(bytes)));
        Ok(BufferId(id))
    }

    fn map_host(&mut self, bytes: HostBytes) -> Result<Option<BufferId>> {
        let Some(buffer) = Buffer::host(bytes).filter(|_| self.map_host) else {
            return Ok(None);
        };
        let id = self.next_buffer;
        self.next_buffer += 1;
        self.buffers.insert(id, buffer);
        Ok(Some(BufferId(id)))
    }

    fn upload(&mut self, buf: BufferId, offset: usize, data: &[u8]) -> Result<()> {
        let b = self
            .buffers
            .get_mut(&buf.0)
            .ok_or(BackendError::UnknownBuffer(buf.0))?;
        let r = range_check(buf, b.len(), offset, data.len())?;
        b.bytes_mut(buf.0)?[r].copy_from_slice(data);
        Ok(())
    }

    fn download(&mut self, buf: BufferId, offset: usize, out: &mut [u8]) -> Result<()> {
        let b = self.buffer(buf)?;
        let r = range_check(buf, b.len(), offset, out.len())?;
        out.copy_from_slice(&b.bytes()[r]);
        Ok(())
    }

    fn buffer_size(&self, buf: BufferId) -> Result<usize> {
        Ok(self.buffer(buf)?.len())
    }

    fn free(&mut self, buf: BufferId) -> Result<()> {
        self.buffers
            .remove(&buf.0)
            .map(|_| ())
            .ok_or(BackendError::UnknownBuffer(buf.0))
    }

    fn compile(&mut self, plan: &Plan) -> Result<ProgramId> {
        crate::checks::check_externals(plan, |b| self.buffer(b).map(|x| x.len()))?;
        let id = self.next_program;
        self.next_program += 1;
        let arena = AlignedBytes::zeroed(plan.arena_bytes);
        self.programs.insert(
            id,
            Program {
                plan: plan.clone(),
                arena,
                timings: None,
            },
        );
        Ok(ProgramId(id))
    }

    fn run(&mut self, program: ProgramId, inputs: &[(&str, HostData<'_>)]) -> Result<Vec<Output>> {
        let mut prog = self
            .programs
            .remove(&program.0)
            .ok_or(BackendError::UnknownProgram(program.0))?;
        let r = self.run_program(&mut prog, inputs);
        self.programs.insert(program.0, prog);
        r
    }

    fn release(&mut self, program: ProgramId) -> Result<()> {
        self.programs
            .remove(&program.0)
            .map(|_| ())
            .ok_or(BackendError::UnknownProgram(program.0))
    }

    fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    fn timings(&self, program: ProgramId) -> Option<Vec<NodeTiming>> {
        self.programs.get(&program.0)?.timings.clone()
    }

    fn bandwidth_method(&self) -> &'static str {
        "every thread of the team reading its part of a buffer, as decode reads weights"
    }

    fn memory_bandwidth(&mut self, bytes: usize) -> Result<f64> {
        // Touch every page first: untouched zero pages all map to one shared page and would
        // make reads look free.
        let mut src = AlignedBytes::zeroed(bytes);
        src.bytes_mut()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let words: &[u64] = bytemuck::cast_slice(&src.bytes()[..bytes / 8 * 8]);
        let team = team::global();
        let parts = 8 * team.threads();
        let per = words.len().div_ceil(parts).max(1);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            team.run(parts, &|c| {
                let part = words.chunks(per).nth(c).unwrap_or_default();
                // four independent sums, so the adds keep up with the loads
                let mut sums = [0u64; 4];
                for w in part.chunks_exact(4) {
                    for (s, v) in sums.iter_mut().zip(w) {
                        *s = s.wrapping_add(*v);
                    }
                }
                std::hint::black_box(sums);
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((words.len() * 8) as f64 / best.max(1e-9))
    }
}

/// Copies host inputs into their arena slots, checking names, dtypes and lengths.
fn write_inputs(
    plan: &Plan,
    arena: &mut AlignedBytes,
    inputs: &[(&str, HostData<'_>)],
) -> Result<()> {
    for (_, off, data) in crate::checks::inputs(plan, inputs)? {
        let b = data.bytes();
        arena.bytes_mut()[off..off + b.len()].copy_from_slice(b);
    }
    Ok(())
}

impl CpuBackend {
    fn run_program(
        &mut self,
        prog: &mut Program,
        inputs: &[(&str, HostData<'_>)],
    ) -> Result<Vec<Output>> {
        let plan = &prog.plan;
        let g = &plan.graph;
        write_inputs(plan, &mut prog.arena, inputs)?;
        let mut timings = self.profiling.then(Vec::new);
        for &id in &plan.schedule {
            let start = Instant::now();
            let node = g.node(id);
            if matches!(node.op, Op::StoreRows) {
                let s = &node.srcs;
                let src = self
                    .tensor_ref(g, plan, &prog.arena, s[1])?
                    .f32()
                    .into_owned();
                self.write_rows(plan, &prog.arena, s[0], &src, s[2], &node.name)?;
            } else if let Op::Attention { stores: true, .. } = node.op {
                self.attention_in_cache(plan, &mut prog.arena, id)?;
            } else if g.has_side_effect(id) {
                self.state_op_in_cache(plan, &mut prog.arena, id)?;
            } else {
                self.run_node(plan, &mut prog.arena, id, &node.srcs)?;
            }
            if let Some(t) = timings.as_mut() {
                t.push(NodeTiming {
                    node: id,
                    name: node.name.clone(),
                    op: node.op.name(),
                    time: start.elapsed(),
                });
            }
        }
        prog.timings = timings;
        g.outputs
            .iter()
            .map(|(name, id)| {
                let t = self.tensor_ref(g, plan, &prog.arena, *id)?;
                let data = if t.dtype == DType::I32 {
                    OutputData::I32(t.i32().into_owned())
                } else {
                    OutputData::F32(elementwise::read_layout_f32(&t, t.layout))
                };
                Ok(Output {
                    name: name.clone(),
                    shape: t.layout.shape,
                    data,
                })
            })
            .collect()
    }

    /// Computes node `id` from sources `srcs` (its own, or the first of them) into its slot.
    fn run_node(
        &mut self,
        plan: &Plan,
        arena: &mut AlignedBytes,
        id: NodeId,
        srcs: &[NodeId],
    ) -> Result<()> {
        self.run_node_with(plan, arena, id, srcs, None)
    }

    /// [`Self::run_node`], source 0's values replaced by `first` (dense, its shape) if given.
    fn run_node_with(
        &mut self,
        plan: &Plan,
        arena: &mut AlignedBytes,
        id: NodeId,
        srcs: &[NodeId],
        first: Option<&[f32]>,
    ) -> Result<()> {
        let g = &plan.graph;
        let node = g.node(id);
        let bytes = node.dtype.bytes_for(node.numel()).unwrap_or(0);
        let off = plan.slots[id.index()].map_or(0, |s| s.offset);
        let buffers = &self.buffers;
        let refs = |arena| source_refs(buffers, plan, arena, srcs, first);
        let hole = off..off + bytes;
        if writes_in_place(plan, id, srcs, &hole) {
            let (view, out) = around(arena, hole.clone());
            return execute(g, id, &refs(view)?, out);
        }
        if self.scratch.len() < bytes {
            self.scratch = AlignedBytes::zeroed(bytes);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let done = refs(ArenaRead::Whole(arena.bytes()))
            .and_then(|srcs| execute(g, id, &srcs, &mut scratch.bytes_mut()[..bytes]));
        if done.is_ok() {
            arena.bytes_mut()[hole].copy_from_slice(&scratch.bytes()[..bytes]);
        }
        self.scratch = scratch;
        done
    }

    fn tensor_ref<'a>(
        &'a self,
        g: &Graph,
        plan: &Plan,
        arena: &'a AlignedBytes,
        id: NodeId,
    ) -> Result<TensorRef<'a>> {
        tensor_ref(&self.buffers, g, plan, arena, id)
    }

    /// `ssm_scan`, `gated_delta_net` or `ssm_conv` on state rows in their cache (see
    /// `Op::SsmScan`, `Op::SsmConv`): the
    /// cache buffer is taken out of the map for the call, so that the op can update its rows
    /// while reading the other sources.
    fn state_op_in_cache(
        &mut self,
        plan: &Plan,
        arena: &mut AlignedBytes,
        id: NodeId,
    ) -> Result<()> {
        let g = &plan.graph;
        let node = g.node(id);
        let Home::External(buf) = home(g, plan, node.srcs[0]) else {
            return Err(BackendError::Device(format!(
                "{}: the state is not in a cache",
                node.name
            )));
        };
        let mut cache = self
            .buffers
            .remove(&buf.0)
            .ok_or(BackendError::UnknownBuffer(buf.0))?;
        // y goes straight into the node's slot when no source lies in it (as in
        // `run_node_with`), else into a buffer copied there after
        let off = plan.slots[id.index()].map_or(0, |s| s.offset);
        let hole = off..off + 4 * node.numel();
        let direct = writes_in_place(plan, id, &node.srcs[1..], &hole);
        let mut local = Vec::new();
        let (view, out): (ArenaRead, &mut [f32]) = if direct {
            let (view, out) = around(arena, hole.clone());
            (view, bytemuck::cast_slice_mut(out))
        } else {
            local = vec![0.0f32; node.numel()];
            (ArenaRead::Whole(arena.bytes()), &mut local)
        };
        let buffers = &self.buffers;
        let refs = |ids: &[NodeId]| source_refs(buffers, plan, view, ids, None);
        let (op, inner_srcs) = node.op.core(node.srcs.len());
        let epilogue = match &node.op {
            Op::Epilogue(e) => Some(e),
            _ => None,
        };
        let done = (|| -> Result<()> {
            // with an epilogue, the op's own result goes to a buffer the epilogue reads
            let mut inner = vec![];
            let y: &mut [f32] = if epilogue.is_some() {
                inner = vec![0.0f32; node.numel()];
                &mut inner
            } else {
                &mut *out
            };
            let srcs = refs(&node.srcs[1..inner_srcs])?;
            // the slots come last
            let (slots, srcs) = srcs.split_last().expect("in-place ops have sources");
            let slots = slots.i32();
            let layout = g.node(node.srcs[0]).layout;
            let rows = &mut bytemuck::cast_slice_mut::<u8, f32>(cache.bytes_mut(buf.0)?)
                [layout.offset..layout.offset + layout.shape.numel()];
            match op {
                Op::SsmScan { dt_proj, bc_norm } => {
                    // (x is source 0 here, the cache being left out)
                    let extra = refs(&node.srcs[inner_srcs..])?;
                    let dt = scan_dt(dt_proj, srcs, 0, &extra)?;
                    let more = dt_proj.as_ref().map_or(0, |d| d.extra_sources());
                    let bc = scan_bc(bc_norm, srcs, 3, &extra[more..]);
                    let srcs = with_source(srcs, 1, dt.as_ref());
                    let srcs = with_qk(&srcs, 3, bc.as_ref());
                    ssm::ssm_scan_cached(rows, &slots, &srcs, &node.name, y)
                }
                Op::GatedDeltaNet { qk_norm, gates, .. } => {
                    // (q is source 0 here, the cache being left out)
                    let extra = refs(&node.srcs[inner_srcs..])?;
                    let [normed, gated] = delta_inputs(qk_norm, gates, srcs, 0, &extra);
                    let srcs = with_qk(srcs, 0, normed.as_ref());
                    let srcs = with_qk(&srcs, 3, gated.as_ref());
                    delta::gated_delta_net_cached(rows, &slots, &srcs, &node.name, y)
                }
                Op::SsmConv => ssm::ssm_conv_cached(rows, &slots, srcs, &node.name, y),
                _ => Err(BackendError::Device(format!(
                    "{}: no in-place form of {}",
                    node.name,
                    node.op.name()
                ))),
            }?;
            if let Some(e) = epilogue {
                let extra = refs(&node.srcs[e.first_source()..])?;
                apply_epilogue(e, node.shape(), &inner, &extra, out)?;
            }
            Ok(())
        })();
        self.buffers.insert(buf.0, cache);
        done?;
        if !direct {
            arena.bytes_mut()[hole].copy_from_slice(bytemuck::cast_slice(&local));
        }
        Ok(())
    }

    /// Decode's attention with `stores` (see `Op::Attention`): q and the new key rotated when it
    /// ropes, the new key and value written into their caches, then the attention over them.
    fn attention_in_cache(
        &mut self,
        plan: &Plan,
        arena: &mut AlignedBytes,
        id: NodeId,
    ) -> Result<()> {
        let g = &plan.graph;
        let node = g.node(id);
        let Op::Attention { rope, .. } = node.op else {
            unreachable!("called for attention nodes")
        };
        let s = &node.srcs;
        let n = s.len() - rope.is_some() as usize;
        let (k_new, v_new, idx) = (s[n - 3], s[n - 2], s[n - 1]);
        let k = self.tensor_ref(g, plan, arena, k_new)?;
        let mut k_vals = k.f32().into_owned();
        let mut q_vals = None;
        if let Some(p) = rope {
            let pos = self.tensor_ref(g, plan, arena, s[n])?;
            let q = self.tensor_ref(g, plan, arena, s[0])?;
            let mut qv = vec![0.0; q.numel()];
            attention::rope(&q, &pos, p, &mut qv);
            // the new key as its heads [1, Hkv, D]
            let d = q.dims()[2];
            let heads = weft_graph::Shape::new(&[1, k_vals.len() / d, d]).ok_or_else(|| {
                BackendError::Device(format!("{}: the new key is not whole heads", node.name))
            })?;
            let k3 = TensorRef {
                layout: Layout {
                    offset: k.layout.offset,
                    ..Layout::contiguous(heads)
                },
                ..k
            };
            attention::rope(&k3, &pos, p, &mut k_vals);
            q_vals = Some(qv);
        }
        let v_vals = self.tensor_ref(g, plan, arena, v_new)?.f32().into_owned();
        for (cache, vals) in [(s[1], &k_vals), (s[2], &v_vals)] {
            let cache = g.storage_of(cache);
            self.write_rows(plan, arena, cache, vals, idx, &node.name)?;
        }
        self.run_node_with(plan, arena, id, &s[..n - 3], q_vals.as_deref())
    }

    /// `dst[idx[i]] = src[i]` for the rows of `src`, `dst` being a cache `[R, D]` (or a view of
    /// one): `store_rows`, and the cache writes of an attention with `stores`.
    fn write_rows(
        &mut self,
        plan: &Plan,
        arena: &AlignedBytes,
        dst: NodeId,
        src: &[f32],
        idx: NodeId,
        name: &str,
    ) -> Result<()> {
        let g = &plan.graph;
        let idx = self.tensor_ref(g, plan, arena, idx)?.i32().into_owned();
        let Home::External(buf) = home(g, plan, dst) else {
            return Err(BackendError::Device(format!(
                "{name}: destination is not a cache"
            )));
        };
        let dtype = g.node(dst).dtype;
        let dst: Layout = g.node(dst).layout;
        let [rows, d] = [dst.shape.dims()[0], dst.shape.dims()[1]];
        let b = self
            .buffers
            .get_mut(&buf.0)
            .ok_or(BackendError::UnknownBuffer(buf.0))?
            .bytes_mut(buf.0)?;
        for (i, &r) in idx.iter().enumerate() {
            if r < 0 || r as usize >= rows {
                return Err(BackendError::IndexOutOfRange {
                    op: "store_rows",
                    node: name.to_string(),
                    index: r as i64,
                    len: rows,
                });
            }
            let start = dst.offset + r as usize * dst.strides[0];
            let vals = &src[i * d..(i + 1) * d];
            match dtype {
                DType::F32 => {
                    bytemuck::cast_slice_mut::<u8, f32>(b)[start..start + d].copy_from_slice(vals)
                }
                DType::F16 => {
                    let o = &mut bytemuck::cast_slice_mut::<u8, half::f16>(b)[start..start + d];
                    o.iter_mut()
                        .zip(vals)
                        .for_each(|(o, &v)| *o = half::f16::from_f32(v));
                }
                _ => {
                    let o = &mut bytemuck::cast_slice_mut::<u8, half::bf16>(b)[start..start + d];
                    o.iter_mut()
                        .zip(vals)
                        .for_each(|(o, &v)| *o = half::bf16::from_f32(v));
                }
            }
        }
        Ok(())
    }
}

fn tensor_ref<'a>(
    buffers: &'a HashMap<u32, Buffer>,
    g: &Graph,
    plan: &Plan,
    arena: &'a AlignedBytes,
    id: NodeId,
) -> Result<TensorRef<'a>> {
    tensor_ref_in(buffers, g, plan, ArenaRead::Whole(arena.bytes()), id)
}

/// The arena's bytes as a node's sources read them: all of it, or all but the node's own slot
/// while the node writes it (`below` it, and `above` it from byte `above_at`).
#[derive(Clone, Copy)]
enum ArenaRead<'a> {
    Whole(&'a [u8]),
    Around {
        below: &'a [u8],
        above: &'a [u8],
        above_at: usize,
    },
}

impl<'a> ArenaRead<'a> {
    /// The bytes from arena offset `off` (on the far side of the hole only as far as it).
    fn from(self, off: usize) -> &'a [u8] {
        match self {
            ArenaRead::Whole(b) => &b[off..],
            ArenaRead::Around {
                above, above_at, ..
            } if off >= above_at => &above[off - above_at..],
            ArenaRead::Around { below, .. } => &below[off..],
        }
    }
}

/// The sources `srcs` of a node as `arena` shows them, source 0's values replaced by `first`
/// (dense, its shape) if given.
fn source_refs<'a>(
    buffers: &'a HashMap<u32, Buffer>,
    plan: &Plan,
    arena: ArenaRead<'a>,
    srcs: &[NodeId],
    first: Option<&'a [f32]>,
) -> Result<Vec<TensorRef<'a>>> {
    let mut refs: Vec<TensorRef> = srcs
        .iter()
        .map(|&s| tensor_ref_in(buffers, &plan.graph, plan, arena, s))
        .collect::<Result<_>>()?;
    if let (Some(v), Some(s0)) = (first, refs.first_mut()) {
        *s0 = TensorRef::dense(v, s0.layout.shape);
    }
    Ok(refs)
}

/// Whether node `id` can write its slot `hole` of the arena while it reads its sources `srcs`:
/// the planner keeps tensors live together apart, but a node may take over a dying source's
/// block in place (such a node goes through the scratch buffer), and no source in the arena
/// may reach into the slot.
fn writes_in_place(plan: &Plan, id: NodeId, srcs: &[NodeId], hole: &Range<usize>) -> bool {
    plan.in_place_of[id.index()].is_none() && clear_of(&plan.graph, plan, srcs, hole)
}

/// The arena split around `hole`: what the sources read, and the slot to write.
fn around(arena: &mut AlignedBytes, hole: Range<usize>) -> (ArenaRead<'_>, &mut [u8]) {
    let (below, rest) = arena.bytes_mut().split_at_mut(hole.start);
    let (out, above) = rest.split_at_mut(hole.len());
    let view = ArenaRead::Around {
        below,
        above,
        above_at: hole.end,
    };
    (view, out)
}

/// Whether every source in the arena lies wholly outside the byte range `hole`.
fn clear_of(g: &Graph, plan: &Plan, srcs: &[NodeId], hole: &Range<usize>) -> bool {
    srcs.iter().all(|&s| match home(g, plan, s) {
        Home::External(_) => true,
        Home::Arena(off) => {
            let n = g.node(s);
            let end = n.dtype.bytes_for(n.layout.extent()).map(|b| off + b);
            end.is_some_and(|end| end <= hole.start || off >= hole.end)
        }
    })
}

/// [`tensor_ref`] with the arena as `arena` shows it.
fn tensor_ref_in<'a>(
    buffers: &'a HashMap<u32, Buffer>,
    g: &Graph,
    plan: &Plan,
    arena: ArenaRead<'a>,
    id: NodeId,
) -> Result<TensorRef<'a>> {
    let n = g.node(id);
    let bytes = match home(g, plan, id) {
        Home::Arena(off) => arena.from(off),
        Home::External(b) => buffers
            .get(&b.0)
            .ok_or(BackendError::UnknownBuffer(b.0))?
            .bytes(),
    };
    Ok(TensorRef {
        bytes,
        layout: n.layout,
        dtype: n.dtype,
    })
}

/// Computes one node into `out` (dense, the node's dtype).
fn execute(g: &Graph, id: NodeId, s: &[TensorRef], out: &mut [u8]) -> Result<()> {
    let node = g.node(id);
    let (op, _) = node.op.core(s.len());
    let Op::Epilogue(e) = &node.op else {
        return execute_op(op, node, s, out);
    };
    // (the inner op's sources include those of the programs it computes inputs with)
    let inner_srcs = e.inner_srcs;
    // a mat-vec's row normalised first (times the norm's weight)
    let mut inner: Vec<TensorRef> = s[..inner_srcs].to_vec();
    let normed: Vec<f32>;
    if let Some(n) = e.x_norm {
        normed = normed_rows(n.kind, &s[0], n.weighted.then(|| &s[inner_srcs]));
        inner[0] = TensorRef::dense(&normed, s[0].layout.shape);
    }
    // or computed by its program
    let computed: Vec<f32>;
    if let Some(xp) = &e.x_prog {
        let more = &s[inner_srcs..inner_srcs + xp.shapes.len()];
        let mut v = vec![0.0; s[0].numel()];
        apply_program(&xp.program, &xp.shapes, xp.shape, &s[0].f32(), more, &mut v)?;
        computed = v;
        inner[0] = TensorRef::dense(&computed, s[0].layout.shape);
    }
    // the inner result (a pair's two products side by side), then the program over it (or
    // over its range)
    let mut y = vec![0.0f32; node.numel() * e.results()];
    // (the experts' pair, `[x, w_a, ids, w_b]`: each weight's products, one after the other)
    execute_op(op, node, &inner, bytemuck::cast_slice_mut(&mut y))?;
    let extra = &s[e.first_source()..];
    match e.range {
        Some((a, n)) => {
            let out = f32s(out);
            out.copy_from_slice(&y);
            let part = weft_graph::Shape::new(&[n]).ok_or_else(|| {
                BackendError::Device(format!("{}: an empty epilogue range", node.name))
            })?;
            apply_epilogue(e, part, &y[a..a + n], extra, &mut out[a..a + n])
        }
        None => apply_epilogue(e, node.shape(), &y, extra, f32s(out)),
    }
}

/// `out = program(y, extra…)` element by element: an epilogue over an op's result `y` (dense,
/// `shape`; for a pair, the two products one after the other), its other loads from `extra`,
/// each broadcast to its own shape in `e.shapes` (same element count, so element `i` of each
/// is element `i` of the output).
fn apply_epilogue(
    e: &weft_graph::Epilogue,
    shape: weft_graph::Shape,
    y: &[f32],
    extra: &[TensorRef],
    out: &mut [f32],
) -> Result<()> {
    apply_program(&e.program, &e.shapes, shape, y, extra, out)
}

/// `out = program(y, extra…)` as [`apply_epilogue`], for a program and its sources' shapes.
fn apply_program(
    program: &weft_graph::FusedProgram,
    shapes: &[weft_graph::Shape],
    shape: weft_graph::Shape,
    y: &[f32],
    extra: &[TensorRef],
    out: &mut [f32],
) -> Result<()> {
    let mut vals: Vec<std::borrow::Cow<[f32]>> = y
        .chunks(shape.numel().max(1))
        .map(std::borrow::Cow::Borrowed)
        .collect();
    for (x, &to) in extra.iter().zip(shapes) {
        let l = x.layout.broadcast_to(to).ok_or_else(|| {
            BackendError::Device(format!("an epilogue source does not broadcast to {to}"))
        })?;
        // (element `i` of `to` in row-major order is element `i` of the output)
        vals.push(elementwise::repeating_values(x, l));
    }
    elementwise::fused_values(program, shape, vals, out);
    Ok(())
}

/// A Mamba1 scan's `dt` from its projection (`Op::SsmScan::dt_proj`), as `[S, T, H]`: the
/// activation (source `x_at + 1` of `srcs`, the op's own sources with `x` at `x_at`) times the
/// weight (`extra[0]`), through the program with its other sources.
fn scan_dt(
    dt_proj: &Option<Box<weft_graph::ScanDt>>,
    srcs: &[TensorRef],
    x_at: usize,
    extra: &[TensorRef],
) -> Result<Option<(Vec<f32>, Layout)>> {
    let Some(d) = dt_proj else {
        return Ok(None);
    };
    let (mut x, w) = (srcs[x_at + 1], &extra[0]);
    let dims = [x.dims()[0], x.dims()[1], w.dims()[0]];
    let shape = weft_graph::Shape::new(&dims)
        .ok_or_else(|| BackendError::Device(format!("a scan's dt of shape {dims:?}")))?;
    // the activation's rows normalised first (times the norm's weight)
    let weighted = d.x_norm.is_some_and(|n| n.weighted);
    let normed: Vec<f32>;
    if let Some(n) = d.x_norm {
        normed = normed_rows(n.kind, &x, weighted.then(|| &extra[1]));
        x = TensorRef::dense(&normed, x.layout.shape);
    }
    let mut product = vec![0.0; shape.numel()];
    matmul::matmul(&x, w, &mut product);
    let mut dt = vec![0.0; shape.numel()];
    let more = &extra[1 + weighted as usize..];
    apply_program(&d.program, &d.shapes, shape, &product, more, &mut dt)?;
    Ok(Some((dt, Layout::contiguous(shape))))
}

/// The rows of `x` (dense) normalised, times the norm's `weight` when it has one.
fn normed_rows(kind: weft_graph::NormKind, x: &TensorRef, weight: Option<&TensorRef>) -> Vec<f32> {
    let mut v = x.f32().into_owned();
    let d = x.layout.shape.last();
    elementwise::normalize_rows(kind, d, &mut v);
    if let Some(w) = weight {
        let w = w.f32();
        v.chunks_mut(d)
            .for_each(|row| row.iter_mut().zip(w.iter()).for_each(|(a, b)| *a *= b));
    }
    v
}

/// A scan's `b` and `c` rows normalised, each times its weight (`Op::SsmScan::bc_norm`):
/// `srcs` the op's own sources with `b` at `b_at`, `weights` from the norms' weights on.
fn scan_bc(
    bc_norm: &Option<weft_graph::BcNorm>,
    srcs: &[TensorRef],
    b_at: usize,
    weights: &[TensorRef],
) -> Option<SourcePair> {
    let b = (*bc_norm)?;
    let mut w = weights.iter();
    Some([0, 1].map(|j| {
        let weight = if b.weighted[j] { w.next() } else { None };
        let x = &srcs[b_at + j];
        (
            normed_rows(b.kind, x, weight),
            Layout::contiguous(x.layout.shape),
        )
    }))
}

/// `srcs` with source `at` replaced by `value`, when given.
fn with_source<'a>(
    srcs: &[TensorRef<'a>],
    at: usize,
    value: Option<&'a (Vec<f32>, Layout)>,
) -> Vec<TensorRef<'a>> {
    with_values(srcs, at, value.map(std::slice::from_ref))
}

/// Computes `op` (the node's op, or its epilogue's inner op) from its sources into `out`.
fn execute_op(op: &Op, node: &weft_graph::Node, s: &[TensorRef], out: &mut [u8]) -> Result<()> {
    let shape = node.shape();
    // ids chosen here: the top k of each row of logits (`Op::ids_source`)
    let chosen: Vec<i32>;
    let with_ids: Vec<TensorRef>;
    let s = match op.ids_source(node.numel(), |i| s.get(i).map(|t| t.layout.shape)) {
        Some((at, k)) if s[at].dtype == DType::F32 => {
            let logits = &s[at];
            let mut dims = logits.dims().to_vec();
            let last = dims.len() - 1;
            dims[last] = k;
            let ids_shape = weft_graph::Shape::new(&dims)
                .ok_or_else(|| BackendError::Device(format!("{}: no ids to choose", node.name)))?;
            let mut ids = vec![0i32; ids_shape.numel()];
            rows::top_k(logits, k, &mut ids);
            chosen = ids;
            let mut srcs = s.to_vec();
            srcs[at] = TensorRef {
                bytes: bytemuck::cast_slice(&chosen),
                layout: Layout::contiguous(ids_shape),
                dtype: DType::I32,
            };
            with_ids = srcs;
            &with_ids[..]
        }
        _ => s,
    };
    match op {
        Op::Contiguous => elementwise::contiguous(&s[0], out),
        Op::Fused(p) => elementwise::fused(p, shape, s, f32s(out)),
        Op::Unary(_) | Op::Binary(_) => {
            let p = op.program().expect("elementwise ops have programs");
            elementwise::fused(&p, shape, s, f32s(out))
        }
        // one activation row times each weight, the outputs side by side
        Op::MatMulCat => matmul::matvec_cat(&s[0], &s[1..], f32s(out)),
        Op::MatMul => {
            let out = f32s(out);
            matmul::matmul(&s[0], &s[1], out);
            // a residual folded in by the matmul_add pass
            if let Some(r) = s.get(2) {
                out.iter_mut()
                    .zip(r.f32().iter())
                    .for_each(|(o, &r)| *o += r);
            }
        }
        Op::MatMulId => {
            // one weight, or a pair's two (`[x, w_a, ids, w_b]`), products one after the other
            let ws: Vec<&TensorRef> = s[1..].iter().step_by(2).collect();
            matmul::matmul_id(&s[0], &ws, &s[2], &node.name, f32s(out))?
        }
        Op::GetRows => matmul::get_rows(&s[0], &s[1], &node.name, f32s(out))?,
        Op::RmsNorm { eps } => norm(weft_graph::NormKind::Rms { eps: *eps }, &s[0], f32s(out)),
        Op::L2Norm { eps } => norm(weft_graph::NormKind::L2 { eps: *eps }, &s[0], f32s(out)),
        Op::SoftMax {
            scale,
            gathered: true,
            ..
        } => {
            // the values get_rows would pick, then their softmax
            let mut x = vec![0.0; shape.numel()];
            matmul::get_rows(&s[0], &s[1], &node.name, &mut x)?;
            let x = TensorRef::dense(&x, shape);
            rows::softmax(&x, None, *scale, f32s(out))
        }
        Op::SoftMax { scale, masked, .. } => {
            rows::softmax(&s[0], masked.then(|| &s[1]), *scale, f32s(out))
        }
        Op::Rope(p) => attention::rope(&s[0], &s[1], *p, f32s(out)),
        Op::Attention {
            scale,
            causal,
            masked,
            gated,
            ..
        } => {
            let mask = masked.then(|| &s[3]);
            let gate = gated.then(|| &s[if *masked { 4 } else { 3 }]);
            attention::attention(&s[0], &s[1], &s[2], mask, gate, *scale, *causal, f32s(out))
        }
        Op::Concat { dim } => elementwise::concat(&s[0], &s[1], *dim, f32s(out)),
        Op::SsmConv => ssm::ssm_conv(&s[0], &s[1], f32s(out)),
        Op::SsmScan { dt_proj, bc_norm } => {
            let own = op.core(s.len()).1;
            let dt = scan_dt(dt_proj, &s[..own], 1, &s[own..])?;
            let more = own + dt_proj.as_ref().map_or(0, |d| d.extra_sources());
            let bc = scan_bc(bc_norm, &s[..own], 4, &s[more..]);
            let srcs = with_source(&s[..own], 2, dt.as_ref());
            ssm::ssm_scan(&with_qk(&srcs, 4, bc.as_ref()), f32s(out))
        }
        Op::GatedDeltaNet { qk_norm, gates, .. } => {
            let own = s.len() - gates.as_ref().map_or(0, |gt| gt.extra_sources());
            let [normed, gated] = delta_inputs(qk_norm, gates, &s[..own], 1, &s[own..]);
            let s = with_qk(&s[..own], 1, normed.as_ref());
            let s = with_qk(&s, 4, gated.as_ref());
            delta::gated_delta_net(&s, f32s(out))
        }
        Op::TopK { k } => rows::top_k(&s[0], *k, bytemuck::cast_slice_mut(out)),
        Op::Reduce(r) => rows::reduce(*r, &s[0], out),
        Op::Input { .. } | Op::External { .. } | Op::View | Op::StoreRows | Op::Epilogue(_) => {
            return Err(BackendError::Unsupported {
                backend: "cpu",
                op: node.op.name(),
                node: node.name.clone(),
                detail: "not an executable node".into(),
            });
        }
    }
    Ok(())
}

/// Two dense tensors put over two adjacent sources (see [`with_qk`]).
type SourcePair = [(Vec<f32>, Layout); 2];

/// What the delta rule reads in place of its own sources, when the op carries programs for
/// them: q and k through their norms, and g and beta computed from theirs. `srcs` are the
/// op's sources with `q` at `q_at`; `extra`, the gate programs' other sources.
fn delta_inputs(
    qk_norm: &Option<Box<weft_graph::QkNorm>>,
    gates: &Option<Box<weft_graph::DeltaGates>>,
    srcs: &[TensorRef],
    q_at: usize,
    extra: &[TensorRef],
) -> [Option<SourcePair>; 2] {
    [
        qk_norm
            .as_ref()
            .map(|n| normed_qk(n, &srcs[q_at], &srcs[q_at + 1])),
        gates
            .as_ref()
            .map(|gt| computed_gates(gt, srcs, q_at, extra)),
    ]
}

/// The delta rule's q and k through their row programs (`Op::GatedDeltaNet::qk_norm`).
fn normed_qk(n: &weft_graph::QkNorm, q: &TensorRef, k: &TensorRef) -> SourcePair {
    [(&n.q, q), (&n.k, k)].map(|(p, t)| {
        let mut out = vec![0.0; t.numel()];
        elementwise::fused(p, t.layout.shape, std::slice::from_ref(t), &mut out);
        (out, Layout::contiguous(t.layout.shape))
    })
}

/// The delta rule's `g` and `beta` through their programs (`Op::GatedDeltaNet::gates`), laid
/// out as `[S, T, Hv]`: `srcs` are the op's sources with `q` at `q_at` (the programs' first
/// sources 3 and 4 after it), `extra` the programs' other sources.
fn computed_gates(
    gt: &weft_graph::DeltaGates,
    srcs: &[TensorRef],
    q_at: usize,
    extra: &[TensorRef],
) -> SourcePair {
    // [S, T, Hv] from v [S, T, Hv, Dv]
    let v = srcs[q_at + 2].layout.shape;
    let gate_shape = weft_graph::Shape::new(&v.dims()[..3]).unwrap_or(v);
    let (eg, eb) = extra.split_at(gt.extra[0]);
    [(0, eg), (1, eb)].map(|(j, more)| {
        let shape = gt.shapes[j];
        let inputs: Vec<TensorRef> = std::iter::once(srcs[q_at + 3 + j])
            .chain(more.iter().copied())
            .collect();
        let mut out = vec![0.0; shape.numel()];
        elementwise::fused(&gt.programs[j], shape, &inputs, &mut out);
        (out, Layout::contiguous(gate_shape))
    })
}

/// `srcs` with sources `at` and `at + 1` replaced by `normed` values, when given.
fn with_qk<'a>(
    srcs: &[TensorRef<'a>],
    at: usize,
    normed: Option<&'a SourcePair>,
) -> Vec<TensorRef<'a>> {
    with_values(srcs, at, normed.map(|n| &n[..]))
}

/// `srcs` with the sources from `at` on replaced by `values`, when given.
fn with_values<'a>(
    srcs: &[TensorRef<'a>],
    at: usize,
    values: Option<&'a [(Vec<f32>, Layout)]>,
) -> Vec<TensorRef<'a>> {
    let mut out = srcs.to_vec();
    if let Some(n) = values {
        for (j, (v, layout)) in n.iter().enumerate() {
            out[at + j] = TensorRef {
                bytes: bytemuck::cast_slice(v),
                layout: *layout,
                dtype: DType::F32,
            };
        }
    }
    out
}

fn f32s(out: &mut [u8]) -> &mut [f32] {
    bytemuck::cast_slice_mut(out)
}

fn norm(kind: weft_graph::NormKind, x: &TensorRef, out: &mut [f32]) {
    out.copy_from_slice(&x.f32());
    elementwise::normalize_rows(kind, x.layout.shape.last(), out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use weft_graph::{Access, GraphBuilder, PlanOptions, plan};

    /// 8-byte aligned host bytes, as a mapped file's pages are.
    struct Words(Vec<u64>);

    impl AsRef<[u8]> for Words {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }

    /// `x [1, 4] · w [4, 4]ᵀ` with `w` in `buf`.
    fn product(be: &mut CpuBackend, buf: BufferId) -> Vec<f32> {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 4], DType::F32).unwrap();
        let w = b
            .external("w", &[4, 4], DType::F32, buf, Access::ReadOnly)
            .unwrap();
        let y = b.matmul(x, w).unwrap();
        b.output(y, "y").unwrap();
        let p = be
            .compile(&plan(&b.finish(), PlanOptions::default()))
            .unwrap();
        let out = be
            .run(p, &[("x", HostData::F32(&[1.0, -2.0, 0.5, 3.0]))])
            .unwrap();
        out[0].to_f32()
    }

    #[test]
    fn mapped_host_bytes_are_read_in_place_and_read_only() {
        let w: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.0).collect();
        let words: Vec<u64> = bytemuck::cast_slice::<f32, u64>(&w).to_vec();
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(Words(words));
        let all = || HostBytes::new(owner.clone(), 0..64).unwrap();
        assert!(HostBytes::new(owner.clone(), 8..72).is_none());

        // off by default: the caller copies
        let mut be = CpuBackend::new();
        assert!(be.map_host(all()).unwrap().is_none());
        let copy = be.alloc(64).unwrap();
        be.upload(copy, 0, all().bytes()).unwrap();
        let want = product(&mut be, copy);

        let mut be = CpuBackend::new().map_weights(true);
        // (bytes not 8-byte aligned are copied instead)
        let odd = HostBytes::new(owner.clone(), 4..36).unwrap();
        assert!(be.map_host(odd).unwrap().is_none());
        let mapped = be.map_host(all()).unwrap().expect("aligned bytes map");
        assert_eq!(be.buffer_size(mapped).unwrap(), 64);
        let mut back = vec![0u8; 64];
        be.download(mapped, 0, &mut back).unwrap();
        assert_eq!(back, all().bytes());
        assert_eq!(product(&mut be, mapped), want);
        let err = be.upload(mapped, 0, &[0; 4]).unwrap_err();
        assert!(
            matches!(err, BackendError::ReadOnlyBuffer(id) if id == mapped.0),
            "{err}"
        );
    }
}
