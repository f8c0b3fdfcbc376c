//! An epilogue's source that is itself an elementwise node read by that epilogue alone — the
//! sum of a mixture's experts, a shared expert's sigmoid gate — is computed inside the
//! epilogue program from its own sources: one dispatch fewer each. Runs after `epilogue`.

use super::Rewriter;
use super::epilogue::{MAX_EPILOGUE_SOURCES, program};
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::layout::Layout;
use crate::op::{Epilogue, FusedProgram, Instr, Op, UnaryOp};

/// Most distinct external buffers one dispatch binds (leaving room for the arena and the
/// parameters within WebGPU's default of eight storage buffers per stage).
pub const MAX_EXTERNALS: usize = 6;

/// Distinct external buffers behind `srcs`.
pub fn externals(g: &Graph, srcs: &[NodeId]) -> usize {
    let mut seen: Vec<NodeId> = srcs
        .iter()
        .map(|&s| g.storage_of(s))
        .filter(|&b| g.node(b).op.is_external())
        .collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

/// An inlinable source of epilogue node `n`: its index among the node's sources, the
/// elementwise node, and the reshaping view it is read through.
fn candidate(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    n: NodeId,
) -> Option<(usize, NodeId, Option<NodeId>)> {
    let nn = g.node(n);
    let Op::Epilogue(e) = &nn.op else { return None };
    (e.first_source()..nn.srcs.len()).find_map(|k| {
        let s = nn.srcs[k];
        let sn = g.node(s);
        let (x, view) = if sn.op.is_view() {
            (sn.srcs[0], Some(s))
        } else {
            (s, None)
        };
        let xn = g.node(x);
        program(&xn.op)?;
        // through a reshape, x's sources must be x's own shape, dense (re-viewed the same way)
        let reshape_ok = view.is_none_or(|v| {
            let l = sn.layout;
            !is_output[v.index()]
                && consumers[v.index()] == [n]
                && l.offset == 0
                && l.is_contiguous()
                && l.shape.numel() == xn.numel()
                && xn.srcs.iter().all(|&s| {
                    let sl = g.node(s).layout;
                    sl.shape == xn.shape() && sl.is_contiguous()
                })
        });
        let mut srcs: Vec<NodeId> = nn.srcs.clone();
        srcs.remove(k);
        srcs.extend(&xn.srcs);
        let ok = xn.dtype == DType::F32
            && !is_output[x.index()]
            && consumers[x.index()] == [view.unwrap_or(n)]
            && reshape_ok
            && srcs.len() - e.first_source() <= MAX_EPILOGUE_SOURCES
            && externals(g, &srcs) <= MAX_EXTERNALS;
        ok.then_some((k, x, view))
    })
}

/// `prog` with its load `lk` replaced by `sub`, whose loads `j` become `base + j`; loads after
/// `lk` move down by one.
fn inline(prog: &FusedProgram, lk: u8, sub: &FusedProgram, base: u8) -> FusedProgram {
    let mut code: Vec<Instr> = Vec::new();
    let mut reg: Vec<u16> = Vec::new();
    for ins in &prog.code {
        match *ins {
            Instr::Load(k) if k == lk => {
                let off = code.len() as u16;
                code.extend(sub.code.iter().map(|s| match *s {
                    Instr::Load(j) => Instr::Load(base + j),
                    Instr::Unary(op, a) => Instr::Unary(op, a + off),
                    Instr::Binary(op, a, b) => Instr::Binary(op, a + off, b + off),
                }));
            }
            Instr::Load(k) => code.push(Instr::Load(if k > lk { k - 1 } else { k })),
            Instr::Unary(op, a) => code.push(Instr::Unary(op, reg[a as usize])),
            Instr::Binary(op, a, b) => {
                code.push(Instr::Binary(op, reg[a as usize], reg[b as usize]))
            }
        }
        reg.push(code.len() as u16 - 1);
    }
    // (the program's result must be its last instruction)
    if let Some(&r) = reg.last().filter(|&&r| r as usize != code.len() - 1) {
        code.push(Instr::Unary(UnaryOp::Scale(1.0), r));
    }
    FusedProgram { head: None, code }
}

fn once(g: &Graph) -> (Graph, bool) {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let mut taken: Vec<Option<(usize, NodeId, Option<NodeId>)>> = vec![None; g.len()];
    let mut dropped = vec![false; g.len()];
    for id in g.ids() {
        if let Some((k, x, view)) = candidate(g, &consumers, &is_output, id)
            && !dropped[x.index()]
        {
            dropped[x.index()] = true;
            if let Some(v) = view {
                dropped[v.index()] = true;
            }
            taken[id.index()] = Some((k, x, view));
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
        let Some((k, x, view)) = taken[id.index()] else {
            rw.copy(id);
            continue;
        };
        let (nn, xn) = (g.node(id), g.node(x));
        let Op::Epilogue(e) = &nn.op else {
            unreachable!("candidates are epilogues")
        };
        let first = e.first_source();
        let shape = e.shapes[k - first];
        let lk = (k - first + e.results()) as u8;
        let base = (nn.srcs.len() - 1 - first + e.results()) as u8;
        let sub = program(&xn.op).expect("checked by candidate");
        let mut srcs: Vec<NodeId> = nn
            .srcs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != k)
            .map(|(_, &s)| rw.get(s))
            .collect();
        // x's sources, re-viewed with the shape x was read through
        for &s in &xn.srcs {
            let new = match view {
                None => rw.get(s),
                Some(v) => rw.push(Node {
                    op: Op::View,
                    srcs: vec![rw.get(s)],
                    layout: Layout {
                        offset: g.node(s).layout.offset,
                        ..Layout::contiguous(g.node(v).shape())
                    },
                    dtype: g.node(s).dtype,
                    name: format!("{}.as_{}", g.node(s).name, nn.name),
                }),
            };
            srcs.push(new);
        }
        let mut shapes = e.shapes.clone();
        shapes.remove(k - first);
        shapes.extend(std::iter::repeat_n(shape, xn.srcs.len()));
        let new = rw.push(Node {
            op: Op::Epilogue(Box::new(Epilogue {
                program: inline(&e.program, lk, &sub, base),
                shapes,
                ..(**e).clone()
            })),
            srcs,
            layout: nn.layout,
            dtype: nn.dtype,
            name: format!("{}+{}", nn.name, xn.name),
        });
        rw.alias(id, new);
    }
    (rw.finish(), true)
}

/// Inlines epilogue sources until none is left to inline.
pub fn epilogue_inputs(g: &Graph) -> Graph {
    super::rounds(g, 9, once)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::passes::described;

    #[test]
    fn a_summed_and_a_gated_source_run_inside_the_epilogue() {
        // down projection + residual + sigmoid(g) · (sum of two rows, reshaped)
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 8], DType::F32).unwrap();
        let w = b.input("w", &[4, 8], DType::F32).unwrap();
        let r = b.input("r", &[1, 4], DType::F32).unwrap();
        let e = b.input("e", &[1, 2, 4], DType::F32).unwrap();
        let g = b.input("g", &[1, 1], DType::F32).unwrap();
        let e0 = b.slice(e, 1, 0, 1).unwrap();
        let e1 = b.slice(e, 1, 1, 1).unwrap();
        let sum = b.add(e0, e1).unwrap();
        let sum = b.reshape(sum, &[1, 4]).unwrap();
        let gate = b.sigmoid(g).unwrap();
        let y = b.matmul(x, w).unwrap();
        let y = b.mul(y, gate).unwrap();
        let y = b.add(y, sum).unwrap();
        let y = b.add(y, r).unwrap();
        b.output(y, "y").unwrap();
        let ops = described(&b.finish());
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(ops[0].starts_with("mul_mat then"), "{ops:?}");
        assert!(ops[0].contains("sigmoid"), "{ops:?}");
    }

    #[test]
    fn inlining_keeps_the_other_loads() {
        // add(%0, mul(%1, %2)) with %1 = sub(%a, %b) → loads after it move down
        let prog = FusedProgram {
            head: None,
            code: vec![
                Instr::Load(0),
                Instr::Load(1),
                Instr::Load(2),
                Instr::Binary(crate::op::BinaryOp::Mul, 1, 2),
                Instr::Binary(crate::op::BinaryOp::Add, 0, 3),
            ],
        };
        let sub = FusedProgram {
            head: None,
            code: vec![
                Instr::Load(0),
                Instr::Load(1),
                Instr::Binary(crate::op::BinaryOp::Sub, 0, 1),
            ],
        };
        let p = inline(&prog, 1, &sub, 2);
        assert_eq!(p.describe(), "add(%0, mul(sub(%2, %3), %1))");
    }
}
