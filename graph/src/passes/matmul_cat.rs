//! Mat-vecs that share their activation row (a layer's q, k and v projections; gate and up)
//! become one `mul_mat_cat` whose output holds theirs side by side: one dispatch instead of
//! several. Each old product becomes a view of its columns, dense because there is one row,
//! and views of it move onto the product with their offsets shifted.
//! Weights over 128 MiB (the storage binding every WebGPU adapter offers) are left alone.

use super::Rewriter;
use crate::graph::{Graph, Node, NodeId};
use crate::layout::{Layout, Shape};
use crate::op::Op;

/// Most weights one product takes (each is a storage binding).
const MAX_WEIGHTS: usize = 4;
const MAX_WEIGHT_BYTES: usize = 128 << 20;

/// A mat-vec of one dense activation row by a dense 2-D weight that fits one binding.
fn single_row_matvec(g: &Graph, id: NodeId) -> bool {
    let n = g.node(id);
    if !matches!(n.op, Op::MatMul) || n.srcs.len() != 2 {
        return false;
    }
    let (x, w) = (g.node(n.srcs[0]), g.node(n.srcs[1]));
    let k = x.shape().last();
    let bytes = w.dtype.bytes_for(w.shape().numel()).unwrap_or(usize::MAX);
    x.shape().numel() == k
        && x.layout.is_contiguous()
        && w.shape().rank() == 2
        && w.layout.is_contiguous()
        && bytes <= MAX_WEIGHT_BYTES
}

pub fn matmul_cat(g: &Graph) -> Graph {
    // groups of mat-vecs by activation, in order of appearance
    let mut groups: Vec<(NodeId, Vec<NodeId>)> = vec![];
    for id in g.ids().filter(|&id| single_row_matvec(g, id)) {
        let x = g.node(id).srcs[0];
        match groups
            .iter_mut()
            .find(|(gx, members)| *gx == x && members.len() < MAX_WEIGHTS)
        {
            Some((_, members)) => members.push(id),
            None => groups.push((x, vec![id])),
        }
    }
    // each member: its group's first member and its first column
    let mut member_of: Vec<Option<(NodeId, usize)>> = vec![None; g.len()];
    let mut first_of: Vec<Option<Vec<NodeId>>> = vec![None; g.len()];
    for (_, members) in groups.into_iter().filter(|(_, m)| m.len() > 1) {
        let mut col = 0;
        for &m in &members {
            member_of[m.index()] = Some((members[0], col));
            col += g.node(m).shape().last();
        }
        let head = members[0];
        first_of[head.index()] = Some(members);
    }
    if first_of.iter().all(Option::is_none) {
        return g.clone();
    }
    let mut rw = Rewriter::new(g);
    // Leaves (weights, inputs) and views of them go first, so that a group's product can take
    // weights recorded after its first member.
    let mut hoisted = vec![false; g.len()];
    for id in g.ids() {
        let n = g.node(id);
        let leaf = match n.op {
            Op::External { .. } | Op::Input { .. } => true,
            Op::View => hoisted[n.srcs[0].index()],
            _ => false,
        };
        if leaf {
            hoisted[id.index()] = true;
            rw.copy(id);
        }
    }
    let mut cat_of: Vec<Option<NodeId>> = vec![None; g.len()];
    for id in g.ids().filter(|id| !hoisted[id.index()]) {
        let n = g.node(id);
        // a view of a member addressed the member's own storage: it now reads the product's,
        // its columns further along (views point straight at their base after view folding)
        if n.op.is_view()
            && let Some((first, col)) = member_of[n.srcs[0].index()]
        {
            let cat = cat_of[first.index()].expect("the first member comes first");
            rw.rebase_view(id, cat, col);
            continue;
        }
        let Some((first, col)) = member_of[id.index()] else {
            rw.copy(id);
            continue;
        };
        if let Some(members) = &first_of[id.index()] {
            // the product, where the group's first member was (every weight exists by then)
            let x = g.node(id).srcs[0];
            let total: usize = members.iter().map(|&m| g.node(m).shape().last()).sum();
            let mut dims = g.node(x).shape().dims().to_vec();
            *dims.last_mut().expect("x has a row") = total;
            let shape = Shape::new(&dims).expect("as x's shape");
            let srcs = std::iter::once(x)
                .chain(members.iter().map(|&m| g.node(m).srcs[1]))
                .map(|s| rw.get(s))
                .collect();
            let cat = rw.push(Node {
                op: Op::MatMulCat,
                srcs,
                layout: Layout::contiguous(shape),
                dtype: g.node(id).dtype,
                name: format!("{}.cat", g.node(id).name),
            });
            cat_of[id.index()] = Some(cat);
        }
        let cat = cat_of[first.index()].expect("the first member comes first");
        rw.view_in(id, cat, col);
    }
    rw.finish()
}
