//! What the viewer shows, as plain data: a compiled graph with its plan and timings, and the
//! state of the caches. Built on the worker thread and sent to the UI.

use std::time::Duration;
use weft_graph::{Op, Plan};
use weft_models::Session;
use weft_models::memory::LayerMemory;

/// One node of a compiled graph.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: u32,
    pub name: String,
    pub op: &'static str,
    /// The fused program, for fused nodes.
    pub detail: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub srcs: Vec<u32>,
    /// Layer index, from the `blk.N.` weights the node depends on.
    pub layer: Option<usize>,
    /// Arena byte offset and size, when the node owns arena memory.
    pub slot: Option<(usize, usize)>,
    /// First and last schedule step the node is live.
    pub live: Option<(usize, usize)>,
    /// Scheduled (a kernel launch).
    pub dispatch: bool,
    pub fused: bool,
    pub time: Option<Duration>,
}

/// A compiled graph with its plan figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphView {
    pub title: String,
    pub nodes: Vec<NodeView>,
    pub steps: usize,
    pub arena_bytes: usize,
    pub naive_bytes: usize,
    pub dispatches: usize,
}

fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    rest.split('.').next()?.parse().ok()
}

impl GraphView {
    /// A view of a plan, with per-node times when the backend measured them.
    pub fn from_plan(title: &str, plan: &Plan, timings: &[(u32, Duration)]) -> GraphView {
        let g = &plan.graph;
        let mut layer: Vec<Option<usize>> = vec![None; g.len()];
        for id in g.ids() {
            let n = g.node(id);
            layer[id.index()] = match &n.op {
                Op::External { name, .. } => {
                    layer_of(name).or_else(|| name.rsplit('.').next().and_then(|l| l.parse().ok()))
                }
                _ => n.srcs.iter().filter_map(|s| layer[s.index()]).max(),
            };
        }
        let nodes = g
            .ids()
            .map(|id| {
                let n = g.node(id);
                NodeView {
                    id: id.0,
                    name: n.name.clone(),
                    op: n.op.name(),
                    detail: match &n.op {
                        Op::Fused(_) | Op::Epilogue(_) => n.op.describe(),
                        _ => String::new(),
                    },
                    shape: n.shape().dims().to_vec(),
                    dtype: n.dtype.to_string(),
                    srcs: n.srcs.iter().map(|s| s.0).collect(),
                    layer: layer[id.index()],
                    slot: plan.slots[id.index()].map(|s| (s.offset, s.bytes)),
                    live: plan.live[id.index()],
                    dispatch: plan.schedule.contains(&id),
                    fused: matches!(n.op, Op::Fused(_) | Op::Epilogue(_)),
                    time: timings.iter().find(|t| t.0 == id.0).map(|t| t.1),
                }
            })
            .collect();
        GraphView {
            title: title.to_string(),
            nodes,
            steps: plan.schedule.len(),
            arena_bytes: plan.arena_bytes,
            naive_bytes: plan.naive_bytes,
            dispatches: plan.dispatches(),
        }
    }
}

/// One layer's share of the caches.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerCache {
    pub kind: &'static str,
    /// Bytes reserved for this layer's caches.
    pub bytes: usize,
}

/// The caches at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheView {
    pub cells: usize,
    /// Cells in use per sequence.
    pub cells_per_seq: Vec<usize>,
    pub cells_used: usize,
    /// Position and sequence bits of each cell (for the cell map).
    pub cell_map: Vec<(i32, u64)>,
    pub slots_used: usize,
    pub slots: usize,
    pub checkpoints: Vec<usize>,
    pub checkpoint_bytes: usize,
    pub layers: Vec<LayerCache>,
    pub tokens: Vec<usize>,
}

impl CacheView {
    pub fn from_session(s: &Session) -> CacheView {
        let m = s.memory();
        let cfg = m.config;
        let eb = cfg.kv_dtype.block_bytes();
        let layers = m
            .layers
            .iter()
            .map(|l| match *l {
                LayerMemory::Attention { width } => LayerCache {
                    kind: "attention",
                    bytes: 2 * width * eb * cfg.cells,
                },
                LayerMemory::Recurrent { conv, ssm } => LayerCache {
                    kind: "recurrent",
                    bytes: (conv + ssm) * 4 * cfg.sequences,
                },
                LayerMemory::Both { width, conv, ssm } => LayerCache {
                    kind: "both",
                    bytes: 2 * width * eb * cfg.cells + (conv + ssm) * 4 * cfg.sequences,
                },
                LayerMemory::None => LayerCache {
                    kind: "none",
                    bytes: 0,
                },
            })
            .collect();
        let cell_map = m.kv.raw();
        CacheView {
            cells: cfg.cells,
            cells_per_seq: (0..cfg.sequences)
                .map(|q| m.kv.cells_of(q).count())
                .collect(),
            cells_used: m.kv.used(),
            cell_map,
            slots_used: m.rec.used(),
            slots: cfg.sequences,
            checkpoints: (0..cfg.sequences)
                .map(|q| m.checkpoints.of(q).len())
                .collect(),
            checkpoint_bytes: m.checkpoints.bytes(),
            layers,
            tokens: m.history.iter().map(Vec::len).collect(),
        }
    }
}
