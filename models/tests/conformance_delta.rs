//! Conformance of the gated-DeltaNet hybrids (Qwen3.5, Qwen3-Next), Falcon-H1 (parallel
//! attention + Mamba2) and LFM2 (short conv + attention) against the fixture references; see
//! `conformance.rs` for what each case checks. Also, for these hybrids on both backends: a
//! fork decodes like a fresh run, a checkpoint rollback then decode equals a fresh run, and a
//! saved state restores bit for bit (LFM2's short-conv layers keep a conv window and no SSM
//! state).

#![allow(clippy::unwrap_used)]

mod common;

use common::dir;
use weft_backends::{Backend, CpuBackend};
use weft_models::gguf::GgufFile;
use weft_models::memory::PosRange;
use weft_models::{MemoryConfig, Session};

conformance_tests! {
    qwen3_5_f32: "qwen3_5" "f32";
    qwen3_5_f16: "qwen3_5" "f16";
    qwen3_next_f32: "qwen3_next" "f32";
    qwen3_next_f16: "qwen3_next" "f16";
    falcon_h1_f32: "falcon_h1" "f32";
    falcon_h1_f16: "falcon_h1" "f16";
    lfm2_f32: "lfm2" "f32";
    lfm2_f16: "lfm2" "f16";
}

const ARCHS: [&str; 4] = ["qwen3_5", "qwen3_next", "falcon_h1", "lfm2"];

fn session(arch: &str, be: Box<dyn Backend>) -> Session {
    let gguf = GgufFile::open(dir(arch).join(format!("{arch}-f32.gguf"))).unwrap();
    let cfg = MemoryConfig {
        cells: 64,
        sequences: 2,
        checkpoint_every: 4,
        ..Default::default()
    };
    Session::new(&gguf, be, cfg, |_, _| {}).unwrap()
}

fn last_row(s: &Session, out: &[f32]) -> Vec<f32> {
    out[out.len() - s.n_vocab()..].to_vec()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    assert!(num <= 1e-5 * den, "{what}: relative error {}", num / den);
}

fn memory_ops(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let p: Vec<i32> = (0..14).map(|i| (i * 37 + 5) % 500).collect();
    let tail = [300, 1, 45];
    let fresh = |toks: &[i32]| {
        let mut f = session(arch, make().unwrap());
        let out = f.decode(&[(0, toks)]).unwrap().remove(0);
        last_row(&f, &out)
    };

    // Fork: sequence 1 copies sequence 0, then both go on with different tokens.
    let mut s = session(arch, be);
    s.decode(&[(0, &p)]).unwrap();
    s.seq_cp(0, 1).unwrap();
    let out = s.decode(&[(0, &tail[..1]), (1, &tail[1..2])]).unwrap();
    for (q, t) in [(0, tail[0]), (1, tail[1])] {
        let want: Vec<i32> = p.iter().copied().chain([t]).collect();
        close(&out[q], &fresh(&want), &format!("{arch}: fork seq {q}"));
    }

    // Rollback: cut sequence 0 at 10, which restores the checkpoint at 8 and re-feeds 8..10.
    let refed = s
        .seq_rm(
            0,
            PosRange {
                p0: Some(10),
                p1: None,
            },
        )
        .unwrap();
    assert_eq!(refed, 2, "{arch}: re-fed tokens");
    let out = s.decode(&[(0, &tail[..])]).unwrap().remove(0);
    let want: Vec<i32> = p[..10].iter().chain(&tail).copied().collect();
    close(
        &last_row(&s, &out),
        &fresh(&want),
        &format!("{arch}: after rollback"),
    );

    // State file: restore into a new session and continue bit for bit.
    let file = s.save_state().unwrap();
    let straight = s.decode(&[(0, &[42]), (1, &[43])]).unwrap();
    let mut t = session(arch, make().unwrap());
    t.load_state(&file).unwrap();
    let resumed = t.decode(&[(0, &[42]), (1, &[43])]).unwrap();
    assert_eq!(resumed, straight, "{arch}: resumed logits differ");
}

#[test]
fn cpu_hybrid_memory_ops() {
    for arch in ARCHS {
        memory_ops(arch, &|| Some(Box::new(CpuBackend::new())));
    }
}

#[test]
fn wgpu_hybrid_memory_ops() {
    for arch in ARCHS {
        memory_ops(arch, &common::wgpu);
    }
}
