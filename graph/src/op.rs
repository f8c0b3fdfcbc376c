//! The operation set. Every node holds one `Op` plus its sources; optional sources are announced
//! by flags in the op so that source positions are fixed.

use crate::dtype::DType;
use crate::math;

/// Identifier of a backend buffer bound to an external tensor (a weight or a cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u32);

/// Whether a graph may write an external buffer (through `StoreRows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Elementwise functions of one input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Square,
    Tanh,
    Relu,
    /// `relu(x)²` (Nemotron-H's MLP activation).
    SqrRelu,
    Sigmoid,
    /// `x * sigmoid(x)`.
    Silu,
    /// The tanh approximation of GELU, as used by ggml's `gelu`.
    Gelu,
    /// `ln(1 + e^x)`, computed stably.
    Softplus,
    /// `x * s`.
    Scale(f32),
    /// `x + c`.
    Offset(f32),
    Clamp {
        min: f32,
        max: f32,
    },
}

impl UnaryOp {
    /// The function on one value, in f32 (the backends' arithmetic).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => math::exp(x),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Square => x * x,
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::SqrRelu => {
                let r = x.max(0.0);
                r * r
            }
            UnaryOp::Sigmoid => math::sigmoid(x),
            UnaryOp::Silu => x * math::sigmoid(x),
            UnaryOp::Gelu => {
                const C: f32 = 0.797_884_6; // sqrt(2/pi)
                0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
            }
            UnaryOp::Softplus => math::softplus(x),
            UnaryOp::Scale(s) => x * s,
            UnaryOp::Offset(c) => x + c,
            UnaryOp::Clamp { min, max } => x.clamp(min, max),
        }
    }

    /// `out[i] = apply(xs[i])`, one loop per function so that each vectorizes; on CPUs with
    /// AVX2 and FMA the same loops compiled for 8-wide registers (the same arithmetic: `exp`,
    /// `sigmoid`, `silu` and `softplus` are `math`'s, which use no libm call).
    pub fn apply_slice(self, xs: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked above.
            return unsafe { self.apply_slice_avx2(xs, out) };
        }
        self.apply_slice_body(xs, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn apply_slice_avx2(self, xs: &[f32], out: &mut [f32]) {
        self.apply_slice_body(xs, out)
    }

    #[inline(always)]
    fn apply_slice_body(self, xs: &[f32], out: &mut [f32]) {
        #[inline(always)]
        fn each(xs: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
            // 32 values a step, so that four vectors' chains of dependent steps (the
            // polynomials of `exp` and `ln`) overlap
            let n = out.len().min(xs.len());
            let (whole, rest) = out[..n].split_at_mut(n / 32 * 32);
            let (xw, xr) = xs[..n].split_at(n / 32 * 32);
            for (o, x) in whole.chunks_exact_mut(32).zip(xw.chunks_exact(32)) {
                for i in 0..32 {
                    o[i] = f(x[i]);
                }
            }
            for (o, &x) in rest.iter_mut().zip(xr) {
                *o = f(x);
            }
        }
        match self {
            UnaryOp::Exp => each(xs, out, math::exp),
            UnaryOp::Sigmoid => each(xs, out, math::sigmoid),
            UnaryOp::Silu => each(xs, out, |x| x * math::sigmoid(x)),
            UnaryOp::Softplus => each(xs, out, math::softplus),
            UnaryOp::Neg => each(xs, out, |x| -x),
            UnaryOp::Square => each(xs, out, |x| x * x),
            UnaryOp::Relu => each(xs, out, |x| x.max(0.0)),
            UnaryOp::Scale(s) => each(xs, out, |x| x * s),
            UnaryOp::Offset(c) => each(xs, out, |x| x + c),
            op => each(xs, out, |x| op.apply(x)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Square => "sqr",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Relu => "relu",
            UnaryOp::SqrRelu => "sqr_relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Softplus => "softplus",
            UnaryOp::Scale(_) => "scale",
            UnaryOp::Offset(_) => "offset",
            UnaryOp::Clamp { .. } => "clamp",
        }
    }
}

/// Elementwise functions of two inputs, with numpy-style broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }

    /// `out[i] = apply(a[i], b[i])`, one loop per operator so that each vectorizes.
    pub fn apply_slice(self, a: &[f32], b: &[f32], out: &mut [f32]) {
        fn each(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        }
        match self {
            BinaryOp::Add => each(a, b, out, |x, y| x + y),
            BinaryOp::Sub => each(a, b, out, |x, y| x - y),
            BinaryOp::Mul => each(a, b, out, |x, y| x * y),
            BinaryOp::Div => each(a, b, out, |x, y| x / y),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// Reductions over the innermost dimension (the result keeps it, with size 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    /// Index of the largest value (the first one on ties), as `I32`.
    Argmax,
}

/// Rotary embedding layouts: `Normal` rotates adjacent pairs `(2i, 2i+1)`, `Neox` rotates
/// `(i, i + n_dims/2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeMode {
    Normal,
    Neox,
}

/// Rotary embedding parameters. Only the first `n_dims` of each head are rotated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    pub n_dims: usize,
    pub mode: RopeMode,
    pub freq_base: f32,
    pub freq_scale: f32,
}

/// How `GatedDeltaNet` may walk the tokens: one at a time (decode), or, for a prompt, in chunks
/// whose intra-chunk part is matrix products, as a backend finds fastest. Both compute the
/// same function. The wgpu backend runs long prompts in chunks of 32 tokens (a token loop has
/// no parallelism across tokens there); the CPU walks each state row through the tokens in
/// both forms, which on two AVX2 cores is twice as fast as its chunked code was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeltaForm {
    Recurrent,
    Chunked,
}

/// Row-wise normalisation that can head a fused program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    Rms {
        eps: f32,
    },
    L2 {
        eps: f32,
    },
    /// `x / clamp(Σx, min, max)` (a mixture's chosen weights renormalised to sum to one).
    Sum {
        min: f32,
        max: f32,
    },
}

impl NormKind {
    /// The norm's op name, for dumps.
    pub fn name(self) -> &'static str {
        match self {
            NormKind::Rms { .. } => "rms_norm",
            NormKind::L2 { .. } => "l2_norm",
            NormKind::Sum { .. } => "sum_norm",
        }
    }
}

/// One instruction of a fused elementwise program; its result is register `index`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Instr {
    /// Read source `n` at the current element (broadcast as needed).
    Load(u8),
    Unary(UnaryOp, u16),
    Binary(BinaryOp, u16, u16),
}

/// A chain of elementwise operations computed in one pass. With a `head`, source 0 is first
/// normalised row by row and `Load(0)` reads the normalised value.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedProgram {
    pub head: Option<NormKind>,
    pub code: Vec<Instr>,
}

impl FusedProgram {
    /// The program that passes source 0 through.
    pub fn identity() -> FusedProgram {
        FusedProgram {
            head: None,
            code: vec![Instr::Load(0)],
        }
    }

    /// True for [`FusedProgram::identity`].
    pub fn is_identity(&self) -> bool {
        self.head.is_none() && self.code == [Instr::Load(0)]
    }

    /// Evaluates the program for `out.len()` consecutive elements at once, one instruction over
    /// all of them before the next (so an instruction's dispatch is paid once per block);
    /// `load(n, into)` fills `into` with source `n`'s values. `regs` is scratch space.
    pub fn eval_block(
        &self,
        regs: &mut Vec<f32>,
        out: &mut [f32],
        mut load: impl FnMut(usize, &mut [f32]),
    ) {
        let n = out.len();
        // (every instruction writes all of its register before any reads it: no clearing)
        if regs.len() < self.code.len() * n {
            regs.resize(self.code.len() * n, 0.0);
        }
        for (r, ins) in self.code.iter().enumerate() {
            let (done, rest) = regs.split_at_mut(r * n);
            let cur = &mut rest[..n];
            let reg = |i: u16| &done[i as usize * n..(i as usize + 1) * n];
            match *ins {
                Instr::Load(src) => load(src as usize, cur),
                Instr::Unary(op, a) => op.apply_slice(reg(a), cur),
                Instr::Binary(op, a, b) => op.apply_slice(reg(a), reg(b), cur),
            }
        }
        match self.code.len() {
            0 => out.fill(0.0),
            len => out.copy_from_slice(&regs[(len - 1) * n..len * n]),
        }
    }

    /// Human-readable form, e.g. `mul(silu(%0), %1)`.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = Vec::with_capacity(self.code.len());
        for ins in &self.code {
            let s = match *ins {
                Instr::Load(n) => format!("%{n}"),
                Instr::Unary(op, a) => format!("{}({})", op.name(), names[a as usize]),
                Instr::Binary(op, a, b) => {
                    format!(
                        "{}({}, {})",
                        op.name(),
                        names[a as usize],
                        names[b as usize]
                    )
                }
            };
            names.push(s);
        }
        let body = names.pop().unwrap_or_default();
        match self.head {
            Some(k) => format!("{body} where %0 = {}(%0)", k.name()),
            None => body,
        }
    }
}

/// An operation of the graph. Sources are listed in the node; the comment on each variant gives
/// their order and shapes (outermost dimension first).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Host data given at every run (token ids, positions, masks, slot indices).
    Input {
        name: String,
    },
    /// A backend buffer bound at build time: a weight (read-only) or a cache (read-write).
    External {
        name: String,
        buffer: BufferId,
        access: Access,
    },
    /// A view of its one source's storage; the node's layout says how (reshape, permute, slice,
    /// broadcast, overlapping windows).
    View,
    /// Dense copy of any layout into a fresh F32 tensor.
    Contiguous,
    Unary(UnaryOp),
    /// `[a, b]`, broadcast to a common shape.
    Binary(BinaryOp),
    /// `[x [.., M, K] F32, w [.., N, K] any dtype]` → `[.., M, N]` = `x · wᵀ`; `w`'s batch
    /// dimensions broadcast against `x`'s. A third source `r` (dense, the output's shape; made
    /// by the `matmul_add` pass, never by the builder) is added: `x · wᵀ + r`.
    MatMul,
    /// `[x [.., 1, K] F32 (one row), w_1 [N_1, K], …, w_n [N_n, K]]` → `[.., 1, N_1 + … + N_n]`:
    /// the products of one activation row with several weights, side by side (made by the
    /// `matmul_cat` pass for decode, never by the builder).
    MatMulCat,
    /// `[x [T, U or 1, K], w [E, N, K], ids [T, U] I32]` → `[T, U, N]`: row `(t, u)` is
    /// `x[t, u] · w[ids[t, u]]ᵀ` (mixture-of-experts).
    MatMulId,
    /// `[table [B?, R, D] any dtype, ids [B?, n] I32]` → `[B?, n, D]` F32.
    GetRows,
    /// `x / sqrt(mean(x²) + eps)` over the innermost dimension.
    RmsNorm {
        eps: f32,
    },
    /// `x / max(‖x‖, eps)` over the innermost dimension.
    L2Norm {
        eps: f32,
    },
    /// `softmax(x * scale + mask)` over the innermost dimension; `[x, mask?]`, the mask
    /// broadcasting to `x`.
    ///
    /// With `gathered` (made by the `softmax_gather` pass, never by the builder), the sources
    /// are `[table [R, E, 1], ids [R, D] I32]` and `x[r, j] = table[r, ids[r, j], 0]`: the
    /// softmax of the values `get_rows` would pick (a mixture's chosen logits), without a mask.
    SoftMax {
        scale: f32,
        masked: bool,
        gathered: bool,
    },
    /// `[x [T, H, D], pos [T] I32]` → rotated `x`.
    Rope(RopeParams),
    /// `[q [T, Hq, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv], mask? [T, Tk], gate? [T, Hq, Dv]]` →
    /// `[T, Hq, Dv]`. `causal` lets query `i` see keys `j ≤ i + Tk − T`; `mask` is additive
    /// (`-inf` hides a key); `gate` multiplies the output by `sigmoid(gate)`.
    ///
    /// With `stores` (made by the `attention_store` pass for decode, never by the builder), `k`
    /// and `v` are windows of the KV caches and three sources follow: `k_new [1, Hkv·D]`,
    /// `v_new [1, Hkv·Dv]` and `idx [1] I32`. The op first writes the new key and value into
    /// row `idx[0]` of the caches (in their dtype), then attends over the windows.
    ///
    /// With `rope` as well (made by the `rope_attention` pass), a last source `pos [1] I32`
    /// follows, and `q` and `k_new` are rotated at that position first (as [`Op::Rope`] would).
    Attention {
        scale: f32,
        causal: bool,
        masked: bool,
        gated: bool,
        stores: bool,
        rope: Option<RopeParams>,
    },
    /// `[a, b]` joined along `dim`.
    Concat {
        dim: usize,
    },
    /// `[xc [S, K−1+T, C], w [C, K]]` → `[S, T, C]`: causal depthwise convolution, `xc` being
    /// the conv state followed by the new tokens of each sequence.
    ///
    /// With four sources, `[cache [R, (K−1)·C], x [S, T, C], w [C, K], slots I32 [S]]` (made by
    /// the `state_in_place` pass), sequence `s`'s window is row `slots[s]` of the cache followed
    /// by its tokens `x`, and the window's last `K−1` rows are written back into that row.
    SsmConv,
    /// `[state [S, H, P, N], x [S, T, H, P], dt [S, T, H], a [H, N or 1], b [S, T, G, N],
    /// c [S, T, G, N]]` → flat `[S·T·H·P + S·H·P·N]`: `y [S, T, H, P]` followed by the new state.
    /// `dt` is used as given (already softplus'ed). Mamba1 is `P = 1, G = 1, a [H, N]`; Mamba2
    /// is `a [H, 1]`.
    ///
    /// With a seventh source, `slots I32 [S]` (made by the `state_in_place` pass, never by the
    /// builder), `state` is instead the layer's state cache `[R, H·P·N]`: sequence `s` starts
    /// from row `slots[s]`, its new state is written back into that row, and the output is
    /// `y [S, T, H, P]` alone.
    ///
    /// With `dt_proj` (made by the `scan_dt` pass, never by the builder), `dt` is computed as
    /// the scan reads it, from a projection (see [`ScanDt`]). With `bc_norm` (made by the
    /// `scan_bc_norm` pass), `b` and `c` are raw and each row of `N` is normalised as the scan
    /// reads it (see [`BcNorm`]).
    SsmScan {
        dt_proj: Option<Box<ScanDt>>,
        bc_norm: Option<BcNorm>,
    },
    /// `[state [S, Hv, Dv, Dk], q [S, T, Hk, Dk], k [S, T, Hk, Dk], v [S, T, Hv, Dv], g [S, T, Hv],
    /// beta [S, T, Hv]]` → flat `[S·T·Hv·Dv + S·Hv·Dv·Dk]`: `y [S, T, Hv, Dv]` then the new
    /// state. Per head: `St = St−1·exp(g)`, `St += β (v − St k) ⊗ k`, `y = St q`.
    /// With a seventh source, slots, the state lives in its cache as for [`Op::SsmScan`].
    ///
    /// With `qk_norm` (made by the `delta_qk_norm` pass, never by the builder), `q` and `k` are
    /// raw: each head row goes through its program (a row norm, then unary functions) first.
    ///
    /// With `gates` (made by the `delta_gates` pass), `g` and `beta` are computed as the kernel
    /// reads them: sources 4 and 5 are the first sources of their programs (see
    /// [`DeltaGates`]).
    GatedDeltaNet {
        form: DeltaForm,
        qk_norm: Option<Box<QkNorm>>,
        gates: Option<Box<DeltaGates>>,
    },
    /// Indices (`I32`) of the `k` largest values of each row, largest first.
    TopK {
        k: usize,
    },
    Reduce(ReduceOp),
    /// `[dst [R, D] (a read-write external or a view of one), src [n, D], idx [n] I32]`:
    /// `dst[idx[i]] = src[i]`, converted to `dst`'s dtype. The node stands for `dst` after the
    /// write, so nodes that must see the new rows read it instead of `dst`.
    StoreRows,
    /// Elementwise program produced by the fusion pass.
    Fused(FusedProgram),
    /// An op whose results go through an elementwise program as they are written (made by the
    /// `epilogue` pass, never by the builder). The first `inner_srcs` sources are the inner op's;
    /// in the program, `Load(0)` is the inner result and `Load(k)` source `inner_srcs + k − 1`.
    /// Element `i` of the output (which has as many elements as the inner result) reads element
    /// `i` of each source broadcast to its entry in `shapes` (each with the output's count: the
    /// shape of the elementwise node the source came from).
    ///
    /// With `pair`, the inner op is a `MatMulCat` of two weights of `N` rows each and the output
    /// has `N` columns: `Load(0)` and `Load(1)` are the two products at column `i` (a gated
    /// unit's gate and up), and the sources' loads start at `Load(2)`. Or the inner op is a
    /// `MatMulId` whose sources are `[x, w_a, ids, w_b]` (`inner_srcs` 4): `Load(0)` and
    /// `Load(1)` are the products of the two weights (of one shape) for the same expert.
    ///
    /// With `x_norm` (made by the `norm_input` pass; a mat-vec's inner op), the inner op's
    /// activation row (source 0) is normalised first, then multiplied by the norm's weight,
    /// which is source `inner_srcs` when there is one; the program's sources follow it.
    /// With `x_prog` instead (made by the `matvec_input` pass), the row is computed by an
    /// elementwise program as the mat-vec reads it (see [`XProgram`]), whose sources after the
    /// first follow the inner op's; the epilogue program's sources follow them.
    ///
    /// With `range = (start, len)`, the program applies to output elements `start..start + len`
    /// only (element `start + j` reads element `j` of each source); the others are the inner
    /// result as it is.
    Epilogue(Box<Epilogue>),
}

/// The programs `q` and `k` go through inside a [`Op::GatedDeltaNet`]: each a row norm head
/// followed by unary functions of one register.
#[derive(Clone, Debug, PartialEq)]
pub struct QkNorm {
    pub q: FusedProgram,
    pub k: FusedProgram,
}

/// The elementwise programs that compute a [`Op::GatedDeltaNet`]'s `g` (0) and `beta` (1)
/// from their own sources: in program `j`, `Load(0)` is the node's source `4 + j` and `Load(k)`
/// for `k ≥ 1` the `k`-th of its `extra[j]` further sources, which follow the op's own (`g`'s
/// first, then `beta`'s). Every source of program `j` broadcasts to `shapes[j]`, which has as
/// many elements as `[S, T, Hv]`; element `i` of the gate is element `i` of the program.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaGates {
    pub programs: [FusedProgram; 2],
    pub extra: [usize; 2],
    pub shapes: [crate::layout::Shape; 2],
}

impl DeltaGates {
    /// Sources after the op's own.
    pub fn extra_sources(&self) -> usize {
        self.extra[0] + self.extra[1]
    }
}

/// The projection a Mamba1 [`Op::SsmScan`] computes its `dt` from: source 2 is the
/// projection's activation `x [S, T, K]` (read through its strides), the weight `w [H, K]`
/// follows the op's own sources, then the norm's weight (with a weighted `x_norm`), then the
/// program's other sources. `dt = program(x·wᵀ)`, each row of `x` normalised first (and
/// multiplied by the norm's weight) with `x_norm` (Jamba's dt norm): in the program, `Load(0)`
/// is the product and `Load(k)` reads the `k`-th further source, broadcast to `shapes[k − 1]`
/// (each with as many elements as `[S, T, H]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ScanDt {
    pub program: FusedProgram,
    pub shapes: Vec<crate::layout::Shape>,
    pub x_norm: Option<XNorm>,
}

impl ScanDt {
    /// Sources after the op's own: the weight, the norm's and the program's.
    pub fn extra_sources(&self) -> usize {
        1 + self.x_norm.is_some_and(|n| n.weighted) as usize + self.shapes.len()
    }

    /// `mul_mat`, after its row norm and before its program when it has them.
    pub fn describe(&self) -> String {
        let norm = self
            .x_norm
            .map_or(String::new(), |n| format!("{} → ", n.kind.name()));
        if self.program.is_identity() {
            format!("{norm}mul_mat")
        } else {
            format!("{norm}mul_mat then {}", self.program.describe())
        }
    }
}

/// The row norm a [`Op::SsmScan`] applies to its `b` and `c` rows (Jamba's), each times its
/// weight `[N]` when `weighted`: the weights follow the op's own sources and its projection's
/// (`b`'s first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BcNorm {
    pub kind: NormKind,
    pub weighted: [bool; 2],
}

impl BcNorm {
    pub fn extra_sources(&self) -> usize {
        self.weighted.iter().filter(|&&w| w).count()
    }
}

/// See [`Op::Epilogue`].
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    pub inner: Op,
    pub inner_srcs: usize,
    pub program: FusedProgram,
    pub shapes: Vec<crate::layout::Shape>,
    pub pair: bool,
    pub x_norm: Option<XNorm>,
    pub x_prog: Option<XProgram>,
    pub range: Option<(usize, usize)>,
}

/// The elementwise program a mat-vec computes its activation row with as it reads it (see
/// [`Op::Epilogue`]): source 0 is the program's first source (dense, viewed with the row's
/// shape), `Load(k)` for `k ≥ 1` reads the `k`-th source after the inner op's, broadcast to
/// `shapes[k − 1]`. Element `i` of the row is element `i` of the program, whose own shape is
/// `shape`: with a norm head, source 0 is normalised over rows of `shape`'s last dimension (a
/// gated group norm's heads).
#[derive(Clone, Debug, PartialEq)]
pub struct XProgram {
    pub program: FusedProgram,
    pub shape: crate::layout::Shape,
    pub shapes: Vec<crate::layout::Shape>,
}

/// The row normalisation of a mat-vec's activation (see [`Op::Epilogue`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XNorm {
    pub kind: NormKind,
    pub weighted: bool,
}

impl Epilogue {
    /// Loads before the first source's: the inner result, or the pair's two products.
    pub fn results(&self) -> usize {
        if self.pair { 2 } else { 1 }
    }

    /// Index of the program's first source among the node's (after the inner op's, and a norm
    /// weight or the activation program's sources).
    pub fn first_source(&self) -> usize {
        self.inner_srcs
            + self.x_norm.is_some_and(|n| n.weighted) as usize
            + self.x_prog.as_ref().map_or(0, |x| x.shapes.len())
    }

    /// An identity program (for an op that only gets `x_norm`).
    pub fn identity(inner: Op, inner_srcs: usize) -> Epilogue {
        Epilogue {
            inner,
            inner_srcs,
            program: FusedProgram::identity(),
            shapes: vec![],
            pair: false,
            x_norm: None,
            x_prog: None,
            range: None,
        }
    }
}

impl Op {
    /// Short name for errors, dumps and timings.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::External { .. } => "external",
            Op::View => "view",
            Op::Contiguous => "contiguous",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::MatMul => "mul_mat",
            Op::MatMulCat => "mul_mat_cat",
            Op::MatMulId => "mul_mat_id",
            Op::GetRows => "get_rows",
            Op::RmsNorm { .. } => "rms_norm",
            Op::L2Norm { .. } => "l2_norm",
            Op::SoftMax { .. } => "soft_max",
            Op::Rope(_) => "rope",
            Op::Attention { .. } => "attention",
            Op::Concat { .. } => "concat",
            Op::SsmConv => "ssm_conv",
            Op::SsmScan { .. } => "ssm_scan",
            Op::GatedDeltaNet { .. } => "gated_delta_net",
            Op::TopK { .. } => "top_k",
            Op::Reduce(ReduceOp::Sum) => "sum_rows",
            Op::Reduce(ReduceOp::Mean) => "mean_rows",
            Op::Reduce(ReduceOp::Argmax) => "argmax",
            Op::StoreRows => "store_rows",
            Op::Fused(_) => "fused",
            Op::Epilogue(e) => e.inner.name(),
        }
    }

    /// The elementwise program a node computes: unary, binary and fused nodes, and row norms
    /// as a program headed by the norm; `None` for every other op.
    pub fn program(&self) -> Option<FusedProgram> {
        let (head, code) = match self {
            Op::Unary(u) => (None, vec![Instr::Load(0), Instr::Unary(*u, 0)]),
            Op::Binary(b) => (
                None,
                vec![Instr::Load(0), Instr::Load(1), Instr::Binary(*b, 0, 1)],
            ),
            Op::Fused(p) => return Some(p.clone()),
            Op::RmsNorm { eps } => (Some(NormKind::Rms { eps: *eps }), vec![Instr::Load(0)]),
            Op::L2Norm { eps } => (Some(NormKind::L2 { eps: *eps }), vec![Instr::Load(0)]),
            _ => return None,
        };
        Some(FusedProgram { head, code })
    }

    /// The source of the ids an op picks rows or experts by (`MatMulId`, `GetRows`, a gathered
    /// `SoftMax`), and how many ids each row of that source stands for, for an op whose result
    /// has `numel` elements and whose own source `i` has shape `shape(i)`. When that source is F32 rather
    /// than I32 (made by the `top_k_inline` pass, never by the builder), it holds rows of
    /// logits and the ids are each row's `top_k` (largest first, the lower index first on ties).
    pub fn ids_source(
        &self,
        numel: usize,
        shape: impl Fn(usize) -> Option<crate::layout::Shape>,
    ) -> Option<(usize, usize)> {
        let (at, per_id) = match self {
            // [T, U, N] from ids [T, U] and w [E, N, K]
            Op::MatMulId => (2, shape(1)?.dims().get(1).copied()?),
            // [B?, n, D] from a table [B?, R, D] and ids [B?, n]
            Op::GetRows => (1, shape(0)?.last()),
            Op::SoftMax { gathered: true, .. } => (1, 1),
            _ => return None,
        };
        let ids = shape(at)?;
        let rows = (ids.numel() / ids.last()).max(1);
        Some((at, numel / (rows * per_id).max(1)))
    }

    /// The op that does the work, and how many of the node's sources are its own: the inner op
    /// of an [`Op::Epilogue`], else the op itself with all `n_srcs`, less the sources of the
    /// programs it computes inputs with (`GatedDeltaNet::gates`, `SsmScan::dt_proj`), which
    /// follow its own.
    pub fn core(&self, n_srcs: usize) -> (&Op, usize) {
        match self {
            Op::Epilogue(e) => e.inner.core(e.inner_srcs),
            Op::GatedDeltaNet {
                gates: Some(gt), ..
            } => (self, n_srcs - gt.extra_sources()),
            Op::SsmScan { dt_proj, bc_norm } => (
                self,
                n_srcs
                    - dt_proj.as_ref().map_or(0, |d| d.extra_sources())
                    - bc_norm.map_or(0, |b| b.extra_sources()),
            ),
            op => (op, n_srcs),
        }
    }

    /// Human-readable form for dumps: the name, or a fused program, or an op and its epilogue.
    pub fn describe(&self) -> String {
        match self {
            Op::Fused(p) => p.describe(),
            Op::Epilogue(e) => {
                let pair = if e.pair { " (two products)" } else { "" };
                let norm = match (e.x_norm, &e.x_prog) {
                    (Some(n), _) => format!("{} → ", n.kind.name()),
                    (None, Some(x)) => format!("{} → ", x.program.describe()),
                    (None, None) => String::new(),
                };
                let then = if e.program.is_identity() {
                    String::new()
                } else {
                    format!(" then {}", e.program.describe())
                };
                let range = match e.range {
                    Some((a, n)) => format!(" (elements {a}..{})", a + n),
                    None => String::new(),
                };
                format!("{norm}{}{pair}{then}{range}", e.inner.describe())
            }
            Op::SsmScan { dt_proj, bc_norm } if dt_proj.is_some() || bc_norm.is_some() => {
                let mut parts = vec![];
                if let Some(d) = dt_proj {
                    parts.push(format!("dt = {}", d.describe()));
                }
                if let Some(b) = bc_norm {
                    parts.push(format!("b, c through {}", b.kind.name()));
                }
                format!("{} ({})", self.name(), parts.join(", "))
            }
            Op::GatedDeltaNet {
                gates: Some(gt), ..
            } => format!(
                "{} (g = {}, beta = {})",
                self.name(),
                gt.programs[0].describe(),
                gt.programs[1].describe()
            ),
            op => op.name().to_string(),
        }
    }

    /// True for ops that read their sources only at the element they write (fusable, and safe to
    /// run in place on a source of the same shape).
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::Binary(_) | Op::Fused(_))
    }

    /// True for nodes that own no storage of their own (views share their source's).
    pub fn is_view(&self) -> bool {
        matches!(self, Op::View)
    }

    /// True for leaves that the allocator does not place (their storage lives elsewhere).
    pub fn is_external(&self) -> bool {
        matches!(self, Op::External { .. })
    }

    /// The dtype every source of this op must have when it is fixed by the op; `None` when mixed.
    pub fn fixed_output_dtype(&self) -> Option<DType> {
        match self {
            Op::TopK { .. } | Op::Reduce(ReduceOp::Argmax) => Some(DType::I32),
            Op::Input { .. } | Op::External { .. } | Op::View | Op::StoreRows => None,
            _ => Some(DType::F32),
        }
    }
}
