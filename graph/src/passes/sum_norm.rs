//! `w / clamp(sum_rows(w))` — a mixture's chosen weights renormalised to sum to one — becomes
//! one row-normalising kernel (a fused program headed by `NormKind::Sum`): one dispatch
//! instead of three.

use super::Rewriter;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{BinaryOp, FusedProgram, Instr, NormKind, Op, ReduceOp, UnaryOp};

/// For a `div` node: the weights it divides and the clamp's bounds.
fn pattern(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    d: NodeId,
) -> Option<(NodeId, NormKind)> {
    let dn = g.node(d);
    let Op::Binary(BinaryOp::Div) = dn.op else {
        return None;
    };
    let (w, c) = (dn.srcs[0], dn.srcs[1]);
    let cn = g.node(c);
    let Op::Unary(UnaryOp::Clamp { min, max }) = cn.op else {
        return None;
    };
    let s = cn.srcs[0];
    let sn = g.node(s);
    let wn = g.node(w);
    let ok = matches!(sn.op, Op::Reduce(ReduceOp::Sum))
        && sn.srcs[0] == w
        && consumers[s.index()] == [c]
        && consumers[c.index()] == [d]
        && !is_output[s.index()]
        && !is_output[c.index()]
        && wn.shape() == dn.shape()
        && wn.layout.is_contiguous();
    ok.then_some((w, NormKind::Sum { min, max }))
}

pub fn sum_norm(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        let Some((w, kind)) = pattern(g, &consumers, &is_output, id) else {
            rw.copy(id);
            continue;
        };
        let d = g.node(id);
        let new = rw.push(Node {
            op: Op::Fused(FusedProgram {
                head: Some(kind),
                code: vec![Instr::Load(0)],
            }),
            srcs: vec![rw.get(w)],
            layout: d.layout,
            dtype: d.dtype,
            name: format!("{} (sum_norm)", d.name),
        });
        rw.alias(id, new);
    }
    rw.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::dtype::DType;

    #[test]
    fn renormalised_weights_are_one_kernel() {
        let mut b = GraphBuilder::new();
        let w = b.input("w", &[3, 4], DType::F32).unwrap();
        let s = b.reduce(ReduceOp::Sum, w).unwrap();
        let s = b
            .unary(
                UnaryOp::Clamp {
                    min: 1e-4,
                    max: f32::MAX,
                },
                s,
            )
            .unwrap();
        let y = b.div(w, s).unwrap();
        b.output(y, "y").unwrap();
        assert_eq!(
            crate::passes::described(&b.finish()),
            ["%0 where %0 = sum_norm(%0)"]
        );
    }
}
