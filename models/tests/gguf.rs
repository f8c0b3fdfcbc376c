//! The GGUF reader on real files (llama.cpp's converter output for the tiny llama and mamba
//! fixtures) and on files written here covering every value type, nested arrays, both
//! versions, custom alignment and every tensor type weft supports.

#![allow(clippy::unwrap_used)]

use half::f16;
use std::path::PathBuf;
use weft_graph::DType;
use weft_graph::testing::Rng;
use weft_models::gguf::{Array, GgufErrorKind, GgufFile, Value, ValueType, ggml_type_id};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

// ---- a test-only GGUF writer ------------------------------------------------------------------

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An array's body: element type, count, elements.
fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => v.iter().for_each(|&x| out.push(x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(&v.value_type().id().to_le_bytes());
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// A tensor to write: name, dims in GGUF order (innermost first), type, data.
struct TensorSpec {
    name: String,
    dims_gguf: Vec<u64>,
    dtype: DType,
    data: Vec<u8>,
}

/// Writes a GGUF file; `alignment` is the one the data are laid out with (write the
/// `general.alignment` key yourself when it is not 32). Returns the bytes and each tensor's
/// absolute data offset.
fn write_gguf(
    version: u32,
    alignment: u64,
    kvs: &[(String, Value)],
    tensors: &[TensorSpec],
) -> (Vec<u8>, Vec<u64>) {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut out, k);
        put_value(&mut out, v);
    }
    let mut rel = Vec::new();
    let mut next = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims_gguf.len() as u32).to_le_bytes());
        for d in &t.dims_gguf {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
        rel.push(next);
        next = (next + t.data.len() as u64).next_multiple_of(alignment);
    }
    out.resize((out.len() as u64).next_multiple_of(alignment) as usize, 0);
    let data_start = out.len() as u64;
    for (t, r) in tensors.iter().zip(&rel) {
        out.resize((data_start + r) as usize, 0);
        out.extend_from_slice(&t.data);
    }
    (out, rel.iter().map(|r| data_start + r).collect())
}

fn kv(k: &str, v: Value) -> (String, Value) {
    (k.to_owned(), v)
}

/// One metadata entry of every type, arrays of every element type, nested arrays (with inner
/// arrays of different element types, and empty ones) and three levels of nesting.
fn every_value() -> Vec<(String, Value)> {
    let s = |x: &str| x.to_owned();
    vec![
        kv("general.architecture", Value::String(s("llama"))),
        kv("t.u8", Value::U8(250)),
        kv("t.i8", Value::I8(-120)),
        kv("t.u16", Value::U16(65000)),
        kv("t.i16", Value::I16(-32000)),
        kv("t.u32", Value::U32(4_000_000_000)),
        kv("t.i32", Value::I32(-2_000_000_000)),
        kv("t.f32", Value::F32(-1.5e-7)),
        kv("t.bool", Value::Bool(true)),
        kv("t.string", Value::String(s("héllo ✓"))),
        kv("t.empty_string", Value::String(String::new())),
        kv("t.u64", Value::U64(u64::MAX)),
        kv("t.i64", Value::I64(i64::MIN)),
        kv("t.f64", Value::F64(std::f64::consts::PI)),
        kv("t.small_u64", Value::U64(7)),
        kv("t.neg_i32", Value::I32(-5)),
        kv("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        kv("a.i8", Value::Array(Array::I8(vec![-128, 127]))),
        kv("a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        kv("a.i16", Value::Array(Array::I16(vec![-3, 3]))),
        kv("a.u32", Value::Array(Array::U32(vec![1, 2, 3]))),
        kv("a.i32", Value::Array(Array::I32(vec![-1, 0, 1]))),
        kv("a.f32", Value::Array(Array::F32(vec![0.5, -0.25]))),
        kv("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        kv(
            "a.string",
            Value::Array(Array::String(vec![s("a"), s(""), s("ü")])),
        ),
        kv("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        kv("a.i64", Value::Array(Array::I64(vec![i64::MIN, 1]))),
        kv("a.f64", Value::Array(Array::F64(vec![1e300, -0.0]))),
        kv("a.empty", Value::Array(Array::empty(ValueType::F32))),
        kv(
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::String(vec![s("x"), s("yz")]),
                Array::U8(vec![9]),
                Array::Array(vec![Array::I64(vec![-7]), Array::empty(ValueType::Bool)]),
                Array::empty(ValueType::Array),
            ])),
        ),
    ]
}

/// One small tensor of every dtype weft supports, in 1 to 4 dimensions, with random bytes.
fn every_dtype(rng: &mut Rng) -> Vec<TensorSpec> {
    let mut specs = Vec::new();
    let shapes: [&[u64]; 4] = [&[2], &[2, 3], &[2, 1, 2], &[1, 2, 1, 3]];
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let mut dims_gguf = shapes[i % 4].to_vec();
        dims_gguf[0] *= dtype.block_elems() as u64;
        let n: u64 = dims_gguf.iter().product();
        let bytes = dtype.bytes_for(n as usize).unwrap();
        specs.push(TensorSpec {
            name: format!("t{i}.{}", dtype.name().to_lowercase()),
            dims_gguf,
            dtype,
            data: (0..bytes).map(|_| rng.next_u64() as u8).collect(),
        });
    }
    specs
}

// ---- written files ----------------------------------------------------------------------------

#[test]
fn written_files_round_trip_every_value_and_dtype() {
    let mut rng = Rng::new(11);
    for (version, alignment) in [(2, 32), (3, 32), (3, 64), (2, 256), (3, 1)] {
        let mut kvs = every_value();
        if alignment != 32 {
            kvs.push(kv("general.alignment", Value::U32(alignment as u32)));
        }
        let tensors = every_dtype(&mut rng);
        let (bytes, offsets) = write_gguf(version, alignment, &kvs, &tensors);
        let what = format!("v{version} alignment {alignment}");
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        assert_eq!(f.version(), version, "{what}");
        assert_eq!(f.alignment(), alignment, "{what}");
        assert_eq!(f.data_offset() % alignment, 0, "{what}");
        assert_eq!(f.metadata(), &kvs[..], "{what}: metadata in file order");
        for (k, v) in &kvs {
            assert_eq!(f.get(k), Some(v), "{what}: {k}");
        }
        assert_eq!(f.tensors().len(), tensors.len());
        for ((spec, info), &offset) in tensors.iter().zip(f.tensors()).zip(&offsets) {
            assert_eq!(info.name, spec.name);
            assert_eq!(info.dims_gguf, spec.dims_gguf);
            let rev: Vec<usize> = spec.dims_gguf.iter().rev().map(|&d| d as usize).collect();
            assert_eq!(info.dims(), rev, "{}: row-major dims", spec.name);
            assert_eq!(info.numel(), rev.iter().product::<usize>());
            assert_eq!(info.dtype, spec.dtype);
            assert_eq!((info.offset, info.bytes), (offset, spec.data.len()));
            assert_eq!(info.offset % alignment, 0);
            assert_eq!(f.tensor_data(info), &spec.data[..], "{what}: {}", spec.name);
            assert_eq!(f.tensor(&spec.name), Some(info));
        }
        assert_eq!(f.architecture().unwrap(), "llama");
    }
}

#[test]
fn open_maps_a_written_file() {
    let mut rng = Rng::new(3);
    let tensors = every_dtype(&mut rng);
    let (bytes, _) = write_gguf(3, 32, &every_value(), &tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("written.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.path(), path);
    assert_eq!(f.bytes(), &bytes[..]);
    for (spec, info) in tensors.iter().zip(f.tensors()) {
        assert_eq!(f.tensor_data(info), &spec.data[..]);
    }
    drop(f);
    std::fs::write(&path, b"").unwrap();
    let e = GgufFile::open(&path).unwrap_err();
    assert!(matches!(e.kind(), GgufErrorKind::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("written.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let e = GgufFile::open(&path).unwrap_err();
    assert!(matches!(e.kind(), GgufErrorKind::Io(_)), "{e}");
    assert!(e.to_string().contains("written.gguf"), "{e}");
}

#[test]
fn files_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GgufFile>();
    send_sync::<weft_models::gguf::GgufError>();
}

#[test]
fn typed_accessors_convert_integers_and_name_key_and_file() {
    let (bytes, _) = write_gguf(3, 32, &every_value(), &[]);
    let f = GgufFile::from_bytes_named("mem.gguf", bytes).unwrap();
    // Any integer type that fits.
    assert_eq!(f.get_u32("t.u8").unwrap(), 250);
    assert_eq!(f.get_u32("t.u16").unwrap(), 65000);
    assert_eq!(f.get_u32("t.small_u64").unwrap(), 7);
    assert_eq!(f.get_u64("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_usize("t.small_u64").unwrap(), 7);
    assert_eq!(f.get_f32("t.f32").unwrap(), -1.5e-7);
    assert_eq!(f.get_f32("t.f64").unwrap(), std::f32::consts::PI);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("t.string").unwrap(), "héllo ✓");
    assert_eq!(f.get_array("a.u32").unwrap(), &Array::U32(vec![1, 2, 3]));
    assert_eq!(
        f.get_array("a.i8").unwrap().to_i64s(),
        Some(vec![-128, 127])
    );
    assert_eq!(f.get_array("a.u64").unwrap().to_i64s(), None);
    assert_eq!(
        f.get_array("a.string").unwrap().as_strings().unwrap()[2],
        "ü"
    );
    let nested = f.get_array("a.nested").unwrap().as_arrays().unwrap();
    assert_eq!(nested.len(), 4);
    assert_eq!(nested[2].as_arrays().unwrap()[0], Array::I64(vec![-7]));
    // Absent: Ok(None) from the _opt forms, MissingKey otherwise.
    assert_eq!(f.get_u32_opt("nope").unwrap(), None);
    assert_eq!(f.get_str_opt("nope").unwrap(), None);
    assert_eq!(f.get_array_opt("nope").unwrap(), None);
    let e = f.get_u32("llama.block_count").unwrap_err();
    assert!(matches!(e.kind(), GgufErrorKind::MissingKey(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "mem.gguf: missing metadata key \"llama.block_count\""
    );
    // Present with the wrong type, or out of range: an error in both forms.
    for e in [
        f.get_u32("t.neg_i32").unwrap_err(),
        f.get_u32_opt("t.u64").unwrap_err(),
        f.get_u32("t.string").unwrap_err(),
        f.get_u64("t.i64").unwrap_err(),
        f.get_f32("t.u32").unwrap_err(),
        f.get_bool_opt("t.u8").unwrap_err(),
        f.get_str("a.string").unwrap_err(),
        f.get_array("t.string").unwrap_err(),
    ] {
        assert!(matches!(e.kind(), GgufErrorKind::WrongType { .. }), "{e}");
        assert!(
            e.to_string().starts_with("mem.gguf: metadata key \""),
            "{e}"
        );
    }
    let e = f.get_u32("t.neg_i32").unwrap_err();
    assert_eq!(
        e.to_string(),
        "mem.gguf: metadata key \"t.neg_i32\" holds i32 -5, expected an integer that fits in u32"
    );
    let e = f.require_tensor("token_embd.weight").unwrap_err();
    assert_eq!(
        e.to_string(),
        "mem.gguf: missing tensor \"token_embd.weight\""
    );
    assert!(f.tensor("token_embd.weight").is_none());
}

#[test]
fn written_errors_name_key_or_tensor() {
    let err = |kvs: &[(String, Value)], tensors: &[TensorSpec]| {
        let (bytes, _) = write_gguf(3, 32, kvs, tensors);
        GgufFile::from_bytes_named("w.gguf", bytes).unwrap_err()
    };
    // Nesting deeper than the parser allows.
    let mut deep = Array::U8(vec![1]);
    for _ in 0..9 {
        deep = Array::Array(vec![deep]);
    }
    let e = err(&[kv("deep", Value::Array(deep))], &[]);
    assert!(
        matches!(e.kind(), GgufErrorKind::NestingTooDeep { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("\"deep\""), "{e}");
    // general.alignment of the wrong type, zero, or not a power of two.
    for (v, want) in [
        (Value::String("32".into()), "holds a string"),
        (Value::U32(0), "general.alignment is 0"),
        (Value::U32(48), "general.alignment is 48"),
        (Value::I32(-32), "holds i32 -32"),
    ] {
        let e = err(&[kv("general.alignment", v)], &[]);
        assert!(e.to_string().starts_with("w.gguf: "), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    // A u64 alignment that fits is accepted (writers vary in integer types).
    let (bytes, _) = write_gguf(3, 64, &[kv("general.alignment", Value::U64(64))], &[]);
    assert_eq!(GgufFile::from_bytes(bytes).unwrap().alignment(), 64);
    // Duplicate keys and tensors.
    let e = err(&[kv("k", Value::U8(1)), kv("k", Value::U8(2))], &[]);
    assert!(
        matches!(e.kind(), GgufErrorKind::DuplicateKey { .. }),
        "{e}"
    );
    let t = |name: &str, dims: &[u64], dtype: DType| TensorSpec {
        name: name.into(),
        dims_gguf: dims.to_vec(),
        dtype,
        data: vec![
            0;
            dtype
                .bytes_for(dims.iter().product::<u64>() as usize)
                .unwrap_or(0)
        ],
    };
    let e = err(&[], &[t("w", &[4], DType::F32), t("w", &[4], DType::F32)]);
    assert_eq!(e.to_string(), "w.gguf: tensor \"w\" appears twice");
    // Rows that are not whole blocks.
    let e = err(&[], &[t("q", &[48, 2], DType::Q4_0)]);
    assert!(
        matches!(e.kind(), GgufErrorKind::RowNotBlockMultiple { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("\"q\""), "{e}");
    // Zero-sized tensors are fine; an absurd dimension hidden behind a zero is not.
    let (bytes, _) = write_gguf(3, 32, &[], &[t("empty", &[0, 3], DType::F32)]);
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(
        (f.tensors()[0].bytes, f.tensors()[0].dims()),
        (0, vec![3, 0])
    );
    let e = err(&[], &[t("z", &[0, u64::MAX], DType::F32)]);
    assert!(
        matches!(e.kind(), GgufErrorKind::SizeOverflow { .. }),
        "{e}"
    );
}

// ---- llama.cpp's files ------------------------------------------------------------------------

#[test]
fn llama_f32_and_f16_metadata_and_tensors() {
    let names = [
        "output.weight",
        "token_embd.weight",
        "blk.0.attn_norm.weight",
        "blk.0.ffn_down.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_up.weight",
        "blk.0.ffn_norm.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_output.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
    ];
    for (file, weight_dtype) in [
        ("llama-f32.gguf", DType::F32),
        ("llama-f16.gguf", DType::F16),
    ] {
        let f = GgufFile::open(fixture(&format!("llama/{file}"))).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 64);
        assert_eq!(f.get_u32("llama.feed_forward_length").unwrap(), 128);
        assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 4);
        assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 2);
        assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(
            f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
            1e-5
        );
        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
        let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
        let tokens = tokens.as_strings().unwrap();
        assert_eq!(tokens.len(), 512);
        assert_eq!(tokens[0], "<|endoftext|>");
        let types = f.get_array("tokenizer.ggml.token_type").unwrap();
        assert_eq!((types.elem_type(), types.len()), (ValueType::I32, 512));
        assert_eq!(f.get_array("tokenizer.ggml.merges").unwrap().len(), 254);
        assert_eq!(f.metadata()[0].0, "general.architecture", "file order kept");

        assert_eq!(f.tensors().len(), 2 + 2 * 9 + 1);
        let listed: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(&listed[..names.len()], names);
        assert_eq!(listed.last(), Some(&"output_norm.weight"));
        let emb = f.require_tensor("token_embd.weight").unwrap();
        assert_eq!(emb.dims(), [512, 64]);
        assert_eq!(emb.dims_gguf, [64, 512]);
        assert_eq!(
            f.require_tensor("blk.1.attn_k.weight").unwrap().dims(),
            [32, 64]
        );
        assert_eq!(
            f.require_tensor("blk.0.ffn_down.weight").unwrap().dims(),
            [64, 128]
        );
        for t in f.tensors() {
            // llama.cpp keeps 1-d tensors (norms) in F32 whatever the file type.
            let want = if t.dims_gguf.len() == 1 {
                DType::F32
            } else {
                weight_dtype
            };
            assert_eq!(t.dtype, want, "{file}: {}", t.name);
            assert_eq!(t.bytes, t.dtype.bytes_for(t.numel()).unwrap());
            assert_eq!(f.tensor_data(t).len(), t.bytes);
            assert_eq!(t.offset % 32, 0);
        }
        assert!(f.tensor("blk.2.attn_q.weight").is_none());
        let e = f.require_tensor("blk.2.attn_q.weight").unwrap_err();
        assert!(e.to_string().contains(file) && e.to_string().contains("blk.2.attn_q.weight"));
    }
}

#[test]
fn llama_f16_data_is_the_f32_data_rounded() {
    let f32_file = GgufFile::open(fixture("llama/llama-f32.gguf")).unwrap();
    let f16_file = GgufFile::open(fixture("llama/llama-f16.gguf")).unwrap();
    let mut checked = 0;
    for t32 in f32_file.tensors() {
        let t16 = f16_file.require_tensor(&t32.name).unwrap();
        assert_eq!(t16.dims(), t32.dims());
        let mut a = vec![0.0f32; t32.numel()];
        let mut b = vec![0.0f32; t16.numel()];
        assert!(weft_graph::quant::dequantize(
            t32.dtype,
            f32_file.tensor_data(t32),
            &mut a
        ));
        assert!(weft_graph::quant::dequantize(
            t16.dtype,
            f16_file.tensor_data(t16),
            &mut b
        ));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let want = if t16.dtype == DType::F16 {
                f16::from_f32(*x).to_f32()
            } else {
                *x
            };
            assert_eq!(want.to_bits(), y.to_bits(), "{} element {i}", t32.name);
        }
        checked += 1;
    }
    assert_eq!(checked, 21);
}

#[test]
fn mamba_f32_metadata_and_tensors() {
    let f = GgufFile::open(fixture("mamba/mamba-f32.gguf")).unwrap();
    assert_eq!((f.version(), f.architecture().unwrap()), (3, "mamba"));
    assert_eq!(f.get_u32("mamba.block_count").unwrap(), 3);
    assert_eq!(f.get_u32("mamba.embedding_length").unwrap(), 64);
    assert_eq!(f.get_u32("mamba.ssm.inner_size").unwrap(), 128);
    assert_eq!(f.get_u32("mamba.ssm.state_size").unwrap(), 16);
    assert_eq!(f.get_u32("mamba.ssm.conv_kernel").unwrap(), 4);
    assert_eq!(f.get_u32("mamba.ssm.time_step_rank").unwrap(), 4);
    assert!(!f.get_bool("mamba.ssm.dt_b_c_rms").unwrap());
    assert_eq!(f.tensors().len(), 1 + 3 * 10 + 1);
    assert!(f.tensor("output.weight").is_none(), "tied embeddings");
    for l in 0..3 {
        let t = |n: &str| f.require_tensor(&format!("blk.{l}.{n}")).unwrap().dims();
        assert_eq!(t("ssm_a"), [128, 16]);
        assert_eq!(t("ssm_d"), [128]);
        assert_eq!(t("ssm_conv1d.weight"), [128, 4]);
        assert_eq!(t("ssm_in.weight"), [256, 64]);
        assert_eq!(t("ssm_x.weight"), [36, 128]);
        assert_eq!(t("ssm_dt.weight"), [128, 4]);
        assert_eq!(t("ssm_out.weight"), [64, 128]);
    }
    assert!(f.tensors().iter().all(|t| t.dtype == DType::F32));
}

#[test]
fn quantized_fixtures_list_their_types() {
    let f = GgufFile::open(fixture("llama_w256/llama_w256-q4_k_m.gguf")).unwrap();
    assert_eq!(f.get_u32("general.file_type").unwrap(), 15);
    let dtype = |n: &str| f.require_tensor(n).unwrap().dtype;
    assert_eq!(dtype("token_embd.weight"), DType::Q4K);
    assert_eq!(dtype("output.weight"), DType::Q6K);
    assert_eq!(dtype("blk.1.ffn_down.weight"), DType::Q6K);
    assert_eq!(dtype("output_norm.weight"), DType::F32);
    for q in ["q8_0", "q4_0", "q5_0", "q5_1", "q4_k_m", "q6_k"] {
        for arch in ["llama_w256", "mamba_w256"] {
            let f = GgufFile::open(fixture(&format!("{arch}/{arch}-{q}.gguf"))).unwrap();
            assert_eq!(f.get_u32("general.quantization_version").unwrap(), 2);
            assert!(
                f.tensors().iter().any(|t| t.dtype.is_quantized()),
                "{arch}-{q}"
            );
        }
    }
}

#[test]
fn bytes_per_token_counts_what_decode_reads() {
    let sum = |g: &GgufFile, f: &dyn Fn(&str) -> bool| -> usize {
        g.tensors()
            .iter()
            .filter(|t| f(&t.name))
            .map(|t| t.bytes)
            .sum()
    };
    // mamba ties its output to the embedding: everything is read
    let m = GgufFile::open(fixture("mamba/mamba-f32.gguf")).unwrap();
    assert!(m.tensor("output.weight").is_none());
    assert_eq!(m.bytes_per_token(), sum(&m, &|_| true));
    // jamba: one embedding row, and 2 of the 4 experts' weights
    let j = GgufFile::open(fixture("jamba/jamba-f32.gguf")).unwrap();
    assert!(j.tensor("output.weight").is_some());
    let used = j.get_usize("jamba.expert_used_count").unwrap();
    let count = j.get_usize("jamba.expert_count").unwrap();
    assert!(used < count);
    let embd = j.tensor("token_embd.weight").unwrap();
    let experts = sum(&j, &|n| n.contains("_exps"));
    assert!(experts > 0);
    let rest = sum(&j, &|n| !n.contains("_exps") && n != "token_embd.weight");
    assert_eq!(
        j.bytes_per_token(),
        rest + experts * used / count + embd.bytes / embd.dims()[0]
    );
}
