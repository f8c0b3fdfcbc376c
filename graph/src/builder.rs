//! `GraphBuilder`: records operations and checks shapes and dtypes; nothing runs here.

use crate::dtype::DType;
use crate::error::{GraphError, Result, arg_err, shape_err};
use crate::graph::{Graph, Node, NodeId, Tensor};
use crate::layout::{Layout, MAX_RANK, Shape};
use crate::op::{Access, BinaryOp, BufferId, DeltaForm, Op, ReduceOp, RopeParams, UnaryOp};

/// Records a graph. Every method checks its arguments and returns an error naming the op.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: Graph,
}

fn shape(op: &'static str, dims: &[usize]) -> Result<Shape> {
    Shape::new(dims).ok_or_else(|| GraphError::Shape {
        op,
        detail: format!("rank of {dims:?} must be 1 to {MAX_RANK}"),
    })
}

fn want_dtype(op: &'static str, what: &'static str, t: Tensor, ok: &[DType]) -> Result<()> {
    if ok.contains(&t.dtype) {
        return Ok(());
    }
    let expected = match ok {
        [DType::F32] => "F32",
        [DType::I32] => "I32",
        [DType::F32, DType::F16, DType::BF16] => "F32, F16 or BF16",
        _ => "a supported type",
    };
    Err(GraphError::DType {
        op,
        what,
        expected,
        got: t.dtype,
    })
}

const F32: &[DType] = &[DType::F32];
const I32: &[DType] = &[DType::I32];
const FLOAT: &[DType] = &[DType::F32, DType::F16, DType::BF16];

fn want_rank(op: &'static str, what: &str, t: Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return shape_err(
            op,
            format!("{what} must have rank {rank}, got {:?}", t.dims()),
        );
    }
    Ok(())
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The graph recorded so far.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Ends building.
    pub fn finish(self) -> Graph {
        self.graph
    }

    fn check(&self, t: Tensor) -> Result<()> {
        match self.graph.nodes.get(t.id.index()) {
            Some(n) if n.shape() == t.shape && n.dtype == t.dtype => Ok(()),
            _ => Err(GraphError::UnknownTensor(t.id.0)),
        }
    }

    fn layout(&self, t: Tensor) -> Layout {
        self.graph.node(t.id).layout
    }

    fn push(&mut self, op: Op, srcs: &[Tensor], layout: Layout, dtype: DType) -> Result<Tensor> {
        for &s in srcs {
            self.check(s)?;
        }
        let id = NodeId(self.graph.nodes.len() as u32);
        let name = format!("{}#{}", op.name(), id.0);
        self.graph.nodes.push(Node {
            op,
            srcs: srcs.iter().map(|t| t.id).collect(),
            layout,
            dtype,
            name,
        });
        Ok(Tensor {
            id,
            shape: layout.shape,
            dtype,
        })
    }

    fn push_new(
        &mut self,
        op: Op,
        srcs: &[Tensor],
        dims: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let s = shape(op.name(), dims)?;
        self.push(op, srcs, Layout::contiguous(s), dtype)
    }

    /// Gives a node a readable name (shown in dumps, errors and timings).
    pub fn set_name(&mut self, t: Tensor, name: impl Into<String>) -> Result<Tensor> {
        self.check(t)?;
        self.graph.nodes[t.id.index()].name = name.into();
        Ok(t)
    }

    /// Marks `t` as a result to read back after each run.
    pub fn output(&mut self, t: Tensor, name: impl Into<String>) -> Result<()> {
        self.check(t)?;
        if self.graph.node(t.id).dtype.is_quantized() {
            return arg_err("output", "a quantized tensor cannot be an output");
        }
        self.graph.outputs.push((name.into(), t.id));
        Ok(())
    }

    // ---- leaves -------------------------------------------------------------------------

    /// Host data supplied at every run (F32 or I32).
    pub fn input(&mut self, name: &str, dims: &[usize], dtype: DType) -> Result<Tensor> {
        if !matches!(dtype, DType::F32 | DType::I32) {
            return arg_err(
                "input",
                format!("input {name:?} must be F32 or I32, got {dtype}"),
            );
        }
        let t = self.push_new(Op::Input { name: name.into() }, &[], dims, dtype)?;
        self.set_name(t, name)
    }

    /// A backend buffer: a weight (`ReadOnly`) or a cache that `store_rows` writes (`ReadWrite`).
    pub fn external(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: DType,
        buffer: BufferId,
        access: Access,
    ) -> Result<Tensor> {
        let s = shape("external", dims)?;
        if dtype.is_quantized() && s.last() % dtype.block_elems() != 0 {
            return shape_err(
                "external",
                format!(
                    "{name}: rows of {} elements are not a whole number of {dtype} blocks ({})",
                    s.last(),
                    dtype.block_elems()
                ),
            );
        }
        let op = Op::External {
            name: name.into(),
            buffer,
            access,
        };
        let t = self.push(op, &[], Layout::contiguous(s), dtype)?;
        self.set_name(t, name)
    }

    /// Read-only external (a weight).
    pub fn weight(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: DType,
        buffer: BufferId,
    ) -> Result<Tensor> {
        self.external(name, dims, dtype, buffer, Access::ReadOnly)
    }

    // ---- views ----------------------------------------------------------------------------

    fn push_view(&mut self, src: Tensor, layout: Layout) -> Result<Tensor> {
        let dtype = src.dtype;
        self.push(Op::View, &[src], layout, dtype)
    }

    /// Same elements, new dimensions; `src` must be contiguous.
    pub fn reshape(&mut self, src: Tensor, dims: &[usize]) -> Result<Tensor> {
        self.check(src)?;
        let s = shape("reshape", dims)?;
        if s.numel() != src.shape.numel() {
            return shape_err(
                "reshape",
                format!(
                    "{:?} has {} elements, {:?} has {}",
                    src.dims(),
                    src.shape.numel(),
                    dims,
                    s.numel()
                ),
            );
        }
        let l = self.layout(src);
        if !l.is_contiguous() {
            return arg_err(
                "reshape",
                format!(
                    "source {:?} is not contiguous; call contiguous() first",
                    src.dims()
                ),
            );
        }
        if src.dtype.is_quantized() && s.last() != src.shape.last() {
            return arg_err("reshape", "a quantized tensor keeps its row length");
        }
        self.push_view(
            src,
            Layout {
                shape: s,
                strides: s.contiguous_strides(),
                offset: l.offset,
            },
        )
    }

    /// Reorders dimensions: result dimension `i` is source dimension `perm[i]`.
    pub fn permute(&mut self, src: Tensor, perm: &[usize]) -> Result<Tensor> {
        self.check(src)?;
        let r = src.rank();
        let mut seen = [false; MAX_RANK];
        if perm.len() != r
            || perm
                .iter()
                .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
        {
            return arg_err(
                "permute",
                format!("{perm:?} is not a permutation of {r} dimensions"),
            );
        }
        if src.dtype.is_quantized() {
            return arg_err("permute", "quantized tensors cannot be permuted");
        }
        let l = self.layout(src);
        let dims: Vec<usize> = perm.iter().map(|&p| src.dims()[p]).collect();
        let mut strides = [0; MAX_RANK];
        for (i, &p) in perm.iter().enumerate() {
            strides[i] = l.strides[p];
        }
        let s = shape("permute", &dims)?;
        self.push_view(
            src,
            Layout {
                shape: s,
                strides,
                offset: l.offset,
            },
        )
    }

    /// `len` entries of dimension `dim` starting at `start`.
    pub fn slice(&mut self, src: Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.check(src)?;
        if dim >= src.rank() || start + len > src.dims()[dim] || len == 0 {
            return shape_err(
                "slice",
                format!(
                    "[{start}, {start}+{len}) of dim {dim} is outside {:?}",
                    src.dims()
                ),
            );
        }
        if src.dtype.is_quantized() && dim + 1 == src.rank() {
            return arg_err(
                "slice",
                "a quantized tensor can only be sliced by whole rows",
            );
        }
        let l = self.layout(src);
        let mut dims = src.dims().to_vec();
        dims[dim] = len;
        let s = shape("slice", &dims)?;
        let mut strides = l.strides;
        if dims.len() < MAX_RANK {
            strides[dims.len()..].fill(0);
        }
        self.push_view(
            src,
            Layout {
                shape: s,
                strides,
                offset: l.offset + start * l.strides[dim],
            },
        )
    }

    /// Any strided view of a contiguous source, in elements of the source (windows may overlap).
    pub fn view(
        &mut self,
        src: Tensor,
        dims: &[usize],
        strides: &[usize],
        offset: usize,
    ) -> Result<Tensor> {
        self.check(src)?;
        let s = shape("view", dims)?;
        if strides.len() != dims.len() {
            return arg_err(
                "view",
                format!("{} strides for {} dimensions", strides.len(), dims.len()),
            );
        }
        if src.dtype.is_quantized() {
            return arg_err(
                "view",
                "quantized tensors only support reshape and row slices",
            );
        }
        let l = self.layout(src);
        if !l.is_contiguous() {
            return arg_err("view", "source must be contiguous");
        }
        let mut st = [0; MAX_RANK];
        st[..strides.len()].copy_from_slice(strides);
        let v = Layout {
            shape: s,
            strides: st,
            offset: l.offset + offset,
        };
        if v.extent() > l.offset + src.shape.numel() {
            return shape_err(
                "view",
                format!(
                    "view {dims:?} strides {strides:?} offset {offset} reads past the {} elements of its source",
                    src.shape.numel()
                ),
            );
        }
        self.push_view(src, v)
    }

    /// A dense view of `dims` starting `offset` elements into a contiguous source.
    pub fn dense_view(&mut self, src: Tensor, dims: &[usize], offset: usize) -> Result<Tensor> {
        let s = shape("view", dims)?;
        self.view(src, dims, &s.contiguous_strides()[..dims.len()], offset)
    }

    /// Repeats size-1 dimensions (and adds leading ones) to reach `dims`, without copying.
    pub fn broadcast_to(&mut self, src: Tensor, dims: &[usize]) -> Result<Tensor> {
        self.check(src)?;
        let s = shape("broadcast", dims)?;
        let l = self
            .layout(src)
            .broadcast_to(s)
            .ok_or_else(|| GraphError::Shape {
                op: "broadcast",
                detail: format!("{:?} does not broadcast to {dims:?}", src.dims()),
            })?;
        self.push_view(src, l)
    }

    /// A dense copy: F32 for float sources (F16/BF16 are converted), I32 for I32.
    pub fn contiguous(&mut self, src: Tensor) -> Result<Tensor> {
        self.check(src)?;
        if src.dtype.is_quantized() {
            return Err(GraphError::DType {
                op: "contiguous",
                what: "source",
                expected: "F32, F16, BF16 or I32",
                got: src.dtype,
            });
        }
        let dt = if src.dtype == DType::I32 {
            DType::I32
        } else {
            DType::F32
        };
        self.push_new(Op::Contiguous, &[src], src.dims(), dt)
    }

    // ---- elementwise ----------------------------------------------------------------------

    pub fn unary(&mut self, op: UnaryOp, x: Tensor) -> Result<Tensor> {
        self.check(x)?;
        want_dtype(op.name(), "input", x, F32)?;
        self.push_new(Op::Unary(op), &[x], x.dims(), DType::F32)
    }

    pub fn binary(&mut self, op: BinaryOp, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.check(a)?;
        self.check(b)?;
        want_dtype(op.name(), "lhs", a, F32)?;
        want_dtype(op.name(), "rhs", b, F32)?;
        let s = Shape::broadcast(a.shape, b.shape).ok_or_else(|| GraphError::Shape {
            op: op.name(),
            detail: format!("{:?} and {:?} do not broadcast", a.dims(), b.dims()),
        })?;
        self.push(Op::Binary(op), &[a, b], Layout::contiguous(s), DType::F32)
    }

    pub fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, a, b)
    }
    pub fn scale(&mut self, x: Tensor, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Scale(s), x)
    }
    pub fn silu(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Silu, x)
    }
    pub fn sigmoid(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid, x)
    }
    pub fn softplus(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Softplus, x)
    }
    pub fn exp(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Exp, x)
    }

    // ---- matrix products and gathers ------------------------------------------------------

    /// `x [.., M, K] · w [.., N, K]ᵀ` → `[.., M, N]`; `w` may be quantized and its batch
    /// dimensions broadcast against `x`'s.
    pub fn matmul(&mut self, x: Tensor, w: Tensor) -> Result<Tensor> {
        self.check(x)?;
        self.check(w)?;
        want_dtype("mul_mat", "activation", x, F32)?;
        if w.dtype == DType::I32 {
            return Err(GraphError::DType {
                op: "mul_mat",
                what: "weight",
                expected: "a float or quantized type",
                got: w.dtype,
            });
        }
        if x.rank() < 2 || w.rank() < 2 {
            return shape_err(
                "mul_mat",
                format!(
                    "operands need rank ≥ 2, got {:?} and {:?}",
                    x.dims(),
                    w.dims()
                ),
            );
        }
        let k = x.shape.last();
        if w.shape.last() != k {
            return shape_err(
                "mul_mat",
                format!(
                    "inner dimensions differ: x {:?}, w {:?}",
                    x.dims(),
                    w.dims()
                ),
            );
        }
        let (m, n) = (x.shape.rev(1), w.shape.rev(1));
        let xb = &x.dims()[..x.rank() - 2];
        let wb = &w.dims()[..w.rank() - 2];
        let batch = Shape::broadcast(
            Shape::new(if xb.is_empty() { &[1] } else { xb }).ok_or_else(|| GraphError::Shape {
                op: "mul_mat",
                detail: "rank".into(),
            })?,
            Shape::new(if wb.is_empty() { &[1] } else { wb }).ok_or_else(|| GraphError::Shape {
                op: "mul_mat",
                detail: "rank".into(),
            })?,
        );
        let batch = match batch {
            Some(b)
                if wb.len() <= xb.len()
                    && b.dims() == if xb.is_empty() { &[1][..] } else { xb } =>
            {
                xb.to_vec()
            }
            _ => {
                return shape_err(
                    "mul_mat",
                    format!(
                        "batch of w {:?} does not broadcast to batch of x {:?}",
                        w.dims(),
                        x.dims()
                    ),
                );
            }
        };
        if w.dtype.is_quantized() && !self.layout(w).is_contiguous() {
            return arg_err("mul_mat", "quantized weights must be contiguous");
        }
        let mut dims = batch;
        dims.extend_from_slice(&[m, n]);
        self.push_new(Op::MatMul, &[x, w], &dims, DType::F32)
    }

    /// Mixture-of-experts product: `x [T, U or 1, K]`, `w [E, N, K]`, `ids [T, U]` → `[T, U, N]`.
    pub fn matmul_id(&mut self, x: Tensor, w: Tensor, ids: Tensor) -> Result<Tensor> {
        self.check(x)?;
        self.check(w)?;
        self.check(ids)?;
        want_dtype("mul_mat_id", "activation", x, F32)?;
        want_dtype("mul_mat_id", "ids", ids, I32)?;
        want_rank("mul_mat_id", "x", x, 3)?;
        want_rank("mul_mat_id", "w", w, 3)?;
        want_rank("mul_mat_id", "ids", ids, 2)?;
        let (t, u) = (ids.dims()[0], ids.dims()[1]);
        let [e, n, k] = [w.dims()[0], w.dims()[1], w.dims()[2]];
        if x.dims()[0] != t || (x.dims()[1] != u && x.dims()[1] != 1) || x.dims()[2] != k {
            return shape_err(
                "mul_mat_id",
                format!(
                    "x {:?} does not match ids {:?} and w {:?}",
                    x.dims(),
                    ids.dims(),
                    w.dims()
                ),
            );
        }
        if e == 0 {
            return shape_err("mul_mat_id", "no experts");
        }
        self.push_new(Op::MatMulId, &[x, w, ids], &[t, u, n], DType::F32)
    }

    /// Rows of `table [B?, R, D]` chosen by `ids [B?, n]` → `[B?, n, D]` as F32.
    pub fn get_rows(&mut self, table: Tensor, ids: Tensor) -> Result<Tensor> {
        self.check(table)?;
        self.check(ids)?;
        want_dtype("get_rows", "ids", ids, I32)?;
        if table.dtype == DType::I32 {
            return Err(GraphError::DType {
                op: "get_rows",
                what: "table",
                expected: "a float or quantized type",
                got: table.dtype,
            });
        }
        let ok = match (table.rank(), ids.rank()) {
            (2, 1) => true,
            (3, 2) => table.dims()[0] == ids.dims()[0],
            _ => false,
        };
        if !ok {
            return shape_err(
                "get_rows",
                format!(
                    "table {:?} and ids {:?} must be [R, D] with [n], or [B, R, D] with [B, n]",
                    table.dims(),
                    ids.dims()
                ),
            );
        }
        let mut dims = ids.dims().to_vec();
        dims.push(table.shape.last());
        self.push_new(Op::GetRows, &[table, ids], &dims, DType::F32)
    }

    // ---- normalisation, softmax, rope, attention -----------------------------------------

    pub fn rms_norm(&mut self, x: Tensor, eps: f32) -> Result<Tensor> {
        self.check(x)?;
        want_dtype("rms_norm", "input", x, F32)?;
        self.push_new(Op::RmsNorm { eps }, &[x], x.dims(), DType::F32)
    }

    pub fn l2_norm(&mut self, x: Tensor, eps: f32) -> Result<Tensor> {
        self.check(x)?;
        want_dtype("l2_norm", "input", x, F32)?;
        self.push_new(Op::L2Norm { eps }, &[x], x.dims(), DType::F32)
    }

    /// RMS norm over `groups` equal parts of the innermost dimension (Mamba2's gated norm).
    pub fn group_rms_norm(&mut self, x: Tensor, groups: usize, eps: f32) -> Result<Tensor> {
        self.check(x)?;
        let d = x.shape.last();
        if groups == 0 || !d.is_multiple_of(groups) || x.rank() == MAX_RANK {
            return arg_err(
                "group_rms_norm",
                format!(
                    "{groups} groups do not split rows of {d} (rank {})",
                    x.rank()
                ),
            );
        }
        let mut dims = x.dims()[..x.rank() - 1].to_vec();
        dims.extend_from_slice(&[groups, d / groups]);
        let xc = if self.layout(x).is_contiguous() {
            x
        } else {
            self.contiguous(x)?
        };
        let g = self.reshape(xc, &dims)?;
        let n = self.rms_norm(g, eps)?;
        self.reshape(n, x.dims())
    }

    pub fn softmax(&mut self, x: Tensor, mask: Option<Tensor>, scale: f32) -> Result<Tensor> {
        self.check(x)?;
        want_dtype("soft_max", "input", x, F32)?;
        let mut srcs = vec![x];
        if let Some(m) = mask {
            self.check(m)?;
            want_dtype("soft_max", "mask", m, F32)?;
            if Shape::broadcast(m.shape, x.shape) != Some(x.shape) {
                return shape_err(
                    "soft_max",
                    format!("mask {:?} does not broadcast to {:?}", m.dims(), x.dims()),
                );
            }
            srcs.push(m);
        }
        let op = Op::SoftMax {
            scale,
            masked: mask.is_some(),
            gathered: false,
        };
        self.push_new(op, &srcs, x.dims(), DType::F32)
    }

    /// Rotary position embedding of `x [T, H, D]` at positions `pos [T]`.
    pub fn rope(&mut self, x: Tensor, pos: Tensor, p: RopeParams) -> Result<Tensor> {
        self.check(x)?;
        self.check(pos)?;
        want_dtype("rope", "input", x, F32)?;
        want_dtype("rope", "positions", pos, I32)?;
        want_rank("rope", "x", x, 3)?;
        want_rank("rope", "positions", pos, 1)?;
        if pos.dims()[0] != x.dims()[0] {
            return shape_err(
                "rope",
                format!("{} positions for {} tokens", pos.dims()[0], x.dims()[0]),
            );
        }
        if p.n_dims == 0 || !p.n_dims.is_multiple_of(2) || p.n_dims > x.dims()[2] {
            return arg_err(
                "rope",
                format!(
                    "n_dims {} must be even and at most the head size {}",
                    p.n_dims,
                    x.dims()[2]
                ),
            );
        }
        self.push_new(Op::Rope(p), &[x, pos], x.dims(), DType::F32)
    }

    /// Scaled dot-product attention with grouped-query heads; see [`Op::Attention`].
    pub fn attention(
        &mut self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<Tensor>,
        gate: Option<Tensor>,
        scale: f32,
        causal: bool,
    ) -> Result<Tensor> {
        const OP: &str = "attention";
        for t in [q, k, v] {
            self.check(t)?;
            want_rank(OP, "q, k and v", t, 3)?;
        }
        want_dtype(OP, "q", q, F32)?;
        want_dtype(OP, "k", k, FLOAT)?;
        want_dtype(OP, "v", v, FLOAT)?;
        let [t, hq, d] = [q.dims()[0], q.dims()[1], q.dims()[2]];
        let [tk, hkv] = [k.dims()[0], k.dims()[1]];
        let dv = v.dims()[2];
        if k.dims()[2] != d || v.dims()[0] != tk || v.dims()[1] != hkv || hkv == 0 || hq % hkv != 0
        {
            return shape_err(
                OP,
                format!(
                    "q {:?}, k {:?}, v {:?}: need k [Tk, Hkv, D], v [Tk, Hkv, Dv], Hq a multiple of Hkv",
                    q.dims(),
                    k.dims(),
                    v.dims()
                ),
            );
        }
        if causal && tk < t {
            return shape_err(
                OP,
                format!("causal attention needs at least as many keys ({tk}) as queries ({t})"),
            );
        }
        let mut srcs = vec![q, k, v];
        if let Some(m) = mask {
            self.check(m)?;
            want_dtype(OP, "mask", m, F32)?;
            if m.dims() != [t, tk] {
                return shape_err(OP, format!("mask {:?} must be [{t}, {tk}]", m.dims()));
            }
            srcs.push(m);
        }
        if let Some(g) = gate {
            self.check(g)?;
            want_dtype(OP, "gate", g, F32)?;
            if g.dims() != [t, hq, dv] {
                return shape_err(OP, format!("gate {:?} must be [{t}, {hq}, {dv}]", g.dims()));
            }
            srcs.push(g);
        }
        let op = Op::Attention {
            scale,
            causal,
            masked: mask.is_some(),
            gated: gate.is_some(),
            stores: false,
            rope: None,
        };
        self.push_new(op, &srcs, &[t, hq, dv], DType::F32)
    }

    // ---- joins, reductions, routing ---------------------------------------------------------

    pub fn concat(&mut self, a: Tensor, b: Tensor, dim: usize) -> Result<Tensor> {
        self.check(a)?;
        self.check(b)?;
        want_dtype("concat", "lhs", a, F32)?;
        want_dtype("concat", "rhs", b, F32)?;
        let same = a.rank() == b.rank()
            && dim < a.rank()
            && (0..a.rank()).all(|i| i == dim || a.dims()[i] == b.dims()[i]);
        if !same {
            return shape_err(
                "concat",
                format!(
                    "{:?} and {:?} cannot be joined along dim {dim}",
                    a.dims(),
                    b.dims()
                ),
            );
        }
        let mut dims = a.dims().to_vec();
        dims[dim] += b.dims()[dim];
        self.push_new(Op::Concat { dim }, &[a, b], &dims, DType::F32)
    }

    pub fn reduce(&mut self, op: ReduceOp, x: Tensor) -> Result<Tensor> {
        let o = Op::Reduce(op);
        self.check(x)?;
        want_dtype(o.name(), "input", x, F32)?;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = 1;
        let dt = if op == ReduceOp::Argmax {
            DType::I32
        } else {
            DType::F32
        };
        self.push_new(o, &[x], &dims, dt)
    }

    pub fn top_k(&mut self, x: Tensor, k: usize) -> Result<Tensor> {
        self.check(x)?;
        want_dtype("top_k", "input", x, F32)?;
        if k == 0 || k > x.shape.last() {
            return arg_err(
                "top_k",
                format!("k = {k} must be in 1..={}", x.shape.last()),
            );
        }
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = k;
        self.push_new(Op::TopK { k }, &[x], &dims, DType::I32)
    }

    // ---- recurrent layers -------------------------------------------------------------------

    /// Causal depthwise convolution of `xc [S, K−1+T, C]` (state then new tokens) with
    /// `w [C, K]` → `[S, T, C]`.
    pub fn ssm_conv_raw(&mut self, xc: Tensor, w: Tensor) -> Result<Tensor> {
        self.check(xc)?;
        self.check(w)?;
        want_dtype("ssm_conv", "input", xc, F32)?;
        want_dtype("ssm_conv", "weight", w, F32)?;
        want_rank("ssm_conv", "input", xc, 3)?;
        want_rank("ssm_conv", "weight", w, 2)?;
        let [s, l, c] = [xc.dims()[0], xc.dims()[1], xc.dims()[2]];
        let kk = w.dims()[1];
        if w.dims()[0] != c || kk == 0 || l < kk {
            return shape_err(
                "ssm_conv",
                format!(
                    "input {:?} and weight {:?}: need [S, K-1+T, C] and [C, K] with T ≥ 1",
                    xc.dims(),
                    w.dims()
                ),
            );
        }
        self.push_new(Op::SsmConv, &[xc, w], &[s, l + 1 - kk, c], DType::F32)
    }

    /// The conv step of a recurrent layer: `state [S, K−1, C]`, new tokens `x [S, T, C]`,
    /// `w [C, K]` → `(y [S, T, C], new_state [S, K−1, C])`, the new state being the last
    /// `K−1` columns of state and tokens.
    pub fn ssm_conv(&mut self, state: Tensor, x: Tensor, w: Tensor) -> Result<(Tensor, Tensor)> {
        let xc = self.concat(state, x, 1)?;
        let y = self.ssm_conv_raw(xc, w)?;
        let km1 = state.dims()[1];
        let t = x.dims()[1];
        let new_state = self.slice(xc, 1, t, km1)?;
        Ok((y, new_state))
    }

    /// Selective scan (Mamba1 and Mamba2); see [`Op::SsmScan`]. Returns `(y, new_state)`.
    pub fn ssm_scan(
        &mut self,
        state: Tensor,
        x: Tensor,
        dt: Tensor,
        a: Tensor,
        b: Tensor,
        c: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "ssm_scan";
        for t in [state, x, dt, a, b, c] {
            self.check(t)?;
            want_dtype(OP, "every operand", t, F32)?;
        }
        want_rank(OP, "state", state, 4)?;
        want_rank(OP, "x", x, 4)?;
        want_rank(OP, "dt", dt, 3)?;
        want_rank(OP, "A", a, 2)?;
        want_rank(OP, "B", b, 4)?;
        want_rank(OP, "C", c, 4)?;
        let [s, h, p, n] = [
            state.dims()[0],
            state.dims()[1],
            state.dims()[2],
            state.dims()[3],
        ];
        let t = x.dims()[1];
        let g = b.dims()[2];
        let ok = x.dims() == [s, t, h, p]
            && dt.dims() == [s, t, h]
            && a.dims()[0] == h
            && (a.dims()[1] == n || a.dims()[1] == 1)
            && b.dims() == [s, t, g, n]
            && c.dims() == b.dims()
            && g > 0
            && h % g == 0;
        if !ok {
            return shape_err(
                OP,
                format!(
                    "state {:?} x {:?} dt {:?} A {:?} B {:?} C {:?}: see Op::SsmScan",
                    state.dims(),
                    x.dims(),
                    dt.dims(),
                    a.dims(),
                    b.dims(),
                    c.dims()
                ),
            );
        }
        let ny = s * t * h * p;
        let out = self.push_new(
            Op::SsmScan {
                dt_proj: None,
                bc_norm: None,
            },
            &[state, x, dt, a, b, c],
            &[ny + s * h * p * n],
            DType::F32,
        )?;
        let y = self.dense_view(out, &[s, t, h, p], 0)?;
        let st = self.dense_view(out, &[s, h, p, n], ny)?;
        Ok((y, st))
    }

    /// Gated delta rule (Qwen3-Next); see [`Op::GatedDeltaNet`]. Returns `(y, new_state)`.
    pub fn gated_delta_net(
        &mut self,
        state: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        g: Tensor,
        beta: Tensor,
        form: DeltaForm,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "gated_delta_net";
        for t in [state, q, k, v, g, beta] {
            self.check(t)?;
            want_dtype(OP, "every operand", t, F32)?;
        }
        want_rank(OP, "state", state, 4)?;
        want_rank(OP, "q", q, 4)?;
        want_rank(OP, "v", v, 4)?;
        let [s, hv, dv, dk] = [
            state.dims()[0],
            state.dims()[1],
            state.dims()[2],
            state.dims()[3],
        ];
        let t = q.dims()[1];
        let hk = q.dims()[2];
        let ok = q.dims() == [s, t, hk, dk]
            && k.dims() == q.dims()
            && v.dims() == [s, t, hv, dv]
            && g.dims() == [s, t, hv]
            && beta.dims() == [s, t, hv]
            && hk > 0
            && hv % hk == 0;
        if !ok {
            return shape_err(
                OP,
                format!(
                    "state {:?} q {:?} k {:?} v {:?} g {:?} beta {:?}: see Op::GatedDeltaNet",
                    state.dims(),
                    q.dims(),
                    k.dims(),
                    v.dims(),
                    g.dims(),
                    beta.dims()
                ),
            );
        }
        let ny = s * t * hv * dv;
        let out = self.push_new(
            Op::GatedDeltaNet {
                form,
                qk_norm: None,
                gates: None,
            },
            &[state, q, k, v, g, beta],
            &[ny + s * hv * dv * dk],
            DType::F32,
        )?;
        let y = self.dense_view(out, &[s, t, hv, dv], 0)?;
        let st = self.dense_view(out, &[s, hv, dv, dk], ny)?;
        Ok((y, st))
    }

    // ---- caches -------------------------------------------------------------------------------

    /// Writes `src [n, D]` into rows `idx [n]` of `dst [R, D]`, a read-write external (or a
    /// view of one). Returns `dst` after the write.
    pub fn store_rows(&mut self, dst: Tensor, src: Tensor, idx: Tensor) -> Result<Tensor> {
        const OP: &str = "store_rows";
        self.check(dst)?;
        self.check(src)?;
        self.check(idx)?;
        if !self.graph.is_cache(dst.id) {
            return arg_err(
                OP,
                format!(
                    "destination {:?} is not a read-write external",
                    self.graph.node(dst.id).name
                ),
            );
        }
        want_dtype(OP, "destination", dst, FLOAT)?;
        want_dtype(OP, "source", src, F32)?;
        want_dtype(OP, "indices", idx, I32)?;
        want_rank(OP, "destination", dst, 2)?;
        want_rank(OP, "source", src, 2)?;
        want_rank(OP, "indices", idx, 1)?;
        if src.dims()[1] != dst.dims()[1] || idx.dims()[0] != src.dims()[0] {
            return shape_err(
                OP,
                format!(
                    "dst {:?}, src {:?}, idx {:?}: need [R, D], [n, D], [n]",
                    dst.dims(),
                    src.dims(),
                    idx.dims()
                ),
            );
        }
        if self.layout(dst).strides[1] != 1 {
            return arg_err(OP, "destination rows must be contiguous");
        }
        let layout = self.layout(dst);
        self.push(Op::StoreRows, &[dst, src, idx], layout, dst.dtype)
    }
}
