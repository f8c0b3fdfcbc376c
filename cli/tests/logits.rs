//! `weft logits` end to end: the written files match the fixture references, and bad input is
//! a non-zero exit with a one-line reason.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn fixture(arch: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(arch)
        .join(file)
}

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    num / b.iter().map(|y| y * y).sum::<f32>().sqrt()
}

#[test]
fn logits_of_two_sequences_match_the_reference() {
    let out = tempdir("logits_two");
    let r: String = std::fs::read_to_string(fixture("mamba", "reference.json")).unwrap();
    let ids = |key: &str| -> String {
        let start = r.find(&format!("\"{key}\"")).unwrap();
        let open = start + r[start..].find('[').unwrap();
        let close = open + r[open..].find(']').unwrap();
        r[open + 1..close]
            .split(',')
            .map(|s| s.trim())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (a, b) = (ids("seq_a_ids"), ids("seq_b_ids"));
    let model = fixture("mamba", "mamba-f32.gguf");
    let o = weft(&[
        "logits",
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        &a,
        "--tokens",
        &b,
        "--generate",
        "8",
        "--backend",
        "cpu",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (i, name) in ["a_logits.npy", "b_logits.npy"].iter().enumerate() {
        let (dims, got) =
            weft_models::npy::read_f32(out.path().join(format!("seq{i}_logits.npy"))).unwrap();
        let (wd, want) = weft_models::npy::read_f32(fixture("mamba", name)).unwrap();
        assert_eq!(dims, wd);
        for (g, w) in got.chunks(dims[1]).zip(want.chunks(dims[1])) {
            assert!(rel(g, w) < 1e-4);
        }
    }
    // Interleaved greedy decoding: rows of A and B alternate in the reference.
    let (_, ab) = weft_models::npy::read_f32(fixture("mamba", "ab_gen_logits.npy")).unwrap();
    for q in 0..2 {
        let (dims, got) =
            weft_models::npy::read_f32(out.path().join(format!("seq{q}_gen_logits.npy"))).unwrap();
        assert_eq!(dims, vec![8, 512]);
        for step in 0..8 {
            let w = &ab[(2 * step + q) * 512..(2 * step + q + 1) * 512];
            assert!(
                rel(&got[step * 512..(step + 1) * 512], w) < 1e-4,
                "seq {q} step {step}"
            );
        }
    }
    let ids_json = std::fs::read_to_string(out.path().join("ids.json")).unwrap();
    assert!(
        ids_json.contains(&format!(
            "\"seq0\": [{}",
            ids("gen_a_ids").split(',').next().unwrap()
        )),
        "{ids_json}"
    );
}

#[test]
fn bad_input_is_a_one_line_error() {
    let out = tempdir("logits_bad");
    let model = fixture("llama", "llama-f32.gguf");
    let m = model.to_str().unwrap();
    let o = out.path().to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "logits",
                "-m",
                m,
                "--tokens",
                "5,999",
                "--backend",
                "cpu",
                "--out",
                o,
            ],
            "999",
        ),
        (
            vec![
                "logits",
                "-m",
                m,
                "--tokens",
                ",",
                "--backend",
                "cpu",
                "--out",
                o,
            ],
            "empty",
        ),
        (
            vec![
                "logits",
                "-m",
                m,
                "--tokens",
                "1,x",
                "--backend",
                "cpu",
                "--out",
                o,
            ],
            "\"x\"",
        ),
        (
            vec![
                "logits",
                "-m",
                "no/such/model.gguf",
                "--tokens",
                "1",
                "--out",
                o,
            ],
            "no/such/model.gguf",
        ),
    ] {
        let r = weft(&args);
        assert!(!r.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&r.stderr);
        let last = err
            .lines()
            .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
            .collect::<Vec<_>>();
        assert_eq!(last.len(), 1, "{args:?}: expected one line, got {err}");
        assert!(
            last[0].starts_with("error: ") && last[0].contains(needle),
            "{args:?}: {err}"
        );
    }
}

/// A directory of its own for one test, removed when the test ends.
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("weft-test-{name}-"))
        .tempdir()
        .unwrap()
}
