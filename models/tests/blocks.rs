//! 2-layer Mamba and attention stacks built from the shared blocks: they build, plan into an
//! arena smaller than the naive total, and run on the CPU backend. Running a prompt in one
//! ubatch gives the same logits as feeding it token by token through the caches, which proves
//! that state is loaded, stored and isolated per sequence.

#![allow(clippy::unwrap_used)]

use weft_backends::{Backend, CpuBackend, HostData};
use weft_graph::{Graph, PlanOptions, plan};
use weft_models::demo::{V, attn_graph, attn_weights, causal_mask, mamba_graph, mamba_weights};

fn run(
    be: &mut dyn Backend,
    g: &Graph,
    opts: PlanOptions,
    inputs: &[(&str, HostData)],
) -> Vec<f32> {
    let p = plan(g, opts);
    p.check_invariants().unwrap();
    let prog = be.compile(&p).unwrap();
    let out = be.run(prog, inputs).unwrap();
    be.release(prog).unwrap();
    out[0].to_f32()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    assert!(num <= tol * den, "{what}: relative error {}", num / den);
}

#[test]
fn two_layer_mamba_plans_smaller_than_naive_and_decodes_like_prefill() {
    let mut be = CpuBackend::new();
    let w = mamba_weights(&mut be, 3).unwrap();
    let g = mamba_graph(&w, 2, 6).unwrap();
    let p = plan(&g, PlanOptions::default());
    p.check_invariants().unwrap();
    assert!(
        p.arena_bytes < p.naive_bytes,
        "arena {} vs naive {}",
        p.arena_bytes,
        p.naive_bytes
    );

    // Two sequences in slots 2 and 0, prompt of 6 tokens each, in one ubatch.
    let toks: Vec<i32> = vec![1, 5, 7, 2, 9, 22, 3, 3, 14, 0, 8, 11];
    let slots = [2, 0];
    let full = run(
        &mut be,
        &g,
        PlanOptions::default(),
        &[
            ("tokens", HostData::I32(&toks)),
            ("slots", HostData::I32(&slots)),
        ],
    );
    assert!(full.iter().all(|v| v.is_finite()));

    // The same tokens one step at a time, state carried by the caches.
    w.zero_caches(&mut be).unwrap();
    let step = mamba_graph(&w, 2, 1).unwrap();
    for ti in 0..6 {
        let tk = [toks[ti], toks[6 + ti]];
        let got = run(
            &mut be,
            &step,
            PlanOptions::default(),
            &[
                ("tokens", HostData::I32(&tk)),
                ("slots", HostData::I32(&slots)),
            ],
        );
        for si in 0..2 {
            let want = &full[(si * 6 + ti) * V..(si * 6 + ti + 1) * V];
            assert_close(
                &got[si * V..(si + 1) * V],
                want,
                1e-5,
                &format!("mamba seq {si} step {ti}"),
            );
        }
    }

    // Fused and unfused plans agree.
    w.zero_caches(&mut be).unwrap();
    let unfused = PlanOptions {
        passes: weft_graph::passes::PassOptions {
            fuse: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let again = run(
        &mut be,
        &g,
        unfused,
        &[
            ("tokens", HostData::I32(&toks)),
            ("slots", HostData::I32(&slots)),
        ],
    );
    assert_close(&again, &full, 1e-6, "unfused");
}

// ---- attention -------------------------------------------------------------------------------

#[test]
fn two_layer_attention_plans_smaller_than_naive_and_decodes_like_prefill() {
    let mut be = CpuBackend::new();
    let w = attn_weights(&mut be).unwrap();
    let toks: Vec<i32> = vec![4, 17, 2, 2, 9, 13, 0];
    let t = toks.len();
    let pos: Vec<i32> = (0..t as i32).collect();

    let local = attn_graph(&w, t, 0, false).unwrap();
    let p = plan(&local, PlanOptions::default());
    assert!(
        p.arena_bytes < p.naive_bytes,
        "arena {} vs naive {}",
        p.arena_bytes,
        p.naive_bytes
    );
    let want = run(
        &mut be,
        &local,
        PlanOptions::default(),
        &[
            ("tokens", HostData::I32(&toks)),
            ("pos", HostData::I32(&pos)),
        ],
    );

    // Prefill through the cache with an explicit causal mask.
    let cached = attn_graph(&w, t, 0, true).unwrap();
    let mask = causal_mask(t, 0);
    let got = run(
        &mut be,
        &cached,
        PlanOptions::default(),
        &[
            ("tokens", HostData::I32(&toks)),
            ("pos", HostData::I32(&pos)),
            ("mask", HostData::F32(&mask)),
        ],
    );
    assert_close(&got, &want, 1e-5, "cached prefill");

    // Prefill 3 tokens, then decode the rest one by one.
    w.zero_caches(&mut be).unwrap();
    let g = attn_graph(&w, 3, 0, true).unwrap();
    let m = causal_mask(3, 0);
    let first = run(
        &mut be,
        &g,
        PlanOptions::default(),
        &[
            ("tokens", HostData::I32(&toks[..3])),
            ("pos", HostData::I32(&pos[..3])),
            ("mask", HostData::F32(&m)),
        ],
    );
    assert_close(&first, &want[..3 * V], 1e-5, "prefill of 3");
    for i in 3..t {
        let g = attn_graph(&w, 1, i, true).unwrap();
        let m = causal_mask(1, i);
        let got = run(
            &mut be,
            &g,
            PlanOptions::default(),
            &[
                ("tokens", HostData::I32(&toks[i..i + 1])),
                ("pos", HostData::I32(&pos[i..i + 1])),
                ("mask", HostData::F32(&m)),
            ],
        );
        assert_close(
            &got,
            &want[i * V..(i + 1) * V],
            1e-5,
            &format!("decode step {i}"),
        );
    }
}
