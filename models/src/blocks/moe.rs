//! Mixture-of-experts feed-forward, shared by the MoE architectures (Jamba, Granite-4.0-H,
//! Nemotron-H, Qwen3-Next).
//!
//! For `x [T, D]`:
//! 1. `logits = x · routerᵀ` (`[T, E]`); `probs = softmax(logits)` or `sigmoid(logits)`.
//! 2. Experts are chosen by the top `k` of `probs + bias` (the selection bias of DeepSeek-V3 /
//!    Nemotron-H, `exp_probs_b`); their weights are the *unbiased* `probs` of the chosen ones.
//! 3. Optionally the `k` weights are renormalised to sum to one (the sum clamped from below at
//!    2⁻¹⁴, like llama.cpp), then optionally multiplied by a routed scaling factor. Unbiased
//!    softmax routing renormalised this way is computed as the softmax of the chosen logits.
//! 4. Each chosen expert runs `down(silu(gate(x)) · up(x))` (SwiGLU) or `down(relu(up(x))²)`
//!    (non-gated squared ReLU); the outputs are weighted and summed.
//! 5. An optional shared expert (same activation) runs on every token and is added, optionally
//!    scaled by `sigmoid(x · w_gate)` per token (Qwen3-Next's `shared_expert_gate`).
//!
//! Expert weights are stacked `[E, F, D]` (gate, up) and `[E, D, F]` (down), as the GGUF
//! `ffn_*_exps` tensors bind.

use weft_graph::{GraphBuilder, Result, Tensor, UnaryOp};

/// How router logits become expert probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts (Mixtral, Jamba, Granite, Qwen).
    Softmax,
    /// Independent sigmoid per expert (DeepSeek-V3, Nemotron-H).
    Sigmoid,
}

/// The expert MLP's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertAct {
    /// `down(silu(gate(x)) · up(x))`; needs gate weights.
    SwiGlu,
    /// `down(relu(up(x))²)`; no gate weights.
    SqrRelu,
}

/// Routing and activation of an MoE layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeParams {
    /// Experts used per token (`k`).
    pub n_expert_used: usize,
    pub gating: Gating,
    /// Renormalise the `k` chosen weights to sum to one.
    pub norm_weights: bool,
    /// Multiply the chosen weights by this ("routed scaling factor"); 1.0 for none.
    pub weights_scale: f32,
    /// Activation of the routed and shared experts.
    pub act: ExpertAct,
}

/// A shared expert that every token goes through.
#[derive(Clone, Copy, Debug)]
pub struct SharedExpert {
    /// `[F, D]`; required for SwiGLU, absent for squared ReLU.
    pub gate: Option<Tensor>,
    /// `[F, D]`.
    pub up: Tensor,
    /// `[D, F]`.
    pub down: Tensor,
    /// `[D]` or `[1, D]`: scales the shared expert's output by `sigmoid(x · w)` per token.
    pub gate_inp: Option<Tensor>,
}

/// The weights of one MoE layer.
#[derive(Clone, Copy, Debug)]
pub struct MoeWeights {
    /// `[E, D]`.
    pub router: Tensor,
    /// `[E]`, added to the probabilities for choosing experts only.
    pub selection_bias: Option<Tensor>,
    /// `[E, F, D]`; required for SwiGLU, absent for squared ReLU.
    pub gate: Option<Tensor>,
    /// `[E, F, D]`.
    pub up: Tensor,
    /// `[E, D, F]`.
    pub down: Tensor,
    pub shared: Option<SharedExpert>,
}

/// Smallest sum the renormalisation divides by (the smallest normal f16, as llama.cpp).
const MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

fn missing_gate(what: &str) -> weft_graph::GraphError {
    weft_graph::GraphError::Argument {
        op: "moe",
        detail: format!("SwiGLU experts need {what} gate weights"),
    }
}

/// The activation applied to the up (and gate) projections.
fn activate(
    b: &mut GraphBuilder,
    act: ExpertAct,
    gate: Option<Tensor>,
    up: Tensor,
    what: &str,
) -> Result<Tensor> {
    match act {
        ExpertAct::SwiGlu => {
            let g = gate.ok_or_else(|| missing_gate(what))?;
            let g = b.silu(g)?;
            b.mul(g, up)
        }
        ExpertAct::SqrRelu => b.unary(UnaryOp::SqrRelu, up),
    }
}

/// The routing of `x [T, D]`: chosen experts `ids [T, k]` (I32) and their weights `[T, k]`.
pub fn route(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &MoeWeights,
    p: &MoeParams,
) -> Result<(Tensor, Tensor)> {
    let k = p.n_expert_used;
    let logits = b.matmul(x, w.router)?;
    let (ids, mut weights) =
        if p.gating == Gating::Softmax && p.norm_weights && w.selection_bias.is_none() {
            // Renormalised softmax weights: the denominator over all experts cancels, so they
            // are the softmax of the chosen logits, and softmax does not change which logits
            // are largest. Three small kernels instead of four; the clamp of the sum never
            // binds (the chosen probabilities sum to at least 1/E).
            let ids = b.top_k(logits, k)?;
            let chosen = chosen(b, logits, ids)?;
            (ids, b.softmax(chosen, None, 1.0)?)
        } else {
            let probs = match p.gating {
                Gating::Softmax => b.softmax(logits, None, 1.0)?,
                Gating::Sigmoid => b.sigmoid(logits)?,
            };
            let select = match w.selection_bias {
                Some(bias) => b.add(probs, bias)?,
                None => probs,
            };
            let ids = b.top_k(select, k)?;
            let mut weights = chosen(b, probs, ids)?;
            if p.norm_weights {
                let sum = b.reduce(weft_graph::ReduceOp::Sum, weights)?;
                let sum = b.unary(
                    UnaryOp::Clamp {
                        min: MIN_WEIGHT_SUM,
                        max: f32::MAX,
                    },
                    sum,
                )?;
                weights = b.div(weights, sum)?;
            }
            (ids, weights)
        };
    if p.weights_scale != 1.0 && p.weights_scale != 0.0 {
        weights = b.scale(weights, p.weights_scale)?;
    }
    Ok((ids, weights))
}

/// The values of `v [T, E]` at the chosen experts `ids [T, k]`, as `[T, k]`.
fn chosen(b: &mut GraphBuilder, v: Tensor, ids: Tensor) -> Result<Tensor> {
    let [t, e] = [v.dims()[0], v.dims()[1]];
    let v3 = b.reshape(v, &[t, e, 1])?;
    let c = b.get_rows(v3, ids)?;
    b.reshape(c, &[t, ids.dims()[1]])
}

/// The shared expert on `x [T, D]` → `[T, D]`.
pub fn shared_expert(
    b: &mut GraphBuilder,
    x: Tensor,
    s: &SharedExpert,
    act: ExpertAct,
) -> Result<Tensor> {
    let up = b.matmul(x, s.up)?;
    let gate = match s.gate {
        Some(g) => Some(b.matmul(x, g)?),
        None => None,
    };
    let h = activate(b, act, gate, up, "shared-expert")?;
    let mut y = b.matmul(h, s.down)?;
    if let Some(gi) = s.gate_inp {
        let gi = if gi.rank() == 1 {
            b.reshape(gi, &[1, gi.dims()[0]])?
        } else {
            gi
        };
        let g = b.matmul(x, gi)?;
        let g = b.sigmoid(g)?;
        y = b.mul(y, g)?;
    }
    Ok(y)
}

/// The MoE feed-forward of `x [T, D]` → `[T, D]` (routed experts plus the shared one).
pub fn moe(b: &mut GraphBuilder, x: Tensor, w: &MoeWeights, p: &MoeParams) -> Result<Tensor> {
    let [t, d] = [x.dims()[0], x.dims()[1]];
    let k = p.n_expert_used;
    let (ids, weights) = route(b, x, w, p)?;
    let x3 = b.reshape(x, &[t, 1, d])?;
    let up = b.matmul_id(x3, w.up, ids)?;
    let gate = match w.gate {
        Some(g) => Some(b.matmul_id(x3, g, ids)?),
        None => None,
    };
    let h = activate(b, p.act, gate, up, "expert")?;
    let y = b.matmul_id(h, w.down, ids)?;
    let wk = b.reshape(weights, &[t, k, 1])?;
    let y = b.mul(y, wk)?;
    // Sum over the k chosen experts.
    let mut out = b.slice(y, 1, 0, 1)?;
    for i in 1..k {
        let yi = b.slice(y, 1, i, 1)?;
        out = b.add(out, yi)?;
    }
    if k == 1 {
        out = b.contiguous(out)?;
    }
    let mut out = b.reshape(out, &[t, d])?;
    if let Some(s) = &w.shared {
        let sh = shared_expert(b, x, s, p.act)?;
        out = b.add(out, sh)?;
    }
    Ok(out)
}
