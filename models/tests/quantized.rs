//! Quantized models (`llama_w256`, `mamba_w256` at Q8_0, Q4_0, Q5_0, Q5_1, Q4_K_M, Q6_K): weft's logits must
//! be no further from the transformers f32 reference than 1.25 × llama.cpp's on the same file
//! (the fixture README's rule). Checked on the prompt in one pass and on two sequences decoded
//! together, on every backend.

#![allow(clippy::unwrap_used)]

mod common;

use common::{dir, ids, npy, reference};
use weft_backends::{Backend, CpuBackend};
use weft_models::gguf::GgufFile;
use weft_models::{MemoryConfig, Session};

fn worst(got: &[f32], want: &[f32], v: usize) -> f32 {
    got.chunks(v)
        .zip(want.chunks(v))
        .map(|(g, w)| {
            let num: f32 = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt();
            let den: f32 = w.iter().map(|b| b * b).sum::<f32>().sqrt();
            num / den
        })
        .fold(0.0, f32::max)
}

fn check(model: &str, q: &str, backend: Box<dyn Backend>) {
    let r = reference(model);
    let gguf = GgufFile::open(dir(model).join(format!("{model}-{q}.gguf"))).unwrap();
    let mut s = Session::new(
        &gguf,
        backend,
        MemoryConfig {
            cells: 64,
            sequences: 2,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap();
    let name = s.backend_name();
    let prompt = ids(&r, "prompt_ids");
    let (v, want) = npy(model, "prompt_logits.npy");
    let (_, cpp) = npy(model, &format!("llamacpp-{q}/prompt_logits.npy"));
    let ours = worst(&s.decode(&[(0, &prompt)]).unwrap()[0], &want, v);
    let theirs = worst(&cpp, &want, v);
    eprintln!("{model} {q} on {name}: prompt error {ours:.3e}, llama.cpp {theirs:.3e}");
    assert!(
        ours <= 1.25 * theirs,
        "{model} {q} on {name}: prompt error {ours:.3e} > 1.25 × llama.cpp's {theirs:.3e}"
    );
    s.clear();
    let (a, b) = (ids(&r, "seq_a_ids"), ids(&r, "seq_b_ids"));
    let out = s.decode(&[(0, &a), (1, &b)]).unwrap();
    for (k, file) in ["a_logits.npy", "b_logits.npy"].iter().enumerate() {
        let (_, want) = npy(model, file);
        let (_, cpp) = npy(model, &format!("llamacpp-{q}/{file}"));
        let (ours, theirs) = (worst(&out[k], &want, v), worst(&cpp, &want, v));
        assert!(
            ours <= 1.25 * theirs,
            "{model} {q} on {name}: {file} error {ours:.3e} > 1.25 × llama.cpp's {theirs:.3e}"
        );
    }
}

fn all(make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    for model in ["llama_w256", "mamba_w256"] {
        for q in ["q8_0", "q4_0", "q5_0", "q5_1", "q4_k_m", "q6_k"] {
            if let Some(be) = make() {
                check(model, q, be);
            }
        }
    }
}

#[test]
fn cpu_quantized_models_are_as_close_as_llama_cpp() {
    all(&|| Some(Box::new(CpuBackend::new()) as Box<dyn Backend>));
}

#[test]
fn wgpu_quantized_models_are_as_close_as_llama_cpp() {
    all(&common::wgpu);
}

/// The CPU backend reading the weights in place from the mapped file computes what it computes
/// from a copy of them.
#[test]
fn cpu_weights_read_in_place_give_the_logits_of_a_copy() {
    for (model, q) in [("llama_w256", "q4_k_m"), ("mamba_w256", "q8_0")] {
        let r = reference(model);
        let gguf = GgufFile::open(dir(model).join(format!("{model}-{q}.gguf"))).unwrap();
        let prompt = ids(&r, "prompt_ids");
        let logits = |mapped: bool| {
            let be = Box::new(CpuBackend::new().map_weights(mapped));
            let mut s = Session::new(&gguf, be, MemoryConfig::default(), |_, _| {}).unwrap();
            let in_place = s.weights_mapped_bytes();
            (in_place, s.decode(&[(0, &prompt)]).unwrap().remove(0))
        };
        let (copied, want) = logits(false);
        let (in_place, got) = logits(true);
        let total: usize = gguf.tensors().iter().map(|t| t.bytes).sum();
        assert_eq!(
            copied, 0,
            "{model} {q}: weights read in place without asking"
        );
        assert_eq!(
            in_place, total,
            "{model} {q}: not every weight read in place"
        );
        assert_eq!(got, want, "{model} {q}: logits differ read in place");
    }
}
