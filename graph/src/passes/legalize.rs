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
        Op::MatMul => slot == 0 && row_stride(layout).is_some(),
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

/// The stride between the rows of `l` when each row (its last dimension) is contiguous and the
/// rows are evenly spaced over all its outer dimensions, else `None`.
pub fn row_stride(l: Layout) -> Option<usize> {
    let dims = l.shape.dims();
    let r = dims.len();
    if r == 0 || (dims[r - 1] > 1 && l.strides[r - 1] != 1) {
        return None;
    }
    if r == 1 {
        return Some(dims[0]);
    }
    let lda = l.strides[r - 2];
    // each outer dimension steps over the rows of those inside it (sizes of 1 step nowhere)
    let mut rows = dims[r - 2];
    for i in (0..r - 2).rev() {
        if dims[i] > 1 && l.strides[i] != rows * lda {
            return None;
        }
        rows *= dims[i];
    }
    Some(if dims[r - 2] > 1 || rows > 1 {
        lda
    } else {
        dims[r - 1]
    })
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

#[cfg(test)]
mod tests {
    use super::row_stride;
    use crate::layout::{Layout, MAX_RANK, Shape};

    fn layout(dims: &[usize], strides: &[usize]) -> Layout {
        let mut st = [0; MAX_RANK];
        st[..strides.len()].copy_from_slice(strides);
        Layout {
            shape: Shape::new(dims).unwrap(),
            strides: st,
            offset: 3,
        }
    }

    #[test]
    fn rows_evenly_spaced_have_a_row_stride() {
        // dense, the first columns of wider rows, one row (any strides)
        assert_eq!(row_stride(layout(&[2, 3, 4], &[12, 4, 1])), Some(4));
        assert_eq!(row_stride(layout(&[2, 3, 4], &[24, 8, 1])), Some(8));
        assert_eq!(row_stride(layout(&[1, 1, 4], &[99, 7, 1])), Some(4));
        // a gap between batches, columns not contiguous, transposed
        assert_eq!(row_stride(layout(&[2, 3, 4], &[30, 8, 1])), None);
        assert_eq!(row_stride(layout(&[3, 4], &[8, 2])), None);
        assert_eq!(row_stride(layout(&[3, 4], &[1, 3])), None);
    }
}
