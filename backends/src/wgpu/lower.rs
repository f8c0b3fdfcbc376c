//! Lowers each scheduled node to a kernel: the shader spec, the parameter words the kernel
//! reads (layouts documented at the top of each WGSL file) and the number of workgroups.

use crate::{BackendError, Result};
use weft_graph::passes::MAX_X_GROUPS;
use weft_graph::{
    BufferId, DType, DeltaForm, FusedProgram, Graph, Layout, NodeId, NormKind, Op, Plan, ReduceOp,
    RopeMode,
};
use weft_shaders::{
    BcNormSpec, DELTA_CHUNK, EpilogueSpec, Home, Kernel, ScanDtSpec, Source, Spec, TopKSpec,
    XNormSpec, XProgSpec, delta_chunk_words, stage_len,
};

/// Most parameter words a dispatch may use (the uniform block is 64 × vec4<u32>).
pub const MAX_PARAMS: usize = 256;

/// Prompts of at least this many tokens run the selective scan in 16 chunks of at least two
/// tokens each (`ssm_scan_chunks` for Mamba1's states, `ssm_scan_chunks_wide` for Mamba2's).
pub const SCAN_CHUNKS_FROM: usize = 32;

/// An attention of fewer (query, head) rows than this, over more keys than one chunk, runs in
/// two passes (flash decoding): a workgroup per row and chunk of keys, then one per row merging
/// them; one workgroup per row would leave most of a GPU idle in decode.
pub const SPLIT_ATTENTION_BELOW: usize = 256;

/// The split attention's smallest chunk of keys (`LowerOptions::attention_chunk`): chunks grow
/// by powers of two up to 64 keys so that a row has at most 64 of them until 4096 keys. Small
/// chunks put more workgroups on the GPU and shorten each one's serial walk over its keys.
pub const ATTENTION_CHUNK: usize = 16;

/// Attentions over at least this many queries (a prompt's) whose heads have at most 256 dims
/// and that neither store nor rope run as `attention_rows`: blocks of 16 queries (8 where a
/// head has over 128 dims), each tile of keys and values staged once per block (unless their
/// rows are few enough for the split, which spreads a long row of keys wider: a short prompt
/// after a long cached prefix).
pub const ATTENTION_ROWS_FROM: usize = 8;

/// A mixture's product over at least this many (token, slot) rows per expert, on average, runs
/// tiled: the rows listed per expert (`moe_rows`), then each expert's weights staged once per
/// tile of 64 of its rows (`matmul_id_rows`), where decode's form reads an expert's rows again
/// for every row. (Lavapipe, 8 experts of 1024 x 1024 f16, top-2: 64 rows an expert 5x faster
/// tiled, 8 rows an expert 2.4x slower.)
pub const MOE_TILE_ROWS: usize = 16;

/// Prompts of at least this many tokens run the delta rule in chunks (`gated_delta_prep`, then
/// `gated_delta_chunks`) instead of walking the tokens one at a time.
pub const DELTA_CHUNKS_FROM: usize = 32;

/// Choices the lowering leaves to its caller.
#[derive(Clone, Copy, Debug)]
pub struct LowerOptions {
    /// A long prompt's delta rule in its chunked form (off when its workspace would not fit
    /// one binding).
    pub delta_chunks: bool,
    /// The split attention's smallest chunk of keys ([`ATTENTION_CHUNK`]; 16, 32 or 64), or 0
    /// for attention in one pass however few its rows (`WEFT_ATTENTION_CHUNK`, for measuring;
    /// see [`SPLIT_ATTENTION_BELOW`]).
    pub attention_chunk: usize,
    /// Prompts' attention by blocks of queries ([`ATTENTION_ROWS_FROM`]; `WEFT_ATTENTION_ROWS=0`
    /// turns it off, for measuring).
    pub attention_rows: bool,
    /// The bytes of workgroup memory a mat-vec may stage its row in (`stage_len`): the
    /// adapter's, or 0 to stage none (`WEFT_X_STAGED=0`).
    pub workgroup_memory: u32,
}

/// One dispatch, before pipelines and bind groups exist.
#[derive(Debug)]
pub struct Lowered {
    pub spec: Spec,
    pub params: Vec<u32>,
    pub groups: u32,
    /// External buffers bound at `@binding(2 + i)`.
    pub externals: Vec<BufferId>,
    /// Bytes of workspace the dispatch uses past the plan's arena (from [`workspace_at`]).
    pub workspace: u64,
}

/// Byte offset in the arena buffer of the workspace that dispatches share (each uses it only
/// while it runs): past the plan's tensors.
pub fn workspace_at(plan: &Plan) -> u64 {
    plan.arena_bytes
        .next_multiple_of(weft_graph::plan::ARENA_ALIGN) as u64
}

struct Ctx<'a> {
    g: &'a Graph,
    plan: &'a Plan,
    node: NodeId,
    externals: Vec<BufferId>,
    sources: Vec<Source>,
}

impl Ctx<'_> {
    fn fail(&self, detail: impl Into<String>) -> BackendError {
        let n = self.g.node(self.node);
        BackendError::Unsupported {
            backend: "wgpu",
            op: n.op.name(),
            node: n.name.clone(),
            detail: detail.into(),
        }
    }

    /// Where a node's storage is bound, and the element index of its storage's start.
    fn place(&mut self, id: NodeId) -> (Home, u32) {
        let base = self.g.storage_of(id);
        match &self.g.node(base).op {
            Op::External { buffer, .. } => {
                let b = match self.externals.iter().position(|x| x == buffer) {
                    Some(b) => b,
                    None => {
                        self.externals.push(*buffer);
                        self.externals.len() - 1
                    }
                };
                (Home::External(b as u32), 0)
            }
            _ => (
                Home::Arena,
                self.plan.slots[base.index()].map_or(0, |s| s.offset / 4) as u32,
            ),
        }
    }

    /// Registers source `id` (in source order) and returns its element offset.
    fn src(&mut self, id: NodeId) -> u32 {
        let (home, base) = self.place(id);
        let n = self.g.node(id);
        self.sources.push(Source {
            home,
            dtype: n.dtype,
        });
        base + n.layout.offset as u32
    }

    /// Registers source `id` and appends its element offset to `params`: the source's index and
    /// the parameter word that holds the offset.
    fn src_word(&mut self, id: NodeId, params: &mut Vec<u32>) -> (usize, u32) {
        let j = self.sources.len();
        params.push(self.src(id));
        (j, params.len() as u32 - 1)
    }

    fn out(&self) -> u32 {
        self.plan.slots[self.node.index()].map_or(0, |s| s.offset / 4) as u32
    }
}

fn f(x: f32) -> u32 {
    x.to_bits()
}

/// The first `n` strides of `l`, as parameter words.
fn strides(l: Layout, n: usize) -> impl Iterator<Item = u32> {
    l.strides.into_iter().take(n).map(|st| st as u32)
}

fn padded4(dims: &[usize]) -> [u32; 4] {
    let mut o = [1u32; 4];
    o[4 - dims.len()..]
        .iter_mut()
        .zip(dims)
        .for_each(|(a, &b)| *a = b as u32);
    o
}

fn threads(n: usize) -> u32 {
    n.div_ceil(64) as u32
}

/// Parameters shared by `elementwise`, `fused_norm` and `copy_bits`.
fn elementwise_params(c: &mut Ctx, srcs: &[NodeId]) -> Result<Vec<u32>> {
    let node = c.g.node(c.node);
    let shape = node.shape();
    let mut p = vec![shape.numel() as u32, c.out()];
    p.extend(padded4(shape.dims()));
    for &s in srcs {
        p.extend(broadcast_source(c, s, shape)?);
    }
    Ok(p)
}

/// Registers source `s` and returns its element offset and its 4 strides broadcast to `shape`
/// (0 on broadcast dimensions).
fn broadcast_source(c: &mut Ctx, s: NodeId, shape: weft_graph::Shape) -> Result<[u32; 5]> {
    let off = c.src(s);
    let l: Layout = c.g.node(s).layout;
    let b = l
        .broadcast_to(shape)
        .ok_or_else(|| c.fail("source does not broadcast"))?;
    let mut p = [off, 0, 0, 0, 0];
    let r = shape.rank();
    for i in 0..r {
        p[1 + 4 - r + i] = b.strides[i] as u32;
    }
    Ok(p)
}

/// The program an elementwise kernel runs for `op` (a copy for `contiguous`).
fn program_of(op: &Op) -> FusedProgram {
    op.program().unwrap_or_else(FusedProgram::identity)
}

/// The dispatches of node `id`: one, or two: a long prompt's delta rule in its chunked form
/// (unless `opts.delta_chunks` is false), an attention split over chunks of keys, a prompt's
/// experts' products tiled.
pub fn lower(g: &Graph, plan: &Plan, id: NodeId, opts: LowerOptions) -> Result<Vec<Lowered>> {
    let node = g.node(id);
    let mut c = Ctx {
        g,
        plan,
        node: id,
        externals: vec![],
        sources: vec![],
    };
    // an epilogue's inner op reads the first sources; the program the rest
    let (op, inner_srcs) = node.op.core(node.srcs.len());
    let s = &node.srcs[..inner_srcs];
    let dims = |i: usize| g.node(s[i]).shape().dims().to_vec();
    // ids per row of an ids source (I32 ids, or logits whose top k the kernel chooses)
    let ids_source = op.ids_source(node.numel(), |i| s.get(i).map(|&n| g.node(n).shape()));
    let per_row = ids_source.map_or(0, |(_, k)| k as u32);
    let mut aliases = vec![];
    let mut store = None;
    let mut puts = vec![];
    let mut qk = None;
    let mut gates: Option<[EpilogueSpec; 2]> = None;
    let mut scan_dt = None;
    let mut bc = None;
    // the delta rule in chunks: (workgroups of its two passes, workspace bytes)
    let mut delta_chunks = None;
    // attention split over chunks of keys: (query rows × heads, chunks, workspace bytes, the
    // phase's parameter word)
    let mut split_attention = None;
    // the experts' products tiled: (the tiled kernel, workgroups listing the rows, tiling
    // them, workspace bytes)
    let mut moe_tiles = None;
    let (kernel, mut params, groups): (Kernel, Vec<u32>, u32) = match op {
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Fused(_)
        | Op::RmsNorm { .. }
        | Op::L2Norm { .. }
        | Op::Contiguous => {
            let prog = program_of(op);
            let mut p = elementwise_params(&mut c, s)?;
            let n = node.numel();
            match prog.head {
                Some(h) => {
                    let (eps, kind, max) = match h {
                        NormKind::Rms { eps } => (eps, 0, 0.0),
                        NormKind::L2 { eps } => (eps, 1, 0.0),
                        NormKind::Sum { min, max } => (min, 2, max),
                    };
                    p.extend([f(eps), kind, f(max)]);
                    let rows = node.shape().rows();
                    (Kernel::FusedNorm, p, rows as u32)
                }
                None if node.dtype == DType::I32 => (Kernel::CopyBits, p, threads(n)),
                None => (Kernel::Elementwise, p, threads(n)),
            }
        }
        Op::MatMul => {
            let (xd, wd) = (dims(0), dims(1));
            let (m, k, n) = (xd[xd.len() - 2], xd[xd.len() - 1], wd[wd.len() - 2]);
            let xb = padded_batch(&xd[..xd.len() - 2]);
            let wb = padded_batch(&wd[..wd.len() - 2]);
            // prompts: up to 64 rows of x per workgroup, each weight element decoded once for all
            let mt = m.clamp(1, 64);
            let kernel = if m == 1 {
                Kernel::MatMul
            } else {
                Kernel::MatMulRows
            };
            // `matmul` computes 4 outputs per workgroup; `matmul_rows` a tile of a row block
            // by 64 weight rows
            let per = if m == 1 { 4 } else { 64 };
            let units = node.numel() / m * m.div_ceil(mt);
            let (xo, wo) = (c.src(s[0]), c.src(s[1]));
            // a residual folded in by the matmul_add pass (source 2, the output's layout)
            let residual = s.get(2).map(|&r| c.src(r));
            let p = vec![
                m as u32,
                n as u32,
                k as u32,
                xo,
                wo,
                c.out(),
                xb[1],
                wb[0],
                wb[1],
                units as u32,
                n as u32,
                0,
                mt as u32,
                per as u32,
                residual.unwrap_or(0),
                g.node(s[0]).layout.row_stride().unwrap_or(k) as u32,
            ];
            let groups = matmul_groups(&p);
            (kernel, p, groups)
        }
        Op::MatMulCat => {
            let xo = c.src(s[0]);
            let total = node.shape().last();
            let mut p = vec![
                total as u32,
                (s.len() - 1) as u32,
                dims(0)[dims(0).len() - 1] as u32,
                xo,
                c.out(),
            ];
            let mut col = 0;
            for &w in &s[1..] {
                let wo = c.src(w);
                p.extend([col as u32, wo]);
                col += g.node(w).shape().dims()[0];
            }
            // a pair's epilogue meets the two products in the kernel (N columns, not 2N)
            let kernel = match &node.op {
                Op::Epilogue(e) if e.pair => Kernel::MatMulPair,
                _ => Kernel::MatMulCat,
            };
            (kernel, p, total.div_ceil(4) as u32)
        }
        Op::MatMulId => {
            let (xd, wd) = (dims(0), dims(1));
            let (xo, wo, io) = (c.src(s[0]), c.src(s[1]), c.src(s[2]));
            let total = node.numel();
            let mut p = vec![
                per_row,
                wd[1] as u32,
                wd[2] as u32,
                xo,
                wo,
                io,
                c.out(),
                xd[1] as u32,
                wd[0] as u32,
                total as u32,
            ];
            // the experts' pair: a second weight of the same shape (source 3)
            let kernel = match &node.op {
                Op::Epilogue(e) if e.pair => {
                    p.push(c.src(s[3]));
                    Kernel::MatMulIdPair
                }
                _ => {
                    p.push(0);
                    Kernel::MatMulId
                }
            };
            // a prompt's rows: listed per expert, then tiled (`moe_rows`, `matmul_id_rows`)
            let (experts, n) = (wd[0], wd[1]);
            let rows = total / n.max(1);
            p.push((workspace_at(plan) / 4) as u32);
            if rows >= MOE_TILE_ROWS * experts {
                let tiled = if kernel == Kernel::MatMulIdPair {
                    Kernel::MatMulIdPairRows
                } else {
                    Kernel::MatMulIdRows
                };
                let bytes = (experts * (rows + 1)) as u64 * 4;
                moe_tiles = Some((
                    tiled,
                    experts as u32,
                    (experts * n.div_ceil(64)) as u32,
                    bytes,
                ));
            }
            (kernel, p, total.div_ceil(4) as u32)
        }
        Op::GetRows => {
            let td = dims(0);
            let (to, io) = (c.src(s[0]), c.src(s[1]));
            let total = node.numel();
            let p = vec![
                total as u32,
                td[td.len() - 1] as u32,
                td[td.len() - 2] as u32,
                per_row,
                to,
                io,
                c.out(),
                0,
                td[td.len() - 2] as u32,
            ];
            (Kernel::GetRows, p, threads(total))
        }
        Op::SoftMax {
            scale,
            masked,
            gathered,
        } => {
            let shape = node.shape();
            let xo = c.src(s[0]);
            let mut p = vec![
                shape.rows() as u32,
                shape.last() as u32,
                xo,
                c.out(),
                f(*scale),
                *masked as u32,
            ];
            if *masked {
                let mo = c.src(s[1]);
                let ml = g
                    .node(s[1])
                    .layout
                    .broadcast_to(shape)
                    .ok_or_else(|| c.fail("mask does not broadcast"))?;
                let mut st = [0u32; 4];
                let r = shape.rank();
                for i in 0..r {
                    st[4 - r + i] = ml.strides[i] as u32;
                }
                p.push(mo);
                p.extend(st);
                aliases.push(("ldmask", 1));
            } else {
                p.extend([0; 5]);
            }
            let d = padded4(shape.dims());
            p.extend([d[0], d[1], d[2]]);
            // chosen values read through their indices: the table's row and element strides,
            // the indices' offset
            if *gathered {
                let tl = g.node(s[0]).layout;
                p.extend([1, tl.strides[0] as u32, tl.strides[1] as u32, c.src(s[1])]);
                aliases.push(("ldidx", 1));
            } else {
                p.extend([0; 4]);
            }
            (Kernel::SoftMax, p, shape.rows() as u32)
        }
        Op::Rope(r) => {
            let xd = dims(0);
            let (xo, po) = (c.src(s[0]), c.src(s[1]));
            let total = node.numel();
            let mode = match r.mode {
                RopeMode::Normal => 0,
                RopeMode::Neox => 1,
            };
            let mut p = vec![
                total as u32,
                xd[1] as u32,
                xd[2] as u32,
                r.n_dims as u32,
                mode,
                xo,
                po,
                c.out(),
            ];
            p.extend(rope_freqs(r));
            (Kernel::Rope, p, threads(total))
        }
        Op::Attention {
            scale,
            causal,
            masked,
            gated,
            stores,
            rope,
        } => {
            let (qd, kd, vd) = (dims(0), dims(1), dims(2));
            if vd[2] > 256 || qd[2] > 256 {
                return Err(c.fail(format!(
                    "heads of {} and {} dims (at most 256)",
                    qd[2], vd[2]
                )));
            }
            let (qo, ko, vo) = (c.src(s[0]), c.src(s[1]), c.src(s[2]));
            let mut mo = 0;
            let mut go = 0;
            let mut next = 3;
            if *masked {
                mo = c.src(s[next]);
                aliases.push(("ldmask", next));
                next += 1;
            }
            // (the gate may be strided: its strides follow the rope words)
            let mut gate_strides = vec![0u32; 3];
            if *gated {
                go = c.src(s[next]);
                aliases.push(("ldgate", next));
                gate_strides = strides(g.node(s[next]).layout, 3).collect();
            }
            // with stores, the new key and value, their row, and the caches written a word at a
            // time (both are sources 1 and 2, views of the caches from row 0)
            let mut store_words = [0u32; 4];
            // (with rope, the position comes last)
            let n = s.len() - rope.is_some() as usize;
            if *stores {
                store_words[0] = 1;
                for (j, alias) in ["ldkn", "ldvn", "ldidx"].into_iter().enumerate() {
                    aliases.push((alias, c.sources.len()));
                    store_words[1 + j] = c.src(s[n - 3 + j]);
                }
                for cache in [s[1], s[2]] {
                    let (Home::External(b), _) = c.place(cache) else {
                        return Err(c.fail("the KV window is not in a cache"));
                    };
                    puts.push((b, g.node(cache).dtype));
                }
            }
            let mut p = vec![
                qd[0] as u32,
                qd[1] as u32,
                qd[2] as u32,
                kd[0] as u32,
                kd[1] as u32,
                vd[2] as u32,
                f(*scale),
                *causal as u32,
                *masked as u32,
                *gated as u32,
                qo,
                ko,
                vo,
                mo,
                go,
                c.out(),
            ];
            p.extend(store_words);
            // q and the new key rotated as they are loaded
            match rope {
                Some(r) => {
                    aliases.push(("ldpos", c.sources.len()));
                    let po = c.src(s[n]);
                    let mode = (r.mode == RopeMode::Neox) as u32;
                    p.extend([1, mode, r.n_dims as u32, po]);
                    p.extend(rope_freqs(r));
                }
                None => p.extend([0; 4]),
            }
            p.extend(gate_strides);
            // few queries over many keys (decode): chunks of keys side by side, merged
            let rows = qd[0] * qd[1];
            let chunk = kd[0]
                .div_ceil(64)
                .next_power_of_two()
                .clamp(opts.attention_chunk.min(64), 64);
            let chunks = kd[0].div_ceil(chunk);
            if rows < SPLIT_ATTENTION_BELOW && chunks > 1 && opts.attention_chunk > 0 {
                let bytes = (rows * chunks * (2 + vd[2])) as u64 * 4;
                split_attention = Some((rows as u32, chunks as u32, bytes, p.len() + 1));
                p.extend([
                    chunks as u32,
                    1,
                    (workspace_at(plan) / 4) as u32,
                    chunk as u32,
                ]);
                (Kernel::Attention, p, rows as u32)
            } else if qd[0] >= ATTENTION_ROWS_FROM
                && qd[2] <= 256
                && vd[2] <= 256
                && !*stores
                && rope.is_none()
                && opts.attention_rows
            {
                // a prompt's queries by blocks, the keys staged once for a block: the block's
                // q rows and a chunk of K fit 16 KiB
                let block = if qd[2].max(vd[2]) > 128 { 8 } else { 16 };
                p.extend([block as u32, 0, 0, 0]);
                let groups = qd[0].div_ceil(block) * qd[1];
                (Kernel::AttentionRows, p, groups as u32)
            } else {
                p.extend([0, 0, 0, 0]);
                (Kernel::Attention, p, rows as u32)
            }
        }
        Op::Concat { dim } => {
            let (ad, bd) = (dims(0), dims(1));
            let ia: usize = ad[*dim..].iter().product();
            let ib: usize = bd[*dim..].iter().product();
            let (ao, bo) = (c.src(s[0]), c.src(s[1]));
            let total = node.numel();
            (
                Kernel::Concat,
                vec![total as u32, ia as u32, ib as u32, ao, bo, c.out()],
                threads(total),
            )
        }
        Op::SsmConv if s.len() == 4 => {
            // the window kept in its cache, read and written in place
            let Home::External(b) = c.place(s[0]).0 else {
                return Err(c.fail("the window is not in a cache"));
            };
            store = Some((b, DType::F32));
            let (xd, k) = (dims(1), dims(2)[1]);
            if k > 8 {
                return Err(c.fail(format!("kernel width {k} (at most 8)")));
            }
            let offs: Vec<u32> = (0..4).map(|i| c.src(s[i])).collect();
            let total = xd[0] * xd[2];
            let mut p = vec![
                total as u32,
                xd[1] as u32,
                xd[2] as u32,
                k as u32,
                offs[0],
                offs[1],
                offs[2],
                c.out(),
                offs[3],
            ];
            // x may be a strided view (a projection's columns)
            p.extend(strides(g.node(s[1]).layout, 3));
            // a prompt's tokens in up to 16 blocks (a power of two) of at least 4, side by side
            let blocks = 1usize << (xd[1] / 4).clamp(1, 16).ilog2();
            p.push(blocks as u32);
            (Kernel::SsmConvCached, p, threads(total * blocks))
        }
        Op::SsmConv => {
            let (xd, wd) = (dims(0), dims(1));
            let (xo, wo) = (c.src(s[0]), c.src(s[1]));
            let total = node.numel();
            let t = xd[1] + 1 - wd[1];
            let p = vec![
                total as u32,
                t as u32,
                xd[2] as u32,
                wd[1] as u32,
                xd[1] as u32,
                xo,
                wo,
                c.out(),
            ];
            (Kernel::SsmConv, p, threads(total))
        }
        Op::SsmScan { dt_proj, bc_norm } => {
            let (xd, ad, bd) = (dims(1), dims(3), dims(4));
            let [sn, h, pp, n] = [xd[0], xd[2], xd[3], bd[3]];
            if n > 256 {
                return Err(c.fail(format!("state size {n} (at most 256)")));
            }
            // with slots, source 0 is the state cache, read and written in place
            if s.len() == 7 {
                let Home::External(b) = c.place(s[0]).0 else {
                    return Err(c.fail("the state is not in a cache"));
                };
                store = Some((b, DType::F32));
            }
            let offs: Vec<u32> = (0..s.len()).map(|i| c.src(s[i])).collect();
            let y = c.out();
            let mut p = vec![
                sn as u32,
                xd[1] as u32,
                h as u32,
                pp as u32,
                n as u32,
                bd[2] as u32,
                (ad[1] == n && n > 1) as u32,
                offs[0],
                offs[1],
                offs[2],
                offs[3],
                offs[4],
                offs[5],
                y,
                y + (sn * xd[1] * h * pp) as u32,
                offs.get(6).copied().unwrap_or(0),
            ];
            // x, B and C read through their strides (views of a projection's columns)
            for i in [1, 4, 5] {
                p.extend(strides(g.node(s[i]).layout, 4));
            }
            // dt from its projection: the weight, then its program's sources
            if let Some(d) = dt_proj {
                let w = node.srcs[s.len()];
                let (wn, xl) = (g.node(w), g.node(s[2]).layout);
                if !wn.layout.is_contiguous() || xl.shape.dims().len() != 3 {
                    return Err(c.fail("dt's projection: a weight not in rows, or x not [S, T, K]"));
                }
                let (weight, at) = c.src_word(w, &mut p);
                p.push(wn.shape().last() as u32);
                p.extend(strides(xl, 3));
                // the activation's rows normalised first, times the norm's weight
                let mut first = s.len() + 1;
                let x_norm = d.x_norm.map(|n| {
                    let weight = n.weighted.then(|| {
                        first += 1;
                        c.src_word(node.srcs[first - 1], &mut p)
                    });
                    XNormSpec {
                        kind: n.kind,
                        weight,
                        staged: 0,
                    }
                });
                let more = node.srcs[first..s.len() + d.extra_sources()].iter();
                let program = program_sources(
                    &mut c,
                    &mut p,
                    &d.program,
                    more.copied().zip(d.shapes.iter().copied()),
                )?;
                scan_dt = Some(Box::new(ScanDtSpec {
                    weight,
                    params: at,
                    program,
                    x_norm,
                }));
            }
            // B's and C's norms: their weights after the projection's sources
            if let Some(b) = bc_norm {
                let mut at = s.len() + dt_proj.as_ref().map_or(0, |d| d.extra_sources());
                let mut weights = [None; 2];
                for (j, w) in weights.iter_mut().enumerate() {
                    if b.weighted[j] {
                        *w = Some(c.src_word(node.srcs[at], &mut p));
                        at += 1;
                    }
                }
                bc = Some(BcNormSpec {
                    kind: b.kind,
                    weights,
                });
            }
            // states up to 128 over 16 lanes a row, a long prompt's tokens in chunks scanned
            // side by side; larger states over a workgroup
            let rows = sn * h * pp;
            let long = xd[1] >= SCAN_CHUNKS_FROM;
            if n <= 16 && long {
                (Kernel::SsmScanChunks, p, rows.div_ceil(8) as u32)
            } else if n > 32 && n <= 128 && long {
                (Kernel::SsmScanChunksWide, p, rows as u32)
            } else if n <= 32 {
                (Kernel::SsmScanLanes, p, rows.div_ceil(4) as u32)
            } else if n <= 128 {
                (Kernel::SsmScanLanesWide, p, rows.div_ceil(4) as u32)
            } else {
                (Kernel::SsmScan, p, (sn * h * pp) as u32)
            }
        }
        Op::GatedDeltaNet {
            form,
            qk_norm,
            gates: gate_programs,
        } => {
            qk = qk_norm.as_ref().map(|n| [n.q.clone(), n.k.clone()]);
            let (qd, vd) = (dims(1), dims(3));
            let [sn, hv, dv, dk] = [vd[0], vd[2], vd[3], qd[3]];
            if dk > 256 {
                return Err(c.fail(format!("key heads of {dk} dims (at most 256)")));
            }
            // with slots, source 0 is the state cache, read and written in place
            if s.len() == 7 {
                let Home::External(b) = c.place(s[0]).0 else {
                    return Err(c.fail("the state is not in a cache"));
                };
                store = Some((b, DType::F32));
            }
            let offs: Vec<u32> = (0..s.len()).map(|i| c.src(s[i])).collect();
            let y = c.out();
            let mut p = vec![
                sn as u32,
                qd[1] as u32,
                qd[2] as u32,
                hv as u32,
                dk as u32,
                dv as u32,
                offs[0],
                offs[1],
                offs[2],
                offs[3],
                offs[4],
                offs[5],
                y,
                y + (sn * qd[1] * hv * dv) as u32,
                offs.get(6).copied().unwrap_or(0),
            ];
            // v may be a strided view (a projection's columns)
            p.extend(strides(g.node(s[3]).layout, 4));
            // both forms compute the same function: a long prompt runs in chunks of the
            // kernels' own size, anything shorter walks its tokens
            let t = qd[1];
            let nc = t.div_ceil(DELTA_CHUNK as usize);
            let words = delta_chunk_words(dk as u32, dv as u32);
            p.extend([(workspace_at(plan) / 4) as u32, nc as u32, words]);
            if opts.delta_chunks && *form == DeltaForm::Chunked && t >= DELTA_CHUNKS_FROM {
                let bytes = (sn * hv * nc) as u64 * words as u64 * 4;
                delta_chunks = Some((
                    (sn * hv * nc) as u32,
                    (sn * hv * dv.div_ceil(4)) as u32,
                    bytes,
                ));
            }
            // the gates' programs: every source of each indexed like an epilogue's
            if let Some(gt) = gate_programs {
                let mut extra = node.srcs[inner_srcs..].iter().copied();
                let mut specs = vec![];
                for j in 0..2 {
                    let srcs: Vec<(NodeId, weft_graph::Shape)> = std::iter::once(s[4 + j])
                        .chain(extra.by_ref().take(gt.extra[j]))
                        .map(|x| (x, gt.shapes[j]))
                        .collect();
                    specs.push(program_sources(&mut c, &mut p, &gt.programs[j], srcs)?);
                }
                gates = specs.try_into().ok();
            }
            // a workgroup per 4 state rows of a (sequence, value head)
            (Kernel::GatedDeltaNet, p, (sn * hv * dv.div_ceil(4)) as u32)
        }
        Op::TopK { k } => {
            let shape = g.node(s[0]).shape();
            let xo = c.src(s[0]);
            let p = vec![
                shape.rows() as u32,
                shape.last() as u32,
                *k as u32,
                xo,
                c.out(),
            ];
            (Kernel::TopK, p, threads(shape.rows()))
        }
        Op::Reduce(r) => {
            let shape = g.node(s[0]).shape();
            let xo = c.src(s[0]);
            let op = match r {
                ReduceOp::Sum => 0,
                ReduceOp::Mean => 1,
                ReduceOp::Argmax => 2,
            };
            (
                Kernel::Reduce,
                vec![shape.rows() as u32, shape.last() as u32, op, xo, c.out()],
                shape.rows() as u32,
            )
        }
        Op::StoreRows => {
            let dst = g.node(s[0]);
            let (dst_home, dst_base) = c.place(s[0]);
            let Home::External(b) = dst_home else {
                return Err(c.fail("destination is not an external buffer"));
            };
            store = Some((b, dst.dtype));
            let sd = dims(1);
            let (so, io) = (c.src(s[1]), c.src(s[2]));
            let total = sd[0] * sd[1];
            let rows = dst.shape().dims()[0];
            let p = vec![
                total as u32,
                sd[1] as u32,
                rows as u32,
                dst_base + dst.layout.offset as u32,
                dst.layout.strides[0] as u32,
                so,
                io,
            ];
            (Kernel::StoreRows, p, threads(total))
        }
        Op::Input { .. } | Op::External { .. } | Op::View | Op::Epilogue(_) => {
            return Err(c.fail("not an executable node"));
        }
    };
    // a mat-vec's row normalised in the kernel, times the norm's weight (after the op's sources)
    let x_norm = match &node.op {
        Op::Epilogue(e) => e.x_norm.map(|n| {
            let weight = n
                .weighted
                .then(|| c.src_word(node.srcs[e.inner_srcs], &mut params));
            XNormSpec {
                kind: n.kind,
                weight,
                // (word 2 is the row's length K in every mat-vec: `row_dot` reads it)
                staged: params
                    .get(2)
                    .map_or(0, |&k| stage_len(k as usize, opts.workgroup_memory)),
            }
        }),
        _ => None,
    };
    // or computed by a program (its sources after the op's, before the epilogue's)
    let x_prog = match &node.op {
        Op::Epilogue(e) => match &e.x_prog {
            Some(xp) => {
                let (d, k) = (xp.shape.last(), g.node(node.srcs[0]).shape().last());
                if kernel != Kernel::MatMul || k % d != 0 || k / d > MAX_X_GROUPS {
                    return Err(c.fail(format!(
                        "{} computing its row of {k} in norm groups of {d}",
                        kernel.name()
                    )));
                }
                let row = params.len() as u32;
                params.push(d as u32);
                let more = node.srcs[e.inner_srcs..e.inner_srcs + xp.shapes.len()].iter();
                let program = program_sources(
                    &mut c,
                    &mut params,
                    &xp.program,
                    more.copied().zip(xp.shapes.iter().copied()),
                )?;
                Some(Box::new(XProgSpec {
                    program,
                    row,
                    staged: stage_len(k, opts.workgroup_memory),
                }))
            }
            None => None,
        },
        _ => None,
    };
    let epilogue = match &node.op {
        Op::Epilogue(e) if kernel.applies_epilogue() => {
            let srcs = node.srcs[e.first_source()..].iter().copied();
            let mut spec = program_sources(
                &mut c,
                &mut params,
                &e.program,
                srcs.zip(e.shapes.iter().copied()),
            )?;
            spec.pair = e.pair;
            spec.range = e.range.map(|(a, n)| (a as u32, n as u32));
            Some(spec)
        }
        Op::Epilogue(_) => {
            return Err(c.fail(format!("kernel {} applies no epilogue", kernel.name())));
        }
        _ => None,
    };
    if params.len() > MAX_PARAMS {
        return Err(c.fail(format!(
            "{} parameter words (at most {MAX_PARAMS})",
            params.len()
        )));
    }
    // ids chosen in the kernel from rows of logits (`Op::ids_source`): the source's index and
    // its offset's parameter word, per kernel
    let top_k = match ids_source {
        Some((at, k)) if g.node(s[at]).dtype == DType::F32 => {
            let l = g.node(s[at]);
            let off = match kernel {
                Kernel::MatMulId | Kernel::MatMulIdPair | Kernel::GetRows => 5,
                Kernel::SoftMax => 17,
                _ => return Err(c.fail("ids chosen from logits in another kernel")),
            };
            Some(TopKSpec {
                src: at,
                k: k as u32,
                row: l.shape().last() as u32,
                stride: l.layout.strides[0] as u32,
                off,
            })
        }
        _ => None,
    };
    let mut spec = Spec::new(kernel, c.sources);
    spec.top_k = top_k;
    spec.aliases = aliases;
    spec.store = store;
    spec.externals = c.externals.len() as u32;
    spec.epilogue = epilogue;
    spec.x_norm = x_norm;
    spec.qk_norm = qk;
    spec.gates = gates.map(Box::new);
    spec.scan_dt = scan_dt;
    spec.x_prog = x_prog;
    spec.bc_norm = bc;
    spec.puts = puts;
    if matches!(kernel, Kernel::Elementwise | Kernel::FusedNorm) {
        spec.program = Some(program_of(op));
    }
    // a dispatch of `kernel` over `groups` workgroups with this spec's sources, `params` and
    // `workspace` bytes past the plan's tensors
    let pass = |kernel, params: &Vec<u32>, groups, workspace| Lowered {
        spec: Spec {
            kernel,
            ..spec.clone()
        },
        params: params.clone(),
        groups,
        externals: c.externals.clone(),
        workspace,
    };
    // (a row normalised in the kernel is decode's: one row)
    if let Some((tiled, lists, tiles, ws)) = moe_tiles.filter(|_| spec.x_norm.is_none()) {
        // (the listing writes no results: no epilogue)
        let mut list = pass(Kernel::MoeRows, &params, lists, ws);
        list.spec.epilogue = None;
        return Ok(vec![list, pass(tiled, &params, tiles, ws)]);
    }
    if let Some((rows, chunks, ws, phase)) = split_attention {
        let mut merge = params.clone();
        merge[phase] = 2;
        return Ok(vec![
            pass(kernel, &params, rows * chunks, ws),
            pass(kernel, &merge, rows, ws),
        ]);
    }
    Ok(match delta_chunks {
        Some((prep, chunks, ws)) => vec![
            pass(Kernel::GatedDeltaPrep, &params, prep, ws),
            pass(Kernel::GatedDeltaChunks, &params, chunks, ws),
        ],
        None => vec![pass(kernel, &params, groups, 0)],
    })
}

/// A program whose loads read `srcs`, each broadcast to its shape: the sources registered
/// after the kernel's own, and 9 parameter words each (the dims it is read with, its offset
/// and strides) appended to `params`. The spec applies to all results, reading no pair.
fn program_sources(
    c: &mut Ctx,
    params: &mut Vec<u32>,
    program: &FusedProgram,
    srcs: impl IntoIterator<Item = (NodeId, weft_graph::Shape)>,
) -> Result<EpilogueSpec> {
    let first = c.sources.len();
    let at = params.len() as u32;
    for (x, shape) in srcs {
        params.extend(padded4(shape.dims()));
        params.extend(broadcast_source(c, x, shape)?);
    }
    Ok(EpilogueSpec {
        program: program.clone(),
        first,
        params: at,
        pair: false,
        range: None,
    })
}

/// A rotary embedding's pairs as the shaders' `rope_angle` reads them: each pair's revolutions
/// per position (its inverse frequency, freq_scale applied, over 2π; computed in f64) as a
/// 64-bit binary fraction, high word then low. Whole revolutions drop out.
fn rope_freqs(r: &weft_graph::RopeParams) -> Vec<u32> {
    (0..r.n_dims / 2)
        .flat_map(|i| {
            let inv = r.freq_scale as f64
                * (r.freq_base as f64).powf(-(2.0 * i as f64) / r.n_dims as f64);
            let rev = (inv / std::f64::consts::TAU).fract() * 4294967296.0;
            let hi = rev.floor();
            let lo = ((rev - hi) * 4294967296.0).floor();
            [hi as u32, lo as u32]
        })
        .collect()
}

/// Workgroups of a `matmul` or `matmul_rows` dispatch from its parameters: `matmul` takes 4
/// outputs each (param 13) of the `units` (param 9); `matmul_rows` a tile of 64 weight rows
/// (param 13) of each of the `units / N` row blocks.
pub fn matmul_groups(p: &[u32]) -> u32 {
    let (n, units, rows_per_block, per) = (p[1].max(1), p[9], p[12], p[13].max(1));
    if rows_per_block <= 1 {
        units.div_ceil(per)
    } else {
        units / n * n.div_ceil(per)
    }
}

fn padded_batch(b: &[usize]) -> [u32; 2] {
    let mut o = [1u32; 2];
    for (i, &d) in b.iter().rev().take(2).enumerate() {
        o[1 - i] = d as u32;
    }
    o
}
