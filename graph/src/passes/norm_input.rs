//! A mat-vec whose activation row is a row norm (times its weight) read by it alone — the norm
//! before a layer's projections — normalises the row itself (`Epilogue::x_norm`): one dispatch
//! instead of two. The row is short (the model width), so every workgroup of the mat-vec sums
//! its squares again rather than wait for another dispatch.

use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{BinaryOp, Epilogue, Instr, NormKind, Op, XNorm};

/// For a mat-vec node, the norm node feeding its row and what it computes.
fn norm_row(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], id: NodeId) -> Option<XNorm> {
    let n = g.node(id);
    let (op, own) = n.op.core(n.srcs.len());
    let matvec = match op {
        Op::MatMul => own <= 3,
        Op::MatMulCat => true,
        _ => false,
    };
    if !matvec || matches!(&n.op, Op::Epilogue(e) if e.x_norm.is_some()) {
        return None;
    }
    let (x, view) = norm_node(g, id);
    let xn = g.node(x);
    let k = xn.shape().last();
    if let Some(v) = view {
        let l = g.node(v).layout;
        let dense = l.offset == 0 && l.is_contiguous() && l.shape.last() == k;
        if !dense || consumers[v.index()] != [id] || is_output[v.index()] {
            return None;
        }
    }
    let p = xn.op.program()?;
    let kind = p.head.filter(|k| !matches!(k, NormKind::Sum { .. }))?;
    let weighted = match p.code[..] {
        [Instr::Load(0)] => false,
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
            if w.numel() != k || !w.layout.is_contiguous() {
                return None;
            }
            true
        }
        _ => return None,
    };
    let raw = g.node(xn.srcs[0]);
    let ok = xn.numel() == k
        && raw.numel() == k
        && raw.layout.is_contiguous()
        && raw.dtype == DType::F32
        && consumers[x.index()] == [view.unwrap_or(id)]
        && !is_output[x.index()];
    ok.then_some(XNorm { kind, weighted })
}

/// The norm node feeding mat-vec `id`, read directly or through a reshaping view, and that
/// view.
fn norm_node(g: &Graph, id: NodeId) -> (NodeId, Option<NodeId>) {
    let s = g.node(id).srcs[0];
    let sn = g.node(s);
    if sn.op.is_view() {
        (sn.srcs[0], Some(s))
    } else {
        (s, None)
    }
}

pub fn norm_input(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id| {
        let norm = norm_row(g, &consumers, &is_output, id)?;
        let (node, view) = norm_node(g, id);
        Some((norm, [node].into_iter().chain(view).collect()))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, norm: XNorm| {
        let n = g.node(id);
        let xn = g.node(norm_node(g, id).0);
        let mut e = match &n.op {
            Op::Epilogue(e) => (**e).clone(),
            op => Epilogue::identity(op.clone(), n.srcs.len()),
        };
        // the raw row, the op's other sources, the norm's weight, the program's sources
        let mut srcs = vec![xn.srcs[0]];
        srcs.extend(&n.srcs[1..e.inner_srcs]);
        if norm.weighted {
            srcs.push(xn.srcs[1]);
        }
        srcs.extend(&n.srcs[e.inner_srcs..]);
        e.x_norm = Some(norm);
        rw.push(Node {
            op: Op::Epilogue(Box::new(e)),
            srcs: srcs.into_iter().map(|s| rw.get(s)).collect(),
            layout: n.layout,
            dtype: n.dtype,
            name: format!("{}+{}", xn.name, n.name),
        })
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
