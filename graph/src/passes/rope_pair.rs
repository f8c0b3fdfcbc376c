//! Two ropes of one token whose inputs lie side by side in one buffer (q and k after
//! `matmul_cat`), with the same positions and parameters, become one rope over both: one
//! dispatch instead of two. Each old rope becomes a view of its heads, and views of it move
//! onto the merged rope with their offsets shifted.

use super::Rewriter;
use crate::graph::{Graph, Node, NodeId};
use crate::layout::{Layout, Shape};
use crate::op::Op;

/// A rope of one token reading a dense view: (base, offset, heads, head size).
fn one_token_rope(g: &Graph, id: NodeId) -> Option<(NodeId, usize, usize, usize)> {
    let n = g.node(id);
    let Op::Rope(_) = n.op else { return None };
    let x = g.node(n.srcs[0]);
    let [t, h, d] = [
        x.shape().dims()[0],
        x.shape().dims()[1],
        x.shape().dims()[2],
    ];
    (t == 1 && x.op.is_view() && x.layout.is_contiguous())
        .then(|| (x.srcs[0], x.layout.offset, h, d))
}

pub fn rope_pair(g: &Graph) -> Graph {
    // rope → (the pair's first rope, its head offset in elements) for the second of a pair
    let mut second_of: Vec<Option<(NodeId, usize)>> = vec![None; g.len()];
    let mut first_of: Vec<Option<NodeId>> = vec![None; g.len()];
    let ropes: Vec<NodeId> = g
        .ids()
        .filter(|&i| one_token_rope(g, i).is_some())
        .collect();
    for (i, &a) in ropes.iter().enumerate() {
        if first_of[a.index()].is_some() || second_of[a.index()].is_some() {
            continue;
        }
        let (base, off, h, d) = one_token_rope(g, a).expect("filtered");
        let pair = ropes[i + 1..].iter().copied().find(|&b| {
            let (bb, boff, _, bd) = one_token_rope(g, b).expect("filtered");
            first_of[b.index()].is_none()
                && second_of[b.index()].is_none()
                && bb == base
                && bd == d
                && boff == off + h * d
                && g.node(b).op == g.node(a).op
                && g.node(b).srcs[1] == g.node(a).srcs[1]
        });
        if let Some(b) = pair {
            first_of[a.index()] = Some(b);
            second_of[b.index()] = Some((a, h * d));
        }
    }
    if first_of.iter().all(Option::is_none) {
        return g.clone();
    }
    let mut rw = Rewriter::new(g);
    let mut merged: Vec<Option<NodeId>> = vec![None; g.len()];
    // a view of a member addressed that member's storage: rebase it onto the merged rope
    let member = |id: NodeId| -> Option<(NodeId, usize)> {
        match (first_of[id.index()], second_of[id.index()]) {
            (Some(_), _) => Some((id, 0)),
            (_, Some((a, off))) => Some((a, off)),
            _ => None,
        }
    };
    for id in g.ids() {
        let n = g.node(id);
        if n.op.is_view()
            && let Some((a, off)) = member(n.srcs[0])
            && let Some(m) = merged[a.index()]
        {
            rw.rebase_view(id, m, off);
            continue;
        }
        let Some((a, off)) = member(id) else {
            rw.copy(id);
            continue;
        };
        if let Some(b) = first_of[id.index()] {
            // the merged rope, where the first was: its input spans both heads' views
            let (base, xoff, h, d) = one_token_rope(g, id).expect("a member");
            let hb = g.node(g.node(b).srcs[0]).shape().dims()[1];
            let shape = Shape::new(&[1, h + hb, d]).expect("three dims");
            let x = rw.push(Node {
                op: Op::View,
                srcs: vec![rw.get(base)],
                layout: Layout {
                    offset: xoff,
                    ..Layout::contiguous(shape)
                },
                dtype: n.dtype,
                name: format!("{}.pair", g.node(n.srcs[0]).name),
            });
            let m = rw.push(Node {
                op: n.op.clone(),
                srcs: vec![x, rw.get(n.srcs[1])],
                layout: Layout::contiguous(shape),
                dtype: n.dtype,
                name: format!("{}.pair", n.name),
            });
            merged[id.index()] = Some(m);
        }
        let m = merged[a.index()].expect("the first rope comes first");
        rw.view_in(id, m, off);
    }
    rw.finish()
}
