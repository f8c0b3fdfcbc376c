//! A mat-vec whose activation row is a row norm (times its weight) read by it alone — the norm
//! before a layer's projections — normalises the row itself (`Epilogue::x_norm`): one dispatch
//! instead of two. The row is short (the model width), so every workgroup of the mat-vec sums
//! its squares again rather than wait for another dispatch.

use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::layout::Layout;
use crate::op::{BinaryOp, Epilogue, Instr, NormKind, Op, XNorm};

/// True for a mat-vec that can normalise its row (experts' products included: with the
/// norm over one row, every expert reads that row).
fn normalises_row(n: &Node) -> bool {
    let (op, own) = n.op.core(n.srcs.len());
    let matvec = match op {
        Op::MatMul => own <= 3,
        Op::MatMulCat | Op::MatMulId => true,
        _ => false,
    };
    matvec && !matches!(&n.op, Op::Epilogue(e) if e.x_norm.is_some() || e.x_prog.is_some())
}

/// True when `r` reads norm `x` as a mat-vec that can normalise its row: as its row (source
/// 0), directly or through a dense reshaping view that nothing else reads.
fn reads_row(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    x: NodeId,
    r: NodeId,
) -> bool {
    let k = g.node(x).shape().last();
    let rn = g.node(r);
    if rn.op.is_view() {
        let l = rn.layout;
        let dense = l.offset == 0 && l.is_contiguous() && l.shape.last() == k;
        return dense
            && !is_output[r.index()]
            && consumers[r.index()].len() == 1
            && reads_row(g, consumers, is_output, r, consumers[r.index()][0]);
    }
    normalises_row(rn) && rn.srcs[0] == x && !rn.srcs[1..].contains(&x)
}

/// What norm node `x` computes, when it is a row norm (rms or l2) times at most a weight of
/// one row's length: the norm, and the weight.
pub(super) fn weighted_norm(g: &Graph, x: NodeId) -> Option<(NormKind, Option<NodeId>)> {
    let xn = g.node(x);
    let p = xn.op.program()?;
    let kind = p.head.filter(|k| !matches!(k, NormKind::Sum { .. }))?;
    let weight = match p.code[..] {
        [Instr::Load(0)] => None,
        [
            Instr::Load(0),
            Instr::Load(1),
            Instr::Binary(BinaryOp::Mul, 0, 1),
        ]
        | [
            Instr::Load(0),
            Instr::Load(1),
            Instr::Binary(BinaryOp::Mul, 1, 0),
        ] => {
            let w = g.node(xn.srcs[1]);
            if w.numel() != xn.shape().last() || !w.layout.is_contiguous() {
                return None;
            }
            Some(xn.srcs[1])
        }
        _ => return None,
    };
    Some((kind, weight))
}

/// For a mat-vec node, the norm node feeding its row and what it computes. The norm may feed
/// several mat-vecs (a mixture's router and its experts): each normalises the row itself.
fn norm_row(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], id: NodeId) -> Option<XNorm> {
    if !normalises_row(g.node(id)) {
        return None;
    }
    let x = row_node(g, id).0;
    let xn = g.node(x);
    let k = xn.shape().last();
    let (kind, weight) = weighted_norm(g, x)?;
    let weighted = weight.is_some();
    let raw = g.node(xn.srcs[0]);
    let ok = xn.numel() == k
        && raw.numel() == k
        && raw.layout.is_contiguous()
        && raw.dtype == DType::F32
        && consumers[x.index()]
            .iter()
            .all(|&r| reads_row(g, consumers, is_output, x, r))
        && !is_output[x.index()];
    ok.then_some(XNorm { kind, weighted })
}

/// The node computing mat-vec `id`'s row (a norm, a program), read directly or through a
/// reshaping view, and that view.
pub(super) fn row_node(g: &Graph, id: NodeId) -> (NodeId, Option<NodeId>) {
    let s = g.node(id).srcs[0];
    let sn = g.node(s);
    if sn.op.is_view() {
        (sn.srcs[0], Some(s))
    } else {
        (s, None)
    }
}

/// Mat-vec `id` as an epilogue that computes its row itself (`set` says how) from the first
/// source of the node computing it: that source viewed with the shape the op read the row in,
/// the op's other sources, `more` (the computation's other sources), the epilogue's sources.
pub(super) fn computing_row(
    rw: &mut Rewriter,
    g: &Graph,
    id: NodeId,
    more: &[NodeId],
    set: impl FnOnce(&mut Epilogue),
) -> NodeId {
    let n = g.node(id);
    let (x, view) = row_node(g, id);
    let xn = g.node(x);
    let mut e = match &n.op {
        Op::Epilogue(e) => (**e).clone(),
        op => Epilogue::identity(op.clone(), n.srcs.len()),
    };
    let raw = xn.srcs[0];
    let shape = g.node(n.srcs[0]).shape();
    let row = if view.is_some() || g.node(raw).shape() != shape {
        rw.push(Node {
            op: Op::View,
            srcs: vec![rw.get(raw)],
            layout: Layout {
                offset: g.node(raw).layout.offset,
                ..Layout::contiguous(shape)
            },
            dtype: DType::F32,
            name: format!("{}.row", xn.name),
        })
    } else {
        rw.get(raw)
    };
    let srcs = std::iter::once(row)
        .chain(
            n.srcs[1..e.inner_srcs]
                .iter()
                .chain(more)
                .chain(&n.srcs[e.inner_srcs..])
                .map(|&s| rw.get(s)),
        )
        .collect();
    set(&mut e);
    rw.push(Node {
        op: Op::Epilogue(Box::new(e)),
        srcs,
        layout: n.layout,
        dtype: n.dtype,
        name: format!("{}+{}", xn.name, n.name),
    })
}

pub fn norm_input(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id| {
        let norm = norm_row(g, &consumers, &is_output, id)?;
        let (node, view) = row_node(g, id);
        Some((norm, [node].into_iter().chain(view).collect()))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, norm: XNorm| {
        // (the norm's weight before the epilogue's sources)
        let xn = g.node(row_node(g, id).0);
        let weight = &xn.srcs[1..1 + norm.weighted as usize];
        computing_row(rw, g, id, weight, |e| e.x_norm = Some(norm))
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::passes::described;

    #[test]
    fn the_norm_before_a_projection_moves_into_it() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let nw = b.input("norm", &[8], DType::F32).unwrap();
        let w = b.input("w", &[4, 8], DType::F32).unwrap();
        let h = b.rms_norm(x, 1e-5).unwrap();
        let h = b.mul(h, nw).unwrap();
        let y = b.matmul(h, w).unwrap();
        b.output(y, "y").unwrap();
        let g = b.finish();
        assert_eq!(described(&g), ["rms_norm → mul_mat"]);
        // through a reshape (a batch of one row)
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let w = b.input("w", &[4, 8], DType::F32).unwrap();
        let h = b.rms_norm(x, 1e-5).unwrap();
        let h = b.reshape(h, &[1, 1, 8]).unwrap();
        let y = b.matmul(h, w).unwrap();
        b.output(y, "y").unwrap();
        assert_eq!(described(&b.finish()), ["rms_norm → mul_mat"]);
        // a prompt's rows are normalised once, by their own kernel
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[3, 8], DType::F32).unwrap();
        let w = b.input("w", &[4, 8], DType::F32).unwrap();
        let h = b.rms_norm(x, 1e-5).unwrap();
        let y = b.matmul(h, w).unwrap();
        b.output(y, "y").unwrap();
        assert_eq!(described(&b.finish()), ["rms_norm", "mul_mat"]);
    }
}
