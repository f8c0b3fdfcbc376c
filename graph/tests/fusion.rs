//! Fusion turns the elementwise patterns of the models into single nodes and cuts dispatches.

#![allow(clippy::unwrap_used)]

use weft_graph::passes::{PassOptions, optimize};
use weft_graph::{DType, Graph, GraphBuilder, NormKind, Op, PlanOptions, plan};

fn fused_programs(g: &Graph) -> Vec<String> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Fused(p) => Some(p.describe()),
            Op::Epilogue(e) => Some(format!("{}: {}", e.inner.name(), e.program.describe())),
            _ => None,
        })
        .collect()
}

fn dispatches(g: &Graph, fuse: bool) -> usize {
    plan(
        g,
        PlanOptions {
            passes: PassOptions {
                fuse,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .dispatches()
}

#[test]
fn swiglu_sigmoid_gate_norm_weight_and_residual_fuse() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 8], DType::F32).unwrap();
    let w = b.input("w", &[8], DType::F32).unwrap();
    let wg = b.input("wg", &[16, 8], DType::F32).unwrap();
    let wu = b.input("wu", &[16, 8], DType::F32).unwrap();
    let wd = b.input("wd", &[8, 16], DType::F32).unwrap();
    // norm × weight
    let n = b.rms_norm(x, 1e-5).unwrap();
    let h = b.mul(n, w).unwrap();
    // SwiGLU
    let g = b.matmul(h, wg).unwrap();
    let u = b.matmul(h, wu).unwrap();
    let sg = b.silu(g).unwrap();
    let act = b.mul(sg, u).unwrap();
    let d = b.matmul(act, wd).unwrap();
    // x * sigmoid(gate) then the residual add
    let gate = b.sigmoid(d).unwrap();
    let gated = b.mul(x, gate).unwrap();
    let out = b.add(gated, x).unwrap();
    b.output(out, "out").unwrap();
    let g = b.finish();

    let progs = fused_programs(&optimize(&g, PassOptions::default()));
    assert_eq!(progs.len(), 3, "{progs:?}");
    assert!(
        progs.contains(&"mul(%0, %1) where %0 = rms_norm(%0)".to_string()),
        "{progs:?}"
    );
    // the activations run as the matmuls before them write (the up projection's, `%0` its
    // result; the down projection's, whose result is `%0` and `x` `%1`)
    assert!(
        progs.contains(&"mul_mat: mul(silu(%1), %0)".to_string()),
        "{progs:?}"
    );
    assert!(
        progs.contains(&"mul_mat: add(mul(%1, sigmoid(%0)), %1)".to_string()),
        "{progs:?}"
    );
    assert_eq!((dispatches(&g, false), dispatches(&g, true)), (10, 4));
}

#[test]
fn a_norm_read_twice_is_not_absorbed() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 4], DType::F32).unwrap();
    let w = b.input("w", &[4], DType::F32).unwrap();
    let n = b.rms_norm(x, 1e-5).unwrap();
    let h = b.mul(n, w).unwrap();
    let s = b.silu(h).unwrap();
    b.output(s, "s").unwrap();
    b.output(n, "n").unwrap();
    let g = optimize(&b.finish(), PassOptions::default());
    assert!(g.nodes.iter().any(|n| matches!(n.op, Op::RmsNorm { .. })));
    let heads: Vec<_> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Fused(p) => Some(p.head),
            _ => None,
        })
        .collect();
    assert_eq!(heads, vec![None]);
    let _ = NormKind::Rms { eps: 0.0 };
}

#[test]
fn intermediate_with_two_consumers_stays_materialized() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[5], DType::F32).unwrap();
    let t = b.unary(weft_graph::UnaryOp::Tanh, x).unwrap();
    let a = b.silu(t).unwrap();
    let c = b.sigmoid(t).unwrap();
    let s = b.add(a, c).unwrap();
    b.output(s, "s").unwrap();
    let g = optimize(&b.finish(), PassOptions::default());
    let progs = fused_programs(&g);
    assert_eq!(progs, vec!["add(silu(%0), sigmoid(%0))".to_string()]);
    assert!(
        g.nodes
            .iter()
            .any(|n| matches!(n.op, Op::Unary(weft_graph::UnaryOp::Tanh)))
    );
}
