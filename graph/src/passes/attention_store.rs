//! In decode (one query token), the writes of the new key and value into the KV caches —
//! `store_rows` into each cache, a window view of it, `attention` over the windows — become
//! part of the attention (`stores`): one dispatch instead of three. The attention reads the new
//! row from the new key and value themselves, so it never reads a cache row it writes.

use super::{Rewriter, merge_into};
use crate::graph::{Graph, NodeId};
use crate::op::Op;

/// What one attention node's rewrite needs.
struct Fold {
    /// The window views of the k and v caches (dropped; rebuilt over the caches).
    views: [NodeId; 2],
    /// The two stores (dropped).
    stores: [NodeId; 2],
}

/// The store under a window view read by `attn` alone, when nothing else reads either.
fn store_under(g: &Graph, consumers: &[Vec<NodeId>], view: NodeId, attn: NodeId) -> Option<NodeId> {
    let vn = g.node(view);
    if !vn.op.is_view() || consumers[view.index()] != [attn] {
        return None;
    }
    let st = vn.srcs[0];
    let sn = g.node(st);
    let ok = matches!(sn.op, Op::StoreRows)
        && consumers[st.index()] == [view]
        && g.node(sn.srcs[0]).op.is_external();
    ok.then_some(st)
}

fn fold(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], a: NodeId) -> Option<Fold> {
    let an = g.node(a);
    let Op::Attention { stores: false, .. } = an.op else {
        return None;
    };
    let q = g.node(an.srcs[0]).shape();
    let [t, d] = [q.dims()[0], q.dims()[2]];
    let (vk, vv) = (an.srcs[1], an.srcs[2]);
    let sk = store_under(g, consumers, vk, a)?;
    let sv = store_under(g, consumers, vv, a)?;
    let (skn, svn) = (g.node(sk), g.node(sv));
    let idx = skn.srcs[2];
    let kv = g.node(vk).shape().dims()[1];
    let dv = g.node(vv).shape().dims()[2];
    let dense_row = |id: NodeId, width: usize| {
        let l = g.node(id).layout;
        l.shape.dims() == [1, width] && l.is_contiguous()
    };
    // the windows are the caches' first rows, which are `[cells, width]`
    let window = |view: NodeId, cache: NodeId, width: usize| {
        let c = g.node(cache).shape();
        g.node(view).layout.offset == 0 && c.rank() == 2 && c.dims()[1] == width
    };
    let caches = [skn.srcs[0], svn.srcs[0]];
    // nothing between the first store and the attention touches either cache
    let first = sk.min(sv);
    let quiet = (first.0 + 1..a.0).map(NodeId).all(|i| {
        [sk, sv, vk, vv].contains(&i)
            || g.node(i)
                .srcs
                .iter()
                .all(|&s| !caches.contains(&g.storage_of(s)))
    });
    let ok = t == 1
        && svn.srcs[2] == idx
        && g.node(idx).numel() == 1
        && d.is_multiple_of(2)
        && dv.is_multiple_of(2)
        && dense_row(skn.srcs[1], kv * d)
        && dense_row(svn.srcs[1], kv * dv)
        && window(vk, skn.srcs[0], kv * d)
        && window(vv, svn.srcs[0], kv * dv)
        && [sk, sv, vk, vv].iter().all(|n| !is_output[n.index()])
        && quiet;
    ok.then_some(Fold {
        views: [vk, vv],
        stores: [sk, sv],
    })
}

pub fn attention_store(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id| {
        let f = fold(g, &consumers, &is_output, id)?;
        let gone = f.views.iter().chain(&f.stores).copied().collect();
        Some((f, gone))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, f: Fold| {
        // the windows, now views of the caches themselves
        let windows = f.views.map(|v| {
            let mut view = g.node(v).clone();
            let cache = g.node(view.srcs[0]).srcs[0];
            view.srcs = vec![rw.get(cache)];
            rw.push(view)
        });
        let mut node = g.node(id).clone();
        if let Op::Attention { stores, .. } = &mut node.op {
            *stores = true;
        }
        let [sk, sv] = f.stores.map(|s| g.node(s));
        let mut srcs = vec![rw.get(node.srcs[0]), windows[0], windows[1]];
        srcs.extend(node.srcs[3..].iter().map(|&s| rw.get(s)));
        srcs.extend([sk.srcs[1], sv.srcs[1], sk.srcs[2]].map(|s| rw.get(s)));
        node.srcs = srcs;
        rw.push(node)
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}
