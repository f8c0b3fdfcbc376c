//! A softmax over the values `get_rows` picked from a table of one-element rows — a mixture's
//! chosen logits, `softmax(get_rows(logits, top_k(logits)))` — reads them through the indices
//! itself (`Op::SoftMax::gathered`): one dispatch instead of two.

use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::op::Op;

/// For a softmax node: the get_rows and the view between them, when they can go.
fn gather(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    id: NodeId,
) -> Option<[NodeId; 2]> {
    let n = g.node(id);
    let Op::SoftMax {
        masked: false,
        gathered: false,
        ..
    } = n.op
    else {
        return None;
    };
    let v = n.srcs[0];
    let vn = g.node(v);
    if !vn.op.is_view() {
        return None;
    }
    let r = vn.srcs[0];
    let rn = g.node(r);
    if !matches!(rn.op, Op::GetRows) {
        return None;
    }
    let (table, ids) = (g.node(rn.srcs[0]), g.node(rn.srcs[1]));
    let [rows, d] = [n.shape().dims()[0], n.shape().last()];
    let ok = n.shape().rank() == 2
        && table.dtype == DType::F32
        && table.shape().rank() == 3
        && table.shape().dims()[0] == rows
        && table.shape().last() == 1
        && ids.shape().dims() == [rows, d]
        && ids.layout.is_contiguous()
        && rn.shape().numel() == n.numel()
        && vn.layout.offset == 0
        && vn.layout.is_contiguous()
        && consumers[r.index()] == [v]
        && consumers[v.index()] == [id]
        && !is_output[r.index()]
        && !is_output[v.index()];
    ok.then_some([r, v])
}

pub fn softmax_gather(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id| {
        let gone = gather(g, &consumers, &is_output, id)?;
        Some(((), gone.to_vec()))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, ()| {
        let mut node = g.node(id).clone();
        let rows = g.node(g.node(node.srcs[0]).srcs[0]);
        node.srcs = rows.srcs.iter().map(|&s| rw.get(s)).collect();
        if let Op::SoftMax { gathered, .. } = &mut node.op {
            *gathered = true;
        }
        rw.push(node)
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}

#[cfg(test)]
mod tests {
    use crate::builder::GraphBuilder;
    use crate::dtype::DType;
    use crate::passes::described;

    #[test]
    fn the_softmax_of_chosen_logits_gathers_them_itself() {
        let mut b = GraphBuilder::new();
        let l = b.input("logits", &[3, 6], DType::F32).unwrap();
        let ids = b.top_k(l, 2).unwrap();
        let l3 = b.reshape(l, &[3, 6, 1]).unwrap();
        let c = b.get_rows(l3, ids).unwrap();
        let c = b.reshape(c, &[3, 2]).unwrap();
        let w = b.softmax(c, None, 1.0).unwrap();
        b.output(w, "w").unwrap();
        b.output(ids, "ids").unwrap();
        assert_eq!(described(&b.finish()), ["top_k", "soft_max"]);
    }
}
