//! `weft perplexity`: the same value whether chunks are decoded one at a time or four in one
//! batch, on an attention and a recurrent fixture model, ending with llama.cpp's last line.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

fn ppl(arch: &str, parallel: &str) -> (f64, f64) {
    let model = fixtures().join(arch).join(format!("{arch}-f32.gguf"));
    let text = fixtures().join("tokenizer/corpus.txt");
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "perplexity",
            "-m",
            model.to_str().unwrap(),
            "-f",
            text.to_str().unwrap(),
            "-c",
            "64",
            "--parallel",
            parallel,
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().unwrap();
    let rest = last
        .strip_prefix("PPL = ")
        .unwrap_or_else(|| panic!("last line {last:?}"));
    let (v, e) = rest.split_once(" +/- ").unwrap();
    (v.parse().unwrap(), e.parse().unwrap())
}

#[test]
fn parallel_chunks_give_the_same_perplexity() {
    for arch in ["llama", "mamba"] {
        let (a, ea) = ppl(arch, "1");
        let (b, eb) = ppl(arch, "4");
        assert!(a > 1.0 && a.is_finite() && ea > 0.0, "{arch}: {a} ± {ea}");
        assert!((a - b).abs() <= 1e-4 * a, "{arch}: {a} vs {b}");
        assert!((ea - eb).abs() <= 1e-3 * ea, "{arch}: ±{ea} vs ±{eb}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["perplexity", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("--parallel"));
}

/// `weft perplexity` equals llama.cpp's `llama-perplexity` (values recorded by
/// `fixtures/make_perplexity_reference.sh` with the same text and `-c 64`) within 1e-3 relative.
#[test]
fn perplexity_equals_llama_cpp() {
    let refs = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/perplexity_reference.txt"),
    )
    .unwrap();
    let mut checked = 0;
    for line in refs.lines().filter(|l| !l.trim().is_empty()) {
        let arch = line.split_whitespace().next().unwrap();
        let want: f64 = line
            .split("PPL = ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (got, _) = ppl(arch, "4");
        assert!(
            (got - want).abs() <= 1e-3 * want,
            "{arch}: weft {got} vs llama.cpp {want}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} reference values");
}
