//! A `Session`: a model on a backend with its memory, decoding batches of sequences.

use crate::arch::{self, Architecture};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::memory::{Memory, MemoryConfig, SeqId, UBatch};
use crate::step::Step;
use crate::weights::WeightStore;
use weft_backends::{Backend, HostData};
use weft_graph::{Plan, PlanOptions, plan};

/// A loaded model ready to decode.
#[derive(Debug)]
pub struct Session {
    backend: Box<dyn Backend>,
    arch: Box<dyn Architecture>,
    weights: WeightStore,
    memory: Memory,
    /// Plan settings (fusion on by default).
    pub plan_options: PlanOptions,
    /// The plan of the last ubatch (for `weft graph`, the viewer and tests).
    pub last_plan: Option<Plan>,
}

/// Splits a batch into ubatches. With recurrent layers every sequence of a ubatch has the same
/// number of new tokens (the scan works on rectangles); attention-only models take the whole
/// batch at once.
pub fn split_batch(batch: &[(SeqId, &[i32])], equal: bool) -> Vec<UBatch> {
    if !equal {
        return vec![UBatch {
            seqs: batch.iter().map(|b| b.0).collect(),
            tokens: batch.iter().map(|b| b.1.to_vec()).collect(),
        }];
    }
    let mut done = vec![0usize; batch.len()];
    let mut out = vec![];
    loop {
        let live: Vec<usize> = (0..batch.len())
            .filter(|&i| done[i] < batch[i].1.len())
            .collect();
        let Some(n) = live.iter().map(|&i| batch[i].1.len() - done[i]).min() else {
            break;
        };
        out.push(UBatch {
            seqs: live.iter().map(|&i| batch[i].0).collect(),
            tokens: live
                .iter()
                .map(|&i| batch[i].1[done[i]..done[i] + n].to_vec())
                .collect(),
        });
        for &i in &live {
            done[i] += n;
        }
    }
    out
}

impl Session {
    /// Reads the architecture, uploads the weights and allocates the memory.
    pub fn new(
        gguf: &GgufFile,
        mut backend: Box<dyn Backend>,
        config: MemoryConfig,
        progress: impl FnMut(usize, usize),
    ) -> Result<Session> {
        let arch = arch::load(gguf)?;
        let weights = WeightStore::upload(gguf, backend.as_mut(), progress)?;
        let memory = Memory::new(backend.as_mut(), arch.layers(), config)?;
        Ok(Session {
            backend,
            arch,
            weights,
            memory,
            plan_options: PlanOptions::default(),
            last_plan: None,
        })
    }

    pub fn arch(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    pub fn n_vocab(&self) -> usize {
        self.arch.n_vocab()
    }

    /// Forgets every sequence.
    pub fn clear(&mut self) {
        self.memory.clear();
    }

    /// Feeds each sequence's tokens (one batch) and returns, per batch entry, the logits of
    /// every fed position (`len · n_vocab` values, row-major).
    pub fn decode(&mut self, batch: &[(SeqId, &[i32])]) -> Result<Vec<Vec<f32>>> {
        let nv = self.arch.n_vocab();
        for (s, toks) in batch {
            if toks.is_empty() {
                return Err(ModelError::EmptySequence(*s));
            }
            if let Some(&t) = toks.iter().find(|&&t| t < 0 || t as usize >= nv) {
                return Err(ModelError::UnknownToken {
                    token: t as i64,
                    n_vocab: nv,
                });
            }
        }
        for (i, (s, _)) in batch.iter().enumerate() {
            if batch[..i].iter().any(|(q, _)| q == s) {
                return Err(ModelError::Config(format!(
                    "sequence {s} appears twice in one batch"
                )));
            }
        }
        let mut out: Vec<Vec<f32>> = batch
            .iter()
            .map(|(_, t)| Vec::with_capacity(t.len() * nv))
            .collect();
        for u in split_batch(batch, self.memory.has_recurrent()) {
            let logits = self.run_ubatch(&u)?;
            let mut at = 0;
            for (s, toks) in u.seqs.iter().zip(&u.tokens) {
                let i = batch.iter().position(|(q, _)| q == s).unwrap_or(0);
                out[i].extend_from_slice(&logits[at * nv..(at + toks.len()) * nv]);
                at += toks.len();
            }
        }
        Ok(out)
    }

    fn run_ubatch(&mut self, u: &UBatch) -> Result<Vec<f32>> {
        let view = self.memory.prepare(self.backend.as_mut(), u)?;
        let mut step = Step::new(&view, &self.weights, &self.memory)?;
        let logits = self.arch.build(&mut step)?;
        let g = step.finish(logits)?;
        let p = plan(&g, self.plan_options);
        let prog = self.backend.compile(&p)?;
        let mut inputs: Vec<(&str, HostData)> = vec![
            ("tokens", HostData::I32(&view.tokens)),
            ("pos", HostData::I32(&view.positions)),
        ];
        if self.memory.has_attention() {
            inputs.push(("kv_write", HostData::I32(&view.kv_write)));
            inputs.push(("kv_mask", HostData::F32(&view.kv_mask)));
        }
        if self.memory.has_recurrent() {
            inputs.push(("slots", HostData::I32(&view.slots)));
        }
        let result = self.backend.run(prog, &inputs);
        self.backend.release(prog)?;
        self.last_plan = Some(p);
        let out = result?;
        out.into_iter()
            .next()
            .map(|o| o.to_f32())
            .ok_or_else(|| ModelError::Config("the graph has no logits".into()))
    }
}
