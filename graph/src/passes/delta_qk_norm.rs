//! The row norms (and scales) of the gated delta rule's `q` and `k`, read by it alone, run
//! inside it (`Op::GatedDeltaNet::qk_norm`): its workgroups sum each head row once per token,
//! two dispatches fewer per layer.

use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::op::{FusedProgram, Instr, Op, QkNorm};

/// The program of a norm node whose head is followed by unary functions of one register only.
fn row_program(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    x: NodeId,
    d: NodeId,
) -> Option<FusedProgram> {
    let xn = g.node(x);
    let p = xn.op.program().filter(|p| p.head.is_some())?;
    let chain = p.code.first() == Some(&Instr::Load(0))
        && p.code[1..]
            .iter()
            .enumerate()
            .all(|(i, ins)| matches!(ins, Instr::Unary(_, a) if *a as usize == i));
    let raw = g.node(xn.srcs[0]);
    let ok = chain
        && xn.srcs.len() == 1
        && xn.dtype == DType::F32
        && raw.shape() == xn.shape()
        && raw.layout.is_contiguous()
        && raw.dtype == DType::F32
        && consumers[x.index()] == [d]
        && !is_output[x.index()];
    ok.then_some(p)
}

pub fn delta_qk_norm(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id| {
        let n = g.node(id);
        let Op::GatedDeltaNet { qk_norm: None, .. } = n.op else {
            return None;
        };
        let (q, k) = (n.srcs[1], n.srcs[2]);
        let q_prog = row_program(g, &consumers, &is_output, q, id)?;
        let k_prog = row_program(g, &consumers, &is_output, k, id)?;
        (q != k).then(|| {
            (
                QkNorm {
                    q: q_prog,
                    k: k_prog,
                },
                vec![q, k],
            )
        })
    };
    let emit = |rw: &mut Rewriter, id: NodeId, norms: QkNorm| {
        let mut node = g.node(id).clone();
        let raw = |s: NodeId| g.node(s).srcs[0];
        node.srcs[1] = raw(node.srcs[1]);
        node.srcs[2] = raw(node.srcs[2]);
        node.srcs = node.srcs.iter().map(|&s| rw.get(s)).collect();
        if let Op::GatedDeltaNet { qk_norm, .. } = &mut node.op {
            *qk_norm = Some(Box::new(norms));
        }
        rw.push(node)
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}
