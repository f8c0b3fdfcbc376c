//! Multi-head attention with grouped KV heads, rotary positions and a KV cache.

use weft_graph::{GraphBuilder, Result, RopeParams, Tensor};

/// Shape of an attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope: Option<RopeParams>,
}

/// Projection weights, each `[out, in]`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionWeights {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
}

/// Where keys and values come from.
#[derive(Clone, Copy, Debug)]
pub enum KvSource {
    /// Only the ubatch's own tokens, causally (no cache).
    Local,
    /// A cache of `[cells, n_head_kv · head_dim]` rows per K and V: the ubatch's keys are written
    /// to rows `write` (`I32 [T]`), then attention reads the first `n_kv` cells with an additive
    /// `mask [T, n_kv]` built by the memory (positions and sequence membership).
    Cache {
        k: Tensor,
        v: Tensor,
        write: Tensor,
        n_kv: usize,
        mask: Tensor,
    },
}

/// Attention over `x [T, D]` at positions `pos [T]`; returns `[T, D_out]` after the output
/// projection.
pub fn attention(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &AttentionWeights,
    p: &AttentionParams,
    pos: Tensor,
    kv: KvSource,
) -> Result<Tensor> {
    let scale = 1.0 / (p.head_dim as f32).sqrt();
    attention_scaled(b, x, w, p, pos, kv, scale)
}

/// [`attention`] with the score scale given (Granite's `attention.scale`) instead of
/// `1/√head_dim`.
pub fn attention_scaled(
    b: &mut GraphBuilder,
    x: Tensor,
    w: &AttentionWeights,
    p: &AttentionParams,
    pos: Tensor,
    kv: KvSource,
    scale: f32,
) -> Result<Tensor> {
    let t = x.dims()[0];
    let (h, hkv, d) = (p.n_head, p.n_head_kv, p.head_dim);
    let q = b.matmul(x, w.q)?;
    let k = b.matmul(x, w.k)?;
    let v = b.matmul(x, w.v)?;
    let mut q = b.reshape(q, &[t, h, d])?;
    let mut k = b.reshape(k, &[t, hkv, d])?;
    if let Some(r) = p.rope {
        q = b.rope(q, pos, r)?;
        k = b.rope(k, pos, r)?;
    }
    let out = match kv {
        KvSource::Local => {
            let v = b.reshape(v, &[t, hkv, d])?;
            b.attention(q, k, v, None, None, scale, true)?
        }
        KvSource::Cache {
            k: kc,
            v: vc,
            write,
            n_kv,
            mask,
        } => {
            let k2 = b.reshape(k, &[t, hkv * d])?;
            let kc = b.store_rows(kc, k2, write)?;
            let vc = b.store_rows(vc, v, write)?;
            let ks = b.slice(kc, 0, 0, n_kv)?;
            let vs = b.slice(vc, 0, 0, n_kv)?;
            let ks = b.reshape(ks, &[n_kv, hkv, d])?;
            let vs = b.reshape(vs, &[n_kv, hkv, d])?;
            b.attention(q, ks, vs, Some(mask), None, scale, false)?
        }
    };
    let out = b.reshape(out, &[t, h * d])?;
    b.matmul(out, w.o)
}
