//! An op whose result is read by one elementwise node alone, element for element (directly or
//! through a reshaping view), runs that node's program as it writes: one dispatch instead of
//! two. In decode this takes a conv's bias and activation, a projection's bias and softplus,
//! and a scan's skip connection and gate.
//!
//! Only ops whose kernels apply epilogues carry them: matmuls (experts' too), convs, and scans on their
//! state cache (whose output is `y` alone). The merged node stands where the elementwise node
//! was, after all of its sources. An op with an epilogue takes its own reader's program too,
//! composed after the first (Mamba2's skip, then its gate through a reshape).

use super::Rewriter;
use super::epilogue_inputs::{MAX_EXTERNALS, externals};
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{Epilogue, FusedProgram, Instr, Op};

/// Most sources an epilogue reads besides the op's result.
pub const MAX_EPILOGUE_SOURCES: usize = 8;

/// The number of epilogue sources `n` already reads, when it can take (another) epilogue.
fn carries_epilogue(n: &Node) -> Option<usize> {
    let (op, own) = n.op.core(n.srcs.len());
    let ok = match (&n.op, op) {
        (_, Op::MatMul | Op::MatMulId | Op::SsmConv) => true,
        (
            _,
            Op::SsmScan {
                dt_proj: None,
                bc_norm: None,
            },
        ) => own == 7,
        (Op::Epilogue(e), Op::MatMulCat) => e.pair,
        _ => false,
    };
    ok.then_some(n.srcs.len() - own)
}

/// What an elementwise node takes in: the producer, the views it reads it through (dropped
/// with it), and the source slots whose loads become the producer's results (two for a pair).
struct Take {
    p: NodeId,
    views: Vec<NodeId>,
    slots: Vec<usize>,
    /// An experts' pair: the second weight, read after the producer's sources (the second
    /// product is among `views`, dropped with them).
    second_weight: Option<NodeId>,
}

/// `outer` reading the result of `inner` as its load 0: `inner`'s instructions, then `outer`'s
/// with load 0 being `inner`'s result and loads `k ≥ 1` moved after `inner`'s loads (its
/// `results` and its `inner_extra` sources).
fn compose(
    inner: &FusedProgram,
    outer: &FusedProgram,
    results: usize,
    inner_extra: usize,
) -> FusedProgram {
    let mut code = inner.code.clone();
    let result = code.len() as u16 - 1;
    let mut reg = Vec::with_capacity(outer.code.len());
    for ins in &outer.code {
        let r = match *ins {
            Instr::Load(0) => {
                reg.push(result);
                continue;
            }
            Instr::Load(k) => Instr::Load(k + (results - 1 + inner_extra) as u8),
            Instr::Unary(op, a) => Instr::Unary(op, reg[a as usize]),
            Instr::Binary(op, a, b) => Instr::Binary(op, reg[a as usize], reg[b as usize]),
        };
        code.push(r);
        reg.push(code.len() as u16 - 1);
    }
    // (an outer program that only loads: its result is the inner one)
    if reg.last().is_some_and(|&r| r as usize != code.len() - 1) {
        code.push(Instr::Unary(crate::op::UnaryOp::Scale(1.0), result));
    }
    FusedProgram { head: None, code }
}

/// `prog` with the loads of source slots `slots` (the producer's results, in that order) first,
/// the other sources after them in their order.
pub(super) fn results_first(mut prog: FusedProgram, slots: &[usize]) -> FusedProgram {
    for ins in &mut prog.code {
        if let Instr::Load(k) = ins {
            let k_ = *k as usize;
            *k = match slots.iter().position(|&s| s == k_) {
                Some(j) => j as u8,
                None => (slots.len() + k_ - slots.iter().filter(|&&s| s < k_).count()) as u8,
            };
        }
    }
    prog
}

/// The program of an elementwise node without a row-normalising head.
pub(super) fn program(op: &Op) -> Option<FusedProgram> {
    op.program().filter(|p| p.head.is_none())
}

/// For elementwise node `e`: what it can take in.
fn producer(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], e: NodeId) -> Option<Take> {
    let en = g.node(e);
    program(&en.op)?;
    if en.dtype != DType::F32 {
        return None;
    }
    if let Some(t) =
        pair(g, consumers, is_output, e).or_else(|| id_pair(g, consumers, is_output, e))
    {
        return Some(t);
    }
    en.srcs.iter().enumerate().find_map(|(slot, &s)| {
        let sn = g.node(s);
        let (p, view) = if sn.op.is_view() {
            (sn.srcs[0], Some(s))
        } else {
            (s, None)
        };
        let pn = g.node(p);
        let l = sn.layout;
        let ok = carries_epilogue(pn)
            .is_some_and(|had| had + en.srcs.len() - 1 <= MAX_EPILOGUE_SOURCES)
            && pn.dtype == DType::F32
            && pn.numel() == en.numel()
            && !is_output[p.index()]
            && consumers[p.index()] == [view.unwrap_or(e)]
            && view.is_none_or(|v| !is_output[v.index()] && consumers[v.index()] == [e])
            // element i of the node is element i of the producer
            && l.shape == en.shape()
            && l.offset == 0
            && l.is_contiguous()
            && !cache_touched_between(g, p, e)
            && merged_externals(g, p, e) <= MAX_EXTERNALS;
        ok.then(|| Take {
            p,
            views: view.into_iter().collect(),
            slots: vec![slot],
            second_weight: None,
        })
    })
}

/// Both halves of a two-weight `mul_mat_cat` (gate and up, `N` columns each) read by `e`
/// alone, column for column: the products meet in the kernel (`Epilogue::pair`).
fn pair(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], e: NodeId) -> Option<Take> {
    let en = g.node(e);
    if en.srcs.len() > MAX_EPILOGUE_SOURCES + 2 {
        return None;
    }
    let half = |s: NodeId| {
        let sn = g.node(s);
        let c = sn.srcs.first().copied()?;
        let cn = g.node(c);
        let ok = sn.op.is_view()
            && matches!(cn.op, Op::MatMulCat)
            && cn.srcs.len() == 3
            && g.node(cn.srcs[1]).shape().dims()[0] == en.numel()
            && g.node(cn.srcs[2]).shape().dims()[0] == en.numel()
            && sn.layout.shape == en.shape()
            && sn.layout.is_contiguous()
            && consumers[s.index()] == [e]
            && !is_output[s.index()]
            && !is_output[c.index()];
        ok.then_some((c, sn.layout.offset))
    };
    let mut found: Vec<(usize, NodeId, NodeId, usize)> = vec![];
    for (slot, &s) in en.srcs.iter().enumerate() {
        if let Some((c, off)) = half(s) {
            found.push((slot, s, c, off));
        }
    }
    let [a, b] = found[..] else { return None };
    let (first, second) = if a.3 == 0 { (a, b) } else { (b, a) };
    let mut readers = consumers[first.2.index()].clone();
    readers.sort();
    let mut views = vec![first.1, second.1];
    views.sort();
    let ok = first.2 == second.2
        && first.3 == 0
        && second.3 == en.numel()
        && readers == views
        && merged_externals(g, first.2, e) <= MAX_EXTERNALS;
    ok.then(|| Take {
        p: first.2,
        views: vec![first.1, second.1],
        slots: vec![first.0, second.0],
        second_weight: None,
    })
}

/// Two experts' products of one activation and one routing (gate and up, the same shape of
/// weights) read by `e` alone, element for element: they meet in one kernel like a pair.
fn id_pair(g: &Graph, consumers: &[Vec<NodeId>], is_output: &[bool], e: NodeId) -> Option<Take> {
    let en = g.node(e);
    if en.srcs.len() > MAX_EPILOGUE_SOURCES + 2 {
        return None;
    }
    let product = |s: NodeId| {
        let sn = g.node(s);
        let ok = matches!(sn.op, Op::MatMulId)
            && sn.dtype == DType::F32
            && sn.layout.shape == en.shape()
            && sn.layout.is_contiguous()
            && sn.layout.offset == 0
            && consumers[s.index()] == [e]
            && !is_output[s.index()];
        ok.then_some(s)
    };
    let found: Vec<(usize, NodeId)> = en
        .srcs
        .iter()
        .enumerate()
        .filter_map(|(slot, &s)| product(s).map(|p| (slot, p)))
        .collect();
    let [(sa, a), (sb, b)] = found[..] else {
        return None;
    };
    let (an, bn) = (g.node(a), g.node(b));
    let ok = a != b
        && an.srcs[0] == bn.srcs[0]
        && an.srcs[2] == bn.srcs[2]
        && g.node(an.srcs[1]).shape() == g.node(bn.srcs[1]).shape()
        && externals(g, &[&an.srcs[..], &[bn.srcs[1]], &en.srcs[..]].concat()) <= MAX_EXTERNALS;
    ok.then(|| Take {
        p: a,
        views: vec![b],
        slots: vec![sa, sb],
        second_weight: Some(bn.srcs[1]),
    })
}

/// Distinct external buffers the merge of `p` and its reader `e` would bind.
fn merged_externals(g: &Graph, p: NodeId, e: NodeId) -> usize {
    let srcs: Vec<NodeId> = g
        .node(p)
        .srcs
        .iter()
        .chain(&g.node(e).srcs)
        .copied()
        .collect();
    externals(g, &srcs)
}

/// True when `p` writes a cache that a node between it and `e` touches (moving `p` down to `e`
/// would reorder them).
fn cache_touched_between(g: &Graph, p: NodeId, e: NodeId) -> bool {
    if !g.has_side_effect(p) {
        return false;
    }
    let cache = g.storage_of(g.node(p).srcs[0]);
    (p.0 + 1..e.0).any(|i| {
        g.node(NodeId(i))
            .srcs
            .iter()
            .any(|&s| g.storage_of(s) == cache)
    })
}

pub fn epilogue(g: &Graph) -> Graph {
    // an op that took an epilogue may take its reader's next (rounds until none is left)
    super::rounds(g, 5, once)
}

/// One round; true when it merged something.
fn once(g: &Graph) -> (Graph, bool) {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let mut taken: Vec<Option<Take>> = g.ids().map(|_| None).collect();
    let mut dropped = vec![false; g.len()];
    for id in g.ids() {
        if let Some(t) = producer(g, &consumers, &is_output, id) {
            dropped[t.p.index()] = true;
            for v in &t.views {
                dropped[v.index()] = true;
            }
            taken[id.index()] = Some(t);
        }
    }
    if taken.iter().all(Option::is_none) {
        return (g.clone(), false);
    }
    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if dropped[id.index()] {
            continue;
        }
        let Some(t) = &taken[id.index()] else {
            rw.copy(id);
            continue;
        };
        let (en, pn) = (g.node(id), g.node(t.p));
        let prog = results_first(program(&en.op).expect("checked by producer"), &t.slots);
        // a producer with an epilogue already: this program runs after it
        let (inner, inner_srcs, prog, mut shapes, pair) = match &pn.op {
            Op::Epilogue(pe) => {
                let extra = pn.srcs.len() - pe.inner_srcs;
                let prog = compose(&pe.program, &prog, pe.results(), extra);
                let shapes = pe.shapes.clone();
                (pe.inner.clone(), pe.inner_srcs, prog, shapes, pe.pair)
            }
            op => {
                let pair = t.slots.len() == 2;
                (op.clone(), pn.srcs.len(), prog, vec![], pair)
            }
        };
        // this node's other sources broadcast to its shape
        shapes.resize(shapes.len() + en.srcs.len() - t.slots.len(), en.shape());
        let (inner_srcs, pair) = match t.second_weight {
            Some(_) => (inner_srcs + 1, true),
            None => (inner_srcs, pair),
        };
        let srcs = pn
            .srcs
            .iter()
            .chain(&t.second_weight)
            .chain(
                en.srcs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| (!t.slots.contains(&i)).then_some(s)),
            )
            .map(|&s| rw.get(s))
            .collect();
        let new = rw.push(Node {
            op: Op::Epilogue(Box::new(Epilogue {
                inner,
                inner_srcs,
                program: prog,
                shapes,
                pair,
                x_norm: None,
                x_prog: None,
                range: None,
            })),
            srcs,
            layout: en.layout,
            dtype: DType::F32,
            name: format!("{}+{}", pn.name, en.name),
        });
        rw.alias(id, new);
    }
    (rw.finish(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::op::UnaryOp;

    #[test]
    fn a_matmul_takes_the_activation_after_it() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let w = b.input("w", &[4, 8], DType::F32).unwrap();
        let bias = b.input("bias", &[4], DType::F32).unwrap();
        let y = b.matmul(x, w).unwrap();
        let y = b.add(y, bias).unwrap();
        let y = b.unary(UnaryOp::Softplus, y).unwrap();
        b.output(y, "y").unwrap();
        let g = crate::passes::optimize(&b.finish(), Default::default());
        let epi: Vec<_> = g
            .ids()
            .filter(|&i| matches!(g.node(i).op, Op::Epilogue(_)))
            .collect();
        assert_eq!(epi.len(), 1, "{:#?}", g.nodes);
        let n = g.node(epi[0]);
        assert_eq!(n.srcs.len(), 3);
        assert_eq!(g.outputs[0].1, epi[0]);
        assert_eq!(n.op.describe(), "mul_mat then softplus(add(%0, %1))");
    }

    #[test]
    fn epilogues_compose_through_a_reshape() {
        // y + x·d then, reshaped, · silu(z): two programs after one matmul
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let w = b.input("w", &[6, 8], DType::F32).unwrap();
        let d = b.input("d", &[6], DType::F32).unwrap();
        let z = b.input("z", &[2, 3], DType::F32).unwrap();
        let y = b.matmul(x, w).unwrap();
        let y = b.add(y, d).unwrap();
        let y = b.reshape(y, &[2, 3]).unwrap();
        let s = b.silu(z).unwrap();
        let y = b.mul(y, s).unwrap();
        b.output(y, "y").unwrap();
        assert_eq!(
            crate::passes::described(&b.finish()),
            ["mul_mat then mul(add(%0, %1), silu(%2))"]
        );
    }

    #[test]
    fn a_result_read_elsewhere_keeps_its_own_node() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let w = b.input("w", &[4, 8], DType::F32).unwrap();
        let y = b.matmul(x, w).unwrap();
        let s = b.unary(UnaryOp::Silu, y).unwrap();
        let z = b.mul(s, y).unwrap();
        b.output(z, "z").unwrap();
        b.output(y, "y").unwrap();
        let g = crate::passes::optimize(&b.finish(), Default::default());
        assert!(g.ids().all(|i| !matches!(g.node(i).op, Op::Epilogue(_))));
    }

    #[test]
    fn experts_gate_and_up_pair_only_under_one_routing() {
        for same_ids in [true, false] {
            let mut b = GraphBuilder::new();
            let x = b.input("x", &[2, 1, 8], DType::F32).unwrap();
            let wg = b.input("wg", &[4, 6, 8], DType::F32).unwrap();
            let wu = b.input("wu", &[4, 6, 8], DType::F32).unwrap();
            let ids = b.input("ids", &[2, 2], DType::I32).unwrap();
            let other = b.input("other", &[2, 2], DType::I32).unwrap();
            let g = b.matmul_id(x, wg, ids).unwrap();
            let u = b
                .matmul_id(x, wu, if same_ids { ids } else { other })
                .unwrap();
            let g = b.silu(g).unwrap();
            let y = b.mul(g, u).unwrap();
            b.output(y, "y").unwrap();
            let want: &[&str] = if same_ids {
                &["mul_mat_id (two products) then mul(silu(%1), %0)"]
            } else {
                &["mul_mat_id", "mul_mat_id then mul(silu(%1), %0)"]
            };
            assert_eq!(crate::passes::described(&b.finish()), want);
        }
    }
}
