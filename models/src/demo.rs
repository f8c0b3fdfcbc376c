//! Tiny random-weight stacks (2 Mamba layers; 2 attention + SwiGLU layers) built from the
//! shared blocks. They exercise the whole path (graph, passes, planner, backend, caches) without
//! a model file: the block tests and `weft demo` use them. Their weights are random, so their
//! outputs mean nothing.

use crate::blocks::attention::{AttentionParams, AttentionWeights, KvSource, attention};
use crate::blocks::ffn::swiglu;
use crate::blocks::mamba::{MambaParams, MambaWeights, mamba};
use crate::blocks::recurrent::RecurrentState;
use crate::blocks::rms_norm_weighted;
use crate::error::{ModelError, Result};
use weft_backends::Backend;
use weft_graph::testing::Rng;
use weft_graph::{Access, BufferId, DType, Graph, GraphBuilder, RopeMode, RopeParams, Tensor};

/// Hidden size of the demo stacks.
pub const D: usize = 16;
/// Vocabulary size of the demo stacks.
pub const V: usize = 23;

/// Random F32 weights (and zeroed caches) uploaded once; bound as externals in every graph.
#[derive(Debug)]
pub struct Weights {
    rng: Rng,
    bufs: Vec<(String, Vec<usize>, BufferId, Access)>,
}

impl Weights {
    fn new(seed: u64) -> Weights {
        Weights {
            rng: Rng::new(seed),
            bufs: vec![],
        }
    }
    fn add(
        &mut self,
        be: &mut dyn Backend,
        name: &str,
        dims: &[usize],
        scale: f32,
        access: Access,
    ) -> Result<()> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = match access {
            Access::ReadOnly => (0..n).map(|_| self.rng.unit() * scale).collect(),
            Access::ReadWrite => vec![0.0; n],
        };
        let buf = be.alloc(n * 4)?;
        be.upload(buf, 0, bytemuck::cast_slice(&v))?;
        self.bufs.push((name.into(), dims.to_vec(), buf, access));
        Ok(())
    }
    fn bind(&self, b: &mut GraphBuilder, name: &str) -> Result<Tensor> {
        let (_, dims, buf, acc) = self
            .bufs
            .iter()
            .find(|w| w.0 == name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        Ok(b.external(name, dims, DType::F32, *buf, *acc)?)
    }
    /// Zeroes every cache (a fresh session).
    pub fn zero_caches(&self, be: &mut dyn Backend) -> Result<()> {
        for (_, dims, buf, acc) in &self.bufs {
            if *acc == Access::ReadWrite {
                be.upload(*buf, 0, &vec![0u8; dims.iter().product::<usize>() * 4])?;
            }
        }
        Ok(())
    }
    /// Bytes of weights and caches.
    pub fn bytes(&self) -> usize {
        self.bufs
            .iter()
            .map(|b| b.1.iter().product::<usize>() * 4)
            .sum()
    }
}

fn head(b: &mut GraphBuilder, w: &Weights, x: Tensor) -> Result<Tensor> {
    let nf = w.bind(b, "norm_f")?;
    let h = rms_norm_weighted(b, x, nf, 1e-5)?;
    let lm = w.bind(b, "lm_head")?;
    Ok(b.matmul(h, lm)?)
}

// ---- Mamba -------------------------------------------------------------------------------

/// Shape of the demo Mamba mixers.
pub const MP: MambaParams = MambaParams {
    d_inner: 32,
    d_state: 8,
    d_conv: 4,
    dt_rank: 4,
    dt_b_c_rms: None,
};

/// Weights of a 2-layer Mamba stack with state caches for `slots` sequences.
pub fn mamba_weights(be: &mut dyn Backend, slots: usize) -> Result<Weights> {
    let mut w = Weights::new(1);
    w.add(be, "emb", &[V, D], 1.0, Access::ReadOnly)?;
    for l in 0..2 {
        let p = |s: &str| format!("blk.{l}.{s}");
        w.add(be, &p("norm"), &[D], 1.0, Access::ReadOnly)?;
        w.add(be, &p("in"), &[2 * MP.d_inner, D], 0.3, Access::ReadOnly)?;
        w.add(
            be,
            &p("conv"),
            &[MP.d_inner, MP.d_conv],
            0.5,
            Access::ReadOnly,
        )?;
        w.add(be, &p("conv_b"), &[MP.d_inner], 0.1, Access::ReadOnly)?;
        w.add(
            be,
            &p("x_proj"),
            &[MP.dt_rank + 2 * MP.d_state, MP.d_inner],
            0.3,
            Access::ReadOnly,
        )?;
        w.add(
            be,
            &p("dt_proj"),
            &[MP.d_inner, MP.dt_rank],
            0.3,
            Access::ReadOnly,
        )?;
        w.add(be, &p("dt_b"), &[MP.d_inner], 0.5, Access::ReadOnly)?;
        w.add(
            be,
            &p("a"),
            &[MP.d_inner, MP.d_state],
            1.0,
            Access::ReadOnly,
        )?;
        w.add(be, &p("d"), &[MP.d_inner], 1.0, Access::ReadOnly)?;
        w.add(be, &p("out"), &[D, MP.d_inner], 0.3, Access::ReadOnly)?;
        w.add(
            be,
            &p("conv_cache"),
            &[slots, (MP.d_conv - 1) * MP.d_inner],
            0.0,
            Access::ReadWrite,
        )?;
        w.add(
            be,
            &p("ssm_cache"),
            &[slots, MP.d_inner * MP.d_state],
            0.0,
            Access::ReadWrite,
        )?;
    }
    w.add(be, "norm_f", &[D], 1.0, Access::ReadOnly)?;
    w.add(be, "lm_head", &[V, D], 0.5, Access::ReadOnly)?;
    Ok(w)
}

/// Logits `[S, T, V]` for `S` sequences of `T` new tokens each.
pub fn mamba_graph(w: &Weights, s: usize, t: usize) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let tokens = b.input("tokens", &[s * t], DType::I32)?;
    let slots = b.input("slots", &[s], DType::I32)?;
    let emb = w.bind(&mut b, "emb")?;
    let x = b.get_rows(emb, tokens)?;
    let mut x = b.reshape(x, &[s, t, D])?;
    for l in 0..2 {
        let p = |n: &str| format!("blk.{l}.{n}");
        let mut bind = |n: &str| w.bind(&mut b, &p(n));
        let norm = bind("norm")?;
        let mw = MambaWeights {
            in_proj: bind("in")?,
            conv: bind("conv")?,
            conv_b: bind("conv_b")?,
            x_proj: bind("x_proj")?,
            dt_proj: bind("dt_proj")?,
            dt_b: bind("dt_b")?,
            a: bind("a")?,
            d: bind("d")?,
            out_proj: bind("out")?,
        };
        let state = RecurrentState {
            conv: bind("conv_cache")?,
            ssm: bind("ssm_cache")?,
            slots,
        };
        // A = -exp(A_log) is applied by the converter; keep A negative here too.
        let a = b.exp(mw.a)?;
        let a = b.scale(a, -1.0)?;
        let mw = MambaWeights { a, ..mw };
        let h = rms_norm_weighted(&mut b, x, norm, 1e-5)?;
        let y = mamba(&mut b, h, &mw, &MP, &state)?;
        x = b.add(x, y)?;
    }
    let logits = head(&mut b, w, x)?;
    b.output(logits, "logits")?;
    Ok(b.finish())
}

/// Shape of the demo attention layers.
pub const AP: AttentionParams = AttentionParams {
    n_head: 4,
    n_head_kv: 2,
    head_dim: 4,
    rope: Some(RopeParams {
        n_dims: 4,
        mode: RopeMode::Neox,
        freq_base: 10000.0,
        freq_scale: 1.0,
    }),
};
/// KV cells of the demo attention stack.
pub const CELLS: usize = 16;

/// Weights of a 2-layer attention + SwiGLU stack with a KV cache of [`CELLS`] cells.
pub fn attn_weights(be: &mut dyn Backend) -> Result<Weights> {
    let mut w = Weights::new(2);
    w.add(be, "emb", &[V, D], 1.0, Access::ReadOnly)?;
    let kv = AP.n_head_kv * AP.head_dim;
    for l in 0..2 {
        let p = |s: &str| format!("blk.{l}.{s}");
        w.add(be, &p("attn_norm"), &[D], 1.0, Access::ReadOnly)?;
        w.add(be, &p("q"), &[D, D], 0.4, Access::ReadOnly)?;
        w.add(be, &p("k"), &[kv, D], 0.4, Access::ReadOnly)?;
        w.add(be, &p("v"), &[kv, D], 0.4, Access::ReadOnly)?;
        w.add(be, &p("o"), &[D, D], 0.4, Access::ReadOnly)?;
        w.add(be, &p("ffn_norm"), &[D], 1.0, Access::ReadOnly)?;
        w.add(be, &p("gate"), &[24, D], 0.4, Access::ReadOnly)?;
        w.add(be, &p("up"), &[24, D], 0.4, Access::ReadOnly)?;
        w.add(be, &p("down"), &[D, 24], 0.4, Access::ReadOnly)?;
        w.add(be, &p("k_cache"), &[CELLS, kv], 0.0, Access::ReadWrite)?;
        w.add(be, &p("v_cache"), &[CELLS, kv], 0.0, Access::ReadWrite)?;
    }
    w.add(be, "norm_f", &[D], 1.0, Access::ReadOnly)?;
    w.add(be, "lm_head", &[V, D], 0.5, Access::ReadOnly)?;
    Ok(w)
}

/// Logits `[T, V]` for `T` tokens of one sequence at positions `p0..p0+T`, with or without
/// the cache.
pub fn attn_graph(w: &Weights, t: usize, p0: usize, cached: bool) -> Result<Graph> {
    let mut b = GraphBuilder::new();
    let tokens = b.input("tokens", &[t], DType::I32)?;
    let pos = b.input("pos", &[t], DType::I32)?;
    let n_kv = p0 + t;
    let mask = if cached {
        Some(b.input("mask", &[t, n_kv], DType::F32)?)
    } else {
        None
    };
    let emb = w.bind(&mut b, "emb")?;
    let mut x = b.get_rows(emb, tokens)?;
    for l in 0..2 {
        let p = |n: &str| format!("blk.{l}.{n}");
        let mut bind = |n: &str| w.bind(&mut b, &p(n));
        let aw = AttentionWeights {
            q: bind("q")?,
            k: bind("k")?,
            v: bind("v")?,
            o: bind("o")?,
        };
        let (an, fnorm) = (bind("attn_norm")?, bind("ffn_norm")?);
        let (gate, up, down) = (bind("gate")?, bind("up")?, bind("down")?);
        let kv = match mask {
            Some(mask) => KvSource::Cache {
                k: bind("k_cache")?,
                v: bind("v_cache")?,
                write: pos,
                n_kv,
                mask,
            },
            None => KvSource::Local,
        };
        let h = rms_norm_weighted(&mut b, x, an, 1e-5)?;
        let a = attention(&mut b, h, &aw, &AP, pos, kv)?;
        x = b.add(x, a)?;
        let h = rms_norm_weighted(&mut b, x, fnorm, 1e-5)?;
        let f = swiglu(&mut b, h, gate, up, down)?;
        x = b.add(x, f)?;
    }
    let logits = head(&mut b, w, x)?;
    b.output(logits, "logits")?;
    Ok(b.finish())
}

/// Additive causal mask `[t, p0 + t]` for `t` new tokens after `p0` cached ones.
pub fn causal_mask(t: usize, p0: usize) -> Vec<f32> {
    (0..t)
        .flat_map(|i| (0..p0 + t).map(move |j| if j <= p0 + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect()
}
