//! Jamba normalises the rows of its scan's `B` and `C` (an rms norm over the `N` states, times
//! a weight) in nodes the scan alone reads: the scan normalises them as it reads them
//! (`Op::SsmScan::bc_norm`), two dispatches fewer per Mamba layer of a decode step. (In a
//! prompt the raw rows are strided views of the x projection, which the scans do not read.)

use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::op::{BcNorm, BinaryOp, Epilogue, Instr, NormKind, Op};

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
    let p = xn.op.program()?;
    let kind = p.head.filter(|k| !matches!(k, NormKind::Sum { .. }))?;
    let n = xn.shape().last();
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
            if w.numel() != n || !w.layout.is_contiguous() || w.dtype != DType::F32 {
                return None;
            }
            Some(xn.srcs[1])
        }
        _ => return None,
    };
    let raw = g.node(xn.srcs[0]);
    let ok = xn.dtype == DType::F32
        && raw.dtype == DType::F32
        && raw.numel() == xn.numel()
        && raw.layout.is_contiguous()
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
        let mut node = g.node(id).clone();
        // the weights after the op's own sources and its projection's, before an epilogue's
        let (at, dt_proj) = match &node.op {
            Op::Epilogue(e) => (e.inner_srcs, &e.inner),
            op => (node.srcs.len(), op),
        };
        let Op::SsmScan { dt_proj, .. } = dt_proj else {
            unreachable!("found on scans");
        };
        let scan = Op::SsmScan {
            dt_proj: dt_proj.clone(),
            bc_norm: Some(norm),
        };
        let mut srcs = node.srcs[..at].to_vec();
        srcs[4] = raw[0];
        srcs[5] = raw[1];
        srcs.extend(&weights);
        srcs.extend(&node.srcs[at..]);
        node.srcs = srcs.iter().map(|&s| rw.get(s)).collect();
        node.op = match node.op {
            Op::Epilogue(e) => Op::Epilogue(Box::new(Epilogue {
                inner: scan,
                inner_srcs: at + weights.len(),
                ..*e
            })),
            _ => scan,
        };
        rw.push(node)
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
