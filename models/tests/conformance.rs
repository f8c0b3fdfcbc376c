//! Conformance against the fixture references (Hugging Face transformers logits; see
//! `tests/fixtures/README.md`): every architecture, both GGUFs (f32, f16), both backends.
//! Per file: the prompt in one pass, greedy decoding through the cache, the no-cache forward of
//! prompt + generated ids, two sequences run together in one batch, and the two decoded
//! interleaved. Worst row-wise relative error must stay within the fixture tolerances
//! (f32 1e-4, f16 2e-2, and f16 for a model run with an f16 KV cache); greedy ids must match
//! except after a near-tie. The harness is in `common/`; each architecture family has its own
//! test file.

#![allow(clippy::unwrap_used)]

mod common;

use common::dir;
use weft_backends::CpuBackend;
use weft_models::gguf::GgufFile;
use weft_models::{MemoryConfig, Session};

conformance_tests! {
    llama_f32: "llama" "f32";
    llama_f16: "llama" "f16";
    llama_f16_kv_f16: "llama" "f16" kv F16;
    mamba_f32: "mamba" "f32";
    mamba_f16: "mamba" "f16";
    mamba2_f32: "mamba2" "f32";
    mamba2_f16: "mamba2" "f16";
}

#[test]
fn unknown_architecture_and_bad_tokens_are_errors() {
    let gguf = GgufFile::open(dir("llama").join("llama-f32.gguf")).unwrap();
    let mut s = Session::new(
        &gguf,
        Box::new(CpuBackend::new()),
        MemoryConfig {
            cells: 8,
            sequences: 1,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap();
    let e = s.decode(&[(0, &[600])]).unwrap_err().to_string();
    assert!(e.contains("600") && e.contains("512"), "{e}");
    let e = s.decode(&[(1, &[5])]).unwrap_err().to_string();
    assert!(e.contains("sequence 1"), "{e}");
    let e = s.decode(&[(0, &[1; 9])]).unwrap_err().to_string();
    assert!(e.contains("context is full"), "{e}");
    // the failed call left the memory untouched: 8 tokens still fit
    assert!(s.decode(&[(0, &[1; 8])]).is_ok());
    let e = s.decode(&[(0, &[])]).unwrap_err().to_string();
    assert!(e.contains("no tokens"), "{e}");
}
