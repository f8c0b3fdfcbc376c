//! Legalization: ops other than the elementwise ones and copies read dense sources (an offset is
//! fine). A strided source gets a `contiguous` copy in front of its consumer.

use super::Rewriter;
use crate::dtype::DType;
use crate::graph::{Graph, Node};
use crate::layout::Layout;
use crate::op::Op;

/// True when the op reads source `slot` through any strided layout.
fn accepts_strided(op: &Op, slot: usize, n_srcs: usize, layout: Layout) -> bool {
    match op {
        // (row norms read their rows through the source's strides too)
        Op::View
        | Op::Contiguous
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Fused(_)
        | Op::RmsNorm { .. }
        | Op::L2Norm { .. } => true,
        // The destination of a cache write only needs dense rows (checked when built).
        Op::StoreRows => slot == 0,
        // the selective scan reads x, B and C through their strides, the conv on its cache x,
        // a matmul rows of x at any even spacing
        Op::SsmScan { .. } => matches!(slot, 1 | 4 | 5),
        Op::SsmConv => slot == 1 && n_srcs == 4,
        Op::MatMul => slot == 0 && layout.row_stride().is_some(),
        // the delta rule reads v through its strides
        Op::GatedDeltaNet { .. } => slot == 3,
        // attention reads its output gate through the gate's strides
        Op::Attention {
            gated: true,
            masked,
            ..
        } => slot == 3 + *masked as usize,
        _ => false,
    }
}

pub fn legalize(g: &Graph) -> Graph {
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        let n = g.node(id);
        let mut node = n.clone();
        for (slot, &s) in n.srcs.iter().enumerate() {
            let src = g.node(s);
            let ok = src.layout.is_contiguous()
                || accepts_strided(&n.op, slot, n.srcs.len(), src.layout);
            node.srcs[slot] = if ok || src.dtype.is_quantized() {
                rw.get(s)
            } else {
                rw.push(Node {
                    op: Op::Contiguous,
                    srcs: vec![rw.get(s)],
                    layout: Layout::contiguous(src.shape()),
                    dtype: if src.dtype == DType::I32 {
                        DType::I32
                    } else {
                        DType::F32
                    },
                    name: format!("{}.contiguous", src.name),
                })
            };
        }
        let new = rw.push(node);
        rw.alias(id, new);
    }
    rw.finish()
}
