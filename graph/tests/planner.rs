//! Property tests of the planner: on many random graphs, no two live tensors overlap, in-place
//! reuse happens only where it is safe, and the arena never exceeds the naive total.

#![allow(clippy::unwrap_used)]

use weft_graph::passes::PassOptions;
use weft_graph::testing::random_graph;
use weft_graph::{DType, GraphBuilder, Op, PlanOptions, plan};

#[test]
fn random_graphs_satisfy_the_allocator_contract() {
    let mut reused = 0;
    let mut in_place = 0;
    for seed in 0..300 {
        let (g, _) = random_graph(seed, 4 + (seed as usize % 40));
        for opts in [
            PlanOptions::default(),
            PlanOptions {
                passes: PassOptions {
                    fuse: false,
                    ..Default::default()
                },
                ..Default::default()
            },
            PlanOptions {
                in_place: false,
                ..Default::default()
            },
        ] {
            let p = plan(&g, opts);
            if let Err(e) = p.check_invariants() {
                panic!("seed {seed} {opts:?}: {e}");
            }
            if p.arena_bytes < p.naive_bytes {
                reused += 1;
            }
            in_place += p.in_place_of.iter().filter(|x| x.is_some()).count();
        }
    }
    // The property would be vacuous if nothing were ever shared.
    assert!(reused > 300, "memory was reused in only {reused} plans");
    assert!(in_place > 100, "only {in_place} in-place reuses");
}

#[test]
fn the_checker_catches_overlapping_live_tensors() {
    let (g, _) = random_graph(7, 30);
    let mut p = plan(&g, PlanOptions::default());
    assert!(p.check_invariants().is_ok());
    // Put every tensor at offset 0: some pair is live together and now collides.
    for s in p.slots.iter_mut().flatten() {
        s.offset = 0;
    }
    assert!(p.check_invariants().is_err());
}

#[test]
fn in_place_is_refused_when_the_source_is_read_later_or_transposed() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 4], DType::F32).unwrap();
    let a = b.unary(weft_graph::UnaryOp::Tanh, x).unwrap();
    // a + aᵀ: a dies here but is also read transposed, so writing over it would be wrong
    let at = b.permute(a, &[1, 0]).unwrap();
    let s = b.add(a, at).unwrap();
    b.output(s, "s").unwrap();
    let p = plan(
        &b.finish(),
        PlanOptions {
            passes: PassOptions {
                fuse: false,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    p.check_invariants().unwrap();
    let add = p
        .graph
        .ids()
        .find(|&i| matches!(p.graph.node(i).op, Op::Binary(_)))
        .unwrap();
    assert_eq!(p.in_place_of[add.index()], None);

    // tanh(x) then neg: the tanh result dies at neg and is read densely, so neg takes its block
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 4], DType::F32).unwrap();
    let a = b.unary(weft_graph::UnaryOp::Tanh, x).unwrap();
    let n = b.unary(weft_graph::UnaryOp::Neg, a).unwrap();
    b.output(n, "n").unwrap();
    let p = plan(
        &b.finish(),
        PlanOptions {
            passes: PassOptions {
                fuse: false,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let neg = p.graph.ids().last().unwrap();
    assert!(p.in_place_of[neg.index()].is_some());
}
