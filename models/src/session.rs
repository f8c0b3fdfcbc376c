//! A `Session`: a model on a backend with its memory, decoding batches of sequences.

use crate::arch::{self, Architecture};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::memory::UBatchView;
use crate::memory::{Memory, MemoryConfig, SeqId, UBatch};
use crate::step::Step;
use crate::weights::WeightStore;
use std::collections::HashMap;
use weft_backends::{Backend, HostData, ProgramId};
use weft_graph::{Graph, Plan, PlanOptions, plan};

/// Compiled programs kept per ubatch shape (tokens, sequences, tokens per sequence, KV cells,
/// last rows only).
type ShapeKey = (usize, usize, usize, usize, bool);

/// Most programs a session keeps compiled.
const MAX_PROGRAMS: usize = 16;

/// A loaded model ready to decode.
#[derive(Debug)]
pub struct Session {
    backend: Box<dyn Backend>,
    arch: Box<dyn Architecture>,
    weights: WeightStore,
    memory: Memory,
    /// Plan settings (fusion on by default).
    pub plan_options: PlanOptions,
    programs: HashMap<ShapeKey, (ProgramId, Plan)>,
    last_key: Option<ShapeKey>,
    /// Compilations so far (a decode step that reuses a program does not count).
    pub compiles: usize,
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
        let plan_options = PlanOptions {
            passes: backend.pass_options(),
            ..PlanOptions::default()
        };
        Ok(Session {
            backend,
            arch,
            weights,
            memory,
            plan_options,
            programs: HashMap::new(),
            last_key: None,
            compiles: 0,
        })
    }

    pub fn arch(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Bytes of weights the backend reads in place from the mapped model file (the CPU backend
    /// with [`CpuBackend::map_weights`](weft_backends::CpuBackend::map_weights)); the others
    /// were copied to it.
    pub fn weights_mapped_bytes(&self) -> usize {
        self.weights.mapped_bytes()
    }

    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    pub fn n_vocab(&self) -> usize {
        self.arch.n_vocab()
    }

    /// Host time the backend spent around the device so far, where it keeps it.
    pub fn run_stats(&self) -> Option<weft_backends::RunStats> {
        self.backend.run_stats()
    }

    /// Per-node timing of later runs (read them with [`Session::last_timings`]).
    pub fn set_profiling(&mut self, on: bool) {
        self.backend.set_profiling(on);
    }

    /// Per-node times of the last ubatch run, when profiling is on.
    pub fn last_timings(&self) -> Option<Vec<weft_backends::NodeTiming>> {
        let (prog, _) = self.programs.get(&self.last_key?)?;
        self.backend.timings(*prog)
    }

    /// The plan of the last ubatch run (for the viewer and tests).
    pub fn last_plan(&self) -> Option<&Plan> {
        Some(&self.programs.get(&self.last_key?)?.1)
    }

    /// Forgets every sequence.
    pub fn clear(&mut self) {
        self.memory.clear();
    }

    /// Removes positions `range` of `seq` (see [`Memory::seq_rm`]); when a recurrent state
    /// rolled back to a checkpoint, the tokens between it and the cut are fed again. Returns how
    /// many tokens were re-fed.
    pub fn seq_rm(&mut self, seq: SeqId, range: crate::memory::PosRange) -> Result<usize> {
        let refeed = self.memory.seq_rm(self.backend.as_mut(), seq, range)?;
        if !refeed.is_empty() {
            self.decode(&[(seq, &refeed)])?;
        }
        Ok(refeed.len())
    }

    /// Makes `dst` a fork of `src` (see [`Memory::seq_cp`]).
    pub fn seq_cp(&mut self, src: SeqId, dst: SeqId) -> Result<()> {
        self.memory.seq_cp(self.backend.as_mut(), src, dst)
    }

    /// The whole memory as a state file (see [`Memory::save`]).
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let model = self.model_id();
        self.memory.save(self.backend.as_mut(), &model)
    }

    /// Restores a state file made by [`Session::save_state`] for the same model and sizes.
    pub fn load_state(&mut self, file: &[u8]) -> Result<()> {
        let model = self.model_id();
        self.memory.load(self.backend.as_mut(), &model, file)
    }

    /// One sequence as a file (see [`Memory::save_seq`]).
    pub fn save_seq(&mut self, seq: SeqId) -> Result<Vec<u8>> {
        let model = self.model_id();
        self.memory.save_seq(self.backend.as_mut(), &model, seq)
    }

    /// Loads a sequence file as sequence `seq` (see [`Memory::load_seq`]).
    pub fn load_seq(&mut self, file: &[u8], seq: SeqId) -> Result<()> {
        let model = self.model_id();
        self.memory
            .load_seq(self.backend.as_mut(), &model, file, seq)
    }

    /// What a state file is bound to: the architecture, vocabulary and weight bytes.
    fn model_id(&self) -> String {
        format!(
            "{}|{}|{}",
            self.arch.name(),
            self.arch.n_vocab(),
            self.weights.bytes()
        )
    }

    /// Shifts positions `range` of `seq` by `delta`: the cells move and their cached keys are
    /// re-rotated (rope at `p` then at `delta` equals rope at `p + delta`). Attention-only
    /// models whose architecture exposes its key rope; anything else is an error that changes
    /// nothing.
    pub fn seq_add(
        &mut self,
        seq: SeqId,
        range: crate::memory::PosRange,
        delta: i32,
    ) -> Result<()> {
        let Some((rope, head_dim)) = self.arch.key_rope() else {
            return Err(ModelError::Config(format!(
                "{}: positions cannot be shifted (no key rope)",
                self.arch.name()
            )));
        };
        if self.memory.has_recurrent() {
            return Err(ModelError::Config(format!(
                "sequence {seq}: positions cannot be shifted in a model with recurrent layers"
            )));
        }
        let cells = self.memory.seq_add(seq, range, delta)?;
        if cells.is_empty() || delta == 0 {
            return Ok(());
        }
        let n = cells.len();
        let mut b = weft_graph::GraphBuilder::new();
        let idx = b.input("cells", &[n], weft_graph::DType::I32)?;
        let pos = b.input("delta", &[n], weft_graph::DType::I32)?;
        let (total, dt) = (self.memory.config.cells, self.memory.config.kv_dtype);
        for (il, l) in self.memory.layers.iter().enumerate() {
            let (Some(width), Some(kb)) = (l.kv_width(), self.memory.buffers[il].k) else {
                continue;
            };
            let k = b.external(
                &format!("cache_k.{il}"),
                &[total, width],
                dt,
                kb,
                weft_graph::Access::ReadWrite,
            )?;
            let rows = b.get_rows(k, idx)?;
            let heads = b.reshape(rows, &[n, width / head_dim, head_dim])?;
            let turned = b.rope(heads, pos, rope)?;
            let flat = b.reshape(turned, &[n, width])?;
            b.store_rows(k, flat, idx)?;
        }
        let p = plan(&b.finish(), self.plan_options);
        let prog = self.backend.compile(&p)?;
        let ids: Vec<i32> = cells.iter().map(|&c| c as i32).collect();
        let deltas = vec![delta; n];
        let r = self.backend.run(
            prog,
            &[
                ("cells", HostData::I32(&ids)),
                ("delta", HostData::I32(&deltas)),
            ],
        );
        self.backend.release(prog)?;
        r?;
        Ok(())
    }

    /// Keeps only `seq` (see [`Memory::seq_keep`]).
    pub fn seq_keep(&mut self, seq: SeqId) -> Result<()> {
        self.memory.seq_keep(seq)
    }

    /// Feeds each sequence's tokens (one batch) and returns, per batch entry, the logits of
    /// every fed position (`len · n_vocab` values, row-major).
    pub fn decode(&mut self, batch: &[(SeqId, &[i32])]) -> Result<Vec<Vec<f32>>> {
        self.decode_rows(batch, false)
    }

    /// As [`Session::decode`], but returns only each entry's last position (`n_vocab` values):
    /// what generation needs. The LM head then runs for one row per sequence, not every token.
    pub fn decode_last(&mut self, batch: &[(SeqId, &[i32])]) -> Result<Vec<Vec<f32>>> {
        self.decode_rows(batch, true)
    }

    fn decode_rows(&mut self, batch: &[(SeqId, &[i32])], last: bool) -> Result<Vec<Vec<f32>>> {
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
            .map(|(_, t)| Vec::with_capacity(if last { nv } else { t.len() * nv }))
            .collect();
        if !self.memory.has_recurrent() {
            let u = split_batch(batch, false).remove(0);
            let logits = self.run_ubatch(&u, last)?;
            if batch.len() == 1 {
                return Ok(vec![logits]);
            }
            let mut at = 0;
            for (i, (_, toks)) in batch.iter().enumerate() {
                let rows = if last { 1 } else { toks.len() };
                out[i].extend_from_slice(&logits[at * nv..(at + rows) * nv]);
                at += rows;
            }
            return Ok(out);
        }
        // Recurrent layers: equal-length ubatches, cut where a sequence reaches a checkpoint.
        let mut done = vec![0usize; batch.len()];
        loop {
            let live: Vec<usize> = (0..batch.len())
                .filter(|&i| done[i] < batch[i].1.len())
                .collect();
            let Some(n) = live
                .iter()
                .map(|&i| {
                    (batch[i].1.len() - done[i]).min(self.memory.until_checkpoint(batch[i].0))
                })
                .min()
            else {
                break;
            };
            let u = UBatch {
                seqs: live.iter().map(|&i| batch[i].0).collect(),
                tokens: live
                    .iter()
                    .map(|&i| batch[i].1[done[i]..done[i] + n].to_vec())
                    .collect(),
            };
            let mut logits = self.run_ubatch(&u, last)?;
            let rows = if last { 1 } else { n };
            for (k, &i) in live.iter().enumerate() {
                if last {
                    out[i].clear(); // a later ubatch of the same sequence supersedes it
                }
                if live.len() == 1 && out[i].is_empty() {
                    // (one sequence: its logits are the whole output, moved)
                    out[i] = std::mem::take(&mut logits);
                } else {
                    out[i].extend_from_slice(&logits[k * rows * nv..(k + 1) * rows * nv]);
                }
                done[i] += n;
                self.memory
                    .maybe_checkpoint(self.backend.as_mut(), batch[i].0)?;
            }
        }
        Ok(out)
    }

    /// Records the graph of a ubatch and plans it.
    fn graph(&self, view: &UBatchView, out_rows: Option<usize>) -> Result<(Graph, Plan)> {
        let mut step = Step::new(view, &self.weights, &self.memory, out_rows)?;
        let logits = self.arch.build(&mut step)?;
        let g = step.finish(logits)?;
        let p = plan(&g, self.plan_options);
        Ok((g, p))
    }

    /// The graph and plan of a ubatch of `n_tokens` tokens of sequence 0, after what memory
    /// already holds (the tokens are placed in memory; use a fresh session to inspect).
    pub fn graph_for(&mut self, n_tokens: usize) -> Result<(Graph, Plan)> {
        let u = UBatch {
            seqs: vec![0],
            tokens: vec![vec![0; n_tokens.max(1)]],
        };
        let view = self.memory.prepare(self.backend.as_mut(), &u)?;
        self.graph(&view, None)
    }

    /// Runs one ubatch; with `last`, only each sequence's last row of logits comes back.
    fn run_ubatch(&mut self, u: &UBatch, last: bool) -> Result<Vec<f32>> {
        let view = self.memory.prepare(self.backend.as_mut(), u)?;
        // Tokens are sequence-major: each sequence's last row ends its run.
        let out_rows: Vec<i32> = if last {
            u.tokens
                .iter()
                .scan(0i32, |end, t| {
                    *end += t.len() as i32;
                    Some(*end - 1)
                })
                .collect()
        } else {
            vec![]
        };
        let key = (
            view.tokens.len(),
            view.n_seqs,
            view.seq_len,
            view.n_kv,
            last,
        );
        let prog = match self.programs.get(&key) {
            Some((p, _)) => *p,
            None => {
                let (_, p) = self.graph(&view, last.then_some(out_rows.len()))?;
                let prog = self.backend.compile(&p)?;
                self.compiles += 1;
                if self.programs.len() >= MAX_PROGRAMS {
                    for (_, (id, _)) in self.programs.drain() {
                        self.backend.release(id)?;
                    }
                }
                self.programs.insert(key, (prog, p));
                prog
            }
        };
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
        if last {
            inputs.push(("out_rows", HostData::I32(&out_rows)));
        }
        let out = self.backend.run(prog, &inputs)?;
        self.last_key = Some(key);
        out.into_iter()
            .next()
            .map(|o| o.into_f32())
            .ok_or_else(|| ModelError::Config("the graph has no logits".into()))
    }
}
