//! A mat-vec whose activation row is a row norm (times its weight) read by it alone — the norm
//! before a layer's projections — normalises the row itself (`Epilogue::x_norm`): one dispatch
//! instead of two. The row is short (the model width), so every workgroup of the mat-vec sums
//! its squares again rather than wait for another dispatch.

use super::Rewriter;
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
    // the norm, read directly or through a reshaping view
    let (x, view) = match g.node(n.srcs[0]) {
        v if v.op.is_view() => (v.srcs[0], Some(n.srcs[0])),
        _ => (n.srcs[0], None),
    };
    let xn = g.node(x);
    let k = xn.shape().last();
    if let Some(v) = view {
        let l = g.node(v).layout;
        let dense = l.offset == 0 && l.is_contiguous() && l.shape.last() == k;
        if !dense || consumers[v.index()] != [id] || is_output[v.index()] {
            return None;
        }
    }
    let (kind, code) = match &xn.op {
        Op::Fused(p) if !matches!(p.head, Some(NormKind::Sum { .. })) => (p.head?, &p.code[..]),
        Op::RmsNorm { eps } => (NormKind::Rms { eps: *eps }, &[Instr::Load(0)][..]),
        Op::L2Norm { eps } => (NormKind::L2 { eps: *eps }, &[Instr::Load(0)][..]),
        _ => return None,
    };
    let weighted = match code {
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

/// The norm node feeding mat-vec `id` (under its view, if any) and that view.
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
    let norms: Vec<Option<XNorm>> = g
        .ids()
        .map(|id| norm_row(g, &consumers, &is_output, id))
        .collect();
    if norms.iter().all(Option::is_none) {
        return g.clone();
    }
    let mut dropped = vec![false; g.len()];
    for id in g.ids() {
        if norms[id.index()].is_some() {
            let (norm, view) = norm_node(g, id);
            dropped[norm.index()] = true;
            if let Some(v) = view {
                dropped[v.index()] = true;
            }
        }
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if dropped[id.index()] {
            continue;
        }
        let Some(norm) = norms[id.index()] else {
            rw.copy(id);
            continue;
        };
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
        let new = rw.push(Node {
            op: Op::Epilogue(Box::new(e)),
            srcs: srcs.into_iter().map(|s| rw.get(s)).collect(),
            layout: n.layout,
            dtype: n.dtype,
            name: format!("{}+{}", xn.name, n.name),
        });
        rw.alias(id, new);
    }
    rw.finish()
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
