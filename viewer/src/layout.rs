//! A layered DAG layout: each node's row is its longest-path depth from the leaves; nodes of a
//! row are spread left to right. A collapsed layer becomes one box (its nodes share it).

use crate::snapshot::NodeView;
use std::collections::{BTreeSet, HashMap};

/// Where a node (or a collapsed layer) is drawn, in layout units.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// Nodes drawn in this box (one unless it is a collapsed layer).
    pub nodes: Vec<u32>,
    pub label: String,
    pub x: f32,
    pub y: f32,
    pub collapsed_layer: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    pub boxes: Vec<Placed>,
    /// Edges between boxes (indices into `boxes`).
    pub edges: Vec<(usize, usize)>,
    /// Box of each node id.
    pub box_of: HashMap<u32, usize>,
}

pub const COL: f32 = 190.0;
pub const ROW: f32 = 70.0;

/// Lays out `nodes` (in topological order), hiding views, inputs and externals unless
/// `show_leaves`, and collapsing the layers in `collapsed`.
pub fn layout(nodes: &[NodeView], collapsed: &BTreeSet<usize>, show_leaves: bool) -> Layout {
    let shown = |n: &NodeView| show_leaves || n.dispatch;
    let mut out = Layout::default();
    let mut depth: HashMap<u32, usize> = HashMap::new();
    let mut layer_box: HashMap<usize, usize> = HashMap::new();
    let mut rows: Vec<usize> = vec![];
    for n in nodes {
        let d = n
            .srcs
            .iter()
            .filter_map(|s| depth.get(s))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(n.id, d);
        if !shown(n) {
            continue;
        }
        if let Some(l) = n.layer.filter(|l| collapsed.contains(l)) {
            if let Some(&b) = layer_box.get(&l) {
                out.boxes[b].nodes.push(n.id);
                out.box_of.insert(n.id, b);
                continue;
            }
            layer_box.insert(l, out.boxes.len());
        }
        let row = d;
        if rows.len() <= row {
            rows.resize(row + 1, 0);
        }
        let col = rows[row];
        rows[row] += 1;
        let (label, collapsed_layer) = match n.layer.filter(|l| collapsed.contains(l)) {
            Some(l) => (format!("layer {l}"), Some(l)),
            None => (n.op.to_string(), None),
        };
        out.box_of.insert(n.id, out.boxes.len());
        out.boxes.push(Placed {
            nodes: vec![n.id],
            label,
            x: col as f32 * COL,
            y: row as f32 * ROW,
            collapsed_layer,
        });
    }
    // Edges pass through hidden nodes (views) to the boxes they read from.
    let srcs: HashMap<u32, &[u32]> = nodes.iter().map(|n| (n.id, n.srcs.as_slice())).collect();
    fn sources(
        id: u32,
        srcs: &HashMap<u32, &[u32]>,
        boxes: &HashMap<u32, usize>,
        out: &mut Vec<usize>,
        depth: usize,
    ) {
        if let Some(&b) = boxes.get(&id) {
            out.push(b);
        } else if depth < 64 {
            for &s in srcs.get(&id).copied().unwrap_or(&[]) {
                sources(s, srcs, boxes, out, depth + 1);
            }
        }
    }
    let mut edges = BTreeSet::new();
    for n in nodes {
        let Some(&to) = out.box_of.get(&n.id) else {
            continue;
        };
        let mut from = vec![];
        for &s in &n.srcs {
            sources(s, &srcs, &out.box_of, &mut from, 0);
        }
        for f in from {
            if f != to {
                edges.insert((f, to));
            }
        }
    }
    out.edges = edges.into_iter().collect();
    out
}
