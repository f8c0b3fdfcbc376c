//! The GGUF reader on damaged files: a real fixture truncated everywhere, thousands of
//! seeded random byte flips and overwrites of its header, and hand-made corruptions of single
//! fields. It must return an error naming the file and the key or tensor at fault, and never
//! panic; whatever it accepts must have every tensor's data inside the buffer.

#![allow(clippy::unwrap_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use weft_graph::testing::Rng;
use weft_models::gguf::{GgufError, GgufErrorKind, GgufFile};

fn fixture_bytes(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read(p).unwrap()
}

/// Parses `bytes`, turning a panic into a test failure that says what was done to the file.
fn parse(bytes: Vec<u8>, what: &dyn Fn() -> String) -> Result<GgufFile, GgufError> {
    let len = bytes.len();
    match catch_unwind(AssertUnwindSafe(|| {
        GgufFile::from_bytes_named("bad.gguf", bytes)
    })) {
        Ok(Ok(f)) => {
            for t in f.tensors() {
                let end = t.offset as usize + t.bytes;
                assert!(
                    end <= len,
                    "{}: tensor {} ends at {end} > {len}",
                    what(),
                    t.name
                );
                assert_eq!(f.tensor_data(t).len(), t.bytes, "{}: {}", what(), t.name);
                assert_eq!(t.offset % f.alignment(), 0, "{}: {}", what(), t.name);
            }
            Ok(f)
        }
        Ok(Err(e)) => {
            assert!(e.to_string().starts_with("bad.gguf: "), "{}: {e}", what());
            Err(e)
        }
        Err(_) => panic!("the parser panicked on {}", what()),
    }
}

/// Where things are in a (well-formed) GGUF file, found by an independent walk.
#[derive(Debug, Default)]
struct Layout {
    /// Per metadata entry: key, offset of its key length, of its value type, of its value, end.
    kvs: Vec<(String, usize, usize, usize, usize)>,
    /// Per tensor: name, offset of its name length, of n_dims, of its type, of its offset field, end.
    tensors: Vec<(String, usize, usize, usize, usize, usize)>,
    data_start: usize,
}

fn walk(b: &[u8]) -> Layout {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    let string_at = |p: usize| {
        let n = u64_at(p);
        (
            String::from_utf8(b[p + 8..p + 8 + n].to_vec()).unwrap(),
            p + 8 + n,
        )
    };
    fn skip(b: &[u8], ty: u32, p: usize) -> usize {
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match ty {
            0 | 1 | 7 => p + 1,
            2 | 3 => p + 2,
            4..=6 => p + 4,
            10..=12 => p + 8,
            8 => p + 8 + u64_at(p),
            9 => {
                let (elem, n) = (u32_at(p), u64_at(p + 4));
                (0..n).fold(p + 12, |q, _| skip(b, elem, q))
            }
            _ => panic!("bad value type {ty}"),
        }
    }
    let (n_tensors, n_kv) = (u64_at(8), u64_at(16));
    let mut l = Layout::default();
    let mut p = 24;
    for _ in 0..n_kv {
        let (key, tp) = string_at(p);
        let end = skip(b, u32_at(tp), tp + 4);
        l.kvs.push((key, p, tp, tp + 4, end));
        p = end;
    }
    for _ in 0..n_tensors {
        let (name, nd) = string_at(p);
        let ty = nd + 4 + 8 * u32_at(nd) as usize;
        l.tensors.push((name, p, nd, ty, ty + 4, ty + 12));
        p = ty + 12;
    }
    l.data_start = p.next_multiple_of(32);
    l
}

const FILE: &str = "llama/llama-f16.gguf";

#[test]
fn truncation_anywhere_is_an_error() {
    let full = fixture_bytes(FILE);
    let l = walk(&full);
    let data_end = {
        let f = GgufFile::from_bytes(full.clone()).unwrap();
        f.tensors()
            .iter()
            .map(|t| t.offset as usize + t.bytes)
            .max()
            .unwrap()
    };
    let mut cuts: Vec<usize> = vec![0, 4, 8, 16, 24, l.data_start, l.data_start + 1];
    for kv in &l.kvs {
        cuts.extend([kv.1 + 8, kv.2, kv.3, kv.4 - 1, kv.4]);
    }
    for t in &l.tensors {
        cuts.extend([t.1 + 8, t.2, t.3, t.4, t.5 - 1, t.5]);
    }
    cuts.push((l.data_start + full.len()) / 2);
    cuts.extend(0..2000);
    cuts.extend((2000..l.data_start).step_by(7));
    cuts.extend((l.data_start..full.len()).step_by(997));
    cuts.push(full.len() - 1);
    for &cut in &cuts {
        let r = parse(full[..cut].to_vec(), &|| {
            format!("{FILE} cut to {cut} bytes")
        });
        assert!(
            r.is_err() || cut >= data_end,
            "{FILE} cut to {cut} bytes (data ends at {data_end}) was accepted"
        );
    }
    // Cut just past a metadata entry's end, the error is about the next part of the file.
    // (Cuts in the first few hundred bytes fail the header's count check instead.)
    let i = l
        .kvs
        .iter()
        .position(|kv| kv.0 == "tokenizer.ggml.tokens")
        .unwrap()
        + 1;
    let key = &l.kvs[i].0;
    let e = parse(full[..l.kvs[i - 1].4 + 3].to_vec(), &|| {
        "cut in a key".into()
    })
    .unwrap_err();
    assert!(matches!(e.kind(), GgufErrorKind::Truncated { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("metadata entry #{i}")),
        "{e}"
    );
    let e = parse(full[..l.kvs[i].4 - 1].to_vec(), &|| "cut in a value".into()).unwrap_err();
    let short = matches!(
        e.kind(),
        GgufErrorKind::CountTooLarge {
            what: "array length",
            ..
        }
    );
    assert!(short, "{e}");
    assert!(e.to_string().contains(&format!("{key:?}")), "{e}");
    let (name, ..) = &l.tensors[3];
    let e = parse(full[..l.tensors[3].5 - 1].to_vec(), &|| {
        "cut in tensor 3".into()
    })
    .unwrap_err();
    assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
    let e = parse(full[..full.len() - 1].to_vec(), &|| "cut by one".into()).unwrap_err();
    assert!(
        matches!(e.kind(), GgufErrorKind::DataOutOfBounds { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("output_norm.weight"), "{e}");
}

#[test]
fn random_flips_and_overwrites_never_panic() {
    let full = fixture_bytes(FILE);
    let l = walk(&full);
    let infos_start = l.tensors[0].1;
    let mut rng = Rng::new(0x6767_7566);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..3000 {
        let mut b = full.clone();
        // Half the damage lands in the tensor infos, which are a small part of the header.
        let region = if round % 2 == 0 {
            0..l.data_start
        } else {
            infos_start..l.data_start
        };
        let pos = region.start + rng.below(region.len());
        let what = match round % 3 {
            0 => {
                let bit = 1u8 << rng.below(8);
                b[pos] ^= bit;
                format!("bit flip {bit:#04x} at offset {pos}")
            }
            1 => {
                let n = 1 + rng.below(8);
                for q in pos..(pos + n).min(b.len()) {
                    b[q] = rng.next_u64() as u8;
                }
                format!("{n} random bytes at offset {pos}")
            }
            _ => {
                let interesting = [0, 1, 3, 4, 9, 99, 1 << 31, 1 << 32, 1 << 63, u64::MAX];
                let v = interesting[rng.below(interesting.len())];
                let end = (pos + 8).min(b.len());
                b[pos..end].copy_from_slice(&v.to_le_bytes()[..end - pos]);
                format!("u64 {v:#x} written at offset {pos}")
            }
        };
        match parse(b, &|| format!("{FILE} with {what}")) {
            Ok(_) => accepted += 1,
            Err(_) => rejected += 1,
        }
    }
    // Flipping a byte inside a token string keeps the file valid; most damage does not.
    assert!(
        accepted > 0 && rejected > 1000,
        "{accepted} accepted, {rejected} rejected"
    );
}

/// Writes `v` at `pos` and parses; the error must mention every string in `names`.
fn corrupt(full: &[u8], pos: usize, v: &[u8], names: &[&str]) -> GgufError {
    let mut b = full.to_vec();
    b[pos..pos + v.len()].copy_from_slice(v);
    let what = || format!("{v:02x?} at {pos}");
    let e = parse(b, &what).expect_err("corruption accepted");
    for n in names {
        assert!(
            e.to_string().contains(n),
            "{}: {e} does not name {n}",
            what()
        );
    }
    e
}

#[test]
fn single_field_corruptions_name_what_is_wrong() {
    let full = fixture_bytes(FILE);
    let l = walk(&full);
    let kv = |key: &str| l.kvs.iter().find(|k| k.0 == key).unwrap().clone();
    let tensor = |name: &str| l.tensors.iter().find(|t| t.0 == name).unwrap().clone();
    let max = u64::MAX.to_le_bytes();
    use GgufErrorKind as K;

    let e = corrupt(&full, 0, b"GGUG", &["not a GGUF file"]);
    assert!(matches!(e.kind(), K::BadMagic(_)));
    for v in [0u32, 1, 4, 0x0100_0000, u32::MAX] {
        let e = corrupt(&full, 4, &v.to_le_bytes(), &["version"]);
        assert!(
            matches!(e.kind(), K::UnsupportedVersion(x) if *x == v),
            "{e}"
        );
    }
    let e = corrupt(&full, 4, &3u32.to_be_bytes(), &["big-endian"]);
    assert!(matches!(e.kind(), K::BigEndian));
    let mut v2 = full.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(parse(v2, &|| "version 2".into()).unwrap().version(), 2);
    let e = corrupt(&full, 8, &max, &["tensor count"]);
    assert!(matches!(e.kind(), K::CountTooLarge { .. }), "{e}");
    let e = corrupt(
        &full,
        16,
        &(1u64 << 40).to_le_bytes(),
        &["metadata entry count"],
    );
    assert!(matches!(e.kind(), K::CountTooLarge { .. }), "{e}");

    // Metadata.
    let tokens = kv("tokenizer.ggml.tokens");
    let e = corrupt(
        &full,
        tokens.3 + 4,
        &max,
        &["array length", "tokenizer.ggml.tokens"],
    );
    assert!(matches!(e.kind(), K::CountTooLarge { .. }), "{e}");
    let e = corrupt(&full, tokens.3 + 4, &513u64.to_le_bytes(), &[]);
    assert!(
        !e.to_string().is_empty(),
        "a longer token list reads into the next entry: {e}"
    );
    let name = kv("general.name");
    let e = corrupt(&full, name.3, &max, &["string length", "\"general.name\""]);
    assert!(matches!(e.kind(), K::CountTooLarge { .. }), "{e}");
    let e = corrupt(&full, name.3 + 8, &[0xFF], &["UTF-8", "\"general.name\""]);
    assert!(matches!(e.kind(), K::NotUtf8 { .. }), "{e}");
    let e = corrupt(&full, name.1, &max, &["metadata entry #2"]);
    assert!(matches!(e.kind(), K::CountTooLarge { .. }), "{e}");
    let ty = kv("general.type");
    let e = corrupt(
        &full,
        ty.2,
        &99u32.to_le_bytes(),
        &["\"general.type\"", "99"],
    );
    assert!(
        matches!(e.kind(), K::UnknownValueType { type_id: 99, .. }),
        "{e}"
    );
    let e = corrupt(
        &full,
        tokens.3,
        &99u32.to_le_bytes(),
        &["tokenizer.ggml.tokens", "99"],
    );
    assert!(
        matches!(e.kind(), K::UnknownValueType { type_id: 99, .. }),
        "{e}"
    );
    let eos = kv("tokenizer.ggml.eos_token_id");
    let e = corrupt(
        &full,
        eos.1 + 8,
        b"tokenizer.ggml.bos",
        &["\"tokenizer.ggml.bos_token_id\""],
    );
    assert!(matches!(e.kind(), K::DuplicateKey { .. }), "{e}");

    // general.alignment, made by renaming general.file_type (same length, a u32).
    let ft = kv("general.file_type");
    let mut aligned = full.clone();
    aligned[ft.1 + 8..ft.2].copy_from_slice(b"general.alignment");
    for (v, want) in [
        (3u32, "general.alignment is 3"),
        (0, "general.alignment is 0"),
    ] {
        let e = corrupt(&aligned, ft.3, &v.to_le_bytes(), &[want]);
        assert!(matches!(e.kind(), K::BadAlignment(_)), "{e}");
    }
    let f = parse(aligned.clone(), &|| "alignment 1".into());
    assert_eq!(f.unwrap().alignment(), 1);
    aligned[ft.3..ft.4].copy_from_slice(&512u32.to_le_bytes());
    let e = parse(aligned, &|| "alignment 512".into()).unwrap_err();
    assert!(
        matches!(e.kind(), K::MisalignedTensor { alignment: 512, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("\"blk.0.ffn_down.weight\""), "{e}");

    // Tensor infos.
    let emb = tensor("token_embd.weight");
    let tn = "\"token_embd.weight\"";
    for n_dims in [0u32, 5, 9] {
        let e = corrupt(&full, emb.2, &n_dims.to_le_bytes(), &[tn, "dimensions"]);
        assert!(matches!(e.kind(), K::BadDimCount { .. }), "{e}");
    }
    let e = corrupt(
        &full,
        emb.3,
        &99u32.to_le_bytes(),
        &[tn, "unknown ggml type id 99"],
    );
    assert!(
        matches!(e.kind(), K::UnknownTensorType { type_id: 99, .. }),
        "{e}"
    );
    let e = corrupt(&full, emb.3, &11u32.to_le_bytes(), &[]);
    assert_eq!(
        e.to_string(),
        "bad.gguf: tensor \"token_embd.weight\" has type Q3_K, which weft does not support"
    );
    for id in [9u32, 10, 15, 16, 23, 24, 28, 29, 34, 39] {
        let e = corrupt(
            &full,
            emb.3,
            &id.to_le_bytes(),
            &[tn, "which weft does not support"],
        );
        assert!(matches!(e.kind(), K::UnsupportedTensorType { .. }), "{e}");
    }
    for id in [4u32, 5, 31, 32, 33, 36, 37, 38, 40, u32::MAX] {
        let e = corrupt(&full, emb.3, &id.to_le_bytes(), &[tn, "unknown ggml type"]);
        assert!(matches!(e.kind(), K::UnknownTensorType { .. }), "{e}");
    }
    let e = corrupt(&full, emb.3, &12u32.to_le_bytes(), &[tn, "Q4_K blocks"]);
    assert!(
        matches!(e.kind(), K::RowNotBlockMultiple { row: 64, .. }),
        "{e}"
    );
    let huge = (1u64 << 62).to_le_bytes();
    let e = corrupt(&full, emb.2 + 4, &[huge, huge].concat(), &[tn, "overflows"]);
    assert!(matches!(e.kind(), K::SizeOverflow { .. }), "{e}");
    let e = corrupt(
        &full,
        emb.2 + 12,
        &2048u64.to_le_bytes(),
        &[tn, "past the end"],
    );
    assert!(matches!(e.kind(), K::DataOutOfBounds { .. }), "{e}");
    let off = u64::from_le_bytes(full[emb.4..emb.4 + 8].try_into().unwrap());
    let e = corrupt(
        &full,
        emb.4,
        &(off + 1).to_le_bytes(),
        &[tn, "not a multiple"],
    );
    assert!(
        matches!(e.kind(), K::MisalignedTensor { alignment: 32, .. }),
        "{e}"
    );
    let e = corrupt(&full, emb.4, &max, &[tn]);
    assert!(!e.to_string().is_empty());
    let last = l.tensors.last().unwrap();
    let e = corrupt(
        &full,
        last.4,
        &(1u64 << 40).to_le_bytes(),
        &["output_norm.weight", "past the end"],
    );
    assert!(matches!(e.kind(), K::DataOutOfBounds { .. }), "{e}");
    // Overlap: attn_v placed on attn_k's data.
    let (k, v) = (tensor("blk.0.attn_k.weight"), tensor("blk.0.attn_v.weight"));
    let k_off: [u8; 8] = full[k.4..k.4 + 8].try_into().unwrap();
    let e = corrupt(
        &full,
        v.4,
        &k_off,
        &["\"blk.0.attn_k.weight\"", "\"blk.0.attn_v.weight\""],
    );
    assert!(matches!(e.kind(), K::OverlappingTensors { .. }), "{e}");
    // Duplicate names: attn_v renamed attn_k.
    let e = corrupt(
        &full,
        v.1 + 8,
        b"blk.0.attn_k",
        &["\"blk.0.attn_k.weight\" appears twice"],
    );
    assert!(matches!(e.kind(), K::DuplicateTensor { .. }), "{e}");
    let e = corrupt(&full, v.1, &max, &["the name of tensor #10"]);
    assert!(matches!(e.kind(), K::CountTooLarge { .. }), "{e}");
}

#[test]
fn quantized_fixture_survives_header_flips() {
    // The same treatment, briefly, on a quantized file (other types, other sizes).
    let full = fixture_bytes("llama_w256/llama_w256-q4_0.gguf");
    let l = walk(&full);
    let mut rng = Rng::new(5);
    for _ in 0..500 {
        let pos = l.tensors[0].1 + rng.below(l.data_start - l.tensors[0].1);
        let mut b = full.clone();
        b[pos] = rng.next_u64() as u8;
        let _ = parse(b, &|| format!("q4_0 file with a random byte at {pos}"));
    }
    for cut in (0..full.len()).step_by(4099) {
        assert!(parse(full[..cut].to_vec(), &|| format!("q4_0 cut to {cut}")).is_err());
    }
}
