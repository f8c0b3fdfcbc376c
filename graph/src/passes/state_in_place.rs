//! Recurrent state read and written where it lives: `get_rows(cache, slots)` → `ssm_scan` (or
//! `gated_delta_net`) → `store_rows(cache, new state, slots)` becomes one scan with the cache and
//! the slots as sources (see [`Op::SsmScan`]). The state is then not copied out of its cache and
//! back, and two dispatches per layer go away.
//!
//! The rewrite applies only when nothing else reads the gathered state, the new state or the
//! cache write, and the cache is F32 (the scan's own arithmetic).

use super::Rewriter;
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::layout::{Layout, Shape};
use crate::op::Op;

/// The node itself, or the base of a view.
fn base(g: &Graph, id: NodeId) -> NodeId {
    if g.node(id).op.is_view() {
        g.node(id).srcs[0]
    } else {
        id
    }
}

fn dense(shape: &[usize], offset: usize) -> Option<Layout> {
    Some(Layout {
        offset,
        ..Layout::contiguous(Shape::new(shape)?)
    })
}

/// The source shaped like the op's `y`: x for the selective scan, v for the delta rule; `None`
/// for other ops.
fn y_source(op: &Op) -> Option<usize> {
    match op {
        Op::SsmScan => Some(1),
        Op::GatedDeltaNet { .. } => Some(3),
        _ => None,
    }
}

/// For a `store_rows` node, the scan whose new state it stores, when the pattern holds.
fn matching_scan(g: &Graph, consumers: &[Vec<NodeId>], store: NodeId) -> Option<NodeId> {
    let n = g.node(store);
    let (cache, rows, slots) = (n.srcs[0], n.srcs[1], n.srcs[2]);
    let scan = base(g, rows);
    let sn = g.node(scan);
    if sn.srcs.len() != 6 || !consumers[store.index()].is_empty() {
        return None;
    }
    let sd = g.node(sn.srcs[0]).shape();
    let [s, h, p, d] = [sd.dims()[0], sd.dims()[1], sd.dims()[2], sd.dims()[3]];
    let ny = g.node(sn.srcs[y_source(&sn.op)?]).shape().numel();
    // the store takes exactly the new-state part, and every other reader of the scan the y part
    if g.node(rows).layout != dense(&[s, h * p * d], ny)? || consumers[rows.index()] != [store] {
        return None;
    }
    for &c in &consumers[scan.index()] {
        let cn = g.node(c);
        let in_y = cn.op.is_view() && cn.layout.extent() <= ny;
        if c != rows && !in_y {
            return None;
        }
    }
    // the scan's state is exactly the gathered rows, read by nothing else
    let state = sn.srcs[0];
    let gather = base(g, state);
    let gn = g.node(gather);
    if !matches!(gn.op, Op::GetRows)
        || gn.srcs[1] != slots
        || gn.srcs[0] != cache
        || g.node(state).layout != dense(&[s, h, p, d], 0)?
        || g.node(cache).dtype != DType::F32
    {
        return None;
    }
    let only_scan = |id: NodeId| consumers[id.index()].iter().all(|&c| c == scan);
    let gather_ok = if state == gather {
        only_scan(gather)
    } else {
        consumers[gather.index()] == [state] && only_scan(state)
    };
    gather_ok.then_some(scan)
}

pub fn state_in_place(g: &Graph) -> Graph {
    let consumers = g.consumers();
    // scan → its store
    let mut store_of: Vec<Option<NodeId>> = vec![None; g.len()];
    let mut dropped = vec![false; g.len()];
    for id in g.ids() {
        if matches!(g.node(id).op, Op::StoreRows)
            && let Some(scan) = matching_scan(g, &consumers, id)
        {
            store_of[scan.index()] = Some(id);
            dropped[id.index()] = true;
        }
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if dropped[id.index()] {
            continue;
        }
        let Some(store) = store_of[id.index()] else {
            rw.copy(id);
            continue;
        };
        let (sn, st) = (g.node(id), g.node(store));
        let ydims = g.node(sn.srcs[y_source(&sn.op).unwrap_or(1)]).shape();
        let mut node = sn.clone();
        node.srcs = std::iter::once(st.srcs[0])
            .chain(sn.srcs[1..].iter().copied())
            .chain(std::iter::once(st.srcs[2]))
            .map(|s| rw.get(s))
            .collect();
        node.layout = Layout::contiguous(ydims);
        let new = rw.push(node);
        rw.alias(id, new);
    }
    rw.finish()
}
