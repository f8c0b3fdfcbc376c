//! A mixture's choice of experts, `top_k(logits)`, made by the ops that read it: the experts'
//! products (`MatMulId`), the picked rows (`GetRows`) and the softmax of the chosen logits each
//! select the top k of the logits row themselves (a few dozen values per row), so the top_k
//! dispatch goes. They then read the logits (F32) where they read the ids (I32); that source's
//! dtype tells them which (see [`Op::ids_source`]).

use super::Rewriter;
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::op::Op;

/// The most work the readers' selection may take, `k · E` values read per chosen id (each of
/// the readers' threads walks the row up to k times): small mixtures (8 to 64 experts, a few
/// chosen) qualify; for wide ones (hundreds of experts) the top_k dispatch is cheaper.
pub const MAX_TOP_K_WORK: usize = 512;

/// Whether top_k node `id` can go: its logits are F32 rows of contiguous elements, and every
/// reader takes the ids as the ids of its choice (once).
fn inlinable(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], id: NodeId) -> bool {
    let n = g.node(id);
    let Op::TopK { k } = n.op else { return false };
    if is_output[id.index()] {
        return false;
    }
    let l = g.node(n.srcs[0]);
    let readers = &consumers[id.index()];
    // (the logits live in the arena: the readers' loaders read them there)
    let in_arena = !matches!(g.node(g.storage_of(n.srcs[0])).op, Op::External { .. });
    l.dtype == DType::F32
        && in_arena
        && l.shape().rank() == 2
        && l.layout.strides[1] == 1
        && k * l.shape().last() <= MAX_TOP_K_WORK
        && !readers.is_empty()
        && readers.iter().all(|&r| {
            let rn = g.node(r);
            let (core, own) = rn.op.core(rn.srcs.len());
            let shape = |i: usize| rn.srcs[..own].get(i).map(|&s| g.node(s).shape());
            let at = core.ids_source(rn.numel(), shape).map(|(at, _)| at);
            at.is_some_and(|at| rn.srcs[at] == id)
                && rn.srcs.iter().filter(|&&s| s == id).count() == 1
        })
}

pub fn top_k_inline(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if inlinable(g, &consumers, &is_output, id) {
            // its readers read the logits instead
            let logits = rw.get(g.node(id).srcs[0]);
            rw.alias(id, logits);
        } else {
            rw.copy(id);
        }
    }
    rw.finish()
}

#[cfg(test)]
mod tests {
    use crate::builder::GraphBuilder;
    use crate::dtype::DType;
    use crate::passes::described;

    #[test]
    fn experts_and_their_weights_choose_themselves() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 1, 8], DType::F32).unwrap();
        let l = b.input("logits", &[1, 6], DType::F32).unwrap();
        let w = b.input("w", &[6, 4, 8], DType::F32).unwrap();
        let ids = b.top_k(l, 2).unwrap();
        let l3 = b.reshape(l, &[1, 6, 1]).unwrap();
        let c = b.get_rows(l3, ids).unwrap();
        let c = b.reshape(c, &[1, 2]).unwrap();
        let p = b.softmax(c, None, 1.0).unwrap();
        let y = b.matmul_id(x, w, ids).unwrap();
        b.output(y, "y").unwrap();
        b.output(p, "p").unwrap();
        assert_eq!(described(&b.finish()), ["soft_max", "mul_mat_id"]);
    }

    #[test]
    fn ids_read_otherwise_or_kept_stay_a_dispatch() {
        for keep in [false, true] {
            let mut b = GraphBuilder::new();
            let l = b.input("logits", &[3, 6], DType::F32).unwrap();
            let ids = b.top_k(l, 2).unwrap();
            let y = if keep {
                b.output(ids, "ids").unwrap();
                let t = b.input("t", &[3, 6, 4], DType::F32).unwrap();
                b.get_rows(t, ids).unwrap()
            } else {
                // ids read as positions
                let x = b.input("x", &[6, 1, 4], DType::F32).unwrap();
                let pos = b.reshape(ids, &[6]).unwrap();
                let p = crate::op::RopeParams {
                    n_dims: 4,
                    mode: crate::op::RopeMode::Normal,
                    freq_base: 10000.0,
                    freq_scale: 1.0,
                };
                b.rope(x, pos, p).unwrap()
            };
            b.output(y, "y").unwrap();
            assert!(
                described(&b.finish()).contains(&"top_k".to_string()),
                "{keep}"
            );
        }
    }
}
