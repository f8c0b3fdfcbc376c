//! Dense feed-forward blocks.

use weft_graph::{GraphBuilder, Result, Tensor};

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
pub fn swiglu(
    b: &mut GraphBuilder,
    x: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
) -> Result<Tensor> {
    let g = b.matmul(x, gate)?;
    let u = b.matmul(x, up)?;
    let g = b.silu(g)?;
    let h = b.mul(g, u)?;
    b.matmul(h, down)
}
