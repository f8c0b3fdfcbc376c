//! In decode, the rotary embedding of the query and of the new key moves into the attention
//! that stores that key (`Attention::rope`, after `attention_store`): the attention rotates the
//! query row and the new key as it loads them. One dispatch fewer per attention layer.

use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::layout::Layout;
use crate::op::Op;

/// The rope behind an attention source (read directly or through a dense view), and the
/// source's element offset in the rope's output.
fn rope_of(g: &Graph, src: NodeId) -> Option<(NodeId, usize)> {
    let n = g.node(src);
    let (rope, off) = if n.op.is_view() {
        if !n.layout.is_contiguous() {
            return None;
        }
        (n.srcs[0], n.layout.offset)
    } else {
        (src, 0)
    };
    matches!(g.node(rope).op, Op::Rope(_)).then_some((rope, off))
}

/// What the rewrite of one attention needs: its ropes (one when `rope_pair` merged q's and
/// k's), the views it read them through, and where q and the new key start in each.
struct Fold {
    ropes: Vec<NodeId>,
    views: Vec<NodeId>,
    q: (NodeId, usize),
    k: (NodeId, usize),
}

fn fold(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], a: NodeId) -> Option<Fold> {
    let an = g.node(a);
    let Op::Attention {
        stores: true,
        rope: None,
        ..
    } = an.op
    else {
        return None;
    };
    let n = an.srcs.len();
    let (qs, ks) = (an.srcs[0], an.srcs[n - 3]);
    let q = rope_of(g, qs)?;
    let k = rope_of(g, ks)?;
    let (rq, rk) = (g.node(q.0), g.node(k.0));
    let mut ropes = vec![q.0];
    if k.0 != q.0 {
        ropes.push(k.0);
    }
    let views: Vec<NodeId> = [qs, ks]
        .into_iter()
        .filter(|&s| g.node(s).op.is_view())
        .collect();
    // the ropes are read by these views (or the attention) alone, and the views by it alone
    let readers_ok = ropes.iter().all(|r| {
        consumers[r.index()]
            .iter()
            .all(|c| views.contains(c) || *c == a)
    }) && views.iter().all(|v| consumers[v.index()] == [a]);
    let ok = rq.op == rk.op
        && rq.srcs[1] == rk.srcs[1]
        && rq.shape().dims()[0] == 1
        && readers_ok
        && ropes.iter().chain(&views).all(|x| !is_output[x.index()])
        && ropes
            .iter()
            .all(|r| g.node(g.node(*r).srcs[0]).layout.is_contiguous());
    ok.then_some(Fold { ropes, views, q, k })
}

pub fn rope_attention(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id| {
        let f = fold(g, &consumers, &is_output, id)?;
        let gone = f.ropes.iter().chain(&f.views).copied().collect();
        Some((f, gone))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, f: Fold| {
        let an = g.node(id);
        let n = an.srcs.len();
        // the unrotated rows: the ropes' inputs at the same offsets
        let mut raw = |(rope, off): (NodeId, usize), read: NodeId| {
            let input = g.node(rope).srcs[0];
            let read = g.node(read);
            rw.push(Node {
                op: Op::View,
                srcs: vec![rw.get(input)],
                layout: Layout {
                    offset: g.node(input).layout.offset + off,
                    ..Layout::contiguous(read.shape())
                },
                dtype: DType::F32,
                name: format!("{}.unrotated", read.name),
            })
        };
        let q = raw(f.q, an.srcs[0]);
        let k = raw(f.k, an.srcs[n - 3]);
        let Op::Rope(params) = g.node(f.q.0).op else {
            unreachable!("checked by fold")
        };
        let pos = g.node(f.q.0).srcs[1];
        let mut node = an.clone();
        if let Op::Attention { rope, .. } = &mut node.op {
            *rope = Some(params);
        }
        let mut srcs: Vec<NodeId> = an
            .srcs
            .iter()
            .enumerate()
            .map(|(i, &s)| match i {
                0 => q,
                i if i == n - 3 => k,
                _ => rw.get(s),
            })
            .collect();
        srcs.push(rw.get(pos));
        node.srcs = srcs;
        rw.push(node)
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}
