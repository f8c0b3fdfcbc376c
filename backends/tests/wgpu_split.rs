//! Weights larger than one storage binding run as several dispatches over row ranges: a device
//! whose bindings are capped far below the weight gives the same matmul and row-gather results
//! as one that binds the weight whole.

#![allow(clippy::unwrap_used)]

use weft_backends::{Backend, HostData, WgpuBackend, WgpuOptions};
use weft_graph::testing::{Rng, random_blocks};
use weft_graph::{DType, GraphBuilder, PlanOptions, plan};

fn backend(max_binding: Option<u32>) -> Option<WgpuBackend> {
    match WgpuBackend::new(&WgpuOptions {
        max_binding,
        ..Default::default()
    }) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("CI needs a wgpu adapter: {e}"),
    }
}

/// Logits-like `x · wᵀ` and embedding-like `w[ids]` of one weight on `be`.
fn run(be: &mut WgpuBackend, dtype: DType, bytes: &[u8], n: usize, k: usize) -> Vec<Vec<f32>> {
    let buf = be.alloc(bytes.len()).unwrap();
    be.upload(buf, 0, bytes).unwrap();
    let mut b = GraphBuilder::new();
    let w = b.weight("w", &[n, k], dtype, buf).unwrap();
    let x = b.input("x", &[3, k], DType::F32).unwrap();
    let ids = b.input("ids", &[5], DType::I32).unwrap();
    let y = b.matmul(x, w).unwrap();
    // one row: the decode kernel
    let x1 = b.slice(x, 0, 1, 1).unwrap();
    let y1 = b.matmul(x1, w).unwrap();
    let r = b.get_rows(w, ids).unwrap();
    b.output(y, "y").unwrap();
    b.output(r, "rows").unwrap();
    b.output(y1, "y1").unwrap();
    let prog = be
        .compile(&plan(&b.finish(), PlanOptions::default()))
        .unwrap();
    let xs: Vec<f32> = (0..3 * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let idv = [0, n as i32 - 1, 77, 3, n as i32 / 2];
    let out = be
        .run(
            prog,
            &[("x", HostData::F32(&xs)), ("ids", HostData::I32(&idv))],
        )
        .unwrap();
    out.into_iter().map(|o| o.to_f32()).collect()
}

#[test]
fn wgpu_weights_over_the_binding_limit_are_split_by_rows() {
    let Some(mut whole) = backend(None) else {
        return;
    };
    let cap = 64 << 10;
    let mut split = backend(Some(cap)).unwrap();
    assert_eq!(split.limits().max_storage_buffer_binding_size, cap as u64);
    let mut rng = Rng::new(5);
    for (dtype, k) in [(DType::F16, 256), (DType::Q8_0, 512), (DType::Q4K, 512)] {
        let n = 1201;
        let bytes = random_blocks(&mut rng, dtype, n * k / dtype.block_elems());
        assert!(
            bytes.len() > 3 * cap as usize,
            "{dtype}: the weight must need several ranges"
        );
        let want = run(&mut whole, dtype, &bytes, n, k);
        let got = run(&mut split, dtype, &bytes, n, k);
        assert_eq!(got.len(), 3);
        for (name, (g, w)) in ["matmul", "get_rows", "mat-vec"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_eq!(g.len(), w.len());
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-6, "{dtype} {name}: split differs by {worst:e}");
        }
    }
}
