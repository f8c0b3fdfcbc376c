//! Elementwise fusion. A unary or binary node whose only consumer is another elementwise node of
//! the same shape is folded into it; each resulting tree becomes one `Fused` node holding a tiny
//! program over its leaf sources (which may broadcast). A row normalisation (`rms_norm`,
//! `l2_norm`) feeding such a tree alone becomes the program's head, so `norm × weight` is one
//! kernel. Single nodes with nothing to fuse are left as they are.

use super::Rewriter;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{FusedProgram, Instr, NormKind, Op};

/// Most sources one fused kernel reads (GPU binding limits leave room for the output and
/// parameters).
pub const MAX_FUSED_SOURCES: usize = 6;

struct Ctx<'g> {
    g: &'g Graph,
    distinct_consumer: Vec<Option<NodeId>>,
    is_output: Vec<bool>,
}

impl Ctx<'_> {
    /// `src` may be computed inside its consumer `dst`'s kernel.
    fn absorbable(&self, src: NodeId, dst: NodeId) -> bool {
        let s = self.g.node(src);
        matches!(s.op, Op::Unary(_) | Op::Binary(_))
            && !self.is_output[src.index()]
            && self.distinct_consumer[src.index()] == Some(dst)
            && s.shape() == self.g.node(dst).shape()
    }

    fn norm_head(&self, src: NodeId, root: NodeId) -> Option<NormKind> {
        let s = self.g.node(src);
        let kind = match s.op {
            Op::RmsNorm { eps } => NormKind::Rms { eps },
            Op::L2Norm { eps } => NormKind::L2 { eps },
            _ => return None,
        };
        let ok = !self.is_output[src.index()] && s.shape() == self.g.node(root).shape();
        ok.then_some(kind)
    }
}

/// The members of a fusion group, found from its root.
struct Group {
    members: Vec<NodeId>,
}

fn collect(ctx: &Ctx, node: NodeId, members: &mut Vec<NodeId>) {
    members.push(node);
    for &s in &ctx.g.node(node).srcs {
        if ctx.absorbable(s, node) && !members.contains(&s) {
            collect(ctx, s, members);
        }
    }
}

pub fn fuse_elementwise(g: &Graph) -> Graph {
    let n = g.len();
    let mut distinct = vec![None; n];
    let mut multi = vec![false; n];
    for id in g.ids() {
        for &s in &g.node(id).srcs {
            match distinct[s.index()] {
                None => distinct[s.index()] = Some(id),
                Some(d) if d != id => multi[s.index()] = true,
                _ => {}
            }
        }
    }
    for i in 0..n {
        if multi[i] {
            distinct[i] = None;
        }
    }
    let is_output = g.output_mask();
    let ctx = Ctx {
        g,
        distinct_consumer: distinct,
        is_output,
    };

    // Roots: elementwise nodes not absorbed by their consumer.
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<Group> = Vec::new();
    for id in g.ids().rev() {
        let node = g.node(id);
        if !matches!(node.op, Op::Unary(_) | Op::Binary(_)) || group_of[id.index()].is_some() {
            continue;
        }
        let mut members = Vec::new();
        collect(&ctx, id, &mut members);
        let gi = groups.len();
        for &m in &members {
            group_of[m.index()] = Some(gi);
        }
        groups.push(Group { members });
    }

    // Decide leaves and heads before emitting, since a head norm precedes its group's root.
    let mut plans: Vec<Option<(Option<NormKind>, Vec<NodeId>)>> = Vec::with_capacity(groups.len());
    let mut head_taken = vec![false; n];
    for grp in &groups {
        let root = grp.members[0];
        let mut leaves: Vec<NodeId> = Vec::new();
        for &m in &grp.members {
            for &s in &g.node(m).srcs {
                if !grp.members.contains(&s) && !leaves.contains(&s) {
                    leaves.push(s);
                }
            }
        }
        let mut head = None;
        for (i, &l) in leaves.iter().enumerate() {
            let only_here = g
                .ids()
                .all(|c| grp.members.contains(&c) || !g.node(c).srcs.contains(&l));
            if let (Some(kind), true, false) =
                (ctx.norm_head(l, root), only_here, head_taken[l.index()])
            {
                head = Some(kind);
                head_taken[l.index()] = true;
                let norm = leaves.remove(i);
                leaves.insert(0, norm);
                break;
            }
        }
        let worth = grp.members.len() > 1 || head.is_some();
        if worth && leaves.len() <= MAX_FUSED_SOURCES {
            plans.push(Some((head, leaves)));
        } else {
            if let (Some(_), Some(&l)) = (head, leaves.first()) {
                head_taken[l.index()] = false;
            }
            plans.push(None);
        }
    }

    let mut rw = Rewriter::new(g);
    for id in g.ids() {
        if head_taken[id.index()] {
            continue;
        }
        let Some(gi) = group_of[id.index()] else {
            rw.copy(id);
            continue;
        };
        let grp = &groups[gi];
        let Some((head, srcs_old)) = &plans[gi] else {
            rw.copy(id); // not fused: members keep their own nodes, in order
            continue;
        };
        if grp.members[0] != id {
            continue; // emitted with its root
        }
        let mut code = Vec::new();
        let mut reg_of: Vec<(NodeId, u16)> = Vec::new();
        emit(g, id, &grp.members, srcs_old, &mut code, &mut reg_of);
        // A head norm is replaced by its own input as source 0.
        let srcs_new = srcs_old
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                if i == 0 && head.is_some() {
                    rw.get(g.node(s).srcs[0])
                } else {
                    rw.get(s)
                }
            })
            .collect();
        let root = g.node(id);
        let mut name = grp
            .members
            .iter()
            .rev()
            .map(|&m| g.node(m).op.name())
            .collect::<Vec<_>>();
        if let Some(&h) = srcs_old.first().filter(|_| head.is_some()) {
            name.insert(0, g.node(h).op.name());
        }
        let new = rw.push(Node {
            op: Op::Fused(FusedProgram { head: *head, code }),
            srcs: srcs_new,
            layout: root.layout,
            dtype: root.dtype,
            name: format!("{} ({})", root.name, name.join("+")),
        });
        for &m in &grp.members {
            rw.alias(m, new);
        }
    }
    rw.finish()
}

/// Emits instructions computing `node`; returns its register.
fn emit(
    g: &Graph,
    node: NodeId,
    members: &[NodeId],
    srcs: &[NodeId],
    code: &mut Vec<Instr>,
    regs: &mut Vec<(NodeId, u16)>,
) -> u16 {
    if let Some(&(_, r)) = regs.iter().find(|(id, _)| *id == node) {
        return r;
    }
    let r = if members.contains(&node) {
        let n = g.node(node);
        let a: Vec<u16> = n
            .srcs
            .iter()
            .map(|&s| emit(g, s, members, srcs, code, regs))
            .collect();
        code.push(match n.op {
            Op::Unary(u) => Instr::Unary(u, a[0]),
            Op::Binary(b) => Instr::Binary(b, a[0], a[1]),
            _ => unreachable!("only elementwise nodes are members"),
        });
        (code.len() - 1) as u16
    } else {
        let slot = srcs.iter().position(|&s| s == node).unwrap_or(0);
        code.push(Instr::Load(slot as u8));
        (code.len() - 1) as u16
    };
    regs.push((node, r));
    r
}
