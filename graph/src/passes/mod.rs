//! Graph passes. Each takes a graph and returns a new one; [`optimize`] runs them in order:
//! dead-node removal → view folding → recurrent state in place → legalization → weights
//! renormalised by their sum as one kernel → elementwise fusion → the softmax of values
//! picked by `get_rows` into one → mat-vecs sharing an input into one → ropes of adjacent heads
//! into one → KV cache writes, then the ropes of q and the new key, into decode attention →
//! residual adds into matmuls → elementwise epilogues into their producers (over part of a
//! mat-vec's output, then whole results), and their elementwise sources into them → row norms
//! into the mat-vecs they feed, other elementwise programs into the mat-vecs that read them
//! alone, Mamba1's dt projection and Jamba's B/C norms into the scan, and q/k norms and gates
//! into the delta rule → a mixture's top-k choice into the ops that read it → dead-node
//! removal (the nineteen fusing passes only with [`PassOptions::fuse`]).

mod attention_store;
mod dce;
mod delta_gates;
mod delta_qk_norm;
mod epilogue;
mod epilogue_inputs;
mod epilogue_range;
mod fuse;
mod legalize;
mod matmul_add;
mod matmul_cat;
mod matvec_input;
mod norm_input;
mod rope_attention;
mod rope_pair;
mod scan_bc_norm;
mod scan_dt;
mod softmax_gather;
mod state_in_place;
mod sum_norm;
mod top_k_inline;
mod views;

pub use attention_store::attention_store;
pub use dce::remove_dead;
pub use delta_gates::delta_gates;
pub use delta_qk_norm::delta_qk_norm;
pub use epilogue::{MAX_EPILOGUE_SOURCES, epilogue};
pub use epilogue_inputs::{MAX_EXTERNALS, epilogue_inputs};
pub use epilogue_range::epilogue_range;
pub use fuse::fuse_elementwise;
pub use legalize::legalize;
pub use matmul_add::matmul_add;
pub use matmul_cat::matmul_cat;
pub use matvec_input::{MAX_X_GROUPS, MAX_X_SOURCES, matvec_input};
pub use norm_input::norm_input;
pub use rope_attention::rope_attention;
pub use rope_pair::rope_pair;
pub use scan_bc_norm::scan_bc_norm;
pub use scan_dt::{MAX_SCAN_DT_TOKENS, scan_dt};
pub use softmax_gather::softmax_gather;
pub use state_in_place::state_in_place;
pub use sum_norm::sum_norm;
pub use top_k_inline::{MAX_TOP_K_WORK, top_k_inline};
pub use views::fold_views;

use crate::graph::{Graph, Node, NodeId};

/// Which optional passes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassOptions {
    pub fuse: bool,
    /// With `fuse`: a small mixture's choice of experts made by the ops that read it
    /// ([`top_k_inline`]); off, the top_k dispatch stays (a backend whose threads would walk
    /// the logits serially, a GPU's, asks for that: `Backend::pass_options`).
    pub inline_top_k: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            fuse: true,
            inline_top_k: true,
        }
    }
}

/// Runs the standard pipeline.
pub fn optimize(g: &Graph, opts: PassOptions) -> Graph {
    let g = remove_dead(g);
    let g = fold_views(&g);
    let g = if opts.fuse {
        // (views folding leaves dead views behind, which would look like readers)
        remove_dead(&state_in_place(&remove_dead(&g)))
    } else {
        g
    };
    let g = legalize(&g);
    if opts.fuse {
        let g = remove_dead(&fuse_elementwise(&remove_dead(&sum_norm(&g))));
        let g = remove_dead(&softmax_gather(&g));
        // (the merging passes leave dead readers behind, which would look like readers)
        let g = remove_dead(&attention_store(&rope_pair(&matmul_cat(&g))));
        let g = rope_attention(&g);
        let g = remove_dead(&epilogue_range(&matmul_add(&g)));
        let g = remove_dead(&epilogue(&g));
        let g = matvec_input(&norm_input(&epilogue_inputs(&g)));
        let g = scan_bc_norm(&scan_dt(&g));
        let g = delta_gates(&delta_qk_norm(&g));
        if opts.inline_top_k {
            remove_dead(&top_k_inline(&g))
        } else {
            remove_dead(&g)
        }
    } else {
        g
    }
}

/// The ops left after [`optimize`], described, inputs and views left out (for the passes'
/// tests).
#[cfg(test)]
pub(crate) fn described(g: &Graph) -> Vec<String> {
    let g = optimize(g, PassOptions::default());
    g.ids()
        .map(|i| &g.node(i).op)
        .filter(|op| !matches!(op, crate::op::Op::Input { .. } | crate::op::Op::View))
        .map(|op| op.describe())
        .collect()
}

/// Runs `once` (which says whether it changed anything) until it changes nothing, at most
/// `max` times.
pub(crate) fn rounds(g: &Graph, max: usize, once: impl Fn(&Graph) -> (Graph, bool)) -> Graph {
    let (mut g, mut more) = once(g);
    for _ in 1..max {
        if !more {
            break;
        }
        (g, more) = once(&g);
    }
    g
}

/// The shape of the passes that merge nodes into one: `find` says, per node, what it takes in
/// and which nodes go with it (dropped); `emit` then builds its replacement, after every node
/// it reads. Other nodes are copied. `None` when nothing was found.
pub(crate) fn merge_into<F>(
    g: &Graph,
    mut find: impl FnMut(NodeId) -> Option<(F, Vec<NodeId>)>,
    mut emit: impl FnMut(&mut Rewriter, NodeId, F) -> NodeId,
) -> Option<Graph> {
    let mut found: Vec<Option<F>> = g.ids().map(|_| None).collect();
    let mut dropped = vec![false; g.len()];
    for id in g.ids() {
        if let Some((f, gone)) = find(id) {
            for n in gone {
                dropped[n.index()] = true;
            }
            found[id.index()] = Some(f);
        }
    }
    if found.iter().all(Option::is_none) {
        return None;
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if dropped[id.index()] {
            continue;
        }
        match found[id.index()].take() {
            Some(f) => {
                let new = emit(&mut rw, id, f);
                rw.alias(id, new);
            }
            None => {
                rw.copy(id);
            }
        }
    }
    Some(rw.finish())
}

/// Builds a new graph from an old one, node by node, remapping sources and outputs.
pub(crate) struct Rewriter<'a> {
    pub old: &'a Graph,
    pub out: Graph,
    map: Vec<Option<NodeId>>,
}

impl<'a> Rewriter<'a> {
    pub fn new(old: &'a Graph) -> Self {
        Rewriter {
            old,
            out: Graph::default(),
            map: vec![None; old.len()],
        }
    }

    /// New id of an old node (which must already be emitted or aliased).
    pub fn get(&self, old: NodeId) -> NodeId {
        self.map[old.index()]
            .unwrap_or_else(|| panic!("pass bug: node {} used before emitted", old.0))
    }

    /// Emits a node whose sources are already new ids.
    pub fn push(&mut self, node: Node) -> NodeId {
        let id = NodeId(self.out.nodes.len() as u32);
        self.out.nodes.push(node);
        id
    }

    /// Emits an old node with remapped sources and records the mapping.
    pub fn copy(&mut self, old: NodeId) -> NodeId {
        let mut n = self.old.node(old).clone();
        n.srcs = n.srcs.iter().map(|&s| self.get(s)).collect();
        let id = self.push(n);
        self.map[old.index()] = Some(id);
        id
    }

    /// Makes uses of `old` refer to the new node `new`.
    pub fn alias(&mut self, old: NodeId, new: NodeId) {
        self.map[old.index()] = Some(new);
    }

    /// Old node `old` (a product merged into `base`) becomes a dense view of `base` at element
    /// `offset`, with its own shape, dtype and name.
    pub fn view_in(&mut self, old: NodeId, base: NodeId, offset: usize) {
        let n = self.old.node(old);
        let view = self.push(Node {
            op: crate::op::Op::View,
            srcs: vec![base],
            layout: crate::layout::Layout {
                offset,
                ..crate::layout::Layout::contiguous(n.shape())
            },
            dtype: n.dtype,
            name: n.name.clone(),
        });
        self.alias(old, view);
    }

    /// Old view `old` of a node merged into `base` at element `shift`: the same view of `base`,
    /// its offset shifted (a view addresses its base's storage).
    pub fn rebase_view(&mut self, old: NodeId, base: NodeId, shift: usize) {
        let mut view = self.old.node(old).clone();
        view.srcs = vec![base];
        view.layout.offset += shift;
        let new = self.push(view);
        self.alias(old, new);
    }

    pub fn finish(mut self) -> Graph {
        self.out.outputs = self
            .old
            .outputs
            .iter()
            .map(|(n, id)| {
                (
                    n.clone(),
                    self.map[id.index()].unwrap_or_else(|| panic!("pass bug: output {n} dropped")),
                )
            })
            .collect();
        self.out
    }
}
