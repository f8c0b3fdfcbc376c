//! A matmul whose only reader is an `add` of a tensor of its own shape (the residual after an
//! output projection) takes that tensor as a third source and adds it as it writes: one
//! dispatch instead of two. Runs after elementwise fusion, so it takes only the adds that no
//! longer chain with anything.

use super::Rewriter;
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Op};

/// For an `add` node, the matmul it can fold into and the other operand.
fn matching(g: &Graph, consumers: &[Vec<NodeId>], add: NodeId) -> Option<(NodeId, NodeId)> {
    let n = g.node(add);
    if !matches!(n.op, Op::Binary(BinaryOp::Add)) || !n.layout.is_contiguous() {
        return None;
    }
    for (mm, r) in [(n.srcs[0], n.srcs[1]), (n.srcs[1], n.srcs[0])] {
        let (mn, rn) = (g.node(mm), g.node(r));
        let ok = matches!(mn.op, Op::MatMul)
            && mn.srcs.len() == 2
            && consumers[mm.index()] == [add]
            && !g.outputs.iter().any(|(_, o)| *o == mm)
            && mn.layout == n.layout
            && rn.layout.shape == n.layout.shape
            && rn.layout.is_contiguous()
            && rn.dtype == DType::F32
            && !rn.op.is_external();
        if ok && mm != r {
            return Some((mm, r));
        }
    }
    None
}

pub fn matmul_add(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let mut folded: Vec<Option<(NodeId, NodeId)>> = vec![None; g.len()];
    let mut dropped = vec![false; g.len()];
    for id in g.ids() {
        if let Some((mm, r)) = matching(g, &consumers, id) {
            folded[id.index()] = Some((mm, r));
            dropped[mm.index()] = true;
        }
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if dropped[id.index()] {
            continue;
        }
        let Some((mm, r)) = folded[id.index()] else {
            rw.copy(id);
            continue;
        };
        // the matmul, emitted where the add was (after both operands exist)
        let add = g.node(id);
        let mut node = g.node(mm).clone();
        node.srcs = vec![node.srcs[0], node.srcs[1], r]
            .into_iter()
            .map(|s| rw.get(s))
            .collect();
        node.name = add.name.clone();
        let new = rw.push(node);
        rw.alias(id, new);
    }
    rw.finish()
}
