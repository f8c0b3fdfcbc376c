//! Conformance of the gated-DeltaNet hybrids (Qwen3.5, Qwen3-Next), Falcon-H1 (parallel
//! attention + Mamba2) and LFM2 (short conv + attention) against the fixture references; see
//! `conformance.rs` for what each case checks. Also, for these hybrids on both backends: a
//! fork decodes like a fresh run, a checkpoint rollback then decode equals a fresh run, and a
//! saved state restores bit for bit (LFM2's short-conv layers keep a conv window and no SSM
//! state).

#![allow(clippy::unwrap_used)]

mod common;

use weft_backends::CpuBackend;

conformance_tests! {
    qwen3_5_f32: "qwen3_5" "f32";
    qwen3_5_f16: "qwen3_5" "f16";
    qwen3_next_f32: "qwen3_next" "f32";
    qwen3_next_f16: "qwen3_next" "f16";
    qwen3_next_f16_kv_f16: "qwen3_next" "f16" kv F16;
    falcon_h1_f32: "falcon_h1" "f32";
    falcon_h1_f16: "falcon_h1" "f16";
    lfm2_f32: "lfm2" "f32";
    lfm2_f16: "lfm2" "f16";
}

const ARCHS: [&str; 4] = ["qwen3_5", "qwen3_next", "falcon_h1", "lfm2"];

#[test]
fn cpu_hybrid_memory_ops() {
    for arch in ARCHS {
        common::memory_ops(arch, &|| Some(Box::new(CpuBackend::new())));
    }
}

#[test]
fn wgpu_hybrid_memory_ops() {
    for arch in ARCHS {
        common::memory_ops(arch, &common::wgpu);
    }
}
