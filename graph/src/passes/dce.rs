//! Dead-node removal: keeps what the outputs and the cache writes need.

use super::Rewriter;
use crate::graph::Graph;

pub fn remove_dead(g: &Graph) -> Graph {
    let mut live = vec![false; g.len()];
    for (_, id) in &g.outputs {
        live[id.index()] = true;
    }
    for id in g.ids() {
        if g.has_side_effect(id) {
            live[id.index()] = true;
        }
    }
    for id in g.ids().rev() {
        if live[id.index()] {
            for &s in &g.node(id).srcs {
                live[s.index()] = true;
            }
        }
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if live[id.index()] {
            rw.copy(id);
        }
    }
    rw.finish()
}
