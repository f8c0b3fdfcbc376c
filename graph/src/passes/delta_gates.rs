//! The gated delta rule's gates — Qwen3-Next's `beta = sigmoid(b)` and
//! `g = softplus(a + dt_bias) · A`, elementwise nodes read by it alone (directly or through a
//! reshape) — are computed as the delta rule reads them (`Op::GatedDeltaNet::gates`): two
//! dispatches fewer per layer.

use super::epilogue::program;
use super::epilogue_inputs::{MAX_EXTERNALS, externals};
use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::layout::Shape;
use crate::op::{DeltaGates, FusedProgram, Op};

/// Most sources one gate's program may read.
const MAX_GATE_SOURCES: usize = 4;

/// Gate `x` of delta rule `d`: its program, its sources, its shape, and the nodes that go (the
/// elementwise node and the view through which `d` reads it).
struct Gate {
    program: FusedProgram,
    srcs: Vec<NodeId>,
    shape: Shape,
    gone: Vec<NodeId>,
}

fn gate(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], x: NodeId, d: NodeId) -> Gate {
    let xn = g.node(x);
    let as_is = Gate {
        program: FusedProgram::identity(),
        srcs: vec![x],
        shape: xn.shape(),
        gone: vec![],
    };
    let (e, view) = if xn.op.is_view() {
        (xn.srcs[0], Some(x))
    } else {
        (x, None)
    };
    let en = g.node(e);
    let Some(prog) = program(&en.op) else {
        return as_is;
    };
    let ok = en.dtype == DType::F32
        && en.numel() == xn.numel()
        && en.srcs.len() <= MAX_GATE_SOURCES
        && !is_output[e.index()]
        && consumers[e.index()] == [view.unwrap_or(d)]
        && view.is_none_or(|v| {
            let vn = g.node(v);
            // element i of the gate is element i of the node
            vn.layout.offset == 0
                && vn.layout.is_contiguous()
                && !is_output[v.index()]
                && consumers[v.index()] == [d]
        });
    if !ok {
        return as_is;
    }
    Gate {
        program: prog,
        srcs: en.srcs.clone(),
        shape: en.shape(),
        gone: [e].into_iter().chain(view).collect(),
    }
}

pub fn delta_gates(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id: NodeId| {
        let n = g.node(id);
        let Op::GatedDeltaNet { gates: None, .. } = n.op else {
            return None;
        };
        let [gg, gb] = [4, 5].map(|j| gate(g, &consumers, &is_output, n.srcs[j], id));
        if gg.gone.is_empty() && gb.gone.is_empty() {
            return None;
        }
        let all: Vec<NodeId> = n
            .srcs
            .iter()
            .chain(&gg.srcs)
            .chain(&gb.srcs)
            .copied()
            .collect();
        if externals(g, &all) > MAX_EXTERNALS {
            return None;
        }
        let gone = gg.gone.iter().chain(&gb.gone).copied().collect();
        Some(([gg, gb], gone))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, [gg, gb]: [Gate; 2]| {
        let mut node = g.node(id).clone();
        node.srcs[4] = gg.srcs[0];
        node.srcs[5] = gb.srcs[0];
        node.srcs.extend(gg.srcs[1..].iter().chain(&gb.srcs[1..]));
        node.srcs = node.srcs.iter().map(|&s| rw.get(s)).collect();
        if let Op::GatedDeltaNet { gates, .. } = &mut node.op {
            *gates = Some(Box::new(DeltaGates {
                extra: [gg.srcs.len() - 1, gb.srcs.len() - 1],
                programs: [gg.program, gb.program],
                shapes: [gg.shape, gb.shape],
            }));
        }
        rw.push(node)
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}

#[cfg(test)]
mod tests {
    use crate::builder::GraphBuilder;
    use crate::dtype::DType;
    use crate::op::DeltaForm;

    #[test]
    fn the_gates_run_inside_the_delta_rule() {
        let mut b = GraphBuilder::new();
        let (s, t, hk, hv, dk, dv) = (1, 2, 1, 4, 8, 8);
        let st = b.input("state", &[s, hv, dv, dk], DType::F32).unwrap();
        let q = b.input("q", &[s, t, hk, dk], DType::F32).unwrap();
        let k = b.input("k", &[s, t, hk, dk], DType::F32).unwrap();
        let v = b.input("v", &[s, t, hv, dv], DType::F32).unwrap();
        let a = b.input("a", &[s, t, 2, 2], DType::F32).unwrap();
        let bias = b.input("dt_bias", &[2, 2], DType::F32).unwrap();
        let a_neg = b.input("A", &[2, 2], DType::F32).unwrap();
        let raw_b = b.input("b", &[s, t, hv], DType::F32).unwrap();
        let gx = b.add(a, bias).unwrap();
        let gx = b.softplus(gx).unwrap();
        let gx = b.mul(gx, a_neg).unwrap();
        let gx = b.reshape(gx, &[s, t, hv]).unwrap();
        let beta = b.sigmoid(raw_b).unwrap();
        let (y, ns) = b
            .gated_delta_net(st, q, k, v, gx, beta, DeltaForm::Recurrent)
            .unwrap();
        b.output(y, "y").unwrap();
        b.output(ns, "state").unwrap();
        assert_eq!(
            crate::passes::described(&b.finish()),
            ["gated_delta_net (g = mul(softplus(add(%1, %2)), %0), beta = sigmoid(%0))"]
        );
    }
}
