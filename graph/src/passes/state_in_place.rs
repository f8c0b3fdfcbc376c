//! Recurrent state read and written where it lives: `get_rows(cache, slots)` → `ssm_scan` (or
//! `gated_delta_net`) → `store_rows(cache, new state, slots)` becomes one scan with the cache and
//! the slots as sources (see [`Op::SsmScan`]). The state is then not copied out of its cache and
//! back, and two dispatches per layer go away. Likewise the conv step's window: `get_rows` →
//! `concat` with the new tokens → `ssm_conv`, its last rows stored back, becomes one
//! `ssm_conv` on the cache (see [`Op::SsmConv`]).
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
        Op::SsmScan { .. } => Some(1),
        Op::GatedDeltaNet { .. } => Some(3),
        _ => None,
    }
}

/// A node to replace: its new sources (old ids) and layout.
struct Rewrite {
    node: NodeId,
    srcs: Vec<NodeId>,
    layout: Layout,
}

/// For a `store_rows` node, the scan whose new state it stores, when the pattern holds.
fn matching_scan(g: &Graph, consumers: &[Vec<NodeId>], store: NodeId) -> Option<Rewrite> {
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
        if c.index() >= g.len() {
            return None; // the scan's whole output is a graph output
        }
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
    let srcs = std::iter::once(cache)
        .chain(sn.srcs[1..].iter().copied())
        .chain(std::iter::once(slots))
        .collect();
    let layout = Layout::contiguous(g.node(sn.srcs[y_source(&sn.op)?]).shape());
    gather_ok.then_some(Rewrite {
        node: scan,
        srcs,
        layout,
    })
}

/// For a `store_rows` node, the conv step whose new window it stores: `get_rows` of the
/// window, `concat` with the new tokens, `ssm_conv`, and the window's last `K−1` rows (a view
/// of the concatenation, or its dense copy) stored back.
fn matching_conv(g: &Graph, consumers: &[Vec<NodeId>], store: NodeId) -> Option<Rewrite> {
    let n = g.node(store);
    let (cache, rows, slots) = (n.srcs[0], n.srcs[1], n.srcs[2]);
    let only = |id: NodeId, c: NodeId| consumers[id.index()] == [c];
    if !consumers[store.index()].is_empty() || !only(rows, store) {
        return None;
    }
    // the stored rows: [S, (K−1)·C] over the concatenation, directly or through a dense copy
    let mut src = base(g, rows);
    let copy = matches!(g.node(src).op, Op::Contiguous).then_some(src);
    let (window, xc) = match copy {
        Some(cp) => {
            let v = g.node(cp).srcs[0];
            if !only(cp, rows) || !only(v, cp) || !g.node(v).op.is_view() {
                return None;
            }
            src = g.node(v).srcs[0];
            (v, src)
        }
        None => (rows, src),
    };
    let xn = g.node(xc);
    let Op::Concat { dim: 1 } = xn.op else {
        return None;
    };
    let (state, x) = (xn.srcs[0], xn.srcs[1]);
    let [s, km1, c] = [
        g.node(state).shape().dims()[0],
        g.node(state).shape().dims()[1],
        g.node(state).shape().dims()[2],
    ];
    let t = g.node(x).shape().dims()[1];
    // the window read back is rows t.. of each sequence's concatenation
    let tail = Layout {
        offset: t * c,
        strides: {
            let mut st = Layout::contiguous(Shape::new(&[s, km1, c])?).strides;
            st[0] = (km1 + t) * c;
            st
        },
        ..Layout::contiguous(Shape::new(&[s, km1, c])?)
    };
    let wl = g.node(window).layout;
    let window_ok = match copy {
        Some(cp) => {
            wl.shape == tail.shape
                && wl.offset == tail.offset
                && wl.strides()[..3] == tail.strides()[..3]
                && g.node(rows).layout == dense(&[s, km1 * c], 0)?
                && g.node(cp).layout.is_contiguous()
        }
        // a view straight over the concatenation is dense only for one sequence
        None => s == 1 && wl == dense(&[s, km1 * c], t * c)?,
    };
    // the conv reads the concatenation, which nothing else reads
    let conv = consumers[xc.index()]
        .iter()
        .copied()
        .find(|&id| id.index() < g.len() && matches!(g.node(id).op, Op::SsmConv))?;
    let readers_ok = consumers[xc.index()]
        .iter()
        .all(|&id| id == conv || id == window);
    let gather = base(g, state);
    let gn = g.node(gather);
    let gather_ok = matches!(gn.op, Op::GetRows)
        && gn.srcs[1] == slots
        && gn.srcs[0] == cache
        && g.node(state).layout == dense(&[s, km1, c], 0)?
        && g.node(cache).dtype == DType::F32
        && (state == gather || only(gather, state))
        && only(state, xc);
    (window_ok && readers_ok && gather_ok && g.node(conv).srcs[0] == xc).then(|| Rewrite {
        node: conv,
        srcs: vec![cache, x, g.node(conv).srcs[1], slots],
        layout: g.node(conv).layout,
    })
}

pub fn state_in_place(g: &Graph) -> Graph {
    let mut consumers = g.consumers();
    // an output is read by the caller: count that as a reader, so nothing it needs is dropped
    let caller = NodeId(u32::MAX);
    for (_, o) in &g.outputs {
        consumers[o.index()].push(caller);
    }
    let mut rewrite: Vec<Option<Rewrite>> = (0..g.len()).map(|_| None).collect();
    let mut dropped = vec![false; g.len()];
    for id in g.ids() {
        if !matches!(g.node(id).op, Op::StoreRows) {
            continue;
        }
        let found = matching_scan(g, &consumers, id).or_else(|| matching_conv(g, &consumers, id));
        if let Some(r) = found {
            dropped[id.index()] = true;
            let at = r.node.index();
            rewrite[at] = Some(r);
        }
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if dropped[id.index()] {
            continue;
        }
        let Some(r) = &rewrite[id.index()] else {
            rw.copy(id);
            continue;
        };
        let mut node = g.node(id).clone();
        node.srcs = r.srcs.iter().map(|&s| rw.get(s)).collect();
        node.layout = r.layout;
        let new = rw.push(node);
        rw.alias(id, new);
    }
    rw.finish()
}

#[cfg(test)]
mod tests {
    use crate::{Access, BufferId, DType, GraphBuilder, Op, PlanOptions, plan};

    /// A Mamba2-like step on a state cache; with `expose`, the gathered state is also an output.
    fn scan_step(expose: bool) -> crate::Graph {
        let (s, t, h, p, n) = (1, 2, 2, 2, 4);
        let mut b = GraphBuilder::new();
        let f = DType::F32;
        let cache = b
            .external("cache", &[3, h * p * n], f, BufferId(0), Access::ReadWrite)
            .unwrap();
        let slots = b.input("slots", &[s], DType::I32).unwrap();
        let x = b.input("x", &[s, t, h, p], f).unwrap();
        let dt = b.input("dt", &[s, t, h], f).unwrap();
        let a = b.input("a", &[h, 1], f).unwrap();
        let bm = b.input("b", &[s, t, 1, n], f).unwrap();
        let cm = b.input("c", &[s, t, 1, n], f).unwrap();
        let rows = b.get_rows(cache, slots).unwrap();
        let state = b.reshape(rows, &[s, h, p, n]).unwrap();
        let (y, ns) = b.ssm_scan(state, x, dt, a, bm, cm).unwrap();
        let ns = b.contiguous(ns).unwrap();
        let ns = b.reshape(ns, &[s, h * p * n]).unwrap();
        b.store_rows(cache, ns, slots).unwrap();
        b.output(y, "y").unwrap();
        if expose {
            b.output(rows, "state").unwrap();
        }
        b.finish()
    }

    fn ops(g: &crate::Graph) -> Vec<&'static str> {
        let p = plan(g, PlanOptions::default());
        p.schedule
            .iter()
            .map(|&i| p.graph.node(i).op.name())
            .collect()
    }

    #[test]
    fn the_scan_takes_the_cache_unless_the_gathered_state_is_read_elsewhere() {
        let g = scan_step(false);
        assert_eq!(ops(&g), ["ssm_scan"]);
        let p = plan(&g, PlanOptions::default());
        let scan = p.schedule[0];
        assert!(matches!(p.graph.node(scan).op, Op::SsmScan { .. }));
        assert_eq!(p.graph.node(scan).srcs.len(), 7);
        assert!(p.graph.has_side_effect(scan));
        // an output that needs the gathered rows keeps the three ops
        assert_eq!(
            ops(&scan_step(true)),
            ["get_rows", "ssm_scan", "store_rows"]
        );
    }
}
