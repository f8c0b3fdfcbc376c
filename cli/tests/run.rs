//! `weft run` end to end on a fixture model: greedy output equals `weft logits`' greedy ids, a
//! seeded sampled run is reproducible, and bad input is a one-line error.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use weft_models::gguf::GgufFile;
use weft_models::tokenizer::Tokenizer;

fn model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/llama/llama-f32.gguf")
        .to_string_lossy()
        .into_owned()
}

fn weft(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr)
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

#[test]
fn greedy_run_equals_the_greedy_ids_of_weft_logits() {
    let prompt = "The quick brown fox";
    let (ok, out, err) = weft(&[
        "run",
        "-m",
        &model(),
        "-p",
        prompt,
        "-n",
        "10",
        "--temp",
        "0",
        "--backend",
        "cpu",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let tok = Tokenizer::from_gguf(&GgufFile::open(model()).unwrap()).unwrap();
    let ids: Vec<String> = tok
        .encode(prompt, true)
        .iter()
        .map(|t| t.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = weft(&[
        "logits",
        "-m",
        &model(),
        "--tokens",
        &ids.join(","),
        "--generate",
        "10",
        "--backend",
        "cpu",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ids.json")).unwrap())
            .unwrap();
    let greedy: Vec<u32> = json["seq0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .take_while(|&t| !tok.is_eog(t))
        .collect();
    let want = format!("{prompt}{}\n", tok.decode(&greedy));
    assert_eq!(out, want);
}

#[test]
fn a_seeded_sampled_run_is_reproducible() {
    let m = model();
    let run_with = |seed: &str, more: &[&str]| {
        let mut args = vec![
            "run",
            "-m",
            &m,
            "-p",
            "Hello",
            "-n",
            "12",
            "--temp",
            "1.0",
            "--top-k",
            "0",
            "--top-p",
            "1",
            "--min-p",
            "0",
            "--seed",
            seed,
            "--backend",
            "cpu",
            "--quiet",
        ];
        args.extend_from_slice(more);
        weft(&args)
    };
    let run = |seed: &str| run_with(seed, &[]);
    let (a, b, c) = (run("7"), run("7"), run("8"));
    // the weights read in place from the mapped file
    let d = run_with("7", &["--mmap"]);
    assert!(a.0 && b.0 && c.0 && d.0, "{} {}", a.2, d.2);
    assert_eq!(a.1, b.1, "same seed, same text");
    assert_eq!(a.1, d.1, "same seed, same text with --mmap");
    assert_ne!(
        a.1, c.1,
        "another seed, other text (12 tokens from a 512-token vocabulary)"
    );
}

/// `--cache-type f16` (llama.cpp's -ctk/-ctv f16) runs with the KV cache in f16; a type the
/// cache cannot hold is refused by name.
#[test]
fn an_f16_kv_cache_runs_and_other_types_are_refused() {
    let m = model();
    let run = |cache: &str| {
        weft(&[
            "run",
            "-m",
            &m,
            "-p",
            "The quick brown fox",
            "-n",
            "8",
            "--temp",
            "0",
            "--backend",
            "cpu",
            "--quiet",
            "--cache-type",
            cache,
        ])
    };
    let (ok, out, err) = run("f16");
    assert!(ok, "{err}");
    assert!(out.starts_with("The quick brown fox"), "{out}");
    assert!(
        out.len() > "The quick brown fox\n".len(),
        "nothing generated: {out:?}"
    );
    let (ok, _, err) = run("q8_0");
    assert!(!ok);
    assert!(err.contains("q8_0") && err.contains("f16"), "{err}");
}

#[test]
fn bad_run_arguments_are_one_line_errors() {
    for (args, needle) in [
        (
            vec!["run", "-m", &model(), "-p", "", "--backend", "cpu"],
            "prompt is empty",
        ),
        (
            vec![
                "run",
                "-m",
                &model(),
                "-p",
                "hello",
                "-n",
                "100",
                "-c",
                "16",
                "--backend",
                "cpu",
            ],
            "exceeds the context",
        ),
        (
            vec!["run", "-m", "missing.gguf", "-p", "hello"],
            "missing.gguf",
        ),
    ] {
        let (ok, _, err) = weft(&args);
        assert!(!ok, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn interactive_mode_keeps_the_session_between_turns() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "run",
            "-m",
            &model(),
            "-i",
            "-n",
            "4",
            "--temp",
            "0",
            "--backend",
            "cpu",
            "-c",
            "128",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"hello there\ngeneral kenobi\n\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    // two turns, each with its own timing block
    assert_eq!(err.matches("prompt eval").count(), 2, "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.matches("> ").count(),
        3,
        "a prompt per turn and one before quitting: {out}"
    );
    // the second turn feeds only its own line (no BOS) into the session kept from the first
    let tok = Tokenizer::from_gguf(&GgufFile::open(model()).unwrap()).unwrap();
    let second = tok.encode("general kenobi\n", false).len();
    let prompt_counts: Vec<usize> = err
        .lines()
        .filter(|l| l.starts_with("prompt eval"))
        .map(|l| {
            l.split('/')
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(prompt_counts[1], second, "{err}");
}
