//! Tokenizers from GGUF metadata against Hugging Face `tokenizers` and `sentencepiece` on a
//! multilingual corpus (`fixtures/tokenizer/`, made by `make_reference.py`): the fixtures'
//! byte-level BPE, SmolLM2's real vocabulary with its digit-splitting pre-tokenizer, and Jamba's
//! SentencePiece with byte fallback. Ids must be identical, and decoding must give the text back.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use weft_models::gguf::GgufFile;
use weft_models::tokenizer::{EncodeOptions, Tokenizer};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("tokenizer/reference.json")).unwrap())
        .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(name: &str, gguf: PathBuf, whole: bool) {
    let r = reference();
    let tok = Tokenizer::from_gguf(&GgufFile::open(gguf).unwrap()).unwrap();
    assert!(tok.warnings().is_empty(), "{name}: {:?}", tok.warnings());
    let lines: Vec<&str> = r["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let mut mismatches = vec![];
    for (i, line) in lines.iter().enumerate() {
        let want = ids(&r[name][i]);
        let got = tok.encode(line, false);
        if got != want {
            mismatches.push(format!(
                "line {i} {line:?}:\n  weft {got:?}\n  ref  {want:?}"
            ));
        }
        assert_eq!(tok.decode(&got), *line, "{name}: round trip of line {i}");
    }
    assert!(
        mismatches.is_empty(),
        "{name}: {} of {} lines differ\n{}",
        mismatches.len(),
        lines.len(),
        mismatches.join("\n")
    );
    if whole {
        let text = std::fs::read_to_string(dir().join("tokenizer/corpus.txt")).unwrap();
        assert_eq!(
            tok.encode(&text, false),
            ids(&r[format!("{name}_whole")]),
            "{name}: whole corpus"
        );
        assert_eq!(tok.decode(&tok.encode(&text, false)), text);
    }
}

#[test]
fn byte_level_bpe_matches_hugging_face() {
    check("llama", dir().join("llama/llama-f32.gguf"), true);
}

#[test]
fn smollm2_bpe_with_digit_splitting_matches_hugging_face() {
    check(
        "smollm2",
        dir().join("tokenizer/smollm2-tokenizer.gguf"),
        true,
    );
}

#[test]
fn sentencepiece_with_byte_fallback_matches_sentencepiece() {
    check("jamba", dir().join("tokenizer/jamba-tokenizer.gguf"), false);
}

#[test]
fn special_tokens_bos_and_end_of_generation() {
    let tok = Tokenizer::from_gguf(
        &GgufFile::open(dir().join("tokenizer/smollm2-tokenizer.gguf")).unwrap(),
    )
    .unwrap();
    let text = "<|im_start|>user\nHi<|im_end|>";
    let parsed = tok.encode_with(
        text,
        EncodeOptions {
            add_special: false,
            parse_special: true,
        },
    );
    let im_start = tok.encode_with(
        "<|im_start|>",
        EncodeOptions {
            add_special: false,
            parse_special: true,
        },
    );
    assert_eq!(im_start.len(), 1);
    assert_eq!(parsed[0], im_start[0]);
    let plain = tok.encode(text, false);
    assert!(
        plain.len() > parsed.len() && !plain.contains(&im_start[0]),
        "without parse_special the markers are text"
    );
    assert!(
        tok.is_eog(*parsed.last().unwrap()),
        "<|im_end|> ends generation"
    );
    assert!(tok.is_eog(tok.eos().unwrap()));
    // SmolLM2's metadata asks for no BOS: add_special adds nothing
    assert_eq!(tok.encode("Hi", true), tok.encode("Hi", false));
    // the same SentencePiece file with add_bos_token switched on gets BOS in front
    let mut bytes = std::fs::read(dir().join("tokenizer/jamba-tokenizer.gguf")).unwrap();
    let key = b"tokenizer.ggml.add_bos_token";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(
        &bytes[at..at + 4],
        &7u32.to_le_bytes(),
        "a bool follows the key"
    );
    bytes[at + 4] = 1;
    let spm = Tokenizer::from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap();
    let with = spm.encode("Hi", true);
    assert_eq!(with[0], spm.bos().unwrap());
    assert_eq!(&with[1..], &spm.encode("Hi", false)[..]);
    // a piece of a multi-byte character is raw bytes, not text
    let emoji = tok.encode("🙂", false);
    let bytes: Vec<u8> = emoji.iter().flat_map(|&i| tok.token_to_piece(i)).collect();
    assert_eq!(bytes, "🙂".as_bytes());
}

#[test]
fn unsupported_tokenizer_models_are_errors() {
    // the mamba fixture with its tokenizer model renamed
    let mut bytes = std::fs::read(dir().join("tokenizer/jamba-tokenizer.gguf")).unwrap();
    let at = bytes.windows(5).position(|w| w == b"llama").unwrap();
    bytes[at..at + 5].copy_from_slice(b"xyzzy");
    let f = GgufFile::from_bytes(bytes).unwrap();
    let e = Tokenizer::from_gguf(&f).unwrap_err().to_string();
    assert!(e.contains("xyzzy") && e.contains("not supported"), "{e}");
}

/// Every BPE fixture ships the same Hugging Face tokenizer.json (checked when the references were
/// made), so the tokenizer each fixture GGUF's metadata builds must give the reference ids too.
#[test]
fn every_bpe_fixture_gguf_tokenizes_like_the_reference() {
    let r = reference();
    let lines: Vec<&str> = r["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let archs = [
        "llama",
        "mamba",
        "mamba2",
        "bamba",
        "granitemoehybrid",
        "falcon_h1",
        "qwen3_next",
        "qwen3_5",
        "lfm2",
        "nemotron_h",
    ];
    for arch in archs {
        let tok = Tokenizer::from_gguf(
            &GgufFile::open(dir().join(arch).join(format!("{arch}-f32.gguf"))).unwrap(),
        )
        .unwrap();
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(
                tok.encode(line, false),
                ids(&r["llama"][i]),
                "{arch}: line {i}"
            );
        }
    }
}
