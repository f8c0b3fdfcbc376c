//! WGSL kernels, one per file under `kernels/`, and the generator that turns a kernel plus a
//! [`Spec`] into a complete shader.
//!
//! Every generated shader shares one binding model:
//! - `@binding(0)`: `P`, the dispatch's parameters (a uniform array of u32; `pu(i)` reads word
//!   `i`, `pf(i)` reads it as f32). Each kernel documents its parameter words.
//! - `@binding(1)`: `arena`, the plan's activation arena as `array<vec4<u32>>` (its size a
//!   multiple of 16 bytes), read and written: `aw(i)` reads word `i`, and mat-vecs read x's
//!   quads as whole vectors.
//! - `@binding(2 + b)`: external buffer `b` (weights, caches) as `array<u32>`.
//!
//! Kernels never index bindings directly: the generator emits a loader per source —
//! `ldK(i) -> f32` for float data of any storage dtype (F32/F16/BF16 and the GGUF block
//! quantizations, decoded per element) and `ldiK(i) -> i32` for I32 — taking an element index
//! into the source's storage. Results are written with `st(i, v)` / `sti(i, v)`; kernels that
//! [apply epilogues](Kernel::applies_epilogue) write `epi(i, v)` for result `i`.

mod codegen;
mod quant;

pub use codegen::{ShaderError, generate};

use weft_graph::{DType, FusedProgram, NormKind};

/// The kernels, one per WGSL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Elementwise,
    FusedNorm,
    CopyBits,
    MatMul,
    MatMulRows,
    MatMulCoop,
    MatMulCat,
    MatMulPair,
    MatMulId,
    MatMulIdPair,
    MoeRows,
    MatMulIdRows,
    MatMulIdPairRows,
    GetRows,
    SoftMax,
    Rope,
    Attention,
    AttentionRows,
    Concat,
    SsmConv,
    SsmConvCached,
    SsmScan,
    SsmScanLanes,
    SsmScanLanesWide,
    SsmScanChunks,
    SsmScanChunksWide,
    GatedDeltaNet,
    GatedDeltaPrep,
    GatedDeltaChunks,
    TopK,
    Reduce,
    StoreRows,
}

impl Kernel {
    pub const ALL: [Kernel; 32] = [
        Kernel::Elementwise,
        Kernel::FusedNorm,
        Kernel::CopyBits,
        Kernel::MatMul,
        Kernel::MatMulRows,
        Kernel::MatMulCoop,
        Kernel::MatMulCat,
        Kernel::MatMulPair,
        Kernel::MatMulId,
        Kernel::MatMulIdPair,
        Kernel::MoeRows,
        Kernel::MatMulIdRows,
        Kernel::MatMulIdPairRows,
        Kernel::GetRows,
        Kernel::SoftMax,
        Kernel::Rope,
        Kernel::Attention,
        Kernel::AttentionRows,
        Kernel::Concat,
        Kernel::SsmConv,
        Kernel::SsmConvCached,
        Kernel::SsmScan,
        Kernel::SsmScanLanes,
        Kernel::SsmScanLanesWide,
        Kernel::SsmScanChunks,
        Kernel::SsmScanChunksWide,
        Kernel::GatedDeltaNet,
        Kernel::GatedDeltaPrep,
        Kernel::GatedDeltaChunks,
        Kernel::TopK,
        Kernel::Reduce,
        Kernel::StoreRows,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Elementwise => "elementwise",
            Kernel::FusedNorm => "fused_norm",
            Kernel::CopyBits => "copy_bits",
            Kernel::MatMul => "matmul",
            Kernel::MatMulRows => "matmul_rows",
            Kernel::MatMulCoop => "matmul_coop",
            Kernel::MatMulCat => "matmul_cat",
            Kernel::MatMulPair => "matmul_pair",
            Kernel::MatMulId => "matmul_id",
            Kernel::MatMulIdPair => "matmul_id_pair",
            Kernel::MoeRows => "moe_rows",
            Kernel::MatMulIdRows => "matmul_id_rows",
            Kernel::MatMulIdPairRows => "matmul_id_pair_rows",
            Kernel::GetRows => "get_rows",
            Kernel::SoftMax => "softmax",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention",
            Kernel::AttentionRows => "attention_rows",
            Kernel::Concat => "concat",
            Kernel::SsmConv => "ssm_conv",
            Kernel::SsmConvCached => "ssm_conv_cached",
            Kernel::SsmScan => "ssm_scan",
            Kernel::SsmScanLanes => "ssm_scan_lanes",
            Kernel::SsmScanLanesWide => "ssm_scan_lanes_wide",
            Kernel::SsmScanChunks => "ssm_scan_chunks",
            Kernel::SsmScanChunksWide => "ssm_scan_chunks_wide",
            Kernel::GatedDeltaNet => "gated_delta_net",
            Kernel::GatedDeltaPrep => "gated_delta_prep",
            Kernel::GatedDeltaChunks => "gated_delta_chunks",
            Kernel::TopK => "top_k",
            Kernel::Reduce => "reduce",
            Kernel::StoreRows => "store_rows",
        }
    }

    /// True for the decode mat-vecs: a row of weights per output, read a chunk at a time
    /// (`row_dot{j}`), partial sums met by `group_sum`, the activation row normalisable in the
    /// kernel (`prologue`).
    pub fn is_matvec(self) -> bool {
        matches!(
            self,
            Kernel::MatMul
                | Kernel::MatMulCat
                | Kernel::MatMulPair
                | Kernel::MatMulId
                | Kernel::MatMulIdPair
        )
    }

    /// True for the selective scan's kernels (one parameter layout, `ldt` for dt).
    pub fn is_scan(self) -> bool {
        matches!(
            self,
            Kernel::SsmScan
                | Kernel::SsmScanLanes
                | Kernel::SsmScanLanesWide
                | Kernel::SsmScanChunks
                | Kernel::SsmScanChunksWide
        )
    }

    /// True for the delta rule's kernels: the token loop (`gated_delta_net`) and the two passes
    /// of its chunked form for long prompts (one parameter layout, the same loaders).
    pub fn is_delta(self) -> bool {
        matches!(
            self,
            Kernel::GatedDeltaNet | Kernel::GatedDeltaPrep | Kernel::GatedDeltaChunks
        )
    }

    /// True for kernels that pass each result through `epi(i, v)` as they write it (see
    /// [`EpilogueSpec`]).
    pub fn applies_epilogue(self) -> bool {
        matches!(
            self,
            Kernel::MatMul
                | Kernel::MatMulRows
                | Kernel::MatMulCoop
                | Kernel::MatMulCat
                | Kernel::MatMulPair
                | Kernel::MatMulId
                | Kernel::MatMulIdPair
                | Kernel::MatMulIdRows
                | Kernel::MatMulIdPairRows
                | Kernel::SsmConv
                | Kernel::SsmConvCached
                | Kernel::SsmScan
                | Kernel::SsmScanLanes
                | Kernel::SsmScanLanesWide
                | Kernel::SsmScanChunks
                | Kernel::SsmScanChunksWide
        )
    }

    /// True for kernels that need the adapter's f16 arithmetic and cooperative matrices
    /// (`wgpu::Features::SHADER_F16` and `EXPERIMENTAL_COOPERATIVE_MATRIX`, 16 × 16 f16 with
    /// f32 sums, 32-lane subgroups): their shaders start with the `enable` directives.
    pub fn needs_cooperative_matrices(self) -> bool {
        self == Kernel::MatMulCoop
    }

    /// The kernel's WGSL body.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::Elementwise => include_str!("kernels/elementwise.wgsl"),
            Kernel::FusedNorm => include_str!("kernels/fused_norm.wgsl"),
            Kernel::CopyBits => include_str!("kernels/copy_bits.wgsl"),
            Kernel::MatMul => include_str!("kernels/matmul.wgsl"),
            Kernel::MatMulRows => include_str!("kernels/matmul_rows.wgsl"),
            Kernel::MatMulCoop => include_str!("kernels/matmul_coop.wgsl"),
            Kernel::MatMulCat => include_str!("kernels/matmul_cat.wgsl"),
            Kernel::MatMulPair => include_str!("kernels/matmul_pair.wgsl"),
            Kernel::MatMulId => include_str!("kernels/matmul_id.wgsl"),
            Kernel::MatMulIdPair => include_str!("kernels/matmul_id_pair.wgsl"),
            Kernel::MoeRows => include_str!("kernels/moe_rows.wgsl"),
            // (one kernel, the pair a switch in it: `PAIR`)
            Kernel::MatMulIdRows | Kernel::MatMulIdPairRows => {
                include_str!("kernels/matmul_id_rows.wgsl")
            }
            Kernel::GetRows => include_str!("kernels/get_rows.wgsl"),
            Kernel::SoftMax => include_str!("kernels/softmax.wgsl"),
            Kernel::Rope => include_str!("kernels/rope.wgsl"),
            Kernel::Attention => include_str!("kernels/attention.wgsl"),
            Kernel::AttentionRows => include_str!("kernels/attention_rows.wgsl"),
            Kernel::Concat => include_str!("kernels/concat.wgsl"),
            Kernel::SsmConv => include_str!("kernels/ssm_conv.wgsl"),
            Kernel::SsmConvCached => include_str!("kernels/ssm_conv_cached.wgsl"),
            Kernel::SsmScan => include_str!("kernels/ssm_scan.wgsl"),
            // (one kernel, the states a lane hold a constant in it: `SR`)
            Kernel::SsmScanLanes | Kernel::SsmScanLanesWide => {
                include_str!("kernels/ssm_scan_lanes.wgsl")
            }
            Kernel::SsmScanChunks => include_str!("kernels/ssm_scan_chunks.wgsl"),
            Kernel::SsmScanChunksWide => include_str!("kernels/ssm_scan_chunks_wide.wgsl"),
            Kernel::GatedDeltaNet => include_str!("kernels/gated_delta_net.wgsl"),
            Kernel::GatedDeltaPrep => include_str!("kernels/gated_delta_prep.wgsl"),
            Kernel::GatedDeltaChunks => include_str!("kernels/gated_delta_chunks.wgsl"),
            Kernel::TopK => include_str!("kernels/top_k.wgsl"),
            Kernel::Reduce => include_str!("kernels/reduce.wgsl"),
            Kernel::StoreRows => include_str!("kernels/store_rows.wgsl"),
        }
    }
}

/// Tokens per chunk of the delta rule's chunked kernels (`gated_delta_prep`,
/// `gated_delta_chunks`).
pub const DELTA_CHUNK: u32 = 32;

/// The bandwidth probe: a copy of 16-byte words between two storage bindings, one per thread
/// of 256-thread workgroups (a standalone shader: no spec, no generator).
pub const BANDWIDTH_WGSL: &str = include_str!("kernels/bandwidth.wgsl");

/// Words of the delta rule's workspace per chunk of one (sequence, value head): U, W, q, k and
/// P of the chunk, and its decay (see `gated_delta_prep.wgsl`).
pub fn delta_chunk_words(dk: u32, dv: u32) -> u32 {
    DELTA_CHUNK * (dv + 3 * dk + DELTA_CHUNK) + 1
}

/// Where a source's storage is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Home {
    Arena,
    /// External buffer number `b` (bound at `@binding(2 + b)`).
    External(u32),
}

/// One source operand of a dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    pub home: Home,
    pub dtype: DType,
}

/// Everything that selects a shader variant.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub kernel: Kernel,
    pub sources: Vec<Source>,
    /// The program of `Elementwise` and `FusedNorm` kernels.
    pub program: Option<FusedProgram>,
    /// Extra loader names mapped to source indices (e.g. `ldmask` → 3).
    pub aliases: Vec<(&'static str, usize)>,
    /// `StoreRows`: the destination's external binding and dtype.
    pub store: Option<(u32, DType)>,
    /// Number of external bindings the dispatch uses.
    pub externals: u32,
    /// An elementwise program the kernel applies to each result it writes.
    pub epilogue: Option<EpilogueSpec>,
    /// A mat-vec's activation row (source 0) normalised in the kernel: the kernel calls
    /// `prologue(x_off, lid)` first, and `ld0` then reads normalised values.
    pub x_norm: Option<XNormSpec>,
    /// `gated_delta_net`'s q and k row programs (a norm head, then unary functions): the kernel
    /// reads them through `ldq(i, f)` and `ldk(i, f)` with the factors from `qk_factors`.
    pub qk_norm: Option<[FusedProgram; 2]>,
    /// External bindings written two elements (one 32-bit word) at a time, with their dtypes:
    /// `put{n}(i, a, b)` writes elements `i` (even) and `i + 1` of the `n`-th. Sources may read
    /// them (the attention's KV caches).
    pub puts: Vec<(u32, DType)>,
    /// Lanes the mat-vec kernels sum with subgroup shuffles before workgroup memory takes over
    /// (`group_sum`): the adapter's smallest subgroup size, at most 32; 1 without subgroups.
    pub subgroup: u32,
    /// `gated_delta_net`'s `g` and `beta` computed by programs as the kernel reads them
    /// (`ldg`, `ldb`): `Load(k)` of each reads source `first + k` at the gate's element,
    /// indexed by the 9 parameter words of source `k` from `params` (as an epilogue's; no
    /// results come first).
    pub gates: Option<Box<[EpilogueSpec; 2]>>,
    /// A scan's `dt` computed from its projection as the kernel reads it (`ldt(tok, h)`).
    pub scan_dt: Option<Box<ScanDtSpec>>,
    /// A scan's B and C rows normalised as the kernel reads them (`ldbn`, `ldcn` with the
    /// factors from `bc_norms`).
    pub bc_norm: Option<BcNormSpec>,
    /// A `matmul` (decode) whose activation row is computed by a program as it reads it
    /// (`ld0`, after `prologue` has taken the norm factors of the program's head).
    pub x_prog: Option<Box<XProgSpec>>,
    /// Ids (`ldi{src}`) chosen in the kernel as the top k of rows of logits (see [`TopKSpec`]).
    pub top_k: Option<TopKSpec>,
    /// Mat-vecs read quantized weights (but Q8_0) a unit of 32 at a time rather than by
    /// quads (`quant::unit_body`; on by default, off for measuring: `WEFT_MATVEC_BLOCKS=0`).
    pub matvec_blocks: bool,
}

/// See [`Spec::top_k`]: source `src` holds F32 logits, rows of `row` contiguous elements
/// `stride` apart, from the offset in parameter word `off`; id `j` of row `r` (element
/// `r·k + j` of the ids, counted from the same offset) is the index of the row's `j + 1`-th
/// largest logit, the lower index first on ties (as the `top_k` kernel chooses).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopKSpec {
    pub src: usize,
    pub k: u32,
    pub row: u32,
    pub stride: u32,
    pub off: u32,
}

/// See [`Spec::bc_norm`]: the norm, and each weight's source and the parameter word of its
/// offset (B's, then C's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BcNormSpec {
    pub kind: NormKind,
    pub weights: [Option<(usize, u32)>; 2],
}

/// See [`Spec::x_prog`]. `Load(0)` is source 0 at the element read (times its norm group's
/// factor with a head: groups of the length in parameter `row`), `Load(k)` source
/// `first + k − 1`, indexed as an epilogue's (9 words each from `params`) at the element's
/// index in the row.
#[derive(Clone, Debug, PartialEq)]
pub struct XProgSpec {
    pub program: EpilogueSpec,
    pub row: u32,
    /// The row computed once into workgroup memory by `prologue`, in an array of this many
    /// elements (a [`stage_len`]; 0: each output row's lanes compute it again, element by
    /// element).
    pub staged: u32,
}

/// See [`Spec::scan_dt`]. Source 2 is the projection's activation `[S, T, K]` (its offset in
/// parameter 9), source `weight` its weight `[H, K]` (rows of `K` contiguous elements; its
/// offset in parameter `params`), then 4 more words: `K` and the activation's strides over
/// S, T and K. `dt` at `(tok, h)` is the program at element `tok·H + h`, `Load(0)` the dot
/// product, its sources read as an epilogue's (`first`, and 9 words each from its `params`).
/// With `x_norm`, each activation row is normalised first (times the norm's weight, a source
/// and the parameter word of its offset, as a mat-vec's).
#[derive(Clone, Debug, PartialEq)]
pub struct ScanDtSpec {
    pub weight: usize,
    pub params: u32,
    pub program: EpilogueSpec,
    pub x_norm: Option<XNormSpec>,
}

/// See [`Spec::x_norm`]: the norm, and its weight's source index and the parameter word that
/// holds the weight's element offset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XNormSpec {
    pub kind: NormKind,
    pub weight: Option<(usize, u32)>,
    /// A mat-vec's row normalised once into workgroup memory by `prologue`, in an array of
    /// this many elements (a [`stage_len`]), which its loops then read (0: each read of x loads
    /// the row and the norm's weight again: 4 loads of the weight per quad of x).
    pub staged: u32,
}

/// The workgroup array a mat-vec stages its activation row of `k` elements in
/// ([`XNormSpec::staged`], [`XProgSpec::staged`]): 3072 elements (12 KiB) or 6144 (24 KiB),
/// the first that holds the row and leaves 2 KiB of `limit`, the bytes of workgroup memory the
/// kernels may take (16 KiB on every adapter, 32 on lavapipe and Apple GPUs, 48 on NVIDIA's;
/// 0 stages nothing), else 0 (not staged).
pub fn stage_len(k: usize, limit: u32) -> u32 {
    [3072u32, 6144]
        .into_iter()
        .find(|&n| k <= n as usize && 4 * n + 2048 <= limit)
        .unwrap_or(0)
}

/// How a kernel's results go through an epilogue (`epi(i, v)` in the kernel, `i` the result's
/// element index): `Load(0)` is the result, `Load(k)` source `first + k − 1`. Parameter words
/// from `params`, 9 per extra source: the dims it is read with (4, padded with leading 1s;
/// the output's element count), its element offset and 4 strides (0 where it broadcasts).
#[derive(Clone, Debug, PartialEq)]
pub struct EpilogueSpec {
    pub program: FusedProgram,
    pub first: usize,
    pub params: u32,
    /// `epi2(i, v0, v1)` of two results (`Load(0)`, `Load(1)`; sources from `Load(2)`), for
    /// `matmul_pair`.
    pub pair: bool,
    /// The program applies to results `start..start + len` only (result `start + j` reads
    /// element `j` of the sources); the rest are written as they are.
    pub range: Option<(u32, u32)>,
}

impl Spec {
    /// The external bindings the kernel writes, as a bit mask.
    pub fn writable(&self) -> u32 {
        let store = self.store.map_or(0, |(b, _)| 1 << b);
        self.puts.iter().fold(store, |m, (b, _)| m | 1 << b)
    }

    /// The kernel's own sources: all but a norm weight, an epilogue's and the gates', which
    /// follow them.
    pub fn own_sources(&self) -> usize {
        let weight = self.x_norm.and_then(|n| n.weight).map(|(j, _)| j);
        let first = self.epilogue.as_ref().map(|e| e.first);
        let gates = self.gates.as_ref().map(|g| g[0].first);
        let dt = self.scan_dt.as_ref().map(|d| d.weight);
        let x = self.x_prog.as_ref().map(|x| x.program.first);
        let bc = self
            .bc_norm
            .and_then(|b| b.weights.into_iter().flatten().map(|(j, _)| j).min());
        [Some(self.sources.len()), weight, first, gates, dt, x, bc]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0)
    }

    pub fn new(kernel: Kernel, sources: Vec<Source>) -> Spec {
        let externals = sources
            .iter()
            .filter_map(|s| match s.home {
                Home::External(b) => Some(b + 1),
                Home::Arena => None,
            })
            .max()
            .unwrap_or(0);
        Spec {
            kernel,
            sources,
            program: None,
            aliases: vec![],
            store: None,
            externals,
            epilogue: None,
            x_norm: None,
            qk_norm: None,
            puts: vec![],
            subgroup: 1,
            gates: None,
            scan_dt: None,
            x_prog: None,
            bc_norm: None,
            top_k: None,
            matvec_blocks: true,
        }
    }
}
