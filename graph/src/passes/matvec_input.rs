//! A mat-vec whose activation row is an elementwise program read by it alone — Qwen3-Next's
//! gated output norm (each head's `rms_norm(o)·w·silu(z)`) before `out_proj`, a shared expert's
//! `silu(gate)·up` before its down projection — computes the row as it reads it
//! (`Epilogue::x_prog`): one dispatch instead of two. (A norm over the whole row, with at
//! most a weight, is `norm_input`'s.)

use super::norm_input::{computing_row, row_node};
use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{NormKind, Op, XProgram};

/// Most sources the row's program may read.
pub const MAX_X_SOURCES: usize = 4;

/// Most norm groups in a row (the mat-vec kernels keep one factor per group in workgroup
/// memory).
pub const MAX_X_GROUPS: usize = 64;

/// True for a single-row mat-vec that can compute its row.
fn takes_program(g: &Graph, n: &Node) -> bool {
    let (op, own) = n.op.core(n.srcs.len());
    if !matches!(op, Op::MatMul) {
        return false;
    }
    let free = match &n.op {
        Op::Epilogue(e) => !e.pair && e.x_norm.is_none() && e.x_prog.is_none() && e.range.is_none(),
        _ => true,
    };
    let x = g.node(n.srcs[0]).shape();
    own <= 3 && free && x.numel() == x.last()
}

fn row_program(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    id: NodeId,
) -> Option<XProgram> {
    let n = g.node(id);
    if !takes_program(g, n) {
        return None;
    }
    let (p, view) = row_node(g, id);
    let pn = g.node(p);
    let program = pn.op.program()?;
    let raw = g.node(pn.srcs[0]);
    let groups = match program.head {
        None => 1,
        Some(NormKind::Sum { .. }) => return None,
        Some(_) => pn.numel() / pn.shape().last(),
    };
    let in_arena = !matches!(g.node(g.storage_of(pn.srcs[0])).op, Op::External { .. });
    let view_ok = view.is_none_or(|v| {
        let l = g.node(v).layout;
        l.offset == 0 && l.is_contiguous() && !is_output[v.index()] && consumers[v.index()] == [id]
    });
    let ok = view_ok
        && pn.dtype == DType::F32
        && pn.numel() == n.srcs.first().map_or(0, |&x| g.node(x).numel())
        && pn.srcs.len() <= MAX_X_SOURCES
        && groups <= MAX_X_GROUPS
        && !is_output[p.index()]
        && consumers[p.index()] == [view.unwrap_or(id)]
        && !n.srcs[1..].contains(&p)
        && raw.dtype == DType::F32
        && raw.numel() == pn.numel()
        && raw.layout.is_contiguous()
        && in_arena;
    ok.then(|| XProgram {
        program,
        shape: pn.shape(),
        shapes: vec![pn.shape(); pn.srcs.len() - 1],
    })
}

pub fn matvec_input(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id| {
        let xp = row_program(g, &consumers, &is_output, id)?;
        let (p, view) = row_node(g, id);
        Some((xp, [p].into_iter().chain(view).collect()))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, xp: XProgram| {
        let pn = g.node(row_node(g, id).0);
        computing_row(rw, g, id, &pn.srcs[1..], |e| e.x_prog = Some(xp))
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::passes::described;

    #[test]
    fn a_gated_group_norm_moves_into_the_projection_after_it() {
        let mut b = GraphBuilder::new();
        let o = b.input("o", &[1, 1, 4, 8], DType::F32).unwrap();
        let z = b.input("z", &[1, 1, 4, 8], DType::F32).unwrap();
        let nw = b.input("norm", &[8], DType::F32).unwrap();
        let res = b.input("res", &[1, 6], DType::F32).unwrap();
        let w = b.input("w", &[6, 32], DType::F32).unwrap();
        let h = b.rms_norm(o, 1e-6).unwrap();
        let h = b.mul(h, nw).unwrap();
        let zs = b.silu(z).unwrap();
        let h = b.mul(h, zs).unwrap();
        let h = b.reshape(h, &[1, 32]).unwrap();
        let y = b.matmul(h, w).unwrap();
        let y = b.add(y, res).unwrap();
        b.output(y, "y").unwrap();
        assert_eq!(
            described(&b.finish()),
            // (the residual added by the mat-vec itself: `matmul_add`)
            ["mul(mul(%0, %1), silu(%2)) where %0 = rms_norm(%0) → mul_mat"]
        );
    }

    #[test]
    fn a_gated_unit_moves_into_its_down_projection_unless_read_elsewhere() {
        for shared in [false, true] {
            let mut b = GraphBuilder::new();
            let gu = b.input("gate_up", &[1, 16], DType::F32).unwrap();
            let w = b.input("w", &[4, 8], DType::F32).unwrap();
            let up = b.slice(gu, 1, 0, 8).unwrap();
            let gate = b.slice(gu, 1, 8, 8).unwrap();
            let a = b.silu(gate).unwrap();
            let h = b.mul(a, up).unwrap();
            let y = b.matmul(h, w).unwrap();
            b.output(y, "y").unwrap();
            if shared {
                b.output(h, "h").unwrap();
            }
            let ops = described(&b.finish());
            if shared {
                assert_eq!(ops, ["mul(silu(%1), %0)", "mul_mat"]);
            } else {
                assert_eq!(ops, ["mul(silu(%1), %0) → mul_mat"]);
            }
        }
    }
}
