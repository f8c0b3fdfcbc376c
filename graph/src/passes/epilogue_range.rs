//! An elementwise node that reads a contiguous part of a mat-vec's output alone — Mamba2's
//! `softplus(dt + bias)` on the last columns of its input projection — runs as the mat-vec
//! writes those elements (`Epilogue::range`), in place: the node becomes a view of them. The
//! mat-vec's other readers see other elements, untouched. Runs before `epilogue`.

use super::Rewriter;
use super::epilogue::{program, results_first};
use super::epilogue_inputs::{MAX_EXTERNALS, externals};
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::layout::Layout;
use crate::op::{Epilogue, Op};

/// What a ranged epilogue takes: the mat-vec, the elementwise node's slot that reads it, and
/// the first element and count of that read.
struct Take {
    p: NodeId,
    slot: usize,
    start: usize,
    len: usize,
}

fn take(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], e: NodeId) -> Option<Take> {
    let en = g.node(e);
    program(&en.op)?;
    if en.dtype != DType::F32 {
        return None;
    }
    en.srcs.iter().enumerate().find_map(|(slot, &v)| {
        let vn = g.node(v);
        if !vn.op.is_view() {
            return None;
        }
        let p = vn.srcs[0];
        let pn = g.node(p);
        let (start, len) = (vn.layout.offset, vn.numel());
        // every other reader of p is a view of elements outside [start, start + len)
        let apart = consumers[p.index()].iter().all(|&w| {
            let wn = g.node(w);
            w == v
                || (wn.op.is_view()
                    && (wn.layout.extent() <= start || wn.layout.offset >= start + len))
        });
        let others: Vec<NodeId> = en
            .srcs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != slot)
            .map(|(_, &s)| s)
            .collect();
        let mut merged = pn.srcs.clone();
        merged.extend(&others);
        let ok = matches!(pn.op, Op::MatMul)
            && pn.dtype == DType::F32
            && vn.layout.is_contiguous()
            && vn.shape() == en.shape()
            && len < pn.numel()
            && consumers[v.index()] == [e]
            && !is_output[v.index()]
            && !is_output[p.index()]
            && apart
            // the merged op stands where the mat-vec was: the other sources must exist by then
            && others.iter().all(|s| s.0 < p.0)
            && externals(g, &merged) <= MAX_EXTERNALS;
        ok.then_some(Take {
            p,
            slot,
            start,
            len,
        })
    })
}

pub fn epilogue_range(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    // by mat-vec: the elementwise node it takes (one per mat-vec)
    let mut by_p: Vec<Option<(NodeId, Take)>> = g.ids().map(|_| None).collect();
    let mut views = vec![false; g.len()];
    for e in g.ids() {
        if let Some(t) = take(g, &consumers, &is_output, e)
            && by_p[t.p.index()].is_none()
        {
            views[g.node(e).srcs[t.slot].index()] = true;
            let p = t.p;
            by_p[p.index()] = Some((e, t));
        }
    }
    if by_p.iter().all(Option::is_none) {
        return g.clone();
    }
    let mut taken_e: Vec<Option<(NodeId, usize)>> = vec![None; g.len()];
    for (e, t) in by_p.iter().flatten() {
        taken_e[e.index()] = Some((t.p, t.start));
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if views[id.index()] {
            continue;
        }
        if let Some((e, t)) = &by_p[id.index()] {
            let (pn, en) = (g.node(id), g.node(*e));
            // the mat-vec's elements are load 0; the other sources follow in their order
            let prog = results_first(program(&en.op).expect("checked by take"), &[t.slot]);
            let others: Vec<NodeId> = en
                .srcs
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != t.slot)
                .map(|(_, &s)| rw.get(s))
                .collect();
            let mut srcs: Vec<NodeId> = pn.srcs.iter().map(|&s| rw.get(s)).collect();
            srcs.extend(&others);
            let new = rw.push(Node {
                op: Op::Epilogue(Box::new(Epilogue {
                    inner: pn.op.clone(),
                    inner_srcs: pn.srcs.len(),
                    program: prog,
                    shapes: vec![en.shape(); others.len()],
                    pair: false,
                    x_norm: None,
                    x_prog: None,
                    range: Some((t.start, t.len)),
                })),
                srcs,
                layout: pn.layout,
                dtype: pn.dtype,
                name: format!("{}+{}", pn.name, en.name),
            });
            rw.alias(id, new);
            continue;
        }
        if let Some((p, start)) = taken_e[id.index()] {
            // the elementwise node is now the mat-vec's elements it wrote
            let en = g.node(id);
            let view = rw.push(Node {
                op: Op::View,
                srcs: vec![rw.get(p)],
                layout: Layout {
                    offset: start,
                    ..Layout::contiguous(en.shape())
                },
                dtype: en.dtype,
                name: en.name.clone(),
            });
            rw.alias(id, view);
            continue;
        }
        rw.copy(id);
    }
    rw.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::op::UnaryOp;
    use crate::passes::described;

    #[test]
    fn the_last_columns_take_their_activation_in_place() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let w = b.input("w", &[10, 8], DType::F32).unwrap();
        let bias = b.input("bias", &[4], DType::F32).unwrap();
        let y = b.matmul(x, w).unwrap();
        let head = b.slice(y, 1, 0, 6).unwrap();
        let tail = b.slice(y, 1, 6, 4).unwrap();
        let tail = b.add(tail, bias).unwrap();
        let tail = b.unary(UnaryOp::Softplus, tail).unwrap();
        b.output(head, "head").unwrap();
        b.output(tail, "tail").unwrap();
        assert_eq!(
            described(&b.finish()),
            ["mul_mat then softplus(add(%0, %1)) (elements 6..10)"]
        );
    }

    #[test]
    fn overlapping_readers_keep_the_node() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let w = b.input("w", &[10, 8], DType::F32).unwrap();
        let y = b.matmul(x, w).unwrap();
        let all = b.slice(y, 1, 0, 8).unwrap();
        let tail = b.slice(y, 1, 6, 4).unwrap();
        let tail = b.unary(UnaryOp::Softplus, tail).unwrap();
        b.output(all, "all").unwrap();
        b.output(tail, "tail").unwrap();
        assert_eq!(described(&b.finish()).len(), 2);
    }
}
