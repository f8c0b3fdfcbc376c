//! The recorded graph: nodes in creation order (which is a topological order), outputs, inputs.

use crate::dtype::DType;
use crate::layout::{Layout, Shape};
use crate::op::{Access, Op};

/// Index of a node in its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A handle to a node while building: small, `Copy`, carrying shape and dtype for convenience.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tensor {
    pub id: NodeId,
    pub shape: Shape,
    pub dtype: DType,
}

impl Tensor {
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

/// One recorded operation. For views, `layout` addresses the storage of the source; for every
/// other node it is the dense layout of the node's own result.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub srcs: Vec<NodeId>,
    pub layout: Layout,
    pub dtype: DType,
    pub name: String,
}

impl Node {
    pub fn shape(&self) -> Shape {
        self.layout.shape
    }

    pub fn numel(&self) -> usize {
        self.layout.shape.numel()
    }
}

/// A lazily built computation: nothing has run. Passes transform it; backends execute its plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Named results read back after a run, in the order given.
    pub outputs: Vec<(String, NodeId)>,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn ids(&self) -> impl DoubleEndedIterator<Item = NodeId> + '_ {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// The node whose storage `id` reads or writes: itself, or for a view the base it views,
    /// and for `StoreRows` the cache it writes.
    pub fn storage_of(&self, mut id: NodeId) -> NodeId {
        loop {
            let n = self.node(id);
            match n.op {
                Op::View | Op::StoreRows => id = n.srcs[0],
                _ => return id,
            }
        }
    }

    /// Host inputs in creation order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.ids()
            .filter(|&i| matches!(self.node(i).op, Op::Input { .. }))
            .collect()
    }

    /// The input with that name, if any.
    pub fn input_named(&self, name: &str) -> Option<NodeId> {
        self.ids()
            .find(|&i| matches!(&self.node(i).op, Op::Input { name: n } if n == name))
    }

    /// For every node, whether it is one of the graph's outputs.
    pub fn output_mask(&self) -> Vec<bool> {
        let mut m = vec![false; self.nodes.len()];
        for (_, id) in &self.outputs {
            m[id.index()] = true;
        }
        m
    }

    /// Consumers of every node (each consumer listed once per source slot).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut out = vec![Vec::new(); self.nodes.len()];
        for id in self.ids() {
            for &s in &self.node(id).srcs {
                out[s.index()].push(id);
            }
        }
        out
    }

    /// True when a node has effects beyond its value (writes a cache).
    pub fn has_side_effect(&self, id: NodeId) -> bool {
        let n = self.node(id);
        match n.op.core(n.srcs.len()) {
            (Op::StoreRows | Op::Attention { stores: true, .. }, _) => true,
            (Op::SsmScan { .. } | Op::GatedDeltaNet { .. }, srcs) => srcs == 7,
            (Op::SsmConv, srcs) => srcs == 4,
            _ => false,
        }
    }

    /// True when the node's storage is a read-write external.
    pub fn is_cache(&self, id: NodeId) -> bool {
        matches!(
            self.node(self.storage_of(id)).op,
            Op::External {
                access: Access::ReadWrite,
                ..
            }
        )
    }
}
