//! View folding: every view points straight at the node whose storage it reads (chains
//! collapse), views that change nothing disappear, and `contiguous` of an already dense F32
//! tensor becomes a view.
//!
//! A view's layout addresses its base's storage. When a `contiguous` node becomes a view of
//! dense data at offset `o`, the views built on it addressed its own (dense, offset 0) storage,
//! so they move to the new base with their offset shifted by `o`.

use super::Rewriter;
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::layout::Layout;
use crate::op::Op;

/// Follows views (not cache writes, so that a view of a write stays ordered after it).
fn view_base(g: &Graph, mut id: NodeId) -> NodeId {
    while g.node(id).op.is_view() {
        id = g.node(id).srcs[0];
    }
    id
}

pub fn fold_views(g: &Graph) -> Graph {
    let mut rw = Rewriter::new(g);
    // For copies turned into views: the new node holding their data and the element offset.
    let mut moved: Vec<Option<(NodeId, usize)>> = vec![None; g.len()];
    for id in g.ids() {
        let n = g.node(id);
        let src = n.srcs.first().map(|&s| g.node(s));
        let dense_copy = matches!(n.op, Op::Contiguous)
            && src.is_some_and(|s| s.dtype == DType::F32 && s.layout.is_contiguous());
        if !(n.op.is_view() || dense_copy) {
            rw.copy(id);
            continue;
        }
        let old_base = view_base(g, n.srcs[0]);
        let (base, shift) = moved[old_base.index()].unwrap_or((rw.get(old_base), 0));
        let mut layout = match src {
            Some(s) if dense_copy => Layout {
                offset: s.layout.offset,
                ..Layout::contiguous(n.shape())
            },
            _ => n.layout,
        };
        layout.offset += shift;
        if dense_copy {
            moved[id.index()] = Some((base, layout.offset));
        }
        if rw.out.node(base).layout == layout {
            rw.alias(id, base);
            continue;
        }
        let dtype = rw.out.node(base).dtype;
        let new = rw.push(Node {
            op: Op::View,
            srcs: vec![base],
            layout,
            dtype,
            name: n.name.clone(),
        });
        rw.alias(id, new);
    }
    rw.finish()
}
