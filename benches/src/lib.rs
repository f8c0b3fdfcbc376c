//! Helpers for the kernel benchmarks: a one-op graph compiled once and run repeatedly.

use weft_backends::{Backend, HostData, ProgramId, Result};
use weft_graph::testing::{Rng, random_blocks};
use weft_graph::{BufferId, DType, Graph, PlanOptions, plan};

/// A weight of `rows × cols` random values (or valid random blocks) uploaded to `be`.
pub fn random_weight(
    be: &mut dyn Backend,
    rng: &mut Rng,
    dtype: DType,
    rows: usize,
    cols: usize,
) -> Result<BufferId> {
    let n = rows * cols;
    let bytes: Vec<u8> = match dtype {
        DType::F32 => {
            bytemuck::cast_slice(&(0..n).map(|_| rng.unit()).collect::<Vec<f32>>()).to_vec()
        }
        DType::F16 | DType::BF16 => (0..n).flat_map(|_| [rng.next_u64() as u8, 0x3c]).collect(),
        q => random_blocks(rng, q, n / q.block_elems()),
    };
    let buf = be.alloc(bytes.len())?;
    be.upload(buf, 0, &bytes)?;
    Ok(buf)
}

/// Compiles `g` with the passes the backend asks for.
pub fn compile(be: &mut dyn Backend, g: &Graph) -> Result<ProgramId> {
    let opts = PlanOptions {
        passes: be.pass_options(),
        ..PlanOptions::default()
    };
    be.compile(&plan(g, opts))
}

/// Runs a compiled program once and returns the first output's length (so work is not elided).
pub fn run_once(be: &mut dyn Backend, p: ProgramId, inputs: &[(&str, HostData)]) -> Result<usize> {
    Ok(be.run(p, inputs)?.first().map_or(0, |o| o.to_f32().len()))
}
