//! Quantized tensors of llama.cpp-quantized GGUFs decode bit for bit like the reference
//! implementation (the `gguf` Python package): every `dequant-<q>/<tensor>.<TYPE>.npy` of the
//! `*_w256` fixtures is compared with `weft_graph::quant::dequantize` of the tensor's bytes
//! and with the CPU backend's `get_rows` over every row of it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use weft_backends::{Backend, CpuBackend, HostData, WgpuBackend, WgpuOptions};
use weft_graph::{DType, GraphBuilder, PlanOptions, plan};
use weft_models::gguf::{GgufFile, TensorInfo};
use weft_models::npy;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every `(gguf, tensor name, type name, npy)` of the fixtures, sorted.
fn cases() -> Vec<(PathBuf, String, String, PathBuf)> {
    let mut out = Vec::new();
    for arch in ["llama_w256", "mamba_w256"] {
        let dir = fixtures().join(arch);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let sub = entry.unwrap().path();
            let dir_name = sub.file_name().unwrap().to_str().unwrap().to_owned();
            let Some(q) = dir_name.strip_prefix("dequant-") else {
                continue;
            };
            let gguf = dir.join(format!("{arch}-{q}.gguf"));
            for npy in std::fs::read_dir(&sub).unwrap() {
                let npy = npy.unwrap().path();
                let file = npy.file_name().unwrap().to_str().unwrap();
                let stem = file.strip_suffix(".npy").unwrap();
                let (tensor, ty) = stem.rsplit_once('.').unwrap();
                out.push((gguf.clone(), tensor.to_owned(), ty.to_owned(), npy));
            }
        }
    }
    out.sort();
    out
}

/// Describes the first element where `got` and `want` differ in bits, with its row and block.
fn first_difference(t: &TensorInfo, got: &[f32], want: &[f32]) -> Option<String> {
    let (i, (g, w)) = got
        .iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| g.to_bits() != w.to_bits())?;
    let row_len = t.dims_gguf[0] as usize;
    let block = t.dtype.block_elems();
    let differing = got
        .iter()
        .zip(want)
        .filter(|(g, w)| g.to_bits() != w.to_bits())
        .count();
    Some(format!(
        "element {i} (row {}, column {}, block {} of the row, element {} of the block): got {g:e} \
         ({:#010x}), want {w:e} ({:#010x}); {differing} of {} elements differ",
        i / row_len,
        i % row_len,
        (i % row_len) / block,
        i % block,
        g.to_bits(),
        w.to_bits(),
        want.len()
    ))
}

fn short(p: &Path) -> String {
    p.strip_prefix(fixtures())
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn dequantization_matches_the_reference_bit_for_bit() {
    let cases = cases();
    assert!(cases.len() >= 12, "only {} fixtures found", cases.len());
    let mut types = BTreeSet::new();
    let mut failures = Vec::new();
    // The CPU backend always; the wgpu backend when an adapter exists (required under CI).
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::new())];
    match WgpuBackend::new(&WgpuOptions::default()) {
        Ok(b) => backends.push(Box::new(b)),
        Err(e) if weft_backends::env_flag("CI") => {
            panic!("CI requires a GPU adapter for the wgpu tests: {e}")
        }
        Err(e) => eprintln!("wgpu half skipped: {e}"),
    }
    for (gguf, name, ty, npy_path) in &cases {
        let what = format!("{} in {}", name, short(gguf));
        let f = GgufFile::open(gguf).unwrap();
        let t = f.require_tensor(name).unwrap();
        assert_eq!(t.dtype.name(), ty, "{what}: dtype");
        types.insert(t.dtype);
        let (dims, want) = npy::read_f32(npy_path).unwrap();
        assert_eq!(dims, t.dims(), "{what}: shape of {}", short(npy_path));

        // The dequantizer itself.
        let mut got = vec![0.0f32; t.numel()];
        assert!(weft_graph::quant::dequantize(
            t.dtype,
            f.tensor_data(t),
            &mut got
        ));
        if let Some(d) = first_difference(t, &got, &want) {
            failures.push(format!("{what} ({ty}), quant::dequantize: {d}"));
        }

        // Every backend: get_rows over every row of the table.
        for be in backends.iter_mut() {
            let rows = dims[0];
            let buf = be.alloc(t.bytes).unwrap();
            be.upload(buf, 0, f.tensor_data(t)).unwrap();
            let mut b = GraphBuilder::new();
            let table = b.weight(name, &dims, t.dtype, buf).unwrap();
            let ids = b.input("ids", &[rows], DType::I32).unwrap();
            let out = b.get_rows(table, ids).unwrap();
            b.output(out, "rows").unwrap();
            let g = b.finish();
            let prog = be.compile(&plan(&g, PlanOptions::default())).unwrap();
            let ids: Vec<i32> = (0..rows as i32).collect();
            let outs = be.run(prog, &[("ids", HostData::I32(&ids))]).unwrap();
            be.release(prog).unwrap();
            be.free(buf).unwrap();
            assert_eq!(outs[0].shape.dims(), &dims[..], "{what}: get_rows shape");
            if let Some(d) = first_difference(t, outs[0].f32().unwrap(), &want) {
                failures.push(format!("{what} ({ty}), {} get_rows: {d}", be.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let want: BTreeSet<DType> = [
        DType::Q8_0,
        DType::Q4_0,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q4K,
        DType::Q6K,
    ]
    .into();
    assert_eq!(types, want, "types covered");
}
