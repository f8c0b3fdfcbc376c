//! Mamba1's `dt = softplus(x·W_dtᵀ + bias)`, a mat-vec over the first `dt_rank` columns of the
//! x projection read by the scan alone, is computed by the scan as it reads `dt`
//! (`Op::SsmScan::dt_proj`): each channel's thread takes its `dt_rank`-long dot product (after
//! the row's norm, when `norm_input` gave the mat-vec one: Jamba's dt norm). One
//! dispatch fewer per Mamba1 layer in decode steps; prompts keep the matmul, whose tiles
//! share the weights across tokens.

use super::epilogue_inputs::{MAX_EXTERNALS, externals};
use super::{Rewriter, merge_into};
use crate::dtype::DType;
use crate::graph::{Graph, NodeId};
use crate::op::{FusedProgram, NormKind, Op, ScanDt};

/// Most tokens per sequence for which the scan computes `dt` itself (each channel's thread
/// would otherwise repeat a matmul row's work per token).
pub const MAX_SCAN_DT_TOKENS: usize = 2;

/// The projection scan `n` reads as its `dt`: its activation and weight, what it computes with
/// them, and its further sources (a norm's weight, then the program's).
struct Proj {
    x: NodeId,
    w: NodeId,
    dt: ScanDt,
    srcs: Vec<NodeId>,
}

fn projection(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    is_output: &[bool],
    id: NodeId,
) -> Option<Proj> {
    let n = g.node(id);
    let (
        Op::SsmScan {
            dt_proj: None,
            bc_norm: None,
        },
        own,
    ) = n.op.core(n.srcs.len())
    else {
        return None;
    };
    let x = g.node(n.srcs[1]);
    if own < 6 || x.shape().dims()[1] > MAX_SCAN_DT_TOKENS {
        return None;
    }
    let dt = n.srcs[2];
    let d = g.node(dt);
    if d.dtype != DType::F32 || is_output[dt.index()] || consumers[dt.index()] != [id] {
        return None;
    }
    let dt = match &d.op {
        Op::MatMul if d.srcs.len() == 2 => ScanDt {
            program: FusedProgram::identity(),
            shapes: vec![],
            x_norm: None,
        },
        Op::Epilogue(e)
            if matches!(e.inner, Op::MatMul)
                && e.inner_srcs == 2
                && !e.pair
                && e.range.is_none()
                && e.x_prog.is_none()
                && !matches!(e.x_norm.map(|n| n.kind), Some(NormKind::Sum { .. })) =>
        {
            ScanDt {
                program: e.program.clone(),
                shapes: e.shapes.clone(),
                x_norm: e.x_norm,
            }
        }
        _ => return None,
    };
    // the activation a row per token [S, T, K], a weight row per channel [H, K]
    let (xs, ws) = (g.node(d.srcs[0]).shape(), g.node(d.srcs[1]).shape());
    let [s, t, h] = [0, 1, 2].map(|i| x.shape().dims()[i]);
    if xs.dims().len() != 3
        || xs.dims()[..2] != [s, t]
        || ws.dims() != [h, xs.dims()[2]]
        || d.numel() != s * t * h
    {
        return None;
    }
    Some(Proj {
        x: d.srcs[0],
        w: d.srcs[1],
        dt,
        srcs: d.srcs[2..].to_vec(),
    })
}

/// Scan `id` rewritten: `edit` changes its op (the scan, inside an epilogue or not) and its
/// sources so far (its own and those its op's programs already read), and `more` go in after
/// them, before an epilogue's.
pub(super) fn rewrite_scan(
    rw: &mut Rewriter,
    g: &Graph,
    id: NodeId,
    more: &[NodeId],
    edit: impl FnOnce(&mut Op, &mut [NodeId]),
) -> NodeId {
    let mut node = g.node(id).clone();
    let at = match &node.op {
        Op::Epilogue(e) => e.inner_srcs,
        _ => node.srcs.len(),
    };
    let mut srcs = node.srcs[..at].to_vec();
    let scan = match &mut node.op {
        Op::Epilogue(e) => {
            e.inner_srcs += more.len();
            &mut e.inner
        }
        op => op,
    };
    edit(scan, &mut srcs);
    srcs.extend(more);
    srcs.extend(&node.srcs[at..]);
    node.srcs = srcs.iter().map(|&s| rw.get(s)).collect();
    rw.push(node)
}

pub fn scan_dt(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let is_output = g.output_mask();
    let find = |id: NodeId| {
        let p = projection(g, &consumers, &is_output, id)?;
        let n = g.node(id);
        let all: Vec<NodeId> = n
            .srcs
            .iter()
            .chain([&p.w])
            .chain(&p.srcs)
            .copied()
            .collect();
        if externals(g, &all) > MAX_EXTERNALS {
            return None;
        }
        Some((p, vec![n.srcs[2]]))
    };
    let emit = |rw: &mut Rewriter, id: NodeId, p: Proj| {
        // dt's source replaced by the activation; the weight and the program's sources after
        let more: Vec<NodeId> = std::iter::once(p.w).chain(p.srcs).collect();
        rewrite_scan(rw, g, id, &more, |op, srcs| {
            srcs[2] = p.x;
            *op = Op::SsmScan {
                dt_proj: Some(Box::new(p.dt)),
                bc_norm: None,
            };
        })
    };
    merge_into(g, find, emit).unwrap_or_else(|| g.clone())
}

#[cfg(test)]
mod tests {
    use crate::builder::GraphBuilder;
    use crate::dtype::DType;

    /// Mamba1's scan over `t` tokens with `dt = softplus(x_dbl[.., :k]·Wᵀ + bias)`, the
    /// columns normalised first with `norm` (Jamba's, which normalises B and C too).
    fn mamba1_scan(t: usize, norm: bool) -> Vec<String> {
        let mut b = GraphBuilder::new();
        let (s, h, n, k) = (1, 8, 4, 3);
        let st = b.input("state", &[s, h, 1, n], DType::F32).unwrap();
        let x = b.input("x", &[s, t, h, 1], DType::F32).unwrap();
        let xdbl = b.input("x_dbl", &[s, t, k + 2 * n], DType::F32).unwrap();
        let w = b.input("dt_w", &[h, k], DType::F32).unwrap();
        let bias = b.input("dt_b", &[h], DType::F32).unwrap();
        let a = b.input("a", &[h, n], DType::F32).unwrap();
        let row = k + 2 * n;
        let mut xr = b.slice(xdbl, 2, 0, k).unwrap();
        if norm {
            let nw = b.input("dt_norm", &[k], DType::F32).unwrap();
            xr = b.rms_norm(xr, 1e-6).unwrap();
            xr = b.mul(xr, nw).unwrap();
        }
        let bc = |b: &mut GraphBuilder, at| {
            b.view(xdbl, &[s, t, 1, n], &[t * row, row, n, 1], at)
                .unwrap()
        };
        let (mut bm, mut cm) = (bc(&mut b, k), bc(&mut b, k + n));
        if norm {
            for (x, name) in [(&mut bm, "b_norm"), (&mut cm, "c_norm")] {
                let w = b.input(name, &[n], DType::F32).unwrap();
                *x = b.rms_norm(*x, 1e-6).unwrap();
                *x = b.mul(*x, w).unwrap();
            }
        }
        let dt = b.matmul(xr, w).unwrap();
        let dt = b.add(dt, bias).unwrap();
        let dt = b.softplus(dt).unwrap();
        let (y, ns) = b.ssm_scan(st, x, dt, a, bm, cm).unwrap();
        b.output(y, "y").unwrap();
        b.output(ns, "state").unwrap();
        crate::passes::described(&b.finish())
    }

    #[test]
    fn decode_steps_compute_dt_in_the_scan() {
        assert_eq!(
            mamba1_scan(1, false),
            ["ssm_scan (dt = mul_mat then softplus(add(%0, %1)))"]
        );
        assert_eq!(
            mamba1_scan(1, true),
            [
                "ssm_scan (dt = rms_norm → mul_mat then softplus(add(%0, %1)), b, c through rms_norm)"
            ]
        );
    }

    #[test]
    fn prompts_keep_the_matmul() {
        // (legalization copies the strided views for the prompt's kernels)
        let ops = mamba1_scan(3, false);
        assert!(ops.contains(&"mul_mat then softplus(add(%0, %1))".to_string()));
        assert_eq!(ops.last().map(String::as_str), Some("ssm_scan"));
    }
}
