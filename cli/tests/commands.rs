//! `weft info`, `weft graph` and `weft bench` end to end on the fixture models.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn fixture(arch: &str, file: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(arch)
        .join(file)
        .to_string_lossy()
        .into_owned()
}

fn weft(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap();
    let err: String = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
        .collect::<Vec<_>>()
        .join("\n");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        err,
    )
}

/// Per fixture, the mixer of each layer (in order) and the feed-forward kind, as the fixture
/// table describes them.
#[test]
fn info_reports_the_layer_kinds() {
    let (a, r, b) = ("attention", "recurrent", "attention + recurrent");
    let cases: [(&str, &[&str], &str); 7] = [
        ("llama", &[a, a], "dense FFN"),
        ("mamba", &[r, r, r], "no FFN"),
        ("mamba2", &[r, r, r], "no FFN"),
        ("qwen3_5", &[r, a, r, a], "dense FFN"),
        ("qwen3_next", &[r, a, r, a], "MoE"),
        ("falcon_h1", &[b, b, b], "dense FFN"),
        ("lfm2", &[r, a, r, a], "dense FFN"),
    ];
    for (arch, kinds, ffn) in cases {
        let (ok, out, err) = weft(&[
            "info",
            "-m",
            &fixture(arch, &format!("{arch}-f32.gguf")),
            "--ctx",
            "128",
        ]);
        assert!(ok, "{arch}: {err}");
        let layers: Vec<&str> = out
            .lines()
            .skip_while(|l| *l != "layers")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert_eq!(layers.len(), kinds.len(), "{arch}: {out}");
        for (i, (line, kind)) in layers.iter().zip(kinds).enumerate() {
            let mixer = line
                .split_whitespace()
                .skip(1)
                .take_while(|w| !w.starts_with('('))
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(mixer, *kind, "{arch} layer {i}: {line}");
            assert!(line.trim_end().ends_with(ffn), "{arch} layer {i}: {line}");
        }
        assert!(
            out.contains("KV cache") && out.contains("arena, decode"),
            "{out}"
        );
    }
}

/// `weft graph --gpu` plans as the wgpu backend does: a mixture's top k stays its own
/// dispatch there, where the CPU's plan lets the ops that read it choose the experts.
#[test]
fn graph_for_the_gpu_keeps_the_top_k_dispatch() {
    let model = fixture("jamba", "jamba-f32.gguf");
    let top_ks = |gpu: bool| {
        let mut args = vec!["graph", "-m", &model, "--format", "json"];
        if gpu {
            args.push("--gpu");
        }
        let (ok, out, err) = weft(&args);
        assert!(ok, "{err}");
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        j["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["op"].as_str() == Some("top_k"))
            .count()
    };
    assert_eq!(top_ks(false), 0);
    assert!(top_ks(true) > 0);
}

#[test]
fn graph_json_parses_and_matches_the_summary() {
    let model = fixture("llama", "llama-f32.gguf");
    for unfused in [false, true] {
        let mut args = vec!["graph", "-m", &model, "--tokens", "5", "--format", "json"];
        if unfused {
            args.push("--unfused");
        }
        let (ok, out, err) = weft(&args);
        assert!(ok, "{err}");
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        let nodes = j["nodes"].as_array().unwrap();
        assert_eq!(
            j["summary"]["nodes"].as_u64().unwrap() as usize,
            nodes.len()
        );
        let scheduled = nodes
            .iter()
            .filter(|n| !matches!(n["op"].as_str().unwrap(), "view" | "input" | "external"))
            .count();
        assert_eq!(
            j["summary"]["dispatches"].as_u64().unwrap() as usize,
            scheduled
        );
        let (ok, summary, _) = weft(&["graph", "-m", &model, "--tokens", "5"]);
        assert!(ok);
        let line = summary
            .lines()
            .find(|l| l.starts_with("dispatches"))
            .unwrap();
        let want = if unfused {
            format!("{scheduled} unfused")
        } else {
            format!("{scheduled} fused")
        };
        assert!(line.contains(&want), "{line} vs {want}");
    }
    let (ok, dot, _) = weft(&["graph", "-m", &model, "--format", "dot"]);
    assert!(ok && dot.starts_with("digraph weft"));
}

#[test]
fn bench_json_has_the_documented_fields() {
    let (ok, out, err) = weft(&[
        "bench",
        "-m",
        &fixture("mamba", "mamba-f32.gguf"),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "2",
        "--backend",
        "cpu",
        "--json",
    ]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        for f in [
            "model_filename",
            "backends",
            "n_prompt",
            "n_gen",
            "avg_ts",
            "stddev_ts",
            "samples_ts",
            "adapter",
        ] {
            assert!(!r[f].is_null(), "missing {f}: {r}");
        }
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
    }
    let tg = &rows[1];
    assert_eq!(tg["n_gen"], 4);
    assert!(tg["weights_bytes_per_s"].as_f64().unwrap() > 0.0);
    assert!(tg["bandwidth_fraction"].as_f64().unwrap() > 0.0);
}

/// `-d` runs each test on top of that many tokens: the cache holds them (a cache sized for the
/// test alone would overflow) and the rows say so.
#[test]
fn bench_depth_runs_the_tests_on_a_filled_context() {
    let model = fixture("llama", "llama-f32.gguf");
    let args = |json: bool| {
        let mut a = vec![
            "bench",
            "-m",
            &model,
            "-d",
            "100",
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "1",
            "--backend",
            "cpu",
        ];
        if json {
            a.extend(["--json", "--cache-type", "f16"]);
        }
        weft(&a)
    };
    let (ok, out, err) = args(true);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["n_depth"] == 100), "{out}");
    // the cache's type, as llama-bench reports it
    assert!(
        rows.iter()
            .all(|r| r["type_k"] == "f16" && r["type_v"] == "f16"),
        "{out}"
    );
    let (ok, out, err) = args(false);
    assert!(ok, "{err}");
    assert!(
        out.contains("| pp16 @ d100 |") && out.contains("| tg4 @ d100 |"),
        "{out}"
    );
}

#[test]
fn bench_profile_lists_ops_and_the_slowest_nodes() {
    let (ok, out, err) = weft(&[
        "bench",
        "-m",
        &fixture("mamba", "mamba-f32.gguf"),
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "--backend",
        "cpu",
        "--profile",
    ]);
    assert!(ok, "{err}");
    for title in ["prompt of 8 tokens", "generation steps, per token"] {
        assert!(out.contains(title), "no {title:?} in {out}");
    }
    // both runs name their nodes, slowest first, and a Mamba step spends time in its scan
    let tables: Vec<&str> = out.split("| slowest nodes | op | ms |").skip(1).collect();
    assert_eq!(tables.len(), 2, "{out}");
    for t in tables {
        let ms: Vec<f64> = t
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|') && l.matches('|').count() == 4)
            .map(|l| l.rsplit('|').nth(1).unwrap().trim().parse().unwrap())
            .collect();
        assert!(!ms.is_empty(), "{t}");
        assert!(
            ms.windows(2).all(|w| w[0] >= w[1]),
            "not slowest first: {t}"
        );
    }
    assert!(out.contains("| ssm_scan |"), "{out}");
}

#[test]
fn bench_bandwidth_prints_the_cpu_read_rate() {
    let (ok, out, err) = weft(&["bench", "--bandwidth", "--backend", "cpu"]);
    assert!(ok, "{err}");
    let gbs: f64 = out
        .split("memory bandwidth ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {out:?}"));
    // a CPU reads memory at more than 0.1 GB/s and (so far) less than 10 TB/s
    assert!(gbs > 0.1 && gbs < 10_000.0, "{out}");
    assert!(out.contains("reading"), "{out}");
}

#[test]
fn bad_files_and_arguments_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let junk = junk.to_string_lossy().into_owned();
    for args in [
        vec!["info", "-m", "does/not/exist.gguf"],
        vec!["info", "-m", &junk],
        vec!["graph", "-m", &junk],
        vec![
            "bench",
            "-m",
            &junk,
            "--backend",
            "cpu",
            "-p",
            "4",
            "-n",
            "1",
            "-r",
            "1",
        ],
        vec!["graph", "-m", "does/not/exist.gguf", "--tokens", "0"],
    ] {
        let (ok, _, err) = weft(&args);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}
