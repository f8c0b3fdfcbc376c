//! The conformance harness shared by the per-architecture test files: runs one fixture GGUF
//! on one backend through every reference case and checks the fixture tolerances.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use weft_backends::{Backend, WgpuBackend, WgpuOptions};
use weft_graph::DType;
use weft_models::gguf::GgufFile;
use weft_models::memory::PosRange;
use weft_models::{MemoryConfig, Session};

pub fn dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(arch)
}

pub fn npy(arch: &str, name: &str) -> (usize, Vec<f32>) {
    let (dims, v) = weft_models::npy::read_f32(dir(arch).join(name)).unwrap();
    (dims[1], v)
}

pub fn ids(r: &serde_json::Value, key: &str) -> Vec<i32> {
    r[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect()
}

/// `reference.json`; Python's writer emits `Infinity`/`NaN` in config fields, which JSON lacks.
pub fn reference(arch: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir(arch).join("reference.json")).unwrap();
    let text = text
        .replace("-Infinity", "null")
        .replace("Infinity", "null")
        .replace("NaN", "null");
    serde_json::from_str(&text).unwrap()
}

pub fn argmax(row: &[f32]) -> i32 {
    let mut b = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[b] {
            b = i;
        }
    }
    b as i32
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    num / den.max(1e-30)
}

/// Top-2 gap of a reference row (for the near-tie rule).
fn gap(row: &[f32]) -> f32 {
    let mut s: Vec<f32> = row.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s[1]
}

struct Check {
    what: String,
    tol: f32,
    worst: f32,
}

impl Check {
    fn rows(&mut self, case: &str, got: &[f32], want: &[f32], v: usize) {
        assert_eq!(got.len(), want.len(), "{}: {case}: row count", self.what);
        for (r, (g, w)) in got.chunks(v).zip(want.chunks(v)).enumerate() {
            let e = rel(g, w);
            self.worst = self.worst.max(e);
            assert!(
                e <= self.tol,
                "{}: {case} row {r}: relative error {e:.3e} > {:.0e}",
                self.what,
                self.tol
            );
        }
    }

    /// Greedy id check: a mismatch is allowed only on a near-tie, and ends the comparison.
    fn greedy(&self, case: &str, got_row: &[f32], want_row: &[f32], want_id: i32) -> bool {
        let got = argmax(got_row);
        if got == want_id {
            return true;
        }
        let max_abs = got_row
            .iter()
            .zip(want_row)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            gap(want_row) < 2.0 * max_abs,
            "{}: {case}: greedy id {got} != {want_id} without a near-tie",
            self.what
        );
        false
    }
}

pub fn conformance(arch: &str, dtype: &str, backend: Box<dyn Backend>) {
    conformance_in(arch, dtype, "", backend)
}

/// [`conformance`] against the logits in the fixture's subfolder `refs` (`""`: the fixture's
/// own), e.g. `llamacpp-f32` where llama.cpp's logits are the reference for the GGUF (bamba).
/// The greedy ids come from `refs/ids.json` when it exists; a missing `full_logits.npy` is
/// `prompt_logits` followed by rows 1.. of `gen_logits` (the same positions, causally).
pub fn conformance_in(arch: &str, dtype: &str, refs: &str, backend: Box<dyn Backend>) {
    conformance_with(arch, dtype, refs, DType::F32, backend)
}

/// [`conformance_in`] with the KV cache stored as `kv_dtype`: an f16 cache is held to the f16
/// tolerance, whatever the weights.
pub fn conformance_with(
    arch: &str,
    dtype: &str,
    refs: &str,
    kv_dtype: DType,
    backend: Box<dyn Backend>,
) {
    let mut r = reference(arch);
    let ids_file = dir(arch).join(refs).join("ids.json");
    if !refs.is_empty() && ids_file.exists() {
        let text = std::fs::read_to_string(ids_file).unwrap();
        let over: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (k, v) in over.as_object().unwrap() {
            r[k] = v.clone();
        }
    }
    let load = |name: &str| {
        if refs.is_empty() {
            npy(arch, name)
        } else {
            npy(arch, &format!("{refs}/{name}"))
        }
    };
    let file = dir(arch).join(format!("{arch}-{dtype}.gguf"));
    let gguf = GgufFile::open(&file).unwrap();
    let config = MemoryConfig {
        cells: 128,
        sequences: 2,
        kv_dtype,
        ..Default::default()
    };
    let mut s = Session::new(&gguf, backend, config, |_, _| {}).unwrap();
    let tol = if dtype == "f32" && kv_dtype == DType::F32 {
        1e-4
    } else {
        2e-2
    };
    let mut c = Check {
        what: if refs.is_empty() {
            format!("{arch} {dtype}, {kv_dtype} KV, on {}", s.backend_name())
        } else {
            format!(
                "{arch} {dtype}, {kv_dtype} KV (against {refs}) on {}",
                s.backend_name()
            )
        },
        tol,
        worst: 0.0,
    };
    let (v, prompt_ref) = load("prompt_logits.npy");
    let prompt = ids(&r, "prompt_ids");
    let gen_ids = ids(&r, "gen_ids");

    // The prompt in one pass, then greedy decoding through the cache.
    let got = s.decode(&[(0, &prompt)]).unwrap().remove(0);
    c.rows("prompt_logits", &got, &prompt_ref, v);
    let (_, gen_ref) = load("gen_logits.npy");
    let mut row = got[got.len() - v..].to_vec();
    c.rows("gen_logits row 0", &row, &gen_ref[..v], v);
    for i in 1..gen_ids.len() {
        if !c.greedy(
            "gen_logits",
            &row,
            &gen_ref[(i - 1) * v..i * v],
            gen_ids[i - 1],
        ) {
            break;
        }
        row = s.decode(&[(0, &[argmax(&row)])]).unwrap().remove(0);
        c.rows(
            &format!("gen_logits row {i}"),
            &row,
            &gen_ref[i * v..(i + 1) * v],
            v,
        );
    }

    // No cache: prompt + generated ids in one pass.
    s.clear();
    let full_ref = if dir(arch).join(refs).join("full_logits.npy").exists() {
        load("full_logits.npy").1
    } else {
        prompt_ref.iter().chain(&gen_ref[v..]).copied().collect()
    };
    let full: Vec<i32> = prompt
        .iter()
        .chain(&gen_ids[..gen_ids.len() - 1])
        .copied()
        .collect();
    let got = s.decode(&[(0, &full)]).unwrap().remove(0);
    c.rows("full_logits", &got, &full_ref, v);

    // Two sequences together in one batch, then decoded interleaved.
    s.clear();
    let (a, b) = (ids(&r, "seq_a_ids"), ids(&r, "seq_b_ids"));
    let (_, a_ref) = load("a_logits.npy");
    let (_, b_ref) = load("b_logits.npy");
    let out = s.decode(&[(0, &a), (1, &b)]).unwrap();
    c.rows("a_logits (batched with b)", &out[0], &a_ref, v);
    c.rows("b_logits (batched with a)", &out[1], &b_ref, v);
    let (_, ab_ref) = load("ab_gen_logits.npy");
    let (ga, gb) = (ids(&r, "gen_a_ids"), ids(&r, "gen_b_ids"));
    let mut rows = [
        out[0][out[0].len() - v..].to_vec(),
        out[1][out[1].len() - v..].to_vec(),
    ];
    let mut live = [true, true];
    for step in 0..ga.len() {
        for q in 0..2 {
            if live[q] {
                c.rows(
                    &format!("ab_gen step {step} seq {q}"),
                    &rows[q],
                    &ab_ref[(2 * step + q) * v..(2 * step + q + 1) * v],
                    v,
                );
            }
        }
        if step + 1 == ga.len() {
            break;
        }
        for q in 0..2 {
            let want = if q == 0 { ga[step] } else { gb[step] };
            live[q] = live[q]
                && c.greedy(
                    &format!("ab_gen step {step} seq {q}"),
                    &rows[q],
                    &ab_ref[(2 * step + q) * v..(2 * step + q + 1) * v],
                    want,
                );
        }
        let (ta, tb) = ([argmax(&rows[0])], [argmax(&rows[1])]);
        let batch: Vec<(usize, &[i32])> = [(0usize, &ta[..]), (1, &tb[..])]
            .into_iter()
            .filter(|(q, _)| live[*q])
            .collect();
        if batch.is_empty() {
            break;
        }
        let out = s.decode(&batch).unwrap();
        for (k, (q, _)) in batch.iter().enumerate() {
            rows[*q] = out[k].clone();
        }
    }
    eprintln!("{}: worst row relative error {:.2e}", c.what, c.worst);
}

pub fn wgpu() -> Option<Box<dyn Backend>> {
    match WgpuBackend::new(&WgpuOptions::default()) {
        Ok(b) => Some(Box::new(b)),
        Err(e) if weft_backends::env_flag("CI") => {
            panic!("CI requires a GPU adapter for the wgpu tests: {e}")
        }
        Err(e) => {
            eprintln!("skipping wgpu test: {e}");
            None
        }
    }
}

/// Stamps one test per (architecture, dtype) for the CPU and the wgpu backends; `in "DIR"`
/// after the dtype takes the reference logits from the fixture's subfolder `DIR`, and `kv F16`
/// runs the model with an f16 KV cache (else f32).
#[macro_export]
macro_rules! conformance_tests {
    ($($name:ident: $arch:literal $dtype:literal $(in $refs:literal)? $(kv $kv:ident)?;)*) => {
        mod cpu {
            $(#[test] fn $name() {
                #[allow(unused_variables)]
                let kv = weft_graph::DType::F32;
                $(let kv = weft_graph::DType::$kv;)?
                $crate::common::conformance_with($arch, $dtype, concat!("" $(, $refs)?), kv, Box::new(weft_backends::CpuBackend::new()));
            })*
        }
        mod wgpu {
            $(#[test] fn $name() {
                #[allow(unused_variables)]
                let kv = weft_graph::DType::F32;
                $(let kv = weft_graph::DType::$kv;)?
                if let Some(be) = $crate::common::wgpu() { $crate::common::conformance_with($arch, $dtype, concat!("" $(, $refs)?), kv, be); }
            })*
        }
    };
}

fn memory_session(arch: &str, be: Box<dyn Backend>) -> Session {
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

/// Fork, checkpoint rollback and a state-file resume on one fixture model.
pub fn memory_ops(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let p: Vec<i32> = (0..14).map(|i| (i * 37 + 5) % 500).collect();
    let tail = [300, 1, 45];
    let fresh = |toks: &[i32]| {
        let mut f = memory_session(arch, make().unwrap());
        let out = f.decode(&[(0, toks)]).unwrap().remove(0);
        last_row(&f, &out)
    };

    // Fork: sequence 1 copies sequence 0, then both go on with different tokens.
    let mut s = memory_session(arch, be);
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
    let mut t = memory_session(arch, make().unwrap());
    t.load_state(&file).unwrap();
    let resumed = t.decode(&[(0, &[42]), (1, &[43])]).unwrap();
    assert_eq!(resumed, straight, "{arch}: resumed logits differ");
}
