//! Random graphs for property tests of the passes, the planner and the backends.

use crate::{BinaryOp, DType, Graph, GraphBuilder, Tensor, UnaryOp};

/// SplitMix64: a tiny deterministic generator, enough for test graphs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A random graph over `[r, c]` activations mixing elementwise chains (with broadcasts),
/// norms, softmax, matmuls, transposes and reductions, with several outputs. Returns the graph
/// and values for its inputs.
pub fn random_graph(seed: u64, ops: usize) -> (Graph, Vec<(String, Vec<f32>)>) {
    let mut rng = Rng::new(seed);
    let mut b = GraphBuilder::new();
    let (r, c) = (1 + rng.below(5), 2 + rng.below(12));
    let mut inputs = Vec::new();
    let mut new_input = |b: &mut GraphBuilder, rng: &mut Rng, dims: &[usize]| -> Tensor {
        let name = format!("in{}", inputs.len());
        let t = b.input(&name, dims, DType::F32).expect("valid input");
        inputs.push((
            name,
            (0..dims.iter().product()).map(|_| rng.unit()).collect(),
        ));
        t
    };
    let mut pool: Vec<Tensor> = vec![
        new_input(&mut b, &mut rng, &[r, c]),
        new_input(&mut b, &mut rng, &[r, c]),
    ];
    let unary = [
        UnaryOp::Neg,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Scale(0.5),
        UnaryOp::Relu,
        UnaryOp::Gelu,
    ];
    let binary = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul];
    for _ in 0..ops {
        let x = pool[pool.len() - 1 - rng.below(pool.len().min(4))];
        let y = pool[rng.below(pool.len())];
        let t = match rng.below(10) {
            0..=2 => b.unary(unary[rng.below(unary.len())], x),
            3..=5 => {
                let other = match rng.below(4) {
                    0 => new_input(&mut b, &mut rng, &[1, c]),
                    1 => new_input(&mut b, &mut rng, &[r, 1]),
                    _ => y,
                };
                b.binary(binary[rng.below(binary.len())], x, other)
            }
            6 => b.rms_norm(x, 1e-5),
            7 => b.softmax(x, None, 0.5),
            8 => {
                let w = new_input(&mut b, &mut rng, &[c, c]);
                b.matmul(x, w)
            }
            _ => {
                // transpose, compute on the view, transpose back
                let t = b.permute(x, &[1, 0]).expect("permute");
                let u = b.unary(UnaryOp::Tanh, t).expect("tanh");
                b.permute(u, &[1, 0])
            }
        }
        .expect("random graph ops are well formed");
        pool.push(t);
    }
    let last = *pool.last().expect("non-empty");
    b.output(last, "out").expect("output");
    for k in 0..rng.below(3) {
        let t = pool[2 + rng.below(pool.len() - 2)];
        b.output(t, format!("extra{k}")).expect("output");
    }
    (b.finish(), inputs)
}

/// `blocks` random blocks of a quantized dtype whose scale fields are small finite f16
/// values (random bytes elsewhere), so every block decodes to finite numbers.
pub fn random_blocks(rng: &mut Rng, dtype: DType, blocks: usize) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut out: Vec<u8> = (0..blocks * bb).map(|_| rng.next_u64() as u8).collect();
    let scale_at: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
        DType::Q6K => &[208],
        _ => &[],
    };
    for b in out.chunks_mut(bb) {
        for &o in scale_at {
            let v = half::f16::from_f32(0.001 + 0.05 * (rng.unit() + 1.0) / 2.0);
            b[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}
