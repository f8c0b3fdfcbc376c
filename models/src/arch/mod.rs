//! The architecture registry: one file per model, keyed by `general.architecture`.

mod falcon_h1;
mod granite_hybrid;
mod jamba;
mod lfm2;
mod llama;
mod mamba;
mod mamba2;
mod nemotron_h;
mod qwen35;
mod qwen3next;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::memory::LayerMemory;
use crate::step::Step;
use weft_graph::Tensor;

/// A model architecture: its memory needs and the graph of one ubatch.
pub trait Architecture: std::fmt::Debug + Send {
    /// The `general.architecture` name.
    fn name(&self) -> &'static str;
    fn n_vocab(&self) -> usize;
    fn n_embd(&self) -> usize;
    /// What each layer keeps between ubatches.
    fn layers(&self) -> Vec<LayerMemory>;
    /// Records the graph of one ubatch and returns `logits [T, V]`.
    fn build(&self, step: &mut Step) -> Result<Tensor>;

    /// The rotary embedding of the cached keys and the head size, when positions can be shifted
    /// by re-rotating them (`seq_add`); `None` when this architecture cannot.
    fn key_rope(&self) -> Option<(weft_graph::RopeParams, usize)> {
        None
    }
}

/// Architectures this build knows.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mamba",
    "mamba2",
    "qwen35",
    "qwen3next",
    "falcon-h1",
    "lfm2",
    "jamba",
    "granitehybrid",
    "nemotron_h_moe",
];

/// The architecture of a model file, with its hyperparameters read and checked.
pub fn load(gguf: &GgufFile) -> Result<Box<dyn Architecture>> {
    let arch = gguf.architecture()?;
    let h = HParams { gguf, arch };
    Ok(match arch {
        "llama" => Box::new(llama::Llama::new(&h)?),
        "mamba" => Box::new(mamba::Mamba::new(&h)?),
        "mamba2" => Box::new(mamba2::Mamba2::new(&h)?),
        "qwen35" => Box::new(qwen35::Qwen35::new(&h)?),
        "qwen3next" => Box::new(qwen3next::Qwen3Next::new(&h)?),
        "falcon-h1" => Box::new(falcon_h1::FalconH1::new(&h)?),
        "lfm2" => Box::new(lfm2::Lfm2::new(&h)?),
        "jamba" => Box::new(jamba::Jamba::new(&h)?),
        "granitehybrid" => Box::new(granite_hybrid::GraniteHybrid::new(&h)?),
        "nemotron_h_moe" => Box::new(nemotron_h::NemotronH::new(&h)?),
        other => {
            return Err(ModelError::UnknownArchitecture {
                arch: other.to_string(),
                file: gguf.path().to_path_buf(),
                supported: SUPPORTED.join(", "),
            });
        }
    })
}

/// Reads `{arch}.key` hyperparameters with errors naming the key and the file.
pub(crate) struct HParams<'a> {
    pub gguf: &'a GgufFile,
    pub arch: &'a str,
}

impl HParams<'_> {
    pub fn usize(&self, key: &str) -> Result<usize> {
        Ok(self.gguf.get_usize(&format!("{}.{key}", self.arch))?)
    }
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self
            .gguf
            .get_usize_opt(&format!("{}.{key}", self.arch))?
            .unwrap_or(default))
    }
    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        Ok(self
            .gguf
            .get_f32_opt(&format!("{}.{key}", self.arch))?
            .unwrap_or(default))
    }
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        Ok(self
            .gguf
            .get_bool_opt(&format!("{}.{key}", self.arch))?
            .unwrap_or(default))
    }
    /// Vocabulary size: `{arch}.vocab_size`, else the token list's length.
    pub fn n_vocab(&self) -> Result<usize> {
        if let Some(v) = self
            .gguf
            .get_usize_opt(&format!("{}.vocab_size", self.arch))?
        {
            return Ok(v);
        }
        let tokens = self.gguf.get_array("tokenizer.ggml.tokens")?;
        Ok(tokens.len())
    }
}

/// Token embeddings → `x [T, D]`.
pub(crate) fn embed(step: &mut Step) -> Result<Tensor> {
    let emb = step.w("token_embd.weight")?;
    Ok(step.b.get_rows(emb, step.tokens)?)
}

/// `x + swiglu(rms_norm(x) · norm)` with layer `il`'s `ffn_gate`, `ffn_up` and `ffn_down`: the
/// dense feed-forward sub-block of a pre-norm layer.
pub(crate) fn swiglu_residual(
    s: &mut Step,
    il: usize,
    x: Tensor,
    norm: Tensor,
    eps: f32,
) -> Result<Tensor> {
    let p = |n: &str| format!("blk.{il}.{n}.weight");
    let (gate, up, down) = (
        s.w(&p("ffn_gate"))?,
        s.w(&p("ffn_up"))?,
        s.w(&p("ffn_down"))?,
    );
    let h = crate::blocks::rms_norm_weighted(&mut s.b, x, norm, eps)?;
    let f = crate::blocks::ffn::swiglu(&mut s.b, h, gate, up, down)?;
    Ok(s.b.add(x, f)?)
}

/// Final norm and the LM head (the embedding matrix when the file has no `output.weight`).
pub(crate) fn head(step: &mut Step, x: Tensor, eps: f32) -> Result<Tensor> {
    let x = step.select_outputs(x)?;
    let nw = step.w("output_norm.weight")?;
    let h = crate::blocks::rms_norm_weighted(&mut step.b, x, nw, eps)?;
    let out = match step.w_opt("output.weight")? {
        Some(w) => w,
        None => step.w("token_embd.weight")?,
    };
    Ok(step.b.matmul(h, out)?)
}
