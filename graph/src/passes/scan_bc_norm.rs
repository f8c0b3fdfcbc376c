//! Jamba normalises the rows of its scan's `B` and `C` (an rms norm over the `N` states, times
//! a weight) in nodes the scan alone reads: the scan normalises them as it reads them
//! (`Op::SsmScan::bc_norm`), two dispatches fewer per Mamba layer. (The raw rows are strided
//! views of the x projection, which the scans read through their strides.)

use super::norm_input::weighted_norm;
use super::scan_dt::rewrite_scan;
use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::op::{BcNorm, NormKind, Op};

/// A norm node `x` the scan `scan` alone reads as its `b` or `c`: its kind, its raw rows and
/// its weight.
fn row_norm(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    x: NodeId,
    scan: NodeId,
) -> Option<(NormKind, NodeId, Option<NodeId>)> {
    let xn = g.node(x);
    let (kind, weight) = weighted_norm(g, x)?;
    let raw = g.node(xn.srcs[0]);
    let ok = xn.dtype == DType::F32
        && raw.dtype == DType::F32
        && raw.numel() == xn.numel()
        && !is_output[x.index()]
        && consumers[x.index()] == [scan];
    ok.then_some((kind, xn.srcs[0], weight))
}

type Found = (BcNorm, [NodeId; 2], Vec<NodeId>);

fn bc_norms(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], id: NodeId) -> Option<Found> {
    let n = g.node(id);
    let (Op::SsmScan { bc_norm: None, .. }, own) = n.op.core(n.srcs.len()) else {
        return None;
    };
    let (b, c) = (n.srcs[4], n.srcs[5]);
    if own < 6 || b == c {
        return None;
    }
    let (kb, rb, wb) = row_norm(g, consumers, is_output, b, id)?;
    let (kc, rc, wc) = row_norm(g, consumers, is_output, c, id)?;
    if kb != kc {
        return None;
    }
    let norm = BcNorm {
        kind: kb,
        weighted: [wb.is_some(), wc.is_some()],
    };
    Some((norm, [rb, rc], wb.into_iter().chain(wc).collect()))
}

pub fn scan_bc_norm(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id: NodeId| {
        let found = bc_norms(g, &consumers, &is_output, id)?;
        let n = g.node(id);
        Some((found, vec![n.srcs[4], n.srcs[5]]))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, (norm, raw, weights): Found| {
        // raw B and C; the weights after the op's own sources and its projection's
        rewrite_scan(rw, g, id, &weights, |op, srcs| {
            srcs[4] = raw[0];
            srcs[5] = raw[1];
            if let Op::SsmScan { bc_norm, .. } = op {
                *bc_norm = Some(norm);
            }
        })
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}

#[cfg(test)]
mod tests {
    use crate::builder::GraphBuilder;
    use crate::dtype::DType;

    /// A scan whose B and C are rms norms (times weights) of inputs; with `shared`, C's norm is
    /// an output too.
    fn scan(shared: bool) -> Vec<String> {
        let mut b = GraphBuilder::new();
        let (h, n) = (8, 4);
        let st = b.input("state", &[1, h, 1, n], DType::F32).unwrap();
        let x = b.input("x", &[1, 1, h, 1], DType::F32).unwrap();
        let dt = b.input("dt", &[1, 1, h], DType::F32).unwrap();
        let a = b.input("a", &[h, n], DType::F32).unwrap();
        let mut bc = vec![];
        for name in ["b", "c"] {
            let raw = b.input(name, &[1, 1, 1, n], DType::F32).unwrap();
            let w = b.input(&format!("{name}_norm"), &[n], DType::F32).unwrap();
            let r = b.rms_norm(raw, 1e-6).unwrap();
            bc.push(b.mul(r, w).unwrap());
        }
        let (y, _) = b.ssm_scan(st, x, dt, a, bc[0], bc[1]).unwrap();
        b.output(y, "y").unwrap();
        if shared {
            b.output(bc[1], "c").unwrap();
        }
        crate::passes::described(&b.finish())
    }

    #[test]
    fn the_scan_normalises_b_and_c_unless_they_are_read_elsewhere() {
        assert_eq!(scan(false), ["ssm_scan (b, c through rms_norm)"]);
        let ops = scan(true);
        assert_eq!(ops.last().map(String::as_str), Some("ssm_scan"), "{ops:?}");
    }
}
