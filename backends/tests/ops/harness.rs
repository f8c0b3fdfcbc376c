//! Builds small graphs, runs them on a backend under several plan settings (fused, unfused,
//! without memory reuse) and compares every result with the reference.

use super::reference::Nd;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_backends::{Backend, HostData, Output};
use weft_graph::passes::PassOptions;
use weft_graph::{Access, DType, Graph, GraphBuilder, PlanOptions, Tensor, plan};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn randn(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Host inputs by name.
pub type Named<T> = Vec<(String, Vec<T>)>;

/// A graph under construction with its host inputs.
pub struct Case {
    pub b: GraphBuilder,
    f32_inputs: Vec<(String, Vec<f32>)>,
    i32_inputs: Vec<(String, Vec<i32>)>,
}

impl Case {
    pub fn new() -> Case {
        Case {
            b: GraphBuilder::new(),
            f32_inputs: vec![],
            i32_inputs: vec![],
        }
    }

    /// An F32 input with random values in [-1, 1); returns the tensor and its reference.
    pub fn input(&mut self, r: &mut StdRng, name: &str, dims: &[usize]) -> (Tensor, Nd) {
        let v = randn(r, dims.iter().product());
        self.input_values(name, dims, v)
    }

    pub fn input_values(&mut self, name: &str, dims: &[usize], v: Vec<f32>) -> (Tensor, Nd) {
        let t = self.b.input(name, dims, DType::F32).expect("input");
        let nd = Nd::from_f32(dims, &v);
        self.f32_inputs.push((name.into(), v));
        (t, nd)
    }

    pub fn ids(&mut self, name: &str, dims: &[usize], v: Vec<i32>) -> Tensor {
        let t = self.b.input(name, dims, DType::I32).expect("ids input");
        self.i32_inputs.push((name.into(), v));
        t
    }

    /// An external buffer holding `values` stored as `dtype` (F32, F16 or BF16). Returns the
    /// tensor and the values it really holds (after rounding to `dtype`).
    pub fn external(
        &mut self,
        be: &mut dyn Backend,
        name: &str,
        dims: &[usize],
        dtype: DType,
        values: &[f32],
        access: Access,
    ) -> (Tensor, Nd) {
        let (bytes, stored): (Vec<u8>, Vec<f32>) = match dtype {
            DType::F32 => (bytemuck::cast_slice(values).to_vec(), values.to_vec()),
            DType::F16 => {
                let h: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                (
                    bytemuck::cast_slice(&h).to_vec(),
                    h.iter().map(|x| x.to_f32()).collect(),
                )
            }
            DType::BF16 => {
                let h: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                (
                    bytemuck::cast_slice(&h).to_vec(),
                    h.iter().map(|x| x.to_f32()).collect(),
                )
            }
            other => panic!("use quantized() for {other}"),
        };
        let buf = be.alloc(bytes.len()).expect("alloc");
        be.upload(buf, 0, &bytes).expect("upload");
        let t = self
            .b
            .external(name, dims, dtype, buf, access)
            .expect("external");
        (t, Nd::from_f32(dims, &stored))
    }

    /// A weight of random valid blocks of a quantized dtype; the reference is its dequantization.
    pub fn quantized(
        &mut self,
        be: &mut dyn Backend,
        r: &mut StdRng,
        name: &str,
        dims: &[usize],
        dtype: DType,
    ) -> (Tensor, Nd) {
        let n: usize = dims.iter().product();
        let mut gr = weft_graph::testing::Rng::new(r.random());
        let bytes = weft_graph::testing::random_blocks(&mut gr, dtype, n / dtype.block_elems());
        let mut vals = vec![0.0f32; n];
        assert!(weft_graph::quant::dequantize(dtype, &bytes, &mut vals));
        let buf = be.alloc(bytes.len()).expect("alloc");
        be.upload(buf, 0, &bytes).expect("upload");
        let t = self.b.weight(name, dims, dtype, buf).expect("weight");
        (t, Nd::from_f32(dims, &vals))
    }

    pub fn output(&mut self, t: Tensor, name: &str) {
        self.b.output(t, name).expect("output");
    }

    /// The recorded graph and its host inputs (F32 only), for cases that drive the backend
    /// themselves.
    pub fn finish(self) -> (Graph, Vec<(String, Vec<f32>)>) {
        assert!(self.i32_inputs.is_empty(), "finish() is for F32-only cases");
        (self.b.finish(), self.f32_inputs)
    }

    /// The recorded graph and its host inputs, for cases that drive the backend themselves.
    pub fn into_parts(self) -> (Graph, Named<f32>, Named<i32>) {
        (self.b.finish(), self.f32_inputs, self.i32_inputs)
    }

    /// Runs under three plan settings; all must agree bit for bit, and the first is returned.
    pub fn run(self, be: &mut dyn Backend) -> Vec<Output> {
        let g = self.b.finish();
        let mut inputs: Vec<(&str, HostData)> = vec![];
        for (n, v) in &self.f32_inputs {
            inputs.push((n, HostData::F32(v)));
        }
        for (n, v) in &self.i32_inputs {
            inputs.push((n, HostData::I32(v)));
        }
        let settings = [
            PlanOptions::default(),
            PlanOptions {
                passes: PassOptions {
                    fuse: false,
                    ..Default::default()
                },
                ..Default::default()
            },
            PlanOptions {
                reuse: false,
                in_place: false,
                ..Default::default()
            },
        ];
        let mut first: Option<Vec<Output>> = None;
        for opts in settings {
            let out = run_graph(be, &g, opts, &inputs);
            match &first {
                None => first = Some(out),
                Some(f) => {
                    for (a, b) in f.iter().zip(&out) {
                        let (x, y) = (a.to_f32(), b.to_f32());
                        let same = x
                            .iter()
                            .zip(&y)
                            .all(|(p, q)| (p - q).abs() <= 1e-6 * (1.0 + q.abs()));
                        assert!(
                            same,
                            "output {} differs between plan settings ({opts:?}): {:?} vs {:?}",
                            a.name,
                            &x[..x.len().min(8)],
                            &y[..y.len().min(8)]
                        );
                    }
                }
            }
        }
        first.expect("ran")
    }
}

pub fn run_graph(
    be: &mut dyn Backend,
    g: &Graph,
    opts: PlanOptions,
    inputs: &[(&str, HostData)],
) -> Vec<Output> {
    let p = plan(g, opts);
    let prog = be.compile(&p).expect("compile");
    let out = be.run(prog, inputs).expect("run");
    be.release(prog).expect("release");
    out
}

/// Asserts `got` matches the reference within a relative L2 error of `tol`.
pub fn assert_close(what: &str, got: &Output, want: &Nd, tol: f64) {
    assert_eq!(got.shape.dims(), &want.dims[..], "{what}: shape");
    let g = got.to_f32();
    let mut num = 0.0;
    let mut den = 0.0;
    for (a, b) in g.iter().zip(&want.data) {
        assert!(a.is_finite(), "{what}: non-finite output {a}");
        num += (*a as f64 - b).powi(2);
        den += b * b;
    }
    let rel = (num / den.max(1e-30)).sqrt();
    assert!(rel <= tol, "{what}: relative error {rel:.3e} > {tol:.1e}");
}
